//! DC-AE Studio, the desktop app: three views (Generate, Reconstruct, Models), a settings window
//! and a status bar, in the style of the egui demo app — small panel structs, the shared state in
//! [`Shared`], and every model computation on the engine thread ([`crate::engine::worker`]).
//!
//! Nothing here may panic: every failure becomes a message in the UI ([`Notices`]).

pub mod files;
pub mod generate;
pub mod history;
pub mod models;
pub mod preview;
pub mod reconstruct;
pub mod settings;
pub mod widgets;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui::{self, Color32, RichText};

use crate::engine::backend::{BackendChoice, BackendInfo};
use crate::engine::worker::api::{hub::HubOptions, GeneratorInfo};
use crate::engine::worker::projection::Projection;
use crate::engine::downloads::Downloads;
use crate::engine::worker::{Event, Job, Worker, WorkerConfig};

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
}

impl Default for AppOptions {
    fn default() -> Self {
        Self { model_dir: None, backend: BackendChoice::Auto, cache_dir: None, hub: None, auto_load: true, fit_latent_side: 8 }
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
    Failed { name: String, message: String },
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
    pub fn error(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("error: {text}");
        // The same message twice in a row (a repeated drop, say) is shown once.
        if self.items.last().is_some_and(|n| n.text == text) {
            return;
        }
        self.items.push(Notice { level: Level::Error, text, at: Instant::now() });
        if self.items.len() > 8 {
            self.items.remove(0);
        }
    }

    pub fn warning(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("warning: {text}");
        if self.items.last().is_some_and(|n| n.text == text) {
            return;
        }
        self.items.push(Notice { level: Level::Warning, text, at: Instant::now() });
        if self.items.len() > 8 {
            self.items.remove(0);
        }
    }

    pub fn warnings(&self) -> impl Iterator<Item = &str> {
        self.items.iter().filter(|n| n.level == Level::Warning).map(|n| n.text.as_str())
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.items.push(Notice { level: Level::Info, text: text.into(), at: Instant::now() });
        if self.items.len() > 8 {
            self.items.remove(0);
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &str> {
        self.items.iter().filter(|n| n.level == Level::Error).map(|n| n.text.as_str())
    }
}

/// State shared by the views.
pub struct Shared {
    pub worker: Worker,
    /// Downloads live here, not in the worker, so a backend switch does not cut them off.
    pub downloads: Downloads,
    /// Files being read and decoded off the UI thread.
    pub files: files::FileLoader,
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
    pub hub: HubOptions,
    pub notices: Notices,
    /// What the engine says it is doing.
    pub engine_status: String,
    pub history: Vec<HistoryItem>,
    pub preview: preview::PreviewRenderer,
    next_id: u64,
    /// A view asked to switch tabs.
    pub goto: Option<Tab>,
    /// The Models view asked the Reconstruct view to select this autoencoder.
    pub select_autoencoder: Option<String>,
    ctx: egui::Context,
}

impl Shared {
    pub fn egui_ctx(&self) -> egui::Context {
        self.ctx.clone()
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Loads the catalog entry `key` as the generation model.
    pub fn use_generator(&mut self, key: &str) {
        let Some(entry) = self.catalog.get(key) else {
            self.notices.error(format!("unknown model {key}"));
            return;
        };
        let Some(files) = entry.files.clone() else {
            self.notices.error(format!("{} is not on this computer yet; download it in the Models tab", entry.label));
            return;
        };
        self.generator_key = Some(key.to_string());
        self.generator = GeneratorState::Loading(entry.label.clone());
        self.projection = None;
        self.worker.send(Job::LoadGenerator(files));
    }

    pub fn rescan(&mut self) {
        self.catalog = Catalog::scan(&self.catalog.local_dirs.clone(), &self.hub);
    }
}

pub struct StudioApp {
    pub shared: Shared,
    pub tab: Tab,
    pub generate: generate::GeneratePanel,
    pub reconstruct: reconstruct::ReconstructPanel,
    pub models: models::ModelsPanel,
    pub settings: settings::SettingsWindow,
    ctx: egui::Context,
}

impl StudioApp {
    /// The app as eframe creates it (the wgpu render state, when present, runs the previews).
    pub fn new(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        #[cfg(feature = "wgpu")]
        let preview = preview::PreviewRenderer::new(cc.wgpu_render_state.as_ref());
        #[cfg(not(feature = "wgpu"))]
        let preview = preview::PreviewRenderer::new();
        Self::with_context(&cc.egui_ctx, options, preview)
    }

    /// The app on a bare egui context (CPU previews).
    pub fn with_context(ctx: &egui::Context, options: AppOptions, preview: preview::PreviewRenderer) -> Self {
        let hub = options.hub.clone().unwrap_or_else(HubOptions::from_env);
        let config = WorkerConfig {
            backend: options.backend,
            cache_dir: options.cache_dir.clone().or_else(crate::engine::worker::default_cache_dir),
            fit_latent_side: options.fit_latent_side,
        };
        let repaint = ctx.clone();
        let worker = Worker::spawn(config, Arc::new(move || repaint.request_repaint()));
        let repaint = ctx.clone();
        let downloads = Downloads::new(Arc::new(move || repaint.request_repaint()));
        let local_dirs: Vec<PathBuf> = options.model_dir.iter().cloned().collect();
        let catalog = Catalog::scan(&local_dirs, &hub);
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
            options,
            backend: None,
            backend_note: None,
            device_memory: None,
            generator: GeneratorState::Missing,
            generator_key: None,
            projection: None,
            projection_note: None,
            catalog,
            hub,
            notices,
            engine_status: String::new(),
            history: Vec::new(),
            preview,
            next_id: 0,
            goto: None,
            select_autoencoder: None,
            ctx: ctx.clone(),
        };
        let mut app = Self {
            shared,
            tab: Tab::Generate,
            generate: generate::GeneratePanel::default(),
            reconstruct: reconstruct::ReconstructPanel::default(),
            models: models::ModelsPanel::default(),
            settings: settings::SettingsWindow::default(),
            ctx: ctx.clone(),
        };
        app.settings.backend = app.shared.options.backend;
        if app.shared.options.auto_load {
            if let Some(key) = app.shared.catalog.default_generator() {
                app.shared.use_generator(&key);
            }
        }
        app.reconstruct.select_defaults(&app.shared.catalog);
        app
    }

    /// Restarts the engine on another backend (models are reloaded).
    pub fn restart_engine(&mut self, backend: BackendChoice) {
        self.shared.options.backend = backend;
        let config = WorkerConfig {
            backend,
            cache_dir: self.shared.options.cache_dir.clone().or_else(crate::engine::worker::default_cache_dir),
            fit_latent_side: self.shared.options.fit_latent_side,
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
            Event::GeneratorLoaded { info, secs } => {
                if secs > 0.5 {
                    s.notices.info(format!("Loaded {} in {secs:.1} s", info.name));
                }
                self.generate.on_generator(&info);
                s.generator = GeneratorState::Ready(info);
            }
            Event::GeneratorFailed { name, message } => {
                s.notices.error(format!("Could not load {name}: {message}"));
                s.generator = GeneratorState::Failed { name, message };
            }
            Event::ProjectionsCleared { result } => match result {
                Ok(()) => s.notices.info("Preview projections cleared; they are refitted on the next generation"),
                Err(e) => s.notices.error(e),
            },
            Event::ProjectionReady { model, projection, fit_secs } => {
                s.projection_note = Some(match fit_secs {
                    Some(t) => format!("fitted for {model} in {t:.1} s ({}; RMSE {:.3})", projection.note, projection.rmse),
                    None => format!("{} (cached; RMSE {:.3})", projection.note, projection.rmse),
                });
                s.projection = Some(projection);
            }
            Event::Progress { .. }
            | Event::PreviewLatent { .. }
            | Event::PreviewDecoded { .. }
            | Event::Generated { .. } => self.generate.on_event(ev, &mut self.shared, &self.ctx),
            Event::Cancelled { job } => {
                if !self.generate.on_cancelled(job, &mut self.shared) {
                    self.reconstruct.on_cancelled(job);
                }
            }
            Event::ReconstructInput { .. } | Event::Reconstructed { .. } | Event::ReconstructFinished { .. } => {
                self.reconstruct.on_event(ev, &self.ctx)
            }
            Event::DownloadProgress { .. } | Event::DownloadFinished { .. } => self.models.on_event(ev, &mut self.shared),
            Event::Error { job, message } => {
                if let Some(job) = job {
                    self.generate.on_error(job);
                    self.reconstruct.on_error(job, &message);
                }
                self.shared.notices.error(message);
            }
            // The run goes on: only say so.
            Event::Warning { message, .. } => self.shared.notices.warning(message),
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
        ui.horizontal(|ui| {
            match &s.backend {
                Some(info) => {
                    let color = if info.kind == "cpu" { Color32::from_rgb(210, 170, 60) } else { Color32::from_rgb(90, 190, 90) };
                    let (rect, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
                    ui.painter().circle_filled(rect.center(), 4.5, color);
                    let kind = info.kind.to_uppercase();
                    let text = if info.name.to_uppercase().starts_with(&kind) { info.name.clone() } else { format!("{kind} · {}", info.name) };
                    ui.label(text).on_hover_text(
                        "The backend running the models (chosen at start: CUDA, else a hardware GPU via wgpu, else the CPU). Change it in ⚙ Settings or with --backend.",
                    );
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
            if let Some(mem) = widgets::process_memory() {
                ui.separator();
                ui.label(format!("RAM {}", widgets::bytes(mem))).on_hover_text("Memory used by this process (models, images, caches)");
            }
            ui.separator();
            match &s.generator {
                GeneratorState::Ready(info) => ui.label(format!("model: {}", info.name)),
                GeneratorState::Loading(name) => ui.label(format!("loading {name}…")),
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
            Tab::Generate => "Drop a PNG saved by DC-AE Studio to restore its settings",
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
        self.generate.abort_run();
        self.reconstruct.abort_run();
    }

    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        for ev in self.shared.worker.poll() {
            self.handle_event(ev);
        }
        for ev in self.shared.downloads.poll() {
            self.handle_event(ev);
        }
        self.handle_dropped_files(ctx);
        self.handle_opened_files(ctx);
        self.models.poll(&mut self.shared);
        self.reconstruct.poll(&mut self.shared, ctx);
        self.generate.poll(&mut self.shared);
        if let Some(tab) = self.shared.goto.take() {
            self.tab = tab;
        }
        if self.shared.files.busy() || self.generate.saving() {
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
        match self.tab {
            Tab::Generate => self.generate.ui(ui, &mut self.shared),
            Tab::Reconstruct => self.reconstruct.ui(ui, &mut self.shared),
            Tab::Models => self.models.ui(ui, &mut self.shared),
        }
        if let Some(backend) = self.settings.ui(&ctx, &mut self.shared) {
            self.restart_engine(backend);
        }
        self.notices_overlay(&ctx);
        self.drop_overlay(&ctx);
    }
}

/// Starts the app window (the `dcae-studio` binary's main).
pub fn run(options: AppOptions) -> eframe::Result {
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
