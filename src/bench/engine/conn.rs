//! One connection of an engine thread: its state, finishing its connect, writing its
//! requests, reading and parsing the responses, and recording each one in the tally.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::worker::{count_failures, resend, Ctx};
use crate::bench::parse::{parse_head, BodyDecoder, Framing};
use crate::bench::stats::ErrorKind;

/// Largest response head kept while waiting for its end.
const MAX_HEAD: usize = 64 * 1024;

/// One request on its way.
#[derive(Debug, Clone, Copy)]
pub(super) struct InFlight {
    /// When the request started (its intended start in rate mode).
    pub(super) start: Instant,
    /// Connect time for the first request of a new connection.
    pub(super) connect_us: u64,
    /// The request went out on a connection that had served one before.
    pub(super) reused: bool,
    pub(super) write_done: Option<Instant>,
    pub(super) first_byte: Option<Instant>,
}

enum ReadState {
    Head,
    Body {
        status: u16,
        keep_alive: bool,
        dec: BodyDecoder,
    },
}

pub(super) struct Conn {
    pub(super) sock: Option<TcpStream>,
    pub(super) connected: bool,
    pub(super) connect_start: Instant,
    /// Bytes of `wbuf` to send, and how many are sent.
    pub(super) wlen: usize,
    pub(super) wpos: usize,
    pub(super) inflight: VecDeque<InFlight>,
    read: ReadState,
    /// Bytes of an incomplete response head, kept across reads.
    pending: Vec<u8>,
    /// Responses already received on this socket.
    pub(super) served: u64,
    pub(super) deadline: Instant,
    /// Waiting in the free list for its next scheduled request (rate mode).
    pub(super) parked: bool,
    /// Its poll token (its index in the thread's connection table).
    pub(super) token: usize,
    /// Whether the socket is registered for writability too. Only while connecting or
    /// after a write that would block: otherwise every ACK that frees send buffer
    /// space would wake the generator for nothing.
    pub(super) want_write: bool,
}

impl Conn {
    pub(super) fn new(now: Instant, pipeline: usize, token: usize) -> Conn {
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

/// Handles readiness of `conn`: finishes a connect, sends what is left to send, reads.
pub(super) fn on_event(ctx: &mut Ctx, conn: &mut Conn, ev: Readiness) {
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
pub(super) struct Readiness {
    pub(super) readable: bool,
    pub(super) writable: bool,
    pub(super) error: bool,
    /// The peer closed its side, or the socket has an error: read to EOF.
    pub(super) drain: bool,
}

pub(super) fn do_write(ctx: &mut Ctx, conn: &mut Conn) {
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
pub(super) fn fail(ctx: &mut Ctx, conn: &mut Conn, kind: ErrorKind) {
    let n = conn.inflight.len() as u64;
    count_failures(ctx, n, kind);
    conn.inflight.clear();
    close(ctx, conn);
}

pub(super) fn close(ctx: &mut Ctx, conn: &mut Conn) {
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
