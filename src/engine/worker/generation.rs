//! The one generation trait every model family's engine adapter implements, and the engine's
//! one generate path runs: describe yourself ([`GeneratorInfo`]: defaults, controls, samplers,
//! footprint), hand out your autoencoder (previews, projection fit), run a [`GenerateJob`] with
//! phases, per-step x0 estimates and cancel, and return finished images.
//!
//! Adapters: SANA / Sprint in its own folder ([`crate::model::sana::adapter`]), and the
//! class-conditional families here: UViT, USiT and DiT-XL are one adapter
//! ([`super::api::Generator`]) over their common trait
//! [`crate::model::diffusion::ClassDenoiser`], whose implementations are in each family's
//! folder (`model/uvit/`, `model/dit/`), so a new class family adds no adapter. The only place
//! that maps a model's files to its adapter is [`load`]; the engine, the UI and the protocol
//! never name a family.

use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::tensor::{backend::Backend, Tensor};
use image::RgbImage;

use super::api::{GenerateFailure, Generator, GeneratorInfo, LoadFailure};
use super::protocol::{Conditioning, GenerateJob, GeneratorSource};
use crate::model::placed::PlacedAe;
use crate::model::DcaeConfig;

/// What a run reports before its end.
pub enum RunEvent<B: Backend> {
    /// A phase outside the sampling steps (encoding the source or the prompt, decoding).
    Phase { label: String, done: usize, total: usize },
    /// 1-based step, its x0 estimate (scaled latents, as the projection takes them).
    Step { step: usize, total: usize, x0: Tensor<B, 4> },
}

/// A finished run.
pub struct RunOutput {
    pub images: Vec<RgbImage>,
    pub nfe: usize,
    pub network_calls: usize,
    /// The sampler that ran, as saved in PNGs.
    pub sampler: String,
    /// Seconds spent decoding the final images (part of the run's time).
    pub decode_secs: f64,
    /// The largest batch one decode was given, where the adapter decodes image by image;
    /// `None` where the memory budget decides (SANA).
    pub decode_batch: Option<usize>,
    /// What the user should know that did not stop the run.
    pub warnings: Vec<String>,
}

pub trait GenerationModel<B: Backend> {
    fn info(&self) -> &GeneratorInfo;

    /// The model's autoencoder and its config: the full-decode previews and the preview
    /// projection's fit use it (a handle on the model's own weights, loaded now if need be).
    fn autoencoder(&mut self) -> Result<(PlacedAe<B>, DcaeConfig), String>;

    /// Runs `job` (its conditioning, steps, guidance, seed, sampler and source image); cancel
    /// is `job.cancel`, polled between network calls.
    fn run(&mut self, job: &GenerateJob, on_event: &mut dyn FnMut(RunEvent<B>)) -> Result<RunOutput, GenerateFailure>;
}

/// The adapter for `source`'s family, loaded on `device` with the placements of `config`.
pub fn load<B: Backend>(source: &GeneratorSource, device: &B::Device, config: &super::WorkerConfig) -> Result<Box<dyn GenerationModel<B>>, LoadFailure> {
    Ok(match source {
        GeneratorSource::Class(f) => Box::new(Generator::<B>::load_placed(&f.name, &f.config, &f.weights, device, config.autoencoder)?),
        GeneratorSource::Text { name, root } => Box::new(crate::model::sana::adapter::TextGenerator::<B>::load(name, root, device, config.text_encoder, config.autoencoder)?),
    })
}

/// A scaled latent batch as images, one image per decode (each within the device's limits,
/// tiled where one would need a larger tensor): previews and the class models' final images.
pub fn decode_images<B: Backend>(ae: &PlacedAe<B>, cfg: &DcaeConfig, scaling_factor: f32, x0: Tensor<B, 4>, on_image: &mut dyn FnMut(usize, usize)) -> Result<Vec<RgbImage>, String> {
    let b = x0.dims()[0];
    let mut images = Vec::with_capacity(b);
    let budget = crate::engine::memory::autoencoder_budget_for(ae, &x0.device());
    for i in 0..b {
        on_image(i, b);
        let z = x0.clone().narrow(0, i, 1).div_scalar(scaling_factor as f64);
        let img = match ae.decode_within(cfg, z, budget, &mut |_, _| true) {
            Ok(Some(y)) => y,
            Ok(None) => return Err("the decode stopped".into()),
            Err(e) => return Err(e.to_string()),
        };
        let [_, c, h, w] = img.dims();
        if c != 3 {
            return Err(format!("the decoder returned {c} channels, not 3"));
        }
        let values = crate::model::host::read_back(img)?;
        images.push(super::api::to_rgb8(&values, h, w)?);
    }
    Ok(images)
}

pub(crate) fn wrong_conditioning(model_takes: &str) -> GenerateFailure {
    GenerateFailure::Failed(format!("the loaded model takes {model_takes}; the job was made for another model (load it again)"))
}

impl<B: Backend> GenerationModel<B> for Generator<B> {
    fn info(&self) -> &GeneratorInfo {
        Generator::info(self)
    }

    fn autoencoder(&mut self) -> Result<(PlacedAe<B>, DcaeConfig), String> {
        let (ae, cfg) = Generator::autoencoder(self);
        Ok((ae.clone(), cfg.clone()))
    }

    fn run(&mut self, job: &GenerateJob, on_event: &mut dyn FnMut(RunEvent<B>)) -> Result<RunOutput, GenerateFailure> {
        let Conditioning::Classes(labels) = &job.conditioning else { return Err(wrong_conditioning("a class")) };
        let init = match &job.init {
            Some(src) => {
                on_event(RunEvent::Phase { label: "Encoding the source image…".into(), done: 0, total: 1 });
                let side = self.info().image_size();
                let x = super::image_tensor::<B>(&src.image, side, side, &self.device()).map_err(|e| GenerateFailure::Failed(format!("the source image cannot be used: {e}")))?;
                let z = self.encode(x).map_err(|e| GenerateFailure::Failed(format!("the source image cannot be encoded: {e}")))?;
                Some((Tensor::cat(vec![z; labels.len()], 0), src.strength))
            }
            None => None,
        };
        if job.cancel.load(Ordering::Relaxed) {
            return Err(GenerateFailure::Cancelled);
        }
        let mut on_step = |step: usize, total: usize, x0: Tensor<B, 4>| on_event(RunEvent::Step { step, total, x0 });
        let out = self.generate(labels, job.cfg_scale, job.steps, job.seed, job.sampler.as_deref(), init, &mut on_step, &job.cancel)?;
        // Not cancelled from here on: the sampling is done, and its image is worth the decode.
        let t = Instant::now();
        let (ae, cfg) = Generator::autoencoder(self);
        let mut on_image = |i: usize, n: usize| on_event(RunEvent::Phase { label: format!("Decoding image {}/{n}…", i + 1), done: i, total: n });
        let images = decode_images(ae, cfg, self.info().scaling_factor, out.latent, &mut on_image).map_err(|e| GenerateFailure::Failed(format!("decoding the final image failed: {e}")))?;
        let sampler = self.info().sampler_label(job.sampler.as_deref());
        Ok(RunOutput {
            images,
            nfe: out.nfe,
            network_calls: out.network_calls,
            sampler,
            decode_secs: t.elapsed().as_secs_f64(),
            decode_batch: Some(1),
            warnings: Vec::new(),
        })
    }
}
