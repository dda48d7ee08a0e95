//! PNG text chunks: how generated images carry the settings that made them.
//!
//! Text goes in `tEXt` chunks when it is Latin-1 (what most tools read) and in `iTXt` (UTF-8)
//! otherwise — the same choice Pillow makes, so files from this app and from Python scripts look
//! alike to other tools. Reading accepts `tEXt`, `zTXt` and `iTXt`.

use std::io::{Cursor, Write};
use std::path::Path;

use image::RgbImage;

use super::atomic::{write_atomic, Existing};
use super::error::{ImagingError, Result};

/// Largest decompressed `zTXt` / compressed `iTXt` value read back: metadata is small, and a
/// compression bomb in someone else's PNG should not take the app down.
const MAX_TEXT_BYTES: usize = 1024 * 1024;

/// PNG keywords are 1–79 Latin-1 characters, without leading, trailing or double spaces or NUL.
fn check_key(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(ImagingError::InvalidTextKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() || key.chars().count() > 79 {
        return bad("it must be 1 to 79 characters long");
    }
    if !key
        .chars()
        .all(|c| matches!(c as u32, 0x20..=0x7e | 0xa1..=0xff))
    {
        return bad("it must be printable Latin-1");
    }
    if key.starts_with(' ') || key.ends_with(' ') || key.contains("  ") {
        return bad("it must not start or end with a space or contain two spaces in a row");
    }
    Ok(())
}

fn is_latin1(text: &str) -> bool {
    text.chars().all(|c| (c as u32) <= 0xff && c != '\0')
}

/// Encodes `img` as a PNG with the given text entries, in order, before the image data (so that
/// readers that stop early still see them).
pub fn encode_png_with_text(img: &RgbImage, entries: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    write_png(&mut bytes, img, entries, "<in-memory image>")?;
    Ok(bytes)
}

/// Saves `img` as a PNG file with text entries (see [`encode_png_with_text`]), replacing a file
/// already at `path`.
///
/// The file is written beside the target and renamed into place, so an interrupted save never
/// leaves a half-written PNG under the final name.
pub fn save_png_with_text(
    img: &RgbImage,
    path: impl AsRef<Path>,
    entries: &[(&str, &str)],
) -> Result<()> {
    save_png(img, path.as_ref(), entries, Existing::Replace)
}

/// Like [`save_png_with_text`], but never replaces a file: an existing `path` is an error
/// ([`ImagingError::Write`] of kind `AlreadyExists`) and stays as it was.
pub fn save_png_with_text_new(
    img: &RgbImage,
    path: impl AsRef<Path>,
    entries: &[(&str, &str)],
) -> Result<()> {
    save_png(img, path.as_ref(), entries, Existing::Keep)
}

fn save_png(img: &RgbImage, path: &Path, entries: &[(&str, &str)], existing: Existing) -> Result<()> {
    let name = path.display().to_string();
    let mut bytes = Vec::new();
    write_png(&mut bytes, img, entries, &name)?;
    write_atomic(path, &bytes, existing).map_err(|source| ImagingError::Write { path: name, source })
}

fn write_png<W: Write>(out: W, img: &RgbImage, entries: &[(&str, &str)], name: &str) -> Result<()> {
    let encode_err = |e: png::EncodingError| ImagingError::PngEncode {
        path: name.to_owned(),
        message: e.to_string(),
    };
    let mut encoder = png::Encoder::new(out, img.width(), img.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    for &(key, value) in entries {
        check_key(key)?;
        if is_latin1(value) {
            encoder
                .add_text_chunk(key.to_owned(), value.to_owned())
                .map_err(encode_err)?;
        } else {
            encoder
                .add_itxt_chunk(key.to_owned(), value.to_owned())
                .map_err(encode_err)?;
        }
    }
    let mut writer = encoder.write_header().map_err(encode_err)?;
    writer.write_image_data(img.as_raw()).map_err(encode_err)?;
    writer.finish().map_err(encode_err)
}

/// All text entries of a PNG file, as `(key, value)` in file order by chunk kind (`tEXt`, then
/// `zTXt`, then `iTXt`), including those after the image data.
pub fn read_png_text(path: impl AsRef<Path>) -> Result<Vec<(String, String)>> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ImagingError::Io {
        path: name.clone(),
        source,
    })?;
    read_text_named(&bytes, &name)
}

/// [`read_png_text`] for a PNG already in memory.
pub fn read_png_text_from_bytes(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    read_text_named(bytes, "<in-memory image>")
}

fn read_text_named(bytes: &[u8], name: &str) -> Result<Vec<(String, String)>> {
    let read_err = |message: String| ImagingError::PngRead {
        path: name.to_owned(),
        message,
    };
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(read_err("not a PNG file".to_owned()));
    }
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // Only the chunks are wanted; the pixels are skipped without being kept.
    decoder.set_ignore_text_chunk(false);
    let mut reader = decoder.read_info().map_err(|e| read_err(e.to_string()))?;
    reader.finish().map_err(|e| read_err(e.to_string()))?;
    let info = reader.info();

    let mut entries = Vec::new();
    for chunk in &info.uncompressed_latin1_text {
        entries.push((chunk.keyword.clone(), chunk.text.clone()));
    }
    // zTXt and iTXt are different types with the same two methods (png has no trait for them).
    macro_rules! push_decompressed {
        ($chunks:expr) => {
            for chunk in $chunks {
                let mut chunk = chunk.clone();
                chunk.decompress_text_with_limit(MAX_TEXT_BYTES).map_err(|e| read_err(e.to_string()))?;
                entries.push((chunk.keyword.clone(), chunk.get_text().map_err(|e| read_err(e.to_string()))?));
            }
        };
    }
    push_decompressed!(&info.compressed_latin1_text);
    push_decompressed!(&info.utf8_text);
    Ok(entries)
}
