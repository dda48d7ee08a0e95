//! Bringing an arbitrary image to a size the autoencoder accepts, the way the DC-AE authors do.
//!
//! DC-AE downsamples by a fixed factor (32, 64 or 128), so both sides of its input must be
//! multiples of that factor. The authors evaluate on images prepared by `DMCrop`, the centre crop
//! of OpenAI's ADM (`center_crop_arr`); [`dm_crop`] reproduces it exactly, including Pillow's
//! filters and Python's rounding.

use image::RgbImage;

use super::error::{ImagingError, Result};
use super::resample::{resize, resize_window, ResampleFilter};

/// Makes `img` acceptable to an autoencoder with downsampling factor `factor`.
///
/// * `size = Some(n)`: the authors' [`dm_crop`] to `n`×`n` (`n` must be a positive multiple of
///   `factor`). An image that is already `n`×`n` is returned untouched.
/// * `size = None` and both sides multiples of `factor`: returned untouched, whatever its aspect
///   ratio — no resampling means the reconstruction can be compared with the file pixel for pixel.
/// * `size = None` otherwise: [`dm_crop`] to [`default_size`], the largest multiple of `factor`
///   not above the short side, so the image is scaled as little as possible (never up). The
///   result is square, as in the authors' pipeline.
///
/// Errors: `factor == 0`, `n` not a positive multiple of `factor`, or (for `None`) a short side
/// below `factor`.
pub fn prepare(img: RgbImage, factor: usize, size: Option<u32>) -> Result<RgbImage> {
    if factor == 0 {
        return Err(ImagingError::InvalidFactor { factor });
    }
    let n = match size {
        Some(n) => n,
        None if is_multiple(img.width(), factor) && is_multiple(img.height(), factor) => {
            return Ok(img);
        }
        None => default_size(img.width(), img.height(), factor)?,
    };
    if !is_multiple(n, factor) {
        return Err(ImagingError::SizeNotMultiple { size: n, factor });
    }
    if img.width() == 0 || img.height() == 0 {
        return Err(ImagingError::ImageTooSmall {
            width: img.width(),
            height: img.height(),
            factor,
        });
    }
    Ok(dm_crop(&img, n))
}

/// The largest positive multiple of `factor` that is not above the image's short side.
pub fn default_size(width: u32, height: u32, factor: usize) -> Result<u32> {
    let too_small = ImagingError::ImageTooSmall {
        width,
        height,
        factor,
    };
    let factor_u32 = u32::try_from(factor).map_err(|_| too_small)?;
    if factor_u32 == 0 {
        return Err(ImagingError::InvalidFactor { factor });
    }
    let n = width.min(height) / factor_u32 * factor_u32;
    if n == 0 {
        return Err(ImagingError::ImageTooSmall {
            width,
            height,
            factor,
        });
    }
    Ok(n)
}

fn is_multiple(side: u32, factor: usize) -> bool {
    side > 0 && (side as usize).is_multiple_of(factor)
}

/// The ADM / DC-AE centre crop to `size`×`size`.
///
/// While the short side is at least twice `size`, halve the image with a BOX filter (cheap, and
/// avoids aliasing in the bicubic step); then scale with BICUBIC so the short side is `size`
/// (each side rounded half-to-even, as Python's `round`); then cut the centred `size`×`size`
/// square, rounding its offset down. Small images are scaled up. An image already `size`×`size`
/// is returned as it is. `size == 0` or an empty image give an empty image.
pub fn dm_crop(img: &RgbImage, size: u32) -> RgbImage {
    if img.dimensions() == (size, size) {
        return img.clone();
    }
    if size == 0 || img.width() == 0 || img.height() == 0 {
        return RgbImage::new(size, size);
    }
    let mut current = img.clone();
    while current.width().min(current.height()) as u64 >= 2 * size as u64 {
        let (w, h) = (current.width() / 2, current.height() / 2);
        current = resize(&current, w, h, ResampleFilter::Box);
    }
    let scale = f64::from(size) / f64::from(current.width().min(current.height()));
    let w = scaled_side(current.width(), scale, size);
    let h = scaled_side(current.height(), scale, size);
    // Only the centred square is computed: a long thin strip scaled by its short side would
    // otherwise be a multi-gigabyte intermediate of which all but the square is thrown away.
    resize_window(&current, w, h, (w - size) / 2, (h - size) / 2, size, size, ResampleFilter::Bicubic)
}

/// `round(side * scale)` with Python's ties-to-even, never below `size` so the crop fits (the
/// short side comes out at exactly `size` anyway; the floor only guards against float surprises).
fn scaled_side(side: u32, scale: f64, size: u32) -> u32 {
    let rounded = (f64::from(side) * scale).round_ties_even();
    (rounded as u32).max(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        })
    }

    #[test]
    fn multiples_pass_through_untouched() {
        let img = gradient(64, 96);
        assert_eq!(prepare(img.clone(), 32, None).unwrap(), img);
    }

    #[test]
    fn default_size_is_largest_multiple_below_short_side() {
        assert_eq!(default_size(100, 70, 32).unwrap(), 64);
        assert!(default_size(31, 500, 32).is_err());
        let out = prepare(gradient(100, 70), 32, None).unwrap();
        assert_eq!(out.dimensions(), (64, 64));
    }

    #[test]
    fn explicit_size_must_be_a_multiple() {
        assert!(matches!(
            prepare(gradient(64, 64), 32, Some(48)),
            Err(ImagingError::SizeNotMultiple {
                size: 48,
                factor: 32
            })
        ));
        assert!(matches!(
            prepare(gradient(64, 64), 0, None),
            Err(ImagingError::InvalidFactor { .. })
        ));
    }

    #[test]
    fn dm_crop_output_sizes() {
        for (w, h, n) in [
            (1000, 600, 256),
            (256, 256, 256),
            (100, 50, 64),
            (513, 1025, 128),
        ] {
            assert_eq!(dm_crop(&gradient(w, h), n).dimensions(), (n, n));
        }
    }

    #[test]
    fn python_round_is_ties_to_even() {
        assert_eq!(scaled_side(5, 0.5, 1), 2);
        assert_eq!(scaled_side(7, 0.5, 1), 4);
    }
}

/// `img` scaled (bicubic) to cover `width × height` and centre-cropped to exactly that size:
/// the source of an image-to-image run at the size the user asked for.
pub fn cover_crop(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    if img.width() == 0 || img.height() == 0 || width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    if img.dimensions() == (width, height) {
        return img.clone();
    }
    let scale = (width as f64 / img.width() as f64).max(height as f64 / img.height() as f64);
    let sw = ((img.width() as f64 * scale).round() as u32).max(width);
    let sh = ((img.height() as f64 * scale).round() as u32).max(height);
    // The kept window only, whatever the source's shape (see `dm_crop`).
    resize_window(img, sw, sh, (sw - width) / 2, (sh - height) / 2, width, height, ResampleFilter::Bicubic)
}
