//! The headless CLI `dcae`: the same engine as the app, for scripting, tests and comparisons
//! with the reference implementations.

pub mod ae;
pub mod bench;
pub mod bench_api;
pub mod bench_sana;
pub mod generate;
pub mod parity;
pub mod serve;
pub mod t2i;
pub mod tiling;
pub mod timing;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};

use crate::engine::BackendChoice;
use crate::weights::hub::{self, HubOptions, ModelFiles};

#[derive(Debug, Parser)]
#[command(name = "dcae", version, about = "DC-AE autoencoders and DC-AE diffusion models, headless")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Encode images to latents (raw encoder output, no scaling factor).
    Encode(ae::EncodeArgs),
    /// Decode latents to PNG images.
    Decode(ae::DecodeArgs),
    /// Encode and decode one image; print PSNR, SSIM, latent shape, compression and timings.
    Reconstruct(ae::ReconstructArgs),
    /// Generate images: from classes with a DC-AE diffusion model (UViT + DPM-Solver), or from
    /// text prompts with SANA / SANA-Sprint.
    Generate(generate::GenerateArgs),
    /// Time a model with random weights (no download); one JSON line with --json.
    Bench(bench::BenchArgs),
    /// Download a model into the Hugging Face cache (or check that it is there).
    Download(DownloadArgs),
    /// Check this build against the golden fixtures (tests/fixtures) on a backend: max abs
    /// error and PASS/FAIL per check; exits non-zero when one fails.
    Parity(parity::ParityArgs),
    /// Serve the local HTTP API (the AUTOMATIC1111 web UI's /sdapi/v1 subset, one queue) on
    /// 127.0.0.1:7860 until stopped.
    Serve(serve::ServeArgs),
}

/// Options every model-running command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// A local folder (config.json + *.safetensors) or a Hugging Face repo id
    /// (e.g. mit-han-lab/dc-ae-f32c32-in-1.0; a bare published name means mit-han-lab/<name>).
    #[arg(long, short)]
    pub model: String,
    /// Which backend runs the model.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
}

#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// Hugging Face repo id or published name.
    pub repo: String,
}

/// Resolves a model argument to files, downloading into the HF cache when needed, with a
/// progress line on stderr.
pub fn model_files(arg: &str) -> anyhow::Result<ModelFiles> {
    let opts = HubOptions::from_env();
    let cancel = AtomicBool::new(false);
    let mut last = std::time::Instant::now();
    let mut progress = |p: hub::DownloadProgress| {
        if last.elapsed().as_millis() > 200 || p.bytes_done == p.bytes_total {
            last = std::time::Instant::now();
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            eprint!("\rdownloading {}: {:.1} / {:.1} MiB   ", p.file, mib(p.bytes_done), mib(p.bytes_total));
            if p.bytes_done == p.bytes_total {
                eprintln!();
            }
        }
    };
    Ok(hub::resolve_model(arg, &opts, &mut progress, &cancel)?)
}

impl Cli {
    /// The backend the command asked for, if it runs a model.
    pub fn backend(&self) -> Option<BackendChoice> {
        match &self.command {
            Command::Encode(a) => Some(a.common.backend),
            Command::Decode(a) => Some(a.common.backend),
            Command::Reconstruct(a) => Some(a.common.backend),
            Command::Generate(a) => Some(a.backend),
            Command::Bench(a) => Some(a.backend),
            Command::Parity(a) => Some(a.backend),
            Command::Serve(a) => Some(a.backend),
            Command::Download(_) => None,
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Encode(a) => ae::encode(a),
        Command::Decode(a) => ae::decode(a),
        Command::Reconstruct(a) => ae::reconstruct(a),
        // A prompt makes it text-to-image (SANA); classes, class-to-image (UViT).
        Command::Generate(a) if !a.prompts.is_empty() => t2i::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Parity(a) => parity::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Download(a) => {
            let files = model_files(&a.repo)?;
            println!("config:  {}\nweights: {}", files.config.display(), files.weights.display());
            Ok(())
        }
    }
}

/// The `dcae` binary's entry point: errors are printed as a chain of causes, never a panic.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let backend = cli.backend();
    // A backend can still fail inside a run (a GPU lost or refusing a kernel panics in its
    // runtime): that ends the command with an error that says what to try, not a backtrace.
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(r) => r,
        Err(p) => {
            let msg = crate::engine::worker::panic_message(p.as_ref());
            let hint = match backend {
                Some(BackendChoice::Cpu) | None => String::new(),
                Some(b) => format!("; if the {b} backend is at fault, try --backend cpu"),
            };
            Err(anyhow::anyhow!("the run failed inside the backend: {msg}{hint}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The backend line of every model-running command, on stderr, and under it each backend that
/// `auto` passed over with the reason (a missing driver, a software-only adapter), so that a
/// run on the CPU says why it is not on the GPU.
pub(crate) fn report_backend(info: &crate::engine::BackendInfo) {
    eprintln!("backend: {info}");
    for s in &info.skipped {
        eprintln!("  skipped {s}");
    }
}

/// A path for an output file, created with its parent folders.
pub(crate) fn prepare_output(path: &PathBuf) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Writes one f32 NCHW tensor as a safetensors file.
pub fn write_tensor_f32<B: burn::tensor::backend::Backend>(path: &std::path::Path, name: &str, tensor: burn::tensor::Tensor<B, 4>) -> anyhow::Result<()> {
    let shape = tensor.dims();
    let values = crate::model::host::read_back(tensor)?;
    crate::weights::tensor_file::write_f32(path, &[(name, &values, &shape)], &[])?;
    Ok(())
}
