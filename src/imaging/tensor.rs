//! Conversion between 8-bit RGB images and the `[-1, 1]` NCHW float layout the models use.
//!
//! Both directions use the authors' exact float32 operations (torchvision's `ToTensor` +
//! `Normalize(0.5, 0.5)` in, `save_image(x * 0.5 + 0.5)` out), so an image that goes in and comes
//! straight back out is unchanged, and a reconstruction saved here has the same bytes as one
//! saved by their scripts.

use image::RgbImage;

use super::error::{ImagingError, Result};

/// Packs same-sized images into one NCHW buffer with values `(v / 255 - 0.5) / 0.5` in `[-1, 1]`.
///
/// Returns the buffer and its shape `[n, 3, height, width]`. Errors if `images` is empty or the
/// sizes differ.
pub fn to_nchw(images: &[RgbImage]) -> Result<(Vec<f32>, [usize; 4])> {
    let first = images
        .first()
        .ok_or(ImagingError::EmptyInput { what: "to_nchw" })?;
    let (w, h) = first.dimensions();
    if let Some(other) = images.iter().find(|i| i.dimensions() != (w, h)) {
        return Err(ImagingError::SizeMismatch {
            what: "to_nchw: all images in a batch must have the same size",
            expected_w: w,
            expected_h: h,
            found_w: other.width(),
            found_h: other.height(),
        });
    }
    let plane = w as usize * h as usize;
    let mut out = Vec::with_capacity(images.len() * 3 * plane);
    for img in images {
        for c in 0..3 {
            out.extend(img.pixels().map(|p| normalize(p.0[c])));
        }
    }
    Ok((out, [images.len(), 3, h as usize, w as usize]))
}

/// torchvision's `ToTensor` then `Normalize(mean=0.5, std=0.5)`, in float32 as they compute it.
fn normalize(v: u8) -> f32 {
    (f32::from(v) / 255.0 - 0.5) / 0.5
}

/// Turns one CHW image in `[-1, 1]` back into 8-bit RGB.
///
/// Each value is quantised as `torchvision.utils.save_image` does after the authors' `x * 0.5 +
/// 0.5`: `trunc(clamp(255 * (x * 0.5 + 0.5) + 0.5, 0, 255))`, i.e. `clamp(127.5 x + 128)`
/// truncated. Out-of-range values saturate; **NaN becomes 0** (black), where torch would give an
/// unspecified byte. Errors if `chw.len() != 3 * h * w`.
pub fn to_rgb8(chw: &[f32], h: usize, w: usize) -> Result<RgbImage> {
    let plane = h.checked_mul(w).ok_or(ImagingError::BufferLength {
        what: "to_rgb8: height * width overflows",
        expected: usize::MAX,
        found: chw.len(),
    })?;
    let expected = plane.saturating_mul(3);
    let too_big = || ImagingError::BufferLength {
        what: "to_rgb8: 3 * height * width",
        expected,
        found: chw.len(),
    };
    if chw.len() != expected {
        return Err(too_big());
    }
    let (w32, h32) = (
        u32::try_from(w).map_err(|_| too_big())?,
        u32::try_from(h).map_err(|_| too_big())?,
    );
    let mut bytes = Vec::with_capacity(expected);
    for i in 0..plane {
        for c in 0..3 {
            bytes.push(quantize(chw[c * plane + i]));
        }
    }
    RgbImage::from_raw(w32, h32, bytes).ok_or_else(too_big)
}

/// Splits an NCHW batch (as returned by a decoder) into images; the inverse of [`to_nchw`].
pub fn from_nchw(data: &[f32], shape: [usize; 4]) -> Result<Vec<RgbImage>> {
    let [n, c, h, w] = shape;
    if c != 3 {
        return Err(ImagingError::BufferLength {
            what: "from_nchw: channels",
            expected: 3,
            found: c,
        });
    }
    let per_image = 3usize.saturating_mul(h).saturating_mul(w);
    let expected = per_image.saturating_mul(n);
    if data.len() != expected {
        return Err(ImagingError::BufferLength {
            what: "from_nchw: n * 3 * height * width",
            expected,
            found: data.len(),
        });
    }
    if per_image == 0 {
        return (0..n).map(|_| to_rgb8(&[], h, w)).collect();
    }
    data.chunks_exact(per_image)
        .map(|chw| to_rgb8(chw, h, w))
        .collect()
}

fn quantize(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    // `as u8` truncates toward zero like torch's float -> uint8 cast; clamping first keeps it
    // in range.
    ((x * 0.5 + 0.5) * 255.0 + 0.5).clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for v in 0..=255u8 {
            assert_eq!(quantize(normalize(v)), v);
        }
    }

    #[test]
    fn extremes_and_nan() {
        assert_eq!(quantize(-1.0), 0);
        assert_eq!(quantize(1.0), 255);
        assert_eq!(quantize(7.0), 255);
        assert_eq!(quantize(f32::NEG_INFINITY), 0);
        assert_eq!(quantize(f32::INFINITY), 255);
        assert_eq!(quantize(f32::NAN), 0);
        // Half-way between two levels rounds up: 127.5 * 0 + 128 = 128.
        assert_eq!(quantize(0.0), 128);
    }
}
