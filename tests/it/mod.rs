//! Integration test modules.
mod ui;
