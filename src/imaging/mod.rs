//! TEMPORARY stand-in until the imaging branch lands.
use image::RgbImage;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct ImageLimits {
    pub max_file_bytes: u64,
    pub max_pixels: u64,
}
impl Default for ImageLimits {
    fn default() -> Self {
        Self { max_file_bytes: 1 << 28, max_pixels: 100_000_000 }
    }
}
pub fn load_rgb(path: &Path, _l: &ImageLimits) -> anyhow::Result<RgbImage> {
    Ok(image::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?.to_rgb8())
}
pub fn prepare(img: &RgbImage, _f: usize, _s: Option<u32>) -> anyhow::Result<RgbImage> {
    Ok(img.clone())
}
pub fn to_nchw(imgs: &[RgbImage]) -> anyhow::Result<(Vec<f32>, [usize; 4])> {
    let (w, h) = imgs[0].dimensions();
    let mut v = Vec::new();
    for im in imgs {
        for c in 0..3 {
            for p in im.pixels() {
                v.push(p[c] as f32 / 255.0 * 2.0 - 1.0);
            }
        }
    }
    Ok((v, [imgs.len(), 3, h as usize, w as usize]))
}
pub fn to_rgb8(chw: &[f32], h: usize, w: usize) -> RgbImage {
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        image::Rgb([0, 1, 2].map(|c| (127.5 * chw[c * h * w + i] + 128.0).clamp(0.0, 255.0) as u8))
    })
}
pub fn psnr(_a: &RgbImage, _b: &RgbImage) -> f64 {
    0.0
}
pub fn ssim(_a: &RgbImage, _b: &RgbImage) -> f64 {
    0.0
}
pub fn side_by_side(i: &[&RgbImage], _g: u32) -> RgbImage {
    i[0].clone()
}
