//! `dcae serve`: the local HTTP API ([`crate::server`]) without the window, until the process
//! is stopped (Ctrl-C).

use std::path::PathBuf;

use crate::engine::backend::{BackendChoice, Placement};
use crate::engine::worker::WorkerConfig;
use crate::server::{self, ServeConfig};
use crate::weights::hub::HubOptions;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The address to listen on. Anything but 127.0.0.1 lets other computers generate on this
    /// one: set --api-auth then.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port (the A1111 web UI's 7860, so clients find it where they look).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// A folder of model folders, or one model folder (as the app's --model-dir); repeatable.
    /// The Hugging Face cache is always scanned too.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Vec<PathBuf>,
    /// The model loaded at start and used when a request names none (a title from
    /// /sdapi/v1/sd-models); default: the one the app would pick.
    #[arg(long, short)]
    pub model: Option<String>,
    /// HTTP basic auth for every request, as A1111's: user:password.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub api_auth: Option<String>,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Where SANA's text encoder runs (see `dcae generate --help`).
    #[arg(long, value_enum, default_value_t = Placement::Auto)]
    pub text_encoder_device: Placement,
    /// Where the autoencoder runs (see `dcae generate --help`).
    #[arg(long, value_enum, default_value_t = Placement::Auto)]
    pub vae_device: Placement,
    /// No step previews in /sdapi/v1/progress (they cost a projection fit per model, once).
    #[arg(long)]
    pub no_previews: bool,
    /// Never contact the Hugging Face hub (same as HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let auth = a.api_auth.as_deref().map(server::parse_auth).transpose().map_err(anyhow::Error::msg)?;
    if a.host != "127.0.0.1" && a.host != "localhost" && a.host != "::1" && auth.is_none() {
        eprintln!("warning: listening on {} without --api-auth: anyone who can reach this computer can use it", a.host);
    }
    for d in &a.model_dir {
        if !d.is_dir() {
            anyhow::bail!("--model-dir {} is not a folder", d.display());
        }
    }
    let mut hub = HubOptions::from_env();
    if a.offline {
        hub.offline = true;
    }
    let worker = WorkerConfig { backend: a.backend, text_encoder: a.text_encoder_device, autoencoder: a.vae_device, ..WorkerConfig::default() };
    let config = ServeConfig { host: a.host, port: a.port, auth, model_dirs: a.model_dir, model: a.model, hub, worker, live_previews: !a.no_previews };
    let server = server::Server::start(config).map_err(anyhow::Error::msg)?;
    let models: Vec<String> = {
        let c = server.queue.catalog.read().unwrap_or_else(|p| p.into_inner());
        c.generators().filter(|e| e.available()).map(|e| e.label.clone()).collect()
    };
    eprintln!("serving the DC-AE Studio API on http://{} (docs: /docs)", server.addr());
    eprintln!("models: {}", if models.is_empty() { "none on this computer yet (dcae download <repo>)".to_string() } else { models.join(", ") });
    server.wait();
    Ok(())
}
