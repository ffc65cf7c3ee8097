//! WSGI apps on a greenlet loop, as a [`Handler`]: uWSGI's gevent mode (`--gevent N`)
//! and its asyncio loop engine (`--asyncio N --greenlet`). Each worker process runs one
//! loop thread (gevent's hub, or an asyncio event loop) and every request in its own
//! greenlet, up to N at once; more wait their turn. The server keeps all socket I/O:
//! whole requests (body read) reach the loop in batches, one wake-up per round of the
//! server's event loop, and replies come back without the loop waiting on a socket.
//!
//! - `hub` runs the loop thread and serves requests in greenlets; `runtime.py` is its
//!   Python half (the cores, gevent's and asyncio's loops). It also reports a loop
//!   blocked by a request that does not yield, which the watchdog in `python::loops`
//!   (shared with `asgi`, like the loop thread's start and stop) notices.

mod hub;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;

use crate::app::{CallContext, Handler, Reply, Request};
use crate::python::asgi::body::{ReplyFuture, Shared};
use crate::python::call::AppState;
use crate::python::interp;
use crate::python::loops::{self, Held, Loops, PerProcess};
use crate::python::options::{GreenEngine, GreenOptions, PythonError, PythonOptions};

use hub::{HubHandle, Msg, Setup, Ticket};

/// Requests a worker holds beyond its cores, waiting for one; beyond it, 503.
const MAX_WAITING: usize = 10_000;

/// A WSGI app served by greenlets on a loop.
pub struct GreenApp {
    app: Arc<AppState>,
    opts: GreenOptions,
    shutdown_timeout: f64,
    /// This process's loop, started once per process (never before fork).
    hub: PerProcess<Loops<HubHandle>>,
}

thread_local! {
    /// Requests held during a round of the server's event loop.
    static HELD: Held<Msg> = const { Held::new() };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl GreenApp {
    /// Loads the WSGI app `opts` names, after checking that the loop's package imports
    /// (and, with `--gevent-early-monkey-patch`, patching first).
    pub(crate) fn load(opts: &PythonOptions, green: GreenOptions) -> Result<GreenApp, PythonError> {
        let app = interp::with_gil(|py| -> Result<AppState, PythonError> {
            let rt = hub::runtime(py).map_err(|e| PythonError::Init(interp::summary(py, &e)))?;
            let check = match green.engine {
                GreenEngine::Gevent => "check_gevent",
                GreenEngine::Asyncio => "check_greenlet",
            };
            rt.call_method0(check).map_err(|e| PythonError::Missing {
                option: green.engine.option(),
                package: green.engine.package(),
                reason: interp::summary(py, &e),
            })?;
            if green.early_monkey_patch {
                monkey_patch(py, &rt)?;
            }
            AppState::load(py, opts)
        })?;
        let me = GreenApp {
            app: Arc::new(app),
            opts: green,
            shutdown_timeout: opts.shutdown_timeout.as_secs_f64(),
            hub: PerProcess::new(),
        };
        if opts.serve_here {
            me.late_setup()?;
            me.running().map_err(PythonError::Green)?;
        }
        Ok(me)
    }

    /// In the process that serves, before its loop starts: `--gevent-monkey-patch`.
    fn late_setup(&self) -> Result<(), PythonError> {
        if !self.opts.monkey_patch {
            return Ok(());
        }
        interp::with_gil(|py| {
            let rt = hub::runtime(py).map_err(|e| PythonError::Init(interp::summary(py, &e)))?;
            monkey_patch(py, &rt)
        })
    }

    /// This process's loop, started on first use.
    fn running(&self) -> Result<&Loops<HubHandle>, String> {
        self.hub.get_or_start(|| self.start())
    }

    /// This process's loop, if it started here.
    fn started(&self) -> Option<&HubHandle> {
        self.hub.started().map(|l| &*l.handles[0])
    }

    fn start(&self) -> Result<Loops<HubHandle>, String> {
        let handle = Arc::new(HubHandle::new(self.opts.engine).map_err(|e| e.to_string())?);
        let setup = Setup {
            app: self.app.clone(),
            cores: self.opts.cores,
            shutdown_timeout: self.shutdown_timeout,
        };
        let (t, ready) =
            loops::spawn(handle.clone(), setup, hub::run).map_err(|e| e.to_string())?;
        if let Err(e) = ready.wait() {
            let _ = t.join();
            return Err(format!("the {} did not start: {e}", handle.describe()));
        }
        let watch = format!("{}-watch", handle.vitals.name);
        let loops = Loops::new(vec![handle], vec![t]);
        loops.watch(watch);
        Ok(loops)
    }
}

/// `gevent.monkey.patch_all()`.
fn monkey_patch(py: Python<'_>, rt: &Bound<'_, PyModule>) -> Result<(), PythonError> {
    rt.call_method0("monkey_patch").map(drop).map_err(|e| {
        PythonError::Init(format!(
            "gevent.monkey.patch_all(): {}",
            interp::summary(py, &e)
        ))
    })
}

impl Handler for GreenApp {
    fn call(&self, req: Request, _cx: &CallContext) -> Reply {
        let Ok(loops) = self.running() else {
            return Reply::Ready(crate::app::Response::busy());
        };
        let handle = &loops.handles[0];
        if handle.vitals.inflight() >= self.opts.cores + MAX_WAITING {
            return Reply::Ready(crate::app::Response::busy());
        }
        let ticket = Ticket::new(&handle.vitals.inflight);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let shared = Shared::new(id, handle.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = Msg::Call {
            req,
            tx,
            shared: shared.clone(),
            ticket,
        };
        loops.send(&HELD, 0, msg);
        Reply::Later(Box::pin(ReplyFuture::new(rx, shared)))
    }

    fn saturated(&self) -> bool {
        self.started()
            .is_some_and(|h| h.vitals.is_blocked() || h.vitals.inflight() >= self.opts.cores)
    }

    fn idle_threads(&self) -> Option<usize> {
        let busy = self.started().map_or(0, |h| h.vitals.inflight());
        Some(self.opts.cores.saturating_sub(busy))
    }

    fn hands_off(&self) -> bool {
        true
    }

    fn batch_begin(&self) {
        Held::begin(&HELD);
    }

    fn batch_end(&self) {
        Held::end(&HELD, self.hub.started());
    }

    fn before_fork(&self) {
        interp::before_fork();
    }

    fn after_fork(&self) -> Result<(), String> {
        interp::after_fork_child();
        let fresh = interp::with_gil(|py| {
            hub::runtime(py)
                .and_then(|rt| rt.call_method0("after_fork"))
                .map(drop)
                .map_err(|e| format!("gevent.reinit(): {}", interp::summary(py, &e)))
        });
        fresh
            .and_then(|()| self.late_setup().map_err(|e| e.to_string()))
            .and_then(|()| self.running().map(drop))?;
        interp::freeze_heap();
        Ok(())
    }

    fn shutdown(&self) {
        if let Some(loops) = self.hub.started() {
            loops.stop();
        }
        crate::python::module::shutdown_offload();
        interp::run_atexit();
    }
}
