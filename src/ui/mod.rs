//! DC-AE Studio, the desktop app: three views (Generate, Reconstruct, Models), a settings window
//! and a status bar, in the style of the egui demo app — small panel structs, the shared state in
//! [`Shared`], and every model computation on the engine thread ([`crate::engine::worker`]).
//!
//! Nothing here may panic: every failure becomes a message in the UI ([`Notices`]).

pub mod files;
pub mod generate;
pub mod helper;
pub mod history;
pub mod models;
pub mod persist;
pub mod preview;
pub mod reconstruct;
pub mod serving;
pub mod settings;
pub mod widgets;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui::{self, Color32, RichText};
use poll_promise::Promise;

use crate::engine::backend::{BackendChoice, BackendInfo};
use crate::engine::worker::api::{self, hub::HubOptions, GeneratorInfo};
use crate::engine::worker::projection::Projection;
use crate::engine::downloads::Downloads;
use crate::engine::worker::{Event, Job, JobEnd, JobError, Worker, WorkerConfig};

pub use history::HistoryItem;
pub use models::{Catalog, ModelEntry, ModelKind};

/// How the app is started; tests build one by hand to point at tests/fixtures on the CPU.
#[derive(Clone, Debug)]
pub struct AppOptions {
    /// A folder holding model folders (or one model folder): scanned for models at start.
    pub model_dir: Option<PathBuf>,
    pub backend: BackendChoice,
    /// Where fitted preview projections are cached (`None`: the user cache folder).
    pub cache_dir: Option<PathBuf>,
    /// Hugging Face cache and network settings (`None`: from the environment, like huggingface_hub).
    pub hub: Option<HubOptions>,
    /// Load a generation model as soon as the engine is ready.
    pub auto_load: bool,
    /// Side of the sample crops used to fit the preview projection, in latent pixels.
    pub fit_latent_side: usize,
    /// The generation model to load at start (a catalog key or label); `None`: the one used
    /// last, else the catalog's default.
    pub generator: Option<String>,
    /// Where settings and the gallery live (`None`: nothing is kept across restarts).
    pub state_dir: Option<PathBuf>,
    /// The settings saved last time, read before the window opens ([`run`]).
    pub saved: Option<persist::Settings>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            model_dir: None,
            backend: BackendChoice::Auto,
            cache_dir: None,
            hub: None,
            auto_load: true,
            fit_latent_side: 8,
            generator: None,
            state_dir: persist::default_state_dir(),
            saved: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    Generate,
    Reconstruct,
    Models,
}

impl Tab {
    fn label(self) -> &'static str {
        match self {
            Tab::Generate => "🎨 Generate",
            Tab::Reconstruct => "🔍 Reconstruct",
            Tab::Models => "📦 Models",
        }
    }
}

/// The generation model's state, for the Generate view.
#[derive(Clone, Debug, PartialEq)]
pub enum GeneratorState {
    /// None chosen (nothing on disk); the Generate view explains what to download.
    Missing,
    Loading(String),
    Ready(GeneratorInfo),
    Failed { name: String, message: String, kind: api::FailureKind },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    /// Something went wrong that did not stop the work (a step preview); stays until dismissed.
    Warning,
    Error,
}

#[derive(Clone, Debug)]
pub struct Notice {
    pub level: Level,
    pub text: String,
    pub at: Instant,
}

/// Messages shown as dismissible cards in the corner; infos fade after a few seconds, errors stay.
#[derive(Default)]
pub struct Notices {
    pub items: Vec<Notice>,
}

impl Notices {
    /// Adds a card, keeping the newest 8; `dedupe`: the same text twice in a row (a repeated
    /// drop, say) is shown once.
    fn push(&mut self, level: Level, text: String, dedupe: bool) {
        if dedupe && self.items.last().is_some_and(|n| n.text == text) {
            return;
        }
        self.items.push(Notice { level, text, at: Instant::now() });
        if self.items.len() > 8 {
            self.items.remove(0);
        }
    }

    pub fn error(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("error: {text}");
        self.push(Level::Error, text, true);
    }

    pub fn warning(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("warning: {text}");
        self.push(Level::Warning, text, true);
    }

    pub fn warnings(&self) -> impl Iterator<Item = &str> {
        self.items.iter().filter(|n| n.level == Level::Warning).map(|n| n.text.as_str())
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.push(Level::Info, text.into(), false);
    }

    pub fn errors(&self) -> impl Iterator<Item = &str> {
        self.items.iter().filter(|n| n.level == Level::Error).map(|n| n.text.as_str())
    }
}

/// What waits for a model scan to finish.
#[derive(Clone, Debug, PartialEq)]
pub enum AfterScan {
    Nothing,
    /// The app just started: load the default generation model, pick autoencoders.
    Startup,
    /// The user added this folder: say what it holds.
    FolderAdded(PathBuf),
    /// This repo finished downloading: use it if nothing is loaded.
    Downloaded(String),
}

/// State shared by the views.
pub struct Shared {
    pub worker: Worker,
    /// Downloads live here, not in the worker, so a backend switch does not cut them off.
    pub downloads: Downloads,
    /// Files being read and decoded off the UI thread.
    pub files: files::FileLoader,
    /// The process's memory and what the system has, read off the UI thread.
    pub memory: crate::engine::memory::Watch,
    pub options: AppOptions,
    pub backend: Option<BackendInfo>,
    /// Set when the requested backend could not start and the CPU took over.
    pub backend_note: Option<String>,
    /// GPU memory (in use, reserved) as the backend reports it.
    pub device_memory: Option<(u64, u64)>,
    pub generator: GeneratorState,
    /// Catalog key of the generation model in use.
    pub generator_key: Option<String>,
    pub projection: Option<Projection>,
    pub projection_note: Option<String>,
    pub catalog: Catalog,
    /// The model scan running on a helper thread.
    scan: Option<Promise<Result<Catalog, String>>>,
    rescan_pending: bool,
    after_scan: Vec<AfterScan>,
    pub hub: HubOptions,
    pub notices: Notices,
    /// What the engine says it is doing.
    pub engine_status: String,
    pub history: Vec<HistoryItem>,
    pub preview: preview::PreviewRenderer,
    /// The generator load the UI waits for (its job id and the name it shows); only its end
    /// changes [`Self::generator`], so an older load finishing late changes nothing.
    pending_load: Option<PendingLoad>,
    /// The Settings view's "Clear" of the preview projections, while it runs.
    clear_job: Option<u64>,
    /// The engine holds Reconstruct's autoencoders (up to three, an f128c512 alone several
    /// GB): released when the user leaves that view.
    pub autoencoders_held: bool,
    /// The release, while it runs.
    pub unload_job: Option<u64>,
    /// A view asked to switch tabs.
    pub goto: Option<Tab>,
    /// The Models view asked the Reconstruct view to select this autoencoder.
    pub select_autoencoder: Option<String>,
    /// A view handed a picture to the Generate view's image-to-image source.
    pub img2img_source: Option<(String, image::RgbImage)>,
    /// A view asked for a download: the repo, and a damaged file of it to delete first.
    pub download_request: Option<(String, Option<PathBuf>)>,
    /// The gallery's newest images, being read at start.
    gallery_load: Option<Promise<Result<Vec<(PathBuf, api::ImageParams, image::RgbImage)>, String>>>,
    /// Gallery writes in flight (each finished image is kept on disk as soon as it arrives).
    gallery_saves: Vec<(u64, std::thread::JoinHandle<Result<persist::gallery::Stored, String>>)>,
    /// The user has been told this session that the gallery deletes its oldest images.
    eviction_told: bool,
    /// History items removed while their gallery write still ran: their files go when it ends.
    forgotten: std::collections::HashSet<u64>,
    /// The local API on this app's engine (Settings → Serve the local API).
    pub api: serving::Serving,
    ctx: egui::Context,
}

impl Shared {
    pub fn egui_ctx(&self) -> egui::Context {
        self.ctx.clone()
    }

    /// A fresh id, from the worker's counter: job ids and history ids never meet.
    pub fn next_id(&mut self) -> u64 {
        self.worker.next_id()
    }

    /// Deletes the cached preview projections (Settings); the end says whether it worked.
    pub fn clear_projections(&mut self) {
        let id = self.next_id();
        self.clear_job = Some(id);
        self.worker.send(Job::ClearProjections { id });
    }

    /// Loads the catalog entry `key` as the generation model.
    pub fn use_generator(&mut self, key: &str) {
        let Some(entry) = self.catalog.get(key) else {
            self.notices.error(format!("unknown model {key}"));
            return;
        };
        let Some(source) = entry.generator_source() else {
            let why = if entry.kind.is_generator() { "is not on this computer yet; download it in the Models tab" } else { "is an autoencoder, not a generation model" };
            self.notices.error(format!("{} {why}", entry.label));
            return;
        };
        self.generator_key = Some(key.to_string());
        let label = entry.label.clone();
        self.generator = GeneratorState::Loading(label.clone());
        self.projection = None;
        self.projection_note = None;
        let id = self.next_id();
        let cancel = crate::engine::worker::cancel_token();
        self.pending_load = Some(PendingLoad { id, name: label, cancel: cancel.clone() });
        self.worker.send(Job::LoadGenerator { id, source, cancel });
    }

    /// Stops the load the UI waits for at its next tensor; it ends with nothing loaded.
    pub fn cancel_load(&mut self) {
        if let Some(p) = &self.pending_load {
            p.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The generation model being loaded, if any (its job id).
    pub fn loading_job(&self) -> Option<u64> {
        self.pending_load.as_ref().map(|p| p.id)
    }

    /// Scans the model folders and the Hugging Face cache again, on a helper thread (a big cache
    /// or a network drive must not freeze the window); `after` runs once the new catalog is in.
    /// A scan asked for while one runs starts when it ends, so the last one wins.
    pub fn rescan_then(&mut self, after: AfterScan) {
        self.after_scan.push(after);
        if self.scan.is_some() {
            self.rescan_pending = true;
            return;
        }
        let (dirs, hub) = (self.catalog.local_dirs.clone(), self.hub.clone());
        let repaint = self.ctx.clone();
        // A panic in the scan arrives as an error (`helper`); the UI looks every 30 ms while
        // a scan runs, so it is seen without the repaint.
        self.scan = Some(helper::spawn("model-scan", move || {
            let c = Catalog::scan(&dirs, &hub);
            repaint.request_repaint();
            c
        }));
    }

    pub fn rescan(&mut self) {
        self.rescan_then(AfterScan::Nothing);
    }

    /// The gallery folder, when the app keeps one.
    pub fn gallery_dir(&self) -> Option<PathBuf> {
        self.options.state_dir.as_deref().map(persist::gallery::folder)
    }

    /// Keeps a finished result in the gallery, written on a helper thread.
    pub fn keep_in_gallery(&mut self, id: u64, images: Vec<image::RgbImage>, params: api::ImageParams) {
        let Some(dir) = self.gallery_dir() else { return };
        let spawned = std::thread::Builder::new().name("gallery".into()).spawn(move || persist::gallery::store_counting(&dir, id, &images, &params));
        match spawned {
            Ok(h) => self.gallery_saves.push((id, h)),
            Err(e) => self.notices.warning(format!("the result could not be kept in the gallery: {e}")),
        }
    }

    fn poll_gallery(&mut self) {
        let mut i = 0;
        while i < self.gallery_saves.len() {
            if !self.gallery_saves[i].1.is_finished() {
                i += 1;
                continue;
            }
            let (id, h) = self.gallery_saves.remove(i);
            match h.join() {
                Ok(Ok(stored)) => {
                    self.tell_eviction(stored.evicted);
                    if self.forgotten.remove(&id) {
                        remove_files(&stored.paths, &mut self.notices);
                    } else if let Some(item) = self.history.iter_mut().find(|h| h.id == id) {
                        item.gallery = stored.paths;
                    }
                }
                Ok(Err(e)) => self.notices.warning(format!("the result could not be kept in the gallery: {e}")),
                Err(_) => self.notices.warning("the gallery writer crashed; the result is still in the history"),
            }
        }
    }

    /// The gallery is the user's folder: the first time this session that keeping a result
    /// deleted older ones, say so and where (once, so a full gallery does not repeat it at
    /// every result).
    fn tell_eviction(&mut self, evicted: usize) {
        if evicted == 0 || self.eviction_told {
            return;
        }
        self.eviction_told = true;
        let folder = self.gallery_dir().map(|d| d.display().to_string()).unwrap_or_default();
        self.notices.info(format!(
            "The gallery keeps the newest {} images (at most {} GiB): {evicted} older one{} deleted from {folder}. Save a result elsewhere to keep it for good; files you put there yourself are never touched.",
            persist::gallery::MAX_ITEMS,
            persist::gallery::MAX_BYTES >> 30,
            if evicted == 1 { " was" } else { "s were" },
        ));
    }

    /// Removes a history item, and its copies in the gallery (now, or when their write ends),
    /// so it does not come back at the next start. Files the user opened are not touched.
    pub fn forget(&mut self, id: u64) {
        let Some(at) = self.history.iter().position(|h| h.id == id) else { return };
        let item = self.history.remove(at);
        if self.gallery_saves.iter().any(|(job, _)| *job == id) {
            self.forgotten.insert(id);
        }
        remove_files(&item.gallery, &mut self.notices);
    }

    /// Turns the local API on (on this app's engine and catalog) or off; a failure to start
    /// (the port taken) is a notice and leaves it off.
    pub fn set_serving(&mut self, on: bool) {
        self.api.enabled = on;
        if !on {
            self.api.stop();
            return;
        }
        let model = match &self.generator {
            GeneratorState::Ready(info) => Some(info.name.clone()),
            _ => self.generator_key.as_ref().and_then(|k| self.catalog.get(k)).map(|e| e.label.clone()),
        };
        let handle = self.worker.handle();
        if let Err(e) = self.api.start(handle, &self.catalog, &self.hub, &self.worker.config, model) {
            self.notices.error(format!("The local API could not start: {e}"));
        }
    }

    /// Gallery writes still running (tests wait for them).
    pub fn gallery_busy(&self) -> bool {
        !self.gallery_saves.is_empty() || self.gallery_load.is_some()
    }

    /// A scan is running.
    pub fn scanning(&self) -> bool {
        self.scan.is_some()
    }

    /// The finished scan's catalog is put in place; returns what was waiting for it.
    fn poll_scan(&mut self) -> Vec<AfterScan> {
        let Some(p) = &self.scan else { return Vec::new() };
        let Some(result) = p.ready() else { return Vec::new() };
        // A scan that failed keeps the catalog there was; what waited for it still runs.
        let mut catalog = match result {
            Ok(c) => c.clone(),
            Err(e) => {
                self.notices.error(format!("The model folders could not be scanned ({e}); the model list may be out of date. Rescan in the Models tab."));
                self.catalog.clone()
            }
        };
        // Folders added while it ran are kept.
        for d in &self.catalog.local_dirs {
            if !catalog.local_dirs.contains(d) {
                catalog.local_dirs.push(d.clone());
            }
        }
        self.catalog = catalog;
        self.scan = None;
        if std::mem::take(&mut self.rescan_pending) {
            // What waits runs after the newer scan, which sees everything the user did.
            self.rescan_then(AfterScan::Nothing);
            return Vec::new();
        }
        std::mem::take(&mut self.after_scan)
    }
}

/// The generator load the UI waits for.
struct PendingLoad {
    id: u64,
    /// The name it shows.
    name: String,
    cancel: crate::engine::worker::CancelToken,
}

pub struct StudioApp {
    pub shared: Shared,
    /// The settings as last written (saving happens when they differ).
    last_saved: Option<persist::Settings>,
    last_save_check: Instant,
    pub tab: Tab,
    pub generate: generate::GeneratePanel,
    pub reconstruct: reconstruct::ReconstructPanel,
    pub models: models::ModelsPanel,
    pub settings: settings::SettingsWindow,
    ctx: egui::Context,
    /// Errors the display's GPU reported (see [`Self::new`]), shown as notices.
    display_errors: Arc<std::sync::Mutex<Vec<String>>>,
}

impl StudioApp {
    /// The app as eframe creates it (the wgpu render state, when present, runs the previews).
    pub fn new(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        #[cfg(feature = "wgpu")]
        let preview = preview::PreviewRenderer::new(cc.wgpu_render_state.as_ref());
        #[cfg(not(feature = "wgpu"))]
        let preview = preview::PreviewRenderer::new();
        #[allow(unused_mut)]
        let mut app = Self::with_context(&cc.egui_ctx, options, preview);
        // wgpu's default handler panics on any error it was not asked to capture (a driver
        // fault, a texture over the adapter's limits): the app would close and lose the
        // session. Errors become notices instead.
        #[cfg(feature = "wgpu")]
        if let Some(rs) = cc.wgpu_render_state.as_ref() {
            let errors = app.display_errors.clone();
            let ctx = cc.egui_ctx.clone();
            rs.device.on_uncaptured_error(std::sync::Arc::new(move |e: eframe::wgpu::Error| {
                if let Ok(mut v) = errors.lock() {
                    if v.len() < 8 {
                        v.push(e.to_string().lines().next().unwrap_or("unknown").to_string());
                    }
                }
                ctx.request_repaint();
            }));
        }
        app
    }

    /// The app on a bare egui context (CPU previews).
    pub fn with_context(ctx: &egui::Context, options: AppOptions, preview: preview::PreviewRenderer) -> Self {
        let mut options = options;
        let saved = options.saved.take().unwrap_or_default();
        // A backend given at start wins; else the one chosen last time.
        if options.backend == BackendChoice::Auto {
            options.backend = saved.backend.unwrap_or(BackendChoice::Auto);
        }
        if options.generator.is_none() {
            options.generator = saved.generator.clone();
        }
        let mut hub = options.hub.clone().unwrap_or_else(HubOptions::from_env);
        if saved.offline == Some(true) {
            hub.offline = true;
        }
        let config = WorkerConfig {
            backend: options.backend,
            cache_dir: options.cache_dir.clone().or_else(crate::engine::worker::default_cache_dir),
            fit_latent_side: options.fit_latent_side,
            text_encoder: saved.text_encoder.unwrap_or_default(),
            autoencoder: saved.autoencoder.unwrap_or_default(),
        };
        let repaint = ctx.clone();
        let worker = Worker::spawn(config, Arc::new(move || repaint.request_repaint()));
        let repaint = ctx.clone();
        let downloads = Downloads::new(Arc::new(move || repaint.request_repaint()));
        let mut local_dirs: Vec<PathBuf> = options.model_dir.iter().cloned().collect();
        for d in &saved.local_dirs {
            if !local_dirs.contains(d) {
                local_dirs.push(d.clone());
            }
        }
        // Empty until the first scan (off this thread) is in.
        let catalog = Catalog { entries: Vec::new(), local_dirs };
        let mut notices = Notices::default();
        if let Some(dir) = &options.model_dir {
            if !dir.is_dir() {
                notices.error(format!("the model folder {} does not exist", dir.display()));
            }
        }
        let shared = Shared {
            worker,
            downloads,
            files: files::FileLoader::default(),
            memory: crate::engine::memory::Watch::start(),
            options,
            backend: None,
            backend_note: None,
            device_memory: None,
            generator: GeneratorState::Missing,
            generator_key: None,
            projection: None,
            projection_note: None,
            catalog,
            scan: None,
            rescan_pending: false,
            after_scan: Vec::new(),
            hub,
            notices,
            engine_status: String::new(),
            history: Vec::new(),
            preview,
            pending_load: None,
            clear_job: None,
            autoencoders_held: false,
            unload_job: None,
            goto: None,
            select_autoencoder: None,
            download_request: None,
            img2img_source: None,
            gallery_load: None,
            gallery_saves: Vec::new(),
            eviction_told: false,
            forgotten: Default::default(),
            api: serving::Serving::new(saved.api.serve, saved.api.port),
            ctx: ctx.clone(),
        };
        let mut app = Self {
            shared,
            last_saved: None,
            last_save_check: Instant::now(),
            tab: Tab::Generate,
            generate: generate::GeneratePanel::default(),
            reconstruct: reconstruct::ReconstructPanel::default(),
            models: models::ModelsPanel::default(),
            settings: settings::SettingsWindow::default(),
            ctx: ctx.clone(),
            display_errors: Default::default(),
        };
        app.settings.backend = app.shared.options.backend;
        app.settings.text_encoder = app.shared.worker.config.text_encoder;
        app.settings.autoencoder = app.shared.worker.config.autoencoder;
        app.generate.restore_settings(&saved);
        app.last_saved = Some(app.settings_snapshot());
        app.shared.rescan_then(AfterScan::Startup);
        if let Some(dir) = app.shared.gallery_dir() {
            app.shared.gallery_load = Some(helper::spawn("gallery-open", move || reopen_gallery(&dir)));
        }
        app
    }

    /// What would be saved now.
    pub fn settings_snapshot(&self) -> persist::Settings {
        let s = &self.shared;
        let model_dir = s.options.model_dir.as_ref();
        persist::Settings {
            version: persist::SETTINGS_VERSION,
            backend: Some(s.options.backend),
            local_dirs: s.catalog.local_dirs.iter().filter(|d| Some(*d) != model_dir).cloned().collect(),
            // Before the start's scan has loaded anything, the model chosen last time stays.
            generator: s.generator_key.clone().or_else(|| s.options.generator.clone()),
            offline: Some(s.hub.offline),
            output_dir: self.generate.output_dir.clone(),
            generate: self.generate.settings(),
            text_encoder: Some(s.worker.config.text_encoder),
            autoencoder: Some(s.worker.config.autoencoder),
            api: persist::ApiSettings { serve: s.api.enabled, port: s.api.port },
        }
    }

    /// Saves the settings now if they changed, and waits for the write (closing, tests).
    pub fn save_settings_now(&mut self) {
        self.save_settings_if_changed(true);
    }

    /// Saves the settings when they changed since the last save (on a helper thread; `wait`:
    /// on this one, as when closing). The periodic save waits for a running model scan, whose
    /// folders may still change; the closing one does not, or quitting during a scan would lose
    /// every change since the last save.
    fn save_settings_if_changed(&mut self, wait: bool) {
        let Some(dir) = self.shared.options.state_dir.clone() else { return };
        if self.shared.scanning() && !wait {
            return;
        }
        let now = self.settings_snapshot();
        if self.last_saved.as_ref() == Some(&now) {
            return;
        }
        self.last_saved = Some(now.clone());
        let h = std::thread::spawn(move || persist::save_settings(&dir, &now));
        if wait {
            if let Ok(Err(e)) = h.join() {
                eprintln!("warning: {e}");
            }
        }
    }

    fn after_scan(&mut self, what: AfterScan) {
        let s = &mut self.shared;
        s.api.set_catalog(&s.catalog);
        let nothing_loaded = s.generator_key.is_none() || matches!(s.generator, GeneratorState::Missing | GeneratorState::Failed { .. });
        match what {
            AfterScan::Nothing => {}
            AfterScan::Startup => {
                if s.options.auto_load && s.generator_key.is_none() {
                    if let Some(key) = s.catalog.default_generator_or(s.options.generator.as_deref()) {
                        s.use_generator(&key);
                    }
                }
                self.reconstruct.select_defaults(&s.catalog);
                // Serving was on when the app closed: on again, now that the catalog is in.
                if s.api.enabled && s.api.server.is_none() {
                    s.set_serving(true);
                }
            }
            AfterScan::FolderAdded(dir) => self.models.folder_scanned(dir, s),
            AfterScan::Downloaded(repo) => {
                let is_gen = s.catalog.get(&repo).is_some_and(|e| e.kind.is_generator() && e.available());
                if is_gen && nothing_loaded {
                    s.use_generator(&repo);
                }
                self.reconstruct.select_defaults(&s.catalog);
            }
        }
    }

    /// Restarts the engine on another backend (models are reloaded).
    pub fn restart_engine(&mut self, backend: BackendChoice) {
        self.shared.options.backend = backend;
        let config = WorkerConfig {
            backend,
            cache_dir: self.shared.options.cache_dir.clone().or_else(crate::engine::worker::default_cache_dir),
            fit_latent_side: self.shared.options.fit_latent_side,
            text_encoder: self.settings.text_encoder,
            autoencoder: self.settings.autoencoder,
        };
        // Cancelled first, so the old engine ends its job at the next step; the new engine waits
        // for it to end (and free its models) before it loads anything.
        self.generate.abort_run();
        self.reconstruct.abort_run();
        self.shared.worker.restart(config);
        self.shared.backend = None;
        self.shared.backend_note = None;
        if let Some(key) = self.shared.generator_key.clone() {
            self.shared.use_generator(&key);
        }
    }

    fn handle_event(&mut self, ev: Event) {
        let s = &mut self.shared;
        match ev {
            Event::BackendReady(info) => {
                // On the CPU a full decode costs about as much as the whole sampling loop of the
                // real model: intermediate decodes start off there (the user can turn them on).
                if info.kind == "cpu" && !self.generate.decode_every_touched {
                    self.generate.decode_every = 0;
                }
                s.backend = Some(info);
                s.device_memory = None;
            }
            Event::DeviceMemory { in_use, reserved } => s.device_memory = Some((in_use, reserved)),
            Event::BackendFallback { requested, reason } => {
                let msg = format!("The {requested} backend could not start ({reason}); running on the CPU instead.");
                s.notices.error(msg.clone());
                s.backend_note = Some(msg);
            }
            Event::Status(text) => s.engine_status = text,
            Event::Reloading { job, source, cancel } => {
                // The engine reloads the model it had after a restart: followed like a load the
                // UI asked for, unless the UI already waits for another one.
                if s.pending_load.is_none() {
                    s.generator = GeneratorState::Loading(source.name().to_string());
                    s.pending_load = Some(PendingLoad { id: job, name: source.name().to_string(), cancel });
                }
            }
            Event::ProjectionReady { model, projection, fit_secs } => {
                s.projection_note = Some(match fit_secs {
                    Some(t) => format!("fitted for {model} in {t:.1} s ({}; RMSE {:.3})", projection.note, projection.rmse),
                    None => format!("{} (cached; RMSE {:.3})", projection.note, projection.rmse),
                });
                s.projection = Some(projection);
            }
            Event::Progress { .. } | Event::Phase { .. } | Event::PreviewLatent { .. } | Event::PreviewDecoded { .. } => {
                self.generate.on_event(ev, &mut self.shared, &self.ctx)
            }
            Event::ReconstructInput { .. } | Event::Reconstructed { .. } => self.reconstruct.on_event(ev, &self.ctx),
            Event::Ended { job, end } => self.on_ended(job, end),
            Event::DownloadProgress { .. } | Event::DownloadFinished { .. } => self.models.on_event(ev, &mut self.shared),
            Event::Error { message } => self.shared.notices.error(message),
            // The run goes on: only say so.
            Event::Warning { job, message } => {
                if let Some(job) = job {
                    self.reconstruct.on_warning(job, &message);
                }
                self.shared.notices.warning(message)
            }
            Event::EngineStopped => {}
            Event::Restarted { reason } => {
                self.generate.abort_run();
                self.reconstruct.abort_run();
                self.shared.notices.info(format!("The engine was restarted after an internal error ({reason})."));
                if let GeneratorState::Ready(info) = &self.shared.generator {
                    self.shared.generator = GeneratorState::Loading(info.name.clone());
                }
            }
        }
    }

    /// A job's one end: the load the UI waits for, the projection clear, or a view's run.
    fn on_ended(&mut self, job: u64, end: JobEnd) {
        let s = &mut self.shared;
        if s.api.owns(job) {
            // The local API's job (its client hears how it ended). A model it loaded is what
            // the shared engine holds now: the app shows it, so its own next run is not made
            // for a model that is gone. A load the app waits for itself comes after and wins.
            if let JobEnd::Loaded { info, .. } = end {
                let same = matches!(&s.generator, GeneratorState::Ready(i) if i.name == info.name);
                if !same && s.pending_load.is_none() {
                    s.notices.info(format!("The local API loaded {}", info.name));
                    s.generator_key = s.catalog.generators().find(|e| e.label == info.name).map(|e| e.key.clone()).or(s.generator_key.take());
                    self.generate.on_generator(&info);
                    s.generator = GeneratorState::Ready(info);
                }
            }
            return;
        }
        if let Some(PendingLoad { name, .. }) = s.pending_load.take_if(|p| p.id == job) {
            match end {
                JobEnd::Loaded { info, secs } => {
                    if secs > 0.5 {
                        s.notices.info(format!("Loaded {} in {secs:.1} s", info.name));
                    }
                    self.generate.on_generator(&info);
                    s.generator = GeneratorState::Ready(info);
                }
                JobEnd::Failed(JobError { message, kind }) => {
                    s.notices.error(format!("Could not load {name}: {message}"));
                    s.generator = GeneratorState::Failed { name, message, kind };
                }
                // Cancelled by the user: the model it replaced was freed first, so none is loaded,
                // and the settings go on naming the model chosen before.
                JobEnd::Cancelled => {
                    s.notices.info(format!("Loading {name} was cancelled; no generation model is loaded"));
                    s.generator = GeneratorState::Missing;
                    s.generator_key = None;
                }
                // The load itself crashed: nothing is loaded now (the engine does not bring
                // back the model this load replaced), and the picker still names this one.
                JobEnd::Crashed { reason } => {
                    s.notices.error(format!("Could not load {name}: {reason}"));
                    s.generator = GeneratorState::Failed { name, message: reason, kind: api::FailureKind::Other };
                }
                other => {
                    let message = format!("the load ended unexpectedly ({other:?})");
                    s.generator = GeneratorState::Failed { name, message, kind: api::FailureKind::Other };
                }
            }
            return;
        }
        if s.unload_job.take_if(|id| *id == job).is_some() {
            if let JobEnd::Failed(JobError { message, .. }) | JobEnd::Crashed { reason: message } = end {
                s.notices.warning(format!("the reconstruction autoencoders could not be released: {message}"));
            }
            return;
        }
        if s.clear_job.take_if(|id| *id == job).is_some() {
            match end {
                JobEnd::Done => s.notices.info("Preview projections cleared; they are refitted on the next generation"),
                JobEnd::Failed(e) => s.notices.error(e.message),
                JobEnd::Crashed { reason } => s.notices.error(reason),
                _ => {}
            }
            return;
        }
        match end {
            JobEnd::Generated(g) => self.generate.on_generated(job, g, &mut self.shared, &self.ctx),
            JobEnd::Cancelled => {
                if !self.generate.on_cancelled(job, &mut self.shared) {
                    self.reconstruct.on_cancelled(job);
                }
            }
            JobEnd::Reconstructed => self.reconstruct.on_finished(job),
            JobEnd::Failed(JobError { message, .. }) | JobEnd::Crashed { reason: message } => {
                self.generate.on_error(job);
                self.reconstruct.on_error(job, &message);
                self.shared.notices.error(message);
            }
            // A load the UI stopped waiting for (another was asked for since), an unload.
            JobEnd::Loaded { .. } | JobEnd::Done => {}
        }
    }

    /// Files dropped on the window are read and decoded off the UI thread ([`files`]); what
    /// comes back goes to the view that can use it ([`Self::handle_opened_files`]).
    fn handle_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        for file in dropped {
            let purpose = files::Purpose::Dropped(self.tab);
            match (file.path, file.bytes) {
                (Some(path), _) => self.shared.files.open_path(path, purpose),
                (None, Some(bytes)) => {
                    let name = if file.name.is_empty() { "dropped file".to_string() } else { file.name.clone() };
                    self.shared.files.open_bytes(name, bytes, purpose);
                }
                (None, None) => self.shared.notices.error("the dropped item has neither a path nor contents"),
            }
        }
    }

    fn handle_opened_files(&mut self, ctx: &egui::Context) {
        use files::{Opened, Purpose};
        for (name, purpose, result) in self.shared.files.ready() {
            let opened = match result {
                Ok(o) => o,
                Err(why) if purpose == Purpose::Reconstruct || purpose == Purpose::Dropped(Tab::Reconstruct) => {
                    self.reconstruct.open_failed(&name, &why, &mut self.shared);
                    continue;
                }
                Err(why) => {
                    self.shared.notices.error(format!("{name} {why}"));
                    continue;
                }
            };
            match (opened, purpose) {
                // A picture dropped on Generate (or picked for it) is an image-to-image source.
                (Opened::Image(image), Purpose::Dropped(Tab::Generate) | Purpose::Img2ImgSource)
                | (Opened::Params { image: Some(image), .. }, Purpose::Img2ImgSource) => {
                    self.generate.set_source(name, image, ctx);
                    self.tab = Tab::Generate;
                }
                (Opened::Params { image: None, .. }, Purpose::Img2ImgSource) => {
                    self.shared.notices.error(format!("{name}: its picture cannot be decoded"));
                }
                (Opened::Folder(dir), Purpose::Dropped(_)) => {
                    self.models.add_folder(dir, &mut self.shared);
                    self.tab = Tab::Models;
                }
                (Opened::Folder(_), _) => self.shared.notices.error(format!("{name} is a folder, not a file")),
                // A PNG of ours restores its settings, unless it was meant for reconstruction.
                (Opened::Params { params, image }, Purpose::Dropped(Tab::Generate | Tab::Models) | Purpose::RestoreSettings) => {
                    self.tab = Tab::Generate;
                    self.generate.open_params(&name, params, image, &mut self.shared, ctx);
                }
                (Opened::Params { image: Some(image), .. }, _) | (Opened::Image(image), Purpose::Dropped(_) | Purpose::Reconstruct) => {
                    // Not a PNG of ours (or dropped on Reconstruct): a picture to reconstruct.
                    self.tab = Tab::Reconstruct;
                    self.reconstruct.set_input(name, image, &mut self.shared);
                }
                (Opened::Params { image: None, .. }, _) => {
                    self.reconstruct.open_failed(&name, "carries parameters but its picture cannot be decoded", &mut self.shared)
                }
                (Opened::Image(_), Purpose::RestoreSettings) => {
                    self.shared.notices.error(format!("{name} carries no DC-AE Studio parameters"))
                }
            }
        }
    }

    fn top_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading(RichText::new("DC-AE Studio").strong());
            ui.add_space(12.0);
            for tab in [Tab::Generate, Tab::Reconstruct, Tab::Models] {
                if ui.selectable_label(self.tab == tab, tab.label()).clicked() {
                    self.tab = tab;
                }
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if ui.button("⚙ Settings").clicked() {
                    self.settings.open = !self.settings.open;
                }
                egui::widgets::global_theme_preference_switch(ui);
            });
        });
    }

    fn status_bar(&mut self, ui: &mut egui::Ui) {
        let s = &self.shared;
        let mut cancel_load = false;
        ui.horizontal(|ui| {
            match &s.backend {
                Some(info) => {
                    let color = if info.kind == "cpu" { Color32::from_rgb(210, 170, 60) } else { Color32::from_rgb(90, 190, 90) };
                    let (rect, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
                    ui.painter().circle_filled(rect.center(), 4.5, color);
                    let kind = info.kind.to_uppercase();
                    let text = if info.name.to_uppercase().starts_with(&kind) { info.name.clone() } else { format!("{kind} · {}", info.name) };
                    // Why the preferred backends were passed over (no NVIDIA driver, only a
                    // software adapter): marked after the name, spelled out in the hover text.
                    let text = if info.skipped.is_empty() { text } else { format!("{text} ℹ") };
                    let mut hover = String::from(
                        "The backend running the models (chosen at start: CUDA, else a hardware GPU via wgpu, else the CPU). Change it in ⚙ Settings or with --backend.",
                    );
                    hover.push_str("\n\nDevice: ");
                    hover.push_str(&info.limits.describe());
                    if !info.skipped.is_empty() {
                        hover.push_str("\n\nSkipped:");
                        for reason in &info.skipped {
                            hover.push_str("\n• ");
                            hover.push_str(reason);
                        }
                    }
                    ui.label(text).on_hover_text(hover);
                }
                None => {
                    ui.spinner();
                    ui.label("starting the engine…");
                }
            }
            if let Some((in_use, reserved)) = s.device_memory {
                ui.separator();
                ui.label(format!("GPU {}", widgets::bytes(in_use)))
                    .on_hover_text(format!("GPU memory in use by the models and buffers ({} reserved by the allocator)", widgets::bytes(reserved)));
            }
            if let Some(mem) = s.memory.rss() {
                ui.separator();
                ui.label(format!("RAM {}", widgets::bytes(mem))).on_hover_text("Memory used by this process (models, images, caches)");
            }
            ui.separator();
            match &s.generator {
                GeneratorState::Ready(info) => ui.label(format!("model: {}", info.name)),
                GeneratorState::Loading(name) => {
                    let r = ui.label(format!("loading {name}…"));
                    if s.pending_load.is_some() && ui.small_button("✖ Cancel load").on_hover_text("Stop loading this model; nothing stays half-loaded").clicked() {
                        cancel_load = true;
                    }
                    r
                }
                GeneratorState::Missing => ui.label("no generation model"),
                GeneratorState::Failed { name, .. } => ui.label(RichText::new(format!("{name} failed to load")).color(ui.visuals().error_fg_color)),
            };
            if s.hub.offline {
                ui.separator();
                ui.label("offline").on_hover_text("Offline mode: the app never contacts the Hugging Face hub");
            }
            if !s.engine_status.is_empty() {
                ui.separator();
                ui.spinner();
                ui.label(&s.engine_status);
            }
        });
        if cancel_load {
            self.shared.cancel_load();
        }
    }

    fn notices_overlay(&mut self, ctx: &egui::Context) {
        let now = Instant::now();
        self.shared.notices.items.retain(|n| n.level != Level::Info || now.duration_since(n.at) < Duration::from_secs(6));
        if self.shared.notices.items.is_empty() {
            return;
        }
        let mut dismiss = None;
        egui::Area::new(egui::Id::new("notices"))
            .anchor(egui::Align2::RIGHT_BOTTOM, [-12.0, -36.0])
            .order(egui::Order::Foreground)
            .show(ctx, |ui| {
                ui.set_max_width(420.0);
                for (i, n) in self.shared.notices.items.iter().enumerate() {
                    let (fill, icon) = match n.level {
                        Level::Error => (Color32::from_rgb(90, 30, 30), "⚠"),
                        Level::Warning => (Color32::from_rgb(95, 70, 20), "⚠"),
                        Level::Info => (Color32::from_rgb(30, 60, 90), "ℹ"),
                    };
                    egui::Frame::popup(ui.style()).fill(fill).show(ui, |ui| {
                        ui.horizontal(|ui| {
                            ui.label(RichText::new(icon).color(Color32::WHITE));
                            ui.add(egui::Label::new(RichText::new(&n.text).color(Color32::WHITE)).wrap());
                            if ui.small_button("✖").on_hover_text("Dismiss").clicked() {
                                dismiss = Some(i);
                            }
                        });
                    });
                }
            });
        if let Some(i) = dismiss {
            self.shared.notices.items.remove(i);
        }
        if self.shared.notices.items.iter().any(|n| n.level == Level::Info) {
            ctx.request_repaint_after(Duration::from_millis(500));
        }
    }

    fn drop_overlay(&self, ctx: &egui::Context) {
        let hovering = ctx.input(|i| !i.raw.hovered_files.is_empty());
        if !hovering {
            return;
        }
        let text = match self.tab {
            Tab::Reconstruct => "Drop an image to reconstruct it",
            Tab::Generate => "Drop a PNG saved by DC-AE Studio to restore its settings, or any picture to start image-to-image from it",
            Tab::Models => "Drop a model folder to add it",
        };
        let painter = ctx.layer_painter(egui::LayerId::new(egui::Order::Foreground, egui::Id::new("drop")));
        let rect = ctx.content_rect();
        painter.rect_filled(rect, 0.0, Color32::from_black_alpha(160));
        painter.text(rect.center(), egui::Align2::CENTER_CENTER, text, egui::FontId::proportional(24.0), Color32::WHITE);
    }
}

impl eframe::App for StudioApp {
    /// Closing the window stops a running job at its next step instead of letting it finish.
    fn on_exit(&mut self) {
        // The API first: its waiting clients are answered before the engine goes.
        self.shared.api.stop();
        self.generate.abort_run();
        self.reconstruct.abort_run();
        self.save_settings_if_changed(true);
        // A Quick save pressed just before closing is written, not cut off with the process.
        self.generate.finish_saves(&mut self.shared);
        // Results still being written to the gallery are finished, not cut off.
        for (id, h) in self.shared.gallery_saves.drain(..) {
            if let (Ok(Ok(stored)), true) = (h.join(), self.shared.forgotten.contains(&id)) {
                remove_files(&stored.paths, &mut self.shared.notices);
            }
        }
    }

    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        for ev in self.shared.worker.poll() {
            self.handle_event(ev);
        }
        for ev in self.shared.downloads.poll() {
            self.handle_event(ev);
        }
        for after in self.shared.poll_scan() {
            self.after_scan(after);
        }
        self.shared.poll_gallery();
        if let Some(p) = &self.shared.gallery_load {
            if let Some(result) = p.ready() {
                let result = result.clone();
                self.shared.gallery_load = None;
                match result {
                    Ok(items) => self.generate.add_from_gallery(items, &mut self.shared, ctx),
                    // The files stay where they are; only the history strip starts empty.
                    Err(e) => self.shared.notices.warning(format!("The gallery could not be reopened ({e}); its files are untouched in {}", self.shared.gallery_dir().map(|d| d.display().to_string()).unwrap_or_default())),
                }
            }
        }
        if self.last_save_check.elapsed() > Duration::from_secs(2) {
            self.last_save_check = Instant::now();
            self.save_settings_if_changed(false);
        }
        self.handle_dropped_files(ctx);
        self.handle_opened_files(ctx);
        if let Some((name, image)) = self.shared.img2img_source.take() {
            self.generate.set_source(name, image, ctx);
            self.tab = Tab::Generate;
        }
        if let Some((repo, damaged)) = self.shared.download_request.take() {
            self.models.start_download_replacing(&repo, damaged, &mut self.shared);
        }
        self.models.poll(&mut self.shared);
        self.reconstruct.poll(&mut self.shared, ctx);
        self.generate.poll(&mut self.shared);
        if let Some(tab) = self.shared.goto.take() {
            self.tab = tab;
        }
        // Leaving Reconstruct releases its autoencoders (they load again on its next run).
        if self.tab != Tab::Reconstruct && self.shared.autoencoders_held && !self.reconstruct.is_running() {
            let id = self.shared.next_id();
            self.shared.autoencoders_held = false;
            self.shared.unload_job = Some(id);
            self.shared.worker.send(Job::UnloadAutoencoders { id });
        }
        if self.shared.files.busy() || self.generate.saving() || self.shared.scanning() || self.shared.gallery_busy() {
            // Helper threads do not wake the UI; look again soon.
            ctx.request_repaint_after(Duration::from_millis(30));
        }
        if self.models.downloading() || self.generate.is_running() || self.reconstruct.is_running() {
            // Keep the clock in progress texts moving even between events.
            ctx.request_repaint_after(Duration::from_millis(250));
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        egui::Panel::top("top_bar").show(ui, |ui| self.top_bar(ui));
        egui::Panel::bottom("status_bar").show(ui, |ui| self.status_bar(ui));
        self.shared.api.strip(&ctx, ui);
        match self.tab {
            Tab::Generate => self.generate.ui(ui, &mut self.shared),
            Tab::Reconstruct => self.reconstruct.ui(ui, &mut self.shared),
            Tab::Models => self.models.ui(ui, &mut self.shared),
        }
        if let Some(backend) = self.settings.ui(&ctx, &mut self.shared) {
            self.restart_engine(backend);
        }
        let errors: Vec<String> = self.display_errors.lock().map(|mut v| v.drain(..).collect()).unwrap_or_default();
        for e in errors {
            self.shared.notices.error(format!("The display's GPU reported an error ({e}); the app goes on, but a picture may not show."));
        }
        self.notices_overlay(&ctx);
        self.drop_overlay(&ctx);
    }
}

/// Deletes gallery files; one that will not go is named (it would come back at the next start).
fn remove_files(paths: &[PathBuf], notices: &mut Notices) {
    for p in paths {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => notices.warning(format!("{} could not be deleted from the gallery ({e}); it will be back in the history at the next start", p.display())),
        }
    }
}

/// The gallery's newest images with their parameters (files that do not read are skipped:
/// the gallery is a convenience, the files stay for the user).
fn reopen_gallery(dir: &std::path::Path) -> Vec<(PathBuf, api::ImageParams, image::RgbImage)> {
    let mut out = Vec::new();
    for (path, _, _) in persist::gallery::list(dir).into_iter().take(persist::gallery::REOPEN) {
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let (Ok(Some(params)), Ok(img)) = (api::read_png_params(&bytes), api::load_image_bytes(&bytes)) else { continue };
        out.push((path, params, img));
    }
    // Oldest first, like the history.
    out.reverse();
    out
}

/// Starts the app window (the `dcae-studio` binary's main). The saved settings are read here,
/// before the window and its UI thread exist.
pub fn run(mut options: AppOptions) -> eframe::Result {
    if let Some(dir) = &options.state_dir {
        match persist::load_settings(dir) {
            Ok(s) => options.saved = s,
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("DC-AE Studio")
            .with_inner_size([1280.0, 820.0])
            .with_min_inner_size([800.0, 560.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native("DC-AE Studio", native, Box::new(move |cc| Ok(Box::new(StudioApp::new(cc, options)))))
}
