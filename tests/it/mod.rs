//! Integration test modules.
mod hub;
