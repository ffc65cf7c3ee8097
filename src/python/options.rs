//! What a Python app load is asked to do ([`PythonOptions`]), the checks that need no
//! interpreter, and why a load failed ([`PythonError`]). A leaf: the other files of
//! `python/` use it and it uses none of them.

use std::path::PathBuf;

pub use crate::server::GreenEngine;

/// Pool size used when [`PythonOptions::pool_threads`] is 0.
pub const DEFAULT_POOL_THREADS: usize = 4;

/// The protocol between the server and the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interface {
    /// PEP 3333: `app(environ, start_response)`.
    #[default]
    Wsgi,
    /// ASGI 3: `async app(scope, receive, send)`, on asyncio event loops.
    Asgi,
}

/// Whether an ASGI app's lifespan protocol runs (uvicorn's `--lifespan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lifespan {
    /// Run it; an app that raises on the lifespan scope is taken not to support it.
    #[default]
    Auto,
    /// Run it; any failure stops the worker.
    On,
    /// Never send lifespan events.
    Off,
}

/// Which asyncio event loop serves an ASGI app (uvicorn's `--loop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoopKind {
    /// uvloop when it can be imported, else asyncio's own loop.
    #[default]
    Auto,
    Asyncio,
    Uvloop,
}

/// WSGI requests as greenlets on one cooperative loop per worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreenOptions {
    pub engine: GreenEngine,
    /// Requests one worker runs at once (uWSGI's async cores); more wait their turn.
    pub cores: usize,
    /// gevent: `monkey.patch_all()` in each worker as its hub starts (after the app is
    /// loaded, as uWSGI's `--gevent-monkey-patch`).
    pub monkey_patch: bool,
    /// gevent: `monkey.patch_all()` before the app is loaded
    /// (`--gevent-early-monkey-patch`).
    pub early_monkey_patch: bool,
}

/// How to find and run a WSGI or ASGI app.
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
    /// WSGI or ASGI.
    pub interface: Interface,
    /// ASGI: the lifespan protocol.
    pub lifespan: Lifespan,
    /// ASGI: the event loop implementation.
    pub event_loop: LoopKind,
    /// ASGI: the process that loads the app also serves it (no master forks workers
    /// from it), so the event loops start and lifespan startup runs during the load,
    /// and a failed startup is a load error. Otherwise they start in
    /// `Handler::after_fork`.
    pub serve_here: bool,
    /// ASGI: how long a stopping worker waits for the app's tasks that outlive their
    /// response (background tasks) before lifespan shutdown.
    pub shutdown_timeout: std::time::Duration,
    /// WSGI: run requests as greenlets on a gevent hub or an asyncio loop instead of on
    /// Python threads.
    pub green: Option<GreenOptions>,
    /// Freeze the loaded app's heap out of the cyclic garbage collector before serving
    /// (see `interp::freeze_heap`).
    pub gc_freeze: bool,
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
            interface: Interface::Wsgi,
            lifespan: Lifespan::Auto,
            event_loop: LoopKind::Auto,
            serve_here: false,
            shutdown_timeout: std::time::Duration::from_secs(30),
            green: None,
            gc_freeze: true,
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
    #[error("'{callable}' in {what} is not an ASGI 3 app: {looks}")]
    NotAsgi {
        what: String,
        callable: String,
        looks: String,
    },
    #[error("'{callable}' in {what} is an ASGI app (an async callable), not a WSGI one: serve it with --asgi or --interface asgi")]
    LooksAsgi { what: String, callable: String },
    #[error("the ASGI event loop: {0}")]
    Loop(String),
    #[error("ASGI lifespan startup failed: {0}")]
    Startup(String),
    #[error("{option} needs the {package} package, which this Python cannot import ({reason}): install it with `pip install {package}` in the app's environment")]
    Missing {
        option: &'static str,
        package: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Green(String),
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
