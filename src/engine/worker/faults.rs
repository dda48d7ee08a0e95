//! Faults a test arms on a [`super::Worker`] to exercise the recovery paths: a panic at the
//! start of the next job (of one kind, or any), a failed preview-projection fit.
//!
//! Why not jobs: test hooks in the job protocol were reachable from every front end (the app's
//! debug menu sent one); here they are a handle on the worker that only code holding it (tests)
//! can arm, and the protocol carries only what users ask for. Disarmed, each check is one
//! atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Which job the armed panic hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicAt {
    AnyJob,
    Load,
    Generate,
    Reconstruct,
}

#[derive(Debug, Default)]
pub struct Faults {
    armed: AtomicBool,
    panic_at: Mutex<Option<PanicAt>>,
    fail_next_preview: AtomicBool,
}

impl Faults {
    /// The next job that `at` matches panics when it starts (once).
    pub fn panic_next(&self, at: PanicAt) {
        *self.panic_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// The next preview-projection fit fails (once).
    pub fn fail_next_preview(&self) {
        self.fail_next_preview.store(true, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Panics if a panic is armed for `job`. The engine calls it where the job's real work
    /// starts: for a load, after the model it replaces was freed (where a real load fails).
    pub(super) fn check_job(&self, job: &super::Job) {
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        let mut at = self.panic_at.lock().unwrap_or_else(|p| p.into_inner());
        let hit = match *at {
            Some(PanicAt::AnyJob) => true,
            Some(PanicAt::Load) => matches!(job, super::Job::LoadGenerator { .. }),
            Some(PanicAt::Generate) => matches!(job, super::Job::Generate(_)),
            Some(PanicAt::Reconstruct) => matches!(job, super::Job::Reconstruct(_)),
            None => false,
        };
        if hit {
            *at = None;
            drop(at);
            panic!("fault injected by a test while {}", job.doing());
        }
    }

    /// Whether the preview fit should fail now (and disarms it).
    pub(super) fn take_preview_failure(&self) -> bool {
        self.armed.load(Ordering::Relaxed) && self.fail_next_preview.swap(false, Ordering::SeqCst)
    }
}
