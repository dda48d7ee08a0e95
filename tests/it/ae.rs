//! DC-AE: parity with the PyTorch goldens (both checkpoint layouts, library and CLI), key
//! manifests of the real checkpoints, the delicate ops on their own, and bad checkpoints.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use burn::tensor::{Distribution, Tensor, TensorData};
use dcae::model::dcae::{linear_attention, quadratic_attention};
use dcae::model::layers::{channel_average, pixel_shuffle, pixel_unshuffle, repeat_channels, upsample_nearest2};
use dcae::model::{Dcae, DcaeConfig};
use dcae::weights::keys::{to_diffusers, Stored};
use dcae::model::load::load_dcae_files;
use dcae::weights::KeyRecorder;

use super::common::*;

/// Tolerances. The goldens' own spread: diffusers vs the original implementation differ by at
/// most 5.7e-6 (latent, values up to 14) and 1.5e-6 (recon); f32 vs f64 by 4.7e-6. The issue
/// asks for 1e-4 relative to the tensor's largest magnitude; the golden README suggests 1e-4
/// absolute, which is tighter for latents (values up to 14) and still catches the smallest
/// structural mistake it lists (RMSNorm eps 1e-6 instead of 1e-5: 5.9e-4 on the latent).
const REL_TOL: f32 = 1e-4;
const ABS_TOL: f32 = 1e-4;

const CASES: [&str; 2] = ["ae-tiny-in", "ae-tiny-sana"];
/// Folder (relative to tests/fixtures) and weights file of each layout of a case.
fn layouts(case: &str) -> [(String, &'static str); 2] {
    [(case.to_string(), "model.safetensors"), (format!("{case}/diffusers"), "diffusion_pytorch_model.safetensors")]
}

fn load(dir: &str, weights: &str) -> (DcaeConfig, Dcae<B>) {
    load_dcae_files::<B>(&fixture(dir).join("config.json"), &fixture(dir).join(weights), &device())
        .unwrap_or_else(|e| panic!("loading {dir}: {e}"))
}

fn check(what: &str, got: &[f32], want: &[f32]) {
    let (abs, rel) = (max_abs_diff(got, want), rel_err(got, want));
    eprintln!("{what}: max abs err {abs:.2e}, relative {rel:.2e}");
    assert!(abs <= ABS_TOL && rel <= REL_TOL, "{what}: max abs err {abs:e}, relative {rel:e}");
}

#[test]
fn parity_with_goldens_both_layouts() {
    for case in CASES {
        let expected = format!("{case}/expected.safetensors");
        for (dir, weights) in layouts(case) {
            let (_, model) = load(&dir, weights);
            for prefix in ["", "small_"] {
                let image = tensor4(&expected, &format!("{prefix}image"));
                let (latent_ref, _) = read4(&expected, &format!("{prefix}latent"));
                let (recon_ref, _) = read4(&expected, &format!("{prefix}recon"));
                let latent = values(model.encode(image));
                check(&format!("{dir} {prefix}latent"), &latent, &latent_ref);
                // The decoder is checked on the stored latent, independently of the encoder.
                let recon = values(model.decode(tensor4(&expected, &format!("{prefix}latent"))));
                check(&format!("{dir} {prefix}recon"), &recon, &recon_ref);
            }
        }
    }
}

/// A model wide enough for the CPU backend's Winograd convolutions (its ResBlocks: 32 channels
/// at 64×64, 64 at 32×32), which the tiny goldens never reach. Reference from diffusers
/// (tests/python/make_ae_wide.py), whose own f32-vs-f64 spread is 5.1e-7 / 6.7e-7 relative.
#[test]
fn parity_on_a_model_that_takes_the_winograd_path() {
    let expected = "ae-wide/expected.safetensors";
    let (_, model) = load("ae-wide", "diffusion_pytorch_model.safetensors");
    let latent = values(model.encode(tensor4(expected, "image")));
    check("ae-wide latent", &latent, &read4(expected, "latent").0);
    let recon = values(model.decode(tensor4(expected, "latent")));
    check("ae-wide recon", &recon, &read4(expected, "recon").0);
}

fn dcae_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dcae"))
}

#[test]
fn parity_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    for case in CASES {
        let expected = format!("{case}/expected.safetensors");
        let (latent_ref, _) = read4(&expected, "latent");
        let (recon_ref, _) = read4(&expected, "recon");
        for (dir, _) in layouts(case) {
            let (lat, rec) = (tmp.path().join("l.safetensors"), tmp.path().join("r.safetensors"));
            let out = dcae_bin()
                .args(["reconstruct", "--backend", "cpu", "--model"])
                .arg(fixture(&dir))
                .arg(fixture(&format!("{case}/input.png")))
                .arg("--latent-out")
                .arg(&lat)
                .arg("--recon-out")
                .arg(&rec)
                .arg("--json")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
            assert!(report["psnr"].as_f64().is_some() && report["ssim"].as_f64().is_some(), "{report}");
            let latent = dcae::weights::tensor_file::read_nchw(&lat, "latent").unwrap();
            check(&format!("cli {dir} latent"), &latent.data, &latent_ref);
            // The CLI decodes its own latent; its recon is compared with the golden recon of
            // the golden latent, so encoder error propagates: still far inside the tolerance.
            let recon = dcae::weights::tensor_file::read_nchw(&rec, "recon").unwrap();
            check(&format!("cli {dir} recon"), &recon.data, &recon_ref);

            // decode: golden latent in, PNG out, equal to the quantised golden recon.
            let out_dir = tmp.path().join("dec");
            let st = dcae_bin()
                .args(["decode", "--backend", "cpu", "--model"])
                .arg(fixture(&dir))
                .arg(fixture(&expected))
                .arg("--out-dir")
                .arg(&out_dir)
                .output()
                .unwrap();
            // expected.safetensors holds `latent` (and more): decode reads only `latent`.
            assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
            let png = image::open(out_dir.join("00000.png")).unwrap().to_rgb8();
            let (_, [_, _, h, w]) = read4(&expected, "recon");
            let want = dcae::imaging::to_rgb8(&recon_ref, h, w).unwrap();
            let worst = png.as_raw().iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            assert!(worst <= 1, "decoded PNG differs from the golden recon by {worst} levels");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests of the real checkpoints: the loader asks for exactly their keys and shapes.

/// key → shape (None for `num_batches_tracked`, a 0-d counter the loader ignores).
type KeyShapes = BTreeMap<String, Option<Vec<usize>>>;

fn manifest(file: &str) -> KeyShapes {
    let text = std::fs::read_to_string(fixture(&format!("manifests/{file}"))).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split('\t');
            let key = cols.next().unwrap().to_string();
            let shape: Vec<usize> =
                serde_json::from_str(cols.next().unwrap()).unwrap_or_else(|e| panic!("bad shape in {file}: {l}: {e}"));
            let shape = if key.ends_with("num_batches_tracked") { None } else { Some(shape) };
            (key, shape)
        })
        .collect()
}

fn recorded(name: &str) -> KeyShapes {
    let cfg = DcaeConfig::published(name).unwrap();
    let mut rec = KeyRecorder::<B>::new(&device());
    let _ = Dcae::load(&mut rec, &cfg);
    rec.keys.into_iter().collect()
}

fn as_diffusers(original: &KeyShapes) -> KeyShapes {
    let mut out = KeyShapes::new();
    for (key, shape) in original {
        match to_diffusers(key).unwrap_or_else(|| panic!("no diffusers name for {key}")) {
            Stored::Copy(k) => {
                out.insert(k, shape.clone());
            }
            Stored::Squeezed(k) => {
                out.insert(k, shape.as_ref().map(|s| s[..2].to_vec()));
            }
            Stored::QkvThirds(ks) => {
                let s = shape.as_ref().unwrap();
                for k in ks {
                    out.insert(k, Some(vec![s[0] / 3, s[1]]));
                }
            }
        }
    }
    out
}

fn assert_same(what: &str, got: &KeyShapes, want: &KeyShapes) {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let shapes: Vec<_> = want.iter().filter(|(k, s)| got.get(*k).is_some_and(|g| g != *s)).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && shapes.is_empty(),
        "{what}: not asked for {missing:?}; asked for but absent {extra:?}; other shape {shapes:?}"
    );
}

#[test]
fn loader_expects_exactly_the_manifest_keys() {
    // mix shares in's architecture, sana-1.1 shares sana-1.0's (manifests/README.md).
    let cases = [
        ("dc-ae-f32c32-in-1.0", "dc-ae-f32c32-in-1.0"),
        ("dc-ae-f32c32-mix-1.0", "dc-ae-f32c32-in-1.0"),
        ("dc-ae-f64c128-in-1.0", "dc-ae-f64c128-in-1.0"),
        ("dc-ae-f64c128-mix-1.0", "dc-ae-f64c128-in-1.0"),
        ("dc-ae-f128c512-in-1.0", "dc-ae-f128c512-in-1.0"),
        ("dc-ae-f128c512-mix-1.0", "dc-ae-f128c512-in-1.0"),
        ("dc-ae-f32c32-sana-1.0", "dc-ae-f32c32-sana-1.0"),
        ("dc-ae-f32c32-sana-1.1", "dc-ae-f32c32-sana-1.0"),
    ];
    for (name, manifest_name) in cases {
        let got = recorded(name);
        assert_same(&format!("{name} (efficientvit)"), &got, &manifest(&format!("{manifest_name}.evit.tsv")));
        assert_same(&format!("{name} (diffusers)"), &as_diffusers(&got), &manifest(&format!("{manifest_name}.diffusers.tsv")));
    }
}

#[test]
fn key_mapping_matches_the_conversion_script() {
    for name in ["dc-ae-f32c32-in-1.0", "dc-ae-f64c128-in-1.0", "dc-ae-f128c512-in-1.0", "dc-ae-f32c32-sana-1.0"] {
        let text = std::fs::read_to_string(fixture(&format!("manifests/{name}.mapping.tsv"))).unwrap();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let cols: Vec<_> = line.split('\t').collect();
            let (orig, diff, how) = (cols[0], cols[1], cols[2]);
            let got = to_diffusers(orig).unwrap_or_else(|| panic!("{orig} unmapped"));
            let ok = match (&got, how) {
                (Stored::Copy(k), "copy") | (Stored::Squeezed(k), "squeeze") => k == diff,
                (Stored::QkvThirds(ks), h) if h.starts_with("qkv_split:") => {
                    let i: usize = h["qkv_split:".len()..].parse().unwrap();
                    ks[i] == diff
                }
                _ => false,
            };
            assert!(ok, "{orig}: mapped to {got:?}, the script writes {diff} ({how})");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The delicate pieces on their own, against index formulas written from the PyTorch docs.

fn arange4(shape: [usize; 4]) -> (Vec<f32>, Tensor<B, 4>) {
    let v: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| i as f32).collect();
    (v.clone(), Tensor::from_data(TensorData::new(v, shape), &device()))
}

#[test]
fn pixel_unshuffle_channel_order_and_inverse() {
    let (b, c, h, w, r) = (2, 3, 4, 6, 2);
    let (v, x) = arange4([b, c, h, w]);
    let y = values(pixel_unshuffle(x.clone(), r));
    let (ho, wo) = (h / r, w / r);
    for bi in 0..b {
        for ci in 0..c {
            for i in 0..r {
                for j in 0..r {
                    for hh in 0..ho {
                        for ww in 0..wo {
                            // output channel c·r² + i·r + j holds x[c, h·r+i, w·r+j]
                            let oc = ci * r * r + i * r + j;
                            let got = y[((bi * c * r * r + oc) * ho + hh) * wo + ww];
                            let want = v[((bi * c + ci) * h + hh * r + i) * w + ww * r + j];
                            assert_eq!(got, want);
                        }
                    }
                }
            }
        }
    }
    assert_eq!(values(pixel_shuffle(pixel_unshuffle(x, r), r)), v, "pixel_shuffle must invert pixel_unshuffle");
}

#[test]
fn repeat_interleave_average_and_nearest() {
    let (v, x) = arange4([1, 3, 2, 2]);
    let y = values(repeat_channels(x.clone(), 2));
    // channel c → output channels 2c and 2c+1 (interleaved, not tiled)
    for c in 0..6 {
        assert_eq!(&y[c * 4..c * 4 + 4], &v[(c / 2) * 4..(c / 2) * 4 + 4]);
    }
    // averaging groups of consecutive channels undoes the repeat
    assert_eq!(values(channel_average(repeat_channels(x.clone(), 4), 4)), v);
    let (_, x2) = arange4([1, 4, 1, 1]);
    assert_eq!(values(channel_average(x2, 2)), vec![0.5, 2.5]);
    let up = values(upsample_nearest2(x));
    assert_eq!(&up[..8], &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
}

#[test]
fn linear_and_quadratic_attention_agree() {
    for n in [6, 16, 32, 40] {
        let rand = || Tensor::<B, 4>::random([2, 3, 32, n], Distribution::Normal(0.0, 1.0), &device());
        let (q, k, v) = (rand().clamp_min(0.0), rand().clamp_min(0.0), rand());
        let a = values(linear_attention(q.clone(), k.clone(), v.clone()));
        let b = values(quadratic_attention(q, k, v));
        let err = rel_err(&a, &b);
        assert!(err < 1e-5, "N={n}: linear vs quadratic relative error {err:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad checkpoints: each error names the problem.

/// Rewrites a safetensors file, letting `edit` rename, drop or replace tensors.
fn rewrite(src: &Path, dst: &Path, edit: impl Fn(&str, Vec<usize>, Vec<u8>) -> Option<(String, Vec<usize>, Vec<u8>)>) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept = Vec::new();
    for (name, view) in st.tensors() {
        if let Some(t) = edit(&name, view.shape().to_vec(), view.data().to_vec()) {
            kept.push((t, view.dtype()));
        }
    }
    let views: Vec<_> = kept
        .iter()
        .map(|((n, s, d), dt)| (n.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), d).unwrap()))
        .collect();
    std::fs::write(dst, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn load_err(config: &Path, weights: &Path) -> String {
    match load_dcae_files::<B>(config, weights, &device()) {
        Ok(_) => panic!("{} loaded without error", weights.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_checkpoints_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fixture("ae-tiny-in/config.json");
    let src = fixture("ae-tiny-in/model.safetensors");
    let key = "encoder.stages.1.op_list.0.main.conv1.conv.weight";

    // Truncated file.
    let bytes = std::fs::read(&src).unwrap();
    let truncated = tmp.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&cfg, &truncated);
    assert!(e.contains("truncated") && e.contains("truncated.safetensors"), "{e}");

    // Garbage.
    let garbage = tmp.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    let e = load_err(&cfg, &garbage);
    assert!(e.contains("not a valid safetensors file"), "{e}");

    // Renamed key: the old name is missing, the new one unexpected.
    let renamed = tmp.path().join("renamed.safetensors");
    rewrite(&src, &renamed, |n, s, d| Some((if n == key { "encoder.renamed.weight".into() } else { n.into() }, s, d)));
    let e = load_err(&cfg, &renamed);
    assert!(e.contains(&format!("missing key `{key}`")) && e.contains("unexpected key `encoder.renamed.weight`"), "{e}");

    // Wrong shape (same bytes, reshaped).
    let reshaped = tmp.path().join("reshaped.safetensors");
    rewrite(&src, &reshaped, |n, s, d| {
        let s = if n == key { vec![s.iter().product::<usize>()] } else { s };
        Some((n.into(), s, d))
    });
    let e = load_err(&cfg, &reshaped);
    assert!(e.contains(&format!("key `{key}` has shape [")) && e.contains("expected [16, 16, 3, 3]"), "{e}");

    // Missing file.
    let e = load_err(&cfg, &tmp.path().join("nope.safetensors"));
    assert!(e.contains("nope.safetensors"), "{e}");

    // A checkpoint of another model (sana weights, in config).
    let e = load_err(&cfg, &fixture("ae-tiny-sana/model.safetensors"));
    assert!(e.contains("does not match") && e.contains("missing") && e.contains("unexpected"), "{e}");

    // A file with no DC-AE weights at all (a tensor file of the CLI).
    let e = load_err(&cfg, &fixture("ae-tiny-in/expected.safetensors"));
    assert!(e.contains("holds no DC-AE weights"), "{e}");
}

#[test]
fn cli_rejects_non_images_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("notes.png");
    std::fs::write(&text, "hello, not a picture").unwrap();
    let out = dcae_bin()
        .args(["reconstruct", "--backend", "cpu", "--model"])
        .arg(fixture("ae-tiny-in"))
        .arg(&text)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("notes.png") && !err.contains("panicked"), "{err}");
}

/// A diffusers config with these per-stage widths and depths (ResBlocks, 4 latent channels).
fn diffusers_config(widths: &[usize], enc_depths: &[usize], dec_depths: &[usize]) -> serde_json::Value {
    let n = widths.len();
    serde_json::json!({
        "_class_name": "AutoencoderDC",
        "encoder_block_out_channels": widths,
        "decoder_block_out_channels": widths,
        "encoder_layers_per_block": enc_depths,
        "decoder_layers_per_block": dec_depths,
        "encoder_block_types": vec!["ResBlock"; n],
        "decoder_block_types": vec!["ResBlock"; n],
        "decoder_norm_types": vec!["rms_norm"; n],
        "decoder_act_fns": vec!["silu"; n],
        "latent_channels": 4,
    })
}

#[test]
fn config_with_a_zero_width_is_an_error_not_a_panic() {
    for widths in [[0usize, 16, 64], [8, 0, 64], [8, 16, 0]] {
        let v = diffusers_config(&widths, &[1, 1, 1], &[1, 1, 1]);
        let got = std::panic::catch_unwind(|| DcaeConfig::from_json(&v, "zero"));
        let Ok(result) = got else { panic!("widths {widths:?}: validating the config panicked") };
        let err = result.expect_err("a zero width must be refused").to_string();
        assert!(err.contains("width 0"), "widths {widths:?}: {err}");
    }
    // Ragged per-stage lists are refused too (the model code indexes them by stage).
    let mut v = diffusers_config(&[8, 16], &[1, 1], &[1, 1]);
    v["decoder_act_fns"] = serde_json::json!(["silu"]);
    assert!(std::panic::catch_unwind(|| DcaeConfig::from_json(&v, "ragged")).is_ok_and(|r| r.is_err()));
}

/// As in the real in / mix models, stage 0 is empty: the pixel-(un)shuffle head does the
/// resampling and no shortcut joins widths 8 and 12, so they need not divide.
#[test]
fn config_with_an_empty_first_stage_skips_the_shortcut_rule_and_runs() {
    let v = diffusers_config(&[8, 12], &[0, 1], &[0, 1]);
    let cfg = DcaeConfig::from_json(&v, "empty-first").unwrap_or_else(|e| panic!("refused: {e}"));
    assert_eq!(cfg.factor(), 2);
    let model = Dcae::<B>::load(&mut dcae::weights::RandomWeights::<B>::new(&device()), &cfg);
    let x = Tensor::<B, 4>::random([1, 3, 8, 8], Distribution::Uniform(-1.0, 1.0), &device());
    let z = model.encode(x);
    assert_eq!(z.dims(), [1, 4, 4, 4]);
    let y = model.decode(z);
    assert_eq!(y.dims(), [1, 3, 8, 8]);
    let y = values(y);
    assert!(y.iter().all(|v| v.is_finite()));
    // The head's RMSNorm γ (`project_out.op_list.0.weight`, no "norm" in its key) must be a
    // norm's 1 in a random model, not a weight's 0, or every random decode is blank.
    assert!(y.iter().any(|v| v.abs() > 1e-3), "random decoder output is all zero");
    // With blocks in stage 0 there is a shortcut 8 → 12, which cannot regroup the channels.
    let v = diffusers_config(&[8, 12], &[1, 1], &[1, 1]);
    let err = DcaeConfig::from_json(&v, "full-first").expect_err("8 → 12 with a shortcut").to_string();
    assert!(err.contains("8 → 12"), "{err}");
}

/// The same zero width through the CLI: an error message and exit code 1, not a panic (101).
#[test]
fn cli_zero_width_config_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("zero");
    std::fs::create_dir_all(&dir).unwrap();
    let v = diffusers_config(&[8, 0, 64], &[0, 1, 1], &[0, 1, 1]);
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    std::fs::copy(fixture("ae-tiny-in/diffusers/diffusion_pytorch_model.safetensors"), dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let out = dcae_bin()
        .args(["reconstruct", "--backend", "cpu", "--model"])
        .arg(&dir)
        .arg(fixture("ae-tiny-in/input.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("width 0") && !stderr.contains("panicked"), "{stderr}");
}

/// A diffusers-layout model from the Hugging Face cache is named by its repo id, not by the
/// snapshot folder (a commit hash) its config.json sits in.
#[test]
fn cli_names_a_hub_model_by_its_repo_id() {
    let tmp = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo_dir = tmp.path().join("models--someone--dc-ae-tiny");
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(fixture("ae-tiny-in/diffusers").join(f), snapshot.join(f)).unwrap();
    }
    let out = dcae_bin()
        .env("HF_HUB_CACHE", tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .args(["reconstruct", "--backend", "cpu", "--json", "--model", "someone/dc-ae-tiny"])
        .arg(fixture("ae-tiny-in/input.png"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["model"], "someone/dc-ae-tiny", "{stdout}");
}

/// f16 on the wgpu backend (lavapipe on a machine without a GPU): weights and activations in
/// f16 with the norms and LiteMLA in f32, against the f32 goldens; and the guard, which runs a
/// call again in f32 when f16 overflows. Nothing to check where the adapter has no f16.
#[cfg(feature = "wgpu")]
#[test]
fn ae_f16_on_wgpu_within_its_tolerance_and_overflow_reruns_in_f32() {
    use dcae::cli::parity::F16_RELATIVE_TOLERANCE;
    use dcae::engine::backend::Gpu;
    use dcae::model::precision::{f16_available, Precision};
    let device = burn::backend::wgpu::WgpuDevice::default();
    if !f16_available::<Gpu>(&device) {
        eprintln!("this wgpu adapter has no f16: nothing to check");
        return;
    }
    let dir = fixture("ae-tiny-in");
    let (_, m32) = load_dcae_files::<Gpu>(&dir.join("config.json"), &dir.join("model.safetensors"), &device).unwrap();
    let m16 = m32.clone().with_precision(Precision::F16);
    assert_eq!((m32.precision(), m16.precision()), (Precision::F32, Precision::F16));
    let on_gpu = |rel: &str, name: &str| {
        let (v, s) = read4(rel, name);
        Tensor::<Gpu, 4>::from_data(TensorData::new(v, s), &device)
    };
    let gpu_values = |t: Tensor<Gpu, 4>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let expected = "ae-tiny-in/expected.safetensors";
    let (latent_ref, _) = read4(expected, "latent");
    let (recon_ref, _) = read4(expected, "recon");
    for (what, run, want) in [
        ("latent", Box::new(|m: &Dcae<Gpu>| gpu_values(m.encode(on_gpu(expected, "image")))) as Box<dyn Fn(&Dcae<Gpu>) -> Vec<f32>>, &latent_ref),
        ("recon", Box::new(|m: &Dcae<Gpu>| gpu_values(m.decode(on_gpu(expected, "latent")))), &recon_ref),
    ] {
        let (e32, e16) = (max_abs_diff(&run(&m32), want), max_abs_diff(&run(&m16), want));
        eprintln!("wgpu {what}: f32 max abs err {e32:.2e}, f16 {e16:.2e} (max |ref| {:.2})", max_abs(want));
        assert!(e16 <= F16_RELATIVE_TOLERANCE as f32 * max_abs(want), "f16 {what}: max abs err {e16:e}");
        // f16 really ran: its rounding shows (f32 on the same device is ~1e-6 here).
        assert!(e16 > 10.0 * e32, "f16 {what} ({e16:e}) is as close as f32 ({e32:e}): was anything cast?");
    }
    assert_eq!(m16.f32_reruns(), 0, "nothing should overflow on the goldens");

    // An image ×10⁶ does not fit in f16 (its largest value is 65504), so the f16 call gives
    // infinities and the guard runs it again in f32.
    let huge = on_gpu(expected, "image").mul_scalar(1e6);
    let got = gpu_values(m16.encode(huge.clone()));
    assert_eq!(m16.f32_reruns(), 1);
    assert!(got.iter().all(|v| v.is_finite()));
    let want = gpu_values(m32.encode(huge));
    // The rerun keeps the f16-rounded weights: relative error ~ f16's 2⁻¹¹ per weight.
    let rel = max_abs_diff(&got, &want) / max_abs(&want);
    eprintln!("overflowing input: rerun in f32, relative difference to the f32 model {rel:.2e}");
    assert!(rel < 1e-2, "{rel}");
}

/// Regression: `DcaeConfig::validate` refused an EfficientViT stage whose width is not a
/// multiple of 32 even where the config's `attention_head_dim` divides it, as diffusers allows:
/// a 48-wide attention stage with 16-wide heads (3 heads; widths 48 → 96 → 48, which the
/// shortcuts can resample) loads and runs; a 40-wide one, which 16 does not divide, is still
/// refused, naming the head width.
#[test]
fn efficientvit_width_divided_by_the_configs_head_dim_but_not_by_32_is_accepted() {
    use dcae::model::load::dcae_config_from_json;
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("ae-wide/config.json")).unwrap()).unwrap();
    let with = |width: usize| {
        let mut v = base.clone();
        v["attention_head_dim"] = 16.into();
        for k in ["encoder_block_out_channels", "decoder_block_out_channels"] {
            v[k] = serde_json::json!([48, 96, width]);
        }
        dcae_config_from_json(&v, "ae-wide-heads-of-16")
    };
    let cfg = with(48).unwrap_or_else(|e| panic!("a 48-wide stage of 16-wide heads was refused: {e}"));
    assert_eq!(cfg.attention_head_dim, 16);
    let m = Dcae::<B>::load(&mut dcae::weights::RandomWeights::<B>::new(&device()), &cfg);
    let x = Tensor::<B, 4>::random([1, 3, 32, 32], Distribution::Uniform(-1.0, 1.0), &device());
    let y = values(m.decode(m.encode(x)));
    assert_eq!(y.len(), 3 * 32 * 32);
    assert!(y.iter().all(|v| v.is_finite()));
    let err = with(40).map(|_| ()).expect_err("a 40-wide stage cannot hold 16-wide heads");
    assert!(err.to_string().contains("attention_head_dim 16"), "{err}");
}

/// A latent file whose batch is 0 reached burn's broadcast in `dcae decode` and panicked there
/// (exit 101); every tensor read from a file is checked for empty dimensions first.
#[test]
fn regression_cli_latent_with_an_empty_batch_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    for shape in [[0usize, 4, 2, 2], [1, 4, 0, 2]] {
        let path = tmp.path().join("empty.safetensors");
        dcae::weights::tensor_file::write_f32(&path, &[("latent", &[], &shape)], &[]).unwrap();
        let out = dcae_bin()
            .args(["decode", "--backend", "cpu", "--model"])
            .arg(fixture("ae-tiny-in/diffusers"))
            .arg(&path)
            .arg("--out-dir")
            .arg(tmp.path().join("out"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{shape:?}: {stderr}");
        assert!(stderr.contains("length 0") && !stderr.contains("panicked"), "{shape:?}: {stderr}");
    }
}
