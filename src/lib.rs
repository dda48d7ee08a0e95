//! DC-AE Studio engine: the DC-AE autoencoders and the class-conditional UViT of MIT HAN Lab's
//! Deep Compression Autoencoder work, ported to burn and generic over the backend.
//!
//! Data flows one way: the UI or CLI builds a job, the engine runs it on a backend, and progress,
//! previews and results come back. Model code knows nothing of the UI.

pub mod cli;
pub mod engine;
pub mod imaging;
pub mod labels;
pub mod model;
pub mod sampler;
/// The local HTTP API (`dcae serve`).
pub mod server;
/// The desktop app (the `gui` feature, on by default).
#[cfg(feature = "gui")]
pub mod ui;
pub mod weights;
