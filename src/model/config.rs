//! DC-AE configurations: the published registry and diffusers `AutoencoderDC` config.json files.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::layers::{Act, NormKind};

/// A stage's block, in efficientvit's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockType {
    /// conv3×3 → act → conv3×3 → norm, plus identity.
    ResBlock,
    /// LiteMLA (with multi-scale aggregation branches of these kernel sizes) + GLUMBConv.
    /// `EViT_GLU` has no scales, `EViTS5_GLU` has `[5]`.
    EfficientVit { scales: Vec<usize> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Downsample {
    /// conv3×3 to C/4, then pixel-unshuffle ×2 (in / mix).
    ConvPixelUnshuffle,
    /// Stride-2 conv3×3 (sana).
    StridedConv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Upsample {
    /// conv3×3 to 4C, then pixel-shuffle ×2 (in / mix).
    ConvPixelShuffle,
    /// Nearest ×2, then conv3×3 (sana).
    InterpolateConv,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub width_list: Vec<usize>,
    pub depth_list: Vec<usize>,
    pub block_type: Vec<BlockType>,
    pub downsample: Downsample,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub width_list: Vec<usize>,
    pub depth_list: Vec<usize>,
    pub block_type: Vec<BlockType>,
    pub norm: Vec<NormKind>,
    pub act: Vec<Act>,
    pub upsample: Upsample,
}

/// More stages than any DC-AE has (f128 is 8): a factor of 2^11 = 2048 at most.
pub const MAX_STAGES: usize = 12;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DcaeConfig {
    /// The published name (`dc-ae-f64c128-in-1.0`) or a description of where it came from.
    pub name: String,
    pub in_channels: usize,
    pub latent_channels: usize,
    pub encoder: EncoderConfig,
    pub decoder: DecoderConfig,
    /// `z_diffusion = encode(x) · scaling_factor`.
    pub scaling_factor: f32,
    /// Channels per LiteMLA head: 32 in every published DC-AE (the test fixtures use less).
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: usize,
}

/// Channels per LiteMLA head in every published DC-AE.
pub const HEAD_DIM: usize = 32;

fn default_head_dim() -> usize {
    HEAD_DIM
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown model name `{0}`; known DC-AE models: {1}")]
    UnknownName(String, String),
    #[error("invalid DC-AE config: {0}")]
    Invalid(String),
}

impl DcaeConfig {
    /// The architecture of a published model, by its name (with or without `mit-han-lab/` and
    /// `-diffusers`).
    pub fn published(name: &str) -> Result<Self, ConfigError> {
        let base = name.trim_start_matches("mit-han-lab/").trim_end_matches("-diffusers");
        let Some((name, sf)) = super::registry::autoencoders().find(|p| p.name == base).map(|p| (p.name, p.scaling_factor())) else {
            let known: Vec<_> = super::registry::autoencoders().map(|p| p.name).collect();
            return Err(ConfigError::UnknownName(name.to_string(), known.join(", ")));
        };
        let evit = || BlockType::EfficientVit { scales: vec![] };
        let in_mix = |widths: &[usize], enc_depth: &[usize], dec_depth: &[usize], latent: usize| {
            let n = widths.len();
            let blocks: Vec<BlockType> =
                (0..n).map(|s| if s < 3 { BlockType::ResBlock } else { evit() }).collect();
            DcaeConfig {
                name: name.to_string(),
                in_channels: 3,
                latent_channels: latent,
                encoder: EncoderConfig {
                    width_list: widths.to_vec(),
                    depth_list: enc_depth.to_vec(),
                    block_type: blocks.clone(),
                    downsample: Downsample::ConvPixelUnshuffle,
                },
                decoder: DecoderConfig {
                    width_list: widths.to_vec(),
                    depth_list: dec_depth.to_vec(),
                    block_type: blocks,
                    norm: (0..n).map(|s| if s < 3 { NormKind::BatchNorm } else { NormKind::RmsNorm }).collect(),
                    act: (0..n).map(|s| if s < 3 { Act::Relu } else { Act::Silu }).collect(),
                    upsample: Upsample::ConvPixelShuffle,
                },
                scaling_factor: sf,
                attention_head_dim: default_head_dim(),
            }
        };
        let cfg = if base.starts_with("dc-ae-f32c32-sana") {
            let widths = [128, 256, 512, 512, 1024, 1024];
            let blocks: Vec<BlockType> = (0..6)
                .map(|s| if s < 3 { BlockType::ResBlock } else { BlockType::EfficientVit { scales: vec![5] } })
                .collect();
            DcaeConfig {
                name: name.to_string(),
                in_channels: 3,
                latent_channels: 32,
                encoder: EncoderConfig {
                    width_list: widths.to_vec(),
                    depth_list: vec![2, 2, 2, 3, 3, 3],
                    block_type: blocks.clone(),
                    downsample: Downsample::StridedConv,
                },
                decoder: DecoderConfig {
                    width_list: widths.to_vec(),
                    depth_list: vec![3, 3, 3, 3, 3, 3],
                    block_type: blocks,
                    norm: vec![NormKind::RmsNorm; 6],
                    act: vec![Act::Silu; 6],
                    upsample: Upsample::InterpolateConv,
                },
                scaling_factor: sf,
                attention_head_dim: default_head_dim(),
            }
        } else if base.starts_with("dc-ae-f32c32") {
            in_mix(&[128, 256, 512, 512, 1024, 1024], &[0, 4, 8, 2, 2, 2], &[0, 5, 10, 2, 2, 2], 32)
        } else if base.starts_with("dc-ae-f64c128") {
            in_mix(&[128, 256, 512, 512, 1024, 1024, 2048], &[0, 4, 8, 2, 2, 2, 2], &[0, 5, 10, 2, 2, 2, 2], 128)
        } else {
            in_mix(
                &[128, 256, 512, 512, 1024, 1024, 2048, 2048],
                &[0, 4, 8, 2, 2, 2, 2, 2],
                &[0, 5, 10, 2, 2, 2, 2, 2],
                512,
            )
        };
        Ok(cfg)
    }

    /// Spatial compression factor: 2^(stages − 1).
    pub fn factor(&self) -> usize {
        // Saturating: a config is asked for its factor before it is validated (model scan).
        1 << self.encoder.width_list.len().saturating_sub(1).min(MAX_STAGES - 1)
    }

    /// Reads a config.json: either `{"model_name": <published name>}` (original repos) or a
    /// diffusers `AutoencoderDC` config.
    pub fn from_json(v: &Value, name: &str) -> Result<Self, ConfigError> {
        if let Some(n) = v.get("model_name").and_then(Value::as_str) {
            return Self::published(n);
        }
        Self::from_diffusers(v, name)
    }

    /// A diffusers `AutoencoderDC` config (lists per stage, or — as the converted sana
    /// checkpoints write them — one string for all stages).
    pub fn from_diffusers(v: &Value, name: &str) -> Result<Self, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(m);
        let usizes = |k: &str| -> Result<Vec<usize>, ConfigError> {
            v.get(k)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("`{k}` must be a list of integers")))?
                .iter()
                .map(|x| x.as_u64().map(|x| x as usize).ok_or_else(|| bad(format!("`{k}` must hold integers"))))
                .collect()
        };
        let num = |k: &str, default: Option<f64>| -> Result<f64, ConfigError> {
            match v.get(k) {
                Some(x) => x.as_f64().ok_or_else(|| bad(format!("`{k}` must be a number"))),
                None => default.ok_or_else(|| bad(format!("`{k}` is missing"))),
            }
        };
        let strings = |k: &str, n: usize, default: &str| -> Result<Vec<String>, ConfigError> {
            match v.get(k) {
                None => Ok(vec![default.to_string(); n]),
                Some(Value::String(s)) => Ok(vec![s.clone(); n]),
                Some(Value::Array(a)) if a.len() == n => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_string).ok_or_else(|| bad(format!("`{k}` must hold strings"))))
                    .collect(),
                Some(_) => Err(bad(format!("`{k}` must be a string or a list of {n} strings"))),
            }
        };
        let scales = |k: &str, n: usize| -> Result<Vec<Vec<usize>>, ConfigError> {
            match v.get(k) {
                None => Ok(vec![vec![]; n]),
                Some(Value::Array(a)) if a.len() == n => a
                    .iter()
                    .map(|s| {
                        s.as_array()
                            .ok_or_else(|| bad(format!("`{k}` must be a list of lists")))?
                            .iter()
                            .map(|x| x.as_u64().map(|x| x as usize).ok_or_else(|| bad(format!("`{k}` must hold integers"))))
                            .collect()
                    })
                    .collect(),
                Some(_) => Err(bad(format!("`{k}` must be a list of {n} lists"))),
            }
        };
        let blocks = |k: &str, scales: &[Vec<usize>]| -> Result<Vec<BlockType>, ConfigError> {
            strings(k, scales.len(), "")?
                .iter()
                .zip(scales)
                .map(|(b, s)| match b.as_str() {
                    "ResBlock" => Ok(BlockType::ResBlock),
                    "EfficientViTBlock" => Ok(BlockType::EfficientVit { scales: s.clone() }),
                    other => Err(bad(format!("unknown block type `{other}` in `{k}`"))),
                })
                .collect()
        };
        let head_dim = num("attention_head_dim", Some(32.0))?;
        if !(head_dim >= 1.0 && head_dim <= 1024.0 && head_dim.fract() == 0.0) {
            return Err(bad(format!("attention_head_dim {head_dim} is not a head width (every published DC-AE uses 32)")));
        }
        for (k, want) in [("encoder_out_shortcut", true), ("decoder_in_shortcut", true)] {
            if v.get(k).and_then(Value::as_bool).is_some_and(|b| b != want) {
                return Err(bad(format!("`{k}: false` is not supported (no published model uses it)")));
            }
        }
        if v.get("decoder_conv_act_fn").and_then(Value::as_str).is_some_and(|a| a != "relu") {
            return Err(bad("`decoder_conv_act_fn` other than relu is not supported".into()));
        }
        let enc_w = usizes("encoder_block_out_channels")?;
        let dec_w = usizes("decoder_block_out_channels")?;
        let enc_d = usizes("encoder_layers_per_block")?;
        let dec_d = usizes("decoder_layers_per_block")?;
        let n = enc_w.len();
        if n < 2 || [dec_w.len(), enc_d.len(), dec_d.len()].iter().any(|&l| l != n) {
            return Err(bad("the per-stage lists must all have the same length (at least 2)".into()));
        }
        let enc_blocks = blocks("encoder_block_types", &scales("encoder_qkv_multiscales", n)?)?;
        let dec_blocks = blocks("decoder_block_types", &scales("decoder_qkv_multiscales", n)?)?;
        let norm = strings("decoder_norm_types", n, "rms_norm")?
            .iter()
            .map(|s| match s.as_str() {
                "batch_norm" => Ok(NormKind::BatchNorm),
                "rms_norm" => Ok(NormKind::RmsNorm),
                o => Err(bad(format!("unknown norm `{o}`"))),
            })
            .collect::<Result<_, _>>()?;
        let act = strings("decoder_act_fns", n, "silu")?
            .iter()
            .map(|s| match s.as_str() {
                "relu" => Ok(Act::Relu),
                "silu" => Ok(Act::Silu),
                o => Err(bad(format!("unknown activation `{o}`"))),
            })
            .collect::<Result<_, _>>()?;
        // diffusers: anything but "pixel_unshuffle" is a strided conv; upsampling is
        // "pixel_shuffle" or "interpolate".
        let down = match v.get("downsample_block_type").and_then(Value::as_str).unwrap_or("pixel_unshuffle") {
            "pixel_unshuffle" => Downsample::ConvPixelUnshuffle,
            _ => Downsample::StridedConv,
        };
        let up = match v.get("upsample_block_type").and_then(Value::as_str).unwrap_or("pixel_shuffle") {
            "pixel_shuffle" => Upsample::ConvPixelShuffle,
            "interpolate" => Upsample::InterpolateConv,
            o => return Err(bad(format!("unknown upsample_block_type `{o}`"))),
        };
        let cfg = DcaeConfig {
            name: name.to_string(),
            in_channels: num("in_channels", Some(3.0))? as usize,
            latent_channels: num("latent_channels", None)? as usize,
            encoder: EncoderConfig { width_list: enc_w, depth_list: enc_d, block_type: enc_blocks, downsample: down },
            decoder: DecoderConfig { width_list: dec_w, depth_list: dec_d, block_type: dec_blocks, norm, act, upsample: up },
            scaling_factor: num("scaling_factor", Some(1.0))? as f32,
            attention_head_dim: head_dim as usize,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every rule the model code relies on, so a hand-written or downloaded config.json
    /// is refused with a message instead of panicking (a zero width once divided by zero) or
    /// building a model whose shapes cannot line up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let (e, d) = (&self.encoder, &self.decoder);
        let w = &e.width_list;
        let n = w.len();
        if !(2..=MAX_STAGES).contains(&n) {
            return bad(format!("{n} stage(s); a DC-AE has 2 to {MAX_STAGES} (the published ones 6 to 8)"));
        }
        let lists = [
            ("decoder widths", d.width_list.len()),
            ("encoder depths", e.depth_list.len()),
            ("decoder depths", d.depth_list.len()),
            ("encoder block types", e.block_type.len()),
            ("decoder block types", d.block_type.len()),
            ("decoder norms", d.norm.len()),
            ("decoder activations", d.act.len()),
        ];
        if let Some((what, len)) = lists.iter().find(|(_, len)| *len != n) {
            return bad(format!("{n} encoder widths but {len} {what}: every per-stage list needs one entry per stage"));
        }
        // Before any arithmetic on them (4·w overflowed for a width of 2^62): every published
        // DC-AE is within these by far, and past them building the model would exhaust memory.
        if let Some(w) = e.width_list.iter().chain(&d.width_list).find(|&&w| w > MAX_WIDTH) {
            return bad(format!("a stage width of {w} is beyond any DC-AE (at most {MAX_WIDTH}); is the config.json damaged?"));
        }
        if let Some(depth) = e.depth_list.iter().chain(&d.depth_list).find(|&&x| x > MAX_DEPTH) {
            return bad(format!("a stage depth of {depth} is beyond any DC-AE (at most {MAX_DEPTH}); is the config.json damaged?"));
        }
        if self.in_channels > 64 {
            return bad(format!("in_channels {} is beyond any DC-AE (images have 3)", self.in_channels));
        }
        for b in e.block_type.iter().chain(&d.block_type) {
            if let BlockType::EfficientVit { scales } = b {
                if scales.len() > 8 || scales.iter().any(|&k| k > 31) {
                    return bad(format!("multi-scale kernel sizes {scales:?} are beyond any DC-AE (the published use [5])"));
                }
            }
        }
        let params = self.approx_params();
        if params > MAX_PARAMS {
            return bad(format!("the config describes about {:.1} billion parameters, beyond any DC-AE; is the config.json damaged?", params as f64 / 1e9));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return bad(format!("scaling_factor {} must be a positive number", self.scaling_factor));
        }
        let hd = self.attention_head_dim;
        for (part, c) in [("encoder", e.block_type.iter().zip(&e.width_list).collect::<Vec<_>>()), ("decoder", d.block_type.iter().zip(&d.width_list).collect())] {
            if let Some((_, w)) = c.iter().find(|(b, w)| matches!(b, BlockType::EfficientVit { .. }) && (hd == 0 || **w % hd != 0)) {
                return bad(format!("{part} width {w} is not a multiple of attention_head_dim {hd}: the attention stages split channels into heads of that width"));
            }
        }
        if e.width_list != d.width_list {
            return bad("encoder and decoder widths differ (not supported)".into());
        }
        if let Some(s) = w.iter().position(|&x| x == 0) {
            return bad(format!("stage {s} has width 0; every stage width must be positive"));
        }
        if self.in_channels == 0 {
            return bad("in_channels is 0; images have 3".into());
        }
        let last = w[n - 1];
        if self.latent_channels == 0 || last % self.latent_channels != 0 {
            return bad(format!("last width {last} must be a multiple of latent_channels {}", self.latent_channels));
        }
        // (The head width itself is checked above against the config's `attention_head_dim`,
        // as diffusers does; 32 is only the published models' value.)
        for b in e.block_type.iter().chain(&d.block_type) {
            if let BlockType::EfficientVit { scales } = b {
                if scales.iter().any(|&k| k == 0 || k % 2 == 0) {
                    return bad(format!("multi-scale kernel sizes {scales:?} must be odd and positive"));
                }
            }
        }
        for (side, depths) in [("encoder", &e.depth_list), ("decoder", &d.depth_list)] {
            // Each stage but the last halves (or doubles) the resolution: with its resampling
            // block when it has blocks, or — for an empty first stage, as in the in / mix
            // models — with the pixel-(un)shuffle head. An empty middle stage would do neither.
            if let Some(s) = (1..n - 1).find(|&s| depths[s] == 0) {
                return bad(format!("{side} stage {s} is empty; only the first and the last stage may have depth 0"));
            }
            if depths[0] == 0 && w[1] % 4 != 0 {
                return bad(format!("the first stage is empty, so width {} (stage 1) must be a multiple of 4 for the pixel-(un)shuffle head", w[1]));
            }
            for s in 0..n - 1 {
                // Only a stage with blocks has a resampling block after it (the original builds
                // none after an empty stage), and only that block has a residual shortcut, which
                // regroups the 4·w[s] channels of a 2×2 (un)shuffle.
                if depths[s] > 0 && (4 * w[s]) % w[s + 1] != 0 {
                    return bad(format!("widths {} → {} cannot be resampled by the shortcuts", w[s], w[s + 1]));
                }
            }
        }
        if e.downsample == Downsample::ConvPixelUnshuffle {
            if let Some(s) = (0..n - 1).find(|&s| e.depth_list[s] > 0 && w[s + 1] % 4 != 0) {
                return bad(format!("width {} (stage {}) must be a multiple of 4 for the pixel-unshuffle downsampling", w[s + 1], s + 1));
            }
        }
        Ok(())
    }

    /// An upper estimate of the parameter count (a block is at most a few dozen w², each stage
    /// has a resampling block of at most 36 w²), to refuse absurd configs before building them.
    /// Only meaningful once the widths, depths and kernels are bounded, as [`Self::validate`]
    /// checks first; saturating, so it never overflows.
    pub fn approx_params(&self) -> u64 {
        let (e, d) = (&self.encoder, &self.decoder);
        let widest = e.width_list.iter().chain(&d.width_list).copied().max().unwrap_or(0) as u64;
        let io = (self.in_channels as u64).saturating_add(self.latent_channels as u64).saturating_mul(18).saturating_mul(widest);
        let side = |widths: &[usize], depths: &[usize], blocks: &[BlockType]| -> u64 {
            widths.iter().zip(depths).zip(blocks).fold(0u64, |acc, ((&w, &depth), b)| {
                let w = w as u64;
                let kernels: u64 = match b {
                    BlockType::EfficientVit { scales } => scales.iter().map(|&k| 3 * w * (k as u64).pow(2) + 9 * w * w).sum(),
                    BlockType::ResBlock => 0,
                };
                acc.saturating_add((depth as u64).saturating_mul(32 * w * w + kernels)).saturating_add(36 * w * w)
            })
        };
        io.saturating_add(side(&e.width_list, &e.depth_list, &e.block_type)).saturating_add(side(&d.width_list, &d.depth_list, &d.block_type))
    }
}

/// Bounds far beyond every published DC-AE (widths up to 2048, depths up to 10, about 2.4
/// billion parameters by [`DcaeConfig::approx_params`]'s estimate for f128c512).
const MAX_WIDTH: usize = 1 << 14;
const MAX_DEPTH: usize = 64;
const MAX_PARAMS: u64 = 1 << 33;

pub use super::registry::diffusion_autoencoder;
