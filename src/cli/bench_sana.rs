//! `dcae bench` for SANA, at the real sizes with random weights (nothing is downloaded):
//! `text-encode` (one Gemma-2-2B pass over an instruction + prompt of `--tokens` tokens),
//! `forward` (one transformer call) and `t2i` (text encoding, the sampling loop and the decode).
//! The PyTorch side is `tests/python/bench_sana_torch.py`, which builds the same networks in
//! diffusers / transformers.

use std::time::Instant;

use anyhow::{anyhow, bail};
use burn::tensor::{backend::Backend, Distribution, Int, Tensor, TensorData};

use super::timing::{peak_rss_mib, Timings};
use crate::model::sana::registry::{registered_sana, RegisteredSana};
use crate::model::sana::text_encoder::{Gemma2, Gemma2Config};
use crate::model::layers::lin;
use crate::model::sana::transformer::{add_gated, norm_modulate, SanaTransformer, MAX_SEQUENCE_LENGTH};
use burn::backend::Flex;
use crate::model::placed::PlacedAe;
use crate::model::{Dcae, DcaeConfig};
use crate::model::sana::flow::{self, FlowSchedule, FlowSchedulerConfig, FlowSolver};
use crate::model::sana::layout::PipelineKind;
use crate::model::precision::PrecisionChoice;
use crate::weights::RandomWeights;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanaBench {
    TextEncode,
    Forward,
    T2i,
}

pub struct SanaBenchArgs {
    pub model: String,
    pub task: SanaBench,
    pub res: usize,
    pub batch: usize,
    pub steps: Option<usize>,
    pub cfg: f32,
    pub runs: usize,
    /// Tokens of the positive text-encoder pass (instruction + prompt).
    pub tokens: usize,
    /// Give the text encoder what its published bf16 files would (16-bit in memory where the
    /// backend keeps that), not f32.
    pub bf16_text_encoder: bool,
    /// The text encoder's and the autoencoder's precision (see [`crate::model::precision`]).
    pub precision: PrecisionChoice,
    /// t2i: where the text encoder and the autoencoder run (`Auto`: as the app places them).
    pub text_encoder: crate::engine::backend::Placement,
    pub autoencoder: crate::engine::backend::Placement,
    /// t2i: keep the last run's decoded images (`[B, 3, H, W]`, f32) to compare backends.
    pub keep_output: bool,
}

pub struct SanaBenchResult {
    pub timings: Timings,
    /// Seconds per phase of the last t2i run: text encoding, sampling, decoding.
    pub phases: Option<[f64; 3]>,
    pub build_s: f64,
    pub peak_rss_mib: Option<f64>,
    /// What the networks computed in (`text-encode`: the text encoder's; `forward`: the
    /// transformer's; `t2i`: text encoder / transformer / autoencoder).
    pub dtype: String,
    /// t2i: where the text encoder and the autoencoder ran.
    pub placement: Option<String>,
    /// t2i with `keep_output`: the last run's images and their shape.
    pub output: Option<(Vec<f32>, [usize; 4])>,
}

pub fn model(name: &str) -> anyhow::Result<&'static RegisteredSana> {
    registered_sana(name).ok_or_else(|| anyhow!("{name} is not a registered SANA pipeline (e.g. Sana_600M_512px_diffusers, Sana_Sprint_0.6B_1024px_diffusers)"))
}

fn ids<B: Backend>(n: usize, device: &B::Device) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    // Any ids will do for timing; 2 (BOS) first as in a real prompt.
    let v: Vec<i64> = (0..n).map(|i| if i == 0 { 2 } else { 100 + (i as i64 * 7919) % 250_000 }).collect();
    (Tensor::from_data(TensorData::new(v, [1, n]), device), Tensor::ones([1, n], device))
}

pub fn run<B: Backend>(a: &SanaBenchArgs, device: &B::Device) -> anyhow::Result<SanaBenchResult> {
    let reg = model(&a.model)?;
    let tcfg = reg.transformer_config();
    let transformer_precision = crate::model::sana::pipeline::transformer_precision::<B>(a.precision, crate::model::sana::pipeline::fp16_trained(reg.kind, &tcfg, reg.name), device);
    let f = 32;
    if a.res % f != 0 || a.res == 0 {
        bail!("--res {} must be a positive multiple of 32", a.res);
    }
    let s = a.res / f;
    let t0 = Instant::now();
    let mut w = RandomWeights::<B>::new(device);
    let mut text_w = if a.bf16_text_encoder { RandomWeights::<B>::stored_as_bf16(device) } else { RandomWeights::<B>::new(device) };
    match a.task {
        SanaBench::TextEncode => {
            let gemma = Gemma2::<B>::load(&mut text_w, &Gemma2Config::gemma2_2b()).with_precision(a.precision.resolve_bf16_trained::<B>(device));
            let build_s = t0.elapsed().as_secs_f64();
            let (ids, mask) = ids::<B>(a.tokens, device);
            let timings = super::timing::time_runs(a.runs, || {
                if let Some(h) = gemma.forward(ids.clone(), mask.clone(), &mut |_, _| true) {
                    let _ = h.slice([0..1, 0..1, 0..1]).into_data();
                }
            });
            Ok(SanaBenchResult { timings, phases: None, build_s, peak_rss_mib: peak_rss_mib(), dtype: gemma.precision().name().into(), placement: None, output: None })
        }
        SanaBench::Forward => {
            let model = SanaTransformer::<B>::load(&mut w, &tcfg).with_precision(transformer_precision);
            let build_s = t0.elapsed().as_secs_f64();
            let x = Tensor::<B, 4>::random([a.batch, tcfg.in_channels, s, s], Distribution::Normal(0.0, 1.0), device);
            let text = Tensor::<B, 3>::random([a.batch, MAX_SEQUENCE_LENGTH, tcfg.caption_channels], Distribution::Normal(0.0, 1.0), device);
            let mask = Tensor::<B, 2, Int>::ones([a.batch, MAX_SEQUENCE_LENGTH], device);
            let t = Tensor::<B, 1>::from_data(TensorData::new(vec![500.0f32; a.batch], [a.batch]), device);
            let g = (reg.kind == PipelineKind::Sprint).then(|| t.clone().mul_scalar(0.0).add_scalar(0.45));
            if std::env::var_os("DCAE_SANA_PROFILE").is_some() {
                profile_block(&model, a.batch, s, a.runs.max(3), device);
            }
            let timings = super::timing::time_runs(a.runs, || {
                let v = model.forward(x.clone(), t.clone(), text.clone(), mask.clone(), g.clone());
                let _ = v.slice([0..1, 0..1, 0..1, 0..1]).into_data();
            });
            Ok(SanaBenchResult { timings, phases: None, build_s, peak_rss_mib: peak_rss_mib(), dtype: transformer_precision.name().into(), placement: None, output: None })
        }
        SanaBench::T2i => {
            // As `dcae generate` runs it: the text encoder first, released after encoding, then
            // the transformer and the decoder; so the peak is the larger part, not the sum.
            // Building (random initialisation) is not timed, and there is no warm-up run: a
            // one-shot run pays the first call's costs too.
            let sprint = reg.kind == PipelineKind::Sprint;
            let sched_cfg = FlowSchedulerConfig {
                solver: if sprint { FlowSolver::Scm } else { FlowSolver::Dpm },
                flow_shift: reg.flow_shift,
                ..FlowSchedulerConfig::default()
            };
            let steps = a.steps.unwrap_or(if sprint { 2 } else { 20 });
            let schedule = FlowSchedule::new(&sched_cfg, steps, None, (sprint && steps == 2).then_some(flow::SCM_INTERMEDIATE_TIMESTEP))?;
            let use_cfg = !sprint && a.cfg > 1.0;
            let b = a.batch;
            let vae_cfg = DcaeConfig::published("dc-ae-f32c32-sana-1.1")?;
            // Placed as the app places them (see `TextGenerator::load`).
            let cpu_backend = std::any::TypeId::of::<B>() == std::any::TypeId::of::<Flex>();
            let text_on_cpu = !cpu_backend && a.text_encoder.on_cpu().unwrap_or(!crate::model::precision::bf16_available::<B>(device));
            let vae_on_cpu = !cpu_backend
                && a.autoencoder.on_cpu().unwrap_or_else(|| {
                    crate::engine::memory::autoencoder_on_cpu::<B>(device, transformer_precision.bytes() * tcfg.num_params() as u64, 4 * vae_cfg.approx_params())
                });
            let vae_precision = if vae_on_cpu {
                a.precision.resolve::<Flex>(&Default::default()).unwrap_or(crate::model::precision::Precision::F32)
            } else {
                a.precision.resolve::<B>(device).map_err(anyhow::Error::msg)?
            };
            let (mut totals, mut phases, mut build_s) = (Vec::new(), [0.0; 3], 0.0);
            let mut output = None;
            for _ in 0..a.runs.max(1) {
                let t = Instant::now();
                // Text: the positive pass per prompt (instruction + prompt), the negative once;
                // on the CPU where the placement puts Gemma-2 (its rows then cross to `device`).
                let (rows, secs) = if text_on_cpu {
                    let cpu = Default::default();
                    let mut cw = if a.bf16_text_encoder { RandomWeights::<Flex>::stored_as_bf16(&cpu) } else { RandomWeights::<Flex>::new(&cpu) };
                    let gemma = Gemma2::<Flex>::load(&mut cw, &Gemma2Config::gemma2_2b()).with_precision(a.precision.resolve_bf16_trained::<Flex>(&cpu));
                    let secs = t.elapsed().as_secs_f64();
                    let rows = text_rows(&gemma, a.tokens, b, use_cfg, &cpu);
                    (rows.into_iter().map(|r| Tensor::<B, 3>::from_data(r.into_data(), device)).collect::<Vec<_>>(), secs)
                } else {
                    let gemma = Gemma2::<B>::load(&mut text_w, &Gemma2Config::gemma2_2b()).with_precision(a.precision.resolve_bf16_trained::<B>(device));
                    let secs = t.elapsed().as_secs_f64();
                    (text_rows(&gemma, a.tokens, b, use_cfg, device), secs)
                };
                build_s = secs;
                let text = Tensor::cat(rows, 0);
                let n_rows = text.dims()[0];
                let mask = Tensor::<B, 2, Int>::ones([n_rows, MAX_SEQUENCE_LENGTH], device);
                let _ = text.clone().slice([0..1, 0..1, 0..1]).into_data();
                phases[0] = t.elapsed().as_secs_f64() - build_s;

                let t = Instant::now();
                let model = SanaTransformer::<B>::load(&mut w, &tcfg).with_precision(transformer_precision);
                let vae = if vae_on_cpu {
                    PlacedAe::Cpu(Dcae::<Flex>::load(&mut RandomWeights::<Flex>::new(&Default::default()), &vae_cfg).with_precision(vae_precision))
                } else {
                    PlacedAe::Here(Dcae::<B>::load(&mut w, &vae_cfg).with_precision(vae_precision))
                };
                build_s += t.elapsed().as_secs_f64();
                let t = Instant::now();
                // Seeded host draws: the same start and the same per-step noise on every backend.
                let shape = [b, tcfg.in_channels, s, s];
                let x = crate::model::diffusion::seeded_noise::<B>(shape, 0, device);
                let mut draws = 0u64;
                let g = sprint.then(|| Tensor::<B, 1>::from_data(TensorData::new(vec![0.45f32; b], [b]), device));
                // As the pipeline: the caption's part once per generation.
                let caption = model.caption(text.clone(), mask.clone());
                let mut network = |x: Tensor<B, 4>, tm: f32| {
                    let xin = if use_cfg { Tensor::cat(vec![x.clone(), x], 0) } else { x };
                    let n = xin.dims()[0];
                    let tt = Tensor::<B, 1>::from_data(TensorData::new(vec![tm; n], [n]), device);
                    let v = model.forward_with(xin, tt, &caption, g.clone());
                    Some(if use_cfg {
                        let u = v.clone().narrow(0, 0, b);
                        u.clone() + (v.narrow(0, b, b) - u).mul_scalar(a.cfg as f64)
                    } else {
                        v
                    })
                };
                let mut noise = |_| {
                    draws += 1;
                    crate::model::diffusion::seeded_noise::<B>(shape, draws, device)
                };
                let latent = flow::sample(&schedule, x, &mut network, &mut noise, &mut |_| {});
                if let Some(l) = &latent {
                    let _ = l.clone().slice([0..1, 0..1, 0..1, 0..1]).into_data();
                }
                phases[1] = t.elapsed().as_secs_f64();

                let t = Instant::now();
                if let Some(latent) = latent {
                    // As the app decodes: image by image, tiled under the side's limits.
                    let budget = crate::engine::memory::autoencoder_budget_for(&vae, device);
                    let mut images = Vec::with_capacity(b);
                    for i in 0..b {
                        let z = latent.clone().narrow(0, i, 1).div_scalar(vae_cfg.scaling_factor as f64);
                        let mut calls = 0;
                        let img = vae.decode_within(&vae_cfg, z, budget, &mut |_, n| {
                            calls = n;
                            true
                        })?;
                        let img = img.ok_or_else(|| anyhow!("the decode stopped"))?;
                        // One image: more than one call is a tiled decode (the note lists them).
                        if i == 0 && calls > 1 {
                            eprintln!("decode: tiled, {calls} tiles per image");
                        }
                        let _ = img.clone().slice([0..1, 0..1, 0..1, 0..1]).into_data();
                        images.push(img);
                    }
                    if a.keep_output {
                        let img = Tensor::cat(images, 0);
                        let dims = img.dims();
                        output = Some((crate::model::host::read_back(img)?, dims));
                    }
                }
                phases[2] = t.elapsed().as_secs_f64();
                totals.push(phases.iter().sum());
            }
            let text_precision = if text_on_cpu { a.precision.resolve_bf16_trained::<Flex>(&Default::default()) } else { a.precision.resolve_bf16_trained::<B>(device) };
            let dtype = format!("{}/{}/{}", text_precision.name(), transformer_precision.name(), vae_precision.name());
            let side = |cpu: bool| if cpu || cpu_backend { "CPU" } else { "GPU" };
            let placement = Some(format!("text encoder on the {} · autoencoder on the {}", side(text_on_cpu), side(vae_on_cpu)));
            Ok(SanaBenchResult { timings: Timings::from_samples(totals), phases: Some(phases), build_s, peak_rss_mib: peak_rss_mib(), dtype, placement, output })
        }
    }
}

/// The text rows of a t2i run: the positive pass (instruction + prompt, its last 300 rows) per
/// image, with guidance the negative pass first, once per image.
fn text_rows<E: Backend>(gemma: &Gemma2<E>, tokens: usize, b: usize, use_cfg: bool, device: &E::Device) -> Vec<Tensor<E, 3>> {
    let (pid, pmask) = ids::<E>(tokens, device);
    let mut rows = Vec::new();
    for _ in 0..b {
        if let Some(h) = gemma.forward(pid.clone(), pmask.clone(), &mut |_, _| true) {
            let [_, l, _] = h.dims();
            rows.push(h.narrow(1, l - MAX_SEQUENCE_LENGTH, MAX_SEQUENCE_LENGTH));
        }
    }
    if use_cfg {
        let (nid, nmask) = ids::<E>(MAX_SEQUENCE_LENGTH, device);
        if let Some(h) = gemma.forward(nid, nmask, &mut |_, _| true) {
            rows.splice(0..0, std::iter::repeat_n(h, b));
        }
    }
    rows
}

/// Waits for the work behind `t` (the CPU backend is eager; GPU backends are not).
fn sync3<B: Backend>(t: &Tensor<B, 3>) {
    let _ = t.clone().slice([0..1, 0..1, 0..1]).into_data();
}

/// `DCAE_SANA_PROFILE=1 dcae bench --task forward …`: the median time of each part of the
/// first transformer block on random activations, printed to stderr, with what the parts
/// cost over all blocks. The `proj` rows are the parts' Linear layers alone (so the rest of a
/// part is its attention core, or the depthwise convolution and GLU).
fn profile_block<B: Backend>(model: &SanaTransformer<B>, batch: usize, side: usize, runs: usize, device: &B::Device) {
    let cfg = &model.config;
    let (d, n, l, f) = (cfg.hidden(), side * side, MAX_SEQUENCE_LENGTH, cfg.ffn_hidden());
    let blk = &model.transformer_blocks[0];
    let rnd = |shape: [usize; 3]| Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let x = rnd([batch, n, d]);
    let m = Tensor::<B, 2>::random([batch, 6 * d], Distribution::Normal(0.0, 0.1), device);
    let text = rnd([batch, l, d]);
    let bias = Tensor::<B, 4>::zeros([batch, 1, 1, l], device);
    let [shift1, scale1, gate1, ..] = blk.modulation(m.clone());
    let a = norm_modulate(x.clone(), shift1.clone(), scale1.clone(), blk.norm_eps);
    let y = rnd([batch, n, f]);
    let mut rows: Vec<(&str, f64)> = Vec::new();
    let mut time = |name: &'static str, f: &mut dyn FnMut() -> Tensor<B, 3>| {
        sync3(&f());
        let mut v: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                sync3(&f());
                t.elapsed().as_secs_f64()
            })
            .collect();
        v.sort_by(f64::total_cmp);
        rows.push((name, v[v.len() / 2]));
    };
    let (k, v) = blk.attn2.keys_values(text.clone());
    time("block (whole, per step)", &mut || blk.forward(x.clone(), m.clone(), (&k, &v), &bias, (side, side)));
    time("modulation + norm", &mut || {
        let [s1, c1, ..] = blk.modulation(m.clone());
        norm_modulate(x.clone(), s1, c1, blk.norm_eps)
    });
    time("attn1 (linear attention)", &mut || blk.attn1.forward(a.clone()));
    time("  attn1 proj (q,k,v,out)", &mut || {
        let q = lin(&blk.attn1.to_q, a.clone());
        let k = lin(&blk.attn1.to_k, a.clone());
        let v = lin(&blk.attn1.to_v, a.clone());
        lin(&blk.attn1.to_out, q + k + v)
    });
    time("gated residual", &mut || add_gated(x.clone(), Some(gate1.clone()), a.clone()));
    time("attn2 (cross attention)", &mut || blk.attn2.forward(x.clone(), (&k, &v), &bias));
    time("  attn2 proj (q,out)", &mut || lin(&blk.attn2.to_out, lin(&blk.attn2.to_q, x.clone())));
    time("attn2 caption k,v (once a run)", &mut || {
        let (k, v) = blk.attn2.keys_values(text.clone());
        k + v
    });
    time("ff (GLUMBConv)", &mut || blk.ff.forward(a.clone(), side, side));
    time("  ff proj (inverted, point)", &mut || {
        let _h = lin(&blk.ff.conv_inverted, a.clone());
        lin(&blk.ff.conv_point, y.clone())
    });
    let layers = cfg.num_layers as f64;
    eprintln!("profile of one block ({} blocks), median of {runs}, batch {batch}, {n} tokens:", cfg.num_layers);
    eprintln!("{:<30} {:>9} {:>12}", "part", "ms", "s all blocks");
    for (name, t) in &rows {
        eprintln!("{name:<30} {:>9.2} {:>12.3}", t * 1e3, t * layers);
    }
}
