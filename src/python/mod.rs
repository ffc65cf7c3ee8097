//! Embedded CPython: loads a WSGI or ASGI app and serves it as a
//! [`crate::app::Handler`]. This is the only module that imports pyo3.
//!
//! - `interp` starts the interpreter (the libpython forklift was built against, an
//!   optional virtualenv), attaches threads once each, and handles `fork`.
//! - `environ` builds PEP 3333 environ dicts from a [`crate::app::Request`].
//! - `wsgi` holds the Python-visible objects (`wsgi.input`, `wsgi.errors`,
//!   `start_response`, `wsgi.file_wrapper`).
//! - `call` runs the app and turns its answer into a [`crate::app::Response`].
//! - `pool` is the bounded pool of GIL threads used on event-loop models.
//! - `load` finds the app callable (a file or a module); `asgi` serves ASGI 3 apps on
//!   asyncio event loops (its own files, see there); `green` serves WSGI apps as
//!   greenlets on gevent's hub or an asyncio loop (`--gevent`, `--asyncio --greenlet`).
//! - `loops` is what their loop threads share: the beat and in-progress count, starting
//!   a loop thread, stopping a process's loops, and the blocked-loop watchdog.
//! - `module` is the `forklift` module apps can import (offload, tasks); `fanout` its
//!   outbound-HTTP part.
//! - `options` holds [`PythonOptions`] and [`PythonError`] (used by `call`, `interp` and
//!   this file) and imports nothing of `python/`.
//!
//! The files import each other without cycles: this file uses its children; `call`,
//! `module`, `fanout`, `pool`, `load` and `asgi` use `interp`; `call` and `asgi` use
//! `load`; `module` uses `asgi::cycle` (for its exception type), `asgi` uses `module`;
//! `green` uses `call`, `interp` and `asgi`'s body channel and inbox; `asgi` and `green`
//! use `loops`, which uses `interp`; `interp` uses only `options` (the
//! `forklift` module is handed to it when the interpreter starts, see
//! `module::EMBEDDED`).

mod asgi;
mod call;
mod environ;
mod fanout;
mod green;
mod interp;
mod load;
mod loops;
mod module;
mod options;
mod pool;
mod wsgi;

use std::sync::Arc;

use crate::app::{App, CallContext, Handler, Reply, Request};

pub use interp::{after_fork_parent, forget_app_modules, restore_modules};
pub use module::{
    run_task, set_offload_executor, set_spool_sink, set_task_listener, task_names, OffloadExecutor,
    OffloadJob, SpoolSink, TaskError,
};
pub use options::{
    check_options, GreenEngine, GreenOptions, Interface, Lifespan, LoopKind, PythonError,
    PythonOptions, DEFAULT_POOL_THREADS,
};

/// Loads the app described by `opts` and returns it as a handler. Starts the interpreter
/// on first use. Call it in the master before forking (then the workers call
/// [`Handler::after_fork`]) or, with lazy apps, in each worker after fork.
pub fn load_app(opts: &PythonOptions) -> Result<App, PythonError> {
    let app = load_handler(opts)?;
    if opts.serve_here {
        interp::freeze_heap();
    }
    Ok(app)
}

fn load_handler(opts: &PythonOptions) -> Result<App, PythonError> {
    match opts.interface {
        Interface::Wsgi => match opts.green {
            Some(green) => {
                check_options(opts)?;
                interp::initialize(opts, &module::EMBEDDED)?;
                Ok(Arc::new(green::GreenApp::load(opts, green)?))
            }
            None => Ok(Arc::new(WsgiApp::load(opts)?)),
        },
        Interface::Asgi => {
            check_options(opts)?;
            interp::initialize(opts, &module::EMBEDDED)?;
            Ok(Arc::new(asgi::AsgiApp::load(opts)?))
        }
    }
}

/// A loaded WSGI app.
pub struct WsgiApp {
    inner: Arc<call::AppState>,
    pool: pool::PoolSlot,
}

impl WsgiApp {
    /// Loads the app (see [`load_app`]).
    pub fn load(opts: &PythonOptions) -> Result<WsgiApp, PythonError> {
        check_options(opts)?;
        interp::initialize(opts, &module::EMBEDDED)?;
        let state = interp::with_gil(|py| call::AppState::load(py, opts))?;
        let threads = if opts.pool_threads == 0 {
            DEFAULT_POOL_THREADS
        } else {
            opts.pool_threads
        };
        Ok(WsgiApp {
            inner: Arc::new(state),
            pool: pool::PoolSlot::for_requests(threads, "forklift-py", call::flush_replies),
        })
    }
}

impl Handler for WsgiApp {
    fn call(&self, req: Request, cx: &CallContext) -> Reply {
        if cx.may_block {
            Reply::Ready(interp::with_gil(|py| self.inner.call_blocking(py, req)))
        } else {
            call::call_pooled(&self.inner, &self.pool, req)
        }
    }

    fn saturated(&self) -> bool {
        self.pool.saturated()
    }

    fn hands_off(&self) -> bool {
        true
    }

    fn idle_threads(&self) -> Option<usize> {
        Some(self.pool.idle())
    }

    fn batch_begin(&self) {
        pool::begin_batch();
    }

    fn batch_end(&self) {
        self.pool.end_batch();
    }

    fn before_fork(&self) {
        interp::before_fork();
    }

    fn after_fork(&self) -> Result<(), String> {
        interp::after_fork_child();
        interp::freeze_heap();
        Ok(())
    }

    fn shutdown(&self) {
        self.pool.shutdown();
        module::shutdown_offload();
        interp::run_atexit();
    }
}
