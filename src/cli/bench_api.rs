//! `dcae bench --task api --model DIR`: what the local API adds to a generation. The same
//! generation (the model in folder DIR, `--steps`, `--batch`, `--res` for a text model, one seed
//! per pair) runs in interleaved pairs: as an engine job in this process, and as
//! `POST /sdapi/v1/txt2img` to a server on 127.0.0.1 with an engine of its own on the same
//! backend (as `dcae serve` runs it: JSON, the queue, PNG encoding with parameters, base64).
//! Printed: both medians and the median of the per-pair differences.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use super::bench::BenchArgs;
use crate::engine::catalog::Catalog;
use crate::engine::worker::api::GeneratorInfo;
use crate::engine::worker::{cancel_token, Conditioning, GenerateJob, Job, JobEnd, JobId, Worker, WorkerConfig};
use crate::model::sana::adapter::TextRequest;
use crate::server::{ServeConfig, Server};
use crate::weights::hub::HubOptions;

fn wait_end(worker: &Worker, id: JobId) -> anyhow::Result<JobEnd> {
    let t = Instant::now();
    loop {
        if let Some(crate::engine::worker::Event::Ended { job, end }) = worker.recv_timeout(Duration::from_secs(1)) {
            if job == id {
                return Ok(end);
            }
        }
        if t.elapsed() > Duration::from_secs(3600) {
            bail!("job {id} did not end within an hour");
        }
    }
}

pub fn run(a: &BenchArgs) -> anyhow::Result<()> {
    let dir = PathBuf::from(&a.model);
    let (Some(parent), Some(label)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str())) else {
        bail!("--model for --task api is a model folder (e.g. tests/fixtures/uvit-tiny), not {}", a.model);
    };
    let parent = if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() };
    let hub = HubOptions::from_env().with_offline(true);
    let catalog = Catalog::scan(std::slice::from_ref(&parent), &hub);
    let entry = catalog.generators().find(|e| e.label == label).ok_or_else(|| anyhow!("{} holds no generation model", dir.display()))?;
    let source = entry.generator_source().ok_or_else(|| anyhow!("{} is not complete", dir.display()))?;
    let worker_config = WorkerConfig { backend: a.backend, text_encoder: a.text_encoder_device, autoencoder: a.vae_device, cache_dir: None, ..WorkerConfig::default() };

    let worker = Worker::spawn(worker_config.clone(), Arc::new(|| {}));
    let id = worker.next_id();
    let mut worker = worker;
    worker.send(Job::LoadGenerator { id, source, cancel: cancel_token() });
    let info: GeneratorInfo = match wait_end(&worker, id)? {
        JobEnd::Loaded { info, .. } => info,
        other => bail!("loading {label} in process: {other:?}"),
    };
    let server = Server::start(ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        auth: None,
        model_dirs: vec![parent],
        model: Some(label.to_string()),
        hub,
        worker: worker_config,
        live_previews: false,
    })
    .map_err(|e| anyhow!(e))?;
    let base = format!("http://{}", server.addr());

    let text = info.controls.takes_prompt();
    // A class model reads the prompt as a class: 207 (golden retriever), or the last class of
    // a model with fewer (the tiny fixtures have 10).
    let class_prompt = 207.min(info.num_classes.saturating_sub(1)).to_string();
    let prompt = if text { "a lighthouse at dusk, oil painting" } else { class_prompt.as_str() };
    let cfg = a.cfg.unwrap_or(info.default_guidance);
    let side = if text { a.res } else { info.image_size() };
    let conditioning = if text {
        Conditioning::Prompt(TextRequest { prompt: prompt.into(), negative_prompt: String::new(), batch: a.batch, width: side, height: side, instruction: true, binning: true })
    } else {
        let class = crate::server::queue::class_of(prompt, info.num_classes).map_err(|e| anyhow!(e.detail))?;
        Conditioning::Classes(vec![class; a.batch])
    };
    let in_process = |worker: &mut Worker, seed: u64| -> anyhow::Result<f64> {
        let t = Instant::now();
        let id = worker.next_id();
        let job = GenerateJob { id, conditioning: conditioning.clone(), init: None, cfg_scale: cfg, steps: a.steps, seed, sampler: None, preview_latents: false, decode_every: 0, cancel: cancel_token() };
        worker.send(Job::Generate(job));
        match wait_end(worker, id)? {
            JobEnd::Generated(_) => Ok(t.elapsed().as_secs_f64()),
            other => bail!("the in-process generation ended {other:?}"),
        }
    };
    let through_api = |seed: u64| -> anyhow::Result<f64> {
        let body = serde_json::json!({ "prompt": prompt, "steps": a.steps, "cfg_scale": cfg, "seed": seed, "batch_size": a.batch, "width": side, "height": side });
        let t = Instant::now();
        let resp = ureq::post(&format!("{base}/sdapi/v1/txt2img")).timeout(Duration::from_secs(3600)).set("Content-Type", "application/json").send_string(&body.to_string());
        let text = match resp {
            Ok(r) => r.into_string().context("reading the answer")?,
            Err(ureq::Error::Status(code, r)) => bail!("the API answered {code}: {}", r.into_string().unwrap_or_default()),
            Err(e) => bail!("the API request failed: {e}"),
        };
        let secs = t.elapsed().as_secs_f64();
        let v: serde_json::Value = serde_json::from_str(&text)?;
        if v["images"].as_array().map(Vec::len) != Some(a.batch) {
            bail!("the API returned {} images, not {}", v["images"].as_array().map_or(0, Vec::len), a.batch);
        }
        Ok(secs)
    };
    // Warm-up: the server loads its model at start; one run each fills the caches.
    in_process(&mut worker, 0)?;
    through_api(0)?;
    let (mut inp, mut api, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..a.runs.max(1) {
        let seed = 1 + i as u64;
        let x = in_process(&mut worker, seed)?;
        let y = through_api(seed)?;
        inp.push(x);
        api.push(y);
        diff.push(y - x);
    }
    let median = |v: &[f64]| super::timing::Timings::from_samples(v.to_vec()).median_s;
    let (mi, ma, md) = (median(&inp), median(&api), median(&diff));
    let line = serde_json::json!({
        "task": "api", "model": label, "backend": a.backend.to_string(), "runs": a.runs.max(1), "batch": a.batch, "steps": a.steps, "res": side,
        "in_process_median_s": mi, "api_median_s": ma, "overhead_median_s": md, "overhead_ratio": ma / mi,
    });
    if a.json {
        println!("{line}");
    } else {
        println!("{label}: in process {mi:.4} s, through the API {ma:.4} s (median of {} pairs); the API adds {:.1} ms per request ({:.3}×)", a.runs.max(1), md * 1e3, ma / mi);
    }
    drop(server);
    Ok(())
}
