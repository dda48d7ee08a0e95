//! Resolving models: local folders, the Hugging Face cache, and downloads from a stand-in hub.
//!
//! Nothing here touches the internet. The cache is a temporary folder laid out the way
//! `huggingface_hub` lays it out, and the "hub" is a tiny HTTP server on 127.0.0.1 that answers
//! the requests hf-hub and our downloader make, logs them, and stops by itself.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use dcae::weights::hub::{
    download_model, is_cached, list_all_cached_models, list_cached_models, parse_repo_id,
    partial_download_bytes, resolve_model, DownloadProgress, HubError, HubOptions, ModelSource,
};

use fake_hub::{FakeHub, Hosted};

pub(crate) const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
pub(crate) const REPO: &str = "mit-han-lab/dc-ae-f32c32-in-1.0";
const DIFFUSERS_REPO: &str = "mit-han-lab/dc-ae-f32c32-in-1.0-diffusers";
pub(crate) const EFFICIENTVIT_CONFIG: &[u8] = br#"{"model_name": "dc-ae-f32c32-in-1.0"}"#;
const DIFFUSERS_CONFIG: &[u8] = br#"{"_class_name": "AutoencoderDC", "latent_channels": 32}"#;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A valid safetensors file holding one F32 tensor of `floats` values.
pub(crate) fn tiny_safetensors(floats: usize) -> Vec<u8> {
    let header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{floats}],"data_offsets":[0,{}]}}}}"#,
        floats * 4
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend((0..floats * 4).map(|i| (i * 7 % 251) as u8));
    bytes
}

/// The etag the hub gives an LFS file: the SHA-256 of its bytes (downloads are checked
/// against it).
pub(crate) fn fake_etag(bytes: &[u8]) -> String {
    dcae::weights::hub::sha256_hex(bytes)
}

fn repo_folder(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// Puts a file into a cache exactly as `huggingface_hub` would: the bytes in `blobs/<etag>`, a
/// relative symlink in `snapshots/<commit>/`, and `refs/main`.
fn put_in_cache(cache: &Path, repo: &str, file: &str, bytes: &[u8]) {
    let dir = repo_folder(cache, repo);
    let etag = fake_etag(bytes);
    fs::create_dir_all(dir.join("blobs")).unwrap();
    fs::write(dir.join("blobs").join(&etag), bytes).unwrap();
    let snapshot = dir.join("snapshots").join(COMMIT);
    fs::create_dir_all(&snapshot).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(format!("../../blobs/{etag}"), snapshot.join(file)).unwrap();
    #[cfg(not(unix))]
    fs::write(snapshot.join(file), bytes).unwrap();
    fs::create_dir_all(dir.join("refs")).unwrap();
    fs::write(dir.join("refs").join("main"), COMMIT).unwrap();
}

/// A port on 127.0.0.1 that nothing listens on: any request to it fails at once.
fn closed_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn options(cache: &Path, endpoint: &str) -> HubOptions {
    HubOptions::new(cache).with_endpoint(endpoint)
}

fn resolve(arg: &str, opts: &HubOptions) -> Result<dcae::weights::hub::ModelFiles, HubError> {
    resolve_model(arg, opts, &mut |_| {}, &AtomicBool::new(false))
}

/// Resolves and returns the progress events too.
fn resolve_with_progress(
    arg: &str,
    opts: &HubOptions,
) -> (
    Result<dcae::weights::hub::ModelFiles, HubError>,
    Vec<DownloadProgress>,
) {
    let mut events = Vec::new();
    let result = resolve_model(arg, opts, &mut |p| events.push(p), &AtomicBool::new(false));
    (result, events)
}

/// A hub serving `REPO` in the original layout (config.json + model.safetensors), answering at
/// most `max_requests` requests.
fn serve_original(weights: Vec<u8>, max_requests: usize) -> FakeHub {
    FakeHub::start(hosted_model(REPO, EFFICIENTVIT_CONFIG, "model.safetensors", weights), max_requests)
}

fn hosted_model(repo: &str, config: &[u8], weights_name: &str, weights: Vec<u8>) -> Vec<Hosted> {
    vec![
        Hosted::small(repo, "config.json", config.to_vec()),
        Hosted::lfs(repo, weights_name, weights),
    ]
}

// ---------------------------------------------------------------------------------------------
// (1) A filled cache resolves with no server at all
// ---------------------------------------------------------------------------------------------

#[test]
fn cached_model_resolves_without_any_network() {
    let cache = tempfile::tempdir().unwrap();
    let weights = tiny_safetensors(4);
    put_in_cache(cache.path(), REPO, "config.json", EFFICIENTVIT_CONFIG);
    put_in_cache(cache.path(), REPO, "model.safetensors", &weights);

    // Offline, and online with a hub that cannot be reached: both must use the cache alone.
    for offline in [true, false] {
        let opts = options(cache.path(), &closed_endpoint()).with_offline(offline);
        // A bare published name means mit-han-lab/<name>.
        let files = resolve("dc-ae-f32c32-in-1.0", &opts).unwrap();
        let snapshot = repo_folder(cache.path(), REPO)
            .join("snapshots")
            .join(COMMIT);
        assert_eq!(files.config, snapshot.join("config.json"));
        assert_eq!(files.weights, snapshot.join("model.safetensors"));
        assert_eq!(fs::read(&files.weights).unwrap(), weights);
        assert_eq!(
            files.source,
            ModelSource::Hub {
                repo: REPO.to_string(),
                revision: "main".to_string(),
                commit: Some(COMMIT.to_string()),
            }
        );
    }

    // A commit hash is a revision too, with no ref needed.
    let by_commit = options(cache.path(), &closed_endpoint())
        .with_offline(true)
        .with_revision(COMMIT);
    assert!(resolve(REPO, &by_commit).is_ok());
}

#[test]
fn cached_diffusers_model_uses_the_diffusers_weights_name() {
    let cache = tempfile::tempdir().unwrap();
    put_in_cache(
        cache.path(),
        DIFFUSERS_REPO,
        "config.json",
        DIFFUSERS_CONFIG,
    );
    put_in_cache(
        cache.path(),
        DIFFUSERS_REPO,
        "diffusion_pytorch_model.safetensors",
        &tiny_safetensors(2),
    );
    let opts = options(cache.path(), &closed_endpoint()).with_offline(true);
    let files = resolve(DIFFUSERS_REPO, &opts).unwrap();
    assert!(files
        .weights
        .ends_with("diffusion_pytorch_model.safetensors"));
}

#[test]
fn models_view_lists_cached_dc_ae_repos() {
    let cache = tempfile::tempdir().unwrap();
    let weights = tiny_safetensors(4);
    put_in_cache(cache.path(), REPO, "config.json", EFFICIENTVIT_CONFIG);
    put_in_cache(cache.path(), REPO, "model.safetensors", &weights);
    put_in_cache(cache.path(), "someone/llm", "config.json", b"{}");
    fs::create_dir_all(cache.path().join(".locks")).unwrap();

    let opts = options(cache.path(), &closed_endpoint());
    let listed = list_cached_models(&opts);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let model = &listed[0];
    assert_eq!(model.repo, REPO);
    assert_eq!(model.revision, "main");
    assert_eq!(model.commit, COMMIT);
    let expected_files = vec![
        ("config.json".to_string(), EFFICIENTVIT_CONFIG.len() as u64),
        ("model.safetensors".to_string(), weights.len() as u64),
    ];
    assert_eq!(model.files, expected_files);
    assert_eq!(
        model.total_bytes,
        (EFFICIENTVIT_CONFIG.len() + weights.len()) as u64
    );
    assert_eq!(list_all_cached_models(&opts).len(), 2);

    assert!(is_cached(REPO, &opts));
    assert!(is_cached("dc-ae-f32c32-in-1.0", &opts));
    assert!(
        !is_cached("someone/llm", &opts),
        "config alone is not a model"
    );
    assert!(!is_cached("mit-han-lab/dc-ae-f64c128-in-1.0", &opts));
    assert!(!is_cached("not a repo", &opts));
}

// ---------------------------------------------------------------------------------------------
// (2) Download into an empty cache, then never again
// ---------------------------------------------------------------------------------------------

#[test]
fn downloads_into_the_cache_then_reuses_it_without_requests() {
    let weights = tiny_safetensors(1000);
    let hub = serve_original(weights.clone(), 20);
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &hub.endpoint());

    let (files, events) = resolve_with_progress(REPO, &opts);
    let files = files.unwrap();
    assert_eq!(fs::read(&files.config).unwrap(), EFFICIENTVIT_CONFIG);
    assert_eq!(fs::read(&files.weights).unwrap(), weights);
    assert!(hub.count() > 0);

    // Progress: both files reported, the weights to the last byte.
    assert!(events.iter().any(|p| p.file == "config.json"), "{events:?}");
    let last = events
        .iter()
        .rev()
        .find(|p| p.file == "model.safetensors")
        .unwrap();
    assert_eq!(
        (last.bytes_done, last.bytes_total),
        (weights.len() as u64, weights.len() as u64)
    );

    // The layout huggingface_hub reads back.
    let dir = repo_folder(cache.path(), REPO);
    assert_eq!(
        fs::read_to_string(dir.join("refs/main")).unwrap().trim(),
        COMMIT
    );
    let snapshot_weights = dir.join("snapshots").join(COMMIT).join("model.safetensors");
    assert_eq!(files.weights, snapshot_weights);
    let blob = dir.join("blobs").join(fake_etag(&weights));
    assert_eq!(fs::read(&blob).unwrap(), weights);
    #[cfg(unix)]
    assert_eq!(
        fs::read_link(&snapshot_weights).unwrap(),
        PathBuf::from("../../blobs").join(fake_etag(&weights))
    );
    assert_eq!(partial_download_bytes(REPO, &opts), 0);

    // Second time: everything from the cache, not one request.
    let before = hub.count();
    let (again, events) = resolve_with_progress(REPO, &opts);
    assert_eq!(again.unwrap(), files);
    assert!(events.is_empty());
    assert_eq!(hub.count(), before, "requests: {:?}", hub.requests());
}

#[test]
fn diffusers_repo_fetches_the_weights_its_config_names() {
    let weights = tiny_safetensors(64);
    let hub = FakeHub::start(
        hosted_model(
            DIFFUSERS_REPO,
            DIFFUSERS_CONFIG,
            "diffusion_pytorch_model.safetensors",
            weights.clone(),
        ),
        20,
    );
    let cache = tempfile::tempdir().unwrap();
    let files = resolve(DIFFUSERS_REPO, &options(cache.path(), &hub.endpoint())).unwrap();
    assert!(files
        .weights
        .ends_with("diffusion_pytorch_model.safetensors"));
    assert_eq!(fs::read(&files.weights).unwrap(), weights);
    // The config said diffusers, so model.safetensors was never asked for.
    assert!(
        !hub.requests()
            .iter()
            .any(|r| r.contains("/model.safetensors")),
        "{:?}",
        hub.requests()
    );
}

#[test]
fn falls_back_to_the_other_weights_name_when_the_repo_lacks_the_first() {
    let weights = tiny_safetensors(8);
    let hub = FakeHub::start(
        hosted_model(
            REPO,
            EFFICIENTVIT_CONFIG,
            "diffusion_pytorch_model.safetensors",
            weights.clone(),
        ),
        20,
    );
    let cache = tempfile::tempdir().unwrap();
    let files = download_model(
        REPO,
        &options(cache.path(), &hub.endpoint()),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(files
        .weights
        .ends_with("diffusion_pytorch_model.safetensors"));
    assert_eq!(fs::read(&files.weights).unwrap(), weights);
}

#[test]
fn only_the_missing_weights_are_fetched_when_the_config_is_cached() {
    let weights = tiny_safetensors(16);
    let hub = serve_original(weights.clone(), 20);
    let cache = tempfile::tempdir().unwrap();
    put_in_cache(cache.path(), REPO, "config.json", EFFICIENTVIT_CONFIG);
    let files = resolve(REPO, &options(cache.path(), &hub.endpoint())).unwrap();
    assert_eq!(fs::read(&files.weights).unwrap(), weights);
    assert!(
        !hub.requests().iter().any(|r| r.contains("config.json")),
        "{:?}",
        hub.requests()
    );
}

// ---------------------------------------------------------------------------------------------
// (3) Offline and not cached
// ---------------------------------------------------------------------------------------------

#[test]
fn offline_and_not_cached_says_what_is_missing_and_how_to_get_it() {
    let hub = serve_original(tiny_safetensors(4), 5);
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &hub.endpoint()).with_offline(true);

    let err = resolve(REPO, &opts).unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err:?}");
    let message = err.to_string();
    for needle in [
        REPO,
        "config.json",
        "model.safetensors",
        "dcae download mit-han-lab/dc-ae-f32c32-in-1.0",
        "huggingface-cli download",
        "HF_HUB_OFFLINE",
    ] {
        assert!(message.contains(needle), "{needle:?} not in: {message}");
    }

    // With the config cached, only the weights are missing, and the message says just that.
    put_in_cache(cache.path(), REPO, "config.json", EFFICIENTVIT_CONFIG);
    let message = resolve(REPO, &opts).unwrap_err().to_string();
    assert!(message.contains("missing model.safetensors."), "{message}");
    assert_eq!(
        hub.count(),
        0,
        "offline must not make requests: {:?}",
        hub.requests()
    );
}

// ---------------------------------------------------------------------------------------------
// (4) Hub errors
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_repo_is_a_clear_not_found_error() {
    let hub = FakeHub::start(Vec::new(), 5);
    let cache = tempfile::tempdir().unwrap();
    let err = resolve(
        "mit-han-lab/dc-ae-does-not-exist",
        &options(cache.path(), &hub.endpoint()),
    )
    .unwrap_err();
    assert!(
        matches!(err, HubError::RepoNotFound { status: 404, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("mit-han-lab/dc-ae-does-not-exist") && message.contains("404"),
        "{message}"
    );
}

#[test]
fn unreachable_hub_says_so_and_mentions_the_way_out() {
    let cache = tempfile::tempdir().unwrap();
    let err = resolve(REPO, &options(cache.path(), &closed_endpoint())).unwrap_err();
    assert!(matches!(err, HubError::Network { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("HF_ENDPOINT") && message.contains("HF_HUB_OFFLINE"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// (5) Cancel mid-download, then resume
// ---------------------------------------------------------------------------------------------

#[test]
fn cancelled_download_keeps_its_bytes_and_resumes() {
    let weights = tiny_safetensors(1 << 20); // 4 MiB: several progress reports long.
    let etag = fake_etag(&weights);
    let hub = serve_original(weights.clone(), 20);
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &hub.endpoint());

    // Press "cancel" as soon as some weights have arrived.
    let cancel = AtomicBool::new(false);
    let mut on_progress = |p: DownloadProgress| {
        if p.file == "model.safetensors" && p.bytes_done > 0 {
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let err = resolve_model(REPO, &opts, &mut on_progress, &cancel).unwrap_err();
    let HubError::Cancelled {
        file,
        bytes_done,
        bytes_total,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(file, "model.safetensors");
    assert_eq!(*bytes_total, weights.len() as u64);
    assert!(
        *bytes_done > 0 && *bytes_done < weights.len() as u64,
        "{err}"
    );

    let partial = repo_folder(cache.path(), REPO)
        .join("blobs")
        .join(format!("{etag}.incomplete"));
    assert_eq!(fs::metadata(&partial).unwrap().len(), *bytes_done);
    assert_eq!(partial_download_bytes(REPO, &opts), *bytes_done);
    assert!(!is_cached(REPO, &opts));

    // Cancel before anything starts: no request at all.
    let before = hub.count();
    let err = resolve_model(REPO, &opts, &mut |_| {}, &AtomicBool::new(true)).unwrap_err();
    assert!(matches!(err, HubError::Cancelled { .. }), "{err:?}");
    assert_eq!(hub.count(), before);

    // A later call asks only for the rest.
    let (files, events) = resolve_with_progress(REPO, &opts);
    let files = files.unwrap();
    assert_eq!(fs::read(&files.weights).unwrap(), weights);
    assert!(!partial.exists());
    let resumed_range = format!("bytes={bytes_done}-");
    assert!(
        hub.requests().iter().any(|r| r.contains(&resumed_range)),
        "{:?}",
        hub.requests()
    );
    let first = events
        .iter()
        .find(|p| p.file == "model.safetensors")
        .unwrap();
    assert_eq!(
        first.bytes_done, *bytes_done,
        "progress starts where the partial file ends"
    );
}

// ---------------------------------------------------------------------------------------------
// (6) Local folders
// ---------------------------------------------------------------------------------------------

#[test]
fn local_folder_resolves_to_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), &closed_endpoint());
    fs::write(dir.path().join("config.json"), EFFICIENTVIT_CONFIG).unwrap();
    fs::write(
        dir.path().join("diffusion_pytorch_model.safetensors"),
        tiny_safetensors(2),
    )
    .unwrap();

    let arg = dir.path().to_str().unwrap();
    let files = resolve(arg, &opts).unwrap();
    assert_eq!(files.config, dir.path().join("config.json"));
    assert_eq!(
        files.weights,
        dir.path().join("diffusion_pytorch_model.safetensors")
    );
    assert_eq!(
        files.source,
        ModelSource::LocalDir(dir.path().to_path_buf())
    );

    // With both names present, model.safetensors comes first.
    fs::write(dir.path().join("model.safetensors"), tiny_safetensors(2)).unwrap();
    assert_eq!(
        resolve(arg, &opts).unwrap().weights,
        dir.path().join("model.safetensors")
    );
}

#[test]
fn local_folder_without_weights_lists_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), &closed_endpoint());
    fs::write(dir.path().join("config.json"), EFFICIENTVIT_CONFIG).unwrap();
    fs::write(dir.path().join("notes.txt"), "hi").unwrap();
    fs::create_dir(dir.path().join("vae")).unwrap();

    let err = resolve(dir.path().to_str().unwrap(), &opts).unwrap_err();
    assert!(matches!(err, HubError::IncompleteFolder { .. }), "{err:?}");
    let message = err.to_string();
    for needle in [
        "model.safetensors",
        "diffusion_pytorch_model.safetensors",
        "config.json, notes.txt, vae/",
    ] {
        assert!(message.contains(needle), "{needle:?} not in: {message}");
    }

    // A file, or a path that does not exist, is not taken for a repo id.
    let file = dir.path().join("notes.txt");
    assert!(matches!(
        resolve(file.to_str().unwrap(), &opts),
        Err(HubError::NotAFolder(_))
    ));
    let missing = dir.path().join("nope");
    assert!(matches!(
        resolve(missing.to_str().unwrap(), &opts),
        Err(HubError::FolderNotFound(_))
    ));
    assert!(matches!(
        resolve("./models/nope", &opts),
        Err(HubError::FolderNotFound(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Small rules
// ---------------------------------------------------------------------------------------------

#[test]
fn repo_ids_and_bare_names() {
    assert_eq!(
        parse_repo_id("dc-ae-f64c128-in-1.0").unwrap(),
        "mit-han-lab/dc-ae-f64c128-in-1.0"
    );
    assert_eq!(
        parse_repo_id("mit-han-lab/dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k").unwrap(),
        "mit-han-lab/dc-ae-f64c128-in-1.0-uvit-h-in-512px-train2000k"
    );
    for bad in [
        "", "a/b/c", "owner/", "/name", "bad name", "a--b/c", "-x/y", "x/y.", "x/..y",
    ] {
        assert!(
            matches!(parse_repo_id(bad), Err(HubError::InvalidRepoId(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn options_follow_the_huggingface_environment_variables() {
    let home = tempfile::tempdir().unwrap();
    let hf_home = home.path().join("hf");
    fs::create_dir_all(&hf_home).unwrap();
    fs::write(hf_home.join("token"), "hf_from_file\n").unwrap();
    let env = |pairs: &[(&str, String)]| {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        HubOptions::from_vars(move |name| map.get(name).cloned())
    };
    let home_str = home.path().to_str().unwrap().to_string();

    let defaults = env(&[("HOME", home_str.clone())]);
    assert_eq!(
        defaults.cache_dir,
        home.path().join(".cache/huggingface/hub")
    );
    assert_eq!(defaults.endpoint, "https://huggingface.co");
    assert!(!defaults.offline);
    assert_eq!(defaults.token, None);
    assert_eq!(defaults.revision, "main");

    let with_home = env(&[
        ("HOME", home_str.clone()),
        ("HF_HOME", hf_home.to_str().unwrap().to_string()),
        ("HF_ENDPOINT", "http://127.0.0.1:1/".to_string()),
        ("HF_HUB_OFFLINE", "TRUE".to_string()),
    ]);
    assert_eq!(with_home.cache_dir, hf_home.join("hub"));
    assert_eq!(with_home.endpoint, "http://127.0.0.1:1");
    assert!(with_home.offline);
    assert_eq!(with_home.token.as_deref(), Some("hf_from_file"));
    assert!(
        !format!("{with_home:?}").contains("hf_from_file"),
        "Debug must not print the token"
    );

    let explicit = env(&[
        ("HOME", home_str),
        ("HF_HOME", hf_home.to_str().unwrap().to_string()),
        ("HF_HUB_CACHE", "~/elsewhere".to_string()),
        ("HF_TOKEN", "hf_env".to_string()),
        ("HF_HUB_OFFLINE", "0".to_string()),
    ]);
    assert_eq!(explicit.cache_dir, home.path().join("elsewhere"));
    assert_eq!(explicit.token.as_deref(), Some("hf_env"));
    assert!(!explicit.offline);
}

// ---------------------------------------------------------------------------------------------
// The stand-in hub
// ---------------------------------------------------------------------------------------------

/// A minimal HTTP/1.1 server on 127.0.0.1 playing the hub. One connection at a time, one request
/// per connection (`Connection: close`), at most `max_requests` requests or 60 seconds, then it
/// stops by itself (and at the latest when dropped).
pub(crate) mod fake_hub {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use super::{fake_etag, COMMIT};

    /// A file the fake hub serves.
    #[derive(Clone)]
    pub struct Hosted {
        repo: String,
        path: String,
        body: Arc<Vec<u8>>,
        etag: String,
        /// Served like an LFS file: the resolve URL redirects to a "CDN" URL and carries the
        /// blob's etag and size in X-Linked-* headers.
        lfs: bool,
        /// Bytes the "CDN" sends after the body, beyond the size the hub announced.
        extra: usize,
        /// Whether the CDN's Content-Length counts `extra` (otherwise it sends none, and the
        /// body runs on until the connection closes).
        extra_counted: bool,
    }

    impl Hosted {
        pub fn small(repo: &str, path: &str, body: Vec<u8>) -> Self {
            Self::new(repo, path, body, false)
        }

        pub fn lfs(repo: &str, path: &str, body: Vec<u8>) -> Self {
            Self::new(repo, path, body, true)
        }

        /// Advertises `etag` instead of the body's SHA-256 (a corrupt or tampered file).
        pub fn with_etag(mut self, etag: &str) -> Self {
            self.etag = etag.to_string();
            self
        }

        /// A broken or hostile CDN: after the body it sends `extra` bytes more than the hub
        /// announced (an LFS file only), counted in its Content-Length or not.
        pub fn sending_extra(mut self, extra: usize, counted: bool) -> Self {
            self.extra = extra;
            self.extra_counted = counted;
            self
        }

        fn new(repo: &str, path: &str, body: Vec<u8>, lfs: bool) -> Self {
            let etag = fake_etag(&body);
            Self {
                repo: repo.to_string(),
                path: path.to_string(),
                body: Arc::new(body),
                etag,
                lfs,
                extra: 0,
                extra_counted: false,
            }
        }
    }

    pub struct FakeHub {
        port: u16,
        log: Arc<Mutex<Vec<String>>>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeHub {
        pub fn start(files: Vec<Hosted>, max_requests: usize) -> Self {
            Self::start_with(files, max_requests, COMMIT, Duration::ZERO)
        }

        /// A hub that names `commit` in X-Repo-Commit and waits `delay` before every answer.
        pub fn start_with(files: Vec<Hosted>, max_requests: usize, commit: &str, delay: Duration) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            let port = listener.local_addr().expect("local addr").port();
            let log = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let server = Server {
                files,
                port,
                log: log.clone(),
                stop: stop.clone(),
                max_requests,
                commit: commit.to_string(),
                delay,
            };
            let thread = std::thread::spawn(move || server.run(listener));
            Self {
                port,
                log,
                stop,
                thread: Some(thread),
            }
        }

        pub fn endpoint(&self) -> String {
            format!("http://127.0.0.1:{}", self.port)
        }

        /// Requests so far, as `METHOD /path [range]`.
        pub fn requests(&self) -> Vec<String> {
            self.log.lock().map(|log| log.clone()).unwrap_or_default()
        }

        pub fn count(&self) -> usize {
            self.requests().len()
        }
    }

    impl Drop for FakeHub {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    struct Server {
        files: Vec<Hosted>,
        port: u16,
        log: Arc<Mutex<Vec<String>>>,
        stop: Arc<AtomicBool>,
        max_requests: usize,
        commit: String,
        delay: Duration,
    }

    struct Request {
        method: String,
        path: String,
        range: Option<String>,
    }

    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// No Content-Length: the body ends when the connection closes.
        close_delimited: bool,
    }

    impl Response {
        fn new(status: u16) -> Self {
            Self {
                status,
                headers: Vec::new(),
                body: Vec::new(),
                close_delimited: false,
            }
        }

        fn header(mut self, name: &str, value: impl ToString) -> Self {
            self.headers.push((name.to_string(), value.to_string()));
            self
        }

        fn not_found(code: &str) -> Self {
            Self::new(404)
                .header("X-Error-Code", code)
                .header("X-Error-Message", code)
        }
    }

    impl Server {
        fn run(self, listener: TcpListener) {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut served = 0;
            while served < self.max_requests
                && Instant::now() < deadline
                && !self.stop.load(Ordering::Relaxed)
            {
                match listener.accept() {
                    Ok((stream, _)) => {
                        served += 1;
                        self.handle(stream);
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return,
                }
            }
        }

        /// Errors (a client that hung up mid-body, say) end this connection, not the server.
        fn handle(&self, mut stream: TcpStream) {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            let Some(request) = read_request(&stream) else {
                return;
            };
            let range = request
                .range
                .as_deref()
                .map(|r| format!(" [{r}]"))
                .unwrap_or_default();
            if let Ok(mut log) = self.log.lock() {
                log.push(format!("{} {}{range}", request.method, request.path));
            }
            std::thread::sleep(self.delay);
            let response = self.route(&request);
            let _ = write_response(&mut stream, &request, response);
        }

        fn route(&self, request: &Request) -> Response {
            if let Some(etag) = request.path.strip_prefix("/cdn/") {
                return match self.files.iter().find(|f| f.etag == etag) {
                    Some(file) => {
                        let mut response = serve_bytes(request, &file.body);
                        if file.extra > 0 && response.status < 300 {
                            response.body.extend(std::iter::repeat_n(0x5a, file.extra));
                            response.close_delimited = !file.extra_counted;
                        }
                        response
                    }
                    None => Response::new(404),
                };
            }
            // /{owner}/{name}/resolve/{revision}/{path}
            let parts: Vec<&str> = request
                .path
                .trim_start_matches('/')
                .splitn(5, '/')
                .collect();
            let [owner, name, "resolve", revision, path] = parts[..] else {
                return Response::new(404);
            };
            let repo = format!("{owner}/{name}");
            if !self.files.iter().any(|f| f.repo == repo) {
                return Response::not_found("RepoNotFound");
            }
            if revision != "main" && revision != COMMIT && revision != self.commit {
                return Response::not_found("RevisionNotFound");
            }
            let Some(file) = self.files.iter().find(|f| f.repo == repo && f.path == path) else {
                return Response::not_found("EntryNotFound");
            };
            if file.lfs {
                Response::new(302)
                    .header(
                        "Location",
                        format!("http://127.0.0.1:{}/cdn/{}", self.port, file.etag),
                    )
                    .header("X-Repo-Commit", &self.commit)
                    .header("X-Linked-Etag", format!("\"{}\"", file.etag))
                    .header("X-Linked-Size", file.body.len())
                    .header("ETag", "\"pointer-etag\"")
            } else {
                serve_bytes(request, &file.body)
                    .header("X-Repo-Commit", &self.commit)
                    .header("ETag", format!("\"{}\"", file.etag))
            }
        }
    }

    /// The body, or the part of it a `Range: bytes=a-` / `bytes=a-b` header asks for.
    fn serve_bytes(request: &Request, body: &[u8]) -> Response {
        let total = body.len();
        let Some((first, last)) = request.range.as_deref().and_then(|r| parse_range(r, total))
        else {
            let mut response = Response::new(200);
            response.body = body.to_vec();
            return response;
        };
        if first >= total || first > last {
            return Response::new(416).header("Content-Range", format!("bytes */{total}"));
        }
        let mut response =
            Response::new(206).header("Content-Range", format!("bytes {first}-{last}/{total}"));
        response.body = body[first..=last].to_vec();
        response
    }

    fn parse_range(range: &str, total: usize) -> Option<(usize, usize)> {
        let (first, last) = range.strip_prefix("bytes=")?.split_once('-')?;
        let first = first.trim().parse().ok()?;
        let last = match last.trim() {
            "" => total.saturating_sub(1),
            last => last.parse::<usize>().ok()?.min(total.saturating_sub(1)),
        };
        Some((first, last))
    }

    fn read_request(stream: &TcpStream) -> Option<Request> {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let mut words = line.split_whitespace();
        let method = words.next()?.to_string();
        let path = words.next()?.to_string();
        let mut range = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).ok()? == 0 || header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.trim().eq_ignore_ascii_case("range") {
                    range = Some(value.trim().to_string());
                }
            }
        }
        Some(Request {
            method,
            path,
            range,
        })
    }

    fn write_response(
        stream: &mut TcpStream,
        request: &Request,
        response: Response,
    ) -> std::io::Result<()> {
        let mut head = format!("HTTP/1.1 {} Fake\r\n", response.status);
        for (name, value) in &response.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !response.close_delimited {
            head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
        }
        head.push_str("Connection: close\r\n\r\n");
        stream.write_all(head.as_bytes())?;
        if request.method != "HEAD" {
            stream.write_all(&response.body)?;
        }
        stream.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// A hostile or broken hub
// ---------------------------------------------------------------------------------------------

/// Every file, folder and link under `dir`, as paths relative to it.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            }
        }
    }
    out
}

#[test]
fn a_commit_header_that_is_not_a_hash_is_refused_and_nothing_escapes_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("deep/cache");
    fs::create_dir_all(&cache).unwrap();
    for commit in ["../../../../escaped", "main", "0123456789abcdef0123456789abcdef0123456/"] {
        let files = hosted_model(REPO, EFFICIENTVIT_CONFIG, "model.safetensors", tiny_safetensors(8));
        let hub = FakeHub::start_with(files, 20, commit, std::time::Duration::ZERO);
        let err = resolve(REPO, &options(&cache, &hub.endpoint())).expect_err("a hostile commit must be refused");
        assert!(matches!(err, HubError::BadResponse { .. }) && err.to_string().contains("X-Repo-Commit"), "{commit}: {err}");
        let outside: Vec<_> = tree(tmp.path()).into_iter().filter(|p| !p.starts_with("deep/cache")).filter(|p| p != Path::new("deep")).collect();
        assert!(outside.is_empty(), "{commit}: written outside the cache: {outside:?}");
        assert!(!tree(&cache).iter().any(|p| p.to_string_lossy().contains("escaped")), "{commit}: {:?}", tree(&cache));
    }
}

#[test]
fn a_download_whose_sha256_does_not_match_is_deleted_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tiny_safetensors(64);
    let claimed = fake_etag(b"some other bytes");
    let files = vec![
        Hosted::small(REPO, "config.json", EFFICIENTVIT_CONFIG.to_vec()),
        Hosted::lfs(REPO, "model.safetensors", weights).with_etag(&claimed),
    ];
    let hub = FakeHub::start(files, 20);
    let err = resolve(REPO, &options(tmp.path(), &hub.endpoint())).expect_err("a corrupt file must be refused");
    let text = err.to_string();
    assert!(matches!(err, HubError::Corrupt { .. }) && text.contains(&claimed) && text.contains("download it again"), "{text}");
    let blobs = repo_folder(tmp.path(), REPO).join("blobs");
    let left: Vec<_> = fs::read_dir(&blobs).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    assert!(!left.iter().any(|n| n.starts_with(&claimed)), "the corrupt file is deleted: {left:?}");
    assert!(!is_cached(REPO, &options(tmp.path(), &hub.endpoint()).with_offline(true)));
}

/// A CDN that sends more than the hub announced is stopped at the announced size, whether its
/// body runs on until the connection closes (16 MiB more here; nothing else would stop it) or
/// its Content-Length counts the extra bytes. Nothing lands in the cache, and a partial file
/// from an earlier attempt keeps its bytes (only what the bad answer wrote goes).
#[test]
fn a_download_longer_than_announced_is_stopped_and_not_kept() {
    let weights = tiny_safetensors(4096);
    let half = weights.len() / 2;
    for (extra, counted, resumed) in [(16 << 20, false, false), (100, true, false), (16 << 20, false, true)] {
        let case = format!("{extra} extra bytes, counted {counted}, resumed {resumed}");
        let tmp = tempfile::tempdir().unwrap();
        let files = vec![
            Hosted::small(REPO, "config.json", EFFICIENTVIT_CONFIG.to_vec()),
            Hosted::lfs(REPO, "model.safetensors", weights.clone()).sending_extra(extra, counted),
        ];
        let hub = FakeHub::start(files, 20);
        let opts = options(tmp.path(), &hub.endpoint());
        let blobs = repo_folder(tmp.path(), REPO).join("blobs");
        let partial = blobs.join(format!("{}.incomplete", fake_etag(&weights)));
        if resumed {
            fs::create_dir_all(&blobs).unwrap();
            fs::write(&partial, &weights[..half]).unwrap();
        }
        let err = resolve(REPO, &opts).expect_err("a download longer than announced must be refused");
        let text = err.to_string();
        assert!(
            text.contains("more") && text.contains("announced") && text.contains(&weights.len().to_string()),
            "{case}: {text}"
        );
        assert!(!blobs.join(fake_etag(&weights)).exists(), "{case}: no finished blob");
        assert!(!is_cached(REPO, &opts.clone().with_offline(true)), "{case}");
        let kept = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let expected = if resumed { half as u64 } else { 0 };
        assert_eq!(kept, expected, "{case}: what the bad answer wrote is dropped, earlier bytes kept");
        let requests = hub.requests();
        let range = format!("bytes={half}-");
        assert_eq!(requests.iter().any(|r| r.contains(&range)), resumed, "{case}: {requests:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// SANA pipelines: every component file, at one commit
// ---------------------------------------------------------------------------------------------

/// The sana-tiny pipeline served as a repo, its transformer as two shards + index (as the 1.6B
/// repos ship it) and a bf16 variant beside it. Everything the loader needs is fetched, files
/// it does not need are not, and a second fetch sends no request.
#[test]
fn sana_pipeline_is_fetched_whole_and_loads() {
    use dcae::model::sana::layout::{fetch_pipeline, WeightFiles};
    const SANA: &str = "Efficient-Large-Model/Sana_tiny_diffusers";
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sana-tiny");
    let mut hosted = Vec::new();
    for rel in ["model_index.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors", "transformer/config.json", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bf16.safetensors",
        "transformer/diffusion_pytorch_model.bf16.safetensors"]
    {
        let bytes = fs::read(src.join(rel)).unwrap();
        hosted.push(if rel.ends_with(".safetensors") { Hosted::lfs(SANA, rel, bytes) } else { Hosted::small(SANA, rel, bytes) });
    }
    // The f32 transformer as shards.
    let bytes = fs::read(src.join("transformer/diffusion_pytorch_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (i, part) in [&names[..20], &names[20..]].iter().enumerate() {
        let shard = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<_> = part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        hosted.push(Hosted::lfs(SANA, &format!("transformer/{shard}"), safetensors::serialize(views, None).unwrap()));
        part.iter().for_each(|n| {
            map.insert(n.clone(), shard.clone().into());
        });
    }
    let index = serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": map})).unwrap();
    hosted.push(Hosted::small(SANA, "transformer/diffusion_pytorch_model.safetensors.index.json", index));

    let hub = FakeHub::start(hosted, 200);
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &hub.endpoint());
    let mut seen = Vec::new();
    let files = fetch_pipeline(SANA, &opts, None, &mut |p: DownloadProgress| seen.push(p.file), &AtomicBool::new(false)).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(files.transformer.weights, WeightFiles::Sharded(_)), "{:?}", files.transformer.weights);
    for f in ["diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"] {
        assert!(files.root.join("transformer").join(f).is_file(), "{f} fetched");
    }
    // The variant files were not asked for, so not fetched.
    assert!(!files.root.join("vae/diffusion_pytorch_model.bf16.safetensors").exists());
    assert!(hub.requests().iter().all(|r| !r.contains("bf16")), "{:?}", hub.requests());
    let pipe = dcae::model::sana::pipeline::SanaPipeline::<dcae::engine::backend::Cpu>::open(&files, SANA, &Default::default());
    assert!(pipe.is_ok(), "{:?}", pipe.err().map(|e| e.to_string()));

    // Cached now: no request at all.
    let before = hub.count();
    let again = fetch_pipeline(SANA, &opts, None, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!(again, files);
    assert_eq!(hub.count(), before, "{:?}", hub.requests());

    // The bf16 variant: taken where the repo has it, the default elsewhere.
    let v = fetch_pipeline(SANA, &opts, Some("bf16"), &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert!(v.transformer.weights.path().ends_with("transformer/diffusion_pytorch_model.bf16.safetensors"));
    assert!(v.text_encoder.weights.path().ends_with("text_encoder/model.safetensors"));

    // Offline, a pipeline that is not cached says which file is missing.
    let empty = tempfile::tempdir().unwrap();
    let e = fetch_pipeline(SANA, &options(empty.path(), &hub.endpoint()).with_offline(true), None, &mut |_| {}, &AtomicBool::new(false)).unwrap_err();
    assert!(e.to_string().contains("model_index.json"), "{e}");
}
