//! PSNR and SSIM between two 8-bit RGB images, with the DC-AE authors' conventions.
//!
//! The authors' evaluator quantises both images to uint8 first and measures on the 0–255 scale:
//! PSNR with peak 255 over all pixels and channels, SSIM with torchmetrics'
//! `StructuralSimilarityIndexMeasure(data_range=(0, 255))` (Gaussian window σ = 1.5, 11 taps,
//! K1 = 0.01, K2 = 0.03, per channel, averaged). Values here are computed in f64.

use image::RgbImage;

use super::error::{ImagingError, Result};

/// Peak signal-to-noise ratio in dB, peak 255, MSE over every pixel and channel.
///
/// Identical images give `f64::INFINITY`. Errors if the sizes differ.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    same_size("psnr", a, b)?;
    if a.as_raw().is_empty() {
        return Err(ImagingError::EmptyInput { what: "psnr" });
    }
    let sum_sq: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum();
    let mse = sum_sq / a.as_raw().len() as f64;
    if mse == 0.0 {
        return Ok(f64::INFINITY);
    }
    Ok(10.0 * (255.0f64 * 255.0 / mse).log10())
}

/// How SSIM treats the 5-pixel band where the 11×11 window leaves the image.
///
/// The two choices differ by a few thousandths on typical 256×256 images, enough to matter when
/// comparing with published tables, so callers can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SsimBorder {
    /// Mirror the image at its edges (without repeating the edge pixel) and average the SSIM map
    /// over every pixel. This is torchmetrics from 1.5 on (including the current release), which
    /// is what the authors' evaluator computes when installed today.
    #[default]
    Reflect,
    /// Average only where the window lies wholly inside the image (the band is dropped). This is
    /// torchmetrics before 1.5, scikit-image's `structural_similarity(gaussian_weights=True,
    /// use_sample_covariance=False)` and Wang et al.'s reference code. Needs both sides ≥ 11.
    Valid,
}

/// Radius of the Gaussian window: torchmetrics uses `int(3.5 σ + 0.5)` taps each side.
const RADIUS: usize = 5;
const SIGMA: f64 = 1.5;
const C1: f64 = (0.01 * 255.0) * (0.01 * 255.0);
const C2: f64 = (0.03 * 255.0) * (0.03 * 255.0);

/// Mean SSIM over the three channels, with the torchmetrics ≥ 1.5 border ([`SsimBorder::Reflect`]).
///
/// Identical images give 1. Errors if the sizes differ or an image is empty.
pub fn ssim(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    ssim_with(a, b, SsimBorder::Reflect)
}

/// [`ssim`] with a chosen border treatment.
pub fn ssim_with(a: &RgbImage, b: &RgbImage, border: SsimBorder) -> Result<f64> {
    same_size("ssim", a, b)?;
    let (w, h) = (a.width() as usize, a.height() as usize);
    if w == 0 || h == 0 {
        return Err(ImagingError::EmptyInput { what: "ssim" });
    }
    if border == SsimBorder::Valid && (w <= 2 * RADIUS || h <= 2 * RADIUS) {
        return Err(ImagingError::SizeMismatch {
            what: "ssim without border needs images of at least 11x11",
            expected_w: 11,
            expected_h: 11,
            found_w: a.width(),
            found_h: a.height(),
        });
    }
    let kernel = gaussian_kernel();
    let mut total = 0.0;
    for c in 0..3 {
        let x = channel(a, c);
        let y = channel(b, c);
        let map = ssim_map(&x, &y, w, h, &kernel, border);
        total += map.iter().sum::<f64>() / map.len() as f64;
    }
    Ok(total / 3.0)
}

fn same_size(what: &'static str, a: &RgbImage, b: &RgbImage) -> Result<()> {
    if a.dimensions() != b.dimensions() {
        return Err(ImagingError::SizeMismatch {
            what,
            expected_w: a.width(),
            expected_h: a.height(),
            found_w: b.width(),
            found_h: b.height(),
        });
    }
    Ok(())
}

fn channel(img: &RgbImage, c: usize) -> Vec<f64> {
    img.as_raw()
        .iter()
        .skip(c)
        .step_by(3)
        .map(|&v| f64::from(v))
        .collect()
}

/// Normalised 1-D Gaussian over offsets -5..=5; the 2-D window is its outer product.
fn gaussian_kernel() -> [f64; 2 * RADIUS + 1] {
    let mut k = [0.0; 2 * RADIUS + 1];
    for (i, v) in k.iter_mut().enumerate() {
        let d = i as f64 - RADIUS as f64;
        *v = (-(d / SIGMA).powi(2) / 2.0).exp();
    }
    let sum: f64 = k.iter().sum();
    k.map(|v| v / sum)
}

/// Mirror index without repeating the edge (`d c b | a b c d | c b a`), like torch's "reflect"
/// padding; folded repeatedly so that even images narrower than the window get a value.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

/// Gaussian-weighted local means of `plane` at each output position, separably. With
/// [`SsimBorder::Valid`] only centres at least `RADIUS` pixels inside are produced.
fn blur(
    plane: &[f64],
    w: usize,
    h: usize,
    k: &[f64],
    border: SsimBorder,
) -> (Vec<f64>, usize, usize) {
    let (skip, out_w, out_h) = match border {
        SsimBorder::Reflect => (0, w, h),
        SsimBorder::Valid => (RADIUS, w - 2 * RADIUS, h - 2 * RADIUS),
    };
    let tap = |center: usize, t: usize, n: usize| {
        reflect(center as isize + t as isize - RADIUS as isize, n)
    };
    // Horizontal pass over every row, so the vertical pass can reach rows outside the output.
    let mut rows = vec![0.0; out_w * h];
    for y in 0..h {
        for ox in 0..out_w {
            rows[y * out_w + ox] = k
                .iter()
                .enumerate()
                .map(|(t, kv)| kv * plane[y * w + tap(ox + skip, t, w)])
                .sum();
        }
    }
    let mut out = vec![0.0; out_w * out_h];
    for oy in 0..out_h {
        for ox in 0..out_w {
            out[oy * out_w + ox] = k
                .iter()
                .enumerate()
                .map(|(t, kv)| kv * rows[tap(oy + skip, t, h) * out_w + ox])
                .sum();
        }
    }
    (out, out_w, out_h)
}

fn ssim_map(x: &[f64], y: &[f64], w: usize, h: usize, k: &[f64], border: SsimBorder) -> Vec<f64> {
    let product = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(a, b)| a * b).collect::<Vec<_>>();
    let (mu_x, ..) = blur(x, w, h, k, border);
    let (mu_y, ..) = blur(y, w, h, k, border);
    let (xx, ..) = blur(&product(x, x), w, h, k, border);
    let (yy, ..) = blur(&product(y, y), w, h, k, border);
    let (xy, ..) = blur(&product(x, y), w, h, k, border);
    (0..mu_x.len())
        .map(|i| {
            let (mx, my) = (mu_x[i], mu_y[i]);
            // Variances can come out a hair below zero from cancellation; torchmetrics clamps.
            let var_x = (xx[i] - mx * mx).max(0.0);
            let var_y = (yy[i] - my * my).max(0.0);
            let cov = xy[i] - mx * my;
            ((2.0 * mx * my + C1) * (2.0 * cov + C2))
                / ((mx * mx + my * my + C1) * (var_x + var_y + C2))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_torch_padding() {
        // torch.nn.functional.pad([0,1,2,3], (2,2), mode="reflect") == [2,1,0,1,2,3,2,1]
        let idx: Vec<usize> = (-2..6).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, [2, 1, 0, 1, 2, 3, 2, 1]);
        assert_eq!(reflect(-7, 3), 1);
    }

    #[test]
    fn kernel_is_normalised_and_symmetric() {
        let k = gaussian_kernel();
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert_eq!(k[0], k[10]);
    }

    #[test]
    fn identical_images() {
        let img = RgbImage::from_fn(20, 17, |x, y| {
            image::Rgb([(x * 13) as u8, (y * 7) as u8, (x ^ y) as u8])
        });
        assert_eq!(psnr(&img, &img).unwrap(), f64::INFINITY);
        assert!((ssim(&img, &img).unwrap() - 1.0).abs() < 1e-12);
        assert!((ssim_with(&img, &img, SsimBorder::Valid).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn psnr_of_a_constant_offset() {
        let a = RgbImage::from_pixel(4, 4, image::Rgb([10, 10, 10]));
        let b = RgbImage::from_pixel(4, 4, image::Rgb([20, 20, 20]));
        let expected = 10.0 * (255.0f64 * 255.0 / 100.0).log10();
        assert!((psnr(&a, &b).unwrap() - expected).abs() < 1e-12);
    }
}
