//! The model catalog: which models are on this computer (local model folders and the
//! published models' state in the Hugging Face cache), read from the file system only. The
//! app's Models view and the local API's `sd-models` both list it, so it knows nothing of
//! either.
//!
//! Contact points: `ui::models` (the view, downloads) and `server` (`/sdapi/v1/sd-models`,
//! model switches) call [`Catalog::scan`]; the engine loads what [`ModelEntry::generator_source`]
//! returns.

use std::path::{Path, PathBuf};

use crate::engine::worker::api::{self, hub, hub::HubOptions};
use crate::engine::worker::ModelFilesRef;
pub use crate::engine::worker::GeneratorSource;
use crate::engine::worker::api::layout as pipeline;
use crate::engine::worker::api::registry::{self, Pretrained, Spec};

/// The generation model the app is built around.
pub const GENERATOR_REPO: &str = "mit-han-lab/dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// Class-conditional UViT + its DC-AE.
    ClassToImage,
    /// A SANA / Sprint pipeline (text encoder, transformer, DC-AE, scheduler).
    TextToImage,
    Autoencoder,
}

impl ModelKind {
    pub fn is_generator(self) -> bool {
        self != ModelKind::Autoencoder
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    Local(PathBuf),
    Hub(String),
}

#[derive(Clone, Debug)]
pub struct ModelEntry {
    /// Repo id, or the folder's path.
    pub key: String,
    pub label: String,
    pub kind: ModelKind,
    pub origin: Origin,
    pub about: String,
    /// Config and weights, when both are on disk (autoencoders and class-to-image models).
    pub files: Option<ModelFilesRef>,
    /// The pipeline folder, when every file of it is on disk (text-to-image models).
    pub pipeline: Option<PathBuf>,
    pub bytes_on_disk: u64,
    /// Bytes of an unfinished download (resume offers to continue from there).
    pub partial_bytes: u64,
    pub approx_bytes: Option<u64>,
    /// Download size per component, from the registry.
    pub components: &'static [(&'static str, u64)],
    /// `(factor, latent channels)` when the config could be read.
    pub geometry: Option<(usize, usize)>,
}

impl ModelEntry {
    pub fn available(&self) -> bool {
        self.files.is_some() || self.pipeline.is_some()
    }

    /// "f32c32" style tag.
    pub fn tag(&self) -> Option<String> {
        self.geometry.map(|(f, c)| format!("f{f}c{c}"))
    }

    /// What the engine loads to generate with this entry.
    pub fn generator_source(&self) -> Option<GeneratorSource> {
        match self.kind {
            ModelKind::ClassToImage => self.files.clone().map(GeneratorSource::Class),
            ModelKind::TextToImage => self.pipeline.clone().map(|root| GeneratorSource::Text { name: self.label.clone(), root }),
            ModelKind::Autoencoder => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub entries: Vec<ModelEntry>,
    pub local_dirs: Vec<PathBuf>,
}

fn folder_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Every file under `dir` (a pipeline's components are folders), two levels deep.
fn tree_size(dir: &Path) -> u64 {
    let subdirs: u64 = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).map(|p| folder_size(&p)).sum())
        .unwrap_or(0);
    folder_size(dir) + subdirs
}

fn local_entry(dir: &Path, label: String) -> Option<ModelEntry> {
    if pipeline::is_pipeline_dir(dir) {
        // A pipeline folder that does not resolve (a component missing) is listed with the
        // reason on hover rather than dropped: the user pointed at it.
        let resolved = pipeline::resolve_pipeline_dir(dir, None);
        let about = match &resolved {
            Ok(p) => format!("local {} pipeline {}", kind_word(p.kind), dir.display()),
            Err(e) => format!("incomplete pipeline {}: {e}", dir.display()),
        };
        return Some(ModelEntry {
            key: dir.display().to_string(),
            label: label.clone(),
            kind: ModelKind::TextToImage,
            origin: Origin::Local(dir.to_path_buf()),
            about,
            files: resolved.as_ref().ok().and_then(|p| vae_files(p, &label)),
            pipeline: resolved.ok().map(|_| dir.to_path_buf()),
            bytes_on_disk: tree_size(dir),
            partial_bytes: 0,
            approx_bytes: None,
            components: &[],
            geometry: Some((32, 32)),
        });
    }
    let files = hub::resolve_local_dir(dir).ok()?;
    let kind = if api::config_is_generator(&files.config) { ModelKind::ClassToImage } else { ModelKind::Autoencoder };
    let geometry = api::autoencoder_config(&files.config, &label).ok().map(|c| (c.factor(), c.latent_channels));
    let weights_size = std::fs::metadata(&files.weights).map(|m| m.len()).unwrap_or(0);
    Some(ModelEntry {
        key: dir.display().to_string(),
        label: label.clone(),
        kind,
        origin: Origin::Local(dir.to_path_buf()),
        about: format!("local folder {}", dir.display()),
        files: Some(ModelFilesRef { name: label, config: files.config, weights: files.weights }),
        pipeline: None,
        bytes_on_disk: folder_size(dir).max(weights_size),
        partial_bytes: 0,
        approx_bytes: None,
        components: &[],
        geometry,
    })
}

/// A pipeline's DC-AE as a model of its own, so Reconstruct can compare it with the others.
fn vae_files(p: &pipeline::PipelineFiles, label: &str) -> Option<ModelFilesRef> {
    match &p.vae.weights {
        pipeline::WeightFiles::Single(w) => Some(ModelFilesRef { name: format!("{label} (autoencoder)"), config: p.vae.config.clone(), weights: w.clone() }),
        pipeline::WeightFiles::Sharded(_) => None,
    }
}

fn kind_word(kind: pipeline::PipelineKind) -> &'static str {
    match kind {
        pipeline::PipelineKind::Sana => "SANA",
        pipeline::PipelineKind::Sprint => "SANA-Sprint",
    }
}

/// A published model's row: what the cache holds of it (the file system only, never the
/// network).
fn published_entry(p: &Pretrained, hub_opts: &HubOptions, cached: &[hub::CachedModel]) -> ModelEntry {
    let repo = p.repo();
    let short = p.name.to_string();
    let offline = hub_opts.clone().with_offline(true);
    let never = std::sync::atomic::AtomicBool::new(false);
    let (kind, files, pipeline_root) = match p.spec {
        Spec::TextToImage(_) => {
            let found = pipeline::fetch_pipeline(&repo, &offline, None, &mut |_| {}, &never).ok();
            (ModelKind::TextToImage, found.as_ref().and_then(|f| vae_files(f, &short)), found.map(|f| f.root))
        }
        _ => {
            let kind = if p.is_generator() { ModelKind::ClassToImage } else { ModelKind::Autoencoder };
            let files = if hub::is_cached(&repo, hub_opts) {
                hub::resolve_model(&repo, &offline, &mut |_| {}, &never)
                    .ok()
                    .map(|f| ModelFilesRef { name: short.clone(), config: f.config, weights: f.weights })
            } else {
                None
            };
            (kind, files, None)
        }
    };
    let bytes_on_disk = cached.iter().filter(|c| c.repo == repo).map(|c| c.total_bytes).max().unwrap_or(0);
    let geometry = api::dcae_published(p.autoencoder()).ok().map(|c| (c.factor(), c.latent_channels));
    ModelEntry {
        key: repo.clone(),
        label: short,
        kind,
        origin: Origin::Hub(repo.clone()),
        about: p.about.to_string(),
        files,
        pipeline: pipeline_root,
        bytes_on_disk,
        partial_bytes: hub::partial_download_bytes(&repo, hub_opts),
        approx_bytes: p.approx_bytes(),
        components: p.components.unwrap_or(&[]),
        geometry,
    }
}

impl Catalog {
    /// Finds models in `local_dirs` (each a model folder, or a folder of model folders, two
    /// levels deep) and the published models' state in the Hugging Face cache. Only the file
    /// system is read; nothing touches the network. Slow on a big cache or a network drive:
    /// the app runs it on a helper thread (`ui::Shared::rescan`).
    pub fn scan(local_dirs: &[PathBuf], hub_opts: &HubOptions) -> Self {
        let mut entries = Vec::new();
        for root in local_dirs {
            let root_name = root.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| root.display().to_string());
            if let Some(e) = local_entry(root, root_name) {
                entries.push(e);
                continue;
            }
            let mut subdirs: Vec<PathBuf> = std::fs::read_dir(root)
                .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
                .unwrap_or_default();
            subdirs.sort();
            for sub in subdirs {
                let name = sub.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                // A pipeline's component folders (vae/, transformer/ …) are not models of their
                // own; a pipeline beside them (the Sprint one in sana-tiny/sprint) is.
                let mut in_pipeline = false;
                if let Some(e) = local_entry(&sub, name.clone()) {
                    in_pipeline = e.kind == ModelKind::TextToImage;
                    entries.push(e);
                }
                let mut inner: Vec<PathBuf> = std::fs::read_dir(&sub)
                    .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
                    .unwrap_or_default();
                inner.sort();
                for d in inner {
                    if in_pipeline && !pipeline::is_pipeline_dir(&d) {
                        continue;
                    }
                    let inner_name = format!("{name}/{}", d.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default());
                    if let Some(e) = local_entry(&d, inner_name) {
                        entries.push(e);
                    }
                }
            }
        }
        let cached = hub::list_all_cached_models(hub_opts);
        for p in registry::PRETRAINED.iter().filter(|p| p.in_app) {
            entries.push(published_entry(p, hub_opts, &cached));
        }
        Self { entries, local_dirs: local_dirs.to_vec() }
    }

    pub fn get(&self, key: &str) -> Option<&ModelEntry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// The generation model to load at start: `preferred` (a key or a label, e.g. the one used
    /// last) when it is here, else a local one, else a published one that is cached
    /// (text-to-image first: that is what the app is opened for).
    pub fn default_generator_or(&self, preferred: Option<&str>) -> Option<String> {
        let wanted = preferred.and_then(|p| self.generators().filter(|e| e.available()).find(|e| e.key == p || e.label == p));
        wanted.map(|e| e.key.clone()).or_else(|| self.default_generator())
    }

    pub fn default_generator(&self) -> Option<String> {
        let gens = || self.entries.iter().filter(|e| e.kind.is_generator() && e.available());
        let local = || gens().filter(|e| matches!(e.origin, Origin::Local(_)));
        local()
            .find(|e| e.kind == ModelKind::TextToImage)
            .or_else(|| local().next())
            .or_else(|| gens().find(|e| e.kind == ModelKind::TextToImage))
            .or_else(|| gens().next())
            .map(|e| e.key.clone())
    }

    pub fn autoencoders(&self) -> impl Iterator<Item = &ModelEntry> {
        self.entries.iter().filter(|e| e.kind == ModelKind::Autoencoder)
    }

    pub fn generators(&self) -> impl Iterator<Item = &ModelEntry> {
        self.entries.iter().filter(|e| e.kind.is_generator())
    }
}
