//! (to be written)
pub mod hub;
