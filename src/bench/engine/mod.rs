//! The client engine: N std threads, each running a mio loop over its share of the
//! connections, sending pre-built request bytes and counting responses into a per-thread
//! [`Tally`] that is merged at the end.
//!
//! Closed loop (default): every connection sends its next request as soon as the previous
//! response is in. Open loop (`rate`): requests are scheduled at fixed intended start
//! times and latency is measured from those, so a stalled server shows up in the figures
//! instead of silently slowing the generator down (coordinated omission).
//!
//! This file holds the run's configuration, the state its threads share and `run`, which
//! starts the threads and merges their results; `worker` is one thread's loop and
//! `conn` one connection's I/O and response accounting.

mod conn;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use super::stats::Tally;
use super::BenchError;
use worker::worker;

/// What the engine runs: everything already validated.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub addr: SocketAddr,
    /// The bytes of one request.
    pub request: Vec<u8>,
    /// The request is HEAD: responses have no body.
    pub head_request: bool,
    /// Stop after this many requests (`None`: only the time limit stops the run).
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    pub concurrency: usize,
    pub threads: usize,
    pub keep_alive: bool,
    /// Requests written back to back on a connection before reading the responses.
    pub pipeline: usize,
    /// Requests per second over all threads (open loop).
    pub rate: Option<f64>,
    /// Longest wait for progress on a request.
    pub timeout: Duration,
}

/// State shared by the engine threads and the caller (for the progress bar).
#[derive(Debug)]
pub struct Shared {
    claimed: AtomicU64,
    limit: u64,
    /// Requests finished so far (flushed by the threads once per loop turn).
    pub completed: AtomicU64,
    /// Set by the caller (or a SIGINT handler) to end the run early: every thread stops
    /// at its next turn and the report covers what was done.
    pub stop: Arc<AtomicBool>,
    doc_len: OnceLock<u64>,
    server: OnceLock<String>,
    start: OnceLock<Instant>,
}

impl Shared {
    pub fn new(limit: Option<u64>) -> Shared {
        Shared {
            claimed: AtomicU64::new(0),
            limit: limit.unwrap_or(u64::MAX),
            completed: AtomicU64::new(0),
            stop: Arc::new(AtomicBool::new(false)),
            doc_len: OnceLock::new(),
            server: OnceLock::new(),
            start: OnceLock::new(),
        }
    }

    /// Takes up to `max` requests from the global budget.
    fn claim(&self, max: u64) -> u64 {
        let mut cur = self.claimed.load(Ordering::Relaxed);
        loop {
            if cur >= self.limit {
                return 0;
            }
            let take = max.min(self.limit - cur);
            match self.claimed.compare_exchange_weak(
                cur,
                cur + take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(now) => cur = now,
            }
        }
    }
}

/// CPU time one engine thread used.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadCpu {
    pub user: Duration,
    pub system: Duration,
    /// Wall time the thread ran its loop.
    pub wall: Duration,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct EngineResult {
    pub tally: Tally,
    /// From the common start to the last response (or to the time limit).
    pub elapsed: Duration,
    pub cpu: Vec<ThreadCpu>,
    /// Body length of the first 2xx response.
    pub document_length: Option<u64>,
    /// `Server:` header of the first response that had one.
    pub server: Option<String>,
}

/// Runs the load. `shared` must have been made with `Shared::new(cfg.requests)`.
pub fn run(cfg: &EngineConfig, shared: &Arc<Shared>) -> Result<EngineResult, BenchError> {
    if cfg.concurrency == 0 || cfg.threads == 0 || cfg.pipeline == 0 {
        return Err(BenchError::Usage(
            "concurrency, threads and pipeline depth must be at least 1".into(),
        ));
    }
    let threads = cfg.threads.min(cfg.concurrency);
    let barrier = Arc::new(Barrier::new(threads));
    let cfg = Arc::new(cfg.clone());
    let mut handles = Vec::with_capacity(threads);
    for idx in 0..threads {
        let conns = cfg.concurrency / threads + usize::from(idx < cfg.concurrency % threads);
        let (cfg, shared, barrier) = (cfg.clone(), shared.clone(), barrier.clone());
        let h = std::thread::Builder::new()
            .name(format!("bench-{idx}"))
            .spawn(move || worker(idx, threads, conns, &cfg, &shared, &barrier))
            .map_err(BenchError::Thread)?;
        handles.push(h);
    }
    let mut tally = Tally::default();
    let mut cpu = Vec::with_capacity(threads);
    let mut end = None::<Instant>;
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => {
                tally.merge(&r.tally);
                cpu.push(r.cpu);
                end = Some(end.map_or(r.end, |e| e.max(r.end)));
            }
            Ok(Err(e)) => {
                shared.stop.store(true, Ordering::Relaxed);
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(BenchError::Io(io::Error::other("engine thread panicked")));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let start = shared.start.get().copied().unwrap_or_else(Instant::now);
    let elapsed = end.map_or(Duration::ZERO, |e| e.saturating_duration_since(start));
    Ok(EngineResult {
        tally,
        elapsed,
        cpu,
        document_length: shared.doc_len.get().copied(),
        server: shared.server.get().cloned(),
    })
}
