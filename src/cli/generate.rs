//! `dcae generate`: class-conditional image generation with a DC-AE diffusion model, and the
//! `bench --task generate` measurement.
//!
//! `--model` goes through the CLI's hub resolver ([`super::model_files`]: a local folder, or a
//! repo id fetched into the Hugging Face cache), `--class` through [`crate::labels::lookup`],
//! and the output through the shared imaging code (quantisation, grid, `parameters` chunk), so
//! CLI and app write the same PNGs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use serde::Serialize;

use super::timing::Timings;
use super::write_tensor_f32;
use crate::engine::backend::{run_on, BackendChoice, BackendInfo, BackendTask};
use crate::model::host::{read_back, upload};
use crate::imaging::{self, GenerationParams, PARAMETERS_KEY};
use crate::model::diffusion::{build_denoiser, seeded_noise, DiffusionConfig, DiffusionModel, GenerateRequest, StepUpdate};
use crate::model::load::read_json;
use crate::weights::{Checkpoint, RandomWeights};

/// `dcae generate`
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GenerateArgs {
    /// A local folder or a Hugging Face repo id: a DC-AE diffusion model (config.json +
    /// model.safetensors, e.g. mit-han-lab/dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k) for
    /// --class, or a SANA diffusers pipeline (model_index.json + component folders, e.g.
    /// Efficient-Large-Model/Sana_600M_512px_diffusers; a bare Sana_… name means that owner) for
    /// --prompt.
    #[arg(long, short)]
    pub model: String,
    /// Class to draw: an ImageNet id (0–999) or name ("goldfish", "Arctic fox"), or
    /// "unconditional". Repeat for several images.
    #[arg(long = "class", value_name = "CLASS", required_unless_present = "prompts")]
    pub classes: Vec<String>,
    /// Text prompt (SANA models). Repeat for several images.
    #[arg(long = "prompt", value_name = "TEXT")]
    pub prompts: Vec<String>,
    /// Negative prompt for classifier-free guidance (SANA; default empty).
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt: Option<String>,
    /// Image size in pixels, multiples of 32 [default: the model's training size].
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// Guidance scale: classifier-free guidance (1 = none, one network pass per step), or
    /// Sprint's guidance input [default: the model's: 6 for the UViTs, 1.3 DiT, 1.2 USiT-H,
    /// 1.15 USiT-2B, 4.5 for SANA].
    #[arg(long)]
    pub cfg: Option<f32>,
    /// Steps [default: the model's: 30 UViT (network evaluations), 250 DiT (kept ADM steps),
    /// 250 USiT (ODE grid points; dopri5 picks its own steps), 20 SANA, 2 Sprint].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sampler [default: the model's]: dpm, euler or scm for SANA (dpm; scm for Sprint); adm
    /// or ddim for DiT (adm); dopri5 or heun2 for USiT (dopri5); dpm_solver for UViT.
    #[arg(long)]
    pub sampler: Option<String>,
    /// Flow shift of the dpm / euler samplers [default: the model's, 3.0].
    #[arg(long)]
    pub flow_shift: Option<f64>,
    /// Do not prepend SANA's complex human instruction to the prompt.
    #[arg(long)]
    pub no_instruction: bool,
    /// Generate at exactly --width × --height instead of the closest resolution bin.
    #[arg(long)]
    pub no_binning: bool,
    /// Per-step noise: tensor `noise` [steps, B, C, h, w] in a safetensors file (Sprint's, or
    /// DiT's ADM draws, one per kept step).
    #[arg(long, value_name = "FILE")]
    pub step_noise: Option<PathBuf>,
    /// Sprint's first TrigFlow angle (the pipeline's max_timesteps, 1.5708).
    #[arg(long)]
    pub max_timestep: Option<f64>,
    /// Sprint's intermediate angle for 2 steps (intermediate_timesteps, 1.3).
    #[arg(long)]
    pub intermediate_timestep: Option<f64>,
    /// Write prompt_embeds / prompt_attention_mask (and the negative pair with guidance) to
    /// this safetensors file, as diffusers' encode_prompt returns them.
    #[arg(long, value_name = "FILE")]
    pub text_embeds_out: Option<PathBuf>,
    /// Weight-file variant of the SANA components (fp16, bf16) where the repo has one.
    #[arg(long)]
    pub variant: Option<String>,
    /// Seed of the initial noise (ignored with --noise).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Initial noise: a safetensors file with an f32 tensor `noise` [B, C, H, W].
    #[arg(long, value_name = "FILE")]
    pub noise: Option<PathBuf>,
    /// Also write the sampled latent (before dividing by the scaling factor) as tensor
    /// `latent` [B, C, H, W] to this safetensors file.
    #[arg(long, value_name = "FILE")]
    pub latent_out: Option<PathBuf>,
    /// Output PNG: the images tiled in a grid.
    #[arg(long, default_value = "grid.png", value_name = "FILE")]
    pub out: PathBuf,
    /// Write every step's x0 prediction, decoded, as PNG into this folder (one decode per
    /// step: slow with large autoencoders).
    #[arg(long, value_name = "DIR")]
    pub save_steps: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Text-to-image: `auto` runs the text encoder in bf16 and the autoencoder in f16 where the
    /// GPU backend has them (f32 elsewhere); `f16` asks for the autoencoder in f16 (an error
    /// where it cannot run); `f32` everywhere. The transformer computes in f32.
    #[arg(long, value_enum, default_value_t = crate::model::precision::PrecisionChoice::Auto)]
    pub precision: crate::model::precision::PrecisionChoice,
    /// Text-to-image: where the Gemma-2 text encoder runs. `auto`: on the GPU where the backend
    /// computes in bf16 (CUDA), else on the CPU (wgpu would widen it to 10.5 GB of f32 on the
    /// device; the CPU keeps its 5.2 GB of bf16 as stored); `gpu` / `cpu` force one.
    #[arg(long, value_enum, default_value_t = crate::engine::backend::Placement::Auto)]
    pub text_encoder_device: crate::engine::backend::Placement,
    /// Where the autoencoder (decoder, and encoder for a source image) runs. `auto`: on the GPU
    /// unless its memory cannot hold the denoiser and the autoencoder with a quarter to spare;
    /// `cpu` decodes in system memory with the CPU kernels; `gpu` forces the GPU.
    #[arg(long, value_enum, default_value_t = crate::engine::backend::Placement::Auto)]
    pub vae_device: crate::engine::backend::Placement,
}

/// "the CPU" or "the GPU", for the placement lines.
pub(crate) fn where_(on_cpu: bool) -> &'static str {
    if on_cpu {
        "the CPU"
    } else {
        "the GPU"
    }
}

/// What a `--class` value asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassArg {
    Id(usize),
    /// "unconditional" / "null": the model's null id, whatever its class count.
    Unconditional,
}

/// Resolves a `--class` value (id or ImageNet name, see [`crate::labels::lookup`]). The id's
/// range is checked against the model once its config is read.
pub fn class_arg(s: &str) -> anyhow::Result<ClassArg> {
    let id = crate::labels::lookup(s).map_err(|e| anyhow!("--class {s:?}: {e}"))?;
    let numeric = s.trim().bytes().all(|b| b.is_ascii_digit());
    Ok(if id == crate::labels::UNCONDITIONAL && !numeric { ClassArg::Unconditional } else { ClassArg::Id(id as usize) })
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let classes = args.classes.iter().map(|c| class_arg(c)).collect::<anyhow::Result<Vec<_>>>()?;
    let files = super::model_files(&args.model)?;
    let backend = args.backend;
    run_on(backend, GenerateTask { args, files, classes })?
}

struct GenerateTask {
    args: GenerateArgs,
    files: crate::weights::hub::ModelFiles,
    classes: Vec<ClassArg>,
}

impl BackendTask for GenerateTask {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> anyhow::Result<()> {
        let Self { args, files, classes } = self;
        super::report_backend(&info);
        let name = Path::new(&args.model).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or(args.model.clone());
        let config = DiffusionConfig::from_json(&read_json(&files.config)?, &name)?;
        let null = config.null_class();
        let labels: Vec<usize> =
            classes.iter().map(|c| if let ClassArg::Id(id) = *c { id } else { null }).collect();
        if let Some(&bad) = labels.iter().find(|&&l| l > null) {
            bail!(
                "--class {bad}: this model has classes 0..={} (and {} for an unconditional sample)",
                config.num_classes() - 1,
                config.null_class()
            );
        }
        let steps = args.steps.unwrap_or(config.default_steps());
        let defaults = crate::model::registry::find(&config.name).and_then(|p| p.defaults());
        let noise = match &args.noise {
            Some(path) => Some(read_tensor_f32::<B>(path, "noise", &device)?),
            None => None,
        };

        let t0 = Instant::now();
        let ckpt = Checkpoint::open(&files.weights)?;
        let ae_on_cpu = crate::engine::worker::api::class_autoencoder_on_cpu::<B>(&ckpt, &device, args.vae_device);
        let model = DiffusionModel::<B>::load_checkpoint_placed(&ckpt, config, &device, ae_on_cpu)?;
        drop(ckpt);
        eprintln!("loaded {} in {:.1}s", model.config.name, t0.elapsed().as_secs_f64());
        eprintln!("placement: {} on {} · autoencoder on {}", model.config.family(), where_(info.kind == "cpu"), where_(info.kind == "cpu" || model.autoencoder.on_cpu()));

        let cfg_scale = args.cfg.unwrap_or(defaults.map_or(model.config.default_guidance(), |d| d.guidance));
        let mut req = GenerateRequest::new(labels.clone(), cfg_scale, steps, args.seed);
        req.noise = noise;
        req.sampler = args.sampler.clone();
        if let Some(path) = &args.step_noise {
            let (data, shape) = crate::weights::tensor_file::read_f32(path, "noise")?;
            let dims: [usize; 5] = shape.clone().try_into().map_err(|_| anyhow::anyhow!("{}: tensor `noise` has shape {shape:?}; --step-noise needs [steps, B, C, h, w]", path.display()))?;
            let per = dims[1..].iter().product::<usize>();
            req.step_noise = Some(
                (0..dims[0]).map(|i| Tensor::<B, 4>::from_data(TensorData::new(data[i * per..(i + 1) * per].to_vec(), [dims[1], dims[2], dims[3], dims[4]]), &device)).collect(),
            );
        }
        let sampler_label = match args.sampler.as_deref() {
            Some(s) => model.config.sampler_label_of(&s.to_ascii_lowercase()),
            None => model.config.sampler_label(),
        };
        let budget = crate::engine::memory::autoencoder_budget_for(&model.autoencoder, &device);
        let cancel = AtomicBool::new(false);
        let mut step_error: Option<anyhow::Error> = None;
        let t0 = Instant::now();
        let mut on_step = |u: StepUpdate<B>| {
            progress_bar(u.step, u.total, t0.elapsed().as_secs_f64());
            if let Some(dir) = &args.save_steps {
                let path = dir.join(format!("step_{:03}_of_{:03}.png", u.step, u.total));
                let note = format!("x0 prediction after solver step {} of {} (t = {:.4})", u.step, u.total, u.t);
                let result = std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))
                    .and_then(|_| Ok(model.decode_latent_within(u.x0, budget)?))
                    .and_then(|img| save_grid(&img, &path, &[("preview", &note)]));
                if let Err(e) = result {
                    step_error.get_or_insert(e);
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        };
        let result = model.generate(&req, &mut on_step, &cancel);
        eprintln!();
        if let Some(e) = step_error {
            return Err(e.context("writing --save-steps previews"));
        }
        let out = result?;
        eprintln!(
            "sampled {} latent(s) in {:.1}s ({} network passes)",
            labels.len(),
            t0.elapsed().as_secs_f64(),
            out.network_calls
        );

        if let Some(path) = &args.latent_out {
            super::prepare_output(path)?;
            write_tensor_f32(path, "latent", out.latent.clone())?;
            eprintln!("wrote {}", path.display());
        }
        let image = model.decode_latent_within(out.latent, budget)?;
        let params = GenerationParams {
            classes: labels.iter().map(|&l| l as u32).collect(),
            guidance: cfg_scale,
            steps,
            seed: args.seed,
            model: model.config.name.clone(),
            sampler: sampler_label,
            batch: labels.len(),
            img2img: None,
        };
        let text = params.to_parameters_text();
        let noise_note = args.noise.as_ref().map(|p| p.display().to_string());
        let mut entries = vec![(PARAMETERS_KEY, text.as_str())];
        if let Some(n) = &noise_note {
            // The seed did not make this image: say where its noise came from.
            entries.push(("noise", n.as_str()));
        }
        save_grid(&image, &args.out, &entries)?;
        eprintln!("wrote {}", args.out.display());
        Ok(())
    }
}

/// A one-line progress bar on stderr, redrawn in place.
fn progress_bar(step: usize, total: usize, elapsed_s: f64) {
    const WIDTH: usize = 30;
    let filled = (step * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let eta = if step > 0 { elapsed_s / step as f64 * (total - step) as f64 } else { 0.0 };
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r[{}{}] step {step}/{total}  {elapsed_s:.1}s elapsed, ~{eta:.1}s left ",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    );
    let _ = err.flush();
}

/// Images `[B, 3, H, W]` in about [−1, 1] → one PNG grid (near-square, see
/// [`imaging::grid`]) with text chunks. Quantised like the reference evaluator,
/// `clamp(127.5·x + 128, 0, 255)` truncated ([`imaging::to_rgb8`]).
pub fn save_grid<B: Backend>(images: &Tensor<B, 4>, path: &Path, text: &[(&str, &str)]) -> anyhow::Result<()> {
    let shape = images.dims();
    let values = read_back(images.clone())?;
    let tiles = imaging::from_nchw(&values, shape)?;
    super::prepare_output(&path.to_path_buf())?;
    imaging::save_png_with_text(&imaging::grid(&tiles, 0), path, text)?;
    Ok(())
}

/// Reads the f32 4-D tensor `name` from a safetensors file.
pub fn read_tensor_f32<B: Backend>(path: &Path, name: &str, device: &B::Device) -> anyhow::Result<Tensor<B, 4>> {
    let t = crate::weights::tensor_file::read_nchw(path, name)?;
    Ok(upload(t.data, t.shape, device))
}

/// Settings of `dcae bench --task generate`.
#[derive(Debug, Clone)]
pub struct GenerateBenchOptions {
    /// A registered class model name (UViT, USiT or DiT; random weights: nothing is
    /// downloaded).
    pub model: String,
    /// Image resolution; the latent is `resolution / factor` on a side.
    pub resolution: usize,
    pub steps: usize,
    pub batch: usize,
    pub cfg_scale: f32,
    /// One of the family's samplers; `None`: its default.
    pub sampler: Option<String>,
    /// Timed single forward passes (after one untimed warm-up).
    pub forward_runs: usize,
    /// Timed full sampling runs.
    pub generate_runs: usize,
    pub backend: BackendChoice,
}

impl GenerateBenchOptions {
    pub fn new(model: &str, resolution: usize, steps: usize) -> Self {
        Self {
            model: model.to_string(),
            resolution,
            steps,
            batch: 1,
            cfg_scale: 6.0,
            sampler: None,
            forward_runs: 5,
            generate_runs: 1,
            backend: BackendChoice::Auto,
        }
    }
}

/// What `bench --task generate` measured. The integrator prints it as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateBench {
    pub model: String,
    pub backend: String,
    pub resolution: usize,
    /// `[batch, C, S, S]`.
    pub latent_shape: [usize; 4],
    pub steps: usize,
    pub cfg_scale: f32,
    /// One forward pass of the network at the batch size.
    pub forward: Timings,
    /// A full `steps`-step sampling run with guidance (no decode).
    pub generate: Timings,
    /// Network passes per sampling run (each guided pair counts twice).
    pub network_calls: usize,
    /// Guided predictions per run (an adaptive solver's own count).
    pub nfe: usize,
    /// Seconds to build the random-weight network.
    pub build_s: f64,
}

/// Times one UViT forward and a full guided sampling run of a registered model with random
/// weights, on the backend `opts.backend` picks (see [`bench_generate_on`]).
pub fn bench_generate(opts: &GenerateBenchOptions) -> anyhow::Result<GenerateBench> {
    run_on(opts.backend, BenchTask(opts.clone()))?
}

struct BenchTask(GenerateBenchOptions);

impl BackendTask for BenchTask {
    type Output = anyhow::Result<GenerateBench>;

    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> anyhow::Result<GenerateBench> {
        let mut bench = bench_generate_on::<B>(&self.0, &device)?;
        bench.backend = info.to_string();
        Ok(bench)
    }
}

/// [`bench_generate`] on a backend already chosen (for callers inside their own
/// `BackendTask`). The autoencoder is not built: decoding is the AE benchmark's business.
/// One untimed forward pass warms up kernels first; either count in `opts` may be 0.
pub fn bench_generate_on<B: Backend>(opts: &GenerateBenchOptions, device: &B::Device) -> anyhow::Result<GenerateBench> {
    if opts.steps == 0 || opts.batch == 0 {
        bail!("steps and batch must be at least 1");
    }
    let config = DiffusionConfig::registered_at(&opts.model, Some(opts.resolution))?;
    let t0 = Instant::now();
    let denoiser = build_denoiser::<B, _>(&mut RandomWeights::<B>::new(device), &config.denoiser);
    let build_s = t0.elapsed().as_secs_f64();
    let shape = config.latent_shape(opts.batch);
    let labels: Vec<usize> = (0..opts.batch).map(|i| (i * 97) % config.num_classes()).collect();

    let x = seeded_noise::<B>(shape, 0, device);
    // Mid-schedule in each family's own time units (USiT's t is raw).
    let t_mid = if config.family() == "USiT" { 0.5f32 } else { 500.0 };
    let t = Tensor::<B, 1>::from_data(TensorData::new(vec![t_mid; opts.batch], [opts.batch]), device);
    let y = Tensor::from_data(TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [opts.batch]), device);
    let forward_once = || {
        let start = Instant::now();
        let eps = denoiser.forward(x.clone(), t.clone(), y.clone());
        let _ = eps.into_data(); // waits for the device
        start.elapsed().as_secs_f64()
    };
    let first = forward_once(); // warm-up: kernel compilation / autotune, weight re-layout
    let forward = Timings { first_s: Some(first), ..Timings::from_samples((0..opts.forward_runs).map(|_| forward_once()).collect()) };

    let mut req = GenerateRequest::<B>::new(labels, opts.cfg_scale, opts.steps, 0);
    req.sampler = opts.sampler.clone();
    let cancel = AtomicBool::new(false);
    let mut network_calls = 0;
    let mut nfe = 0;
    let mut times = Vec::new();
    for _ in 0..opts.generate_runs {
        let start = Instant::now();
        let out = denoiser.sample(&req, &mut |_| {}, &cancel)?;
        network_calls = out.network_calls;
        nfe = out.nfe;
        let _ = out.latent.into_data();
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(GenerateBench {
        model: config.name,
        backend: B::name(device),
        resolution: opts.resolution,
        latent_shape: shape,
        steps: opts.steps,
        cfg_scale: opts.cfg_scale,
        forward,
        generate: Timings::from_samples(times),
        network_calls,
        nfe,
        build_s,
    })
}
