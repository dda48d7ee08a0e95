//! `dcae-studio`: the desktop app. `cargo run --release` opens it.
//!
//! ```text
//! dcae-studio [--backend auto|cpu|wgpu|cuda] [--model-dir DIR] [--offline] [--renderer wgpu|glow]
//! ```

use std::path::PathBuf;

use clap::Parser;
use dcae::engine::backend::BackendChoice;
use dcae::engine::worker::api::hub::HubOptions;
use dcae::ui::AppOptions;

#[derive(Parser, Debug)]
#[command(name = "dcae-studio", version, about = "Generate and inspect images with MIT HAN Lab's DC-AE autoencoders")]
struct Args {
    /// Which backend runs the models: CUDA if present, else a hardware GPU (wgpu), else the CPU.
    /// Also settable with DCAE_BACKEND.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// A folder of model folders (each with config.json + model.safetensors), or one model folder.
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// Never contact the Hugging Face hub (same as HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let backend = args.backend.or_else(BackendChoice::from_env).unwrap_or_default();
    let mut hub = HubOptions::from_env();
    if args.offline {
        hub.offline = true;
    }
    if let Some(dir) = &args.model_dir {
        if !dir.is_dir() {
            eprintln!("warning: --model-dir {} is not a folder; the app starts without it", dir.display());
        }
    }
    let options = AppOptions { model_dir: args.model_dir, backend, hub: Some(hub), ..AppOptions::default() };
    match dcae::ui::run(options) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "dcae-studio could not open its window: {e}\n\
                 It needs a display (X11 or Wayland) and a GPU driver or software renderer (e.g. Mesa's llvmpipe/lavapipe)."
            );
            std::process::ExitCode::FAILURE
        }
    }
}
