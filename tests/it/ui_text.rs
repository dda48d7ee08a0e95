//! The app's text-to-image mode through its real UI (egui_kittest, CPU backend), with the
//! `sana-tiny` fixture pipeline (and its Sprint twin in `sana-tiny/sprint`) standing in for the
//! published SANA models.

use std::time::Duration;

use dcae::engine::worker::api::Input;
use dcae::ui::{GeneratorState, ModelKind};
use eframe::egui;
use egui_kittest::kittest::Queryable;

use super::ui::{app_with, errors, fixtures, wait_for, wait_ready};

const PROMPT: &str = "a red fox in fresh snow, morning light";

/// Types into the prompt box (the first text field of the text controls).
fn type_prompt(h: &mut egui_kittest::Harness<'_, dcae::ui::StudioApp>, text: &str) {
    h.state_mut().generate.prompt.clear();
    h.step();
    // The prompt box is the first multi-line editor; typing needs the focus.
    h.get_all_by_role(egui::accesskit::Role::MultilineTextInput).next().expect("a prompt box").focus();
    h.step();
    h.get_all_by_role(egui::accesskit::Role::MultilineTextInput).next().expect("a prompt box").type_text(text);
    h.step();
}

#[test]
fn ui_text_prompt_preview_result_cancel_and_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app_with(fixtures(), tmp.path(), "sana-tiny");
    wait_ready(&mut h);
    // The view shows what the model asks for: a prompt with a negative one, SANA's two solvers.
    assert_eq!(h.state().generate.controls.input, Input::Prompt { negative: true, instruction: true });
    assert_eq!(h.state().generate.samplers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["dpm", "euler"]);
    // SANA's own defaults, not the class model's.
    assert_eq!((h.state().generate.steps, h.state().generate.guidance), (20, 4.5));
    // One picker lists both kinds of generation model on disk.
    let kinds: Vec<_> = h.state().shared.catalog.generators().filter(|e| e.available()).map(|e| (e.label.clone(), e.kind)).collect();
    for (label, kind) in [("uvit-tiny", ModelKind::ClassToImage), ("sana-tiny", ModelKind::TextToImage), ("sana-tiny/sprint", ModelKind::TextToImage)] {
        assert!(kinds.iter().any(|(l, k)| l == label && *k == kind), "{label} missing from {kinds:?}");
    }
    // A pipeline's component folders are not listed as models of their own.
    assert!(h.state().shared.catalog.entries.iter().all(|e| !e.label.ends_with("/transformer")), "{kinds:?}");

    type_prompt(&mut h, PROMPT);
    assert_eq!(h.state().generate.prompt, PROMPT);
    {
        let g = &mut h.state_mut().generate;
        g.negative_prompt = "blurry".into();
        // The fixture is trained at 256 px (32×32 latents, f8); 64 px keeps the test quick.
        g.width = 64;
        g.height = 64;
        g.steps = 6;
        g.decode_every = 3;
        g.decode_every_touched = true;
        g.batch = 2;
    }
    // Ctrl+Enter generates, even with the focus in the prompt box.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    h.step();
    assert!(h.state().generate.run.is_some(), "Ctrl+Enter did not start a run");
    wait_for(&mut h, "the first result", 60.0, |a| a.shared.history.len() == 1);
    let app = h.state();
    assert!(errors(app).is_empty(), "{:?}", errors(app));
    assert!(app.generate.previews_projected > 0, "no projected step preview was shown");
    assert!(app.generate.previews_decoded > 0, "no full-decode step preview was shown");
    let channels = match &app.shared.generator {
        GeneratorState::Ready(i) => i.latent_channels,
        _ => 0,
    };
    assert!(app.shared.projection.as_ref().is_some_and(|p| p.channels == channels), "no projection fitted for the pipeline's latent space");
    let item = &app.shared.history[0];
    assert_eq!(item.images.len(), 2);
    assert_eq!((item.images[0].width(), item.images[0].height()), (64, 64));
    let t = item.params.text().expect("text parameters");
    assert_eq!((t.prompts.as_slice(), t.negative_prompt.as_str(), t.steps), ([PROMPT.to_string(), PROMPT.to_string()].as_slice(), "blurry", 6));
    assert_eq!(t.sampler, "Flow DPM-Solver++ (order 2)");
    // Guidance 4.5: the unconditional and conditional rows go through the transformer as one
    // batch, one call per step.
    assert_eq!(item.network_calls, 6);
    assert_eq!(h.state().generate.prompt_history.first().map(String::as_str), Some(PROMPT));
    assert!(h.get_all_by_label_contains("red fox in fresh snow").next().is_some(), "the result's title names the prompt");

    // Cancel pressed before the first step (text encoding is the first phase): no result, and
    // the next run works. Cancelling inside the Gemma layers is checked on the pipeline itself
    // (sana_text::progress_and_cancellation); the tiny encoder is too fast to catch here.
    h.state_mut().generate.steps = 200;
    h.get_by_label("✨ Generate").click();
    h.step();
    h.get_by_label("⏹ Cancel").click();
    wait_for(&mut h, "the cancellation", 60.0, |a| a.generate.run.is_none());
    assert_eq!(h.state().shared.history.len(), 1, "a cancelled run must not add a result");

    // Cancel during sampling.
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "the first step", 60.0, |a| a.generate.run.as_ref().is_some_and(|r| r.step >= 1));
    h.get_by_label("⏹ Cancel").click();
    wait_for(&mut h, "the cancellation", 60.0, |a| a.generate.run.is_none());
    assert_eq!(h.state().shared.history.len(), 1);
    assert!(h.get_all_by_label_contains("cancelled").next().is_some());

    // And again: the same prompt costs no text encoding (cached embeddings), a new size works.
    {
        let g = &mut h.state_mut().generate;
        g.steps = 3;
        g.batch = 1;
        g.width = 96;
        g.height = 64;
    }
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "the second result", 60.0, |a| a.shared.history.len() == 2);
    let img = &h.state().shared.history[1].images[0];
    assert_eq!((img.width(), img.height()), (96, 64));
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

#[test]
fn ui_text_empty_prompt_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app_with(fixtures(), tmp.path(), "sana-tiny");
    wait_ready(&mut h);
    h.state_mut().generate.prompt = "   \n ".into();
    h.get_by_label("✨ Generate").click();
    h.step();
    assert!(h.state().generate.run.is_none());
    assert!(errors(h.state()).iter().any(|e| e.contains("Type a prompt")), "{:?}", errors(h.state()));
    assert!(h.state().shared.history.is_empty());
    // The run's memory estimate is shown before it starts.
    wait_for(&mut h, "the memory reading", 10.0, |a| a.shared.memory.mem_available().is_some());
    assert!(h.get_all_by_label_contains("Estimated peak memory").next().is_some());
}

#[test]
fn ui_sprint_two_steps_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app_with(fixtures(), tmp.path(), "sana-tiny/sprint");
    wait_ready(&mut h);
    // Sprint reads no negative prompt, takes guidance as an input and has one sampler.
    assert_eq!(h.state().generate.controls.input, Input::Prompt { negative: false, instruction: true });
    assert!(!h.state().generate.controls.guided(4.5));
    assert_eq!(h.state().generate.samplers.len(), 1);
    assert_eq!(h.state().generate.steps, 2);
    type_prompt(&mut h, PROMPT);
    (h.state_mut().generate.width, h.state_mut().generate.height) = (64, 64);
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a Sprint result", 60.0, |a| a.shared.history.len() == 1);
    let item = &h.state().shared.history[0];
    assert_eq!(item.params.sampler(), "SCM (TrigFlow)");
    // Guidance is an input of Sprint's network: one call per step.
    assert_eq!(item.network_calls, 2);
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

/// A saved PNG carries prompt, negative prompt and the rest; dropped on the window (with another
/// model loaded and other settings) it restores the model, the prompt and every setting.
#[test]
fn ui_text_saved_png_restores_model_and_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app_with(fixtures(), tmp.path(), "sana-tiny");
    wait_ready(&mut h);
    type_prompt(&mut h, PROMPT);
    {
        let g = &mut h.state_mut().generate;
        g.negative_prompt = "low quality, blurry".into();
        g.steps = 3;
        g.guidance = 3.0;
        g.seed = 777;
        g.seed_locked = true;
        g.width = 64;
        g.height = 96;
        g.output_dir = Some(tmp.path().join("out"));
        // The model's second sampler, as the one sampler combo offers it.
        g.sampler = Some("euler".into());
    }
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a result", 60.0, |a| a.shared.history.len() == 1);
    assert_eq!(h.state().shared.history[0].params.sampler(), "Flow Euler");
    h.get_by_label("⚡ Quick save").click();
    wait_for(&mut h, "the quick save", 30.0, |a| a.shared.notices.items.iter().any(|n| n.text.starts_with("Saved")));
    let saved: Vec<_> = std::fs::read_dir(tmp.path().join("out")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let name = saved[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("sana-a_red_fox") && name.ends_with("-s777.png"), "{name}");

    // Another model and other settings.
    let uvit = h.state().shared.catalog.generators().find(|e| e.label == "uvit-tiny").unwrap().key.clone();
    h.state_mut().shared.use_generator(&uvit);
    wait_for(&mut h, "the class model", 60.0, |a| matches!(&a.shared.generator, GeneratorState::Ready(i) if i.name == "uvit-tiny"));
    {
        let g = &mut h.state_mut().generate;
        g.prompt = "something else".into();
        g.negative_prompt.clear();
        g.seed = 1;
        g.seed_locked = false;
    }
    h.input_mut().dropped_files.push(egui::DroppedFile { path: Some(saved[0].clone()), ..Default::default() });
    wait_for(&mut h, "the dropped PNG", 30.0, |a| a.shared.history.len() == 2);
    wait_for(&mut h, "sana-tiny again", 60.0, |a| matches!(&a.shared.generator, GeneratorState::Ready(i) if i.name == "sana-tiny"));
    std::thread::sleep(Duration::from_millis(50));
    h.step();
    let g = &h.state().generate;
    assert_eq!(g.prompt, PROMPT);
    assert_eq!(g.negative_prompt, "low quality, blurry");
    assert_eq!((g.steps, g.guidance, g.seed, g.seed_locked, g.width, g.height), (3, 3.0, 777, true, 64, 96), "the model's defaults must not replace the restored settings");
    // Chosen when its model arrived: the class model loaded when the PNG came offered no Euler.
    assert_eq!(g.sampler.as_deref(), Some("euler"));
    assert!(h.get_all_by_label_contains("Restored the settings").next().is_some());
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

/// Settings, the model in use and the finished images survive a restart: the images are in the
/// gallery folder as soon as they are made (PNG with parameters), and the next start shows them.
#[test]
fn ui_settings_and_gallery_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut h = app_with(fixtures(), tmp.path(), "sana-tiny/sprint");
    wait_ready(&mut h);
    type_prompt(&mut h, PROMPT);
    {
        let g = &mut h.state_mut().generate;
        g.negative_prompt = "grainy".into();
        g.width = 96;
        g.height = 64;
        g.seed = 31337;
        g.seed_locked = true;
    }
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a result", 60.0, |a| a.shared.history.len() == 1);
    wait_for(&mut h, "the gallery write", 30.0, |a| !a.shared.gallery_busy());
    let gallery = dcae::ui::persist::gallery::list(&state.join("gallery"));
    assert_eq!(gallery.len(), 1, "the result is on disk at once: {gallery:?}");
    let bytes = std::fs::read(&gallery[0].0).unwrap();
    let params = dcae::engine::worker::api::read_png_params(&bytes).unwrap().expect("parameters in the gallery PNG");
    assert_eq!(params.text().map(|t| t.prompts[0].as_str()), Some(PROMPT));
    let used = h.state().shared.generator_key.clone();
    h.state_mut().save_settings_now();
    drop(h);

    // The next start: settings read before the window opens, as `ui::run` does.
    let saved = dcae::ui::persist::load_settings(&state).unwrap().expect("saved settings");
    let options = dcae::ui::AppOptions {
        model_dir: Some(fixtures()),
        backend: dcae::engine::backend::BackendChoice::Cpu,
        cache_dir: Some(tmp.path().join("cache")),
        hub: Some(dcae::engine::worker::api::hub::HubOptions::new(tmp.path().join("hf")).with_offline(true)),
        auto_load: true,
        fit_latent_side: 8,
        generator: None,
        state_dir: Some(state.clone()),
        saved: Some(saved),
    };
    let mut h = egui_kittest::Harness::builder().with_size(egui::vec2(1280.0, 820.0)).build_eframe(move |cc| dcae::ui::StudioApp::new(cc, options));
    h.step();
    wait_ready(&mut h);
    wait_for(&mut h, "the gallery", 30.0, |a| a.shared.history.len() == 1);
    let app = h.state();
    assert_eq!(app.shared.generator_key, used, "the model used last is loaded again");
    let g = &app.generate;
    assert_eq!((g.prompt.as_str(), g.negative_prompt.as_str(), g.width, g.height, g.seed, g.seed_locked), (PROMPT, "grainy", 96, 64, 31337, true));
    assert_eq!(g.prompt_history.first().map(String::as_str), Some(PROMPT));
    let item = &app.shared.history[0];
    assert_eq!(item.params.text().map(|t| t.seed), Some(31337));
    assert_eq!((item.images[0].width(), item.images[0].height()), (96, 64));
    assert!(errors(app).is_empty(), "{:?}", errors(app));
}

/// Image-to-image for both kinds of model: a picture dropped on the Generate view becomes the
/// source; the run redraws `strength` of the schedule (fewer network calls), the same seed gives
/// the same picture, and the PNG parameters name the source and the strength.
#[test]
fn ui_image_to_image_from_a_dropped_picture() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app_with(fixtures(), tmp.path(), "sana-tiny");
    wait_ready(&mut h);
    let photo = fixtures().join("sana-tiny/input.png");
    h.input_mut().dropped_files.push(egui::DroppedFile { path: Some(photo.clone()), ..Default::default() });
    wait_for(&mut h, "the source", 30.0, |a| a.generate.source.is_some());
    assert_eq!(h.state().tab, dcae::ui::Tab::Generate, "a plain picture dropped on Generate stays there");
    type_prompt(&mut h, PROMPT);
    {
        let g = &mut h.state_mut().generate;
        (g.width, g.height) = (64, 64);
        g.steps = 6;
        g.strength = 0.5;
        g.seed = 5;
        g.seed_locked = true;
        g.decode_every = 0;
        g.decode_every_touched = true;
    }
    for n in 1..=2 {
        h.get_by_label("✨ Generate").click();
        wait_for(&mut h, "an image-to-image result", 60.0, |a| a.shared.history.len() == n);
    }
    let (a, b) = (&h.state().shared.history[0], &h.state().shared.history[1]);
    assert_eq!(a.images[0], b.images[0], "same seed, same source, same result");
    // Half of the 6-step schedule (one batched transformer call per step).
    assert_eq!(a.network_calls, 3);
    let i2i = a.params.text().and_then(|t| t.img2img.clone()).expect("img2img in the parameters");
    assert_eq!((i2i.source.as_str(), i2i.strength), ("input.png", 0.5));
    let text = a.params.to_parameters_text();
    assert!(text.contains("Denoising strength: 0.5") && text.contains("Source: input.png"), "{text}");
    // A stronger redraw from the same source differs.
    h.state_mut().generate.strength = 1.0;
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a full-strength result", 60.0, |a| a.shared.history.len() == 3);
    assert_ne!(h.state().shared.history[2].images[0], h.state().shared.history[0].images[0]);
    assert_eq!(h.state().shared.history[2].network_calls, 6);

    // The class-conditional model takes the same source.
    let uvit = h.state().shared.catalog.generators().find(|e| e.label == "uvit-tiny").unwrap().key.clone();
    h.state_mut().shared.use_generator(&uvit);
    wait_for(&mut h, "the class model", 60.0, |a| matches!(&a.shared.generator, GeneratorState::Ready(i) if i.name == "uvit-tiny"));
    {
        let g = &mut h.state_mut().generate;
        g.steps = 10;
        g.strength = 0.3;
        g.batch = 1;
    }
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "a class image-to-image result", 60.0, |a| a.shared.history.len() == 4);
    let item = &h.state().shared.history[3];
    // round(0.3 · 10) = 3 guided predictions.
    assert_eq!(item.nfe, 3);
    let c = item.params.class().expect("class parameters");
    assert_eq!(c.img2img.as_ref().map(|i| i.strength), Some(0.3));
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

/// A pipeline with a truncated transformer file fails to load with the kind that lets the app
/// offer "delete and download again", naming that very file; one with a component folder
/// missing names the folder.
#[test]
fn damaged_pipeline_failures_say_which_file() {
    use dcae::engine::backend::BackendChoice;
    use dcae::engine::worker::api::FailureKind;
    use dcae::engine::worker::{Event, GeneratorSource, Job, JobEnd, Worker, WorkerConfig};
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("sana");
    copy_dir(&fixtures().join("sana-tiny"), &copy);
    let weights = copy.join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let config = WorkerConfig { backend: BackendChoice::Cpu, cache_dir: None, fit_latent_side: 8, text_encoder: Default::default(), autoencoder: Default::default() };
    let w = Worker::spawn(config, std::sync::Arc::new(|| {}));
    let failure = |w: &Worker| loop {
        match w.recv_timeout(Duration::from_secs(60)) {
            Some(Event::Ended { end: JobEnd::Failed(e), .. }) => return (e.kind, e.message),
            Some(Event::Ended { end, .. }) => panic!("a damaged pipeline did not fail: {end:?}"),
            Some(_) => {}
            None => panic!("no answer"),
        }
    };
    let mut w = w;
    w.send(Job::LoadGenerator { id: w.next_id(), source: GeneratorSource::Text { name: "sana".into(), root: copy.clone() }, cancel: dcae::engine::worker::cancel_token() });
    let (kind, message) = failure(&w);
    assert_eq!(kind, FailureKind::Damaged { path: weights.clone() }, "{message}");
    assert!(message.contains("truncated") || message.contains("corrupt"), "{message}");

    std::fs::remove_dir_all(copy.join("vae")).unwrap();
    w.send(Job::LoadGenerator { id: w.next_id(), source: GeneratorSource::Text { name: "sana".into(), root: copy.clone() }, cancel: dcae::engine::worker::cancel_token() });
    let (kind, message) = failure(&w);
    assert!(matches!(&kind, FailureKind::Damaged { path } if path.ends_with("vae")), "{kind:?}: {message}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
