//! TEMPORARY stand-in until the hub branch lands: local folders only.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

pub struct HubOptions;
impl HubOptions {
    pub fn from_env() -> Self {
        HubOptions
    }
}
pub struct DownloadProgress {
    pub file: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
}
pub struct ModelFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HubError(String);
pub fn resolve_model(
    arg: &str,
    _o: &HubOptions,
    _p: &mut dyn FnMut(DownloadProgress),
    _c: &AtomicBool,
) -> Result<ModelFiles, HubError> {
    let d = PathBuf::from(arg);
    let w = ["model.safetensors", "diffusion_pytorch_model.safetensors"]
        .iter()
        .map(|f| d.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| HubError(format!("no weights in {arg}")))?;
    Ok(ModelFiles { config: d.join("config.json"), weights: w })
}
