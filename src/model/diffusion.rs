//! A class-conditional latent diffusion model of the DC-AE zoo: a DC-AE plus a UViT, their
//! scaling factor and their sampler, loaded from one combined checkpoint (`autoencoder.*` +
//! `diffusion_model.*`, the layout of `mit-han-lab/dc-ae-*-uvit-*`), and class → latent → image
//! generation with classifier-free guidance exactly as the original `UViT.generate` does it.
//!
//! Generation holds no per-run state in the model: a cancelled or failed run leaves it ready
//! for the next call, and one loaded model can serve many requests.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::dit::{AdmConfig, Dit, DitConfig, DitFamily};
use crate::model::uvit::usit::{OdeConfig, UsitFamily};
use crate::model::uvit::{registered_uvit, Uvit, UvitConfig, UvitFamily};
use crate::weights::WeightSource;
use crate::model::placed::PlacedAe;
use crate::model::{Dcae, DcaeConfig};
use crate::sampler::{SamplerConfig, SamplerError};
use crate::model::load::{dcae_config_from_json, read_json, ModelError, AE_PREFIX};
use crate::weights::{Checkpoint, CheckpointLoader, Layout, LoadError, Problem, RandomWeights};

pub use crate::model::uvit::family::sample_uvit;
pub use crate::sampler::StepUpdate;

/// Whether `B` is the CPU backend (where "the autoencoder on the CPU" changes nothing).
fn is_cpu_backend<B: Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<burn::backend::Flex>()
}

/// The authors' demo guidance for the UViTs (efficientvit `demo_dc_ae_diffusion_model.py`).
pub const DEMO_GUIDANCE: f32 = 6.0;

/// Prefix of the UViT inside the combined diffusion checkpoints.
pub const UVIT_PREFIX: &str = "diffusion_model.";

/// Everything needed to build and run a diffusion model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusionConfig {
    /// Registered name or where the config came from (for messages and image metadata).
    pub name: String,
    pub autoencoder: DcaeConfig,
    /// Latents are sampled in `encode(x) · scaling_factor` space; decode divides by it.
    pub scaling_factor: f32,
    /// The family's network and sampler settings.
    pub denoiser: DenoiserConfig,
}

/// The class-conditional families of the zoo: the network's config and its sampler's. A new
/// family is one variant here, its room under `model/`, and [`build_denoiser`]'s line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum DenoiserConfig {
    /// UViT with DPM-Solver (`"uvit"` + a `"dpm_solver"` sampler block).
    Uvit { uvit: UvitConfig, sampler: SamplerConfig },
    /// USiT: the UViT network trained with SiT's linear transport, sampled by an ODE solver
    /// (`"uvit"` + a `"sit_ode"` sampler block).
    Usit { uvit: UvitConfig, sampler: OdeConfig },
    /// DiT with ADM's Gaussian diffusion (`"dit"` + an `"adm"` sampler block).
    Dit { dit: DitConfig, sampler: AdmConfig },
}

impl DenoiserConfig {
    /// "UViT", "USiT" or "DiT".
    pub fn family(&self) -> &'static str {
        match self {
            Self::Uvit { .. } => "UViT",
            Self::Usit { .. } => "USiT",
            Self::Dit { .. } => "DiT",
        }
    }
}

fn config_error(msg: impl Into<String>) -> ModelError {
    ModelError::Other(msg.into())
}

impl DiffusionConfig {
    /// The configuration of a registered class model (see [`crate::model::registry`]) at its
    /// training resolution, 512 px.
    pub fn registered(name: &str) -> Result<Self, ModelError> {
        Self::registered_at(name, None)
    }

    /// Same, with the latent size for another image resolution (a multiple of the autoencoder's
    /// factor; the position tables of the published weights only fit 512 px).
    pub fn registered_at(name: &str, resolution: Option<usize>) -> Result<Self, ModelError> {
        let Some(m) = registered_uvit(name) else {
            let known: Vec<_> = crate::model::registry::uvit_models().map(|m| m.name).collect();
            return Err(config_error(format!("unknown diffusion model `{name}`; known class models: {}", known.join(", "))));
        };
        let mut autoencoder = DcaeConfig::published(m.autoencoder)?;
        autoencoder.scaling_factor = m.scaling_factor;
        let mut input_size = m.input_size;
        if let Some(res) = resolution {
            let f = autoencoder.factor();
            if res == 0 || res % f != 0 {
                return Err(config_error(format!("resolution {res} is not a positive multiple of {}'s factor {f}", m.autoencoder)));
            }
            input_size = res / f;
        }
        let denoiser = m.denoiser_config(input_size);
        let cfg = Self { name: m.name.to_string(), autoencoder, scaling_factor: m.scaling_factor, denoiser };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a diffusion config.json: `{"model_name": <registered name>}`, or the explicit schema
    /// `{"autoencoder": <diffusers AutoencoderDC config>, "scaling_factor", "uvit" | "dit": {…},
    /// "sampler": {…}}`. `sampler` may be omitted (the published defaults); its `"name"` tells a
    /// UViT (`"dpm_solver"`) from a USiT (`"sit_ode"`). `name` labels the model when the file
    /// does not name it.
    pub fn from_json(v: &Value, name: &str) -> Result<Self, ModelError> {
        if v.get("uvit").is_none() && v.get("dit").is_none() {
            if let Some(n) = v.get("model_name").and_then(Value::as_str) {
                return Self::registered(n);
            }
            return Err(config_error(format!(
                "{name}: not a diffusion config (it has neither \"model_name\" nor a \"uvit\" or \"dit\" block)"
            )));
        }
        fn block<T: serde::de::DeserializeOwned>(v: &Value, key: &str, name: &str) -> Result<T, ModelError> {
            serde_json::from_value(v[key].clone()).map_err(|e| config_error(format!("{name}: invalid \"{key}\" block: {e}")))
        }
        let sampler_name = v.get("sampler").and_then(|s| s.get("name")).and_then(Value::as_str);
        let has_sampler = v.get("sampler").is_some();
        let denoiser = if v.get("dit").is_some() {
            let sampler = if has_sampler { block(v, "sampler", name)? } else { AdmConfig::default() };
            DenoiserConfig::Dit { dit: block(v, "dit", name)?, sampler }
        } else if sampler_name == Some("sit_ode") {
            DenoiserConfig::Usit { uvit: block(v, "uvit", name)?, sampler: block(v, "sampler", name)? }
        } else {
            let sampler = if has_sampler { block(v, "sampler", name)? } else { SamplerConfig::default() };
            DenoiserConfig::Uvit { uvit: block(v, "uvit", name)?, sampler }
        };
        if v.get("autoencoder").is_none() {
            return Err(config_error(format!("{name}: the diffusion config has no \"autoencoder\" block")));
        }
        let autoencoder = dcae_config_from_json(v, name)?;
        let scaling_factor = match v.get("scaling_factor") {
            Some(s) => s.as_f64().ok_or_else(|| config_error(format!("{name}: \"scaling_factor\" is not a number")))? as f32,
            None => autoencoder.scaling_factor,
        };
        let model_name = v.get("model_name").and_then(Value::as_str).unwrap_or(name).to_string();
        let cfg = Self { name: model_name, autoencoder, scaling_factor, denoiser };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let named = |e: String| config_error(format!("{}: {e}", self.name));
        match &self.denoiser {
            DenoiserConfig::Uvit { uvit, sampler } => {
                validate_uvit(uvit).map_err(named)?;
                sampler.validate().map_err(|e| named(e.to_string()))?;
            }
            DenoiserConfig::Usit { uvit, sampler } => {
                validate_uvit(uvit).map_err(named)?;
                sampler.validate().map_err(|e| named(e.to_string()))?;
            }
            DenoiserConfig::Dit { dit, sampler } => {
                dit.validate().map_err(named)?;
                sampler.validate().map_err(|e| named(e.to_string()))?;
            }
        }
        self.autoencoder.validate()?;
        if self.latent_channels() != self.autoencoder.latent_channels {
            return Err(config_error(format!(
                "{}: the {} takes {} latent channels but the autoencoder makes {}",
                self.name,
                self.family(),
                self.latent_channels(),
                self.autoencoder.latent_channels
            )));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(config_error(format!("{}: scaling_factor must be positive, got {}", self.name, self.scaling_factor)));
        }
        Ok(())
    }

    /// "UViT", "USiT" or "DiT".
    pub fn family(&self) -> &'static str {
        self.denoiser.family()
    }

    /// The UViT network's config (UViT and USiT).
    pub fn uvit(&self) -> Option<&UvitConfig> {
        match &self.denoiser {
            DenoiserConfig::Uvit { uvit, .. } | DenoiserConfig::Usit { uvit, .. } => Some(uvit),
            DenoiserConfig::Dit { .. } => None,
        }
    }

    /// DPM-Solver's settings (UViT only).
    pub fn dpm_sampler(&self) -> Option<&SamplerConfig> {
        match &self.denoiser {
            DenoiserConfig::Uvit { sampler, .. } => Some(sampler),
            _ => None,
        }
    }

    pub fn latent_channels(&self) -> usize {
        match &self.denoiser {
            DenoiserConfig::Uvit { uvit, .. } | DenoiserConfig::Usit { uvit, .. } => uvit.in_channels,
            DenoiserConfig::Dit { dit, .. } => dit.in_channels,
        }
    }

    /// Latent side length.
    pub fn latent_size(&self) -> usize {
        match &self.denoiser {
            DenoiserConfig::Uvit { uvit, .. } | DenoiserConfig::Usit { uvit, .. } => uvit.input_size,
            DenoiserConfig::Dit { dit, .. } => dit.input_size,
        }
    }

    pub fn latent_shape(&self, batch: usize) -> [usize; 4] {
        [batch, self.latent_channels(), self.latent_size(), self.latent_size()]
    }

    /// Real classes (the null id is this number).
    pub fn num_classes(&self) -> usize {
        match &self.denoiser {
            DenoiserConfig::Uvit { uvit, .. } | DenoiserConfig::Usit { uvit, .. } => uvit.num_classes,
            DenoiserConfig::Dit { dit, .. } => dit.num_classes,
        }
    }

    pub fn null_class(&self) -> usize {
        self.num_classes()
    }

    pub fn hidden_size(&self) -> usize {
        match &self.denoiser {
            DenoiserConfig::Uvit { uvit, .. } | DenoiserConfig::Usit { uvit, .. } => uvit.hidden_size,
            DenoiserConfig::Dit { dit, .. } => dit.hidden_size,
        }
    }

    /// The denoiser's parameter count.
    pub fn denoiser_params(&self) -> usize {
        match &self.denoiser {
            DenoiserConfig::Uvit { uvit, .. } | DenoiserConfig::Usit { uvit, .. } => uvit.num_params(),
            DenoiserConfig::Dit { dit, .. } => dit.num_params(),
        }
    }

    /// The step count a run starts from: DPM-Solver's evaluations, ADM's kept steps, the ODE
    /// grid's points.
    pub fn default_steps(&self) -> usize {
        match &self.denoiser {
            DenoiserConfig::Uvit { sampler, .. } => sampler.steps,
            DenoiserConfig::Usit { sampler, .. } => sampler.num_steps,
            DenoiserConfig::Dit { sampler, .. } => sampler.steps,
        }
        .max(1)
    }

    /// The samplers the family offers, its default first (a request names one, or none).
    pub fn samplers(&self) -> &'static [&'static str] {
        match &self.denoiser {
            DenoiserConfig::Uvit { .. } => &["dpm_solver"],
            DenoiserConfig::Usit { sampler, .. } if sampler.method == "heun2" => &["heun2", "dopri5"],
            DenoiserConfig::Usit { .. } => &["dopri5", "heun2"],
            DenoiserConfig::Dit { .. } => &["adm", "ddim"],
        }
    }

    /// How the sampler is named in image metadata and the UI.
    pub fn sampler_label(&self) -> String {
        match &self.denoiser {
            DenoiserConfig::Uvit { sampler, .. } => sampler.label(),
            DenoiserConfig::Usit { sampler, .. } => sampler.label(),
            DenoiserConfig::Dit { .. } => "ADM (ancestral, learned variance)".to_string(),
        }
    }

    /// The label of one of [`Self::samplers`] (the default's is [`Self::sampler_label`]).
    pub fn sampler_label_of(&self, sampler: &str) -> String {
        match (&self.denoiser, sampler) {
            (DenoiserConfig::Dit { .. }, "ddim") => "DDIM (eta 0, deterministic)".to_string(),
            (DenoiserConfig::Usit { sampler: s, .. }, m) if m != s.method => OdeConfig { method: m.to_string(), ..s.clone() }.label(),
            _ => self.sampler_label(),
        }
    }

    /// The guidance of the authors' FID numbers (efficientvit's README): 1.5 for the UViTs, 1.3
    /// for DiT-XL, 1.2 for USiT-H and 1.15 for USiT-2B (told apart by width).
    /// The guidance a run of a model the registry does not know starts from: the authors'
    /// demo value for the UViTs (efficientvit's `demo_dc_ae_diffusion_model.py`, 6.0), and the
    /// FID value for DiT and USiT, whose published runs all use it (6 would oversaturate them).
    pub fn default_guidance(&self) -> f32 {
        match &self.denoiser {
            DenoiserConfig::Uvit { .. } => DEMO_GUIDANCE,
            _ => self.fid_guidance(),
        }
    }

    pub fn fid_guidance(&self) -> f32 {
        match &self.denoiser {
            DenoiserConfig::Uvit { .. } => 1.5,
            DenoiserConfig::Dit { .. } => 1.3,
            DenoiserConfig::Usit { uvit, .. } if uvit.hidden_size >= 2048 => 1.15,
            DenoiserConfig::Usit { .. } => 1.2,
        }
    }

    /// The most steps a run may ask for: ADM keeps at most every training step; the others
    /// are bounded only by patience.
    pub fn max_steps(&self) -> usize {
        match &self.denoiser {
            DenoiserConfig::Uvit { .. } => 200,
            DenoiserConfig::Usit { .. } => 1000,
            DenoiserConfig::Dit { sampler, .. } => sampler.num_train_timesteps,
        }
    }

    /// What one step is, for the UI.
    pub fn steps_hint(&self) -> &'static str {
        match &self.denoiser {
            DenoiserConfig::Uvit { .. } => "Network evaluations of DPM-Solver++ (order 3); the authors use 30, done in 11 solver steps",
            DenoiserConfig::Usit { .. } => "Heun: grid points (two network calls per interval); dopri5 chooses its own steps and ignores this. The authors use 250",
            DenoiserConfig::Dit { .. } => "Kept steps of ADM's 1000 (one network call each); the authors use 250",
        }
    }

    /// Output image side in pixels.
    pub fn image_size(&self) -> usize {
        self.latent_size() * self.autoencoder.factor()
    }
}

/// A UViT config's own checks plus bounds far beyond the published UViT-2B (taken before the
/// parameter count, whose products overflowed for a hidden_size of 2^40).
fn validate_uvit(u: &UvitConfig) -> Result<(), String> {
    u.validate()?;
    let limits = [
        ("depth", u.depth, 256),
        ("hidden_size", u.hidden_size, 16384),
        ("in_channels", u.in_channels, 4096),
        ("patch_size", u.patch_size, 64),
        ("input_size / patch_size", u.grid(), 512),
        ("num_classes", u.num_classes, 1 << 24),
    ];
    if let Some((field, v, max)) = limits.iter().find(|(_, v, max)| v > max) {
        return Err(format!("uvit.{field} = {v} is beyond any UViT (at most {max}); is the config.json damaged?"));
    }
    if !(u.mlp_ratio <= 16.0) {
        return Err(format!("uvit.mlp_ratio {} is beyond any UViT (at most 16)", u.mlp_ratio));
    }
    if u.num_params() > 1 << 33 {
        return Err(format!("the UViT has {} parameters, beyond any published model; is the config.json damaged?", u.num_params()));
    }
    Ok(())
}

/// One generation job.
#[derive(Debug, Clone)]
pub struct GenerateRequest<B: Backend> {
    /// One class id per image; `num_classes` (the null id) asks for an unconditional sample.
    pub labels: Vec<usize>,
    /// Guidance scale `s` in `ε = ε_c + (s − 1)(ε_c − ε_u)`; `1.0` skips the unconditional pass.
    pub cfg_scale: f32,
    /// Network evaluations of the solver (guided noise predictions), ≥ 1.
    pub steps: usize,
    /// Seed of the initial noise when `noise` is `None`.
    pub seed: u64,
    /// Initial noise `[B, C, S, S]` at t = 1, overriding the seed (e.g. exported from PyTorch).
    pub noise: Option<Tensor<B, 4>>,
    /// Image-to-image (SDEdit): the source's latent `[B, C, S, S]` (times the scaling factor)
    /// and the strength in (0, 1]. The source is noised to `strength` of the way along the
    /// model's own schedule and denoised from there with `round(strength · steps)` steps.
    pub init: Option<(Tensor<B, 4>, f32)>,
    /// One of the family's samplers ([`DiffusionConfig::samplers`]); `None`: its default.
    pub sampler: Option<String>,
    /// ADM's per-step noise `[B, C, S, S]` per kept step (from PyTorch, for parity); `None`:
    /// drawn from the seed.
    pub step_noise: Option<Vec<Tensor<B, 4>>>,
}

impl<B: Backend> GenerateRequest<B> {
    /// A seeded request with the model's default sampler and no image-to-image source.
    pub fn new(labels: Vec<usize>, cfg_scale: f32, steps: usize, seed: u64) -> Self {
        Self { labels, cfg_scale, steps, seed, noise: None, init: None, sampler: None, step_noise: None }
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct GenerateOutput<B: Backend> {
    /// Final sample, still multiplied by the scaling factor (pass it to
    /// [`DiffusionModel::decode_latent`]).
    pub latent: Tensor<B, 4>,
    /// Guided predictions made (DPM-Solver: `steps`; ADM: the kept steps run; an ODE solver:
    /// its velocity evaluations, adaptive for dopri5).
    pub nfe: usize,
    /// Predictions of the network made: `2·nfe` with guidance (each conditional /
    /// unconditional pair computed as one batch), `nfe` without.
    pub network_calls: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("generation cancelled")]
    Cancelled,
    #[error("no class labels given: ask for at least one image")]
    NoLabels,
    #[error("unknown class id {id}: this model has classes 0..={} and the unconditional id {num_classes}", num_classes.saturating_sub(1))]
    UnknownClass { id: usize, num_classes: usize },
    #[error("steps must be at least 1")]
    ZeroSteps,
    #[error("guidance scale must be a finite number, got {0}")]
    BadScale(f32),
    #[error("the noise tensor has shape {found:?}, but {batch} image(s) of this model need {expected:?} ([batch, channels, height, width])")]
    NoiseShape { expected: [usize; 4], found: [usize; 4], batch: usize },
    #[error("image-to-image strength must be in (0, 1], got {0}")]
    BadStrength(f32),
    #[error("this {family} model has no sampler `{asked}`; it offers: {offered}")]
    UnknownSampler { family: &'static str, asked: String, offered: String },
    #[error("the step noise has {found} entries of shape {shape:?}, but this run takes {expected} steps of {expected_shape:?}")]
    StepNoise { found: usize, shape: Option<[usize; 4]>, expected: usize, expected_shape: [usize; 4] },
    #[error("{0}")]
    Sampler(#[from] SamplerError),
}

/// Standard-normal noise `[B, C, H, W]` from a seeded `StdRng`, drawn on the CPU in NCHW order,
/// so one seed gives the same image on every backend. It cannot reproduce PyTorch's generators
/// (CPU Mersenne Twister or CUDA Philox): for parity with a PyTorch run, inject its noise instead.
/// `StdRng` is only stable within one `rand` release line, so seeds may map to new images when
/// the `rand` dependency moves to a new major version.
pub fn seeded_noise<B: Backend>(shape: [usize; 4], seed: u64, device: &B::Device) -> Tensor<B, 4> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// What every family checks before it samples, and the initial noise (injected or seeded):
/// labels present and known, at least one step, a finite guidance scale, a noise of the
/// model's latent shape.
pub fn checked_start<B: Backend>(req: &GenerateRequest<B>, num_classes: usize, expected: [usize; 4], device: &B::Device) -> Result<Tensor<B, 4>, GenerateError> {
    let batch = req.labels.len();
    if batch == 0 {
        return Err(GenerateError::NoLabels);
    }
    if let Some(&id) = req.labels.iter().find(|&&id| id > num_classes) {
        return Err(GenerateError::UnknownClass { id, num_classes });
    }
    if req.steps == 0 {
        return Err(GenerateError::ZeroSteps);
    }
    if !req.cfg_scale.is_finite() {
        return Err(GenerateError::BadScale(req.cfg_scale));
    }
    if let Some((z, strength)) = &req.init {
        if !(strength.is_finite() && *strength > 0.0 && *strength <= 1.0) {
            return Err(GenerateError::BadStrength(*strength));
        }
        if z.dims() != expected {
            return Err(GenerateError::NoiseShape { expected, found: z.dims(), batch });
        }
    }
    match &req.noise {
        Some(n) if n.dims() != expected => Err(GenerateError::NoiseShape { expected, found: n.dims(), batch }),
        Some(n) => Ok(n.clone()),
        None => Ok(seeded_noise::<B>(expected, req.seed, device)),
    }
}

/// The sampler a request asks for, checked against what the family offers.
pub fn chosen_sampler<'a>(req_sampler: Option<&str>, offered: &[&'a str], family: &'static str) -> Result<&'a str, GenerateError> {
    let Some(asked) = req_sampler else { return Ok(offered[0]) };
    offered.iter().copied().find(|s| s.eq_ignore_ascii_case(asked.trim())).ok_or_else(|| GenerateError::UnknownSampler {
        family,
        asked: asked.to_string(),
        offered: offered.join(", "),
    })
}

/// `(cond, null)` class-id tensors for a request's labels.
pub fn class_ids<B: Backend>(labels: &[usize], null: usize, device: &B::Device) -> (Tensor<B, 1, Int>, Tensor<B, 1, Int>) {
    let n = labels.len();
    let ids = |v: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), device);
    (ids(labels.iter().map(|&l| l as i64).collect()), ids(vec![null as i64; n]))
}

/// One class-conditional family's network and sampler behind the one generation contract:
/// the engine, the CLI and the tests drive every family through this trait alone.
pub trait ClassDenoiser<B: Backend>: std::fmt::Debug + Send {
    /// "UViT", "USiT" or "DiT".
    fn family(&self) -> &'static str;
    fn device(&self) -> B::Device;
    fn num_params(&self) -> usize;
    /// The network's raw output for `(x, t, y)` exactly as the original `forward_without_cfg`
    /// (with `t` in the network's own units: ×1000 for UViT, raw for USiT, the step index for
    /// DiT); DiT's carries the variance channels too.
    fn forward(&self, x: Tensor<B, 4>, t: Tensor<B, 1>, y: Tensor<B, 1, Int>) -> Tensor<B, 4>;
    /// Samples one latent per label. `cancel` is checked before every network call; `on_step`
    /// runs after every solver step with the sample and the current clean-latent estimate.
    fn sample(&self, req: &GenerateRequest<B>, on_step: &mut dyn FnMut(StepUpdate<B>), cancel: &AtomicBool) -> Result<GenerateOutput<B>, GenerateError>;
}

/// Builds the family's network from `w`; the one place that maps a config to its room.
pub fn build_denoiser<B: Backend, W: WeightSource<B>>(w: &mut W, cfg: &DenoiserConfig) -> Box<dyn ClassDenoiser<B>> {
    match cfg {
        DenoiserConfig::Uvit { uvit, sampler } => Box::new(UvitFamily { net: Uvit::load(w, uvit), sampler: sampler.clone() }),
        DenoiserConfig::Usit { uvit, sampler } => Box::new(UsitFamily { net: Uvit::load(w, uvit), sampler: sampler.clone() }),
        DenoiserConfig::Dit { dit, sampler } => Box::new(DitFamily { net: Dit::load(w, dit), sampler: sampler.clone() }),
    }
}

/// A loaded diffusion model: autoencoder + the family's denoiser + settings.
#[derive(Debug)]
pub struct DiffusionModel<B: Backend> {
    pub config: DiffusionConfig,
    /// On the denoiser's device, or on the CPU ([`Self::load_checkpoint_placed`]).
    pub autoencoder: PlacedAe<B>,
    pub denoiser: Box<dyn ClassDenoiser<B>>,
}

/// One part of a combined checkpoint built on `device` (checked only, or loaded), with the
/// part's own verdict; the caller reports every part's problems together.
fn load_part<E: Backend, T>(
    ckpt: &Checkpoint,
    prefix: &str,
    layout: Layout,
    device: &E::Device,
    check_only: bool,
    name: &str,
    build: impl FnOnce(&mut CheckpointLoader<'_, E>) -> T,
) -> (T, Result<(), LoadError>) {
    let mut loader = match check_only {
        true => CheckpointLoader::<E>::check_only(ckpt, prefix, layout, device),
        false => CheckpointLoader::<E>::new(ckpt, prefix, layout, device),
    };
    let built = build(&mut loader);
    (built, loader.finish(name))
}

impl<B: Backend> DiffusionModel<B> {
    /// Reads `config.json` and a combined safetensors file and builds the model strictly: both
    /// parts must match their architecture key for key and shape for shape, and keys under
    /// neither `autoencoder.` nor `diffusion_model.` are reported as unexpected. All problems of
    /// both parts are reported together.
    pub fn load_files(config_path: &Path, weights_path: &Path, device: &B::Device) -> Result<Self, ModelError> {
        let name = config_path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| config_path.display().to_string());
        let config = DiffusionConfig::from_json(&read_json(config_path)?, &name)?;
        let ckpt = Checkpoint::open(weights_path)?;
        Self::load_checkpoint(&ckpt, config, device)
    }

    /// Builds the model from an open combined checkpoint (see [`Self::load_files`]).
    pub fn load_checkpoint(ckpt: &Checkpoint, config: DiffusionConfig, device: &B::Device) -> Result<Self, ModelError> {
        Self::load_checkpoint_placed(ckpt, config, device, false)
    }

    /// [`Self::load_checkpoint`] with the autoencoder on the CPU backend when `ae_on_cpu` (and
    /// `B` is not the CPU backend already): its weights never reach `device`.
    pub fn load_checkpoint_placed(ckpt: &Checkpoint, config: DiffusionConfig, device: &B::Device, ae_on_cpu: bool) -> Result<Self, ModelError> {
        config.validate()?;
        let ae_on_cpu = ae_on_cpu && !is_cpu_backend::<B>();
        let ae_layout = ckpt.layout(AE_PREFIX).unwrap_or(Layout::Original);
        // Both parts, and keys that belong to neither, reported together; checked before any
        // weight is read (see `load_strict`).
        let build = |check_only: bool| -> Result<(PlacedAe<B>, Box<dyn ClassDenoiser<B>>), ModelError> {
            let ae_name = &config.autoencoder.name;
            let (autoencoder, ae_result) = if ae_on_cpu {
                let (ae, r) = load_part::<burn::backend::Flex, _>(ckpt, AE_PREFIX, ae_layout, &Default::default(), check_only, ae_name, |w| Dcae::load(w, &config.autoencoder));
                (PlacedAe::Cpu(ae), r)
            } else {
                let (ae, r) = load_part::<B, _>(ckpt, AE_PREFIX, ae_layout, device, check_only, ae_name, |w| Dcae::load(w, &config.autoencoder));
                (PlacedAe::Here(ae), r)
            };
            let (denoiser, denoiser_result) = load_part::<B, _>(ckpt, UVIT_PREFIX, Layout::Original, device, check_only, config.family(), |w| build_denoiser(w, &config.denoiser));
            let mut problems: Vec<Problem> = Vec::new();
            for result in [ae_result, denoiser_result] {
                match result {
                    Ok(()) => {}
                    Err(LoadError::Mismatch { problems: p, .. }) => problems.extend(p),
                    Err(other) => return Err(other.into()),
                }
            }
            for key in ckpt.keys().filter(|k| !k.starts_with(AE_PREFIX) && !k.starts_with(UVIT_PREFIX)) {
                let shape = ckpt.shape(key).unwrap_or_default().to_vec();
                problems.push(Problem::Unexpected { key: key.to_string(), shape });
            }
            if !problems.is_empty() {
                return Err(LoadError::Mismatch { path: ckpt.path().to_path_buf(), model: config.name.clone(), problems }.into());
            }
            Ok((autoencoder, denoiser))
        };
        build(true)?;
        let (autoencoder, denoiser) = build(false)?;
        Ok(Self { config, autoencoder, denoiser })
    }

    /// Random weights of the right shapes, for benchmarks (no file needed); the autoencoder on
    /// the CPU backend when `ae_on_cpu`. The values do not depend on where a weight is made
    /// (see [`RandomWeights`]).
    pub fn load_random(config: DiffusionConfig, device: &B::Device) -> Result<Self, ModelError> {
        Self::load_random_placed(config, device, false)
    }

    pub fn load_random_placed(config: DiffusionConfig, device: &B::Device, ae_on_cpu: bool) -> Result<Self, ModelError> {
        config.validate()?;
        let autoencoder = if ae_on_cpu && !is_cpu_backend::<B>() {
            PlacedAe::Cpu(Dcae::load(&mut RandomWeights::<burn::backend::Flex>::new(&Default::default()), &config.autoencoder))
        } else {
            PlacedAe::Here(Dcae::load(&mut RandomWeights::<B>::new(device), &config.autoencoder))
        };
        let denoiser = build_denoiser(&mut RandomWeights::<B>::new(device), &config.denoiser);
        Ok(Self { config, autoencoder, denoiser })
    }

    pub fn device(&self) -> B::Device {
        self.denoiser.device()
    }

    /// Samples one latent per label with the family's sampler (see [`ClassDenoiser::sample`]):
    /// initial noise (injected, or seeded), guidance as the original batches it, `cancel`
    /// checked before every network call, `on_step` after every solver step.
    pub fn generate(
        &self,
        req: &GenerateRequest<B>,
        on_step: &mut dyn FnMut(StepUpdate<B>),
        cancel: &AtomicBool,
    ) -> Result<GenerateOutput<B>, GenerateError> {
        self.denoiser.sample(req, on_step, cancel)
    }

    /// Image in about [−1, 1] `[B, 3, H, W]` from a sampled latent: divide by the scaling factor,
    /// then decode.
    pub fn decode_latent(&self, latent: Tensor<B, 4>) -> Tensor<B, 4> {
        self.autoencoder.decode(latent.div_scalar(self.config.scaling_factor as f64))
    }

    /// [`Self::decode_latent`] batched, per image or tiled as `budget` allows
    /// ([`crate::model::tiling::decode_within`]; `None`: image by image).
    pub fn decode_latent_within(&self, latent: Tensor<B, 4>, budget: Option<crate::model::tiling::Budget>) -> Result<Tensor<B, 4>, crate::model::tiling::TileConfigError> {
        let device = latent.device();
        let z = latent.div_scalar(self.config.scaling_factor as f64);
        let y = self.autoencoder.decode_within(&self.config.autoencoder, z, budget, &mut |_, _| true)?;
        // Never stopped: the progress callback always goes on, so a missing result is an empty batch.
        Ok(y.unwrap_or_else(|| Tensor::zeros([0, 3, 0, 0], &device)))
    }
}
