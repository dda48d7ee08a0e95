//! The app, driven through its real UI with egui_kittest (no rendering, no GPU): the tiny
//! fixture models from tests/fixtures on the CPU backend.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dcae::engine::backend::BackendChoice;
use dcae::engine::worker::api::hub::HubOptions;
use dcae::ui::{AppOptions, GeneratorState, StudioApp, Tab};
use eframe::egui;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The app on the CPU, models from `model_dir` (the class-to-image `uvit-tiny` loaded), an
/// empty offline hub cache and a private projection cache, so nothing outside the temp folder
/// is read or written.
fn app(model_dir: PathBuf, tmp: &Path) -> Harness<'static, StudioApp> {
    app_with(model_dir, tmp, "uvit-tiny")
}

/// The options of the test apps: the CPU, models from `model_dir` with `generator` loaded at
/// start, an empty offline hub cache, and caches and state under `tmp`.
pub fn app_options(model_dir: PathBuf, tmp: &Path, generator: &str) -> AppOptions {
    AppOptions {
        model_dir: Some(model_dir),
        backend: BackendChoice::Cpu,
        cache_dir: Some(tmp.join("cache")),
        hub: Some(HubOptions::new(tmp.join("hf")).with_offline(true)),
        auto_load: true,
        fit_latent_side: 8,
        generator: Some(generator.to_string()),
        state_dir: Some(tmp.join("state")),
        saved: None,
    }
}

/// The same with the generation model `generator` (a folder name under `model_dir`).
pub fn app_with(model_dir: PathBuf, tmp: &Path, generator: &str) -> Harness<'static, StudioApp> {
    let options = app_options(model_dir, tmp, generator);
    let mut harness = Harness::builder().with_size(egui::vec2(1280.0, 820.0)).build_eframe(move |cc| {
        let mut app = StudioApp::new(cc, options);
        app.generate.output_dir = None;
        app
    });
    harness.step();
    // The model scan runs off the UI thread; tests start from its result.
    wait_for(&mut harness, "the model scan", 30.0, |a| !a.shared.scanning());
    harness
}

pub fn errors(app: &StudioApp) -> Vec<String> {
    app.shared.notices.errors().map(str::to_string).collect()
}

/// Steps frames until `cond` holds (the engine works on its own thread meanwhile).
pub fn wait_for(h: &mut Harness<'_, StudioApp>, what: &str, secs: f64, cond: impl Fn(&StudioApp) -> bool) {
    let start = Instant::now();
    while !cond(h.state()) {
        assert!(start.elapsed().as_secs_f64() < secs, "timed out after {secs} s waiting for {what}; errors: {:?}", errors(h.state()));
        h.step();
        std::thread::sleep(Duration::from_millis(2));
    }
    h.step();
}

pub fn wait_ready(h: &mut Harness<'_, StudioApp>) {
    wait_for(h, "the generation model", 30.0, |a| matches!(a.shared.generator, GeneratorState::Ready(_)));
}

#[test]
fn ui_generate_preview_result_cancel_and_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app(fixtures(), tmp.path());
    wait_ready(&mut h);
    h.get_by_label_contains("model: uvit-tiny");

    // Pick class 3 through the search box of the class picker.
    h.get_by_role(egui::accesskit::Role::TextInput).type_text("3");
    h.step();
    h.get_by_label_contains("3 · ").click();
    h.step();
    assert_eq!(h.state().generate.class, Some(3));
    h.get_by_label_contains("Selected: 3");

    {
        let g = &mut h.state_mut().generate;
        g.steps = 12;
        g.decode_every = 4;
        g.decode_every_touched = true;
        g.batch = 2;
    }
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "the first result", 30.0, |a| a.shared.history.len() == 1);
    let app = h.state();
    assert!(app.generate.previews_projected > 0, "no projected step preview was shown");
    assert!(app.generate.previews_decoded > 0, "no full-decode step preview was shown");
    assert!(app.shared.projection.is_some(), "the preview projection was not fitted");
    let item = &app.shared.history[0];
    assert_eq!(item.images.len(), 2);
    assert_eq!((item.images[0].width(), item.images[0].height()), (16, 16));
    assert_eq!(item.params.class().unwrap().classes, vec![3, 3]);
    // Guidance at 6.0 doubles the UViT passes: one conditional and one unconditional per step.
    assert_eq!((item.nfe, item.network_calls), (12, 24));
    assert!(errors(app).is_empty(), "{:?}", errors(app));
    // The result and the history strip are on screen.
    assert!(h.get_all_by_label_contains("cfg 6.0 · 12 steps").next().is_some());
    h.get_by_label_contains("1 this session");
    h.get_by_label_contains("(12 guided predictions, 24 network calls)");

    // A long run, cancelled after its first step.
    h.state_mut().generate.steps = 200;
    h.state_mut().generate.decode_every = 1;
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "the first step", 30.0, |a| a.generate.run.as_ref().is_some_and(|r| r.step >= 1));
    h.get_by_label("⏹ Cancel").click();
    wait_for(&mut h, "the cancellation", 30.0, |a| a.generate.run.is_none());
    assert_eq!(h.state().shared.history.len(), 1, "a cancelled run must not add a result");
    assert!(h.get_all_by_label_contains("cancelled").next().is_some());

    // And again, unconditional.
    h.get_by_label_contains("unconditional (no class)").click();
    h.state_mut().generate.steps = 6;
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "the second result", 30.0, |a| a.shared.history.len() == 2);
    assert_eq!(h.state().shared.history[1].params.class().unwrap().classes, vec![1000, 1000], "unconditional is saved as the null class 1000");
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

#[test]
fn ui_reconstruct_dropped_png_and_rejects_text() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app(fixtures(), tmp.path());
    h.get_by_label("🔍 Reconstruct").click();
    h.step();
    assert_eq!(h.state().tab, Tab::Reconstruct);
    assert!(!h.state().reconstruct.selected.is_empty(), "no autoencoder selected by default");

    h.input_mut().dropped_files.push(egui::DroppedFile {
        path: Some(fixtures().join("ae-tiny-in/input.png")),
        ..Default::default()
    });
    h.step();
    let n = h.state().reconstruct.selected.len();
    wait_for(&mut h, "the reconstructions", 30.0, |a| !a.reconstruct.is_running() && a.reconstruct.results.len() == n);
    let r = &h.state().reconstruct.results[0].result;
    assert_eq!(r.latent_shape, [4, 12, 20]);
    assert!((r.compression - 12.0).abs() < 1e-9, "3·48·80 / (4·12·20) = 12, got {}", r.compression);
    assert!(r.psnr.is_finite() && r.ssim.is_finite());
    assert!(h.get_all_by_label_contains(" dB").count() >= 1);
    h.get_by_label("Difference").click();
    h.step();
    h.get_by_label("A/B split").click();
    h.step();
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));

    let txt = tmp.path().join("notes.txt");
    std::fs::write(&txt, "not a picture").unwrap();
    h.input_mut().dropped_files.push(egui::DroppedFile { path: Some(txt), ..Default::default() });
    // Read and decoded off the UI thread: the answer comes a few frames later.
    wait_for(&mut h, "the refusal", 30.0, |a| a.shared.notices.errors().next().is_some());
    let errs = errors(h.state());
    assert!(errs.iter().any(|e| e.contains("notes.txt") && e.contains("not an image")), "{errs:?}");
    assert!(h.get_all_by_label_contains("notes.txt is not an image").next().is_some());
    // The earlier results are still there.
    assert_eq!(h.state().reconstruct.results.len(), n);
}

/// A phone-sized photo is reconstructed as its 512 centre crop by default, with the full image
/// one click away.
#[test]
fn ui_large_photo_defaults_to_the_centre_crop() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app(fixtures(), tmp.path());
    h.get_by_label("🔍 Reconstruct").click();
    h.step();
    // One small autoencoder keeps the full-size run short.
    let tiny = h.state().reconstruct.selected.iter().find(|k| k.contains("ae-tiny")).cloned();
    let tiny = tiny.unwrap_or_else(|| panic!("no tiny autoencoder among {:?}", h.state().reconstruct.selected));
    h.state_mut().reconstruct.selected = [tiny].into();
    let photo = tmp.path().join("photo.png");
    image::RgbImage::from_fn(1280, 1024, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])).save(&photo).unwrap();
    h.input_mut().dropped_files.push(egui::DroppedFile { path: Some(photo), ..Default::default() });
    h.step();
    wait_for(&mut h, "the crop's reconstruction", 60.0, |a| !a.reconstruct.is_running() && a.reconstruct.results.len() == 1);
    let dims = |a: &StudioApp| a.reconstruct.original.as_ref().map(|(img, _)| img.dimensions());
    assert_eq!(dims(h.state()), Some((512, 512)));
    h.get_by_label_contains("1280×1024 photo: reconstructed as its 512×512 centre crop");
    h.get_by_label("Reconstruct the full image").click();
    h.step();
    wait_for(&mut h, "the full image's reconstruction", 120.0, |a| !a.reconstruct.is_running() && a.reconstruct.results.len() == 1 && dims(a) != Some((512, 512)));
    assert_eq!(dims(h.state()), Some((1280, 1024)));
    assert!(h.query_by_label_contains("centre crop, as the DC-AE").is_none(), "the notice is gone");
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

#[test]
fn ui_missing_model_offline_says_what_to_download() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("models");
    std::fs::create_dir_all(&empty).unwrap();
    let mut h = app(empty, tmp.path());
    wait_for(&mut h, "the model scan", 30.0, |a| !a.shared.scanning());
    assert_eq!(h.state().shared.generator, GeneratorState::Missing);
    assert!(h.get_all_by_label_contains("No generation model is on this computer").next().is_some());
    assert!(h.get_all_by_label_contains("dcae download Efficient-Large-Model/Sana_600M_512px_diffusers").next().is_some());
    assert!(h.get_all_by_label_contains("mit-han-lab/dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k").next().is_some());
    assert!(h.get_all_by_label_contains("Offline mode is on").next().is_some());
    h.get_by_label("📦 Models").click();
    h.step();
    assert!(h.get_all_by_label_contains("not downloaded").count() >= 8);
}

#[test]
fn ui_engine_recovers_from_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app(fixtures(), tmp.path());
    wait_ready(&mut h);
    h.state_mut().generate.steps = 3;
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a result", 30.0, |a| a.shared.history.len() == 1);

    // The next generation panics inside the engine: the run ends (crashed, said as an error),
    // the engine restarts and reloads its model, and what was made before is kept.
    h.state().shared.worker.faults().panic_next(dcae::engine::worker::PanicAt::Generate);
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "the restart", 30.0, |a| a.shared.notices.items.iter().any(|n| n.text.contains("restarted")));
    assert!(errors(h.state()).iter().any(|e| e.contains("internal error while generating")), "{:?}", errors(h.state()));
    assert!(h.state().generate.run.is_none(), "the crashed run ended");
    wait_ready(&mut h);
    assert_eq!(h.state().shared.history.len(), 1, "the history survives the restart");
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a result after the restart", 30.0, |a| a.shared.history.len() == 2);
}

/// Preview cost per step: the latent→RGB projection (CPU, and the WGSL shader when a wgpu
/// adapter exists) against a full DC-AE decode of x0. Not part of the normal run:
/// `cargo test --test integration ui_preview_cost -- --ignored --nocapture`
/// (`DCAE_BENCH_BIG=1` adds dc-ae-f64c128 with random weights at 512×512; `DCAE_BACKEND` picks
/// the backend of the decodes).
#[test]
#[ignore]
fn ui_preview_cost() {
    use burn::tensor::{backend::Backend, Tensor};
    use dcae::engine::backend::{run_on, BackendInfo, BackendTask};
    use dcae::engine::worker::projection::Projection;
    use dcae::engine::worker::{fit_projection, LatentBatch};

    fn time<R>(n: usize, mut f: impl FnMut() -> R) -> f64 {
        f(); // warm-up
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(f());
        }
        t.elapsed().as_secs_f64() / n as f64
    }

    /// Seconds per solver step and per full decode of x0, and how long reading x0 back takes.
    fn sampling<B: Backend>(g: &dcae::engine::worker::api::Generator<B>, nfe: usize) -> (f64, f64, f64) {
        let never = std::sync::atomic::AtomicBool::new(false);
        let mut solver_steps = 0;
        let mut readback = 0.0;
        let mut last_x0 = None;
        let t = Instant::now();
        let mut cb = |_s: usize, _t: usize, x0: Tensor<B, 4>| {
            solver_steps += 1;
            let r = Instant::now();
            let _ = x0.clone().into_data();
            readback += r.elapsed().as_secs_f64();
            last_x0 = Some(x0);
        };
        let latent = g.generate(&[1], 6.0, nfe, 0, None, None, &mut cb, &never).ok().expect("sampling failed").latent;
        let total = t.elapsed().as_secs_f64() - readback;
        let x0 = last_x0.unwrap_or(latent);
        let decode = time(2, || g.decode(x0.clone()).unwrap().into_data());
        (total / solver_steps.max(1) as f64, decode, readback / solver_steps.max(1) as f64)
    }

    struct Bench;
    impl BackendTask for Bench {
        type Output = Vec<(String, Projection, [usize; 4], f64)>;
        fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output {
            println!("backend: {info}");
            let mut out = Vec::new();
            let dir = fixtures().join("uvit-tiny");
            let g = dcae::engine::worker::api::Generator::<B>::load("uvit-tiny", &dir.join("config.json"), &dir.join("model.safetensors"), &device).unwrap();
            let (ae, cfg) = g.autoencoder();
            let dcae::model::placed::PlacedAe::Here(ae) = ae else { panic!("a tiny autoencoder is placed with the run") };
            let t = Instant::now();
            let p = fit_projection(ae, cfg, g.info().scaling_factor, 8, true, &mut |_, _| true, &device).unwrap();
            println!("uvit-tiny: projection fit {:.3} s, RMSE {:.3}", t.elapsed().as_secs_f64(), p.rmse);
            let (step, decode, readback) = sampling(&g, 30);
            println!(
                "uvit-tiny: {:.3} ms per solver step (30 NFE, CFG 6), x0 read-back {:.4} ms, full decode of x0 {:.3} ms = {:.1} solver steps",
                step * 1e3,
                readback * 1e3,
                decode * 1e3,
                decode / step
            );
            let i = g.info();
            out.push(("uvit-tiny (f4c4, 16×16 px)".to_string(), p, [1, i.latent_channels, i.latent_size, i.latent_size], decode));
            if std::env::var("DCAE_BENCH_BIG").is_ok() {
                let name = "dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k";
                let g = dcae::engine::worker::api::Generator::<B>::random(name, &device).unwrap();
                let (step, decode, readback) = sampling(&g, 3);
                println!(
                    "{name} (random weights, 512 px): {:.2} s per solver step (3 NFE, CFG 6), x0 read-back {:.3} ms, full decode of x0 {:.2} s = {:.1} solver steps",
                    step,
                    readback * 1e3,
                    decode,
                    decode / step
                );
                let p = Projection {
                    channels: 128,
                    weights: (0..3 * 128).map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3).collect(),
                    bias: [0.0; 3],
                    note: "random".into(),
                    rmse: 0.0,
                    version: 0,
                };
                out.push((format!("{name} random weights (512×512 px)"), p, [1, 128, 8, 8], decode));
            }
            out
        }
    }
    let choice = BackendChoice::from_env().unwrap_or(BackendChoice::Cpu);
    for (name, p, shape, decode) in run_on(choice, Bench).unwrap() {
        let n: usize = shape.iter().product();
        let latents = LatentBatch { data: (0..n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect(), shape };
        let cpu = time(200, || p.to_rgba(latents.image(0), shape[2], shape[3]));
        println!("{name}: full decode {:.3} ms · CPU projection {:.4} ms", decode * 1e3, cpu * 1e3);
        #[cfg(feature = "wgpu")]
        gpu_projection_cost(&name, &p, &latents);
    }

    #[cfg(feature = "wgpu")]
    fn gpu_projection_cost(name: &str, p: &Projection, latents: &LatentBatch) {
        use dcae::ui::preview::LatentRgbGpu;
        use eframe::wgpu;
        let (device, queue, adapter_name) = match wgpu_device() {
            Ok(d) => d,
            Err(e) => return println!("{name}: {e}, GPU projection not measured"),
        };
        let mut gpu = LatentRgbGpu::new(&device, &queue);
        let [_, _, h, w] = latents.shape;
        let s = LatentRgbGpu::scale_for(h, w);
        let slot = gpu.new_slot(((w * s) as u32, (h * s) as u32));
        let mut slots = [slot];
        let mut once = || {
            let idx = gpu.dispatch(latents, p, &mut slots);
            device.poll(wgpu::PollType::Wait { submission_index: Some(idx), timeout: None }).unwrap();
        };
        once();
        let t = Instant::now();
        for _ in 0..100 {
            once();
        }
        let per = t.elapsed().as_secs_f64() / 100.0;
        // The shader and the CPU path agree (the shader upsamples; compare at a latent pixel centre).
        let rgba = gpu.read_back(&slots[0]).unwrap();
        let cpu = p.to_rgba(latents.image(0), h, w);
        let (ox, oy) = (s / 2, s / 2);
        let gi = ((oy * w * s) + ox) * 4;
        let diff = (0..3).map(|k| (rgba[gi + k] as i32 - cpu[k] as i32).abs()).max().unwrap();
        println!(
            "{name}: GPU projection (upload + dispatch + wait, {}×{} px out) {:.3} ms on {:?} · max |GPU−CPU| at a centre {diff}",
            w * s,
            h * s,
            per * 1e3,
            adapter_name
        );
        assert!(diff <= 2, "the shader disagrees with the CPU projection by {diff}");
    }
}

#[test]
fn ui_saved_png_restores_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app(fixtures(), tmp.path());
    wait_ready(&mut h);
    {
        let g = &mut h.state_mut().generate;
        g.class = Some(7);
        g.guidance = 1.5;
        g.steps = 5;
        g.seed = 4242;
        g.seed_locked = true;
        g.output_dir = Some(tmp.path().join("out"));
    }
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a result", 30.0, |a| a.shared.history.len() == 1);
    h.get_by_label("⚡ Quick save").click();
    wait_for(&mut h, "the quick save", 30.0, |a| a.shared.notices.items.iter().any(|n| n.text.starts_with("Saved")));
    let saved: Vec<_> = std::fs::read_dir(tmp.path().join("out")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].file_name().unwrap().to_string_lossy().ends_with("-s4242.png"));

    // Change everything, then drop the saved file on the window.
    {
        let g = &mut h.state_mut().generate;
        g.class = None;
        g.guidance = 9.0;
        g.steps = 30;
        g.seed = 1;
        g.seed_locked = false;
    }
    h.input_mut().dropped_files.push(egui::DroppedFile { path: Some(saved[0].clone()), ..Default::default() });
    wait_for(&mut h, "the dropped PNG", 30.0, |a| a.shared.history.len() == 2);
    let g = &h.state().generate;
    assert_eq!((g.class, g.guidance, g.steps, g.seed, g.seed_locked), (Some(7), 1.5, 5, 4242, true));
    assert_eq!(h.state().shared.history.len(), 2, "the opened PNG joins the history");
    assert!(h.get_all_by_label_contains("Restored the settings").next().is_some());
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

/// A device and queue on whatever wgpu adapter exists (Mesa's lavapipe in CI).
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Result<(eframe::wgpu::Device, eframe::wgpu::Queue, String), &'static str> {
    use dcae::engine::backend::pollster_block;
    use eframe::wgpu;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster_block(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).map_err(|_| "no wgpu adapter")?;
    let (device, queue) = pollster_block(adapter.request_device(&wgpu::DeviceDescriptor::default())).map_err(|_| "no wgpu device")?;
    Ok((device, queue, adapter.get_info().name))
}

/// shaders/latent_rgb.wgsl against a CPU reference of the same projection + bilinear upsampling,
/// on whatever wgpu adapter exists (Mesa's lavapipe in CI); skipped when there is none.
#[cfg(feature = "wgpu")]
#[test]
fn ui_preview_shader_matches_cpu_projection() {
    use dcae::engine::worker::projection::Projection;
    use dcae::engine::worker::LatentBatch;
    use dcae::ui::preview::LatentRgbGpu;
    use eframe::wgpu;

    let (device, queue, _) = match wgpu_device() {
        Ok(d) => d,
        Err(e) => return eprintln!("{e}: shader test skipped"),
    };
    let mut gpu = LatentRgbGpu::new(&device, &queue);
    let mut seed = 7u32;
    let mut rnd = move || {
        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    };
    for (b, c, h, w) in [(2usize, 4usize, 4usize, 6usize), (1, 128, 8, 8)] {
        let p = Projection {
            channels: c,
            weights: (0..3 * c).map(|_| rnd() * 0.8 / (c as f32).sqrt()).collect(),
            bias: [rnd() * 0.2, rnd() * 0.2, rnd() * 0.2],
            note: String::new(),
            rmse: 0.0,
            version: 0,
        };
        let latents = LatentBatch { data: (0..b * c * h * w).map(|_| rnd()).collect(), shape: [b, c, h, w] };
        let s = LatentRgbGpu::scale_for(h, w);
        let (ow, oh) = (w * s, h * s);
        let mut slots: Vec<_> = (0..b).map(|_| gpu.new_slot((ow as u32, oh as u32))).collect();
        let idx = gpu.dispatch(&latents, &p, &mut slots);
        device.poll(wgpu::PollType::Wait { submission_index: Some(idx), timeout: None }).unwrap();
        for (i, slot) in slots.iter().enumerate() {
            let got = gpu.read_back(slot).unwrap();
            // CPU reference: project each latent pixel, interpolate like the shader.
            let z = latents.image(i);
            let proj = |x: usize, y: usize, k: usize| {
                p.bias[k] + (0..c).map(|ch| p.weights[k * c + ch] * z[ch * h * w + y * w + x]).sum::<f32>()
            };
            let mut worst = 0i32;
            for oy in 0..oh {
                for ox in 0..ow {
                    let sx = ((ox as f32 + 0.5) * w as f32 / ow as f32 - 0.5).clamp(0.0, (w - 1) as f32);
                    let sy = ((oy as f32 + 0.5) * h as f32 / oh as f32 - 0.5).clamp(0.0, (h - 1) as f32);
                    let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
                    let (tx, ty) = (sx - x0 as f32, sy - y0 as f32);
                    for k in 0..3 {
                        let top = proj(x0, y0, k) * (1.0 - tx) + proj(x1, y0, k) * tx;
                        let bottom = proj(x0, y1, k) * (1.0 - tx) + proj(x1, y1, k) * tx;
                        let v = top * (1.0 - ty) + bottom * ty;
                        let want = (((v * 127.5 + 128.0) / 255.0).clamp(0.0, 1.0) * 255.0).round() as i32;
                        let have = got[(oy * ow + ox) * 4 + k] as i32;
                        worst = worst.max((want - have).abs());
                    }
                }
            }
            assert!(worst <= 1, "image {i} of {b}×{c}×{h}×{w}: the shader differs from the CPU reference by {worst} levels");
        }
    }
}

fn warnings(app: &StudioApp) -> Vec<String> {
    app.shared.notices.warnings().map(str::to_string).collect()
}

/// A step preview that fails is a warning: the run goes on and its image reaches the history.
#[test]
fn ui_preview_failure_is_a_warning_and_keeps_the_result() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app(fixtures(), tmp.path());
    wait_ready(&mut h);
    h.state_mut().generate.steps = 4;
    h.state_mut().generate.live_preview = true;
    h.state().shared.worker.faults().fail_next_preview();
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "the result despite the preview failure", 30.0, |a| a.shared.history.len() == 1);
    assert!(warnings(h.state()).iter().any(|w| w.contains("step previews are off")), "{:?}", warnings(h.state()));
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

/// Two batches with the same class and seed, both quick-saved: four files, none overwritten.
#[test]
fn ui_quick_save_of_a_batch_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut h = app(fixtures(), tmp.path());
    wait_ready(&mut h);
    {
        let g = &mut h.state_mut().generate;
        (g.class, g.steps, g.batch, g.seed, g.seed_locked) = (Some(7), 3, 2, 99, true);
        g.output_dir = Some(out.clone());
    }
    for n in 1..=2 {
        h.get_by_label("✨ Generate").click();
        wait_for(&mut h, "a batch", 30.0, |a| a.shared.history.len() == n);
        h.get_by_label("⚡ Quick save").click();
        wait_for(&mut h, "the quick save", 30.0, |a| a.shared.notices.items.iter().filter(|n| n.text.starts_with("Saved")).count() >= n);
    }
    let mut saved: Vec<String> = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    saved.sort();
    assert_eq!(saved.len(), 4, "{saved:?}");
    assert!(saved.iter().all(|n| n.ends_with(".png") && !n.starts_with('.')), "no temporary files are left: {saved:?}");
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

/// Step previews and results are decoded one image at a time, whatever the batch (a batch of
/// 16 at 512² decoded at once does not fit in 8 GB of VRAM).
#[test]
fn ui_batches_are_decoded_one_image_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app(fixtures(), tmp.path());
    wait_ready(&mut h);
    {
        let g = &mut h.state_mut().generate;
        (g.steps, g.batch, g.decode_every, g.decode_every_touched) = (4, 3, 1, true);
    }
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a batch of 3", 30.0, |a| a.shared.history.len() == 1);
    assert_eq!(h.state().shared.history[0].images.len(), 3);
    assert!(h.state().generate.previews_decoded > 0);
    assert_eq!(h.state().generate.last_decode_batch, Some(1), "the engine reports how it decoded");
}

/// Settings → Clear promises a refit: the next run fits the projection again and shows
/// projected previews (it used to leave them off for the rest of the session).
#[test]
fn ui_clearing_the_projection_refits_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app(fixtures(), tmp.path());
    wait_ready(&mut h);
    h.state_mut().generate.steps = 3;
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a first result", 30.0, |a| a.shared.history.len() == 1);
    assert!(h.state().shared.projection.is_some());
    h.get_by_label("⚙ Settings").click();
    h.step();
    h.get_by_label("Clear (refit on next use)").click();
    wait_for(&mut h, "the cleared notice", 30.0, |a| a.shared.notices.items.iter().any(|n| n.text.contains("cleared")));
    assert!(!tmp.path().join("cache/preview-projection").exists(), "the cached projections are deleted");
    let before = h.state().generate.previews_projected;
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a second result", 30.0, |a| a.shared.history.len() == 2);
    assert!(h.state().shared.projection.is_some(), "the projection is fitted again");
    assert!(h.state().generate.previews_projected > before, "projected previews are shown again");
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

/// The sampler saved with a result is the model's own (`SamplerConfig::label`, which the CLI
/// writes too), not a fixed "DPM-Solver++" string.
#[test]
fn ui_results_name_the_models_sampler() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app(fixtures(), tmp.path());
    wait_ready(&mut h);
    h.state_mut().generate.steps = 2;
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a result", 30.0, |a| a.shared.history.len() == 1);
    let json = dcae::model::load::read_json(&fixtures().join("uvit-tiny/config.json")).unwrap();
    let config = dcae::model::diffusion::DiffusionConfig::from_json(&json, "uvit-tiny").unwrap();
    let sampler = h.state().shared.history[0].params.sampler();
    assert_eq!(sampler, config.sampler_label());
    assert!(!sampler.contains("++"), "{sampler}");
}

/// A model reloaded on the same engine, after a backend switch and after an engine crash keeps
/// the step count the user set.
#[test]
fn ui_user_steps_survive_reload_backend_switch_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app(fixtures(), tmp.path());
    wait_ready(&mut h);
    let chosen = h.state().generate.steps + 5;
    h.state_mut().generate.steps = chosen;
    let key = h.state().shared.generator_key.clone().unwrap();
    h.state_mut().shared.use_generator(&key);
    wait_ready(&mut h);
    assert_eq!(h.state().generate.steps, chosen, "after a reload");
    h.state_mut().restart_engine(BackendChoice::Cpu);
    wait_ready(&mut h);
    assert_eq!(h.state().generate.steps, chosen, "after a backend switch");
    {
        let w = &mut h.state_mut().shared.worker;
        w.faults().panic_next(dcae::engine::worker::PanicAt::AnyJob);
        let id = w.next_id();
        w.send(dcae::engine::worker::Job::UnloadAutoencoders { id });
    }
    wait_for(&mut h, "the restart", 30.0, |a| a.shared.notices.items.iter().any(|n| n.text.contains("restarted")));
    wait_ready(&mut h);
    assert_eq!(h.state().generate.steps, chosen, "after an engine restart");
}

/// A download running while the backend is switched still reports its end: its row does not
/// say "downloading" forever, and the model is on disk.
#[test]
fn ui_download_survives_a_backend_switch() {
    use super::hub::fake_hub::{FakeHub, Hosted};
    use super::hub::{tiny_safetensors, EFFICIENTVIT_CONFIG, REPO};
    let tmp = tempfile::tempdir().unwrap();
    let files = vec![Hosted::small(REPO, "config.json", EFFICIENTVIT_CONFIG.to_vec()), Hosted::lfs(REPO, "model.safetensors", tiny_safetensors(256))];
    // Slow answers, so the download is still running when the engine is replaced.
    let hub = FakeHub::start_with(files, 40, super::hub::COMMIT, Duration::from_millis(300));
    let options = AppOptions {
        model_dir: Some(fixtures()),
        backend: BackendChoice::Cpu,
        cache_dir: Some(tmp.path().join("cache")),
        hub: Some(HubOptions::new(tmp.path().join("hf")).with_endpoint(hub.endpoint())),
        auto_load: true,
        fit_latent_side: 8,
        generator: Some("uvit-tiny".into()),
        state_dir: Some(tmp.path().join("state")),
        saved: None,
    };
    let mut h = Harness::builder().with_size(egui::vec2(1280.0, 820.0)).build_eframe(move |cc| StudioApp::new(cc, options));
    h.step();
    wait_ready(&mut h);
    {
        let app = h.state_mut();
        app.models.start_download(REPO, &mut app.shared);
        assert!(app.models.downloading());
        app.restart_engine(BackendChoice::Cpu);
    }
    wait_for(&mut h, "the end of the download", 30.0, |a| !a.models.downloading());
    // The catalog is scanned again off the UI thread.
    wait_for(&mut h, "the model on disk", 30.0, |a| a.shared.catalog.get(REPO).is_some_and(|e| e.available()));
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
    wait_ready(&mut h);
}

/// A backend switch ends the old engine (freeing its models) before the new one starts its
/// backend: two generators are never in memory at once. Events of both arrive on one channel.
#[test]
fn worker_restart_stops_the_old_engine_before_the_new_one_starts() {
    use dcae::engine::worker::{Event, Job, JobEnd, ModelFilesRef, Worker};
    let tmp = tempfile::tempdir().unwrap();
    let config = super::contract::worker_config(tmp.path());
    let mut w = Worker::spawn(config.clone(), std::sync::Arc::new(|| {}));
    let dir = fixtures().join("uvit-tiny");
    let files = ModelFilesRef { name: "uvit-tiny".into(), config: dir.join("config.json"), weights: dir.join("model.safetensors") };
    let until_loaded = |w: &Worker| {
        let mut seen = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            match w.recv_timeout(Duration::from_millis(100)) {
                Some(Event::Ended { end: JobEnd::Loaded { .. }, .. }) => return seen,
                Some(Event::Ended { end: JobEnd::Failed(e), .. }) => panic!("{}", e.message),
                Some(e) => seen.push(format!("{e:?}").split([' ', '(', '{']).next().unwrap_or_default().to_string()),
                None => {}
            }
        }
        panic!("no GeneratorLoaded; saw {seen:?}");
    };
    w.send(Job::LoadGenerator { id: w.next_id(), source: dcae::engine::worker::GeneratorSource::Class(files.clone()), cancel: dcae::engine::worker::cancel_token() });
    until_loaded(&w);
    w.restart(config);
    w.send(Job::LoadGenerator { id: w.next_id(), source: dcae::engine::worker::GeneratorSource::Class(files), cancel: dcae::engine::worker::cancel_token() });
    let seen = until_loaded(&w);
    let stopped = seen.iter().position(|e| e == "EngineStopped").unwrap_or_else(|| panic!("{seen:?}"));
    let ready = seen.iter().position(|e| e == "BackendReady").unwrap_or_else(|| panic!("{seen:?}"));
    assert!(stopped < ready, "{seen:?}");
}

/// Regression (issue 22): jobs queued before a backend switch ran on the old engine, which
/// drained its channel before it stopped. Now the old engine finishes only the job it is
/// running and hands the rest over: the queued job ends after the new engine is ready, once.
#[test]
fn jobs_queued_before_a_backend_switch_run_on_the_new_engine() {
    use dcae::engine::worker::{cancel_token, Conditioning, Event, GenerateJob, GeneratorSource, Job, JobEnd, ModelFilesRef, Worker};
    let tmp = tempfile::tempdir().unwrap();
    let config = super::contract::worker_config(tmp.path());
    let mut w = Worker::spawn(config.clone(), std::sync::Arc::new(|| {}));
    let dir = fixtures().join("uvit-tiny");
    let files = ModelFilesRef { name: "uvit-tiny".into(), config: dir.join("config.json"), weights: dir.join("model.safetensors") };
    let job = |id: u64| {
        Job::Generate(GenerateJob {
            id,
            conditioning: Conditioning::Classes(vec![1; 4]),
            init: None,
            cfg_scale: 4.0,
            steps: 150,
            seed: id,
            sampler: None,
            preview_latents: false,
            decode_every: 0,
            cancel: cancel_token(),
        })
    };
    w.send(Job::LoadGenerator { id: w.next_id(), source: GeneratorSource::Class(files.clone()), cancel: dcae::engine::worker::cancel_token() });
    let ids = [w.next_id(), w.next_id()];
    w.send(job(ids[0]));
    w.send(job(ids[1]));
    // Whether the old engine got to the load or job 1 or not, job 2 is still queued: the new
    // engine gets it, with the model it was queued for.
    w.restart(config);
    let mut seen: Vec<String> = Vec::new();
    let start = Instant::now();
    let mut generated = Vec::new();
    // Until both jobs ended and the new engine is up (a BackendReady after the old engine's
    // EngineStopped): only then does the order say which engine ran what.
    let new_engine_up = |seen: &[String]| seen.iter().position(|e| e == "EngineStopped").is_some_and(|i| seen[i..].iter().any(|e| e == "BackendReady"));
    while start.elapsed() < Duration::from_secs(120) && !(generated.len() == 2 && new_engine_up(&seen)) {
        match w.recv_timeout(Duration::from_millis(100)) {
            Some(Event::Ended { job, end: JobEnd::Generated(_) }) => {
                generated.push(job);
                seen.push(format!("Generated {job}"));
            }
            Some(Event::Ended { job, end }) if ids.contains(&job) => panic!("job {job}: {end:?}"),
            Some(e) => seen.push(format!("{e:?}").split([' ', '(', '{']).next().unwrap_or_default().to_string()),
            None => {}
        }
    }
    generated.sort();
    assert_eq!(generated, ids.to_vec(), "each job ends once: {seen:?}");
    let stopped = seen.iter().position(|e| e == "EngineStopped").unwrap_or_else(|| panic!("the old engine never stopped: {seen:?}"));
    let second = seen.iter().position(|e| *e == format!("Generated {}", ids[1])).unwrap_or_else(|| panic!("{seen:?}"));
    assert!(stopped < second, "the second job ran on the old engine: {seen:?}");
}

/// A dropped file above the size limit is refused before it is read, with the reason.
#[test]
fn ui_oversized_drop_is_refused_before_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app(fixtures(), tmp.path());
    let big = tmp.path().join("huge.png");
    let f = std::fs::File::create(&big).unwrap();
    // Sparse: no disk space is used, but the size says 300 MiB.
    f.set_len(300 * 1024 * 1024).unwrap();
    h.get_by_label("🔍 Reconstruct").click();
    h.step();
    h.input_mut().dropped_files.push(egui::DroppedFile { path: Some(big), ..Default::default() });
    wait_for(&mut h, "the refusal", 30.0, |a| a.shared.notices.errors().next().is_some());
    let errs = errors(h.state());
    assert!(errs.iter().any(|e| e.contains("huge.png") && e.contains("up to 256 MiB")), "{errs:?}");
}

/// The class list is searched once per query, not once per frame.
#[test]
fn ui_label_search_is_cached_per_query() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app(fixtures(), tmp.path());
    wait_ready(&mut h);
    h.get_by_role(egui::accesskit::Role::TextInput).type_text("3");
    h.step();
    let after_typing = h.state().generate.class_search.searches();
    for _ in 0..5 {
        h.step();
    }
    assert_eq!(h.state().generate.class_search.searches(), after_typing, "frames without a new query search again");
    h.get_by_label_contains("3 · ");
    h.state_mut().generate.query = "31".into();
    for _ in 0..3 {
        h.step();
    }
    assert_eq!(h.state().generate.class_search.searches(), after_typing + 1, "a new query is searched once");
}
