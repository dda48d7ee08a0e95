//! The Reconstruct view: an image (dropped, opened, or a bundled sample) through one or more
//! autoencoders, each reconstruction next to the original with its latent shape, compression
//! ratio, encode/decode time, PSNR and SSIM; a difference heatmap; an A/B split; one zoom and pan
//! shared by every pane.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use eframe::egui::{self, Color32, Pos2, Rect, RichText, Sense, Stroke, TextureHandle, Vec2};
use image::RgbImage;
use poll_promise::Promise;

use super::models::{Catalog, ModelKind, Origin};
use super::{widgets, Shared};
use crate::engine::worker::samples::{self, SAMPLES};
use crate::engine::worker::{cancel_token, CancelToken, Event, Job, ReconResult, ReconstructJob};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewMode {
    SideBySide,
    Split,
    Difference,
}

pub struct Input {
    pub name: String,
    pub image: Arc<RgbImage>,
}

pub struct ReconEntry {
    pub result: ReconResult,
    recon_tex: TextureHandle,
    heat_tex: TextureHandle,
}

/// What size an opened image is reconstructed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconSize {
    /// Full size up to [`LARGE_PIXELS`]; a larger photo gets the authors' 512 centre crop, with
    /// full size one click away.
    Auto,
    /// The whole image (cropped to a multiple of the factor), in tiles when it would not fit.
    Full,
    /// The authors' centre crop (DMCrop) to this square.
    Square(u32),
}

/// Above this many pixels (more than 1024²) `Auto` crops: a 12 MP phone photo through an
/// f32c32 autoencoder is minutes of CPU time and gigabytes, where 512² takes seconds and is
/// what the paper reports.
pub const LARGE_PIXELS: u64 = 1024 * 1024;
const AUTO_CROP: u32 = 512;

impl ReconSize {
    /// The crop for an image of `w × h` (`None`: keep its size).
    pub fn crop_for(self, w: u32, h: u32) -> Option<u32> {
        match self {
            ReconSize::Auto if w as u64 * h as u64 > LARGE_PIXELS => Some(AUTO_CROP),
            ReconSize::Auto | ReconSize::Full => None,
            ReconSize::Square(n) => Some(n),
        }
    }

    fn label(self) -> String {
        match self {
            ReconSize::Auto => "auto (512 crop of large photos)".into(),
            ReconSize::Full => "full size (tiled if needed)".into(),
            ReconSize::Square(n) => format!("{n}×{n} (centre crop)"),
        }
    }
}

pub struct ReconstructPanel {
    pub input: Option<Input>,
    /// Catalog keys of the chosen autoencoders.
    pub selected: BTreeSet<String>,
    pub size: ReconSize,
    /// The crop the current input was run with (for the notice that offers full size).
    ran_crop: Option<u32>,
    pub gain: f32,
    run: Option<(u64, CancelToken)>,
    pub original: Option<(RgbImage, TextureHandle)>,
    pub results: Vec<ReconEntry>,
    pub mode: ViewMode,
    split: f32,
    dragging_split: bool,
    pub zoom: widgets::ZoomPan,
    /// Which result the split and difference views show.
    focus: usize,
    file_dialog: Option<Promise<Result<Option<PathBuf>, String>>>,
    pub last_error: Option<String>,
    thumbs: Vec<TextureHandle>,
    /// Reconstruct as soon as an image arrives.
    pub auto_run: bool,
}

impl Default for ReconstructPanel {
    fn default() -> Self {
        Self {
            input: None,
            selected: BTreeSet::new(),
            size: ReconSize::Auto,
            ran_crop: None,
            gain: 4.0,
            run: None,
            original: None,
            results: Vec::new(),
            mode: ViewMode::SideBySide,
            split: 0.5,
            dragging_split: false,
            zoom: widgets::ZoomPan::default(),
            focus: 0,
            file_dialog: None,
            last_error: None,
            thumbs: Vec::new(),
            auto_run: true,
        }
    }
}

impl ReconstructPanel {
    pub fn is_running(&self) -> bool {
        self.run.is_some()
    }

    /// Picks up to three available autoencoders (local ones first).
    pub fn select_defaults(&mut self, catalog: &Catalog) {
        self.selected.retain(|k| catalog.get(k).is_some_and(|e| e.available()));
        if !self.selected.is_empty() {
            return;
        }
        let mut aes: Vec<_> = catalog.autoencoders().filter(|e| e.available()).collect();
        aes.sort_by_key(|e| !matches!(e.origin, Origin::Local(_)));
        for e in aes.into_iter().take(3) {
            self.selected.insert(e.key.clone());
        }
    }

    pub fn abort_run(&mut self) {
        if let Some((_, c)) = self.run.take() {
            c.store(true, Ordering::Relaxed);
        }
    }

    pub fn on_cancelled(&mut self, job: u64) {
        if self.run.as_ref().is_some_and(|(id, _)| *id == job) {
            self.run = None;
        }
    }

    /// The run failed as a whole (its end).
    pub fn on_error(&mut self, job: u64, message: &str) {
        if self.run.as_ref().is_some_and(|(id, _)| *id == job) {
            self.last_error = Some(message.to_string());
            self.run = None;
        }
    }

    /// One model of the run failed; the others go on.
    pub fn on_warning(&mut self, job: u64, message: &str) {
        if self.run.as_ref().is_some_and(|(id, _)| *id == job) {
            self.last_error = Some(message.to_string());
        }
    }

    /// Every model of the run is done.
    pub fn on_finished(&mut self, job: u64) {
        if self.run.as_ref().is_some_and(|(id, _)| *id == job) {
            self.run = None;
        }
    }

    pub fn on_event(&mut self, ev: Event, ctx: &egui::Context) {
        let Some((run_id, _)) = &self.run else { return };
        let run_id = *run_id;
        match ev {
            Event::ReconstructInput { job, original } if job == run_id => {
                let tex = widgets::texture(ctx, "recon-original", &original);
                self.original = Some((original, tex));
            }
            Event::Reconstructed { job, result } if job == run_id => {
                let recon_tex = widgets::texture(ctx, &format!("recon-{}", result.model), &result.recon);
                let heat_tex = widgets::texture(ctx, &format!("heat-{}", result.model), &result.heatmap);
                self.results.push(ReconEntry { result, recon_tex, heat_tex });
            }
            _ => {}
        }
    }

    /// A dropped or opened file: decode it and (if models are chosen) reconstruct it.
    /// A file that could not be opened as the input.
    pub fn open_failed(&mut self, name: &str, why: &str, shared: &mut Shared) {
        let msg = format!("{name} {why}");
        self.last_error = Some(msg.clone());
        shared.notices.error(msg);
    }

    pub fn set_input(&mut self, name: String, img: RgbImage, shared: &mut Shared) {
        self.last_error = None;
        self.input = Some(Input { name, image: Arc::new(img) });
        self.results.clear();
        self.original = None;
        self.zoom.reset();
        if self.auto_run && !self.selected.is_empty() {
            self.start(shared);
        }
    }

    pub fn start(&mut self, shared: &mut Shared) {
        let Some(image) = self.input.as_ref().map(|i| i.image.clone()) else {
            shared.notices.error("Open or drop an image first");
            return;
        };
        let mut models = Vec::new();
        for key in &self.selected {
            if let Some(files) = shared.catalog.get(key).and_then(|e| e.files.clone()) {
                models.push(files);
            }
        }
        if models.is_empty() {
            shared.notices.error("Choose at least one autoencoder that is on this computer");
            return;
        }
        self.abort_run();
        let id = shared.next_id();
        let cancel = cancel_token();
        self.results.clear();
        self.original = None;
        self.focus = 0;
        self.last_error = None;
        let crop = self.size.crop_for(image.width(), image.height());
        self.ran_crop = crop;
        shared.autoencoders_held = true;
        shared.worker.send(Job::Reconstruct(ReconstructJob {
            id,
            image,
            size: crop,
            models,
            heatmap_gain: self.gain,
            cancel: cancel.clone(),
        }));
        self.run = Some((id, cancel));
    }

    pub fn poll(&mut self, shared: &mut Shared, _ctx: &egui::Context) {
        if let Some(key) = shared.select_autoencoder.take() {
            self.selected.insert(key);
        }
        if let Some(p) = &self.file_dialog {
            if let Some(result) = p.ready() {
                let result = result.clone();
                self.file_dialog = None;
                match result {
                    // Read and decoded off the UI thread; comes back through `set_input`.
                    Ok(Some(path)) => shared.files.open_path(path, super::files::Purpose::Reconstruct),
                    Ok(None) => {}
                    Err(e) => shared.notices.error(format!("The file dialog could not be shown ({e}); drop the picture on the window instead")),
                }
            }
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        egui::Panel::left("reconstruct_controls").resizable(true).default_size(300.0).min_size(260.0).show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| self.controls(ui, shared));
        });
        egui::CentralPanel::default().show(ui, |ui| self.central(ui, shared));
    }

    fn controls(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        ui.add_space(4.0);
        ui.label(RichText::new("Image").strong());
        if ui.button("📂 Open image…").clicked() {
            self.file_dialog = Some(super::helper::spawn("open-image", || {
                rfd::FileDialog::new().add_filter("Images", &["png", "jpg", "jpeg", "webp"]).pick_file()
            }));
        }
        ui.label(RichText::new("or drop one on the window, or pick a sample:").small().weak());
        if self.thumbs.is_empty() {
            for (name, _, bytes) in SAMPLES {
                if let Ok(img) = samples::decode(bytes) {
                    let thumb = image::imageops::thumbnail(&img, 96, 96);
                    self.thumbs.push(widgets::texture(ui.ctx(), &format!("sample-{name}"), &thumb));
                }
            }
        }
        let mut picked = None;
        ui.horizontal_wrapped(|ui| {
            for (i, (name, _, _)) in SAMPLES.iter().enumerate() {
                let Some(t) = self.thumbs.get(i) else { continue };
                let size = t.size_vec2();
                let size = widgets::fit(size, Vec2::splat(56.0));
                let resp = ui.add(egui::Button::image((t.id(), size))).on_hover_text(format!("Sample: {name} (public domain / CC0, see assets/LICENSES.md)"));
                if resp.clicked() {
                    picked = Some(i);
                }
            }
        });
        if let Some(i) = picked {
            let (name, _, bytes) = SAMPLES[i];
            match samples::decode(bytes) {
                Ok(img) => self.set_input(format!("sample: {name}"), img, shared),
                Err(e) => shared.notices.error(e),
            }
        }
        if let Some(input) = &self.input {
            ui.label(RichText::new(format!("{} · {}×{}", input.name, input.image.width(), input.image.height())).small());
        }
        ui.separator();

        ui.label(RichText::new("Autoencoders").strong());
        let entries: Vec<_> = shared.catalog.entries.iter().filter(|e| e.kind == ModelKind::Autoencoder || e.available()).cloned().collect();
        for e in &entries {
            let mut on = self.selected.contains(&e.key);
            let label = match (e.kind, e.tag()) {
                (ModelKind::ClassToImage | ModelKind::TextToImage, _) => format!("{} (its autoencoder)", e.label),
                (_, Some(tag)) if !e.label.contains(&tag) => format!("{} · {tag}", e.label),
                _ => e.label.clone(),
            };
            let resp = ui.add_enabled(e.available(), egui::Checkbox::new(&mut on, label));
            let resp = resp.on_disabled_hover_text("Not downloaded: get it in the Models tab");
            if resp.changed() {
                if on {
                    self.selected.insert(e.key.clone());
                } else {
                    self.selected.remove(&e.key);
                }
            }
        }
        if !entries.iter().any(|e| e.available()) {
            ui.label(RichText::new("No autoencoder on this computer yet — download one in the Models tab.").weak());
        }
        ui.separator();
        egui::Grid::new("recon_opts").num_columns(2).show(ui, |ui| {
            ui.label("Size");
            egui::ComboBox::from_id_salt("recon_size").selected_text(self.size.label()).show_ui(ui, |ui| {
                for s in [ReconSize::Auto, ReconSize::Full, ReconSize::Square(256), ReconSize::Square(512), ReconSize::Square(1024)] {
                    ui.selectable_value(&mut self.size, s, s.label());
                }
            });
            ui.end_row();
            ui.label("Heatmap gain");
            ui.add(egui::Slider::new(&mut self.gain, 1.0..=16.0).suffix("×")).on_hover_text("Differences are multiplied by this before colouring (applies on the next run)");
            ui.end_row();
        });
        ui.checkbox(&mut self.auto_run, "Reconstruct as soon as an image is opened");
        ui.add_space(8.0);
        if self.run.is_some() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(if shared.engine_status.is_empty() { "working…" } else { shared.engine_status.as_str() });
            });
            if ui.button("⏹ Cancel").clicked() {
                if let Some((_, c)) = &self.run {
                    c.store(true, Ordering::Relaxed);
                }
            }
        } else {
            let ready = self.input.is_some() && !self.selected.is_empty();
            let b = egui::Button::new(RichText::new("▶ Reconstruct").size(16.0)).min_size(Vec2::new(ui.available_width(), 32.0));
            if ui.add_enabled(ready, b).on_disabled_hover_text("Open an image and choose at least one autoencoder").clicked() {
                self.start(shared);
            }
        }
        // A large photo was cropped by `Auto`: say so, and offer the whole picture.
        let dims = self.input.as_ref().map(|i| (i.image.width(), i.image.height()));
        if let (ReconSize::Auto, Some(crop), Some((w, h))) = (self.size, self.ran_crop, dims) {
            if self.size.crop_for(w, h) == Some(crop) {
                ui.add_space(6.0);
                ui.label(RichText::new(format!("{w}×{h} photo: reconstructed as its {crop}×{crop} centre crop, as the DC-AE authors evaluate.")).weak());
                if ui.add_enabled(self.run.is_none(), egui::Button::new("Reconstruct the full image")).on_hover_text("Runs in tiles when the whole image would not fit in memory; Cancel stops between tiles").clicked() {
                    self.size = ReconSize::Full;
                    self.start(shared);
                }
            }
        }
        if let Some(e) = &self.last_error {
            ui.add_space(6.0);
            ui.label(RichText::new(e).color(ui.visuals().error_fg_color));
        }
    }

    fn central(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        let Some((original, orig_tex)) = &self.original else {
            ui.centered_and_justified(|ui| {
                let text = if self.run.is_some() { "Preparing…" } else { "Drop an image here, open one, or pick a sample" };
                ui.label(RichText::new(text).weak().size(18.0));
            });
            return;
        };
        let orig_tex = orig_tex.id();
        let (ow, oh) = (original.width(), original.height());
        // Metrics table.
        egui::Grid::new("recon_metrics").striped(true).num_columns(8).spacing([14.0, 4.0]).show(ui, |ui| {
            for h in ["Autoencoder", "Latent (C×h×w)", "Compression", "Encode", "Decode", "PSNR", "SSIM", ""] {
                ui.label(RichText::new(h).strong());
            }
            ui.end_row();
            for (i, e) in self.results.iter().enumerate() {
                let r = &e.result;
                ui.label(RichText::new(&r.model).monospace());
                ui.label(format!("{}×{}×{}", r.latent_shape[0], r.latent_shape[1], r.latent_shape[2]));
                ui.label(format!("{:.0}×", r.compression))
                    .on_hover_text(format!("{ow}×{oh}×3 pixel values / {} latent values", r.latent_shape.iter().product::<usize>()));
                ui.label(widgets::secs(r.encode_secs));
                ui.label(widgets::secs(r.decode_secs));
                ui.label(format!("{:.2} dB", r.psnr));
                ui.label(format!("{:.4}", r.ssim));
                if ui.selectable_label(self.focus == i, "focus").on_hover_text("Show this one in the split and difference views").clicked() {
                    self.focus = i;
                }
                if ui
                    .small_button("img2img")
                    .on_hover_text("Use this reconstruction as the source of an image-to-image run in the Generate view")
                    .clicked()
                {
                    shared.img2img_source = Some((format!("{} reconstruction", r.model), r.recon.clone()));
                }
                ui.end_row();
            }
        });
        if self.run.is_some() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("more on the way…");
            });
        }
        ui.add_space(4.0);
        ui.horizontal(|ui| {
            ui.selectable_value(&mut self.mode, ViewMode::SideBySide, "Side by side");
            ui.selectable_value(&mut self.mode, ViewMode::Split, "A/B split");
            ui.selectable_value(&mut self.mode, ViewMode::Difference, "Difference");
            ui.separator();
            ui.label(format!("zoom {:.1}×", self.zoom.zoom));
            if ui.small_button("fit").clicked() {
                self.zoom.reset();
            }
            ui.label(RichText::new("scroll to zoom · drag to pan · double-click to fit").small().weak());
        });
        if self.results.is_empty() {
            return;
        }
        self.focus = self.focus.min(self.results.len() - 1);
        let aspect = ow as f32 / oh.max(1) as f32;
        let uv = self.zoom.uv();
        match self.mode {
            ViewMode::SideBySide | ViewMode::Difference => {
                let mut panes: Vec<(String, egui::TextureId)> = vec![("original".into(), orig_tex)];
                if self.mode == ViewMode::SideBySide {
                    panes.extend(self.results.iter().map(|e| (e.result.model.clone(), e.recon_tex.id())));
                } else {
                    panes.extend(self.results.iter().map(|e| (format!("{} |difference| ×{:.0}", e.result.model, self.gain), e.heat_tex.id())));
                }
                let n = panes.len();
                let avail = ui.available_size();
                let (cols, size) = widgets::best_layout(n, aspect, avail, 8.0, 22.0);
                let mut zoom = self.zoom;
                egui::Grid::new("recon_panes").spacing([8.0, 4.0]).show(ui, |ui| {
                    for (i, (title, tex)) in panes.iter().enumerate() {
                        ui.vertical(|ui| {
                            ui.label(RichText::new(title).small());
                            let (rect, resp) = ui.allocate_exact_size(size, Sense::click_and_drag());
                            ui.painter().image(*tex, rect, uv, Color32::WHITE);
                            zoom.interact(ui, &resp, rect);
                        });
                        if (i + 1) % cols == 0 {
                            ui.end_row();
                        }
                    }
                });
                self.zoom = zoom;
                if self.mode == ViewMode::Difference {
                    ui.label(
                        RichText::new(format!(
                            "mean |original - reconstruction| over R, G, B × {:.0}, inferno colour map: black = identical, pale yellow = {:.0} or more levels apart (of 255)",
                            self.gain,
                            255.0 / self.gain.max(1.0)
                        ))
                        .small()
                        .weak(),
                    );
                }
            }
            ViewMode::Split => {
                let e = &self.results[self.focus];
                ui.label(RichText::new(format!("left: original · right: {} — drag the line to move it", e.result.model)).small());
                let avail = ui.available_size() - Vec2::new(0.0, 4.0);
                let size = widgets::fit(Vec2::new(aspect, 1.0), avail).max(Vec2::splat(32.0));
                let (rect, resp) = ui.allocate_exact_size(size, Sense::click_and_drag());
                let split_x = rect.left() + self.split * rect.width();
                if resp.drag_started() {
                    let near = resp.interact_pointer_pos().is_some_and(|p| (p.x - split_x).abs() < 12.0);
                    self.dragging_split = near;
                }
                if self.dragging_split && resp.dragged() {
                    if let Some(p) = resp.interact_pointer_pos() {
                        self.split = ((p.x - rect.left()) / rect.width()).clamp(0.0, 1.0);
                    }
                } else {
                    self.zoom.interact(ui, &resp, rect);
                }
                if resp.drag_stopped() {
                    self.dragging_split = false;
                }
                let uv = self.zoom.uv();
                let split_x = rect.left() + self.split * rect.width();
                let left = Rect::from_min_max(rect.min, Pos2::new(split_x, rect.bottom()));
                let right = Rect::from_min_max(Pos2::new(split_x, rect.top()), rect.max);
                let uv_split = uv.min.x + self.split * uv.width();
                let uv_left = Rect::from_min_max(uv.min, Pos2::new(uv_split, uv.max.y));
                let uv_right = Rect::from_min_max(Pos2::new(uv_split, uv.min.y), uv.max);
                ui.painter().image(orig_tex, left, uv_left, Color32::WHITE);
                ui.painter().image(e.recon_tex.id(), right, uv_right, Color32::WHITE);
                ui.painter().line_segment([Pos2::new(split_x, rect.top()), Pos2::new(split_x, rect.bottom())], Stroke::new(2.0, Color32::WHITE));
                ui.painter().circle_filled(Pos2::new(split_x, rect.center().y), 6.0, Color32::WHITE);
                if resp.hovered() {
                    let near = ui.input(|i| i.pointer.hover_pos()).is_some_and(|p| (p.x - split_x).abs() < 12.0);
                    if near || self.dragging_split {
                        ui.ctx().set_cursor_icon(egui::CursorIcon::ResizeHorizontal);
                    }
                }
            }
        }
    }
}
