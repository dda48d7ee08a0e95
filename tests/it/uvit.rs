//! UViT: forward parity with the uvit-tiny golden case, key names and shapes, registry,
//! config parsing and strict loading of the combined checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use dcae::engine::backend::Cpu;
use dcae::model::diffusion::{DiffusionConfig, DiffusionModel, UVIT_PREFIX};
use dcae::model::uvit::{registered_uvit, unpatchify, Uvit, UvitConfig};
use dcae::weights::{Checkpoint, KeyRecorder, RandomWeights};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/uvit-tiny")
}

/// A stored tensor: values (f32 or i64, both kept as f64-free typed vectors) and shape.
pub struct Stored {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
}

/// Every tensor of `expected.safetensors`.
pub fn expected() -> HashMap<String, Stored> {
    expected_in(&fixture_dir())
}

/// Every tensor of `<dir>/expected.safetensors` (f64 read as f32).
pub fn expected_in(dir: &Path) -> HashMap<String, Stored> {
    let bytes = std::fs::read(dir.join("expected.safetensors")).expect("read expected.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("parse expected.safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let (mut f, mut i) = (Vec::new(), Vec::new());
            match v.dtype() {
                Dtype::F32 => f = v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
                Dtype::F64 => f = v.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
                Dtype::I64 => i = v.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
                other => panic!("unexpected dtype {other:?} for {name}"),
            }
            (name, Stored { shape: v.shape().to_vec(), f32: f, i64: i })
        })
        .collect()
}

pub fn tensor4(s: &Stored) -> Tensor<Cpu, 4> {
    let shape: [usize; 4] = s.shape.clone().try_into().expect("4-d");
    Tensor::from_data(TensorData::new(s.f32.clone(), shape), &Default::default())
}

pub fn values<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn load_tiny() -> DiffusionModel<Cpu> {
    let dir = fixture_dir();
    DiffusionModel::<Cpu>::load_files(&dir.join("config.json"), &dir.join("model.safetensors"), &Default::default())
        .unwrap_or_else(|e| panic!("loading uvit-tiny: {e}"))
}

#[test]
fn uvit_forward_matches_golden_fwd_eps() {
    let model = load_tiny();
    let exp = expected();
    let x = tensor4(&exp["fwd_x"]);
    let t = Tensor::<Cpu, 1>::from_data(TensorData::new(exp["fwd_t"].f32.clone(), [3]), &Default::default());
    let y = Tensor::<Cpu, 1, Int>::from_data(TensorData::new(exp["fwd_y"].i64.clone(), [3]), &Default::default());
    let eps = values(model.denoiser.forward(x, t, y));
    let err = max_abs_diff(&eps, &exp["fwd_eps"].f32);
    println!("uvit-tiny fwd_eps max |diff| = {err:.3e}");
    assert!(err < 1e-4, "fwd_eps differs by {err}");
}

#[test]
fn uvit_tiny_config_and_keys_match_the_checkpoint() {
    let model = load_tiny();
    let cfg = &model.config;
    assert_eq!(*cfg.uvit().unwrap(), UvitConfig { depth: 4, hidden_size: 64, num_heads: 4, mlp_ratio: 4.0, in_channels: 4, patch_size: 1, input_size: 4, num_classes: 10 });
    assert_eq!(cfg.scaling_factor, 0.2889);
    assert_eq!(cfg.dpm_sampler(), Some(&dcae::sampler::SamplerConfig::default()));
    assert_eq!(cfg.uvit().unwrap().num_params(), 268_036, "notes.json: params");

    let mut rec = KeyRecorder::<Cpu>::new(&Default::default());
    let _ = Uvit::load(&mut rec, cfg.uvit().unwrap());
    let ckpt = Checkpoint::open(fixture_dir().join("model.safetensors")).unwrap();
    let stored: HashMap<String, Vec<usize>> = ckpt
        .keys()
        .filter_map(|k| k.strip_prefix(UVIT_PREFIX).map(|s| (s.to_string(), ckpt.shape(k).unwrap().to_vec())))
        .collect();
    assert_eq!(rec.keys.len(), 67, "notes.json: uvit_keys");
    for (k, shape) in &rec.keys {
        assert_eq!(stored.get(k), shape.as_ref(), "key {k}");
    }
    assert_eq!(stored.len(), rec.keys.len());
}

#[test]
fn uvit_h_keys_and_parameter_count() {
    let cfg = registered_uvit("mit-han-lab/dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k").unwrap().uvit_config().unwrap();
    assert_eq!((cfg.input_size, cfg.in_channels, cfg.num_tokens(), cfg.head_dim()), (8, 128, 66, 72));
    let mut rec = KeyRecorder::<Cpu>::new(&Default::default());
    let _ = Uvit::load(&mut rec, &cfg);
    let total: usize = rec.keys.iter().map(|(_, s)| s.as_ref().unwrap().iter().product::<usize>()).sum();
    assert_eq!(rec.keys.len(), 355);
    assert_eq!(total, 500_868_992);
    assert_eq!(cfg.num_params(), total);
    let shape = |k: &str| rec.keys.iter().find(|(n, _)| n == k).and_then(|(_, s)| s.clone());
    assert_eq!(shape("label_emb.embedding_table.weight"), Some(vec![1001, 1152]));
    assert_eq!(shape("out_blocks.13.skip_linear.weight"), Some(vec![1152, 2304]));
    assert_eq!(shape("in_blocks.0.attn.qkv.weight"), Some(vec![3456, 1152]));
    assert_eq!(shape("in_blocks.0.attn.qkv.bias"), None);
    assert_eq!(shape("decoder_pred.weight"), Some(vec![128, 1152]));
    assert_eq!(shape("mid_block.skip_linear.weight"), None);
}

#[test]
fn uvit_registry_covers_the_zoo() {
    // efficientvit's diffusion_model_zoo.py: 7 UViTs, 2 USiTs, 2 DiT-XLs.
    let names: Vec<_> = dcae::model::registry::uvit_models().map(|m| m.name).collect();
    assert_eq!(names.len(), 11);
    let count = |f: &str| dcae::model::registry::uvit_models().filter(|m| m.family() == f).count();
    assert_eq!((count("UViT"), count("USiT"), count("DiT")), (7, 2, 2));
    for m in dcae::model::registry::uvit_models() {
        let cfg = DiffusionConfig::registered(m.name).unwrap();
        assert_eq!(cfg.autoencoder.name, m.autoencoder);
        assert_eq!(cfg.image_size(), 512, "{}", m.name);
        assert_eq!(cfg.latent_channels(), cfg.autoencoder.latent_channels);
        let (sf, input) = if m.autoencoder.contains("f64c128") { (0.2889, 8) } else { (0.3189, 16) };
        assert_eq!((cfg.scaling_factor, cfg.latent_size()), (sf, input), "{}", m.name);
    }
    let by = |n: &str| registered_uvit(n).unwrap().uvit_config().unwrap();
    assert_eq!((by("dc-ae-f32c32-in-1.0-uvit-s-in-512px").depth, by("dc-ae-f32c32-in-1.0-uvit-s-in-512px").hidden_size), (12, 512));
    assert_eq!(by("dc-ae-f64c128-in-1.0-uvit-2b-in-512px").hidden_size, 2048);
    assert_eq!(by("dc-ae-f64c128-in-1.0-uvit-2b-in-512px").num_heads, 32);
    assert_eq!(registered_uvit("dc-ae-f32c32-in-1.0-usit-h-in-512px").unwrap().family(), "USiT");
    assert_eq!(registered_uvit("dc-ae-f32c32-in-1.0-dit-xl-in-512px").unwrap().family(), "DiT");

    let v = serde_json::json!({"model_name": "dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k"});
    let cfg = DiffusionConfig::from_json(&v, "x").unwrap();
    assert_eq!(cfg.uvit().unwrap().hidden_size, 1152);
    let err = DiffusionConfig::from_json(&serde_json::json!({"model_name": "dc-ae-f64c128-in-1.0-dit-xl"}), "x").unwrap_err();
    assert!(err.to_string().contains("unknown diffusion model"), "{err}");
    let at = DiffusionConfig::registered_at("dc-ae-f64c128-in-1.0-uvit-h-in-512px", Some(1024)).unwrap();
    assert_eq!(at.latent_size(), 16);
    assert!(DiffusionConfig::registered_at("dc-ae-f64c128-in-1.0-uvit-h-in-512px", Some(500)).is_err());
}

#[test]
fn uvit_config_errors_are_reported() {
    let text = std::fs::read_to_string(fixture_dir().join("config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    let with = |path: &[&str], value: serde_json::Value| {
        let mut v = base.clone();
        let mut node = &mut v;
        for p in &path[..path.len() - 1] {
            node = node.get_mut(*p).unwrap();
        }
        node[path[path.len() - 1]] = value;
        DiffusionConfig::from_json(&v, "tiny").map(|_| ()).unwrap_err().to_string()
    };
    assert!(with(&["uvit", "in_channels"], 8.into()).contains("latent channels"));
    assert!(with(&["uvit", "num_heads"], 3.into()).contains("multiple of num_heads"));
    assert!(with(&["uvit", "depth"], 5.into()).contains("even"));
    assert!(with(&["sampler", "method"], "multistep".into()).contains("unsupported"));
    assert!(with(&["uvit"], "nonsense".into()).contains("uvit"));
    let err = DiffusionConfig::from_json(&serde_json::json!({"uvit": base["uvit"].clone()}), "tiny").unwrap_err();
    assert!(err.to_string().contains("autoencoder"), "{err}");
}

#[test]
fn uvit_patch_embedding_is_the_strided_conv_and_unpatchify_is_einops() {
    let device = Default::default();
    let mut cfg = UvitConfig { depth: 2, hidden_size: 32, num_heads: 2, mlp_ratio: 2.0, in_channels: 3, patch_size: 2, input_size: 6, num_classes: 5 };
    let uvit = Uvit::<Cpu>::load(&mut RandomWeights::new(&device), &cfg);
    let x = Tensor::<Cpu, 4>::random([2, 3, 6, 6], burn::tensor::Distribution::Normal(0.0, 1.0), &device);

    // patch_embed as PyTorch computes it: conv(k = s = p), flatten(2), transpose(1, 2).
    let w = uvit.patch_embed.weight.val().transpose().reshape([32, 3, 2, 2]);
    let b = uvit.patch_embed.bias.as_ref().unwrap().val();
    let conv = burn::tensor::module::conv2d(x.clone(), w, Some(b), burn::tensor::ops::ConvOptions::new([2, 2], [0, 0], [1, 1], 1));
    let reference = conv.reshape([2, 32, 9]).swap_dims(1, 2);
    let err = max_abs_diff(&values(uvit.embed_patches(x.clone())), &values(reference));
    assert!(err < 1e-5, "patch embedding differs by {err}");

    // unpatchify: token (h·g + w), feature (p1·p·C + p2·C + c) → pixel (c, h·p + p1, w·p + p2).
    let (g, p, c) = (3, 2, 3);
    let tokens: Vec<f32> = (0..2 * g * g * p * p * c).map(|i| i as f32).collect();
    let t = Tensor::<Cpu, 3>::from_data(TensorData::new(tokens.clone(), [2, g * g, p * p * c]), &device);
    let out = values(unpatchify(t, c, p));
    for bi in 0..2 {
        for (hh, ww, p1, p2, ch) in itertools(g, p, c) {
            let src = tokens[(bi * g * g + hh * g + ww) * p * p * c + p1 * p * c + p2 * c + ch];
            let s = g * p;
            let dst = out[((bi * c + ch) * s + hh * p + p1) * s + ww * p + p2];
            assert_eq!(src, dst);
        }
    }

    // The whole forward runs with p = 2 and odd hidden sizes are rejected.
    let t = Tensor::<Cpu, 1>::from_data(TensorData::new(vec![10.0f32, 900.0], [2]), &device);
    let y = Tensor::<Cpu, 1, Int>::from_data(TensorData::new(vec![0i64, 5], [2]), &device);
    assert_eq!(uvit.forward(x, t, y).dims(), [2, 3, 6, 6]);
    cfg.input_size = 5;
    assert!(cfg.validate().is_err());
}

fn itertools(g: usize, p: usize, c: usize) -> Vec<(usize, usize, usize, usize, usize)> {
    let mut v = Vec::new();
    for h in 0..g {
        for w in 0..g {
            for p1 in 0..p {
                for p2 in 0..p {
                    for ch in 0..c {
                        v.push((h, w, p1, p2, ch));
                    }
                }
            }
        }
    }
    v
}

/// Writes a copy of the fixture checkpoint with `edit` applied to its (name → tensor) list.
fn modified_checkpoint(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) -> PathBuf {
    let bytes = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut items: Vec<_> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut items);
    let views: Vec<(String, TensorView)> =
        items.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    std::fs::copy(fixture_dir().join("config.json"), dir.join("config.json")).unwrap();
    path
}

fn load_error(dir: &Path) -> String {
    match DiffusionModel::<Cpu>::load_files(&dir.join("config.json"), &dir.join("model.safetensors"), &Default::default()) {
        Ok(_) => panic!("a modified checkpoint loaded without error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn uvit_strict_loading_names_renamed_removed_and_stray_keys() {
    let tmp = tempfile::tempdir().unwrap();

    let renamed = tmp.path().join("renamed");
    std::fs::create_dir(&renamed).unwrap();
    modified_checkpoint(&renamed, |items| {
        let it = items.iter_mut().find(|(n, ..)| n == "diffusion_model.in_blocks.1.mlp.fc1.weight").unwrap();
        it.0 = "diffusion_model.in_blocks.1.mlp.fc_1.weight".into();
    });
    let msg = load_error(&renamed);
    println!("{msg}");
    assert!(msg.contains("missing key `diffusion_model.in_blocks.1.mlp.fc1.weight`"), "{msg}");
    assert!(msg.contains("unexpected key `diffusion_model.in_blocks.1.mlp.fc_1.weight`"), "{msg}");

    let removed = tmp.path().join("removed");
    std::fs::create_dir(&removed).unwrap();
    modified_checkpoint(&removed, |items| items.retain(|(n, ..)| n != "diffusion_model.out_blocks.0.skip_linear.bias"));
    let msg = load_error(&removed);
    assert!(msg.contains("missing key `diffusion_model.out_blocks.0.skip_linear.bias`"), "{msg}");
    assert!(msg.contains("1 missing, 0 unexpected, 0 misshaped"), "{msg}");

    let stray = tmp.path().join("stray");
    std::fs::create_dir(&stray).unwrap();
    modified_checkpoint(&stray, |items| {
        items.push(("ema.pos_embed".into(), Dtype::F32, vec![2], vec![0u8; 8]));
        let it = items.iter_mut().find(|(n, ..)| n == "diffusion_model.pos_embed").unwrap();
        it.2 = vec![1, 9, 128]; // same bytes, wrong shape
    });
    let msg = load_error(&stray);
    assert!(msg.contains("unexpected key `ema.pos_embed`"), "{msg}");
    assert!(msg.contains("key `diffusion_model.pos_embed` has shape [1, 9, 128], expected [1, 18, 64]"), "{msg}");

    // An autoencoder problem is reported together with the UViT one.
    let both = tmp.path().join("both");
    std::fs::create_dir(&both).unwrap();
    modified_checkpoint(&both, |items| {
        items.retain(|(n, ..)| n != "diffusion_model.norm.bias" && n != "autoencoder.decoder.project_in.main.conv.bias")
    });
    let msg = load_error(&both);
    assert!(msg.contains("diffusion_model.norm.bias") && msg.contains("autoencoder.decoder.project_in.main.conv.bias"), "{msg}");
}

/// The same golden checks on the wgpu backend (ignored by default: on a machine without a GPU
/// it runs on a software Vulkan driver and spends tens of seconds compiling kernels).
/// Run with `cargo test --test integration uvit_wgpu -- --ignored`.
#[cfg(feature = "wgpu")]
#[test]
#[ignore]
fn uvit_wgpu_matches_golden() {
    use dcae::engine::backend::Gpu;
    use dcae::model::diffusion::GenerateRequest;
    use std::sync::atomic::AtomicBool;
    let device = burn::backend::wgpu::WgpuDevice::default();
    let dir = fixture_dir();
    let model = DiffusionModel::<Gpu>::load_files(&dir.join("config.json"), &dir.join("model.safetensors"), &device).unwrap();
    let exp = expected();
    let to_gpu = |s: &Stored| {
        let shape: [usize; 4] = s.shape.clone().try_into().unwrap();
        Tensor::<Gpu, 4>::from_data(TensorData::new(s.f32.clone(), shape), &device)
    };
    let gpu_values = |t: Tensor<Gpu, 4>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let t = Tensor::<Gpu, 1>::from_data(TensorData::new(exp["fwd_t"].f32.clone(), [3]), &device);
    let y = Tensor::<Gpu, 1, Int>::from_data(TensorData::new(exp["fwd_y"].i64.clone(), [3]), &device);
    let eps = gpu_values(model.denoiser.forward(to_gpu(&exp["fwd_x"]), t, y));
    let err = max_abs_diff(&eps, &exp["fwd_eps"].f32);
    println!("wgpu fwd_eps max |diff| = {err:.3e}");
    assert!(err < 1e-4);

    let mut req = GenerateRequest::<Gpu>::new(vec![3, 7], 6.0, 30, 0);
    req.noise = Some(to_gpu(&exp["cfg6_noise"]));
    let out = model.generate(&req, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    let err = max_abs_diff(&gpu_values(out.latent.clone()), &exp["cfg6_latent"].f32);
    println!("wgpu cfg6_latent max |diff| = {err:.3e}");
    assert!(err < 1e-3);
    let image = gpu_values(model.decode_latent(to_gpu(&exp["cfg6_latent"])));
    let err = max_abs_diff(&image, &exp["cfg6_image"].f32);
    println!("wgpu cfg6_image max |diff| = {err:.3e}");
    assert!(err < 1e-4);
}
