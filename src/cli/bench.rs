//! `dcae bench`: time a model with random weights (nothing is downloaded), one warm-up run and
//! then `--runs` timed runs; the PyTorch counterpart is tests/python/bench_torch.py.

use anyhow::bail;
use burn::tensor::{backend::Backend, Distribution, Tensor};

use crate::engine::{run_on, BackendChoice, BackendInfo, BackendTask};
use crate::model::{Dcae, DcaeConfig};
use crate::weights::RandomWeights;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchTask {
    Encode,
    Decode,
    /// One UViT forward pass.
    Forward,
    /// A full sampling run (DPM-Solver, CFG).
    Generate,
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
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Sampling steps (generate).
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Guidance scale (generate).
    #[arg(long, default_value_t = 6.0)]
    pub cfg: f32,
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    pub backend: BackendChoice,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
}

// The measurement helpers live in `super::timing`, which `generate` uses too: `bench` calls
// into `generate` (the generation benchmark), so `generate` must not import from `bench`.
pub use super::timing::{peak_rss_mib, time_runs, Timings};

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    run_on(args.backend, Bench(args.clone()))?
}

struct Bench(BenchArgs);

/// Forces the backend to finish the work behind `t` (GPU backends run asynchronously).
fn sync<B: Backend>(t: Tensor<B, 4>) {
    let _ = t.slice([0..1, 0..1, 0..1, 0..1]).into_data();
}

impl BackendTask for Bench {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output {
        let a = self.0;
        let timings = match a.task {
            BenchTask::Encode | BenchTask::Decode => {
                let cfg = DcaeConfig::published(&a.model)?;
                let f = cfg.factor();
                if a.res % f != 0 {
                    bail!("--res {} is not a multiple of {}'s compression factor {f}", a.res, cfg.name);
                }
                let model = Dcae::<B>::load(&mut RandomWeights::new(&device), &cfg);
                if a.task == BenchTask::Encode {
                    let x = Tensor::<B, 4>::random([a.batch, 3, a.res, a.res], Distribution::Uniform(-1.0, 1.0), &device);
                    time_runs(a.runs, || sync(model.encode(x.clone())))
                } else {
                    let (c, s) = (cfg.latent_channels, a.res / f);
                    let z = Tensor::<B, 4>::random([a.batch, c, s, s], Distribution::Normal(0.0, 1.0), &device);
                    time_runs(a.runs, || sync(model.decode(z.clone())))
                }
            }
            BenchTask::Forward | BenchTask::Generate => bench_diffusion::<B>(&a, &device)?,
        };
        let out = serde_json::json!({
            "impl": "burn", "backend": info.kind, "device": info.name, "model": a.model, "task": a.task,
            "res": a.res, "batch": a.batch, "runs": timings.runs,
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "median_s": timings.median_s, "min_s": timings.min_s, "mean_s": timings.mean_s,
            "peak_rss_mib": peak_rss_mib(),
            "steps": (a.task == BenchTask::Generate).then_some(a.steps),
        });
        if a.json {
            println!("{out}");
        } else {
            println!(
                "{} {:?} @{}² on {info}: median {:.4} s (min {:.4}, mean {:.4}, {} runs), peak RSS {:.0} MiB",
                a.model, a.task, a.res, timings.median_s, timings.min_s, timings.mean_s, timings.runs,
                peak_rss_mib().unwrap_or(f64::NAN)
            );
        }
        Ok(())
    }
}

/// `forward`: one UViT pass; `generate`: a full guided sampling run (no decode). Random weights.
fn bench_diffusion<B: Backend>(a: &BenchArgs, device: &B::Device) -> anyhow::Result<Timings> {
    use super::generate::{bench_generate_on, GenerateBenchOptions};
    let mut o = GenerateBenchOptions::new(&a.model, a.res, a.steps);
    o.batch = a.batch;
    o.cfg_scale = a.cfg;
    let forward = a.task == BenchTask::Forward;
    (o.forward_runs, o.generate_runs) = if forward { (a.runs, 0) } else { (0, a.runs) };
    let r = bench_generate_on::<B>(&o, device)?;
    Ok(if forward { r.forward } else { r.generate })
}
