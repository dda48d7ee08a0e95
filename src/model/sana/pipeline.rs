//! The SANA text-to-image pipelines as diffusers runs them (`SanaPipeline`,
//! `SanaSprintPipeline`): prompt → Gemma-2 → 300 caption tokens; noise → flow sampler over the
//! transformer (with classifier-free guidance, or Sprint's guidance input); latent → DC-AE
//! decode → resize back from the resolution bin.
//!
//! The text encoder is the largest part (2.6B parameters) and is needed only once per prompt:
//! embeddings are cached per prompt, and the encoder can be released after encoding and is
//! loaded again when a new prompt needs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::Flex;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde_json::Value;

use super::prompt::{default_instruction, PromptEmbeds, SanaTokenizer, TextEncoder};
use super::text_encoder::{Gemma2, Gemma2Config};
use super::transformer::{SanaTransformer, SanaTransformerConfig, MAX_SEQUENCE_LENGTH};
use crate::model::host::read_back;
use crate::model::tiling;
use crate::model::placed::PlacedAe;
use crate::model::DcaeConfig;
use crate::model::sana::flow::{self, FlowSchedule, FlowSchedulerConfig, FlowSolver, FlowStep};
use crate::sampler::SamplerError;
use crate::model::load::{dcae_config_from_json, load_dcae, read_json, ModelError};
use crate::model::precision::{Precision, PrecisionChoice};
use crate::model::sana::layout::{PipelineFiles, PipelineKind, WeightFiles};
use crate::weights::{load_strict, Checkpoint, CheckpointLoader, Layout};

/// The diffusers resolution-bin tables (`ASPECT_RATIO_{512,1024,2048,4096}_BIN`): table, key
/// (height / width as diffusers writes it), height, width.
const BINS_TSV: &str = include_str!("../../../assets/sana/aspect-ratio-bins.tsv");

/// The bin table for a model trained at `sample_size` latents (×32 px): 16 → 512, 32 → 1024 …
/// Sprint uses only the 1024 table.
pub fn bin_table(sample_size: usize) -> Option<usize> {
    match sample_size {
        16 => Some(512),
        32 => Some(1024),
        64 => Some(2048),
        128 => Some(4096),
        _ => None,
    }
}

/// The bin of `table` whose key (h / w) is closest to `height / width`; the first one wins a
/// tie, as diffusers' `min` over the dict does. `(height, width)`.
pub fn closest_bin(table: usize, height: usize, width: usize) -> Option<(usize, usize)> {
    let ar = height as f64 / width.max(1) as f64;
    let mut best: Option<(f64, usize, usize)> = None;
    for line in BINS_TSV.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [t, key, h, w] = cols[..] else { continue };
        if t.parse::<usize>().ok() != Some(table) {
            continue;
        }
        let (Ok(key), Ok(h), Ok(w)) = (key.parse::<f64>(), h.parse::<usize>(), w.parse::<usize>()) else { continue };
        let d = (key - ar).abs();
        if best.is_none_or(|(bd, _, _)| d < bd) {
            best = Some((d, h, w));
        }
    }
    best.map(|(_, h, w)| (h, w))
}

/// What a model folder says about itself, before any weight is read.
#[derive(Debug, Clone)]
pub struct SanaConfig {
    pub name: String,
    pub kind: PipelineKind,
    pub transformer: SanaTransformerConfig,
    pub text_encoder: Gemma2Config,
    pub vae: DcaeConfig,
    pub scheduler: FlowSchedulerConfig,
}

impl SanaConfig {
    /// Reads every component config of `files` and checks them.
    pub fn from_files(files: &PipelineFiles, name: &str) -> Result<Self, ModelError> {
        let tjson = read_json(&files.transformer.config)?;
        if let Some(class) = tjson.get("_class_name").and_then(Value::as_str).filter(|c| *c != "SanaTransformer2DModel") {
            return Err(ModelError::Other(format!(
                "{} describes a {class}, not a SanaTransformer2DModel: this is a checkpoint of another model family",
                files.transformer.config.display()
            )));
        }
        let transformer = SanaTransformerConfig::from_json(&tjson).map_err(ModelError::Other)?;
        transformer.validate().map_err(|e| ModelError::Other(format!("{}: {e}", files.transformer.config.display())))?;
        let text_encoder = Gemma2Config::from_json(&read_json(&files.text_encoder.config)?)
            .and_then(|c| c.validate().map(|_| c))
            .map_err(|e| ModelError::Other(format!("{}: {e}", files.text_encoder.config.display())))?;
        if text_encoder.hidden_size != transformer.caption_channels {
            return Err(ModelError::Other(format!(
                "the text encoder's width {} differs from the transformer's caption_channels {}: the components come from different models",
                text_encoder.hidden_size, transformer.caption_channels
            )));
        }
        let vae = dcae_config_from_json(&read_json(&files.vae.config)?, &format!("{name}/vae"))?;
        if vae.latent_channels != transformer.in_channels {
            return Err(ModelError::Other(format!(
                "the autoencoder has {} latent channels but the transformer takes {}: the components come from different models",
                vae.latent_channels, transformer.in_channels
            )));
        }
        let scheduler = FlowSchedulerConfig::from_json(&read_json(&files.scheduler)?).map_err(|e| ModelError::Other(format!("{}: {e}", files.scheduler.display())))?;
        let expected = match files.kind {
            PipelineKind::Sana => [FlowSolver::Dpm, FlowSolver::Euler].contains(&scheduler.solver),
            PipelineKind::Sprint => scheduler.solver == FlowSolver::Scm && transformer.guidance_embeds,
        };
        if !expected {
            return Err(ModelError::Other(format!(
                "{:?} pipeline with a {:?} scheduler and guidance_embeds = {}: not a combination any SANA release uses",
                files.kind, scheduler.solver, transformer.guidance_embeds
            )));
        }
        Ok(Self { name: name.to_string(), kind: files.kind, transformer, text_encoder, vae, scheduler })
    }

    /// The model's own defaults: SANA 20 steps at guidance 4.5, Sprint 2 steps.
    pub fn default_steps(&self) -> usize {
        match self.kind {
            PipelineKind::Sana => 20,
            PipelineKind::Sprint => 2,
        }
    }

    pub fn default_guidance(&self) -> f32 {
        4.5
    }

    /// Pixels per latent pixel (32 for the real models, 8 for the test fixture).
    pub fn vae_factor(&self) -> usize {
        self.vae.factor()
    }

    /// Whether the transformer needs the ±65504 clip of the fp16 reference: the SANA 1.0
    /// models trained in fp16 (no qk-norm, no position embedding, not a BF16 release).
    pub fn fp16_trained(&self) -> bool {
        fp16_trained(self.kind, &self.transformer, &self.name)
    }
}

/// [`SanaConfig::fp16_trained`] from its parts (a registered model's, for benchmarks).
pub fn fp16_trained(kind: PipelineKind, t: &SanaTransformerConfig, name: &str) -> bool {
    kind == PipelineKind::Sana && !t.qk_norm() && t.interpolation_scale.is_none() && !name.to_ascii_lowercase().contains("bf16")
}

/// The precision a transformer computes in for `choice`: the type its checkpoint was trained in
/// (f16, or bf16 for a bf16-trained one) where the GPU backend has it, else f32.
pub fn transformer_precision<B: Backend>(choice: PrecisionChoice, fp16_trained: bool, device: &B::Device) -> Precision {
    if fp16_trained {
        choice.resolve::<B>(device).unwrap_or(Precision::F32)
    } else {
        choice.resolve_bf16_trained::<B>(device)
    }
}

/// Cached prompt embeddings: `[1, L, D]` and the `[1, L]` mask.
struct Embedded<B: Backend> {
    embeds: Tensor<B, 3>,
    mask: Tensor<B, 2, Int>,
    dropped: usize,
    /// When it was last used ([`SanaPipeline::uses`]): the least recently used goes first.
    used: u64,
}

/// Prompt embeddings kept per pipeline: each is [1, 300, 2304] f32, 2.8 MB on the device, so
/// the bound is about 90 MB. Enough for a batch of distinct prompts, the negative and going back
/// and forth between a few; a long session of new prompts no longer grows without end.
pub const PROMPT_CACHE_ENTRIES: usize = 32;

/// A SANA / Sprint pipeline. Its components are checked when it is opened and loaded when first
/// needed: with [`Self::low_memory`] the text encoder is released before the transformer is
/// loaded, so the peak is the larger of the two parts rather than their sum.
pub struct SanaPipeline<B: Backend> {
    pub config: SanaConfig,
    pub files: PipelineFiles,
    transformer: Option<SanaTransformer<B>>,
    /// On this backend's device or on the CPU ([`Self::vae_on_cpu`]).
    vae: Option<PlacedAe<B>>,
    /// Run the autoencoder on the CPU backend (set before it loads; a change releases it).
    vae_on_cpu: bool,
    /// `None` until needed, and again once released; on this backend's device or on the CPU
    /// ([`Self::text_on_cpu`]).
    text: Option<TextSlot<B>>,
    /// Run the text encoder on the CPU backend (its bf16 weights kept as stored, the fast
    /// kernels) whatever `B` is: the default on wgpu, where Gemma-2 would take 10.5 GB of device
    /// memory in f32. Its embeddings (a few MB) are moved to the device. Set before the encoder
    /// loads (a change releases a loaded one).
    text_on_cpu: bool,
    /// (prompt, instruction on, negative) → embeddings.
    cache: HashMap<(String, bool, bool), Embedded<B>>,
    /// A clock for the cache's least-recently-used eviction.
    uses: u64,
    /// Release the text encoder after encoding, before the transformer is loaded.
    pub low_memory: bool,
    /// The VAE's precision ([`PrecisionChoice::resolve`]), the text encoder's
    /// ([`PrecisionChoice::resolve_bf16_trained`]) and the transformer's (the one of the two
    /// its checkpoint was trained in: [`Self::transformer_precision`]).
    pub precision: PrecisionChoice,
    device: B::Device,
}

/// Where the loaded text encoder runs.
enum TextSlot<B: Backend> {
    Here(TextEncoder<B>),
    Cpu(TextEncoder<Flex>),
}

/// Every phase's progress, and each sampler step's x₀ for previews.
pub enum T2iEvent<B: Backend> {
    /// Loading the text encoder's weights (again).
    LoadingTextEncoder,
    /// `done` of `total` Gemma layers of the current prompt (`prompt` of `prompts`).
    TextEncoder { prompt: usize, prompts: usize, done: usize, total: usize },
    Step(FlowStep<B>),
    Decode { done: usize, total: usize },
}

/// One text-to-image run.
#[derive(Debug, Clone)]
pub struct T2iRequest<B: Backend> {
    pub prompts: Vec<String>,
    pub negative_prompt: String,
    /// The size asked for (multiples of the VAE factor); with binning, generation runs at the
    /// closest bin and the image is resized back.
    pub width: usize,
    pub height: usize,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    /// Flow DPM-Solver++ or Euler for SANA, SCM for Sprint; the model's scheduler by default.
    pub solver: Option<FlowSolver>,
    pub flow_shift: Option<f64>,
    /// Prepend the complex human instruction (the pipelines' default).
    pub instruction: bool,
    pub binning: bool,
    pub seed: u64,
    /// The initial latent `[B, C, h, w]` (diffusers' `latents=`), instead of seeded noise.
    pub noise: Option<Tensor<B, 4>>,
    /// Sprint's per-step draws `[n, B, C, h, w]`, instead of seeded ones.
    pub step_noise: Option<Tensor<B, 5>>,
    pub max_timestep: Option<f64>,
    pub intermediate_timestep: Option<f64>,
    /// Image-to-image: the source's latent `[B, C, h, w]` (times the scaling factor; its size
    /// is the run's, no binning) and the strength in (0, 1].
    pub init: Option<(Tensor<B, 4>, f32)>,
    /// The memory the final decode may use, which chooses batch, image-by-image or tiled
    /// decoding; `None`: image by image, untiled.
    pub memory_budget: Option<tiling::Budget>,
}

impl<B: Backend> T2iRequest<B> {
    pub fn new(prompts: Vec<String>, width: usize, height: usize) -> Self {
        Self {
            prompts,
            negative_prompt: String::new(),
            width,
            height,
            steps: None,
            guidance: None,
            solver: None,
            flow_shift: None,
            instruction: true,
            binning: true,
            seed: 0,
            noise: None,
            step_noise: None,
            max_timestep: None,
            intermediate_timestep: None,
            init: None,
            memory_budget: None,
        }
    }
}

/// The encoded conditioning of a batch, as `encode_prompt` returns it.
pub struct Conditioning<B: Backend> {
    pub prompt_embeds: Tensor<B, 3>,
    pub prompt_mask: Tensor<B, 2, Int>,
    /// Only with classifier-free guidance.
    pub negative: Option<(Tensor<B, 3>, Tensor<B, 2, Int>)>,
    /// Prompt tokens lost to the 300-token limit, per prompt.
    pub dropped_tokens: Vec<usize>,
}

pub struct T2iOutput<B: Backend> {
    /// The sampled latent (what diffusers returns with `output_type="latent"`), `[B, C, h, w]`.
    pub latent: Tensor<B, 4>,
    /// The final images at the asked size.
    pub images: Vec<RgbImage>,
    pub conditioning: Conditioning<B>,
    /// The (height, width) generated at, before the resize back.
    pub generated_size: (usize, usize),
    pub steps: usize,
    pub guidance: f32,
    pub solver: FlowSolver,
    pub network_calls: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum T2iError {
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Sampler(#[from] SamplerError),
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Prompt(#[from] super::prompt::PromptError),
    #[error("reading a result back from the device failed: {0}")]
    ReadBack(String),
    /// A tensor of the run would be over the device's largest (found before any work).
    #[error("{0}")]
    TooLarge(crate::model::limits::TooLarge),
}

/// Far more than any laptop can hold, and the most a bin table names.
const MAX_SIDE: usize = 4096;
const MAX_BATCH: usize = 64;

impl<B: Backend> SanaPipeline<B> {
    /// Opens a pipeline: reads every config and the tokenizer, and checks every component's
    /// weights key by key and shape by shape (missing, unexpected and misshaped keys named per
    /// component) without reading them. Nothing large is loaded yet.
    pub fn open(files: &PipelineFiles, name: &str, device: &B::Device) -> Result<Self, ModelError> {
        let config = SanaConfig::from_files(files, name)?;
        SanaTokenizer::from_file(&files.tokenizer).map_err(|e| ModelError::Other(e.to_string()))?;
        check::<B>(&files.transformer.weights, "", "SANA transformer", device, |w| {
            SanaTransformer::load(w, &config.transformer);
        })?;
        check::<B>(&files.vae.weights, "", &config.vae.name, device, |w| {
            crate::model::Dcae::load(w, &config.vae);
        })?;
        let ckpt = files.text_encoder.weights.open()?;
        let prefix = gemma_prefix(&ckpt);
        drop(ckpt);
        check::<B>(&files.text_encoder.weights, prefix, "Gemma-2 text encoder", device, |w| {
            Gemma2::load(w, &config.text_encoder);
        })?;
        // A GPU backend without bf16 arithmetic (wgpu) would widen Gemma-2 to 10.5 GB of f32 on
        // the device: its text encoder runs on the CPU unless the caller says otherwise.
        let text_on_cpu = std::any::TypeId::of::<B>() != std::any::TypeId::of::<Flex>() && !crate::model::precision::bf16_available::<B>(device);
        Ok(Self {
            config,
            files: files.clone(),
            transformer: None,
            vae: None,
            text: None,
            text_on_cpu,
            vae_on_cpu: false,
            cache: HashMap::new(),
            uses: 0,
            low_memory: false,
            precision: PrecisionChoice::Auto,
            device: device.clone(),
        })
    }

    /// [`Self::open`], then every component loaded.
    pub fn load(files: &PipelineFiles, name: &str, device: &B::Device) -> Result<Self, ModelError> {
        let mut p = Self::open(files, name, device)?;
        p.load_text_encoder()?;
        p.load_transformer()?;
        p.load_vae()?;
        Ok(p)
    }

    pub fn load_text_encoder(&mut self) -> Result<(), ModelError> {
        if self.text.is_none() {
            self.text = Some(self.load_text_slot()?);
        }
        Ok(())
    }

    fn load_text_slot(&self) -> Result<TextSlot<B>, ModelError> {
        let precision = self.text_precision();
        Ok(if self.text_on_cpu {
            TextSlot::Cpu(load_text_encoder::<Flex>(&self.files, &self.config.text_encoder, &Default::default(), precision)?)
        } else {
            TextSlot::Here(load_text_encoder(&self.files, &self.config.text_encoder, &self.device, precision)?)
        })
    }

    /// Puts the text encoder on the CPU (`true`) or this backend's device; a loaded one on the
    /// other side is released (it loads again where asked on the next prompt).
    pub fn set_text_on_cpu(&mut self, on_cpu: bool) {
        if on_cpu != self.text_on_cpu {
            self.text = None;
        }
        self.text_on_cpu = on_cpu;
    }

    /// Whether the text encoder runs on the CPU backend ([`Self::set_text_on_cpu`]).
    pub fn text_on_cpu(&self) -> bool {
        self.text_on_cpu
    }

    pub fn load_transformer(&mut self) -> Result<&SanaTransformer<B>, ModelError> {
        if self.transformer.is_none() {
            let ckpt = self.files.transformer.weights.open()?;
            let cfg = &self.config.transformer;
            let t = load_strict(&ckpt, "", Layout::Original, &self.device, "SANA transformer", |w| SanaTransformer::load(w, cfg))?;
            let precision = self.transformer_precision();
            self.transformer = Some(t.clip_fp16_range(self.config.fp16_trained()).with_precision(precision));
        }
        self.transformer.as_ref().ok_or_else(|| ModelError::Other("the transformer could not be loaded".into()))
    }

    pub fn load_vae(&mut self) -> Result<&PlacedAe<B>, ModelError> {
        if self.vae.is_none() {
            let ckpt = self.files.vae.weights.open()?;
            // f16 on a GPU that has it: the decode's activations are the run's peak.
            let precision = self.vae_precision();
            self.vae = Some(if self.vae_on_cpu {
                PlacedAe::Cpu(load_dcae::<Flex>(&ckpt, &self.config.vae, &Default::default())?.with_precision(precision))
            } else {
                PlacedAe::Here(load_dcae(&ckpt, &self.config.vae, &self.device)?.with_precision(precision))
            });
        }
        self.vae.as_ref().ok_or_else(|| ModelError::Other("the autoencoder could not be loaded".into()))
    }

    /// Puts the autoencoder on the CPU backend (`true`, on a GPU backend) or this backend's
    /// device; a loaded one on the other side is released.
    pub fn set_vae_on_cpu(&mut self, on_cpu: bool) {
        let on_cpu = on_cpu && std::any::TypeId::of::<B>() != std::any::TypeId::of::<Flex>();
        if on_cpu != self.vae_on_cpu {
            self.vae = None;
        }
        self.vae_on_cpu = on_cpu;
    }

    /// Whether the autoencoder runs on the CPU backend ([`Self::set_vae_on_cpu`]).
    pub fn vae_on_cpu(&self) -> bool {
        self.vae_on_cpu
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// What the text encoder computes in: bf16 on a GPU backend with bf16 arithmetic, else f32
    /// (on the CPU: f32 from the bf16 weights as stored).
    pub fn text_precision(&self) -> Precision {
        if self.text_on_cpu {
            return self.precision.resolve_bf16_trained::<Flex>(&Default::default());
        }
        self.precision.resolve_bf16_trained::<B>(&self.device)
    }

    /// What the transformer computes in: the fp16-trained SANA 1.0 in f16 and the bf16-trained
    /// SANA 1.5 / Sprint in bf16 where the GPU backend has that type, else f32 (never a
    /// bf16-trained model in f16, whose range it exceeds).
    pub fn transformer_precision(&self) -> Precision {
        transformer_precision::<B>(self.precision, self.config.fp16_trained(), &self.device)
    }

    /// Calls of the 16-bit transformer and autoencoder that overflowed and were run again in f32.
    pub fn f32_reruns(&self) -> usize {
        self.transformer.as_ref().map_or(0, |t| t.f32_reruns()) + self.vae.as_ref().map_or(0, |v| v.f32_reruns())
    }

    /// What the autoencoder computes in (f32 where the choice cannot run where it is).
    pub fn vae_precision(&self) -> Precision {
        if self.vae_on_cpu {
            return self.precision.resolve::<Flex>(&Default::default()).unwrap_or(Precision::F32);
        }
        self.precision.resolve::<B>(&self.device).unwrap_or(Precision::F32)
    }

    /// Frees the text encoder (≈ 10 GB in f32); a prompt not yet cached loads it again.
    pub fn release_text_encoder(&mut self) {
        self.text = None;
    }

    pub fn text_encoder_loaded(&self) -> bool {
        self.text.is_some()
    }

    /// Embeddings of `prompt` (`[1, L, D]`, `[1, L]`), from the cache or encoded now.
    fn embed(&mut self, prompt: &str, instruction: bool, negative: bool, which: (usize, usize), on_event: &mut dyn FnMut(T2iEvent<B>), cancel: &AtomicBool) -> Result<(Tensor<B, 3>, Tensor<B, 2, Int>, usize), T2iError> {
        let key = (prompt.to_string(), instruction, negative);
        self.uses += 1;
        if let Some(e) = self.cache.get_mut(&key) {
            e.used = self.uses;
            return Ok((e.embeds.clone(), e.mask.clone(), e.dropped));
        }
        if self.text.is_none() {
            on_event(T2iEvent::LoadingTextEncoder);
            self.text = Some(self.load_text_slot()?);
        }
        let Some(slot) = &self.text else { return Err(T2iError::Cancelled) };
        let mut progress = |done: usize, total: usize| {
            on_event(T2iEvent::TextEncoder { prompt: which.0, prompts: which.1, done, total });
            !cancel.load(Ordering::Relaxed)
        };
        let chi = default_instruction();
        fn run<E: Backend>(encoder: &TextEncoder<E>, prompt: &str, negative: bool, chi: Option<&str>, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Option<PromptEmbeds<E>>, T2iError> {
            Ok(if negative {
                encoder.encode_negative(prompt, MAX_SEQUENCE_LENGTH, progress)?
            } else {
                encoder.encode_prompts(&[prompt], chi, MAX_SEQUENCE_LENGTH, progress)?
            })
        }
        let chi = instruction.then_some(chi.as_str());
        let PromptEmbeds { embeds, mask, dropped_tokens } = match slot {
            TextSlot::Here(encoder) => run(encoder, prompt, negative, chi, &mut progress)?.ok_or(T2iError::Cancelled)?,
            // The embeddings and mask cross to the device through host memory (a few MB).
            TextSlot::Cpu(encoder) => {
                let e = run(encoder, prompt, negative, chi, &mut progress)?.ok_or(T2iError::Cancelled)?;
                PromptEmbeds {
                    embeds: Tensor::from_data(e.embeds.into_data(), &self.device),
                    mask: Tensor::from_data(e.mask.into_data(), &self.device),
                    dropped_tokens: e.dropped_tokens,
                }
            }
        };
        let dropped = dropped_tokens.first().copied().unwrap_or(0);
        if self.cache.len() >= PROMPT_CACHE_ENTRIES {
            let oldest = self.cache.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.cache.remove(&k);
            }
        }
        self.cache.insert(key, Embedded { embeds: embeds.clone(), mask: mask.clone(), dropped, used: self.uses });
        Ok((embeds, mask, dropped))
    }

    /// Prompts whose embeddings are cached (at most [`PROMPT_CACHE_ENTRIES`]).
    pub fn cached_prompts(&self) -> usize {
        self.cache.len()
    }

    /// Whether `prompt`'s embeddings (no instruction, not the negative) are cached.
    pub fn is_cached(&self, prompt: &str, instruction: bool) -> bool {
        self.cache.contains_key(&(prompt.to_string(), instruction, false))
    }

    /// `encode_prompt` for a batch: one row per prompt, and with guidance the negative prompt
    /// (no instruction) repeated per row.
    pub fn encode(&mut self, prompts: &[String], negative: Option<&str>, instruction: bool, on_event: &mut dyn FnMut(T2iEvent<B>), cancel: &AtomicBool) -> Result<Conditioning<B>, T2iError> {
        let total = prompts.len() + negative.is_some() as usize;
        let (mut embeds, mut masks, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
        for (i, p) in prompts.iter().enumerate() {
            let (e, m, d) = self.embed(p, instruction, false, (i, total), on_event, cancel)?;
            embeds.push(e);
            masks.push(m);
            dropped.push(d);
        }
        let negative = match negative {
            Some(n) => {
                let (e, m, _) = self.embed(n, false, true, (prompts.len(), total), on_event, cancel)?;
                let b = prompts.len();
                Some((Tensor::cat(vec![e; b], 0), Tensor::cat(vec![m; b], 0)))
            }
            None => None,
        };
        Ok(Conditioning { prompt_embeds: Tensor::cat(embeds, 0), prompt_mask: Tensor::cat(masks, 0), negative, dropped_tokens: dropped })
    }

    /// Refuses a run whose transformer would make a tensor larger than the device holds, before
    /// the text encoder runs: `rows` latents (CFG included) of `lh × lw`. The decoder's
    /// activations are tiled under the same limit instead ([`tiling::decode_within`]).
    fn preflight(&self, rows: usize, lh: usize, lw: usize) -> Result<(), T2iError> {
        let Some(cap) = crate::model::limits::max_tensor_bytes::<B>(&self.device) else { return Ok(()) };
        let t = &self.config.transformer;
        let p = t.patch_size.max(1);
        let tokens = (lh / p) * (lw / p);
        let bytes = t.largest_activation_bytes(rows, tokens, super::prompt::DEFAULT_MAX_SEQUENCE_LENGTH, self.transformer_precision());
        if bytes <= cap {
            return Ok(());
        }
        let f = self.config.vae_factor();
        Err(T2iError::TooLarge(crate::model::limits::TooLarge {
            device: "this device".into(),
            limit: cap,
            what: format!("the transformer's largest activation for {rows} row(s) at {}×{}", lw * f, lh * f),
            bytes,
            advice: if rows > 1 { "lower the batch, the size, or turn guidance off (CFG doubles the rows)".into() } else { "choose a smaller size, or run on the CPU (--backend cpu)".into() },
        }))
    }

    /// Runs one request. `cancel` is checked before every network call (and between the text
    /// encoder's layers); `on_event` hears about every phase.
    pub fn generate(&mut self, req: &T2iRequest<B>, on_event: &mut dyn FnMut(T2iEvent<B>), cancel: &AtomicBool) -> Result<T2iOutput<B>, T2iError> {
        let cfg = self.config.clone();
        let b = req.prompts.len();
        if b == 0 {
            return Err(T2iError::Invalid("no prompt: give at least one".into()));
        }
        if b > MAX_BATCH {
            return Err(T2iError::Invalid(format!("{b} prompts in one batch; at most {MAX_BATCH}")));
        }
        if let Some(i) = req.prompts.iter().position(|p| p.trim().is_empty()) {
            return Err(T2iError::Invalid(format!("prompt {} is empty: describe the picture you want", i + 1)));
        }
        let f = cfg.vae_factor();
        let (lh, lw) = self.latent_size(req)?;
        let guidance = req.guidance.unwrap_or(cfg.default_guidance());
        if !(guidance.is_finite() && (0.0..=100.0).contains(&guidance)) {
            return Err(T2iError::Invalid(format!("guidance {guidance} must be a number between 0 and 100")));
        }
        let steps = req.steps.unwrap_or(cfg.default_steps());
        let mut sched_cfg = cfg.scheduler.clone();
        if let Some(s) = req.solver {
            let ok = match cfg.kind {
                PipelineKind::Sana => s != FlowSolver::Scm,
                PipelineKind::Sprint => s == FlowSolver::Scm,
            };
            if !ok {
                return Err(T2iError::Invalid(format!("the {:?} sampler does not fit a {:?} model (SANA: dpm or euler; Sprint: scm)", s, cfg.kind)));
            }
            sched_cfg.solver = s;
        }
        if let Some(shift) = req.flow_shift {
            if !(shift.is_finite() && shift > 0.0 && shift <= 100.0) {
                return Err(T2iError::Invalid(format!("flow shift {shift} must be a positive number (SANA uses 3)")));
            }
            sched_cfg.flow_shift = shift;
        }
        let intermediate = match (req.intermediate_timestep, steps) {
            (Some(t), _) => Some(t),
            (None, 2) => Some(flow::SCM_INTERMEDIATE_TIMESTEP),
            _ => None,
        };
        let schedule = FlowSchedule::new(&sched_cfg, steps, req.max_timestep, intermediate)?;
        let schedule = match &req.init {
            Some((_, strength)) => schedule.img2img(*strength)?,
            None => schedule,
        };
        let sprint = cfg.kind == PipelineKind::Sprint;
        let use_cfg = !sprint && guidance > 1.0;
        self.preflight(b * if use_cfg { 2 } else { 1 }, lh, lw)?;

        let cond = self.encode(&req.prompts, use_cfg.then_some(req.negative_prompt.as_str()), req.instruction, on_event, cancel)?;
        if self.low_memory {
            self.release_text_encoder();
        }
        self.load_transformer()?;
        self.load_vae()?;
        let device = self.device.clone();
        let c = cfg.transformer.in_channels;
        let mut rng = StdRng::seed_from_u64(req.seed);
        let x = match &req.noise {
            Some(n) => {
                if n.dims() != [b, c, lh, lw] {
                    return Err(T2iError::Invalid(format!("the noise tensor is {:?}, but this run needs [{b}, {c}, {lh}, {lw}]", n.dims())));
                }
                n.clone()
            }
            None => normal(&mut rng, [b, c, lh, lw], &device),
        };
        let x = match &req.init {
            Some((z, _)) => {
                if z.dims() != [b, c, lh, lw] {
                    return Err(T2iError::Invalid(format!("the source latent is {:?}, but this run needs [{b}, {c}, {lh}, {lw}]", z.dims())));
                }
                schedule.noised(z.clone(), x)
            }
            None => x,
        };
        if let Some(sn) = &req.step_noise {
            let want = [schedule.steps(), b, c, lh, lw];
            if sn.dims() != want {
                return Err(T2iError::Invalid(format!("the step noise tensor is {:?}, but this run needs {want:?}", sn.dims())));
            }
        }

        let (text, mask) = match &cond.negative {
            Some((ne, nm)) => (Tensor::cat(vec![ne.clone(), cond.prompt_embeds.clone()], 0), Tensor::cat(vec![nm.clone(), cond.prompt_mask.clone()], 0)),
            None => (cond.prompt_embeds.clone(), cond.prompt_mask.clone()),
        };
        let scale = cfg.transformer.timestep_scale;
        // Sprint: guidance × guidance_embeds_scale, computed in the embeddings' dtype (f32).
        let sprint_guidance = sprint.then(|| Tensor::<B, 1>::from_data(TensorData::new(vec![guidance * cfg.transformer.guidance_embeds_scale as f32; b], [b]), &device));
        let mut network_calls = 0;
        let transformer = self.transformer.as_ref().ok_or(T2iError::Invalid("no transformer".into()))?;
        // The caption's keys and values, once for every step.
        let caption = transformer.caption(text, mask);
        let mut network = |x: Tensor<B, 4>, t: f32| -> Option<Tensor<B, 4>> {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            network_calls += 1;
            if use_cfg {
                let t_model = if sprint { t } else { t * scale as f32 };
                let tt = Tensor::<B, 1>::from_data(TensorData::new(vec![t_model; 2 * b], [2 * b]), &device);
                let v = transformer.forward_with(Tensor::cat(vec![x.clone(), x], 0), tt, &caption, None);
                let uncond = v.clone().narrow(0, 0, b);
                let cond = v.narrow(0, b, b);
                Some(uncond.clone() + (cond - uncond).mul_scalar(guidance as f64))
            } else {
                let t_model = if sprint { t } else { t * scale as f32 };
                let tt = Tensor::<B, 1>::from_data(TensorData::new(vec![t_model; b], [b]), &device);
                Some(transformer.forward_with(x, tt, &caption, sprint_guidance.clone()))
            }
        };
        let mut step_noise = |k: usize| match &req.step_noise {
            Some(sn) => sn.clone().narrow(0, k, 1).reshape([b, c, lh, lw]),
            None => normal(&mut rng, [b, c, lh, lw], &device),
        };
        let mut on_step = |s: FlowStep<B>| on_event(T2iEvent::Step(s));
        let latent = flow::sample(&schedule, x, &mut network, &mut step_noise, &mut on_step).ok_or(T2iError::Cancelled)?;

        // The decoder's full-resolution activations are the run's memory peak: the batch at
        // once, image by image or tiled, whichever fits the budget (SANA's own users met the
        // out-of-memory here, after the whole denoising loop had run).
        let sf = self.config.vae.scaling_factor as f64;
        let vae_cfg = self.config.vae.clone();
        let ae = self.load_vae()?;
        let mut on_decode = |done: usize, total: usize| {
            on_event(T2iEvent::Decode { done, total });
            !cancel.load(Ordering::Relaxed)
        };
        let decoded = ae
            .decode_within(&vae_cfg, latent.clone().div_scalar(sf), req.memory_budget, &mut on_decode)
            .map_err(|e| T2iError::Invalid(e.to_string()))?
            .ok_or(T2iError::Cancelled)?;
        let mut images = Vec::with_capacity(b);
        for i in 0..b {
            let values = read_back(decoded.clone().narrow(0, i, 1)).map_err(|e| T2iError::ReadBack(e.to_string()))?;
            images.push(postprocess(&values, lh * f, lw * f, req.height, req.width)?);
        }
        Ok(T2iOutput { latent, images, conditioning: cond, generated_size: (lh * f, lw * f), steps, guidance, solver: schedule.solver, network_calls })
    }

    /// The latent `(h, w)` a request runs at: its noise's, else the bin's (or the asked size).
    pub fn latent_size(&self, req: &T2iRequest<B>) -> Result<(usize, usize), T2iError> {
        let f = self.config.vae_factor();
        if let Some(n) = req.noise.as_ref().or(req.init.as_ref().map(|(z, _)| z)) {
            let [_, _, h, w] = n.dims();
            return Ok((h, w));
        }
        let (w, h) = (req.width, req.height);
        if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE || w % f != 0 || h % f != 0 {
            return Err(T2iError::Invalid(format!("size {w}×{h}: width and height must be multiples of {f} between {f} and {MAX_SIDE}")));
        }
        let table = match self.config.kind {
            PipelineKind::Sprint => Some(1024),
            PipelineKind::Sana => bin_table(self.config.transformer.sample_size),
        };
        let (bh, bw) = match (req.binning, table) {
            // The bins are in pixels of a factor-32 autoencoder.
            (true, Some(t)) if f == 32 => closest_bin(t, h, w).unwrap_or((h, w)),
            _ => (h, w),
        };
        Ok((bh / f, bw / f))
    }

    /// Decoder output in about [−1, 1] for a sampled latent (divided by the scaling factor first).
    pub fn decode(&mut self, latent: Tensor<B, 4>) -> Result<Tensor<B, 4>, ModelError> {
        let sf = self.config.vae.scaling_factor as f64;
        Ok(self.load_vae()?.decode(latent.div_scalar(sf)))
    }
}

fn load_text_encoder<B: Backend>(files: &PipelineFiles, cfg: &Gemma2Config, device: &B::Device, precision: Precision) -> Result<TextEncoder<B>, ModelError> {
    let tokenizer = SanaTokenizer::from_file(&files.tokenizer).map_err(|e| ModelError::Other(e.to_string()))?;
    let model = load_gemma(files, cfg, device)?.with_precision(precision);
    Ok(TextEncoder { tokenizer, model })
}

fn load_gemma<B: Backend>(files: &PipelineFiles, cfg: &Gemma2Config, device: &B::Device) -> Result<Gemma2<B>, ModelError> {
    let ckpt = files.text_encoder.weights.open()?;
    let prefix = gemma_prefix(&ckpt);
    Ok(load_strict(&ckpt, prefix, Layout::Original, device, "Gemma-2 text encoder", |w| Gemma2::load(w, cfg))?)
}

/// The SANA repos store Gemma's keys without the `model.` prefix of a causal-LM export; both
/// spellings load.
fn gemma_prefix(ckpt: &Checkpoint) -> &'static str {
    if ckpt.keys().any(|k| k.starts_with("model.")) {
        "model."
    } else {
        ""
    }
}

/// A strict key / shape check of one component's weights, reading none of them.
fn check<B: Backend>(files: &WeightFiles, prefix: &str, model: &str, device: &B::Device, build: impl Fn(&mut CheckpointLoader<'_, B>)) -> Result<(), ModelError> {
    let ckpt = files.open()?;
    // DC-AE weights come in two namings; the others have one.
    let layout = ckpt.layout(prefix).unwrap_or(Layout::Original);
    let mut dry = CheckpointLoader::check_only(&ckpt, prefix, layout, device);
    build(&mut dry);
    Ok(dry.finish(model)?)
}

fn normal<B: Backend>(rng: &mut StdRng, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Decoded `[1, 3, gh, gw]` values → the asked `height × width` picture as diffusers makes it:
/// bilinear resize (no antialias) by the larger of the two ratios, centre crop, then
/// `round(255 · clamp(x/2 + 0.5, 0, 1))`.
pub fn postprocess(values: &[f32], gh: usize, gw: usize, height: usize, width: usize) -> Result<RgbImage, T2iError> {
    if values.len() != 3 * gh * gw {
        return Err(T2iError::Invalid(format!("decoded image has {} values, expected 3×{gh}×{gw}", values.len())));
    }
    let (values, h, w) = if (gh, gw) != (height, width) && height > 0 && width > 0 {
        let r = (height as f64 / gh as f64).max(width as f64 / gw as f64);
        let (rh, rw) = ((gh as f64 * r) as usize, (gw as f64 * r) as usize);
        let resized = bilinear(values, gh, gw, rh.max(height), rw.max(width));
        let (rh, rw) = (rh.max(height), rw.max(width));
        let (y0, x0) = ((rh - height) / 2, (rw - width) / 2);
        let mut out = Vec::with_capacity(3 * height * width);
        for ch in 0..3 {
            for y in 0..height {
                let row = &resized[ch * rh * rw + (y0 + y) * rw + x0..][..width];
                out.extend_from_slice(row);
            }
        }
        (out, height, width)
    } else {
        (values.to_vec(), gh, gw)
    };
    let plane = h * w;
    let q = |v: f32| ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        image::Rgb([q(values[i]), q(values[plane + i]), q(values[2 * plane + i])])
    }))
}

/// PyTorch's `interpolate(mode="bilinear", align_corners=False, antialias=False)` on CHW planes.
fn bilinear(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let coord = |o: usize, scale: f64, n: usize| -> (usize, usize, f32) {
        let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, (s - i0 as f64) as f32)
    };
    let (sy, sx) = (h as f64 / oh as f64, w as f64 / ow as f64);
    let mut out = vec![0.0f32; 3 * oh * ow];
    for ch in 0..3 {
        let p = &src[ch * h * w..(ch + 1) * h * w];
        for y in 0..oh {
            let (y0, y1, fy) = coord(y, sy, h);
            for x in 0..ow {
                let (x0, x1, fx) = coord(x, sx, w);
                let top = p[y0 * w + x0] * (1.0 - fx) + p[y0 * w + x1] * fx;
                let bottom = p[y1 * w + x0] * (1.0 - fx) + p[y1 * w + x1] * fx;
                out[ch * oh * ow + y * ow + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    out
}
