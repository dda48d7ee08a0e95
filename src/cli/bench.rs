//! `dcae bench`: time a model with random weights (nothing is downloaded), one warm-up run and
//! then `--runs` timed runs; the PyTorch counterpart is tests/python/bench_torch.py.

use anyhow::bail;
use burn::tensor::{backend::Backend, Tensor};

use crate::engine::{run_on, BackendChoice, BackendInfo, BackendTask};
use crate::model::precision::{Precision, PrecisionChoice};
use crate::model::{Dcae, DcaeConfig};
use crate::weights::RandomWeights;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchTask {
    Encode,
    Decode,
    /// One UViT forward pass, or one SANA transformer call for a SANA model.
    Forward,
    /// A full sampling run (DPM-Solver, CFG).
    Generate,
    /// SANA text-to-image: text encoding, sampling and decoding (steps and guidance from
    /// --steps / --cfg, default the model's).
    T2i,
    /// One Gemma-2-2B pass over --tokens tokens (SANA's text encoder).
    TextEncode,
    /// What the local API adds to a generation: --model is a model folder; pairs of the same
    /// generation in process and through `POST /sdapi/v1/txt2img` ([`super::bench_api`]).
    Api,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A published name (dc-ae-f32c32-in-1.0, …, or a diffusion model name for forward/generate).
    #[arg(long)]
    pub model: String,
    #[arg(long, value_enum)]
    pub task: BenchTask,
    /// Image resolution (square).
    #[arg(long, default_value_t = 256)]
    pub res: usize,
    /// Timed runs after one warm-up; 0 with --output / --compare: only that run, timed as a
    /// first call.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Sampling steps (generate).
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Guidance scale (generate: the model's default, 6 for the UViTs; t2i: 4.5).
    #[arg(long)]
    pub cfg: Option<f32>,
    /// generate: the class model's sampler (DiT: adm / ddim; USiT: dopri5 / heun2) [default:
    /// the model's].
    #[arg(long)]
    pub sampler: Option<String>,
    /// Tokens of the text encoder's positive pass (SANA's instruction + prompt).
    #[arg(long, default_value_t = 540)]
    pub tokens: usize,
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    pub backend: BackendChoice,
    /// SANA: the weights' type in memory. `published`: as the published files would give them
    /// (the bf16 text encoder kept 16-bit where the backend computes from it); `f32`: all
    /// widened, as a float32 load would hold them.
    #[arg(long, value_enum, default_value_t = WeightsDtype::Published)]
    pub weights: WeightsDtype,
    /// encode / decode: the autoencoder's precision (auto: f16 on a GPU backend that has it).
    /// text-encode / forward / t2i: the text encoder's (auto / f16: bf16 on a GPU backend with
    /// bf16 arithmetic, else f32), the SANA transformer's (f16 for the fp16-trained SANA 1.0,
    /// bf16 for Sprint and SANA 1.5, where the backend has it) and the autoencoder's. The UViT
    /// runs in f32.
    #[arg(long, value_enum, default_value_t = PrecisionChoice::F32)]
    pub precision: PrecisionChoice,
    /// encode / decode / generate / t2i: write the output (latent or image, f32; generate,
    /// t2i: the decoded images of one seeded run) to this safetensors file (tensor `output`), to compare
    /// backends (`--compare`).
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// encode / decode / generate / t2i: the largest difference from this file's `output` (written by
    /// `--output`, e.g. on the CPU backend: the same random weights and input on every backend)
    /// goes into the report.
    #[arg(long, value_name = "FILE")]
    pub compare: Option<std::path::PathBuf>,
    /// t2i: where the Gemma-2 text encoder runs (auto: as the app places it, the CPU on a GPU
    /// backend without bf16).
    #[arg(long, value_enum, default_value_t = crate::engine::backend::Placement::Auto)]
    pub text_encoder_device: crate::engine::backend::Placement,
    /// generate with --output / --compare, and t2i: where the autoencoder runs (auto: the GPU unless its
    /// memory cannot hold the UViT and the autoencoder with a quarter to spare).
    #[arg(long, value_enum, default_value_t = crate::engine::backend::Placement::Auto)]
    pub vae_device: crate::engine::backend::Placement,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsDtype {
    Published,
    F32,
}

// The measurement helpers live in `super::timing`, which `generate` uses too: `bench` calls
// into `generate` (the generation benchmark), so `generate` must not import from `bench`.
pub use super::timing::{peak_rss_mib, time_runs, time_runs_then, GpuPeak, Timings};

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.task == BenchTask::Api {
        return super::bench_api::run(&args);
    }
    run_on(args.backend, Bench(args.clone()))?
}

struct Bench(BenchArgs);

/// `shape`'s values from a seeded host RNG: uniform in [−1, 1] (`uniform` > 0, an image) or
/// N(0, 1) (a latent).
fn host_random(shape: [usize; 4], uniform: f32, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    if uniform > 0.0 {
        (0..n).map(|_| rng.random_range(-uniform..uniform)).collect()
    } else {
        (0..n).map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal)).collect()
    }
}

/// Forces the backend to finish the work behind `t` (GPU backends run asynchronously).
fn sync<B: Backend>(t: Tensor<B, 4>) {
    let _ = t.slice([0..1, 0..1, 0..1, 0..1]).into_data();
}

impl BackendTask for Bench {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output {
        let a = self.0;
        super::report_backend(&info);
        // GPU memory after each timed run where the runs are timed here, else after all of them.
        let mut gpu = GpuPeak::default();
        let mut precision = Precision::F32;
        let mut compared: Option<(f64, f64)> = None;
        // The untimed run whose output is written or compared: on a GPU, the first call (kernel
        // compilation and autotuning included).
        let mut output_s: Option<f64> = None;
        let mut placement: Option<&str> = None;
        // (guided predictions, network passes) of a class-model generation.
        let mut calls: Option<(usize, usize)> = None;
        let timings = match a.task {
            BenchTask::Encode | BenchTask::Decode => {
                let cfg = DcaeConfig::published(&a.model)?;
                let f = cfg.factor();
                if a.res % f != 0 {
                    bail!("--res {} is not a multiple of {}'s compression factor {f}", a.res, cfg.name);
                }
                precision = a.precision.resolve::<B>(&device).map_err(anyhow::Error::msg)?;
                let model = Dcae::<B>::load(&mut RandomWeights::new(&device), &cfg).with_precision(precision);
                // Within the device's limits, as the app runs it: batched, per image or tiled.
                let budget = crate::engine::memory::autoencoder_budget_on::<B>(&device);
                let encode = a.task == BenchTask::Encode;
                let shape = if encode { [a.batch, 3, a.res, a.res] } else { [a.batch, cfg.latent_channels, a.res / f, a.res / f] };
                // The input from a seeded host RNG: the same on every backend.
                let input = host_random(shape, if encode { 1.0 } else { 0.0 }, 7);
                let x = crate::model::host::upload::<B, 4>(input, shape, &device);
                // The first run says whether it was tiled (the note lists every tiled run).
                let told = std::cell::Cell::new(false);
                let run = |x: Tensor<B, 4>| -> anyhow::Result<Tensor<B, 4>> {
                    let mut calls = 0;
                    let mut count = |_: usize, n: usize| {
                        calls = n;
                        true
                    };
                    let y = if encode {
                        crate::model::tiling::encode_within(&model, &cfg, x, budget, &mut count)?
                    } else {
                        crate::model::tiling::decode_within(&model, &cfg, x, budget, &mut count)?
                    };
                    if !told.replace(true) && calls > a.batch {
                        eprintln!("{}: tiled, {} tiles per image", if encode { "encode" } else { "decode" }, calls / a.batch.max(1));
                    }
                    y.ok_or_else(|| anyhow::anyhow!("the run stopped"))
                };
                if a.output.is_some() || a.compare.is_some() {
                    let t0 = std::time::Instant::now();
                    let y = run(x.clone())?;
                    let _ = B::sync(&device);
                    output_s = Some(t0.elapsed().as_secs_f64());
                    let dims = y.dims();
                    compared = write_or_compare(&a, &crate::model::host::read_back(y)?, &dims)?;
                }
                match output_s {
                    // `--runs 0` with an output run: that run is the one timed (a first call).
                    Some(secs) if a.runs == 0 => {
                        gpu.sample::<B>(&device);
                        Timings { first_s: Some(secs), ..Timings::from_samples(vec![secs]) }
                    }
                    _ => time_runs_then(a.runs, || { let _ = run(x.clone()).map(sync); }, || gpu.sample::<B>(&device)),
                }
            }
            BenchTask::Generate if a.output.is_some() || a.compare.is_some() => {
                // One run as the app makes it: sampling from the seeded host noise (the same on
                // every backend), then the decode where the placement puts the autoencoder,
                // within that side's limits. Timed whole, first call included.
                let config = crate::model::diffusion::DiffusionConfig::registered_at(&a.model, Some(a.res))?;
                let ae_on_cpu = a.vae_device.on_cpu().unwrap_or_else(|| {
                    crate::engine::memory::autoencoder_on_cpu::<B>(&device, 4 * config.denoiser_params() as u64, 4 * config.autoencoder.approx_params())
                });
                let classes = config.num_classes();
                let model = crate::model::diffusion::DiffusionModel::<B>::load_random_placed(config, &device, ae_on_cpu)?;
                placement = Some(if model.autoencoder.on_cpu() || info.kind == "cpu" { "autoencoder on the CPU" } else { "autoencoder on the GPU" });
                eprintln!("placement: {} on the {} · {}", model.config.family(), if info.kind == "cpu" { "CPU" } else { "GPU" }, placement.unwrap_or_default());
                let labels: Vec<usize> = (0..a.batch).map(|i| (i * 97) % classes).collect();
                let mut req = crate::model::diffusion::GenerateRequest::<B>::new(labels, a.cfg.unwrap_or_else(|| class_guidance(&a.model)), a.steps, 0);
                req.sampler = a.sampler.clone();
                let t0 = std::time::Instant::now();
                let out = model.generate(&req, &mut |_| {}, &std::sync::atomic::AtomicBool::new(false))?;
                calls = Some((out.nfe, out.network_calls));
                let budget = crate::engine::memory::autoencoder_budget_for(&model.autoencoder, &device);
                let y = model.decode_latent_within(out.latent, budget)?;
                let dims = y.dims();
                let values = crate::model::host::read_back(y)?;
                let secs = t0.elapsed().as_secs_f64();
                output_s = Some(secs);
                compared = write_or_compare(&a, &values, &dims)?;
                gpu.sample::<B>(&device);
                Timings { first_s: Some(secs), ..Timings::from_samples(vec![secs]) }
            }
            BenchTask::T2i | BenchTask::TextEncode => return sana::<B>(&a, &device, &info),
            // Handled in `run`: it starts engines of its own.
            BenchTask::Api => bail!("--task api does not run on a backend task"),
            BenchTask::Forward if crate::model::sana::registry::registered_sana(&a.model).is_some() => return sana::<B>(&a, &device, &info),
            BenchTask::Forward | BenchTask::Generate => {
                let (t, c) = bench_diffusion::<B>(&a, &device)?;
                calls = c;
                gpu.sample::<B>(&device);
                t
            }
        };
        let out = serde_json::json!({
            "impl": "burn", "backend": info.kind, "device": info.name, "model": a.model, "task": a.task,
            "res": a.res, "batch": a.batch, "runs": timings.runs,
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "median_s": timings.median_s, "min_s": timings.min_s, "mean_s": timings.mean_s,
            "first_s": timings.first_s,
            "peak_rss_mib": peak_rss_mib(),
            "gpu_in_use_mib": gpu.in_use_mib(), "gpu_reserved_mib": gpu.reserved_mib(),
            "dtype": precision.name(), "skipped": info.skipped,
            "steps": (a.task == BenchTask::Generate).then_some(a.steps),
            "max_abs_diff": compared.map(|c| c.0), "max_abs_ref": compared.map(|c| c.1), "output_s": output_s,
            "max_tensor_bytes": info.limits.max_tensor,
            "placement": placement,
            "sampler": (a.task == BenchTask::Generate).then(|| a.sampler.clone()).flatten(),
            "nfe": calls.map(|c| c.0), "network_calls": calls.map(|c| c.1),
        });
        if a.json {
            println!("{out}");
        } else {
            println!(
                "{} {:?} @{}² on {info} in {}: median {:.4} s (min {:.4}, mean {:.4}, {} runs; first call {}), peak RSS {:.0} MiB{}",
                a.model, a.task, a.res, precision.name(), timings.median_s, timings.min_s, timings.mean_s, timings.runs,
                timings.first_s.map_or("not timed".to_string(), |f| format!("{f:.4} s")),
                peak_rss_mib().unwrap_or(f64::NAN),
                gpu.describe()
            );
        }
        Ok(())
    }
}

/// Writes `values` (`--output`) and measures the largest difference from `--compare`'s:
/// (max |diff|, max |reference|).
fn write_or_compare(a: &BenchArgs, values: &[f32], dims: &[usize]) -> anyhow::Result<Option<(f64, f64)>> {
    if let Some(path) = &a.output {
        super::prepare_output(path)?;
        crate::weights::tensor_file::write_f32(path, &[("output", values, dims)], &[])?;
    }
    let Some(path) = &a.compare else { return Ok(None) };
    let (want, wshape) = crate::weights::tensor_file::read_f32(path, "output")?;
    if wshape != dims {
        bail!("{}: `output` has shape {wshape:?}, this run's is {dims:?}", path.display());
    }
    let diff = values.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) });
    Ok(Some((diff as f64, want.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64)))
}

/// The SANA tasks (see [`super::bench_sana`]), printed like the others plus the phases of t2i.
fn sana<B: Backend>(a: &BenchArgs, device: &B::Device, info: &BackendInfo) -> anyhow::Result<()> {
    use super::bench_sana::{SanaBench, SanaBenchArgs};
    let task = match a.task {
        BenchTask::T2i => SanaBench::T2i,
        BenchTask::TextEncode => SanaBench::TextEncode,
        _ => SanaBench::Forward,
    };
    let model = if task == SanaBench::TextEncode && crate::model::sana::registry::registered_sana(&a.model).is_none() {
        "Sana_600M_512px_diffusers".to_string()
    } else {
        a.model.clone()
    };
    let args = SanaBenchArgs { model, task, res: a.res, batch: a.batch, steps: (a.task == BenchTask::T2i && a.steps != 30).then_some(a.steps), cfg: a.cfg.unwrap_or(4.5), runs: a.runs, tokens: a.tokens, bf16_text_encoder: a.weights == WeightsDtype::Published, precision: a.precision, text_encoder: a.text_encoder_device, autoencoder: a.vae_device, keep_output: a.output.is_some() || a.compare.is_some() };
    let r = super::bench_sana::run::<B>(&args, device)?;
    if let Some(p) = &r.placement {
        eprintln!("placement: {p}");
    }
    let compared = match &r.output {
        Some((values, dims)) => write_or_compare(a, values, dims)?,
        None => None,
    };
    let mut gpu = GpuPeak::default();
    gpu.sample::<B>(device);
    let t = &r.timings;
    let out = serde_json::json!({
        "impl": "burn", "backend": info.kind, "device": info.name, "model": a.model, "task": a.task,
        "res": a.res, "batch": a.batch, "runs": t.runs, "tokens": a.tokens,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "median_s": t.median_s, "min_s": t.min_s, "mean_s": t.mean_s, "all_s": t.all_s, "build_s": r.build_s,
        "phases_s": r.phases, "peak_rss_mib": r.peak_rss_mib, "weights": a.weights,
        "gpu_in_use_mib": gpu.in_use_mib(), "gpu_reserved_mib": gpu.reserved_mib(),
        "dtype": r.dtype, "skipped": info.skipped, "placement": r.placement,
        "max_abs_diff": compared.map(|c| c.0), "max_abs_ref": compared.map(|c| c.1),
        "max_tensor_bytes": info.limits.max_tensor,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{} {:?} @{}² on {info} ({}): median {:.3} s (min {:.3}, {} runs), phases {:?}, peak RSS {:.0} MiB{}", a.model, a.task, a.res, r.dtype, t.median_s, t.min_s, t.runs, r.phases, r.peak_rss_mib.unwrap_or(f64::NAN), gpu.describe());
    }
    Ok(())
}

/// The registry's guidance for a class model (6 where it has none).
fn class_guidance(model: &str) -> f32 {
    crate::model::registry::find(model).and_then(|p| p.defaults()).map_or(6.0, |d| d.guidance)
}

/// `forward`: one pass of the class model's network; `generate`: a full guided sampling run
/// (no decode), with its (guided predictions, network passes). Random weights.
fn bench_diffusion<B: Backend>(a: &BenchArgs, device: &B::Device) -> anyhow::Result<(Timings, Option<(usize, usize)>)> {
    use super::generate::{bench_generate_on, GenerateBenchOptions};
    let mut o = GenerateBenchOptions::new(&a.model, a.res, a.steps);
    o.batch = a.batch;
    o.cfg_scale = a.cfg.unwrap_or_else(|| class_guidance(&a.model));
    o.sampler = a.sampler.clone();
    let forward = a.task == BenchTask::Forward;
    (o.forward_runs, o.generate_runs) = if forward { (a.runs, 0) } else { (0, a.runs) };
    let r = bench_generate_on::<B>(&o, device)?;
    Ok(if forward { (r.forward, None) } else { (r.generate, Some((r.nfe, r.network_calls))) })
}
