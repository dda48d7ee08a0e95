//! The diffusers pipeline layout of the SANA repos (`Efficient-Large-Model/Sana_*_diffusers`):
//! `model_index.json` beside one folder per component.
//!
//! ```text
//!   model_index.json          SanaPipeline / SanaSprintPipeline
//!   tokenizer/tokenizer.json
//!   text_encoder/config.json  + model.safetensors | model.safetensors.index.json + shards
//!   transformer/config.json   + diffusion_pytorch_model[.fp16|.bf16].safetensors | index + shards
//!   vae/config.json           + diffusion_pytorch_model.safetensors
//!   scheduler/scheduler_config.json
//! ```
//!
//! Which weight file a component uses follows diffusers: a shard index wins over a single file of
//! the same name, and variant files (`fp16`, `bf16`) are used only when asked for. The same
//! resolution serves a local folder and a Hugging Face snapshot ([`fetch_pipeline`] downloads
//! exactly the files it names).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use crate::weights::hub::{self, DownloadProgress, HubError, HubOptions};
use crate::weights::{Checkpoint, LoadError};

pub const MODEL_INDEX: &str = "model_index.json";

/// Which pipeline a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PipelineKind {
    /// `SanaPipeline`: flow DPM-Solver++ with classifier-free guidance.
    Sana,
    /// `SanaSprintPipeline`: 1–4 step SCM sampling, guidance as an input.
    Sprint,
}

/// Where one component's weights are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightFiles {
    Single(PathBuf),
    /// A `*.safetensors.index.json` and the shards beside it.
    Sharded(PathBuf),
}

impl WeightFiles {
    pub fn open(&self) -> Result<Checkpoint, LoadError> {
        match self {
            WeightFiles::Single(p) => Checkpoint::open(p),
            WeightFiles::Sharded(p) => Checkpoint::open_index(p),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            WeightFiles::Single(p) | WeightFiles::Sharded(p) => p,
        }
    }
}

/// A component folder: its config and weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub config: PathBuf,
    pub weights: WeightFiles,
}

/// Every file a SANA pipeline needs, found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineFiles {
    pub root: PathBuf,
    pub kind: PipelineKind,
    pub tokenizer: PathBuf,
    pub text_encoder: Component,
    pub transformer: Component,
    pub vae: Component,
    pub scheduler: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{} is not a diffusers pipeline folder (it has no model_index.json)", .0.display())]
    NotAPipeline(PathBuf),
    #[error("{path}: {reason}")]
    Index { path: PathBuf, reason: String },
    #[error("{} is a {class} pipeline, not SANA: only SanaPipeline and SanaSprintPipeline repos generate from text here", .path.display())]
    OtherPipeline { path: PathBuf, class: String },
    #[error("{} is missing from the pipeline folder {}: a SANA pipeline has tokenizer/, text_encoder/, transformer/, vae/ and scheduler/ beside model_index.json (it holds: {}). Download the model again.", .component, .root.display(), .found.join(", "))]
    MissingComponent { root: PathBuf, component: String, found: Vec<String> },
    #[error("{} has none of {}; it holds: {}. Download the model again{}.", .dir.display(), .wanted.join(", "), .found.join(", "), .hint)]
    MissingFiles { dir: PathBuf, wanted: Vec<String>, found: Vec<String>, hint: String },
    #[error("{0}")]
    Hub(#[from] HubError),
}

/// `name.safetensors` → `name.{variant}.safetensors`, as diffusers names variant files.
fn variant_name(base: &str, variant: Option<&str>) -> (String, String) {
    match variant {
        Some(v) => (format!("{base}.{v}.safetensors"), format!("{base}.safetensors.index.{v}.json")),
        None => (format!("{base}.safetensors"), format!("{base}.safetensors.index.json")),
    }
}

/// The weight-file stem of each component.
fn weights_base(component: &str) -> &'static str {
    if component == "text_encoder" {
        "model"
    } else {
        "diffusion_pytorch_model"
    }
}

/// Components with weights, in loading order.
const WEIGHT_COMPONENTS: [&str; 3] = ["text_encoder", "transformer", "vae"];

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if e.path().is_dir() {
                        format!("{n}/")
                    } else {
                        n
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        names.push("nothing".into());
    }
    names
}

/// Whether `dir` looks like a pipeline folder (it has `model_index.json`).
pub fn is_pipeline_dir(dir: &Path) -> bool {
    dir.join(MODEL_INDEX).is_file()
}

/// Reads `model_index.json` and names the pipeline kind.
pub fn pipeline_kind(root: &Path) -> Result<PipelineKind, PipelineError> {
    let path = root.join(MODEL_INDEX);
    if !path.is_file() {
        return Err(PipelineError::NotAPipeline(root.to_path_buf()));
    }
    let index_err = |reason: String| PipelineError::Index { path: path.clone(), reason };
    // Checked before the read: reading first held a file of any size in memory.
    let len = std::fs::metadata(&path).map_err(|e| index_err(format!("cannot read it ({e})")))?.len();
    if len > 1 << 20 {
        return Err(index_err("it is over 1 MiB, far larger than any model index; download the model again".into()));
    }
    let bytes = std::fs::read(&path).map_err(|e| index_err(format!("cannot read it ({e})")))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| index_err(format!("not valid JSON ({e})")))?;
    match v.get("_class_name").and_then(Value::as_str) {
        Some("SanaPipeline") => Ok(PipelineKind::Sana),
        Some("SanaSprintPipeline") => Ok(PipelineKind::Sprint),
        Some(other) => Err(PipelineError::OtherPipeline { path, class: other.to_string() }),
        None => Err(index_err("it has no `_class_name`".into())),
    }
}

/// The files of a pipeline folder on disk. `variant` picks `*.fp16.*` / `*.bf16.*` weight
/// files for the components that have them (the others use their default file).
pub fn resolve_pipeline_dir(root: &Path, variant: Option<&str>) -> Result<PipelineFiles, PipelineError> {
    let kind = pipeline_kind(root)?;
    let sub = |name: &str| -> Result<PathBuf, PipelineError> {
        let dir = root.join(name);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(PipelineError::MissingComponent { root: root.to_path_buf(), component: format!("{name}/"), found: listing(root) })
        }
    };
    let file = |dir: &Path, names: &[&str]| -> Result<PathBuf, PipelineError> {
        names.iter().map(|n| dir.join(n)).find(|p| p.is_file()).ok_or_else(|| PipelineError::MissingFiles {
            dir: dir.to_path_buf(),
            wanted: names.iter().map(|s| s.to_string()).collect(),
            found: listing(dir),
            hint: String::new(),
        })
    };
    let component = |name: &str| -> Result<Component, PipelineError> {
        let dir = sub(name)?;
        let config = file(&dir, &["config.json"])?;
        Ok(Component { config, weights: component_weights(&dir, weights_base(name), variant)? })
    };
    let tokenizer = file(&sub("tokenizer")?, &["tokenizer.json"])?;
    let scheduler = file(&sub("scheduler")?, &["scheduler_config.json"])?;
    Ok(PipelineFiles {
        root: root.to_path_buf(),
        kind,
        tokenizer,
        text_encoder: component("text_encoder")?,
        transformer: component("transformer")?,
        vae: component("vae")?,
        scheduler,
    })
}

/// A component's weights: the variant (if asked and present), else the default; an index
/// before a single file.
fn component_weights(dir: &Path, base: &str, variant: Option<&str>) -> Result<WeightFiles, PipelineError> {
    let mut tried = Vec::new();
    let variants: &[Option<&str>] = if variant.is_some() { &[variant, None] } else { &[None] };
    for &v in variants {
        let (single, index) = variant_name(base, v);
        if dir.join(&index).is_file() {
            return Ok(WeightFiles::Sharded(dir.join(index)));
        }
        if dir.join(&single).is_file() {
            return Ok(WeightFiles::Single(dir.join(single)));
        }
        tried.push(index);
        tried.push(single);
    }
    Err(PipelineError::MissingFiles {
        dir: dir.to_path_buf(),
        wanted: tried,
        found: listing(dir),
        hint: variant.map(|v| format!(" (or leave out the {v} variant)")).unwrap_or_default(),
    })
}

/// Downloads (or finds in the cache) every file [`resolve_pipeline_dir`] needs from a Hugging
/// Face repo, all at the commit `model_index.json` belongs to, and resolves the snapshot.
/// `progress` hears about each file; `cancel` stops at the next read (partial files are kept
/// and resumed next time).
pub fn fetch_pipeline(
    repo: &str,
    opts: &HubOptions,
    variant: Option<&str>,
    progress: &mut dyn FnMut(DownloadProgress),
    cancel: &AtomicBool,
) -> Result<PipelineFiles, PipelineError> {
    let (index, commit) = hub::fetch_file(repo, opts, None, MODEL_INDEX, progress, cancel)?;
    let root = index.parent().map(Path::to_path_buf).unwrap_or_default();
    // Fails early, before gigabytes, on a repo that is not a SANA pipeline.
    pipeline_kind(&root)?;
    let get = |file: &str, progress: &mut dyn FnMut(DownloadProgress)| hub::fetch_file(repo, opts, Some(&commit), file, progress, cancel).map(|(p, _)| p);
    for file in ["tokenizer/tokenizer.json", "scheduler/scheduler_config.json"] {
        get(file, progress)?;
    }
    for component in WEIGHT_COMPONENTS {
        get(&format!("{component}/config.json"), progress)?;
        let mut found = false;
        let variants: &[Option<&str>] = if variant.is_some() { &[variant, None] } else { &[None] };
        for &v in variants {
            let (single, index) = variant_name(weights_base(component), v);
            // What the snapshot already holds needs no request (an index that a single-file
            // repo lacks would otherwise be asked for again every time).
            if !root.join(component).join(&index).is_file() && root.join(component).join(&single).is_file() {
                found = true;
                break;
            }
            match get(&format!("{component}/{index}"), progress) {
                Ok(path) => {
                    for shard in shard_names(&path)? {
                        get(&format!("{component}/{shard}"), progress)?;
                    }
                    found = true;
                }
                Err(HubError::FileNotFound { .. }) => match get(&format!("{component}/{single}"), progress) {
                    Ok(_) => found = true,
                    Err(HubError::FileNotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                },
                Err(e) => return Err(e.into()),
            }
            if found {
                break;
            }
        }
        if !found {
            let (single, index) = variant_name(weights_base(component), variant);
            return Err(PipelineError::MissingFiles {
                dir: root.join(component),
                wanted: vec![index, single],
                found: vec![format!("nothing of that name in {repo}")],
                hint: String::new(),
            });
        }
    }
    resolve_pipeline_dir(&root, variant)
}

/// The distinct shard files a `*.index.json` names, in order.
fn shard_names(index: &Path) -> Result<Vec<String>, PipelineError> {
    let err = |reason: String| PipelineError::Index { path: index.to_path_buf(), reason };
    let bytes = std::fs::read(index).map_err(|e| err(format!("cannot read it ({e})")))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| err(format!("not valid JSON ({e})")))?;
    let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| err("it has no `weight_map` object".into()))?;
    let mut names: Vec<String> = Vec::new();
    for file in map.values().filter_map(Value::as_str) {
        // Only plain names beside the index: a hostile index must not make us fetch or write
        // elsewhere.
        if file.is_empty() || file.contains(['/', '\\']) || file.starts_with('.') {
            return Err(err(format!("it names `{file}`, which is not a file beside the index")));
        }
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    Ok(names)
}
