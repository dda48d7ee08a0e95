//! The local API (`dcae serve`, issue 21) over a real socket on 127.0.0.1 with the tiny
//! fixtures: the A1111 endpoints as clients call them, every bad request a JSON 4xx, the queue
//! (positions, cancel, interrupt), auth, a bounded load test, and a session driven by the
//! `webuiapi` Python package, a client nobody here wrote.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use dcae::engine::backend::BackendChoice;
use dcae::engine::worker::api::{self, hub::HubOptions, ImageParams};
use dcae::engine::worker::WorkerConfig;
use dcae::server::{ServeConfig, Server};
use serde_json::{json, Value};

fn fixtures() -> std::path::PathBuf {
    super::common::fixture("")
}

fn config(tmp: &std::path::Path) -> ServeConfig {
    ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        auth: None,
        model_dirs: vec![fixtures()],
        model: Some("uvit-tiny".into()),
        hub: HubOptions::new(tmp.join("hf")).with_offline(true),
        worker: WorkerConfig { backend: BackendChoice::Cpu, cache_dir: Some(tmp.join("cache")), fit_latent_side: 8, text_encoder: Default::default(), autoencoder: Default::default() },
        live_previews: true,
    }
}

fn start(tmp: &std::path::Path) -> (Server, String) {
    start_with(config(tmp))
}

fn start_with(c: ServeConfig) -> (Server, String) {
    let server = Server::start(c).expect("the server starts");
    let base = format!("http://{}", server.addr());
    (server, base)
}

/// `(status, JSON body)` of a request; a body that is not JSON is a test failure.
pub(crate) fn call(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    call_auth(method, url, body, None)
}

fn call_auth(method: &str, url: &str, body: Option<&Value>, auth: Option<&str>) -> (u16, Value) {
    let mut rq = ureq::request(method, url).timeout(Duration::from_secs(300));
    if let Some(a) = auth {
        rq = rq.set("Authorization", &format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(a)));
    }
    let r = match body {
        Some(b) => rq.set("Content-Type", "application/json").send_string(&b.to_string()),
        None => rq.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().expect("a body");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {url} answered {status} with a body that is not JSON ({e}): {text:.200}"));
    (status, v)
}

fn raw(method: &str, url: &str, body: &[u8]) -> (u16, Value) {
    let r = ureq::request(method, url).set("Content-Type", "application/json").send_bytes(body);
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    (status, serde_json::from_str(&resp.into_string().unwrap()).expect("a JSON body"))
}

fn png_of(b64: &Value) -> (image::RgbImage, Option<ImageParams>) {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.as_str().expect("a base64 string")).expect("base64");
    let img = image::load_from_memory(&bytes).expect("a PNG").to_rgb8();
    (img, api::read_png_params(&bytes).expect("readable parameters"))
}

fn info_of(v: &Value) -> Value {
    serde_json::from_str(v["info"].as_str().expect("info is a JSON string")).expect("info parses")
}

fn b64_png(img: &image::RgbImage) -> String {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn serve_generates_with_a_class_and_a_text_model_in_a1111_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, base) = start(tmp.path());
    let (s, models) = call("GET", &format!("{base}/sdapi/v1/sd-models"), None);
    assert_eq!(s, 200);
    let titles: Vec<&str> = models.as_array().unwrap().iter().map(|m| m["title"].as_str().unwrap()).collect();
    assert!(titles.contains(&"uvit-tiny") && titles.contains(&"sana-tiny"), "{titles:?}");

    // A class model reads the prompt as an ImageNet class; the seed is honoured.
    let body = json!({ "prompt": "goldfish", "steps": 2, "cfg_scale": 1.5, "seed": 5, "batch_size": 2, "sampler_name": "Euler a" });
    let (s, r) = call("POST", &format!("{base}/sdapi/v1/txt2img"), Some(&body));
    assert_eq!(s, 200, "{r}");
    let images = r["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let (first, params) = png_of(&images[0]);
    match params.expect("the PNG carries its parameters") {
        ImageParams::Class(c) => assert_eq!((c.classes[0], c.steps, c.seed, c.model.as_str()), (1, 2, 5, "uvit-tiny")),
        other => panic!("{other:?}"),
    }
    let info = info_of(&r);
    assert_eq!(info["all_seeds"], json!([5, 5]));
    assert_eq!(info["sd_model_name"], "uvit-tiny");
    assert!(info["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("Euler a")), "{info}");
    let (_, again) = call("POST", &format!("{base}/sdapi/v1/txt2img"), Some(&body));
    assert_eq!(png_of(&again["images"][0]).0, first, "the same seed gives the same image");

    // A text model, named per request; the size is the request's.
    let body = json!({ "prompt": ["a red apple", "a blue car"], "negative_prompt": "blurry", "steps": 2, "seed": 9, "width": 64, "height": 96, "override_settings": { "sd_model_checkpoint": "sana-tiny" } });
    let (s, r) = call("POST", &format!("{base}/sdapi/v1/txt2img"), Some(&body));
    assert_eq!(s, 200, "{r}");
    let images = r["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "one image per prompt");
    let (img, params) = png_of(&images[1]);
    assert_eq!(img.dimensions(), (64, 96));
    match params.unwrap() {
        ImageParams::Text(t) => assert_eq!((t.prompts[0].as_str(), t.negative_prompt.as_str(), t.seed), ("a blue car", "blurry", 10)),
        other => panic!("{other:?}"),
    }
    assert_eq!(info_of(&r)["all_prompts"], json!(["a red apple", "a blue car"]));

    // png-info reads the parameters back.
    let (s, p) = call("POST", &format!("{base}/sdapi/v1/png-info"), Some(&json!({ "image": images[0] })));
    assert_eq!(s, 200);
    assert!(p["info"].as_str().unwrap().contains("a red apple"), "{p}");
    assert_eq!(p["parameters"]["Prompt"], "a red apple");

    // Image to image, and a reconstruction.
    let source = image::RgbImage::from_fn(80, 64, |x, y| image::Rgb([(x * 3) as u8, (y * 4) as u8, 120]));
    let body = json!({ "prompt": "a red apple", "init_images": [b64_png(&source)], "denoising_strength": 0.5, "steps": 2, "width": 64, "height": 64, "seed": 1, "override_settings": { "sd_model_checkpoint": "sana-tiny" } });
    let (s, r) = call("POST", &format!("{base}/sdapi/v1/img2img"), Some(&body));
    assert_eq!(s, 200, "{r}");
    let (_, params) = png_of(&r["images"][0]);
    assert!(matches!(params, Some(ImageParams::Text(t)) if t.img2img.as_ref().is_some_and(|i| i.strength == 0.5)));
    assert!(r["parameters"]["init_images"].is_null(), "the source is not echoed back");

    let (s, r) = call("POST", &format!("{base}/dcae/v1/reconstruct"), Some(&json!({ "image": b64_png(&source), "models": ["ae-tiny-in"] })));
    assert_eq!(s, 200, "{r}");
    let res = &r["results"][0];
    assert!(res["psnr"].as_f64().unwrap().is_finite() && res["latent_shape"].as_array().unwrap().len() == 3, "{res}");
    png_of(&res["image"]);

    // Options switch the default model, and say which is loaded.
    let (s, _) = call("POST", &format!("{base}/sdapi/v1/options"), Some(&json!({ "sd_model_checkpoint": "sana-tiny" })));
    assert_eq!(s, 200);
    let (_, o) = call("GET", &format!("{base}/sdapi/v1/options"), None);
    assert_eq!((o["sd_model_checkpoint"].as_str(), o["loaded_model"].as_str()), (Some("sana-tiny"), Some("sana-tiny")));
    let c = server.queue.counts();
    assert_eq!((c.failed, c.cancelled), (0, 0), "{c:?}");
}

#[test]
fn serve_answers_every_bad_request_with_a_json_4xx_and_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, base) = start(tmp.path());
    let t2i = format!("{base}/sdapi/v1/txt2img");
    let cases: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        ("GET", format!("{base}/sdapi/v1/nothing"), None, 404, "not_found"),
        ("GET", t2i.clone(), None, 405, "method_not_allowed"),
        ("POST", t2i.clone(), Some(json!([1, 2])), 422, "invalid_request"),
        ("POST", t2i.clone(), Some(json!({ "steps": "many" })), 422, "invalid_request"),
        ("POST", t2i.clone(), Some(json!({ "prompt": "tench", "steps": 100000 })), 422, "invalid_request"),
        ("POST", t2i.clone(), Some(json!({ "prompt": "qqqqqqqqqqqqqqqqqqqqqqqqqqqq", "steps": 2 })), 422, "invalid_request"),
        ("POST", t2i.clone(), Some(json!({ "prompt": "1000000", "steps": 2 })), 422, "invalid_request"),
        ("POST", t2i.clone(), Some(json!({ "prompt": "", "steps": 2, "override_settings": { "sd_model_checkpoint": "sana-tiny" } })), 422, "invalid_request"),
        ("POST", t2i.clone(), Some(json!({ "prompt": "x", "steps": 2, "width": 65, "override_settings": { "sd_model_checkpoint": "sana-tiny" } })), 422, "invalid_request"),
        ("POST", t2i.clone(), Some(json!({ "override_settings": { "sd_model_checkpoint": "../../etc/passwd" } })), 404, "not_found"),
        ("POST", format!("{base}/sdapi/v1/options"), Some(json!({ "sd_model_checkpoint": "no-such-model" })), 404, "not_found"),
        ("POST", format!("{base}/sdapi/v1/img2img"), Some(json!({ "prompt": "tench", "init_images": ["bm90IGFuIGltYWdl"] })), 422, "invalid_request"),
        ("POST", format!("{base}/sdapi/v1/img2img"), Some(json!({ "prompt": "tench" })), 422, "invalid_request"),
        ("POST", format!("{base}/sdapi/v1/png-info"), Some(json!({ "image": 5 })), 422, "invalid_request"),
        ("POST", format!("{base}/dcae/v1/reconstruct"), Some(json!({ "image": b64_png(&image::RgbImage::new(8, 8)), "models": ["uvit-tiny"] })), 404, "not_found"),
        ("POST", format!("{base}/dcae/v1/queue/task(999)/cancel"), None, 404, "not_found"),
    ];
    for (method, url, body, status, error) in cases {
        let (s, v) = call(method, &url, body.as_ref());
        assert_eq!((s, v["error"].as_str()), (status, Some(error)), "{method} {url} {body:?}: {v}");
        assert!(!v["detail"].as_str().unwrap_or_default().is_empty(), "{v}");
    }
    let (s, v) = raw("POST", &t2i, b"{\"prompt\": ");
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_json")), "{v}");
    // Over the body limit: refused before it is read whole.
    let huge = vec![b' '; dcae::server::MAX_BODY_BYTES + 10];
    let (s, v) = raw("POST", &t2i, &huge);
    assert_eq!((s, v["error"].as_str()), (413, Some("too_large")), "{v}");
    // And it still serves.
    let (s, r) = call("POST", &t2i, Some(&json!({ "prompt": "tench", "steps": 2 })));
    assert_eq!(s, 200, "{r}");
    // Refused in turn (they need the model's own limits): an unknown class name, a class id
    // out of range, an empty prompt and an odd width for the text model, a generation model
    // given to reconstruction. Everything else was refused before it was queued.
    let c = server.queue.counts();
    assert_eq!((c.accepted, c.finished, c.failed, c.cancelled), (7, 2, 5, 0), "{c:?}");
}

#[test]
fn serve_requires_basic_auth_when_given_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.auth = Some(("ann".into(), "s3cret".into()));
    let (_server, base) = start_with(c);
    let url = format!("{base}/sdapi/v1/sd-models");
    assert_eq!(call("GET", &url, None).0, 401);
    assert_eq!(call_auth("GET", &url, None, Some("ann:wrong")).0, 401);
    assert_eq!(call_auth("GET", &url, None, Some("ann:s3cret")).0, 200);
    assert_eq!(dcae::server::parse_auth("nocolon").err().map(|e| e.contains("user:password")), Some(true));
}

/// Runs `body` on a thread (the request blocks until its turn ends).
fn spawn_call(url: String, body: Value) -> std::thread::JoinHandle<(u16, Value)> {
    std::thread::spawn(move || call("POST", &url, Some(&body)))
}

fn wait_until(what: &str, secs: f64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed().as_secs_f64() < secs, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_queues_requests_with_positions_cancel_skip_and_interrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, base) = start(tmp.path());
    let t2i = format!("{base}/sdapi/v1/txt2img");
    // A long request runs; two more wait behind it.
    let long = spawn_call(t2i.clone(), json!({ "prompt": "tench", "steps": 200, "batch_size": 16, "n_iter": 16, "force_task_id": "long" }));
    wait_until("the long request to run", 60.0, || server.queue.running().is_some_and(|r| r.id == "long"));
    let second = spawn_call(t2i.clone(), json!({ "prompt": "goldfish", "steps": 2, "force_task_id": "second" }));
    wait_until("the second to wait", 30.0, || server.queue.waiting().len() == 1);
    let third = spawn_call(t2i.clone(), json!({ "prompt": "goldfish", "steps": 2, "force_task_id": "third" }));
    wait_until("the third to wait", 30.0, || server.queue.waiting().len() == 2);

    let (_, p) = call("POST", &format!("{base}/internal/progress"), Some(&json!({ "id_task": "third", "id_live_preview": -1 })));
    assert_eq!((p["queued"].as_bool(), p["queue_position"].as_u64()), (Some(true), Some(2)), "{p}");
    let (_, p) = call("POST", &format!("{base}/internal/progress"), Some(&json!({ "id_task": "long", "id_live_preview": -1 })));
    assert_eq!(p["active"], true, "{p}");
    let (_, g) = call("GET", &format!("{base}/sdapi/v1/progress"), None);
    assert_eq!((g["state"]["job_count"].as_u64(), g["current_task"].as_str()), (Some(3), Some("long")), "{g}");
    assert_eq!(g["queue"][0]["task_id"], "second");
    // A preview arrives while it runs (the projection is fitted on the first run).
    wait_until("a step preview", 60.0, || call("GET", &format!("{base}/sdapi/v1/progress"), None).1["current_image"].is_string());

    // Cancel the second while it waits: its client gets 409 at once, and the third moves up.
    let (s, _) = call("POST", &format!("{base}/dcae/v1/queue/second/cancel"), None);
    assert_eq!(s, 200);
    let (s, v) = second.join().unwrap();
    assert_eq!((s, v["error"].as_str()), (409, Some("cancelled")), "{v}");
    let (_, p) = call("POST", &format!("{base}/internal/progress"), Some(&json!({ "id_task": "third" })));
    assert_eq!(p["queue_position"].as_u64(), Some(1), "{p}");

    // Skip drops the image being made; interrupt ends the request with what it finished.
    wait_until("the first image of the long request", 60.0, || server.queue.running().is_some_and(|r| r.job_no >= 1 && r.step > 0));
    let skipped = server.queue.running().map_or(0, |r| r.job_no);
    call("POST", &format!("{base}/sdapi/v1/skip"), None);
    wait_until("the skip to take", 30.0, || server.queue.running().is_some_and(|r| r.job_no > skipped));
    call("POST", &format!("{base}/sdapi/v1/interrupt"), None);
    let (s, r) = long.join().unwrap();
    assert_eq!(s, 200, "{r}");
    let info = info_of(&r);
    assert_eq!(info["interrupted"], true);
    let made = r["images"].as_array().unwrap().len();
    assert!(made >= 16 && made < 256 && made % 16 == 0, "{made} images");
    assert!(info["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("skipped")), "{info}");
    // The third runs once the long one ended.
    let (s, r) = third.join().unwrap();
    assert_eq!(s, 200, "{r}");
    let (_, p) = call("POST", &format!("{base}/internal/progress"), Some(&json!({ "id_task": "third" })));
    assert_eq!(p["completed"], true);
    let c = server.queue.counts();
    assert_eq!((c.accepted, c.finished, c.cancelled, c.failed), (4, 3, 1, 0), "startup load, long, third finished; second cancelled");
}

/// 200 requests from 8 concurrent clients, a quarter cancelled while they wait or run and a
/// fifth malformed: every accepted request ends finished or cancelled, none is lost, and the
/// server still answers.
#[test]
fn serve_load_test_loses_no_request() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, base) = start(tmp.path());
    let base = Arc::new(base);
    let (ok, cancelled, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (base, ok, cancelled, refused) = (base.clone(), ok.clone(), cancelled.clone(), refused.clone());
            std::thread::spawn(move || {
                for i in 0..25 {
                    let n = c * 25 + i;
                    let url = format!("{base}/sdapi/v1/txt2img");
                    let body = if n % 5 == 0 {
                        json!({ "prompt": "tench", "steps": "two" })
                    } else {
                        let prompt = ["tench", "goldfish", "0", "great white shark"][n % 4];
                        json!({ "prompt": prompt, "steps": 2, "seed": n, "force_task_id": format!("load-{n}") })
                    };
                    let canceller = (n % 4 == 1).then(|| {
                        let base = base.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis((n % 7) as u64 * 3));
                            call("POST", &format!("{base}/dcae/v1/queue/load-{n}/cancel"), None)
                        })
                    });
                    let (s, v) = call("POST", &url, Some(&body));
                    match s {
                        200 => {
                            assert_eq!(v["images"].as_array().map(Vec::len), Some(1), "{v}");
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        409 => {
                            cancelled.fetch_add(1, Ordering::SeqCst);
                        }
                        422 => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => panic!("request {n}: {s} {v}"),
                    }
                    if let Some(h) = canceller {
                        // 200 when it caught the request, 404 when it had already finished.
                        let (s, _) = h.join().unwrap();
                        assert!(s == 200 || s == 404, "cancel answered {s}");
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client thread failed");
    }
    let (ok, cancelled, refused) = (ok.load(Ordering::SeqCst), cancelled.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
    assert_eq!(ok + cancelled + refused, 200);
    assert_eq!(refused, 40);
    let c = server.queue.counts();
    // The startup load is the one accepted task no client sent.
    assert_eq!(c.accepted as usize, 160 + 1);
    assert_eq!((c.finished as usize, c.cancelled as usize, c.failed), (ok + 1, cancelled, 0), "{c:?}");
    assert!(server.queue.is_empty());
    eprintln!("load test: {ok} finished, {cancelled} cancelled, {refused} refused as malformed");
    let (s, _) = call("GET", &format!("{base}/sdapi/v1/progress"), None);
    assert_eq!(s, 200);
}

/// The Python interpreter with `webuiapi`: DCAE_TEST_PYTHON, else the virtual environment
/// scripts/setup-test-python.sh makes (run here when it is missing: pip reaches only PyPI).
fn webuiapi_python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("DCAE_TEST_PYTHON") {
        return p.into();
    }
    let python = std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/dcae-studio/pyenv-api/bin/python");
    let ready = || std::process::Command::new(&python).args(["-c", "import webuiapi"]).status().is_ok_and(|s| s.success());
    if !ready() {
        let setup = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-test-python.sh");
        let out = std::process::Command::new("bash").arg(&setup).output().expect("bash runs");
        assert!(ready(), "no Python with webuiapi, and {} could not make one:\n{}{}", setup.display(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    python
}

/// The A1111 client most scripts use, from the package registry, drives the server: models,
/// txt2img with a SANA pipeline and with a class model, img2img, progress while a run goes,
/// interrupt.
#[test]
fn serve_speaks_to_the_webuiapi_client() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, base) = start(tmp.path());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/webuiapi_session.py");
    let out = std::process::Command::new(webuiapi_python()).arg(&script).arg(server.addr().port().to_string()).output().expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "the webuiapi session failed:\n{text}");
    assert!(text.contains("webuiapi session passed"), "{text}");
    drop(base);
}
