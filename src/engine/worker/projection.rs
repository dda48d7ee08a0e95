//! The cheap step preview: a linear map from one latent pixel (C values) to one RGB pixel.
//!
//! A DC-AE latent is far too small to look at directly (8×8 for f64c128 at 512 px) and a full
//! decode costs about as much as the whole sampling loop, so every step's x0 estimate is shown
//! through a 3×C matrix plus a bias, the "latent2rgb" trick of A1111 and ComfyUI. No such matrix
//! is published for DC-AE, so it is fitted here, once per model: the bundled sample photographs
//! are encoded, each is box-filtered down to the latent's resolution, and a ridge-regularised
//! least-squares fit maps latent pixels (as the diffusion model sees them, i.e. multiplied by the
//! scaling factor) to RGB in [-1, 1]. The result is cached as JSON in the user cache folder.
//!
//! The same projection runs on the GPU (shaders/latent_rgb.wgsl, see `ui::preview`) or, without
//! a wgpu render state, on the CPU ([`Projection::to_rgba`]).

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Bumped when the fitting procedure changes, so old cache files are refitted.
pub const FIT_VERSION: u32 = 2;

/// `rgb = weights · z + bias`, with `weights` 3×C row-major; rgb in [-1, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    pub channels: usize,
    pub weights: Vec<f32>,
    pub bias: [f32; 3],
    /// How it was made, for the UI ("fitted on 8 crops of 4 photos, RMSE 0.21").
    pub note: String,
    /// Root-mean-square error of the fit on its own data, in [-1, 1] units.
    pub rmse: f32,
    #[serde(default)]
    pub version: u32,
}

impl Projection {
    /// The values a GPU buffer holds: 3×C weights followed by the 3 biases.
    pub fn packed(&self) -> Vec<f32> {
        let mut v = self.weights.clone();
        v.extend_from_slice(&self.bias);
        v
    }

    /// Projects one latent image `[C, H, W]` to RGBA8 (H×W, gamma-encoded like the training
    /// pixels); the CPU twin of shaders/latent_rgb.wgsl at scale 1.
    pub fn to_rgba(&self, latent: &[f32], h: usize, w: usize) -> Vec<u8> {
        let c = self.channels;
        let hw = h * w;
        let mut out = vec![255u8; hw * 4];
        if latent.len() < c * hw {
            return out;
        }
        for p in 0..hw {
            for k in 0..3 {
                let row = &self.weights[k * c..(k + 1) * c];
                let mut acc = self.bias[k];
                for (ch, wgt) in row.iter().enumerate() {
                    acc += wgt * latent[ch * hw + p];
                }
                out[p * 4 + k] = to_u8(acc);
            }
        }
        out
    }
}

/// [-1, 1] → 0..=255 the way `imaging::to_rgb8` does it (clamp(127.5x + 128)).
pub fn to_u8(v: f32) -> u8 {
    if v.is_nan() {
        return 0;
    }
    (127.5 * v + 128.0).clamp(0.0, 255.0) as u8
}

/// Accumulates the normal equations of `rgb ≈ W z + b` pixel by pixel.
pub struct Fitter {
    c: usize,
    /// (C+1)×(C+1) Gram matrix of [z, 1].
    xtx: Vec<f64>,
    /// (C+1)×3.
    xty: Vec<f64>,
    /// Σ y² per channel, for the residual.
    yy: [f64; 3],
    n: usize,
}

impl Fitter {
    pub fn new(c: usize) -> Self {
        let d = c + 1;
        Self { c, xtx: vec![0.0; d * d], xty: vec![0.0; d * 3], yy: [0.0; 3], n: 0 }
    }

    pub fn samples(&self) -> usize {
        self.n
    }

    /// Adds one image: `latent` `[C, h, w]` (already scaled like the sampler's latents) and
    /// `target` `[3, h, w]` in [-1, 1].
    pub fn add(&mut self, latent: &[f32], target: &[f32], h: usize, w: usize) {
        let (c, d, hw) = (self.c, self.c + 1, h * w);
        let mut x = vec![0.0f64; d];
        for p in 0..hw {
            for ch in 0..c {
                x[ch] = latent[ch * hw + p] as f64;
            }
            x[c] = 1.0;
            if x.iter().any(|v| !v.is_finite()) {
                continue;
            }
            for i in 0..d {
                let xi = x[i];
                if xi == 0.0 {
                    continue;
                }
                let row = &mut self.xtx[i * d..(i + 1) * d];
                for (j, r) in row.iter_mut().enumerate() {
                    *r += xi * x[j];
                }
                for k in 0..3 {
                    self.xty[i * 3 + k] += xi * target[k * hw + p] as f64;
                }
            }
            for k in 0..3 {
                let y = target[k * hw + p] as f64;
                self.yy[k] += y * y;
            }
            self.n += 1;
        }
    }

    /// Solves the ridge-regularised normal equations. The ridge (relative to the mean diagonal,
    /// never applied to the bias) keeps the fit sane when there are few latent pixels per
    /// channel, as with f64c128's 128 channels.
    pub fn solve(&self, ridge: f64, note: String) -> Option<Projection> {
        let (c, d) = (self.c, self.c + 1);
        if self.n == 0 {
            return None;
        }
        let mut a = self.xtx.clone();
        let mean_diag = (0..c).map(|i| a[i * d + i]).sum::<f64>() / c.max(1) as f64;
        for i in 0..c {
            a[i * d + i] += ridge * mean_diag.max(1e-12);
        }
        let sol = solve_spd(&a, &self.xty, d, 3)?;
        let mut weights = vec![0.0f32; 3 * c];
        let mut bias = [0.0f32; 3];
        for k in 0..3 {
            for ch in 0..c {
                weights[k * c + ch] = sol[ch * 3 + k] as f32;
            }
            bias[k] = sol[c * 3 + k] as f32;
        }
        // Residual Σ(y − xβ)² = yᵀy − 2βᵀXᵀy + βᵀXᵀXβ (with the unregularised Gram matrix).
        let mut sse = 0.0;
        for k in 0..3 {
            let beta: Vec<f64> = (0..d).map(|i| sol[i * 3 + k]).collect();
            let mut bxty = 0.0;
            let mut bxxb = 0.0;
            for i in 0..d {
                bxty += beta[i] * self.xty[i * 3 + k];
                let mut row = 0.0;
                for j in 0..d {
                    row += self.xtx[i * d + j] * beta[j];
                }
                bxxb += beta[i] * row;
            }
            sse += (self.yy[k] - 2.0 * bxty + bxxb).max(0.0);
        }
        let rmse = (sse / (3 * self.n) as f64).sqrt() as f32;
        Some(Projection { channels: c, weights, bias, note, rmse, version: FIT_VERSION })
    }
}

/// Solves `A X = B` for symmetric positive-definite `A` (d×d) and `B` (d×m) by Cholesky.
fn solve_spd(a: &[f64], b: &[f64], d: usize, m: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    let mut x = b.to_vec();
    for col in 0..m {
        // Forward: L y = b.
        for i in 0..d {
            let mut s = x[i * m + col];
            for k in 0..i {
                s -= l[i * d + k] * x[k * m + col];
            }
            x[i * m + col] = s / l[i * d + i];
        }
        // Backward: Lᵀ x = y.
        for i in (0..d).rev() {
            let mut s = x[i * m + col];
            for k in i + 1..d {
                s -= l[k * d + i] * x[k * m + col];
            }
            x[i * m + col] = s / l[i * d + i];
        }
    }
    Some(x)
}

/// Box-filters an RGB image by `factor` into `[3, H/f, W/f]` values in [-1, 1]
/// (the same pixel → [-1, 1] map as the model input).
pub fn box_downsample(img: &RgbImage, factor: usize) -> (Vec<f32>, usize, usize) {
    let (w, h) = (img.width() as usize / factor, img.height() as usize / factor);
    let mut out = vec![0.0f32; 3 * h * w];
    let norm = 1.0 / (factor * factor) as f32;
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0.0f32; 3];
            for dy in 0..factor {
                for dx in 0..factor {
                    let p = img.get_pixel((x * factor + dx) as u32, (y * factor + dy) as u32).0;
                    for k in 0..3 {
                        acc[k] += p[k] as f32;
                    }
                }
            }
            for k in 0..3 {
                out[k * h * w + y * w + x] = acc[k] * norm / 127.5 - 1.0;
            }
        }
    }
    (out, h, w)
}

/// The folder of every cached projection: `<cache>/preview-projection`.
pub fn cache_folder(cache_dir: &Path) -> PathBuf {
    cache_dir.join("preview-projection")
}

/// Where a model's fitted projection is cached: `<cache>/preview-projection/<key>.json`.
pub fn cache_path(cache_dir: &Path, key: &str) -> PathBuf {
    let safe: String = key.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    cache_folder(cache_dir).join(format!("{safe}.json"))
}

/// A key that changes when the weights file changes: name + size + modification time.
pub fn cache_key(name: &str, weights: &Path) -> String {
    let meta = std::fs::metadata(weights).ok();
    let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut h: u64 = 0xcbf29ce484222325;
    for b in weights.to_string_lossy().bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{name}-{size}-{mtime}-{h:016x}-v{FIT_VERSION}")
}

pub fn load_cached(path: &Path, channels: usize) -> Option<Projection> {
    let text = std::fs::read_to_string(path).ok()?;
    let p: Projection = serde_json::from_str(&text).ok()?;
    (p.channels == channels && p.weights.len() == 3 * channels && p.version == FIT_VERSION).then_some(p)
}

pub fn store_cached(path: &Path, p: &Projection) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(p).map_err(std::io::Error::other)?;
    // A cache entry: replacing it is what it is for; atomic so a reader never sees half of it.
    crate::imaging::write_atomic(path, text.as_bytes(), crate::imaging::Existing::Replace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_linear_map() {
        let (c, h, w) = (4, 6, 5);
        let truth_w = [0.5f32, -0.2, 0.1, 0.0, 0.3, 0.3, -0.1, 0.2, -0.4, 0.0, 0.25, 0.1];
        let truth_b = [0.1f32, -0.05, 0.2];
        let mut fitter = Fitter::new(c);
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        for _ in 0..3 {
            let latent: Vec<f32> = (0..c * h * w).map(|_| rnd()).collect();
            let mut target = vec![0.0f32; 3 * h * w];
            for p in 0..h * w {
                for k in 0..3 {
                    target[k * h * w + p] =
                        truth_b[k] + (0..c).map(|ch| truth_w[k * c + ch] * latent[ch * h * w + p]).sum::<f32>();
                }
            }
            fitter.add(&latent, &target, h, w);
        }
        let p = fitter.solve(0.0, String::new()).unwrap();
        for (a, b) in p.weights.iter().zip(truth_w) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        for (a, b) in p.bias.iter().zip(truth_b) {
            assert!((a - b).abs() < 1e-4);
        }
        assert!(p.rmse < 1e-3);
    }
}
