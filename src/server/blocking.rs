//! The blocking connection driver shared by `linear` and `threads`: one thread owns a
//! connection, reads with a timeout no longer than a tick or the connection's deadline
//! (so it notices shutdown and the time limits), writes with `write_all`, and parks
//! while the app's reply is pending (or, while the app takes its request body as it
//! comes, waits for input or the waker together). What the connection does is
//! [`Conn`]'s decision.

use std::io::{self, Read};
use std::net::Shutdown as NetShutdown;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::conn::{Conn, Step};
use super::listen::{Protocol, Stream};
use super::Env;
use crate::app::CallContext;

/// How often a blocked read wakes to look at the shutdown flag and the idle timer.
const TICK: Duration = Duration::from_millis(500);

/// Wakes a connection's thread: unparks it, and rings its bell (an eventfd it polls
/// beside the socket while the app takes input as it comes).
struct Unpark {
    thread: Thread,
    bell: Option<Arc<OwnedFd>>,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(bell) = &self.bell {
            let _ = nix::unistd::write(bell.as_fd(), &1u64.to_ne_bytes());
        }
        self.thread.unpark();
    }
}

thread_local! {
    /// This thread's bell (kept open by the wakers that ring it).
    static BELL: Option<Arc<OwnedFd>> = {
        // SAFETY: eventfd takes no pointers; a negative result is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        (fd >= 0).then(|| Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }))
    };
    /// This thread's waker (unparks it, rings its bell), made once (one made per
    /// request costs an allocation).
    static WAKER: Waker = Waker::from(Arc::new(Unpark {
        thread: thread::current(),
        bell: BELL.with(Clone::clone),
    }));
    /// The read buffer of [`serve`] on this thread, lent for the call (zeroing 16 KiB
    /// per request showed in profiles).
    static SCRATCH: std::cell::Cell<Option<Box<[u8]>>> = const { std::cell::Cell::new(None) };
}

/// [`serve`]'s read buffer, given back to the thread when the call ends.
struct Scratch(Box<[u8]>);

impl Scratch {
    fn lend() -> Scratch {
        Scratch(
            SCRATCH
                .take()
                .unwrap_or_else(|| vec![0u8; 16 * 1024].into_boxed_slice()),
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        let _ = SCRATCH.try_with(|s| s.set(Some(buf)));
    }
}

/// Waits, while the app works, for input on `stream` or a wake-up (at most until the
/// connection's deadline), then reads what came. False when the connection failed.
fn wait_input(s: &mut Session, env: &Env, bell: &OwnedFd, scratch: &mut [u8]) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{recv, MsgFlags};
    let left = s
        .conn
        .deadline(env)
        .map_or(TICK, |d| d.saturating_duration_since(Instant::now()));
    let mut fds = [
        PollFd::new(s.stream.as_fd(), PollFlags::POLLIN),
        PollFd::new(bell.as_fd(), PollFlags::POLLIN),
    ];
    let t = PollTimeout::try_from(left.min(TICK)).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, t) {
        Ok(0) => {
            s.conn.expire(env, Instant::now());
            return true;
        }
        Ok(_) | Err(nix::Error::EINTR) => {}
        Err(_) => return false,
    }
    let mut count = [0u8; 8];
    let _ = nix::unistd::read(bell.as_raw_fd(), &mut count);
    let ready = fds[0].revents().is_some_and(|r| !r.is_empty());
    if !ready {
        return true;
    }
    match recv(s.stream.as_raw_fd(), scratch, MsgFlags::MSG_DONTWAIT) {
        Ok(0) => s.conn.read_closed(),
        Ok(n) => {
            s.conn.inbuf.extend_from_slice(&scratch[..n]);
            s.conn.received(Instant::now());
        }
        Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
        Err(_) => return false,
    }
    true
}

/// A connection being served by the blocking models: the socket and its protocol
/// state. It can be parked between requests (the `threads` model hands idle
/// connections to its poller) and resumed by any thread.
pub struct Session {
    pub stream: Stream,
    pub conn: Conn,
    /// The read timeout the socket has now (shortened near a deadline); `None` until
    /// the first blocking read sets one (a request that arrived whole needs none).
    read_timeout: Option<Duration>,
    /// Counts the open connections of the worker while this session lives.
    _open: Option<super::accept::OpenGuard>,
}

impl Session {
    /// A blocking connection from `peer` on a listener speaking `protocol`.
    pub fn new(stream: Stream, peer: Option<std::net::SocketAddr>, protocol: Protocol) -> Session {
        let conn = Conn::new(peer, stream.local_addr(), protocol);
        Session {
            stream,
            conn,
            read_timeout: None,
            _open: None,
        }
    }

    /// Counts this session among the worker's open connections until it is dropped.
    pub fn counted(mut self, guard: super::accept::OpenGuard) -> Session {
        self._open = Some(guard);
        self
    }

    /// Advances a gated connection without blocking, on the thread that watches idle
    /// and arriving connections: reads what has arrived, answers what needs no app
    /// (100-continue, refusals, timeouts), and lingers. Returns [`Pump::Ready`] once a
    /// request has arrived whole (or output is left for a blocking write).
    pub fn pump(&mut self, env: &Env, scratch: &mut [u8]) -> Pump {
        use nix::sys::socket::{recv, send, MsgFlags};
        let mut cx = Context::from_waker(Waker::noop());
        let call = CallContext { may_block: true };
        self.conn.set_gate(true);
        let fd = self.stream.as_raw_fd();
        loop {
            match self.conn.poll(env, &call, &mut cx, &|| false) {
                Step::Admit | Step::Pending => return Pump::Ready,
                Step::Flush => {
                    match send(
                        fd,
                        &self.conn.outbuf,
                        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                    ) {
                        Ok(n) if n == self.conn.outbuf.len() => self.conn.outbuf.clear(),
                        Ok(n) => {
                            let _ = self.conn.outbuf.split_to(n);
                            return Pump::Ready;
                        }
                        Err(nix::Error::EAGAIN) => return Pump::Ready,
                        Err(nix::Error::EINTR) => {}
                        Err(_) => return Pump::Close,
                    }
                }
                Step::ShutdownWrite => {
                    let _ = self.stream.shutdown(NetShutdown::Write);
                }
                Step::Close => return Pump::Close,
                Step::Read => match recv(fd, scratch, MsgFlags::MSG_DONTWAIT) {
                    Ok(0) => self.conn.read_closed(),
                    Ok(n) => {
                        self.conn.inbuf.extend_from_slice(&scratch[..n]);
                        self.conn.received(Instant::now());
                    }
                    Err(nix::Error::EAGAIN) => return Pump::Wait,
                    Err(nix::Error::EINTR) => {}
                    Err(_) => return Pump::Close,
                },
            }
        }
    }
}

/// What [`Session::pump`] leaves the connection as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pump {
    /// Waiting for input (or for lingering to end): watch it for readability.
    Wait,
    /// A request arrived whole, or output waits: hand it to a thread.
    Ready,
    /// Done: drop it.
    Close,
}

impl Session {
    /// Blocks in `read` no longer than until the connection's deadline (and at most a
    /// tick, to notice shutdown). Changes the socket's timeout only near a deadline.
    fn bound_read(&mut self, env: &Env) {
        let left = self
            .conn
            .deadline(env)
            .map_or(TICK, |d| d.saturating_duration_since(Instant::now()));
        let want = left.clamp(Duration::from_millis(1), TICK);
        let stale = self.read_timeout.is_none_or(|t| want < TICK || t < TICK);
        if stale && self.stream.set_read_timeout(Some(want)).is_ok() {
            self.read_timeout = Some(want);
        }
    }
}

/// How `serve` ended. (Not boxed: a parked session moves once per request, and boxing
/// would allocate each time.)
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// The connection is closed.
    Closed,
    /// The connection is idle and handed back to the caller.
    Parked(Session),
}

/// Serves a connection until it closes or goes idle between requests; an idle one is
/// handed back ([`Outcome::Parked`]) so the thread can take other work while the client
/// thinks. `busy` says whether this process is saturated; then keep-alive is not
/// offered (see [`Env::prefer_close`]).
pub fn serve(mut s: Session, env: &Env, busy: &dyn Fn() -> bool) -> Outcome {
    let bell = BELL.with(Clone::clone);
    let waker = WAKER.with(Clone::clone);
    let mut cx = Context::from_waker(&waker);
    let call = CallContext { may_block: true };
    let mut lent = Scratch::lend();
    let scratch = &mut lent.0[..];
    // A session reaches a thread to run its requests: the thread admits them.
    s.conn.set_gate(false);
    loop {
        match s.conn.poll(env, &call, &mut cx, busy) {
            Step::Admit => s.conn.set_gate(false),
            Step::Flush => {
                if send_all(&s.stream, &s.conn.outbuf, env.config.timeouts.send).is_err() {
                    return Outcome::Closed;
                }
                s.conn.outbuf.clear();
            }
            Step::Pending => match &bell {
                Some(bell) if s.conn.wants_input() => {
                    if !wait_input(&mut s, env, bell, scratch) {
                        return Outcome::Closed;
                    }
                }
                _ => thread::park(),
            },
            Step::ShutdownWrite => {
                let _ = s.stream.shutdown(NetShutdown::Write);
            }
            Step::Close => return Outcome::Closed,
            Step::Read => {
                let r = if s.conn.is_idle() {
                    // The next request may already be here; otherwise let go.
                    match nix::sys::socket::recv(
                        s.stream.as_raw_fd(),
                        scratch,
                        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                    ) {
                        Ok(n) => Ok(n),
                        Err(nix::Error::EAGAIN) => return Outcome::Parked(s),
                        Err(e) => Err(io::Error::from(e)),
                    }
                } else {
                    s.bound_read(env);
                    s.stream.read(scratch)
                };
                match r {
                    Ok(0) => s.conn.read_closed(),
                    Ok(n) => {
                        s.conn.inbuf.extend_from_slice(&scratch[..n]);
                        s.conn.received(Instant::now());
                    }
                    Err(e) if is_timeout(&e) => {
                        if busy() {
                            s.conn.close_if_idle();
                        }
                        s.conn.expire(env, Instant::now());
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Outcome::Closed,
                }
            }
        }
    }
}

/// Writes all of `buf`, waiting for the socket to take more at most `timeout` each time
/// it is full (a client that stops reading is let go then).
fn send_all(stream: &Stream, mut buf: &[u8], timeout: Duration) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsFd;
    while !buf.is_empty() {
        match send(
            stream.as_raw_fd(),
            buf,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => buf = &buf[n..],
            Err(nix::Error::EAGAIN) => {
                let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLOUT)];
                let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
                match poll(&mut fds, t) {
                    Ok(0) => return Err(io::ErrorKind::TimedOut.into()),
                    Ok(_) | Err(nix::Error::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
