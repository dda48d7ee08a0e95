//! Integration test modules.
mod ae;
mod alloc_peak;
mod backend;
mod common;
#[cfg(feature = "gui")]
mod contract;
mod fuzz;
mod gpu_limits;
mod hub;
mod imaging;
mod labels;
mod sampler;
mod sana;
mod sana_text;
mod serve;
mod tiling;
#[cfg(feature = "gui")]
mod ui;
#[cfg(feature = "gui")]
mod ui_downloads;
#[cfg(all(feature = "gui", feature = "wgpu"))]
mod ui_render;
#[cfg(feature = "gui")]
mod ui_robust;
#[cfg(feature = "gui")]
mod ui_serve;
#[cfg(feature = "gui")]
mod ui_text;
mod uvit;
mod zoo;
