//! (to be written)
pub mod generate;
