//! The cache of one repo in `huggingface_hub`'s layout: refs, snapshots, blobs and their locks'
//! paths; lookups that never touch the network.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use hf_hub::Repo;

use super::*;

/// Paths inside the cache for one repo, in `huggingface_hub`'s layout.
pub(super) struct RepoCache {
    pub(super) repo: String,
    pub(super) cache_dir: PathBuf,
    /// `<cache>/models--owner--name`
    pub(super) dir: PathBuf,
}

impl RepoCache {
    pub(super) fn new(cache_dir: &Path, repo: &str) -> Self {
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
    pub(super) fn commit_for(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) && self.dir.join("snapshots").join(revision).is_dir() {
            return Some(revision.to_string());
        }
        let text = fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        let commit = text.trim();
        // It becomes a folder name: a ref holding anything but a hash is ignored.
        is_commit_id(commit).then(|| commit.to_string())
    }

    /// A file of a snapshot, if it is there and readable (a symlink whose blob was deleted is not).
    pub(super) fn snapshot_file(&self, commit: &str, file: &str) -> Option<PathBuf> {
        let path = self.dir.join("snapshots").join(commit).join(file);
        path.is_file().then_some(path)
    }

    pub(super) fn lookup_file(&self, revision: &str, file: &str) -> Option<CachedFile> {
        let commit = self.commit_for(revision)?;
        let path = self.snapshot_file(&commit, file)?;
        Some(CachedFile { path, commit })
    }

    /// Config plus weights from the cache alone; no network.
    pub(super) fn lookup_model(&self, revision: &str) -> Option<ModelFiles> {
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
    pub(super) fn not_cached_error(&self, revision: &str) -> HubError {
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
    pub(super) fn likely_weights_name(&self) -> &'static str {
        if self.repo.ends_with("-diffusers") {
            DIFFUSERS_WEIGHTS_FILE
        } else {
            WEIGHTS_FILE
        }
    }

    pub(super) fn blob_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    pub(super) fn incomplete_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// Where `huggingface_hub` keeps the lock for a blob, so the two never write one at once.
    pub(super) fn lock_path(&self, etag: &str) -> PathBuf {
        let folder = self.dir.file_name().map(PathBuf::from).unwrap_or_default();
        self.cache_dir
            .join(".locks")
            .join(folder)
            .join(format!("{etag}.lock"))
    }

    /// Points `refs/<revision>` at `commit`. Not done for a commit-hash revision, which needs
    /// no ref (as in `huggingface_hub`).
    pub(super) fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
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
    pub(super) fn link_into_snapshot(
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
    pub(super) fn cached_models(&self) -> Vec<CachedModel> {
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

    pub(super) fn cached_model(&self, revision: &str, commit: &str) -> Option<CachedModel> {
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

    pub(super) fn snapshot_commits(&self) -> Vec<String> {
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

pub(super) fn is_commit_hash(revision: &str) -> bool {
    is_commit_id(revision)
}

/// Refs can be nested (`refs/pr/5`), so walk the folder; yields (revision, commit).
pub(super) fn collect_refs(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
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
pub(super) fn collect_files(dir: &Path, prefix: &str, out: &mut Vec<(String, u64)>) {
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

pub(super) fn create_parent(path: &Path) -> Result<(), HubError> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(io_at(parent)),
        None => Ok(()),
    }
}

#[cfg(unix)]
pub(super) fn symlink_file(target: &Path, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
pub(super) fn symlink_file(target: &Path, link: &Path) -> io::Result<()> {
    std::os::windows::fs::symlink_file(target, link)
}

#[cfg(not(any(unix, windows)))]
pub(super) fn symlink_file(_target: &Path, _link: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no symlinks here",
    ))
}
