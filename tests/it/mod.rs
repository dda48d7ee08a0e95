//! Integration test modules.
mod ae;
mod common;
mod hub;
mod imaging;
mod labels;
mod sampler;
mod ui;
mod uvit;
