//! One engine thread: its mio loop over its share of the connections, the schedule of
//! the open loop, claiming requests from the shared budget and opening connections.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::conn::{close, do_write, fail, on_event, Conn, InFlight, Readiness};
use super::{EngineConfig, Shared, ThreadCpu};
use crate::bench::stats::{ErrorKind, Tally};
use crate::bench::BenchError;

/// Size of the per-thread read buffer.
const READ_BUF: usize = 64 * 1024;
/// Longest a poll waits, so deadlines and the time limit are noticed.
const MAX_POLL: Duration = Duration::from_millis(50);
/// How often in-flight requests are checked against the timeout.
const TIMEOUT_SCAN: Duration = Duration::from_millis(10);

pub(super) struct WorkerResult {
    pub(super) tally: Tally,
    pub(super) cpu: ThreadCpu,
    pub(super) end: Instant,
}

/// Per-thread context shared by the connection handlers.
pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a EngineConfig,
    pub(super) shared: &'a Shared,
    pub(super) poll: Poll,
    pub(super) tally: Tally,
    /// `pipeline` copies of the request back to back.
    pub(super) wbuf: Vec<u8>,
    pub(super) rbuf: Vec<u8>,
    pub(super) now: Instant,
    /// No more requests to claim.
    pub(super) exhausted: bool,
    /// Completions not yet added to `shared.completed`.
    pub(super) unflushed: u64,
    pub(super) want_server: bool,
}

pub(super) fn worker(
    idx: usize,
    threads: usize,
    nconns: usize,
    cfg: &EngineConfig,
    shared: &Shared,
    barrier: &Barrier,
) -> Result<WorkerResult, BenchError> {
    let poll = Poll::new().map_err(BenchError::Io)?;
    let mut events = Events::with_capacity(1024.min(nconns * 2).max(16));
    let mut wbuf = Vec::with_capacity(cfg.request.len() * cfg.pipeline);
    for _ in 0..cfg.pipeline {
        wbuf.extend_from_slice(&cfg.request);
    }
    let mut ctx = Ctx {
        cfg,
        shared,
        poll,
        tally: Tally::default(),
        wbuf,
        rbuf: vec![0; READ_BUF],
        now: Instant::now(),
        exhausted: false,
        unflushed: 0,
        want_server: true,
    };
    barrier.wait();
    let t0 = *shared.start.get_or_init(Instant::now);
    let cpu0 = thread_cpu();
    ctx.now = Instant::now();
    let end_at = cfg.duration.map(|d| t0 + d);
    let mut conns: Vec<Conn> = (0..nconns)
        .map(|i| Conn::new(ctx.now, cfg.pipeline, i))
        .collect();

    // Rate mode: thread `idx` owns slots idx, idx + threads, idx + 2*threads, ... of the
    // global schedule, so the threads together send at `rate`.
    let slot_at = |n: u64, rate: f64| {
        t0 + Duration::from_secs_f64((n as f64 * threads as f64 + idx as f64) / rate)
    };
    let mut slot_no: u64 = 0;
    let mut parked: Vec<usize> = Vec::new();
    if cfg.rate.is_some() {
        parked.extend((0..nconns).rev());
        for c in conns.iter_mut() {
            c.parked = true;
        }
    } else {
        for (i, c) in conns.iter_mut().enumerate() {
            start_next(&mut ctx, c, i, None);
        }
    }
    let mut last_scan = ctx.now;
    let mut freed: Vec<usize> = Vec::with_capacity(nconns);
    // When the time limit or a stop request ended the run (requests still in flight are
    // abandoned, as ab and wrk do).
    let mut stopped_at: Option<Instant> = None;
    loop {
        // Start due requests on free connections (rate mode). When every connection is
        // busy the due requests wait, and their latency counts from their slot.
        if let Some(rate) = cfg.rate {
            while !ctx.exhausted && slot_at(slot_no, rate) <= ctx.now {
                let Some(i) = parked.pop() else { break };
                conns[i].parked = false;
                start_next(&mut ctx, &mut conns[i], i, Some(slot_at(slot_no, rate)));
                if ctx.exhausted {
                    break;
                }
                // The slot is used, whether the request went out or failed to connect.
                slot_no += 1;
                if conns[i].inflight.is_empty() {
                    conns[i].parked = true;
                    parked.push(i);
                }
            }
        }
        if ctx.unflushed > 0 {
            shared.completed.fetch_add(ctx.unflushed, Ordering::Relaxed);
            ctx.unflushed = 0;
        }
        if ctx.exhausted && conns.iter().all(|c| c.inflight.is_empty()) {
            break;
        }
        if shared.stop.load(Ordering::Relaxed) {
            stopped_at = Some(ctx.now);
            break;
        }
        if let Some(end) = end_at {
            if ctx.now >= end {
                stopped_at = Some(end);
                break;
            }
        }
        let mut wait = MAX_POLL;
        if let Some(end) = end_at {
            wait = wait.min(end.saturating_duration_since(ctx.now));
        }
        if let Some(rate) = cfg.rate {
            if !parked.is_empty() && !ctx.exhausted {
                wait = wait.min(slot_at(slot_no, rate).saturating_duration_since(ctx.now));
            }
        }
        if let Err(e) = ctx.poll.poll(&mut events, Some(wait)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(BenchError::Io(e));
            }
        }
        ctx.now = Instant::now();
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(conn) = conns.get_mut(i) else {
                continue;
            };
            // Per event, not per poll: a long batch must not shorten the later latencies.
            ctx.now = Instant::now();
            let r = Readiness {
                readable: ev.is_readable(),
                writable: ev.is_writable(),
                error: ev.is_error(),
                drain: ev.is_read_closed() || ev.is_error(),
            };
            on_event(&mut ctx, conn, r);
            if conn.inflight.is_empty() {
                freed.push(i);
            }
        }
        // The next requests go out once this batch of events is handled, as wrk sends
        // them: a request's latency then starts when it is written, and does not include
        // the generator working through the rest of the batch before it can read the
        // answer (that is the generator's queue, not the server's).
        for i in freed.drain(..) {
            if conns[i].inflight.is_empty() {
                release(&mut ctx, &mut conns[i], i, &mut parked);
            }
        }
        if ctx.now.duration_since(last_scan) >= TIMEOUT_SCAN {
            last_scan = ctx.now;
            for (i, conn) in conns.iter_mut().enumerate() {
                if !conn.inflight.is_empty() && conn.deadline <= ctx.now {
                    fail(&mut ctx, conn, ErrorKind::Timeout);
                }
                // Also restarts connections whose last connect failed at once.
                if conn.inflight.is_empty() {
                    release(&mut ctx, conn, i, &mut parked);
                }
            }
        }
    }
    let end = stopped_at.unwrap_or(ctx.now);
    shared.completed.fetch_add(ctx.unflushed, Ordering::Relaxed);
    let cpu1 = thread_cpu();
    let cpu = ThreadCpu {
        user: cpu1.0.saturating_sub(cpu0.0),
        system: cpu1.1.saturating_sub(cpu0.1),
        wall: ctx.now.saturating_duration_since(t0),
    };
    Ok(WorkerResult {
        tally: ctx.tally,
        cpu,
        end,
    })
}

/// A connection with nothing in flight: parks it (rate mode) or starts its next request.
fn release(ctx: &mut Ctx, conn: &mut Conn, token: usize, parked: &mut Vec<usize>) {
    if ctx.exhausted {
        return;
    }
    if ctx.cfg.rate.is_some() {
        if !conn.parked {
            conn.parked = true;
            parked.push(token);
        }
    } else {
        start_next(ctx, conn, token, None);
    }
}

/// Claims the next request(s) for `conn` and sends them, opening a connection if needed.
fn start_next(ctx: &mut Ctx, conn: &mut Conn, token: usize, intended: Option<Instant>) {
    if ctx.exhausted {
        return;
    }
    let max = if intended.is_some() || !ctx.cfg.keep_alive {
        1
    } else {
        ctx.cfg.pipeline as u64
    };
    let k = ctx.shared.claim(max);
    if k == 0 {
        ctx.exhausted = true;
        close(ctx, conn);
        return;
    }
    if conn.connected {
        // On an open connection the request starts when it is written (now), not when
        // the event that freed the connection was taken from the poll: parsing the
        // previous response is the generator's time, not the server's.
        ctx.now = Instant::now();
    }
    let now = ctx.now;
    if conn.sock.is_none() && !open(ctx, conn, token) {
        count_failures(ctx, k, ErrorKind::Connect);
        return;
    }
    let start = intended.unwrap_or(now);
    for _ in 0..k {
        conn.inflight.push_back(InFlight {
            start,
            connect_us: 0,
            reused: conn.served > 0,
            write_done: None,
            first_byte: None,
        });
    }
    conn.wlen = ctx.cfg.request.len() * k as usize;
    conn.wpos = 0;
    conn.deadline = now + ctx.cfg.timeout;
    if conn.connected {
        do_write(ctx, conn);
    }
}

/// Starts a non-blocking connect for `conn` (a new socket; the old one must be closed);
/// false if it failed at once.
fn open(ctx: &mut Ctx, conn: &mut Conn, token: usize) -> bool {
    let Ok(mut s) = TcpStream::connect(ctx.cfg.addr) else {
        return false;
    };
    // One write per request (or per pipelined batch) after the previous response: Nagle
    // never holds those back, so TCP_NODELAY only matters for bodies sent in pieces.
    if ctx.cfg.keep_alive || ctx.cfg.request.len() > 8192 {
        let _ = s.set_nodelay(true);
    }
    let interest = Interest::READABLE | Interest::WRITABLE;
    if ctx
        .poll
        .registry()
        .register(&mut s, Token(token), interest)
        .is_err()
    {
        return false;
    }
    conn.sock = Some(s);
    conn.want_write = true;
    conn.connected = false;
    conn.connect_start = ctx.now;
    conn.served = 0;
    ctx.tally.connections += 1;
    true
}

/// The server announced it would close while pipelined requests were still unanswered:
/// send them again on a new connection, as an HTTP client must. Their latency keeps
/// counting from their original start.
pub(super) fn resend(ctx: &mut Ctx, conn: &mut Conn) {
    let n = conn.inflight.len();
    if !open(ctx, conn, conn.token) {
        let lost = n as u64;
        conn.inflight.clear();
        count_failures(ctx, lost, ErrorKind::Connect);
        return;
    }
    for f in conn.inflight.iter_mut() {
        f.reused = false;
        f.write_done = None;
        f.first_byte = None;
    }
    conn.wlen = ctx.cfg.request.len() * n;
    conn.wpos = 0;
    conn.deadline = ctx.now + ctx.cfg.timeout;
}

/// Counts `k` requests as finished and failed with `kind`.
pub(super) fn count_failures(ctx: &mut Ctx, k: u64, kind: ErrorKind) {
    for _ in 0..k {
        ctx.tally.errors.add(kind);
    }
    ctx.tally.completed += k;
    ctx.unflushed += k;
}

/// (user, system) CPU time of the calling thread.
fn thread_cpu() -> (Duration, Duration) {
    #[cfg(target_os = "linux")]
    let who = nix::sys::resource::UsageWho::RUSAGE_THREAD;
    #[cfg(not(target_os = "linux"))]
    let who = nix::sys::resource::UsageWho::RUSAGE_SELF;
    match nix::sys::resource::getrusage(who) {
        Ok(u) => (tv(u.user_time()), tv(u.system_time())),
        Err(_) => (Duration::ZERO, Duration::ZERO),
    }
}

fn tv(t: nix::sys::time::TimeVal) -> Duration {
    Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
}
