//! Per-process offload counters, and the snapshot the metrics endpoint will read.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated by every strategy with relaxed atomics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Submissions accepted.
    pub submitted: AtomicU64,
    /// Submissions refused (queue full, unknown task, too large, shutting down, I/O).
    pub rejected: AtomicU64,
    /// Tasks executing right now in this process.
    pub running: AtomicU64,
    pub completed: AtomicU64,
    /// Failed runs (each attempt that failed, including ones later retried).
    pub failed: AtomicU64,
    /// Failed runs scheduled again (spool).
    pub retried: AtomicU64,
    /// Tasks moved to the dead-letter area (spool).
    pub dead: AtomicU64,
    /// Tasks run again after their runner died mid-run (spool, at-least-once).
    pub redelivered: AtomicU64,
    /// Tasks abandoned by a shutdown that timed out.
    pub dropped: AtomicU64,
}

/// A point-in-time copy of [`Counters`] plus the current queue depth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    pub submitted: u64,
    pub rejected: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead: u64,
    pub redelivered: u64,
    pub dropped: u64,
    /// Tasks accepted but not started (in memory, or pending in the spool as seen by
    /// this process).
    pub queue_depth: u64,
}

impl Counters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn dec(c: &AtomicU64) {
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    pub fn snapshot(&self, queue_depth: u64) -> CounterSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            submitted: g(&self.submitted),
            rejected: g(&self.rejected),
            running: g(&self.running),
            completed: g(&self.completed),
            failed: g(&self.failed),
            retried: g(&self.retried),
            dead: g(&self.dead),
            redelivered: g(&self.redelivered),
            dropped: g(&self.dropped),
            queue_depth,
        }
    }

    /// Records one finished run.
    pub(crate) fn finished(&self, ok: bool) {
        Counters::dec(&self.running);
        if ok {
            Counters::inc(&self.completed);
        } else {
            Counters::inc(&self.failed);
        }
    }
}
