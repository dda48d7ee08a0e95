//! Where the cache is and which hub to ask: [`HubOptions`], read from the environment
//! variables `huggingface_hub` reads.

use std::fs;
use std::path::{Path, PathBuf};

use super::DEFAULT_ENDPOINT;

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
