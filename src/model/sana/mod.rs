//! SANA text-to-image (NVlabs / Efficient-Large-Model): the linear-attention diffusion
//! transformer that denoises in the DC-AE f32c32-sana latent space, and the Gemma-2 text encoder
//! with the prompt assembly of diffusers' `SanaPipeline`.
//!
//! A family of its own beside the DC-AE / UViT one: it shares the building blocks of
//! [`super::layers`] and the autoencoder of [`super::dcae`], nothing else.
//!
//! The family's room: the networks ([`transformer`], [`text_encoder`]), the prompt assembly
//! ([`prompt`]), its flow samplers ([`flow`]: DPM-Solver++ on flow matching, SCM for Sprint),
//! the diffusers folder layout and its resolution ([`layout`]), the pipeline ([`pipeline`]),
//! the published models ([`registry`]) and the engine adapter ([`adapter`], the
//! [`GenerationModel`](crate::engine::worker::generation::GenerationModel) implementation).
//! Shared on purpose, and so kept outside: the CPU kernels (`model::cpu_kernels`: one GEMM core
//! and dispatch that every family's layers use; its `sana` / `gemma` files are the epilogues
//! these networks need), the memory-mapped bf16 table of `weights::host_table` (any checkpoint's
//! large table, Gemma's embedding today), and the CLI's `t2i` / `bench_sana` front ends.

pub mod adapter;
pub mod flow;
pub mod layout;
pub mod pipeline;
pub mod prompt;
pub mod registry;
pub mod text_encoder;
pub mod transformer;
