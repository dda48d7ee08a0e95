//! Which backend runs the models, chosen at start: CUDA when its driver and runtime compiler load
//! and a device opens, else a hardware wgpu adapter (Vulkan / Metal / DX12), else the CPU. Each
//! backend `auto` passes over leaves a reason in [`BackendInfo::skipped`].
//!
//! Model code is generic over `B: Backend`; this module turns a run-time choice into a
//! monomorphised call through [`BackendTask`].

use std::fmt;

use burn::tensor::backend::Backend;

pub use crate::model::limits::DeviceLimits;

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

/// Where one component of a pipeline runs (the text encoder today).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Placement {
    /// Where it fits best: the GPU for a text encoder the backend computes in bf16 (CUDA), else
    /// the CPU (wgpu would widen Gemma-2 to 10.5 GB of f32 on the device).
    #[default]
    Auto,
    /// The backend's device.
    Gpu,
    /// The CPU backend, whatever the backend.
    Cpu,
}

impl Placement {
    /// `Some(on_cpu)` when chosen, `None` for the pipeline's own default.
    pub fn on_cpu(self) -> Option<bool> {
        match self {
            Placement::Auto => None,
            Placement::Gpu => Some(false),
            Placement::Cpu => Some(true),
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Placement::Auto => "auto",
            Placement::Gpu => "GPU",
            Placement::Cpu => "CPU",
        })
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
    /// What the device holds: largest tensor and buffer, memory (GPU backends; the CPU's have
    /// none unless `DCAE_GPU_MAX_BINDING` emulates a cap).
    pub limits: DeviceLimits,
}

impl BackendInfo {
    fn new(kind: &'static str, name: String) -> Self {
        Self { kind, name, skipped: Vec::new(), limits: DeviceLimits::default() }
    }
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} — {}", self.kind, self.name)?;
        if self.kind != "cpu" || self.limits.max_tensor.is_some() {
            write!(f, " [{}]", self.limits.describe())?;
        }
        Ok(())
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
    let mut info = BackendInfo::new("cpu", format!("CPU (burn flex, {threads} threads)"));
    info.limits.max_tensor = crate::model::limits::cap_from_env().ok().flatten();
    info.limits.memory_total = crate::engine::memory::mem_total();
    info.limits.memory_free = crate::engine::memory::mem_available();
    info
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
        Ok(v) if v == 2.0 => {
            let mut info = BackendInfo::new("cuda", "CUDA device 0".into());
            info.limits.max_tensor = crate::model::limits::max_tensor_bytes::<Cuda>(&device);
            if let Some((total, free)) = cuda_memory() {
                info.limits.memory_total = Some(total);
                info.limits.memory_free = Some(free);
            }
            Ok(Resolved::Cuda(device, info))
        }
        Ok(_) => Err(BackendError::NoCuda("device 0 computed a wrong value in the start-up check".into())),
        Err(p) => Err(BackendError::NoCuda(format!("device 0 did not start: {}", panic_text(p.as_ref())))),
    }
}

/// (total, free) bytes of CUDA device 0, from the driver (`cuMemGetInfo` in the device's
/// primary context, the one cubecl uses, so nothing new is created on the device).
#[cfg(feature = "cuda")]
fn cuda_memory() -> Option<(u64, u64)> {
    let (driver, _) = cuda_library_names();
    let lib = driver.iter().find_map(|n| load_kept(n))?;
    type DeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type Retain = unsafe extern "C" fn(*mut *mut std::ffi::c_void, i32) -> i32;
    type Release = unsafe extern "C" fn(i32) -> i32;
    type Push = unsafe extern "C" fn(*mut std::ffi::c_void) -> i32;
    type Pop = unsafe extern "C" fn(*mut *mut std::ffi::c_void) -> i32;
    type MemInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    // SAFETY: the CUDA driver API's C signatures (CUdevice is int, CUcontext a pointer, sizes
    // size_t); every out-parameter is a local, and the context pushed is popped and released.
    unsafe {
        let device_get = lib.get::<DeviceGet>(b"cuDeviceGet\0").ok()?;
        let retain = lib.get::<Retain>(b"cuDevicePrimaryCtxRetain\0").ok()?;
        let release = lib.get::<Release>(b"cuDevicePrimaryCtxRelease_v2\0").ok()?;
        let push = lib.get::<Push>(b"cuCtxPushCurrent_v2\0").ok()?;
        let pop = lib.get::<Pop>(b"cuCtxPopCurrent_v2\0").ok()?;
        let mem_info = lib.get::<MemInfo>(b"cuMemGetInfo_v2\0").ok()?;
        let mut dev = 0i32;
        if device_get(&mut dev, 0) != 0 {
            return None;
        }
        let mut ctx = std::ptr::null_mut();
        if retain(&mut ctx, dev) != 0 {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        let ok = push(ctx) == 0 && {
            let r = mem_info(&mut free, &mut total) == 0;
            let mut popped = std::ptr::null_mut();
            pop(&mut popped);
            r
        };
        release(dev);
        ok.then_some((total as u64, free as u64))
    }
}

/// A panic's message, for the reason a backend did not start.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
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

/// The graphics API that cubecl opens its device on: Metal on macOS, Vulkan everywhere else
/// (Windows included: burn's wgpu runtime never uses DX12 or GL here). Only adapters of this
/// API are ranked, so the adapter named is the one that runs.
#[cfg(feature = "wgpu")]
pub fn cubecl_graphics_api() -> wgpu::Backends {
    if cfg!(target_os = "macos") {
        wgpu::Backends::METAL
    } else {
        wgpu::Backends::VULKAN
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = cubecl_graphics_api();
    wgpu::Instance::new(desc)
}

#[cfg(feature = "wgpu")]
fn adapter_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The memory a GPU `device` can give a run, where its driver tells it: CUDA's free memory
/// (`cuMemGetInfo`), a software wgpu adapter's available system memory, a Vulkan adapter's
/// device-local heaps; `None` on the CPU backends and where nothing says (Metal).
pub fn device_memory_available<B: Backend>(device: &B::Device) -> Option<u64> {
    let any = device as &dyn std::any::Any;
    #[cfg(feature = "cuda")]
    if any.downcast_ref::<burn::backend::cuda::CudaDevice>().is_some() {
        return cuda_memory().map(|(_, free)| free);
    }
    #[cfg(feature = "wgpu")]
    if let Some(d) = any.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
        let opened = WGPU_OPENED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = opened.as_ref().filter(|o| &o.device == d) {
            return if o.software { crate::engine::memory::mem_available() } else { o.info.limits.memory_total };
        }
    }
    let _ = any;
    None
}

/// The adapters of cubecl's graphics API ([`cubecl_graphics_api`]), best first: discrete,
/// integrated, virtual, then software.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapters() -> Vec<wgpu::AdapterInfo> {
    ranked_adapters(&wgpu_instance()).into_iter().map(|a| a.get_info()).collect()
}

#[cfg(feature = "wgpu")]
fn ranked_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster_block(instance.enumerate_adapters(cubecl_graphics_api()));
    adapters.sort_by_key(|a| adapter_rank(a.get_info().device_type));
    adapters
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
fn wgpu_info(info: &wgpu::AdapterInfo) -> BackendInfo {
    BackendInfo::new("wgpu", format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type))
}

/// The wgpu device this process opened, kept for later engines (a restart or a second
/// `run_on`): cubecl registers a device for the life of the process, and a driver gives each
/// adapter one device at a time.
#[cfg(feature = "wgpu")]
static WGPU_OPENED: std::sync::Mutex<Option<OpenedWgpu>> = std::sync::Mutex::new(None);

#[cfg(feature = "wgpu")]
struct OpenedWgpu {
    device: burn::backend::wgpu::WgpuDevice,
    info: BackendInfo,
    software: bool,
}

/// Opens `adapter` for burn as cubecl would (its features, its memory hints), but with the
/// binding limit lowered to `DCAE_GPU_MAX_BINDING` when that is smaller, so cubecl's pages
/// and our own splits follow the emulated adapter; then runs one small operation, so a driver
/// that cannot run is found here and not in the user's first job.
#[cfg(feature = "wgpu")]
fn open_wgpu(instance: wgpu::Instance, adapter: wgpu::Adapter, cap: Option<u64>) -> Result<(burn::backend::wgpu::WgpuDevice, BackendInfo), String> {
    use burn::backend::wgpu::{init_device, RuntimeOptions, WgpuSetup};
    let adapter_info = adapter.get_info();
    let mut info = wgpu_info(&adapter_info);
    let mut limits = adapter.limits();
    info.limits.adapter_max_binding = Some(limits.max_storage_buffer_binding_size);
    if let Some(cap) = cap {
        // wgpu accepts any limit below the adapter's; a binding never exceeds the buffer.
        limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(cap & !3).max(4);
    }
    info.limits.max_buffer = Some(limits.max_buffer_size);
    if adapter_info.device_type == wgpu::DeviceType::Cpu {
        // A software adapter's memory is the system's.
        info.limits.memory_total = crate::engine::memory::mem_total();
        info.limits.memory_free = crate::engine::memory::mem_available();
    } else {
        info.limits.memory_total = vulkan_device_memory(&adapter);
    }
    let desc = wgpu::DeviceDescriptor {
        label: Some("dcae-studio"),
        required_features: adapter.features().difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
        required_limits: limits,
        memory_hints: wgpu::MemoryHints::MemoryUsage,
        trace: wgpu::Trace::Off,
        // SAFETY: what cubecl's own device request enables (its kernels may use passthrough
        // shaders); nothing else here uses them.
        experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
    };
    let (device, queue) = pollster_block(adapter.request_device(&desc)).map_err(|e| format!("{} refused a device: {e}", adapter_info.name))?;
    let backend = adapter_info.backend;
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let dev = init_device(WgpuSetup { instance, adapter, device, queue, backend }, RuntimeOptions::default());
        let t = burn::tensor::Tensor::<Gpu, 1>::ones([4], &dev).add_scalar(1.0).sum();
        let v = t.into_data().to_vec::<f32>().map(|v| v[0]).unwrap_or(0.0);
        (dev, v)
    }));
    match opened {
        Ok((dev, v)) if v == 8.0 => {
            if adapter_info.device_type == wgpu::DeviceType::Cpu {
                crate::model::gpu_kernels::mark_software(&dev);
            }
            info.limits.max_tensor = crate::model::limits::max_tensor_bytes::<Gpu>(&dev);
            Ok((dev, info))
        }
        Ok(_) => Err(format!("{} computed a wrong value in the start-up check (a driver fault)", adapter_info.name)),
        Err(p) => Err(format!("{} did not run the start-up check: {}", adapter_info.name, panic_text(p.as_ref()))),
    }
}

/// The best adapter of cubecl's API, opened and checked ([`open_wgpu`]); `software` admits
/// CPU-type adapters (lavapipe, WARP), which `auto` skips. The error is the reason, for the
/// skipped line or the error.
#[cfg(feature = "wgpu")]
fn wgpu_open_best(software: bool) -> Result<Resolved, String> {
    let mut opened = WGPU_OPENED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(o) = opened.as_ref().filter(|o| software || !o.software) {
        return Ok(Resolved::Wgpu(o.device.clone(), o.info.clone()));
    }
    let instance = wgpu_instance();
    let adapters = ranked_adapters(&instance);
    let api = if cfg!(target_os = "macos") { "Metal" } else { "Vulkan" };
    let Some(best) = adapters.into_iter().next() else {
        return Err(format!("no {api} adapter found (no {api} driver, or its loader finds none)"));
    };
    let best_info = best.get_info();
    if !software && matches!(best_info.device_type, wgpu::DeviceType::Cpu | wgpu::DeviceType::Other) {
        return Err(format!("only a software adapter ({}), slower than the CPU backend", best_info.name));
    }
    let is_software = matches!(best_info.device_type, wgpu::DeviceType::Cpu | wgpu::DeviceType::Other);
    let (dev, info) = open_wgpu(instance, best, crate::model::limits::cap_from_env()?)?;
    *opened = Some(OpenedWgpu { device: dev.clone(), info: info.clone(), software: is_software });
    Ok(Resolved::Wgpu(dev, info))
}

/// A Vulkan adapter's device-local memory (the sum of its `DEVICE_LOCAL` heaps), read from
/// Vulkan itself: wgpu does not report memory. `None` elsewhere.
#[cfg(all(feature = "wgpu", any(target_os = "linux", target_os = "windows")))]
fn vulkan_device_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    if adapter.get_info().backend != wgpu::Backend::Vulkan {
        return None;
    }
    // SAFETY: only reads the physical device's memory properties through the instance wgpu
    // holds for it; nothing is created, and the handles outlive the call.
    unsafe {
        let hal = adapter.as_hal::<wgpu::hal::api::Vulkan>()?;
        let props = hal.shared_instance().raw_instance().get_physical_device_memory_properties(hal.raw_physical_device());
        let n = (props.memory_heap_count as usize).min(props.memory_heaps.len());
        // VK_MEMORY_HEAP_DEVICE_LOCAL_BIT = 1.
        let total: u64 = props.memory_heaps[..n].iter().filter(|h| h.flags.as_raw() & 1 != 0).map(|h| h.size).sum();
        (total > 0).then_some(total)
    }
}

#[cfg(all(feature = "wgpu", not(any(target_os = "linux", target_os = "windows"))))]
fn vulkan_device_memory(_adapter: &wgpu::Adapter) -> Option<u64> {
    None
}

/// A new device on the best adapter of cubecl's API (software ones included) whose largest
/// tensor is `cap` (or the adapter's own), for tests that emulate a smaller adapter in one
/// process: each call opens its own device, apart from the one `run_on` uses.
#[cfg(feature = "wgpu")]
pub fn open_wgpu_with_cap(cap: Option<u64>) -> Result<(burn::backend::wgpu::WgpuDevice, BackendInfo), String> {
    let instance = wgpu_instance();
    let best = ranked_adapters(&instance).into_iter().next().ok_or("no adapter found")?;
    open_wgpu(instance, best, cap)
}

/// A hardware adapter only: a software rasteriser (lavapipe, llvmpipe, WARP) is far slower than
/// the CPU backend, so `auto` never picks one. The error is the reason for the skipped line.
#[cfg(feature = "wgpu")]
fn wgpu_hardware() -> Result<Resolved, String> {
    wgpu_open_best(false)
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_hardware() -> Result<Resolved, String> {
    Err(skip_reason(&BackendError::WgpuNotBuilt))
}

/// Any adapter, software ones included (asked for explicitly, e.g. to test the wgpu path in CI).
#[cfg(feature = "wgpu")]
fn wgpu_any() -> Result<Resolved, BackendError> {
    wgpu_open_best(true).map_err(BackendError::NoWgpu)
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_any() -> Result<Resolved, BackendError> {
    Err(BackendError::WgpuNotBuilt)
}
