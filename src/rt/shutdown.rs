//! The shutdown signal every model listens to: a flag, plus wake-ups for whoever is
//! waiting (blocked acceptors poll a pipe, the epoll loop a `mio::Waker`, async tasks a
//! `tokio::sync::Notify`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// A cloneable "stop now, gracefully" signal. Triggering is idempotent and async-signal
/// free (call it from a signal-watching thread, never from a signal handler).
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    flag: AtomicBool,
    /// Set when the stop hands the listening socket over to other processes (a reload or
    /// a recycle under the master): the connections waiting in the shared backlog are
    /// theirs, so this process stops accepting at once instead of draining it.
    handover: AtomicBool,
    /// When the stop was triggered: idle connections get a moment from here (see
    /// `server::conn::STOP_GRACE`).
    at: OnceLock<Instant>,
    /// Read end becomes readable on trigger: lets a blocking `poll()` wake up.
    pipe_read: OwnedFd,
    pipe_write: OwnedFd,
    callbacks: Mutex<Vec<Box<dyn Fn() + Send>>>,
    notify: tokio::sync::Notify,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .expect("create shutdown pipe");
        Shutdown {
            inner: Arc::new(Inner {
                flag: AtomicBool::new(false),
                handover: AtomicBool::new(false),
                at: OnceLock::new(),
                pipe_read: r,
                pipe_write: w,
                callbacks: Mutex::new(Vec::new()),
                notify: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Asks every listener to stop accepting and finish in-flight work.
    pub fn trigger(&self) {
        let _ = self.inner.at.set(Instant::now());
        if self.inner.flag.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = nix::unistd::write(&self.inner.pipe_write, b"x");
        for cb in self.inner.callbacks.lock().unwrap().iter() {
            cb();
        }
        self.inner.notify.notify_waiters();
    }

    /// Stops like [`Shutdown::trigger`], leaving the listener's backlog to the processes
    /// that take over (see [`Shutdown::is_handover`]).
    pub fn trigger_handover(&self) {
        self.inner.handover.store(true, Ordering::SeqCst);
        self.trigger();
    }

    /// True when the stop hands the listener over: stop accepting at once (other
    /// processes accept what waits in the backlog), rather than serving the backlog
    /// before stopping.
    pub fn is_handover(&self) -> bool {
        self.inner.handover.load(Ordering::SeqCst)
    }

    /// When the stop was triggered (`None` while serving).
    pub fn since(&self) -> Option<Instant> {
        self.inner.at.get().copied()
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// A descriptor that becomes readable once triggered (for `poll()` next to a
    /// listener).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.pipe_read.as_fd()
    }

    pub fn raw_fd(&self) -> i32 {
        self.inner.pipe_read.as_raw_fd()
    }

    /// Runs `f` on trigger (immediately if already triggered).
    pub fn on_trigger(&self, f: impl Fn() + Send + 'static) {
        let mut cbs = self.inner.callbacks.lock().unwrap();
        if self.is_triggered() {
            drop(cbs);
            f();
        } else {
            cbs.push(Box::new(f));
        }
    }

    /// Completes once triggered.
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}
