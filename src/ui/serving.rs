//! The local API inside the app (Settings → "Serve the local API"): the same server as
//! `dcae serve` ([`crate::server`]) on the app's own engine, so API requests and the app's runs
//! share one engine and one job queue. A strip above the status bar shows the API's running
//! request with its step preview and the requests waiting, each with a cancel button.
//!
//! Contact points: `Shared::api` holds it; the settings window turns it on and off; the app
//! hands it the catalog after every scan and asks [`Serving::owns`] about jobs it did not send.

use eframe::egui::{self, RichText};

use crate::engine::catalog::Catalog;
use crate::engine::worker::api::hub::HubOptions;
use crate::engine::worker::{JobId, WorkerConfig, WorkerHandle};
use crate::server::{ServeConfig, Server};

pub struct Serving {
    pub server: Option<Server>,
    /// What Settings shows and saves: on, and the port (0 picks a free one: tests).
    pub enabled: bool,
    pub port: u16,
    /// Why it could not start (the port in use, say); shown in Settings.
    pub error: Option<String>,
    /// The running request's preview as a texture, with the preview's number.
    preview: Option<(String, u64, egui::TextureHandle)>,
}

impl Default for Serving {
    fn default() -> Self {
        Self { server: None, enabled: false, port: 7860, error: None, preview: None }
    }
}

impl Serving {
    /// Off until the first model scan is in (then on when `enabled`: it was on last time).
    pub fn new(enabled: bool, port: u16) -> Self {
        Self { enabled, port, ..Self::default() }
    }

    /// Starts serving on 127.0.0.1:`port` with the app's engine and catalog; `model` is what
    /// requests naming none get (the app's current model).
    pub fn start(&mut self, handle: WorkerHandle, catalog: &Catalog, hub: &HubOptions, worker: &WorkerConfig, model: Option<String>) -> Result<(), String> {
        self.stop();
        let config = ServeConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            auth: None,
            model_dirs: catalog.local_dirs.clone(),
            model,
            hub: hub.clone(),
            worker: worker.clone(),
            live_previews: true,
        };
        match Server::start_shared(config, handle, catalog.clone()) {
            Ok(server) => {
                self.server = Some(server);
                self.error = None;
                Ok(())
            }
            Err(e) => {
                self.enabled = false;
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Stops the server: requests waiting are answered 503, the running one is stopped.
    pub fn stop(&mut self) {
        self.server = None;
        self.preview = None;
    }

    pub fn address(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().map(Server::addr)
    }

    /// The catalog changed (a scan, a download): the API lists what the app lists.
    pub fn set_catalog(&self, catalog: &Catalog) {
        if let Some(s) = &self.server {
            *s.queue.catalog.write().unwrap_or_else(|p| p.into_inner()) = catalog.clone();
        }
    }

    /// Whether the API sent job `job` (its events are not the app's own).
    pub fn owns(&self, job: JobId) -> bool {
        self.server.as_ref().is_some_and(|s| s.queue.sent(job))
    }

    /// The strip above the status bar, while the API has requests.
    pub fn strip(&mut self, ctx: &egui::Context, ui: &mut egui::Ui) {
        let Some(server) = &self.server else { return };
        let (running, waiting) = (server.queue.running(), server.queue.waiting());
        if running.is_none() && waiting.is_empty() {
            self.preview = None;
            return;
        }
        let queue = server.queue.clone();
        if let Some(r) = &running {
            let fresh = !matches!(&self.preview, Some((id, n, _)) if *id == r.id && *n == r.preview_id);
            if fresh {
                self.preview = r.preview.as_ref().map(|img| {
                    let color = egui::ColorImage::from_rgb([img.width() as usize, img.height() as usize], img.as_raw());
                    (r.id.clone(), r.preview_id, ctx.load_texture("api-preview", color, egui::TextureOptions::NEAREST))
                });
            }
        }
        let preview = self.preview.as_ref().map(|(_, _, t)| t.clone());
        egui::Panel::bottom("api_strip").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.label(RichText::new("Local API").strong()).on_hover_text("Requests from other programs, through the same engine and queue as the app's runs");
                if let Some(r) = &running {
                    if let Some(t) = &preview {
                        ui.add(egui::Image::new(t).fit_to_exact_size(egui::vec2(40.0, 40.0)));
                    }
                    ui.label(format!("{} {} · {} of {} · step {}/{}", r.id, r.kind, r.job_no + 1, r.job_count, r.step, r.steps));
                    ui.add(egui::ProgressBar::new(r.progress() as f32).desired_width(120.0));
                    if ui.small_button("✖").on_hover_text("Cancel this request (its client gets an error)").clicked() {
                        queue.cancel(&r.id);
                    }
                }
                if !waiting.is_empty() {
                    ui.separator();
                    ui.label(format!("{} waiting", waiting.len())).on_hover_text(waiting.iter().map(|(id, kind, secs)| format!("{id} {kind}, {secs:.0} s")).collect::<Vec<_>>().join("\n"));
                    if ui.small_button("✖ all").on_hover_text("Cancel every waiting request").clicked() {
                        for (id, _, _) in &waiting {
                            queue.cancel(id);
                        }
                    }
                }
            });
        });
        // Progress arrives on the API's own channel: look again shortly.
        ctx.request_repaint_after(std::time::Duration::from_millis(200));
    }

    /// The Settings section.
    pub fn settings_ui(&mut self, ui: &mut egui::Ui) -> Option<bool> {
        let mut toggled = None;
        ui.label(RichText::new("Local API").strong());
        ui.horizontal(|ui| {
            let mut on = self.server.is_some();
            if ui.checkbox(&mut on, "Serve the local API on 127.0.0.1, port").changed() {
                toggled = Some(on);
            }
            ui.add_enabled(self.server.is_none(), egui::DragValue::new(&mut self.port).range(1024..=65535));
        });
        match (self.address(), &self.error) {
            (Some(addr), _) => {
                ui.label(RichText::new(format!("serving http://{addr} — endpoints at /docs")).small());
            }
            (None, Some(e)) => {
                ui.label(RichText::new(e).small().color(ui.visuals().error_fg_color));
            }
            (None, None) => {}
        }
        ui.label(
            RichText::new("The AUTOMATIC1111 web UI's API (/sdapi/v1): programs such as webuiapi scripts and chat front ends generate with this app's models, in the same queue as your runs. Only this computer can reach it. `dcae serve` does the same without the window.")
                .small()
                .weak(),
        );
        toggled
    }
}
