//! File work for the UI, done off the UI thread: dropped and picked files are size-checked
//! before they are read, read and decoded once on a helper thread, and handed back as ready
//! values; saves are encoded and written there too. The UI thread only starts the work and
//! polls for the answer, so a slow disk or a huge picture never freezes a frame.

use std::path::{Path, PathBuf};

use image::RgbImage;
use poll_promise::Promise;

use crate::engine::worker::api::{self, ImageParams};

/// Largest file the app reads (a bigger one is refused before anything is read): the same
/// limit the image decoder applies.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// What a file turned out to be.
pub enum Opened {
    /// A PNG carrying DC-AE Studio parameters (and its picture, when it decodes).
    Params { params: ImageParams, image: Option<RgbImage> },
    /// Any other picture.
    Image(RgbImage),
    /// A folder (the Models view adds it).
    Folder(PathBuf),
}

/// Where an opened file should go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Dropped on the window while this tab was shown.
    Dropped(super::Tab),
    /// Picked in the Generate view's "Open PNG…" (only parameters are of use there).
    RestoreSettings,
    /// Picked in the Reconstruct view's "Open image…".
    Reconstruct,
    /// Picked as the Generate view's image-to-image source.
    Img2ImgSource,
}

pub struct Loading {
    pub name: String,
    pub purpose: Purpose,
    promise: Promise<Result<Opened, String>>,
}

/// Files being read and decoded.
#[derive(Default)]
pub struct FileLoader {
    pending: Vec<Loading>,
}

impl FileLoader {
    pub fn open_path(&mut self, path: PathBuf, purpose: Purpose) {
        let name = display_name(&path);
        let promise = super::helper::spawn_fallible("open-file", move || open_path(&path));
        self.pending.push(Loading { name, purpose, promise });
    }

    /// Bytes a drop delivered directly (web, some platforms): decoded off the thread too.
    pub fn open_bytes(&mut self, name: String, bytes: std::sync::Arc<[u8]>, purpose: Purpose) {
        let promise = super::helper::spawn_fallible("open-file", move || {
            if bytes.len() as u64 > MAX_FILE_BYTES {
                return Err(too_large(bytes.len() as u64));
            }
            classify(&bytes)
        });
        self.pending.push(Loading { name, purpose, promise });
    }

    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The files that are ready, in the order they were opened.
    pub fn ready(&mut self) -> Vec<(String, Purpose, Result<Opened, String>)> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].promise.ready().is_some() {
                let l = self.pending.remove(i);
                match l.promise.try_take() {
                    Ok(result) => done.push((l.name, l.purpose, result)),
                    Err(_) => done.push((l.name, l.purpose, Err("the file could not be read".into()))),
                }
            } else {
                i += 1;
            }
        }
        done
    }
}

pub fn display_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| path.display().to_string())
}

fn too_large(bytes: u64) -> String {
    format!(
        "it is {} MiB; the app opens files up to {} MiB",
        bytes / (1024 * 1024),
        MAX_FILE_BYTES / (1024 * 1024)
    )
}

/// Size-checks, reads and classifies a file (on a helper thread).
fn open_path(path: &Path) -> Result<Opened, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if meta.is_dir() {
        return Ok(Opened::Folder(path.to_path_buf()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64)); // grew while we looked
    }
    classify(&bytes)
}

/// Parameters first (a PNG of ours), then the picture, decoded once.
fn classify(bytes: &[u8]) -> Result<Opened, String> {
    match api::read_png_params(bytes)? {
        Some(params) => Ok(Opened::Params { params, image: api::load_image_bytes(bytes).ok() }),
        None => api::load_image_bytes(bytes)
            .map(Opened::Image)
            .map_err(|e| format!("is not an image this app can open (PNG, JPEG or WebP): {e}")),
    }
}

/// A save being encoded and written.
pub struct Saving {
    pub item: u64,
    promise: Promise<Result<Vec<PathBuf>, String>>,
}

/// The pictures a save writes: held in memory, or the gallery copies of a history item whose
/// full pictures were released ([`super::history::bound`]).
pub enum Pictures {
    Held(Vec<RgbImage>),
    Gallery(Vec<PathBuf>),
}

/// Saves the images of a history item on a helper thread (see [`super::history::save_images`]).
pub fn save(item: u64, pictures: Pictures, params: ImageParams, path: PathBuf, replace: bool) -> Saving {
    let promise = super::helper::spawn_fallible("save-png", move || {
        let images = match pictures {
            Pictures::Held(images) => images,
            Pictures::Gallery(paths) => super::history::read_gallery(&paths)?,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        super::history::save_images(&images, &params, &path, replace)
    });
    Saving { item, promise }
}

impl Saving {
    /// The result once the files are written.
    pub fn poll(&mut self) -> Option<Result<Vec<PathBuf>, String>> {
        self.promise.ready().cloned()
    }

    /// Blocks until the files are written (or the save failed).
    pub fn wait(&self) {
        let _ = self.promise.block_until_ready();
    }
}
