//! Pictures built from other pictures: difference heatmaps, comparison strips and sample grids.

use image::{Rgb, RgbImage};

use super::error::{ImagingError, Result};

/// Colour of the gaps between images: white, as in paper figures, so dark images stay apart.
const GAP_COLOR: Rgb<u8> = Rgb([255, 255, 255]);

/// Gap between cells in [`grid`], in pixels.
const GRID_GAP: u32 = 2;

/// Eleven evenly spaced stops of matplotlib's "inferno" colormap (CC0). It runs from black through
/// purple and orange to pale yellow, with lightness rising steadily, so small differences stay
/// visible and it reads correctly in grayscale and for colour-blind users.
const INFERNO: [[u8; 3]; 11] = [
    [0x00, 0x00, 0x04],
    [0x16, 0x0b, 0x39],
    [0x42, 0x0a, 0x68],
    [0x6a, 0x17, 0x6e],
    [0x93, 0x26, 0x67],
    [0xbc, 0x37, 0x54],
    [0xdd, 0x51, 0x3a],
    [0xf3, 0x78, 0x19],
    [0xfc, 0xa5, 0x0a],
    [0xf6, 0xd7, 0x46],
    [0xfc, 0xff, 0xa4],
];

/// Maps `t` in `[0, 1]` to a colour by linear interpolation between the inferno stops.
fn inferno(t: f32) -> Rgb<u8> {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let pos = t * (INFERNO.len() - 1) as f32;
    let i = (pos.floor() as usize).min(INFERNO.len() - 2);
    let f = pos - i as f32;
    let (lo, hi) = (INFERNO[i], INFERNO[i + 1]);
    Rgb(std::array::from_fn(|c| {
        (f32::from(lo[c]) + f * (f32::from(hi[c]) - f32::from(lo[c]))).round() as u8
    }))
}

/// Per-pixel mean absolute difference over R, G, B, shown with the inferno colormap
/// (black = identical, pale yellow = 255 apart). Same as [`diff_heatmap_with_gain`] with gain 1.
pub fn diff_heatmap(a: &RgbImage, b: &RgbImage) -> Result<RgbImage> {
    diff_heatmap_with_gain(a, b, 1.0)
}

/// Like [`diff_heatmap`], with the difference multiplied by `gain` before mapping (and saturating),
/// because autoencoder errors are usually a few levels out of 255 and would all look black at
/// gain 1; 4–8 is a useful range. A non-finite or negative gain counts as 1.
pub fn diff_heatmap_with_gain(a: &RgbImage, b: &RgbImage, gain: f32) -> Result<RgbImage> {
    if a.dimensions() != b.dimensions() {
        return Err(ImagingError::SizeMismatch {
            what: "diff_heatmap",
            expected_w: a.width(),
            expected_h: a.height(),
            found_w: b.width(),
            found_h: b.height(),
        });
    }
    let gain = if gain.is_finite() && gain >= 0.0 {
        gain
    } else {
        1.0
    };
    Ok(RgbImage::from_fn(a.width(), a.height(), |x, y| {
        let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
        let sum: u32 = (0..3).map(|c| u32::from(p[c].abs_diff(q[c]))).sum();
        inferno(sum as f32 / 3.0 / 255.0 * gain)
    }))
}

/// Places images left to right, top-aligned, with `gap` white pixels between them. The strip is
/// as tall as the tallest image. No images give an empty (0×0) image.
pub fn side_by_side(images: &[&RgbImage], gap: u32) -> RgbImage {
    if images.is_empty() {
        return RgbImage::new(0, 0);
    }
    let height = images.iter().map(|i| i.height()).max().unwrap_or(0);
    let width = images.iter().map(|i| i.width()).sum::<u32>() + gap * (images.len() as u32 - 1);
    let mut out = RgbImage::from_pixel(width, height, GAP_COLOR);
    let mut x = 0i64;
    for img in images {
        image::imageops::replace(&mut out, *img, x, 0);
        x += i64::from(img.width()) + i64::from(gap);
    }
    out
}

/// Arranges images row by row in `cols` columns, each in a cell the size of the largest image
/// (top-left aligned), with 2 white pixels between cells. `cols == 0` picks a near-square layout
/// (`ceil(sqrt(n))` columns). No images give an empty (0×0) image.
pub fn grid(images: &[RgbImage], cols: usize) -> RgbImage {
    if images.is_empty() {
        return RgbImage::new(0, 0);
    }
    let n = images.len();
    let cols = if cols == 0 {
        (n as f64).sqrt().ceil() as usize
    } else {
        cols.min(n)
    };
    let rows = n.div_ceil(cols);
    let cell_w = images.iter().map(|i| i.width()).max().unwrap_or(0);
    let cell_h = images.iter().map(|i| i.height()).max().unwrap_or(0);
    let span = |count: usize, cell: u32| count as u32 * cell + (count as u32 - 1) * GRID_GAP;
    let mut out = RgbImage::from_pixel(span(cols, cell_w), span(rows, cell_h), GAP_COLOR);
    for (i, img) in images.iter().enumerate() {
        let x = (i % cols) as i64 * i64::from(cell_w + GRID_GAP);
        let y = (i / cols) as i64 * i64::from(cell_h + GRID_GAP);
        image::imageops::replace(&mut out, img, x, y);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colormap_ends() {
        assert_eq!(inferno(0.0).0, INFERNO[0]);
        assert_eq!(inferno(1.0).0, INFERNO[10]);
        assert_eq!(inferno(f32::NAN).0, INFERNO[0]);
        assert_eq!(inferno(0.5).0, INFERNO[5]);
    }

    #[test]
    fn layout_sizes() {
        let a = RgbImage::new(10, 8);
        let b = RgbImage::new(6, 12);
        assert_eq!(side_by_side(&[&a, &b], 4).dimensions(), (20, 12));
        let imgs = vec![a.clone(), b.clone(), a.clone()];
        assert_eq!(grid(&imgs, 2).dimensions(), (2 * 10 + 2, 2 * 12 + 2));
        assert_eq!(grid(&imgs, 0).dimensions(), (22, 26));
        assert_eq!(grid(&imgs, 10).dimensions(), (3 * 10 + 4, 12));
    }

    #[test]
    fn heatmap_black_where_equal() {
        let a = RgbImage::from_pixel(3, 3, Rgb([9, 9, 9]));
        let mut b = a.clone();
        b.put_pixel(1, 1, Rgb([255, 255, 255]));
        let h = diff_heatmap(&a, &b).unwrap();
        assert_eq!(h.get_pixel(0, 0).0, INFERNO[0]);
        assert_ne!(h.get_pixel(1, 1).0, INFERNO[0]);
    }
}
