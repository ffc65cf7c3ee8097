//! The `threads` model (a thread pool, as uWSGI's `threads = N`): an acceptor
//! feeds connections into a bounded queue served by N threads, each running requests
//! with blocking I/O (and, for WSGI, Python on the same thread).
//!
//! Keep-alive does not pin a thread: a connection idle between requests is parked with
//! the acceptor, which watches parked connections with epoll (mio) next to the
//! listener and queues one again when its next request arrives. So 4 threads serve 50
//! keep-alive clients without closing anybody. When the queue is full the acceptor
//! stops accepting and new clients wait in the kernel's backlog.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::accept::{self, AcceptError};
use super::blocking::{self, Idle, Outcome, Session};
use super::{Env, ServerError};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
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

pub fn run(listener: TcpListener, env: Arc<Env>) -> Result<(), ServerError> {
    listener.set_nonblocking(true)?;
    let threads = env.config.threads.max(1);
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
    for i in 0..threads {
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
        listener,
        tx,
        parking,
        parked: Vec::new(),
        free: Vec::new(),
        overflow: VecDeque::new(),
        env: env.clone(),
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
        match blocking::serve(session, env, Idle::Park(&busy)) {
            Outcome::Closed => {}
            // Stopping: an idle connection is simply closed.
            Outcome::Parked(_) if env.shutdown.is_triggered() => {}
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
    listener: TcpListener,
    tx: Sender<Session>,
    parking: Arc<Parking>,
    /// Idle keep-alive connections, by token.
    parked: Vec<Option<Session>>,
    free: Vec<usize>,
    /// Ready connections the full queue could not take yet (at most one per
    /// connection, so bounded by the connections open).
    overflow: VecDeque<Session>,
    env: Arc<Env>,
}

impl Acceptor {
    fn run(&mut self) -> Result<(), ServerError> {
        let fd = self.listener.as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), LISTENER, Interest::READABLE)?;
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        // The listener is edge-triggered: remember that clients may still be waiting
        // in the backlog when accepting stopped early.
        let mut backlog = true;
        loop {
            if self.env.shutdown.is_triggered() {
                // Serve what the backlog already holds, then stop; parked connections
                // are idle and simply closed.
                let _ = self.accept_ready();
                self.flush_overflow(true);
                return Ok(());
            }
            let timeout = if self.overflow.is_empty() {
                next_sweep.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(1)
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            self.flush_overflow(false);
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => backlog = true,
                    WAKER => {}
                    Token(slot) => self.unpark(slot),
                }
            }
            self.adopt_returned()?;
            // Accept only while the threads keep up; otherwise leave clients in the
            // backlog (the listener stays readable, so this is retried each turn).
            if backlog && self.overflow.is_empty() {
                backlog = self.accept_ready();
            }
            if Instant::now() >= next_sweep {
                next_sweep = Instant::now() + SWEEP;
                self.sweep();
            }
        }
    }

    /// Accepts while a thread is free to serve the connection, until the backlog is
    /// empty. Returns whether clients may still be waiting in the backlog.
    fn accept_ready(&mut self) -> bool {
        while self.overflow.is_empty() {
            if self.parking.idle.load(Ordering::Acquire) <= self.tx.len() {
                self.parking.backlog_waiting.store(true, Ordering::Release);
                // A thread may have gone idle just before the flag was set.
                if self.parking.idle.load(Ordering::Acquire) <= self.tx.len() {
                    return true;
                }
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(false).is_err() {
                        continue;
                    }
                    let session = Session::new(stream, &self.env);
                    self.queue(session);
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

    fn queue(&mut self, session: Session) {
        match self.tx.try_send(session) {
            Ok(()) => {}
            Err(TrySendError::Full(s)) => self.overflow.push_back(s),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Moves waiting ready connections into the queue; when `block`, waits for room
    /// (used while stopping, so accepted clients are still answered).
    fn flush_overflow(&mut self, block: bool) {
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

    /// Starts watching connections the threads handed back.
    fn adopt_returned(&mut self) -> Result<(), ServerError> {
        let returned = std::mem::take(
            &mut *self
                .parking
                .returned
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for session in returned {
            let slot = match self.free.pop() {
                Some(s) => s,
                None => {
                    self.parked.push(None);
                    self.parked.len() - 1
                }
            };
            let fd = session.stream.as_raw_fd();
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), Token(slot), Interest::READABLE)?;
            self.parked[slot] = Some(session);
        }
        Ok(())
    }

    /// A parked connection has input (or closed): back to the threads.
    fn unpark(&mut self, slot: usize) {
        if let Some(session) = self.parked.get_mut(slot).and_then(Option::take) {
            let fd = session.stream.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            self.free.push(slot);
            self.queue(session);
        }
    }

    /// Closes parked connections whose keep-alive time is up.
    fn sweep(&mut self) {
        let now = Instant::now();
        for slot in 0..self.parked.len() {
            let expired = self.parked[slot]
                .as_mut()
                .is_some_and(|s| s.conn.expire(&self.env, now));
            if expired {
                if let Some(s) = self.parked[slot].take() {
                    let fd = s.stream.as_raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    self.free.push(slot);
                }
            }
        }
    }
}
