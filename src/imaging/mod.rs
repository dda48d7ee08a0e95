//! Image I/O, preprocessing, quality metrics and PNG metadata for DC-AE Studio.
//!
//! Everything here works on plain `image::RgbImage` values and `Vec<f32>` buffers so that model,
//! CLI and UI code can use it without agreeing on a tensor library.
//!
//! The numerical conventions follow the DC-AE authors' evaluation code (MIT HAN Lab's
//! efficientvit), so that numbers produced here can be compared with the paper's:
//!
//! * loading drops alpha, like PIL's `Image.convert("RGB")` ([`load_rgb`]);
//! * resizing and cropping is the ADM / `DMCrop` centre crop with PIL's BOX and BICUBIC filters,
//!   reproduced bit for bit ([`prepare`], [`dm_crop`]);
//! * pixels map to `[-1, 1]` like torchvision's `ToTensor` + `Normalize(0.5, 0.5)` and back like
//!   `torchvision.utils.save_image` ([`to_nchw`], [`to_rgb8`]);
//! * PSNR and SSIM are computed on 8-bit images with peak 255, SSIM like torchmetrics'
//!   `StructuralSimilarityIndexMeasure(data_range=(0, 255))` ([`psnr`], [`ssim`]).

mod atomic;
mod compose;
mod error;
mod image_params;
mod load;
mod metrics;
mod params;
mod png_text;
mod prompt_params;
mod preprocess;
mod resample;
mod tensor;

pub use atomic::{write_atomic, Existing};
pub use compose::{diff_heatmap, diff_heatmap_with_gain, grid, side_by_side};
pub use error::{ImagingError, Result};
pub use image_params::ImageParams;
pub use load::{load_rgb, load_rgb_from_bytes, ImageLimits};
pub use metrics::{psnr, ssim, ssim_with, SsimBorder};
pub use params::{GenerationParams, Img2Img, PARAMETERS_KEY};
pub use png_text::{
    encode_png_with_text, read_png_text, read_png_text_from_bytes, save_png_with_text,
    save_png_with_text_new,
};
pub use prompt_params::PromptParams;
pub use preprocess::{cover_crop, default_size, dm_crop, prepare};
pub use resample::{resize, resize_window, ResampleFilter};
pub use tensor::{from_nchw, to_nchw, to_rgb8};
