//! Cancelling a model load between two tensors.
//!
//! A load runs deep inside each family's constructors, which build the network from a
//! [`super::WeightSource`]; threading a cancel flag through every one of them would touch every
//! model file. Instead the engine runs a job inside [`scope`] with the job's flag, and the
//! checkpoint loader asks [`requested`] before it reads each tensor: once it is set, the rest of
//! the model is built from zero-sized views (no memory, no reading) and the load ends with
//! [`super::LoadError::Cancelled`], so a cancelled model is never handed out half-loaded.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

thread_local! {
    static FLAG: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Runs `f` with `flag` as this thread's load-cancel flag (restored afterwards, also when `f`
/// panics).
pub fn scope<T>(flag: Option<&Arc<AtomicBool>>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Arc<AtomicBool>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            FLAG.with(|s| *s.borrow_mut() = previous);
        }
    }
    let previous = FLAG.with(|s| std::mem::replace(&mut *s.borrow_mut(), flag.cloned()));
    let _restore = Restore(previous);
    f()
}

/// Whether the job this thread runs was cancelled.
pub fn requested() -> bool {
    FLAG.with(|s| s.borrow().as_ref().is_some_and(|f| f.load(Ordering::Relaxed)))
}
