//! The engine's contract (issue 22): every job carries an id and ends with exactly one
//! `Event::Ended`, whatever happens to it; a load that panics neither spins forever nor brings
//! back the model it was replacing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dcae::engine::backend::BackendChoice;
use dcae::engine::worker::{
    cancel_token, Conditioning, Event, GenerateJob, GeneratorSource, Job, JobEnd, JobId, ModelFilesRef, PanicAt, ReconstructJob, Worker, WorkerConfig,
};
use dcae::ui::GeneratorState;

use super::ui::{app_with, errors, fixtures, wait_for, wait_ready};

/// The CPU engine the worker tests run on, with a private projection cache under `tmp`.
pub fn worker_config(tmp: &std::path::Path) -> WorkerConfig {
    WorkerConfig { backend: BackendChoice::Cpu, cache_dir: Some(tmp.join("cache")), fit_latent_side: 8, text_encoder: Default::default(), autoencoder: Default::default() }
}

fn worker(tmp: &std::path::Path) -> Worker {
    Worker::spawn(worker_config(tmp), std::sync::Arc::new(|| {}))
}

fn class_source(name: &str) -> GeneratorSource {
    let dir = fixtures().join(name);
    GeneratorSource::Class(ModelFilesRef { name: name.into(), config: dir.join("config.json"), weights: dir.join("model.safetensors") })
}

fn generate(id: JobId, conditioning: Conditioning, steps: usize) -> GenerateJob {
    GenerateJob { id, conditioning, init: None, cfg_scale: 4.0, steps, seed: id, sampler: None, preview_latents: true, decode_every: 2, cancel: cancel_token() }
}

/// Every event until each of `ids` has ended (and a little longer, to catch a second end).
fn ends_of(w: &Worker, ids: &[JobId], secs: u64) -> (HashMap<JobId, Vec<JobEnd>>, Vec<Event>) {
    let mut ends: HashMap<JobId, Vec<JobEnd>> = HashMap::new();
    let mut other = Vec::new();
    let start = Instant::now();
    let mut settled: Option<Instant> = None;
    while start.elapsed() < Duration::from_secs(secs) {
        if settled.is_some_and(|t| t.elapsed() > Duration::from_millis(500)) {
            break;
        }
        match w.recv_timeout(Duration::from_millis(50)) {
            Some(Event::Ended { job, end }) => ends.entry(job).or_default().push(end),
            Some(e) => other.push(e),
            None => {}
        }
        if settled.is_none() && ids.iter().all(|i| ends.contains_key(i)) {
            settled = Some(Instant::now());
        }
    }
    (ends, other)
}

/// Jobs of every kind, ending every way (loaded, failed, generated, cancelled, refused,
/// reconstructed, done, crashed): each id ends once, and nothing ends that was not sent
/// (the supervisor's own reload announces itself first).
#[test]
fn every_job_ends_exactly_once_whatever_happens_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = worker(tmp.path());
    let mut sent = Vec::new();
    let mut send = |w: &mut Worker, make: &dyn Fn(JobId) -> Job| {
        let id = w.next_id();
        sent.push(id);
        w.send(make(id));
    };
    let missing = GeneratorSource::Class(ModelFilesRef { name: "gone".into(), config: tmp.path().join("no/config.json"), weights: tmp.path().join("no/model.safetensors") });
    send(&mut w, &|id| Job::LoadGenerator { id, source: missing.clone(), cancel: cancel_token() });
    send(&mut w, &|id| Job::LoadGenerator { id, source: class_source("uvit-tiny"), cancel: cancel_token() });
    send(&mut w, &|id| Job::Generate(generate(id, Conditioning::Classes(vec![1, 2]), 4)));
    send(&mut w, &|id| {
        let cancelled = generate(id, Conditioning::Classes(vec![3]), 4);
        cancelled.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        Job::Generate(cancelled)
    });
    // A prompt for a class model: a typed refusal, not a panic.
    let prompt = dcae::model::sana::adapter::TextRequest {
        prompt: "a cat".into(),
        negative_prompt: String::new(),
        batch: 1,
        width: 64,
        height: 64,
        instruction: false,
        binning: false,
    };
    send(&mut w, &|id| Job::Generate(generate(id, Conditioning::Prompt(prompt.clone()), 2)));
    let ae = fixtures().join("ae-tiny-in");
    let image = std::sync::Arc::new(image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 128])));
    let models = vec![ModelFilesRef { name: "ae-tiny-in".into(), config: ae.join("config.json"), weights: ae.join("model.safetensors") }];
    send(&mut w, &|id| Job::Reconstruct(ReconstructJob { id, image: image.clone(), size: Some(64), models: models.clone(), heatmap_gain: 4.0, cancel: cancel_token() }));
    send(&mut w, &|id| Job::UnloadAutoencoders { id });
    send(&mut w, &|id| Job::ClearProjections { id });
    let (ends, other) = ends_of(&w, &sent, 120);
    for id in &sent {
        assert_eq!(ends.get(id).map_or(0, Vec::len), 1, "job {id}: {:?}", ends.get(id));
    }
    let end = |i: usize| &ends[&sent[i]][0];
    assert!(matches!(end(0), JobEnd::Failed(_)), "{:?}", end(0));
    assert!(matches!(end(1), JobEnd::Loaded { .. }), "{:?}", end(1));
    assert!(matches!(end(2), JobEnd::Generated(g) if g.images.len() == 2), "{:?}", end(2));
    assert!(matches!(end(3), JobEnd::Cancelled), "{:?}", end(3));
    assert!(matches!(end(4), JobEnd::Failed(e) if e.message.contains("takes a class")), "{:?}", end(4));
    assert!(matches!(end(5), JobEnd::Reconstructed), "{:?}", end(5));
    assert!(matches!(end(6), JobEnd::Done), "{:?}", end(6));
    assert!(matches!(end(7), JobEnd::Done), "{:?}", end(7));
    assert!(ends.keys().all(|k| sent.contains(k)), "ends of jobs nobody sent: {:?}", ends.keys());
    assert!(other.iter().any(|e| matches!(e, Event::Reconstructed { .. })), "the reconstruction's result came before its end");

    // A job that panics ends as crashed; the model that was loaded comes back as a job of its
    // own (announced, with its own end), and the job queued behind the crash still runs.
    w.faults().panic_next(PanicAt::Generate);
    let crashing = w.next_id();
    w.send(Job::Generate(generate(crashing, Conditioning::Classes(vec![1]), 2)));
    let after = w.next_id();
    w.send(Job::Generate(generate(after, Conditioning::Classes(vec![1]), 2)));
    let (ends, other) = ends_of(&w, &[crashing, after], 120);
    assert!(matches!(ends[&crashing][..], [JobEnd::Crashed { .. }]), "{:?}", ends[&crashing]);
    assert!(matches!(ends[&after][..], [JobEnd::Generated(_)]), "{:?}", ends[&after]);
    let reload = other.iter().find_map(|e| match e {
        Event::Reloading { job, source, .. } => Some((*job, source.clone())),
        _ => None,
    });
    let (reload, source) = reload.unwrap_or_else(|| panic!("no reload announced: {other:?}"));
    assert_eq!(source, class_source("uvit-tiny"));
    assert!(matches!(ends[&reload][..], [JobEnd::Loaded { .. }]), "{:?}", ends.get(&reload));
}

/// Regression (issue 22): a panic while loading a model left "Loading…" spinning forever (the
/// load had no id and no end), and the restarted engine silently reloaded the model the load
/// was replacing while the picker named the new one. Now the load ends as crashed, nothing is
/// reloaded, and a generation says that no model is loaded.
#[test]
fn a_load_that_panics_ends_and_does_not_bring_back_the_model_it_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = worker(tmp.path());
    let first = w.next_id();
    w.send(Job::LoadGenerator { id: first, source: class_source("uvit-tiny"), cancel: cancel_token() });
    let (ends, _) = ends_of(&w, &[first], 60);
    assert!(matches!(ends[&first][..], [JobEnd::Loaded { .. }]), "{:?}", ends[&first]);
    w.faults().panic_next(PanicAt::Load);
    let second = w.next_id();
    w.send(Job::LoadGenerator { id: second, source: class_source("dit-tiny"), cancel: cancel_token() });
    let probe = w.next_id();
    w.send(Job::Generate(generate(probe, Conditioning::Classes(vec![1]), 2)));
    let (ends, other) = ends_of(&w, &[second, probe], 60);
    assert!(matches!(&ends[&second][..], [JobEnd::Crashed { reason }] if reason.contains("loading")), "{:?}", ends[&second]);
    let reloads: Vec<_> = other.iter().filter(|e| matches!(e, Event::Reloading { .. })).collect();
    assert!(reloads.is_empty(), "the replaced model came back: {reloads:?}");
    assert!(matches!(&ends[&probe][..], [JobEnd::Failed(e)] if e.message.contains("no generation model")), "{:?}", ends[&probe]);
}

/// The same in the app: the picker names the model whose load crashed, the state says it
/// failed and why (not "Loading…"), and it stays so after the engine's restart.
#[test]
fn ui_a_load_that_panics_shows_the_failure_not_loading_forever() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app_with(fixtures(), tmp.path(), "uvit-tiny");
    wait_ready(&mut h);
    h.state().shared.worker.faults().panic_next(PanicAt::Load);
    // Catalog keys of a model folder are its path.
    let key = fixtures().join("dit-tiny").display().to_string();
    h.state_mut().shared.use_generator(&key);
    wait_for(&mut h, "the load's end", 30.0, |a| !matches!(a.shared.generator, GeneratorState::Loading(_)));
    wait_for(&mut h, "the engine's restart", 30.0, |a| a.shared.notices.items.iter().any(|n| n.text.contains("restarted")));
    for _ in 0..50 {
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = &h.state().shared;
    assert_eq!(s.generator_key.as_deref(), Some(key.as_str()));
    assert!(matches!(&s.generator, GeneratorState::Failed { name, message, .. } if name.contains("dit-tiny") && message.contains("loading")), "{:?}", s.generator);
    assert!(errors(h.state()).iter().any(|e| e.contains("Could not load")), "{:?}", errors(h.state()));
}

/// Reconstruct's "its autoencoder" loaded a second copy of the weights the generator already
/// held; it now shares the generator's. Loading another generator drops it with the old model.
#[test]
fn regression_reconstructing_with_the_generators_own_autoencoder_loads_no_second_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = worker(tmp.path());
    let source = class_source("uvit-tiny");
    let GeneratorSource::Class(files) = source.clone() else { unreachable!() };
    let load = w.next_id();
    w.send(Job::LoadGenerator { id: load, source, cancel: cancel_token() });
    let (ends, _) = ends_of(&w, &[load], 60);
    assert!(matches!(ends[&load][..], [JobEnd::Loaded { .. }]), "{:?}", ends[&load]);
    let image = std::sync::Arc::new(image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 77])));
    let recon = w.next_id();
    w.send(Job::Reconstruct(ReconstructJob { id: recon, image, size: Some(64), models: vec![files], heatmap_gain: 4.0, cancel: cancel_token() }));
    let (ends, other) = ends_of(&w, &[recon], 60);
    assert!(matches!(ends[&recon][..], [JobEnd::Reconstructed]), "{:?}", ends[&recon]);
    let loads: Vec<&String> = other.iter().filter_map(|e| match e { Event::Status(s) if s.starts_with("Loading") => Some(s), _ => None }).collect();
    assert!(loads.is_empty(), "the reconstruction loaded weights again: {loads:?}");
    assert!(other.iter().any(|e| matches!(e, Event::Reconstructed { .. })), "a result came back");
}

/// Loading a model could not be cancelled (issue 20): now a cancelled load ends `Cancelled`,
/// keeps nothing (not the model it replaced either: that was freed first), and the next load
/// works.
#[test]
fn a_cancelled_load_ends_cancelled_and_leaves_nothing_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = worker(tmp.path());
    let first = w.next_id();
    w.send(Job::LoadGenerator { id: first, source: class_source("uvit-tiny"), cancel: cancel_token() });
    let cancelled = w.next_id();
    let token = cancel_token();
    token.store(true, std::sync::atomic::Ordering::SeqCst);
    w.send(Job::LoadGenerator { id: cancelled, source: class_source("dit-tiny"), cancel: token });
    let run = w.next_id();
    w.send(Job::Generate(generate(run, Conditioning::Classes(vec![1]), 2)));
    let again = w.next_id();
    w.send(Job::LoadGenerator { id: again, source: class_source("dit-tiny"), cancel: cancel_token() });
    let (ends, _) = ends_of(&w, &[first, cancelled, run, again], 120);
    assert!(matches!(ends[&first][..], [JobEnd::Loaded { .. }]), "{:?}", ends[&first]);
    assert!(matches!(ends[&cancelled][..], [JobEnd::Cancelled]), "{:?}", ends[&cancelled]);
    assert!(matches!(&ends[&run][..], [JobEnd::Failed(e)] if e.message.contains("no generation model")), "{:?}", ends[&run]);
    assert!(matches!(ends[&again][..], [JobEnd::Loaded { .. }]), "{:?}", ends[&again]);
}

/// The same through the checkpoint loader alone: a cancel stops it before it reads a weight,
/// and what it built is refused, not handed out.
#[test]
fn a_load_inside_a_cancelled_scope_is_refused() {
    let dir = fixtures().join("uvit-tiny");
    let flag = cancel_token();
    flag.store(true, std::sync::atomic::Ordering::SeqCst);
    let device = Default::default();
    let load = || dcae::engine::worker::api::Generator::<dcae::engine::backend::Cpu>::load("uvit-tiny", &dir.join("config.json"), &dir.join("model.safetensors"), &device);
    let err = dcae::weights::cancel::scope(Some(&flag), load).err().expect("a cancelled load is refused");
    assert!(err.message.contains("cancelled"), "{}", err.message);
    assert!(dcae::weights::cancel::scope(None, load).is_ok(), "outside the scope it loads");
}

/// The app's side: Cancel on a load in progress shows that nothing is loaded, not "Loading…".
#[test]
fn ui_cancelling_a_load_shows_no_model_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app_with(fixtures(), tmp.path(), "uvit-tiny");
    wait_ready(&mut h);
    let key = fixtures().join("dit-tiny").display().to_string();
    h.state_mut().shared.use_generator(&key);
    assert!(h.state().shared.loading_job().is_some());
    h.state_mut().shared.cancel_load();
    wait_for(&mut h, "the load's end", 60.0, |a| !matches!(a.shared.generator, GeneratorState::Loading(_)));
    assert!(matches!(h.state().shared.generator, GeneratorState::Missing), "{:?}", h.state().shared.generator);
    assert!(h.state().shared.loading_job().is_none());
    assert!(h.state().shared.notices.items.iter().any(|n| n.text.contains("cancelled")), "the user is told");
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}
