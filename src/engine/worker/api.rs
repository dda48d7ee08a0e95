//! The one seam between the app and the engine modules written alongside it (diffusion model,
//! imaging, labels, hub). Everything the worker and the UI need from them goes through the small
//! functions here, so a change of signature there is a change in this file only.
//!
//! TEMPORARY: until `model::diffusion`, `imaging`, `labels` and `weights::hub` land on main, the
//! bodies below are stand-ins with the same shapes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{backend::Backend, Distribution, Tensor, TensorData};
use image::RgbImage;

use crate::model::{Dcae, DcaeConfig};

// ---------------------------------------------------------------------------------------------
// Generator (class-conditional UViT + its DC-AE)
// ---------------------------------------------------------------------------------------------

/// What the UI needs to know about a loaded generation model.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorInfo {
    pub name: String,
    /// Number of real classes; the unconditional (null) id is `num_classes`.
    pub num_classes: usize,
    pub latent_channels: usize,
    /// Latent side (the UViT's `input_size`).
    pub latent_size: usize,
    /// Autoencoder downsampling factor.
    pub factor: usize,
    pub default_steps: usize,
    pub scaling_factor: f32,
}

impl GeneratorInfo {
    pub fn image_size(&self) -> usize {
        self.latent_size * self.factor
    }
}

pub enum GenerateFailure {
    Cancelled,
    Failed(String),
}

pub struct Generator<B: Backend> {
    info: GeneratorInfo,
    ae: Dcae<B>,
    device: B::Device,
}

impl<B: Backend> Generator<B> {
    pub fn load(name: &str, config: &Path, weights: &Path, device: &B::Device) -> Result<Self, String> {
        let json = crate::weights::load::read_json(config).map_err(|e| e.to_string())?;
        let uvit = json.get("uvit").ok_or_else(|| {
            format!("{} is not a generation model: its config.json has no \"uvit\" section", config.display())
        })?;
        let get = |k: &str| uvit.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let (cfg, ae) = crate::weights::load::load_dcae_files::<B>(config, weights, device).map_err(|e| e.to_string())?;
        let info = GeneratorInfo {
            name: name.to_string(),
            num_classes: get("num_classes").unwrap_or(1000),
            latent_channels: cfg.latent_channels,
            latent_size: get("input_size").unwrap_or(8),
            factor: cfg.factor(),
            default_steps: json.pointer("/sampler/steps").and_then(|v| v.as_u64()).unwrap_or(30) as usize,
            scaling_factor: cfg.scaling_factor,
        };
        Ok(Self { info, ae, device: device.clone() })
    }

    pub fn info(&self) -> &GeneratorInfo {
        &self.info
    }

    /// Samples latents for `labels` (one image each). `on_step(step, total, x0)` is called after
    /// every solver step with the model's current estimate of the clean latent.
    pub fn generate(
        &self,
        labels: &[usize],
        _cfg_scale: f32,
        steps: usize,
        seed: u64,
        on_step: &mut dyn FnMut(usize, usize, Tensor<B, 4>),
        cancel: &AtomicBool,
    ) -> Result<(Tensor<B, 4>, usize), GenerateFailure> {
        let i = &self.info;
        B::seed(&self.device, seed);
        let shape = [labels.len(), i.latent_channels, i.latent_size, i.latent_size];
        let noise = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &self.device);
        let target = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 0.5), &self.device);
        let mut x = noise;
        for s in 1..=steps {
            if cancel.load(Ordering::Relaxed) {
                return Err(GenerateFailure::Cancelled);
            }
            let a = s as f32 / steps as f32;
            x = x.clone() * (1.0 - a) + target.clone() * a;
            on_step(s, steps, x.clone());
        }
        Ok((x, steps))
    }

    /// Sampled (scaled) latent → image in about [-1, 1].
    pub fn decode(&self, latent: Tensor<B, 4>) -> Tensor<B, 4> {
        self.ae.decode(latent / self.info.scaling_factor)
    }
}

/// The generator's autoencoder on its own, for fitting the preview projection.
pub fn load_autoencoder<B: Backend>(config: &Path, weights: &Path, device: &B::Device) -> Result<(DcaeConfig, Dcae<B>), String> {
    crate::weights::load::load_dcae_files::<B>(config, weights, device).map_err(|e| e.to_string())
}

/// Reads a model folder's config.json and says whether it is a generation model.
pub fn config_is_generator(config: &Path) -> bool {
    crate::weights::load::read_json(config).map(|j| j.get("uvit").is_some()).unwrap_or(false)
}

/// The DC-AE config of a config.json (autoencoder or combined diffusion config).
pub fn autoencoder_config(config: &Path, name: &str) -> Result<DcaeConfig, String> {
    let json = crate::weights::load::read_json(config).map_err(|e| e.to_string())?;
    crate::weights::load::dcae_config_from_json(&json, name).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Imaging
// ---------------------------------------------------------------------------------------------

pub fn to_nchw(images: &[RgbImage]) -> Result<(Vec<f32>, [usize; 4]), String> {
    let first = images.first().ok_or("no images")?;
    let (w, h) = (first.width() as usize, first.height() as usize);
    let mut v = Vec::with_capacity(images.len() * 3 * h * w);
    for img in images {
        for c in 0..3 {
            for p in img.pixels() {
                v.push(p.0[c] as f32 / 127.5 - 1.0);
            }
        }
    }
    Ok((v, [images.len(), 3, h, w]))
}

pub fn to_rgb8(chw: &[f32], h: usize, w: usize) -> Result<RgbImage, String> {
    if chw.len() < 3 * h * w {
        return Err("image buffer too small".into());
    }
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let p = y as usize * w + x as usize;
        image::Rgb(std::array::from_fn(|c| super::projection::to_u8(chw[c * h * w + p])))
    }))
}

pub fn prepare(img: RgbImage, factor: usize, size: Option<u32>) -> Result<RgbImage, String> {
    let f = factor as u32;
    let n = size.unwrap_or_else(|| img.width().min(img.height()) / f * f);
    if n == 0 || n % f != 0 {
        return Err(format!("the image ({}×{}) is smaller than the model's factor {factor}", img.width(), img.height()));
    }
    if size.is_none() && img.width() % f == 0 && img.height() % f == 0 {
        return Ok(img);
    }
    let (w, h) = (img.width(), img.height());
    let s = n as f32 / w.min(h) as f32;
    let r = image::imageops::resize(&img, (w as f32 * s).round() as u32, (h as f32 * s).round() as u32, image::imageops::FilterType::CatmullRom);
    let (x0, y0) = ((r.width() - n) / 2, (r.height() - n) / 2);
    Ok(image::imageops::crop_imm(&r, x0, y0, n, n).to_image())
}

pub fn psnr(a: &RgbImage, b: &RgbImage) -> Result<f64, String> {
    let mse: f64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / a.as_raw().len() as f64;
    Ok(10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10())
}

pub fn ssim(_a: &RgbImage, _b: &RgbImage) -> Result<f64, String> {
    Ok(0.5)
}

pub fn diff_heatmap(a: &RgbImage, b: &RgbImage, gain: f32) -> Result<RgbImage, String> {
    Ok(RgbImage::from_fn(a.width(), a.height(), |x, y| {
        let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
        let d = (0..3).map(|c| p[c].abs_diff(q[c]) as f32).sum::<f32>() / 3.0 * gain;
        image::Rgb([d.min(255.0) as u8, (d * 0.5).min(255.0) as u8, 0])
    }))
}

pub fn load_image_bytes(bytes: &[u8]) -> Result<RgbImage, String> {
    image::load_from_memory(bytes).map(|i| i.to_rgb8()).map_err(|e| format!("not an image this app can read (PNG, JPEG or WebP): {e}"))
}

pub fn load_image_file(path: &Path) -> Result<RgbImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    load_image_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parameters embedded in saved PNGs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerationParams {
    pub classes: Vec<u32>,
    pub guidance: f32,
    pub steps: u32,
    pub seed: u64,
    pub model: String,
    pub sampler: String,
    pub batch: u32,
}

pub fn save_png_with_params(img: &RgbImage, path: &Path, _params: &GenerationParams) -> Result<(), String> {
    img.save(path).map_err(|e| format!("cannot save {}: {e}", path.display()))
}

/// Generation parameters embedded in a PNG file's bytes, if any.
pub fn read_png_params(_bytes: &[u8]) -> Result<Option<GenerationParams>, String> {
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------------------------

pub const NUM_CLASSES: usize = 1000;

pub fn class_name(id: usize) -> Option<String> {
    (id < NUM_CLASSES).then(|| format!("class {id}"))
}

pub fn class_search(query: &str, limit: usize) -> Vec<(usize, String)> {
    let q = query.trim().to_lowercase();
    (0..NUM_CLASSES)
        .filter_map(|i| class_name(i).map(|n| (i, n)))
        .filter(|(i, n)| q.is_empty() || n.to_lowercase().contains(&q) || i.to_string() == q)
        .take(limit)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Hub
// ---------------------------------------------------------------------------------------------

/// Stand-in for `crate::weights::hub` (same names and shapes) until it lands.
pub mod hub {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::AtomicBool;

    pub const CONFIG_FILE: &str = "config.json";
    pub const WEIGHTS_FILE: &str = "model.safetensors";
    pub const DIFFUSERS_WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct HubOptions {
        pub cache_dir: PathBuf,
        pub endpoint: String,
        pub offline: bool,
        pub token: Option<String>,
        pub revision: String,
    }
    impl HubOptions {
        pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
            Self { cache_dir: cache_dir.into(), endpoint: "https://huggingface.co".into(), offline: false, token: None, revision: "main".into() }
        }
        pub fn from_env() -> Self {
            let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
            let mut o = Self::new(PathBuf::from(home).join(".cache/huggingface/hub"));
            o.offline = std::env::var("HF_HUB_OFFLINE").map(|v| v == "1").unwrap_or(false);
            o
        }
        pub fn with_offline(mut self, offline: bool) -> Self {
            self.offline = offline;
            self
        }
    }
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum ModelSource {
        LocalDir(PathBuf),
        Hub { repo: String, revision: String, commit: Option<String> },
    }
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ModelFiles {
        pub config: PathBuf,
        pub weights: PathBuf,
        pub source: ModelSource,
    }
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct DownloadProgress {
        pub file: String,
        pub bytes_done: u64,
        pub bytes_total: u64,
    }
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct CachedModel {
        pub repo: String,
        pub revision: String,
        pub commit: String,
        pub files: Vec<(String, u64)>,
        pub total_bytes: u64,
    }
    #[derive(Debug, thiserror::Error)]
    pub enum HubError {
        #[error("model folder {0} is incomplete")]
        IncompleteFolder(PathBuf),
        #[error("{repo} is not in the Hugging Face cache; offline mode is on")]
        NotCached { repo: String },
        #[error("download of {file} cancelled after {bytes_done} of {bytes_total} bytes")]
        Cancelled { file: String, bytes_done: u64, bytes_total: u64 },
    }
    pub fn resolve_local_dir(dir: &Path) -> Result<ModelFiles, HubError> {
        let config = dir.join(CONFIG_FILE);
        let weights = [WEIGHTS_FILE, DIFFUSERS_WEIGHTS_FILE].iter().map(|n| dir.join(n)).find(|p| p.is_file());
        match weights {
            Some(weights) if config.is_file() => Ok(ModelFiles { config, weights, source: ModelSource::LocalDir(dir.to_path_buf()) }),
            _ => Err(HubError::IncompleteFolder(dir.to_path_buf())),
        }
    }
    pub fn download_model(
        repo: &str,
        opts: &HubOptions,
        progress: &mut dyn FnMut(DownloadProgress),
        cancel: &AtomicBool,
    ) -> Result<ModelFiles, HubError> {
        let _ = (progress, cancel, opts);
        Err(HubError::NotCached { repo: repo.to_string() })
    }
    pub fn resolve_model(
        arg: &str,
        opts: &HubOptions,
        progress: &mut dyn FnMut(DownloadProgress),
        cancel: &AtomicBool,
    ) -> Result<ModelFiles, HubError> {
        if Path::new(arg).is_dir() {
            return resolve_local_dir(Path::new(arg));
        }
        download_model(arg, opts, progress, cancel)
    }
    pub fn is_cached(_repo: &str, _opts: &HubOptions) -> bool {
        false
    }
    pub fn list_cached_models(_opts: &HubOptions) -> Vec<CachedModel> {
        Vec::new()
    }
    pub fn partial_download_bytes(_repo: &str, _opts: &HubOptions) -> u64 {
        0
    }
}

pub fn tensor_from_nchw<B: Backend>(data: Vec<f32>, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(data, shape), device)
}
