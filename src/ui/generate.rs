//! The Generate view: class picker, guidance, steps, seed, batch; live step previews (the
//! latent-to-RGB projection every step, a full DC-AE decode every k steps); the results; the
//! session history strip with compare, re-save and "use these settings".

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use eframe::egui::{self, Color32, RichText, TextureHandle, Vec2};
use poll_promise::Promise;

use super::history::{self, class_label, HistoryItem};
use super::preview::PreviewImage;
use super::{models, widgets, GeneratorState, Shared};
use crate::engine::worker::api::{self, GenerationParams, GeneratorInfo};
use crate::engine::worker::{cancel_token, CancelToken, Event, GenerateJob, Job};

/// The authors' demo guidance (efficientvit `demo_dc_ae_diffusion_model.py`).
pub const DEMO_GUIDANCE: f32 = 6.0;
/// The guidance of the authors' FID numbers (2.66 for this model).
pub const FID_GUIDANCE: f32 = 1.5;
pub const MAX_BATCH: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    /// The running job (or nothing yet).
    Current,
    /// A history item, by id.
    Item(u64),
    /// Two history items side by side.
    Compare(u64, u64),
}

pub struct Run {
    pub id: u64,
    cancel: CancelToken,
    pub params: GenerationParams,
    pub step: usize,
    pub total: usize,
    pub sec_per_step: f64,
    started: Instant,
    /// Latest projected previews and their step.
    pub projected: Vec<PreviewImage>,
    pub projected_step: usize,
    /// Latest full decode and its step.
    pub decoded: Vec<TextureHandle>,
    pub decoded_step: usize,
    pub cancelling: bool,
}

pub struct GeneratePanel {
    pub query: String,
    /// `None`: unconditional.
    pub class: Option<usize>,
    pub guidance: f32,
    pub steps: usize,
    pub seed: u64,
    pub seed_locked: bool,
    pub batch: usize,
    pub live_preview: bool,
    /// Full decode of x0 every k steps; 0 = off.
    pub decode_every: usize,
    /// The user (or a test) set `decode_every`; backend defaults no longer apply.
    pub decode_every_touched: bool,
    num_classes: usize,
    /// The class list for the query in the search box, searched once per query.
    pub class_search: ClassSearch,
    /// The model whose default step count was applied last, and that default.
    steps_default: Option<(String, usize)>,
    pub run: Option<Run>,
    pub shown: Shown,
    /// First pick of a comparison (set by "Compare…", completed by clicking another item).
    compare_from: Option<u64>,
    save_dialog: Option<(u64, Promise<Option<PathBuf>>)>,
    /// Saves being written on helper threads.
    saving: Vec<super::files::Saving>,
    open_dialog: Option<Promise<Option<PathBuf>>>,
    /// Measured costs, for the preview settings.
    pub last_decode_secs: Option<f64>,
    pub last_sec_per_step: Option<f64>,
    /// Where "Quick save" writes.
    pub output_dir: Option<PathBuf>,
    /// Step previews shown this session (projected, fully decoded).
    pub previews_projected: usize,
    pub previews_decoded: usize,
}

impl Default for GeneratePanel {
    fn default() -> Self {
        Self {
            query: String::new(),
            class: Some(207),
            guidance: DEMO_GUIDANCE,
            steps: 30,
            seed: 0,
            seed_locked: false,
            batch: 1,
            live_preview: true,
            decode_every: 10,
            decode_every_touched: false,
            num_classes: api::NUM_CLASSES,
            class_search: ClassSearch::default(),
            steps_default: None,
            run: None,
            shown: Shown::Current,
            compare_from: None,
            save_dialog: None,
            saving: Vec::new(),
            open_dialog: None,
            last_decode_secs: None,
            last_sec_per_step: None,
            output_dir: default_output_dir(),
            previews_projected: 0,
            previews_decoded: 0,
        }
    }
}

/// The classes matching the search box: computed when the query (or the model's class count)
/// changes, not on every frame.
#[derive(Default)]
pub struct ClassSearch {
    key: Option<(String, usize)>,
    hits: Vec<(usize, String)>,
    searches: usize,
}

impl ClassSearch {
    pub fn hits(&mut self, query: &str, num_classes: usize) -> &[(usize, String)] {
        if self.key.as_ref().is_none_or(|(q, n)| q != query || *n != num_classes) {
            self.hits = if query.trim().is_empty() {
                (0..num_classes.min(40)).map(|i| (i, api::class_name(i).unwrap_or_else(|| format!("class {i}")))).collect()
            } else {
                api::class_search(query, 60).into_iter().filter(|(i, _)| *i < num_classes).collect()
            };
            self.key = Some((query.to_string(), num_classes));
            self.searches += 1;
        }
        &self.hits
    }

    /// How many searches ran (tests).
    pub fn searches(&self) -> usize {
        self.searches
    }
}

/// `~/Pictures/DC-AE Studio` (or the home folder's equivalent).
pub fn default_output_dir() -> Option<PathBuf> {
    dirs::picture_dir().or_else(dirs::home_dir).map(|d| d.join("DC-AE Studio"))
}

impl GeneratePanel {
    pub fn is_running(&self) -> bool {
        self.run.is_some()
    }

    /// Adopts a newly loaded model's class count and default steps.
    pub fn on_generator(&mut self, info: &GeneratorInfo) {
        self.num_classes = info.num_classes;
        if let Some(c) = self.class {
            if c >= info.num_classes {
                self.class = Some(0);
            }
        }
        // The model's default only where the user made no choice: on the first model, on a
        // different model, or while the steps still are the default set last time. A reload of
        // the same model (engine restart, backend switch) keeps what the user set.
        let default = info.default_steps.max(1);
        let chosen = matches!(&self.steps_default, Some((name, d)) if *name == info.name && self.steps != *d);
        if !chosen {
            self.steps = default;
        }
        self.steps_default = Some((info.name.clone(), default));
        self.decode_every = self.decode_every.min(self.steps);
    }

    pub fn abort_run(&mut self) {
        if let Some(r) = self.run.take() {
            r.cancel.store(true, Ordering::Relaxed);
        }
    }

    pub fn on_error(&mut self, job: u64) {
        if self.run.as_ref().is_some_and(|r| r.id == job) {
            self.run = None;
        }
    }

    /// Returns whether the job was ours.
    pub fn on_cancelled(&mut self, job: u64, shared: &mut Shared) -> bool {
        if self.run.as_ref().is_some_and(|r| r.id == job) {
            self.run = None;
            shared.notices.info("Generation cancelled");
            return true;
        }
        false
    }

    fn labels(&self) -> Vec<usize> {
        let id = self.class.filter(|c| *c < self.num_classes).unwrap_or(self.num_classes);
        vec![id; self.batch.max(1)]
    }

    /// The settings as saved in PNGs; the unconditional class is written as
    /// `labels::UNCONDITIONAL` (1000) whatever the model's own null id.
    pub fn params(&self, info: &GeneratorInfo) -> GenerationParams {
        let id = match self.class.filter(|c| *c < self.num_classes) {
            Some(c) => c as u32,
            None => api::UNCONDITIONAL,
        };
        GenerationParams {
            classes: vec![id; self.batch.max(1)],
            guidance: self.guidance,
            steps: self.steps,
            seed: self.seed,
            model: info.name.clone(),
            sampler: info.sampler.clone(),
            batch: self.batch.max(1),
        }
    }

    /// Starts a generation with the current settings.
    pub fn start(&mut self, shared: &mut Shared) {
        let GeneratorState::Ready(info) = &shared.generator else {
            shared.notices.error("No generation model is loaded yet");
            return;
        };
        let info = info.clone();
        if self.run.is_some() {
            return;
        }
        if !self.seed_locked {
            self.seed = rand::random::<u32>() as u64;
        }
        let id = shared.next_id();
        let cancel = cancel_token();
        let params = self.params(&info);
        shared.worker.send(Job::Generate(GenerateJob {
            id,
            labels: self.labels(),
            cfg_scale: self.guidance,
            steps: self.steps,
            seed: self.seed,
            preview_latents: self.live_preview,
            decode_every: self.decode_every,
            cancel: cancel.clone(),
        }));
        self.run = Some(Run {
            id,
            cancel,
            params,
            step: 0,
            total: 0,
            sec_per_step: 0.0,
            started: Instant::now(),
            projected: Vec::new(),
            projected_step: 0,
            decoded: Vec::new(),
            decoded_step: 0,
            cancelling: false,
        });
        self.shown = Shown::Current;
    }

    pub fn cancel(&mut self) {
        if let Some(r) = &mut self.run {
            r.cancel.store(true, Ordering::Relaxed);
            r.cancelling = true;
        }
    }

    pub fn on_event(&mut self, ev: Event, shared: &mut Shared, ctx: &egui::Context) {
        let Some(run) = &mut self.run else { return };
        match ev {
            Event::Progress { job, step, total, sec_per_step, .. } if job == run.id => {
                run.step = step;
                run.total = total;
                run.sec_per_step = sec_per_step;
            }
            Event::PreviewLatent { job, step, latents, .. } if job == run.id => {
                if let Some(p) = &shared.projection {
                    run.projected = shared.preview.project(ctx, &latents, p);
                    run.projected_step = step;
                    self.previews_projected += 1;
                }
            }
            Event::PreviewDecoded { job, step, images, secs } if job == run.id => {
                run.decoded = images.iter().enumerate().map(|(i, img)| widgets::texture(ctx, &format!("decoded-{i}"), img)).collect();
                run.decoded_step = step;
                self.last_decode_secs = Some(secs);
                self.previews_decoded += 1;
            }
            Event::Generated { job, images, nfe, network_calls, sampling_secs, decode_secs } if job == run.id => {
                let Some(run) = self.run.take() else { return };
                self.last_sec_per_step = Some(run.sec_per_step);
                let textures = images.iter().enumerate().map(|(i, img)| widgets::texture(ctx, &format!("result-{job}-{i}"), img)).collect();
                shared.history.push(HistoryItem {
                    id: job,
                    params: run.params,
                    images,
                    textures,
                    sampling_secs,
                    decode_secs,
                    nfe,
                    network_calls,
                    saved_to: None,
                    opened: false,
                    num_classes: self.num_classes,
                });
                self.shown = Shown::Item(job);
            }
            _ => {}
        }
    }

    pub fn poll(&mut self, shared: &mut Shared) {
        if let Some((id, p)) = &self.save_dialog {
            if let Some(result) = p.ready() {
                let (id, result) = (*id, result.clone());
                self.save_dialog = None;
                if let Some(path) = result {
                    self.save_item(shared, id, path, true);
                }
            }
        }
        if let Some(p) = &self.open_dialog {
            if let Some(result) = p.ready() {
                let result = result.clone();
                self.open_dialog = None;
                if let Some(path) = result {
                    shared.files.open_path(path, super::files::Purpose::RestoreSettings);
                }
            }
        }
        let mut i = 0;
        while i < self.saving.len() {
            let Some(result) = self.saving[i].poll() else {
                i += 1;
                continue;
            };
            let done = self.saving.remove(i);
            match result {
                Ok(paths) => {
                    if let Some(item) = shared.history.iter_mut().find(|h| h.id == done.item) {
                        item.saved_to = paths.first().cloned();
                    }
                    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                    shared.notices.info(format!("Saved {}", list.join(", ")));
                }
                Err(e) => shared.notices.error(e),
            }
        }
    }

    pub fn saving(&self) -> bool {
        !self.saving.is_empty()
    }

    /// Writes a history item's images on a helper thread. `replace`: the user picked `path` in a
    /// save dialog (which asked before replacing a file).
    fn save_item(&mut self, shared: &mut Shared, id: u64, path: PathBuf, replace: bool) {
        let Some(item) = shared.history.iter().find(|h| h.id == id) else { return };
        self.saving.push(super::files::save(id, item.images.clone(), item.params.clone(), path, replace));
    }

    /// Restores the parameters of a PNG saved by this app (read and decoded off the UI thread
    /// by [`super::files`]) and adds its picture to the history.
    pub fn open_params(&mut self, name: &str, params: GenerationParams, image: Option<image::RgbImage>, shared: &mut Shared, ctx: &egui::Context) {
        self.apply_params(&params);
        let id = shared.next_id();
        if let Some(img) = image {
            let tex = widgets::texture(ctx, &format!("opened-{id}"), &img);
            shared.history.push(HistoryItem {
                id,
                params,
                images: vec![img],
                textures: vec![tex],
                sampling_secs: 0.0,
                decode_secs: 0.0,
                nfe: 0,
                network_calls: 0,
                saved_to: Some(PathBuf::from(name)),
                opened: true,
                num_classes: self.num_classes,
            });
            self.shown = Shown::Item(id);
        }
        shared.notices.info(format!("Restored the settings of {name} (seed {} locked)", self.seed));
    }

    /// Puts a result's settings back into the controls (the seed is locked so it repeats).
    pub fn apply_params(&mut self, p: &GenerationParams) {
        let first = p.classes.first().map(|&c| c as usize);
        self.class = first.filter(|&c| c < self.num_classes);
        self.guidance = p.guidance.clamp(1.0, 10.0);
        self.steps = p.steps.clamp(1, 200);
        self.seed = p.seed;
        self.seed_locked = true;
        self.batch = p.batch.clamp(1, MAX_BATCH);
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        egui::Panel::left("generate_controls").resizable(true).default_size(320.0).min_size(280.0).show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| self.controls(ui, shared));
        });
        if !shared.history.is_empty() {
            egui::Panel::bottom("history_strip").resizable(false).exact_size(132.0).show(ui, |ui| self.history_strip(ui, shared));
        }
        egui::CentralPanel::default().show(ui, |ui| self.central(ui, shared));
    }

    fn controls(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        ui.add_space(4.0);
        let ready = match &shared.generator {
            GeneratorState::Ready(info) => {
                ui.label(RichText::new(&info.name).strong().monospace()).on_hover_text(format!(
                    "{} classes · latent {}×{}×{} · {}×{} px images",
                    info.num_classes,
                    info.latent_channels,
                    info.latent_size,
                    info.latent_size,
                    info.image_size(),
                    info.image_size()
                ));
                ui.label(
                    RichText::new(format!("{} classes · {}×{} px · f{}c{}", info.num_classes, info.image_size(), info.image_size(), info.factor, info.latent_channels))
                        .small()
                        .weak(),
                );
                true
            }
            GeneratorState::Loading(name) => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(format!("Loading {name}…"));
                });
                false
            }
            GeneratorState::Missing => {
                ui.label(RichText::new("No generation model").strong());
                if ui.button("Go to Models").clicked() {
                    shared.goto = Some(super::Tab::Models);
                }
                false
            }
            GeneratorState::Failed { name, message } => {
                ui.label(RichText::new(format!("{name} could not be loaded")).color(ui.visuals().error_fg_color));
                ui.label(RichText::new(message).small());
                false
            }
        };
        ui.separator();

        // Class picker.
        ui.label(RichText::new("Class").strong());
        ui.add(
            egui::TextEdit::singleline(&mut self.query)
                .hint_text(format!("search {} classes: name or id", self.num_classes))
                .desired_width(f32::INFINITY),
        );
        let hits = self.class_search.hits(&self.query, self.num_classes).to_vec();
        egui::Frame::group(ui.style()).inner_margin(4.0).show(ui, |ui| {
            egui::ScrollArea::vertical().id_salt("class_list").max_height(150.0).auto_shrink([false, true]).show(ui, |ui| {
                if ui.selectable_label(self.class.is_none(), "unconditional (no class)").clicked() {
                    self.class = None;
                }
                for (id, name) in &hits {
                    if ui.selectable_label(self.class == Some(*id), format!("{id} · {name}")).clicked() {
                        self.class = Some(*id);
                    }
                }
                if hits.is_empty() {
                    ui.label(RichText::new("no class matches").weak());
                } else if self.query.trim().is_empty() && self.num_classes > hits.len() {
                    ui.label(RichText::new(format!("… type to search all {}", self.num_classes)).weak());
                }
            });
        });
        ui.horizontal(|ui| {
            let label = match self.class {
                Some(c) => class_label(c, self.num_classes),
                None => "unconditional".into(),
            };
            ui.label(RichText::new(format!("Selected: {label}")).strong());
            if ui.small_button("🎲").on_hover_text("A random class").clicked() {
                self.class = Some(rand::random::<u32>() as usize % self.num_classes.max(1));
            }
        });
        ui.add_space(6.0);

        // Guidance.
        ui.label(RichText::new("Guidance (CFG)").strong());
        ui.add(egui::Slider::new(&mut self.guidance, 1.0..=10.0).step_by(0.1).fixed_decimals(1));
        ui.horizontal(|ui| {
            if ui.small_button("6.0 demo").on_hover_text("The authors' demo setting: strong, clean class features").clicked() {
                self.guidance = DEMO_GUIDANCE;
            }
            if ui.small_button("1.5 FID").on_hover_text("The setting of the authors' FID 2.66: more variety, weaker class features").clicked() {
                self.guidance = FID_GUIDANCE;
            }
            if ui.small_button("1.0 off").on_hover_text("No guidance: one network call per step instead of two").clicked() {
                self.guidance = 1.0;
            }
        });
        ui.add_space(6.0);

        egui::Grid::new("gen_numbers").num_columns(2).spacing([8.0, 6.0]).show(ui, |ui| {
            ui.label("Steps");
            ui.add(egui::DragValue::new(&mut self.steps).range(1..=200))
                .on_hover_text("Network evaluations of DPM-Solver++ (order 3); the authors use 30, done in 11 solver steps");
            ui.end_row();
            ui.label("Seed");
            ui.horizontal(|ui| {
                ui.add(egui::DragValue::new(&mut self.seed).speed(1.0));
                if ui.small_button("🎲").on_hover_text("New random seed").clicked() {
                    self.seed = rand::random::<u32>() as u64;
                }
                ui.checkbox(&mut self.seed_locked, "🔒 lock").on_hover_text("Locked: every run uses this seed. Unlocked: a new random seed each run.");
            });
            ui.end_row();
            ui.label("Batch");
            ui.add(egui::Slider::new(&mut self.batch, 1..=MAX_BATCH)).on_hover_text("Images per run, shown as a grid");
            ui.end_row();
        });
        ui.add_space(6.0);

        egui::CollapsingHeader::new(RichText::new("Step previews").strong()).default_open(true).show(ui, |ui| {
            ui.checkbox(&mut self.live_preview, format!("Live preview every step ({})", shared.preview.kind()))
                .on_hover_text("x0 of each step mapped to RGB by a linear latent-to-RGB projection fitted for this model");
            ui.horizontal(|ui| {
                ui.label("Full decode every");
                if ui.add(egui::DragValue::new(&mut self.decode_every).range(0..=200)).changed() {
                    self.decode_every_touched = true;
                }
                ui.label("solver steps");
            })
            .response
            .on_hover_text("0 = off. A full DC-AE decode is exact but costs about as much as many sampling steps.");
            let proj = if shared.preview.mean_ms() > 0.0 { format!("{:.2} ms", shared.preview.mean_ms()) } else { "–".into() };
            let mut cost = format!("projection: {proj}/step");
            if let Some(d) = self.last_decode_secs {
                cost.push_str(&format!(" · full decode: {}", widgets::secs(d)));
                if let Some(s) = self.last_sec_per_step.or(self.run.as_ref().map(|r| r.sec_per_step)).filter(|s| *s > 0.0) {
                    cost.push_str(&format!(" (≈ {:.1} sampling steps)", d / s));
                }
            }
            ui.label(RichText::new(cost).small());
            if let Some(note) = &shared.projection_note {
                ui.label(RichText::new(format!("Projection {note}")).small().weak());
            }
        });
        ui.add_space(10.0);

        // Generate / Cancel and progress.
        match &self.run {
            None => {
                let button = egui::Button::new(RichText::new("✨ Generate").size(18.0)).min_size(Vec2::new(ui.available_width(), 36.0));
                let resp = ui.add_enabled(ready, button);
                let resp = if ready { resp.on_hover_text("Ctrl+Enter") } else { resp.on_disabled_hover_text("Load a generation model first (Models tab)") };
                let shortcut = ui.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::Enter));
                if resp.clicked() || (ready && shortcut) {
                    self.start(shared);
                }
            }
            Some(run) => {
                let cancelling = run.cancelling;
                let button = egui::Button::new(RichText::new(if cancelling { "Cancelling…" } else { "⏹ Cancel" }).size(18.0))
                    .min_size(Vec2::new(ui.available_width(), 36.0));
                if ui.add_enabled(!cancelling, button).clicked() {
                    self.cancel();
                }
            }
        }
        if let Some(run) = &self.run {
            let frac = if run.total > 0 { run.step as f32 / run.total as f32 } else { 0.0 };
            let text = if run.step == 0 {
                let status = if shared.engine_status.is_empty() { "starting…".to_string() } else { shared.engine_status.clone() };
                status
            } else if run.step >= run.total {
                "decoding the final image…".to_string()
            } else {
                let left = run.sec_per_step * (run.total - run.step) as f64;
                format!("Step {}/{} · {} · {} left", run.step, run.total, per_step(run.sec_per_step), widgets::secs(left))
            };
            ui.add(egui::ProgressBar::new(frac).text(text));
            ui.label(RichText::new(format!("elapsed {}", widgets::secs(run.started.elapsed().as_secs_f64()))).small().weak());
        }
        ui.add_space(10.0);
        if ui.button("📂 Open PNG…").on_hover_text("Restore the settings saved in a PNG (or drop it on the window)").clicked() {
            self.open_dialog = Some(Promise::spawn_thread("open-png", || rfd::FileDialog::new().add_filter("PNG", &["png"]).pick_file()));
        }
    }

    fn central(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        match self.shown {
            Shown::Current => {
                if let Some(run) = &self.run {
                    self.show_run(ui, run);
                } else if matches!(shared.generator, GeneratorState::Missing) {
                    ui.add_space(20.0);
                    ui.heading("No generation model yet");
                    ui.label(models::missing_generator_help(shared.hub.offline));
                    if ui.button("Open the Models tab").clicked() {
                        shared.goto = Some(super::Tab::Models);
                    }
                } else {
                    ui.centered_and_justified(|ui| {
                        ui.label(RichText::new("Pick a class and press Generate").weak().size(18.0));
                    });
                }
            }
            Shown::Item(id) => {
                if let Some(run) = &self.run {
                    // A run in progress takes the view back.
                    let _ = run;
                    self.shown = Shown::Current;
                    return;
                }
                self.show_item(ui, shared, id);
            }
            Shown::Compare(a, b) => {
                let (Some(ia), Some(ib)) = (shared.history.iter().position(|h| h.id == a), shared.history.iter().position(|h| h.id == b)) else {
                    self.shown = Shown::Current;
                    return;
                };
                ui.horizontal(|ui| {
                    ui.heading("Compare");
                    if ui.button("✖ Close").clicked() {
                        self.shown = Shown::Item(b);
                    }
                });
                ui.columns(2, |cols| {
                    for (col, idx) in cols.iter_mut().zip([ia, ib]) {
                        let item = &shared.history[idx];
                        col.label(RichText::new(item.title()).strong());
                        col.label(RichText::new(format!("sampling {} · decode {}", widgets::secs(item.sampling_secs), widgets::secs(item.decode_secs))).small());
                        let n = item.textures.len();
                        let tex: Vec<_> = item.textures.iter().map(|t| t.id()).collect();
                        widgets::grid(col, n, 1.0, 512.0, |ui, i, rect| widgets::paint_texture(ui, rect, tex[i]));
                    }
                });
            }
        }
    }

    fn show_run(&self, ui: &mut egui::Ui, run: &Run) {
        let n = run.params.batch.max(1);
        let show_decoded = !run.decoded.is_empty();
        let heading = if run.projected.is_empty() && !show_decoded {
            "Waiting for the first step…".to_string()
        } else {
            format!("Live preview · step {}/{}", run.projected_step.max(run.decoded_step), run.total)
        };
        ui.heading(heading);
        let draw = |ui: &mut egui::Ui, title: String, tex: Vec<Option<egui::TextureId>>| {
            ui.vertical(|ui| {
                ui.label(RichText::new(title).small());
                widgets::grid(ui, n, 1.0, 512.0, |ui, i, rect| match tex.get(i).copied().flatten() {
                    Some(t) => widgets::paint_texture(ui, rect, t),
                    None => {
                        ui.painter().rect_filled(rect, 4.0, super::preview::placeholder_color());
                    }
                });
            });
        };
        let projected: Vec<Option<egui::TextureId>> = (0..n).map(|i| run.projected.get(i).map(|p| p.texture)).collect();
        let decoded: Vec<Option<egui::TextureId>> = (0..n).map(|i| run.decoded.get(i).map(|t| t.id())).collect();
        if show_decoded {
            ui.columns(2, |cols| {
                draw(&mut cols[0], format!("latent-to-RGB projection (step {})", run.projected_step), projected);
                draw(&mut cols[1], format!("full DC-AE decode (step {})", run.decoded_step), decoded);
            });
        } else {
            draw(ui, format!("latent-to-RGB projection (step {})", run.projected_step), projected);
        }
    }

    fn show_item(&mut self, ui: &mut egui::Ui, shared: &mut Shared, id: u64) {
        let Some(idx) = shared.history.iter().position(|h| h.id == id) else {
            self.shown = Shown::Current;
            return;
        };
        let mut action = None;
        {
            let item = &shared.history[idx];
            ui.horizontal_wrapped(|ui| {
                ui.heading(item.title());
            });
            let timing = if item.opened {
                format!("opened from {}", item.saved_to.as_ref().map(|p| p.display().to_string()).unwrap_or_default())
            } else {
                format!(
                    "{} · sampling {} ({} guided predictions, {} network calls) · decode {}",
                    item.params.model,
                    widgets::secs(item.sampling_secs),
                    item.nfe,
                    item.network_calls,
                    widgets::secs(item.decode_secs)
                )
            };
            ui.label(RichText::new(timing).small().weak());
            ui.horizontal(|ui| {
                if ui.button("💾 Save PNG…").on_hover_text("Save with the parameters embedded (PNG text chunk)").clicked() {
                    action = Some("save");
                }
                if ui.button("⚡ Quick save").on_hover_text(format!("Save into {}", self.output_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default())).clicked() {
                    action = Some("quick");
                }
                if ui.button("⟲ Use these settings").clicked() {
                    action = Some("use");
                }
                if ui.button("⇆ Compare…").on_hover_text("Then click another item in the history").clicked() {
                    action = Some("compare");
                }
                if let Some(p) = &item.saved_to {
                    ui.label(RichText::new(format!("saved: {}", p.display())).small().weak());
                }
            });
            if self.compare_from == Some(id) {
                ui.label(RichText::new("Click another history item to compare with this one").italics());
            }
            let n = item.textures.len();
            let tex: Vec<_> = item.textures.iter().map(|t| t.id()).collect();
            let size = item.images.first().map(|i| i.width() as f32 / i.height().max(1) as f32).unwrap_or(1.0);
            widgets::grid(ui, n, size, 768.0, |ui, i, rect| widgets::paint_texture(ui, rect, tex[i]));
        }
        match action {
            Some("save") => {
                let name = history::suggested_file_name(&shared.history[idx].params, self.num_classes);
                let dir = self.output_dir.clone();
                self.save_dialog = Some((
                    id,
                    Promise::spawn_thread("save-png", move || {
                        let mut d = rfd::FileDialog::new().set_file_name(name).add_filter("PNG", &["png"]);
                        if let Some(dir) = dir.filter(|d| d.is_dir()) {
                            d = d.set_directory(dir);
                        }
                        d.save_file()
                    }),
                ));
            }
            Some("quick") => {
                if let Some(dir) = self.output_dir.clone() {
                    let name = history::suggested_file_name(&shared.history[idx].params, self.num_classes);
                    self.save_item(shared, id, dir.join(name), false);
                } else {
                    shared.notices.error("no folder to save into; use Save PNG…");
                }
            }
            Some("use") => {
                let p = shared.history[idx].params.clone();
                self.apply_params(&p);
            }
            Some("compare") => self.compare_from = Some(id),
            _ => {}
        }
    }

    fn history_strip(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        ui.horizontal(|ui| {
            ui.label(RichText::new("History").strong());
            ui.label(RichText::new(format!("{} this session · click to view, right-click for more", shared.history.len())).small().weak());
        });
        let mut clicked = None;
        let mut remove = None;
        egui::ScrollArea::horizontal().id_salt("history_scroll").stick_to_right(true).show(ui, |ui| {
            ui.horizontal(|ui| {
                for item in shared.history.iter() {
                    let Some(tex) = item.textures.first() else { continue };
                    let selected = matches!(self.shown, Shown::Item(i) if i == item.id) || self.compare_from == Some(item.id);
                    let size = Vec2::splat(88.0);
                    let (rect, resp) = ui.allocate_exact_size(size, egui::Sense::click());
                    widgets::paint_texture(ui, rect, tex.id());
                    if item.images.len() > 1 {
                        ui.painter().text(rect.right_bottom() - Vec2::new(4.0, 4.0), egui::Align2::RIGHT_BOTTOM, format!("×{}", item.images.len()), egui::FontId::proportional(12.0), Color32::WHITE);
                    }
                    if selected {
                        ui.painter().rect_stroke(rect, 2.0, egui::Stroke::new(2.0, ui.visuals().selection.stroke.color), egui::StrokeKind::Outside);
                    }
                    let resp = resp.on_hover_text(item.title());
                    if resp.clicked() {
                        clicked = Some(item.id);
                    }
                    resp.context_menu(|ui| {
                        if ui.button("Compare with the shown item").clicked() {
                            if let Shown::Item(cur) = self.shown {
                                if cur != item.id {
                                    self.shown = Shown::Compare(cur, item.id);
                                }
                            }
                            ui.close();
                        }
                        if ui.button("Remove from history").clicked() {
                            remove = Some(item.id);
                            ui.close();
                        }
                    });
                }
            });
        });
        if let Some(id) = clicked {
            match self.compare_from.take() {
                Some(from) if from != id => self.shown = Shown::Compare(from, id),
                _ => self.shown = Shown::Item(id),
            }
        }
        if let Some(id) = remove {
            shared.history.retain(|h| h.id != id);
            if matches!(self.shown, Shown::Item(i) if i == id) || matches!(self.shown, Shown::Compare(a, b) if a == id || b == id) {
                self.shown = Shown::Current;
            }
        }
    }
}

/// "0.41 s/step", "35 ms/step".
fn per_step(secs: f64) -> String {
    if secs >= 1.0 {
        format!("{secs:.2} s/step")
    } else {
        format!("{:.0} ms/step", secs * 1e3)
    }
}
