//! `spool`: durable tasks in `--spool-dir`. A submission is on disk (fsynced) before
//! `submit` returns; one writer thread per process batches concurrent submissions into
//! one sync (group commit). Tasks due soon go to the process's journal
//! ([`super::journal`]) and run in that process from memory; the rest go to an embedded
//! SQLite database (WAL mode, `synchronous=FULL`): long delays, retries, the
//! dead-letter area (which the `forklift spool` command lists and retries), and the
//! journals of processes that died, imported by any runner. A runner claims due rows
//! under a lease naming its process, runs them, and deletes them when done; a task
//! whose process died is run again (at least once). Failures are retried with
//! exponential backoff, then dead-lettered. See docs/OFFLOAD.md for the design.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::exec::Executor;
use super::journal::{self, Journal};
use super::{
    Counters, DrainReport, Engine, OffloadConfig, OffloadError, Registry, SubmitError, Task,
    TaskError, TaskId, TaskPayload,
};
use crate::app::BoxFuture;
use crate::rt::fork::ForkLocal;

/// Spool errors.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot create spool directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("spool database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("spool writer stopped")]
    WriterGone,
}

/// File name of the database inside the spool directory.
pub const DB_FILE: &str = "spool.db";

/// Most submissions committed in one transaction.
const MAX_BATCH: usize = 1024;

/// How often an idle runner looks for tasks submitted by other processes.
const POLL: Duration = Duration::from_millis(20);

/// How often the runner frees tasks held by dead runners.
const RECLAIM_EVERY: Duration = Duration::from_secs(2);

/// Most tasks a runner claims in one query.
const CLAIM_BATCH: usize = 256;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Give up on a locked database after this long (a stuck process holding the lock).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The busy handler: called with the number of earlier tries for one statement;
/// sleeps 50 µs, doubling up to 2 ms, and gives up after [`BUSY_TIMEOUT`].
fn busy_wait(tries: i32) -> bool {
    const MAX_STEP_US: u64 = 2000;
    let tries = tries.max(0) as u64;
    // 50, 100, ... 1600, then 2000 µs per try: past try 6 the total is ≈ 2 ms × tries.
    let step = (50u64 << tries.min(6)).min(MAX_STEP_US);
    let waited_us = if tries <= 6 {
        50 * ((1u64 << tries) - 1)
    } else {
        3150 + (tries - 6) * MAX_STEP_US
    };
    if Duration::from_micros(waited_us) >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(Duration::from_micros(step));
    true
}

/// FNV-1a over the name, a separator and the payload: detects a damaged row.
pub fn checksum(name: &[u8], payload: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.iter().chain(&[0u8]).chain(payload) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h as i64
}

/// Counts of the spool's contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpoolStats {
    /// Tasks not finished (due, delayed, or running).
    pub pending: u64,
    /// Of those, claimed by a runner right now.
    pub running: u64,
    /// In the dead-letter area.
    pub dead: u64,
    /// Completed since the spool was created (journal tasks are added every 2 s).
    pub completed: u64,
    /// Not finished, in the journals of running processes (they run them; not counted
    /// in `pending`).
    pub journal: u64,
}

/// A task in the dead-letter area.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadTask {
    pub id: u64,
    pub name: String,
    pub payload_len: u64,
    pub attempts: u32,
    /// Unix time in milliseconds.
    pub failed_at: i64,
    pub error: String,
}

/// A claimed task, or a row that could not be read back as one.
#[derive(Debug)]
pub enum Claimed {
    Task(TaskPayload),
    Corrupt { id: u64, reason: String },
}

/// What became of a claimed task.
#[derive(Debug, Clone)]
pub enum Finish {
    Done(u64),
    Retry { id: u64, at_ms: i64, error: String },
    Dead { id: u64, error: String },
}

/// One connection to a spool database. Not shared between threads; open one per thread
/// (and never use one across `fork`).
pub struct Spool {
    conn: Connection,
    path: PathBuf,
}

/// Who claims tasks as they are inserted ([`Spool::insert_batch_claimed`]).
#[derive(Debug, Clone, Copy)]
pub struct InsertClaim<'a> {
    pub owner: &'a str,
    pub lease_until: i64,
    /// Most tasks to claim.
    pub limit: usize,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|source| SpoolError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let db = |source| SpoolError::Db {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        // SQLite's own busy handler sleeps up to 100 ms between tries; the spool's
        // writers (one per process, and the runners) hold the lock for about a
        // millisecond, so wait in short steps instead: a submission waiting for the
        // lock would otherwise miss several group commits.
        conn.busy_handler(Some(busy_wait)).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS tasks (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL,
                payload BLOB NOT NULL,
                len INTEGER NOT NULL,
                sum INTEGER NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                run_at INTEGER NOT NULL,
                owner TEXT,
                lease_until INTEGER NOT NULL DEFAULT 0,
                created INTEGER NOT NULL,
                last_error TEXT
            );
            CREATE INDEX IF NOT EXISTS tasks_free ON tasks(owner, run_at);
            CREATE TABLE IF NOT EXISTS dead (
                id INTEGER PRIMARY KEY,
                name, payload, len, sum, attempts, created,
                failed_at INTEGER NOT NULL,
                last_error TEXT
            );
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT OR IGNORE INTO meta VALUES ('completed', 0);
            CREATE TABLE IF NOT EXISTS imported (segment TEXT PRIMARY KEY, at INTEGER NOT NULL);",
        )
        .map_err(db)?;
        Ok(Spool { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Trades the fsync on commit for speed on this connection: commits stay atomic and
    /// survive a process crash, not a power loss. The runner uses it for claims and
    /// completions (a lost completion means a duplicate run, never a lost task).
    pub fn relax_sync(&self) -> Result<(), SpoolError> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(())
    }

    /// Copies what the WAL holds into the database as far as readers allow, without
    /// waiting for them (SQLite's PASSIVE checkpoint).
    pub fn checkpoint(&self) -> Result<(), SpoolError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Leaves checkpoints (copying the WAL into the database, with its fsyncs) to other
    /// connections: the writer's commits are on the request path. The runner's
    /// connection keeps SQLite's automatic checkpoints.
    pub fn no_autocheckpoint(&self) -> Result<(), SpoolError> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Commits `tasks` (name, payload, due time in Unix ms) in one transaction; returns
    /// their ids in order.
    pub fn insert_batch(&mut self, tasks: &[(&str, &[u8], i64)]) -> Result<Vec<u64>, SpoolError> {
        Ok(self
            .insert_batch_claimed(tasks, None)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Like [`Spool::insert_batch`], and claims for `claim.owner`, in the same
    /// transaction, up to `claim.limit` of the tasks already due (as [`Spool::claim`]
    /// would, without a second transaction): the submitting process runs them itself.
    /// Returns each id with whether it was claimed.
    pub fn insert_batch_claimed(
        &mut self,
        tasks: &[(&str, &[u8], i64)],
        claim: Option<InsertClaim<'_>>,
    ) -> Result<Vec<(u64, bool)>, SpoolError> {
        let created = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut ids = Vec::with_capacity(tasks.len());
        let mut left = claim.as_ref().map_or(0, |c| c.limit);
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO tasks (name, payload, len, sum, run_at, created, owner, lease_until, attempts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for (name, payload, run_at) in tasks {
                let owner = match &claim {
                    Some(c) if left > 0 && *run_at <= created => {
                        left -= 1;
                        Some((c.owner, c.lease_until))
                    }
                    _ => None,
                };
                st.execute(params![
                    name,
                    payload,
                    payload.len() as i64,
                    checksum(name.as_bytes(), payload),
                    run_at,
                    created,
                    owner.map(|o| o.0),
                    owner.map_or(0, |o| o.1),
                    i64::from(owner.is_some()),
                ])?;
                ids.push((tx.last_insert_rowid() as u64, owner.is_some()));
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Reserves `n` task ids for a journal: no row inserted later gets one of them.
    /// Returns the first. Committed (and synced) before it returns, like a submission.
    pub fn reserve_ids(&mut self, n: u64) -> Result<u64, SpoolError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let seq: Option<i64> = tx
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'tasks'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let seq = match seq {
            Some(s) => s,
            None => {
                let top: i64 = tx.query_row(
                    "SELECT max(coalesce((SELECT max(id) FROM tasks), 0),
                                coalesce((SELECT max(id) FROM dead), 0))",
                    [],
                    |r| r.get(0),
                )?;
                tx.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('tasks', ?1)",
                    [top],
                )?;
                top
            }
        };
        tx.execute(
            "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'tasks'",
            [seq + n as i64],
        )?;
        tx.commit()?;
        Ok(seq as u64 + 1)
    }

    /// Inserts the unfinished tasks of one process's journal segments `segments` as
    /// ordinary spool rows, unless those segments were imported before. Returns how
    /// many tasks it inserted.
    pub fn adopt_segments(
        &mut self,
        segments: &[String],
        tasks: &[super::journal::JournalTask],
    ) -> Result<u64, SpoolError> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut seen_before = false;
        for seg in segments {
            seen_before |= tx.execute(
                "INSERT OR IGNORE INTO imported (segment, at) VALUES (?1, ?2)",
                params![seg, now],
            )? == 0;
        }
        let mut n = 0;
        if !seen_before {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO tasks (id, name, payload, len, sum, run_at, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for t in tasks {
                n += st.execute(params![
                    t.id as i64,
                    t.name,
                    &t.payload[..],
                    t.payload.len() as i64,
                    checksum(t.name.as_bytes(), &t.payload),
                    t.run_at,
                    now,
                ])? as u64;
            }
        }
        // Forget imports older than a week: their files are long gone.
        tx.execute(
            "DELETE FROM imported WHERE at < ?1",
            [now - 7 * 24 * 3600 * 1000],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Records the outcome of a task that ran from a journal and failed: a retry at
    /// `Finish::Retry`'s time (as a spool row that had `attempts` runs), or a move to
    /// the dead-letter area.
    pub fn adopt_failed(&mut self, p: &TaskPayload, outcome: &Finish) -> Result<(), SpoolError> {
        let now = now_ms();
        let sum = checksum(p.name.as_bytes(), &p.data);
        match outcome {
            Finish::Done(_) => {}
            Finish::Retry { at_ms, error, .. } => {
                self.conn.execute(
                    "INSERT OR REPLACE INTO tasks (id, name, payload, len, sum, attempts, run_at, created, last_error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![p.id as i64, p.name, &p.data[..], p.data.len() as i64, sum, p.attempt, at_ms, now, error],
                )?;
            }
            Finish::Dead { error, .. } => {
                self.conn.execute(
                    "INSERT OR REPLACE INTO dead (id, name, payload, len, sum, attempts, created, failed_at, last_error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
                    params![p.id as i64, p.name, &p.data[..], p.data.len() as i64, sum, p.attempt, now, error],
                )?;
            }
        }
        Ok(())
    }

    /// Adds `n` to the count of completed tasks (tasks that ran from a journal).
    pub fn add_completed(&mut self, n: u64) -> Result<(), SpoolError> {
        self.conn.execute(
            "UPDATE meta SET value = value + ?1 WHERE key = 'completed'",
            [n as i64],
        )?;
        Ok(())
    }

    /// Claims up to `limit` due, unowned tasks for `owner` until `lease_until` (Unix ms).
    pub fn claim(
        &mut self,
        owner: &str,
        lease_until: i64,
        limit: usize,
    ) -> Result<Vec<Claimed>, SpoolError> {
        let now = now_ms();
        // A read first: idle runners (one per worker) must not take the write lock
        // every poll and slow down submissions.
        let due: bool = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM tasks WHERE owner IS NULL AND run_at <= ?1)",
            )?
            .query_row([now], |r| r.get(0))?;
        if !due {
            return Ok(Vec::new());
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::new();
        {
            let mut st = tx.prepare_cached(
                "UPDATE tasks SET owner = ?1, lease_until = ?2, attempts = attempts + 1
                 WHERE id IN (SELECT id FROM tasks WHERE owner IS NULL AND run_at <= ?3
                              ORDER BY run_at, id LIMIT ?4)
                 RETURNING id, name, payload, len, sum, attempts",
            )?;
            let mut rows = st.query(params![owner, lease_until, now, limit as i64])?;
            while let Some(row) = rows.next()? {
                out.push(read_claimed(row));
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Records what became of claimed tasks, in one transaction.
    pub fn finish_batch(&mut self, done: &[Finish]) -> Result<(), SpoolError> {
        if done.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut completed = 0i64;
        for f in done {
            match f {
                Finish::Done(id) => {
                    completed +=
                        tx.execute("DELETE FROM tasks WHERE id = ?1", [*id as i64])? as i64;
                }
                Finish::Retry { id, at_ms, error } => {
                    tx.execute(
                        "UPDATE tasks SET owner = NULL, lease_until = 0, run_at = ?2, last_error = ?3
                         WHERE id = ?1",
                        params![*id as i64, at_ms, error],
                    )?;
                }
                Finish::Dead { id, error } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO dead (id, name, payload, len, sum, attempts, created, failed_at, last_error)
                         SELECT id, name, payload, len, sum, attempts, created, ?2, ?3 FROM tasks WHERE id = ?1",
                        params![*id as i64, now, error],
                    )?;
                    tx.execute("DELETE FROM tasks WHERE id = ?1", [*id as i64])?;
                }
            }
        }
        if completed > 0 {
            tx.execute(
                "UPDATE meta SET value = value + ?1 WHERE key = 'completed'",
                [completed],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Frees tasks whose lease expired or whose owner process is gone; returns how many.
    pub fn reclaim(&mut self, me: &str) -> Result<u64, SpoolError> {
        let owners: Vec<String> = {
            let mut st = self
                .conn
                .prepare_cached("SELECT DISTINCT owner FROM tasks WHERE owner IS NOT NULL")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.filter_map(Result::ok).collect()
        };
        let mut n = 0u64;
        for owner in owners.iter().filter(|o| *o != me && !owner_alive(o)) {
            n += self.conn.execute(
                "UPDATE tasks SET owner = NULL, lease_until = 0 WHERE owner = ?1",
                [owner],
            )? as u64;
        }
        n += self.conn.execute(
            "UPDATE tasks SET owner = NULL, lease_until = 0
             WHERE owner IS NOT NULL AND lease_until < ?1",
            [now_ms()],
        )? as u64;
        Ok(n)
    }

    /// Unix ms when the earliest unowned task is due, if any.
    pub fn next_due(&self) -> Result<Option<i64>, SpoolError> {
        Ok(self
            .conn
            .query_row(
                "SELECT min(run_at) FROM tasks WHERE owner IS NULL",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()?
            .flatten())
    }

    pub fn pending(&self) -> Result<u64, SpoolError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM tasks", [], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let one = |sql: &str| -> Result<u64, SpoolError> {
            Ok(self.conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
        };
        Ok(SpoolStats {
            pending: one("SELECT count(*) FROM tasks")?,
            running: one("SELECT count(*) FROM tasks WHERE owner IS NOT NULL")?,
            dead: one("SELECT count(*) FROM dead")?,
            completed: one("SELECT value FROM meta WHERE key = 'completed'")?,
            journal: self.path.parent().map_or(0, super::journal::count_open),
        })
    }

    /// Up to `limit` dead tasks, oldest failure first.
    pub fn list_dead(&self, limit: usize) -> Result<Vec<DeadTask>, SpoolError> {
        let mut st = self.conn.prepare(
            "SELECT id, CAST(name AS TEXT), length(payload), attempts, failed_at, last_error
             FROM dead ORDER BY failed_at, id LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            Ok(DeadTask {
                id: r.get::<_, i64>(0)? as u64,
                name: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                payload_len: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                attempts: r.get::<_, Option<i64>>(3)?.unwrap_or(0) as u32,
                failed_at: r.get(4)?,
                error: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves dead tasks (all, or those in `ids`) back to the queue, due now, with their
    /// attempt count reset. Returns how many moved.
    pub fn retry_dead(&mut self, ids: Option<&[u64]>) -> Result<u64, SpoolError> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let sel =
            "INSERT INTO tasks (id, name, payload, len, sum, attempts, run_at, created, last_error)
                   SELECT id, name, payload, len, sum, 0, ?1, created, last_error FROM dead";
        let n = match ids {
            None => {
                let n = tx.execute(sel, [now])?;
                tx.execute("DELETE FROM dead", [])?;
                n
            }
            Some(ids) => {
                let mut n = 0;
                for id in ids {
                    n += tx.execute(&format!("{sel} WHERE id = ?2"), params![now, *id as i64])?;
                    tx.execute("DELETE FROM dead WHERE id = ?1", [*id as i64])?;
                }
                n
            }
        };
        tx.commit()?;
        Ok(n as u64)
    }

    /// Deletes dead tasks (all, or those in `ids`). Returns how many.
    pub fn purge_dead(&mut self, ids: Option<&[u64]>) -> Result<u64, SpoolError> {
        Ok(match ids {
            None => self.conn.execute("DELETE FROM dead", [])? as u64,
            Some(ids) => {
                let mut n = 0;
                for id in ids {
                    n += self
                        .conn
                        .execute("DELETE FROM dead WHERE id = ?1", [*id as i64])?
                        as u64;
                }
                n
            }
        })
    }
}

/// Reads a claimed row back; any damage (wrong types, a length or checksum that does
/// not match) makes it `Corrupt` instead of an error, so one bad row cannot stop the
/// runner.
fn read_claimed(row: &rusqlite::Row<'_>) -> Claimed {
    let id = match row.get::<_, i64>(0) {
        Ok(id) => id as u64,
        Err(e) => {
            return Claimed::Corrupt {
                id: 0,
                reason: format!("unreadable id: {e}"),
            }
        }
    };
    let parsed = (|| -> Result<TaskPayload, String> {
        let name: String = row.get(1).map_err(|e| format!("name: {e}"))?;
        let payload: Vec<u8> = row.get(2).map_err(|e| format!("payload: {e}"))?;
        let len: i64 = row.get(3).map_err(|e| format!("len: {e}"))?;
        let sum: i64 = row.get(4).map_err(|e| format!("checksum: {e}"))?;
        let attempts: i64 = row.get(5).map_err(|e| format!("attempts: {e}"))?;
        if payload.len() as i64 != len {
            return Err(format!(
                "truncated payload: {} bytes, expected {len}",
                payload.len()
            ));
        }
        if checksum(name.as_bytes(), &payload) != sum {
            return Err("checksum mismatch".into());
        }
        Ok(TaskPayload {
            id,
            name,
            data: payload.into(),
            attempt: attempts.clamp(1, u32::MAX as i64) as u32,
        })
    })();
    match parsed {
        Ok(p) => Claimed::Task(p),
        Err(reason) => Claimed::Corrupt { id, reason },
    }
}

/// This process's lease owner name: boot id, pid and process start time, so a pid
/// reused after a crash or a reboot is not mistaken for the old owner.
pub fn owner_token() -> String {
    let pid = std::process::id();
    format!("{}/{}/{}", boot_id(), pid, start_time(pid).unwrap_or(0))
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process named by an owner token still runs.
pub fn owner_alive(token: &str) -> bool {
    let mut parts = token.split('/');
    let (Some(boot), Some(pid), Some(start)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    boot == boot_id() && start_time(pid) == Some(start)
}

/// A submission waiting for the writer.
struct Submission {
    name: String,
    payload: bytes::Bytes,
    run_at: i64,
    ack: tokio::sync::oneshot::Sender<Result<TaskId, SubmitError>>,
}

/// Messages to the runner thread.
enum RunnerMsg {
    /// The local writer committed tasks: look now instead of at the next poll.
    Submitted,
    /// The local writer committed these tasks already claimed for this runner.
    Claimed(Vec<TaskPayload>),
    Finished(TaskPayload, Result<(), TaskError>),
    Stop(Instant),
}

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

/// What the writer did while stopping.
#[derive(Debug, Default)]
struct WriterReport {
    /// Journal tasks that finished during the drain.
    drained: u64,
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
struct Writer {
    spool: Spool,
    dir: PathBuf,
    owner: String,
    journal: Option<Journal>,
    /// The journal could not be opened: everything goes to SQLite.
    no_journal: bool,
    /// Reserved ids not used yet.
    ids: std::ops::Range<u64>,
    exec: Arc<Executor>,
    runner: Option<RunnerFeed>,
    cfg: OffloadConfig,
    counters: Arc<Counters>,
    /// Journal tasks that ran, waiting to be recorded.
    ran: Arc<Mutex<Vec<Ran>>>,
    /// Rows in SQLite (updated from the database when near the bound).
    pending: u64,
    /// Journal tasks completed and not yet added to the spool's count.
    completed: u64,
    counted_at: Instant,
    flushed_at: Instant,
    batch: usize,
    waiting: Arc<AtomicU64>,
}

struct RunnerHandle {
    tx: mpsc::Sender<RunnerMsg>,
    join: std::thread::JoinHandle<DrainReport>,
    /// What the writer needs to claim tasks for this runner as it inserts them.
    feed: RunnerFeed,
}

/// The runner as its process's writer sees it.
#[derive(Clone)]
struct RunnerFeed {
    tx: mpsc::Sender<RunnerMsg>,
    owner: String,
    /// Tasks handed to the runner and not finished yet.
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    lease: Duration,
}

pub struct SpoolEngine {
    cfg: OffloadConfig,
    registry: Registry,
    counters: Arc<Counters>,
    local: ForkLocal<Mutex<Local>>,
    closing: AtomicBool,
    /// Submissions queued for the writer (for the queue depth).
    waiting: Arc<AtomicU64>,
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
            closing: AtomicBool::new(false),
            waiting: Arc::new(AtomicU64::new(0)),
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
        let (tx, rx) = crossbeam_channel::bounded::<Submission>(self.cfg.queue);
        let stop = Arc::new(Mutex::new(None));
        let writer = Writer {
            pending: spool.pending().unwrap_or(0),
            spool,
            dir: self.cfg.spool_dir.clone(),
            owner: owner_token(),
            journal: None,
            no_journal: false,
            ids: 0..0,
            exec,
            runner: g.runner.as_ref().map(|r| r.feed.clone()),
            cfg: self.cfg.clone(),
            counters: self.counters.clone(),
            ran: Arc::new(Mutex::new(Vec::new())),
            completed: 0,
            counted_at: Instant::now(),
            flushed_at: Instant::now(),
            batch: if self.cfg.group_commit { MAX_BATCH } else { 1 },
            waiting: self.waiting.clone(),
        };
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
        report_import(journal::import_dead(&self.cfg.spool_dir, &owner)?);
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
        let runner = Runner {
            spool,
            exec: exec.clone(),
            tx: tx.clone(),
            rx,
            cfg: self.cfg.clone(),
            counters: self.counters.clone(),
            owner: feed.owner.clone(),
            in_flight: feed.in_flight.clone(),
            max_in_flight: feed.max_in_flight,
        };
        let join = std::thread::Builder::new()
            .name("spool-runner".into())
            .spawn(move || runner.run())?;
        g.runner = Some(RunnerHandle { tx, join, feed });
        g.exec = Some(exec);
        Ok(())
    }
}

/// Says what importing journals found (damaged records are worth a line each).
fn report_import(r: journal::ImportReport) {
    for c in &r.corrupt {
        eprintln!("forklift: spool journal {c}");
    }
    if r.tasks > 0 {
        eprintln!(
            "forklift: spool: resumed {} unfinished task(s) from {} journal(s) of stopped processes",
            r.tasks, r.segments
        );
    }
}

impl Engine for SpoolEngine {
    fn submit(&self, task: Task) -> Result<TaskId, SubmitError> {
        crate::rt::block_on(self.submit_async(task))
    }

    fn submit_async(&self, task: Task) -> BoxFuture<Result<TaskId, SubmitError>> {
        let r = (|| {
            if self.closing.load(Ordering::Acquire) {
                return Err(SubmitError::ShuttingDown);
            }
            self.start_runner().map_err(|e| match e {
                OffloadError::Spool(s) => SubmitError::Spool(s),
                other => SubmitError::Unavailable(std::io::Error::other(other.to_string())),
            })?;
            let writer = self.writer()?;
            let (ack, rx) = tokio::sync::oneshot::channel();
            let sub = Submission {
                run_at: now_ms() + task.delay.as_millis() as i64,
                name: task.name,
                payload: task.payload,
                ack,
            };
            match writer.try_send(sub) {
                Ok(()) => {
                    self.waiting.fetch_add(1, Ordering::Relaxed);
                    Ok(rx)
                }
                Err(crossbeam_channel::TrySendError::Full(_)) => Err(SubmitError::Full {
                    capacity: self.cfg.queue,
                }),
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                    Err(SubmitError::Spool(SpoolError::WriterGone))
                }
            }
        })();
        Box::pin(async move {
            match r {
                Ok(rx) => rx
                    .await
                    .unwrap_or(Err(SubmitError::Spool(SpoolError::WriterGone))),
                Err(e) => Err(e),
            }
        })
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
        self.closing.store(true, Ordering::Release);
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
        self.waiting.load(Ordering::Relaxed)
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

impl Writer {
    fn run(
        mut self,
        rx: crossbeam_channel::Receiver<Submission>,
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
                    let mut subs = vec![first];
                    while subs.len() < self.batch {
                        match rx.try_recv() {
                            Ok(s) => subs.push(s),
                            Err(_) => break,
                        }
                    }
                    self.waiting.fetch_sub(subs.len() as u64, Ordering::Relaxed);
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
            match j.close_into(&mut self.spool) {
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

/// The runner thread: claims due tasks, hands them to the executor, records outcomes.
struct Runner {
    spool: Spool,
    exec: Arc<Executor>,
    tx: mpsc::Sender<RunnerMsg>,
    rx: mpsc::Receiver<RunnerMsg>,
    cfg: OffloadConfig,
    counters: Arc<Counters>,
    owner: String,
    /// Tasks running here: claimed by this runner or handed over by the writer.
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
}

/// Outcomes are recorded in one transaction per this many...
const FINISH_BATCH: usize = 256;
/// ...or after this long, whichever comes first. A crash loses at most these records,
/// which means those tasks run again (at least once), never that one is lost.
const FINISH_EVERY: Duration = Duration::from_millis(20);

/// Whether the outcomes collected so far (`n`, the oldest at `since`) are due to be
/// recorded: enough of them, old enough, or the runner is stopping.
fn flush_due(n: usize, stopping: bool, since: Option<Instant>) -> bool {
    n >= FINISH_BATCH || stopping || since.is_some_and(|t| t.elapsed() >= FINISH_EVERY)
}

impl Runner {
    fn spawn(&self, p: TaskPayload) {
        let tx = self.tx.clone();
        self.exec.spawn(p, Duration::ZERO, move |p, r| {
            let _ = tx.send(RunnerMsg::Finished(p, r));
        });
    }

    fn run(mut self) -> DrainReport {
        let mut last_reclaim: Option<Instant> = None;
        let mut stop: Option<Instant> = None;
        let mut done: Vec<Finish> = Vec::new();
        // When the oldest outcome in `done` was recorded.
        let mut done_since: Option<Instant> = None;
        let mut drained = 0u64;
        loop {
            let in_flight = self.in_flight.load(Ordering::Acquire);
            if stop.is_none() && last_reclaim.is_none_or(|t| t.elapsed() >= RECLAIM_EVERY) {
                match self.spool.reclaim(&self.owner) {
                    Ok(n) => Counters::add(&self.counters.redelivered, n),
                    Err(e) => eprintln!("forklift: spool reclaim failed: {e}"),
                }
                // Journals of processes that died since: their tasks become rows.
                match journal::import_dead(&self.cfg.spool_dir, &self.owner) {
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
                last_reclaim = Some(Instant::now());
            }
            let mut claimed_any = false;
            // While draining, due tasks are still taken until the deadline: a graceful
            // stop finishes what it can and leaves the rest for the next start.
            let claiming = stop.is_none_or(|d| Instant::now() < d);
            if claiming && in_flight < self.max_in_flight {
                let limit = (self.max_in_flight - in_flight).min(CLAIM_BATCH);
                let lease = now_ms() + self.cfg.lease.as_millis() as i64;
                match self.spool.claim(&self.owner, lease, limit) {
                    Ok(claimed) => {
                        claimed_any = !claimed.is_empty();
                        for c in claimed {
                            match c {
                                Claimed::Task(p) => {
                                    self.in_flight.fetch_add(1, Ordering::AcqRel);
                                    self.spawn(p);
                                }
                                Claimed::Corrupt { id, reason } => {
                                    eprintln!("forklift: spool entry {id} is corrupt ({reason}); moved to the dead-letter area");
                                    Counters::inc(&self.counters.dead);
                                    done.push(Finish::Dead {
                                        id,
                                        error: format!("corrupt entry: {reason}"),
                                    });
                                    done_since.get_or_insert_with(Instant::now);
                                }
                            }
                        }
                    }
                    Err(e) => eprintln!("forklift: spool claim failed: {e}"),
                }
            }
            // Wait for something to happen: a result, a local submission, the poll, or
            // the time to record outcomes.
            let flush_in = done_since.map(|t| FINISH_EVERY.saturating_sub(t.elapsed()));
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
                    match m {
                        RunnerMsg::Submitted => {}
                        RunnerMsg::Claimed(tasks) => {
                            for p in tasks {
                                self.spawn(p);
                            }
                        }
                        RunnerMsg::Stop(deadline) => stop = Some(deadline),
                        RunnerMsg::Finished(p, r) => {
                            self.in_flight.fetch_sub(1, Ordering::AcqRel);
                            if stop.is_some() {
                                drained += 1;
                            }
                            done.push(self.outcome(p, r));
                            done_since.get_or_insert_with(Instant::now);
                        }
                    }
                }
                if flush_due(done.len(), stop.is_some(), done_since) {
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
            if !done.is_empty() && flush_due(done.len(), stop.is_some(), done_since) {
                if let Err(e) = self.spool.finish_batch(&done) {
                    eprintln!(
                        "forklift: spool could not record {} outcome(s): {e}",
                        done.len()
                    );
                }
                done.clear();
                done_since = None;
            }
            if let Some(deadline) = stop {
                let idle = self.in_flight.load(Ordering::Acquire) == 0 && !claimed_any;
                if idle || Instant::now() >= deadline {
                    // Tasks still running keep their lease; the next runner's reclaim
                    // (dead owner) resumes them.
                    return DrainReport {
                        drained,
                        dropped: 0,
                        left_in_spool: 0,
                    };
                }
            }
        }
    }

    fn outcome(&self, p: TaskPayload, r: Result<(), TaskError>) -> Finish {
        outcome(&self.cfg, &self.counters, &p, r)
    }
}

/// What becomes of a task that ran: done, retried later with exponential backoff, or
/// (failed permanently, or out of retries) moved to the dead-letter area.
fn outcome(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("forklift-spool-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn insert_claim_finish_and_dead_letter() {
        let dir = tmp("basic");
        let mut s = Spool::open(&dir).unwrap();
        let ids = s
            .insert_batch(&[("a", b"1", 0), ("b", b"22", 0), ("c", b"333", i64::MAX)])
            .unwrap();
        assert_eq!(ids.len(), 3);
        let claimed = s.claim("me", i64::MAX, 10).unwrap();
        assert_eq!(claimed.len(), 2, "the delayed task is not due");
        assert!(s.claim("me", i64::MAX, 10).unwrap().is_empty());
        s.finish_batch(&[
            Finish::Done(ids[0]),
            Finish::Dead {
                id: ids[1],
                error: "boom".into(),
            },
        ])
        .unwrap();
        let st = s.stats().unwrap();
        assert_eq!((st.pending, st.dead, st.completed), (1, 1, 1));
        let dead = s.list_dead(10).unwrap();
        assert_eq!(dead[0].name, "b");
        assert_eq!(dead[0].error, "boom");
        assert_eq!(s.retry_dead(None).unwrap(), 1);
        assert_eq!(s.stats().unwrap().dead, 0);
        let again = s.claim("me", i64::MAX, 10).unwrap();
        assert!(matches!(&again[..], [Claimed::Task(p)] if p.id == ids[1] && p.attempt == 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reclaims_from_dead_owners_only() {
        let dir = tmp("reclaim");
        let mut s = Spool::open(&dir).unwrap();
        s.insert_batch(&[("a", b"1", 0), ("b", b"2", 0)]).unwrap();
        let me = owner_token();
        assert!(owner_alive(&me));
        assert!(!owner_alive("x/1/2"));
        assert_eq!(s.claim(&me, i64::MAX, 1).unwrap().len(), 1);
        assert_eq!(s.claim("dead/999999999/1", i64::MAX, 1).unwrap().len(), 1);
        assert_eq!(s.reclaim(&me).unwrap(), 1);
        assert_eq!(s.claim(&me, i64::MAX, 10).unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_rows_are_reported_not_fatal() {
        let dir = tmp("corrupt");
        let mut s = Spool::open(&dir).unwrap();
        s.insert_batch(&[("a", b"hello", 0), ("b", b"world", 0), ("c", b"ok", 0)])
            .unwrap();
        s.conn
            .execute("UPDATE tasks SET payload = X'6865' WHERE name = 'a'", [])
            .unwrap();
        s.conn
            .execute(
                "UPDATE tasks SET payload = X'776f726c65' WHERE name = 'b'",
                [],
            )
            .unwrap();
        let claimed = s.claim("me", i64::MAX, 10).unwrap();
        let corrupt = claimed
            .iter()
            .filter(|c| matches!(c, Claimed::Corrupt { .. }))
            .count();
        assert_eq!(corrupt, 2);
        assert!(claimed
            .iter()
            .any(|c| matches!(c, Claimed::Task(p) if p.name == "c")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_garbage_database_is_an_error() {
        let dir = tmp("garbage");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(DB_FILE), vec![0x5a; 8192]).unwrap();
        assert!(Spool::open(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
