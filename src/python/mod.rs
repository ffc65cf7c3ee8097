//! Embedded CPython: loads a WSGI app and serves it as a [`crate::app::Handler`]. This is
//! the only module that imports pyo3.
//!
//! - `interp` starts the interpreter (the libpython forklift was built against, an
//!   optional virtualenv), attaches threads once each, and handles `fork`.
//! - `environ` builds PEP 3333 environ dicts from a [`crate::app::Request`].
//! - `wsgi` holds the Python-visible objects (`wsgi.input`, `wsgi.errors`,
//!   `start_response`, `wsgi.file_wrapper`).
//! - `call` runs the app and turns its answer into a [`crate::app::Response`].
//! - `pool` is the bounded pool of GIL threads used on event-loop models.
//! - `module` is the `forklift` module apps can import (offload, tasks).

mod call;
mod environ;
mod fanout;
mod interp;
mod module;
mod pool;
mod wsgi;

use std::path::PathBuf;
use std::sync::Arc;

use crate::app::{App, CallContext, Handler, Reply, Request};

pub use interp::after_fork_parent;
pub use module::{
    run_task, set_offload_executor, set_spool_sink, set_task_listener, task_names, OffloadExecutor,
    OffloadJob, SpoolSink, TaskError,
};

/// Pool size used when [`PythonOptions::pool_threads`] is 0.
pub const DEFAULT_POOL_THREADS: usize = 4;

/// How to find and run a WSGI app.
#[derive(Debug, Clone)]
pub struct PythonOptions {
    /// A Python file defining the callable (uWSGI's `--wsgi-file`).
    pub wsgi_file: Option<PathBuf>,
    /// A module to import, `pkg.mod` or `pkg.mod:callable` (uWSGI's `--module`).
    pub module: Option<String>,
    /// The name of the WSGI callable in the file or module.
    pub callable: String,
    /// Directories put in front of `sys.path`, in order.
    pub pythonpath: Vec<PathBuf>,
    /// Directory to change into before loading the app.
    pub chdir: Option<PathBuf>,
    /// A virtualenv whose site-packages the app uses (`--virtualenv`/`--home`, or an
    /// active `VIRTUAL_ENV`, which the CLI layer passes here).
    pub virtualenv: Option<PathBuf>,
    /// GIL threads serving requests on event-loop models (0: [`DEFAULT_POOL_THREADS`]).
    pub pool_threads: usize,
    /// `wsgi.multithread`: true when requests may run concurrently in one process.
    pub multithread: bool,
    /// `wsgi.multiprocess`: true when several worker processes serve the app.
    pub multiprocess: bool,
}

impl Default for PythonOptions {
    fn default() -> Self {
        PythonOptions {
            wsgi_file: None,
            module: None,
            callable: "application".into(),
            pythonpath: Vec::new(),
            chdir: None,
            virtualenv: None,
            pool_threads: 0,
            multithread: false,
            multiprocess: false,
        }
    }
}

/// Why a Python app could not be loaded. Messages are one line, for the CLI to print
/// before exiting with status 1.
#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error("no Python app given (use --wsgi-file FILE or --module MODULE)")]
    NoApp,
    #[error("give either --wsgi-file or --module, not both")]
    BothApps,
    #[error("wsgi-file {0} not found")]
    FileNotFound(String),
    #[error("cannot change directory to {path}: {reason}")]
    Chdir { path: String, reason: String },
    #[error("virtualenv {path}: {reason}")]
    Virtualenv { path: String, reason: String },
    #[error("cannot start the Python interpreter: {0}")]
    Init(String),
    #[error("cannot import module '{module}': {reason}")]
    Import { module: String, reason: String },
    #[error("error while loading {what}: {reason}")]
    Load { what: String, reason: String },
    #[error("{what} has no callable '{callable}' (use --callable NAME)")]
    NoCallable { what: String, callable: String },
    #[error("'{callable}' in {what} is not callable")]
    NotCallable { what: String, callable: String },
}

/// Checks what can be checked without starting Python (an app is named once, the
/// wsgi-file and the virtualenv exist). For a master with `--lazy-apps`, which must not
/// import the app itself.
pub fn check_options(opts: &PythonOptions) -> Result<(), PythonError> {
    match (&opts.wsgi_file, &opts.module) {
        (None, None) => return Err(PythonError::NoApp),
        (Some(_), Some(_)) => return Err(PythonError::BothApps),
        _ => {}
    }
    if let Some(f) = &opts.wsgi_file {
        let full = match &opts.chdir {
            Some(dir) if f.is_relative() => dir.join(f),
            _ => f.clone(),
        };
        if !full.is_file() {
            return Err(PythonError::FileNotFound(f.display().to_string()));
        }
    }
    if let Some(v) = &opts.virtualenv {
        if !v.is_dir() {
            return Err(PythonError::Virtualenv {
                path: v.display().to_string(),
                reason: "directory not found".into(),
            });
        }
    }
    Ok(())
}

/// Loads the app described by `opts` and returns it as a handler. Starts the interpreter
/// on first use. Call it in the master before forking (then the workers call
/// [`Handler::after_fork`]) or, with lazy apps, in each worker after fork.
pub fn load_app(opts: &PythonOptions) -> Result<App, PythonError> {
    Ok(Arc::new(WsgiApp::load(opts)?))
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
        interp::initialize(opts)?;
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

    fn batch_begin(&self) {
        pool::begin_batch();
    }

    fn batch_end(&self) {
        self.pool.end_batch();
    }

    fn before_fork(&self) {
        interp::before_fork();
    }

    fn after_fork(&self) {
        interp::after_fork_child();
    }

    fn shutdown(&self) {
        self.pool.shutdown();
        module::shutdown_offload();
        interp::run_atexit();
    }
}
