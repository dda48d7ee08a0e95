//! Integration test modules.
mod imaging;
mod labels;
