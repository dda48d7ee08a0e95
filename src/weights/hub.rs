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
//! `config.json` is fetched with the `hf-hub` crate. The weights file (hundreds of MB) is fetched
//! by this module's own small downloader instead, because hf-hub 0.4's blocking API cannot be stopped
//! once a file has started (its progress callback cannot abort) and the app's Cancel button must
//! work. That downloader follows `huggingface_hub`'s conventions, so the two can resume each
//! other's partial downloads: bytes go to `blobs/<etag>.incomplete`; a later attempt asks for the
//! rest with an HTTP `Range` request; the finished blob is renamed into place and linked from the
//! snapshot folder, and `refs/<revision>` is written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hf_hub::Repo;

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

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// Where the cache is, which hub to ask, and whether asking is allowed.
///
/// [`HubOptions::from_env`] follows the environment variables `huggingface_hub` reads, so both
/// tools share one cache and one login; tests build options with [`HubOptions::new`] and the
/// `with_*` setters instead.
#[derive(Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache folder (the one holding `models--owner--name` folders).
    pub cache_dir: PathBuf,
    /// Base URL of the hub, without a trailing slash.
    pub endpoint: String,
    /// Never touch the network; only what the cache holds can be resolved.
    pub offline: bool,
    /// Access token for private or gated repos.
    pub token: Option<String>,
    /// Branch, tag or commit hash to resolve (`main` unless told otherwise).
    pub revision: String,
}

impl std::fmt::Debug for HubOptions {
    /// Written by hand so that logging the options never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("cache_dir", &self.cache_dir)
            .field("endpoint", &self.endpoint)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("revision", &self.revision)
            .finish()
    }
}

impl HubOptions {
    /// Options with the given cache, the public hub, online, no token, revision `main`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            endpoint: DEFAULT_ENDPOINT.to_string(),
            offline: false,
            token: None,
            revision: "main".to_string(),
        }
    }

    /// Options from the process environment, read as `huggingface_hub` reads it:
    /// cache = `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`;
    /// endpoint = `HF_ENDPOINT`; offline = `HF_HUB_OFFLINE` set to 1/true/yes/on;
    /// token = `HF_TOKEN`, else the file `HF_TOKEN_PATH` or `$HF_HOME/token` that
    /// `huggingface-cli login` writes.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`HubOptions::from_env`] with the variables looked up through `var`, so the rules can be
    /// tested without changing the real environment. Empty values count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        let home = get("HOME")
            .or_else(|| get("USERPROFILE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let path = |name: &str| get(name).map(|value| expand_tilde(&value, &home));

        let cache_root = path("XDG_CACHE_HOME").unwrap_or_else(|| home.join(".cache"));
        let hf_home = path("HF_HOME").unwrap_or_else(|| cache_root.join("huggingface"));
        let cache_dir = path("HF_HUB_CACHE")
            .or_else(|| path("HUGGINGFACE_HUB_CACHE"))
            .unwrap_or_else(|| hf_home.join("hub"));
        let token_file = path("HF_TOKEN_PATH").unwrap_or_else(|| hf_home.join("token"));
        let token = get("HF_TOKEN")
            .map(|token| token.trim().to_string())
            .or_else(|| read_token_file(&token_file));

        Self {
            cache_dir,
            endpoint: get("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            offline: get("HF_HUB_OFFLINE").is_some_and(|value| is_truthy(&value)),
            token,
            revision: "main".to_string(),
        }
        .normalized()
    }

    /// Use another cache folder.
    pub fn with_cache_dir(mut self, cache_dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = cache_dir.into();
        self
    }

    /// Use another hub (a mirror, or a test server).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self.normalized()
    }

    /// Allow or forbid network access.
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// Set or clear the access token.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Resolve another branch, tag or commit.
    pub fn with_revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// URLs are built as `{endpoint}/{repo}`, so a trailing slash would double up.
    fn normalized(mut self) -> Self {
        let trimmed = self.endpoint.trim().trim_end_matches('/');
        self.endpoint = trimmed.to_string();
        self
    }
}

/// `huggingface_hub` expands `~` in its path variables; so do we.
fn expand_tilde(value: &str, home: &Path) -> PathBuf {
    match value.strip_prefix('~') {
        Some(rest) if rest.is_empty() => home.to_path_buf(),
        Some(rest) if rest.starts_with('/') || rest.starts_with('\\') => home.join(&rest[1..]),
        _ => PathBuf::from(value),
    }
}

/// The boolean spellings `huggingface_hub` accepts for its switches.
fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

fn read_token_file(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_string())
}

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

// ---------------------------------------------------------------------------------------------
// The cache of one repo
// ---------------------------------------------------------------------------------------------

/// Paths inside the cache for one repo, in `huggingface_hub`'s layout.
struct RepoCache {
    repo: String,
    cache_dir: PathBuf,
    /// `<cache>/models--owner--name`
    dir: PathBuf,
}

impl RepoCache {
    fn new(cache_dir: &Path, repo: &str) -> Self {
        let folder = Repo::model(repo.to_string()).folder_name();
        Self {
            repo: repo.to_string(),
            cache_dir: cache_dir.to_path_buf(),
            dir: cache_dir.join(folder),
        }
    }

    /// The commit a revision stands for: a full commit hash with a snapshot folder stands for
    /// itself (that is how `huggingface_hub` stores downloads by hash); anything else goes
    /// through `refs/<revision>`.
    fn commit_for(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) && self.dir.join("snapshots").join(revision).is_dir() {
            return Some(revision.to_string());
        }
        let text = fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        let commit = text.trim();
        // It becomes a folder name: a ref holding anything but a hash is ignored.
        is_commit_id(commit).then(|| commit.to_string())
    }

    /// A file of a snapshot, if it is there and readable (a symlink whose blob was deleted is not).
    fn snapshot_file(&self, commit: &str, file: &str) -> Option<PathBuf> {
        let path = self.dir.join("snapshots").join(commit).join(file);
        path.is_file().then_some(path)
    }

    fn lookup_file(&self, revision: &str, file: &str) -> Option<CachedFile> {
        let commit = self.commit_for(revision)?;
        let path = self.snapshot_file(&commit, file)?;
        Some(CachedFile { path, commit })
    }

    /// Config plus weights from the cache alone; no network.
    fn lookup_model(&self, revision: &str) -> Option<ModelFiles> {
        let config = self.lookup_file(revision, CONFIG_FILE)?;
        let weights = weights_candidates(&config.path)
            .iter()
            .find_map(|name| self.snapshot_file(&config.commit, name))?;
        Some(ModelFiles {
            config: config.path,
            weights,
            source: ModelSource::Hub {
                repo: self.repo.clone(),
                revision: revision.to_string(),
                commit: Some(config.commit),
            },
        })
    }

    /// The offline error, naming exactly the files that are missing.
    fn not_cached_error(&self, revision: &str) -> HubError {
        let missing = match self.lookup_file(revision, CONFIG_FILE) {
            Some(config) => vec![weights_candidates(&config.path)[0].to_string()],
            None => vec![
                CONFIG_FILE.to_string(),
                self.likely_weights_name().to_string(),
            ],
        };
        HubError::NotCached {
            repo: self.repo.clone(),
            revision: revision.to_string(),
            missing,
            cache_dir: self.cache_dir.clone(),
        }
    }

    /// Without a config to read, the repo name is the best hint at the layout.
    fn likely_weights_name(&self) -> &'static str {
        if self.repo.ends_with("-diffusers") {
            DIFFUSERS_WEIGHTS_FILE
        } else {
            WEIGHTS_FILE
        }
    }

    fn blob_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    fn incomplete_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// Where `huggingface_hub` keeps the lock for a blob, so the two never write one at once.
    fn lock_path(&self, etag: &str) -> PathBuf {
        let folder = self.dir.file_name().map(PathBuf::from).unwrap_or_default();
        self.cache_dir
            .join(".locks")
            .join(folder)
            .join(format!("{etag}.lock"))
    }

    /// Points `refs/<revision>` at `commit`. Not done for a commit-hash revision, which needs
    /// no ref (as in `huggingface_hub`).
    fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        if revision == commit {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        if fs::read_to_string(&path).is_ok_and(|text| text.trim() == commit) {
            return Ok(());
        }
        create_parent(&path)?;
        fs::write(&path, commit).map_err(io_at(&path))
    }

    /// Makes `snapshots/<commit>/<file>` point at the blob: a relative symlink where the system
    /// allows one, else a hard link, else a copy (Windows without developer mode).
    fn link_into_snapshot(
        &self,
        commit: &str,
        file: &str,
        blob: &Path,
    ) -> Result<PathBuf, HubError> {
        let pointer = self.dir.join("snapshots").join(commit).join(file);
        create_parent(&pointer)?;
        if fs::symlink_metadata(&pointer).is_ok() {
            fs::remove_file(&pointer).map_err(io_at(&pointer))?;
        }
        let depth = file.split('/').count();
        let mut target = PathBuf::new();
        for _ in 0..depth + 1 {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().unwrap_or_default());
        if symlink_file(&target, &pointer).is_err() && fs::hard_link(blob, &pointer).is_err() {
            fs::copy(blob, &pointer).map_err(io_at(&pointer))?;
        }
        Ok(pointer)
    }

    /// All cached revisions of this repo for the Models view.
    fn cached_models(&self) -> Vec<CachedModel> {
        let mut refs = Vec::new();
        collect_refs(&self.dir.join("refs"), "", &mut refs);
        refs.sort_by(|a, b| (a.0 != "main", &a.0).cmp(&(b.0 != "main", &b.0)));

        let mut models: Vec<CachedModel> = refs
            .iter()
            .filter_map(|(revision, commit)| self.cached_model(revision, commit))
            .collect();
        for commit in self.snapshot_commits() {
            if !refs.iter().any(|(_, referenced)| *referenced == commit) {
                models.extend(self.cached_model(&commit, &commit));
            }
        }
        models
    }

    fn cached_model(&self, revision: &str, commit: &str) -> Option<CachedModel> {
        let snapshot = self.dir.join("snapshots").join(commit);
        if !snapshot.is_dir() {
            return None;
        }
        let mut files = Vec::new();
        collect_files(&snapshot, "", &mut files);
        files.sort();
        let total_bytes = files.iter().map(|(_, size)| size).sum();
        Some(CachedModel {
            repo: self.repo.clone(),
            revision: revision.to_string(),
            commit: commit.to_string(),
            files,
            total_bytes,
        })
    }

    fn snapshot_commits(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.dir.join("snapshots")) else {
            return Vec::new();
        };
        let mut commits: Vec<String> = entries
            .flatten()
            .filter(|entry| entry.path().is_dir())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        commits.sort();
        commits
    }
}

fn is_commit_hash(revision: &str) -> bool {
    is_commit_id(revision)
}

/// Refs can be nested (`refs/pr/5`), so walk the folder; yields (revision, commit).
fn collect_refs(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let path = entry.path();
        if path.is_dir() {
            collect_refs(&path, &format!("{name}/"), out);
        } else if let Ok(text) = fs::read_to_string(&path) {
            out.push((name, text.trim().to_string()));
        }
    }
}

/// Files of a snapshot with their sizes, following symlinks to the blobs; dangling links are
/// skipped because the file is not really there.
fn collect_files(dir: &Path, prefix: &str, out: &mut Vec<(String, u64)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let Ok(meta) = fs::metadata(entry.path()) else {
            continue;
        };
        if meta.is_dir() {
            collect_files(&entry.path(), &format!("{name}/"), out);
        } else {
            out.push((name, meta.len()));
        }
    }
}

fn create_parent(path: &Path) -> Result<(), HubError> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(io_at(parent)),
        None => Ok(()),
    }
}

#[cfg(unix)]
fn symlink_file(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink_file(target: &Path, link: &Path) -> io::Result<()> {
    std::os::windows::fs::symlink_file(target, link)
}

#[cfg(not(any(unix, windows)))]
fn symlink_file(_target: &Path, _link: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no symlinks here",
    ))
}

// ---------------------------------------------------------------------------------------------
// Talking to the hub
// ---------------------------------------------------------------------------------------------

/// What a request was about, so that a failure can be explained in those terms.
struct Context<'a> {
    endpoint: &'a str,
    repo: &'a str,
    revision: &'a str,
    file: &'a str,
}

impl<'a> Context<'a> {
    fn new(opts: &'a HubOptions, repo: &'a str, revision: &'a str, file: &'a str) -> Self {
        Self {
            endpoint: &opts.endpoint,
            repo,
            revision,
            file,
        }
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`, the address every hub client downloads from.
    fn url(&self) -> String {
        let revision = self.revision.replace('/', "%2F");
        format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint, self.repo, revision, self.file
        )
    }

    fn ureq_error(&self, err: ureq::Error) -> HubError {
        match err {
            ureq::Error::Status(status, response) => {
                let code = response.header("x-error-code").map(str::to_string);
                let message = response
                    .header("x-error-message")
                    .unwrap_or_default()
                    .to_string();
                self.status_error(status, code.as_deref(), message)
            }
            ureq::Error::Transport(transport) => HubError::Network {
                endpoint: self.endpoint.to_string(),
                detail: transport.to_string(),
            },
        }
    }

    /// Maps the hub's answer to an error. The hub says which thing is missing in its
    /// `X-Error-Code` header; a bare 404 on the first file asked for means the repo.
    fn status_error(&self, status: u16, code: Option<&str>, message: String) -> HubError {
        match (code, status) {
            (Some("RepoNotFound" | "RepositoryNotFound"), _) => self.repo_not_found(status),
            (Some("RevisionNotFound"), _) => HubError::RevisionNotFound {
                repo: self.repo.to_string(),
                revision: self.revision.to_string(),
            },
            (Some("EntryNotFound"), _) => self.file_not_found(),
            (Some("GatedRepo"), _) | (_, 401 | 403) => HubError::AccessDenied {
                repo: self.repo.to_string(),
                status,
            },
            (_, 404) if self.file == CONFIG_FILE => self.repo_not_found(status),
            (_, 404) => self.file_not_found(),
            _ => HubError::Http {
                url: self.url(),
                status,
                detail: message,
            },
        }
    }

    fn repo_not_found(&self, status: u16) -> HubError {
        HubError::RepoNotFound {
            repo: self.repo.to_string(),
            endpoint: self.endpoint.to_string(),
            status,
        }
    }

    fn file_not_found(&self) -> HubError {
        HubError::FileNotFound {
            repo: self.repo.to_string(),
            revision: self.revision.to_string(),
            file: self.file.to_string(),
        }
    }
}

/// The hub as the weights downloader sees it: two ureq agents, one that stops at redirects (the
/// hub's own answer carries the commit, the blob's etag and size, which the CDN it redirects to
/// does not know) and one that follows them to fetch the bytes.
struct Remote<'a> {
    opts: &'a HubOptions,
    repo: &'a str,
    metadata_agent: ureq::Agent,
    data_agent: ureq::Agent,
}

/// What the hub says about a file before we fetch it.
struct FileMetadata {
    commit: String,
    etag: String,
    /// None when the hub did not say; the download then trusts the connection's end.
    size: Option<u64>,
    /// The SHA-256 the finished file must have (LFS files: their linked etag).
    sha256: Option<String>,
}

impl<'a> Remote<'a> {
    fn new(opts: &'a HubOptions, repo: &'a str) -> Self {
        let agent = || {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(true)
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout_read(READ_TIMEOUT)
                .user_agent(concat!("dcae-studio/", env!("CARGO_PKG_VERSION")))
        };
        Self {
            opts,
            repo,
            metadata_agent: agent().redirects(0).build(),
            // Authorization is dropped on redirects to another host (ureq's default), so the
            // token is never sent to the CDN.
            data_agent: agent().redirects(5).build(),
        }
    }

    fn context<'b>(&'b self, revision: &'b str, file: &'b str) -> Context<'b> {
        Context::new(self.opts, self.repo, revision, file)
    }

    fn request(&self, agent: &ureq::Agent, method: &str, url: &str) -> ureq::Request {
        let request = agent
            .request(method, url)
            .set("Accept-Encoding", "identity");
        match &self.opts.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// HEAD on the resolve URL without following the CDN redirect. A relative redirect means the
    /// repo was renamed, and is followed (a few times at most).
    fn metadata(&self, context: &Context) -> Result<FileMetadata, HubError> {
        let mut url = context.url();
        for _ in 0..5 {
            let response = self
                .request(&self.metadata_agent, "HEAD", &url)
                .call()
                .map_err(|err| context.ureq_error(err))?;
            match relative_redirect(&response) {
                Some(path) => url = format!("{}{}", self.opts.endpoint, path),
                None => return parse_metadata(&response, &url),
            }
        }
        Err(HubError::BadResponse {
            url,
            detail: "too many redirects".to_string(),
        })
    }

    /// GET of the file from byte `start` on (the whole file for 0).
    fn open(&self, context: &Context, start: u64) -> Result<ureq::Response, HubError> {
        let mut request = self.request(&self.data_agent, "GET", &context.url());
        if start > 0 {
            request = request.set("Range", &format!("bytes={start}-"));
        }
        request.call().map_err(|err| context.ureq_error(err))
    }
}

fn relative_redirect(response: &ureq::Response) -> Option<String> {
    if !(300..400).contains(&response.status()) {
        return None;
    }
    let location = response.header("location")?;
    location.starts_with('/').then(|| location.to_string())
}

/// Reads commit, etag and size from the hub's answer. For files stored with LFS the hub gives the
/// blob's own etag and size in `X-Linked-Etag` / `X-Linked-Size`; the plain headers are for
/// small files it serves itself.
fn parse_metadata(response: &ureq::Response, url: &str) -> Result<FileMetadata, HubError> {
    let missing = |header: &str| HubError::BadResponse {
        url: url.to_string(),
        detail: format!("no {header} header; is HF_ENDPOINT a Hugging Face hub?"),
    };
    let commit = response
        .header("x-repo-commit")
        .ok_or_else(|| missing("X-Repo-Commit"))?
        .trim();
    // Both become folder and file names in the cache: anything but a hash could point outside
    // it (`../..`), so a hub (or a hostile mirror) that sends something else is refused.
    if !is_commit_id(commit) {
        return Err(HubError::BadResponse {
            url: url.to_string(),
            detail: format!(
                "its X-Repo-Commit {:?} is not a commit hash (40 or 64 hex digits); nothing was written. Is HF_ENDPOINT a trustworthy Hugging Face hub?",
                truncate(commit, 80)
            ),
        });
    }
    let linked = response.header("x-linked-etag");
    let etag = linked
        .or_else(|| response.header("etag"))
        .map(clean_etag)
        .ok_or_else(|| missing("ETag"))?;
    if !is_safe_etag(&etag) {
        return Err(HubError::BadResponse {
            url: url.to_string(),
            detail: format!("its ETag {:?} cannot name a file in the cache; nothing was written", truncate(&etag, 80)),
        });
    }
    let size = response
        .header("x-linked-size")
        .or_else(|| response.header("content-length"))
        .and_then(|value| value.trim().parse().ok());
    // An LFS file's linked etag is the SHA-256 of its bytes; a small file's etag is a git hash of
    // something else, so there is nothing to check it against.
    let sha256 = (linked.is_some() && etag.len() == 64 && etag.chars().all(|c| c.is_ascii_hexdigit())).then(|| etag.clone());
    Ok(FileMetadata {
        commit: commit.to_string(),
        etag,
        size,
        sha256,
    })
}

/// A git commit id: 40 hex digits (SHA-1) or 64 (SHA-256 repositories).
fn is_commit_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// An etag usable as a blob's file name: letters, digits, `-` and `_`, 1 to 128 of them.
fn is_safe_etag(etag: &str) -> bool {
    (1..=128).contains(&etag.len()) && etag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// `W/"abc"` → `abc`: the blob's file name is the bare etag.
fn clean_etag(raw: &str) -> String {
    raw.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Downloading one file (cancellable, resumable)
// ---------------------------------------------------------------------------------------------

/// Downloads `file` at `commit` into the cache (unless its blob is already there, e.g. shared
/// with another commit) and links it into the snapshot. Returns the snapshot path.
fn download_file(
    remote: &Remote,
    cache: &RepoCache,
    commit: &str,
    file: &str,
    progress: &mut dyn FnMut(DownloadProgress),
    cancel: &AtomicBool,
) -> Result<PathBuf, HubError> {
    download_file_at(remote, cache, commit, file, progress, cancel).map(|(path, _)| path)
}

/// [`download_file`] at any revision (a branch too); returns the snapshot path and the commit
/// the hub said the file belongs to.
fn download_file_at(
    remote: &Remote,
    cache: &RepoCache,
    revision: &str,
    file: &str,
    progress: &mut dyn FnMut(DownloadProgress),
    cancel: &AtomicBool,
) -> Result<(PathBuf, String), HubError> {
    let context = remote.context(revision, file);
    let metadata = remote.metadata(&context)?;
    let blob = cache.blob_path(&metadata.etag);
    if !blob.is_file() {
        let _lock = BlobLock::acquire(&cache.lock_path(&metadata.etag), file, cancel)?;
        // Another process may have finished it while we waited for the lock.
        if !blob.is_file() {
            let download = BlobDownload {
                remote,
                context: &context,
                partial: cache.incomplete_path(&metadata.etag),
                size: metadata.size,
            };
            download.run(progress, cancel)?;
            if let Some(expected) = &metadata.sha256 {
                verify_sha256(&download.partial, expected, file)?;
            }
            fs::rename(&download.partial, &blob).map_err(io_at(&blob))?;
        }
    }
    let path = cache.link_into_snapshot(&metadata.commit, file, &blob)?;
    Ok((path, metadata.commit))
}

/// Checks a finished download against the SHA-256 the hub published for it. A mismatch deletes
/// the file (resuming a corrupt file could never succeed) and says so.
fn verify_sha256(path: &Path, expected: &str, file: &str) -> Result<(), HubError> {
    let actual = sha256_file(path).map_err(io_at(path))?;
    if actual.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    let _ = fs::remove_file(path);
    Err(HubError::Corrupt {
        file: file.to_string(),
        expected: expected.to_ascii_lowercase(),
        actual,
    })
}

/// The SHA-256 of a file, read in 1 MiB pieces.
fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = sha256::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.hex())
}

/// The SHA-256 of `bytes` as 64 lowercase hex digits (what the hub uses as an LFS file's etag).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut hasher = sha256::Sha256::new();
    hasher.update(bytes);
    hasher.hex()
}

/// An exclusive lock on a blob, released when dropped. The same lock file and kind of lock
/// (`flock` on Unix) as `huggingface_hub`'s, so neither tool writes a blob the other is writing.
struct BlobLock {
    _file: File,
}

impl BlobLock {
    /// Waits for the lock, checking `cancel` between tries.
    fn acquire(path: &Path, file: &str, cancel: &AtomicBool) -> Result<Self, HubError> {
        create_parent(path)?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_at(path))?;
        loop {
            match lock_file.try_lock() {
                Ok(()) => return Ok(Self { _file: lock_file }),
                Err(fs::TryLockError::WouldBlock) => {
                    check_cancel(cancel, file)?;
                    std::thread::sleep(Duration::from_millis(200));
                }
                // A file system without locks: proceed unlocked rather than not at all.
                Err(fs::TryLockError::Error(_)) => return Ok(Self { _file: lock_file }),
            }
        }
    }
}

/// One attempt at completing `partial` (a `blobs/<etag>.incomplete` file).
struct BlobDownload<'a> {
    remote: &'a Remote<'a>,
    context: &'a Context<'a>,
    partial: PathBuf,
    size: Option<u64>,
}

impl BlobDownload<'_> {
    /// Appends the missing bytes to the partial file, resuming from its current length.
    fn run(
        &self,
        progress: &mut dyn FnMut(DownloadProgress),
        cancel: &AtomicBool,
    ) -> Result<(), HubError> {
        let mut start = self.partial_len();
        if self.size.is_some_and(|size| start > size) {
            start = 0; // Longer than the blob can be: not ours to resume.
        }
        let mut reporter = Reporter::new(progress, self.context.file, self.size.unwrap_or(0));
        reporter.done = start;
        if Some(start) == self.size {
            reporter.send();
            return Ok(()); // Complete already; an earlier run stopped just before the rename.
        }

        let (response, start) = self.open_from(start)?;
        let start = self.accepted_start(&response, start)?;
        reporter.done = start;
        if let Some(total) = total_from_content_range(&response) {
            reporter.total = total;
        }
        reporter.send();

        let mut out = self.open_partial(start)?;
        let copied = copy_cancellable(response.into_reader(), &mut out, &mut reporter, cancel);
        out.flush().map_err(io_at(&self.partial))?;
        drop(out);
        reporter.send();
        copied.map_err(|err| self.copy_error(err, &reporter))?;
        self.check_complete(reporter.done)
    }

    /// Opens the download at `start`. A server that cannot serve that range (416: the partial
    /// file does not match what it has) gets asked for the whole file instead.
    fn open_from(&self, start: u64) -> Result<(ureq::Response, u64), HubError> {
        match self.remote.open(self.context, start) {
            Err(HubError::Http { status: 416, .. }) if start > 0 => {
                Ok((self.remote.open(self.context, 0)?, 0))
            }
            other => Ok((other?, start)),
        }
    }

    fn partial_len(&self) -> u64 {
        fs::metadata(&self.partial)
            .map(|meta| meta.len())
            .unwrap_or(0)
    }

    /// Where the server's answer starts: `start` for a 206 that agrees, 0 for a plain 200 (the
    /// server ignored the range, so the partial file is rewritten).
    fn accepted_start(&self, response: &ureq::Response, start: u64) -> Result<u64, HubError> {
        match response.status() {
            200 => Ok(0),
            206 => match content_range_start(response) {
                Some(first) if first == start => Ok(start),
                _ => Err(HubError::BadResponse {
                    url: self.context.url(),
                    detail: format!(
                        "asked for bytes from {start} but got Content-Range {:?}",
                        response.header("content-range")
                    ),
                }),
            },
            status => Err(HubError::Http {
                url: self.context.url(),
                status,
                detail: String::new(),
            }),
        }
    }

    /// The partial file opened for writing at `start` (truncated there, so a 200 answer
    /// overwrites instead of appending).
    fn open_partial(&self, start: u64) -> Result<File, HubError> {
        create_parent(&self.partial)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.partial)
            .map_err(io_at(&self.partial))?;
        file.set_len(start).map_err(io_at(&self.partial))?;
        Ok(file)
    }

    fn copy_error(&self, err: CopyError, reporter: &Reporter) -> HubError {
        match err {
            CopyError::Cancelled => HubError::Cancelled {
                file: self.context.file.to_string(),
                bytes_done: reporter.done,
                bytes_total: reporter.total,
            },
            CopyError::Read(err) => HubError::Interrupted {
                file: self.context.file.to_string(),
                detail: err.to_string(),
            },
            CopyError::Write(source) => HubError::Io {
                path: self.partial.clone(),
                source,
            },
        }
    }

    /// A short file means the connection ended early without an error; keep it for a resume.
    fn check_complete(&self, done: u64) -> Result<(), HubError> {
        match self.size {
            Some(size) if done != size => Err(HubError::Interrupted {
                file: self.context.file.to_string(),
                detail: format!("got {done} of {size} bytes"),
            }),
            _ => Ok(()),
        }
    }
}

/// `Content-Range: bytes 100-199/200` → 100.
fn content_range_start(response: &ureq::Response) -> Option<u64> {
    let value = response.header("content-range")?;
    let range = value.trim().strip_prefix("bytes")?.trim();
    range.split('-').next()?.trim().parse().ok()
}

/// `Content-Range: bytes 100-199/200` → 200.
fn total_from_content_range(response: &ureq::Response) -> Option<u64> {
    let value = response.header("content-range")?;
    value.rsplit('/').next()?.trim().parse().ok()
}

enum CopyError {
    Cancelled,
    Read(io::Error),
    Write(io::Error),
}

/// Copies until the end of the body, checking `cancel` before every read.
fn copy_cancellable(
    mut from: impl Read,
    to: &mut File,
    reporter: &mut Reporter,
    cancel: &AtomicBool,
) -> Result<(), CopyError> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(CopyError::Cancelled);
        }
        let read = match from.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(CopyError::Read(err)),
        };
        to.write_all(&buffer[..read]).map_err(CopyError::Write)?;
        reporter.advance(read as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------------------

/// Turns byte counts into throttled [`DownloadProgress`] events. Also hf-hub's progress sink,
/// so config and weights downloads report the same way.
struct Reporter<'a> {
    sink: &'a mut dyn FnMut(DownloadProgress),
    file: String,
    done: u64,
    total: u64,
    sent_bytes: u64,
    sent_at: Option<Instant>,
}

impl<'a> Reporter<'a> {
    fn new(sink: &'a mut dyn FnMut(DownloadProgress), file: &str, total: u64) -> Self {
        Self {
            sink,
            file: file.to_string(),
            done: 0,
            total,
            sent_bytes: 0,
            sent_at: None,
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        let due = self.sent_at.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY)
            || self.done - self.sent_bytes >= PROGRESS_EVERY_BYTES;
        if due {
            self.send();
        }
    }

    fn send(&mut self) {
        self.sent_bytes = self.done;
        self.sent_at = Some(Instant::now());
        (self.sink)(DownloadProgress {
            file: self.file.clone(),
            bytes_done: self.done,
            bytes_total: self.total,
        });
    }
}

/// SHA-256 (FIPS 180-4), small and dependency-free: enough to check downloads against the hub's
/// published hashes.
mod sha256 {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];

    pub struct Sha256 {
        state: [u32; 8],
        block: [u8; 64],
        filled: usize,
        length: u64,
    }

    impl Sha256 {
        pub fn new() -> Self {
            Self {
                state: [
                    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
                ],
                block: [0; 64],
                filled: 0,
                length: 0,
            }
        }

        pub fn update(&mut self, mut data: &[u8]) {
            self.length = self.length.wrapping_add(data.len() as u64);
            while !data.is_empty() {
                let take = (64 - self.filled).min(data.len());
                self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
                self.filled += take;
                data = &data[take..];
                if self.filled == 64 {
                    let block = self.block;
                    self.compress(&block);
                    self.filled = 0;
                }
            }
        }

        pub fn hex(mut self) -> String {
            let bits = self.length.wrapping_mul(8);
            self.update(&[0x80]);
            while self.filled != 56 {
                self.update(&[0]);
            }
            self.update(&bits.to_be_bytes());
            self.state.iter().map(|w| format!("{w:08x}")).collect()
        }

        fn compress(&mut self, block: &[u8; 64]) {
            let mut w = [0u32; 64];
            for (i, chunk) in block.chunks_exact(4).enumerate() {
                w[i] = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
            for i in 16..64 {
                let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
                let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
                w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
            }
            let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
            for i in 0..64 {
                let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
                let ch = (e & f) ^ (!e & g);
                let t1 = h.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
                let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
                let maj = (a & b) ^ (a & c) ^ (b & c);
                let t2 = s0.wrapping_add(maj);
                (h, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
            }
            for (s, v) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
                *s = s.wrapping_add(v);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::sha256_hex;

        #[test]
        fn known_vectors() {
            assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
            assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
            let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
            assert_eq!(sha256_hex(long), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
            let million = vec![b'a'; 1_000_000];
            assert_eq!(sha256_hex(&million), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
        }
    }
}
