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
/// The prompt and the negative prompt are saved up to this many bytes (cut at a char
/// boundary), and prompt-history entries longer than this are not saved: a pasted
/// multi-megabyte text must not make a file that [`load_settings`] sets aside, and every other
/// setting with it. A text this long is still used in full until the app closes.
pub const MAX_SAVED_TEXT_BYTES: usize = 64 << 10;

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
    /// The local API (Settings → Serve the local API).
    #[serde(default)]
    pub api: ApiSettings,
}

/// Whether the app serves the local API, and on which port of 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiSettings {
    pub serve: bool,
    pub port: u16,
}

impl Default for ApiSettings {
    fn default() -> Self {
        // A1111's port, where clients look first.
        Self { serve: false, port: 7860 }
    }
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
            api: ApiSettings::default(),
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
/// file, never half a file. Long texts are bounded first (see [`MAX_SAVED_TEXT_BYTES`]), so
/// the file is always one that [`load_settings`] reads back.
pub fn save_settings(dir: &Path, settings: &Settings) -> Result<(), String> {
    let path = settings_path(dir);
    let text = settings_text(settings)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    crate::imaging::write_atomic(&path, text.as_bytes(), crate::imaging::Existing::Replace)
        .map_err(|e| format!("cannot save the settings to {}: {e}", path.display()))
}

/// The JSON that is saved for `settings`, within [`MAX_SETTINGS_BYTES`]. JSON escapes can
/// make bounded texts up to six times longer, so when the file is still too large the prompt
/// history goes, then the prompts; only what cannot give way (thousands of model folders)
/// makes it fail, and then the file saved before stays.
fn settings_text(settings: &Settings) -> Result<String, String> {
    let mut bounded = settings.clone();
    let g = &mut bounded.generate;
    if let Some(prompt) = &mut g.prompt {
        truncate_at_char_boundary(prompt, MAX_SAVED_TEXT_BYTES);
    }
    truncate_at_char_boundary(&mut g.negative_prompt, MAX_SAVED_TEXT_BYTES);
    g.prompt_history.retain(|entry| entry.len() <= MAX_SAVED_TEXT_BYTES);
    let fits = |text: &str| text.len() as u64 <= MAX_SETTINGS_BYTES;
    let to_text = |s: &Settings| serde_json::to_string_pretty(s).map_err(|e| e.to_string());
    let mut text = to_text(&bounded)?;
    if !fits(&text) {
        bounded.generate.prompt_history.clear();
        text = to_text(&bounded)?;
    }
    if !fits(&text) {
        bounded.generate.prompt = None;
        bounded.generate.negative_prompt.clear();
        text = to_text(&bounded)?;
    }
    if !fits(&text) {
        return Err(format!(
            "the settings were not saved: they take {} bytes, more than the {MAX_SETTINGS_BYTES} the app reads back ({} model folders are listed); the settings saved before are kept",
            text.len(),
            bounded.local_dirs.len()
        ));
    }
    Ok(text)
}

/// Cuts `text` to at most `max` bytes, at a char boundary.
fn truncate_at_char_boundary(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
}

pub mod gallery {
    //! Every finished image is written here as soon as it arrives (a PNG with its parameters,
    //! never replacing a file), so a crash, an engine restart or closing the app loses nothing.
    //! Bounded by count and bytes; the oldest of the app's own images go first, and anything
    //! else in the folder is left alone. The folder is the user's to browse (Settings shows
    //! it).

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

    /// What [`store_counting`] did.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Stored {
        /// The PNGs written.
        pub paths: Vec<PathBuf>,
        /// Older gallery images deleted to stay within [`MAX_ITEMS`] and [`MAX_BYTES`]: worth
        /// telling the user, since the folder is theirs to browse.
        pub evicted: usize,
    }

    /// Writes `images` as `<unix millis>-<id>-<i>.png`, then evicts the oldest of the app's
    /// images beyond the bounds.
    pub fn store_counting(dir: &Path, id: u64, images: &[RgbImage], params: &ImageParams) -> Result<Stored, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the gallery folder {}: {e}", dir.display()))?;
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let mut paths = Vec::new();
        for (i, img) in images.iter().enumerate() {
            let path = dir.join(format!("{stamp}-{id}-{}.png", i + 1));
            api::save_png_with_params(img, &path, params, false).map_err(|e| e.message)?;
            paths.push(path);
        }
        let evicted = evict(dir, MAX_ITEMS, MAX_BYTES);
        Ok(Stored { paths, evicted })
    }

    /// [`store_counting`] returning only the paths.
    pub fn store(dir: &Path, id: u64, images: &[RgbImage], params: &ImageParams) -> Result<Vec<PathBuf>, String> {
        store_counting(dir, id, images, params).map(|stored| stored.paths)
    }

    /// Whether `path` names an image [`store_counting`] wrote (`<millis>-<id>-<i>.png`, all
    /// three numbers). Only those are the gallery's to list and evict: any other file in the
    /// folder is one the user put there.
    pub fn is_app_file(path: &Path) -> bool {
        let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".png")) else {
            return false;
        };
        let parts: Vec<&str> = stem.split('-').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The images the app wrote into the gallery (see [`is_app_file`]), newest first.
    pub fn list(dir: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
        let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut files: Vec<(PathBuf, SystemTime, u64)> = rd
            .flatten()
            .filter(|e| is_app_file(&e.path()))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| (e.path(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
            })
            .collect();
        // Names start with a millisecond stamp: a tie in mtime falls back to the name.
        files.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        files
    }

    /// Deletes the oldest of the app's images beyond `max_items` or `max_bytes`; returns how
    /// many went.
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

    /// A pasted multi-megabyte prompt must not make the settings file one the loader sets
    /// aside: it is cut for saving, history entries that large are dropped, and everything
    /// else comes back.
    #[test]
    fn a_huge_prompt_is_cut_for_saving_and_the_other_settings_survive() {
        let tmp = tempfile::tempdir().unwrap();
        // Two bytes a char: a cut must land on a char boundary.
        let huge = "é".repeat(2_500_000);
        let mut s = Settings {
            generator: Some("k".into()),
            offline: Some(true),
            local_dirs: vec!["/m".into()],
            output_dir: Some("/out".into()),
            ..Settings::default()
        };
        s.generate.prompt = Some(huge.clone());
        s.generate.negative_prompt = huge.clone();
        s.generate.prompt_history = vec!["a fox".into(), huge.clone(), "a cat".into()];
        s.generate.width = Some(512);
        s.generate.locked_seed = Some(7);
        save_settings(tmp.path(), &s).unwrap();
        let size = std::fs::metadata(settings_path(tmp.path())).unwrap().len();
        assert!(size <= MAX_SETTINGS_BYTES, "{size} bytes saved");
        let back = load_settings(tmp.path()).expect("the saved settings load").expect("saved settings");
        assert_eq!((&back.generator, back.offline, &back.local_dirs, &back.output_dir), (&s.generator, s.offline, &s.local_dirs, &s.output_dir));
        assert_eq!((back.generate.width, back.generate.locked_seed), (Some(512), Some(7)));
        let prompt = back.generate.prompt.clone().unwrap_or_default();
        assert!(!prompt.is_empty() && prompt.len() < huge.len() && huge.starts_with(&prompt), "{} bytes", prompt.len());
        assert!(huge.starts_with(&back.generate.negative_prompt) && back.generate.negative_prompt.len() < huge.len());
        assert_eq!(back.generate.prompt_history, ["a fox", "a cat"]);

        // Text that JSON escapes to six times its size, in every history entry: still a file
        // the loader takes.
        s.generate.prompt = Some("a fox".into());
        s.generate.prompt_history = vec!["\u{1}".repeat(60_000); 30];
        save_settings(tmp.path(), &s).unwrap();
        let back = load_settings(tmp.path()).expect("the saved settings load").expect("saved settings");
        assert_eq!((back.generate.prompt.as_deref(), back.generator.as_deref()), (Some("a fox"), Some("k")));

        // A foreign huge file is still refused.
        std::fs::write(settings_path(tmp.path()), vec![b' '; MAX_SETTINGS_BYTES as usize + 1]).unwrap();
        assert!(load_settings(tmp.path()).is_err());
    }

    /// Only what the app wrote (`<millis>-<id>-<i>.png`) is the gallery's to evict: a PNG the
    /// user put in the folder stays, however old.
    #[test]
    fn gallery_eviction_spares_pngs_the_app_did_not_write() {
        let tmp = tempfile::tempdir().unwrap();
        let names = ["holiday.png", "1000-1-1.png", "1001-2-1.png", "1-2.png", "x-1-1.png", "1002-3-1.png", "1003-3-2.png"];
        for (i, name) in names.iter().enumerate() {
            let p = tmp.path().join(name);
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i as u64);
            std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
        }
        assert_eq!(gallery::evict(tmp.path(), 1, u64::MAX), 3);
        let mut left: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
        left.sort();
        assert_eq!(left, ["1-2.png", "1003-3-2.png", "holiday.png", "x-1-1.png"]);
        let listed: Vec<String> = gallery::list(tmp.path()).iter().map(|(p, _, _)| p.file_name().unwrap().to_string_lossy().to_string()).collect();
        assert_eq!(listed, ["1003-3-2.png"]);
    }

    /// A full gallery says how many old images made room, and those are the app's own.
    #[test]
    fn gallery_store_counts_what_it_evicts() {
        let tmp = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for i in 0..gallery::MAX_ITEMS {
            let p = tmp.path().join(format!("1000-{i}-1.png"));
            std::fs::write(&p, [0u8; 8]).unwrap();
            std::fs::File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
        }
        let holiday = tmp.path().join("holiday.png");
        std::fs::write(&holiday, [0u8; 8]).unwrap();
        std::fs::File::options().write(true).open(&holiday).unwrap().set_modified(old).unwrap();
        let params = crate::engine::worker::api::ImageParams::Text(crate::engine::worker::api::PromptParams {
            prompts: vec!["a fox".into()],
            negative_prompt: String::new(),
            steps: 2,
            sampler: "flow".into(),
            guidance: 4.5,
            seed: 1,
            width: 4,
            height: 4,
            model: "m".into(),
            instruction: false,
            img2img: None,
        });
        let images = vec![image::RgbImage::new(4, 4); 2];
        let stored = gallery::store_counting(tmp.path(), 7, &images, &params).unwrap();
        assert_eq!(stored.paths.len(), 2);
        assert_eq!(stored.evicted, 2);
        assert!(stored.paths.iter().all(|p| p.is_file() && gallery::is_app_file(p)), "{:?}", stored.paths);
        assert!(holiday.is_file());
        assert_eq!(gallery::list(tmp.path()).len(), gallery::MAX_ITEMS);
        assert_eq!(gallery::store(tmp.path(), 8, &images[..1], &params).unwrap().len(), 1);
    }

    #[test]
    fn gallery_evicts_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let p = tmp.path().join(format!("100{i}-{i}-1.png"));
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i);
            std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
        }
        assert_eq!(gallery::evict(tmp.path(), 3, u64::MAX), 2);
        let left: Vec<String> = gallery::list(tmp.path()).iter().map(|(p, _, _)| p.file_name().unwrap().to_string_lossy().to_string()).collect();
        assert_eq!(left, ["1004-4-1.png", "1003-3-1.png", "1002-2-1.png"]);
        assert_eq!(gallery::evict(tmp.path(), 10, 250), 1, "over 250 bytes: the oldest goes");
    }
}
