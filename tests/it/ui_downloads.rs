//! The Models view's downloads through the app, against the stand-in hub on 127.0.0.1.

use std::time::Duration;

use dcae::engine::backend::BackendChoice;
use dcae::engine::worker::api::hub::HubOptions;
use dcae::ui::{AppOptions, StudioApp, Tab};
use eframe::egui;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

use super::hub::fake_hub::{FakeHub, Hosted};
use super::hub::{tiny_safetensors, COMMIT, EFFICIENTVIT_CONFIG, REPO};
use super::ui::{errors, wait_for};

fn notices(app: &StudioApp) -> Vec<String> {
    app.shared.notices.items.iter().map(|n| n.text.clone()).collect()
}

/// Asking for a repo that is already downloading (a second click, a reload request) starts no
/// second download: one thread writes the repo, the user is told, and Cancel still reaches the
/// download that runs.
#[test]
fn ui_a_second_download_of_a_repo_keeps_the_first_and_its_cancel() {
    let tmp = tempfile::tempdir().unwrap();
    let files = vec![
        Hosted::small(REPO, "config.json", EFFICIENTVIT_CONFIG.to_vec()),
        Hosted::lfs(REPO, "model.safetensors", tiny_safetensors(256)),
    ];
    // Slow answers, so the download is still running when it is asked for again and cancelled.
    let hub = FakeHub::start_with(files, 40, COMMIT, Duration::from_millis(500));
    let options = AppOptions {
        model_dir: None,
        backend: BackendChoice::Cpu,
        cache_dir: Some(tmp.path().join("cache")),
        hub: Some(HubOptions::new(tmp.path().join("hf")).with_endpoint(hub.endpoint())),
        auto_load: false,
        fit_latent_side: 8,
        generator: None,
        state_dir: Some(tmp.path().join("state")),
        saved: None,
    };
    // Tall, so every row of the Models view is on screen.
    let mut h = Harness::builder().with_size(egui::vec2(1280.0, 3000.0)).build_eframe(move |cc| StudioApp::new(cc, options));
    h.step();
    wait_for(&mut h, "the model scan", 30.0, |a| !a.shared.scanning());
    {
        let app = h.state_mut();
        app.models.start_download(REPO, &mut app.shared);
        app.models.start_download(REPO, &mut app.shared);
        assert_eq!(app.shared.downloads.running(), 1, "one download per repo");
        let told = notices(app);
        assert!(told.iter().any(|t| t.contains(REPO) && t.contains("already")), "the second request is answered: {told:?}");
        app.shared.notices.items.clear();
        app.tab = Tab::Models;
    }
    h.step();
    h.get_by_label("⏹ Cancel").click_accesskit();
    wait_for(&mut h, "the cancelled download to end", 30.0, |a| !a.models.downloading() && a.shared.downloads.running() == 0);
    let told = notices(h.state());
    assert!(told.iter().any(|t| t.contains("paused")), "the cancel reached the running download: {told:?}");
    assert!(!told.iter().any(|t| t.starts_with("Downloaded")), "{told:?}");
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}
