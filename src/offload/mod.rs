//! The offload engine: one API for handlers to hand slow work off the request path
//! ([`Offload::submit`]), five strategies behind it (`inline`, `loop`, `thread`, `pool`,
//! `spool`), a registry of named tasks, counters, and graceful draining.
//!
//! # How a task runs
//! A handler submits a [`Task`] (a registered name, a payload of bytes, an optional
//! delay). The strategy decides where it runs; whoever runs it looks the name up in the
//! [`Registry`] of *its* process, so every process must register the same tasks (they
//! are the same binary: register at start-up, before forking).
//!
//! # Fork
//! Nothing here starts a thread or opens a connection until it is needed, and every
//! per-process resource is a [`crate::rt::fork::ForkLocal`] (a forked worker makes its
//! own, never touching the master's, whose locks a master thread may hold), so an
//! [`Offload`] built in a pre-fork master is safe to use in the workers. Call [`Offload::start_in_master`]
//! before forking (for `loop` it forks the offload host process) and
//! [`Offload::after_fork_in_worker`] in each worker; see docs/OFFLOAD.md.

mod config;
mod counters;
mod delayq;
mod exec;
mod host;
mod inline;
mod journal;
mod loopsock;
mod pool;
#[cfg(feature = "python")]
pub mod python;
mod registry;
mod slots;
mod slowlog;
pub mod spool;
mod thread;

pub use config::{OffloadArgs, OffloadConfig, Strategy};
pub use counters::{CounterSnapshot, Counters};
pub use registry::{AsyncTaskFn, Registry, TaskFn};
pub use slowlog::{count_records, done_file, SlowLog, SLOWLOG_TASK};
pub use spool::{DeadTask, Spool, SpoolError, SpoolStats};

use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::app::BoxFuture;

/// The largest payload a task may carry (the `loop` strategy sends a task as one
/// datagram-like message, and every strategy keeps the same limit so a handler behaves
/// the same under each).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The longest name a task may have.
pub const MAX_NAME: usize = 255;

/// The longest delay accepted (a day): a typo must not park a task for years.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// Identifies a submitted task: the spool's row id for `spool`, a per-process sequence
/// number otherwise.
pub type TaskId = u64;

/// A unit of slow work, as a handler submits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The registered task name.
    pub name: String,
    pub payload: Bytes,
    /// Run no earlier than this long after submission (seed 001's `call_later`).
    pub delay: Duration,
}

impl Task {
    pub fn new(name: impl Into<String>, payload: impl Into<Bytes>) -> Task {
        Task {
            name: name.into(),
            payload: payload.into(),
            delay: Duration::ZERO,
        }
    }

    /// A task whose payload is `value` as JSON.
    pub fn json<T: serde::Serialize>(
        name: impl Into<String>,
        value: &T,
    ) -> Result<Task, SubmitError> {
        let bytes = serde_json::to_vec(value).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        Ok(Task::new(name, bytes))
    }

    /// Runs the task no earlier than `delay` from now.
    pub fn after(mut self, delay: Duration) -> Task {
        self.delay = delay;
        self
    }

    fn validate(&self) -> Result<(), SubmitError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME {
            return Err(SubmitError::Invalid(format!(
                "task name must be 1..={MAX_NAME} bytes"
            )));
        }
        if self.payload.len() > MAX_PAYLOAD {
            return Err(SubmitError::TooLarge {
                len: self.payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        if self.delay > MAX_DELAY {
            return Err(SubmitError::Invalid(format!(
                "delay {:?} exceeds the maximum of {:?}",
                self.delay, MAX_DELAY
            )));
        }
        Ok(())
    }
}

/// What a task function receives.
#[derive(Debug, Clone)]
pub struct TaskPayload {
    pub id: TaskId,
    pub name: String,
    pub data: Bytes,
    /// 1 on the first run, 2 on the first retry, ...
    pub attempt: u32,
}

impl TaskPayload {
    /// A task's first run.
    pub fn first(id: TaskId, name: String, data: Bytes) -> TaskPayload {
        TaskPayload {
            id,
            name,
            data,
            attempt: 1,
        }
    }

    /// The payload parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, TaskError> {
        serde_json::from_slice(&self.data)
            .map_err(|e| TaskError::permanent(format!("bad JSON payload: {e}")))
    }
}

/// A task's failure. `permanent` failures are not retried (the spool dead-letters them
/// at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub message: String,
    pub permanent: bool,
}

impl TaskError {
    /// A failure worth retrying (a backend was down).
    pub fn new(message: impl Into<String>) -> TaskError {
        TaskError {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure that retrying cannot fix (a malformed payload).
    pub fn permanent(message: impl Into<String>) -> TaskError {
        TaskError {
            message: message.into(),
            permanent: true,
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

impl From<io::Error> for TaskError {
    fn from(e: io::Error) -> TaskError {
        TaskError::new(e.to_string())
    }
}

/// Why a submission was not accepted. [`SubmitError::Full`] is the ordinary "queue
/// full" rejection: the caller decides (answer 503, run inline, or try again).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("offload queue full ({capacity} tasks)")]
    Full { capacity: usize },
    #[error("unknown task {0:?}: register it in every process before submitting")]
    UnknownTask(String),
    #[error("task payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("invalid task: {0}")]
    Invalid(String),
    #[error("offload engine is shutting down")]
    ShuttingDown,
    #[error("offload worker unavailable: {0}")]
    Unavailable(io::Error),
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
}

impl SubmitError {
    /// True for the bounded-queue rejection.
    pub fn is_full(&self) -> bool {
        matches!(self, SubmitError::Full { .. })
    }
}

/// Errors starting or configuring the engine.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error("invalid offload configuration: {0}")]
    Config(String),
    #[error("offload I/O: {0}")]
    Io(#[from] io::Error),
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
}

/// What graceful shutdown achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrainReport {
    /// Tasks that finished while draining.
    pub drained: u64,
    /// Non-durable tasks abandoned when the drain timeout ran out.
    pub dropped: u64,
    /// Durable tasks left in the spool, resumed on the next start.
    pub left_in_spool: u64,
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "offload drained {} task(s), dropped {}, {} left in the spool",
            self.drained, self.dropped, self.left_in_spool
        )
    }
}

/// One strategy's implementation.
trait Engine: Send + Sync {
    fn submit(&self, task: Task) -> Result<TaskId, SubmitError>;

    /// Like `submit`, for callers on an event loop: the future resolves when the task
    /// is accepted (for `spool`, once it is on disk).
    fn submit_async(&self, task: Task) -> BoxFuture<Result<TaskId, SubmitError>> {
        let r = self.submit(task);
        Box::pin(async move { r })
    }

    /// Starts this process's executors now rather than on first use.
    fn start(&self) -> Result<(), OffloadError> {
        Ok(())
    }

    fn start_in_master(&self) -> Result<(), OffloadError> {
        Ok(())
    }

    fn after_fork_in_worker(&self) {}

    fn maintain_in_master(&self) -> Result<bool, OffloadError> {
        Ok(false)
    }

    fn host_pid(&self) -> Option<u32> {
        None
    }

    fn executor_counters(&self) -> Option<CounterSnapshot> {
        None
    }

    fn shutdown(&self, timeout: Duration) -> DrainReport;

    fn queue_depth(&self) -> u64;
}

struct Inner {
    config: OffloadConfig,
    registry: Registry,
    counters: Arc<Counters>,
    engine: Box<dyn Engine>,
}

/// A handle on the offload engine of this process. Cheap to clone.
#[derive(Clone)]
pub struct Offload {
    inner: Arc<Inner>,
}

impl fmt::Debug for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offload")
            .field("strategy", &self.inner.config.strategy)
            .finish_non_exhaustive()
    }
}

impl Offload {
    /// Builds the engine for `config`, running tasks from `registry`. Starts nothing:
    /// threads, sockets and the spool are opened on first use (or by
    /// [`Offload::start_in_master`]).
    pub fn new(config: OffloadConfig, registry: Registry) -> Result<Offload, OffloadError> {
        let counters = Arc::new(Counters::default());
        let engine: Box<dyn Engine> = match config.strategy {
            Strategy::Inline => Box::new(inline::InlineEngine::new(
                &config,
                registry.clone(),
                counters.clone(),
            )),
            Strategy::Thread => Box::new(thread::ThreadEngine::new(
                &config,
                registry.clone(),
                counters.clone(),
            )),
            Strategy::Pool => Box::new(pool::PoolEngine::new(
                &config,
                registry.clone(),
                counters.clone(),
            )),
            Strategy::Loop => Box::new(loopsock::LoopEngine::new(
                &config,
                registry.clone(),
                counters.clone(),
            )),
            Strategy::Spool => Box::new(spool::SpoolEngine::new(
                &config,
                registry.clone(),
                counters.clone(),
            )?),
        };
        Ok(Offload {
            inner: Arc::new(Inner {
                config,
                registry,
                counters,
                engine,
            }),
        })
    }

    /// Hands `task` off. Returns at once with the task's id, or an error: `Full` when the
    /// bounded queue has no room. With `spool` it returns once the task is on disk
    /// (fsynced, shared with other submitters by group commit); with `inline` it returns
    /// after the task ran. Blocks; on an event loop use [`Offload::submit_async`].
    pub fn submit(&self, task: Task) -> Result<TaskId, SubmitError> {
        let r = self
            .check(&task)
            .and_then(|()| self.inner.engine.submit(task));
        self.count(&r);
        r
    }

    /// [`Offload::submit`] for callers that must not block: the future resolves when the
    /// task is accepted.
    pub fn submit_async(&self, task: Task) -> BoxFuture<Result<TaskId, SubmitError>> {
        if let Err(e) = self.check(&task) {
            self.count(&Err(SubmitError::Invalid(String::new())));
            return Box::pin(async move { Err(e) });
        }
        let fut = self.inner.engine.submit_async(task);
        let this = self.clone();
        Box::pin(async move {
            let r = fut.await;
            this.count(&r);
            r
        })
    }

    fn check(&self, task: &Task) -> Result<(), SubmitError> {
        task.validate()?;
        if !self.inner.registry.contains(&task.name) {
            return Err(SubmitError::UnknownTask(task.name.clone()));
        }
        Ok(())
    }

    fn count(&self, r: &Result<TaskId, SubmitError>) {
        match r {
            Ok(_) => Counters::inc(&self.inner.counters.submitted),
            Err(_) => Counters::inc(&self.inner.counters.rejected),
        }
    }

    /// In a process that serves on its own (no pre-fork master): starts the executors
    /// now (pool threads, the `loop` worker thread, the spool runner, which resumes
    /// tasks left pending by an earlier run). Otherwise they start on first submit.
    pub fn start(&self) -> Result<(), OffloadError> {
        self.inner.engine.start()
    }

    /// In a pre-fork master, before forking workers, while the master has no other
    /// threads: `loop` forks the offload host process here (the event-loop worker
    /// serving every process). Other strategies start nothing in the master (spool
    /// runners run in the workers). Idempotent.
    pub fn start_in_master(&self) -> Result<(), OffloadError> {
        self.inner.engine.start_in_master()
    }

    /// In each worker, right after fork: drops what was inherited from the master
    /// (connections, the host's control pipe). When the master started no host, this
    /// is [`Offload::start`] for the worker (it runs its own executors). Idempotent.
    pub fn after_fork_in_worker(&self) {
        self.inner.engine.after_fork_in_worker();
        if let Err(e) = self.inner.engine.start() {
            eprintln!(
                "forklift: offload engine did not start in worker {}: {e}",
                pid()
            );
        }
    }

    /// In the pre-fork master, from its supervision loop (every second, or on
    /// SIGCHLD): restarts the offload host if it died (`loop`; the workers reconnect on
    /// their next submit). Returns true when it restarted it. Tasks that were in the
    /// dead host's memory are lost; that is what `spool` is for.
    pub fn maintain_in_master(&self) -> Result<bool, OffloadError> {
        self.inner.engine.maintain_in_master()
    }

    /// The offload host's pid, in the master that started it.
    pub fn host_pid(&self) -> Option<u32> {
        self.inner.engine.host_pid()
    }

    /// Stops accepting, drains non-durable queues for at most `timeout`, and reports.
    /// In the master, for `loop`, this also drains and stops the host.
    pub fn shutdown(&self, timeout: Duration) -> DrainReport {
        self.inner.engine.shutdown(timeout)
    }

    /// A snapshot of this process's counters.
    pub fn counters(&self) -> CounterSnapshot {
        self.inner
            .counters
            .snapshot(self.inner.engine.queue_depth())
    }

    /// Counters of the process that runs this process's tasks, when that is another
    /// one: the `loop` worker (asked over its socket, waiting at most a second).
    /// `None` for the other strategies (see [`Offload::counters`]) or when the worker
    /// does not answer.
    pub fn executor_counters(&self) -> Option<CounterSnapshot> {
        self.inner.engine.executor_counters()
    }

    pub fn config(&self) -> &OffloadConfig {
        &self.inner.config
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }
}

static GLOBAL: OnceLock<Offload> = OnceLock::new();

/// Installs the process-wide engine (done once by `forklift serve`, before forking), so
/// that code without a handle (the Python module) can submit. Returns false if one was
/// already installed.
pub fn set_global(offload: Offload) -> bool {
    GLOBAL.set(offload).is_ok()
}

/// The process-wide engine, if installed.
pub fn global() -> Option<&'static Offload> {
    GLOBAL.get()
}

/// Runs a blocking task function catching panics, so a buggy task is a failure, not a
/// dead worker thread.
fn run_guarded(registry: &Registry, payload: &TaskPayload) -> Result<(), TaskError> {
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

/// Current pid (per-process resources compare against it to notice a fork).
fn pid() -> u32 {
    std::process::id()
}
