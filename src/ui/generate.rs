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
use crate::engine::worker::api::{self, Controls, GeneratorInfo, ImageParams, Input, SizeControl};
use crate::model::sana::adapter::TextRequest;
use crate::engine::worker::{cancel_token, CancelToken, Conditioning, Event, GenerateJob, Generated, InitImage, Job};

/// The guidance before a model says its own: the authors' demo value.
pub use crate::model::diffusion::DEMO_GUIDANCE;
/// The guidance of the UViTs' FID numbers, before a model says its own.
pub const FID_GUIDANCE: f32 = 1.5;
pub const MAX_BATCH: usize = 16;
/// Prompts kept in the "recent" list.
pub const PROMPT_HISTORY: usize = 30;
/// What the text box starts with, so a first Generate shows what the model does.
pub const EXAMPLE_PROMPT: &str = "a cozy cabin in a snowy forest at dusk, warm light in the windows";

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
    pub params: ImageParams,
    /// Width / height of the images, for laying out the previews.
    pub aspect: f32,
    /// A phase outside the steps (text encoding, decoding): label, done, total.
    pub phase: Option<(String, usize, usize)>,
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

/// The picture an image-to-image run starts from.
pub struct Source {
    pub name: String,
    pub image: std::sync::Arc<image::RgbImage>,
    texture: TextureHandle,
}

impl Source {
    /// The size it is shown at (the texture's), which the renderer bounds; the job gets `image`.
    pub fn shown_size(&self) -> [usize; 2] {
        self.texture.size()
    }
}

/// SDEdit's usual middle ground: the layout of the source, the content of the prompt.
pub const DEFAULT_STRENGTH: f32 = 0.6;

pub struct GeneratePanel {
    /// Image-to-image source; `None`: text/class to image from noise.
    pub source: Option<Source>,
    /// How much of the schedule is rerun from the source: 1 ignores it, 0.1 barely changes it.
    pub strength: f32,
    source_dialog: Option<Promise<Result<Option<PathBuf>, String>>>,
    /// Which controls are shown: what the loaded model asks for ([`GeneratorInfo::controls`]).
    pub controls: Controls,
    pub prompt: String,
    pub negative_prompt: String,
    /// Recent prompts, newest first.
    pub prompt_history: Vec<String>,
    /// Size of text-to-image results (multiples of the model's factor).
    pub width: usize,
    pub height: usize,
    /// Prepend SANA's complex human instruction (the pipelines' default).
    pub instruction: bool,
    /// The model whose default guidance and size were applied last.
    guidance_default: Option<(String, f32)>,
    size_default: Option<(String, (usize, usize))>,
    /// Runs the UI stopped following, by job id, whose result is kept if it still arrives.
    orphans: std::collections::HashMap<u64, ImageParams>,
    /// Settings were just restored from a PNG: the next model load keeps them (they are the
    /// user's choice, not defaults to replace).
    restored: bool,
    /// The size came from the saved settings: the first model load keeps it.
    keep_size: bool,
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
    /// The loaded model's samplers `(name, label)`, its default first, and the chosen one
    /// (`None`: the default); the step bound and what a step is, as the model says.
    pub samplers: Vec<(String, String)>,
    pub sampler: Option<String>,
    /// The sampler (label) of a restored PNG, chosen once its model has loaded.
    restored_sampler: Option<String>,
    max_steps: usize,
    steps_hint: String,
    pub run: Option<Run>,
    pub shown: Shown,
    /// First pick of a comparison (set by "Compare…", completed by clicking another item).
    compare_from: Option<u64>,
    save_dialog: Option<(u64, Promise<Result<Option<PathBuf>, String>>)>,
    /// Saves being written on helper threads.
    saving: Vec<super::files::Saving>,
    open_dialog: Option<Promise<Result<Option<PathBuf>, String>>>,
    /// Released history items being read back from the gallery, and those that could not be.
    restoring: std::collections::HashMap<u64, Promise<Result<Vec<image::RgbImage>, String>>>,
    restore_failed: std::collections::HashSet<u64>,
    /// Measured costs, for the preview settings.
    pub last_decode_secs: Option<f64>,
    pub last_sec_per_step: Option<f64>,
    /// The largest batch the last run's adapter gave one decode (`None`: the budget decided).
    pub last_decode_batch: Option<usize>,
    /// Where "Quick save" writes.
    pub output_dir: Option<PathBuf>,
    /// Step previews shown this session (projected, fully decoded).
    pub previews_projected: usize,
    pub previews_decoded: usize,
}

impl Default for GeneratePanel {
    fn default() -> Self {
        Self {
            source: None,
            strength: DEFAULT_STRENGTH,
            source_dialog: None,
            controls: Controls::classes(api::NUM_CLASSES, 512, FID_GUIDANCE),
            prompt: EXAMPLE_PROMPT.to_string(),
            negative_prompt: String::new(),
            prompt_history: Vec::new(),
            width: 512,
            height: 512,
            instruction: true,
            guidance_default: None,
            size_default: None,
            restored: false,
            keep_size: false,
            orphans: std::collections::HashMap::new(),
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
            samplers: Vec::new(),
            sampler: None,
            restored_sampler: None,
            max_steps: 200,
            steps_hint: "Network evaluations of DPM-Solver++ (order 3); the authors use 30, done in 11 solver steps".into(),
            run: None,
            shown: Shown::Current,
            compare_from: None,
            save_dialog: None,
            saving: Vec::new(),
            open_dialog: None,
            restoring: Default::default(),
            restore_failed: Default::default(),
            last_decode_secs: None,
            last_sec_per_step: None,
            last_decode_batch: None,
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
        self.controls = info.controls.clone();
        self.num_classes = info.num_classes.max(1);
        if info.samplers != self.samplers {
            // Another family's sampler means nothing to this one.
            self.sampler = None;
        }
        self.samplers = info.samplers.clone();
        if let Some(label) = self.restored_sampler.take() {
            self.sampler = info.sampler_by_label(&label);
        }
        self.max_steps = info.max_steps.max(1);
        self.steps_hint = info.steps_hint.clone();
        if std::mem::take(&mut self.restored) {
            self.guidance_default = Some((info.name.clone(), info.default_guidance));
            self.size_default = Some((info.name.clone(), (info.image_size(), info.image_size())));
            self.steps_default = Some((info.name.clone(), info.default_steps.max(1)));
            self.decode_every = self.decode_every.min(self.steps);
            return;
        }
        // Guidance and size like the steps below: the model's defaults unless the user chose.
        let g = info.default_guidance;
        let chose_g = matches!(&self.guidance_default, Some((name, d)) if *name == info.name && (self.guidance - *d).abs() > 1e-6);
        if !chose_g {
            self.guidance = g;
        }
        self.guidance_default = Some((info.name.clone(), g));
        let side = info.image_size();
        let chose_size = std::mem::take(&mut self.keep_size)
            || matches!(&self.size_default, Some((name, d)) if *name == info.name && (self.width, self.height) != *d);
        if !chose_size {
            (self.width, self.height) = (side, side);
        }
        self.size_default = Some((info.name.clone(), (side, side)));
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
            // If the engine finishes it anyway (it was decoding), the result is still kept.
            self.orphans.insert(r.id, r.params);
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

    /// Sets the image-to-image source (a dropped or picked picture, a history item).
    pub fn set_source(&mut self, name: String, image: image::RgbImage, ctx: &egui::Context) {
        let texture = widgets::texture(ctx, "img2img-source", &image);
        self.source = Some(Source { name, image: std::sync::Arc::new(image), texture });
    }

    fn is_text(&self) -> bool {
        self.controls.takes_prompt()
    }

    fn labels(&self) -> Vec<usize> {
        let id = self.class.filter(|c| *c < self.num_classes).unwrap_or(self.num_classes);
        vec![id; self.batch.max(1)]
    }

    /// The text part of a job, checked: `Err` says what to fix.
    fn text_request(&self, info: &GeneratorInfo) -> Result<TextRequest, String> {
        let prompt = self.prompt.trim();
        if prompt.is_empty() {
            return Err("Type a prompt first: describe the picture you want".into());
        }
        let (width, height) = info.check_size(self.width, self.height)?;
        let negative = matches!(self.controls.input, Input::Prompt { negative: true, .. });
        Ok(TextRequest {
            prompt: prompt.to_string(),
            negative_prompt: if negative { self.negative_prompt.trim().to_string() } else { String::new() },
            batch: self.batch.max(1),
            width,
            height,
            instruction: self.instruction,
            binning: true,
        })
    }

    fn remember_prompt(&mut self) {
        let p = self.prompt.trim().to_string();
        if p.is_empty() {
            return;
        }
        self.prompt_history.retain(|h| *h != p);
        self.prompt_history.insert(0, p);
        self.prompt_history.truncate(PROMPT_HISTORY);
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
        let text = if self.is_text() {
            match self.text_request(&info) {
                Ok(t) => Some(t),
                Err(e) => {
                    shared.notices.error(e);
                    return;
                }
            }
        } else {
            None
        };
        if text.is_some() {
            self.remember_prompt();
        }
        if !self.seed_locked {
            self.seed = rand::random::<u32>() as u64;
        }
        let id = shared.next_id();
        let cancel = cancel_token();
        let aspect = text.as_ref().map_or(1.0, |t| t.width as f32 / t.height.max(1) as f32);
        let conditioning = match text {
            Some(t) => Conditioning::Prompt(t),
            None => Conditioning::Classes(self.labels()),
        };
        let job = GenerateJob {
            id,
            conditioning,
            init: self.source.as_ref().map(|s| InitImage { image: s.image.clone(), strength: self.strength }),
            cfg_scale: self.guidance,
            steps: self.steps,
            seed: self.seed,
            sampler: self.sampler.clone(),
            preview_latents: self.live_preview,
            decode_every: self.decode_every,
            cancel: cancel.clone(),
        };
        let source = self.source.as_ref().map_or("", |s| s.name.as_str());
        let params = job.image_params(&info, info.sampler_label(job.sampler.as_deref()), source);
        shared.worker.send(Job::Generate(job));
        self.run = Some(Run {
            id,
            cancel,
            params,
            aspect,
            phase: None,
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
            Event::Phase { job, label, done, total } if job == run.id => run.phase = Some((label, done, total)),
            Event::Progress { job, step, total, sec_per_step, .. } if job == run.id => {
                run.phase = None;
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
            _ => {}
        }
    }

    /// A finished run: its result into the history, also for a run the UI stopped following
    /// (engine restart, backend switch) that the engine still finished.
    pub fn on_generated(&mut self, job: u64, g: Generated, shared: &mut Shared, ctx: &egui::Context) {
        let Generated { images, nfe, network_calls, sampling_secs, decode_secs, sampler, decode_batch } = g;
        self.last_decode_batch = decode_batch;
        let cost = (nfe, network_calls, sampling_secs, decode_secs);
        if let Some(mut params) = self.orphans.remove(&job) {
            params.set_sampler(sampler);
            self.add_result(job, params, images, cost, shared, ctx);
            return;
        }
        let Some(mut run) = self.run.take_if(|r| r.id == job) else { return };
        // What actually ran (the engine's label), whatever the UI assumed.
        run.params.set_sampler(sampler);
        self.last_sec_per_step = Some(run.sec_per_step);
        self.add_result(job, run.params, images, cost, shared, ctx);
        self.shown = Shown::Item(job);
    }

    /// A finished result: into the history and, on disk, into the gallery at once.
    fn add_result(&mut self, job: u64, params: ImageParams, images: Vec<image::RgbImage>, cost: (usize, usize, f64, f64), shared: &mut Shared, ctx: &egui::Context) {
        let (nfe, network_calls, sampling_secs, decode_secs) = cost;
        shared.keep_in_gallery(job, images.clone(), params.clone());
        // Its gallery copies are filled in when their write ends (`Shared::poll_gallery`).
        let mut item = HistoryItem::new(ctx, job, params, images, self.num_classes);
        (item.sampling_secs, item.decode_secs, item.nfe, item.network_calls) = (sampling_secs, decode_secs, nfe, network_calls);
        shared.history.push(item);
        self.bound_history(shared, Some(job));
    }

    /// The items on screen (kept whole by [`history::bound`]).
    fn on_screen(&self) -> Vec<u64> {
        match self.shown {
            Shown::Current => Vec::new(),
            Shown::Item(id) => vec![id],
            Shown::Compare(a, b) => vec![a, b],
        }
    }

    /// Releases the full pictures of the older items; `also_keep` is about to be shown.
    fn bound_history(&self, shared: &mut Shared, also_keep: Option<u64>) {
        let mut keep = self.on_screen();
        keep.extend(also_keep);
        history::bound(&mut shared.history, &keep);
    }

    /// Reads the pictures of released items on screen back from the gallery (once per item;
    /// a failure is said and not retried).
    fn restore_shown(&mut self, shared: &mut Shared) {
        for id in self.on_screen() {
            if self.restoring.contains_key(&id) || self.restore_failed.contains(&id) {
                continue;
            }
            let Some(item) = shared.history.iter().find(|h| h.id == id && !h.loaded()) else { continue };
            let paths = item.gallery.clone();
            self.restoring.insert(id, super::helper::spawn_fallible("history-restore", move || history::read_gallery(&paths)));
        }
    }

    fn poll_restores(&mut self, shared: &mut Shared) {
        let ready: Vec<u64> = self.restoring.iter().filter(|(_, p)| p.ready().is_some()).map(|(id, _)| *id).collect();
        for id in ready {
            let Some(Ok(result)) = self.restoring.remove(&id).map(|p| p.try_take()) else { continue };
            let ctx = shared.egui_ctx();
            match (result, shared.history.iter_mut().find(|h| h.id == id)) {
                (Ok(images), Some(item)) => item.hold(&ctx, images),
                (Err(e), Some(_)) => {
                    self.restore_failed.insert(id);
                    shared.notices.error(format!("That result could not be shown again: {e}"));
                }
                (_, None) => {}
            }
        }
        if !self.restoring.is_empty() {
            shared.egui_ctx().request_repaint_after(std::time::Duration::from_millis(30));
        }
    }

    /// The gallery's images from earlier sessions, put in front of the history.
    pub fn add_from_gallery(&mut self, items: Vec<(PathBuf, ImageParams, image::RgbImage)>, shared: &mut Shared, ctx: &egui::Context) {
        let mut earlier = Vec::with_capacity(items.len());
        for (path, params, img) in items {
            let id = shared.next_id();
            let mut item = HistoryItem::opened(ctx, id, params, img, path.clone(), self.num_classes);
            item.gallery = vec![path];
            earlier.push(item);
        }
        shared.history.splice(0..0, earlier);
        self.bound_history(shared, None);
    }

    /// The controls worth keeping across restarts.
    pub fn settings(&self) -> super::persist::GenerateSettings {
        super::persist::GenerateSettings {
            prompt: Some(self.prompt.clone()),
            negative_prompt: self.negative_prompt.clone(),
            prompt_history: self.prompt_history.clone(),
            width: Some(self.width),
            height: Some(self.height),
            class: Some(self.class),
            batch: Some(self.batch),
            locked_seed: self.seed_locked.then_some(self.seed),
            instruction: Some(self.instruction),
            live_preview: Some(self.live_preview),
            decode_every: self.decode_every_touched.then_some(self.decode_every),
        }
    }

    pub fn restore_settings(&mut self, saved: &super::persist::Settings) {
        let g = &saved.generate;
        if let Some(p) = &g.prompt {
            self.prompt = p.clone();
        }
        self.negative_prompt = g.negative_prompt.clone();
        self.prompt_history = g.prompt_history.iter().take(PROMPT_HISTORY).cloned().collect();
        if let (Some(w), Some(h)) = (g.width, g.height) {
            if (32..=4096).contains(&w) && (32..=4096).contains(&h) {
                (self.width, self.height) = (w, h);
                // The size is the user's, not a default for the model that loads next.
                self.keep_size = true;
            }
        }
        if let Some(c) = g.class {
            self.class = c;
        }
        if let Some(b) = g.batch {
            self.batch = b.clamp(1, MAX_BATCH);
        }
        if let Some(seed) = g.locked_seed {
            self.seed = seed;
            self.seed_locked = true;
        }
        if let Some(i) = g.instruction {
            self.instruction = i;
        }
        if let Some(l) = g.live_preview {
            self.live_preview = l;
        }
        if let Some(d) = g.decode_every {
            self.decode_every = d.min(200);
            self.decode_every_touched = true;
        }
        if saved.output_dir.is_some() {
            self.output_dir = saved.output_dir.clone();
        }
    }

    pub fn poll(&mut self, shared: &mut Shared) {
        if let Some((id, p)) = &self.save_dialog {
            if let Some(result) = p.ready() {
                let (id, result) = (*id, result.clone());
                self.save_dialog = None;
                match result {
                    Ok(Some(path)) => self.save_item(shared, id, path, true),
                    Ok(None) => {}
                    Err(e) => shared.notices.error(format!("The save dialog could not be shown ({e}); use Quick save instead")),
                }
            }
        }
        if let Some(p) = &self.source_dialog {
            if let Some(result) = p.ready() {
                let result = result.clone();
                self.source_dialog = None;
                match result {
                    Ok(Some(path)) => shared.files.open_path(path, super::files::Purpose::Img2ImgSource),
                    Ok(None) => {}
                    Err(e) => shared.notices.error(format!("The file dialog could not be shown ({e}); drop the picture on the window instead")),
                }
            }
        }
        if let Some(p) = &self.open_dialog {
            if let Some(result) = p.ready() {
                let result = result.clone();
                self.open_dialog = None;
                match result {
                    Ok(Some(path)) => shared.files.open_path(path, super::files::Purpose::RestoreSettings),
                    Ok(None) => {}
                    Err(e) => shared.notices.error(format!("The file dialog could not be shown ({e}); drop the PNG on the window instead")),
                }
            }
        }
        self.poll_saves(shared);
        self.restore_shown(shared);
        self.poll_restores(shared);
    }

    fn poll_saves(&mut self, shared: &mut Shared) {
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

    /// Waits for every save in flight (closing the app).
    pub fn finish_saves(&mut self, shared: &mut Shared) {
        for s in &self.saving {
            s.wait();
        }
        self.poll_saves(shared);
    }

    /// Writes a history item's images on a helper thread. `replace`: the user picked `path` in a
    /// save dialog (which asked before replacing a file).
    fn save_item(&mut self, shared: &mut Shared, id: u64, path: PathBuf, replace: bool) {
        let Some(item) = shared.history.iter().find(|h| h.id == id) else { return };
        // A released item is saved from its gallery copies, read on the save's thread.
        let pictures = if item.loaded() { super::files::Pictures::Held(item.images.clone()) } else { super::files::Pictures::Gallery(item.gallery.clone()) };
        self.saving.push(super::files::save(id, pictures, item.params.clone(), path, replace));
    }

    /// Restores the parameters of a PNG saved by this app (read and decoded off the UI thread
    /// by [`super::files`]) and adds its picture to the history.
    pub fn open_params(&mut self, name: &str, params: ImageParams, image: Option<image::RgbImage>, shared: &mut Shared, ctx: &egui::Context) {
        self.restore_model(&params, shared);
        self.apply_params(&params);
        let id = shared.next_id();
        if let Some(img) = image {
            shared.history.push(HistoryItem::opened(ctx, id, params, img, PathBuf::from(name), self.num_classes));
            self.shown = Shown::Item(id);
            self.bound_history(shared, None);
        }
        shared.notices.info(format!("Restored the settings of {name} (seed {} locked)", self.seed));
    }

    /// Loads the model a PNG names, when it is on this computer and not the one in use (found
    /// by its name, its repo id or its folder's name).
    fn restore_model(&mut self, params: &ImageParams, shared: &mut Shared) {
        let want = params.model().trim();
        if want.is_empty() {
            return;
        }
        let base = want.rsplit('/').next().unwrap_or(want);
        let found = shared
            .catalog
            .generators()
            .filter(|e| e.available())
            .find(|e| e.label == want || e.key == want || e.label == base || e.key.rsplit('/').next() == Some(base))
            .map(|e| e.key.clone());
        match found {
            Some(key) if shared.generator_key.as_deref() != Some(key.as_str()) => {
                self.restored = true;
                shared.use_generator(&key);
            }
            Some(_) => {}
            None => shared.notices.warning(format!("{want}, the model this image was made with, is not on this computer; its settings are restored for the current model")),
        }
        // The controls follow the PNG's kind at once, before its model has loaded (and brings
        // its own description).
        match params {
            ImageParams::Class(_) if self.is_text() => self.controls = Controls::classes(self.num_classes, 0, FID_GUIDANCE),
            ImageParams::Text(_) if !self.is_text() => {
                self.controls.input = Input::Prompt { negative: true, instruction: true };
                self.controls.size = SizeControl::Free { presets: Vec::new(), max: crate::model::sana::adapter::MAX_SIDE };
            }
            _ => {}
        }
    }

    /// Puts a result's settings back into the controls (the seed is locked so it repeats).
    pub fn apply_params(&mut self, p: &ImageParams) {
        let sampler = match p {
            ImageParams::Class(p) => {
                let first = p.classes.first().map(|&c| c as usize);
                self.class = first.filter(|&c| c < self.num_classes);
                self.guidance = p.guidance.clamp(1.0, 10.0);
                self.steps = p.steps.clamp(1, self.max_steps.max(1));
                self.seed = p.seed;
                self.batch = p.batch.clamp(1, MAX_BATCH);
                &p.sampler
            }
            ImageParams::Text(t) => {
                self.prompt = t.prompts.first().cloned().unwrap_or_default();
                self.negative_prompt = t.negative_prompt.clone();
                self.guidance = t.guidance.clamp(0.0, 20.0);
                self.steps = t.steps.clamp(1, 200);
                self.seed = t.seed;
                self.batch = t.prompts.len().clamp(1, MAX_BATCH);
                if t.width > 0 && t.height > 0 {
                    (self.width, self.height) = (t.width, t.height);
                }
                self.instruction = t.instruction;
                &t.sampler
            }
        };
        self.seed_locked = true;
        // The sampler the picture was made with, where this model offers it by that label; the
        // PNG's own model, still loading, chooses it when it arrives.
        self.sampler = self.samplers.iter().skip(1).find(|(_, l)| l == sampler).map(|(n, _)| n.clone());
        if self.restored {
            self.restored_sampler = Some(sampler.clone());
        }
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
        // Taken before the prompt box sees it, so Ctrl+Enter generates instead of adding a line.
        let shortcut = ui.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::Enter));
        ui.add_space(4.0);
        self.model_picker(ui, shared);
        let ready = match &shared.generator {
            GeneratorState::Ready(info) => {
                ui.label(RichText::new(format!("{} · f{}c{}", info.controls.summary, info.factor, info.latent_channels)).small().weak());
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
            GeneratorState::Failed { name, message, kind } => {
                ui.label(RichText::new(format!("{name} could not be loaded")).color(ui.visuals().error_fg_color));
                ui.label(RichText::new(message).small());
                let repo = shared.generator_key.as_ref().and_then(|k| shared.catalog.get(k)).and_then(|e| match &e.origin {
                    models::Origin::Hub(r) => Some(r.clone()),
                    models::Origin::Local(_) => None,
                });
                match (kind, repo) {
                    (api::FailureKind::Damaged { path }, Some(repo)) => {
                        if ui.button("🗑 Delete the damaged file and download again").on_hover_text(path.display().to_string()).clicked() {
                            shared.download_request = Some((repo, Some(path.clone())));
                            shared.goto = Some(super::Tab::Models);
                        }
                    }
                    (api::FailureKind::NotCached, Some(repo)) => {
                        if ui.button("🌐 Go online and download it").clicked() {
                            shared.hub.offline = false;
                            shared.download_request = Some((repo, None));
                            shared.goto = Some(super::Tab::Models);
                        }
                    }
                    (api::FailureKind::Damaged { path }, None) => {
                        ui.label(RichText::new(format!("Replace {} with a good copy, then load the model again.", path.display())).small());
                    }
                    _ => {}
                }
                false
            }
        };
        ui.separator();
        let info = match &shared.generator {
            GeneratorState::Ready(info) => Some(info.clone()),
            _ => None,
        };
        // What the model asks for, as it describes it: its conditioning, its size, its guidance.
        match self.controls.input.clone() {
            Input::Classes => self.class_controls(ui),
            Input::Prompt { negative, instruction } => self.prompt_controls(ui, negative, instruction),
        }
        ui.add_space(6.0);
        if let SizeControl::Free { presets, max } = self.controls.size.clone() {
            self.size_controls(ui, &presets, max, info.as_ref().map_or(32, |i| i.factor.max(1)));
            ui.add_space(6.0);
        }
        self.guidance_controls(ui);
        ui.add_space(6.0);

        self.img2img_controls(ui, shared);
        ui.add_space(6.0);

        // The model's own bound and hint ([`GeneratorInfo::max_steps`], `steps_hint`).
        let max_steps = self.max_steps.max(1);
        self.steps = self.steps.clamp(1, max_steps);
        egui::Grid::new("gen_numbers").num_columns(2).spacing([8.0, 6.0]).show(ui, |ui| {
            if let [(_, only)] = self.samplers.as_slice() {
                ui.label("Sampler");
                ui.label(only.as_str()).on_hover_text("The only sampler this model offers");
                ui.end_row();
            } else if self.samplers.len() > 1 {
                ui.label("Sampler");
                let current = self.sampler.clone().unwrap_or_else(|| self.samplers[0].0.clone());
                let shown = self.samplers.iter().find(|(n, _)| *n == current).map_or(current.clone(), |(_, l)| l.clone());
                egui::ComboBox::from_id_salt("sampler").selected_text(shown).show_ui(ui, |ui| {
                    for (i, (name, label)) in self.samplers.clone().into_iter().enumerate() {
                        let text = if i == 0 { format!("{label} (model default)") } else { label };
                        if ui.selectable_label(current == name, text).clicked() {
                            self.sampler = (i > 0).then_some(name);
                        }
                    }
                });
                ui.end_row();
            }
            ui.label("Steps");
            ui.add(egui::DragValue::new(&mut self.steps).range(1..=max_steps)).on_hover_text(self.steps_hint.as_str());
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
        if self.run.is_none() {
            if let (GeneratorState::Ready(info), Some(backend)) = (&shared.generator, &shared.backend) {
                let available = shared.memory.available_for_run(&info.footprint, backend.kind);
                self.memory_line(ui, info, backend.kind, available);
            }
        }
        if let Some(run) = &self.run {
            let frac = if run.total > 0 { run.step as f32 / run.total as f32 } else { 0.0 };
            let (frac, text) = match &run.phase {
                Some((label, done, total)) => (if *total > 0 { *done as f32 / *total as f32 } else { 0.0 }, Some(label.clone())),
                None => (frac, None),
            };
            let text = if let Some(t) = text {
                t
            } else if run.step == 0 {
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
            self.open_dialog = Some(super::helper::spawn("open-png", || rfd::FileDialog::new().add_filter("PNG", &["png"]).pick_file()));
        }
    }

    /// The run's estimated peak memory, and what to change when it will not fit.
    fn memory_line(&self, ui: &mut egui::Ui, info: &GeneratorInfo, backend: &str, available: Option<u64>) {
        let (w, h) = info.check_size(self.width, self.height).unwrap_or((self.width, self.height));
        let f = info.factor.max(1);
        let tokens = (w / f).max(1) * (h / f).max(1);
        // Guided passes as rows of one batch hold twice the rows; one after the other, one batch.
        let rows_cfg = self.controls.guided(self.guidance) && self.controls.guidance.batched;
        let e = crate::engine::memory::estimate(&info.footprint, backend, w, h, self.batch, tokens, rows_cfg, available);
        let gpu = if backend == "cpu" { "" } else { " (GPU memory is not queried; compared with system memory)" };
        let text = match e.available {
            Some(a) => format!("Estimated peak memory: {} of {} available ({}){gpu}", widgets::bytes(e.peak), widgets::bytes(a), e.phase),
            None => format!("Estimated peak memory: {} ({})", widgets::bytes(e.peak), e.phase),
        };
        ui.label(RichText::new(info.footprint.placement(backend)).small().weak())
            .on_hover_text("Where each part runs and what its weights take there");
        match &e.advice {
            Some(advice) => {
                ui.label(RichText::new(text).small().color(ui.visuals().warn_fg_color));
                ui.label(RichText::new(format!("⚠ Will likely not fit: {advice}")).small().color(ui.visuals().warn_fg_color));
            }
            None => {
                ui.label(RichText::new(text).small().weak()).on_hover_text(if info.footprint.low_memory {
                    "The text encoder is released after encoding (memory is tight); prompts already encoded are cached, so a new seed costs no encoding"
                } else {
                    "Weights as held in memory plus the largest phase's activations"
                });
            }
        }
    }

    fn img2img_controls(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        let title = if self.source.is_some() { "Image to image: on" } else { "Image to image" };
        egui::CollapsingHeader::new(RichText::new(title).strong()).id_salt("img2img").default_open(self.source.is_some()).show(ui, |ui| {
            let mut remove = false;
            match &self.source {
                Some(src) => {
                    ui.horizontal(|ui| {
                        let (rect, _) = ui.allocate_exact_size(Vec2::splat(64.0), egui::Sense::hover());
                        widgets::paint_texture(ui, rect, src.texture.id());
                        ui.vertical(|ui| {
                            ui.label(RichText::new(&src.name).monospace()).on_hover_text(format!("{}×{} px", src.image.width(), src.image.height()));
                            remove = ui.small_button("✖ Remove").on_hover_text("Back to generating from noise").clicked();
                        });
                    });
                    ui.add(egui::Slider::new(&mut self.strength, 0.05..=1.0).step_by(0.05).text("strength")).on_hover_text(
                        "How much is redrawn: the source is noised to this point of the model's schedule and denoised from there (SDEdit). 1.0 keeps nothing of it.",
                    );
                }
                None => {
                    ui.label(RichText::new("Start from a picture: drop one on this view, open one, or use a result").small().weak());
                }
            }
            ui.horizontal(|ui| {
                if ui.button("📂 Open image…").clicked() {
                    self.source_dialog =
                        Some(super::helper::spawn("open-source", || rfd::FileDialog::new().add_filter("Images", &["png", "jpg", "jpeg", "webp"]).pick_file()));
                }
                if let Shown::Item(id) = self.shown {
                    if let Some(item) = shared.history.iter().find(|h| h.id == id) {
                        if ui.button("⬆ Use the shown result").clicked() {
                            match item.images.first().cloned() {
                                Some(img) => {
                                    let name = format!("history: {}", history::short_prompt(&item.title(), 40));
                                    self.set_source(name, img, &shared.egui_ctx());
                                }
                                None => shared.notices.info("That result is still being read back from the gallery; try again in a moment"),
                            }
                        }
                    }
                }
            });
            if remove {
                self.source = None;
            }
        });
    }

    /// Every generation model on this computer, class- and text-conditional, in one list.
    fn model_picker(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        let models: Vec<(String, String, models::ModelKind)> =
            shared.catalog.generators().filter(|e| e.available()).map(|e| (e.key.clone(), e.label.clone(), e.kind)).collect();
        let current = shared.generator_key.clone();
        let shown = current
            .as_ref()
            .and_then(|k| models.iter().find(|(key, _, _)| key == k))
            .map(|(_, label, _)| label.clone())
            .unwrap_or_else(|| if models.is_empty() { "no model on this computer".into() } else { "choose a model".into() });
        let mut pick = None;
        ui.label(RichText::new("Model").strong());
        egui::ComboBox::from_id_salt("generator_picker").width(ui.available_width() - 8.0).selected_text(RichText::new(shown).monospace()).show_ui(ui, |ui| {
            for (key, label, kind) in &models {
                let tag = match kind {
                    models::ModelKind::TextToImage => "text to image",
                    _ => "class to image",
                };
                if ui.selectable_label(current.as_deref() == Some(key.as_str()), format!("{label}  ·  {tag}")).clicked() {
                    pick = Some(key.clone());
                }
            }
            if models.is_empty() {
                ui.label(RichText::new("Download one in the Models tab").weak());
            }
        });
        if let Some(key) = pick.filter(|k| current.as_deref() != Some(k.as_str())) {
            if self.run.is_some() {
                shared.notices.error("Cancel the running generation before switching models");
            } else {
                shared.use_generator(&key);
            }
        }
    }

    fn class_controls(&mut self, ui: &mut egui::Ui) {
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
    }

    fn prompt_controls(&mut self, ui: &mut egui::Ui, negative: bool, instruction: bool) {
        ui.horizontal(|ui| {
            ui.label(RichText::new("Prompt").strong());
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let mut chosen = None;
                ui.add_enabled_ui(!self.prompt_history.is_empty(), |ui| {
                    egui::ComboBox::from_id_salt("prompt_history").selected_text("recent").width(80.0).show_ui(ui, |ui| {
                        for p in &self.prompt_history {
                            if ui.selectable_label(false, history::short_prompt(p, 48)).on_hover_text(p).clicked() {
                                chosen = Some(p.clone());
                            }
                        }
                    });
                });
                if let Some(p) = chosen {
                    self.prompt = p;
                }
            });
        });
        ui.add(
            egui::TextEdit::multiline(&mut self.prompt)
                .id_salt("prompt")
                .hint_text("Describe the picture: subject, setting, light, style…")
                .desired_rows(4)
                .desired_width(f32::INFINITY),
        );
        ui.label(RichText::new("Negative prompt").strong());
        ui.add_enabled(
            negative,
            egui::TextEdit::multiline(&mut self.negative_prompt)
                .id_salt("negative_prompt")
                .hint_text(if negative { "What to avoid (optional)" } else { "This model reads no negative prompt" })
                .desired_rows(1)
                .desired_width(f32::INFINITY),
        );
        if instruction {
            ui.checkbox(&mut self.instruction, "Prompt instruction").on_hover_text(
                "Prepend the pipelines' \"complex human instruction\" to the prompt, as SANA does by default; long prompts may then lose their last tokens",
            );
        }
    }

    /// Size: the model's training sizes as presets, or any multiple of its factor.
    fn size_controls(&mut self, ui: &mut egui::Ui, presets: &[(usize, usize)], max: usize, factor: usize) {
        ui.label(RichText::new("Size").strong());
        ui.horizontal_wrapped(|ui| {
            for &(w, h) in presets {
                let g = gcd(w, h);
                // 4:3, 16:9 … where the bin is that ratio; otherwise its size.
                let label = if w / g <= 21 && h / g <= 21 { format!("{}:{}", w / g, h / g) } else { format!("{w}×{h}") };
                if ui.selectable_label((self.width, self.height) == (w, h), label).on_hover_text(format!("{w} × {h} px, one of the model's training sizes")).clicked() {
                    (self.width, self.height) = (w, h);
                }
            }
        });
        ui.horizontal(|ui| {
            let step = factor as f64;
            let max = max.max(factor);
            ui.add(egui::DragValue::new(&mut self.width).range(factor..=max).speed(step)).on_hover_text(format!("Width in pixels, a multiple of {factor}"));
            ui.label("×");
            ui.add(egui::DragValue::new(&mut self.height).range(factor..=max).speed(step)).on_hover_text(format!("Height in pixels, a multiple of {factor}"));
            ui.label("px");
            // Snapped to the factor grid as the user drags.
            self.width = (self.width / factor).max(1) * factor;
            self.height = (self.height / factor).max(1) * factor;
        });
    }

    /// The guidance slider with the model's named values.
    fn guidance_controls(&mut self, ui: &mut egui::Ui) {
        let g = &self.controls.guidance;
        ui.label(RichText::new("Guidance (CFG)").strong());
        ui.add(egui::Slider::new(&mut self.guidance, 1.0..=10.0).step_by(0.1).fixed_decimals(1)).on_hover_text(g.hint.as_str());
        ui.horizontal(|ui| {
            for p in &g.presets {
                // 6.0, 1.5, 1.15: one decimal at least, as the authors write them.
                let value = if (p.value * 10.0).fract().abs() < 1e-4 { format!("{:.1}", p.value) } else { format!("{}", p.value) };
                if ui.small_button(format!("{value} {}", p.label)).on_hover_text(p.hint.as_str()).clicked() {
                    self.guidance = p.value;
                }
            }
        });
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
                        let hint = if self.is_text() { "Type a prompt and press Generate (Ctrl+Enter)" } else { "Pick a class and press Generate" };
                        ui.label(RichText::new(hint).weak().size(18.0));
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
                        let tex = shown_textures(item);
                        widgets::grid(col, tex.len(), item.aspect, 512.0, |ui, i, rect| widgets::paint_texture(ui, rect, tex[i]));
                    }
                });
            }
        }
    }

    fn show_run(&self, ui: &mut egui::Ui, run: &Run) {
        let n = run.params.batch();
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
                widgets::grid(ui, n, run.aspect, 512.0, |ui, i, rect| match tex.get(i).copied().flatten() {
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
                    item.params.model(),
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
            let tex = shown_textures(item);
            widgets::grid(ui, tex.len(), item.aspect, 768.0, |ui, i, rect| widgets::paint_texture(ui, rect, tex[i]));
        }
        match action {
            Some("save") => {
                let name = history::suggested_file_name(&shared.history[idx].params, self.num_classes);
                let dir = self.output_dir.clone();
                self.save_dialog = Some((
                    id,
                    super::helper::spawn("save-dialog", move || {
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
                    let Some(tex) = item.thumbs.first() else { continue };
                    let selected = matches!(self.shown, Shown::Item(i) if i == item.id) || self.compare_from == Some(item.id);
                    let size = Vec2::splat(88.0);
                    let (rect, resp) = ui.allocate_exact_size(size, egui::Sense::click());
                    widgets::paint_texture(ui, rect, tex.id());
                    if item.count > 1 {
                        ui.painter().text(rect.right_bottom() - Vec2::new(4.0, 4.0), egui::Align2::RIGHT_BOTTOM, format!("×{}", item.count), egui::FontId::proportional(12.0), Color32::WHITE);
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
            shared.forget(id);
            if matches!(self.shown, Shown::Item(i) if i == id) || matches!(self.shown, Shown::Compare(a, b) if a == id || b == id) {
                self.shown = Shown::Current;
            }
        }
    }
}

/// The full textures of an item, or its thumbnails while they are read back from the gallery.
fn shown_textures(item: &HistoryItem) -> Vec<egui::TextureId> {
    let t = if item.textures.is_empty() { &item.thumbs } else { &item.textures };
    t.iter().map(|t| t.id()).collect()
}

/// "0.41 s/step", "35 ms/step".
fn per_step(secs: f64) -> String {
    if secs >= 1.0 {
        format!("{secs:.2} s/step")
    } else {
        format!("{:.0} ms/step", secs * 1e3)
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}
