//! The app neither crashes nor loses work (issue 20): pictures above the renderer's texture
//! limit and of odd shapes, helpers that panic, closing at an awkward moment, removing a result,
//! and memory that only grows. Each test is named after the defect it guards against.

use std::time::Duration;

use dcae::ui::{persist, StudioApp, Tab};
use eframe::egui;
use egui_kittest::kittest::Queryable;

use super::ui::{app_options, app_with, errors, fixtures, wait_for, wait_ready};

/// A panorama wider than the renderer's largest texture (eframe's wgpu device: 8192) was
/// uploaded whole: a wgpu validation error, which aborts the app. The display copy is scaled
/// to the limit; the image-to-image job keeps every pixel.
#[test]
fn regression_a_picture_above_the_texture_limit_is_shown_scaled_and_kept_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app_with(fixtures(), tmp.path(), "uvit-tiny");
    let max_side = h.ctx.input(|i| i.max_texture_side);
    let wide = max_side as u32 + 1000;
    let path = tmp.path().join("panorama.png");
    image::RgbImage::from_fn(wide, 40, |x, y| image::Rgb([(x % 256) as u8, (y * 6) as u8, 90])).save(&path).unwrap();
    h.input_mut().dropped_files.push(egui::DroppedFile { path: Some(path), ..Default::default() });
    h.step();
    wait_for(&mut h, "the dropped panorama", 30.0, |a| a.generate.source.is_some());
    let source = h.state().generate.source.as_ref().unwrap();
    assert_eq!(source.image.dimensions(), (wide, 40), "the job gets the whole picture");
    let [w, sh] = source.shown_size();
    assert!(w <= max_side && sh <= max_side, "shown at {w}x{sh}, the renderer allows {max_side}");
    assert_eq!((w, sh), (max_side, (40.0 * max_side as f64 / f64::from(wide)).floor() as usize));
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

/// Scaling the display copy of such a picture ran `image`'s triangle filter on the UI thread:
/// a 12000×9000 photo froze the window for 12.9 s (measured). The texture now starts as a
/// nearest-pixel copy of the shown size, made at once, and a helper thread replaces it with the
/// area-averaged copy.
#[test]
fn regression_scaling_a_picture_above_the_texture_limit_does_not_hold_the_ui_thread() {
    use dcae::imaging::{resize, ResampleFilter};
    use dcae::ui::widgets;
    let ctx = egui::Context::default();
    let img = image::RgbImage::from_fn(3000, 1000, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 13 % 256) as u8, ((x * y) % 251) as u8]));
    let colors = |i: &image::RgbImage| egui::ColorImage::from_rgb([i.width() as usize, i.height() as usize], i.as_raw());
    ctx.begin_pass(egui::RawInput { max_texture_side: Some(1024), ..Default::default() });
    let handle = widgets::texture(&ctx, "huge", &img);
    let first = ctx.end_pass().textures_delta;
    // 1024 is the least egui allows (its font atlas).
    assert_eq!(handle.size(), [1024, 341]);
    let image_of = |delta: &egui::epaint::ImageDelta| match &delta.image {
        egui::ImageData::Color(c) => (**c).clone(),
    };
    let mine = |d: egui::TexturesDelta| d.set.into_iter().filter(|(id, _)| *id == handle.id()).map(|(_, d)| image_of(&d)).collect::<Vec<_>>();
    let mut seen = mine(first);
    assert!(seen.len() == 1 && seen[0] == colors(&widgets::nearest(&img, 1024, 341)), "the first image is the nearest-pixel copy");
    let start = std::time::Instant::now();
    while seen.len() < 2 {
        seen.extend(mine(ctx.tex_manager().write().take_delta()));
        assert!(start.elapsed() < Duration::from_secs(30), "the scaled copy never replaced the placeholder");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(seen[1] == colors(&resize(&img, 1024, 341, ResampleFilter::Box)), "then the area-averaged copy");
    assert!(seen[0] != seen[1], "a picture where the two copies agree tests nothing");
}

/// A helper closure that panicked dropped its promise's sender, and the UI thread's next
/// `ready()` panicked: one gallery file that trips a decoder would close the app at every
/// start. Now the panic arrives as an error to show.
#[test]
fn regression_a_helper_that_panics_is_an_error_on_the_ui_thread_not_a_panic() {
    let p = dcae::ui::helper::spawn("gallery-open", || -> Vec<u8> { panic!("a decoder tripped") });
    let q = dcae::ui::helper::spawn_fallible("open-file", || -> Result<u8, String> { panic!("another one") });
    let start = std::time::Instant::now();
    while p.ready().is_none() || q.ready().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "the helpers never answered");
        std::thread::sleep(Duration::from_millis(5));
    }
    let e = p.ready().unwrap().clone().unwrap_err();
    assert!(e.contains("gallery-open") && e.contains("a decoder tripped"), "{e}");
    let e = q.ready().unwrap().clone().unwrap_err();
    assert!(e.contains("another one"), "{e}");
    // Values and errors of their own pass through unchanged.
    let ok = dcae::ui::helper::spawn_fallible("scan", || Err::<u8, _>("no folder".to_string()));
    assert_eq!(ok.block_until_ready(), &Err("no folder".to_string()));
}

/// The periodic save skips while a model scan runs, and so did the save on closing: quitting
/// during a scan lost every change since the last save.
#[test]
fn regression_settings_are_saved_when_quitting_during_a_model_scan() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app_with(fixtures(), tmp.path(), "uvit-tiny");
    wait_ready(&mut h);
    h.state_mut().generate.prompt = "typed just before quitting".into();
    h.state_mut().shared.rescan();
    assert!(h.state().shared.scanning());
    eframe::App::on_exit(h.state_mut());
    let saved = persist::load_settings(&tmp.path().join("state")).unwrap().expect("settings were saved");
    assert_eq!(saved.generate.prompt.as_deref(), Some("typed just before quitting"));
    assert!(saved.generator.is_some_and(|g| g.contains("uvit-tiny")), "the model in use is kept");
}

/// The same when the app is closed during the start's own scan, before the model chosen last
/// time is loaded again: that choice must survive.
#[test]
fn closing_during_the_first_scan_keeps_the_model_chosen_last_time() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let earlier = persist::Settings { generator: Some("chosen-last-time".into()), ..Default::default() };
    persist::save_settings(&state, &earlier).unwrap();
    let options = dcae::ui::AppOptions {
        auto_load: false,
        generator: None,
        saved: persist::load_settings(&state).unwrap(),
        ..app_options(fixtures(), tmp.path(), "")
    };
    let mut h = egui_kittest::Harness::builder().build_eframe(move |cc| StudioApp::new(cc, options));
    h.state_mut().generate.prompt = "new".into();
    eframe::App::on_exit(h.state_mut());
    let saved = persist::load_settings(&state).unwrap().unwrap();
    assert_eq!(saved.generator.as_deref(), Some("chosen-last-time"));
    assert_eq!(saved.generate.prompt.as_deref(), Some("new"));
}

/// A Quick save pressed just before closing was not awaited: the process ended with the file
/// half written or not at all.
#[test]
fn regression_a_quick_save_just_before_closing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut h = app_with(fixtures(), tmp.path(), "uvit-tiny");
    wait_ready(&mut h);
    {
        let g = &mut h.state_mut().generate;
        (g.class, g.steps, g.batch) = (Some(7), 2, 4);
        g.output_dir = Some(out.clone());
    }
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a result", 30.0, |a| a.shared.history.len() == 1);
    h.get_by_label("⚡ Quick save").click();
    // The frame that takes the click starts the save on its helper thread; closing follows.
    h.step();
    assert!(h.state().generate.saving(), "the save is in flight when the window closes");
    eframe::App::on_exit(h.state_mut());
    assert!(!h.state().generate.saving(), "closing waits for the save");
    let saved = std::fs::read_dir(&out).map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "png")).count()).unwrap_or(0);
    assert_eq!(saved, 4, "all four images are on disk when on_exit returns");
}

/// "Remove from history" left the gallery copy, so the result came back at the next start.
#[test]
fn regression_removing_a_result_from_the_history_deletes_its_gallery_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = persist::gallery::folder(&tmp.path().join("state"));
    let pngs = || std::fs::read_dir(&gallery).map(|d| d.flatten().count()).unwrap_or(0);
    {
        let mut h = app_with(fixtures(), tmp.path(), "uvit-tiny");
        wait_ready(&mut h);
        h.state_mut().generate.steps = 2;
        for n in 1..=2 {
            h.get_by_label("✨ Generate").click();
            wait_for(&mut h, "a result", 30.0, |a| a.shared.history.len() == n);
        }
        wait_for(&mut h, "the gallery writes", 30.0, |a| !a.shared.gallery_busy());
        assert_eq!(pngs(), 2);
        let first = h.state().shared.history[0].id;
        h.state_mut().shared.forget(first);
        assert_eq!(h.state().shared.history.len(), 1);
        assert_eq!(pngs(), 1, "its gallery file is gone");
        // Removed while its gallery write still runs: the file goes when the write ends.
        h.get_by_label("✨ Generate").click();
        wait_for(&mut h, "a third result", 30.0, |a| a.shared.history.len() == 2);
        let third = h.state().shared.history[1].id;
        h.state_mut().shared.forget(third);
        wait_for(&mut h, "the gallery writes", 30.0, |a| !a.shared.gallery_busy());
        assert_eq!(pngs(), 1);
        eframe::App::on_exit(h.state_mut());
    }
    // The next start shows only what was kept.
    let mut h = app_with(fixtures(), tmp.path(), "uvit-tiny");
    wait_for(&mut h, "the gallery", 30.0, |a| !a.shared.gallery_busy());
    assert_eq!(h.state().shared.history.len(), 1);
}

/// Reconstruct's autoencoders (an f128c512 alone is several GB) stayed loaded all session: the
/// release job was never sent. Leaving the view sends it, and it ends.
#[test]
fn regression_leaving_reconstruct_releases_its_autoencoders() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app_with(fixtures(), tmp.path(), "uvit-tiny");
    h.get_by_label("🔍 Reconstruct").click();
    h.step();
    let tiny = h.state().reconstruct.selected.iter().find(|k| k.contains("ae-tiny")).cloned().expect("a tiny autoencoder is picked");
    h.state_mut().reconstruct.selected = [tiny].into();
    let photo = tmp.path().join("photo.png");
    image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, 50])).save(&photo).unwrap();
    h.input_mut().dropped_files.push(egui::DroppedFile { path: Some(photo), ..Default::default() });
    h.step();
    wait_for(&mut h, "the reconstruction", 60.0, |a| !a.reconstruct.is_running() && a.reconstruct.results.len() == 1);
    assert!(h.state().shared.autoencoders_held);
    h.step();
    assert!(h.state().shared.unload_job.is_none(), "nothing is released while the view is open");
    h.get_by_label("🎨 Generate").click();
    h.step();
    assert_eq!(h.state().tab, Tab::Generate);
    // The frame after the switch sends the release (`autoencoders_held` clears when it is sent).
    wait_for(&mut h, "the release to be sent", 10.0, |a| !a.shared.autoencoders_held);
    wait_for(&mut h, "the release to end", 30.0, |a| a.shared.unload_job.is_none());
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

/// The history kept every result twice (the picture and its texture) for the whole session,
/// although every result is in the gallery: only the newest keep their full pictures now, the
/// rest a thumbnail, and an older one shown again is read back from the gallery, pixel for pixel.
#[test]
fn regression_the_history_keeps_full_pictures_only_for_the_newest_results() {
    use dcae::ui::generate::Shown;
    use dcae::ui::history::KEEP_FULL;
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app_with(fixtures(), tmp.path(), "uvit-tiny");
    wait_ready(&mut h);
    h.state_mut().generate.steps = 2;
    let mut first = None;
    let total = KEEP_FULL + 4;
    for n in 1..=total {
        h.state_mut().generate.class = Some(n);
        h.get_by_label("✨ Generate").click();
        wait_for(&mut h, "a result", 30.0, |a| a.shared.history.len() == n);
        // Each write ends before the next result, so every older item can be released.
        wait_for(&mut h, "the gallery write", 30.0, |a| !a.shared.gallery_busy());
        if n == 1 {
            first = Some(h.state().shared.history[0].images.clone());
        }
    }
    let history = &h.state().shared.history;
    let held: Vec<bool> = history.iter().map(|i| i.loaded()).collect();
    assert!(held.iter().filter(|l| **l).count() <= KEEP_FULL + 1, "{held:?}");
    assert!(!held[0] && held[total - 1], "{held:?}");
    assert!(history.iter().all(|i| i.thumbs.len() == 1 && i.count == 1), "every item keeps its thumbnail");
    // Shown again: read back from the gallery, equal to what was generated.
    let id = history[0].id;
    h.state_mut().generate.shown = Shown::Item(id);
    wait_for(&mut h, "the picture read back", 30.0, |a| a.shared.history[0].loaded());
    assert_eq!(Some(&h.state().shared.history[0].images), first.as_ref());
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
    // A released item still saves, from its gallery copy.
    let released = h.state().shared.history.iter().find(|i| !i.loaded()).expect("another released item");
    let (rid, params, gallery) = (released.id, released.params.clone(), released.gallery.clone());
    let out = tmp.path().join("saved.png");
    let mut save = dcae::ui::files::save(rid, dcae::ui::files::Pictures::Gallery(gallery.clone()), params, out.clone(), false);
    save.wait();
    assert_eq!(save.poll(), Some(Ok(vec![out.clone()])));
    assert_eq!(image::open(&out).unwrap().to_rgb8(), image::open(&gallery[0]).unwrap().to_rgb8());
}

/// A renderer that drops the textures it is given, as a GPU driver would take them off the
/// process's hands. The harness's default keeps every texture delta of the session in case a
/// picture is asked for later, which is memory the app itself never holds.
struct Discard;

impl egui_kittest::TestRenderer for Discard {
    fn handle_delta(&mut self, _delta: &egui::TexturesDelta) {}

    fn render(&mut self, _ctx: &egui::Context, _output: &egui::FullOutput) -> Result<image::RgbaImage, String> {
        Err("this harness does not render".into())
    }
}

/// Issue 20's long session: 200 text-to-image generations with the tiny SANA fixture (a new
/// prompt and one of three sizes each time, previews on) through the app, the process's
/// resident memory read after each. Prints the curve; the end must be within 10 % of where it
/// was after the 20th. Ignored: it measures the whole process, so it runs alone
/// (`cargo test --test integration ui_long_session -- --ignored --test-threads 1`).
#[test]
#[ignore]
fn ui_long_session_memory_stays_flat() {
    fn rss_mib() -> f64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        statm.split_whitespace().nth(1).and_then(|p| p.parse::<f64>().ok()).unwrap_or(0.0) * 4096.0 / (1 << 20) as f64
    }
    let tmp = tempfile::tempdir().unwrap();
    let options = app_options(fixtures(), tmp.path(), "sana-tiny");
    let mut h = egui_kittest::Harness::builder().with_size(egui::vec2(1280.0, 820.0)).renderer(Discard).build_eframe(move |cc| StudioApp::new(cc, options));
    wait_for(&mut h, "the model scan", 30.0, |a| !a.shared.scanning());
    wait_ready(&mut h);
    let mut curve = Vec::new();
    for n in 1..=200 {
        {
            let g = &mut h.state_mut().generate;
            g.prompt = format!("a small study in colour number {n}, {}", ["red", "green", "blue", "grey"][n % 4]);
            (g.width, g.height) = [(64, 64), (96, 64), (64, 128)][n % 3];
            (g.steps, g.batch, g.decode_every, g.decode_every_touched) = (4, 1, 2, true);
        }
        h.get_by_label("✨ Generate").click();
        wait_for(&mut h, "a result", 60.0, |a| a.shared.history.len() == n);
        wait_for(&mut h, "the gallery write", 30.0, |a| !a.shared.gallery_busy());
        h.state_mut().shared.notices.items.clear();
        curve.push(rss_mib());
    }
    let at = |n: usize| curve[n - 1];
    let points: Vec<String> = [1, 10, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200].iter().map(|&n| format!("{n}: {:.1}", at(n))).collect();
    eprintln!("resident MiB after generation n: {}", points.join(" · "));
    assert!(at(200) <= at(20) * 1.10, "memory grew from {:.1} MiB after the 20th to {:.1} MiB after the 200th", at(20), at(200));
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

/// Gallery eviction deleted the oldest results silently, although the folder is the user's to
/// browse: the first eviction of a session is now a notice naming the bound and the folder, and
/// files the user put there stay.
#[test]
fn regression_gallery_eviction_is_told_and_spares_the_users_files() {
    let tmp = tempfile::tempdir().unwrap();
    let gallery = persist::gallery::folder(&tmp.path().join("state"));
    let mut h = app_with(fixtures(), tmp.path(), "uvit-tiny");
    wait_ready(&mut h);
    wait_for(&mut h, "the gallery", 30.0, |a| !a.shared.gallery_busy());
    // A full gallery of older results (named as the app names them), and one of the user's own.
    std::fs::create_dir_all(&gallery).unwrap();
    let tiny = image::RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9]));
    for i in 0..persist::gallery::MAX_ITEMS {
        tiny.save(gallery.join(format!("1000000-{}-1.png", i + 1))).unwrap();
    }
    let mine = gallery.join("my-holiday.png");
    tiny.save(&mine).unwrap();
    h.state_mut().generate.steps = 2;
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a result", 30.0, |a| a.shared.history.len() == 1);
    wait_for(&mut h, "the gallery write", 30.0, |a| !a.shared.gallery_busy());
    h.step();
    let told: Vec<&dcae::ui::Notice> = h.state().shared.notices.items.iter().filter(|n| n.text.contains("gallery keeps")).collect();
    assert_eq!(told.len(), 1, "{:?}", h.state().shared.notices.items);
    let (text, first_at) = (told[0].text.clone(), told[0].at);
    assert!(text.contains("1 older one was deleted") && text.contains(&gallery.display().to_string()), "{text}");
    assert_eq!(persist::gallery::list(&gallery).len(), persist::gallery::MAX_ITEMS, "the oldest went");
    assert!(mine.exists(), "the user's own file stays");
    // Told once a session, not at every result.
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a second result", 30.0, |a| a.shared.history.len() == 2);
    wait_for(&mut h, "the gallery write", 30.0, |a| !a.shared.gallery_busy());
    h.step();
    // (Infos fade after a few seconds, so "no newer one" rather than "still one".)
    assert!(!h.state().shared.notices.items.iter().any(|n| n.text.contains("gallery keeps") && n.at > first_at), "{:?}", h.state().shared.notices.items);
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}
