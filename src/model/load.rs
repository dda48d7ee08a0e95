//! From files on disk to a ready model: config → architecture → strict weight load.

use std::path::Path;

use burn::tensor::backend::Backend;
use serde_json::Value;

use super::{Dcae, DcaeConfig};
use crate::weights::{load_strict, Checkpoint, LoadError};

/// Prefix of the autoencoder inside the combined diffusion checkpoints.
pub const AE_PREFIX: &str = "autoencoder.";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not valid JSON: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("{0}")]
    Config(#[from] super::config::ConfigError),
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("{0}")]
    Other(String),
}

/// Config files bigger than this are not configs (the largest real one is a few kB).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

pub fn read_json(path: &Path) -> Result<Value, ModelError> {
    let io = |source| ModelError::Io { path: path.display().to_string(), source };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(ModelError::Other(format!("{} is {len} bytes: far too large for a model config; is it the right file?", path.display())));
    }
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.display().to_string(), source })?;
    serde_json::from_str(&python_json(&text)).map_err(|source| ModelError::Json { path: path.display().to_string(), source })
}

/// Python's `json` writes `NaN`, `Infinity` and `-Infinity` (diffusers' scheduler configs have
/// `"lambda_min_clipped": -Infinity`), which strict JSON lacks: outside strings they become
/// `null`, which every field that could hold them treats as unset.
pub fn python_json(text: &str) -> std::borrow::Cow<'_, str> {
    if !(text.contains("NaN") || text.contains("Infinity")) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"].iter().find(|t| rest.starts_with(**t)) {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

/// The autoencoder's config from a config.json: `{"model_name": …}`, a diffusers
/// `AutoencoderDC` config, or a combined diffusion config (`{"autoencoder": {…}, …}`).
pub fn dcae_config_from_json(v: &Value, name: &str) -> Result<DcaeConfig, ModelError> {
    if let Some(ae) = v.get("autoencoder") {
        let mut cfg = DcaeConfig::from_json(ae, name)?;
        if let Some(sf) = v.get("scaling_factor").and_then(Value::as_f64) {
            cfg.scaling_factor = sf as f32;
        }
        return Ok(cfg);
    }
    if let Some(n) = v.get("model_name").and_then(Value::as_str) {
        if let Some(ae) = super::config::diffusion_autoencoder(n) {
            return Ok(DcaeConfig::published(ae)?);
        }
    }
    Ok(DcaeConfig::from_json(v, name)?)
}

/// Builds `cfg`'s autoencoder from `ckpt`, strictly: the AE part of the file (the whole file,
/// or everything under `autoencoder.` in a combined diffusion checkpoint) must hold exactly
/// the expected keys with the expected shapes.
pub fn load_dcae<B: Backend>(ckpt: &Checkpoint, cfg: &DcaeConfig, device: &B::Device) -> Result<Dcae<B>, ModelError> {
    let prefix = if ckpt.keys().any(|k| k.starts_with(AE_PREFIX)) { AE_PREFIX } else { "" };
    let Some(layout) = ckpt.layout(prefix) else {
        let sample: Vec<_> = ckpt.keys().take(5).collect();
        return Err(ModelError::Load(LoadError::Layout {
            path: ckpt.path().to_path_buf(),
            reason: format!("holds no DC-AE weights (neither efficientvit nor diffusers key names); its first keys are {sample:?}"),
        }));
    };
    Ok(load_strict(ckpt, prefix, layout, device, &cfg.name, |w| Dcae::load(w, cfg))?)
}

/// Reads `config.json` + a safetensors file and builds the autoencoder.
pub fn load_dcae_files<B: Backend>(
    config: &Path,
    weights: &Path,
    device: &B::Device,
) -> Result<(DcaeConfig, Dcae<B>), ModelError> {
    let name = config.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let cfg = dcae_config_from_json(&read_json(config)?, &name)?;
    let ckpt = Checkpoint::open(weights)?;
    let model = load_dcae(&ckpt, &cfg, device)?;
    Ok((cfg, model))
}
