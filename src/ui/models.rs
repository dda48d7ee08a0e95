//! The Models view: which models are on this computer (local folders and the Hugging Face
//! cache), downloads with progress, cancel and resume, local folders, and the offline switch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use eframe::egui::{self, Color32, RichText};
use poll_promise::Promise;

use super::{widgets, GeneratorState, Shared};
use crate::engine::worker::{cancel_token, CancelToken, Event};

use crate::engine::worker::api::registry;

pub use crate::engine::catalog::*;

/// The message shown when no generation model is on this computer.
pub fn missing_generator_help(offline: bool) -> String {
    let sana = registry::find("Sana_600M_512px_diffusers");
    let sana_repo = sana.map(|p| p.repo()).unwrap_or_default();
    let sana_size = sana.and_then(|p| p.approx_bytes()).map(widgets::bytes).unwrap_or_default();
    let uvit_size = registry::find(GENERATOR_REPO).and_then(|p| p.approx_bytes()).map(widgets::bytes).unwrap_or_default();
    let how = if offline {
        "Offline mode is on, so the app will not download one. Turn Offline off in the Models tab and press Download"
    } else {
        "Press Download in the Models tab"
    };
    format!(
        "No generation model is on this computer yet: text-to-image {sana_repo} (about {sana_size}) or class-to-image {GENERATOR_REPO} (about {uvit_size}).\n\n\
         • {how}, or\n\
         • on a computer with internet: `dcae download {sana_repo}` (or `huggingface-cli download …`), then copy the Hugging Face cache folder (~/.cache/huggingface/hub) here, or\n\
         • open a local folder holding a model (Models tab: Open folder…, or start with --model-dir DIR)."
    )
}

struct Download {
    cancel: CancelToken,
    file: String,
    done: u64,
    total: u64,
    started: Instant,
    start_bytes: u64,
    /// Bytes of the files already finished in this download (a pipeline has many).
    finished: u64,
    /// Files finished so far.
    files: usize,
    /// The whole model's size (the registry's), for the total bar.
    expected: Option<u64>,
}

#[derive(Default)]
pub struct ModelsPanel {
    downloads: HashMap<String, Download>,
    folder_dialog: Option<Promise<Result<Option<PathBuf>, String>>>,
    /// Last failure per repo, shown on its row.
    failures: HashMap<String, String>,
}

impl ModelsPanel {
    pub fn downloading(&self) -> bool {
        !self.downloads.is_empty()
    }

    pub fn start_download(&mut self, repo: &str, shared: &mut Shared) {
        self.start_download_replacing(repo, None, shared);
    }

    /// Downloads `repo`; `damaged`, a file of its cache entry that failed to load, is deleted
    /// first (on the download's thread, and only inside the Hugging Face cache).
    pub fn start_download_replacing(&mut self, repo: &str, damaged: Option<PathBuf>, shared: &mut Shared) {
        if self.downloads.contains_key(repo) {
            // A second download would write the same files from another thread, and its entry
            // would replace this one's cancel token: Cancel could no longer stop the first.
            shared.notices.info(format!("{repo} is already downloading; its progress and Cancel are in the Models tab"));
            return;
        }
        if shared.hub.offline {
            shared.notices.error(format!("Offline mode is on; turn it off to download {repo}"));
            return;
        }
        let cancel = cancel_token();
        let partial = shared.catalog.get(repo).map(|e| e.partial_bytes).unwrap_or(0);
        let expected = shared.catalog.get(repo).and_then(|e| e.approx_bytes);
        self.failures.remove(repo);
        self.downloads.insert(
            repo.to_string(),
            Download {
                cancel: cancel.clone(),
                file: String::new(),
                done: partial,
                total: 0,
                started: Instant::now(),
                start_bytes: partial,
                finished: 0,
                files: 0,
                expected,
            },
        );
        // The download service, not the engine: it outlives engine restarts and backend switches.
        shared.downloads.start(repo.to_string(), shared.hub.clone(), cancel, damaged);
    }

    pub fn add_folder(&mut self, dir: PathBuf, shared: &mut Shared) {
        if !shared.catalog.local_dirs.contains(&dir) {
            shared.catalog.local_dirs.push(dir.clone());
        }
        shared.rescan_then(super::AfterScan::FolderAdded(dir));
    }

    /// The scan after [`Self::add_folder`] is in: say what the folder holds.
    pub fn folder_scanned(&mut self, dir: PathBuf, shared: &mut Shared) {
        let found: Vec<String> = shared
            .catalog
            .entries
            .iter()
            .filter(|e| matches!(&e.origin, Origin::Local(p) if p.starts_with(&dir)))
            .map(|e| e.label.clone())
            .collect();
        if found.is_empty() {
            shared.notices.error(format!(
                "{} holds no model: a model folder has config.json and model.safetensors (or diffusion_pytorch_model.safetensors), a SANA pipeline folder model_index.json and its component folders",
                dir.display()
            ));
            shared.catalog.local_dirs.retain(|d| d != &dir);
        } else {
            shared.notices.info(format!("Found {} in {}", found.join(", "), dir.display()));
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
                match result {
                    Ok(Some(dir)) => self.add_folder(dir, shared),
                    Ok(None) => {}
                    Err(e) => shared.notices.error(format!("The folder dialog could not be shown ({e}); drop the model folder on the window instead")),
                }
            }
        }
    }

    pub fn on_event(&mut self, ev: Event, shared: &mut Shared) {
        match ev {
            Event::DownloadProgress { repo, file, bytes_done, bytes_total } => {
                if let Some(d) = self.downloads.get_mut(&repo) {
                    if d.file != file {
                        if !d.file.is_empty() {
                            d.finished += d.total.max(d.done);
                            d.files += 1;
                        }
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
                        shared.rescan_then(super::AfterScan::Downloaded(repo));
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
                        self.folder_dialog = Some(super::helper::spawn("pick-folder", || rfd::FileDialog::new().pick_folder()));
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
                if shared.scanning() && shared.catalog.entries.is_empty() {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label("Looking for models on this computer…");
                    });
                }
                let sections = [
                    ("Text to image: SANA (Efficient-Large-Model, Hugging Face)", ModelKind::TextToImage, "hub_t2i"),
                    ("Class to image: DC-AE + UViT, USiT, DiT (MIT HAN Lab)", ModelKind::ClassToImage, "hub_c2i"),
                    ("Autoencoders: DC-AE (MIT HAN Lab)", ModelKind::Autoencoder, "hub_ae"),
                ];
                for (title, kind, id) in sections {
                    let published: Vec<ModelEntry> = shared.catalog.entries.iter().filter(|e| matches!(e.origin, Origin::Hub(_)) && e.kind == kind).cloned().collect();
                    if published.is_empty() {
                        continue;
                    }
                    ui.label(RichText::new(title).strong());
                    self.table(ui, id, &published, shared);
                    ui.add_space(10.0);
                }
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
                    ModelKind::ClassToImage => "class to image".to_string(),
                    ModelKind::TextToImage => "text to image".to_string(),
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
                        // The whole model: finished files plus this one, against the expected size.
                        let so_far = d.finished + d.done;
                        let whole = d.expected.unwrap_or(0).max(d.finished + d.total);
                        if whole > 0 && (d.files > 0 || d.expected.is_some_and(|e| e > d.total)) {
                            ui.add(
                                egui::ProgressBar::new(so_far as f32 / whole as f32)
                                    .desired_width(220.0)
                                    .text(format!("total {} / ≈{} · {} files done", widgets::bytes(so_far), widgets::bytes(whole), d.files)),
                            );
                        }
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
                    if e.kind.is_generator() && e.available() && !in_use && ui.button("Use").clicked() {
                        shared.use_generator(&e.key);
                        shared.goto = Some(super::Tab::Generate);
                    }
                    if e.kind == ModelKind::Autoencoder && e.available() && ui.button("Reconstruct with it").clicked() {
                        shared.select_autoencoder = Some(e.key.clone());
                        shared.goto = Some(super::Tab::Reconstruct);
                    }
                });
                let about = match &e.origin {
                    Origin::Local(_) if e.kind == ModelKind::TextToImage && !e.available() => "incomplete pipeline (hover)".to_string(),
                    Origin::Local(_) => "local folder".to_string(),
                    Origin::Hub(_) if e.components.len() > 1 => {
                        let parts: Vec<String> = e.components.iter().map(|(n, b)| format!("{} {}", n.split(' ').next().unwrap_or(n), widgets::bytes(*b))).collect();
                        format!("{} · {}", e.about, parts.join(" + "))
                    }
                    Origin::Hub(_) => e.about.clone(),
                };
                ui.label(RichText::new(about).weak()).on_hover_text(&e.about);
                ui.end_row();
            }
        });
    }
}
