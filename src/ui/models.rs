//! The Models view: which models are on this computer (local folders and the Hugging Face
//! cache), downloads with progress, cancel and resume, local folders, and the offline switch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use eframe::egui::{self, Color32, RichText};
use poll_promise::Promise;

use super::{widgets, GeneratorState, Shared};
use crate::engine::worker::api::{self, hub, hub::HubOptions};
use crate::engine::worker::{cancel_token, CancelToken, Event, ModelFilesRef};

/// The generation model the app is built around.
pub const GENERATOR_REPO: &str = "mit-han-lab/dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// Class-conditional UViT + its DC-AE.
    Generator,
    Autoencoder,
}

/// A published model the app knows about.
pub struct Published {
    pub repo: &'static str,
    pub kind: ModelKind,
    pub about: &'static str,
    /// Approximate download size (fp32 safetensors), when known.
    pub approx_bytes: Option<u64>,
}

pub const PUBLISHED: &[Published] = &[
    Published {
        repo: GENERATOR_REPO,
        kind: ModelKind::Generator,
        about: "UViT-H on f64c128, ImageNet 512 px, FID 2.66",
        approx_bytes: Some(4_710_000_000),
    },
    Published { repo: "mit-han-lab/dc-ae-f32c32-in-1.0", kind: ModelKind::Autoencoder, about: "f32c32, ImageNet", approx_bytes: Some(1_290_000_000) },
    Published { repo: "mit-han-lab/dc-ae-f64c128-in-1.0", kind: ModelKind::Autoencoder, about: "f64c128, ImageNet", approx_bytes: Some(2_710_000_000) },
    Published { repo: "mit-han-lab/dc-ae-f128c512-in-1.0", kind: ModelKind::Autoencoder, about: "f128c512, ImageNet", approx_bytes: None },
    Published { repo: "mit-han-lab/dc-ae-f32c32-mix-1.0", kind: ModelKind::Autoencoder, about: "f32c32, mixed data", approx_bytes: Some(1_290_000_000) },
    Published { repo: "mit-han-lab/dc-ae-f64c128-mix-1.0", kind: ModelKind::Autoencoder, about: "f64c128, mixed data", approx_bytes: Some(2_710_000_000) },
    Published { repo: "mit-han-lab/dc-ae-f128c512-mix-1.0", kind: ModelKind::Autoencoder, about: "f128c512, mixed data", approx_bytes: None },
    Published { repo: "mit-han-lab/dc-ae-f32c32-sana-1.0", kind: ModelKind::Autoencoder, about: "f32c32, SANA's autoencoder", approx_bytes: None },
    Published { repo: "mit-han-lab/dc-ae-f32c32-sana-1.1", kind: ModelKind::Autoencoder, about: "f32c32, SANA 1.1 (better decoder)", approx_bytes: None },
];

#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    Local(PathBuf),
    Hub(String),
}

#[derive(Clone, Debug)]
pub struct ModelEntry {
    /// Repo id, or the folder's path.
    pub key: String,
    pub label: String,
    pub kind: ModelKind,
    pub origin: Origin,
    pub about: String,
    /// Present when both files are on disk.
    pub files: Option<ModelFilesRef>,
    pub bytes_on_disk: u64,
    /// Bytes of an unfinished download (resume offers to continue from there).
    pub partial_bytes: u64,
    pub approx_bytes: Option<u64>,
    /// `(factor, latent channels)` when the config could be read.
    pub geometry: Option<(usize, usize)>,
}

impl ModelEntry {
    pub fn available(&self) -> bool {
        self.files.is_some()
    }

    /// "f32c32" style tag.
    pub fn tag(&self) -> Option<String> {
        self.geometry.map(|(f, c)| format!("f{f}c{c}"))
    }
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub entries: Vec<ModelEntry>,
    pub local_dirs: Vec<PathBuf>,
}

fn folder_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

fn local_entry(dir: &Path, label: String) -> Option<ModelEntry> {
    let files = hub::resolve_local_dir(dir).ok()?;
    let kind = if api::config_is_generator(&files.config) { ModelKind::Generator } else { ModelKind::Autoencoder };
    let geometry = api::autoencoder_config(&files.config, &label).ok().map(|c| (c.factor(), c.latent_channels));
    let weights_size = std::fs::metadata(&files.weights).map(|m| m.len()).unwrap_or(0);
    Some(ModelEntry {
        key: dir.display().to_string(),
        label: label.clone(),
        kind,
        origin: Origin::Local(dir.to_path_buf()),
        about: format!("local folder {}", dir.display()),
        files: Some(ModelFilesRef { name: label, config: files.config, weights: files.weights }),
        bytes_on_disk: folder_size(dir).max(weights_size),
        partial_bytes: 0,
        approx_bytes: None,
        geometry,
    })
}

impl Catalog {
    /// Finds models in `local_dirs` (each a model folder, or a folder of model folders, two
    /// levels deep) and the published models' state in the Hugging Face cache. Only the file
    /// system is read; nothing touches the network.
    pub fn scan(local_dirs: &[PathBuf], hub_opts: &HubOptions) -> Self {
        let mut entries = Vec::new();
        for root in local_dirs {
            let root_name = root.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| root.display().to_string());
            if let Some(e) = local_entry(root, root_name) {
                entries.push(e);
                continue;
            }
            let mut subdirs: Vec<PathBuf> = std::fs::read_dir(root)
                .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
                .unwrap_or_default();
            subdirs.sort();
            for sub in subdirs {
                let name = sub.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                if let Some(e) = local_entry(&sub, name.clone()) {
                    entries.push(e);
                }
                let mut inner: Vec<PathBuf> = std::fs::read_dir(&sub)
                    .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
                    .unwrap_or_default();
                inner.sort();
                for d in inner {
                    let inner_name = format!("{name}/{}", d.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default());
                    if let Some(e) = local_entry(&d, inner_name) {
                        entries.push(e);
                    }
                }
            }
        }
        let cached = hub::list_cached_models(hub_opts);
        let offline = hub_opts.clone().with_offline(true);
        let never = std::sync::atomic::AtomicBool::new(false);
        for p in PUBLISHED {
            let short = p.repo.rsplit('/').next().unwrap_or(p.repo).to_string();
            let files = if hub::is_cached(p.repo, hub_opts) {
                hub::resolve_model(p.repo, &offline, &mut |_| {}, &never)
                    .ok()
                    .map(|f| ModelFilesRef { name: short.clone(), config: f.config, weights: f.weights })
            } else {
                None
            };
            let bytes_on_disk = cached.iter().filter(|c| c.repo == p.repo).map(|c| c.total_bytes).max().unwrap_or(0);
            let geometry = crate::model::config::diffusion_autoencoder(&short)
                .or(Some(short.as_str()))
                .and_then(|n| crate::model::DcaeConfig::published(n).ok())
                .map(|c| (c.factor(), c.latent_channels));
            entries.push(ModelEntry {
                key: p.repo.to_string(),
                label: short,
                kind: p.kind,
                origin: Origin::Hub(p.repo.to_string()),
                about: p.about.to_string(),
                files,
                bytes_on_disk,
                partial_bytes: hub::partial_download_bytes(p.repo, hub_opts),
                approx_bytes: p.approx_bytes,
                geometry,
            });
        }
        Self { entries, local_dirs: local_dirs.to_vec() }
    }

    pub fn get(&self, key: &str) -> Option<&ModelEntry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// The generation model to load at start: a local one first, else the published one if cached.
    pub fn default_generator(&self) -> Option<String> {
        let gens = || self.entries.iter().filter(|e| e.kind == ModelKind::Generator && e.available());
        gens().find(|e| matches!(e.origin, Origin::Local(_))).or_else(|| gens().next()).map(|e| e.key.clone())
    }

    pub fn autoencoders(&self) -> impl Iterator<Item = &ModelEntry> {
        self.entries.iter().filter(|e| e.kind == ModelKind::Autoencoder)
    }

    pub fn generators(&self) -> impl Iterator<Item = &ModelEntry> {
        self.entries.iter().filter(|e| e.kind == ModelKind::Generator)
    }
}

/// The message shown when the generation model is not on this computer.
pub fn missing_generator_help(offline: bool) -> String {
    let size = PUBLISHED[0].approx_bytes.map(widgets::bytes).unwrap_or_default();
    let how = if offline {
        "Offline mode is on, so the app will not download it. Turn Offline off in the Models tab and press Download"
    } else {
        "Press Download in the Models tab"
    };
    format!(
        "The generation model {GENERATOR_REPO} (about {size}) is not on this computer.\n\n\
         • {how}, or\n\
         • on a computer with internet: `dcae download {GENERATOR_REPO}` or `huggingface-cli download {GENERATOR_REPO}`, then copy the Hugging Face cache folder (~/.cache/huggingface/hub) here, or\n\
         • open a local folder holding its config.json and model.safetensors (Models tab: Open folder…, or start with --model-dir DIR)."
    )
}

struct Download {
    cancel: CancelToken,
    file: String,
    done: u64,
    total: u64,
    started: Instant,
    start_bytes: u64,
}

#[derive(Default)]
pub struct ModelsPanel {
    downloads: HashMap<String, Download>,
    folder_dialog: Option<Promise<Option<PathBuf>>>,
    /// Last failure per repo, shown on its row.
    failures: HashMap<String, String>,
}

impl ModelsPanel {
    pub fn downloading(&self) -> bool {
        !self.downloads.is_empty()
    }

    pub fn start_download(&mut self, repo: &str, shared: &mut Shared) {
        if shared.hub.offline {
            shared.notices.error(format!("Offline mode is on; turn it off to download {repo}"));
            return;
        }
        let cancel = cancel_token();
        let partial = shared.catalog.get(repo).map(|e| e.partial_bytes).unwrap_or(0);
        self.failures.remove(repo);
        self.downloads.insert(
            repo.to_string(),
            Download { cancel: cancel.clone(), file: String::new(), done: partial, total: 0, started: Instant::now(), start_bytes: partial },
        );
        // The download service, not the engine: it outlives engine restarts and backend switches.
        shared.downloads.start(repo.to_string(), shared.hub.clone(), cancel);
    }

    pub fn add_folder(&mut self, dir: PathBuf, shared: &mut Shared) {
        if !shared.catalog.local_dirs.contains(&dir) {
            shared.catalog.local_dirs.push(dir.clone());
        }
        let before = shared.catalog.entries.len();
        shared.rescan();
        let found: Vec<String> = shared
            .catalog
            .entries
            .iter()
            .filter(|e| matches!(&e.origin, Origin::Local(p) if p.starts_with(&dir)))
            .map(|e| e.label.clone())
            .collect();
        if found.is_empty() {
            shared.notices.error(format!(
                "{} holds no model: a model folder has config.json and model.safetensors (or diffusion_pytorch_model.safetensors)",
                dir.display()
            ));
            shared.catalog.local_dirs.retain(|d| d != &dir);
        } else {
            shared.notices.info(format!("Found {} in {}", found.join(", "), dir.display()));
            let _ = before;
            if shared.generator_key.is_none() || matches!(shared.generator, GeneratorState::Missing | GeneratorState::Failed { .. }) {
                if let Some(key) = shared.catalog.default_generator() {
                    shared.use_generator(&key);
                }
            }
        }
    }

    pub fn poll(&mut self, shared: &mut Shared) {
        if let Some(p) = &self.folder_dialog {
            if let Some(result) = p.ready() {
                let result = result.clone();
                self.folder_dialog = None;
                if let Some(dir) = result {
                    self.add_folder(dir, shared);
                }
            }
        }
    }

    pub fn on_event(&mut self, ev: Event, shared: &mut Shared) {
        match ev {
            Event::DownloadProgress { repo, file, bytes_done, bytes_total } => {
                if let Some(d) = self.downloads.get_mut(&repo) {
                    if d.file != file {
                        d.start_bytes = bytes_done;
                        d.started = Instant::now();
                    }
                    d.file = file;
                    d.done = bytes_done;
                    d.total = bytes_total;
                }
            }
            Event::DownloadFinished { repo, result, cancelled } => {
                self.downloads.remove(&repo);
                match result {
                    Ok(()) => {
                        shared.notices.info(format!("Downloaded {repo}"));
                        shared.rescan();
                        let is_gen = shared.catalog.get(&repo).is_some_and(|e| e.kind == ModelKind::Generator);
                        if is_gen && !matches!(shared.generator, GeneratorState::Ready(_) | GeneratorState::Loading(_)) {
                            shared.use_generator(&repo);
                        }
                    }
                    Err(e) if cancelled => {
                        shared.notices.info(format!("Download of {repo} paused; press Resume to continue"));
                        let _ = e;
                        shared.rescan();
                    }
                    Err(e) => {
                        shared.notices.error(format!("Download of {repo} failed: {e}"));
                        self.failures.insert(repo, e);
                        shared.rescan();
                    }
                }
            }
            _ => {}
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.heading("Models");
                    ui.add_space(16.0);
                    let mut offline = shared.hub.offline;
                    if ui
                        .checkbox(&mut offline, "Offline")
                        .on_hover_text("Never contact the Hugging Face hub; only models already on this computer are used (like HF_HUB_OFFLINE=1)")
                        .changed()
                    {
                        shared.hub.offline = offline;
                    }
                    if ui.button("📂 Open folder…").on_hover_text("Add a folder holding model folders (config.json + model.safetensors)").clicked() {
                        self.folder_dialog = Some(Promise::spawn_thread("pick-folder", || rfd::FileDialog::new().pick_folder()));
                    }
                    if ui.button("⟳ Rescan").clicked() {
                        shared.rescan();
                    }
                });
                ui.label(
                    RichText::new(format!("Hugging Face cache: {}", shared.hub.cache_dir.display())).small().weak(),
                );
                for dir in &shared.catalog.local_dirs {
                    ui.label(RichText::new(format!("Model folder: {}", dir.display())).small().weak());
                }
                if shared.hub.offline {
                    ui.label(RichText::new("Offline: downloads are off; models already on this computer work as usual.").small());
                }
                if matches!(shared.generator, GeneratorState::Missing) {
                    ui.add_space(6.0);
                    egui::Frame::group(ui.style()).show(ui, |ui| {
                        ui.label(RichText::new("No generation model yet").strong());
                        ui.label(missing_generator_help(shared.hub.offline));
                    });
                }
                ui.add_space(8.0);
                let local: Vec<ModelEntry> = shared.catalog.entries.iter().filter(|e| matches!(e.origin, Origin::Local(_))).cloned().collect();
                if !local.is_empty() {
                    ui.label(RichText::new("Local folders").strong());
                    self.table(ui, "local_models", &local, shared);
                    ui.add_space(10.0);
                }
                ui.label(RichText::new("Published by MIT HAN Lab (Hugging Face)").strong());
                let published: Vec<ModelEntry> = shared.catalog.entries.iter().filter(|e| matches!(e.origin, Origin::Hub(_))).cloned().collect();
                self.table(ui, "hub_models", &published, shared);
            });
        });
    }

    fn table(&mut self, ui: &mut egui::Ui, id: &str, entries: &[ModelEntry], shared: &mut Shared) {
        egui::Grid::new(id).striped(true).num_columns(6).spacing([14.0, 6.0]).show(ui, |ui| {
            ui.label(RichText::new("Model").strong());
            ui.label(RichText::new("Kind").strong());
            ui.label(RichText::new("On disk").strong());
            ui.label(RichText::new("Status").strong());
            ui.label("");
            ui.label(RichText::new("About").strong());
            ui.end_row();
            for e in entries {
                ui.label(RichText::new(&e.label).monospace()).on_hover_text(&e.about);
                let kind = match e.kind {
                    ModelKind::Generator => "generation".to_string(),
                    ModelKind::Autoencoder => format!("autoencoder {}", e.tag().unwrap_or_default()),
                };
                ui.label(kind);
                ui.label(if e.bytes_on_disk > 0 { widgets::bytes(e.bytes_on_disk) } else { "—".into() });
                let repo = match &e.origin {
                    Origin::Hub(r) => Some(r.clone()),
                    Origin::Local(_) => None,
                };
                let in_use = shared.generator_key.as_deref() == Some(e.key.as_str());
                // Status column.
                if let Some(d) = repo.as_ref().and_then(|r| self.downloads.get(r)) {
                    ui.vertical(|ui| {
                        let frac = if d.total > 0 { d.done as f32 / d.total as f32 } else { 0.0 };
                        let speed = (d.done.saturating_sub(d.start_bytes)) as f64 / d.started.elapsed().as_secs_f64().max(0.1);
                        ui.add(
                            egui::ProgressBar::new(frac)
                                .desired_width(220.0)
                                .text(format!("{} {} / {} · {}/s", d.file, widgets::bytes(d.done), widgets::bytes(d.total), widgets::bytes(speed as u64))),
                        );
                    });
                } else if e.available() {
                    ui.label(RichText::new(if in_use { "✔ in use" } else { "✔ on disk" }).color(Color32::from_rgb(90, 190, 90)));
                } else if e.partial_bytes > 0 {
                    ui.label(format!("partly downloaded ({})", widgets::bytes(e.partial_bytes)));
                } else if let Some(f) = repo.as_ref().and_then(|r| self.failures.get(r)) {
                    ui.label(RichText::new("download failed").color(ui.visuals().error_fg_color)).on_hover_text(f);
                } else {
                    let size = e.approx_bytes.map(|b| format!(" (≈ {})", widgets::bytes(b))).unwrap_or_default();
                    ui.label(format!("not downloaded{size}"));
                }
                // Actions column.
                ui.horizontal(|ui| {
                    if let Some(repo) = &repo {
                        if let Some(d) = self.downloads.get(repo) {
                            if ui.button("⏹ Cancel").clicked() {
                                d.cancel.store(true, Ordering::Relaxed);
                            }
                        } else if !e.available() {
                            let label = if e.partial_bytes > 0 { "⏵ Resume" } else { "⬇ Download" };
                            let resp = ui.add_enabled(!shared.hub.offline, egui::Button::new(label));
                            let resp = if shared.hub.offline { resp.on_disabled_hover_text("Offline mode is on") } else { resp };
                            if resp.clicked() {
                                self.start_download(repo, shared);
                            }
                        }
                    }
                    if e.kind == ModelKind::Generator && e.available() && !in_use && ui.button("Use").clicked() {
                        shared.use_generator(&e.key);
                        shared.goto = Some(super::Tab::Generate);
                    }
                    if e.kind == ModelKind::Autoencoder && e.available() && ui.button("Reconstruct with it").clicked() {
                        shared.select_autoencoder = Some(e.key.clone());
                        shared.goto = Some(super::Tab::Reconstruct);
                    }
                });
                let about = match &e.origin {
                    Origin::Local(_) => "local folder".to_string(),
                    Origin::Hub(_) => e.about.clone(),
                };
                ui.label(RichText::new(about).weak()).on_hover_text(&e.about);
                ui.end_row();
            }
        });
    }
}
