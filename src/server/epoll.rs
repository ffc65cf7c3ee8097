//! The `epoll` model (an event-loop server): one readiness loop per worker over
//! non-blocking sockets (every listener, TCP or unix, and its connections), with mio. Reads and writes go as far as the kernel lets them
//! (partial writes resume on the next writable edge); pipelined requests are answered
//! in order with coalesced writes; a reply the app defers wakes the loop through a
//! per-connection waker, so a slow handler never holds up other connections.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::accept::{self, AcceptError};
use super::conn::{Conn, Step};
use super::listen::{Protocol, Stream};
use super::{Env, Listener, ServerError};
use crate::app::CallContext;

const WAKER: Token = Token(usize::MAX - 2);
/// Listener `i` has token `FIRST_LISTENER + i`; connections have tokens below.
const FIRST_LISTENER: usize = usize::MAX - 1024 * 1024;
/// How often idle and slow connections are checked against the timeouts.
const SWEEP: Duration = Duration::from_millis(500);
/// Size of the loop's shared read buffer.
const SCRATCH: usize = 64 * 1024;

/// Tokens woken by app futures, drained by the loop.
struct WakeQueue {
    ready: Mutex<Vec<usize>>,
    waker: mio::Waker,
}

struct ConnWaker {
    slot: usize,
    queue: Arc<WakeQueue>,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let mut q = self.queue.ready.lock().unwrap_or_else(|p| p.into_inner());
        let first = q.is_empty();
        q.push(self.slot);
        drop(q);
        if first {
            let _ = self.queue.waker.wake();
        }
    }
}

struct Entry {
    stream: Stream,
    conn: Conn,
    waker: Waker,
    /// Output is waiting for a writable edge.
    blocked_write: bool,
    /// The socket may have unread input (a readable edge came, or no read has seen it
    /// drained yet). Saves a read that would only say EAGAIN.
    readable: bool,
    /// The peer closed its sending side (the event said so). Its end of stream must
    /// still be read even after a short read drained the data before it: no further
    /// edge comes for it.
    peer_closed: bool,
}

struct Loop {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: Vec<Option<Entry>>,
    free: Vec<usize>,
    open: usize,
    queue: Arc<WakeQueue>,
    env: Arc<Env>,
    accepting: bool,
    /// Accept is paused (out of descriptors or memory).
    accept_paused_until: Option<Instant>,
    /// Accept is paused because the app is saturated (see `Handler::saturated`); new
    /// clients wait in the backlog, where another worker process may take them.
    app_full: bool,
    /// With several processes and an app with a bound on requests (`idle_threads`): new
    /// connections whose first request is on its way, counted against the idle threads.
    arriving: accept::Arrivals,
    scratch: Vec<u8>,
}

pub fn run(listeners: Vec<Listener>, env: Arc<Env>) -> Result<(), ServerError> {
    if env.app.hands_off() {
        super::defer_to_app_threads();
    }
    let poll = Poll::new()?;
    for (i, l) in listeners.iter().enumerate() {
        l.set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&l.as_raw_fd()),
            Token(FIRST_LISTENER + i),
            Interest::READABLE,
        )?;
    }
    let waker = mio::Waker::new(poll.registry(), WAKER)?;
    let queue = Arc::new(WakeQueue {
        ready: Mutex::new(Vec::new()),
        waker,
    });
    {
        let q = queue.clone();
        env.shutdown.on_trigger(move || {
            let _ = q.waker.wake();
        });
    }
    let mut lp = Loop {
        poll,
        listeners,
        conns: Vec::new(),
        free: Vec::new(),
        open: 0,
        queue,
        env,
        accepting: true,
        accept_paused_until: None,
        app_full: false,
        arriving: accept::Arrivals::default(),
        scratch: vec![0; SCRATCH],
    };
    lp.run()
}

impl Loop {
    fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        let mut stop_deadline: Option<Instant> = None;
        let mut woken = Vec::new();
        loop {
            if self.env.shutdown.is_triggered() && stop_deadline.is_none() {
                stop_deadline = Some(Instant::now() + self.env.config.timeouts.shutdown);
                if !self.env.shutdown.is_handover() {
                    // The last process on this socket: serve the connections already
                    // waiting in the backlog, then stop.
                    self.accept_paused_until = None;
                    self.accept_all()?;
                }
                self.stop_accepting();
                // Connections with nothing in progress end after the stop grace.
                next_sweep = Instant::now();
            }
            if let Some(deadline) = stop_deadline {
                if self.open == 0 || Instant::now() >= deadline {
                    return Ok(());
                }
            }
            let timeout = if self.app_full && !self.arriving.is_empty() {
                accept::Arrivals::WAIT / 10
            } else {
                next_sweep.saturating_duration_since(Instant::now())
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            self.env.app.batch_begin();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    Token(t) if t >= FIRST_LISTENER => self.accept_from(t - FIRST_LISTENER)?,
                    Token(slot) => {
                        if let Some(e) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                            if ev.is_writable() {
                                e.blocked_write = false;
                            }
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                e.readable = true;
                            }
                            if ev.is_read_closed() || ev.is_error() {
                                e.peer_closed = true;
                            }
                        }
                        self.drive(slot);
                    }
                }
            }
            {
                let mut q = self.queue.ready.lock().unwrap_or_else(|p| p.into_inner());
                std::mem::swap(&mut *q, &mut woken);
            }
            for slot in woken.drain(..) {
                self.drive(slot);
            }
            if self.app_full && self.app_has_room() {
                self.app_full = false;
                self.accept_all()?;
            }
            self.env.app.batch_end();
            let now = Instant::now();
            if now >= next_sweep {
                next_sweep = now + SWEEP;
                self.sweep(now);
                if let Some(until) = self.accept_paused_until {
                    if now >= until {
                        self.accept_paused_until = None;
                        self.accept_all()?;
                    }
                }
            }
        }
    }

    fn stop_accepting(&mut self) {
        if self.accepting {
            self.accepting = false;
            for l in &self.listeners {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&l.as_raw_fd()));
            }
        }
    }

    /// Accepts what every listener has waiting.
    fn accept_all(&mut self) -> Result<(), ServerError> {
        for i in 0..self.listeners.len() {
            self.accept_from(i)?;
        }
        Ok(())
    }

    /// Accepts what listener `i` has waiting (the listeners are edge-triggered).
    fn accept_from(&mut self, i: usize) -> Result<(), ServerError> {
        let Some(protocol) = self.listeners.get(i).map(Listener::protocol) else {
            return Ok(());
        };
        while self.accepting && self.accept_paused_until.is_none() {
            if !self.app_has_room() {
                self.app_full = true;
                return Ok(());
            }
            match self.listeners[i].accept(true) {
                Ok((stream, peer)) => {
                    let max = self.env.config.max_connections;
                    let shed = self.open >= max && !self.make_room();
                    if shed && self.open >= max + accept::shed_budget(max) {
                        // Even answering is too much: close at once.
                        continue;
                    }
                    let slot = self.add(stream, peer, protocol, shed)?;
                    if let Some(slot) = slot.filter(|_| self.counts_arrivals()) {
                        self.arriving.push(slot);
                    }
                }
                Err(e) => match accept::classify(&e) {
                    AcceptError::WouldBlock => return Ok(()),
                    AcceptError::Retry => {}
                    AcceptError::Backoff => {
                        self.accept_paused_until = Some(Instant::now() + accept::BACKOFF);
                        return Ok(());
                    }
                    AcceptError::Fatal => return Err(e.into()),
                },
            }
        }
        Ok(())
    }

    /// Whether new connections count against the app's idle threads (see `arriving`).
    fn counts_arrivals(&self) -> bool {
        self.env.config.processes > 1 && self.env.app.idle_threads().is_some()
    }

    /// Whether the app can take another client: it is not saturated, and (see
    /// `arriving`) has more idle threads than clients whose first request is on its way.
    fn app_has_room(&mut self) -> bool {
        if self.env.app.saturated() {
            return false;
        }
        if !self.counts_arrivals() {
            return true;
        }
        let conns = &self.conns;
        let arriving = self
            .arriving
            .count(|slot| Some(&conns.get(slot)?.as_ref()?.conn));
        self.env
            .app
            .idle_threads()
            .is_none_or(|idle| arriving < idle)
    }

    /// Takes a new connection into the loop; `shed` answers it 503 at once. Returns its
    /// slot while it is open.
    fn add(
        &mut self,
        stream: Stream,
        peer: Option<std::net::SocketAddr>,
        protocol: Protocol,
        shed: bool,
    ) -> Result<Option<usize>, ServerError> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        if slot >= FIRST_LISTENER {
            return Ok(None);
        }
        self.poll.registry().register(
            &mut SourceFd(&stream.as_raw_fd()),
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let local = stream.local_addr();
        let waker = Waker::from(Arc::new(ConnWaker {
            slot,
            queue: self.queue.clone(),
        }));
        let mut conn = Conn::new(peer, local, protocol);
        if shed {
            conn.shed();
        }
        self.conns[slot] = Some(Entry {
            stream,
            conn,
            waker,
            blocked_write: false,
            readable: true,
            peer_closed: false,
        });
        self.open += 1;
        // Data often arrives with the connection: try at once instead of waiting for
        // the readable edge.
        self.drive(slot);
        Ok(self.conns[slot].as_ref().map(|_| slot))
    }

    /// At `--max-connections`: closes the idle keep-alive connections that have waited
    /// longest (an eighth of them, at least one). False when none is idle.
    fn make_room(&mut self) -> bool {
        let slots = accept::longest_idle(
            self.conns
                .iter()
                .enumerate()
                .filter_map(|(slot, e)| Some((slot, &e.as_ref()?.conn))),
        );
        for &slot in &slots {
            self.close(slot);
        }
        !slots.is_empty()
    }

    /// Advances one connection as far as it can go without blocking.
    fn drive(&mut self, slot: usize) {
        let env = self.env.clone();
        let Some(e) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let scratch = &mut self.scratch;
        let call = CallContext { may_block: false };
        let mut cx = Context::from_waker(&e.waker);
        let busy = || env.prefer_close(env.app.saturated());
        let close = loop {
            if e.blocked_write {
                break false;
            }
            match e.conn.poll(&env, &call, &mut cx, &busy) {
                Step::Flush => match write_out(&mut e.stream, &mut e.conn) {
                    Ok(true) => e.conn.write_done(),
                    Ok(false) => {
                        e.conn.write_blocked(Instant::now());
                        e.blocked_write = true;
                        break false;
                    }
                    Err(_) => break true,
                },
                // This loop admits every request as it arrives.
                Step::Admit => e.conn.set_gate(false),
                Step::Pending if !e.conn.wants_input() => break false,
                Step::ShutdownWrite => {
                    let _ = e.stream.shutdown(std::net::Shutdown::Write);
                }
                Step::Close => break true,
                // Reading, or reading while the app works (its request body, or the
                // client leaving).
                Step::Read | Step::Pending => {
                    if !e.readable && !e.peer_closed {
                        break false;
                    }
                    match read_in(&mut e.stream, &mut e.conn, scratch) {
                        Ok(ReadOutcome::Data { drained }) => {
                            e.conn.received(Instant::now());
                            e.readable = !drained;
                        }
                        Ok(ReadOutcome::WouldBlock) => {
                            e.readable = false;
                            e.peer_closed = false;
                            break false;
                        }
                        Ok(ReadOutcome::Eof) => e.conn.read_closed(),
                        Err(_) => break true,
                    }
                }
            }
        };
        if close {
            self.close(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(e) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&e.stream.as_raw_fd()));
            self.free.push(slot);
            self.open -= 1;
        }
    }

    /// Applies the connections' time limits (keep-alive, request, lingering).
    fn sweep(&mut self, now: Instant) {
        let env = &self.env;
        let due: Vec<usize> = self
            .conns
            .iter_mut()
            .enumerate()
            .filter_map(|(slot, e)| e.as_mut()?.conn.expire(env, now).then_some(slot))
            .collect();
        for slot in due {
            self.drive(slot);
        }
    }
}

enum ReadOutcome {
    /// Bytes arrived; `drained` when the last read came back short, so the socket is
    /// known to be empty until the next readable edge.
    Data {
        drained: bool,
    },
    WouldBlock,
    Eof,
}

/// Reads what the socket has into the loop's scratch buffer and appends it to the
/// connection's input, so an idle connection holds no read buffer of its own (10,000
/// idle keep-alive connections cost kilobytes each, not a buffer each).
fn read_in(stream: &mut Stream, conn: &mut Conn, scratch: &mut [u8]) -> io::Result<ReadOutcome> {
    let mut got = false;
    loop {
        match stream.read(scratch) {
            Ok(0) => {
                return Ok(if got {
                    ReadOutcome::Data { drained: false }
                } else {
                    ReadOutcome::Eof
                });
            }
            Ok(n) => {
                conn.inbuf.extend_from_slice(&scratch[..n]);
                got = true;
                // A short read means the socket is drained for now; the edge re-arms
                // when more arrives.
                if n < scratch.len() {
                    return Ok(ReadOutcome::Data { drained: true });
                }
                if conn.inbuf.len() > 1 << 20 {
                    return Ok(ReadOutcome::Data { drained: false });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(if got {
                    ReadOutcome::Data { drained: true }
                } else {
                    ReadOutcome::WouldBlock
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes as much of `outbuf` as the socket takes. `Ok(true)` when all of it went.
fn write_out(stream: &mut Stream, conn: &mut Conn) -> io::Result<bool> {
    while !conn.outbuf.is_empty() {
        match stream.write(&conn.outbuf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let _ = conn.outbuf.split_to(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.outbuf.clear();
    Ok(true)
}
