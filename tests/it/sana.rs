//! SANA: transformer forwards, the flow samplers, pipeline loading and the CLI against the
//! sana-tiny goldens (diffusers 0.42.1, random weights, f32 on the CPU). Tolerances are the
//! golden README's: 1e-4 for forwards (its f32-vs-f64 spread is 1.2e-5), 1e-3 for whole
//! trajectories (spread 1.1e-5, but the error of each step is amplified by up to 2g + 1 by
//! guidance), 1e-6 for schedules.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use burn::tensor::{Int, Tensor, TensorData};
use dcae::model::sana::transformer::{SanaTransformer, SanaTransformerConfig};
use dcae::model::sana::flow::{self, FlowSchedule, FlowSchedulerConfig};
use dcae::weights::{load_strict, Checkpoint, KeyRecorder, Layout};
use safetensors::{Dtype, SafeTensors};

use super::common::{device, fixture, max_abs_diff, B};

/// A stored tensor as f32 values (i64 converted) and its shape.
#[derive(Clone)]
pub struct Stored {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

/// Every tensor of `sana-tiny/expected.safetensors`, read once.
pub fn golden() -> &'static HashMap<String, Stored> {
    static G: OnceLock<HashMap<String, Stored>> = OnceLock::new();
    G.get_or_init(|| read_all(&fixture("sana-tiny/expected.safetensors")))
}

pub fn read_all(path: &Path) -> HashMap<String, Stored> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("golden safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let d = view.data();
            let data = match view.dtype() {
                Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                Dtype::I64 => d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, Stored { data, shape: view.shape().to_vec() })
        })
        .collect()
}

pub fn g(name: &str) -> &'static Stored {
    golden().get(name).unwrap_or_else(|| panic!("golden tensor {name} missing"))
}

pub fn t<const D: usize>(name: &str) -> Tensor<B, D> {
    let s = g(name);
    let shape: [usize; D] = s.shape.clone().try_into().unwrap_or_else(|_| panic!("{name}: rank {}", s.shape.len()));
    Tensor::from_data(TensorData::new(s.data.clone(), shape), &device())
}

pub fn t_int(name: &str) -> Tensor<B, 2, Int> {
    let s = g(name);
    let v: Vec<i64> = s.data.iter().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(v, [s.shape[0], s.shape[1]]), &device())
}

pub fn vals<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32")
}

fn json(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(rel)).unwrap();
    serde_json::from_str(&dcae::model::load::python_json(&text)).unwrap()
}

/// diffusers writes Python's non-standard `-Infinity` into scheduler configs.
#[test]
fn python_json_constants_become_null() {
    let v: serde_json::Value = serde_json::from_str(&dcae::model::load::python_json(r#"{"a": -Infinity, "b": [NaN, Infinity], "s": "NaN -Infinity", "e": "\"NaN"}"#)).unwrap();
    assert!(v["a"].is_null() && v["b"][0].is_null() && v["b"][1].is_null());
    assert_eq!(v["s"], "NaN -Infinity");
    assert_eq!(v["e"], "\"NaN");
}

pub fn load_transformer(dir: &str) -> SanaTransformer<B> {
    let cfg = SanaTransformerConfig::from_json(&json(&format!("{dir}/config.json"))).unwrap();
    cfg.validate().unwrap();
    let ckpt = Checkpoint::open(fixture(&format!("{dir}/diffusion_pytorch_model.safetensors"))).unwrap();
    load_strict(&ckpt, "", Layout::Original, &device(), "SANA transformer", |w| SanaTransformer::load(w, &cfg)).unwrap_or_else(|e| panic!("{e}"))
}

fn forward_case(model: &SanaTransformer<B>, p: &str, sprint: bool) -> f32 {
    let guidance = sprint.then(|| t::<1>(&format!("{p}_guidance")));
    let out = model.forward(t(&format!("{p}_x")), t(&format!("{p}_t")), t(&format!("{p}_ehs")), t_int(&format!("{p}_emask")), guidance);
    max_abs_diff(&vals(out), &g(&format!("{p}_out")).data)
}

#[test]
fn transformer_forwards_match_diffusers() {
    let sana = load_transformer("sana-tiny/transformer");
    for p in ["fwdA", "fwdB"] {
        let err = forward_case(&sana, p, false);
        eprintln!("{p}_out max abs error {err:.2e}");
        assert!(err < 1e-4, "{p}: {err}");
    }
    let sprint = load_transformer("sana-tiny/sprint/transformer");
    let err = forward_case(&sprint, "sfwdA", true);
    eprintln!("sfwdA_out max abs error {err:.2e}");
    assert!(err < 1e-4, "sfwdA: {err}");
}

/// 16-bit forwards, the GPU path, run here through the CPU backend's f16 / bf16 ops (which
/// round every result as a GPU's do): SANA 1.0's architecture in f16 and Sprint's in bf16,
/// within `dcae parity`'s 16-bit tolerances of the f32 goldens, measurably not the f32 path,
/// and an overflow guarded by an f32 rerun.
#[test]
fn transformer_in_16_bit_within_its_tolerance_and_overflow_reruns_in_f32() {
    use burn::tensor::DType;
    use dcae::cli::parity::{BF16_RELATIVE_TOLERANCE, F16_RELATIVE_TOLERANCE};
    use dcae::model::precision::Precision;
    let cases = [
        ("sana-tiny/transformer", "fwdA", false, Precision::F16, F16_RELATIVE_TOLERANCE, DType::F16),
        ("sana-tiny/transformer", "fwdB", false, Precision::F16, F16_RELATIVE_TOLERANCE, DType::F16),
        ("sana-tiny/sprint/transformer", "sfwdA", true, Precision::Bf16, BF16_RELATIVE_TOLERANCE, DType::BF16),
    ];
    for (dir, p, sprint, precision, rel_tol, dtype) in cases {
        let f32_model = load_transformer(dir);
        let model = load_transformer(dir).with_precision(precision);
        assert_eq!(model.precision(), precision);
        assert_eq!(model.transformer_blocks[0].attn1.to_q.weight.val().dtype(), dtype);
        let guidance = sprint.then(|| t::<1>(&format!("{p}_guidance")));
        let run = |m: &SanaTransformer<B>| m.forward(t(&format!("{p}_x")), t(&format!("{p}_t")), t(&format!("{p}_ehs")), t_int(&format!("{p}_emask")), guidance.clone());
        let out = run(&model);
        assert_eq!(out.dtype(), DType::F32, "handed out in f32");
        let got = vals(out);
        let want = &g(&format!("{p}_out")).data;
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(&got, want);
        let moved = max_abs_diff(&got, &vals(run(&f32_model)));
        eprintln!("{p} in {}: max |diff| {err:.3e} = {:.2e} of max |golden| {scale:.3}; {moved:.3e} from the f32 path", precision.name(), err / scale);
        assert!(got.iter().all(|v| v.is_finite()), "{p}: non-finite values");
        assert!(err as f64 <= rel_tol * scale as f64, "{p} in {}: {err:e} over {rel_tol} of {scale}", precision.name());
        assert!(moved > 1e-4, "{p}: the {} path gave the f32 result ({moved:e})", precision.name());
        assert_eq!(model.f32_reruns(), 0);
    }
    // Latents far outside the model's range overflow f16 (the velocity comes out infinite or
    // NaN); the call runs again in f32 and says so.
    let model = load_transformer("sana-tiny/transformer").with_precision(Precision::F16);
    // What the rerun computes with: the f16 weights widened back.
    let wide = load_transformer("sana-tiny/transformer").with_precision(Precision::F16).with_precision(Precision::F32);
    let x = t::<4>("fwdA_x").mul_scalar(1e6);
    let out = model.forward(x.clone(), t("fwdA_t"), t("fwdA_ehs"), t_int("fwdA_emask"), None);
    let want = wide.forward(x, t("fwdA_t"), t("fwdA_ehs"), t_int("fwdA_emask"), None);
    assert_eq!(model.f32_reruns(), 1, "the overflow must be caught");
    let (got, want) = (vals(out), vals(want));
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(max_abs_diff(&got, &want) <= 1e-5 * scale, "the rerun is the f32 result");
}

/// The fp16 clip must not change a model whose activations stay in range (the goldens').
#[test]
fn fp16_clip_is_inert_in_range() {
    let sana = load_transformer("sana-tiny/transformer").clip_fp16_range(true);
    assert!(forward_case(&sana, "fwdA", false) < 1e-4);
}

fn scheduler(rel: &str) -> FlowSchedulerConfig {
    FlowSchedulerConfig::from_json(&json(rel)).unwrap()
}

/// Runs one golden sampling case through the library with the stored conditioning and initial
/// latent, and checks every step (model timesteps, raw outputs, samples) and the result.
fn sampling_case(p: &str) {
    let sprint = p.starts_with("sprint");
    let (model, sched) = match p {
        _ if sprint => (load_transformer("sana-tiny/sprint/transformer"), scheduler("sana-tiny/sprint/scheduler/scheduler_config.json")),
        "euler10" => (load_transformer("sana-tiny/transformer"), scheduler("sana-tiny/scheduler_flow_euler/scheduler_config.json")),
        _ => (load_transformer("sana-tiny/transformer"), scheduler("sana-tiny/scheduler/scheduler_config.json")),
    };
    let steps = g(&format!("{p}_steps")).data[0] as usize;
    let guidance = g(&format!("{p}_guidance_scale")).data[0];
    let intermediate = (sprint && steps == 2).then_some(1.3);
    let schedule = FlowSchedule::new(&sched, steps, sprint.then_some(1.5708), intermediate).unwrap();

    // Schedules.
    let model_t = &g(&format!("{p}_model_t")).data;
    let t_err = max_abs_diff(&schedule.model_t, model_t);
    if sprint {
        assert!(max_abs_diff(&schedule.sigmas, &g(&format!("{p}_timesteps")).data) < 1e-6, "{p} angles");
        assert!(t_err < 1e-6, "{p} model_t {t_err}");
    } else {
        assert!(max_abs_diff(&schedule.sigmas, &g(&format!("{p}_sigmas")).data) < 1e-6, "{p} sigmas");
        let tol = if p == "euler10" { 1e-4 } else { 0.0 };
        assert!(t_err <= tol, "{p} model timesteps {t_err}");
    }

    let ehs = t::<3>(&format!("{p}_encoder_hidden_states"));
    let mask = t_int(&format!("{p}_encoder_attention_mask"));
    let x0 = t::<4>(&format!("{p}_latents_in"));
    let [b, c, h, w] = x0.dims();
    let cfg = !sprint && guidance > 1.0;
    let raw = g(&format!("{p}_model_raw"));
    let per_raw: usize = raw.shape[1..].iter().product();
    let mut raw_err = 0f32;
    let mut call = 0;
    let mut network = |x: Tensor<B, 4>, tm: f32| {
        let rows = if cfg { 2 * b } else { b };
        let tt = Tensor::<B, 1>::from_data(TensorData::new(vec![tm; rows], [rows]), &device());
        let xin = if cfg { Tensor::cat(vec![x.clone(), x], 0) } else { x };
        let guid = sprint.then(|| t::<1>(&format!("{p}_guidance")));
        let v = model.forward(xin, tt, ehs.clone(), mask.clone(), guid);
        raw_err = raw_err.max(max_abs_diff(&vals(v.clone()), &raw.data[call * per_raw..(call + 1) * per_raw]));
        call += 1;
        Some(if cfg {
            let u = v.clone().narrow(0, 0, b);
            u.clone() + (v.narrow(0, b, b) - u).mul_scalar(guidance as f64)
        } else {
            v
        })
    };
    let noise = sprint.then(|| t::<5>(&format!("{p}_step_noise")));
    let mut step_noise = |k: usize| noise.clone().map(|n| n.narrow(0, k, 1).reshape([b, c, h, w])).unwrap_or_else(|| Tensor::zeros([b, c, h, w], &device()));
    let xs = g(&format!("{p}_x_steps"));
    let per: usize = xs.shape[1..].iter().product();
    let mut step_err = 0f32;
    let mut on_step = |s: flow::FlowStep<B>| {
        step_err = step_err.max(max_abs_diff(&vals(s.x), &xs.data[s.step * per..(s.step + 1) * per]));
    };
    let latent = flow::sample(&schedule, x0, &mut network, &mut step_noise, &mut on_step).expect("not cancelled");
    let latent_err = max_abs_diff(&vals(latent), &g(&format!("{p}_latent")).data);
    eprintln!("{p}: model_raw {raw_err:.2e}, x_steps {step_err:.2e}, latent {latent_err:.2e}");
    assert_eq!(call, steps, "{p}: one network call per step");
    assert!(raw_err < 1e-3, "{p} model_raw {raw_err}");
    assert!(step_err < 1e-3, "{p} x_steps {step_err}");
    assert!(latent_err < 1e-3, "{p} latent {latent_err}");
}

#[test]
fn sampler_dpm20_every_step() {
    sampling_case("dpm20");
}

#[test]
fn sampler_euler10_every_step() {
    sampling_case("euler10");
}

#[test]
fn sampler_dpm5nocfg_every_step() {
    sampling_case("dpm5nocfg");
}

#[test]
fn sampler_sprint_1_2_4_steps() {
    for p in ["sprint1", "sprint2", "sprint4"] {
        sampling_case(p);
    }
}

/// The DPM grid of the real models (20 steps, shift 3) as the spec lists it.
#[test]
fn dpm_grid_of_the_real_models() {
    let s = FlowSchedule::new(&FlowSchedulerConfig::default(), 20, None, None).unwrap();
    let want = [999., 982., 963., 944., 922., 899., 874., 847., 817., 785., 749., 710., 666., 617., 562., 499., 428., 345., 249., 136.];
    assert_eq!(s.model_t, want);
    assert!((s.sigmas[0] - 0.999_666_45).abs() < 1e-7 && (s.sigmas[19] - 0.136_239_66).abs() < 1e-7 && s.sigmas[20] == 0.0);
}

/// Keys and shapes the loader asks for, for every published transformer architecture, equal
/// the manifests listed from diffusers' own `state_dict()`.
#[test]
fn transformer_keys_match_every_manifest() {
    let sprint = |b| SanaTransformerConfig::sprint(b);
    let cases = [
        ("sana-600m", SanaTransformerConfig::sana_600m(32), 591_747_872usize),
        ("sana-1600m", SanaTransformerConfig::sana_1600m(32), 1_604_462_752),
        ("sana1.5-1.6b", SanaTransformerConfig::sana15(20), 1_604_641_952),
        ("sana1.5-4.8b", SanaTransformerConfig::sana15(60), 4_721_825_952),
        ("sana-sprint-0.6b", sprint(SanaTransformerConfig::sana_600m(32)), 593_501_216),
        ("sana-sprint-1.6b", sprint(SanaTransformerConfig::sana_1600m(32)), 1_610_237_472),
    ];
    for (name, cfg, params) in cases {
        cfg.validate().unwrap();
        let mut rec = KeyRecorder::<B>::new(&device());
        let _ = SanaTransformer::load(&mut rec, &cfg);
        let mut got: Vec<(String, Vec<usize>)> = rec.keys.into_iter().filter_map(|(k, s)| s.map(|s| (k, s))).collect();
        got.sort();
        let text = std::fs::read_to_string(fixture(&format!("manifests/sana/{name}.transformer.tsv"))).unwrap();
        let mut want: Vec<(String, Vec<usize>)> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let cols: Vec<&str> = l.split('\t').collect();
                let shape = cols[1].trim_matches(['[', ']']).split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
                (cols[0].to_string(), shape)
            })
            .collect();
        want.sort();
        assert_eq!(got.len(), want.len(), "{name}: key count");
        for (a, b) in got.iter().zip(&want) {
            assert_eq!(a, b, "{name}");
        }
        let total: usize = want.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(total, params, "{name}: manifest parameter count");
        assert_eq!(cfg.num_params(), params, "{name}: num_params()");
    }
}

#[test]
fn transformer_config_refuses_what_it_does_not_implement() {
    let base = SanaTransformerConfig::sana_600m(32);
    let cases: Vec<(SanaTransformerConfig, &str)> = vec![
        (SanaTransformerConfig { patch_size: 2, ..base.clone() }, "patch_size"),
        (SanaTransformerConfig { norm_elementwise_affine: true, ..base.clone() }, "norm_elementwise_affine"),
        (SanaTransformerConfig { qk_norm: Some("rms_norm".into()), ..base.clone() }, "qk_norm"),
        (SanaTransformerConfig { num_layers: 0, ..base.clone() }, "num_layers"),
        (SanaTransformerConfig { num_layers: 100_000, ..base.clone() }, "num_layers"),
        (SanaTransformerConfig { cross_attention_dim: 7, ..base.clone() }, "cross_attention_dim"),
        (SanaTransformerConfig { mlp_ratio: f64::NAN, ..base.clone() }, "mlp_ratio"),
        (SanaTransformerConfig { out_channels: Some(64), ..base.clone() }, "out_channels"),
    ];
    for (cfg, field) in cases {
        let e = cfg.validate().expect_err(field);
        assert!(e.contains(field), "{field}: {e}");
    }
    // A number where a count belongs is a parse error naming the field.
    let e = SanaTransformerConfig::from_json(&serde_json::json!({"num_layers": "many"})).unwrap_err();
    assert!(e.contains("num_layers") || e.contains("invalid type"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The whole pipeline: library and CLI
// ---------------------------------------------------------------------------------------------

use dcae::model::sana::pipeline::{SanaPipeline, T2iEvent, T2iRequest};
use dcae::model::sana::layout::resolve_pipeline_dir;
use std::process::Command;
use std::sync::atomic::AtomicBool;

fn prompts(ids: &[usize]) -> Vec<String> {
    let cases = json("sana-tiny/cases.json");
    ids.iter().map(|&i| cases["prompts"][i].as_str().unwrap().to_string()).collect()
}

/// (prompt ids, folder, sampler flag) of each golden sampling case.
fn case_setup(p: &str) -> (Vec<usize>, &'static str, Option<&'static str>) {
    match p {
        "dpm20" => (vec![0, 1], "sana-tiny", None),
        "euler10" => (vec![2, 0], "sana-tiny", Some("euler")),
        "dpm5nocfg" => (vec![1, 3], "sana-tiny", None),
        _ => (vec![0, 2], "sana-tiny/sprint", None),
    }
}

fn load_pipeline(folder: &str, variant: Option<&str>) -> SanaPipeline<B> {
    let files = resolve_pipeline_dir(&fixture(folder), variant).unwrap_or_else(|e| panic!("{e}"));
    SanaPipeline::load(&files, folder, &device()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn pipeline_dpm20_from_prompts_matches_diffusers() {
    let mut pipe = load_pipeline("sana-tiny", None);
    let mut req = T2iRequest::<B>::new(prompts(&[0, 1]), 64, 64);
    req.binning = false;
    req.noise = Some(t("dpm20_latents_in"));
    let mut steps = 0;
    let mut layers = 0;
    let mut on_event = |e: T2iEvent<B>| match e {
        T2iEvent::Step(_) => steps += 1,
        T2iEvent::TextEncoder { .. } => layers += 1,
        _ => {}
    };
    let out = pipe.generate(&req, &mut on_event, &AtomicBool::new(false)).unwrap();
    assert_eq!(steps, 20);
    assert!(layers > 0, "text-encoder progress was reported");
    // Conditioning as the transformer got it: [negative × 2, prompts].
    let ehs = g("dpm20_encoder_hidden_states");
    let neg = out.conditioning.negative.as_ref().expect("CFG has a negative").0.clone();
    let ours = vals(Tensor::cat(vec![neg, out.conditioning.prompt_embeds.clone()], 0));
    let emb_err = max_abs_diff(&ours, &ehs.data);
    let lat_err = max_abs_diff(&vals(out.latent.clone()), &g("dpm20_latent").data);
    let img_err = max_abs_diff(&vals(pipe.decode(out.latent.clone()).unwrap()), &g("dpm20_image").data);
    let img_stored = max_abs_diff(&vals(pipe.decode(t("dpm20_latent")).unwrap()), &g("dpm20_image").data);
    eprintln!("dpm20 pipeline: embeds {emb_err:.2e}, latent {lat_err:.2e}, image {img_err:.2e} (from the stored latent {img_stored:.2e})");
    assert!(emb_err < 5e-4 && lat_err < 1e-3 && img_err < 1e-3 && img_stored < 1e-4);
    assert_eq!(out.images.len(), 2);
    assert_eq!(out.images[0].dimensions(), (64, 64));

    // A new seed with the same prompts costs no text encoding: the embeddings are cached.
    pipe.release_text_encoder();
    let mut layers = 0;
    let mut count = |e: T2iEvent<B>| {
        if let T2iEvent::TextEncoder { .. } | T2iEvent::LoadingTextEncoder = e {
            layers += 1
        }
    };
    req.noise = None;
    req.seed = 7;
    pipe.generate(&req, &mut count, &AtomicBool::new(false)).unwrap();
    assert_eq!(layers, 0, "cached prompts are not encoded again");
    assert!(!pipe.text_encoder_loaded());
}

#[test]
fn pipeline_16bit_variants_load_as_stored() {
    let exp = read_all(&fixture("sana-tiny/expected-16bit.safetensors"));
    for variant in ["bf16", "fp16"] {
        let mut pipe = load_pipeline("sana-tiny", Some(variant));
        assert!(pipe.files.transformer.weights.path().to_string_lossy().contains(variant));
        let mut req = T2iRequest::<B>::new(prompts(&[0, 1]), 64, 64);
        req.binning = false;
        req.noise = Some(t("dpm20_latents_in"));
        let out = pipe.generate(&req, &mut |_| {}, &AtomicBool::new(false)).unwrap();
        let emb = vals(out.conditioning.prompt_embeds.clone().narrow(0, 0, 1));
        let emb_err = max_abs_diff(&emb, &exp[&format!("{variant}_enc_p0_prompt_embeds")].data);
        let lat_err = max_abs_diff(&vals(out.latent), &exp[&format!("{variant}_dpm20_latent")].data);
        // Against the f32 goldens the 16-bit rounding shows (notes-16bit.json: 0.13 bf16, 0.015 fp16).
        let vs_f32 = max_abs_diff(&emb, &g("enc_p0_prompt_embeds").data);
        eprintln!("{variant}: embeds {emb_err:.2e}, latent {lat_err:.2e} against the reference from the same weights; embeds {vs_f32:.2e} against f32");
        assert!(emb_err < 5e-4 && lat_err < 1e-3, "{variant}");
        assert!(vs_f32 > 1e-3, "{variant}: the 16-bit weights were not used");
    }
}

fn dcae_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dcae"))
}

/// Every golden case through `dcae generate --prompt … --noise … [--step-noise …]`.
#[test]
fn cli_every_sampling_case() {
    let dir = tempfile::tempdir().unwrap();
    for p in ["dpm20", "euler10", "dpm5nocfg", "sprint1", "sprint2", "sprint4"] {
        let (ids, folder, sampler) = case_setup(p);
        let noise = dir.path().join(format!("{p}_noise.safetensors"));
        let lat = g(&format!("{p}_latents_in"));
        dcae::weights::tensor_file::write_f32(&noise, &[("noise", &lat.data, &lat.shape)], &[]).unwrap();
        let (latent_out, embeds_out, png) = (dir.path().join(format!("{p}_latent.safetensors")), dir.path().join(format!("{p}_embeds.safetensors")), dir.path().join(format!("{p}.png")));
        let mut cmd = dcae_bin();
        cmd.args(["generate", "--backend", "cpu", "--model"]).arg(fixture(folder));
        for prompt in prompts(&ids) {
            cmd.arg("--prompt").arg(prompt);
        }
        let steps = g(&format!("{p}_steps")).data[0] as usize;
        let cfg = g(&format!("{p}_guidance_scale")).data[0];
        cmd.args(["--width", "64", "--height", "64", "--no-binning", "--steps", &steps.to_string(), "--cfg", &cfg.to_string()]);
        cmd.arg("--noise").arg(&noise).arg("--latent-out").arg(&latent_out).arg("--text-embeds-out").arg(&embeds_out).arg("--out").arg(&png);
        if let Some(s) = sampler {
            cmd.args(["--sampler", s]);
        }
        if p.starts_with("sprint") {
            let sn = g(&format!("{p}_step_noise"));
            let path = dir.path().join(format!("{p}_step_noise.safetensors"));
            dcae::weights::tensor_file::write_f32(&path, &[("noise", &sn.data, &sn.shape)], &[]).unwrap();
            cmd.arg("--step-noise").arg(&path).args(["--max-timestep", "1.5708"]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{p}: {}", String::from_utf8_lossy(&out.stderr));
        let ours = read_all(&latent_out);
        let lat_err = max_abs_diff(&ours["latent"].data, &g(&format!("{p}_latent")).data);
        let embeds = read_all(&embeds_out);
        let ehs = g(&format!("{p}_encoder_hidden_states"));
        let emask = g(&format!("{p}_encoder_attention_mask"));
        let (mut e, mut m) = (Vec::new(), Vec::new());
        if let Some(neg) = embeds.get("negative_prompt_embeds") {
            e.extend_from_slice(&neg.data);
            m.extend_from_slice(&embeds["negative_prompt_attention_mask"].data);
        }
        e.extend_from_slice(&embeds["prompt_embeds"].data);
        m.extend_from_slice(&embeds["prompt_attention_mask"].data);
        let emb_err = max_abs_diff(&e, &ehs.data);
        eprintln!("cli {p}: latent {lat_err:.2e}, text embeddings {emb_err:.2e}");
        assert!(lat_err < 1e-3, "{p}: latent {lat_err}");
        assert!(emb_err < 5e-4, "{p}: embeddings {emb_err}");
        assert_eq!(m, emask.data, "{p}: masks");
        let text = dcae::imaging::read_png_text(&png).unwrap();
        let params = text.iter().find(|(k, _)| k == "parameters").map(|(_, v)| v.clone()).unwrap();
        let parsed = dcae::imaging::PromptParams::parse_parameters_text(&params).unwrap();
        assert_eq!(parsed.prompts, prompts(&ids), "{p}: prompts in the PNG");
        assert_eq!(parsed.steps, steps);
    }
}

/// Bad inputs: each error names the problem and says what to do; nothing panics.
#[test]
fn pipeline_bad_inputs_are_named() {
    let src = fixture("sana-tiny");
    let copy = |dir: &Path| {
        for entry in walk(&src) {
            let rel = entry.strip_prefix(&src).unwrap();
            let to = dir.join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&entry, &to).unwrap();
        }
    };
    let load_err = |dir: &Path| -> String {
        match resolve_pipeline_dir(dir, None) {
            Err(e) => e.to_string(),
            Ok(files) => match SanaPipeline::<B>::load(&files, "x", &device()) {
                Err(e) => e.to_string(),
                Ok(_) => "loaded".into(),
            },
        }
    };
    // A missing component folder.
    let d = tempfile::tempdir().unwrap();
    copy(d.path());
    std::fs::remove_dir_all(d.path().join("vae")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("vae/") && e.contains("missing"), "{e}");
    // Sharded transformer: good, then a missing shard, an index naming an absent file, and a
    // truncated shard.
    let d = tempfile::tempdir().unwrap();
    copy(d.path());
    let tdir = d.path().join("transformer");
    shard(&tdir.join("diffusion_pytorch_model.safetensors"), &tdir);
    std::fs::remove_file(tdir.join("diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(load_err(d.path()), "loaded");
    let second = tdir.join("diffusion_pytorch_model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&second).unwrap();
    std::fs::write(&second, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("truncated") && e.contains("00002"), "{e}");
    std::fs::remove_file(&second).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("00002") && e.contains("missing") && e.contains("download"), "{e}");
    std::fs::write(&second, &bytes).unwrap();
    let index = tdir.join("diffusion_pytorch_model.safetensors.index.json");
    let mut idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    idx["weight_map"]["proj_out.bias"] = "diffusion_pytorch_model-00009-of-00009.safetensors".into();
    std::fs::write(&index, serde_json::to_vec(&idx).unwrap()).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("00009") && e.contains("missing"), "{e}");
    // A corrupt tokenizer.json.
    let d = tempfile::tempdir().unwrap();
    copy(d.path());
    std::fs::write(d.path().join("tokenizer/tokenizer.json"), b"{\"model\": 12").unwrap();
    let e = load_err(d.path());
    assert!(e.contains("tokenizer.json"), "{e}");
    // A checkpoint of another family in the transformer folder (the DC-AE's), and a config of one.
    let d = tempfile::tempdir().unwrap();
    copy(d.path());
    std::fs::copy(d.path().join("vae/diffusion_pytorch_model.safetensors"), d.path().join("transformer/diffusion_pytorch_model.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("missing") && e.contains("unexpected") && e.contains("another model"), "{e}");
    std::fs::copy(d.path().join("vae/config.json"), d.path().join("transformer/config.json")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("AutoencoderDC") && e.contains("another model family"), "{e}");
    // A class-conditional folder given to --prompt, and an empty prompt.
    let out = dcae_bin().args(["generate", "--backend", "cpu", "--prompt", "a cat", "--model"]).arg(fixture("uvit-tiny")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("model_index.json") && err.contains("--class"), "{err}");
    let out = dcae_bin().args(["generate", "--backend", "cpu", "--prompt", "  ", "--width", "64", "--height", "64", "--model"]).arg(fixture("sana-tiny")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("empty"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Splits a safetensors file into two shards and writes the index, as diffusers' save does.
fn shard(file: &Path, dir: &Path) {
    let bytes = std::fs::read(file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let half = names.len() / 2;
    let mut map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].iter().enumerate() {
        let shard = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        std::fs::write(dir.join(&shard), safetensors::serialize(views, None).unwrap()).unwrap();
        for n in part.iter() {
            map.insert(n.clone(), shard.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join("diffusion_pytorch_model.safetensors.index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// The prompt-embedding cache kept every distinct prompt of the session (2.8 MB each on the
/// device at the real size); it now keeps the most recently used ones only.
#[test]
fn regression_prompt_embedding_cache_is_bounded_least_recently_used_first() {
    use dcae::model::sana::pipeline::PROMPT_CACHE_ENTRIES;
    let mut pipe = load_pipeline("sana-tiny", None);
    let cancel = AtomicBool::new(false);
    let encode = |pipe: &mut SanaPipeline<B>, i: usize| {
        pipe.encode(&[format!("prompt number {i}")], None, false, &mut |_| {}, &cancel).unwrap_or_else(|e| panic!("{e}"));
    };
    let n = PROMPT_CACHE_ENTRIES + 8;
    for i in 0..n {
        encode(&mut pipe, i);
    }
    assert_eq!(pipe.cached_prompts(), PROMPT_CACHE_ENTRIES);
    assert!(!pipe.is_cached("prompt number 0", false), "the oldest went first");
    assert!(pipe.is_cached(&format!("prompt number {}", n - 1), false));
    // Using the oldest survivor again keeps it; the next new prompt evicts the one after it.
    let survivor = n - PROMPT_CACHE_ENTRIES;
    encode(&mut pipe, survivor);
    encode(&mut pipe, n);
    assert!(pipe.is_cached(&format!("prompt number {survivor}"), false));
    assert!(!pipe.is_cached(&format!("prompt number {}", survivor + 1), false));
    assert_eq!(pipe.cached_prompts(), PROMPT_CACHE_ENTRIES);
}
