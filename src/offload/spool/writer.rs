//! The spool's writer thread, one per process: group commit of submissions.
//!
//! Commits submissions in groups (one sync for many), to this process's journal (tasks
//! due soon, which this process runs from memory) or to SQLite (the others, those due
//! now claimed for the local runner in the same transaction), and records what became
//! of the journal's tasks.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::journal::Journal;
use super::recovery::{close_into, report_import};
use super::runner::{outcome, RunnerFeed, RunnerMsg, FINISH_EVERY, RECLAIM_EVERY};
use super::store::{now_ms, Finish, InsertClaim, Spool};
use crate::offload::config::OffloadConfig;
use crate::offload::counters::Counters;
use crate::offload::error::{SpoolError, SubmitError, TaskError};
use crate::offload::exec::Executor;
use crate::offload::intake::{Ack, Batcher};
use crate::offload::task::TaskPayload;

/// Most submissions committed in one transaction.
const MAX_BATCH: usize = 1024;

/// A submission waiting for the writer.
pub struct Submission {
    pub name: String,
    pub payload: bytes::Bytes,
    pub run_at: i64,
    pub ack: Ack,
}

/// What the writer did while stopping.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Journal tasks that finished during the drain.
    pub drained: u64,
}

/// A task that ran from the journal, with its outcome.
type Ran = (TaskPayload, Result<(), TaskError>);

/// Tasks delayed by at most this long stay in the journal (and in memory); longer ones
/// go to SQLite, so a journal segment is not kept for a day by one task.
const JOURNAL_MAX_DELAY_MS: i64 = 5 * 60 * 1000;

/// Task ids are reserved from SQLite this many at a time.
const ID_BLOCK: u64 = 1 << 16;

/// The writer thread: commits submissions, to the journal (tasks this process runs) or
/// to SQLite, and records what became of the journal's tasks.
pub struct Writer {
    /// This thread's connection to SQLite (full sync; checkpoints left to runners).
    spool: Spool,
    /// The spool directory (the journal is in it).
    dir: PathBuf,
    /// This process's owner token: names the journal's segments.
    owner: String,
    /// This process's journal, opened at start (`None`: not open, or unavailable).
    journal: Option<Journal>,
    /// The journal could not be opened: everything goes to SQLite.
    no_journal: bool,
    /// Reserved ids not used yet.
    ids: std::ops::Range<u64>,
    /// Runs the journal's tasks.
    exec: Arc<Executor>,
    /// The local runner, given the tasks claimed as they are inserted.
    runner: Option<RunnerFeed>,
    /// The engine's configuration: the spool's bound, retries.
    cfg: OffloadConfig,
    /// This process's counters (retried, dead).
    counters: Arc<Counters>,
    /// Journal tasks that ran, waiting to be recorded.
    ran: Arc<Mutex<Vec<Ran>>>,
    /// Rows in SQLite (updated from the database when near the bound).
    pending: u64,
    /// Journal tasks completed and not yet added to the spool's count.
    completed: u64,
    /// When `completed` was last added to the spool's count.
    counted_at: Instant,
    /// When the journal was last written (`done` records go out every [`FINISH_EVERY`]).
    flushed_at: Instant,
    /// Most submissions per commit (1 without group commit).
    batch: usize,
    /// Takes the queued submissions in groups (and keeps the engine's queue depth).
    batcher: Batcher,
}

impl Writer {
    /// A writer committing to `spool` (this thread's connection), starting `exec` on
    /// the journal's tasks and handing tasks claimed at insert to `runner`.
    pub fn new(
        spool: Spool,
        owner: String,
        exec: Arc<Executor>,
        runner: Option<RunnerFeed>,
        cfg: &OffloadConfig,
        counters: Arc<Counters>,
        batcher: Batcher,
    ) -> Writer {
        Writer {
            pending: spool.pending().unwrap_or(0),
            spool,
            dir: cfg.spool_dir.clone(),
            owner,
            journal: None,
            no_journal: false,
            ids: 0..0,
            exec,
            runner,
            cfg: cfg.clone(),
            counters,
            ran: Arc::new(Mutex::new(Vec::new())),
            completed: 0,
            counted_at: Instant::now(),
            flushed_at: Instant::now(),
            batch: if cfg.group_commit { MAX_BATCH } else { 1 },
            batcher,
        }
    }

    /// The thread's loop: commits groups of submissions until the channel closes, then
    /// drains the journal's tasks until the deadline set in `stop` and moves the
    /// unfinished ones into SQLite.
    pub fn run(
        mut self,
        mut rx: crossbeam_channel::Receiver<Submission>,
        stop: Arc<Mutex<Option<Instant>>>,
    ) -> WriterReport {
        // The journal's file (zero-filled ahead) and a block of ids are ready before
        // the first submission.
        if self.open_journal() {
            let _ = self.ensure_ids(1);
        }
        loop {
            // While journal tasks run, wake up to record their outcomes.
            let wait = if self.journal_open() > 0 {
                FINISH_EVERY
            } else {
                Duration::from_secs(1)
            };
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    let subs = self.batcher.take(first, &mut rx, self.batch);
                    self.commit(subs);
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
            self.collect(false);
        }
        // Stopping: wait for the journal's tasks until the deadline, then move what
        // is unfinished into SQLite, where the next start finds it.
        let deadline = stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(Instant::now);
        let before = self.journal_open();
        while self.journal_open() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            self.collect(false);
        }
        self.collect(true);
        let drained = (before - self.journal_open()) as u64;
        if let Some(j) = self.journal.take() {
            match close_into(j, &mut self.spool) {
                Ok(r) => report_import(r),
                Err(e) => eprintln!(
                    "forklift: spool could not move the journal's unfinished tasks into the database: {e}; the next start resumes them"
                ),
            }
        }
        WriterReport { drained }
    }

    /// Opens the journal if it is not open yet; false if it cannot be (tasks then go
    /// to SQLite only).
    fn open_journal(&mut self) -> bool {
        if self.journal.is_none() && !self.no_journal {
            match Journal::open(&self.dir, &self.owner) {
                Ok(j) => self.journal = Some(j),
                Err(e) => {
                    eprintln!(
                        "forklift: spool journal unavailable ({e}); tasks go to the database only"
                    );
                    self.no_journal = true;
                }
            }
        }
        self.journal.is_some()
    }

    /// Makes sure at least `n` reserved ids are left, reserving a new block if not.
    fn ensure_ids(&mut self, n: u64) -> Result<(), SpoolError> {
        if self.ids.end - self.ids.start < n {
            let k = ID_BLOCK.max(n);
            let first = self.spool.reserve_ids(k)?;
            self.ids = first..first + k;
        }
        Ok(())
    }

    fn journal_open(&self) -> usize {
        self.journal.as_ref().map_or(0, Journal::open_tasks)
    }

    /// Refuses what the spool has no room for, then commits the rest: tasks due soon to
    /// this process's journal (it runs them), the others to SQLite.
    fn commit(&mut self, mut subs: Vec<Submission>) {
        let max = self.cfg.spool_max;
        let held = |w: &Self| w.pending + w.journal_open() as u64;
        if held(self) + subs.len() as u64 > max {
            self.pending = self.spool.pending().unwrap_or(self.pending);
        }
        let room = max.saturating_sub(held(self)) as usize;
        for s in subs.split_off(room.min(subs.len())) {
            let _ = s.ack.send(Err(SubmitError::Full {
                capacity: max as usize,
            }));
        }
        if subs.is_empty() {
            return;
        }
        let now = now_ms();
        let limit = self.runner.as_ref().map_or(0, |r| r.max_in_flight);
        let mut journal_room = limit.saturating_sub(self.journal_open());
        let (mut to_journal, mut to_db) = (Vec::new(), Vec::new());
        for s in subs {
            if !self.no_journal && journal_room > 0 && s.run_at - now <= JOURNAL_MAX_DELAY_MS {
                journal_room -= 1;
                to_journal.push(s);
            } else {
                to_db.push(s);
            }
        }
        if !to_journal.is_empty() {
            if let Err(back) = self.commit_journal(to_journal, now) {
                to_db.extend(back);
            }
        }
        if !to_db.is_empty() {
            self.commit_db(to_db);
        }
    }

    /// Writes tasks to the journal and syncs it, acknowledges them, and starts them.
    /// Gives the submissions back if the journal cannot be used (they go to SQLite).
    fn commit_journal(&mut self, subs: Vec<Submission>, now: i64) -> Result<(), Vec<Submission>> {
        if !self.open_journal() {
            return Err(subs);
        }
        if let Err(e) = self.ensure_ids(subs.len() as u64) {
            eprintln!("forklift: spool could not reserve task ids: {e}");
            return Err(subs);
        }
        let journal = self.journal.as_mut().expect("opened above");
        let first = self.ids.start;
        self.ids.start += subs.len() as u64;
        let ids: Vec<u64> = (first..self.ids.start).collect();
        let records: Vec<(u64, i64, &str, &[u8])> = subs
            .iter()
            .zip(&ids)
            .map(|(s, &id)| (id, s.run_at, s.name.as_str(), &s.payload[..]))
            .collect();
        if let Err(e) = journal.append(&records) {
            refuse_all(subs, &format!("spool journal write failed: {e}"));
            return Ok(());
        }
        self.flushed_at = Instant::now();
        for (s, id) in subs.into_iter().zip(ids) {
            let _ = s.ack.send(Ok(id));
            let delay = Duration::from_millis((s.run_at - now).max(0) as u64);
            let ran = self.ran.clone();
            self.exec.spawn(
                TaskPayload::first(id, s.name, s.payload),
                delay,
                move |p, r| {
                    ran.lock().unwrap_or_else(|p| p.into_inner()).push((p, r));
                },
            );
        }
        Ok(())
    }

    /// Commits tasks to SQLite; those due now are claimed for this process's runner in
    /// the same transaction and handed to it without a query.
    fn commit_db(&mut self, subs: Vec<Submission>) {
        let rows: Vec<(&str, &[u8], i64)> = subs
            .iter()
            .map(|s| (s.name.as_str(), &s.payload[..], s.run_at))
            .collect();
        let runner = self.runner.as_ref();
        let lease_until = runner.map_or(0, |r| now_ms() + r.lease.as_millis() as i64);
        let claim = runner.map(|r| InsertClaim {
            owner: &r.owner,
            lease_until,
            limit: r
                .max_in_flight
                .saturating_sub(r.in_flight.load(Ordering::Acquire)),
        });
        match self.spool.insert_batch_claimed(&rows, claim) {
            Ok(ids) => {
                self.pending += ids.len() as u64;
                let mut claimed = Vec::new();
                let mut unclaimed = false;
                for (s, (id, mine)) in subs.into_iter().zip(ids) {
                    if mine {
                        claimed.push(TaskPayload::first(id, s.name, s.payload));
                    } else {
                        unclaimed = true;
                    }
                    let _ = s.ack.send(Ok(id));
                }
                if let Some(r) = &self.runner {
                    if !claimed.is_empty() {
                        r.in_flight.fetch_add(claimed.len(), Ordering::AcqRel);
                        let _ = r.tx.send(RunnerMsg::Claimed(claimed));
                    }
                    if unclaimed {
                        let _ = r.tx.send(RunnerMsg::Submitted);
                    }
                }
            }
            Err(e) => refuse_all(subs, &format!("spool write failed: {e}")),
        }
    }

    /// Records what became of the journal's tasks that ran: `done` records (written
    /// every [`FINISH_EVERY`], or with the next commit), and failures as SQLite rows
    /// (retry or dead letter) before their `done` record.
    fn collect(&mut self, now: bool) {
        let ran = std::mem::take(&mut *self.ran.lock().unwrap_or_else(|p| p.into_inner()));
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        for (p, r) in ran {
            match outcome(&self.cfg, &self.counters, &p, r) {
                Finish::Done(id) => {
                    journal.finished(id);
                    self.completed += 1;
                }
                failed => match self.spool.adopt_failed(&p, &failed) {
                    Ok(()) => {
                        if matches!(failed, Finish::Retry { .. }) {
                            self.pending += 1;
                        }
                        journal.finished(p.id);
                        if let Some(r) = &self.runner {
                            let _ = r.tx.send(RunnerMsg::Submitted);
                        }
                    }
                    // The task stays open in the journal: it runs again after a restart.
                    Err(e) => eprintln!(
                        "forklift: spool could not record the failure of task {}: {e}",
                        p.id
                    ),
                },
            }
        }
        if now || self.flushed_at.elapsed() >= FINISH_EVERY {
            if let Err(e) = journal.flush() {
                eprintln!("forklift: spool journal write failed: {e}");
            }
            self.flushed_at = Instant::now();
        }
        if self.completed > 0 && (now || self.counted_at.elapsed() >= RECLAIM_EVERY) {
            if self.spool.add_completed(self.completed).is_ok() {
                self.completed = 0;
            }
            self.counted_at = Instant::now();
        }
    }
}

/// Logs why a group of submissions could not be written and answers each with it.
fn refuse_all(subs: Vec<Submission>, msg: &str) {
    eprintln!("forklift: {msg}");
    for s in subs {
        let _ = s
            .ack
            .send(Err(SubmitError::Unavailable(std::io::Error::other(
                msg.to_string(),
            ))));
    }
}
