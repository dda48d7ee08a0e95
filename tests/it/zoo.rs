//! DiT (ADM) and USiT (SiT ODE) against the original efficientvit code on random-weight tiny
//! fixtures (`tests/python/make_zoo_fixtures.py`): every forward within 1e-4 and every
//! trajectory within 1e-3 of the reference's largest magnitude, with the original's noise
//! injected; the adaptive solver also makes the original's number of network calls. Plus
//! what the engine relies on: cancel between calls, image-to-image, bad requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{Int, Tensor, TensorData};
use dcae::engine::backend::Cpu;
use dcae::model::diffusion::{DiffusionModel, GenerateError, GenerateRequest, StepUpdate};
use safetensors::Dtype;

use super::uvit::{expected_in, tensor4, values, Stored};

fn dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case)
}

fn load(case: &str) -> DiffusionModel<Cpu> {
    let d = dir(case);
    DiffusionModel::<Cpu>::load_files(&d.join("config.json"), &d.join("model.safetensors"), &Default::default()).unwrap_or_else(|e| panic!("loading {case}: {e}"))
}

fn expected(case: &str) -> HashMap<String, Stored> {
    expected_in(&dir(case))
}

/// max |a − b| / max |b|.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    d / b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12)
}

/// `[N, B, C, H, W]` → N tensors `[B, C, H, W]`.
fn split5(s: &Stored) -> Vec<Tensor<Cpu, 4>> {
    let n = s.shape[0];
    let per = s.f32.len() / n;
    let shape: [usize; 4] = s.shape[1..].to_vec().try_into().expect("5-d");
    (0..n).map(|i| Tensor::from_data(TensorData::new(s.f32[i * per..(i + 1) * per].to_vec(), shape), &Default::default())).collect()
}

fn forward_rel(case: &str) -> f32 {
    let model = load(case);
    let exp = expected(case);
    let n = exp["fwd_y"].i64.len();
    let t = Tensor::<Cpu, 1>::from_data(TensorData::new(exp["fwd_t"].f32.clone(), [n]), &Default::default());
    let y = Tensor::<Cpu, 1, Int>::from_data(TensorData::new(exp["fwd_y"].i64.clone(), [n]), &Default::default());
    let out = values(model.denoiser.forward(tensor4(&exp["fwd_x"]), t, y));
    rel(&out, &exp["fwd_out"].f32)
}

/// A request for case prefix `p` with the original's initial noise.
fn request(exp: &HashMap<String, Stored>, p: &str, steps: usize, sampler: &str) -> GenerateRequest<Cpu> {
    let labels = exp[&format!("{p}labels")].i64.iter().map(|&l| l as usize).collect();
    let mut req = GenerateRequest::new(labels, exp[&format!("{p}cfg_scale")].f32[0], steps, 0);
    req.noise = Some(tensor4(&exp[&format!("{p}noise")]));
    req.sampler = Some(sampler.to_string());
    req
}

/// Runs the request, returning the latent, every step's sample, and the guided predictions.
fn run(model: &DiffusionModel<Cpu>, req: &GenerateRequest<Cpu>) -> (Vec<f32>, Vec<Vec<f32>>, usize) {
    let mut xs = Vec::new();
    let out = model.generate(req, &mut |u: StepUpdate<Cpu>| xs.push(values(u.x)), &AtomicBool::new(false)).unwrap();
    (values(out.latent), xs, out.nfe)
}

#[test]
fn dit_forward_matches_the_original_within_1e_4() {
    let r = forward_rel("dit-tiny");
    assert!(r < 1e-4, "DiT forward: {r:e} of the largest value");
}

#[test]
fn dit_adm_trajectories_match_the_original_with_its_step_noise() {
    let model = load("dit-tiny");
    let exp = expected("dit-tiny");
    for p in ["adm250_cfg1p3_", "adm25_cfg4_", "adm10_cfg1_"] {
        let steps = exp[&format!("{p}steps")].i64[0] as usize;
        let mut req = request(&exp, p, steps, "adm");
        req.step_noise = Some(split5(&exp[&format!("{p}step_noise")]));
        let (latent, xs, nfe) = run(&model, &req);
        assert_eq!(nfe, steps, "{p}");
        let want = split5(&exp[&format!("{p}x_steps")]);
        assert_eq!(xs.len(), want.len(), "{p}: steps reported");
        let worst = xs.iter().zip(&want).map(|(x, w)| rel(x, &values(w.clone()))).fold(0.0, f32::max);
        let last = rel(&latent, &exp[&format!("{p}latent")].f32);
        eprintln!("{p}: worst step {worst:.2e}, latent {last:.2e}");
        assert!(worst < 1e-3 && last < 1e-3, "{p}: worst step {worst:e}, latent {last:e}");
    }
}

#[test]
fn dit_ddim_matches_the_original() {
    let model = load("dit-tiny");
    let exp = expected("dit-tiny");
    let p = "ddim25_cfg4_";
    let steps = exp[&format!("{p}steps")].i64[0] as usize;
    let (latent, xs, _) = run(&model, &request(&exp, p, steps, "ddim"));
    let want = split5(&exp[&format!("{p}x_steps")]);
    let worst = xs.iter().zip(&want).map(|(x, w)| rel(x, &values(w.clone()))).fold(0.0, f32::max);
    let last = rel(&latent, &exp[&format!("{p}latent")].f32);
    eprintln!("{p}: worst step {worst:.2e}, latent {last:.2e}");
    assert!(worst < 1e-3 && last < 1e-3, "{p}: worst step {worst:e}, latent {last:e}");
}

#[test]
fn dit_respacing_keeps_the_originals_steps() {
    let exp = expected("dit-tiny");
    for p in ["adm250_cfg1p3_", "adm25_cfg4_", "adm10_cfg1_"] {
        let steps = exp[&format!("{p}steps")].i64[0] as usize;
        let want: Vec<usize> = exp[&format!("{p}timestep_map")].i64.iter().map(|&t| t as usize).collect();
        let sched = dcae::model::dit::AdmSchedule::new(&dcae::model::dit::AdmConfig::default(), steps).unwrap();
        assert_eq!(sched.timestep_map, want, "{p}");
    }
}

#[test]
fn usit_forward_matches_the_original_within_1e_4() {
    let r = forward_rel("usit-tiny");
    assert!(r < 1e-4, "USiT forward: {r:e} of the largest value");
}

#[test]
fn usit_dopri5_matches_the_original_and_its_number_of_calls() {
    let model = load("usit-tiny");
    let exp = expected("usit-tiny");
    for p in ["dopri5_cfg1p5_", "dopri5_cfg1_"] {
        let (latent, _, nfe) = run(&model, &request(&exp, p, 250, "dopri5"));
        let want_nfe = exp[&format!("{p}nfe")].i64[0] as usize;
        let last = rel(&latent, &exp[&format!("{p}latent")].f32);
        eprintln!("{p}: latent {last:.2e}, {nfe} calls (original {want_nfe})");
        assert_eq!(nfe, want_nfe, "{p}: velocity evaluations");
        assert!(last < 1e-3, "{p}: latent {last:e}");
    }
}

#[test]
fn usit_heun2_matches_the_original_at_every_grid_point() {
    let model = load("usit-tiny");
    let exp = expected("usit-tiny");
    for (p, points) in [("heun2_10_cfg1p5_", 10), ("heun2_250_cfg1p2_", 250)] {
        let (latent, xs, nfe) = run(&model, &request(&exp, p, points, "heun2"));
        assert_eq!(nfe, 2 * (points - 1), "{p}");
        // The original's output starts with the noise at t = 0.
        let want = split5(&exp[&format!("{p}x_steps")]);
        assert_eq!(xs.len() + 1, want.len(), "{p}: grid points");
        let worst = xs.iter().zip(&want[1..]).map(|(x, w)| rel(x, &values(w.clone()))).fold(0.0, f32::max);
        let last = rel(&latent, &exp[&format!("{p}latent")].f32);
        eprintln!("{p}: worst step {worst:.2e}, latent {last:.2e}");
        assert!(worst < 1e-3 && last < 1e-3, "{p}: worst step {worst:e}, latent {last:e}");
    }
}

/// Cancel after the second step: the run ends `Cancelled` before the next network call.
#[test]
fn dit_and_usit_cancel_between_network_calls() {
    for (case, sampler, steps) in [("dit-tiny", "adm", 50), ("usit-tiny", "dopri5", 250), ("usit-tiny", "heun2", 50)] {
        let model = load(case);
        let cancel = AtomicBool::new(false);
        let mut req = GenerateRequest::new(vec![1, 2], 1.5, steps, 7);
        req.sampler = Some(sampler.into());
        let mut seen = 0;
        let r = model.generate(&req, &mut |_| {
            seen += 1;
            if seen == 2 {
                cancel.store(true, Ordering::Relaxed);
            }
        }, &cancel);
        assert!(matches!(r, Err(GenerateError::Cancelled)), "{case} {sampler}: {r:?}");
        assert_eq!(seen, 2, "{case} {sampler}: no step after the cancel");
    }
}

/// Image-to-image on each family's own schedule: fewer steps, finite, seeded runs repeat, and
/// strength 1 is a plain generation from the same noise.
#[test]
fn dit_and_usit_image_to_image_runs_part_of_the_schedule() {
    for (case, sampler, steps) in [("dit-tiny", "adm", 20), ("dit-tiny", "ddim", 20), ("usit-tiny", "heun2", 20), ("usit-tiny", "dopri5", 250)] {
        let model = load(case);
        let shape = model.config.latent_shape(1);
        let z = dcae::model::diffusion::seeded_noise::<Cpu>(shape, 99, &Default::default()).mul_scalar(0.5);
        let go = |strength: f32| {
            let mut req = GenerateRequest::new(vec![3], 1.5, steps, 5);
            req.sampler = Some(sampler.into());
            req.init = Some((z.clone(), strength));
            let mut n = 0;
            let out = model.generate(&req, &mut |_| n += 1, &AtomicBool::new(false)).unwrap();
            (values(out.latent), n)
        };
        let (a, n_half) = go(0.5);
        let (b, _) = go(0.5);
        assert_eq!(a, b, "{case} {sampler}: seeded runs repeat");
        assert!(a.iter().all(|v| v.is_finite()), "{case} {sampler}");
        let (_, n_full) = go(1.0);
        // dopri5 picks its own steps: half the interval may take as many as the whole.
        let fewer = if sampler == "dopri5" { n_half <= n_full } else { n_half < n_full };
        assert!(fewer, "{case} {sampler}: {n_half} steps at strength 0.5, {n_full} at 1");
    }
}

#[test]
fn a_sampler_the_family_lacks_is_refused_with_the_offer() {
    let model = load("dit-tiny");
    let mut req = GenerateRequest::<Cpu>::new(vec![1], 1.5, 10, 0);
    req.sampler = Some("dopri5".into());
    let e = model.generate(&req, &mut |_| {}, &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(e.contains("adm, ddim"), "{e}");
    let mut req = GenerateRequest::<Cpu>::new(vec![1], 1.5, 10, 0);
    req.step_noise = Some(vec![]);
    let e = model.generate(&req, &mut |_| {}, &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(e.contains("step noise"), "{e}");
}

/// The registry's DiT-XL and USiT configs have the published parameter counts (README:
/// 674.89 M without DiT's fixed position table, 500.87 M, 1580.40 M).
#[test]
fn registered_dit_and_usit_have_the_published_sizes() {
    use dcae::model::diffusion::DiffusionConfig;
    let dit = DiffusionConfig::registered("dc-ae-f32c32-in-1.0-dit-xl-in-512px").unwrap();
    assert_eq!(dit.family(), "DiT");
    assert_eq!(dit.denoiser_params(), 675_184_960);
    assert_eq!(dit.denoiser_params() - 256 * 1152, 674_890_048);
    assert_eq!(DiffusionConfig::registered("dc-ae-f32c32-in-1.0-usit-h-in-512px").unwrap().denoiser_params(), 500_868_896);
    assert_eq!(DiffusionConfig::registered("dc-ae-f32c32-in-1.0-usit-2b-in-512px").unwrap().denoiser_params(), 1_580_396_576);
    for name in ["dc-ae-f32c32-in-1.0-dit-xl-in-512px", "dc-ae-f32c32-in-1.0-dit-xl-in-512px-trainbs1024", "dc-ae-f32c32-in-1.0-usit-h-in-512px", "dc-ae-f32c32-in-1.0-usit-2b-in-512px"] {
        let p = dcae::model::registry::find(name).unwrap();
        assert!(p.in_app, "{name} is in the Models view");
        assert_eq!(p.defaults().unwrap().steps, 250, "{name}");
    }
}

/// The real checkpoints' key / shape manifests (written from the original modules on torch's
/// meta device) hold exactly the keys and shapes our networks ask for.
#[test]
fn dit_xl_and_usit_keys_equal_the_published_manifests() {
    use dcae::model::diffusion::{build_denoiser, DiffusionConfig, UVIT_PREFIX};
    use dcae::weights::KeyRecorder;
    for name in ["dc-ae-f32c32-in-1.0-dit-xl-in-512px", "dc-ae-f32c32-in-1.0-usit-h-in-512px", "dc-ae-f32c32-in-1.0-usit-2b-in-512px"] {
        let path = dir("manifests").join(format!("{name}.diffusion_model.tsv"));
        let text = std::fs::read_to_string(&path).unwrap();
        let manifest: HashMap<String, Vec<usize>> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut cols = l.split('\t');
                let key = cols.next().unwrap().strip_prefix(UVIT_PREFIX).unwrap().to_string();
                let shape = cols.next().unwrap().trim_matches(|c| c == '[' || c == ']').split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
                (key, shape)
            })
            .collect();
        let cfg = DiffusionConfig::registered(name).unwrap();
        let mut rec = KeyRecorder::<Cpu>::new(&Default::default());
        let _ = build_denoiser(&mut rec, &cfg.denoiser);
        assert_eq!(rec.keys.len(), manifest.len(), "{name}: key count");
        for (k, shape) in &rec.keys {
            assert_eq!(manifest.get(k), shape.as_ref(), "{name}: {k}");
        }
        let total: usize = manifest.values().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(total, cfg.denoiser_params(), "{name}: parameters");
    }
}

/// `dcae generate` on the DiT and USiT fixtures with the original's noise: the latent of the
/// parity cases, and PNG parameters that name the sampler (so a restore picks it again).
#[test]
fn cli_generate_runs_dit_with_step_noise_and_usit_with_heun() {
    use dcae::cli::generate::GenerateArgs;
    use dcae::engine::backend::BackendChoice;
    let tmp = tempfile::tempdir().unwrap();
    for (case, p, sampler, steps, step_noise) in [("dit-tiny", "adm25_cfg4_", "adm", 25, true), ("usit-tiny", "heun2_10_cfg1p5_", "heun2", 10, false)] {
        let exp = expected(case);
        let write = |name: &str, key: &str| {
            let s = &exp[key];
            let path = tmp.path().join(format!("{case}-{name}.safetensors"));
            let bytes: Vec<u8> = s.f32.iter().flat_map(|v| v.to_le_bytes()).collect();
            let view = safetensors::tensor::TensorView::new(Dtype::F32, s.shape.clone(), &bytes).unwrap();
            safetensors::serialize_to_file([("noise", view)], None, &path).unwrap();
            path
        };
        let out = tmp.path().join(format!("{case}.png"));
        let latent_out = tmp.path().join(format!("{case}-latent.safetensors"));
        let labels: Vec<String> = exp[&format!("{p}labels")].i64.iter().map(|l| l.to_string()).collect();
        let args = GenerateArgs {
            model: dir(case).display().to_string(),
            classes: labels,
            cfg: Some(exp[&format!("{p}cfg_scale")].f32[0]),
            steps: Some(steps),
            sampler: Some(sampler.into()),
            noise: Some(write("noise", &format!("{p}noise"))),
            step_noise: step_noise.then(|| write("steps", &format!("{p}step_noise"))),
            latent_out: Some(latent_out.clone()),
            out: out.clone(),
            backend: BackendChoice::Cpu,
            ..Default::default()
        };
        dcae::cli::generate::run(args).unwrap();
        let latent = dcae::cli::generate::read_tensor_f32::<Cpu>(&latent_out, "latent", &Default::default()).unwrap();
        let r = rel(&values(latent), &exp[&format!("{p}latent")].f32);
        assert!(r < 1e-3, "{case}: CLI latent {r:e}");
        let text = dcae::imaging::read_png_text(&out).unwrap();
        let parameters = &text.iter().find(|(k, _)| k == "parameters").expect("parameters").1;
        let params = dcae::imaging::GenerationParams::parse_parameters_text(parameters).unwrap();
        assert_eq!(params.steps, steps, "{case}");
        assert!(params.sampler.to_lowercase().contains(sampler), "{case}: {}", params.sampler);
    }
}
