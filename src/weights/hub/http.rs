//! Talking to the hub: request URLs, the two HTTP agents, what the hub's headers say about a
//! file (checked before any of it names something on disk), and its errors in the user's terms.

use super::*;

/// What a request was about, so that a failure can be explained in those terms.
pub(super) struct Context<'a> {
    pub(super) endpoint: &'a str,
    pub(super) repo: &'a str,
    pub(super) revision: &'a str,
    pub(super) file: &'a str,
}

impl<'a> Context<'a> {
    pub(super) fn new(opts: &'a HubOptions, repo: &'a str, revision: &'a str, file: &'a str) -> Self {
        Self {
            endpoint: &opts.endpoint,
            repo,
            revision,
            file,
        }
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`, the address every hub client downloads from.
    pub(super) fn url(&self) -> String {
        let revision = self.revision.replace('/', "%2F");
        format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint, self.repo, revision, self.file
        )
    }

    pub(super) fn ureq_error(&self, err: ureq::Error) -> HubError {
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
    pub(super) fn status_error(&self, status: u16, code: Option<&str>, message: String) -> HubError {
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

    pub(super) fn repo_not_found(&self, status: u16) -> HubError {
        HubError::RepoNotFound {
            repo: self.repo.to_string(),
            endpoint: self.endpoint.to_string(),
            status,
        }
    }

    pub(super) fn file_not_found(&self) -> HubError {
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
pub(super) struct Remote<'a> {
    pub(super) opts: &'a HubOptions,
    pub(super) repo: &'a str,
    pub(super) metadata_agent: ureq::Agent,
    pub(super) data_agent: ureq::Agent,
}

/// What the hub says about a file before we fetch it.
pub(super) struct FileMetadata {
    pub(super) commit: String,
    pub(super) etag: String,
    /// None when the hub did not say; the download then trusts the connection's end.
    pub(super) size: Option<u64>,
    /// The SHA-256 the finished file must have (LFS files: their linked etag).
    pub(super) sha256: Option<String>,
}

impl<'a> Remote<'a> {
    pub(super) fn new(opts: &'a HubOptions, repo: &'a str) -> Self {
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

    pub(super) fn context<'b>(&'b self, revision: &'b str, file: &'b str) -> Context<'b> {
        Context::new(self.opts, self.repo, revision, file)
    }

    pub(super) fn request(&self, agent: &ureq::Agent, method: &str, url: &str) -> ureq::Request {
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
    pub(super) fn metadata(&self, context: &Context) -> Result<FileMetadata, HubError> {
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
    pub(super) fn open(&self, context: &Context, start: u64) -> Result<ureq::Response, HubError> {
        let mut request = self.request(&self.data_agent, "GET", &context.url());
        if start > 0 {
            request = request.set("Range", &format!("bytes={start}-"));
        }
        request.call().map_err(|err| context.ureq_error(err))
    }
}

pub(super) fn relative_redirect(response: &ureq::Response) -> Option<String> {
    if !(300..400).contains(&response.status()) {
        return None;
    }
    let location = response.header("location")?;
    location.starts_with('/').then(|| location.to_string())
}

/// Reads commit, etag and size from the hub's answer. For files stored with LFS the hub gives the
/// blob's own etag and size in `X-Linked-Etag` / `X-Linked-Size`; the plain headers are for
/// small files it serves itself.
pub(super) fn parse_metadata(response: &ureq::Response, url: &str) -> Result<FileMetadata, HubError> {
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
pub(super) fn is_commit_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// An etag usable as a blob's file name: letters, digits, `-` and `_`, 1 to 128 of them.
pub(super) fn is_safe_etag(etag: &str) -> bool {
    (1..=128).contains(&etag.len()) && etag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(super) fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// `W/"abc"` → `abc`: the blob's file name is the bare etag.
pub(super) fn clean_etag(raw: &str) -> String {
    raw.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}
