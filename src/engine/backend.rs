//! Which backend runs the models, chosen at start: CUDA when a device is present (and the
//! `cuda` feature is built), else a hardware wgpu adapter (Vulkan / Metal / DX12), else the CPU.
//!
//! Model code is generic over `B: Backend`; this module turns a run-time choice into a
//! monomorphised call through [`BackendTask`].

use std::fmt;

use burn::tensor::backend::Backend;

/// burn's `flex` CPU backend, with our own GEMM-based kernels for the convolutions, Linear layers
/// and RMSNorm that dominate the models' time (`model::cpu_kernels`).
pub type Cpu = burn::backend::Flex;
#[cfg(feature = "wgpu")]
pub type Gpu = burn::backend::Wgpu;
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;
/// burn's older CPU backend, built only for benchmarks (`--features ndarray`).
#[cfg(feature = "ndarray")]
pub type Ndarray = burn::backend::NdArray;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum BackendChoice {
    /// CUDA if present, else a hardware wgpu adapter, else the CPU.
    #[default]
    Auto,
    Cpu,
    Wgpu,
    Cuda,
    /// burn's ndarray CPU backend, for comparing CPU backends (`--features ndarray`).
    #[value(hide = true)]
    Ndarray,
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Cpu => "cpu",
            BackendChoice::Wgpu => "wgpu",
            BackendChoice::Cuda => "cuda",
            BackendChoice::Ndarray => "ndarray",
        })
    }
}

impl BackendChoice {
    /// The choice from `DCAE_BACKEND` (auto|cpu|wgpu|cuda), if set and valid.
    pub fn from_env() -> Option<Self> {
        let v = std::env::var("DCAE_BACKEND").ok()?;
        <Self as clap::ValueEnum>::from_str(&v, true).ok()
    }
}

/// What runs, for the status bar and the CLI's report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendInfo {
    /// `cpu`, `wgpu` or `cuda`.
    pub kind: &'static str,
    /// Adapter or device name, e.g. "NVIDIA GeForce RTX 4070 (Vulkan)" or "CPU (flex, 8 threads)".
    pub name: String,
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} — {}", self.kind, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the CUDA backend is not built in; rebuild with `cargo build --release --features cuda`")]
    CudaNotBuilt,
    #[error("the wgpu backend is not built in; rebuild with the default features")]
    WgpuNotBuilt,
    #[error("the ndarray backend is not built in; rebuild with `--features ndarray`")]
    NdarrayNotBuilt,
    #[error("no CUDA device could be opened: {0}")]
    NoCuda(String),
    #[error("no wgpu adapter could be opened: {0}")]
    NoWgpu(String),
}

/// Work that runs on whichever backend was chosen.
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output;
}

/// Resolves `choice` and runs `task` on that backend.
pub fn run_on<T: BackendTask>(choice: BackendChoice, task: T) -> Result<T::Output, BackendError> {
    match resolve(choice)? {
        Resolved::Cpu(info) => Ok(task.run::<Cpu>(Default::default(), info)),
        #[cfg(feature = "wgpu")]
        Resolved::Wgpu(device, info) => Ok(task.run::<Gpu>(device, info)),
        #[cfg(feature = "cuda")]
        Resolved::Cuda(device, info) => Ok(task.run::<Cuda>(device, info)),
        #[cfg(feature = "ndarray")]
        Resolved::Ndarray(info) => Ok(task.run::<Ndarray>(Default::default(), info)),
    }
}

enum Resolved {
    Cpu(BackendInfo),
    #[cfg(feature = "wgpu")]
    Wgpu(burn::backend::wgpu::WgpuDevice, BackendInfo),
    #[cfg(feature = "cuda")]
    Cuda(burn::backend::cuda::CudaDevice, BackendInfo),
    #[cfg(feature = "ndarray")]
    Ndarray(BackendInfo),
}

fn cpu_info() -> BackendInfo {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    BackendInfo { kind: "cpu", name: format!("CPU (burn flex, {threads} threads)") }
}

fn resolve(choice: BackendChoice) -> Result<Resolved, BackendError> {
    match choice {
        BackendChoice::Cpu => Ok(Resolved::Cpu(cpu_info())),
        #[cfg(feature = "ndarray")]
        BackendChoice::Ndarray => Ok(Resolved::Ndarray(BackendInfo { kind: "cpu", name: "CPU (burn ndarray)".into() })),
        #[cfg(not(feature = "ndarray"))]
        BackendChoice::Ndarray => Err(BackendError::NdarrayNotBuilt),
        BackendChoice::Cuda => cuda(),
        BackendChoice::Wgpu => wgpu_any(),
        BackendChoice::Auto => {
            if let Ok(r) = cuda() {
                return Ok(r);
            }
            #[cfg(feature = "wgpu")]
            if let Some(r) = wgpu_hardware() {
                return Ok(r);
            }
            Ok(Resolved::Cpu(cpu_info()))
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Resolved, BackendError> {
    use burn::backend::cuda::CudaDevice;
    let device = CudaDevice::new(0);
    // The runtime loads the driver lazily and panics when there is none: probe with one op.
    let probe = std::panic::catch_unwind(|| {
        let t = burn::tensor::Tensor::<Cuda, 1>::ones([1], &device);
        t.into_data().to_vec::<f32>().map(|v| v[0]).unwrap_or(0.0)
    });
    match probe {
        Ok(v) if v == 1.0 => Ok(Resolved::Cuda(device, BackendInfo { kind: "cuda", name: "CUDA device 0".into() })),
        Ok(_) => Err(BackendError::NoCuda("the probe computed a wrong value".into())),
        Err(_) => Err(BackendError::NoCuda("no driver or device".into())),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Resolved, BackendError> {
    Err(BackendError::CudaNotBuilt)
}

/// The adapters wgpu can see, best first: discrete, integrated, virtual, then software.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapters() -> Vec<wgpu::AdapterInfo> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let mut infos: Vec<_> = pollster_block(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .map(|a| a.get_info())
        .collect();
    let rank = |t: wgpu::DeviceType| match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    infos.sort_by_key(|i| rank(i.device_type));
    infos
}

/// Runs a wgpu future to completion on this thread. wgpu's native futures (adapter and device
/// requests, adapter enumeration) resolve without an external reactor, so a polling loop is a
/// complete executor and saves a dependency.
#[cfg(feature = "wgpu")]
pub fn pollster_block<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device_for(info: &wgpu::AdapterInfo) -> burn::backend::wgpu::WgpuDevice {
    use burn::backend::wgpu::WgpuDevice;
    match info.device_type {
        wgpu::DeviceType::DiscreteGpu => WgpuDevice::DiscreteGpu(0),
        wgpu::DeviceType::IntegratedGpu => WgpuDevice::IntegratedGpu(0),
        wgpu::DeviceType::VirtualGpu => WgpuDevice::VirtualGpu(0),
        wgpu::DeviceType::Cpu | wgpu::DeviceType::Other => WgpuDevice::Cpu,
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_info(info: &wgpu::AdapterInfo) -> BackendInfo {
    BackendInfo { kind: "wgpu", name: format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type) }
}

/// A hardware adapter only: a software rasteriser (lavapipe, llvmpipe, WARP) is far slower than
/// the CPU backend, so `auto` never picks one.
#[cfg(feature = "wgpu")]
fn wgpu_hardware() -> Option<Resolved> {
    let infos = wgpu_adapters();
    let best = infos.first().filter(|i| !matches!(i.device_type, wgpu::DeviceType::Cpu | wgpu::DeviceType::Other))?;
    Some(Resolved::Wgpu(wgpu_device_for(best), wgpu_info(best)))
}

/// Any adapter, software ones included (asked for explicitly, e.g. to test the wgpu path in CI).
#[cfg(feature = "wgpu")]
fn wgpu_any() -> Result<Resolved, BackendError> {
    let infos = wgpu_adapters();
    let best = infos.first().ok_or_else(|| BackendError::NoWgpu("no adapter found (is a Vulkan/Metal/DX12 driver installed?)".into()))?;
    Ok(Resolved::Wgpu(wgpu_device_for(best), wgpu_info(best)))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_any() -> Result<Resolved, BackendError> {
    Err(BackendError::WgpuNotBuilt)
}
