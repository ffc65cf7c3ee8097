//! The task executor shared by the `loop` worker, the pool and the spool runner: a
//! small tokio runtime where async tasks wait without holding a thread, and blocking
//! tasks run on its bounded blocking pool.
//!
//! # Hand-off
//! Tasks spawned from other threads (a request handler submitting to `pool`, the
//! spool's runner) are not handed to tokio one by one: waking the runtime's thread
//! costs more than most tasks' own work. They go into a batch that a pump on the
//! runtime collects once per millisecond tick while tasks keep coming; only a pump
//! that went to sleep after [`IDLE_TICKS`] empty ticks is woken, by the first task
//! after. A task therefore starts at most about a tick after it was handed over.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::counters::Counters;
use super::error::TaskError;
use super::registry::{self, Registry, TaskKind};
use super::task::TaskPayload;

pub struct Executor {
    rt: tokio::runtime::Runtime,
    registry: Registry,
    counters: Arc<Counters>,
    handoff: Arc<Handoff>,
}

/// How often the pump collects handed-over tasks while they keep coming.
const TICK: Duration = Duration::from_millis(1);

/// Empty ticks before the pump sleeps until woken.
const IDLE_TICKS: u32 = 8;

type Job = Box<dyn FnOnce() + Send>;

/// Tasks handed over from other threads, waiting for the pump.
#[derive(Default)]
struct Handoff {
    batch: Mutex<Batch>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    /// The pump sleeps: the next task must wake it.
    asleep: bool,
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, job: Job) {
        let mut b = self.lock();
        b.jobs.push(job);
        let wake = std::mem::take(&mut b.asleep);
        drop(b);
        if wake {
            // Stores a permit if the pump has not started waiting yet.
            self.wake.notify_one();
        }
    }

    /// Runs on the runtime: starts handed-over tasks once per tick while they come.
    async fn pump(self: Arc<Self>) {
        let mut idle = 0u32;
        let mut spare = Vec::new();
        loop {
            let sleep = {
                let mut b = self.lock();
                std::mem::swap(&mut b.jobs, &mut spare);
                if spare.is_empty() {
                    idle += 1;
                    b.asleep = idle >= IDLE_TICKS;
                } else {
                    idle = 0;
                }
                b.asleep
            };
            for job in spare.drain(..) {
                job();
            }
            if sleep {
                self.wake.notified().await;
                idle = 0;
            } else {
                tokio::time::sleep(TICK).await;
            }
        }
    }
}

impl Executor {
    /// `workers` bounds the threads running blocking tasks at once.
    pub fn new(
        name: &str,
        workers: usize,
        registry: Registry,
        counters: Arc<Counters>,
    ) -> io::Result<Executor> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(workers.max(1))
            .thread_name(name)
            .on_thread_start(crate::rt::tokio_timers_here)
            .enable_all()
            .build()?;
        let handoff = Arc::new(Handoff::default());
        rt.spawn(handoff.clone().pump());
        Ok(Executor {
            rt,
            registry,
            counters,
            handoff,
        })
    }

    /// Stops the runtime: tasks waiting (a delay, a timer) are dropped without running;
    /// blocking tasks still running get up to `timeout` to end, then are left behind.
    pub fn shutdown(self, timeout: Duration) {
        self.rt.shutdown_timeout(timeout);
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.handle()
    }

    /// Runs `p` after `delay`, then calls `done` with the outcome (on a runtime thread).
    /// The task starts at the pump's next tick (see the module docs).
    pub fn spawn<D>(&self, p: TaskPayload, delay: Duration, done: D)
    where
        D: FnOnce(TaskPayload, Result<(), TaskError>) + Send + 'static,
    {
        let registry = self.registry.clone();
        let counters = self.counters.clone();
        let task = async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Counters::inc(&counters.running);
            let r = run_one(&registry, &p).await;
            counters.finished(r.is_ok());
            done(p, r);
        };
        self.handoff.push(Box::new(move || {
            tokio::spawn(task);
        }));
    }
}

/// Runs one task: async ones in this task (a panic is caught and becomes the task's
/// error), blocking ones on the blocking pool.
pub async fn run_one(registry: &Registry, p: &TaskPayload) -> Result<(), TaskError> {
    use futures_util::FutureExt;
    match registry.get(&p.name) {
        Some(TaskKind::Async(f)) => {
            match std::panic::AssertUnwindSafe(f(p.clone()))
                .catch_unwind()
                .await
            {
                Ok(r) => r,
                Err(panic) => Err(panicked(panic.as_ref())),
            }
        }
        Some(TaskKind::Blocking(_)) => {
            let registry = registry.clone();
            let p = p.clone();
            match tokio::task::spawn_blocking(move || run_guarded(&registry, &p)).await {
                Ok(r) => r,
                Err(e) => Err(TaskError::new(format!("task failed to run: {e}"))),
            }
        }
        None => Err(registry::unknown(&p.name)),
    }
}

/// Runs a blocking task function catching panics, so a buggy task is a failure, not a
/// dead worker thread.
pub fn run_guarded(registry: &Registry, payload: &TaskPayload) -> Result<(), TaskError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        registry.run_blocking(payload)
    })) {
        Ok(r) => r,
        Err(p) => Err(panicked(p.as_ref())),
    }
}

/// The error of a task that panicked, with the panic's message.
fn panicked(panic: &(dyn std::any::Any + Send)) -> TaskError {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into());
    TaskError::new(format!("task panicked: {msg}"))
}
