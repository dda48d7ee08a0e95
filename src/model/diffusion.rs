//! A class-conditional latent diffusion model of the DC-AE zoo: a DC-AE plus a UViT, their
//! scaling factor and their sampler, loaded from one combined checkpoint (`autoencoder.*` +
//! `diffusion_model.*`, the layout of `mit-han-lab/dc-ae-*-uvit-*`), and class → latent → image
//! generation with classifier-free guidance exactly as the original `UViT.generate` does it.
//!
//! Generation holds no per-run state in the model: a cancelled or failed run leaves it ready
//! for the next call, and one loaded model can serve many requests.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::uvit::{registered_uvit, Uvit, UvitConfig};
use crate::model::placed::PlacedAe;
use crate::model::{Dcae, DcaeConfig};
use crate::sampler::{DpmSolver, SamplerConfig, SamplerError};
use crate::model::load::{dcae_config_from_json, read_json, ModelError, AE_PREFIX};
use crate::weights::{Checkpoint, CheckpointLoader, Layout, LoadError, Problem, RandomWeights};

pub use crate::sampler::StepUpdate;

/// Whether `B` is the CPU backend (where "the autoencoder on the CPU" changes nothing).
fn is_cpu_backend<B: Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<burn::backend::Flex>()
}

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
    pub uvit: UvitConfig,
    pub sampler: SamplerConfig,
}

fn config_error(msg: impl Into<String>) -> ModelError {
    ModelError::Other(msg.into())
}

impl DiffusionConfig {
    /// The configuration of a registered UViT model (see [`crate::model::registry`]) at its training
    /// resolution, 512 px.
    pub fn registered(name: &str) -> Result<Self, ModelError> {
        Self::registered_at(name, None)
    }

    /// Same, with the latent size for another image resolution (a multiple of the autoencoder's
    /// factor; the pos_embed of the published weights only fits 512 px).
    pub fn registered_at(name: &str, resolution: Option<usize>) -> Result<Self, ModelError> {
        let Some(m) = registered_uvit(name) else {
            let known: Vec<_> = crate::model::registry::uvit_models().map(|m| m.name).collect();
            return Err(config_error(format!("unknown diffusion model `{name}`; known UViT models: {}", known.join(", "))));
        };
        let mut autoencoder = DcaeConfig::published(m.autoencoder)?;
        autoencoder.scaling_factor = m.scaling_factor;
        let mut uvit = m.uvit_config();
        if let Some(res) = resolution {
            let f = autoencoder.factor();
            if res == 0 || res % f != 0 {
                return Err(config_error(format!("resolution {res} is not a positive multiple of {}'s factor {f}", m.autoencoder)));
            }
            uvit.input_size = res / f;
        }
        let cfg = Self { name: m.name.to_string(), autoencoder, scaling_factor: m.scaling_factor, uvit, sampler: SamplerConfig::default() };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a diffusion config.json: `{"model_name": <registered name>}`, or the explicit schema
    /// `{"autoencoder": <diffusers AutoencoderDC config>, "scaling_factor", "uvit": {…},
    /// "sampler": {…}}` (`sampler` may be omitted: the published defaults). `name` labels the
    /// model when the file does not name it.
    pub fn from_json(v: &Value, name: &str) -> Result<Self, ModelError> {
        if v.get("uvit").is_none() {
            if let Some(n) = v.get("model_name").and_then(Value::as_str) {
                return Self::registered(n);
            }
            return Err(config_error(format!(
                "{name}: not a diffusion config (it has neither \"model_name\" nor \"uvit\")"
            )));
        }
        let uvit: UvitConfig = serde_json::from_value(v["uvit"].clone())
            .map_err(|e| config_error(format!("{name}: invalid \"uvit\" block: {e}")))?;
        let sampler: SamplerConfig = match v.get("sampler") {
            Some(s) => serde_json::from_value(s.clone()).map_err(|e| config_error(format!("{name}: invalid \"sampler\" block: {e}")))?,
            None => SamplerConfig::default(),
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
        let cfg = Self { name: model_name, autoencoder, scaling_factor, uvit, sampler };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        self.uvit.validate().map_err(|e| config_error(format!("{}: {e}", self.name)))?;
        // Bounded before the parameter count is taken (its products overflowed for a
        // hidden_size of 2^40), each far beyond the published UViT-2B.
        let u = &self.uvit;
        let limits = [
            ("depth", u.depth, 256),
            ("hidden_size", u.hidden_size, 16384),
            ("in_channels", u.in_channels, 4096),
            ("patch_size", u.patch_size, 64),
            ("input_size / patch_size", u.grid(), 512),
            ("num_classes", u.num_classes, 1 << 24),
        ];
        if let Some((field, v, max)) = limits.iter().find(|(_, v, max)| v > max) {
            return Err(config_error(format!("{}: uvit.{field} = {v} is beyond any UViT (at most {max}); is the config.json damaged?", self.name)));
        }
        if !(u.mlp_ratio <= 16.0) {
            return Err(config_error(format!("{}: uvit.mlp_ratio {} is beyond any UViT (at most 16)", self.name, u.mlp_ratio)));
        }
        if u.num_params() > 1 << 33 {
            return Err(config_error(format!("{}: the UViT has {} parameters, beyond any published model; is the config.json damaged?", self.name, u.num_params())));
        }
        self.sampler.validate().map_err(|e| config_error(format!("{}: {e}", self.name)))?;
        self.autoencoder.validate()?;
        if self.uvit.in_channels != self.autoencoder.latent_channels {
            return Err(config_error(format!(
                "{}: the UViT takes {} latent channels but the autoencoder makes {}",
                self.name, self.uvit.in_channels, self.autoencoder.latent_channels
            )));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(config_error(format!("{}: scaling_factor must be positive, got {}", self.name, self.scaling_factor)));
        }
        Ok(())
    }

    /// Output image side in pixels.
    pub fn image_size(&self) -> usize {
        self.uvit.input_size * self.autoencoder.factor()
    }
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
    /// and the strength in (0, 1]. The source is noised to `t = strength` on the model's own
    /// schedule and denoised from there with `round(strength · steps)` evaluations.
    pub init: Option<(Tensor<B, 4>, f32)>,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct GenerateOutput<B: Backend> {
    /// Final sample, still multiplied by the scaling factor (pass it to
    /// [`DiffusionModel::decode_latent`]).
    pub latent: Tensor<B, 4>,
    /// Guided noise predictions made (= `steps`).
    pub nfe: usize,
    /// Predictions of the UViT made: `2·nfe` with guidance (each conditional / unconditional
    /// pair computed as one batch), `nfe` without.
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

/// Samples latents with a bare UViT (no autoencoder): the loop shared by
/// [`DiffusionModel::generate`] and the benchmarks. See there for the semantics.
pub fn sample_uvit<B: Backend>(
    uvit: &Uvit<B>,
    sampler: &SamplerConfig,
    req: &GenerateRequest<B>,
    on_step: &mut dyn FnMut(StepUpdate<B>),
    cancel: &AtomicBool,
) -> Result<GenerateOutput<B>, GenerateError> {
    let cfg = &uvit.config;
    let batch = req.labels.len();
    if batch == 0 {
        return Err(GenerateError::NoLabels);
    }
    if let Some(&id) = req.labels.iter().find(|&&id| id > cfg.null_class()) {
        return Err(GenerateError::UnknownClass { id, num_classes: cfg.num_classes });
    }
    if req.steps == 0 {
        return Err(GenerateError::ZeroSteps);
    }
    if !req.cfg_scale.is_finite() {
        return Err(GenerateError::BadScale(req.cfg_scale));
    }
    let mut solver = DpmSolver::<f32>::new(sampler)?;
    let device = uvit.device();
    let expected = cfg.latent_shape(batch);
    let noise = match &req.noise {
        Some(n) if n.dims() != expected => {
            return Err(GenerateError::NoiseShape { expected, found: n.dims(), batch });
        }
        Some(n) => n.clone(),
        None => seeded_noise::<B>(expected, req.seed, &device),
    };

    let ids = |v: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(v, [batch]), &device);
    let y = ids(req.labels.iter().map(|&l| l as i64).collect());
    let y_null = ids(vec![cfg.null_class() as i64; batch]);
    let guided = req.cfg_scale != 1.0;
    // `scale − 1` in double, as Python computes it before it meets the f32 tensor.
    let gain = req.cfg_scale as f64 - 1.0;
    let n_train = solver.schedule.total_n() as f64;
    let mut calls = 0usize;
    let mut nfe = 0usize;

    // ε̂(x, t): the network sees t·N (t is an f32 value, so the f64 product rounds to f32 exactly
    // as the reference's float32 multiplication does).
    let mut eps_model = |x: Tensor<B, 4>, t: f64| -> Result<Tensor<B, 4>, GenerateError> {
        let t_model = Tensor::<B, 1>::from_data(TensorData::new(vec![(t * n_train) as f32; batch], [batch]), &device);
        if cancel.load(Ordering::Relaxed) {
            return Err(GenerateError::Cancelled);
        }
        nfe += 1;
        if !guided {
            calls += 1;
            return Ok(uvit.forward(x, t_model, y.clone()));
        }
        // The conditional and unconditional predictions as one batch: each Linear layer then
        // reads its weights once for both. With 66 tokens an image, the UViT-H forward is bound
        // by streaming its 2 GB of f32 weights, not by arithmetic.
        calls += 2;
        let both = uvit.forward(Tensor::cat(vec![x.clone(), x], 0), Tensor::cat(vec![t_model.clone(), t_model], 0), Tensor::cat(vec![y.clone(), y_null.clone()], 0));
        let cond = both.clone().narrow(0, 0, batch);
        let uncond = both.narrow(0, batch, batch);
        Ok(cond.clone() + (cond - uncond).mul_scalar(gain))
    };
    let (x, steps) = match &req.init {
        Some((z, strength)) => {
            if !(strength.is_finite() && *strength > 0.0 && *strength <= 1.0) {
                return Err(GenerateError::BadStrength(*strength));
            }
            if z.dims() != expected {
                return Err(GenerateError::NoiseShape { expected, found: z.dims(), batch });
            }
            // q(x_t | x_0) = N(α_t x_0, σ_t² I) at t = t_end + strength·(t_start − t_end).
            let t0 = solver.t_end + strength * (solver.t_start - solver.t_end);
            let (a, s) = (solver.schedule.alpha(t0), solver.schedule.sigma(t0));
            solver.t_start = t0;
            let steps = ((req.steps as f32 * strength).round() as usize).clamp(1, req.steps);
            (z.clone().mul_scalar(a as f64) + noise.mul_scalar(s as f64), steps)
        }
        None => (noise, req.steps),
    };
    let latent = solver.sample(x, steps, &mut eps_model, on_step)?;
    Ok(GenerateOutput { latent, nfe, network_calls: calls })
}

/// A loaded diffusion model: autoencoder + UViT + settings.
#[derive(Debug)]
pub struct DiffusionModel<B: Backend> {
    pub config: DiffusionConfig,
    /// On the UViT's device, or on the CPU ([`Self::load_checkpoint_placed`]).
    pub autoencoder: PlacedAe<B>,
    pub uvit: Uvit<B>,
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
        let build = |check_only: bool| -> Result<(PlacedAe<B>, Uvit<B>), ModelError> {
            let ae_name = &config.autoencoder.name;
            let (autoencoder, ae_result) = if ae_on_cpu {
                let (ae, r) = load_part::<burn::backend::Flex, _>(ckpt, AE_PREFIX, ae_layout, &Default::default(), check_only, ae_name, |w| Dcae::load(w, &config.autoencoder));
                (PlacedAe::Cpu(ae), r)
            } else {
                let (ae, r) = load_part::<B, _>(ckpt, AE_PREFIX, ae_layout, device, check_only, ae_name, |w| Dcae::load(w, &config.autoencoder));
                (PlacedAe::Here(ae), r)
            };
            let (uvit, uvit_result) = load_part::<B, _>(ckpt, UVIT_PREFIX, Layout::Original, device, check_only, "UViT", |w| Uvit::load(w, &config.uvit));
            let mut problems: Vec<Problem> = Vec::new();
            for result in [ae_result, uvit_result] {
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
            Ok((autoencoder, uvit))
        };
        build(true)?;
        let (autoencoder, uvit) = build(false)?;
        Ok(Self { config, autoencoder, uvit })
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
        let uvit = Uvit::load(&mut RandomWeights::<B>::new(device), &config.uvit);
        Ok(Self { config, autoencoder, uvit })
    }

    pub fn device(&self) -> B::Device {
        self.uvit.device()
    }

    /// Samples one latent per label: initial noise (injected, or seeded), then DPM-Solver from
    /// t = 1 to `t_end` with guidance in two separate UViT passes (conditional, then with the
    /// null id), one pass when `cfg_scale == 1`. `cancel` is checked before every network call;
    /// `on_step` runs after every solver step.
    pub fn generate(
        &self,
        req: &GenerateRequest<B>,
        on_step: &mut dyn FnMut(StepUpdate<B>),
        cancel: &AtomicBool,
    ) -> Result<GenerateOutput<B>, GenerateError> {
        sample_uvit(&self.uvit, &self.config.sampler, req, on_step, cancel)
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
