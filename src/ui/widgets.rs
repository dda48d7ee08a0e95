//! Small building blocks shared by the views: texture upload, image grids, a zoom-and-pan view
//! shared by several images, and formatting helpers.

use eframe::egui::{self, Color32, ColorImage, Pos2, Rect, Sense, TextureHandle, TextureId, TextureOptions, Vec2};
use image::RgbImage;

pub fn color_image(img: &RgbImage) -> ColorImage {
    ColorImage::from_rgb([img.width() as usize, img.height() as usize], img.as_raw())
}

/// A texture showing `img`, no larger on either side than the renderer allows (eframe's wgpu
/// device: 8192 on most GPUs). A camera photo or a panorama above that would be a wgpu
/// validation error, which aborts the app; the display copy is scaled down instead, and the
/// caller keeps the full picture for the job.
///
/// The scaled copy is area-averaged on a helper thread: filtering a 12000×9000 photo took 12.9 s
/// with `image`'s triangle filter and 1.2 s with our box filter (measured), a frozen window
/// either way. Until it arrives the texture holds a nearest-pixel copy of the same size, one
/// read per shown pixel, so the layout does not move when the sharper copy replaces it.
pub fn texture(ctx: &egui::Context, name: &str, img: &RgbImage) -> TextureHandle {
    // Nearest when magnified so single pixels of small images stay visible; linear would blur
    // away exactly the artefacts a reconstruction view is for.
    let options = TextureOptions { magnification: egui::TextureFilter::Nearest, ..TextureOptions::LINEAR };
    let max_side = ctx.input(|i| i.max_texture_side).max(1);
    let Some((w, h)) = display_size(img.width(), img.height(), max_side as u32) else {
        return ctx.load_texture(name, color_image(img), options);
    };
    let handle = ctx.load_texture(name, color_image(&nearest(img, w, h)), options);
    let (full, mut target, repaint) = (img.clone(), handle.clone(), ctx.clone());
    // Where the thread cannot start, the nearest copy stays: coarser, never wrong in size.
    let _ = std::thread::Builder::new().name("texture-downscale".into()).spawn(move || {
        let small = crate::imaging::resize(&full, w, h, crate::imaging::ResampleFilter::Box);
        target.set(color_image(&small), options);
        repaint.request_repaint();
    });
    handle
}

/// `img` shown at `w`×`h` by taking, for each shown pixel, the source pixel under its centre.
/// The same pixels as `image`'s `FilterType::Nearest`, which took 5.1 s for 12000×9000 →
/// 8192×6144 against 0.12 s here (measured): it samples through its generic filter path.
pub fn nearest(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    use rayon::prelude::*;
    let (sw, sh) = (img.width() as u64, img.height() as u64);
    if w == 0 || h == 0 || sw == 0 || sh == 0 {
        return RgbImage::new(w, h);
    }
    let (w, h) = (w as usize, h as usize);
    let mut out = vec![0u8; w * h * 3];
    let cols: Vec<usize> = (0..w as u64).map(|x| (((2 * x + 1) * sw / (2 * w as u64)).min(sw - 1) * 3) as usize).collect();
    let src = img.as_raw();
    out.par_chunks_mut(w * 3).enumerate().for_each(|(y, row)| {
        let sy = ((2 * y as u64 + 1) * sh / (2 * h as u64)).min(sh - 1) as usize;
        let line = &src[sy * sw as usize * 3..(sy + 1) * sw as usize * 3];
        for (px, &c) in row.chunks_exact_mut(3).zip(&cols) {
            px.copy_from_slice(&line[c..c + 3]);
        }
    });
    RgbImage::from_raw(w as u32, h as u32, out).unwrap_or_else(|| RgbImage::new(w as u32, h as u32))
}

/// The size to show a `w`×`h` picture at when a side exceeds `max_side` (aspect kept, each side
/// at least one pixel); `None` when it fits as it is.
pub fn display_size(w: u32, h: u32, max_side: u32) -> Option<(u32, u32)> {
    if w <= max_side && h <= max_side {
        return None;
    }
    let scale = f64::from(max_side) / f64::from(w.max(h));
    let side = |s: u32| ((f64::from(s) * scale).floor() as u32).clamp(1, max_side);
    Some((side(w), side(h)))
}

/// "1.2 GB", "340 MB", "12 KB".
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.0} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.0} KB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

/// "0.41 s", "12 ms", "1 min 5 s".
pub fn secs(s: f64) -> String {
    if s >= 60.0 {
        format!("{} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

/// The largest size with `aspect` (w/h) that fits `avail`.
pub fn fit(size: Vec2, avail: Vec2) -> Vec2 {
    if size.x <= 0.0 || size.y <= 0.0 {
        return Vec2::ZERO;
    }
    let s = (avail.x / size.x).min(avail.y / size.y);
    size * s.max(0.0)
}

/// The column count that shows `n` panes of aspect `aspect` (w/h) largest in `avail`, with
/// `gap` between panes and `caption` height above each; returns (columns, pane size).
pub fn best_layout(n: usize, aspect: f32, avail: Vec2, gap: f32, caption: f32) -> (usize, Vec2) {
    let n = n.max(1);
    let mut best = (1, Vec2::ZERO);
    for cols in 1..=n {
        let rows = n.div_ceil(cols);
        let cell = Vec2::new(
            (avail.x - gap * (cols as f32 - 1.0)) / cols as f32,
            (avail.y - (gap + caption) * rows as f32) / rows as f32,
        );
        let size = fit(Vec2::new(aspect, 1.0), cell);
        if size.x > best.1.x {
            best = (cols, size);
        }
    }
    (best.0, best.1.max(Vec2::splat(32.0)))
}

/// Lays `n` equally sized cells out in the available space as a near-square grid and calls
/// `cell(ui, i, rect)` for each; returns the clicked index, if any.
pub fn grid(ui: &mut egui::Ui, n: usize, aspect: f32, max_side: f32, mut cell: impl FnMut(&mut egui::Ui, usize, Rect)) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let cols = (n as f32).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let avail = ui.available_size();
    let gap = 6.0;
    let cw = ((avail.x - gap * (cols as f32 - 1.0)) / cols as f32).max(16.0);
    let ch = ((avail.y - gap * (rows as f32 - 1.0)) / rows as f32).max(16.0);
    let side = cw.min(ch * aspect).min(max_side);
    let cell_size = Vec2::new(side, side / aspect);
    let mut clicked = None;
    egui::Grid::new(ui.next_auto_id()).spacing([gap, gap]).show(ui, |ui| {
        for i in 0..n {
            let (rect, resp) = ui.allocate_exact_size(cell_size, Sense::click());
            cell(ui, i, rect);
            if resp.clicked() {
                clicked = Some(i);
            }
            if (i + 1) % cols == 0 {
                ui.end_row();
            }
        }
    });
    clicked
}

pub fn paint_texture(ui: &egui::Ui, rect: Rect, tex: TextureId) {
    ui.painter().image(tex, rect, Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)), Color32::WHITE);
}

/// Zoom and pan shared by every pane that shows the same picture (the original and its
/// reconstructions), so they stay in step: `center` is the shown point in UV, `zoom` 1 = fit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ZoomPan {
    pub zoom: f32,
    pub center: Vec2,
}

impl Default for ZoomPan {
    fn default() -> Self {
        Self { zoom: 1.0, center: Vec2::splat(0.5) }
    }
}

impl ZoomPan {
    /// The UV rectangle visible at this zoom.
    pub fn uv(&self) -> Rect {
        let half = 0.5 / self.zoom.max(1.0);
        let c = Vec2::new(self.center.x.clamp(half, 1.0 - half), self.center.y.clamp(half, 1.0 - half));
        Rect::from_min_max(Pos2::new(c.x - half, c.y - half), Pos2::new(c.x + half, c.y + half))
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Applies scroll-zoom (about the pointer) and drag-pan from `resp` on a pane of `rect`.
    pub fn interact(&mut self, ui: &egui::Ui, resp: &egui::Response, rect: Rect) {
        if resp.dragged() {
            let d = resp.drag_delta();
            let uv = self.uv();
            self.center -= Vec2::new(d.x / rect.width() * uv.width(), d.y / rect.height() * uv.height());
        }
        if resp.hovered() {
            let (scroll, zoom_delta) = ui.input(|i| (i.smooth_scroll_delta.y, i.zoom_delta()));
            let factor = zoom_delta * (scroll / 500.0).exp();
            if (factor - 1.0).abs() > 1e-4 {
                let uv = self.uv();
                // Keep the point under the pointer fixed.
                let pointer = ui.input(|i| i.pointer.hover_pos()).unwrap_or(rect.center());
                let t = (pointer - rect.min) / rect.size();
                let under = Vec2::new(uv.min.x + t.x * uv.width(), uv.min.y + t.y * uv.height());
                let new_zoom = (self.zoom * factor).clamp(1.0, 64.0);
                let half_new = 0.5 / new_zoom;
                self.center = under + (Vec2::splat(0.5) - t) * 2.0 * half_new;
                self.zoom = new_zoom;
            }
        }
        self.center = {
            let uv = self.uv();
            uv.center().to_vec2()
        };
        if resp.double_clicked() {
            self.reset();
        }
    }
}
