//! The Generate and Reconstruct views rendered through egui's wgpu renderer, as the app renders
//! them (Mesa's lavapipe in CI), and compared with the snapshots in tests/snapshots/: a picture
//! over the renderer's texture limit, a layout that breaks or a texture that never arrives fails
//! here, where the other UI tests render nothing.
//!
//! A snapshot is written only when `UPDATE_SNAPSHOTS=1`; a missing one fails. The comparison
//! allows the text that changes from run to run (timings, memory in the status bar): at most
//! 2 % of the pixels may differ by more than 24 levels, where a moved panel or a missing
//! picture changes 10-40 %.

use std::path::PathBuf;

use dcae::ui::{GeneratorState, StudioApp};
use eframe::egui;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

use super::ui::{app_options, errors, fixtures, wait_for};

/// eframe's wgpu device allows 8192-pixel textures (egui-wgpu asks for that limit); the
/// renderer here does too, and the app is told so, as eframe tells it.
const RENDERER_MAX_TEXTURE_SIDE: usize = 8192;

fn snapshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

fn rendered_app(tmp: &std::path::Path) -> Harness<'static, StudioApp> {
    let options = app_options(fixtures(), tmp, "uvit-tiny");
    let mut h = Harness::builder().with_size(egui::vec2(1280.0, 820.0)).wgpu().build_eframe(move |cc| {
        let mut app = StudioApp::new(cc, options);
        app.generate.output_dir = None;
        app
    });
    h.input_mut().max_texture_side = Some(RENDERER_MAX_TEXTURE_SIDE);
    h.step();
    wait_for(&mut h, "the model scan", 30.0, |a| !a.shared.scanning());
    wait_for(&mut h, "the generation model", 60.0, |a| matches!(a.shared.generator, GeneratorState::Ready(_)));
    h
}

/// Renders the current frame (with the notices, which carry timings, put away) and compares
/// it with the snapshot `name`.
fn check_snapshot(h: &mut Harness<'_, StudioApp>, name: &str) {
    h.state_mut().shared.notices.items.clear();
    h.step();
    let got = h.render().unwrap_or_else(|e| panic!("{name}: the renderer failed: {e}"));
    let path = snapshot_dir().join(format!("{name}.png"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(snapshot_dir()).unwrap();
        got.save(&path).unwrap();
        return;
    }
    let want = image::open(&path)
        .unwrap_or_else(|e| panic!("no snapshot {} ({e}): run the test with UPDATE_SNAPSHOTS=1 and look at the picture before committing it", path.display()))
        .to_rgba8();
    assert_eq!(got.dimensions(), want.dimensions(), "{name}: the window size changed");
    let differing = got.pixels().zip(want.pixels()).filter(|(a, b)| a.0.iter().zip(b.0).any(|(x, y)| x.abs_diff(y) > 24)).count();
    let share = differing as f64 / (got.width() * got.height()) as f64;
    if share > 0.02 {
        let seen = std::env::temp_dir().join(format!("dcae-{name}-rendered.png"));
        let _ = got.save(&seen);
        panic!("{name}: {:.1} % of the pixels differ from {} (the rendering is at {})", share * 100.0, path.display(), seen.display());
    }
}

#[test]
fn ui_render_generate_and_reconstruct_views_through_the_wgpu_renderer() {
    // The renderer cannot start without a wgpu adapter (lavapipe in CI).
    if super::ui::wgpu_device().is_err() {
        return eprintln!("no wgpu adapter: the rendered views are not checked here (CI has lavapipe)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut h = rendered_app(tmp.path());
    {
        let g = &mut h.state_mut().generate;
        (g.class, g.steps, g.batch, g.seed, g.seed_locked) = (Some(207), 12, 2, 1234, true);
        (g.decode_every, g.decode_every_touched, g.live_preview) = (3, true, true);
    }
    h.get_by_label("✨ Generate").click();
    // A step preview on screen, through the renderer.
    wait_for(&mut h, "a step preview", 60.0, |a| a.generate.previews_projected > 0 || a.shared.history.len() == 1);
    h.render().unwrap_or_else(|e| panic!("rendering a step preview failed: {e}"));
    wait_for(&mut h, "the result", 60.0, |a| a.shared.history.len() == 1);

    // A panorama wider than the renderer allows, as the image-to-image source.
    let wide = tmp.path().join("panorama.png");
    image::RgbImage::from_fn(RENDERER_MAX_TEXTURE_SIDE as u32 + 808, 120, |x, y| image::Rgb([(x / 40 % 256) as u8, (y * 2) as u8, 140])).save(&wide).unwrap();
    h.input_mut().dropped_files.push(egui::DroppedFile { path: Some(wide), ..Default::default() });
    h.step();
    wait_for(&mut h, "the panorama", 30.0, |a| a.generate.source.is_some());
    // Its texture went to the renderer in that frame; a validation error would be a notice by
    // the next (the app's error handler), before the snapshot puts the notices away.
    h.step();
    h.step();
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
    check_snapshot(&mut h, "generate_view");

    h.get_by_label("🔍 Reconstruct").click();
    h.step();
    let tiny = h.state().reconstruct.selected.iter().find(|k| k.contains("ae-tiny")).cloned().expect("a tiny autoencoder");
    h.state_mut().reconstruct.selected = [tiny].into();
    let photo = tmp.path().join("photo.png");
    image::RgbImage::from_fn(128, 96, |x, y| image::Rgb([(x * 2) as u8, (y * 2) as u8, ((x + y) % 200) as u8])).save(&photo).unwrap();
    h.input_mut().dropped_files.push(egui::DroppedFile { path: Some(photo), ..Default::default() });
    h.step();
    wait_for(&mut h, "the reconstruction", 60.0, |a| !a.reconstruct.is_running() && a.reconstruct.results.len() == 1);
    check_snapshot(&mut h, "reconstruct_view");
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}
