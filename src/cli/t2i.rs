//! `dcae generate --prompt …`: SANA / SANA-Sprint text-to-image, and the parity hooks the
//! references need (`--noise`, `--step-noise`, `--latent-out`, `--text-embeds-out`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use burn::tensor::{backend::Backend, Int, Tensor};

use super::generate::GenerateArgs;
use super::write_tensor_f32;
use crate::engine::backend::{run_on, BackendInfo, BackendTask};
use crate::model::host::{read_back, upload};
use crate::imaging::{self, PromptParams, PARAMETERS_KEY};
use crate::model::sana::pipeline::{SanaPipeline, T2iEvent, T2iRequest};
use crate::weights::hub::{self, HubOptions};
use crate::model::sana::layout::{self as pipe, PipelineFiles};

/// The owner of the published SANA repos: a bare `Sana_…` / `SANA…` name means them.
pub const SANA_OWNER: &str = "Efficient-Large-Model";

/// The repo id for a model argument that names a SANA repo without its owner.
pub fn sana_repo_id(arg: &str) -> String {
    let a = arg.trim();
    if !a.contains('/') && a.to_ascii_lowercase().starts_with("sana") {
        format!("{SANA_OWNER}/{a}")
    } else {
        a.to_string()
    }
}

/// A SANA pipeline's files: a local folder, or a repo fetched into the Hugging Face cache
/// (every component file, with a progress line per file on stderr).
pub fn pipeline_files(arg: &str, variant: Option<&str>) -> anyhow::Result<PipelineFiles> {
    let path = Path::new(arg);
    if path.is_dir() {
        if !pipe::is_pipeline_dir(path) {
            bail!(
                "{} is not a SANA pipeline folder (no model_index.json): --prompt needs a text-to-image model such as {SANA_OWNER}/Sana_600M_512px_diffusers; class-conditional models take --class",
                path.display()
            );
        }
        return Ok(pipe::resolve_pipeline_dir(path, variant)?);
    }
    let opts = HubOptions::from_env();
    let cancel = AtomicBool::new(false);
    let mut last = Instant::now();
    let mut progress = |p: hub::DownloadProgress| {
        if last.elapsed().as_millis() > 200 || p.bytes_done == p.bytes_total {
            last = Instant::now();
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            eprint!("\rdownloading {}: {:.1} / {:.1} MiB   ", p.file, mib(p.bytes_done), mib(p.bytes_total));
            if p.bytes_done == p.bytes_total {
                eprintln!();
            }
        }
    };
    Ok(pipe::fetch_pipeline(&sana_repo_id(arg), &opts, variant, &mut progress, &cancel)?)
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if !args.classes.is_empty() {
        bail!("give either --prompt (text-to-image) or --class (class-conditional), not both");
    }
    let files = pipeline_files(&args.model, args.variant.as_deref())?;
    let backend = args.backend;
    run_on(backend, T2iTask { args, files })?
}

struct T2iTask {
    args: GenerateArgs,
    files: PipelineFiles,
}

impl BackendTask for T2iTask {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> anyhow::Result<()> {
        let Self { args, files } = self;
        super::report_backend(&info);
        let name = model_name(&args.model);
        let t0 = Instant::now();
        // Components load when first needed, and the text encoder is released before the
        // transformer loads: a one-shot run's peak is the larger part, not the sum.
        let mut pipeline = SanaPipeline::<B>::open(&files, &name, &device)?;
        pipeline.low_memory = true;
        pipeline.precision = args.precision;
        if let Some(on_cpu) = args.text_encoder_device.on_cpu() {
            pipeline.set_text_on_cpu(on_cpu);
        }
        let ae_on_cpu = args.vae_device.on_cpu().unwrap_or_else(|| {
            let c = &pipeline.config;
            let denoiser = pipeline.transformer_precision().bytes() * c.transformer.num_params() as u64;
            crate::engine::memory::autoencoder_on_cpu::<B>(&device, denoiser, pipeline.vae_precision().bytes() * c.vae.approx_params())
        });
        pipeline.set_vae_on_cpu(ae_on_cpu);
        let cpu = info.kind == "cpu";
        eprintln!(
            "placement: text encoder on {} · transformer on {} · autoencoder on {}",
            super::generate::where_(pipeline.text_on_cpu() || cpu),
            super::generate::where_(cpu),
            super::generate::where_(pipeline.vae_on_cpu() || cpu)
        );
        if args.precision == crate::model::precision::PrecisionChoice::F16 {
            args.precision.resolve::<B>(&device).map_err(anyhow::Error::msg)?;
        }
        let (tp, dp, vp) = (pipeline.text_precision(), pipeline.transformer_precision(), pipeline.vae_precision());
        if [tp, dp, vp].iter().any(|p| *p != crate::model::precision::Precision::F32) {
            eprintln!("precision: text encoder {} · transformer {} · autoencoder {} (norms, softmax and attention in f32)", tp.name(), dp.name(), vp.name());
        }
        eprintln!("checked {name} ({:?}) in {:.1}s", pipeline.config.kind, t0.elapsed().as_secs_f64());

        let size = |v: Option<usize>| v.unwrap_or(pipeline.config.transformer.sample_size * pipeline.config.vae_factor());
        let mut req = T2iRequest::<B>::new(args.prompts.clone(), size(args.width), size(args.height));
        req.negative_prompt = args.negative_prompt.clone().unwrap_or_default();
        if pipeline.vae_on_cpu() {
            req.memory_budget = crate::engine::memory::autoencoder_budget_placed::<B>(true, &device);
            let bytes = req.memory_budget.map_or(0, |b| b.bytes);
            eprintln!("decode budget: {:.2} GiB (on the CPU)", bytes as f64 / (1u64 << 30) as f64);
        } else {
            let budget = super::tiling::budget::<B>(&info, &device)?;
            let cap = budget.max_tensor.map(|c| format!(", largest tensor {}", crate::model::limits::human(c))).unwrap_or_default();
            eprintln!("decode budget: {:.2} GiB ({}{cap})", budget.bytes as f64 / (1u64 << 30) as f64, budget.source);
            req.memory_budget = Some(crate::model::tiling::Budget { bytes: budget.bytes, weight_copies: budget.weight_copies, max_tensor: budget.max_tensor });
        }
        req.steps = args.steps;
        req.guidance = args.cfg;
        req.solver = match args.sampler.as_deref() {
            None => None,
            Some(s) => Some(<crate::model::sana::flow::FlowSolver as clap::ValueEnum>::from_str(s, true).map_err(|_| anyhow!("--sampler {s}: a SANA pipeline samples with dpm, euler or scm"))?),
        };
        req.flow_shift = args.flow_shift;
        req.instruction = !args.no_instruction;
        req.binning = !args.no_binning;
        req.seed = args.seed;
        req.max_timestep = args.max_timestep;
        req.intermediate_timestep = args.intermediate_timestep;
        if let Some(path) = &args.noise {
            let t = crate::weights::tensor_file::read_nchw(path, "noise")?;
            req.noise = Some(upload(t.data, t.shape, &device));
        }
        if let Some(path) = &args.step_noise {
            let (data, shape) = crate::weights::tensor_file::read_f32(path, "noise")?;
            let shape: [usize; 5] = shape.clone().try_into().map_err(|_| anyhow!("{}: tensor `noise` has shape {shape:?}; --step-noise needs [steps, B, C, h, w]", path.display()))?;
            req.step_noise = Some(upload(data, shape, &device));
        }

        let cancel = AtomicBool::new(false);
        let t_start = Instant::now();
        let mut on_event = |e: T2iEvent<B>| match e {
            T2iEvent::LoadingTextEncoder => eprintln!("loading the text encoder"),
            T2iEvent::TextEncoder { prompt, prompts, done, total } => status(&format!("text encoder: prompt {}/{prompts}, layer {done}/{total}", prompt + 1)),
            T2iEvent::Step(s) => status(&format!("step {}/{}  {:.1}s", s.step, s.total, t_start.elapsed().as_secs_f64())),
            T2iEvent::Decode { done, total } => status(&format!("decoding {done}/{total}")),
        };
        let out = pipeline.generate(&req, &mut on_event, &cancel)?;
        eprintln!();
        if let n @ 1.. = pipeline.f32_reruns() {
            eprintln!("note: {n} 16-bit call(s) gave a NaN or an infinity and were run again in f32; --precision f32 avoids the retries");
        }
        for (i, d) in out.conditioning.dropped_tokens.iter().enumerate().filter(|(_, d)| **d > 0) {
            eprintln!("warning: prompt {} is longer than the text encoder's 300 tokens: its last {d} token(s) were dropped", i + 1);
        }
        eprintln!(
            "sampled {} image(s) at {}×{} in {:.1}s ({} steps, {} network passes)",
            out.images.len(),
            out.generated_size.1,
            out.generated_size.0,
            t_start.elapsed().as_secs_f64(),
            out.steps,
            out.network_calls
        );

        if let Some(path) = &args.latent_out {
            super::prepare_output(path)?;
            write_tensor_f32(path, "latent", out.latent.clone())?;
            eprintln!("wrote {}", path.display());
        }
        if let Some(path) = &args.text_embeds_out {
            write_text_embeds(path, &out.conditioning)?;
            eprintln!("wrote {}", path.display());
        }
        let params = PromptParams {
            prompts: args.prompts.clone(),
            negative_prompt: req.negative_prompt.clone(),
            steps: out.steps,
            sampler: out.solver.label().to_string(),
            guidance: out.guidance,
            seed: args.seed,
            width: req.width,
            height: req.height,
            model: name,
            instruction: req.instruction,
            img2img: None,
        };
        let text = params.to_parameters_text();
        let noise_note = args.noise.as_ref().map(|p| p.display().to_string());
        let mut entries = vec![(PARAMETERS_KEY, text.as_str())];
        if let Some(n) = &noise_note {
            entries.push(("noise", n.as_str()));
        }
        super::prepare_output(&args.out)?;
        imaging::save_png_with_text(&imaging::grid(&out.images, 0), &args.out, &entries).with_context(|| format!("writing {}", args.out.display()))?;
        eprintln!("wrote {}", args.out.display());
        Ok(())
    }
}

/// The repo id or folder name, for metadata.
fn model_name(arg: &str) -> String {
    let p = Path::new(arg);
    if p.is_dir() {
        p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| arg.to_string())
    } else {
        sana_repo_id(arg)
    }
}

fn status(s: &str) {
    let mut err = std::io::stderr();
    let _ = write!(err, "\r{s:<60}");
    let _ = err.flush();
}

/// `prompt_embeds`, `prompt_attention_mask` and, with guidance, the negative pair, as
/// `encode_prompt` returns them (masks int64).
fn write_text_embeds<B: Backend>(path: &PathBuf, c: &crate::model::sana::pipeline::Conditioning<B>) -> anyhow::Result<()> {
    super::prepare_output(path)?;
    let f = |t: Tensor<B, 3>| -> anyhow::Result<(Vec<f32>, Vec<usize>)> {
        let s = t.dims().to_vec();
        Ok((read_back(t)?, s))
    };
    let m = |t: Tensor<B, 2, Int>| -> anyhow::Result<(Vec<i64>, Vec<usize>)> {
        let s = t.dims().to_vec();
        let v = t.into_data().convert::<i64>().to_vec::<i64>().map_err(|e| anyhow!("reading a mask back: {e:?}"))?;
        Ok((v, s))
    };
    let (pe, pes) = f(c.prompt_embeds.clone())?;
    let (pm, pms) = m(c.prompt_mask.clone())?;
    let mut floats = vec![("prompt_embeds", pe, pes)];
    let mut ints = vec![("prompt_attention_mask", pm, pms)];
    if let Some((ne, nm)) = &c.negative {
        let (v, s) = f(ne.clone())?;
        floats.push(("negative_prompt_embeds", v, s));
        let (v, s) = m(nm.clone())?;
        ints.push(("negative_prompt_attention_mask", v, s));
    }
    let floats: Vec<(&str, &[f32], &[usize])> = floats.iter().map(|(n, v, s)| (*n, v.as_slice(), s.as_slice())).collect();
    let ints: Vec<(&str, &[i64], &[usize])> = ints.iter().map(|(n, v, s)| (*n, v.as_slice(), s.as_slice())).collect();
    crate::weights::tensor_file::write_f32_i64(path, &floats, &ints)?;
    Ok(())
}
