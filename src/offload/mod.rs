//! The offload engine: one API for handlers to hand slow work off the request path
//! ([`Offload::submit`]), six strategies behind it (`inline`, `loop`, `thread`, `pool`,
//! `spool`, `redis`), a registry of named tasks, counters, and graceful draining.
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
//! [`Offload`] built in a pre-fork master is safe to use in the workers. Call
//! [`Offload::start_in_master`] before forking (for `loop` it forks the offload host
//! process) and [`Offload::after_fork_in_worker`] in each worker; see docs/OFFLOAD.md.
//!
//! # Layout
//! - this file: the engine API ([`Offload`]), which builds one strategy's engine and
//!   forwards to it, and the process-wide engine ([`set_global`], [`global`]).
//! - leaves shared by everything below: `task` ([`Task`], [`TaskPayload`], the limits,
//!   [`DrainReport`]), `error` ([`SubmitError`], [`OffloadError`], [`TaskError`],
//!   [`SpoolError`]), `engine` (the trait every strategy implements), `config`,
//!   `counters`, `registry`.
//! - shared machinery: `exec` (the task executor and `run_guarded`), `delayq` (delayed
//!   tasks), `slots` (bounded counts), `host` (the `loop` host process), `intake` (the
//!   durable strategies' acknowledged submission: bounded queue, batches, the wait).
//! - `strategy/`: one file per strategy: `inline`, `loop_strategy` (`loop`), `thread`,
//!   `pool`; `redis/` (Redis Streams: submitter, consumer, inspection).
//! - [`spool`]: the durable strategy (SQLite store, journal, recovery, writer, runner).
//! - `python` (feature `python`): the engine as the Python module sees it.
//! - `builtin:slowlog` lives with the other built-in apps in [`crate::app::slowlog`].
//!
//! Imports go one way: this file uses the strategies and the spool, they use the
//! leaves and the machinery, and nothing imports this file except the modules that
//! sit on top of the API (`python`, `compare`). `tests/it/layout.rs` checks that no two
//! files import each other.

mod config;
mod counters;
mod delayq;
mod engine;
mod error;
mod exec;
mod host;
mod intake;
#[cfg(feature = "python")]
pub mod python;
mod registry;
mod slots;
pub mod spool;
mod strategy;
mod task;

/// `builtin:slowlog`, the app the offload comparison serves and whose records it counts.
pub use config::{OffloadArgs, OffloadConfig, RedisArgs, RedisConfig, Strategy};
pub use counters::{CounterSnapshot, Counters};
pub use error::{OffloadError, RedisError, SpoolError, SubmitError, TaskError};
pub use registry::{AsyncTaskFn, Registry, TaskFn};
pub use spool::{DeadTask, Spool, SpoolStats};
pub use strategy::redis::{
    redact_url, Admin as RedisAdmin, DeadEntry as RedisDeadEntry, QueueStats,
};
pub use task::{DrainReport, Task, TaskId, TaskPayload, MAX_DELAY, MAX_NAME, MAX_PAYLOAD};

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::app::BoxFuture;
use engine::Engine;
use strategy::redis::RedisEngine;
use strategy::thread::ThreadEngine;
use strategy::{inline::InlineEngine, loop_strategy::LoopEngine, pool::PoolEngine};

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
            Strategy::Inline => Box::new(InlineEngine::new(
                &config,
                registry.clone(),
                counters.clone(),
            )),
            Strategy::Thread => Box::new(ThreadEngine::new(
                &config,
                registry.clone(),
                counters.clone(),
            )),
            Strategy::Pool => {
                Box::new(PoolEngine::new(&config, registry.clone(), counters.clone()))
            }
            Strategy::Loop => {
                Box::new(LoopEngine::new(&config, registry.clone(), counters.clone()))
            }
            Strategy::Spool => Box::new(spool::SpoolEngine::new(
                &config,
                registry.clone(),
                counters.clone(),
            )?),
            Strategy::Redis => Box::new(RedisEngine::new(
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
                std::process::id()
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
