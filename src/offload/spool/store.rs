//! The spool's SQLite store.
//!
//! One connection ([`Spool`]) to `SPOOL_DIR/spool.db` (WAL mode, `synchronous=FULL`)
//! holding tasks delayed for long, retries, the dead-letter area and the tasks imported
//! from journals of processes that died. Runners claim due rows under a lease naming
//! their process and delete them when done.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::journal::{self, JournalTask};
use super::owner::owner_alive;
use crate::offload::error::SpoolError;
use crate::offload::task::TaskPayload;

/// File name of the database inside the spool directory.
pub const DB_FILE: &str = "spool.db";

/// Unix time in milliseconds (the store's clock: due times, leases).
pub fn now_ms() -> i64 {
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
        tasks: &[JournalTask],
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
            journal: self.path.parent().map_or(0, journal::count_open),
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
        let me = crate::offload::spool::owner_token();
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
