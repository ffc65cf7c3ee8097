//! What the ASGI workers' event loops and the greenlet worker's loop share: a loop
//! thread's [`Vitals`] (its beat, requests in progress, blocked mark), starting a loop
//! thread, the blocked-loop watchdog, a process's running [`Loops`], started once per
//! serving process ([`PerProcess`]) and stopped with their watchdog, and the requests a
//! server thread [`Held`] for them during a round of its event loop.
//!
//! The watchdog is a thread per worker that notices a loop which has not run for a
//! while (an app calling `time.sleep` or other blocking code that does not yield), asks
//! the loop to report it once (with the Python stack it is stuck at) and marks it
//! blocked, so new requests go elsewhere; the loop reports again when it recovers.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::thread::LocalKey;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::python::asgi::body::Poke;
use crate::python::asgi::inbox::Inbox;
use crate::python::interp;
use crate::rt::fork::ForkLocal;

/// A loop silent for this long is reported as blocked.
const BLOCKED_AFTER_MS: u64 = 1000;
/// How often the watchdog looks at the loops.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Milliseconds since the first call in this process (a monotonic clock for beats).
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The state of one loop thread that the server and the watchdog read.
pub(crate) struct Vitals {
    /// The loop thread's name.
    pub(crate) name: String,
    /// Requests handed to the loop whose work has not ended.
    pub(crate) inflight: Arc<AtomicUsize>,
    /// When the loop last ran a callback (milliseconds on [`now_ms`]'s clock).
    beat: AtomicU64,
    /// The watchdog found the loop stuck: new requests go elsewhere.
    blocked: AtomicBool,
    /// The loop thread's id as Python knows it (to show where it is stuck).
    ident: AtomicU64,
}

impl Vitals {
    pub(crate) fn new(name: String) -> Vitals {
        Vitals {
            name,
            inflight: Arc::new(AtomicUsize::new(0)),
            beat: AtomicU64::new(now_ms()),
            blocked: AtomicBool::new(false),
            ident: AtomicU64::new(0),
        }
    }

    /// The loop ran just now.
    pub(crate) fn tick(&self) {
        self.beat.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    /// The loop thread's Python thread id (`threading.get_ident()`).
    pub(crate) fn ident(&self) -> u64 {
        self.ident.load(Ordering::Relaxed)
    }
}

/// The messages every loop takes, besides its requests.
pub(crate) trait LoopMsg: Send {
    /// Look at request `id` again (its connection took body chunks, or went away).
    fn poke(id: u64) -> Self;
    /// Finish what is in progress and end.
    fn stop() -> Self;
}

/// A loop as its [`Loops`] and watchdog see it.
pub(crate) trait LoopThread: Send + Sync + 'static {
    /// What the loop is asked to do.
    type Msg: LoopMsg;
    fn vitals(&self) -> &Vitals;
    /// The queue into the loop.
    fn inbox(&self) -> &Inbox<Self::Msg>;
    /// Logs that the loop has not run for `silent` seconds (and where it is stuck).
    fn report_blocked(&self, silent: f64);
    /// Logs that the loop runs again.
    fn report_running(&self);
}

/// A request's body channel wakes its loop through this.
impl<H: LoopThread> Poke for H {
    fn poke(&self, id: u64) {
        self.inbox().push(H::Msg::poke(id));
    }
}

/// Starts the loop thread of `handle`, which runs `run(py, handle, setup, ready)` with
/// the GIL for its life (see [`interp::spawn_loop_thread`]).
pub(crate) fn spawn<H: LoopThread, S: Send + 'static>(
    handle: Arc<H>,
    setup: S,
    run: fn(Python<'_>, &Arc<H>, S, &interp::ReadySlot) -> PyResult<()>,
) -> std::io::Result<(JoinHandle<()>, interp::Ready)> {
    interp::spawn_loop_thread(handle.vitals().name.clone(), move |py, ready| {
        // SAFETY: pthread_self has no preconditions; Python's thread ident is this value.
        let ident = unsafe { libc::pthread_self() } as u64;
        handle.vitals().ident.store(ident, Ordering::Relaxed);
        run(py, &handle, setup, ready)
    })
}

/// The running loops of one process and their watchdog.
pub(crate) struct Loops<H> {
    pub(crate) handles: Vec<Arc<H>>,
    /// The loop threads, then the watchdog's.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Ends the watchdog (set once the loops have ended).
    watch_stop: Arc<AtomicBool>,
}

impl<H: LoopThread> Loops<H> {
    /// The loops `handles`, run by `threads` (one each, in the same order).
    pub(crate) fn new(handles: Vec<Arc<H>>, threads: Vec<JoinHandle<()>>) -> Loops<H> {
        Loops {
            handles,
            threads: Mutex::new(threads),
            watch_stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts the watchdog thread `name` over the loops (a failure is logged: the
    /// loops serve without one).
    pub(crate) fn watch(&self, name: String) {
        let loops = self.handles.clone();
        let stop = self.watch_stop.clone();
        let started = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(CHECK_EVERY);
                    for l in &loops {
                        check(&**l);
                    }
                }
            });
        match started {
            Ok(t) => self
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(t),
            Err(e) => eprintln!("forklift: cannot start the loop watchdog {name}: {e}"),
        }
    }

    /// Sends `msg` to loop `i`: at the end of the server thread's round (see [`Held`])
    /// when in one, else now.
    pub(crate) fn send(&self, held: &'static LocalKey<Held<H::Msg>>, i: usize, msg: H::Msg) {
        let msg = held.with(|h| match h.0.borrow_mut().as_mut() {
            Some(held) => {
                if held.len() <= i {
                    held.resize_with(i + 1, Vec::new);
                }
                held[i].push(msg);
                None
            }
            None => Some(msg),
        });
        if let Some(msg) = msg {
            self.handles[i].inbox().push(msg);
        }
    }

    /// Ends every loop after the requests in progress, then the watchdog.
    pub(crate) fn stop(&self) {
        for h in &self.handles {
            h.inbox().push(H::Msg::stop());
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let mut it = threads.into_iter();
        for t in it.by_ref().take(self.handles.len()) {
            let _ = t.join();
        }
        self.watch_stop.store(true, Ordering::Release);
        for t in it {
            let _ = t.join();
        }
    }
}

/// One look of the watchdog at loop `l`.
fn check(l: &impl LoopThread) {
    let v = l.vitals();
    let silent = now_ms().saturating_sub(v.beat.load(Ordering::Relaxed));
    let was = v.is_blocked();
    if silent >= BLOCKED_AFTER_MS && !was {
        v.blocked.store(true, Ordering::Relaxed);
        l.report_blocked(silent as f64 / 1000.0);
    } else if silent < BLOCKED_AFTER_MS && was {
        v.blocked.store(false, Ordering::Relaxed);
        l.report_running();
    }
}

/// What each serving process starts once, on first use (never before fork): the
/// value, or why it could not start.
pub(crate) struct PerProcess<T>(ForkLocal<OnceLock<Result<T, String>>>);

impl<T> PerProcess<T> {
    pub(crate) fn new() -> PerProcess<T> {
        PerProcess(ForkLocal::new())
    }

    /// This process's value, made by `start` on first use here.
    pub(crate) fn get_or_start(
        &self,
        start: impl FnOnce() -> Result<T, String>,
    ) -> Result<&T, String> {
        self.0
            .get_or_init(OnceLock::new)
            .get_or_init(start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// This process's value, if it started here.
    pub(crate) fn started(&self) -> Option<&T> {
        match self.0.get().and_then(OnceLock::get) {
            Some(Ok(v)) => Some(v),
            _ => None,
        }
    }
}

/// The messages a server thread holds for a process's loops during a round of its event
/// loop ([`crate::app::Handler::batch_begin`] to `batch_end`), one list per loop: each
/// loop is woken once per round. Kept in a thread-local of the server's thread.
pub(crate) struct Held<M>(RefCell<Option<Vec<Vec<M>>>>);

impl<M> Held<M> {
    pub(crate) const fn new() -> Held<M> {
        Held(RefCell::new(None))
    }

    /// A round begins: messages are held from now on.
    pub(crate) fn begin(key: &'static LocalKey<Held<M>>) {
        key.with(|h| {
            h.0.borrow_mut().get_or_insert_with(Vec::new);
        });
    }

    /// The round ends: each loop of `loops` gets what was held for it, in one push.
    pub(crate) fn end<H: LoopThread<Msg = M>>(
        key: &'static LocalKey<Held<M>>,
        loops: Option<&Loops<H>>,
    ) {
        let Some(mut held) = key.with(|h| h.0.borrow_mut().take()) else {
            return;
        };
        if let Some(loops) = loops {
            for (h, msgs) in loops.handles.iter().zip(held.iter_mut()) {
                if !msgs.is_empty() {
                    h.inbox().push_all(msgs.drain(..));
                }
            }
        }
    }
}
