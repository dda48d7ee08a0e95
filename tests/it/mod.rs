//! Integration test modules.
mod sampler;
mod uvit;
