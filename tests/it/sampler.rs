//! DPM-Solver + classifier-free guidance: trajectories, orders and time grid against the
//! uvit-tiny golden case, the decoded image, cancellation, bad requests, the CLI end to end
//! and the generate benchmark.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{Int, Tensor, TensorData};
use dcae::cli::generate::{bench_generate, GenerateArgs, GenerateBenchOptions};
use dcae::engine::backend::{BackendChoice, Cpu};
use dcae::model::diffusion::{seeded_noise, GenerateError, GenerateRequest, StepUpdate};
use dcae::sampler::{fast_orders, DpmSolver, Real, SamplerConfig};

use super::uvit::{expected, fixture_dir, load_tiny, max_abs_diff, tensor4, values, Stored};

const CASES: [&str; 3] = ["cfg6_", "cfg1_", "cfg1p5_"];

fn request(exp: &std::collections::HashMap<String, Stored>, p: &str) -> GenerateRequest<Cpu> {
    GenerateRequest {
        labels: exp[&format!("{p}labels")].i64.iter().map(|&l| l as usize).collect(),
        cfg_scale: exp[&format!("{p}cfg_scale")].f32[0],
        steps: exp[&format!("{p}steps")].i64[0] as usize,
        seed: 0,
        noise: Some(tensor4(&exp[&format!("{p}noise")])),
        init: None,
        sampler: None,
        step_noise: None,
    }
}

/// Per-step max |diff| of a trajectory against `<p>x_steps` (index 0 = noise).
fn step_errors(xs: &[Vec<f32>], stored: &Stored) -> Vec<f32> {
    let per = stored.f32.len() / stored.shape[0];
    assert_eq!(xs.len(), stored.shape[0], "number of recorded states");
    xs.iter().enumerate().map(|(k, x)| max_abs_diff(x, &stored.f32[k * per..(k + 1) * per])).collect()
}

#[test]
fn sampler_fast_orders_follow_the_rule() {
    for steps in 1..=50usize {
        let k = steps / 3 + 1;
        let mut rule = Vec::new();
        match steps % 3 {
            0 => {
                rule.extend(vec![3; k - 2]);
                rule.extend([2, 1]);
            }
            1 => {
                rule.extend(vec![3; k - 1]);
                rule.push(1);
            }
            _ => {
                rule.extend(vec![3; k - 1]);
                rule.push(2);
            }
        }
        let orders = fast_orders(steps, 3);
        assert_eq!(orders, rule, "steps = {steps}");
        assert_eq!(orders.iter().sum::<usize>(), steps);
    }
    assert_eq!(fast_orders(1, 3), vec![1]);
    assert_eq!(fast_orders(2, 3), vec![2]);
    assert_eq!(fast_orders(3, 3), vec![2, 1]);
    assert_eq!(fast_orders(4, 3), vec![3, 1]);
    assert_eq!(fast_orders(5, 2), vec![2, 2, 1]);
    assert!(fast_orders(0, 3).is_empty());

    let exp = expected();
    let solver = DpmSolver::<f32>::new(&SamplerConfig::default()).unwrap();
    for p in CASES {
        let steps = exp[&format!("{p}steps")].i64[0] as usize;
        let orders: Vec<usize> = exp[&format!("{p}orders")].i64.iter().map(|&o| o as usize).collect();
        assert_eq!(solver.orders(steps), orders, "{p}orders");
        // The time grid is bit-identical to torch.linspace's.
        let ts = solver.timesteps(steps);
        assert_eq!(ts, exp[&format!("{p}timesteps")].f32, "{p}timesteps");
    }
}

#[test]
fn sampler_schedule_is_consistent() {
    let ns = DpmSolver::<f64>::new(&SamplerConfig::default()).unwrap().schedule;
    let ns32 = DpmSolver::<f32>::new(&SamplerConfig::default()).unwrap().schedule;
    for &t in &[0.001, 0.0343, 0.25, 0.5, 0.9001, 1.0] {
        // α² + σ² = 1, λ⁻¹(λ(t)) ≈ t, and f32 ≈ f64 (to the f32 cancellation in
        // 1 − exp(2·log α) ≈ σ², which is 8.5e-4 at t = 0.001: inherent in the reference's math).
        let (a, s) = (ns.alpha(t), ns.sigma(t));
        assert!((a * a + s * s - 1.0).abs() < 1e-12);
        assert!((ns.inverse_lambda(ns.lambda(t)) - t).abs() < 1e-9, "t = {t}");
        let d = (ns32.lambda(t as f32).to_f64() - ns.lambda(t)).abs();
        assert!(d < 2e-4, "t = {t}: f32 λ off by {d}");
    }
    // Discrete step 1000 ends at ᾱ = Π(1 − β): log α(1) = ½·Σ log(1 − β).
    let betas: Vec<f64> = (0..1000)
        .map(|i| {
            let (a, b) = (0.00085f64.sqrt(), 0.012f64.sqrt());
            let v = a + (b - a) * i as f64 / 999.0;
            (v * v) as f32 as f64
        })
        .collect();
    let la: f64 = 0.5 * betas.iter().map(|b| (1.0 - b).ln()).sum::<f64>();
    assert!((ns.log_alpha(1.0) - la).abs() < 1e-9);
    // Linear extrapolation below the first knot.
    let (l0, l1) = (ns.log_alpha(0.001), ns.log_alpha(0.002));
    assert!((ns.log_alpha(0.0) - (l0 - (l1 - l0))).abs() < 1e-9);
}

#[test]
fn sampler_trajectories_match_golden() {
    let model = load_tiny();
    let exp = expected();
    for p in CASES {
        let req = request(&exp, p);
        let mut xs = vec![values(req.noise.clone().unwrap())];
        let mut seen = Vec::new();
        let cancel = AtomicBool::new(false);
        let out = model
            .generate(
                &req,
                &mut |u: StepUpdate<Cpu>| {
                    seen.push((u.step, u.total, u.t));
                    xs.push(values(u.x));
                },
                &cancel,
            )
            .unwrap();
        let errs = step_errors(&xs, &exp[&format!("{p}x_steps")]);
        let latent_err = max_abs_diff(&values(out.latent.clone()), &exp[&format!("{p}latent")].f32);
        let worst = errs.iter().copied().fold(0.0, f32::max);
        println!("{p}: per-step max |diff| {:?}; worst {worst:.3e}; latent {latent_err:.3e}", errs.iter().map(|e| format!("{e:.1e}")).collect::<Vec<_>>());
        assert!(worst < 1e-3, "{p} trajectory differs by {worst}");
        assert!(latent_err < 1e-3, "{p} latent differs by {latent_err}");

        let calls = if req.cfg_scale == 1.0 { 30 } else { 60 };
        assert_eq!((out.nfe, out.network_calls), (30, calls), "{p}");
        assert_eq!(seen.len(), 11);
        assert!(seen.iter().enumerate().all(|(i, &(s, tot, _))| s == i + 1 && tot == 11));
        assert!((seen[10].2 - 0.001).abs() < 1e-9 && (seen[0].2 - 0.9001).abs() < 1e-6);
    }
}

#[test]
fn sampler_f64_schedule_math_measured() {
    // The same cfg6_ run with the solver's scalar math in f64 instead of the reference's f32:
    // measures how much mirroring the reference's precision matters.
    let model = load_tiny();
    let exp = expected();
    let req = request(&exp, "cfg6_");
    let device = Default::default();
    let y = Tensor::<Cpu, 1, Int>::from_data(TensorData::new(vec![3i64, 7], [2]), &device);
    let y_null = Tensor::<Cpu, 1, Int>::from_data(TensorData::new(vec![10i64, 10], [2]), &device);
    let mut eps = |x: Tensor<Cpu, 4>, t: f64| -> Result<Tensor<Cpu, 4>, ()> {
        let t = Tensor::<Cpu, 1>::from_data(TensorData::new(vec![(t * 1000.0) as f32; 2], [2]), &device);
        let c = model.denoiser.forward(x.clone(), t.clone(), y.clone());
        let u = model.denoiser.forward(x, t, y_null.clone());
        Ok(c.clone() + (c - u).mul_scalar(5.0))
    };
    let solver = DpmSolver::<f64>::new(model.config.dpm_sampler().unwrap()).unwrap();
    let mut xs = vec![values(req.noise.clone().unwrap())];
    solver.sample(req.noise.clone().unwrap(), 30, &mut eps, &mut |u| xs.push(values(u.x))).unwrap();
    let errs = step_errors(&xs, &exp["cfg6_x_steps"]);
    let worst = errs.iter().copied().fold(0.0, f32::max);
    println!("cfg6_ with f64 solver scalars: worst per-step max |diff| {worst:.3e}");
    assert!(worst < 1e-3);
}

#[test]
fn sampler_image_from_stored_latent_matches_golden() {
    let model = load_tiny();
    let exp = expected();
    for p in CASES {
        let image = values(model.decode_latent(tensor4(&exp[&format!("{p}latent")])));
        let err = max_abs_diff(&image, &exp[&format!("{p}image")].f32);
        println!("{p}image (decoded from the stored latent) max |diff| = {err:.3e}");
        assert!(err < 1e-4, "{p}image differs by {err}");
    }
}

#[test]
fn sampler_cancel_mid_run_then_clean_rerun() {
    let model = load_tiny();
    let exp = expected();
    let mut req = request(&exp, "cfg6_");
    req.steps = 9; // [3, 3, 2, 1]: enough steps to cancel at the third
    let cancel = AtomicBool::new(false);
    let full = values(model.generate(&req, &mut |_| {}, &cancel).unwrap().latent);

    let mut last_step = 0;
    let result = model.generate(
        &req,
        &mut |u: StepUpdate<Cpu>| {
            last_step = u.step;
            if u.step == 3 {
                cancel.store(true, Ordering::Relaxed);
            }
        },
        &cancel,
    );
    assert!(matches!(result, Err(GenerateError::Cancelled)), "{result:?}");
    assert_eq!(last_step, 3, "no step may finish after the cancel");

    cancel.store(false, Ordering::Relaxed);
    let again = values(model.generate(&req, &mut |_| {}, &cancel).unwrap().latent);
    assert_eq!(full, again, "a run after a cancelled one must equal an uncancelled run");

    // A flag already set stops the run before any network call.
    cancel.store(true, Ordering::Relaxed);
    let mut steps = 0;
    assert!(matches!(model.generate(&req, &mut |_| steps += 1, &cancel), Err(GenerateError::Cancelled)));
    assert_eq!(steps, 0);
}

#[test]
fn sampler_rejects_bad_requests_clearly() {
    let model = load_tiny();
    let cancel = AtomicBool::new(false);
    let ok = GenerateRequest::<Cpu> { labels: vec![3, 10], cfg_scale: 1.5, steps: 3, seed: 7, noise: None, init: None, sampler: None, step_noise: None };
    let err = |req: GenerateRequest<Cpu>| model.generate(&req, &mut |_| {}, &cancel).unwrap_err();

    let e = err(GenerateRequest { labels: vec![3, 11], ..ok.clone() });
    assert!(matches!(e, GenerateError::UnknownClass { id: 11, num_classes: 10 }), "{e:?}");
    println!("{e}");
    assert!(e.to_string().contains("11") && e.to_string().contains("0..=9"), "{e}");

    let noise = Tensor::<Cpu, 4>::zeros([2, 4, 8, 8], &Default::default());
    let e = err(GenerateRequest { noise: Some(noise), ..ok.clone() });
    println!("{e}");
    assert!(e.to_string().contains("[2, 4, 8, 8]") && e.to_string().contains("[2, 4, 4, 4]"), "{e}");

    let e = err(GenerateRequest { steps: 0, ..ok.clone() });
    assert!(matches!(e, GenerateError::ZeroSteps), "{e:?}");
    let e = err(GenerateRequest { labels: vec![], ..ok.clone() });
    assert!(matches!(e, GenerateError::NoLabels), "{e:?}");
    let e = err(GenerateRequest { cfg_scale: f32::NAN, ..ok.clone() });
    assert!(matches!(e, GenerateError::BadScale(_)), "{e:?}");

    // The model is still usable, and the null id alone is a valid (unconditional) request.
    let out = model.generate(&GenerateRequest { labels: vec![10], ..ok }, &mut |_| {}, &cancel).unwrap();
    assert!(values(out.latent).iter().all(|v| v.is_finite()));
}

#[test]
fn sampler_small_step_counts_and_seeded_noise() {
    let model = load_tiny();
    let cancel = AtomicBool::new(false);
    for steps in [1, 2, 3, 4, 5] {
        let req = GenerateRequest::<Cpu> { labels: vec![1, 2], cfg_scale: 4.0, steps, seed: 1, noise: None, init: None, sampler: None, step_noise: None };
        let mut n = 0;
        let out = model.generate(&req, &mut |_| n += 1, &cancel).unwrap();
        assert_eq!((out.nfe, out.network_calls, n), (steps, 2 * steps, fast_orders(steps, 3).len()));
        assert!(values(out.latent).iter().all(|v| v.is_finite()), "steps = {steps}");
    }
    let device = Default::default();
    let a = values(seeded_noise::<Cpu>([2, 4, 4, 4], 42, &device));
    assert_eq!(a, values(seeded_noise::<Cpu>([2, 4, 4, 4], 42, &device)));
    assert_ne!(a, values(seeded_noise::<Cpu>([2, 4, 4, 4], 43, &device)));
    let mean = a.iter().sum::<f32>() / a.len() as f32;
    assert!(mean.abs() < 0.5);
    // Same seed, same sample.
    let req = GenerateRequest::<Cpu> { labels: vec![5], cfg_scale: 2.0, steps: 4, seed: 9, noise: None, init: None, sampler: None, step_noise: None };
    let x1 = values(model.generate(&req, &mut |_| {}, &cancel).unwrap().latent);
    let x2 = values(model.generate(&req, &mut |_| {}, &cancel).unwrap().latent);
    assert_eq!(x1, x2);
}

#[test]
fn sampler_cli_generate_end_to_end() {
    let exp = expected();
    let tmp = tempfile::tempdir().unwrap();
    let noise_path = tmp.path().join("noise.safetensors");
    dcae::cli::write_tensor_f32(&noise_path, "noise", tensor4(&exp["cfg6_noise"])).unwrap();
    let out = tmp.path().join("grid.png");
    let latent_out = tmp.path().join("latent.safetensors");
    let steps_dir = tmp.path().join("steps");
    let args = GenerateArgs {
        model: fixture_dir().display().to_string(),
        classes: vec!["3".into(), "7".into()],
        cfg: Some(6.0),
        steps: Some(30),
        seed: 0,
        noise: Some(noise_path),
        latent_out: Some(latent_out.clone()),
        out: out.clone(),
        save_steps: Some(steps_dir.clone()),
        backend: BackendChoice::Cpu,
        ..Default::default()
    };
    dcae::cli::generate::run(args.clone()).unwrap();

    let latent = dcae::cli::generate::read_tensor_f32::<Cpu>(&latent_out, "latent", &Default::default()).unwrap();
    assert_eq!(latent.dims(), [2, 4, 4, 4]);
    let err = max_abs_diff(&values(latent), &exp["cfg6_latent"].f32);
    assert!(err < 1e-3, "CLI latent differs by {err}");

    let text = dcae::imaging::read_png_text(&out).unwrap();
    let get = |k: &str| text.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let parameters = get("parameters").expect("parameters chunk");
    println!("{parameters}");
    let params = dcae::imaging::GenerationParams::parse_parameters_text(&parameters).unwrap();
    assert_eq!((params.classes, params.guidance, params.steps, params.batch), (vec![3, 7], 6.0, 30, 2));
    assert_eq!(params.model, "uvit-tiny");
    assert!(params.sampler.contains("DPM-Solver"), "{}", params.sampler);
    assert!(get("noise").unwrap().ends_with("noise.safetensors"));
    let grid = image::open(&out).unwrap();
    assert_eq!((grid.width(), grid.height()), (34, 16), "two 16×16 images side by side, 2 px apart");
    assert_eq!(std::fs::read_dir(&steps_dir).unwrap().count(), 11);

    // Class names and "unconditional" (the model's null id, 10 here), seeded noise.
    let named = tmp.path().join("named.png");
    let a = GenerateArgs { classes: vec!["goldfish".into(), "unconditional".into()], steps: Some(3), noise: None, latent_out: None, save_steps: None, out: named.clone(), ..args.clone() };
    dcae::cli::generate::run(a).unwrap();
    let text = dcae::imaging::read_png_text(&named).unwrap();
    let params = dcae::imaging::GenerationParams::parse_parameters_text(&text[0].1).unwrap();
    assert_eq!(params.classes, vec![1, 10]);

    // Bad classes are refused before any work.
    let e = dcae::cli::generate::run(GenerateArgs { classes: vec!["11".into()], ..args.clone() }).unwrap_err();
    assert!(e.to_string().contains("11") && e.to_string().contains("0..=9"), "{e}");
    let e = dcae::cli::generate::run(GenerateArgs { classes: vec!["goldfish!!".into()], ..args.clone() }).unwrap_err();
    assert!(e.to_string().contains("goldfish"), "{e}");
    let e = dcae::cli::generate::run(GenerateArgs { model: "/nonexistent/model".into(), ..args }).unwrap_err();
    assert!(format!("{e:#}").contains("/nonexistent/model"), "{e:#}");
}

#[test]
fn sampler_bench_generate_runs_on_random_weights() {
    let mut opts = GenerateBenchOptions::new("dc-ae-f32c32-in-1.0-uvit-s-in-512px", 64, 2);
    opts.backend = BackendChoice::Cpu;
    opts.forward_runs = 2;
    let b = bench_generate(&opts).unwrap();
    println!("{}", serde_json::to_string(&b).unwrap());
    assert_eq!(b.latent_shape, [1, 32, 2, 2]);
    assert_eq!((b.forward.runs, b.generate.runs, b.network_calls), (2, 1, 4));
    assert!(b.forward.median_s > 0.0 && b.generate.median_s > 0.0);
    assert!(bench_generate(&GenerateBenchOptions::new("no-such-model", 512, 30)).is_err());
}
