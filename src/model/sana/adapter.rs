//! SANA's engine adapter: a SANA / Sprint pipeline as a
//! [`GenerationModel`], so the engine runs it on its one generate path like the class models
//! (progress, x0 previews, a full decode every k steps, cancel in every phase).

use std::path::Path;
use std::time::Instant;
use std::sync::atomic::AtomicBool;

use burn::tensor::{backend::Backend, Tensor};
use image::RgbImage;

use crate::engine::worker::api::{Controls, GenerateFailure, GeneratorInfo, GuidanceControl, GuidancePreset, Input, LoadFailure, SizeControl};
use crate::engine::worker::generation::{wrong_conditioning, GenerationModel, RunEvent, RunOutput};
use crate::engine::worker::GenerateJob;
use crate::model::sana::pipeline::{SanaPipeline, T2iError, T2iEvent, T2iRequest};
use crate::model::precision::Precision;
use crate::model::placed::PlacedAe;
use crate::model::DcaeConfig;
use crate::model::sana::flow::FlowSolver;
use crate::engine::memory::ModelFootprint;
use crate::model::sana::layout::{resolve_pipeline_dir, PipelineKind, WeightFiles};

/// The bytes a checkpoint's tensors take as f32 (what they are in memory today), from its
/// header alone.
fn f32_bytes(w: &WeightFiles) -> Option<u64> {
    held_bytes(w, |_| false)
}

/// Bytes of a component's weights in memory: widened to f32, or with 16-bit tensors kept as
/// stored (`keep_16bit`, see [`crate::weights::half`]).
fn held_bytes(w: &WeightFiles, keep_16bit: impl Fn(burn::tensor::DType) -> bool) -> Option<u64> {
    let ckpt = w.open().ok()?;
    let keys: Vec<String> = ckpt.keys().map(str::to_string).collect();
    let size = |k: &str| match ckpt.dtype(k).and_then(|d| crate::weights::half::dtype_named(&d)) {
        Some(d) if keep_16bit(d) => 2,
        _ => 4,
    };
    Some(keys.iter().filter_map(|k| ckpt.shape(k).map(|s| size(k) * s.iter().product::<usize>() as u64)).sum())
}

/// What the user asked for, beside the settings every generation has (steps, guidance, seed).
#[derive(Debug, Clone, PartialEq)]
pub struct TextRequest {
    pub prompt: String,
    pub negative_prompt: String,
    /// Images of the same prompt, one seed each run (the batch shares the noise generator).
    pub batch: usize,
    pub width: usize,
    pub height: usize,
    /// Prepend SANA's complex human instruction (the pipelines' default).
    pub instruction: bool,
    /// Generate at the model's closest resolution bin and resize back (diffusers' default).
    pub binning: bool,
}

pub struct TextOutput {
    pub images: Vec<RgbImage>,
    pub steps: usize,
    pub network_calls: usize,
    /// Prompt tokens beyond the model's limit, dropped (0 when it fit).
    pub dropped_tokens: usize,
    pub sampler: String,
    pub generated_size: (usize, usize),
}

/// Models whose weights (as held in memory) come to more than this share of the memory available are run
/// with the text encoder released after encoding (prompt embeddings stay cached, so a new seed
/// of the same prompt still costs no encoding).
const LOW_MEMORY_SHARE: f64 = 0.6;

pub struct TextGenerator<B: Backend> {
    pipeline: SanaPipeline<B>,
    info: GeneratorInfo,
}

impl<B: Backend> TextGenerator<B> {
    /// Opens the pipeline folder `root`: every config read and every component's keys and
    /// shapes checked; weights load when the first generation needs them.
    /// `text_encoder` and `autoencoder` place those components (`Auto`: Gemma-2 on the CPU where
    /// the GPU backend has no bf16, the autoencoder as [`crate::engine::memory::autoencoder_on_cpu`]).
    pub fn load(name: &str, root: &Path, device: &B::Device, text_encoder: crate::engine::backend::Placement, autoencoder: crate::engine::backend::Placement) -> Result<Self, LoadFailure> {
        let files = resolve_pipeline_dir(root, None)?;
        let mut pipeline = SanaPipeline::<B>::open(&files, name, device)?;
        if let Some(on_cpu) = text_encoder.on_cpu() {
            pipeline.set_text_on_cpu(on_cpu);
        }
        let ae_on_cpu = match autoencoder.on_cpu() {
            Some(on_cpu) => on_cpu,
            None => {
                let c = &pipeline.config;
                let denoiser = pipeline.transformer_precision().bytes() * c.transformer.num_params() as u64;
                crate::engine::memory::autoencoder_on_cpu::<B>(device, denoiser, pipeline.vae_precision().bytes() * c.vae.approx_params())
            }
        };
        pipeline.set_vae_on_cpu(ae_on_cpu);
        let c = &pipeline.config;
        let sprint = c.kind == PipelineKind::Sprint;
        // The published text encoders are bf16, and stay so on the CPU and on a GPU with bf16
        // (half the f32 size); computing in bf16 (CUDA) halves an f32 checkpoint too.
        let text_bytes = match pipeline.text_precision() {
            Precision::Bf16 => c.text_encoder.num_params().map(|n| 2 * n as u64),
            _ => held_bytes(&files.text_encoder.weights, |d| crate::weights::half::keeps_16bit::<B>(device, d)),
        }
        .unwrap_or(4 * c.text_encoder.num_params().unwrap_or(0) as u64);
        // The transformer and the autoencoder in the precision they will compute in.
        let denoiser_bytes = pipeline.transformer_precision().bytes() * c.transformer.num_params() as u64;
        let weights = denoiser_bytes + pipeline.vae_precision().bytes() * c.vae.approx_params() + text_bytes;
        pipeline.low_memory = crate::engine::memory::mem_available().is_some_and(|avail| weights as f64 > LOW_MEMORY_SHARE * avail as f64);
        let sample = c.transformer.sample_size;
        let side = sample * c.vae_factor();
        let default_guidance = c.default_guidance();
        let preset = |value: f32, label: &str, hint: &str| GuidancePreset { value, label: label.into(), hint: hint.into() };
        let controls = Controls {
            input: Input::Prompt { negative: !sprint, instruction: true },
            size: SizeControl::Free { presets: aspect_presets(sample, c.vae_factor()), max: MAX_SIDE },
            guidance: if sprint {
                GuidanceControl {
                    presets: vec![preset(default_guidance, "default", "Sprint's own setting")],
                    hint: "Sprint takes guidance as an input of its network (one call per step)".into(),
                    doubles_calls: false,
                    batched: false,
                }
            } else {
                GuidanceControl {
                    presets: vec![
                        preset(default_guidance, "default", "SANA's own setting"),
                        preset(1.0, "off", "No guidance: one network call per step instead of two"),
                    ],
                    hint: format!("Classifier-free guidance; SANA's default is {default_guidance}. 1.0 turns it off (one network call per step instead of two)"),
                    doubles_calls: true,
                    batched: true,
                }
            },
            summary: if sprint { format!("text to image, 1–4 steps · trained at {side} px") } else { format!("text to image · trained at {side} px") },
        };
        // Sprint's consistency sampler is its only one; SANA's scheduler first, then the other.
        let solvers: Vec<FlowSolver> = match c.scheduler.solver {
            FlowSolver::Scm => vec![FlowSolver::Scm],
            own => std::iter::once(own).chain([FlowSolver::Dpm, FlowSolver::Euler].into_iter().filter(|s| *s != own)).collect(),
        };
        let info = GeneratorInfo {
            name: name.to_string(),
            controls,
            num_classes: 0,
            latent_channels: c.transformer.in_channels,
            latent_size: sample,
            factor: c.vae_factor(),
            default_steps: c.default_steps(),
            default_guidance: c.default_guidance(),
            scaling_factor: c.vae.scaling_factor,
            sampler: c.scheduler.solver.label().to_string(),
            samplers: solvers.iter().map(|s| (s.name().to_string(), s.label().to_string())).collect(),
            max_steps: if sprint { 4 } else { 200 },
            steps_hint: if sprint { "SANA-Sprint samples in 1 to 4 steps; 2 is its default" } else { "Solver steps; SANA's default is 20" }.into(),
            fid_guidance: c.default_guidance(),
            footprint: ModelFootprint {
                denoiser: denoiser_bytes,
                text_encoder: text_bytes,
                autoencoder: match pipeline.vae_precision() {
                    Precision::F32 => f32_bytes(&files.vae.weights).unwrap_or(4 * c.vae.approx_params()),
                    p => p.bytes() * c.vae.approx_params(),
                },
                // Cross-attention scores over the 300 text tokens per head, and the GLU FFN's
                // 2 × 2.5·D channels with its depthwise output and gate, per token.
                per_token: 4.0 * ((c.transformer.hidden() / 32).max(1) as f64 * 300.0 + 12.0 * c.transformer.hidden() as f64),
                decode_per_pixel: crate::model::tiling::activation_bytes_per_pixel(&c.vae).1,
                low_memory: pipeline.low_memory,
                text_on_cpu: pipeline.text_on_cpu(),
                ae_on_cpu: pipeline.vae_on_cpu(),
            },
        };
        Ok(Self { pipeline, info })
    }

    pub fn info(&self) -> &GeneratorInfo {
        &self.info
    }

    /// Whether the text encoder is released after each encoding (memory is tight).
    pub fn low_memory(&self) -> bool {
        self.pipeline.low_memory
    }

    /// The pipeline's DC-AE (loaded now if need be) and its config, for the preview projection.
    pub fn autoencoder(&mut self) -> Result<(PlacedAe<B>, DcaeConfig), String> {
        let cfg = self.pipeline.config.vae.clone();
        let ae = self.pipeline.load_vae().map_err(|e| e.to_string())?.clone();
        Ok((ae, cfg))
    }

    pub fn generate(
        &mut self,
        req: &TextRequest,
        solver: Option<FlowSolver>,
        cfg_scale: f32,
        steps: usize,
        seed: u64,
        init: Option<(&RgbImage, f32)>,
        on_event: &mut dyn FnMut(RunEvent<B>),
        cancel: &AtomicBool,
    ) -> Result<TextOutput, GenerateFailure> {
        let b = req.batch.max(1);
        let mut r = T2iRequest::<B>::new(vec![req.prompt.clone(); b], req.width, req.height);
        if let Some((img, strength)) = init {
            on_event(RunEvent::Phase { label: "Encoding the source image…".into(), done: 0, total: 1 });
            let f = self.info.factor.max(1);
            if req.width % f != 0 || req.height % f != 0 || req.width == 0 || req.height == 0 {
                return Err(GenerateFailure::Failed(format!("size {}×{}: width and height must be multiples of {f}", req.width, req.height)));
            }
            let sf = self.info.scaling_factor as f64;
            let device = self.pipeline.device().clone();
            let x = crate::engine::worker::image_tensor::<B>(img, req.width, req.height, &device).map_err(GenerateFailure::Failed)?;
            let vae_cfg = self.pipeline.config.vae.clone();
            let ae = self.pipeline.load_vae().map_err(|e| GenerateFailure::Failed(e.to_string()))?;
            let budget = crate::engine::memory::autoencoder_budget_for(ae, &device);
            let z = match ae.encode_within(&vae_cfg, x, budget, &mut |_, _| !cancel.load(std::sync::atomic::Ordering::Relaxed)) {
                Ok(Some(z)) => z.mul_scalar(sf),
                Ok(None) => return Err(GenerateFailure::Cancelled),
                Err(e) => return Err(GenerateFailure::Failed(e.to_string())),
            };
            // The source sets the size: no binning, the image comes out as asked.
            r.init = Some((Tensor::cat(vec![z; b], 0), strength));
        }
        r.negative_prompt = req.negative_prompt.clone();
        r.memory_budget = crate::engine::memory::autoencoder_budget_placed::<B>(self.pipeline.vae_on_cpu(), self.pipeline.device());
        r.steps = Some(steps);
        r.guidance = Some(cfg_scale);
        r.solver = solver;
        r.instruction = req.instruction;
        r.binning = req.binning && r.init.is_none();
        r.seed = seed;
        let mut on = |e: T2iEvent<B>| match e {
            T2iEvent::LoadingTextEncoder => on_event(RunEvent::Phase { label: "Loading the text encoder (Gemma-2)…".into(), done: 0, total: 1 }),
            T2iEvent::TextEncoder { prompt, prompts, done, total } => {
                let which = if prompts > 1 { format!(" {}/{prompts}", prompt + 1) } else { String::new() };
                on_event(RunEvent::Phase { label: format!("Encoding the prompt{which}: layer {done}/{total}"), done, total })
            }
            T2iEvent::Step(s) => on_event(RunEvent::Step { step: s.step, total: s.total, x0: s.x0 }),
            T2iEvent::Decode { done, total } if done < total => {
                on_event(RunEvent::Phase { label: format!("Decoding image {}/{total}…", done + 1), done, total })
            }
            T2iEvent::Decode { .. } => {}
        };
        match self.pipeline.generate(&r, &mut on, cancel) {
            Ok(out) => Ok(TextOutput {
                dropped_tokens: out.conditioning.dropped_tokens.iter().copied().max().unwrap_or(0),
                images: out.images,
                steps: out.steps,
                network_calls: out.network_calls,
                sampler: out.solver.label().to_string(),
                generated_size: out.generated_size,
            }),
            Err(T2iError::Cancelled) => Err(GenerateFailure::Cancelled),
            Err(e) => Err(GenerateFailure::Failed(e.to_string())),
        }
    }
}

/// The largest side a text model is asked for, in pixels (the bins go to 4096 for SANA 4K).
pub const MAX_SIDE: usize = 4096;

/// The size presets of a model trained at `sample_size` latents: its resolution bins (the
/// aspect ratios it was trained on), common ones first.
pub fn aspect_presets(sample_size: usize, factor: usize) -> Vec<(usize, usize)> {
    let side = sample_size * factor;
    let ratios: [(usize, usize); 7] = [(1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16)];
    let mut out = Vec::new();
    for (rw, rh) in ratios {
        let (w, h) = if factor == 32 {
            // The published models: the bin diffusers would pick for this ratio.
            match crate::model::sana::pipeline::bin_table(sample_size).and_then(|t| crate::model::sana::pipeline::closest_bin(t, side * rh, side * rw)) {
                Some((h, w)) => (w, h),
                None => (side, side),
            }
        } else {
            // Tiny test models: the same ratio at about the training area, on the factor grid.
            let area = (side * side) as f64;
            let w = ((area * rw as f64 / rh as f64).sqrt() / factor as f64).round().max(1.0) as usize * factor;
            let h = ((area * rh as f64 / rw as f64).sqrt() / factor as f64).round().max(1.0) as usize * factor;
            (w, h)
        };
        if !out.contains(&(w, h)) {
            out.push((w, h));
        }
    }
    out
}

impl<B: Backend> GenerationModel<B> for TextGenerator<B> {
    fn info(&self) -> &GeneratorInfo {
        TextGenerator::info(self)
    }

    fn autoencoder(&mut self) -> Result<(PlacedAe<B>, DcaeConfig), String> {
        TextGenerator::autoencoder(self)
    }

    fn run(&mut self, job: &GenerateJob, on_event: &mut dyn FnMut(RunEvent<B>)) -> Result<RunOutput, GenerateFailure> {
        let crate::engine::worker::Conditioning::Prompt(req) = &job.conditioning else { return Err(wrong_conditioning("a prompt")) };
        let mut decode_started: Option<Instant> = None;
        let mut on = |e: RunEvent<B>| {
            if let RunEvent::Phase { label, .. } = &e {
                if label.starts_with("Decoding") && decode_started.is_none() {
                    decode_started = Some(Instant::now());
                }
            }
            on_event(e)
        };
        let init = job.init.as_ref().map(|i| (i.image.as_ref(), i.strength));
        let solver = match job.sampler.as_deref() {
            None => None,
            Some(name) => match FlowSolver::from_name(name).filter(|s| self.info.samplers.iter().any(|(n, _)| n == s.name())) {
                Some(s) => Some(s),
                None => return Err(GenerateFailure::Failed(format!("{} has no sampler {name:?}; it offers {}", self.info.name, self.info.samplers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")))),
            },
        };
        let out = self.generate(req, solver, job.cfg_scale, job.steps, job.seed, init, &mut on, &job.cancel)?;
        let mut warnings = Vec::new();
        if out.dropped_tokens > 0 {
            warnings.push(format!(
                "the prompt is longer than the model reads: its last {} tokens were dropped (shorten it, or turn the instruction off)",
                out.dropped_tokens
            ));
        }
        Ok(RunOutput {
            images: out.images,
            nfe: out.steps,
            network_calls: out.network_calls,
            sampler: out.sampler,
            decode_secs: decode_started.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            decode_batch: None,
            warnings,
        })
    }
}
