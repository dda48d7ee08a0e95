//! The local API inside the app (issue 21): the same server as `dcae serve` on the app's own
//! engine, so an API request and the app's own runs share one engine and one queue; the app
//! shows the API's running request and follows a model the API loaded.

use std::time::Duration;

use dcae::ui::GeneratorState;
use egui_kittest::kittest::Queryable;
use serde_json::{json, Value};

use super::ui::{app_with, errors, fixtures, wait_for, wait_ready};

fn post(url: String, body: Value) -> std::thread::JoinHandle<(u16, Value)> {
    std::thread::spawn(move || super::serve::call("POST", &url, Some(&body)))
}

#[test]
fn ui_serves_the_local_api_on_its_own_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = app_with(fixtures(), tmp.path(), "uvit-tiny");
    wait_ready(&mut h);
    h.state_mut().shared.api.port = 0;
    h.state_mut().shared.set_serving(true);
    let addr = h.state().shared.api.address().expect("the API serves");
    let base = format!("http://{addr}");

    // A long request: the strip above the status bar shows it while it runs.
    let long = post(format!("{base}/sdapi/v1/txt2img"), json!({ "prompt": "tench", "steps": 200, "batch_size": 16, "n_iter": 16, "force_task_id": "long" }));
    let queue = h.state().shared.api.server.as_ref().map(|s| s.queue.clone()).unwrap();
    wait_for(&mut h, "the API request to run", 60.0, |_| queue.running().is_some_and(|r| r.step > 0));
    h.step();
    h.get_by_label("Local API");
    assert!(queue.cancel("long"));
    let (s, v) = long.join().unwrap();
    assert_eq!((s, v["error"].as_str()), (409, Some("cancelled")), "{v}");

    // A request that needs another model: the shared engine loads it, and the app follows.
    let r = post(format!("{base}/sdapi/v1/txt2img"), json!({ "prompt": "a red apple", "steps": 2, "width": 64, "height": 64, "override_settings": { "sd_model_checkpoint": "sana-tiny" } }));
    wait_for(&mut h, "the API's answer", 60.0, |_| r.is_finished());
    let (s, v) = r.join().unwrap();
    assert_eq!(s, 200, "{v}");
    wait_for(&mut h, "the app to follow the API's model", 30.0, |a| matches!(&a.shared.generator, GeneratorState::Ready(i) if i.name == "sana-tiny"));
    assert!(h.state().shared.notices.items.iter().any(|n| n.text.contains("The local API loaded sana-tiny")));

    // The app's own run, on the same engine, with the model now loaded.
    h.state_mut().generate.prompt = "a blue car".into();
    h.state_mut().generate.steps = 2;
    h.state_mut().generate.width = 64;
    h.state_mut().generate.height = 64;
    h.get_by_label("✨ Generate").click();
    wait_for(&mut h, "the app's own result", 60.0, |a| a.shared.history.len() == 1);
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
    assert!(h.state().settings_snapshot().api.serve);

    // Off: the port closes, and the setting is saved off.
    h.state_mut().shared.set_serving(false);
    let refused = ureq::get(&format!("{base}/sdapi/v1/sd-models")).timeout(Duration::from_secs(5)).call();
    assert!(matches!(refused, Err(ureq::Error::Transport(_))), "still answering: {:?}", refused.map(|r| r.status()));
    assert!(!h.state().settings_snapshot().api.serve);
}
