//! A resampler that reproduces Pillow's `Image.resize` on 8-bit RGB images bit for bit.
//!
//! The DC-AE authors prepare images with Pillow (BOX halving, then BICUBIC), and PSNR differences
//! of a tenth of a dB are what separates autoencoders in their tables, so "close to PIL" is not
//! enough: this follows Pillow's published algorithm — separable convolution, horizontal pass
//! first, filter support widened by the downscale factor, weights normalised per output pixel and
//! rounded to 22-bit fixed point, each pass rounded and clamped to 8 bits.

use image::RgbImage;

/// Fractional bits of the fixed-point weights (32 bits minus 8 for the sample minus 2 spare).
const PRECISION_BITS: u32 = 22;

/// The resampling filters the DC-AE preprocessing needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleFilter {
    /// Area average: each output pixel is the mean of the input pixels it covers.
    Box,
    /// Keys cubic convolution with a = -0.5, as Pillow's `Image.BICUBIC`.
    Bicubic,
}

impl ResampleFilter {
    /// Half-width of the filter at scale 1, in input pixels.
    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bicubic => bicubic(x),
        }
    }
}

/// Keys' cubic kernel with a = -0.5, written in the same operation order as Pillow so that the
/// doubles, and therefore the rounded fixed-point weights, are identical.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output pixel along one axis: the first input pixel used and fixed-point weights for
/// it and the following ones.
struct AxisWeights {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl AxisWeights {
    /// The input pixels the window's output pixels read: `lo..hi`.
    fn input_span(&self) -> (usize, usize) {
        let lo = self.first.iter().copied().min().unwrap_or(0);
        let hi = self.first.iter().zip(&self.weights).map(|(f, w)| f + w.len()).max().unwrap_or(0);
        (lo, hi)
    }

    /// The same weights read from an input that starts at pixel `lo`.
    fn shifted(mut self, lo: usize) -> Self {
        for f in &mut self.first {
            *f -= lo;
        }
        self
    }
}

/// The weights of the output pixels `window` of a resize from `in_size` to `out_size`. Only the
/// window is computed, so a crop of a huge upscale costs what the crop costs (an 11-pixel-high
/// strip scaled to a 512 square would otherwise be a multi-gigabyte row of weights and pixels).
fn axis_weights(in_size: u32, out_size: u32, window: std::ops::Range<u32>, filter: ResampleFilter) -> AxisWeights {
    let scale = f64::from(in_size) / f64::from(out_size);
    // When shrinking, the filter is stretched so every input pixel contributes.
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let inv_filter_scale = 1.0 / filter_scale;
    let in_size = i64::from(in_size);

    let mut first = Vec::with_capacity(window.len());
    let mut weights = Vec::with_capacity(window.len());
    for out in window {
        let center = (f64::from(out) + 0.5) * scale;
        // `as i64` truncates toward zero, as the C cast in Pillow does.
        let lo = ((center - support + 0.5) as i64).max(0);
        let hi = ((center + support + 0.5) as i64).min(in_size);
        let raw: Vec<f64> = (lo..hi)
            .map(|i| filter.weight((i as f64 - center + 0.5) * inv_filter_scale))
            .collect();
        let total: f64 = raw.iter().sum();
        let fixed = raw
            .iter()
            .map(|&w| to_fixed(if total != 0.0 { w / total } else { w }))
            .collect();
        first.push(lo as usize);
        weights.push(fixed);
    }
    AxisWeights { first, weights }
}

/// Rounds half away from zero, like Pillow's `(int)(w * 2^22 ± 0.5)`.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Rounds an accumulated fixed-point sum (which starts at one half) back to a byte.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The accumulator's starting value: one half in fixed point, so the shift in [`clip8`] rounds.
const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// Applies one axis' weights to `taps` samples spaced `stride` bytes apart, per channel.
fn convolve(src: &[u8], start: usize, stride: usize, weights: &[i32]) -> [u8; 3] {
    let mut acc = [HALF; 3];
    for (k, &w) in weights.iter().enumerate() {
        let at = start + k * stride;
        for (c, a) in acc.iter_mut().enumerate() {
            *a += i64::from(src[at + c]) * i64::from(w);
        }
    }
    acc.map(clip8)
}

/// Horizontal pass over the rows `rows` of `src`, giving the output columns of `ax`.
fn resize_horizontal(src: &RgbImage, ax: &AxisWeights, rows: std::ops::Range<usize>) -> RgbImage {
    let (in_row, out_w) = (src.width() as usize * 3, ax.first.len());
    let data = src.as_raw();
    let mut out = vec![0u8; out_w * 3 * rows.len()];
    for (row, y) in out.chunks_exact_mut(out_w * 3).zip(rows.clone()) {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let start = y * in_row + ax.first[x] * 3;
            px.copy_from_slice(&convolve(data, start, 3, &ax.weights[x]));
        }
    }
    RgbImage::from_raw(out_w as u32, rows.len() as u32, out).expect("buffer sized for the output image")
}

/// Vertical pass over every column of `src`, giving the output rows of `ax`.
fn resize_vertical(src: &RgbImage, ax: &AxisWeights) -> RgbImage {
    let row_len = src.width() as usize * 3;
    let out_h = ax.first.len();
    let data = src.as_raw();
    let mut out = vec![0u8; row_len * out_h];
    for (y, row) in out.chunks_exact_mut(row_len).enumerate() {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let start = ax.first[y] * row_len + x * 3;
            px.copy_from_slice(&convolve(data, start, row_len, &ax.weights[y]));
        }
    }
    RgbImage::from_raw(src.width(), out_h as u32, out).expect("buffer sized for the output image")
}

/// Resizes like Pillow's `img.resize((width, height), filter)` on an RGB image.
///
/// An axis whose size does not change is not filtered at all (as in Pillow), so resizing to the
/// same size returns an identical copy. A zero target size gives an empty image.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: ResampleFilter) -> RgbImage {
    resize_window(img, width, height, 0, 0, width, height, filter)
}

/// The `w`×`h` window at (`x`, `y`) of `resize(img, width, height, filter)`, pixel for pixel,
/// computing only that window: the horizontal pass runs over the input rows the window's rows
/// read, for the window's columns only (as Pillow does for the rows). So cropping a huge
/// upscale of a long thin strip needs memory for the crop, not for the upscale. The window is
/// clamped to the resized image.
#[allow(clippy::too_many_arguments)]
pub fn resize_window(img: &RgbImage, width: u32, height: u32, x: u32, y: u32, w: u32, h: u32, filter: ResampleFilter) -> RgbImage {
    let (x, y) = (x.min(width), y.min(height));
    let (w, h) = (w.min(width - x), h.min(height - y));
    if w == 0 || h == 0 || img.width() == 0 || img.height() == 0 {
        return RgbImage::new(w, h);
    }
    // An unchanged axis is not filtered: its window is a plain crop of the input.
    let vertical = (height != img.height()).then(|| axis_weights(img.height(), height, y..y + h, filter));
    let rows = match &vertical {
        Some(ax) => ax.input_span(),
        None => (y as usize, (y + h) as usize),
    };
    let horizontal = if width != img.width() {
        let ax = axis_weights(img.width(), width, x..x + w, filter);
        resize_horizontal(img, &ax, rows.0..rows.1)
    } else {
        image::imageops::crop_imm(img, x, rows.0 as u32, w, (rows.1 - rows.0) as u32).to_image()
    };
    match vertical {
        Some(ax) => resize_vertical(&horizontal, &ax.shifted(rows.0)),
        None => horizontal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_halving_rounds_each_pass() {
        // Pillow's BOX halving averages pairs horizontally, rounds, then vertically: (a+b+1)/2.
        let img = RgbImage::from_fn(2, 2, |x, y| {
            let v = [[0u8, 1], [1, 1]][y as usize][x as usize];
            image::Rgb([v, v * 10, 255 - v])
        });
        let out = resize(&img, 1, 1, ResampleFilter::Box);
        // R: rows (0+1+1)/2 = 1 and (1+1+1)/2 = 1, then 1.
        // G: rows (0+10+1)/2 = 5 and 10, then (5+10+1)/2 = 8.
        // B: rows (255+254+1)/2 = 255 and 254, then 255 — not round(254.25) = 254.
        assert_eq!(out.get_pixel(0, 0).0, [1, 8, 255]);
    }

    #[test]
    fn identity_resize_is_a_copy() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 70, 9]));
        assert_eq!(resize(&img, 5, 3, ResampleFilter::Bicubic), img);
    }

    #[test]
    fn bicubic_weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(7u32, 3u32), (3, 7), (256, 255), (10, 10)] {
            let ax = axis_weights(i, o, 0..o, ResampleFilter::Bicubic);
            for ws in &ax.weights {
                let sum: i64 = ws.iter().map(|&w| i64::from(w)).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= ws.len() as i64,
                    "{sum}"
                );
            }
        }
    }

    #[test]
    fn flat_image_stays_flat() {
        let img = RgbImage::from_pixel(13, 9, image::Rgb([200, 3, 77]));
        let out = resize(&img, 6, 20, ResampleFilter::Bicubic);
        assert!(out.pixels().all(|p| p.0 == [200, 3, 77]));
    }
}
