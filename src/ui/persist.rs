//! What survives a restart: the settings (a JSON file in the app's state folder, written
//! atomically) and the gallery of finished images (PNGs with their parameters, see
//! [`gallery`]). eframe's own storage would need its `persistence` feature and RON; a plain
//! JSON file is readable, and a damaged one is set aside instead of crashing the start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::backend::BackendChoice;

/// Bumped when a field changes meaning; older files are read field by field (every field has
/// a default), newer ones too.
pub const SETTINGS_VERSION: u32 = 1;
/// A settings file larger than this is not ours.
const MAX_SETTINGS_BYTES: u64 = 4 << 20;

/// `<user data>/dcae-studio` (e.g. ~/.local/share/dcae-studio on Linux).
pub fn default_state_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("dcae-studio"))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub version: u32,
    pub backend: Option<BackendChoice>,
    /// Model folders the user added (Models → Open folder…), beside the one given at start.
    pub local_dirs: Vec<PathBuf>,
    /// The generation model used last (a catalog key).
    pub generator: Option<String>,
    pub offline: Option<bool>,
    /// Where Quick save writes.
    pub output_dir: Option<PathBuf>,
    pub generate: GenerateSettings,
    /// Where the text encoder runs (Settings).
    pub text_encoder: Option<crate::engine::backend::Placement>,
    /// The generation models' autoencoder placement (Settings).
    #[serde(default)]
    pub autoencoder: Option<crate::engine::backend::Placement>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            version: SETTINGS_VERSION,
            backend: None,
            local_dirs: Vec::new(),
            generator: None,
            offline: None,
            output_dir: None,
            generate: GenerateSettings::default(),
            text_encoder: None,
            autoencoder: None,
        }
    }
}

/// The Generate view's controls (the seed only when locked: an unlocked one is random anyway).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct GenerateSettings {
    pub prompt: Option<String>,
    pub negative_prompt: String,
    pub prompt_history: Vec<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub class: Option<Option<usize>>,
    pub batch: Option<usize>,
    pub locked_seed: Option<u64>,
    pub instruction: Option<bool>,
    pub live_preview: Option<bool>,
    pub decode_every: Option<usize>,
}

pub fn settings_path(dir: &Path) -> PathBuf {
    dir.join("settings.json")
}

/// The saved settings; `Ok(None)` when there are none yet. A file that cannot be read is moved
/// aside (`settings.json.bad`) and named in the error, so the next save does not lose it.
pub fn load_settings(dir: &Path) -> Result<Option<Settings>, String> {
    let path = settings_path(dir);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the settings {}: {e}", path.display())),
    };
    let set_aside = |why: String| {
        let bad = path.with_extension("json.bad");
        let _ = std::fs::rename(&path, &bad);
        format!("the saved settings could not be read ({why}); the app starts with defaults and kept the old file as {}", bad.display())
    };
    if meta.len() > MAX_SETTINGS_BYTES {
        return Err(set_aside(format!("{} bytes, far too large", meta.len())));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| set_aside(e.to_string()))?;
    serde_json::from_str::<Settings>(&text).map(Some).map_err(|e| set_aside(e.to_string()))
}

/// Writes the settings atomically (temporary file + rename): a crash mid-write leaves the old
/// file, never half a file.
pub fn save_settings(dir: &Path, settings: &Settings) -> Result<(), String> {
    let path = settings_path(dir);
    let text = serde_json::to_string_pretty(settings).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    crate::imaging::write_atomic(&path, text.as_bytes(), crate::imaging::Existing::Replace)
        .map_err(|e| format!("cannot save the settings to {}: {e}", path.display()))
}

pub mod gallery {
    //! Every finished image is written here as soon as it arrives (a PNG with its parameters,
    //! never replacing a file), so a crash, an engine restart or closing the app loses nothing.
    //! Bounded by count and bytes; the oldest files go first. The folder is the user's to
    //! browse (Settings shows it).

    use std::path::{Path, PathBuf};
    use std::time::SystemTime;

    use image::RgbImage;

    use crate::engine::worker::api::{self, ImageParams};

    pub const MAX_ITEMS: usize = 500;
    pub const MAX_BYTES: u64 = 2 << 30;
    /// Items shown in the history strip at start.
    pub const REOPEN: usize = 24;

    pub fn folder(state_dir: &Path) -> PathBuf {
        state_dir.join("gallery")
    }

    /// Writes `images` as `<unix seconds>-<id>-<i>.png`; returns the paths. Then evicts.
    pub fn store(dir: &Path, id: u64, images: &[RgbImage], params: &ImageParams) -> Result<Vec<PathBuf>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the gallery folder {}: {e}", dir.display()))?;
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let mut written = Vec::new();
        for (i, img) in images.iter().enumerate() {
            let path = dir.join(format!("{stamp}-{id}-{}.png", i + 1));
            api::save_png_with_params(img, &path, params, false).map_err(|e| e.message)?;
            written.push(path);
        }
        evict(dir, MAX_ITEMS, MAX_BYTES);
        Ok(written)
    }

    /// The gallery's PNGs, newest first.
    pub fn list(dir: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
        let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut files: Vec<(PathBuf, SystemTime, u64)> = rd
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| (e.path(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
            })
            .collect();
        // Names start with a millisecond stamp: a tie in mtime falls back to the name.
        files.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        files
    }

    /// Deletes the oldest files beyond `max_items` or `max_bytes`.
    pub fn evict(dir: &Path, max_items: usize, max_bytes: u64) -> usize {
        let mut total = 0u64;
        let mut removed = 0;
        for (i, (path, _, len)) in list(dir).into_iter().enumerate() {
            total += len;
            if i >= max_items || total > max_bytes {
                if std::fs::remove_file(&path).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_a_damaged_file_is_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(load_settings(tmp.path()).unwrap(), None);
        let mut s = Settings { generator: Some("k".into()), local_dirs: vec!["/m".into()], ..Settings::default() };
        s.generate.prompt = Some("a fox".into());
        save_settings(tmp.path(), &s).unwrap();
        assert_eq!(load_settings(tmp.path()).unwrap(), Some(s));
        std::fs::write(settings_path(tmp.path()), "{ not json").unwrap();
        let e = load_settings(tmp.path()).unwrap_err();
        assert!(e.contains("settings.json.bad"), "{e}");
        assert!(tmp.path().join("settings.json.bad").is_file());
        assert_eq!(load_settings(tmp.path()).unwrap(), None, "the bad file is out of the way");
        // Unknown fields (a newer version) and missing ones (an older one) are fine.
        std::fs::write(settings_path(tmp.path()), r#"{"version": 9, "future": 1, "offline": true}"#).unwrap();
        assert_eq!(load_settings(tmp.path()).unwrap().unwrap().offline, Some(true));
    }

    #[test]
    fn gallery_evicts_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let p = tmp.path().join(format!("{i}.png"));
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i);
            std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
        }
        assert_eq!(gallery::evict(tmp.path(), 3, u64::MAX), 2);
        let left: Vec<String> = gallery::list(tmp.path()).iter().map(|(p, _, _)| p.file_name().unwrap().to_string_lossy().to_string()).collect();
        assert_eq!(left, ["4.png", "3.png", "2.png"]);
        assert_eq!(gallery::evict(tmp.path(), 10, 250), 1, "over 250 bytes: the oldest goes");
    }
}
