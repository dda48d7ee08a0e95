//! The engine: backend selection and (for the app) the worker thread that owns the models.

pub mod backend;
pub mod catalog;
pub mod downloads;
pub mod memory;
pub mod restart;
pub mod worker;

pub use backend::{run_on, BackendChoice, BackendError, BackendInfo, BackendTask};
