//! Work the UI hands to a helper thread (the model scan, reading the gallery, decoding a dropped
//! file, file dialogs, saving), as a promise the UI polls each frame.
//!
//! `poll_promise::Promise::spawn_thread` alone is not enough: when the closure panics its sender
//! is dropped and the next `ready()` panics *on the UI thread*, so one bad gallery file would
//! close the app at every start; and it panics when the thread cannot be created. Here both
//! become an `Err` the caller shows as a notice.

use std::panic::AssertUnwindSafe;

use poll_promise::Promise;

/// Runs `f` on a new thread named `name`; the promise holds its value, or why there is none
/// (the panic's message, or the thread that could not start).
pub fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Promise<Result<T, String>> {
    spawn_fallible(name, move || Ok(f()))
}

/// [`spawn`] for work that can fail by itself: its error and a panic arrive alike.
pub fn spawn_fallible<T: Send + 'static>(name: &str, f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Promise<Result<T, String>> {
    let (sender, promise) = Promise::new();
    // The sender travels with the closure; if the thread never starts it comes back in the
    // error, so the promise is still answered.
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(sender)));
    let inner = slot.clone();
    let what = name.to_string();
    let spawned = std::thread::Builder::new().name(name.to_string()).spawn(move || {
        let result = match std::panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(p) => Err(format!("the {what} helper failed: {}", crate::engine::worker::panic_message(&*p))),
        };
        if let Some(s) = inner.lock().ok().and_then(|mut s| s.take()) {
            s.send(result);
        }
    });
    if let Err(e) = spawned {
        if let Some(s) = slot.lock().ok().and_then(|mut s| s.take()) {
            s.send(Err(format!("could not start the {name} helper thread: {e}")));
        }
    }
    promise
}
