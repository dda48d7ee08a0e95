//! The one seam between the app and the engine modules written alongside it (diffusion model,
//! imaging, labels, hub). Everything the worker and the UI need from them goes through the small
//! functions here, so a change of signature there is a change in this file only.
//!

use std::path::Path;
use std::sync::atomic::AtomicBool;

use burn::tensor::{backend::Backend, Tensor};
use image::RgbImage;

use crate::model::diffusion::{DiffusionConfig, DiffusionModel, GenerateError, GenerateRequest};
pub use crate::model::diffusion::GenerateOutput;
use crate::model::placed::PlacedAe;
use crate::model::{Dcae, DcaeConfig};
use crate::sampler::StepUpdate;

// ---------------------------------------------------------------------------------------------
// Generator (class-conditional UViT + its DC-AE)
// ---------------------------------------------------------------------------------------------

/// What conditions a picture, as the loaded model asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// ImageNet class ids below [`GeneratorInfo::num_classes`] (that id itself: unconditional).
    Classes,
    /// A prompt. `negative`: the model reads a negative prompt too; `instruction`: SANA's
    /// complex human instruction may be prepended.
    Prompt { negative: bool, instruction: bool },
}

/// The sizes a model makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeControl {
    /// Its trained size only ([`GeneratorInfo::image_size`]): a class model's position
    /// embedding is fixed.
    Trained,
    /// Any multiple of the factor up to `max` pixels a side; `presets` are its training sizes
    /// (the aspect-ratio bins), offered first.
    Free { presets: Vec<(usize, usize)>, max: usize },
}

/// A named guidance value the view offers as a button.
#[derive(Debug, Clone, PartialEq)]
pub struct GuidancePreset {
    pub value: f32,
    pub label: String,
    pub hint: String,
}

/// How the model's guidance works, for its slider and the memory estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct GuidanceControl {
    pub presets: Vec<GuidancePreset>,
    pub hint: String,
    /// Guidance above 1 costs a second (unconditional) network pass per step; `false` where
    /// the network takes guidance as an input (Sprint).
    pub doubles_calls: bool,
    /// The two passes run as rows of one batch (SANA), not one after the other (UViT).
    pub batched: bool,
}

/// Everything the Generate view, the API and the CLI show and check for the loaded model, so
/// none of them names a family: a new family describes itself here and needs no UI change.
#[derive(Debug, Clone, PartialEq)]
pub struct Controls {
    pub input: Input,
    pub size: SizeControl,
    pub guidance: GuidanceControl,
    /// One line under the model picker ("1000 classes · 512×512 px").
    pub summary: String,
}

impl Controls {
    /// A class model's controls (its trained size, the authors' demo and FID guidance).
    pub fn classes(num_classes: usize, image_size: usize, fid_guidance: f32) -> Self {
        let preset = |value: f32, label: &str, hint: &str| GuidancePreset { value, label: label.into(), hint: hint.into() };
        Self {
            input: Input::Classes,
            size: SizeControl::Trained,
            guidance: GuidanceControl {
                presets: vec![
                    preset(crate::model::diffusion::DEMO_GUIDANCE, "demo", "The authors' demo setting: strong, clean class features"),
                    preset(fid_guidance, "FID", "The setting of the authors' FID numbers: more variety, weaker class features"),
                    preset(1.0, "off", "No guidance: one network call per step instead of two"),
                ],
                hint: "Classifier-free guidance: how strongly the class shapes the picture".into(),
                doubles_calls: true,
                batched: false,
            },
            summary: format!("{num_classes} classes · {image_size}×{image_size} px"),
        }
    }

    pub fn takes_prompt(&self) -> bool {
        matches!(self.input, Input::Prompt { .. })
    }

    /// Whether a run at `guidance` makes two network passes per step.
    pub fn guided(&self, guidance: f32) -> bool {
        self.guidance.doubles_calls && guidance > 1.0
    }
}

/// What the UI needs to know about a loaded generation model.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorInfo {
    pub name: String,
    /// What the model asks the user for.
    pub controls: Controls,
    /// Number of real classes; the unconditional (null) id is `num_classes`.
    pub num_classes: usize,
    pub latent_channels: usize,
    /// Latent side (the UViT's `input_size`).
    pub latent_size: usize,
    /// Autoencoder downsampling factor.
    pub factor: usize,
    pub default_steps: usize,
    pub default_guidance: f32,
    pub scaling_factor: f32,
    /// What the sampler is, as saved in PNGs: [`crate::sampler::SamplerConfig::label`], the
    /// label the CLI writes too.
    pub sampler: String,
    /// The samplers the model offers, `(name, label)`, its default first (one entry: nothing
    /// to choose); a job names one by `name` ([`crate::engine::worker::GenerateJob::sampler`]).
    pub samplers: Vec<(String, String)>,
    /// The largest step count the model's sampler takes, and what a step is, for the UI.
    pub max_steps: usize,
    pub steps_hint: String,
    /// The guidance of the authors' FID numbers (class models).
    pub fid_guidance: f32,
    /// What the memory estimate is made from ([`crate::engine::memory`]).
    pub footprint: crate::engine::memory::ModelFootprint,
}

impl GeneratorInfo {
    pub fn image_size(&self) -> usize {
        self.latent_size * self.factor
    }

    /// The label (as saved in PNGs) of the sampler a job names; `None` or a name the model
    /// lacks: its default.
    pub fn sampler_label(&self, name: Option<&str>) -> String {
        name.and_then(|s| self.samplers.iter().find(|(n, _)| n == s).map(|(_, l)| l.clone())).unwrap_or_else(|| self.sampler.clone())
    }

    /// The sampler name whose label is `label` (a PNG's), other than the default.
    pub fn sampler_by_label(&self, label: &str) -> Option<String> {
        self.samplers.iter().skip(1).find(|(_, l)| l == label).map(|(n, _)| n.clone())
    }

    /// The size a run makes: the asked one where the model takes any, else its trained size.
    /// `Err` says what to ask for instead.
    pub fn check_size(&self, width: usize, height: usize) -> Result<(usize, usize), String> {
        match &self.controls.size {
            SizeControl::Trained => Ok((self.image_size(), self.image_size())),
            SizeControl::Free { max, .. } => {
                let f = self.factor.max(1);
                for (what, v) in [("width", width), ("height", height)] {
                    if v == 0 || v % f != 0 || v > *max {
                        return Err(format!("The {what} {v} must be a multiple of {f} between {f} and {max} for {}", self.name));
                    }
                }
                Ok((width, height))
            }
        }
    }
}

/// What kind of failure a load was, so the UI can offer the fix instead of only the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// A model file is damaged, truncated or missing from its folder: deleting it and
    /// downloading again fixes it.
    Damaged { path: std::path::PathBuf },
    /// The model is not (completely) on this computer and the hub may not be contacted.
    NotCached,
    /// The files describe something this app refuses (another model family, absurd config).
    Refused,
    /// Anything else (I/O, internal).
    Other,
}

/// A failed model load: the message for people, the kind for the UI's offer.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub message: String,
    pub kind: FailureKind,
}

impl From<crate::model::load::ModelError> for LoadFailure {
    fn from(e: crate::model::load::ModelError) -> Self {
        use crate::model::load::ModelError as M;
        use crate::weights::LoadError as L;
        let kind = match &e {
            M::Load(L::Corrupt { path, .. }) => FailureKind::Damaged { path: path.clone() },
            M::Load(L::MissingShard { shard, .. }) => FailureKind::Damaged { path: shard.clone() },
            M::Load(L::Io { path, source }) if source.kind() == std::io::ErrorKind::NotFound => {
                FailureKind::Damaged { path: path.clone() }
            }
            M::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => FailureKind::Damaged { path: path.into() },
            M::Json { path, .. } => FailureKind::Damaged { path: path.into() },
            M::Config(_) | M::Load(L::Mismatch { .. }) | M::Load(L::Layout { .. }) => FailureKind::Refused,
            _ => FailureKind::Other,
        };
        Self { message: e.to_string(), kind }
    }
}

impl From<crate::model::sana::layout::PipelineError> for LoadFailure {
    fn from(e: crate::model::sana::layout::PipelineError) -> Self {
        use crate::model::sana::layout::PipelineError as P;
        let kind = match &e {
            P::MissingFiles { dir, .. } => FailureKind::Damaged { path: dir.clone() },
            P::MissingComponent { root, component, .. } => FailureKind::Damaged { path: root.join(component) },
            P::Index { path, .. } => FailureKind::Damaged { path: path.clone() },
            P::Hub(crate::weights::hub::HubError::NotCached { .. }) => FailureKind::NotCached,
            P::NotAPipeline(_) | P::OtherPipeline { .. } => FailureKind::Refused,
            _ => FailureKind::Other,
        };
        Self { message: e.to_string(), kind }
    }
}

impl From<String> for LoadFailure {
    fn from(message: String) -> Self {
        Self { message, kind: FailureKind::Other }
    }
}

pub enum GenerateFailure {
    Cancelled,
    Failed(String),
}

/// Where `placement` puts the autoencoder of the combined class-model checkpoint `ckpt` on
/// `device` (`Auto`: [`crate::engine::memory::autoencoder_on_cpu`] from both parts' f32 sizes).
pub fn class_autoencoder_on_cpu<B: Backend>(ckpt: &crate::weights::Checkpoint, device: &B::Device, placement: crate::engine::backend::Placement) -> bool {
    placement.on_cpu().unwrap_or_else(|| {
        let bytes = |prefix: &str| ckpt.keys().filter(|k| k.starts_with(prefix)).filter_map(|k| ckpt.shape(k)).map(|s| 4 * s.iter().product::<usize>() as u64).sum::<u64>();
        crate::engine::memory::autoencoder_on_cpu::<B>(device, bytes(crate::model::diffusion::UVIT_PREFIX), bytes(crate::model::load::AE_PREFIX))
    })
}

/// A loaded class-conditional diffusion model (UViT + its DC-AE).
pub struct Generator<B: Backend> {
    info: GeneratorInfo,
    model: DiffusionModel<B>,
}

impl<B: Backend> Generator<B> {
    pub fn load(name: &str, config: &Path, weights: &Path, device: &B::Device) -> Result<Self, LoadFailure> {
        Self::load_placed(name, config, weights, device, crate::engine::backend::Placement::Auto)
    }

    /// [`Self::load`] with the autoencoder where `autoencoder` says (`Auto`:
    /// [`crate::engine::memory::autoencoder_on_cpu`]).
    pub fn load_placed(name: &str, config: &Path, weights: &Path, device: &B::Device, autoencoder: crate::engine::backend::Placement) -> Result<Self, LoadFailure> {
        // Named by the caller (the catalog's name), not by the folder config.json sits in: for a
        // model from the hub that folder is a snapshot's commit hash.
        let load = || -> Result<DiffusionModel<B>, crate::model::load::ModelError> {
            let json = crate::model::load::read_json(config)?;
            let config = DiffusionConfig::from_json(&json, name)?;
            let ckpt = crate::weights::Checkpoint::open(weights)?;
            let on_cpu = class_autoencoder_on_cpu::<B>(&ckpt, device, autoencoder);
            DiffusionModel::<B>::load_checkpoint_placed(&ckpt, config, device, on_cpu)
        };
        let model = load()?;
        Ok(Self::wrap(name, model))
    }

    pub fn info(&self) -> &GeneratorInfo {
        &self.info
    }

    pub fn device(&self) -> B::Device {
        self.model.device()
    }

    /// A registered model (e.g. `dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k`) with random
    /// weights: its real cost without its files (benchmarks).
    pub fn random(name: &str, device: &B::Device) -> Result<Self, String> {
        let config = DiffusionConfig::registered(name).map_err(|e| e.to_string())?;
        let model = DiffusionModel::<B>::load_random(config, device).map_err(|e| e.to_string())?;
        Ok(Self::wrap(name, model))
    }

    fn wrap(name: &str, model: DiffusionModel<B>) -> Self {
        let c = &model.config;
        let info = GeneratorInfo {
            name: name.to_string(),
            controls: Controls::classes(c.num_classes(), c.image_size(), c.fid_guidance()),
            num_classes: c.num_classes(),
            latent_channels: c.latent_channels(),
            latent_size: c.latent_size(),
            factor: c.autoencoder.factor(),
            default_steps: c.default_steps(),
            default_guidance: crate::model::registry::find(name).and_then(|p| p.defaults()).map_or(c.default_guidance(), |d| d.guidance),
            scaling_factor: c.scaling_factor,
            sampler: c.sampler_label(),
            samplers: c.samplers().iter().map(|s| (s.to_string(), c.sampler_label_of(s))).collect(),
            max_steps: c.max_steps(),
            steps_hint: c.steps_hint().to_string(),
            fid_guidance: c.fid_guidance(),
            footprint: crate::engine::memory::ModelFootprint {
                denoiser: 4 * model.denoiser.num_params() as u64,
                text_encoder: 0,
                autoencoder: 4 * model.autoencoder.num_params() as u64,
                // Attention, qkv and the 4× MLP of one block, per token (guided pairs run as two calls).
                per_token: 4.0 * 10.0 * c.hidden_size() as f64,
                decode_per_pixel: crate::model::tiling::activation_bytes_per_pixel(&c.autoencoder).1,
                low_memory: false,
                text_on_cpu: false,
                ae_on_cpu: model.autoencoder.on_cpu(),
            },
        };
        Self { info, model }
    }

    /// The model's autoencoder and its config (the preview projection is fitted with it).
    pub fn autoencoder(&self) -> (&PlacedAe<B>, &DcaeConfig) {
        (&self.model.autoencoder, &self.model.config.autoencoder)
    }

    /// Samples latents for `labels` (one image each). `on_step(step, total, x0)` is called after
    /// every solver step with the model's current estimate of the clean latent. Returns the
    /// latent (still multiplied by the scaling factor) with its count of guided predictions and
    /// of UViT forward passes (twice as many under guidance).
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        labels: &[usize],
        cfg_scale: f32,
        steps: usize,
        seed: u64,
        sampler: Option<&str>,
        init: Option<(Tensor<B, 4>, f32)>,
        on_step: &mut dyn FnMut(usize, usize, Tensor<B, 4>),
        cancel: &AtomicBool,
    ) -> Result<GenerateOutput<B>, GenerateFailure> {
        let mut req = GenerateRequest::<B>::new(labels.to_vec(), cfg_scale, steps, seed);
        req.init = init;
        req.sampler = sampler.map(str::to_string);
        let mut cb = |u: StepUpdate<B>| on_step(u.step, u.total, u.x0);
        match self.model.generate(&req, &mut cb, cancel) {
            Ok(out) => Ok(out),
            Err(GenerateError::Cancelled) => Err(GenerateFailure::Cancelled),
            Err(e) => Err(GenerateFailure::Failed(e.to_string())),
        }
    }

    /// An image (`[B, 3, H, W]` in [−1, 1]) → its latent times the scaling factor, as the
    /// sampler's latents are (the start of an image-to-image run).
    /// Runs within the device's limits ([`crate::model::tiling::encode_within`]).
    pub fn encode(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 4>, String> {
        let ae = &self.model.autoencoder;
        let budget = crate::engine::memory::autoencoder_budget_for(ae, &x.device());
        match ae.encode_within(&self.model.config.autoencoder, x, budget, &mut |_, _| true) {
            Ok(Some(z)) => Ok(z.mul_scalar(self.info.scaling_factor as f64)),
            Ok(None) => Err("the encode stopped".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Sampled (scaled) latent → image in about [-1, 1], within the device's limits
    /// ([`crate::model::tiling::decode_within`]).
    pub fn decode(&self, latent: Tensor<B, 4>) -> Result<Tensor<B, 4>, String> {
        let ae = &self.model.autoencoder;
        let budget = crate::engine::memory::autoencoder_budget_for(ae, &latent.device());
        let z = latent.div_scalar(self.model.config.scaling_factor as f64);
        match ae.decode_within(&self.model.config.autoencoder, z, budget, &mut |_, _| true) {
            Ok(Some(y)) => Ok(y),
            Ok(None) => Err("the decode stopped".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The generator's autoencoder on its own, for fitting the preview projection.
/// `name` names it (see [`Generator::load`]).
pub fn load_autoencoder<B: Backend>(name: &str, config: &Path, weights: &Path, device: &B::Device) -> Result<(DcaeConfig, Dcae<B>), String> {
    let load = || -> Result<(DcaeConfig, Dcae<B>), crate::model::load::ModelError> {
        let cfg = crate::model::load::dcae_config_from_json(&crate::model::load::read_json(config)?, name)?;
        let ckpt = crate::weights::Checkpoint::open(weights)?;
        let model = crate::model::load::load_dcae::<B>(&ckpt, &cfg, device)?;
        Ok((cfg, model))
    };
    load().map_err(|e| e.to_string())
}

/// Reads a model folder's config.json and says whether it is a generation model (a diffusion
/// config, or the `model_name` of a registered one).
pub fn config_is_generator(config: &Path) -> bool {
    let Ok(json) = crate::model::load::read_json(config) else { return false };
    json.get("uvit").is_some() || json.get("dit").is_some() || DiffusionConfig::from_json(&json, "").is_ok()
}

/// The architecture of a published DC-AE, by name.
pub fn dcae_published(name: &str) -> Result<DcaeConfig, String> {
    DcaeConfig::published(name).map_err(|e| e.to_string())
}

/// The DC-AE config of a config.json (autoencoder or combined diffusion config).
pub fn autoencoder_config(config: &Path, name: &str) -> Result<DcaeConfig, String> {
    let json = crate::model::load::read_json(config).map_err(|e| e.to_string())?;
    crate::model::load::dcae_config_from_json(&json, name).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Imaging
// ---------------------------------------------------------------------------------------------

pub use crate::imaging::{GenerationParams, ImageParams, Img2Img, PromptParams};
use crate::imaging::{self, ImageLimits};

pub fn to_nchw(images: &[RgbImage]) -> Result<(Vec<f32>, [usize; 4]), String> {
    imaging::to_nchw(images).map_err(|e| e.to_string())
}

pub fn to_rgb8(chw: &[f32], h: usize, w: usize) -> Result<RgbImage, String> {
    imaging::to_rgb8(chw, h, w).map_err(|e| e.to_string())
}

pub fn prepare(img: RgbImage, factor: usize, size: Option<u32>) -> Result<RgbImage, String> {
    imaging::prepare(img, factor, size).map_err(|e| e.to_string())
}

pub fn psnr(a: &RgbImage, b: &RgbImage) -> Result<f64, String> {
    imaging::psnr(a, b).map_err(|e| e.to_string())
}

pub fn ssim(a: &RgbImage, b: &RgbImage) -> Result<f64, String> {
    imaging::ssim(a, b).map_err(|e| e.to_string())
}

pub fn diff_heatmap(a: &RgbImage, b: &RgbImage, gain: f32) -> Result<RgbImage, String> {
    imaging::diff_heatmap_with_gain(a, b, gain).map_err(|e| e.to_string())
}

/// Decodes a PNG, JPEG or WebP held in memory (size limits checked before decoding).
pub fn load_image_bytes(bytes: &[u8]) -> Result<RgbImage, String> {
    imaging::load_rgb_from_bytes(bytes, &ImageLimits::default()).map_err(|e| e.to_string())
}

pub fn load_image_file(path: &Path) -> Result<RgbImage, String> {
    imaging::load_rgb(path, &ImageLimits::default()).map_err(|e| e.to_string())
}

/// Saves a PNG with the parameters in its `parameters` text chunk, atomically. With
/// `replace` false an existing file is never touched: the save fails with
/// [`std::io::ErrorKind::AlreadyExists`] instead.
pub fn save_png_with_params(img: &RgbImage, path: &Path, params: &ImageParams, replace: bool) -> Result<(), SaveError> {
    let text = params.to_parameters_text();
    let entries = [(imaging::PARAMETERS_KEY, text.as_str()), ("Software", "DC-AE Studio")];
    let saved = if replace { imaging::save_png_with_text(img, path, &entries) } else { imaging::save_png_with_text_new(img, path, &entries) };
    saved.map_err(|e| {
        let exists = matches!(&e, imaging::ImagingError::Write { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists);
        SaveError { message: e.to_string(), exists }
    })
}

/// A failed save; `exists` when the only problem is a file already at the path.
#[derive(Debug, Clone)]
pub struct SaveError {
    pub message: String,
    pub exists: bool,
}

/// The generation parameters of a PNG's bytes: `Ok(None)` for anything that is not a PNG or
/// carries no `parameters` entry; an error for a PNG whose entry cannot be read.
pub fn read_png_params(bytes: &[u8]) -> Result<Option<ImageParams>, String> {
    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !bytes.starts_with(PNG_SIGNATURE) {
        return Ok(None);
    }
    let entries = imaging::read_png_text_from_bytes(bytes).map_err(|e| e.to_string())?;
    let Some((_, text)) = entries.iter().find(|(k, _)| k == imaging::PARAMETERS_KEY) else {
        return Ok(None);
    };
    ImageParams::parse_parameters_text(text)
        .map(Some)
        .map_err(|e| format!("its saved parameters cannot be read: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------------------------

pub use crate::labels::{NUM_CLASSES, UNCONDITIONAL};

pub fn class_name(id: usize) -> Option<String> {
    crate::labels::name(u32::try_from(id).ok()?).map(str::to_string)
}

/// Classes whose name or id matches `query`, best first.
pub fn class_search(query: &str, limit: usize) -> Vec<(usize, String)> {
    crate::labels::search(query, limit).into_iter().map(|(id, name)| (id as usize, name.to_string())).collect()
}

// ---------------------------------------------------------------------------------------------
// Hub
// ---------------------------------------------------------------------------------------------

pub use crate::weights::hub;

// ---------------------------------------------------------------------------------------------
// The model registry and the pipeline layout (pure data: what exists, what a folder holds)
// ---------------------------------------------------------------------------------------------

pub use crate::model::registry;
pub use crate::model::sana::layout;
pub use crate::model::sana::flow::FlowSolver;

