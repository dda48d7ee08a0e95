//! Tiled encode / decode: parity with diffusers' `tiled_encode` / `tiled_decode`
//! (tests/python/make_tiled_fixture.py: ae-tiny-sana, 32 px tiles, stride 24 px), tiled against
//! untiled, cancellation, refused configs, and `--tile` in the CLI.

use std::process::Command;

use burn::tensor::{Tensor, TensorData};
use dcae::model::tiling::{decode_within, fit, tiled_decode, tiled_encode, Budget, Fit, Stage, TileConfig, TileConfigError};
use dcae::model::Dcae;
use dcae::model::load::load_dcae_files;

use super::common::*;

const EXPECTED: &str = "tiled/expected.safetensors";
/// The fixture's `enable_tiling(32, 32, 24, 24)`.
const FIXTURE_TILES: TileConfig = TileConfig { tile: 32, stride: 24 };
/// The reference's own f32-vs-f64 spread is at most 2.3e-6 relative (notes.json); the issue
/// asks for diffusers' result within 1e-4.
const TOL: f32 = 1e-4;

fn tiny_sana() -> (usize, Dcae<B>) {
    let dir = fixture("ae-tiny-sana/diffusers");
    let (cfg, model) = load_dcae_files::<B>(&dir.join("config.json"), &dir.join("diffusion_pytorch_model.safetensors"), &device())
        .unwrap_or_else(|e| panic!("{e}"));
    (cfg.factor(), model)
}

fn always(_: usize, _: usize) -> bool {
    true
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    (a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).sum::<f64>() / a.len() as f64) as f32
}

fn check(what: &str, got: Tensor<B, 4>, want: &str) {
    let (want, shape) = read4(EXPECTED, want);
    assert_eq!(got.dims(), shape, "{what}: shape");
    let got = values(got);
    let (abs, rel) = (max_abs_diff(&got, &want), rel_err(&got, &want));
    eprintln!("{what}: max abs err {abs:.2e}, relative {rel:.2e}");
    assert!(abs <= TOL && rel <= TOL, "{what}: max abs err {abs:e}, relative {rel:e}");
}

#[test]
fn tiled_encode_and_decode_match_diffusers() {
    let (f, model) = tiny_sana();
    let z = tiled_encode(&model, f, tensor4(EXPECTED, "image"), &FIXTURE_TILES, &mut always).unwrap().unwrap();
    check("tiled latent", z, "tiled_latent");
    // Decoded from the untiled reference latent, so the decoder is checked on its own.
    let x = tiled_decode(&model, f, tensor4(EXPECTED, "latent"), &FIXTURE_TILES, &mut always).unwrap().unwrap();
    check("tiled recon", x, "tiled_recon");
    // 102×150: edge tiles zero-padded to the factor, the latent cropped to ⌊H/f⌋ × ⌊W/f⌋.
    let z = tiled_encode(&model, f, tensor4(EXPECTED, "ragged_image"), &FIXTURE_TILES, &mut always).unwrap().unwrap();
    check("tiled latent of a 102×150 image", z, "ragged_tiled_latent");
}

/// The memory budget picks the batch at once, image by image, or tiles, and each gives the
/// decode it stands for; progress counts images or tiles, and stopping it cancels.
#[test]
fn decode_within_a_budget_batches_splits_or_tiles() {
    let dir = fixture("ae-tiny-sana/diffusers");
    let (cfg, model) = load_dcae_files::<B>(&dir.join("config.json"), &dir.join("diffusion_pytorch_model.safetensors"), &device()).unwrap();
    let f = cfg.factor();
    let one = tensor4(EXPECTED, "latent");
    let [_, c, h, w] = one.dims();
    let z = Tensor::cat(vec![one.clone(), one.clone().mul_scalar(0.5)], 0); // two images
    let weights = Budget { bytes: 0, weight_copies: 2, max_tensor: None }.weight_bytes(&model);
    let need = |batch: usize, hh: usize, ww: usize| dcae::model::tiling::decode_bytes(&cfg, weights, batch, hh, ww);
    let (ih, iw) = (h * f, w * f);
    let untiled = values(model.decode(z.clone()));

    let mut calls = Vec::new();
    let run = |bytes: u64, calls: &mut Vec<(usize, usize)>| {
        calls.clear();
        let budget = Budget { bytes, weight_copies: 2, max_tensor: None };
        let y = decode_within(&model, &cfg, z.clone(), Some(budget), &mut |d, n| {
            calls.push((d, n));
            true
        });
        (fit(&cfg, weights, Stage::Decode, bytes, None, [2, ih, iw]), values(y.unwrap().unwrap()))
    };
    let (how, y) = run(need(2, ih, iw), &mut calls);
    assert_eq!(how, Fit::Batch);
    assert_eq!((max_abs_diff(&y, &untiled), calls.clone()), (0.0, vec![(0, 1), (1, 1)]));
    let (how, y) = run(need(1, ih, iw), &mut calls);
    assert_eq!(how, Fit::PerImage);
    assert!(max_abs_diff(&y, &untiled) < 1e-5, "image by image");
    assert_eq!(calls, vec![(0, 2), (1, 2), (2, 2)]);
    // Too little for one whole image: tiles small enough for the budget, blended as tested
    // above against diffusers; progress counts the tiles of both images.
    let (how, y) = run(need(1, ih / 2, iw / 2), &mut calls);
    let Fit::Tiled(t) = how else { panic!("{how:?}") };
    assert!(t.tile < ih.max(iw), "{t:?}");
    let per = t.decode_tiles(h, w, f);
    assert!(per > 1 && calls.len() > 2 * per && calls.last() == Some(&(2 * per, 2 * per)), "{per} tiles per image: {calls:?}");
    let first = values(tiled_decode(&model, f, z.clone().narrow(0, 0, 1), &t, &mut always).unwrap().unwrap());
    assert_eq!(max_abs_diff(&y[..first.len()], &first), 0.0, "the tiled path is tiled_decode");
    let _ = c;

    // Stopping in the middle cancels.
    let mut seen = 0;
    let stopped = decode_within(&model, &cfg, z.clone(), Some(Budget { bytes: need(1, ih, iw), weight_copies: 2, max_tensor: None }), &mut |_, _| {
        seen += 1;
        seen < 2
    });
    assert!(stopped.unwrap().is_none());
}

#[test]
fn tiled_against_untiled() {
    let (f, model) = tiny_sana();
    let image = tensor4(EXPECTED, "image");
    let untiled_z = values(model.encode(image.clone()));
    check("untiled latent", model.encode(image.clone()), "latent");
    let tiled_z = values(tiled_encode(&model, f, image.clone(), &FIXTURE_TILES, &mut always).unwrap().unwrap());
    eprintln!(
        "ae-tiny-sana 100×148, 32/24 px tiles: latent tiled vs untiled max {:.3e}, mean {:.3e} (max |latent| {:.2})",
        max_abs_diff(&tiled_z, &untiled_z),
        mean_abs_diff(&tiled_z, &untiled_z),
        max_abs(&untiled_z)
    );
    let latent = tensor4(EXPECTED, "latent");
    let untiled_x = values(model.decode(latent.clone()));
    let tiled_x = values(tiled_decode(&model, f, latent, &FIXTURE_TILES, &mut always).unwrap().unwrap());
    eprintln!(
        "ae-tiny-sana 100×148, 32/24 px tiles: recon tiled vs untiled max {:.3e}, mean {:.3e}",
        max_abs_diff(&tiled_x, &untiled_x),
        mean_abs_diff(&tiled_x, &untiled_x)
    );
    // An input that fits one tile is not tiled (as diffusers' encode / decode): identical.
    let one = TileConfig { tile: 160, stride: 128 };
    let z = values(tiled_encode(&model, f, image, &one, &mut always).unwrap().unwrap());
    assert_eq!(z, untiled_z, "one tile must be the untiled encode");

    // ae-wide (32–64 channels, the Winograd path) on a 128×192 image, 64 px tiles, stride 48.
    let dir = fixture("ae-wide");
    let (cfg, wide) = load_dcae_files::<B>(&dir.join("config.json"), &dir.join("diffusion_pytorch_model.safetensors"), &device())
        .unwrap_or_else(|e| panic!("{e}"));
    let (h, w) = (128, 192);
    let img: Vec<f32> = (0..3 * h * w)
        .map(|i| {
            let (c, y, x) = (i / (h * w), (i / w) % h, i % w);
            ((x as f32 * 0.05 + c as f32).sin() * (y as f32 * 0.03).cos()).clamp(-1.0, 1.0)
        })
        .collect();
    let x = Tensor::<B, 4>::from_data(TensorData::new(img, [1, 3, h, w]), &device());
    let t = TileConfig { tile: 64, stride: 48 };
    let f = cfg.factor();
    let z_full = wide.encode(x.clone());
    let z_tiled = tiled_encode(&wide, f, x, &t, &mut always).unwrap().unwrap();
    let (a, b) = (values(z_tiled), values(z_full.clone()));
    eprintln!(
        "ae-wide 128×192, 64/48 px tiles: latent tiled vs untiled max {:.3e}, mean {:.3e} (max |latent| {:.2})",
        max_abs_diff(&a, &b),
        mean_abs_diff(&a, &b),
        max_abs(&b)
    );
    let x_full = values(wide.decode(z_full.clone()));
    let x_tiled = values(tiled_decode(&wide, f, z_full, &t, &mut always).unwrap().unwrap());
    eprintln!(
        "ae-wide 128×192, 64/48 px tiles: recon tiled vs untiled max {:.3e}, mean {:.3e}",
        max_abs_diff(&x_tiled, &x_full),
        mean_abs_diff(&x_tiled, &x_full)
    );
    assert!(x_tiled.iter().all(|v| v.is_finite()));
}

#[test]
fn progress_counts_tiles_and_cancel_stops_between_tiles() {
    let (f, model) = tiny_sana();
    let image = tensor4(EXPECTED, "image");
    // 100×148 px at stride 24: 5 rows × 7 columns of tiles.
    assert_eq!(FIXTURE_TILES.encode_tiles(100, 148), 35);
    assert_eq!(FIXTURE_TILES.decode_tiles(25, 37, f), 35);
    let mut seen = Vec::new();
    let mut record = |d: usize, t: usize| {
        seen.push((d, t));
        true
    };
    assert!(tiled_decode(&model, f, tensor4(EXPECTED, "latent"), &FIXTURE_TILES, &mut record).unwrap().is_some());
    assert_eq!(seen, (0..=35).map(|d| (d, 35)).collect::<Vec<_>>());

    let mut calls = 0;
    let mut cancel_after_two = |d: usize, _: usize| {
        calls += 1;
        d < 2
    };
    let out = tiled_encode(&model, f, image.clone(), &FIXTURE_TILES, &mut cancel_after_two).unwrap();
    assert!(out.is_none(), "a cancelled run returns None");
    assert_eq!(calls, 3, "progress is asked before the first tile and after each: cancelled after the second");
    // Cancelled before any tile.
    assert!(tiled_decode(&model, f, tensor4(EXPECTED, "latent"), &FIXTURE_TILES, &mut |_, _| false).unwrap().is_none());
}

#[test]
fn bad_tile_configs_are_refused() {
    let (f, model) = tiny_sana();
    let bad = [
        (TileConfig { tile: 32, stride: 40 }, "larger than the tile"),
        (TileConfig { tile: 0, stride: 0 }, "positive"),
        (TileConfig { tile: 32, stride: 0 }, "positive"),
        (TileConfig { tile: 30, stride: 24 }, "multiples"),
        (TileConfig { tile: 32, stride: 22 }, "multiples"),
    ];
    for (t, words) in bad {
        let e = tiled_encode(&model, f, tensor4(EXPECTED, "image"), &t, &mut always).unwrap_err();
        assert!(e.to_string().contains(words), "{t:?}: {e}");
        assert!(tiled_decode(&model, f, tensor4(EXPECTED, "latent"), &t, &mut always).is_err());
    }
    assert!(matches!(TileConfig { tile: 8, stride: 9 }.validate(4), Err(TileConfigError::StrideLargerThanTile { .. })));
    // diffusers' 512 / 448 fits f32 and f64; 448 is not a multiple of 128.
    assert!(TileConfig::diffusers_default().validate(64).is_ok());
    let e = TileConfig::diffusers_default().validate(128).unwrap_err().to_string();
    assert!(e.contains("e.g. tile 512 px, stride 384 px"), "{e}");
    for factor in [32, 64, 128] {
        for t in [TileConfig::for_model(factor), TileConfig::with_tile(2048, factor)] {
            t.validate(factor).unwrap_or_else(|e| panic!("{t:?} at f{factor}: {e}"));
            assert!(t.stride < t.tile, "{t:?} has no overlap");
        }
    }
}

fn dcae_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dcae"))
}

#[test]
fn cli_tile_options() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, [_, _, h, w]) = read4(EXPECTED, "image");
    let png = tmp.path().join("in.png");
    dcae::imaging::to_rgb8(&img, h, w).unwrap().save(&png).unwrap();
    let model = fixture("ae-tiny-sana/diffusers");
    let run = |args: &[&str], budget: Option<&str>| {
        let mut c = dcae_bin();
        c.args(["reconstruct", "--backend", "cpu", "--json", "--model"]).arg(&model).arg(&png).args(args);
        match budget {
            Some(b) => c.env("DCAE_MEMORY_BUDGET_MB", b),
            None => c.env_remove("DCAE_MEMORY_BUDGET_MB"),
        };
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{args:?}: {err}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert!(report["psnr"].as_f64().is_some(), "{report}");
        err
    };
    let err = run(&["--tile", "64"], None);
    assert!(err.contains("encode: 64 px tiles") && err.contains("decode: 64 px tiles"), "{err}");
    // A tiny budget: auto tiles, and says why.
    let err = run(&["--tile", "auto"], Some("0.001"));
    assert!(err.contains("px tiles") && err.contains("DCAE_MEMORY_BUDGET_MB") && err.contains("> budget"), "{err}");
    // A large one: untiled.
    let err = run(&[], Some("100000"));
    assert!(err.contains("encode: untiled") && err.contains("within the budget"), "{err}");
    let err = run(&["--tile", "off"], Some("0.001"));
    assert!(err.contains("untiled (--tile off"), "{err}");

    // decode with diffusers' tiling through the CLI: the PNG equals the quantised reference.
    let out_dir = tmp.path().join("dec");
    let out = dcae_bin()
        .args(["decode", "--backend", "cpu", "--tile", "32", "--tile-stride", "24", "--model"])
        .arg(&model)
        .arg(fixture(EXPECTED))
        .arg("--out-dir")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = image::open(out_dir.join("00000.png")).unwrap().to_rgb8();
    let (want, _) = read4(EXPECTED, "tiled_recon");
    let want = dcae::imaging::to_rgb8(&want, h, w).unwrap();
    let worst = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "tiled decode PNG differs from diffusers' by {worst} levels");

    // A bad size is refused with the reason, not a panic.
    let out = dcae_bin()
        .args(["reconstruct", "--backend", "cpu", "--tile", "30", "--model"])
        .arg(&model)
        .arg(&png)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("multiples") && !err.contains("panicked"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Measurements on the real f32c32-in architecture with random weights (not run in CI):
//   DCAE_TILE_MEASURE=4096x3072 cargo test … --test integration tiling::measure_tiled_reconstruct -- --ignored --nocapture
//   cargo test … --test integration tiling::measure_tiled_vs_untiled -- --ignored --nocapture
// One per process, so that VmHWM is the run's own peak.

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn f32c32() -> (usize, Dcae<B>) {
    let cfg = dcae::model::DcaeConfig::published("dc-ae-f32c32-in-1.0").unwrap();
    let mut w = dcae::weights::RandomWeights::<B>::new(&device());
    (cfg.factor(), Dcae::load(&mut w, &cfg))
}

fn smooth(h: usize, w: usize) -> Tensor<B, 4> {
    let v: Vec<f32> = (0..3 * h * w)
        .map(|i| {
            let (c, y, x) = (i / (h * w), (i / w) % h, i % w);
            (0.8 * ((x as f32 * 0.011 + c as f32).sin() * (y as f32 * 0.007).cos())).clamp(-1.0, 1.0)
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [1, 3, h, w]), &device())
}

#[test]
#[ignore]
fn measure_tiled_reconstruct() {
    let size = std::env::var("DCAE_TILE_MEASURE").unwrap_or_else(|_| "4096x3072".into());
    let (w, h) = size.split_once('x').map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())).unwrap();
    let (f, model) = f32c32();
    // DCAE_TILE_PX: another tile size (a quarter overlap); DCAE_MEASURE_ONLY=encode skips the decode.
    let t = match std::env::var("DCAE_TILE_PX") {
        Ok(px) => TileConfig::with_tile(px.parse().unwrap(), f),
        Err(_) => TileConfig::for_model(f),
    };
    let encode_only = std::env::var("DCAE_MEASURE_ONLY").as_deref() == Ok("encode");
    eprintln!("f32c32-in random weights, {w}×{h}, tiles {t:?}; RSS after load {:.0} MiB", peak_rss_mib());
    let report = |what: &'static str| {
        let s = std::time::Instant::now();
        move |d: usize, n: usize| {
            eprintln!("{what} tile {d}/{n} at {:.1} s, peak RSS {:.0} MiB", s.elapsed().as_secs_f64(), peak_rss_mib());
            true
        }
    };
    // Decode first (the larger half of the weights and the larger activations), from a random
    // latent, so that a run cut short still shows the peak; then encode the image.
    let start = std::time::Instant::now();
    let mut dec_s = 0.0;
    if !encode_only {
        let z = Tensor::<B, 4>::random([1, 32, h / f, w / f], burn::tensor::Distribution::Normal(0.0, 1.0), &device());
        let y = tiled_decode(&model, f, z, &t, &mut report("decode")).unwrap().unwrap();
        let finite = values(y).iter().all(|x| x.is_finite());
        dec_s = start.elapsed().as_secs_f64();
        eprintln!("MEASURE {w}×{h} tiled decode {dec_s:.1} s, peak RSS {:.0} MiB, finite {finite}", peak_rss_mib());
    }
    let start = std::time::Instant::now();
    let z = tiled_encode(&model, f, smooth(h, w), &t, &mut report("encode")).unwrap().unwrap();
    let _ = values(z);
    let enc_s = start.elapsed().as_secs_f64();
    eprintln!(
        "MEASURE {w}×{h} tiled reconstruct: decode {dec_s:.1} s, encode {enc_s:.1} s, total {:.1} s, peak RSS {:.0} MiB",
        dec_s + enc_s,
        peak_rss_mib()
    );
}

/// `DCAE_TILE_MEASURE_N` (default 1024) sets the square size; `DCAE_MEASURE_DUMP=dir` writes the
/// untiled and tiled reconstructions and their difference ×16 as PNGs, to look at the seams.
#[test]
#[ignore]
fn measure_tiled_vs_untiled() {
    let (f, model) = f32c32();
    let n: usize = std::env::var("DCAE_TILE_MEASURE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let dump = std::env::var_os("DCAE_MEASURE_DUMP").map(std::path::PathBuf::from);
    let x = smooth(n, n);
    let s = std::time::Instant::now();
    let z = model.encode(x.clone());
    let x_full = values(model.decode(z.clone()));
    let z_full = values(z.clone());
    // f32::max skips NaN: count them, or a NaN output reads as a zero difference.
    let bad = |v: &[f32]| v.iter().filter(|x| !x.is_finite()).count();
    let std_dev = |v: &[f32]| {
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    eprintln!(
        "untiled {n}²: {:.1} s, peak RSS {:.0} MiB, non-finite latent {} recon {}; recon max |x| {:.3} std {:.3}",
        s.elapsed().as_secs_f64(),
        peak_rss_mib(),
        bad(&z_full),
        bad(&x_full),
        max_abs(&x_full),
        std_dev(&x_full)
    );
    let png = |name: &str, v: &[f32], scale: f32| {
        if let Some(dir) = &dump {
            let v: Vec<f32> = v.iter().map(|x| (x * scale).clamp(-1.0, 1.0)).collect();
            dcae::imaging::to_rgb8(&v, n, n).unwrap().save(dir.join(name)).unwrap();
        }
    };
    png(&format!("untiled_{n}.png"), &x_full, 1.0);
    for t in [TileConfig::for_model(f), TileConfig { tile: 512, stride: 384 }, TileConfig::diffusers_default()] {
        let s = std::time::Instant::now();
        let zt = values(tiled_encode(&model, f, x.clone(), &t, &mut always).unwrap().unwrap());
        let xt = values(tiled_decode(&model, f, z.clone(), &t, &mut always).unwrap().unwrap());
        // A seam is a difference that gathers where tiles meet: the mean in a band of ±16 px
        // around each tile edge against the mean elsewhere.
        let overlap = t.tile - t.stride;
        let near_edge = |p: usize| {
            (1..).map(|k| k * t.stride).take_while(|&e| e < n).any(|e| p + 16 >= e && p <= e + overlap + 16)
        };
        let (mut band, mut nb, mut rest, mut nr) = (0f64, 0usize, 0f64, 0usize);
        for (i, (a, b)) in xt.iter().zip(&x_full).enumerate() {
            let (y, xx) = ((i / n) % n, i % n);
            let d = (a - b).abs() as f64;
            if near_edge(y) || near_edge(xx) {
                band += d;
                nb += 1;
            } else {
                rest += d;
                nr += 1;
            }
        }
        eprintln!(
            "MEASURE {n}² {}/{}: latent tiled vs untiled max {:.3e} mean {:.3e} (max |z| {:.2}); recon max {:.3e} mean {:.3e} (max |x| {:.2}); recon mean at tile edges {:.3e}, elsewhere {:.3e}; {:.1} s",
            t.tile,
            t.stride,
            max_abs_diff(&zt, &z_full),
            mean_abs_diff(&zt, &z_full),
            max_abs(&z_full),
            max_abs_diff(&xt, &x_full),
            mean_abs_diff(&xt, &x_full),
            max_abs(&x_full),
            band / nb.max(1) as f64,
            rest / nr.max(1) as f64,
            s.elapsed().as_secs_f64()
        );
        png(&format!("tiled_{n}_{}_{}.png", t.tile, t.stride), &xt, 1.0);
        let diff: Vec<f32> = xt.iter().zip(&x_full).map(|(a, b)| a - b).collect();
        png(&format!("diff16_{n}_{}_{}.png", t.tile, t.stride), &diff, 16.0);
    }
}
