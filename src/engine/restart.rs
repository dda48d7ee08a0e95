//! What the engine's supervisor does after a job panics: start the engine again on the same
//! backend, move to the CPU, or stop trying.
//!
//! Why a policy of its own: a GPU backend fails in ways the CPU does not (a driver that opens a
//! device but cannot run our kernels, a device lost mid-run, a tensor over the adapter's limit
//! that surfaces as cubecl's "server unhealthy"), and restarting on the same broken device
//! would fail every job the same way. So a GPU backend that panics before any job of its has
//! succeeded, or with the same failure twice in a row, is left for the CPU, with the reason;
//! a success resets the count. Kept apart from the thread plumbing (`worker::supervise`) so the
//! decisions are tested on their own and move unchanged into a new supervisor.

/// After this many panics with no success between them, the engine stops restarting itself.
pub const MAX_RESTARTS_WITHOUT_SUCCESS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start the engine again on the same backend (and reload what was loaded).
    Restart,
    /// Leave this GPU backend for the CPU; the text says why, for the user.
    FallBackToCpu(String),
    /// Stop: the text says why.
    GiveUp(String),
}

#[derive(Debug, Clone)]
pub struct RestartPolicy {
    on_cpu: bool,
    /// A job on the current backend finished without a panic.
    succeeded: bool,
    /// The last panic's reason, to see the same failure twice.
    last: Option<String>,
    /// Panics since the last success.
    panics: usize,
}

impl RestartPolicy {
    /// A policy for an engine starting on a GPU backend (`on_cpu` false) or the CPU.
    pub fn new(on_cpu: bool) -> Self {
        Self { on_cpu, succeeded: false, last: None, panics: 0 }
    }

    /// A job that uses the device finished without a panic.
    pub fn succeeded(&mut self) {
        self.succeeded = true;
        self.last = None;
        self.panics = 0;
    }

    /// The engine now runs on the CPU (after a fallback or a switch): counts start afresh.
    pub fn moved_to_cpu(&mut self) {
        *self = Self::new(true);
    }

    /// A job panicked with `reason`: what to do.
    pub fn panicked(&mut self, reason: &str) -> Decision {
        self.panics += 1;
        let again = self.last.as_deref() == Some(reason);
        self.last = Some(reason.to_string());
        if !self.on_cpu && !self.succeeded {
            return Decision::FallBackToCpu(format!("it failed before completing any job: {reason}"));
        }
        if !self.on_cpu && again {
            return Decision::FallBackToCpu(format!("it failed twice in a row the same way: {reason}"));
        }
        if self.panics > MAX_RESTARTS_WITHOUT_SUCCESS {
            return Decision::GiveUp(format!("the engine failed {} times in a row ({reason}); giving up until the app restarts", self.panics));
        }
        Decision::Restart
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_that_never_succeeded_goes_to_the_cpu() {
        let mut p = RestartPolicy::new(false);
        assert!(matches!(p.panicked("server unhealthy"), Decision::FallBackToCpu(r) if r.contains("before completing any job")));
    }

    #[test]
    fn the_same_failure_twice_goes_to_the_cpu_and_a_success_resets() {
        let mut p = RestartPolicy::new(false);
        p.succeeded();
        assert_eq!(p.panicked("device lost"), Decision::Restart);
        assert!(matches!(p.panicked("device lost"), Decision::FallBackToCpu(r) if r.contains("twice")));
        let mut p = RestartPolicy::new(false);
        p.succeeded();
        assert_eq!(p.panicked("device lost"), Decision::Restart);
        p.succeeded();
        assert_eq!(p.panicked("device lost"), Decision::Restart, "a success between two failures resets");
        assert_eq!(p.panicked("other"), Decision::Restart);
    }

    #[test]
    fn the_cpu_restarts_until_the_limit_then_gives_up() {
        let mut p = RestartPolicy::new(true);
        for i in 0..MAX_RESTARTS_WITHOUT_SUCCESS {
            assert_eq!(p.panicked(&format!("bug {}", i % 2)), Decision::Restart, "panic {i}");
        }
        assert!(matches!(p.panicked("bug"), Decision::GiveUp(_)));
        // After a success the budget is whole again.
        p.succeeded();
        assert_eq!(p.panicked("bug"), Decision::Restart);
        p.moved_to_cpu();
        assert_eq!(p.panicked("bug"), Decision::Restart);
    }
}
