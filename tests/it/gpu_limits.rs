//! The device's largest tensor (`model::limits`): weights over it held in parts by output
//! channel, activations tiled under it, the run refused before any work when even the smallest
//! tile is over it; on the CPU under a thread cap, and on lavapipe (CI's Vulkan) with the device
//! opened under an emulated binding limit, against the goldens. Also: a GPU engine that fails
//! its first job moves to the CPU.

use std::process::Command;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use dcae::model::config::DcaeConfig;
use dcae::model::limits::cap_this_thread;
use dcae::model::load::load_dcae_files;
use dcae::model::precision::Precision;
use dcae::model::tiling::{encode_within, decode_within, fit, largest_tensor_per_pixel, Budget, Fit, Stage, TensorCap, TileConfig};
use dcae::model::Dcae;

use super::common::*;

/// Counts the parameter tensors of a module: a split weight adds one per part.
struct CountTensors(usize);

impl<B: Backend> ModuleVisitor<B> for CountTensors {
    fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<B, D>>) {
        self.0 += 1;
    }
}

fn tensors<B: Backend>(m: &Dcae<B>) -> usize {
    let mut c = CountTensors(0);
    m.visit(&mut c);
    c.0
}

fn load<B: Backend>(which: &str, device: &B::Device) -> Dcae<B> {
    let dir = fixture(which);
    let (config, weights) = if which.ends_with("diffusers") {
        (dir.join("config.json"), dir.join("diffusion_pytorch_model.safetensors"))
    } else {
        (dir.join("config.json"), dir.join("model.safetensors"))
    };
    load_dcae_files::<B>(&config, &weights, device).unwrap_or_else(|e| panic!("{e}")).1
}

/// 64 KiB: over the activations of the goldens' 16×24 images, under the tiny models' largest
/// weights (the 128 KiB GLUMBConv expansions and the 144 KiB up-convolution of ae-tiny-in).
const SPLIT_CAP: u64 = 64 << 10;

#[test]
fn weights_over_the_cap_are_split_and_give_the_same_result() {
    for which in ["ae-tiny-in", "ae-tiny-sana"] {
        let whole = load::<B>(which, &device());
        let split = {
            let _cap = cap_this_thread(SPLIT_CAP);
            load::<B>(which, &device())
        };
        let (n_whole, n_split) = (tensors(&whole), tensors(&split));
        assert!(n_split > n_whole, "{which}: {n_split} tensors under the cap, {n_whole} without: nothing was split");
        assert_eq!(whole.num_params(), split.num_params(), "{which}: the parts add up to the whole");
        let expected = format!("{which}/expected.safetensors");
        let z_whole = values(whole.encode(tensor4(&expected, "small_image")));
        let z_split = values(split.encode(tensor4(&expected, "small_image")));
        let y_whole = values(whole.decode(tensor4(&expected, "small_latent")));
        let y_split = values(split.decode(tensor4(&expected, "small_latent")));
        let (ez, ey) = (max_abs_diff(&z_whole, &z_split), max_abs_diff(&y_whole, &y_split));
        eprintln!("{which}: {n_whole} → {n_split} tensors; split vs whole: latent {ez:.1e}, recon {ey:.1e}");
        // Each output channel is computed from the same weights and inputs in the same order.
        assert_eq!((ez, ey), (0.0, 0.0), "{which}: a split convolution changed the result");
        let (want, _) = read4(&expected, "small_latent");
        assert!(max_abs_diff(&z_split, &want) <= 1e-4, "{which}: against the golden");
    }
}

/// The largest tensor per pixel, from the architecture, against the figures read off the code
/// (the GPU-limits study's figures): SANA's decoder 256 values a pixel (its nearest ×2 of
/// 256 channels at full resolution), the in / mix decoders 64.
#[test]
fn largest_tensor_per_pixel_of_the_published_autoencoders() {
    let cfg = |n: &str| DcaeConfig::published(n).unwrap_or_else(|e| panic!("{n}: {e}"));
    let sana = cfg("dc-ae-f32c32-sana-1.0");
    assert_eq!(largest_tensor_per_pixel(&sana, Stage::Decode, Precision::F32), 1024.0);
    assert_eq!(largest_tensor_per_pixel(&sana, Stage::Decode, Precision::F16), 512.0);
    assert_eq!(largest_tensor_per_pixel(&sana, Stage::Encode, Precision::F32), 512.0);
    for n in ["dc-ae-f32c32-in-1.0", "dc-ae-f64c128-in-1.0", "dc-ae-f128c512-mix-1.0"] {
        let c = cfg(n);
        assert_eq!(largest_tensor_per_pixel(&c, Stage::Decode, Precision::F32), 256.0, "{n}");
        assert_eq!(largest_tensor_per_pixel(&c, Stage::Encode, Precision::F32), 256.0, "{n}");
    }
    // Under lavapipe's 128 MiB a 1024² SANA decode is tiled so that a tile's tensor fits.
    let cap = TensorCap { bytes: 128 << 20, precision: Precision::F32 };
    match fit(&sana, 0, Stage::Decode, u64::MAX, Some(cap), [1, 1024, 1024]) {
        Fit::Tiled(t) => assert!(1024.0 * (t.tile * t.tile) as f64 <= cap.bytes as f64, "{t:?}"),
        other => panic!("{other:?}"),
    }
    // A batch of four 512² in/mix decodes (64 MiB each) is split into images, not tiled.
    let inmix = cfg("dc-ae-f64c128-in-1.0");
    assert_eq!(fit(&inmix, 0, Stage::Decode, u64::MAX, Some(cap), [4, 512, 512]), Fit::PerImage);
    assert_eq!(fit(&inmix, 0, Stage::Decode, u64::MAX, None, [4, 512, 512]), Fit::Batch);
}

/// The CLI decides tiles under the cap by itself, and refuses `--tile off` when the untiled run
/// would need a larger tensor, before any work, naming the limit and what to change.
#[test]
fn cli_tiles_under_the_cap_and_refuses_untiled_runs_over_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |tile: &str| {
        Command::new(env!("CARGO_BIN_EXE_dcae"))
            .args(["reconstruct", "--backend", "cpu", "--model"])
            .arg(fixture("ae-tiny-sana/diffusers"))
            .arg(fixture("ae-tiny-sana/input.png"))
            .args(["--tile", tile, "--side-by-side"])
            .arg(tmp.path().join(format!("{tile}.png")))
            .env("DCAE_GPU_MAX_BINDING", "128KiB")
            .output()
            .unwrap()
    };
    let out = run("off");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("holds at most 128.0 KiB per tensor") && stderr.contains("--tile auto"), "{stderr}");
    let out = run("auto");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("largest tensor 128.0 KiB"), "the backend line names the cap: {stdout}");
    assert!(stderr.contains("is over") && stderr.contains("tiled for the largest tensor"), "{stderr}");
    assert!(stderr.contains("encode: 32 px tiles") && stderr.contains("decode: 32 px tiles"), "{stderr}");
}

#[cfg(feature = "wgpu")]
mod lavapipe {
    use super::*;
    use dcae::engine::backend::{open_wgpu_with_cap, Gpu};

    /// A device whose largest tensor is `cap`, or `None` (with the reason on stderr) where this
    /// machine has no Vulkan adapter at all (CI installs lavapipe).
    fn device(cap: u64) -> Option<burn::backend::wgpu::WgpuDevice> {
        match open_wgpu_with_cap(Some(cap)) {
            Ok((d, info)) => {
                eprintln!("wgpu: {info}");
                assert_eq!(info.limits.max_tensor, Some(cap), "the device's binding limit is the emulated one");
                Some(d)
            }
            Err(e) => {
                eprintln!("no wgpu device ({e}): nothing to check");
                None
            }
        }
    }

    fn on<const D: usize>(rel: &str, name: &str, device: &burn::backend::wgpu::WgpuDevice) -> Tensor<Gpu, D> {
        let (v, s) = read4(rel, name);
        let s: [usize; D] = s[..].try_into().unwrap();
        Tensor::from_data(TensorData::new(v, s), device)
    }

    fn gpu_values(t: Tensor<Gpu, 4>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    /// With every tensor of the device capped at 64 KiB the tiny models' big weights are held
    /// in parts (an unsplit one would be refused by cubecl), and the goldens still match.
    #[test]
    fn lavapipe_under_a_64kib_cap_splits_weights_and_matches_the_goldens() {
        let Some(dev) = device(SPLIT_CAP) else { return };
        for which in ["ae-tiny-in", "ae-tiny-sana"] {
            let m = load::<Gpu>(which, &dev);
            assert!(tensors(&m) > tensors(&load::<B>(which, &super::device())), "{which}: nothing split");
            let expected = format!("{which}/expected.safetensors");
            let z = gpu_values(m.encode(on::<4>(&expected, "small_image", &dev)));
            let y = gpu_values(m.decode(on::<4>(&expected, "small_latent", &dev)));
            let (zr, _) = read4(&expected, "small_latent");
            let (yr, _) = read4(&expected, "small_recon");
            let (ez, ey) = (max_abs_diff(&z, &zr), max_abs_diff(&y, &yr));
            eprintln!("lavapipe, 64 KiB cap, {which}: latent {ez:.2e}, recon {ey:.2e}");
            // The golden READMEs' tolerance for the autoencoders.
            assert!(ez <= 1e-4 && ey <= 1e-4, "{which}: latent {ez:e}, recon {ey:e}");
        }
    }

    /// At 256 KiB the tiles the budget picks for the tiled fixture are diffusers' 32 px / 24 px
    /// (a 64 px tile's largest tensor is 512 KiB; the whole 100×148 image, which stays on the
    /// device, is 173 KiB), and encode and decode give diffusers' tiled results.
    #[test]
    fn lavapipe_under_a_256kib_cap_tiles_as_diffusers_does() {
        let cap = 256 << 10;
        let Some(dev) = device(cap) else { return };
        let m = load::<Gpu>("ae-tiny-sana/diffusers", &dev);
        let dir = fixture("ae-tiny-sana/diffusers");
        let cfg = load_dcae_files::<B>(&dir.join("config.json"), &dir.join("diffusion_pytorch_model.safetensors"), &super::device()).unwrap().0;
        let budget = Budget { bytes: u64::MAX, weight_copies: 1, max_tensor: Some(cap) };
        let expected = "tiled/expected.safetensors";
        let image = on::<4>(expected, "image", &dev);
        let [_, _, h, w] = image.dims();
        assert_eq!(fit(&cfg, 0, Stage::Encode, u64::MAX, budget.cap(&m), [1, h, w]), Fit::Tiled(TileConfig { tile: 32, stride: 24 }));
        let z = encode_within(&m, &cfg, image, Some(budget), &mut |_, _| true).unwrap().unwrap();
        let y = decode_within(&m, &cfg, on::<4>(expected, "latent", &dev), Some(budget), &mut |_, _| true).unwrap().unwrap();
        for (what, got, want) in [("latent", gpu_values(z), "tiled_latent"), ("recon", gpu_values(y), "tiled_recon")] {
            let (want, _) = read4(expected, want);
            let (abs, rel) = (max_abs_diff(&got, &want), rel_err(&got, &want));
            eprintln!("lavapipe, 256 KiB cap, tiled {what}: max abs {abs:.2e}, relative {rel:.2e}");
            assert!(abs <= 1e-4 && rel <= 1e-4, "tiled {what}: {abs:e} / {rel:e}");
        }
    }

    /// On a software adapter the dense convolutions run as im2col matrix products, in bands of
    /// rows under a quarter of the device's largest tensor (here 64 KiB: 3–4 bands of the
    /// 13-row input), and the strided and grouped ones on the direct kernel, untuned: each
    /// equal to the CPU backend's convolution with the same weights. Before, every one went to
    /// cubecl's convolution tuner, which on lavapipe only finds a direct kernel at 0.25–0.5
    /// GFLOP/s and runs it 13 times per new shape to time it.
    #[test]
    fn lavapipe_convolutions_run_as_products_or_direct_and_equal_the_cpu() {
        use dcae::model::layers::conv2d;
        use dcae::weights::RandomWeights;
        let Some(dev) = device(SPLIT_CAP) else { return };
        let input: Vec<f32> = (0..2 * 8 * 13 * 11).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        // (c_in, c_out, kernel, stride, groups, bias)
        for (c_in, c_out, k, stride, groups, bias) in [(8, 12, 3, 1, 1, true), (8, 40, 1, 1, 1, false), (8, 12, 5, 1, 1, true), (8, 16, 3, 2, 1, true), (8, 8, 5, 1, 8, true)] {
            let key = format!("conv_{c_in}_{c_out}_{k}_{stride}_{groups}");
            let cpu = conv2d(&mut RandomWeights::<B>::new(&super::device()), &key, c_in, c_out, k, stride, groups, bias);
            let gpu = conv2d(&mut RandomWeights::<Gpu>::new(&dev), &key, c_in, c_out, k, stride, groups, bias);
            let before = dcae::model::gpu_kernels::im2col_calls();
            let want = values(cpu.forward(Tensor::from_data(TensorData::new(input.clone(), [2, 8, 13, 11]), &super::device())));
            let got = gpu_values(gpu.forward(Tensor::from_data(TensorData::new(input.clone(), [2, 8, 13, 11]), &dev)));
            let bands = dcae::model::gpu_kernels::im2col_calls() - before;
            let (abs, rel) = (max_abs_diff(&got, &want), rel_err(&got, &want));
            eprintln!("{key}: {bands} im2col band(s), max abs {abs:.1e}, relative {rel:.1e}");
            // f32 sums of at most 200 products in another order.
            assert!(abs <= 1e-5 && rel <= 1e-5, "{key}: {abs:e} / {rel:e}");
            let dense = stride == 1 && groups == 1;
            assert_eq!(bands > 2, dense, "{key}: {bands} bands (dense ones in several bands per image, the others none)");
        }
    }

    /// The autoencoder placed on the CPU while the UViT runs on the GPU: loaded there (the
    /// footprint says so), and encodes and decodes as the GPU-placed one and as the original.
    #[test]
    fn lavapipe_class_model_with_its_autoencoder_on_the_cpu_decodes_as_on_the_gpu() {
        use dcae::engine::backend::Placement;
        use dcae::engine::worker::api::Generator;
        let Some(dev) = device(64 << 20) else { return };
        let dir = fixture("uvit-tiny");
        let expected = "uvit-tiny/expected.safetensors";
        let mut images = Vec::new();
        for placement in [Placement::Gpu, Placement::Cpu] {
            let g = Generator::<Gpu>::load_placed("uvit-tiny", &dir.join("config.json"), &dir.join("model.safetensors"), &dev, placement).unwrap_or_else(|e| panic!("{}", e.message));
            assert_eq!(g.info().footprint.ae_on_cpu, placement == Placement::Cpu, "{placement}");
            assert_eq!(g.autoencoder().0.on_cpu(), placement == Placement::Cpu, "{placement}");
            // Image by image, as the app decodes (a batch would trip the decode-batch watch of
            // `ui_batches_are_decoded_one_image_at_a_time`, which shares this process).
            let latent = on::<4>(expected, "cfg6_latent", &dev);
            let image: Vec<f32> = (0..2).flat_map(|i| gpu_values(g.decode(latent.clone().narrow(0, i, 1)).unwrap())).collect();
            let (want, _) = read4(expected, "cfg6_image");
            let err = max_abs_diff(&image, &want);
            eprintln!("autoencoder on the {placement}: cfg6_image max |diff| {err:.2e}");
            assert!(err < 1e-4, "{placement}: {err:e}");
            let z = g.encode(on::<4>(expected, "cfg6_image", &dev)).unwrap();
            assert_eq!(z.dims(), [2, 4, 4, 4]);
            images.push((image, gpu_values(z)));
        }
        let (gpu, cpu) = (&images[0], &images[1]);
        assert!(max_abs_diff(&gpu.0, &cpu.0) < 1e-4 && max_abs_diff(&gpu.1, &cpu.1) < 1e-4, "GPU and CPU placements differ");
    }

    /// DiT (ADM) and USiT (heun2, dopri5) on the GPU backend: the tiny fixtures' forwards and
    /// short runs from the original's noise equal the CPU backend's.
    #[test]
    fn lavapipe_dit_and_usit_sample_as_on_the_cpu() {
        use dcae::model::diffusion::{DiffusionModel, GenerateRequest};
        use std::sync::atomic::AtomicBool;
        let Some(dev) = device(64 << 20) else { return };
        // (fixture, case, sampler, steps, labels, guidance) as the fixtures' notes.json list them.
        let cases: [(&str, &str, &str, usize, [usize; 2], f32); 4] = [
            ("dit-tiny", "adm10_cfg1_", "adm", 10, [0, 9], 1.0),
            ("dit-tiny", "ddim25_cfg4_", "ddim", 25, [2, 4], 4.0),
            ("usit-tiny", "heun2_10_cfg1p5_", "heun2", 10, [5, 1], 1.5),
            ("usit-tiny", "dopri5_cfg1p5_", "dopri5", 250, [3, 7], 1.5),
        ];
        for (case, p, sampler, steps, labels, scale) in cases {
            let dir = fixture(case);
            let gpu = DiffusionModel::<Gpu>::load_files(&dir.join("config.json"), &dir.join("model.safetensors"), &dev).unwrap();
            let cpu = DiffusionModel::<dcae::engine::backend::Cpu>::load_files(&dir.join("config.json"), &dir.join("model.safetensors"), &Default::default()).unwrap();
            let exp = format!("{case}/expected.safetensors");
            let labels = labels.to_vec();
            let (noise, shape) = read4(&exp, &format!("{p}noise"));
            let mut req = GenerateRequest::<Gpu>::new(labels.clone(), scale, steps, 0);
            req.noise = Some(Tensor::from_data(TensorData::new(noise.clone(), shape), &dev));
            req.sampler = Some(sampler.into());
            let g = gpu_values(gpu.generate(&req, &mut |_| {}, &AtomicBool::new(false)).unwrap().latent);
            let mut req = GenerateRequest::<dcae::engine::backend::Cpu>::new(labels, scale, steps, 0);
            req.noise = Some(Tensor::from_data(TensorData::new(noise, shape), &Default::default()));
            req.sampler = Some(sampler.into());
            let c = cpu.generate(&req, &mut |_| {}, &AtomicBool::new(false)).unwrap().latent.into_data().to_vec::<f32>().unwrap();
            let max = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = max_abs_diff(&g, &c) / max;
            eprintln!("{case} {sampler}: GPU vs CPU {err:.2e} of the largest value");
            assert!(err < 1e-3, "{case} {sampler}: {err:e}");
        }
    }

    /// A GPU engine whose first job panics is not restarted on the same device: it moves to the
    /// CPU and says why, and the CPU engine then runs.
    #[cfg(feature = "gui")]
    #[test]
    fn a_gpu_engine_that_fails_before_any_success_moves_to_the_cpu() {
        use dcae::engine::worker::{Event, Job, Worker, WorkerConfig};
        use dcae::engine::BackendChoice;
        use std::time::{Duration, Instant};
        if open_wgpu_with_cap(None).is_err() {
            eprintln!("no wgpu adapter: nothing to check");
            return;
        }
        let config = WorkerConfig { backend: BackendChoice::Wgpu, cache_dir: None, fit_latent_side: 8, text_encoder: Default::default(), autoencoder: Default::default() };
        let mut w = Worker::spawn(config, std::sync::Arc::new(|| {}));
        let mut seen = Vec::new();
        let start = Instant::now();
        let mut sent = false;
        while start.elapsed() < Duration::from_secs(120) {
            match w.recv_timeout(Duration::from_millis(100)) {
                Some(Event::BackendReady(info)) if info.kind == "wgpu" && !sent => {
                    w.faults().panic_next(dcae::engine::worker::PanicAt::AnyJob);
                    let id = w.next_id();
                    w.send(Job::UnloadAutoencoders { id });
                    sent = true;
                    seen.push("ready wgpu".to_string());
                }
                Some(Event::BackendFallback { reason, .. }) => seen.push(format!("fallback: {reason}")),
                Some(Event::BackendReady(info)) if info.kind == "cpu" => {
                    seen.push("ready cpu".into());
                    break;
                }
                Some(Event::Restarted { reason }) => seen.push(format!("restarted: {reason}")),
                _ => {}
            }
        }
        eprintln!("{seen:?}");
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0], "ready wgpu");
        assert!(seen[1].starts_with("fallback: it failed before completing any job") && seen[1].contains("fault injected"), "{seen:?}");
        assert_eq!(seen[2], "ready cpu");
    }
}
