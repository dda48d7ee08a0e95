//! Integration test modules.
mod ae;
mod common;
mod hub;
mod sampler;
mod uvit;
