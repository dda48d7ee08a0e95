//! Decoding user-supplied files into 8-bit RGB, with size limits checked before any pixel is
//! decoded.
//!
//! A user can drop any file on the app; a 60000×60000 PNG is a few kilobytes on disk but tens of
//! gigabytes decoded. So the order is always: file size, then the header's dimensions, then the
//! decode itself (which also runs under `image::Limits` in case the header lies).

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use super::error::{ImagingError, Result};

/// The name used in error messages for images that did not come from a file.
const IN_MEMORY: &str = "<in-memory image>";

/// Upper bounds on what [`load_rgb`] will read and decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest file (or byte buffer) accepted, in bytes.
    pub max_file_bytes: u64,
    /// Largest `width * height` accepted, read from the header before decoding.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    /// 256 MiB and 100 megapixels: larger than any photo a camera produces, small enough that the
    /// decoded image (at most 800 MB for 16-bit RGBA) fits the memory of a laptop.
    fn default() -> Self {
        Self {
            max_file_bytes: 256 * 1024 * 1024,
            max_pixels: 100_000_000,
        }
    }
}

/// Loads a PNG, JPEG or WebP file as 8-bit RGB.
///
/// The format is found from the file's contents, not its extension. Grayscale is replicated to
/// the three channels; 16-bit samples are scaled to 8 bits with rounding; alpha is **dropped**
/// (not composited), which is what the DC-AE authors' loader (`PIL.Image.convert("RGB")`) does,
/// so reconstructions and metrics match theirs. An EXIF orientation, if present, is applied so the
/// image is upright as in any image viewer.
pub fn load_rgb(path: impl AsRef<Path>, limits: &ImageLimits) -> Result<RgbImage> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let bytes = read_limited(path, &name, limits.max_file_bytes)?;
    decode_rgb(&bytes, &name, limits)
}

/// Like [`load_rgb`], for an image already in memory (clipboard, drag and drop, network).
pub fn load_rgb_from_bytes(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage> {
    let len = bytes.len() as u64;
    if len > limits.max_file_bytes {
        return Err(ImagingError::FileTooLarge {
            path: IN_MEMORY.to_owned(),
            bytes: len,
            limit: limits.max_file_bytes,
        });
    }
    decode_rgb(bytes, IN_MEMORY, limits)
}

/// Reads a whole file, refusing one above `max_bytes` before reading it (and again while reading,
/// in case it grows in between).
fn read_limited(path: &Path, name: &str, max_bytes: u64) -> Result<Vec<u8>> {
    let io_err = |source| ImagingError::Io {
        path: name.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.is_file() {
        return Err(ImagingError::NotAFile {
            path: name.to_owned(),
        });
    }
    let too_large = |bytes| ImagingError::FileTooLarge {
        path: name.to_owned(),
        bytes,
        limit: max_bytes,
    };
    if meta.len() > max_bytes {
        return Err(too_large(meta.len()));
    }
    let file = File::open(path).map_err(io_err)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

fn decode_rgb(bytes: &[u8], name: &str, limits: &ImageLimits) -> Result<RgbImage> {
    let format = supported_format(bytes, name)?;
    let (width, height) = header_dimensions(bytes, format, name)?;
    check_pixels(width, height, name, limits)?;

    let decode_err = |source| ImagingError::Decode {
        path: name.to_owned(),
        source,
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decode_limits(width, height));
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    // A broken EXIF block should not make an otherwise good image unreadable.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// Identifies the format from the leading bytes; only the three formats the app promises are
/// accepted so that the error message can say exactly what is expected.
fn supported_format(bytes: &[u8], name: &str) -> Result<ImageFormat> {
    if bytes.is_empty() {
        return Err(ImagingError::EmptyFile {
            path: name.to_owned(),
        });
    }
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => Ok(f),
        Ok(other) => Err(ImagingError::UnsupportedFormat {
            path: name.to_owned(),
            format: format!("{other:?}"),
        }),
        Err(_) => Err(ImagingError::NotAnImage {
            path: name.to_owned(),
        }),
    }
}

/// Reads only the header: enough to know the size, nowhere near enough to allocate the pixels.
fn header_dimensions(bytes: &[u8], format: ImageFormat, name: &str) -> Result<(u32, u32)> {
    ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|source| ImagingError::Decode {
            path: name.to_owned(),
            source,
        })
}

fn check_pixels(width: u32, height: u32, name: &str, limits: &ImageLimits) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(ImagingError::ZeroSized {
            path: name.to_owned(),
            width,
            height,
        });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImagingError::TooManyPixels {
            path: name.to_owned(),
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// Limits for the decode itself: the header's own size, and room for the largest pixel type
/// (16-bit RGBA, 8 bytes) plus decoder scratch space. A file whose data disagrees with its header
/// then fails cleanly instead of allocating without bound.
fn decode_limits(width: u32, height: u32) -> image::Limits {
    const SCRATCH: u64 = 64 * 1024 * 1024;
    let pixels = u64::from(width) * u64::from(height);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(SCRATCH));
    limits
}
