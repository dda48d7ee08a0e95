//! The session history: every finished generation (and every PNG opened from disk), kept in the
//! App so it survives engine restarts, to revisit, compare and save again.
//!
//! Bounded: every item keeps a thumbnail for the strip, but only the newest [`KEEP_FULL`] (and
//! the ones on screen) keep their full pictures and textures. The others were written to the
//! gallery as they arrived and are read back from there when shown again ([`bound`],
//! `GeneratePanel::restore`), so a long session's memory stays flat.

use std::path::{Path, PathBuf};

use eframe::egui::{self, TextureHandle};
use image::RgbImage;

use super::widgets;

use crate::engine::worker::api::{self, ImageParams};

/// Items whose full pictures stay in memory, newest first.
pub const KEEP_FULL: usize = 8;
/// The longer side of the strip's thumbnails (shown at 88 points).
pub const THUMB_SIDE: u32 = 128;

pub struct HistoryItem {
    pub id: u64,
    pub params: ImageParams,
    /// The full pictures and their textures; empty once released ([`Self::release`]).
    pub images: Vec<RgbImage>,
    pub textures: Vec<TextureHandle>,
    /// Small copies for the history strip, always kept.
    pub thumbs: Vec<TextureHandle>,
    /// How many pictures, and their width / height, whether held or not.
    pub count: usize,
    pub aspect: f32,
    /// Seconds: sampling, final decode. Zero for opened files.
    pub sampling_secs: f64,
    pub decode_secs: f64,
    /// Guided noise predictions (= steps) and UViT forward passes (2× under guidance).
    pub nfe: usize,
    pub network_calls: usize,
    /// Where it was last saved (or opened from).
    pub saved_to: Option<PathBuf>,
    /// Opened from a file rather than generated in this session.
    pub opened: bool,
    /// The model's class count: id `num_classes` is the unconditional (null) class.
    pub num_classes: usize,
    /// Its copies in the app's gallery folder (not files the user opened): removing the item
    /// from the history deletes them, or it would come back at the next start.
    pub gallery: Vec<PathBuf>,
}

impl HistoryItem {
    /// A result with its textures and thumbnails made; timings zero, not opened, no gallery copy
    /// yet (the caller fills in what it knows).
    pub fn new(ctx: &egui::Context, id: u64, params: ImageParams, images: Vec<RgbImage>, num_classes: usize) -> Self {
        let aspect = images.first().map_or(1.0, |i| i.width() as f32 / i.height().max(1) as f32);
        let mut item = Self {
            id,
            params,
            count: images.len(),
            aspect,
            images: Vec::new(),
            textures: Vec::new(),
            thumbs: Vec::new(),
            sampling_secs: 0.0,
            decode_secs: 0.0,
            nfe: 0,
            network_calls: 0,
            saved_to: None,
            opened: false,
            num_classes,
            gallery: Vec::new(),
        };
        item.thumbs = images
            .iter()
            .enumerate()
            .map(|(i, img)| widgets::texture(ctx, &format!("thumb-{id}-{i}"), &thumbnail(img)))
            .collect();
        item.hold(ctx, images);
        item
    }

    /// An image read from a file (an opened PNG, the gallery): no timings, marked as opened.
    pub fn opened(ctx: &egui::Context, id: u64, params: ImageParams, image: RgbImage, path: PathBuf, num_classes: usize) -> Self {
        let mut item = Self::new(ctx, id, params, vec![image], num_classes);
        item.saved_to = Some(path);
        item.opened = true;
        item
    }

    /// Whether its full pictures are in memory.
    pub fn loaded(&self) -> bool {
        !self.images.is_empty()
    }

    /// Takes the full pictures (back) and makes their textures.
    pub fn hold(&mut self, ctx: &egui::Context, images: Vec<RgbImage>) {
        self.textures = images.iter().enumerate().map(|(i, img)| widgets::texture(ctx, &format!("item-{}-{i}", self.id), img)).collect();
        self.images = images;
    }

    /// Drops the full pictures and textures, when the gallery holds every one of them (else
    /// they could not come back, and are kept).
    pub fn release(&mut self) -> bool {
        if !self.loaded() || self.gallery.len() != self.count {
            return false;
        }
        self.images = Vec::new();
        self.textures = Vec::new();
        true
    }

    /// Short description for tooltips and headings.
    pub fn title(&self) -> String {
        let p = &self.params;
        let what = match p {
            ImageParams::Class(c) => class_list(&c.classes, self.num_classes),
            ImageParams::Text(t) => format!("“{}”", short_prompt(t.prompts.first().map_or("", String::as_str), 60)),
        };
        format!("{what} · cfg {:.1} · {} steps · seed {}", p.guidance(), p.steps(), p.seed())
    }
}

/// `img` with its longer side at most [`THUMB_SIDE`], aspect kept.
fn thumbnail(img: &RgbImage) -> RgbImage {
    match widgets::display_size(img.width(), img.height(), THUMB_SIDE) {
        Some((w, h)) => image::imageops::thumbnail(img, w, h),
        None => img.clone(),
    }
}

/// Releases the full pictures of every item but the newest [`KEEP_FULL`] and those in `keep`
/// (on screen); returns how many were released.
pub fn bound(history: &mut [HistoryItem], keep: &[u64]) -> usize {
    let old = history.len().saturating_sub(KEEP_FULL);
    history[..old].iter_mut().filter(|h| !keep.contains(&h.id)).map(|h| h.release() as usize).sum()
}

/// Reads an item's pictures back from its gallery copies (on a helper thread).
pub fn read_gallery(paths: &[PathBuf]) -> Result<Vec<RgbImage>, String> {
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).map_err(|e| format!("{} cannot be read ({e}); it may have been deleted from the gallery", p.display()))?;
            api::load_image_bytes(&bytes).map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect()
}

/// Saves every image: `path` for a single image, `stem-1.png`, `stem-2.png`… for a batch.
/// Each file carries the generation parameters as a PNG text chunk. Returns the files written.
///
/// `replace` allows replacing the one file the user picked in a save dialog (which asked
/// them); otherwise, and always for the numbered files of a batch, nothing that exists is
/// replaced: the first free name of `stem`, `stem (2)`, `stem (3)`… is used, checked for every
/// file of the batch (the dialog showed `stem.png`, not `stem-1.png`).
pub fn save_images(images: &[RgbImage], params: &ImageParams, path: &Path, replace: bool) -> Result<Vec<PathBuf>, String> {
    let replace = replace && images.len() <= 1;
    let mut written = Vec::new();
    let mut paths = Vec::new();
    for candidate in numbered_variants(path) {
        paths = batch_paths(&candidate, images.len());
        if replace || paths.iter().all(|p| p.symlink_metadata().is_err()) {
            break;
        }
    }
    for (img, p) in images.iter().zip(&paths) {
        match api::save_png_with_params(img, p, params, replace) {
            Ok(()) => written.push(p.clone()),
            // Taken between the check and the write (another save): kept, and said so.
            Err(e) if e.exists => {
                return Err(format!("{} appeared while saving; it was left as it is ({} of {} saved)", p.display(), written.len(), images.len()))
            }
            Err(e) => return Err(e.message),
        }
    }
    Ok(written)
}

/// `dir/name.png`, then `dir/name (2).png`, `dir/name (3).png`, … (at most 10 000 names).
pub fn numbered_variants(path: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    let path = if path.extension().is_none() { path.with_extension("png") } else { path.to_path_buf() };
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "image".into());
    let ext = path.extension().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "png".into());
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    std::iter::once(path).chain((2..10_000).map(move |i| dir.join(format!("{stem} ({i}).{ext}"))))
}

/// `out.png` → [`out.png`] for one image; [`out-1.png`, `out-2.png`, …] for several.
pub fn batch_paths(path: &Path, n: usize) -> Vec<PathBuf> {
    let path = if path.extension().is_none() { path.with_extension("png") } else { path.to_path_buf() };
    if n <= 1 {
        return vec![path];
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "image".into());
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    (1..=n).map(|i| dir.join(format!("{stem}-{i}.png"))).collect()
}

/// "207 golden retriever", "unconditional", "3 classes".
pub fn class_list(classes: &[u32], num_classes: usize) -> String {
    let mut uniq: Vec<u32> = classes.to_vec();
    uniq.sort();
    uniq.dedup();
    match uniq.as_slice() {
        [] => "unconditional".into(),
        [c] => class_label(*c as usize, num_classes),
        many => format!("{} classes", many.len()),
    }
}

/// "207 golden retriever"; the null id (`num_classes`) is "unconditional".
pub fn class_label(id: usize, num_classes: usize) -> String {
    if id >= num_classes {
        return "unconditional".to_string();
    }
    match api::class_name(id) {
        Some(name) => format!("{id} {name}"),
        None => format!("class {id}"),
    }
}

/// The prompt's first `max` characters on one line, with "…" when cut.
pub fn short_prompt(prompt: &str, max: usize) -> String {
    let line: String = prompt.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let cut: String = line.chars().take(max).collect();
    format!("{}…", cut.trim_end())
}

/// A file name made from the parameters: `dcae-207-golden_retriever-s42.png`, or for a prompt
/// `sana-a_cat_on_a_windowsill-s42.png`.
pub fn suggested_file_name(p: &ImageParams, num_classes: usize) -> String {
    let p = match p {
        ImageParams::Class(c) => c,
        ImageParams::Text(t) => {
            let words: String = short_prompt(t.prompts.first().map_or("", String::as_str), 40)
                .chars()
                .filter(|c| *c != '…')
                .map(|ch| if ch.is_alphanumeric() { ch.to_lowercase().next().unwrap_or(ch) } else { '_' })
                .collect();
            let words = words.trim_matches('_');
            let words = if words.is_empty() { "image" } else { words };
            return format!("sana-{words}-s{}.png", t.seed);
        }
    };
    let class = match p.classes.first() {
        Some(&c) if (c as usize) < num_classes => {
            let name = api::class_name(c as usize).unwrap_or_default();
            let name: String = name
                .split(',')
                .next()
                .unwrap_or("")
                .chars()
                .map(|ch| if ch.is_ascii_alphanumeric() { ch.to_ascii_lowercase() } else { '_' })
                .collect();
            format!("{c}-{name}")
        }
        _ => "uncond".into(),
    };
    format!("dcae-{class}-s{}.png", p.seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_paths_number_files() {
        assert_eq!(batch_paths(Path::new("/t/a.png"), 1), vec![PathBuf::from("/t/a.png")]);
        assert_eq!(batch_paths(Path::new("/t/a"), 2), vec![PathBuf::from("/t/a-1.png"), PathBuf::from("/t/a-2.png")]);
    }
}
