//! The spool's runner thread: claims due tasks, runs them, records their outcomes.
//!
//! It claims due rows from SQLite, hands them to the executor, and records their
//! outcomes in batches. One step per job: [`Runner::maintain`] frees what dead
//! processes held, [`Runner::claim`] takes due tasks, [`Runner::receive`] handles what
//! the writer and the executor sent, [`Runner::flush`] records outcomes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::recovery::{import_dead, report_import};
use super::store::{now_ms, Claimed, Finish, Spool};
use crate::offload::config::OffloadConfig;
use crate::offload::counters::Counters;
use crate::offload::error::TaskError;
use crate::offload::exec::Executor;
use crate::offload::task::{DrainReport, TaskPayload};

/// How often an idle runner looks for tasks submitted by other processes.
const POLL: Duration = Duration::from_millis(20);

/// How often the runner frees tasks held by dead runners (and the writer adds its
/// journal's completed tasks to the spool's count).
pub const RECLAIM_EVERY: Duration = Duration::from_secs(2);

/// Most tasks a runner claims in one query.
const CLAIM_BATCH: usize = 256;

/// Outcomes are recorded in one transaction per this many...
const FINISH_BATCH: usize = 256;
/// ...or after this long, whichever comes first. A crash loses at most these records,
/// which means those tasks run again (at least once), never that one is lost.
pub const FINISH_EVERY: Duration = Duration::from_millis(20);

/// Messages to the runner thread.
pub enum RunnerMsg {
    /// The local writer committed tasks: look now instead of at the next poll.
    Submitted,
    /// The local writer committed these tasks already claimed for this runner.
    Claimed(Vec<TaskPayload>),
    Finished(TaskPayload, Result<(), TaskError>),
    Stop(Instant),
}

/// The runner as its process's writer sees it.
#[derive(Clone)]
pub struct RunnerFeed {
    pub tx: mpsc::Sender<RunnerMsg>,
    pub owner: String,
    /// Tasks handed to the runner and not finished yet.
    pub in_flight: Arc<AtomicUsize>,
    pub max_in_flight: usize,
    pub lease: Duration,
}

/// The runner thread's state: what it was given at start, and what it keeps between
/// two turns of its loop.
pub struct Runner {
    /// This thread's connection to the spool (relaxed sync: a lost completion means a
    /// second run, never a lost task).
    spool: Spool,
    /// Runs the claimed tasks; each reports back as [`RunnerMsg::Finished`].
    exec: Arc<Executor>,
    /// A sender to this runner's own channel, cloned into each task's completion.
    tx: mpsc::Sender<RunnerMsg>,
    /// Where the writer, the executor and `shutdown` reach this runner.
    rx: mpsc::Receiver<RunnerMsg>,
    /// The engine's configuration: the spool directory, the lease, retries.
    cfg: OffloadConfig,
    /// This process's counters (redelivered, retried, dead).
    counters: Arc<Counters>,
    /// This process's owner token: the lease name on the rows it claims.
    owner: String,
    /// Tasks running here: claimed by this runner or handed over by the writer.
    in_flight: Arc<AtomicUsize>,
    /// The most tasks running here at once (more stay in SQLite for other runners).
    max_in_flight: usize,
    /// When [`Runner::maintain`] last ran (`None`: not yet).
    last_reclaim: Option<Instant>,
    /// The drain deadline, once `shutdown` asked the runner to stop.
    stop: Option<Instant>,
    /// Outcomes not recorded yet.
    done: Vec<Finish>,
    /// When the oldest outcome in `done` was collected.
    done_since: Option<Instant>,
    /// Tasks that finished while draining.
    drained: u64,
}

impl Runner {
    /// A runner for `feed`'s process, reading `rx` (whose sender is `feed.tx`).
    pub fn new(
        spool: Spool,
        exec: Arc<Executor>,
        rx: mpsc::Receiver<RunnerMsg>,
        cfg: OffloadConfig,
        counters: Arc<Counters>,
        feed: &RunnerFeed,
    ) -> Runner {
        Runner {
            spool,
            exec,
            tx: feed.tx.clone(),
            rx,
            cfg,
            counters,
            owner: feed.owner.clone(),
            in_flight: feed.in_flight.clone(),
            max_in_flight: feed.max_in_flight,
            last_reclaim: None,
            stop: None,
            done: Vec::new(),
            done_since: None,
            drained: 0,
        }
    }

    /// The thread's loop: until stopped and idle (or past the drain deadline), claim
    /// due tasks, wait for something to happen, handle it, record outcomes.
    pub fn run(mut self) -> DrainReport {
        loop {
            self.maintain();
            let claimed_any = self.claim();
            self.receive(claimed_any);
            self.flush();
            if self.drained_out(claimed_any) {
                // Tasks still running keep their lease; the next runner's reclaim
                // (dead owner) resumes them.
                return DrainReport {
                    drained: self.drained,
                    dropped: 0,
                    left_in_spool: 0,
                };
            }
        }
    }

    /// Every [`RECLAIM_EVERY`] while not stopping: frees rows held by dead processes or
    /// expired leases, imports the journals of processes that died since, and
    /// checkpoints the WAL.
    fn maintain(&mut self) {
        if self.stop.is_some()
            || self
                .last_reclaim
                .is_some_and(|t| t.elapsed() < RECLAIM_EVERY)
        {
            return;
        }
        match self.spool.reclaim(&self.owner) {
            Ok(n) => Counters::add(&self.counters.redelivered, n),
            Err(e) => eprintln!("forklift: spool reclaim failed: {e}"),
        }
        // Journals of processes that died since: their tasks become rows.
        match import_dead(&self.cfg.spool_dir, &self.owner) {
            Ok(r) => {
                Counters::add(&self.counters.redelivered, r.tasks);
                report_import(r);
            }
            Err(e) => eprintln!("forklift: spool journal import failed: {e}"),
        }
        // The writers leave checkpoints to the runners (see no_autocheckpoint);
        // SQLite's automatic one runs on this connection's commits, and this
        // covers a spool that only receives delayed tasks.
        let _ = self.spool.checkpoint();
        self.last_reclaim = Some(Instant::now());
    }

    /// Claims due tasks while there is room and starts them; a corrupt row becomes a
    /// dead-letter outcome. Returns whether it claimed anything.
    fn claim(&mut self) -> bool {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        // While draining, due tasks are still taken until the deadline: a graceful
        // stop finishes what it can and leaves the rest for the next start.
        let claiming = self.stop.is_none_or(|d| Instant::now() < d);
        if !claiming || in_flight >= self.max_in_flight {
            return false;
        }
        let limit = (self.max_in_flight - in_flight).min(CLAIM_BATCH);
        let lease = now_ms() + self.cfg.lease.as_millis() as i64;
        let claimed = match self.spool.claim(&self.owner, lease, limit) {
            Ok(claimed) => claimed,
            Err(e) => {
                eprintln!("forklift: spool claim failed: {e}");
                return false;
            }
        };
        let claimed_any = !claimed.is_empty();
        for c in claimed {
            match c {
                Claimed::Task(p) => {
                    self.in_flight.fetch_add(1, Ordering::AcqRel);
                    self.spawn(p);
                }
                Claimed::Corrupt { id, reason } => {
                    eprintln!("forklift: spool entry {id} is corrupt ({reason}); moved to the dead-letter area");
                    Counters::inc(&self.counters.dead);
                    self.done.push(Finish::Dead {
                        id,
                        error: format!("corrupt entry: {reason}"),
                    });
                    self.done_since.get_or_insert_with(Instant::now);
                }
            }
        }
        claimed_any
    }

    /// Waits for something to happen (a result, a local submission, the poll, or the
    /// time to record outcomes; not at all if the last claim found tasks), then handles
    /// messages until the channel is quiet or outcomes are due to be recorded.
    fn receive(&mut self, claimed_any: bool) {
        let flush_in = self
            .done_since
            .map(|t| FINISH_EVERY.saturating_sub(t.elapsed()));
        let wait = if claimed_any {
            Duration::ZERO
        } else if self.in_flight.load(Ordering::Acquire) >= self.max_in_flight {
            POLL
        } else {
            let due = self
                .spool
                .next_due()
                .ok()
                .flatten()
                .map(|t| Duration::from_millis((t - now_ms()).max(0) as u64));
            due.map_or(POLL, |d| d.clamp(Duration::from_millis(1), POLL))
        };
        let wait = flush_in.map_or(wait, |f| wait.min(f));
        let mut msgs = Vec::new();
        if !wait.is_zero() {
            if let Ok(m) = self.rx.recv_timeout(wait) {
                msgs.push(m);
            }
        }
        msgs.extend(self.rx.try_iter());
        // Tasks the writer claimed for this runner run without another query; keep
        // handling them (and outcomes) until the channel is quiet.
        loop {
            for m in msgs.drain(..) {
                self.handle(m);
            }
            if self.flush_due() {
                break;
            }
            match self.rx.try_recv() {
                Ok(m) if !matches!(m, RunnerMsg::Submitted) => msgs.push(m),
                Ok(_) => {
                    // Unclaimed tasks were committed: claim them now.
                    break;
                }
                Err(_) => break,
            }
        }
    }

    /// Handles one message.
    fn handle(&mut self, m: RunnerMsg) {
        match m {
            RunnerMsg::Submitted => {}
            RunnerMsg::Claimed(tasks) => {
                for p in tasks {
                    self.spawn(p);
                }
            }
            RunnerMsg::Stop(deadline) => self.stop = Some(deadline),
            RunnerMsg::Finished(p, r) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                if self.stop.is_some() {
                    self.drained += 1;
                }
                self.done.push(outcome(&self.cfg, &self.counters, &p, r));
                self.done_since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Records the collected outcomes in one transaction, when they are due.
    fn flush(&mut self) {
        if self.done.is_empty() || !self.flush_due() {
            return;
        }
        if let Err(e) = self.spool.finish_batch(&self.done) {
            eprintln!(
                "forklift: spool could not record {} outcome(s): {e}",
                self.done.len()
            );
        }
        self.done.clear();
        self.done_since = None;
    }

    /// Whether the outcomes collected so far are due to be recorded: enough of them,
    /// old enough, or the runner is stopping.
    fn flush_due(&self) -> bool {
        self.done.len() >= FINISH_BATCH
            || self.stop.is_some()
            || self.done_since.is_some_and(|t| t.elapsed() >= FINISH_EVERY)
    }

    /// Whether a stopping runner is done: nothing runs and nothing was just claimed,
    /// or the drain deadline passed.
    fn drained_out(&self, claimed_any: bool) -> bool {
        let Some(deadline) = self.stop else {
            return false;
        };
        let idle = self.in_flight.load(Ordering::Acquire) == 0 && !claimed_any;
        idle || Instant::now() >= deadline
    }

    /// Starts a task on the executor; its outcome comes back as a message.
    fn spawn(&self, p: TaskPayload) {
        let tx = self.tx.clone();
        self.exec.spawn(p, Duration::ZERO, move |p, r| {
            let _ = tx.send(RunnerMsg::Finished(p, r));
        });
    }
}

/// What becomes of a task that ran: done, retried later with exponential backoff, or
/// (failed permanently, or out of retries) moved to the dead-letter area.
pub fn outcome(
    cfg: &OffloadConfig,
    counters: &Counters,
    p: &TaskPayload,
    r: Result<(), TaskError>,
) -> Finish {
    match r {
        Ok(()) => Finish::Done(p.id),
        Err(e) if !e.permanent && p.attempt <= cfg.retries => {
            Counters::inc(&counters.retried);
            let delay = cfg.retry_delay(p.attempt);
            Finish::Retry {
                id: p.id,
                at_ms: now_ms() + delay.as_millis() as i64,
                error: e.message,
            }
        }
        Err(e) => {
            Counters::inc(&counters.dead);
            eprintln!(
                "forklift: task {} ({}) failed after {} attempt(s): {}; moved to the dead-letter area",
                p.id, p.name, p.attempt, e.message
            );
            Finish::Dead {
                id: p.id,
                error: e.message,
            }
        }
    }
}
