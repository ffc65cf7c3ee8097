//! The serving process's view of its workers: for each worker position, the totals of
//! its processes that have exited, how often it was (re)started, and the live cards of
//! its running processes; read into a [`Snapshot`] by the stats and metrics pages.
//!
//! Lives in the master (or the single serving process); a forked worker never touches
//! it, so its lock is safe across `fork`.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::board::{cum, Scoreboard, Scorecard, MAX_CORES};

/// Why the master replaced a worker that was serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recycle {
    /// The worker retired after `--max-requests` (plus its `--max-requests-delta`).
    MaxRequests,
    /// Its resident memory passed `--reload-on-rss`.
    Rss,
    /// It lived `--max-worker-lifetime`.
    Lifetime,
    /// SIGHUP replaced every worker.
    Reload,
}

impl Recycle {
    pub const ALL: [Recycle; 4] = [
        Recycle::MaxRequests,
        Recycle::Rss,
        Recycle::Lifetime,
        Recycle::Reload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Recycle::MaxRequests => "max-requests",
            Recycle::Rss => "rss",
            Recycle::Lifetime => "lifetime",
            Recycle::Reload => "reload",
        }
    }
}

/// One worker position's history.
#[derive(Clone, Default)]
struct Position {
    /// Cumulative counters of its processes that exited.
    totals: Vec<u64>,
    /// Processes started in this position (the first, then each respawn).
    starts: u64,
    exits: u64,
    recycles: [u64; 4],
    /// Unix seconds of the last start.
    last_spawn: u64,
    /// The process serving the position now.
    pid: Option<u32>,
}

/// Every worker position of a serving process, and the scoreboard their processes
/// write to.
pub struct Roster {
    board: Scoreboard,
    positions: Mutex<Vec<Position>>,
    /// Request slots each worker has (uWSGI's cores), at most [`MAX_CORES`] shown.
    cores: usize,
}

/// One worker position as the stats pages show it.
#[derive(Debug, Clone, Default)]
pub struct WorkerView {
    /// 1-based position.
    pub id: usize,
    pub pid: Option<u32>,
    pub accepting: bool,
    pub in_flight: u64,
    pub connections: u64,
    /// Cumulative counters over every process of the position.
    pub cum: Vec<u64>,
    /// Requests of the process serving now.
    pub delta_requests: u64,
    /// Busy cores of the process serving now.
    pub cores_busy: u64,
    pub offload_pending: u64,
    pub fanout_pending: u64,
    pub fanout_open: u64,
    pub starts: u64,
    pub exits: u64,
    pub recycles: [u64; 4],
    pub last_spawn: u64,
    /// Resident and virtual memory of the process serving now, in bytes.
    pub rss: u64,
    pub vsz: u64,
}

impl WorkerView {
    pub fn requests(&self) -> u64 {
        (0..5).map(|c| self.cum[cum::STATUS + c]).sum()
    }
}

/// Every worker at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub workers: Vec<WorkerView>,
    /// Request slots per worker (for uWSGI's `cores`).
    pub cores: usize,
}

impl Snapshot {
    /// A cumulative counter summed over every worker.
    pub fn total(&self, i: usize) -> u64 {
        self.workers.iter().map(|w| w.cum[i]).sum()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Roster {
    /// A roster of `workers` positions whose processes each serve `cores` requests at
    /// once; the board has room for a retiring process beside each new one.
    pub fn new(workers: usize, cores: usize) -> std::io::Result<Roster> {
        let workers = workers.max(1);
        Ok(Roster {
            board: Scoreboard::new(workers * 2 + 8)?,
            positions: Mutex::new(vec![
                Position {
                    totals: vec![0; cum::COUNT],
                    ..Position::default()
                };
                workers
            ]),
            cores: cores.clamp(1, MAX_CORES),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Position>> {
        self.positions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A process is about to start in position `worker` (1-based): its card, or `None`
    /// when the board is full (it then serves uncounted).
    pub fn spawning(&self, worker: usize) -> Option<&'static Scorecard> {
        let mut pos = self.lock();
        let p = pos.get_mut(worker - 1)?;
        p.starts += 1;
        p.last_spawn = unix_now();
        self.board.claim(worker)
    }

    /// The process of `card` has started as `pid`.
    pub fn started(&self, worker: usize, card: Option<&Scorecard>, pid: u32) {
        if let Some(c) = card {
            c.pid.store(u64::from(pid), Ordering::Relaxed);
        }
        if let Some(p) = self.lock().get_mut(worker - 1) {
            p.pid = Some(pid);
        }
    }

    /// The process `pid` is retiring (it stops accepting; a new one takes the position).
    pub fn retiring(&self, pid: u32, why: Recycle) {
        let mut pos = self.lock();
        if let Some(card) = self.card_of(pid) {
            card.accepting.store(0, Ordering::Relaxed);
            let w = card.worker.load(Ordering::Relaxed) as usize;
            if let Some(p) = pos.get_mut(w.wrapping_sub(1)) {
                p.recycles[why as usize] += 1;
                if p.pid == Some(pid) {
                    p.pid = None;
                }
            }
        }
    }

    /// The process `pid` exited: its counters join its position's totals, and its card
    /// is freed. `recycled` when it retired by itself (`--max-requests`).
    pub fn exited(&self, pid: u32, recycled: bool) {
        let mut pos = self.lock();
        let Some(card) = self.card_of(pid) else {
            return;
        };
        let w = card.worker.load(Ordering::Relaxed) as usize;
        if let Some(p) = pos.get_mut(w.wrapping_sub(1)) {
            for (t, c) in p.totals.iter_mut().zip(&card.cum) {
                *t += c.load(Ordering::Relaxed);
            }
            p.exits += 1;
            if recycled {
                p.recycles[Recycle::MaxRequests as usize] += 1;
            }
            if p.pid == Some(pid) {
                p.pid = None;
            }
        }
        card.clear();
    }

    fn card_of(&self, pid: u32) -> Option<&'static Scorecard> {
        self.board.cards().iter().find(|c| {
            c.worker.load(Ordering::Relaxed) != 0 && c.pid.load(Ordering::Relaxed) == pid as u64
        })
    }

    /// Requests the process `pid` has answered.
    pub fn requests_of(&self, pid: u32) -> u64 {
        self.card_of(pid).map_or(0, Scorecard::requests)
    }

    /// Every position now: totals plus the live processes' counters.
    pub fn snapshot(&self) -> Snapshot {
        let pos = self.lock();
        let mut workers: Vec<WorkerView> = pos
            .iter()
            .enumerate()
            .map(|(i, p)| WorkerView {
                id: i + 1,
                pid: p.pid,
                cum: p.totals.clone(),
                starts: p.starts,
                exits: p.exits,
                recycles: p.recycles,
                last_spawn: p.last_spawn,
                ..WorkerView::default()
            })
            .collect();
        for card in self.board.cards() {
            let w = card.worker.load(Ordering::Relaxed) as usize;
            let Some(view) = workers.get_mut(w.wrapping_sub(1)) else {
                continue;
            };
            for (t, c) in view.cum.iter_mut().zip(&card.cum) {
                *t += c.load(Ordering::Relaxed);
            }
            view.in_flight += card.in_flight.load(Ordering::Relaxed);
            view.connections += card.connections.load(Ordering::Relaxed);
            view.offload_pending += card.offload_pending.load(Ordering::Relaxed);
            view.fanout_pending += card.fanout_pending.load(Ordering::Relaxed);
            view.fanout_open += card.fanout_open.load(Ordering::Relaxed);
            if view
                .pid
                .is_some_and(|p| u64::from(p) == card.pid.load(Ordering::Relaxed))
            {
                view.accepting = card.accepting.load(Ordering::Relaxed) == 1;
                view.delta_requests = card.requests();
                view.cores_busy = card.cores_busy.load(Ordering::Relaxed);
            }
        }
        drop(pos);
        for view in &mut workers {
            if let Some((rss, vsz)) = view.pid.and_then(memory_of) {
                view.rss = rss;
                view.vsz = vsz;
            }
        }
        Snapshot {
            workers,
            cores: self.cores,
        }
    }
}

/// Resident and virtual memory of process `pid` in bytes, from `/proc/PID/statm`.
pub fn memory_of(pid: u32) -> Option<(u64, u64)> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let mut f = statm.split_whitespace().map(|v| v.parse::<u64>().ok());
    let vsz = f.next()??;
    let rss = f.next()??;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some((rss * page, vsz * page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_survive_respawns() {
        let r = Roster::new(1, 4).unwrap();
        let card = r.spawning(1).unwrap();
        r.started(1, Some(card), 4242);
        card.begin().done(200, 5);
        card.begin().done(503, 5);
        let s = r.snapshot();
        assert_eq!(s.workers[0].requests(), 2);
        assert_eq!(s.workers[0].delta_requests, 2);
        r.exited(4242, false);
        let card = r.spawning(1).unwrap();
        r.started(1, Some(card), 4343);
        card.begin().done(200, 5);
        let s = r.snapshot();
        let w = &s.workers[0];
        assert_eq!((w.requests(), w.delta_requests), (3, 1));
        assert_eq!((w.starts, w.exits), (2, 1));
        assert_eq!(w.cum[cum::STATUS + 4], 1);
        assert_eq!(w.pid, Some(4343));
    }
}
