//! SANA text-to-image (NVlabs / Efficient-Large-Model): the linear-attention diffusion
//! transformer that denoises in the DC-AE f32c32-sana latent space, and the Gemma-2 text encoder
//! with the prompt assembly of diffusers' `SanaPipeline`.
//!
//! A family of its own beside the DC-AE / UViT one: it shares the building blocks of
//! [`super::layers`] and the autoencoder of [`super::dcae`], nothing else.

pub mod pipeline;
pub mod prompt;
pub mod registry;
pub mod text_encoder;
pub mod transformer;
