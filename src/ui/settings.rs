//! The settings window: backend (restarts the engine), preview projection cache, output folder,
//! and a crash test for the engine's recovery.

use eframe::egui::{self, RichText};

use super::Shared;
use crate::engine::backend::{BackendChoice, Placement};

#[derive(Default)]
pub struct SettingsWindow {
    pub open: bool,
    pub backend: BackendChoice,
    /// Where the text encoder runs; applied with the backend (the engine restarts).
    pub text_encoder: Placement,
    /// Where the generation models' autoencoder runs; applied the same way.
    pub autoencoder: Placement,
}

impl SettingsWindow {
    /// Shows the window; returns a backend to restart the engine on, if the user applied one.
    pub fn ui(&mut self, ctx: &egui::Context, shared: &mut Shared) -> Option<BackendChoice> {
        if !self.open {
            return None;
        }
        let mut apply = None;
        let mut open = self.open;
        egui::Window::new("Settings").open(&mut open).resizable(false).default_width(420.0).show(ctx, |ui| {
            ui.label(RichText::new("Backend").strong());
            ui.horizontal(|ui| {
                for choice in [BackendChoice::Auto, BackendChoice::Cuda, BackendChoice::Wgpu, BackendChoice::Cpu] {
                    ui.radio_value(&mut self.backend, choice, choice.to_string());
                }
            });
            ui.label(
                RichText::new("auto: CUDA if present, else a hardware GPU through wgpu (Vulkan/Metal/DX12), else the CPU. Also --backend on the command line.")
                    .small()
                    .weak(),
            );
            if let Some(info) = &shared.backend {
                ui.label(format!("Running: {info}"));
            }
            if let Some(note) = &shared.backend_note {
                ui.label(RichText::new(note).color(ui.visuals().warn_fg_color));
            }
            placement_choice(
                ui,
                "Text encoder (Gemma-2, text-to-image)",
                &mut self.text_encoder,
                "auto: on the GPU where the backend computes in bf16 (CUDA), else on the CPU in bf16 as stored (5.2 GB of RAM instead of 10.5 GB of GPU memory). Also --text-encoder-device.",
            );
            placement_choice(
                ui,
                "Autoencoder (DC-AE decoder and encoder)",
                &mut self.autoencoder,
                "auto: on the GPU unless its memory cannot hold the denoiser and the autoencoder with a quarter to spare; the CPU decodes in system memory. Also --vae-device.",
            );
            let config = &shared.worker.config;
            let changed = self.backend != shared.options.backend || self.text_encoder != config.text_encoder || self.autoencoder != config.autoencoder;
            if ui
                .add_enabled(changed, egui::Button::new("Apply and restart the engine"))
                .on_hover_text("Loaded models are loaded again on the new backend; your history is kept")
                .clicked()
            {
                apply = Some(self.backend);
            }
            ui.separator();

            ui.label(RichText::new("Preview projection cache").strong());
            let dir = shared.worker.config.cache_dir.clone();
            match &dir {
                Some(d) => {
                    ui.label(RichText::new(crate::engine::worker::projection::cache_folder(d).display().to_string()).monospace().small());
                    if ui.button("Clear (refit on next use)").clicked() {
                        // The engine forgets its fitted projection too (else it would never send
                        // another and previews would stay off), and deletes the files off this
                        // thread; it answers with `ProjectionsCleared`.
                        shared.clear_projections();
                        shared.projection = None;
                        shared.projection_note = None;
                    }
                }
                None => {
                    ui.label("no cache folder (fitted again each session)");
                }
            }
            if let Some(note) = &shared.projection_note {
                ui.label(RichText::new(note).small().weak());
            }
            ui.separator();
            if let Some(on) = shared.api.settings_ui(ui) {
                shared.set_serving(on);
            }
            ui.separator();
            ui.label(RichText::new("Hugging Face").strong());
            ui.label(RichText::new(format!("cache: {}", shared.hub.cache_dir.display())).small());
            ui.label(RichText::new(format!("endpoint: {}", shared.hub.endpoint)).small());
            ui.checkbox(&mut shared.hub.offline, "Offline (never contact the hub)");
            ui.separator();
            egui::CollapsingHeader::new("Diagnostics").show(ui, |ui| {
                ui.label(RichText::new(format!("preview path: {}", shared.preview.kind())).small());
            });
        });
        self.open = open;
        apply
    }
}

/// A component's device choice: a title, the three choices, what `auto` does.
fn placement_choice(ui: &mut egui::Ui, title: &str, value: &mut Placement, note: &str) {
    ui.label(RichText::new(title).strong());
    ui.horizontal(|ui| {
        for choice in [Placement::Auto, Placement::Gpu, Placement::Cpu] {
            ui.radio_value(value, choice, choice.to_string());
        }
    });
    ui.label(RichText::new(note).small().weak());
}
