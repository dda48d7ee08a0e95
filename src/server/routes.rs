//! The endpoints: A1111's `/sdapi/v1/…` subset with its JSON field names and meanings, A1111's
//! `/internal/progress` (a task's queue position), and the native `/dcae/v1/…` ones (the
//! queue, reconstruction). Every handler returns a [`Response`]; a bad request is a 4xx with
//! `{"error", "detail"}`, never a panic (and a panic all the same is a 500, see [`Routes::handle`]).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use image::RgbImage;
use serde_json::{json, Map, Value};

use super::queue::{ApiError, GenerateSpec, Made, Queue, Reply, ReconstructSpec, Where, Work};
use super::{MAX_BODY_BYTES, ServeConfig};
use crate::engine::catalog::{Catalog, ModelKind};
use crate::engine::worker::api::{self, hub::HubOptions, ImageParams};
use crate::engine::worker::InitImage;

/// Images one request may ask for (prompts × n_iter × batch_size).
pub const MAX_IMAGES_PER_REQUEST: usize = 256;
pub const MAX_BATCH: usize = 16;

/// An answer: status, content type, body.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub extra: Vec<(&'static str, String)>,
}

fn json_response(status: u16, v: &Value) -> Response {
    Response { status, content_type: "application/json", body: serde_json::to_vec(v).unwrap_or_default(), extra: Vec::new() }
}

fn ok(v: Value) -> Response {
    json_response(200, &v)
}

pub fn error_response(e: &ApiError) -> Response {
    json_response(e.status, &json!({ "error": e.error, "detail": e.detail }))
}

pub fn respond(request: tiny_http::Request, r: Response) {
    let mut resp = tiny_http::Response::from_data(r.body).with_status_code(r.status);
    let headers = std::iter::once(("Content-Type", r.content_type.to_string())).chain(r.extra);
    for (k, v) in headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            resp.add_header(h);
        }
    }
    // The client may have gone away; nothing to do then.
    let _ = request.respond(resp);
}

pub struct Routes {
    pub queue: Arc<Queue>,
    pub auth: Option<(String, String)>,
    pub hub: HubOptions,
    pub model_dirs: Vec<PathBuf>,
}

impl Routes {
    /// For tests that drive the routes without a socket.
    pub fn new(queue: Arc<Queue>, config: &ServeConfig) -> Self {
        Self { queue, auth: config.auth.clone(), hub: config.hub.clone(), model_dirs: config.model_dirs.clone() }
    }

    /// Answers one request. A panic in a handler is caught here and answered with a 500, so one
    /// bad request cannot take the server down or leave its client without an answer.
    pub fn handle(&self, mut request: tiny_http::Request) {
        let method = request.method().as_str().to_ascii_uppercase();
        let url = request.url().to_string();
        let authorization = request.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str().to_string());
        let declared = request.body_length();
        let body = if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
            Err(too_large())
        } else {
            let mut buf = Vec::new();
            match request.as_reader().take(MAX_BODY_BYTES as u64 + 1).read_to_end(&mut buf) {
                Ok(_) if buf.len() > MAX_BODY_BYTES => Err(too_large()),
                Ok(_) => Ok(buf),
                Err(e) => Err(ApiError::new(400, "bad_body", format!("the request body could not be read: {e}"))),
            }
        };
        let response = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.route(&method, &url, authorization.as_deref(), body))) {
            Ok(r) => r,
            Err(p) => {
                let why = crate::engine::worker::panic_message(p.as_ref());
                eprintln!("serve: {method} {url} panicked: {why}");
                error_response(&ApiError::new(500, "internal", format!("the server hit a bug handling this request ({why}); it goes on serving others")))
            }
        };
        respond(request, response);
    }

    /// The response to `method url` with `body`, after the auth check.
    pub fn route(&self, method: &str, url: &str, authorization: Option<&str>, body: Result<Vec<u8>, ApiError>) -> Response {
        if let Some(resp) = self.check_auth(authorization) {
            return resp;
        }
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let path = path.trim_end_matches('/');
        let result = match (method, path) {
            ("GET", "/sdapi/v1/sd-models") => Ok(self.sd_models()),
            ("POST", "/sdapi/v1/refresh-checkpoints") => self.refresh(),
            ("GET", "/sdapi/v1/samplers") => Ok(self.samplers()),
            ("GET", "/sdapi/v1/schedulers") => Ok(ok(json!([{ "name": "automatic", "label": "Automatic", "aliases": [], "default_rho": -1, "need_inner_model": false }]))),
            ("GET", "/sdapi/v1/sd-vae" | "/sdapi/v1/loras" | "/sdapi/v1/upscalers" | "/sdapi/v1/hypernetworks" | "/sdapi/v1/prompt-styles") => Ok(ok(json!([]))),
            // Clients probe for extensions (webuiapi at construction): none here.
            ("GET", "/sdapi/v1/scripts") => Ok(ok(json!({ "txt2img": [], "img2img": [] }))),
            ("GET", "/sdapi/v1/options") => Ok(self.options()),
            ("POST", "/sdapi/v1/options") => body.and_then(|b| self.set_options(&parse_json(&b)?)),
            ("GET", "/sdapi/v1/progress") => Ok(self.progress(!query.split('&').any(|kv| kv.eq_ignore_ascii_case("skip_current_image=true")))),
            ("POST", "/sdapi/v1/txt2img") => body.and_then(|b| self.generate(&parse_json(&b)?, false)),
            ("POST", "/sdapi/v1/img2img") => body.and_then(|b| self.generate(&parse_json(&b)?, true)),
            ("POST", "/sdapi/v1/interrupt") => {
                self.queue.interrupt();
                Ok(ok(Value::Null))
            }
            ("POST", "/sdapi/v1/skip") => {
                self.queue.skip();
                Ok(ok(Value::Null))
            }
            ("POST", "/sdapi/v1/png-info") => body.and_then(|b| png_info(&parse_json(&b)?)),
            ("POST", "/internal/progress") => body.and_then(|b| self.task_progress(&parse_json(&b)?)),
            ("GET", "/dcae/v1/queue") => Ok(self.queue_view()),
            ("GET", "/dcae/v1/autoencoders") => Ok(self.autoencoders()),
            ("POST", "/dcae/v1/reconstruct") => body.and_then(|b| self.reconstruct(&parse_json(&b)?)),
            ("GET", "/openapi.json") => Ok(Response { status: 200, content_type: "application/json", body: OPENAPI.as_bytes().to_vec(), extra: Vec::new() }),
            ("GET", "/docs" | "") => Ok(Response { status: 200, content_type: "text/html; charset=utf-8", body: docs_page().into_bytes(), extra: Vec::new() }),
            (m, p) => match cancel_path(p) {
                Some(id) if m == "POST" || m == "DELETE" => {
                    if self.queue.cancel(&id) {
                        Ok(ok(json!({ "cancelled": id })))
                    } else {
                        Err(ApiError::new(404, "not_found", format!("no waiting or running task {id:?}: it may have finished")))
                    }
                }
                _ if KNOWN.contains(&p) => Err(ApiError::new(405, "method_not_allowed", format!("{m} is not accepted on {p}; see /docs"))),
                _ => Err(ApiError::new(404, "not_found", format!("no endpoint {m} {p}; /docs lists them"))),
            },
        };
        result.unwrap_or_else(|e| error_response(&e))
    }

    fn check_auth(&self, authorization: Option<&str>) -> Option<Response> {
        let (user, password) = self.auth.as_ref()?;
        let given = authorization
            .and_then(|a| a.strip_prefix("Basic ").or_else(|| a.strip_prefix("basic ")))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let expected = format!("{user}:{password}");
        if given.as_deref().is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
            return None;
        }
        let mut r = error_response(&ApiError::new(401, "unauthorized", "this server needs HTTP basic auth: the user and password given with --api-auth"));
        r.extra.push(("WWW-Authenticate", "Basic realm=\"DC-AE Studio\"".into()));
        Some(r)
    }

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.queue.catalog.read().unwrap_or_else(|p| p.into_inner())
    }

    fn sd_models(&self) -> Response {
        let catalog = self.catalog();
        let list: Vec<Value> = catalog
            .generators()
            .filter(|e| e.available())
            .map(|e| {
                let filename = e.pipeline.clone().or_else(|| e.files.as_ref().map(|f| f.weights.clone())).map(|p| p.display().to_string());
                json!({
                    "title": e.label, "model_name": e.label, "hash": null, "sha256": null,
                    "filename": filename, "config": null,
                    "type": if e.kind == ModelKind::TextToImage { "text-to-image" } else { "class-to-image" },
                    "about": e.about,
                })
            })
            .collect();
        ok(Value::Array(list))
    }

    fn refresh(&self) -> Result<Response, ApiError> {
        let catalog = Catalog::scan(&self.model_dirs, &self.hub);
        *self.queue.catalog.write().unwrap_or_else(|p| p.into_inner()) = catalog;
        Ok(ok(Value::Null))
    }

    fn samplers(&self) -> Response {
        let mut list = vec![
            json!({ "name": "DPM++ 2M", "aliases": ["flow_dpm"], "options": { "models": "SANA (its default)" } }),
            json!({ "name": "Euler", "aliases": ["flow_euler"], "options": { "models": "SANA" } }),
            json!({ "name": "SCM", "aliases": ["trigflow"], "options": { "models": "SANA-Sprint (its only one)" } }),
        ];
        list.push(json!({ "name": "Automatic", "aliases": ["default"], "options": { "models": "every model: its own default" } }));
        ok(Value::Array(list))
    }

    fn options(&self) -> Response {
        let o = self.queue.options();
        ok(json!({
            "sd_model_checkpoint": o.sd_model_checkpoint,
            "sd_checkpoint_hash": null,
            "live_previews_enable": o.live_previews_enable,
            "samples_format": "png",
            "loaded_model": self.queue.loaded(),
        }))
    }

    /// `sd_model_checkpoint` switches the model (queued like a generation, answered once it is
    /// loaded); `live_previews_enable` turns the step previews on or off. Other A1111 options
    /// have no meaning here and are ignored, as clients send many.
    fn set_options(&self, v: &Value) -> Result<Response, ApiError> {
        let obj = v.as_object().ok_or_else(|| ApiError::invalid("the options must be a JSON object"))?;
        if let Some(on) = obj.get("live_previews_enable") {
            self.queue.set_live_previews(on.as_bool().ok_or_else(|| ApiError::invalid("live_previews_enable must be true or false"))?);
        }
        if let Some(m) = obj.get("sd_model_checkpoint") {
            let name = m.as_str().ok_or_else(|| ApiError::invalid("sd_model_checkpoint must be a model's title (GET /sdapi/v1/sd-models)"))?;
            let name = strip_hash(name);
            self.known_generator(name)?;
            let (_, rx) = self.queue.submit(Work::SetModel(name.to_string()), None)?;
            wait_reply(rx)?;
        }
        Ok(ok(Value::Null))
    }

    /// A model name the catalog knows (so a request with a typo fails at once, not in turn).
    fn known_generator(&self, name: &str) -> Result<(), ApiError> {
        let catalog = self.catalog();
        let found = catalog.generators().find(|e| e.label == name || e.key == name).map(|e| (e.available(), e.key.clone()));
        match found {
            Some((true, _)) => Ok(()),
            Some((false, key)) => Err(ApiError::new(404, "not_downloaded", format!("{name} is not on this computer yet: `dcae download {key}` fetches it"))),
            None => Err(ApiError::new(404, "not_found", format!("no generation model {name:?}: GET /sdapi/v1/sd-models lists them"))),
        }
    }

    fn progress(&self, with_image: bool) -> Response {
        let running = self.queue.running();
        let count = self.queue.len();
        let Some(r) = running else {
            return ok(json!({
                "progress": 0.0, "eta_relative": 0.0,
                "state": { "skipped": false, "interrupted": false, "job": "", "job_count": count, "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0 },
                "current_image": null, "textinfo": null, "current_task": null, "queue": self.waiting_json(),
            }));
        };
        let image = if with_image { r.preview.as_deref().and_then(|img| png_base64(img, None).ok()) } else { None };
        ok(json!({
            "progress": r.progress(), "eta_relative": r.eta(),
            "state": {
                "skipped": r.skipped, "interrupted": r.interrupted, "job": r.kind, "job_count": count,
                "job_timestamp": "0", "job_no": r.job_no, "sampling_step": r.step, "sampling_steps": r.steps,
            },
            "current_image": image, "textinfo": r.textinfo, "current_task": r.id, "queue": self.waiting_json(),
        }))
    }

    fn waiting_json(&self) -> Value {
        Value::Array(self.queue.waiting().into_iter().enumerate().map(|(i, (id, kind, secs))| json!({ "task_id": id, "position": i + 1, "kind": kind, "waiting_s": secs })).collect())
    }

    fn queue_view(&self) -> Response {
        let c = self.queue.counts();
        ok(json!({
            "running": self.queue.running().map(|r| json!({ "task_id": r.id, "kind": r.kind, "progress": r.progress(), "eta_relative": r.eta() })),
            "waiting": self.waiting_json(),
            "counts": { "accepted": c.accepted, "finished": c.finished, "cancelled": c.cancelled, "failed": c.failed },
        }))
    }

    /// A1111's `/internal/progress`: one task by `id_task`, with its queue position.
    fn task_progress(&self, v: &Value) -> Result<Response, ApiError> {
        let id = v.get("id_task").and_then(Value::as_str).ok_or_else(|| ApiError::invalid("id_task (the force_task_id of the request) is missing"))?;
        let last_preview = v.get("id_live_preview").and_then(Value::as_i64).unwrap_or(-1);
        Ok(ok(match self.queue.locate(id) {
            Where::Waiting { position } => json!({ "active": false, "queued": true, "completed": false, "progress": null, "eta": null, "live_preview": null, "id_live_preview": last_preview, "textinfo": format!("In queue: position {position}"), "queue_position": position }),
            Where::Running => {
                let r = self.queue.running();
                let (progress, eta, textinfo) = r.as_ref().map_or((0.0, 0.0, String::new()), |r| (r.progress(), r.eta(), r.textinfo.clone()));
                let (preview, preview_id) = match &r {
                    Some(r) if r.preview_id as i64 != last_preview => (r.preview.as_deref().and_then(|img| png_base64(img, None).ok()).map(|b| format!("data:image/png;base64,{b}")), r.preview_id as i64),
                    _ => (None, last_preview),
                };
                json!({ "active": true, "queued": false, "completed": false, "progress": progress, "eta": eta, "live_preview": preview, "id_live_preview": preview_id, "textinfo": textinfo, "queue_position": 0 })
            }
            Where::Finished => json!({ "active": false, "queued": false, "completed": true, "progress": 1.0, "eta": null, "live_preview": null, "id_live_preview": last_preview, "textinfo": "Finished", "queue_position": null }),
            Where::Unknown => json!({ "active": false, "queued": false, "completed": false, "progress": null, "eta": null, "live_preview": null, "id_live_preview": last_preview, "textinfo": "Unknown task", "queue_position": null }),
        }))
    }

    fn generate(&self, v: &Value, img2img: bool) -> Result<Response, ApiError> {
        let obj = v.as_object().ok_or_else(|| ApiError::invalid("the request must be a JSON object"))?;
        let spec = generate_spec(obj, img2img)?;
        if let Some(m) = &spec.model {
            self.known_generator(m)?;
        }
        let task_id = match obj.get("force_task_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => Some(s.clone()),
            Some(_) => return Err(ApiError::invalid("force_task_id must be a string of 1 to 128 characters")),
        };
        let send_images = obj.get("send_images").and_then(Value::as_bool).unwrap_or(true);
        let (id, rx) = self.queue.submit(Work::Generate(spec.clone()), task_id)?;
        let reply = wait_reply(rx)?;
        let Reply::Images { images, model, sampler, steps, cfg_scale, interrupted, notes, seconds } = reply else {
            return Err(ApiError::new(500, "internal", "a generation ended without images"));
        };
        let mut encoded = Vec::new();
        if send_images {
            for m in &images {
                encoded.push(Value::String(png_base64(&m.image, Some(&m.params)).map_err(|e| ApiError::new(500, "encode", e))?));
            }
        }
        let mut parameters = obj.clone();
        // The request's own images are not echoed back (megabytes the client already has).
        if parameters.contains_key("init_images") {
            parameters.insert("init_images".into(), Value::Null);
        }
        let info = info_json(&images, &spec, &model, &sampler, steps, cfg_scale, interrupted, &notes, seconds, &id);
        Ok(ok(json!({ "images": encoded, "parameters": Value::Object(parameters), "info": info.to_string() })))
    }

    fn autoencoders(&self) -> Response {
        let catalog = self.catalog();
        let list: Vec<Value> = catalog
            .entries
            .iter()
            .filter(|e| e.files.is_some() && matches!(e.kind, ModelKind::Autoencoder | ModelKind::TextToImage))
            .map(|e| json!({ "name": e.label, "key": e.key, "latent": e.tag(), "about": e.about }))
            .collect();
        ok(Value::Array(list))
    }

    /// `{"image": base64, "models": [names], "size": 512?}` → each model's reconstruction with
    /// PSNR / SSIM and its latent shape.
    fn reconstruct(&self, v: &Value) -> Result<Response, ApiError> {
        let image = decode_image(v.get("image").ok_or_else(|| ApiError::invalid("image (base64 PNG/JPEG/WebP) is missing"))?, "image")?;
        let models: Vec<String> = match v.get("models").or_else(|| v.get("model")) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) if !a.is_empty() && a.len() <= 8 => a.iter().map(|m| m.as_str().map(str::to_string)).collect::<Option<_>>().ok_or_else(|| ApiError::invalid("models must be names (GET /dcae/v1/autoencoders)"))?,
            _ => return Err(ApiError::invalid("models: one to eight autoencoder names (GET /dcae/v1/autoencoders lists them)")),
        };
        let size = match v.get("size") {
            None | Some(Value::Null) => None,
            Some(s) => Some(s.as_u64().filter(|&s| (32..=4096).contains(&s)).ok_or_else(|| ApiError::invalid("size must be a whole number from 32 to 4096"))? as u32),
        };
        let (_, rx) = self.queue.submit(Work::Reconstruct(ReconstructSpec { image: Arc::new(image), models, size }), None)?;
        let Reply::Reconstructed { original, results, warnings } = wait_reply(rx)? else {
            return Err(ApiError::new(500, "internal", "a reconstruction ended without results"));
        };
        let mut out = Vec::new();
        for r in &results {
            out.push(json!({
                "model": r.model,
                "image": png_base64(&r.recon, None).map_err(|e| ApiError::new(500, "encode", e))?,
                "psnr": r.psnr, "ssim": r.ssim,
                "latent_shape": r.latent_shape, "compression": r.compression,
                "encode_s": r.encode_secs, "decode_s": r.decode_secs,
            }));
        }
        Ok(ok(json!({ "width": original.width(), "height": original.height(), "results": out, "warnings": warnings })))
    }
}

fn too_large() -> ApiError {
    ApiError::new(413, "too_large", format!("the request body is over {} MiB; send smaller images", MAX_BODY_BYTES >> 20))
}

/// Every path served, for telling a wrong method from a wrong path.
const KNOWN: &[&str] = &[
    "/sdapi/v1/sd-models", "/sdapi/v1/refresh-checkpoints", "/sdapi/v1/samplers", "/sdapi/v1/schedulers", "/sdapi/v1/options", "/sdapi/v1/progress",
    "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/png-info", "/internal/progress",
    "/dcae/v1/queue", "/dcae/v1/autoencoders", "/dcae/v1/reconstruct", "/openapi.json", "/docs",
];

/// `/dcae/v1/queue/<id>/cancel` or `/dcae/v1/queue/<id>` → the id (percent-decoded).
fn cancel_path(p: &str) -> Option<String> {
    let rest = p.strip_prefix("/dcae/v1/queue/")?;
    let id = rest.strip_suffix("/cancel").unwrap_or(rest);
    (!id.is_empty() && !id.contains('/')).then(|| percent_decode(id))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A1111 titles carry a hash in brackets ("name [abc123]"); ours have none.
fn strip_hash(name: &str) -> &str {
    match name.rfind(" [") {
        Some(i) if name.ends_with(']') => &name[..i],
        _ => name,
    }
}

fn wait_reply(rx: std::sync::mpsc::Receiver<Result<Reply, ApiError>>) -> Result<Reply, ApiError> {
    rx.recv().unwrap_or_else(|_| Err(ApiError::new(500, "internal", "the queue stopped before the request ended")))
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, "invalid_json", format!("the body is not valid JSON: {e}")))
}

fn int_field(obj: &Map<String, Value>, key: &str, default: i64, range: std::ops::RangeInclusive<i64>) -> Result<i64, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => {
            let n = v.as_i64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64));
            n.filter(|n| range.contains(n)).ok_or_else(|| ApiError::invalid(format!("{key} must be a whole number from {} to {}, not {v}", range.start(), range.end())))
        }
    }
}

fn str_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::invalid(format!("{key} must be a string, not {v}"))),
    }
}

/// A txt2img / img2img body in A1111's field names.
pub fn generate_spec(obj: &Map<String, Value>, img2img: bool) -> Result<GenerateSpec, ApiError> {
    let prompts: Vec<String> = match obj.get("prompt") {
        None | Some(Value::Null) => vec![String::new()],
        Some(Value::String(s)) => vec![s.clone()],
        // A batch of prompts in one request (an extension of A1111's field).
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= 64 => a.iter().map(|p| p.as_str().map(str::to_string)).collect::<Option<_>>().ok_or_else(|| ApiError::invalid("prompt must be a string or a list of 1 to 64 strings"))?,
        Some(_) => return Err(ApiError::invalid("prompt must be a string or a list of 1 to 64 strings")),
    };
    let batch_size = int_field(obj, "batch_size", 1, 1..=MAX_BATCH as i64)? as usize;
    let n_iter = int_field(obj, "n_iter", 1, 1..=100)? as usize;
    let images = prompts.len() * batch_size * n_iter;
    if images > MAX_IMAGES_PER_REQUEST {
        return Err(ApiError::invalid(format!("{images} images in one request (prompts × n_iter × batch_size) is over {MAX_IMAGES_PER_REQUEST}; split it")));
    }
    let steps = match obj.get("steps") {
        None | Some(Value::Null) => None,
        Some(_) => Some(int_field(obj, "steps", 0, 1..=1000)? as usize),
    };
    let cfg_scale = match obj.get("cfg_scale") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().filter(|f| f.is_finite() && (0.0..=50.0).contains(f)).ok_or_else(|| ApiError::invalid(format!("cfg_scale must be a number from 0 to 50, not {v}")))? as f32),
    };
    let seed = match int_field(obj, "seed", -1, -1..=i64::MAX)? {
        -1 => None,
        s => Some(s as u64),
    };
    let sampler_name = str_field(obj, "sampler_name")?.or(str_field(obj, "sampler_index")?);
    let width = int_field(obj, "width", 512, 1..=8192)? as usize;
    let height = int_field(obj, "height", 512, 1..=8192)? as usize;
    let model = match obj.get("override_settings") {
        Some(Value::Object(o)) => match o.get("sd_model_checkpoint") {
            Some(Value::String(s)) => Some(strip_hash(s).to_string()),
            None | Some(Value::Null) => None,
            Some(_) => return Err(ApiError::invalid("override_settings.sd_model_checkpoint must be a model title")),
        },
        None | Some(Value::Null) => None,
        Some(_) => return Err(ApiError::invalid("override_settings must be an object")),
    };
    let init = if img2img {
        let first = match obj.get("init_images") {
            Some(Value::Array(a)) if !a.is_empty() => &a[0],
            _ => return Err(ApiError::invalid("init_images: a list with the source picture (base64 PNG/JPEG/WebP) is required for img2img")),
        };
        let image = decode_image(first, "init_images[0]")?;
        let strength = match obj.get("denoising_strength") {
            None | Some(Value::Null) => 0.75,
            Some(v) => v.as_f64().filter(|s| *s > 0.0 && *s <= 1.0).ok_or_else(|| ApiError::invalid(format!("denoising_strength must be in (0, 1], not {v}")))? as f32,
        };
        Some(InitImage { image: Arc::new(image), strength })
    } else {
        None
    };
    Ok(GenerateSpec {
        model,
        prompts,
        negative_prompt: str_field(obj, "negative_prompt")?.unwrap_or_default(),
        steps,
        cfg_scale,
        seed,
        sampler_name,
        batch_size,
        n_iter,
        width,
        height,
        init,
    })
}

/// A base64 picture (with or without a `data:` prefix), decoded within the app's image limits.
fn decode_image(v: &Value, what: &str) -> Result<RgbImage, ApiError> {
    let s = v.as_str().ok_or_else(|| ApiError::invalid(format!("{what} must be a base64 string")))?;
    let s = s.split_once("base64,").map_or(s, |(_, b)| b);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| ApiError::invalid(format!("{what} is not valid base64: {e}")))?;
    api::load_image_bytes(&bytes).map_err(|e| ApiError::invalid(format!("{what}: {e}")))
}

/// A PNG as base64, with the parameters chunk when given.
pub fn png_base64(img: &RgbImage, params: Option<&ImageParams>) -> Result<String, String> {
    let text = params.map(ImageParams::to_parameters_text);
    let mut entries = vec![("Software", "DC-AE Studio")];
    if let Some(t) = &text {
        entries.insert(0, (crate::imaging::PARAMETERS_KEY, t.as_str()));
    }
    let bytes = crate::imaging::encode_png_with_text(img, &entries).map_err(|e| e.to_string())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[allow(clippy::too_many_arguments)]
fn info_json(images: &[Made], spec: &GenerateSpec, model: &str, sampler: &str, steps: usize, cfg_scale: f32, interrupted: bool, notes: &[String], seconds: f64, task: &str) -> Value {
    let prompts: Vec<&str> = images.iter().map(|m| m.prompt.as_str()).collect();
    let seeds: Vec<u64> = images.iter().map(|m| m.seed).collect();
    let (width, height) = images.first().map_or((spec.width as u32, spec.height as u32), |m| m.image.dimensions());
    json!({
        "prompt": prompts.first().copied().unwrap_or_else(|| spec.prompts.first().map_or("", String::as_str)),
        "all_prompts": prompts,
        "negative_prompt": spec.negative_prompt,
        "all_negative_prompts": vec![spec.negative_prompt.as_str(); images.len()],
        "seed": seeds.first(),
        "all_seeds": seeds,
        "subseed": -1, "all_subseeds": vec![-1; images.len()], "subseed_strength": 0,
        "width": width, "height": height,
        "sampler_name": sampler, "cfg_scale": cfg_scale, "steps": steps,
        "batch_size": spec.batch_size, "n_iter": spec.n_iter,
        "denoising_strength": spec.init.as_ref().map(|i| i.strength),
        "sd_model_name": model, "sd_model_hash": null,
        "infotexts": images.iter().map(|m| m.params.to_parameters_text()).collect::<Vec<_>>(),
        "interrupted": interrupted,
        "notes": notes,
        "seconds": seconds,
        "task_id": task,
    })
}

/// `{"image": base64}` → the `parameters` text of a PNG and its fields.
fn png_info(v: &Value) -> Result<Response, ApiError> {
    let s = v.get("image").and_then(Value::as_str).ok_or_else(|| ApiError::invalid("image (a base64 PNG) is missing"))?;
    let s = s.split_once("base64,").map_or(s, |(_, b)| b);
    let bytes = base64::engine::general_purpose::STANDARD.decode(s.trim()).map_err(|e| ApiError::invalid(format!("image is not valid base64: {e}")))?;
    let entries = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        crate::imaging::read_png_text_from_bytes(&bytes).map_err(|e| ApiError::invalid(format!("the PNG cannot be read: {e}")))?
    } else {
        Vec::new()
    };
    let items: Map<String, Value> = entries.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let text = entries.iter().find(|(k, _)| k == crate::imaging::PARAMETERS_KEY).map(|(_, t)| t.clone()).unwrap_or_default();
    let parameters = if text.is_empty() { Value::Object(Map::new()) } else { params_fields(&text) };
    Ok(ok(json!({ "info": text, "items": items, "parameters": parameters })))
}

/// The fields of a `parameters` text as A1111's png-info gives them (Prompt, Negative prompt,
/// Steps, …), from our own parser so what is read is what the app would restore.
fn params_fields(text: &str) -> Value {
    let Ok(p) = ImageParams::parse_parameters_text(text) else { return json!({ "error": "the parameters text could not be read" }) };
    match p {
        ImageParams::Text(t) => json!({
            "Prompt": t.prompts.first(), "Negative prompt": t.negative_prompt, "Steps": t.steps, "Sampler": t.sampler,
            "CFG scale": t.guidance, "Seed": t.seed, "Size-1": t.width, "Size-2": t.height, "Model": t.model,
            "Batch": t.prompts.len(), "Denoising strength": t.img2img.as_ref().map(|i| i.strength),
        }),
        ImageParams::Class(c) => json!({
            "Prompt": c.classes.iter().map(|&id| api::class_name(id as usize).unwrap_or_else(|| "unconditional".into())).collect::<Vec<_>>().join(", "),
            "Class": c.classes, "Steps": c.steps, "Sampler": c.sampler, "CFG scale": c.guidance, "Seed": c.seed, "Model": c.model,
            "Batch": c.batch, "Denoising strength": c.img2img.as_ref().map(|i| i.strength),
        }),
    }
}

const OPENAPI: &str = include_str!("openapi.json");

fn docs_page() -> String {
    let mut rows = String::new();
    if let Ok(v) = serde_json::from_str::<Value>(OPENAPI) {
        if let Some(paths) = v.get("paths").and_then(Value::as_object) {
            for (path, ops) in paths {
                for (method, op) in ops.as_object().into_iter().flatten() {
                    let summary = op.get("summary").and_then(Value::as_str).unwrap_or("");
                    rows.push_str(&format!("<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>\n", method.to_ascii_uppercase(), html_escape(path), html_escape(summary)));
                }
            }
        }
    }
    format!(
        "<!doctype html><meta charset=utf-8><title>DC-AE Studio API</title>\
         <h1>DC-AE Studio local API</h1><p>The AUTOMATIC1111 web UI's API subset, plus DC-AE reconstruction. \
         The full description: <a href=\"/openapi.json\">/openapi.json</a>.</p>\
         <table border=1 cellpadding=4><tr><th>method</th><th>path</th><th>what</th></tr>\n{rows}</table>"
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_paths_and_hashes() {
        assert_eq!(cancel_path("/dcae/v1/queue/task(3)/cancel").as_deref(), Some("task(3)"));
        assert_eq!(cancel_path("/dcae/v1/queue/a%20b").as_deref(), Some("a b"));
        assert_eq!(cancel_path("/dcae/v1/queue/"), None);
        assert_eq!(strip_hash("Sana [abc]"), "Sana");
        assert_eq!(strip_hash("plain"), "plain");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn a_spec_refuses_bad_fields_with_the_field_named() {
        let spec = |v: Value| generate_spec(v.as_object().unwrap(), false);
        for (body, field) in [
            (json!({ "steps": "many" }), "steps"),
            (json!({ "batch_size": 0 }), "batch_size"),
            (json!({ "batch_size": 17 }), "batch_size"),
            (json!({ "cfg_scale": "NaN" }), "cfg_scale"),
            (json!({ "seed": -2 }), "seed"),
            (json!({ "prompt": 3 }), "prompt"),
            (json!({ "prompt": [] }), "prompt"),
            (json!({ "override_settings": 1 }), "override_settings"),
            (json!({ "n_iter": 100, "batch_size": 16 }), "images in one request"),
        ] {
            let e = spec(body.clone()).err().unwrap_or_else(|| panic!("{body} was accepted"));
            assert_eq!(e.status, 422);
            assert!(e.detail.contains(field), "{body}: {}", e.detail);
        }
        let ok = spec(json!({ "prompt": ["a", "b"], "seed": -1, "steps": 4.0, "override_settings": { "sd_model_checkpoint": "m [x]" } })).unwrap();
        assert_eq!((ok.prompts.len(), ok.seed, ok.steps, ok.model.as_deref()), (2, None, Some(4), Some("m")));
        let e = generate_spec(json!({ "init_images": ["%%%"] }).as_object().unwrap(), true).err().unwrap();
        assert!(e.detail.contains("init_images[0]"), "{}", e.detail);
    }
}
