//! Turning a model argument into local files: a folder on disk, or a Hugging Face repo id whose
//! files live in (or are fetched into) the standard Hugging Face cache.
//!
//! # Why the standard cache
//! Files that Python's `huggingface_hub` (or `diffusers`, or `huggingface-cli download`) already
//! fetched are reused as they are, and what we fetch is reused by Python. The layout, per repo:
//!
//! ```text
//! <cache>/models--<owner>--<name>/
//!     refs/<revision>                 text file holding the commit hash the revision points at
//!     snapshots/<commit>/<file>       symlink (relative) to ../../blobs/<etag>; a copy where
//!                                     symlinks are not allowed
//!     blobs/<etag>                    the file's bytes; <etag>.incomplete while downloading
//! <cache>/.locks/models--<owner>--<name>/<etag>.lock   held while a blob is being written
//! ```
//!
//! # What is fetched, and how
//! A model is `config.json` plus one weights file: `model.safetensors` (the original efficientvit
//! repos and the combined DC-AE + diffusion repos) or `diffusion_pytorch_model.safetensors` (the
//! `-diffusers` repos, whose config names a `_class_name`). Whatever the cache already holds is
//! used without any network request.
//!
//! Both files are fetched by this module's own small downloader (hf-hub 0.4's blocking API cannot
//! be stopped once a file has started, and it joins the hub's headers into cache paths unchecked).
//! It follows `huggingface_hub`'s conventions, so the two can resume each other's partial
//! downloads: bytes go to `blobs/<etag>.incomplete`; a later attempt asks for the rest with an
//! HTTP `Range` request; the finished blob is checked against its SHA-256 (LFS files), renamed
//! into place and linked from the snapshot folder, and `refs/<revision>` is written.
//!
//! # Layout
//! - `mod.rs`: the public types and errors, the entry points and how a repo is resolved;
//! - [`env`]: [`HubOptions`] and the environment variables they follow;
//! - `cache`: the cache layout of one repo (refs, snapshots, blobs, lock paths), no network;
//! - `http`: requests to the hub and what its headers say (validated before use);
//! - `download`: one cancellable, resumable, verified file download, and progress;
//! - `lock`: blob locks shared with `huggingface_hub`; `sha256`: the hash.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The hub used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The owner assumed for a bare model name such as `dc-ae-f32c32-in-1.0`.
pub const DEFAULT_OWNER: &str = "mit-han-lab";
/// Every DC-AE layout stores its architecture here.
pub const CONFIG_FILE: &str = "config.json";
/// Weights of the original efficientvit repos and of the combined diffusion repos.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Weights of the `-diffusers` repos.
pub const DIFFUSERS_WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// How long one blocking read may wait for the network. It bounds how late a cancel is noticed
/// on a stalled connection, and turns a dead connection into an error instead of a hang.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Progress is reported at most this often (plus at the start and the end of each file), so a GUI
/// is not flooded with one event per network packet.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
const PROGRESS_EVERY_BYTES: u64 = 1 << 20;

mod cache;
mod download;
pub mod env;
mod http;
mod lock;
mod sha256;

use self::cache::*;
use self::download::*;
use self::http::*;
pub use self::download::sha256_hex;
pub use self::env::HubOptions;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// Where a model's files came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder given on the command line or picked in the app.
    LocalDir(PathBuf),
    /// A Hugging Face repo, resolved through the cache.
    Hub {
        repo: String,
        revision: String,
        /// The commit the files belong to (the snapshot folder's name).
        commit: Option<String>,
    },
}

/// The two files a model needs, ready to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
    pub source: ModelSource,
}

impl ModelFiles {
    /// The model's name for people: the repo id for a model from the hub (its folder in the
    /// cache is only a commit hash), the folder's name for a local one.
    pub fn display_name(&self) -> String {
        match &self.source {
            ModelSource::Hub { repo, .. } => repo.clone(),
            ModelSource::LocalDir(dir) => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
        }
    }
}

/// Download progress of one file. `bytes_done` counts bytes already on disk, so a resumed
/// download starts at the size of its partial file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadProgress {
    /// The file's name inside the repo, e.g. `model.safetensors`.
    pub file: String,
    pub bytes_done: u64,
    /// Size of the whole file; 0 when the hub did not say.
    pub bytes_total: u64,
}

/// One cached revision of a repo, for the app's "Models" view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedModel {
    pub repo: String,
    /// The ref (`main`, a tag) pointing at `commit`; the commit itself for a snapshot that no ref
    /// points at (fetched by commit hash, or left behind when the branch moved on).
    pub revision: String,
    pub commit: String,
    /// Files of the snapshot (paths inside the repo, `/`-separated) with their sizes, sorted.
    pub files: Vec<(String, u64)>,
    pub total_bytes: u64,
}

/// Everything that can go wrong while finding or fetching a model. Messages are written for the
/// person running the app: they say what is missing and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("'{0}' does not exist; give an existing model folder or a Hugging Face repo id like mit-han-lab/dc-ae-f32c32-in-1.0")]
    FolderNotFound(PathBuf),

    #[error("{0} is a file; give the folder that holds config.json and the .safetensors weights")]
    NotAFolder(PathBuf),

    #[error("model folder {} has no {}; it holds: {}", .dir.display(), .missing.join(" and no "), list_or_nothing(.found))]
    IncompleteFolder {
        dir: PathBuf,
        missing: Vec<String>,
        found: Vec<String>,
    },

    #[error("'{0}' is neither an existing folder nor a Hugging Face repo id (owner/name, or a bare published name like dc-ae-f32c32-in-1.0 meaning mit-han-lab/dc-ae-f32c32-in-1.0)")]
    InvalidRepoId(String),

    #[error("{repo} (revision {revision}) is not in the Hugging Face cache {}: missing {}. Offline mode is on (HF_HUB_OFFLINE), so nothing was downloaded. Get it while online with `dcae download {repo}` or `huggingface-cli download {repo}`, or unset HF_HUB_OFFLINE to let this command download it.", .cache_dir.display(), .missing.join(", "))]
    NotCached {
        repo: String,
        revision: String,
        missing: Vec<String>,
        cache_dir: PathBuf,
    },

    #[error("Hugging Face repo '{repo}' was not found at {endpoint} (HTTP {status}). Check the name (the published DC-AE models are mit-han-lab/dc-ae-…); a private repo also needs a token in HF_TOKEN.")]
    RepoNotFound {
        repo: String,
        endpoint: String,
        status: u16,
    },

    #[error("revision '{revision}' of {repo} was not found (no such branch, tag or commit)")]
    RevisionNotFound { repo: String, revision: String },

    #[error("{repo} (revision {revision}) has no file {file}")]
    FileNotFound {
        repo: String,
        revision: String,
        file: String,
    },

    #[error("{repo} has config.json but neither model.safetensors nor diffusion_pytorch_model.safetensors (revision {revision})")]
    NoWeights { repo: String, revision: String },

    #[error("access to {repo} was refused (HTTP {status}): it is gated or private. Accept its terms on the Hub, then set HF_TOKEN or run `huggingface-cli login`.")]
    AccessDenied { repo: String, status: u16 },

    #[error("could not reach the Hugging Face hub at {endpoint} ({detail}). Check the network connection, set HF_ENDPOINT to a reachable mirror, or set HF_HUB_OFFLINE=1 to use only cached models.")]
    Network { endpoint: String, detail: String },

    #[error("the connection broke while downloading {file} ({detail}); run the same command again to resume")]
    Interrupted { file: String, detail: String },

    #[error("the hub answered HTTP {status} for {url}{}", detail_suffix(.detail))]
    Http {
        url: String,
        status: u16,
        detail: String,
    },

    #[error("unexpected answer from {url}: {detail}")]
    BadResponse { url: String, detail: String },

    #[error("download of {file} cancelled after {bytes_done} of {bytes_total} bytes; the partial file is kept and the next attempt resumes from there")]
    Cancelled {
        file: String,
        bytes_done: u64,
        bytes_total: u64,
    },

    #[error("the download of {file} is corrupt: its SHA-256 is {actual}, the hub says {expected}. The file was deleted; download it again (if this repeats, the hub or a proxy in between is serving a wrong file)")]
    Corrupt {
        file: String,
        expected: String,
        actual: String,
    },

    #[error("the server sent more of {file} than the {announced} bytes it announced, so the download was stopped and what that answer sent was not kept; try again later, and if this repeats, the hub at HF_ENDPOINT or a proxy in between is serving a wrong file")]
    TooLong { file: String, announced: u64 },

    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn list_or_nothing(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_string()
    } else {
        items.join(", ")
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// Attaches the path to an I/O error, which `io::Error` alone never says.
fn io_at(path: &Path) -> impl FnOnce(io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// Finds the config and weights for `arg`: an existing folder, else a repo id (see
/// [`parse_repo_id`]) looked up in the cache and, if something is missing and `opts.offline` is
/// false, downloaded into it. `progress` hears about each file being downloaded; setting `cancel`
/// stops a download at the next read (partial bytes are kept for a later resume).
pub fn resolve_model(
    arg: &str,
    opts: &HubOptions,
    progress: &mut dyn FnMut(DownloadProgress),
    cancel: &AtomicBool,
) -> Result<ModelFiles, HubError> {
    let path = Path::new(arg);
    if path.is_dir() {
        return resolve_local_dir(path);
    }
    if path.exists() {
        return Err(HubError::NotAFolder(path.to_path_buf()));
    }
    if looks_like_path(arg) {
        return Err(HubError::FolderNotFound(path.to_path_buf()));
    }
    let repo = parse_repo_id(arg)?;
    resolve_repo(&repo, opts, progress, cancel)
}

/// Like [`resolve_model`] for a repo id only (never a folder): what `dcae download` and the
/// Models view's download button call.
pub fn download_model(
    repo: &str,
    opts: &HubOptions,
    progress: &mut dyn FnMut(DownloadProgress),
    cancel: &AtomicBool,
) -> Result<ModelFiles, HubError> {
    let repo = parse_repo_id(repo)?;
    resolve_repo(&repo, opts, progress, cancel)
}

/// Config and weights of a folder on disk: `config.json` plus the first of `model.safetensors`
/// and `diffusion_pytorch_model.safetensors` that exists.
pub fn resolve_local_dir(dir: &Path) -> Result<ModelFiles, HubError> {
    let config = dir.join(CONFIG_FILE);
    let weights = [WEIGHTS_FILE, DIFFUSERS_WEIGHTS_FILE]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file());

    let mut missing = Vec::new();
    if !config.is_file() {
        missing.push(CONFIG_FILE.to_string());
    }
    if weights.is_none() {
        missing.push(format!("{WEIGHTS_FILE} or {DIFFUSERS_WEIGHTS_FILE}"));
    }
    match weights {
        Some(weights) if missing.is_empty() => Ok(ModelFiles {
            config,
            weights,
            source: ModelSource::LocalDir(dir.to_path_buf()),
        }),
        _ => Err(HubError::IncompleteFolder {
            dir: dir.to_path_buf(),
            missing,
            found: folder_listing(dir),
        }),
    }
}

/// Names in a folder (folders marked with a trailing `/`), sorted, for error messages.
fn folder_listing(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() {
                format!("{name}/")
            } else {
                name
            }
        })
        .collect();
    names.sort();
    names
}

/// Arguments that can only be meant as paths: a missing folder must be reported as such, not as a
/// repo that the hub does not know.
fn looks_like_path(arg: &str) -> bool {
    arg.starts_with('.')
        || arg.starts_with('~')
        || arg.contains('\\')
        || Path::new(arg).is_absolute()
        || arg.matches('/').count() > 1
}

/// The canonical `owner/name` for a repo argument. A bare name means a model published by
/// MIT HAN Lab: `dc-ae-f32c32-in-1.0` → `mit-han-lab/dc-ae-f32c32-in-1.0`. Both parts must follow
/// the hub's naming rules (letters, digits, `-`, `_`, `.`; no `--` or `..`; no leading or trailing
/// `-` or `.`; at most 96 characters).
pub fn parse_repo_id(arg: &str) -> Result<String, HubError> {
    let trimmed = arg.trim();
    let (owner, name) = match trimmed.split_once('/') {
        Some((owner, name)) => (owner, name),
        None => (DEFAULT_OWNER, trimmed),
    };
    if is_valid_repo_part(owner) && is_valid_repo_part(name) {
        Ok(format!("{owner}/{name}"))
    } else {
        Err(HubError::InvalidRepoId(arg.to_string()))
    }
}

fn is_valid_repo_part(part: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !part.is_empty()
        && part.len() <= 96
        && part.chars().all(allowed)
        && !part.contains("--")
        && !part.contains("..")
        && !part.starts_with(['-', '.'])
        && !part.ends_with(['-', '.'])
}

/// Whether `repo` (an id or bare name) can be resolved at `opts.revision` from the cache alone.
pub fn is_cached(repo: &str, opts: &HubOptions) -> bool {
    parse_repo_id(repo)
        .map(|repo| {
            RepoCache::new(&opts.cache_dir, &repo)
                .lookup_model(&opts.revision)
                .is_some()
        })
        .unwrap_or(false)
}

/// Cached DC-AE models for the Models view: every repo whose name contains `dc-ae` (any case),
/// one entry per ref and per snapshot no ref points at. Other models in a shared cache (LLMs and
/// the like) are left out; [`list_all_cached_models`] lists them too.
pub fn list_cached_models(opts: &HubOptions) -> Vec<CachedModel> {
    list_cached_models_where(opts, |repo| repo.to_ascii_lowercase().contains("dc-ae"))
}

/// Every cached model repo, whatever its name.
pub fn list_all_cached_models(opts: &HubOptions) -> Vec<CachedModel> {
    list_cached_models_where(opts, |_| true)
}

fn list_cached_models_where(opts: &HubOptions, keep: impl Fn(&str) -> bool) -> Vec<CachedModel> {
    let Ok(entries) = fs::read_dir(&opts.cache_dir) else {
        return Vec::new();
    };
    let mut repos: Vec<String> = entries
        .flatten()
        .filter_map(|entry| repo_from_folder_name(&entry.file_name().to_string_lossy()))
        .filter(|repo| keep(repo))
        .collect();
    repos.sort();
    repos
        .iter()
        .flat_map(|repo| RepoCache::new(&opts.cache_dir, repo).cached_models())
        .collect()
}

/// `models--owner--name` → `owner/name`; other folders (datasets, `.locks`) → None.
fn repo_from_folder_name(folder: &str) -> Option<String> {
    let rest = folder.strip_prefix("models--")?;
    let (owner, name) = rest.split_once("--")?;
    Some(format!("{owner}/{name}"))
}

/// Bytes sitting in unfinished downloads of `repo` (ours or Python's), so the Models view can
/// offer "resume" instead of "download".
pub fn partial_download_bytes(repo: &str, opts: &HubOptions) -> u64 {
    let Ok(repo) = parse_repo_id(repo) else {
        return 0;
    };
    let blobs = RepoCache::new(&opts.cache_dir, &repo).dir.join("blobs");
    let Ok(entries) = fs::read_dir(blobs) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".incomplete") || name.ends_with(".part")
        })
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.len())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Resolving a repo
// ---------------------------------------------------------------------------------------------

/// Cache first; then, if allowed, the hub for whatever is missing. Files are fetched at the commit
/// the config belongs to, so config and weights always come from the same snapshot.
fn resolve_repo(
    repo: &str,
    opts: &HubOptions,
    progress: &mut dyn FnMut(DownloadProgress),
    cancel: &AtomicBool,
) -> Result<ModelFiles, HubError> {
    let cache = RepoCache::new(&opts.cache_dir, repo);
    if let Some(files) = cache.lookup_model(&opts.revision) {
        return Ok(files);
    }
    if opts.offline {
        return Err(cache.not_cached_error(&opts.revision));
    }

    let config = match cache.lookup_file(&opts.revision, CONFIG_FILE) {
        Some(found) => found,
        None => {
            check_cancel(cancel, CONFIG_FILE)?;
            download_config(repo, opts, progress, cancel)?
        }
    };
    let commit = config.commit.clone();
    check_cancel(cancel, weights_candidates(&config.path)[0])?;

    let remote = Remote::new(opts, repo);
    let weights = fetch_weights(&remote, &cache, &commit, &config.path, progress, cancel)?;
    cache.write_ref(&opts.revision, &commit)?;
    Ok(ModelFiles {
        config: config.path,
        weights,
        source: ModelSource::Hub {
            repo: repo.to_string(),
            revision: opts.revision.clone(),
            commit: Some(commit),
        },
    })
}

/// One file of a repo, from the cache or downloaded into it: the building block of models made
/// of many files (the SANA pipelines), whose list depends on what the first ones say. With
/// `commit` `None` the file is looked up at `opts.revision` and the commit it belongs to is
/// returned, so the rest can be fetched from the same snapshot; the revision's ref is written
/// once that first file is in.
pub fn fetch_file(
    repo: &str,
    opts: &HubOptions,
    commit: Option<&str>,
    file: &str,
    progress: &mut dyn FnMut(DownloadProgress),
    cancel: &AtomicBool,
) -> Result<(PathBuf, String), HubError> {
    let repo = parse_repo_id(repo)?;
    let cache = RepoCache::new(&opts.cache_dir, &repo);
    let cached = match commit {
        Some(c) => cache.snapshot_file(c, file).map(|path| CachedFile { path, commit: c.to_string() }),
        None => cache.lookup_file(&opts.revision, file),
    };
    if let Some(found) = cached {
        return Ok((found.path, found.commit));
    }
    let at = commit.unwrap_or(&opts.revision);
    if opts.offline {
        return Err(HubError::NotCached {
            repo: repo.clone(),
            revision: at.to_string(),
            missing: vec![file.to_string()],
            cache_dir: opts.cache_dir.clone(),
        });
    }
    check_cancel(cancel, file)?;
    let remote = Remote::new(opts, &repo);
    let (path, found) = download_file_at(&remote, &cache, at, file, progress, cancel)?;
    if commit.is_none() {
        cache.write_ref(&opts.revision, &found)?;
    }
    Ok((path, found))
}

fn check_cancel(cancel: &AtomicBool, file: &str) -> Result<(), HubError> {
    if cancel.load(Ordering::Relaxed) {
        Err(HubError::Cancelled {
            file: file.to_string(),
            bytes_done: 0,
            bytes_total: 0,
        })
    } else {
        Ok(())
    }
}

/// The weights file names to try, most likely first: a diffusers config (one with `_class_name`)
/// goes with `diffusion_pytorch_model.safetensors`, the efficientvit ones with
/// `model.safetensors`. Reading the config saves a listing request to the hub, and works offline.
fn weights_candidates(config: &Path) -> [&'static str; 2] {
    let is_diffusers = fs::read(config)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|json| json.get("_class_name").is_some());
    if is_diffusers {
        [DIFFUSERS_WEIGHTS_FILE, WEIGHTS_FILE]
    } else {
        [WEIGHTS_FILE, DIFFUSERS_WEIGHTS_FILE]
    }
}

/// The weights file, from the snapshot if it is there, else downloaded at `commit`. A repo that
/// lacks the expected name is asked for the other one.
fn fetch_weights(
    remote: &Remote,
    cache: &RepoCache,
    commit: &str,
    config: &Path,
    progress: &mut dyn FnMut(DownloadProgress),
    cancel: &AtomicBool,
) -> Result<PathBuf, HubError> {
    let candidates = weights_candidates(config);
    if let Some(path) = candidates
        .iter()
        .find_map(|name| cache.snapshot_file(commit, name))
    {
        return Ok(path);
    }
    for name in candidates {
        match download_file(remote, cache, commit, name, progress, cancel) {
            Err(HubError::FileNotFound { .. }) => continue,
            other => return other,
        }
    }
    Err(HubError::NoWeights {
        repo: cache.repo.clone(),
        revision: commit.to_string(),
    })
}

/// What the cache knows about one file: where it is, and which commit it belongs to.
struct CachedFile {
    path: PathBuf,
    commit: String,
}

/// Fetches `config.json` into the shared cache at `opts.revision` with the same downloader as
/// the weights, so the commit the hub names is checked before it becomes a folder name (hf-hub
/// joins it into the cache path as it comes). The commit it belongs to is the hub's answer.
fn download_config(
    repo: &str,
    opts: &HubOptions,
    progress: &mut dyn FnMut(DownloadProgress),
    cancel: &AtomicBool,
) -> Result<CachedFile, HubError> {
    let remote = Remote::new(opts, repo);
    let cache = RepoCache::new(&opts.cache_dir, repo);
    let (path, commit) = download_file_at(&remote, &cache, &opts.revision, CONFIG_FILE, progress, cancel)?;
    Ok(CachedFile { path, commit })
}

