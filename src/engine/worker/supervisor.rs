//! The supervisor: runs engines on a backend, one after another, until the app closes or the
//! worker retires it. It keeps the contract's hard half: a job that panics still ends (with
//! [`JobEnd::Crashed`]), and jobs it can no longer run end with [`JobEnd::Failed`].
//!
//! After a panic the backend is set up again and the model that was loaded is reloaded (as a
//! job of its own, announced with [`Event::Reloading`]); the jobs still queued then run on it.
//! Where to restart is [`crate::engine::restart`]'s decision: a GPU backend that panics before
//! any of its jobs succeeded, or with the same failure twice, is left for the CPU
//! ([`Event::BackendFallback`] says why); a success resets the count. A backend that cannot
//! start at all is left for the CPU the same way.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn::tensor::backend::Backend;

use super::engine::Engine;
use super::faults::Faults;
use super::protocol::*;
use super::{Sink, WorkerConfig};
use crate::engine::backend::{run_on, BackendChoice, BackendInfo, BackendTask};
use crate::engine::restart::{Decision, RestartPolicy};

/// What the supervisor shares with the worker handle.
pub(super) struct Shared {
    pub sink: Sink,
    /// Set to retire this engine ([`super::Worker::restart`]).
    pub retire: Arc<AtomicBool>,
    /// Ids for the jobs the supervisor queues itself (reloads), from the worker's counter.
    pub ids: Arc<AtomicU64>,
    pub faults: Arc<Faults>,
}

enum Exit {
    /// The job channel closed: the app is gone.
    Disconnected,
    /// The worker retired this engine (a backend switch): the jobs not run yet go to the next.
    Retired,
    /// A job panicked; start over. `on_cpu`: the engine that panicked ran on the CPU.
    Panicked { reason: String, on_cpu: bool },
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs engines on `config`'s backend until the job channel closes or the worker retires this
/// one; returns the jobs not run yet (`queue`, then what is still in the channel) when retired.
pub(super) fn supervise(config: WorkerConfig, jobs: Receiver<Job>, shared: Shared, mut queue: VecDeque<Job>) -> Vec<Job> {
    let Shared { sink, retire, ids, faults } = shared;
    let mut choice = config.backend;
    // The generator to reload after a restart.
    let loaded: Arc<Mutex<Option<GeneratorSource>>> = Arc::new(Mutex::new(None));
    let mut policy = RestartPolicy::new(choice == BackendChoice::Cpu);
    let reload = |sink: &Sink| -> Option<Job> {
        let source = loaded.lock().ok().and_then(|g| g.clone())?;
        let id = ids.fetch_add(1, Ordering::SeqCst) + 1;
        let cancel = super::cancel_token();
        sink.send(Event::Reloading { job: id, source: source.clone(), cancel: cancel.clone() });
        Some(Job::LoadGenerator { id, source, cancel })
    };
    let leftovers = |queue: &mut VecDeque<Job>| -> Vec<Job> {
        let mut left: Vec<Job> = queue.drain(..).chain(jobs.try_iter()).collect();
        // The handed-over jobs were queued for the model this engine had loaded: it goes first
        // (the next engine skips a load of the model it already has).
        if !left.is_empty() && !matches!(left.first(), Some(Job::LoadGenerator { .. })) {
            if let Some(job) = reload(&sink) {
                left.insert(0, job);
            }
        }
        left
    };
    // Ends every job still waiting: nothing will run them.
    let give_up = |queue: &mut VecDeque<Job>, why: &str| {
        for job in queue.drain(..).chain(jobs.try_iter()) {
            sink.send(Event::Ended { job: job.id(), end: JobEnd::Failed(JobError::other(format!("not run: {why}"))) });
        }
    };
    loop {
        let succeeded = Arc::new(AtomicBool::new(false));
        let task = EngineTask {
            jobs: &jobs,
            sink: sink.clone(),
            config: &config,
            loaded: loaded.clone(),
            queue: &mut queue,
            retire: &retire,
            succeeded: succeeded.clone(),
            faults: faults.clone(),
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| run_on(choice, task)));
        if succeeded.load(Ordering::Relaxed) {
            policy.succeeded();
        }
        if retire.load(Ordering::SeqCst) {
            return leftovers(&mut queue);
        }
        match outcome {
            Ok(Ok(Exit::Disconnected)) => return Vec::new(),
            Ok(Ok(Exit::Retired)) => return leftovers(&mut queue),
            Ok(Ok(Exit::Panicked { reason, on_cpu })) => {
                // `auto` may have resolved to the CPU: the policy follows what really ran.
                if on_cpu && choice != BackendChoice::Cpu {
                    choice = BackendChoice::Cpu;
                    policy.moved_to_cpu();
                }
                match policy.panicked(&reason) {
                    Decision::Restart => sink.send(Event::Restarted { reason }),
                    Decision::FallBackToCpu(why) => {
                        sink.send(Event::BackendFallback { requested: choice, reason: why });
                        choice = BackendChoice::Cpu;
                        policy.moved_to_cpu();
                    }
                    Decision::GiveUp(why) => {
                        sink.send(Event::Error { message: why.clone() });
                        give_up(&mut queue, &why);
                        return Vec::new();
                    }
                }
                // The model that was loaded comes back first, then the jobs still waiting.
                if let Some(job) = reload(&sink) {
                    queue.push_front(job);
                }
            }
            Ok(Err(e)) => {
                if choice == BackendChoice::Cpu {
                    let why = format!("no backend could start: {e}");
                    sink.send(Event::Error { message: why.clone() });
                    give_up(&mut queue, &why);
                    return Vec::new();
                }
                sink.send(Event::BackendFallback { requested: choice, reason: e.to_string() });
                choice = BackendChoice::Cpu;
                policy.moved_to_cpu();
            }
            Err(p) => {
                // A panic outside any job: while setting up the backend.
                let reason = panic_message(p.as_ref());
                if choice == BackendChoice::Cpu {
                    let why = format!("the CPU backend failed to start: {reason}");
                    sink.send(Event::Error { message: why.clone() });
                    give_up(&mut queue, &why);
                    return Vec::new();
                }
                sink.send(Event::BackendFallback { requested: choice, reason: format!("it crashed while starting: {reason}") });
                choice = BackendChoice::Cpu;
                policy.moved_to_cpu();
            }
        }
    }
}

struct EngineTask<'a> {
    jobs: &'a Receiver<Job>,
    sink: Sink,
    config: &'a WorkerConfig,
    loaded: Arc<Mutex<Option<GeneratorSource>>>,
    /// Jobs to run before the channel's: a reload after a restart, jobs handed over.
    queue: &'a mut VecDeque<Job>,
    retire: &'a AtomicBool,
    /// Set once a job that uses the device finishes without a panic ([`RestartPolicy`]).
    succeeded: Arc<AtomicBool>,
    faults: Arc<Faults>,
}

/// How long an idle engine waits for a job before it reads the device memory again. A retire
/// does not wait for it: [`super::Worker::restart`] drops this engine's job sender, which wakes
/// the wait at once.
const IDLE_POLL: Duration = Duration::from_secs(1);

impl BackendTask for EngineTask<'_> {
    type Output = Exit;

    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Exit {
        let backend_kind = info.kind;
        self.sink.send(Event::BackendReady(info));
        let mut engine = Engine::<B>::new(device, backend_kind, self.sink.clone(), self.config.clone(), self.loaded.clone(), self.faults.clone());
        let mut last_memory: Option<(u64, u64)> = None;
        loop {
            if self.retire.load(Ordering::SeqCst) {
                return Exit::Retired;
            }
            // Memory is read between jobs (the allocator is idle then) and sent when it changed.
            if let Some(m) = crate::engine::backend::gpu_memory::<B>(&engine.device) {
                if last_memory != Some(m) {
                    last_memory = Some(m);
                    self.sink.send(Event::DeviceMemory { in_use: m.0, reserved: m.1 });
                }
            }
            let job = match self.queue.pop_front() {
                Some(j) => j,
                None => match self.jobs.recv_timeout(IDLE_POLL) {
                    // Retired while it waited: the job is the next engine's.
                    Ok(j) if self.retire.load(Ordering::SeqCst) => {
                        self.queue.push_front(j);
                        return Exit::Retired;
                    }
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return Exit::Disconnected,
                },
            };
            let (id, doing, uses_device) = (job.id(), job.doing(), job.uses_device());
            match catch_unwind(AssertUnwindSafe(|| engine.handle(job))) {
                Ok(end) => {
                    if uses_device && !matches!(end, JobEnd::Crashed { .. }) {
                        self.succeeded.store(true, Ordering::Relaxed);
                    }
                    self.sink.send(Event::Ended { job: id, end });
                }
                Err(p) => {
                    let reason = panic_message(p.as_ref());
                    self.sink.send(Event::Status(String::new()));
                    self.sink.send(Event::Ended {
                        job: id,
                        end: JobEnd::Crashed {
                            reason: format!("internal error while {doing}: {reason}. The engine is restarting; your images and history are kept."),
                        },
                    });
                    return Exit::Panicked { reason: format!("{doing}: {reason}"), on_cpu: backend_kind == "cpu" };
                }
            }
        }
    }
}
