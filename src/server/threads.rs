//! The `threads` model (a thread pool, as uWSGI's `threads = N`): an acceptor
//! feeds connections into a bounded queue served by N threads, each running requests
//! with blocking I/O (and, for WSGI, Python on the same thread).
//!
//! A thread is given a connection only once a whole request has arrived. Until then
//! the acceptor holds it, next to the listener in one epoll set (mio): it reads what
//! arrives without blocking, answers what needs no app (100-continue, refusals,
//! timeouts) and lingers after errors. So a slow client costs its buffers and a timer,
//! never a thread; and keep-alive does not pin a thread either: a connection idle
//! between requests comes back to the acceptor, and 4 threads serve 50 keep-alive
//! clients without closing anybody. New connections are accepted while a thread is
//! free to run their requests (otherwise they wait in the kernel's backlog, where
//! another worker process may take them), up to `--max-connections`, beyond which they
//! are answered 503 after the oldest idle connections are let go.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::accept::OpenGuard;
use super::accept::{self, AcceptError};
use super::blocking::{self, Outcome, Pump, Session};
use super::{Env, Listener, ServerError};

const WAKER: Token = Token(usize::MAX - 2);
/// Listener `i` has token `FIRST_LISTENER + i`; connections have tokens below.
const FIRST_LISTENER: usize = usize::MAX - 1024 * 1024;
/// How often parked connections are checked against the keep-alive timeout.
const SWEEP: Duration = Duration::from_millis(500);

/// Connections handed back by worker threads, waiting to be watched by the acceptor.
struct Parking {
    returned: Mutex<Vec<Session>>,
    waker: mio::Waker,
    /// Threads waiting for work. New connections are accepted only for idle threads,
    /// so with several processes each takes what it can serve and leaves the rest in
    /// the backlog for the others.
    idle: AtomicUsize,
    /// The acceptor left clients in the backlog: wake it when a thread frees up.
    backlog_waiting: AtomicBool,
}

pub fn run(listeners: Vec<Listener>, env: Arc<Env>) -> Result<(), ServerError> {
    serve_with(listeners, env, false)
}

/// The `linear` model: the acceptor is also the one thread that runs requests. It
/// holds connections in its epoll set exactly as for `threads`, so a slow client costs
/// a slot and a timer, and runs each whole request inline, one at a time. A new
/// connection whose request came with it (a front server's) is served before the next
/// accept and never enters the epoll set: accept, read, write, close, as uWSGI.
pub fn run_inline(listeners: Vec<Listener>, env: Arc<Env>) -> Result<(), ServerError> {
    serve_with(listeners, env, true)
}

fn serve_with(listeners: Vec<Listener>, env: Arc<Env>, inline: bool) -> Result<(), ServerError> {
    for l in &listeners {
        l.set_nonblocking(true)?;
    }
    let threads = if inline { 1 } else { env.config.threads.max(1) };
    let (tx, rx) = bounded::<Session>(env.config.queue.max(1));
    let poll = Poll::new()?;
    let parking = Arc::new(Parking {
        returned: Mutex::new(Vec::new()),
        waker: mio::Waker::new(poll.registry(), WAKER)?,
        // Every thread starts idle (counted before they are scheduled, so the first
        // connections are accepted at once).
        idle: AtomicUsize::new(threads),
        backlog_waiting: AtomicBool::new(false),
    });
    {
        let p = parking.clone();
        env.shutdown.on_trigger(move || {
            let _ = p.waker.wake();
        });
    }
    let mut handles = Vec::with_capacity(threads);
    for i in (0..threads).filter(|_| !inline) {
        let (rx, env, parking) = (rx.clone(), env.clone(), parking.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("forklift-worker-{i}"))
                .spawn(move || worker(rx, &env, &parking))?,
        );
    }
    drop(rx);
    let mut acceptor = Acceptor {
        poll,
        listeners,
        tx,
        parking,
        waiting: Vec::new(),
        free: Vec::new(),
        overflow: VecDeque::new(),
        env: env.clone(),
        open: Arc::new(AtomicUsize::new(0)),
        scratch: vec![0; 64 * 1024],
        listening: true,
        threads,
        arriving: accept::Arrivals::default(),
        inline,
        accept_more: false,
    };
    let result = acceptor.run();
    // Stop: no new connections; the threads finish what is queued and in flight.
    drop(acceptor);
    let deadline = Instant::now() + env.config.timeouts.shutdown;
    for h in handles {
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }
    result
}

fn worker(rx: Receiver<Session>, env: &Env, parking: &Parking) {
    loop {
        let next = rx.recv();
        parking.idle.fetch_sub(1, Ordering::AcqRel);
        let Ok(session) = next else { break };
        let busy = || env.prefer_close(parking.idle.load(Ordering::Acquire) == 0);
        match blocking::serve(session, env, &busy) {
            Outcome::Closed => {}
            // Idle between requests (also while stopping: the acceptor gives it the
            // stop grace, for a request already on its way).
            Outcome::Parked(session) => {
                let mut r = parking.returned.lock().unwrap_or_else(|p| p.into_inner());
                let first = r.is_empty();
                r.push(session);
                drop(r);
                if first {
                    let _ = parking.waker.wake();
                }
            }
        }
        parking.idle.fetch_add(1, Ordering::AcqRel);
        if parking.backlog_waiting.swap(false, Ordering::AcqRel) {
            let _ = parking.waker.wake();
        }
    }
}

struct Acceptor {
    poll: Poll,
    listeners: Vec<Listener>,
    tx: Sender<Session>,
    parking: Arc<Parking>,
    /// Connections the acceptor holds, by token: arriving requests, idle keep-alive
    /// connections, and connections lingering after an error.
    waiting: Vec<Option<Session>>,
    free: Vec<usize>,
    /// Ready connections the full queue could not take yet (at most one per
    /// connection, so bounded by the connections open).
    overflow: VecDeque<Session>,
    env: Arc<Env>,
    /// Open connections of this worker (each session holds a guard).
    open: Arc<AtomicUsize>,
    /// Read buffer for [`Session::pump`]; a held connection keeps only its unparsed bytes.
    scratch: Vec<u8>,
    /// The listeners are in the epoll set.
    listening: bool,
    /// The serving threads (a stop waits for the connections they hold).
    threads: usize,
    /// With several processes: new connections whose first request is on its way,
    /// counted against the idle threads.
    arriving: accept::Arrivals,
    /// `linear`: no threads; ready connections wait in `overflow` and the acceptor
    /// serves them itself, in arrival order, one request at a time.
    inline: bool,
    /// `linear`: accepting stopped at [`INLINE_ACCEPTS`] with clients maybe left in a
    /// backlog: look at the other connections, then accept again without waiting.
    accept_more: bool,
}

/// `linear` serves a new connection whose request came with it before accepting the
/// next (as uWSGI does); after this many in a row it looks at its other connections.
const INLINE_ACCEPTS: usize = 64;

impl Acceptor {
    fn run(&mut self) -> Result<(), ServerError> {
        for (i, l) in self.listeners.iter().enumerate() {
            let fd = l.as_raw_fd();
            self.poll.registry().register(
                &mut SourceFd(&fd),
                Token(FIRST_LISTENER + i),
                Interest::READABLE,
            )?;
        }
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        // The listeners are edge-triggered: remember which may still have clients
        // waiting in their backlog when accepting stopped early.
        let mut backlog = vec![true; self.listeners.len()];
        let mut stop: Option<Instant> = None;
        loop {
            if self.env.shutdown.is_triggered() {
                let now = Instant::now();
                let deadline = *stop.get_or_insert_with(|| {
                    // The last process on these sockets serves what their backlogs
                    // already hold; on a hand-over that is the next workers'. Then stop
                    // listening.
                    if !self.env.shutdown.is_handover() {
                        for i in 0..self.listeners.len() {
                            self.accept_ready(i, true);
                        }
                    }
                    self.stop_listening();
                    now + self.env.config.timeouts.shutdown
                });
                // Connections with nothing in progress end after the stop grace.
                self.adopt_returned()?;
                self.sweep();
                if self.held() == 0 || now >= deadline {
                    self.flush_overflow(true);
                    return Ok(());
                }
            }
            let timeout = if self.inline && (!self.overflow.is_empty() || self.accept_more) {
                Duration::ZERO
            } else if !self.overflow.is_empty() || stop.is_some() || !self.arriving.is_empty() {
                Duration::from_millis(10)
            } else {
                next_sweep.saturating_duration_since(Instant::now())
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            self.flush_overflow(false);
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    Token(t) if t >= FIRST_LISTENER => {
                        if let Some(b) = backlog.get_mut(t - FIRST_LISTENER) {
                            *b = true;
                        }
                    }
                    Token(slot) => self.advance(slot),
                }
            }
            self.adopt_returned()?;
            // Accept only while the threads keep up; otherwise leave clients in the
            // backlog (the listener stays readable, so this is retried each turn).
            // (Once for all listeners: any of them may stop at `INLINE_ACCEPTS`.)
            self.accept_more = false;
            for (i, waiting) in backlog.iter_mut().enumerate() {
                if *waiting && self.overflow.is_empty() && self.listening {
                    *waiting = self.accept_ready(i, false);
                }
            }
            if Instant::now() >= next_sweep {
                next_sweep = Instant::now() + SWEEP;
                self.sweep();
            }
        }
    }

    /// Connections still held by the acceptor, waiting for a thread, on one (a thread
    /// may still hand its connection back), or handed back and not adopted yet. A
    /// thread hands a connection back before it counts itself idle, so none slips
    /// between the counts.
    fn held(&self) -> usize {
        let on_threads = self.threads - self.parking.idle.load(Ordering::Acquire).min(self.threads);
        let returned = self
            .parking
            .returned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        self.waiting.len() - self.free.len()
            + self.overflow.len()
            + self.tx.len()
            + on_threads
            + returned
    }

    fn stop_listening(&mut self) {
        if self.listening {
            self.listening = false;
            for l in &self.listeners {
                let fd = l.as_raw_fd();
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
        }
    }

    /// Accepts from listener `i` while a thread is free to serve the connection (or,
    /// when `all`, every connection waiting), until its backlog is empty. Returns
    /// whether clients may still be waiting in the backlog.
    fn accept_ready(&mut self, i: usize, all: bool) -> bool {
        let protocol = self.listeners[i].protocol();
        let mut served = 0;
        while self.overflow.is_empty() || all {
            if !all && self.parking.idle.load(Ordering::Acquire) <= self.demand() {
                self.parking.backlog_waiting.store(true, Ordering::Release);
                // A thread may have gone idle just before the flag was set.
                if self.parking.idle.load(Ordering::Acquire) <= self.demand() {
                    return true;
                }
            }
            match self.listeners[i].accept(false) {
                Ok((stream, peer)) => {
                    let max = self.env.config.max_connections;
                    let open = self.open.load(Ordering::Relaxed);
                    let shed = open >= max && !self.make_room();
                    if shed && open >= max + accept::shed_budget(max) {
                        // Even answering is too much: close at once.
                        continue;
                    }
                    let mut session =
                        Session::new(stream, peer, protocol).counted(OpenGuard::new(&self.open));
                    if shed {
                        session.conn.shed();
                    }
                    let held = self.hold(session);
                    if let Some(slot) = held.filter(|_| self.env.config.processes > 1) {
                        self.arriving.push(slot);
                    }
                    if self.inline && !self.overflow.is_empty() {
                        // `linear`: its request came with it (as nginx sends one): run
                        // it now, then take the next client.
                        self.serve_inline();
                        served += 1;
                        if served == INLINE_ACCEPTS && !all {
                            self.accept_more = true;
                            return true;
                        }
                    }
                }
                Err(e) => match accept::classify(&e) {
                    AcceptError::WouldBlock => return false,
                    AcceptError::Retry => {}
                    AcceptError::Backoff => {
                        std::thread::sleep(accept::BACKOFF);
                        return true;
                    }
                    AcceptError::Fatal => {
                        self.env.log.line(&format!("forklift: accept failed: {e}"));
                        self.env.shutdown.trigger();
                        return false;
                    }
                },
            }
        }
        true
    }

    /// Requests about to need a thread: queued ones, and (with several processes) new
    /// connections whose first request is on its way.
    fn demand(&mut self) -> usize {
        let waiting = &self.waiting;
        let arriving = self
            .arriving
            .count(|slot| Some(&waiting.get(slot)?.as_ref()?.conn));
        self.tx.len() + arriving
    }

    /// At `--max-connections`: lets go of the idle keep-alive connections that have
    /// waited longest (an eighth of them, at least one). False when none is idle.
    fn make_room(&mut self) -> bool {
        let slots = accept::longest_idle(
            self.waiting
                .iter()
                .enumerate()
                .filter_map(|(slot, s)| Some((slot, &s.as_ref()?.conn))),
        );
        for &slot in &slots {
            self.release(slot);
        }
        !slots.is_empty()
    }

    fn queue(&mut self, session: Session) {
        if self.inline {
            self.overflow.push_back(session);
            return;
        }
        match self.tx.try_send(session) {
            Ok(()) => {}
            Err(TrySendError::Full(s)) => self.overflow.push_back(s),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Moves waiting ready connections into the queue; when `block`, waits for room
    /// (used while stopping, so accepted clients are still answered).
    fn flush_overflow(&mut self, block: bool) {
        if self.inline {
            return self.serve_inline();
        }
        while let Some(s) = self.overflow.pop_front() {
            if block {
                let _ = self.tx.send(s);
                continue;
            }
            if let Err(TrySendError::Full(s)) = self.tx.try_send(s) {
                self.overflow.push_front(s);
                return;
            }
        }
    }

    /// `linear`: runs the request of each connection that was ready when called (not
    /// ones that become ready meanwhile, so a pipelining client cannot starve the rest),
    /// then watches each for its next request again.
    fn serve_inline(&mut self) {
        for _ in 0..self.overflow.len() {
            let Some(session) = self.overflow.pop_front() else {
                return;
            };
            // With several processes, a client behind others is better off reconnecting
            // to an idle process than kept alive here (see `Env::prefer_close`).
            let others = !self.overflow.is_empty();
            let env = self.env.clone();
            let busy = || env.prefer_close(others);
            // Idle between requests (also while stopping: held, it gets the stop grace
            // like every connection, for a request already on its way).
            if let Outcome::Parked(session) = blocking::serve(session, &env, &busy) {
                self.hold(session);
            }
        }
    }

    /// Holds a connection until its next request arrives whole: advances it with what
    /// has already arrived (a request that came with a new connection goes straight to
    /// be served, never entering the epoll set), else watches it for input. Returns its
    /// slot while it is held.
    fn hold(&mut self, mut session: Session) -> Option<usize> {
        match session.pump(&self.env, &mut self.scratch) {
            Pump::Ready => {
                self.queue(session);
                return None;
            }
            Pump::Close => return None,
            // Read to EAGAIN: registering reports input that arrives from now on
            // (edge-triggered, and the registration itself checks readiness).
            Pump::Wait => {}
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.waiting.push(None);
                self.waiting.len() - 1
            }
        };
        let fd = session.stream.as_raw_fd();
        if self
            .poll
            .registry()
            .register(&mut SourceFd(&fd), Token(slot), Interest::READABLE)
            .is_err()
        {
            self.free.push(slot);
            return None;
        }
        self.waiting[slot] = Some(session);
        Some(slot)
    }

    /// Takes connections the threads handed back (idle between requests).
    fn adopt_returned(&mut self) -> Result<(), ServerError> {
        let returned = std::mem::take(
            &mut *self
                .parking
                .returned
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for session in returned {
            self.hold(session);
        }
        Ok(())
    }

    /// Advances a held connection with what has arrived: to a thread once a request is
    /// whole, dropped once it is done.
    fn advance(&mut self, slot: usize) {
        let Some(session) = self.waiting.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        match session.pump(&self.env, &mut self.scratch) {
            Pump::Wait => {}
            Pump::Ready => {
                if let Some(session) = self.take(slot) {
                    self.queue(session);
                }
            }
            Pump::Close => self.release(slot),
        }
    }

    /// Stops watching a held connection and returns it.
    fn take(&mut self, slot: usize) -> Option<Session> {
        let session = self.waiting.get_mut(slot).and_then(Option::take)?;
        let fd = session.stream.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        self.free.push(slot);
        Some(session)
    }

    /// Closes a held connection.
    fn release(&mut self, slot: usize) {
        drop(self.take(slot));
    }

    /// Applies the time limits of held connections (keep-alive, header, lingering).
    fn sweep(&mut self) {
        let now = Instant::now();
        for slot in 0..self.waiting.len() {
            let due = self.waiting[slot]
                .as_mut()
                .is_some_and(|s| s.conn.expire(&self.env, now));
            if due {
                self.advance(slot);
            }
        }
    }
}
