//! Integration test modules.
