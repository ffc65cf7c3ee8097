//! The scoreboard: one fixed-size [`Scorecard`] per worker process in a shared anonymous
//! mapping that the master creates before it forks, so every worker writes its own
//! counters (relaxed atomics, no locks) and the master reads all of them.
//!
//! A card belongs to one worker *process*, not to a worker position: a retiring worker
//! and its replacement each have their own, so gauges (requests in flight, connections
//! open) stay true while both run. When a process exits the master folds its
//! cumulative counters into the position's totals ([`super::registry`]) and frees the
//! card, so per-worker counters only ever grow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Upper bounds (microseconds) of the request-duration histogram's buckets; one more
/// bucket counts the rest. The Prometheus client's default buckets (5 ms to 10 s),
/// extended down to 10 µs so that sub-millisecond responses (a hello world answers in
/// tens of microseconds) fall in buckets of their own.
pub const BUCKETS_US: [u64; 22] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 75_000, 100_000,
    250_000, 500_000, 750_000, 1_000_000, 2_500_000, 5_000_000, 7_500_000, 10_000_000,
];
/// Request slots tracked per worker for uWSGI's `cores` (busy flag, request count).
pub const MAX_CORES: usize = 64;

/// The cumulative counters of a card, by index into [`Scorecard::cum`]; each is folded
/// into its worker's totals when the process exits.
pub mod cum {
    /// Responses by status class: 1xx to 5xx (`STATUS + class - 1`).
    pub const STATUS: usize = 0;
    /// Response body bytes sent.
    pub const TX: usize = 5;
    /// Microseconds from request to the end of its response, summed.
    pub const RT_US: usize = 6;
    /// App exceptions (panics, Python tracebacks, bad responses).
    pub const EXCEPTIONS: usize = 7;
    /// Harakiri kills of this process (0 or 1).
    pub const HARAKIRI: usize = 8;
    /// Microseconds Python threads waited for the GIL, and the waits.
    pub const GIL_WAIT_US: usize = 9;
    pub const GIL_WAITS: usize = 10;
    /// Offload counters as the worker last published them (see `super::publish`).
    pub const OFFLOAD_SUBMITTED: usize = 11;
    pub const OFFLOAD_DONE: usize = 12;
    pub const OFFLOAD_FAILED: usize = 13;
    pub const OFFLOAD_RETRIED: usize = 14;
    pub const OFFLOAD_DEAD: usize = 15;
    pub const OFFLOAD_REJECTED: usize = 16;
    /// Fan-out client counters as last published.
    pub const FANOUT_CALLS: usize = 17;
    pub const FANOUT_ERRORS: usize = 18;
    pub const FANOUT_CONNECTIONS: usize = 19;
    /// Signals the worker handled (stop, reload, log reopen).
    pub const SIGNALS: usize = 20;
    /// Connections answered 503 at `--max-connections`.
    pub const SHED: usize = 21;
    /// The request-duration histogram: one counter per bucket of `BUCKETS_US`, then +Inf.
    pub const HIST: usize = 22;
    /// Requests served per core.
    pub const CORE: usize = HIST + super::BUCKETS_US.len() + 1;
    pub const COUNT: usize = CORE + super::MAX_CORES;
}

/// The live numbers of one worker process. Zeroed memory is a free card.
#[repr(C, align(128))]
pub struct Scorecard {
    /// 0: free; else the worker position (1-based) the process serves.
    pub worker: AtomicU64,
    pub pid: AtomicU64,
    /// 1 while the process accepts connections (0 once it stops or retires).
    pub accepting: AtomicU64,
    /// Requests dispatched to the app and not yet answered in full.
    pub in_flight: AtomicU64,
    /// Client connections open.
    pub connections: AtomicU64,
    /// Offload tasks accepted and not started, and fan-out calls pending, as published.
    pub offload_pending: AtomicU64,
    pub fanout_pending: AtomicU64,
    /// The fan-out client's connections open (in use or pooled), as published.
    pub fanout_open: AtomicU64,
    /// One bit per core (request slot) with a request in it.
    pub cores_busy: AtomicU64,
    pub cum: [AtomicU64; cum::COUNT],
}

impl Scorecard {
    /// A request was handed to the app: counts it in flight and takes a core.
    pub fn begin(&'static self) -> Ticket {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut core = NO_CORE;
        let mut busy = self.cores_busy.load(Ordering::Relaxed);
        while busy != u64::MAX {
            let bit = (!busy).trailing_zeros() as u8;
            match self.cores_busy.compare_exchange_weak(
                busy,
                busy | (1 << bit),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    core = bit;
                    break;
                }
                Err(now) => busy = now,
            }
        }
        Ticket {
            card: self,
            start: Instant::now(),
            core,
        }
    }

    /// Adds `n` to cumulative counter `i`.
    pub fn add(&self, i: usize, n: u64) {
        self.cum[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a published cumulative counter to the publisher's latest value.
    pub fn set(&self, i: usize, v: u64) {
        self.cum[i].store(v, Ordering::Relaxed);
    }

    pub fn get(&self, i: usize) -> u64 {
        self.cum[i].load(Ordering::Relaxed)
    }

    /// Requests answered (the sum of the status classes).
    pub fn requests(&self) -> u64 {
        (0..5).map(|c| self.get(cum::STATUS + c)).sum()
    }

    /// Zeroes every field (the master does it before handing the card to a process).
    pub fn clear(&self) {
        for a in [
            &self.worker,
            &self.pid,
            &self.accepting,
            &self.in_flight,
            &self.connections,
            &self.offload_pending,
            &self.fanout_pending,
            &self.fanout_open,
            &self.cores_busy,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        for a in &self.cum {
            a.store(0, Ordering::Relaxed);
        }
    }
}

const NO_CORE: u8 = u8::MAX;

/// One request in flight on a card; [`Ticket::done`] records its response. Dropped
/// without it (the connection broke first), it only leaves the in-flight count.
pub struct Ticket {
    card: &'static Scorecard,
    start: Instant,
    core: u8,
}

impl Ticket {
    /// The response is over: counts it by status class, with its body bytes and its
    /// duration (in the histogram and the sum).
    pub fn done(self, status: u16, bytes: u64) {
        let card = self.card;
        let us = self.start.elapsed().as_micros() as u64;
        let class = (status / 100).clamp(1, 5) as usize - 1;
        card.add(cum::STATUS + class, 1);
        card.add(cum::TX, bytes);
        card.add(cum::RT_US, us);
        card.add(cum::HIST + bucket(us), 1);
        if self.core != NO_CORE {
            card.add(cum::CORE + self.core as usize, 1);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.card.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.core != NO_CORE {
            self.card
                .cores_busy
                .fetch_and(!(1 << self.core), Ordering::Relaxed);
        }
    }
}

/// The histogram bucket of a duration in microseconds.
pub fn bucket(us: u64) -> usize {
    BUCKETS_US.partition_point(|&b| b < us)
}

/// Counts a client connection open for as long as it lives.
pub struct ConnGuard(Option<&'static Scorecard>);

impl ConnGuard {
    pub fn new(card: Option<&'static Scorecard>) -> ConnGuard {
        if let Some(c) = card {
            c.connections.fetch_add(1, Ordering::Relaxed);
        }
        ConnGuard(card)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The cards of every worker process, in memory shared across `fork`.
pub struct Scoreboard {
    cards: &'static [Scorecard],
}

impl Scoreboard {
    /// Maps `n` zeroed cards, shared with every process forked from now on. The mapping
    /// lives as long as the process (it is never unmapped: forked workers keep using
    /// it).
    pub fn new(n: usize) -> std::io::Result<Scoreboard> {
        let n = n.max(1);
        let len = n * std::mem::size_of::<Scorecard>();
        // SAFETY: an anonymous shared mapping of `len` bytes with no address hint; the
        // kernel returns page-aligned zeroed memory or MAP_FAILED, which is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the mapping is `len` bytes, page-aligned (so aligned for Scorecard),
        // zeroed (a valid Scorecard is all atomics, for which zero is valid), only ever
        // accessed through atomics, and never unmapped, so `'static` holds.
        let cards = unsafe { std::slice::from_raw_parts(ptr as *const Scorecard, n) };
        Ok(Scoreboard { cards })
    }

    pub fn cards(&self) -> &'static [Scorecard] {
        self.cards
    }

    /// A free card, cleared and marked for worker position `worker` (1-based).
    pub fn claim(&self, worker: usize) -> Option<&'static Scorecard> {
        let card = self
            .cards
            .iter()
            .find(|c| c.worker.load(Ordering::Relaxed) == 0)?;
        card.clear();
        card.accepting.store(1, Ordering::Relaxed);
        card.worker.store(worker as u64, Ordering::Relaxed);
        Some(card)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_bounds() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(10), 0);
        assert_eq!(bucket(11), 1);
        assert_eq!(bucket(100), 3);
        assert_eq!(bucket(101), 4);
        assert_eq!(bucket(10_000_000), BUCKETS_US.len() - 1);
        assert_eq!(bucket(10_000_001), BUCKETS_US.len());
    }

    #[test]
    fn tickets_count_and_release() {
        let board = Scoreboard::new(2).unwrap();
        let card = board.claim(1).unwrap();
        let a = card.begin();
        let b = card.begin();
        assert_eq!(card.in_flight.load(Ordering::Relaxed), 2);
        assert_eq!(card.cores_busy.load(Ordering::Relaxed), 0b11);
        a.done(200, 11);
        drop(b);
        assert_eq!(card.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(card.cores_busy.load(Ordering::Relaxed), 0);
        assert_eq!(card.requests(), 1);
        assert_eq!(card.get(cum::TX), 11);
        assert_eq!(card.get(cum::CORE), 1);
        let _c = ConnGuard::new(Some(card));
        assert_eq!(card.connections.load(Ordering::Relaxed), 1);
        assert!(board.claim(2).is_some());
        assert!(board.claim(3).is_none());
    }
}
