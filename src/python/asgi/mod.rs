//! ASGI 3 apps (FastAPI, Starlette, async Django) as a [`Handler`]: the server keeps all
//! socket I/O; each worker runs one asyncio event loop per Python thread
//! (`--threads N`), and complete requests reach a loop in batches, one wake-up per
//! round of the server's event loop.
//!
//! - `looper` runs the loop threads (and lifespan on loop 0); `runtime.py` is its
//!   Python half.
//! - `cycle` is a request's `receive`/`send`; `scope` builds its scope.
//! - `body` is what a request's loop and its connection share (the body channel,
//!   disconnects); `inbox` the queue into a loop. The loop threads' start, stop and
//!   blocked-loop watchdog are `python::loops`, shared with `green`.
//!
//! Files import downwards only: this file uses its children; `looper` uses `body`,
//! `cycle`, `inbox` and `scope`; `cycle` uses `body`; `body`, `inbox` and `scope` are
//! leaves.

pub(crate) mod body;
pub(crate) mod cycle;
pub(crate) mod inbox;
mod looper;
mod scope;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::app::{CallContext, Handler, Reply, Request, Response};
use crate::python::interp;
use crate::python::loops::{self, Held, Loops, PerProcess};
use crate::python::options::{Lifespan, LoopKind, PythonError, PythonOptions};

use body::{ReplyFuture, Shared};
use looper::{LoopHandle, Msg, Setup};

/// Requests one loop may have in progress; beyond it new ones get 503.
const MAX_INFLIGHT: usize = 10_000;

/// True when `app`, given as a WSGI app, is clearly an ASGI one.
pub(crate) fn looks_asgi(app: &Bound<'_, PyAny>) -> bool {
    looper::runtime(app.py())
        .and_then(|rt| rt.call_method1("looks_asgi", (app,)))
        .and_then(|b| b.is_truthy())
        .unwrap_or(false)
}

/// A loaded ASGI app.
pub struct AsgiApp {
    app: Py<PyAny>,
    threads: usize,
    lifespan: Lifespan,
    event_loop: LoopKind,
    shutdown_timeout: f64,
    /// This process's loops, started once per process (never before fork).
    loops: PerProcess<Loops<LoopHandle>>,
}

thread_local! {
    /// Requests held during a round of the server's event loop, per loop.
    static HELD: Held<Msg> = const { Held::new() };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl AsgiApp {
    /// Loads the app `opts` names and checks that it is an ASGI 3 callable.
    pub(crate) fn load(opts: &PythonOptions) -> Result<AsgiApp, PythonError> {
        let app = interp::with_gil(|py| -> Result<Py<PyAny>, PythonError> {
            let found = crate::python::load::find(py, opts)?;
            let rt = looper::runtime(py).map_err(|e| PythonError::Init(interp::summary(py, &e)))?;
            let looks: Option<String> = rt
                .call_method1("describe", (&found.app,))
                .and_then(|d| d.extract())
                .map_err(|e| PythonError::Init(interp::summary(py, &e)))?;
            if let Some(looks) = looks {
                return Err(PythonError::NotAsgi {
                    what: found.what,
                    callable: found.callable,
                    looks,
                });
            }
            Ok(found.app.unbind())
        })?;
        let threads = if opts.pool_threads == 0 {
            1
        } else {
            opts.pool_threads
        };
        let me = AsgiApp {
            app,
            threads,
            lifespan: opts.lifespan,
            event_loop: opts.event_loop,
            shutdown_timeout: opts.shutdown_timeout.as_secs_f64(),
            loops: PerProcess::new(),
        };
        if opts.serve_here {
            me.loops().map_err(|e| match e.strip_prefix(STARTUP) {
                Some(msg) => PythonError::Startup(msg.to_owned()),
                None => PythonError::Loop(e),
            })?;
        }
        Ok(me)
    }

    /// This process's loops, started (with lifespan startup) on first use.
    fn loops(&self) -> Result<&Loops<LoopHandle>, String> {
        self.loops.get_or_start(|| self.start())
    }

    fn start(&self) -> Result<Loops<LoopHandle>, String> {
        let state = interp::with_gil(|py| PyDict::new(py).unbind());
        let event_loop = match self.event_loop {
            LoopKind::Auto => "auto",
            LoopKind::Asyncio => "asyncio",
            LoopKind::Uvloop => "uvloop",
        };
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let mut pending = Vec::new();
        for i in 0..self.threads {
            let handle =
                Arc::new(LoopHandle::new(format!("forklift-asgi-{i}")).map_err(|e| e.to_string())?);
            let setup = interp::with_gil(|py| Setup {
                app: self.app.clone_ref(py),
                state: state.clone_ref(py),
                event_loop,
                lifespan: match (i, self.lifespan) {
                    (0, Lifespan::Auto) => Some("auto"),
                    (0, Lifespan::On) => Some("on"),
                    _ => None,
                },
                shutdown_timeout: self.shutdown_timeout,
            });
            let (t, ready) =
                loops::spawn(handle.clone(), setup, looper::run).map_err(|e| e.to_string())?;
            handles.push(handle);
            threads.push(t);
            pending.push(ready);
            if i == 0 {
                // Lifespan startup completes before any other loop serves.
                if let Err(e) = pending.remove(0).wait() {
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(if self.lifespan == Lifespan::Off {
                        e
                    } else {
                        format!("{STARTUP}{e}")
                    });
                }
            }
        }
        let failed = pending.into_iter().filter_map(|r| r.wait().err()).last();
        let loops = Loops::new(handles, threads);
        if let Some(e) = failed {
            loops.stop();
            return Err(e);
        }
        loops.watch("forklift-asgi-watch".into());
        Ok(loops)
    }

    /// After fork in a worker: start the loops now. A failed lifespan startup is the
    /// app's message, for the master to report.
    fn start_in_worker(&self) -> Result<(), String> {
        self.loops()
            .map(|_| ())
            .map_err(|e| match e.strip_prefix(STARTUP) {
                Some(m) => format!("ASGI lifespan startup failed: {m}"),
                None => e,
            })
    }
}

/// Marks a start error as the app's failed lifespan startup.
const STARTUP: &str = "\u{0}startup:";

/// The loop for a new request: the least busy one that is not blocked.
fn pick(handles: &[Arc<LoopHandle>]) -> usize {
    if handles.len() == 1 {
        return 0;
    }
    let mut best = 0;
    let mut best_key = (true, usize::MAX);
    for (i, h) in handles.iter().enumerate() {
        let key = (h.vitals.is_blocked(), h.vitals.inflight());
        if key < best_key {
            best = i;
            best_key = key;
        }
    }
    best
}

impl Handler for AsgiApp {
    fn call(&self, req: Request, _cx: &CallContext) -> Reply {
        if is_upgrade(&req) {
            eprintln!(
                "forklift: {} {}: WebSocket upgrade requested; ASGI websockets are not supported yet, answering 501",
                req.method(),
                String::from_utf8_lossy(&req.target)
            );
            return Reply::Ready(Response::text(
                501,
                Bytes::from_static(b"Not Implemented: this server does not support WebSocket\n"),
            ));
        }
        let loops = match self.loops() {
            Ok(l) => l,
            Err(_) => return Reply::Ready(crate::app::Response::busy()),
        };
        let i = pick(&loops.handles);
        let handle = &loops.handles[i];
        if handle.vitals.inflight() >= MAX_INFLIGHT {
            return Reply::Ready(crate::app::Response::busy());
        }
        handle.vitals.inflight.fetch_add(1, Ordering::AcqRel);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let shared = Shared::new(id, handle.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        loops.send(&HELD, i, Msg::Call(req, tx, shared.clone()));
        Reply::Later(Box::pin(ReplyFuture::new(rx, shared)))
    }

    fn saturated(&self) -> bool {
        // Every loop stuck in blocking code: leave new clients to other workers.
        self.loops
            .started()
            .is_some_and(|l| l.handles.iter().all(|h| h.vitals.is_blocked()))
    }

    fn hands_off(&self) -> bool {
        true
    }

    fn streams_body(&self) -> bool {
        true
    }

    fn batch_begin(&self) {
        Held::begin(&HELD);
    }

    fn batch_end(&self) {
        Held::end(&HELD, self.loops.started());
    }

    fn before_fork(&self) {
        interp::before_fork();
    }

    fn after_fork(&self) -> Result<(), String> {
        interp::after_fork_child();
        self.start_in_worker()?;
        interp::freeze_heap();
        Ok(())
    }

    fn shutdown(&self) {
        if let Some(loops) = self.loops.started() {
            loops.stop();
        }
        crate::python::module::shutdown_offload();
        interp::run_atexit();
    }
}

/// A request asking to switch to WebSocket (`Upgrade: websocket` with `Connection:
/// upgrade`). Other upgrades (`h2c`) are optional for the server and are ignored: the
/// request is served over HTTP/1.1.
fn is_upgrade(req: &Request) -> bool {
    req.header("upgrade")
        .is_some_and(|u| u.windows(9).any(|w| w.eq_ignore_ascii_case(b"websocket")))
        && req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(b"connection"))
            .any(|h| {
                h.value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
            })
}
