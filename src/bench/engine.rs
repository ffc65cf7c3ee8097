//! The client engine: N std threads, each running a mio loop over its share of the
//! connections, sending pre-built request bytes and counting responses into a per-thread
//! [`Tally`] that is merged at the end.
//!
//! Closed loop (default): every connection sends its next request as soon as the previous
//! response is in. Open loop (`rate`): requests are scheduled at fixed intended start
//! times and latency is measured from those, so a stalled server shows up in the figures
//! instead of silently slowing the generator down (coordinated omission).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::parse::{parse_head, BodyDecoder, Framing};
use super::stats::{ErrorKind, Tally};
use super::BenchError;

/// Size of the per-thread read buffer.
const READ_BUF: usize = 64 * 1024;
/// Largest response head kept while waiting for its end.
const MAX_HEAD: usize = 64 * 1024;
/// Longest a poll waits, so deadlines and the time limit are noticed.
const MAX_POLL: Duration = Duration::from_millis(50);
/// How often in-flight requests are checked against the timeout.
const TIMEOUT_SCAN: Duration = Duration::from_millis(10);

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

struct WorkerResult {
    tally: Tally,
    cpu: ThreadCpu,
    end: Instant,
}

/// One request on its way.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// When the request started (its intended start in rate mode).
    start: Instant,
    /// Connect time for the first request of a new connection.
    connect_us: u64,
    /// The request went out on a connection that had served one before.
    reused: bool,
    write_done: Option<Instant>,
    first_byte: Option<Instant>,
}

enum ReadState {
    Head,
    Body {
        status: u16,
        keep_alive: bool,
        dec: BodyDecoder,
    },
}

struct Conn {
    sock: Option<TcpStream>,
    connected: bool,
    connect_start: Instant,
    /// Bytes of `wbuf` to send, and how many are sent.
    wlen: usize,
    wpos: usize,
    inflight: VecDeque<InFlight>,
    read: ReadState,
    /// Bytes of an incomplete response head, kept across reads.
    pending: Vec<u8>,
    /// Responses already received on this socket.
    served: u64,
    deadline: Instant,
    /// Waiting in the free list for its next scheduled request (rate mode).
    parked: bool,
    /// Its poll token (its index in the thread's connection table).
    token: usize,
    /// Whether the socket is registered for writability too. Only while connecting or
    /// after a write that would block: otherwise every ACK that frees send buffer
    /// space would wake the generator for nothing.
    want_write: bool,
}

impl Conn {
    fn new(now: Instant, pipeline: usize, token: usize) -> Conn {
        Conn {
            sock: None,
            connected: false,
            connect_start: now,
            wlen: 0,
            wpos: 0,
            inflight: VecDeque::with_capacity(pipeline),
            read: ReadState::Head,
            pending: Vec::new(),
            served: 0,
            deadline: now,
            parked: false,
            token,
            want_write: false,
        }
    }
}

/// Per-thread context shared by the connection handlers.
struct Ctx<'a> {
    cfg: &'a EngineConfig,
    shared: &'a Shared,
    poll: Poll,
    tally: Tally,
    /// `pipeline` copies of the request back to back.
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    now: Instant,
    /// No more requests to claim.
    exhausted: bool,
    /// Completions not yet added to `shared.completed`.
    unflushed: u64,
    want_server: bool,
}

fn worker(
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
fn resend(ctx: &mut Ctx, conn: &mut Conn) {
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
fn count_failures(ctx: &mut Ctx, k: u64, kind: ErrorKind) {
    for _ in 0..k {
        ctx.tally.errors.add(kind);
    }
    ctx.tally.completed += k;
    ctx.unflushed += k;
}

/// Handles readiness of `conn`: finishes a connect, sends what is left to send, reads.
fn on_event(ctx: &mut Ctx, conn: &mut Conn, ev: Readiness) {
    if conn.sock.is_none() {
        return;
    }
    if !conn.connected {
        if ev.error {
            return fail(ctx, conn, ErrorKind::Connect);
        }
        if !ev.writable {
            // Readable before writable: only a failed connect does that; ask the socket.
            let sock = conn.sock.as_ref().expect("checked above");
            match sock.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => return fail(ctx, conn, ErrorKind::Connect),
            }
        }
        // A connecting socket turns writable once connected. A connect that failed
        // anyway shows up as an error of the first write, counted as a connect error.
        conn.connected = true;
        let us = micros(ctx.now.saturating_duration_since(conn.connect_start));
        // ab's ctime: from the request's start to the connection being up.
        if let Some(front) = conn.inflight.front_mut() {
            front.connect_us = us.max(micros(ctx.now.saturating_duration_since(front.start)));
        }
    }
    if conn.wpos < conn.wlen {
        do_write(ctx, conn);
    }
    if conn.sock.is_some() && (ev.readable || ev.drain) {
        do_read(ctx, conn, ev.drain);
    }
}

/// What an event said about a socket.
#[derive(Debug, Clone, Copy)]
struct Readiness {
    readable: bool,
    writable: bool,
    error: bool,
    /// The peer closed its side, or the socket has an error: read to EOF.
    drain: bool,
}

fn do_write(ctx: &mut Ctx, conn: &mut Conn) {
    let Some(sock) = conn.sock.as_mut() else {
        return;
    };
    while conn.wpos < conn.wlen {
        match sock.write(&ctx.wbuf[conn.wpos..conn.wlen]) {
            Ok(0) => return fail(ctx, conn, ErrorKind::Write),
            Ok(n) => conn.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !conn.want_write {
                    conn.want_write = true;
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if ctx
                        .poll
                        .registry()
                        .reregister(sock, Token(conn.token), interest)
                        .is_err()
                    {
                        return fail(ctx, conn, ErrorKind::Write);
                    }
                }
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let refused = matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotConnected
                );
                let kind = if refused && conn.served == 0 && conn.wpos == 0 {
                    ErrorKind::Connect
                } else {
                    ErrorKind::Write
                };
                return fail(ctx, conn, kind);
            }
        }
    }
    if conn.want_write {
        conn.want_write = false;
        let _ = ctx
            .poll
            .registry()
            .reregister(sock, Token(conn.token), Interest::READABLE);
    }
    // The write went out within this loop turn: its timestamp is close enough.
    let now = ctx.now;
    for f in conn.inflight.iter_mut() {
        f.write_done.get_or_insert(now);
    }
}

fn do_read(ctx: &mut Ctx, conn: &mut Conn, drain: bool) {
    let mut buf = std::mem::take(&mut ctx.rbuf);
    while let Some(sock) = conn.sock.as_mut() {
        match sock.read(&mut buf) {
            Ok(0) => {
                on_eof(ctx, conn);
                break;
            }
            Ok(n) => {
                // A response ends when its last bytes are read (as wrk times it), not
                // when the event that announced them was taken from the poll.
                ctx.now = Instant::now();
                ctx.tally.bytes_total += n as u64;
                conn.deadline = ctx.now + ctx.cfg.timeout;
                if !process(ctx, conn, &buf[..n]) {
                    break;
                }
                // A short read drained the socket: Linux signals data arriving after it
                // with a new edge, so the WouldBlock read can be skipped. Not so for a
                // FIN that came with the data: its edge is this one, so read on to EOF.
                if n < buf.len() && !drain {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let kind = match e.kind() {
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                        if conn.inflight.is_empty() {
                            // An idle keep-alive connection the server dropped.
                            close(ctx, conn);
                            break;
                        }
                        ErrorKind::Read
                    }
                    _ => ErrorKind::Read,
                };
                fail(ctx, conn, kind);
                break;
            }
        }
    }
    ctx.rbuf = buf;
}

/// Handles bytes read; returns false when the connection was closed.
fn process(ctx: &mut Ctx, conn: &mut Conn, data: &[u8]) -> bool {
    if conn.pending.is_empty() {
        process_bytes(ctx, conn, data)
    } else {
        let mut joined = std::mem::take(&mut conn.pending);
        joined.extend_from_slice(data);
        let ok = process_bytes(ctx, conn, &joined);
        if conn.pending.is_empty() {
            // Keep the allocation for the next partial head.
            joined.clear();
            conn.pending = joined;
        }
        ok
    }
}

fn process_bytes(ctx: &mut Ctx, conn: &mut Conn, mut input: &[u8]) -> bool {
    while !input.is_empty() {
        if conn.inflight.is_empty() {
            // Bytes nobody asked for: the previous response was longer than it said.
            ctx.tally.errors.extra_bytes += 1;
            close(ctx, conn);
            return false;
        }
        match &mut conn.read {
            ReadState::Head => {
                if let Some(f) = conn.inflight.front_mut() {
                    f.first_byte.get_or_insert(ctx.now);
                }
                match parse_head(input, ctx.cfg.head_request, ctx.want_server) {
                    Ok(None) => {
                        if input.len() > MAX_HEAD {
                            fail(ctx, conn, ErrorKind::Parse);
                            return false;
                        }
                        conn.pending.extend_from_slice(input);
                        return true;
                    }
                    Err(_) => {
                        fail(ctx, conn, ErrorKind::Parse);
                        return false;
                    }
                    Ok(Some(head)) => {
                        input = &input[head.len..];
                        if head.is_interim() {
                            continue;
                        }
                        if let Some(s) = head.server {
                            let _ = ctx.shared.server.set(s);
                            ctx.want_server = false;
                        }
                        let dec = BodyDecoder::new(head.framing);
                        let keep_alive = head.keep_alive && head.framing != Framing::Close;
                        if dec.is_done() {
                            if !complete(ctx, conn, head.status, 0, keep_alive) {
                                return false;
                            }
                        } else {
                            conn.read = ReadState::Body {
                                status: head.status,
                                keep_alive,
                                dec,
                            };
                        }
                    }
                }
            }
            ReadState::Body {
                status,
                keep_alive,
                dec,
            } => {
                let used = match dec.feed(input) {
                    Ok(n) => n,
                    Err(_) => {
                        fail(ctx, conn, ErrorKind::Parse);
                        return false;
                    }
                };
                input = &input[used..];
                if dec.is_done() {
                    let (st, ka, len) = (*status, *keep_alive, dec.body_len);
                    conn.read = ReadState::Head;
                    if !complete(ctx, conn, st, len, ka) {
                        return false;
                    }
                }
            }
        }
    }
    true
}

/// Records the response at the front; returns false when the connection was closed.
fn complete(ctx: &mut Ctx, conn: &mut Conn, status: u16, body_len: u64, keep_alive: bool) -> bool {
    let Some(f) = conn.inflight.pop_front() else {
        return false;
    };
    let now = ctx.now;
    let total = micros(now.saturating_duration_since(f.start));
    let connect = f.connect_us.min(total);
    let waiting = match (f.write_done, f.first_byte) {
        (Some(w), Some(b)) => micros(b.saturating_duration_since(w)),
        _ => 0,
    };
    let t = &mut ctx.tally;
    t.completed += 1;
    ctx.unflushed += 1;
    conn.served += 1;
    t.count_status(status);
    let ok = (200..300).contains(&status);
    if !ok {
        t.errors.non_2xx += 1;
    }
    let mut length_error = false;
    if ok {
        let doc = *ctx.shared.doc_len.get_or_init(|| body_len);
        length_error = doc != body_len;
    }
    if length_error {
        t.errors.add(ErrorKind::Length);
    } else {
        t.total.record(total);
        t.connect.record(connect);
        t.processing.record(total - connect);
        t.waiting.record(waiting);
        t.bytes_body += body_len;
        if f.reused {
            t.keep_alive_requests += 1;
        }
    }
    if !keep_alive || !ctx.cfg.keep_alive {
        close(ctx, conn);
        if !conn.inflight.is_empty() {
            resend(ctx, conn);
        }
        return false;
    }
    true
}

fn on_eof(ctx: &mut Ctx, conn: &mut Conn) {
    if let ReadState::Body { status, dec, .. } = &conn.read {
        if dec.is_close_delimited() {
            let (st, len) = (*status, dec.body_len);
            conn.read = ReadState::Head;
            complete(ctx, conn, st, len, false);
            return;
        }
        if dec.is_short() {
            return fail(ctx, conn, ErrorKind::Length);
        }
    }
    if conn.inflight.is_empty() {
        close(ctx, conn);
    } else {
        fail(ctx, conn, ErrorKind::Closed);
    }
}

/// Counts every request in flight on `conn` as failed and closes it.
fn fail(ctx: &mut Ctx, conn: &mut Conn, kind: ErrorKind) {
    let n = conn.inflight.len() as u64;
    count_failures(ctx, n, kind);
    conn.inflight.clear();
    close(ctx, conn);
}

fn close(ctx: &mut Ctx, conn: &mut Conn) {
    if let Some(mut s) = conn.sock.take() {
        // Closing the socket removes it from epoll (its fd is never duplicated), so the
        // epoll_ctl call is only needed elsewhere.
        if !cfg!(target_os = "linux") {
            let _ = ctx.poll.registry().deregister(&mut s);
        }
        drop(s);
    }
    conn.connected = false;
    conn.read = ReadState::Head;
    conn.pending.clear();
    conn.wlen = 0;
    conn.wpos = 0;
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
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
