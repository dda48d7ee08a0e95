//! `dcae serve`: a local HTTP API in the dialect of the AUTOMATIC1111 web UI (`/sdapi/v1/…`),
//! which most image-generation clients already speak, plus a native reconstruction endpoint.
//!
//! ```text
//!   client ── HTTP ──▶ accept thread ──▶ a thread per request (routes.rs: auth, limits, JSON)
//!                                           │ Work                 ▲ Reply / ApiError (exactly one)
//!                                           ▼                      │
//!                                   queue.rs: Queue ──▶ Dispatcher (one thread) ── Job ──▶ engine
//!                                                                      ◀── Event ──
//! ```
//!
//! Safe by default: it binds 127.0.0.1 unless told otherwise, takes optional HTTP basic auth
//! (A1111's `--api-auth user:password`), bounds request bodies and images, resolves model names
//! only through the catalog (never a path from a request), and answers every bad request with a
//! 4xx and a JSON `{"error", "detail"}`. A handler that panics answers 500 and the server goes
//! on.
//!
//! Contact points: `cli` (`dcae serve`) calls [`Server::start`]; [`routes`] maps the endpoints;
//! [`queue`] owns the engine's [`Worker`]; the catalog is [`crate::engine::catalog`].

pub mod queue;
pub mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::engine::catalog::Catalog;
use crate::engine::worker::api::hub::HubOptions;
use crate::engine::worker::{Worker, WorkerConfig, WorkerHandle};

pub use queue::{ApiError, Counts, Queue};

/// Requests handled at once; beyond it a request gets 503 at once instead of a thread.
pub const MAX_CONNECTIONS: usize = 128;
/// The largest request body (base64 images included).
pub const MAX_BODY_BYTES: usize = 64 << 20;

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// `(user, password)`: every request must carry them (HTTP basic auth).
    pub auth: Option<(String, String)>,
    /// Folders of models, as the app's `--model-dir`.
    pub model_dirs: Vec<PathBuf>,
    /// The model to load first (a catalog label or key); `None`: the catalog's default.
    pub model: Option<String>,
    pub hub: HubOptions,
    pub worker: WorkerConfig,
    /// Step previews in `/progress` (A1111's `live_previews_enable`).
    pub live_previews: bool,
}

/// Parses A1111's `--api-auth user:password`.
pub fn parse_auth(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => Err(format!("--api-auth takes user:password, not {s:?}")),
    }
}

/// A running server: its address, and a way to stop it.
pub struct Server {
    http: Arc<tiny_http::Server>,
    pub queue: Arc<Queue>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
    dispatcher: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds, scans the model folders and the Hugging Face cache, starts the engine and, when
    /// a model is named or one is on this computer, queues its load (so the first request does
    /// not pay for it while a client waits).
    pub fn start(config: ServeConfig) -> Result<Self, String> {
        let http = bind(&config)?;
        let catalog = Catalog::scan(&config.model_dirs, &config.hub);
        let worker = Worker::spawn(config.worker.clone(), Arc::new(|| {}));
        Self::start_on(config, http, Box::new(worker), catalog)
    }

    /// Inside the app: the app's engine (through `handle`, so the API's jobs queue behind and
    /// before the app's own) and the app's catalog; nothing is loaded at start, the app has
    /// its model.
    pub fn start_shared(config: ServeConfig, handle: WorkerHandle, catalog: Catalog) -> Result<Self, String> {
        let http = bind(&config)?;
        Self::start_on(config, http, Box::new(queue::Tapped::new(handle)), catalog)
    }

    fn start_on(config: ServeConfig, http: tiny_http::Server, link: Box<dyn queue::Link>, catalog: Catalog) -> Result<Self, String> {
        let addr = http.server_addr().to_ip().ok_or_else(|| "the server has no IP address".to_string())?;
        let http = Arc::new(http);
        let shared = link.shared();
        let default = match &config.model {
            Some(m) => {
                let found = catalog.generators().find(|e| e.label == *m || e.key == *m);
                match found {
                    Some(e) if e.available() => Some(e.label.clone()),
                    Some(e) => return Err(format!("{m} is not on this computer yet: `dcae download {}` fetches it", e.key)),
                    None => {
                        let names: Vec<&str> = catalog.generators().filter(|e| e.available()).map(|e| e.label.as_str()).collect();
                        return Err(format!("no generation model {m:?} here; these are: {}", names.join(", ")));
                    }
                }
            }
            None => catalog.default_generator().and_then(|k| catalog.get(&k).map(|e| e.label.clone())),
        };
        let options = queue::Options { sd_model_checkpoint: default.clone(), live_previews_enable: config.live_previews };
        let queue = Queue::new(catalog, options);
        let dispatcher = {
            let d = queue::Dispatcher::new(queue.clone(), link);
            std::thread::Builder::new().name("serve-dispatch".into()).spawn(move || d.run()).map_err(|e| format!("cannot start the dispatcher thread: {e}"))?
        };
        if let Some(m) = default.filter(|_| !shared) {
            // Loaded now, through the queue like any request; a failure is printed and the
            // first request that needs it reports it again.
            if let Ok((_, rx)) = queue.submit(queue::Work::SetModel(m.clone()), Some("startup-load".into())) {
                std::thread::spawn(move || {
                    if let Ok(Err(e)) = rx.recv() {
                        eprintln!("serve: loading {m} failed: {}", e.detail);
                    }
                });
            }
        }
        let routes = Arc::new(routes::Routes::new(queue.clone(), &config));
        let accept = {
            let http = http.clone();
            std::thread::Builder::new().name("serve-accept".into()).spawn(move || accept_loop(&http, routes)).map_err(|e| format!("cannot start the accept thread: {e}"))?
        };
        Ok(Self { http, queue, addr, accept: Some(accept), dispatcher: Some(dispatcher) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops (the CLI: until the process is killed).
    pub fn wait(mut self) {
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }

    /// Stops accepting, cancels what waits, stops the running job, and ends the engine.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.queue.stop();
        self.http.unblock();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        // The dispatcher ends once the running job has (it was cancelled above); it is not
        // waited for, so closing the app never waits on a long decode.
        self.dispatcher.take();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn bind(config: &ServeConfig) -> Result<tiny_http::Server, String> {
    tiny_http::Server::http((config.host.as_str(), config.port))
        .map_err(|e| format!("cannot listen on {}:{}: {e} (is another server on that port? choose another port)", config.host, config.port))
}

fn accept_loop(http: &tiny_http::Server, routes: Arc<routes::Routes>) {
    let active = Arc::new(AtomicUsize::new(0));
    for request in http.incoming_requests() {
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            routes::respond(request, routes::error_response(&ApiError::new(503, "busy", format!("{MAX_CONNECTIONS} requests are being handled; try again shortly"))));
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (routes, active2) = (routes.clone(), active.clone());
        let spawned = std::thread::Builder::new().name("serve-request".into()).spawn(move || {
            routes.handle(request);
            active2.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            eprintln!("serve: cannot start a request thread: {e}");
        }
    }
}
