//! Model definitions: configs, building blocks and forward passes. Nothing here knows about the
//! UI, files or threads; weights arrive through [`crate::weights::WeightSource`].

pub mod act;
pub mod config;
pub mod cpu_kernels;
pub mod dcae;
pub mod gpu_kernels;
pub mod diffusion;
pub mod dit;
pub mod host;
pub mod layers;
pub mod limits;
pub mod load;
pub mod placed;
pub mod precision;
pub mod registry;
pub mod sana;
pub mod tiling;
pub mod uvit;

pub use config::DcaeConfig;
pub use dcae::Dcae;
