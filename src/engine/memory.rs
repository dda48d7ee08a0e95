//! The memory a generation will need, estimated before it runs, and what to change when it
//! will not fit. The figures come from the loaded model's parameter counts (weights as they sit
//! in memory, f32 today) and per-pixel / per-token activation models of its parts; the budget is
//! what the system can give the process (its own resident memory plus `MemAvailable`).
//!
//! It is an estimate, not a bound: it says "about 3.1 GB", and "will not fit" only when the
//! estimate is over what the system has.

/// What the engine measures of a loaded model for the estimate (sent with its info).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ModelFootprint {
    /// Bytes of the denoiser's weights in memory (UViT or SANA transformer).
    pub denoiser: u64,
    /// The text encoder's (0 for class models).
    pub text_encoder: u64,
    /// The autoencoder's, counted twice on the CPU (its kernels keep a rearranged copy).
    pub autoencoder: u64,
    /// Activation bytes per latent token and image at the denoiser's peak (CFG doubles the
    /// batch for SANA, whose guided rows run as one batch).
    pub per_token: f64,
    /// Decoder activation bytes per output pixel (one image is decoded at a time).
    pub decode_per_pixel: f64,
    /// The text encoder is released before the transformer loads (memory is tight).
    pub low_memory: bool,
    /// The text encoder runs on the CPU backend whatever the backend (wgpu's default: see
    /// `SanaPipeline::set_text_on_cpu`), so its weights are in system memory.
    pub text_on_cpu: bool,
    /// The autoencoder runs on the CPU backend ([`autoencoder_on_cpu`], or the user's choice).
    pub ae_on_cpu: bool,
}

impl ModelFootprint {
    /// Where each component runs and what its weights take, for the line under the estimate:
    /// "text encoder CPU 5.2 GB · denoiser GPU 1.2 GB · autoencoder GPU 0.6 GB".
    pub fn placement(&self, backend: &str) -> String {
        let dev = |on_cpu: bool| if on_cpu || backend == "cpu" { "CPU" } else { "GPU" };
        let mut parts = Vec::new();
        if self.text_encoder > 0 {
            parts.push(format!("text encoder {} {}", dev(self.text_on_cpu), human(self.text_encoder)));
        }
        parts.push(format!("denoiser {} {}", dev(false), human(self.denoiser)));
        parts.push(format!("autoencoder {} {}", dev(self.ae_on_cpu), human(self.autoencoder)));
        parts.join(" · ")
    }

    /// What the loaded model holds between runs, which the estimate's peak already counts.
    pub fn held(&self, backend: &str) -> u64 {
        let ae = if backend == "cpu" || self.ae_on_cpu { 2 * self.autoencoder } else { self.autoencoder };
        self.denoiser + ae + if self.low_memory { 0 } else { self.text_encoder }
    }
}

/// What a run of the loaded model can have: what the system has free, plus what the model
/// already holds (the estimate's peak counts it, so it must not count twice). Not the rest of
/// the process — reconstruction autoencoders, pictures, caches stay where they are during the
/// run, so counting the whole resident set as available would call a run that cannot fit safe.
pub fn available_for_run(mem_available: u64, rss: u64, f: &ModelFootprint, backend: &str) -> u64 {
    mem_available + rss.min(f.held(backend))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub peak: u64,
    /// The phase that sets the peak: "text encoding", "sampling" or "decoding".
    pub phase: &'static str,
    /// What the run can have ([`available_for_run`]).
    pub available: Option<u64>,
    /// Set when the peak is over what is available: what to change.
    pub advice: Option<String>,
}

/// The estimate for one run: `batch` images of `width × height` pixels with `tokens` latent
/// positions each, guided (`cfg`) or not, on `backend` ("cpu", "wgpu", "cuda").
pub fn estimate(f: &ModelFootprint, backend: &str, width: usize, height: usize, batch: usize, tokens: usize, cfg: bool, available: Option<u64>) -> Estimate {
    // The CPU kernels keep a rearranged copy of every convolution's weights.
    let ae = if backend == "cpu" || f.ae_on_cpu { 2 * f.autoencoder } else { f.autoencoder };
    let rows = batch.max(1) * if cfg { 2 } else { 1 };
    let sampling_acts = (f.per_token * (rows * tokens) as f64) as u64;
    let decode_acts = (f.decode_per_pixel * (width * height) as f64) as u64;
    // With low memory the text encoder is gone before the transformer and the decoder load.
    let resident = |with_text: bool| f.denoiser + ae + if with_text { f.text_encoder } else { 0 };
    let text_phase = if f.low_memory { f.text_encoder } else { resident(true) };
    let sampling = resident(!f.low_memory) + sampling_acts;
    let decoding = resident(!f.low_memory) + decode_acts;
    let (peak, phase) = [(text_phase, "text encoding"), (sampling, "sampling"), (decoding, "decoding")]
        .into_iter()
        .max_by_key(|(b, _)| *b)
        .unwrap_or((0, "sampling"));
    let advice = available.filter(|a| peak > *a).map(|a| {
        let over = peak - a;
        match phase {
            "decoding" => format!(
                "about {} over what this computer has: the {width}×{height} decode is the peak; choose a smaller size{}",
                human(over),
                if backend == "cpu" { "" } else { ", or the CPU backend (system memory is usually larger)" }
            ),
            "sampling" if batch > 1 => format!("about {} over what this computer has: lower the batch (now {batch}) or the size", human(over)),
            "sampling" => format!("about {} over what this computer has: choose a smaller size", human(over)),
            _ => format!(
                "about {} over what this computer has: the model's weights alone do not fit; close other programs or use a smaller model (e.g. Sana 600M or Sprint 0.6B)",
                human(over)
            ),
        }
    });
    Estimate { peak, phase, available, advice }
}

/// Overrides the memory budget (MiB) of the autoencoder runs ([`autoencoder_budget`]).
pub const BUDGET_ENV: &str = "DCAE_MEMORY_BUDGET_MB";

/// The memory an autoencoder run may use on `backend` ("cpu", "wgpu", "cuda"), which decides
/// batch, image-by-image or tiled decoding: `DCAE_MEMORY_BUDGET_MB`, else half of
/// `MemAvailable` (the rest is the other models', the app's and the system's), else 4 GiB; and
/// where the figure came from. GPU adapters' own memory is not queried yet.
pub fn autoencoder_budget(backend: &str) -> Result<(crate::model::tiling::Budget, String), String> {
    let weight_copies = if backend == "cpu" { 2 } else { 1 };
    let budget = |bytes: u64| crate::model::tiling::Budget { bytes, weight_copies, max_tensor: None };
    let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
    if let Ok(v) = std::env::var(BUDGET_ENV) {
        let mb: f64 = v.trim().parse().map_err(|_| format!("{BUDGET_ENV}={v} is not a number of MiB"))?;
        return Ok((budget((mb.max(0.0) * (1u64 << 20) as f64) as u64), BUDGET_ENV.to_string()));
    }
    let note = if backend == "cpu" { "" } else { "; GPU memory not queried" };
    Ok(match mem_available() {
        Some(b) => (budget(b / 2), format!("half of MemAvailable {}{note}", gib(b))),
        None => (budget(4 << 30), format!("4 GiB assumed, /proc/meminfo unreadable{note}")),
    })
}

/// [`autoencoder_budget`] for the backend `B` on `device`, with the device's largest tensor and,
/// on a GPU whose free memory the driver tells (CUDA), half of that instead of the system's;
/// `None` when `DCAE_MEMORY_BUDGET_MB` is malformed.
pub fn autoencoder_budget_on<B: burn::tensor::backend::Backend>(device: &B::Device) -> Option<crate::model::tiling::Budget> {
    let cpu = std::any::TypeId::of::<B>() == std::any::TypeId::of::<crate::engine::backend::Cpu>();
    let (mut b, source) = autoencoder_budget(if cpu { "cpu" } else { "gpu" }).ok()?;
    if !cpu && source != BUDGET_ENV {
        if let Some(free) = crate::engine::backend::device_memory_available::<B>(device) {
            b.bytes = free / 2;
        }
    }
    b.max_tensor = crate::model::limits::max_tensor_bytes::<B>(device);
    Some(b)
}

/// [`autoencoder_budget_on`] for the side `ae` runs on (the CPU backend's when it was placed
/// there).
pub fn autoencoder_budget_for<B: burn::tensor::backend::Backend>(ae: &crate::model::placed::PlacedAe<B>, device: &B::Device) -> Option<crate::model::tiling::Budget> {
    autoencoder_budget_placed::<B>(ae.on_cpu(), device)
}

/// [`autoencoder_budget_for`] before the autoencoder is loaded: on the CPU when `on_cpu`.
pub fn autoencoder_budget_placed<B: burn::tensor::backend::Backend>(on_cpu: bool, device: &B::Device) -> Option<crate::model::tiling::Budget> {
    if on_cpu {
        autoencoder_budget_on::<crate::engine::backend::Cpu>(&Default::default())
    } else {
        autoencoder_budget_on::<B>(device)
    }
}

/// Where `Placement::Auto` puts an autoencoder on backend `B`: on the CPU when the GPU's memory
/// (as its driver reports it: CUDA's free memory, a Vulkan adapter's device-local heaps) cannot
/// hold the denoiser's and the autoencoder's weights (`denoiser`, `autoencoder` bytes, as held
/// there) with a quarter of it left for activations; on the GPU otherwise, and wherever the
/// memory is not reported. Never on the CPU backend itself.
pub fn autoencoder_on_cpu<B: burn::tensor::backend::Backend>(device: &B::Device, denoiser: u64, autoencoder: u64) -> bool {
    if std::any::TypeId::of::<B>() == std::any::TypeId::of::<crate::engine::backend::Cpu>() {
        return false;
    }
    crate::engine::backend::device_memory_available::<B>(device).is_some_and(|free| weights_crowd(free, denoiser, autoencoder))
}

/// Whether `denoiser + autoencoder` bytes of weights leave less than a quarter of `free`.
pub fn weights_crowd(free: u64, denoiser: u64, autoencoder: u64) -> bool {
    (denoiser + autoencoder) as f64 > 0.75 * free as f64
}

/// The system's memory in all (Linux: `MemTotal`); `None` elsewhere.
pub fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Memory the system can give now (Linux: `MemAvailable`); `None` elsewhere.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn human(b: u64) -> String {
    let g = b as f64 / (1u64 << 30) as f64;
    if g >= 1.0 {
        format!("{g:.1} GB")
    } else {
        format!("{:.0} MB", b as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sana_600m() -> ModelFootprint {
        ModelFootprint {
            denoiser: 2_367_000_000,
            text_encoder: 10_458_000_000,
            autoencoder: 1_249_000_000,
            per_token: 98_000.0,
            decode_per_pixel: 1024.0,
            low_memory: true,
            text_on_cpu: false,
            ae_on_cpu: false,
        }
    }

    #[test]
    fn placement_names_each_component_where_it_runs() {
        let f = ModelFootprint { text_on_cpu: true, ..sana_600m() };
        assert_eq!(f.placement("wgpu"), "text encoder CPU 9.7 GB · denoiser GPU 2.2 GB · autoencoder GPU 1.2 GB");
        assert_eq!(f.placement("cpu"), "text encoder CPU 9.7 GB · denoiser CPU 2.2 GB · autoencoder CPU 1.2 GB");
        let f = ModelFootprint { ae_on_cpu: true, ..f };
        assert_eq!(f.placement("wgpu"), "text encoder CPU 9.7 GB · denoiser GPU 2.2 GB · autoencoder CPU 1.2 GB");
        // On the CPU its kernels' second copy of the weights counts (everything resident).
        let f = ModelFootprint { low_memory: false, ..f };
        let gpu = estimate(&ModelFootprint { ae_on_cpu: false, ..f }, "wgpu", 512, 512, 1, 256, false, None);
        assert_eq!(estimate(&f, "wgpu", 512, 512, 1, 256, false, None).peak, gpu.peak + f.autoencoder);
    }

    /// The estimate called the whole resident set available, so three reconstruction
    /// autoencoders (and the session's pictures) counted as free memory for a generation.
    #[test]
    fn regression_memory_held_by_other_models_is_not_free_for_a_run() {
        let f = ModelFootprint { text_on_cpu: true, ..sana_600m() };
        let held = f.held("cpu");
        let others = 3_000_000_000;
        assert_eq!(available_for_run(4 << 30, held + others, &f, "cpu"), (4 << 30) + held);
        // Before the model's weights are all resident, only what is resident counts.
        assert_eq!(available_for_run(4 << 30, 1 << 30, &f, "cpu"), 5 << 30);
    }

    #[test]
    fn auto_moves_the_autoencoder_off_a_gpu_only_when_the_weights_crowd_it() {
        // UViT-H (2.0 GB f32) + f64c128 (1.3 GB): a 4 GB GPU keeps a quarter free, a 3 GB one does not.
        assert!(!weights_crowd(4_500_000_000, 2_000_000_000, 1_300_000_000));
        assert!(weights_crowd(3_000_000_000, 2_000_000_000, 1_300_000_000));
        // Where the driver reports nothing (Metal) or on the CPU backend, it stays with the run.
        assert!(!autoencoder_on_cpu::<crate::engine::backend::Cpu>(&Default::default(), u64::MAX / 4, u64::MAX / 4));
    }

    #[test]
    fn the_peak_phase_and_the_advice_follow_the_numbers() {
        let f = sana_600m();
        // Low memory: Gemma alone (10.5 GB) is the peak at 512², larger than transformer + VAE.
        let e = estimate(&f, "cpu", 512, 512, 1, 256, true, Some(16 << 30));
        assert_eq!((e.phase, e.peak), ("text encoding", f.text_encoder));
        assert!(e.advice.is_none());
        // Everything resident at once: the sum.
        let all = ModelFootprint { low_memory: false, ..f };
        let e = estimate(&all, "cuda", 512, 512, 1, 256, true, None);
        assert!(e.peak >= all.text_encoder + all.denoiser + all.autoencoder);
        // A 4096² decode on an 8 GB budget: the decoder is the peak and the advice says so.
        // (1024 B/px × 16.8 M px = 17 GB of activations, above Gemma's 10.5 GB.)
        let e = estimate(&f, "cpu", 4096, 4096, 1, 128 * 128, true, Some(8 << 30));
        assert_eq!(e.phase, "decoding", "{e:?}");
        assert_eq!(e.peak, f.denoiser + 2 * f.autoencoder + 1024 * 4096 * 4096);
        assert!(e.advice.as_deref().is_some_and(|a| a.contains("smaller size")), "{e:?}");
        // A big batch of tokens: sampling is the peak and the advice names the batch.
        let heavy = ModelFootprint { per_token: 10_000_000.0, text_encoder: 0, ..f };
        let e = estimate(&heavy, "cpu", 512, 512, 8, 256, true, Some(16 << 30));
        assert_eq!(e.phase, "sampling");
        assert!(e.advice.as_deref().is_some_and(|a| a.contains("batch (now 8)")), "{e:?}");
    }
}

/// The process's resident memory and what it could have, read once a second on a helper
/// thread, so the UI shows them without reading /proc itself.
#[derive(Clone)]
pub struct Watch {
    rss: std::sync::Arc<std::sync::atomic::AtomicU64>,
    available: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Watch {
    pub fn start() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let w = Self { rss: Arc::new(AtomicU64::new(0)), available: Arc::new(AtomicU64::new(0)) };
        let (rss, available) = (Arc::downgrade(&w.rss), Arc::downgrade(&w.available));
        let _ = std::thread::Builder::new().name("memory-watch".into()).spawn(move || loop {
            // Ends with the app: once the UI's handles are gone there is no one to tell.
            let (Some(r), Some(a)) = (rss.upgrade(), available.upgrade()) else { return };
            r.store(process_rss().unwrap_or(0), Ordering::Relaxed);
            a.store(mem_available().unwrap_or(0), Ordering::Relaxed);
            drop((r, a));
            std::thread::sleep(std::time::Duration::from_secs(1));
        });
        w
    }

    pub fn rss(&self) -> Option<u64> {
        Some(self.rss.load(std::sync::atomic::Ordering::Relaxed)).filter(|v| *v > 0)
    }

    /// The system's `MemAvailable` (not counting this process's own memory).
    pub fn mem_available(&self) -> Option<u64> {
        Some(self.available.load(std::sync::atomic::Ordering::Relaxed)).filter(|v| *v > 0)
    }

    /// What a run of a model with footprint `f` can have ([`available_for_run`]).
    pub fn available_for_run(&self, f: &ModelFootprint, backend: &str) -> Option<u64> {
        Some(available_for_run(self.mem_available()?, self.rss().unwrap_or(0), f, backend))
    }
}

fn process_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    Some(statm.split_whitespace().nth(1)?.parse::<u64>().ok()? * 4096)
}
