//! `spool`: durable tasks in `--spool-dir`. A submission is on disk (fsynced) before
//! `submit` returns; one writer thread per process batches concurrent submissions into
//! one sync (group commit). Tasks due soon go to the process's journal and run in that
//! process from memory; the rest go to an embedded SQLite database: long delays,
//! retries, the dead-letter area (which the `forklift spool` command lists and
//! retries), and the journals of processes that died, imported by any runner. A runner
//! claims due rows under a lease naming its process, runs them, and deletes them when
//! done; a task whose process died is run again (at least once). Failures are retried
//! with exponential backoff, then dead-lettered. See docs/OFFLOAD.md for the design.
//!
//! # Files
//! - this file: [`SpoolEngine`], the strategy: starts the writer and the runner in each
//!   process, hands them submissions, drains them on shutdown.
//! - `store`: the SQLite store ([`Spool`]): insert, claim, finish, reclaim, dead letters.
//! - `journal`: the journal's file format and the per-process `Journal`.
//! - `recovery`: importing journals into SQLite (a dead process's, or one's own on stop).
//! - `writer`: the writer thread (group commit to the journal or SQLite).
//! - `runner`: the runner thread (claim, execute, record outcomes).
//! - `owner`: owner tokens naming a process in leases and journal files.
//!
//! Dependencies go one way: this file → writer → runner → recovery → store → journal,
//! owner; none of them imports this file.

mod journal;
mod owner;
mod recovery;
mod runner;
mod store;
mod writer;

pub use crate::offload::error::SpoolError;
pub use owner::{owner_alive, owner_token};
pub use store::{checksum, Claimed, DeadTask, Finish, InsertClaim, Spool, SpoolStats, DB_FILE};

use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::app::BoxFuture;
use crate::offload::config::OffloadConfig;
use crate::offload::counters::Counters;
use crate::offload::engine::Engine;
use crate::offload::error::{OffloadError, SubmitError};
use crate::offload::exec::Executor;
use crate::offload::intake::Intake;
use crate::offload::registry::Registry;
use crate::offload::task::{DrainReport, Task, TaskId};
use crate::rt::fork::ForkLocal;
use recovery::{import_dead, report_import};
use runner::{Runner, RunnerFeed, RunnerMsg};
use store::now_ms;
use writer::{Submission, Writer, WriterReport};

/// Per-process state: started lazily in each process (a forked worker starts its own).
#[derive(Default)]
struct Local {
    writer: Option<WriterHandle>,
    runner: Option<RunnerHandle>,
    /// Runs this process's tasks: the journal's and those the runner claims.
    exec: Option<Arc<Executor>>,
}

struct WriterHandle {
    tx: crossbeam_channel::Sender<Submission>,
    /// Set before the channel closes: until when the writer waits for its journal's
    /// tasks before moving the unfinished ones into SQLite.
    stop: Arc<Mutex<Option<Instant>>>,
    join: std::thread::JoinHandle<WriterReport>,
}

struct RunnerHandle {
    tx: mpsc::Sender<RunnerMsg>,
    join: std::thread::JoinHandle<DrainReport>,
    /// What the writer needs to claim tasks for this runner as it inserts them.
    feed: RunnerFeed,
}

/// The `spool` strategy's engine: the per-process writer and runner, started lazily.
pub struct SpoolEngine {
    cfg: OffloadConfig,
    registry: Registry,
    counters: Arc<Counters>,
    local: ForkLocal<Mutex<Local>>,
    /// Submissions queued for the writer: the bound, the depth, refusing once stopping.
    intake: Intake,
}

impl SpoolEngine {
    pub fn new(
        cfg: &OffloadConfig,
        registry: Registry,
        counters: Arc<Counters>,
    ) -> Result<SpoolEngine, OffloadError> {
        // Open once here so a bad directory or a corrupt database fails at start-up.
        Spool::open(&cfg.spool_dir)?;
        Ok(SpoolEngine {
            cfg: cfg.clone(),
            registry,
            counters,
            local: ForkLocal::new(),
            intake: Intake::new(cfg.queue, || SubmitError::Spool(SpoolError::WriterGone)),
        })
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.local().lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> Result<crossbeam_channel::Sender<Submission>, SubmitError> {
        let mut g = self.local();
        if let Some(w) = &g.writer {
            return Ok(w.tx.clone());
        }
        let spool = Spool::open(&self.cfg.spool_dir)?;
        spool.no_autocheckpoint()?;
        let exec = match &g.exec {
            Some(e) => e.clone(),
            None => return Err(SubmitError::Spool(SpoolError::WriterGone)),
        };
        let (tx, rx) = crossbeam_channel::bounded::<Submission>(self.intake.capacity());
        let stop = Arc::new(Mutex::new(None));
        let writer = Writer::new(
            spool,
            owner_token(),
            exec,
            g.runner.as_ref().map(|r| r.feed.clone()),
            &self.cfg,
            self.counters.clone(),
            self.intake.batcher(),
        );
        let stop_at = stop.clone();
        let join = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx, stop_at))
            .map_err(SubmitError::Unavailable)?;
        g.writer = Some(WriterHandle {
            tx: tx.clone(),
            stop,
            join,
        });
        Ok(tx)
    }

    /// Starts the runner in this process (idempotent). First imports the journals of
    /// processes that are gone, so their tasks are in the spool when this returns.
    fn start_runner(&self) -> Result<(), OffloadError> {
        let mut g = self.local();
        if g.runner.is_some() {
            return Ok(());
        }
        let owner = owner_token();
        report_import(import_dead(&self.cfg.spool_dir, &owner)?);
        let spool = Spool::open(&self.cfg.spool_dir)?;
        spool.relax_sync()?;
        let exec = Arc::new(Executor::new(
            "spool-exec",
            self.cfg.workers,
            self.registry.clone(),
            self.counters.clone(),
        )?);
        let (tx, rx) = mpsc::channel();
        let feed = RunnerFeed {
            tx: tx.clone(),
            owner,
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: self.cfg.queue.clamp(1, 10_000),
            lease: self.cfg.lease,
        };
        let runner = Runner::new(
            spool,
            exec.clone(),
            rx,
            self.cfg.clone(),
            self.counters.clone(),
            &feed,
        );
        let join = std::thread::Builder::new()
            .name("spool-runner".into())
            .spawn(move || runner.run())?;
        g.runner = Some(RunnerHandle { tx, join, feed });
        g.exec = Some(exec);
        Ok(())
    }
}

impl Engine for SpoolEngine {
    fn submit(&self, task: Task) -> Result<TaskId, SubmitError> {
        crate::rt::block_on(self.submit_async(task))
    }

    fn submit_async(&self, task: Task) -> BoxFuture<Result<TaskId, SubmitError>> {
        let queued = (|| {
            self.intake.ensure_open()?;
            self.start_runner().map_err(|e| match e {
                OffloadError::Spool(s) => SubmitError::Spool(s),
                other => SubmitError::Unavailable(std::io::Error::other(other.to_string())),
            })?;
            let writer = self.writer()?;
            let run_at = now_ms() + task.delay.as_millis() as i64;
            self.intake.offer(&writer, |ack| Submission {
                run_at,
                name: task.name,
                payload: task.payload,
                ack,
            })
        })();
        self.intake.wait(queued)
    }

    /// Every process that serves runs a runner (claims are atomic, so runners in
    /// several workers share the spool; a killed worker's tasks are reclaimed by the
    /// others). A pre-fork master runs none: `start_in_master` is a no-op.
    fn start(&self) -> Result<(), OffloadError> {
        self.start_runner()?;
        // The writer too, so the first request does not wait for its start.
        self.writer().map(|_| ()).map_err(|e| match e {
            SubmitError::Spool(s) => OffloadError::Spool(s),
            other => OffloadError::Io(std::io::Error::other(other.to_string())),
        })
    }

    fn shutdown(&self, timeout: Duration) -> DrainReport {
        self.intake.close();
        let mut report = DrainReport::default();
        let deadline = Instant::now() + timeout;
        let (writer, runner) = {
            let mut g = self.local();
            (g.writer.take(), g.runner.take())
        };
        // The writer commits what is queued, waits for its journal's tasks until the
        // deadline, and moves the unfinished ones into SQLite for the next start.
        let writer = writer.map(|w| {
            *w.stop.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
            drop(w.tx);
            w.join
        });
        if let Some(r) = &runner {
            let _ = r.tx.send(RunnerMsg::Stop(deadline));
        }
        if let Some(w) = writer {
            if let Ok(rep) = w.join() {
                report.drained += rep.drained;
            }
        }
        if let Some(r) = runner {
            if let Ok(rep) = r.join.join() {
                report.drained += rep.drained;
            }
        }
        // What did not finish is in SQLite now: tasks still waiting in the executor
        // (a delay) must not run here too.
        let exec = self.local().exec.take();
        if let Some(Ok(exec)) = exec.map(Arc::try_unwrap) {
            exec.shutdown(Duration::from_millis(100));
        }
        report.left_in_spool = Spool::open(&self.cfg.spool_dir)
            .and_then(|s| s.pending())
            .unwrap_or(0);
        report
    }

    fn queue_depth(&self) -> u64 {
        self.intake.depth()
    }
}
