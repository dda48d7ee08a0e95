//! Which backend runs the models, chosen at start: CUDA when its driver and runtime compiler load
//! and a device opens, else a hardware wgpu adapter (Vulkan / Metal / DX12), else the CPU. Each
//! backend `auto` passes over leaves a reason in [`BackendInfo::skipped`].
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
    /// Why `auto` passed over the backends it prefers, best first, e.g.
    /// "cuda: libcuda.so.1 not found (no NVIDIA driver)"; empty when the backend was asked for
    /// by name or the first choice ran.
    pub skipped: Vec<String>,
}

impl BackendInfo {
    fn new(kind: &'static str, name: String) -> Self {
        Self { kind, name, skipped: Vec::new() }
    }
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
    BackendInfo::new("cpu", format!("CPU (burn flex, {threads} threads)"))
}

impl Resolved {
    fn info_mut(&mut self) -> &mut BackendInfo {
        match self {
            Resolved::Cpu(i) => i,
            #[cfg(feature = "wgpu")]
            Resolved::Wgpu(_, i) => i,
            #[cfg(feature = "cuda")]
            Resolved::Cuda(_, i) => i,
            #[cfg(feature = "ndarray")]
            Resolved::Ndarray(i) => i,
        }
    }
}

fn resolve(choice: BackendChoice) -> Result<Resolved, BackendError> {
    match choice {
        BackendChoice::Cpu => Ok(Resolved::Cpu(cpu_info())),
        #[cfg(feature = "ndarray")]
        BackendChoice::Ndarray => Ok(Resolved::Ndarray(BackendInfo::new("cpu", "CPU (burn ndarray)".into()))),
        #[cfg(not(feature = "ndarray"))]
        BackendChoice::Ndarray => Err(BackendError::NdarrayNotBuilt),
        BackendChoice::Cuda => cuda(),
        BackendChoice::Wgpu => wgpu_any(),
        BackendChoice::Auto => {
            let mut skipped = Vec::new();
            let mut chosen = match cuda() {
                Ok(r) => Some(r),
                Err(e) => {
                    skipped.push(format!("cuda: {}", skip_reason(&e)));
                    None
                }
            };
            if chosen.is_none() {
                match wgpu_hardware() {
                    Ok(r) => chosen = Some(r),
                    Err(reason) => skipped.push(format!("wgpu: {reason}")),
                }
            }
            let mut r = chosen.unwrap_or_else(|| Resolved::Cpu(cpu_info()));
            r.info_mut().skipped = skipped;
            Ok(r)
        }
    }
}

/// The reason in a skipped-backend line: the error's own words, without the "no … could be
/// opened" preamble that the line's `cuda:` / `wgpu:` prefix already says.
fn skip_reason(e: &BackendError) -> String {
    match e {
        BackendError::NoCuda(r) | BackendError::NoWgpu(r) => r.clone(),
        BackendError::CudaNotBuilt => "not built in (this build has no `cuda` feature)".into(),
        BackendError::WgpuNotBuilt => "not built in (this build has no `wgpu` feature)".into(),
        other => other.to_string(),
    }
}

/// Why CUDA cannot run on this machine, from what a library loader finds: `load` opens one
/// shared library by file name. `None` when the driver and the runtime compiler both load.
///
/// cudarc (under burn's CUDA runtime) panics on the first CUDA call when a library is missing,
/// and its panic names every file it tried; asking first gives one line that says what to
/// install. A function of the loader so the reasons can be tested on any machine.
pub fn cuda_library_problem(load: &mut dyn FnMut(&str) -> bool) -> Option<String> {
    let (driver, nvrtc) = cuda_library_names();
    if driver.is_empty() {
        return Some("CUDA is not available on this operating system".into());
    }
    if !driver.iter().any(|name| load(name)) {
        return Some(format!("{} not found (no NVIDIA driver)", driver[0]));
    }
    if !nvrtc.iter().any(|name| load(name)) {
        return Some(format!(
            "the NVIDIA driver is installed but NVRTC ({}) is not found: install the CUDA toolkit's \
             runtime compiler (nvidia-cuda-nvrtc) or add its lib folder to {}",
            nvrtc[0],
            if cfg!(windows) { "PATH" } else { "LD_LIBRARY_PATH" }
        ));
    }
    None
}

/// The file names cudarc looks for (a subset of its candidates: if one of these loads, cudarc
/// finds it too): the driver, then NVRTC, the runtime compiler cubecl builds its kernels with.
fn cuda_library_names() -> (&'static [&'static str], &'static [&'static str]) {
    if cfg!(target_os = "linux") {
        (&["libcuda.so.1", "libcuda.so"], &["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11"])
    } else if cfg!(windows) {
        (&["nvcuda.dll"], &["nvrtc64_130_0.dll", "nvrtc.dll"])
    } else {
        (&[], &[])
    }
}

/// Opens a shared library by file name (the system's search path), keeping it loaded: the
/// driver starts threads in `cuInit`, so unloading it after the device check is not safe.
#[cfg(feature = "cuda")]
fn load_kept(name: &str) -> Option<&'static libloading::Library> {
    // SAFETY: loading runs the library's initialisers; these are NVIDIA's own driver and
    // compiler libraries, the ones cudarc loads the same way a moment later.
    let lib = unsafe { libloading::Library::new(name) }.ok()?;
    Some(Box::leak(Box::new(lib)))
}

/// The driver's answer to `cuInit` and `cuDeviceGetCount`, as a reason when no device can be
/// used ("CUDA_ERROR_NO_DEVICE" inside a container started without the GPU, an old driver).
#[cfg(feature = "cuda")]
fn cuda_device_problem() -> Option<String> {
    let (driver, _) = cuda_library_names();
    let lib = driver.iter().find_map(|n| load_kept(n))?;
    type Init = unsafe extern "C" fn(u32) -> i32;
    type Count = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: the CUDA driver API's C signatures (CUresult is a C enum, i.e. int); cuInit may
    // be called any number of times, and the count is written into a local.
    unsafe {
        let init = lib.get::<Init>(b"cuInit\0").ok()?;
        let count = lib.get::<Count>(b"cuDeviceGetCount\0").ok()?;
        match init(0) {
            0 => {}
            100 => return Some("the NVIDIA driver sees no CUDA device (CUDA_ERROR_NO_DEVICE)".into()),
            e => return Some(format!("the NVIDIA driver failed to start (cuInit error {e}; see `nvidia-smi`)")),
        }
        let mut n = 0i32;
        if count(&mut n) != 0 || n < 1 {
            return Some("the NVIDIA driver sees no CUDA device".into());
        }
    }
    None
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Resolved, BackendError> {
    use burn::backend::cuda::CudaDevice;
    // Asked once per process: the libraries do not appear while it runs, and the app asks again
    // at every engine restart.
    static PROBLEM: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let problem = PROBLEM.get_or_init(|| cuda_library_problem(&mut |name| load_kept(name).is_some()).or_else(cuda_device_problem));
    if let Some(p) = problem {
        return Err(BackendError::NoCuda(p.clone()));
    }
    let device = CudaDevice::new(0);
    // The runtime can still panic (an unsupported GPU, NVRTC failing to compile): probe with
    // one op that compiles and runs a kernel.
    let probe = std::panic::catch_unwind(|| {
        let t = burn::tensor::Tensor::<Cuda, 1>::ones([1], &device).add_scalar(1.0);
        t.into_data().to_vec::<f32>().map(|v| v[0]).unwrap_or(0.0)
    });
    match probe {
        Ok(v) if v == 2.0 => Ok(Resolved::Cuda(device, BackendInfo::new("cuda", "CUDA device 0".into()))),
        Ok(_) => Err(BackendError::NoCuda("device 0 computed a wrong value in the start-up check".into())),
        Err(p) => Err(BackendError::NoCuda(format!("device 0 did not start: {}", panic_text(p.as_ref())))),
    }
}

/// A panic's message, for the reason a backend did not start.
#[cfg(feature = "cuda")]
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let s = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("a panic");
    // cudarc's messages list every library name it tried; the first line says enough.
    s.lines().next().unwrap_or(s).chars().take(200).collect()
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Resolved, BackendError> {
    Err(BackendError::CudaNotBuilt)
}

/// (bytes in use, bytes reserved) by the GPU runtime's allocator on `device`; `None` on the CPU
/// backends or when the runtime cannot say. Reading it waits for the device's queued work.
pub fn gpu_memory<B: Backend>(device: &B::Device) -> Option<(u64, u64)> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let any = device as &dyn std::any::Any;
    #[cfg(feature = "wgpu")]
    if let Some(d) = any.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
        use cubecl::Runtime;
        let usage = catch_unwind(AssertUnwindSafe(|| burn::backend::wgpu::WgpuRuntime::client(d).memory_usage())).ok()?.ok()?;
        return Some((usage.bytes_in_use, usage.bytes_reserved));
    }
    #[cfg(feature = "cuda")]
    if let Some(d) = any.downcast_ref::<burn::backend::cuda::CudaDevice>() {
        use cubecl::Runtime;
        let usage = catch_unwind(AssertUnwindSafe(|| cubecl::cuda::CudaRuntime::client(d).memory_usage())).ok()?.ok()?;
        return Some((usage.bytes_in_use, usage.bytes_reserved));
    }
    let _ = any;
    None
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
    BackendInfo::new("wgpu", format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type))
}

/// A hardware adapter only: a software rasteriser (lavapipe, llvmpipe, WARP) is far slower than
/// the CPU backend, so `auto` never picks one. The error is the reason for the skipped line.
#[cfg(feature = "wgpu")]
fn wgpu_hardware() -> Result<Resolved, String> {
    let infos = wgpu_adapters();
    match infos.first() {
        None => Err("no adapter found (no Vulkan/Metal/DX12 driver)".into()),
        Some(i) if matches!(i.device_type, wgpu::DeviceType::Cpu | wgpu::DeviceType::Other) => {
            Err(format!("only a software adapter ({}), slower than the CPU backend", i.name))
        }
        Some(best) => Ok(Resolved::Wgpu(wgpu_device_for(best), wgpu_info(best))),
    }
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_hardware() -> Result<Resolved, String> {
    Err(skip_reason(&BackendError::WgpuNotBuilt))
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
