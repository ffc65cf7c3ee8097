//! The one accept-error classifier every model uses, and socket set-up for accepted
//! connections.

use std::io;
use std::time::Duration;

/// What to do after `accept` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptError {
    /// Nothing to accept now: wait for readiness.
    WouldBlock,
    /// A transient failure (interrupted, connection aborted before accept): try again.
    Retry,
    /// Out of descriptors or memory: pause accepting briefly, then retry.
    Backoff,
    /// The listener is unusable.
    Fatal,
}

/// Classifies an accept error.
pub fn classify(e: &io::Error) -> AcceptError {
    match e.kind() {
        io::ErrorKind::WouldBlock => AcceptError::WouldBlock,
        io::ErrorKind::Interrupted
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::PermissionDenied => AcceptError::Retry,
        _ => match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM) => {
                AcceptError::Backoff
            }
            Some(libc::EPROTO)
            | Some(libc::ENOPROTOOPT)
            | Some(libc::EHOSTDOWN)
            | Some(libc::ENONET)
            | Some(libc::EHOSTUNREACH)
            | Some(libc::EOPNOTSUPP)
            | Some(libc::ENETUNREACH)
            | Some(libc::ENETDOWN) => AcceptError::Retry,
            _ => AcceptError::Fatal,
        },
    }
}

/// Counts a worker's open connections: one guard per connection, released on drop.
pub struct OpenGuard(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl OpenGuard {
    pub fn new(count: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> OpenGuard {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenGuard(count.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The answer to a connection beyond `--max-connections`: a complete response that
/// needs no request (and no app); the connection then lingers briefly and closes (see
/// `Conn::shed`). The client learns to come back rather than waiting in the backlog.
pub const SHED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 39\r\nConnection: close\r\n\r\nserver busy: too many open connections\n";

/// How many connections beyond `max` a worker may hold while answering them 503;
/// past that, new connections are closed at once.
pub fn shed_budget(max: usize) -> usize {
    (max / 8).max(16)
}

/// At `--max-connections`: the idle keep-alive connections to close to make room, by
/// slot — the eighth that has waited longest, at least one (none when none is idle).
pub fn longest_idle<'a>(conns: impl Iterator<Item = (usize, &'a super::conn::Conn)>) -> Vec<usize> {
    let mut idle: Vec<(std::time::Instant, usize)> = conns
        .filter_map(|(slot, c)| Some((c.idle_since()?, slot)))
        .collect();
    idle.sort_unstable();
    idle.truncate((idle.len() / 8).max(1));
    idle.into_iter().map(|(_, slot)| slot).collect()
}

/// With several worker processes: the connections a worker accepted lately whose first
/// request has not reached the app yet. Each counts as a thread about to be busy, so a
/// worker takes only the clients it has idle threads for and the kernel hands the rest
/// to the other processes. A connection stops counting once its request is in (or it
/// closed), or after [`Arrivals::WAIT`] (a client that connects and waits must not stop
/// the worker from accepting).
#[derive(Default)]
pub struct Arrivals(Vec<(std::time::Instant, usize)>);

impl Arrivals {
    /// How long a new connection counts: its first request normally follows at once.
    pub const WAIT: Duration = Duration::from_millis(100);

    /// A connection was accepted into `slot`.
    pub fn push(&mut self, slot: usize) {
        self.0.push((std::time::Instant::now(), slot));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many still count; `conn` finds the connection in a slot, if it is open.
    pub fn count<'a>(&mut self, conn: impl Fn(usize) -> Option<&'a super::conn::Conn>) -> usize {
        let now = std::time::Instant::now();
        self.0.retain(|&(at, slot)| {
            now.duration_since(at) < Self::WAIT && conn(slot).is_some_and(|c| c.awaiting_first())
        });
        self.0.len()
    }
}

/// How long to pause accepting after [`AcceptError::Backoff`].
pub const BACKOFF: Duration = Duration::from_millis(50);
