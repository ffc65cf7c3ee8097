//! Interpreter lifecycle: start CPython once per process (the libpython and prefix
//! forklift was built against, plus an optional virtualenv), attach each thread once,
//! give each serving thread its own asyncio event loop, and keep Python sound across
//! `fork`.

use std::cell::Cell;
use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyModule};

use super::options::{PythonError, PythonOptions};

/// The fork generation whose Python after-fork fix-up has been done.
static FIXED_GEN: AtomicU64 = AtomicU64::new(0);
/// The interpreter was started (by us or found running).
static STARTED: Mutex<bool> = Mutex::new(false);
/// `before_fork` took the GIL and Python's fork locks; the value to hand back.
static PREPARED: Mutex<Option<ffi::PyGILState_STATE>> = Mutex::new(None);
/// Whether [`freeze_heap`] freezes (`--no-gc-freeze` turns it off).
static GC_FREEZE: AtomicBool = AtomicBool::new(true);

thread_local! {
    /// Fork generation at which this thread was attached to the interpreter.
    static ATTACHED: Cell<u64> = const { Cell::new(u64::MAX) };
    /// Fork generation at which this thread got its asyncio event loop.
    static LOOP_GEN: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// The current fork generation (changes in every forked child), so per-thread and
/// per-process state can tell it was inherited.
pub(crate) fn fork_generation() -> u64 {
    crate::rt::fork::generation()
}

/// Python code run once after start-up and for each app load.
const BOOT: &str = r#"
import os, site, sys

def setup_venv(venv):
    ver = "python%d.%d" % sys.version_info[:2]
    sp = os.path.join(venv, "lib", ver, "site-packages")
    if not os.path.isdir(venv):
        raise FileNotFoundError("directory not found")
    if not os.path.isdir(sp):
        raise FileNotFoundError("no lib/%s/site-packages in it (made with another Python?)" % ver)
    include_system = False
    try:
        with open(os.path.join(venv, "pyvenv.cfg")) as f:
            for line in f:
                k, _, v = line.partition("=")
                if k.strip().lower() == "include-system-site-packages":
                    include_system = v.strip().lower() == "true"
    except OSError:
        pass
    base = set(site.getsitepackages())
    try:
        base.add(site.getusersitepackages())
    except Exception:
        pass
    if not include_system:
        sys.path[:] = [p for p in sys.path if p not in base]
    before = list(sys.path)
    site.addsitedir(sp)
    added = [p for p in sys.path if p not in before]
    rest = [p for p in sys.path if p in before]
    at = next((i for i, p in enumerate(rest) if p in base), len(rest))
    sys.path[:] = rest[:at] + added + rest[at:]
    sys.prefix = sys.exec_prefix = venv
    site.PREFIXES = [venv]
    exe = os.path.join(venv, "bin", "python")
    if os.path.exists(exe):
        sys.executable = exe

def add_paths(paths):
    for p in reversed(paths):
        p = os.path.abspath(p)
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)

def load_file(path, name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod

def freeze_heap():
    # What is alive once the app is loaded (its modules, classes, tables) lives as long
    # as the process: after one collection, move it out of the collector's generations,
    # so each collection while serving scans only what requests made, and a forked
    # worker does not write to (and so copy) the pages it shares with the master.
    import gc
    gc.collect()
    gc.freeze()

def forget_app_modules():
    # The app's own modules (not the standard library's, not installed packages'), so
    # that importing the app again reads its files anew. Returns what to put back.
    # The old app's frozen objects go back to the collector, which frees them once the
    # new app replaces them.
    import gc, site, sysconfig
    gc.unfreeze()
    saved = dict(sys.modules)
    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.add(os.path.realpath(sysconfig.get_paths()[key]))
        except Exception:
            pass
    try:
        roots.update(os.path.realpath(p) for p in site.getsitepackages())
    except Exception:
        pass
    def installed(path):
        path = os.path.realpath(path)
        return any(path == r or path.startswith(r + os.sep) for r in roots)
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if isinstance(path, str) and not installed(path):
            del sys.modules[name]
    return saved

def restore_modules(saved):
    sys.modules.clear()
    sys.modules.update(saved)

def summary(e):
    import traceback
    return traceback.format_exception_only(type(e), e)[-1].strip()
"#;

/// A module built into the binary, made importable when the interpreter starts. The
/// caller supplies it, so this file does not depend on what the module holds.
pub(crate) struct EmbeddedModule {
    /// Adds the module to Python's init table (`pyo3::append_to_inittab!`). Called at
    /// most once, before the interpreter starts.
    pub register: fn(),
    /// Builds the module and puts it in `sys.modules`. Called instead of `register`
    /// when the interpreter was already running (an embedding test started it).
    pub install: fn(Python<'_>) -> PyResult<()>,
}

/// Starts the interpreter if needed, with `module` importable, and applies `opts`
/// (chdir, sys.path, virtualenv).
pub(crate) fn initialize(opts: &PythonOptions, module: &EmbeddedModule) -> Result<(), PythonError> {
    if let Some(dir) = &opts.chdir {
        std::env::set_current_dir(dir).map_err(|e| PythonError::Chdir {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    GC_FREEZE.store(opts.gc_freeze, Ordering::Relaxed);
    let first = {
        let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        let first = !*started;
        if first {
            start_interpreter(module).map_err(PythonError::Init)?;
            *started = true;
        }
        first
    };
    if !first {
        // Loading in a forked worker (lazy apps) with an interpreter inherited from the
        // master: make Python fork-safe first.
        after_fork_child();
    }
    with_gil(|py| -> Result<(), PythonError> {
        let boot = boot_module(py).map_err(|e| PythonError::Init(summary(py, &e)))?;
        if first {
            if let Some(venv) = &opts.virtualenv {
                let abs = std::path::absolute(venv).unwrap_or_else(|_| venv.clone());
                boot.call_method1("setup_venv", (abs,))
                    .map_err(|e| PythonError::Virtualenv {
                        path: venv.display().to_string(),
                        reason: summary(py, &e),
                    })?;
            }
        }
        let mut paths: Vec<&Path> = opts.pythonpath.iter().map(|p| p.as_path()).collect();
        // Like `python FILE`: the file's directory comes first; like `python -m`: the
        // working directory.
        let file_dir = opts.wsgi_file.as_ref().map(|f| {
            f.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        });
        match file_dir {
            Some(d) => paths.push(d),
            None => paths.push(Path::new(".")),
        }
        let list = PyList::new(py, paths).map_err(|e| PythonError::Init(summary(py, &e)))?;
        boot.call_method1("add_paths", (list,))
            .map_err(|e| PythonError::Init(summary(py, &e)))?;
        Ok(())
    })
}

/// The helper module defined by [`BOOT`] (created once, kept in `sys.modules`).
pub(crate) fn boot_module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    helper_module(py, "_forklift_boot", BOOT, c"<forklift boot>")
}

/// The module `name` of forklift's own Python `code`, created once per interpreter and
/// kept in `sys.modules`. It is executed under a name of its own and published whole:
/// executing it directly as `name` would show other threads a half-run module while its
/// imports let go of the GIL.
pub(crate) fn helper_module<'py>(
    py: Python<'py>,
    name: &str,
    code: &str,
    file: &std::ffi::CStr,
) -> PyResult<Bound<'py, PyModule>> {
    static LOADING: AtomicU64 = AtomicU64::new(0);
    let modules = py.import("sys")?.getattr("modules")?;
    if let Ok(m) = modules.get_item(name) {
        return Ok(m.downcast_into::<PyModule>()?);
    }
    let temp = format!("{name}__loading{}", LOADING.fetch_add(1, Ordering::Relaxed));
    let made = PyModule::from_code(
        py,
        &CString::new(code).expect("no NUL in forklift's Python code"),
        file,
        &CString::new(temp.as_str()).expect("no NUL in a module name"),
    );
    let _ = modules.del_item(&temp);
    let m = made?;
    m.setattr("__name__", name)?;
    // Another thread may have published its copy meanwhile: keep the first.
    if let Ok(first) = modules.get_item(name) {
        return Ok(first.downcast_into::<PyModule>()?);
    }
    modules.set_item(name, &m)?;
    Ok(m)
}

/// A one-line description of a Python exception (`ValueError: bad thing`).
pub(crate) fn summary(py: Python<'_>, e: &PyErr) -> String {
    let s = boot_module(py)
        .and_then(|b| b.call_method1("summary", (e.value(py),)))
        .and_then(|s| s.extract::<String>());
    match s {
        Ok(s) => s,
        Err(_) => e.to_string(),
    }
}

fn start_interpreter(module: &EmbeddedModule) -> Result<(), String> {
    // SAFETY: Py_IsInitialized may be called at any time.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        // Someone (an embedding test, pyo3's auto-initialize) started it already: add
        // the module to sys.modules instead of the init table.
        Python::with_gil(module.install).map_err(|e| e.to_string())?;
    } else {
        (module.register)();
        // SAFETY: the interpreter is not running (checked above, under the STARTED lock),
        // `config` is initialised by PyConfig_InitPythonConfig before any field is set,
        // the strings passed are NUL-terminated and outlive the calls, and the config is
        // cleared exactly once. After Py_InitializeFromConfig succeeds this thread holds
        // the GIL, which PyEval_SaveThread releases (keeping the thread state, so this
        // thread stays attached).
        unsafe {
            let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
            ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
            let mut config = config.assume_init();
            // The server owns SIGINT/SIGTERM/SIGHUP; Python must not install handlers.
            config.install_signal_handlers = 0;
            config.parse_argv = 0;
            // Like `python -u`: what apps print reaches the log at once.
            config.buffered_stdio = 0;
            if let Some(exe) = option_env!("FORKLIFT_PYTHON_EXECUTABLE") {
                if Path::new(exe).exists() {
                    // Python derives its prefix (stdlib, site-packages) from this
                    // program, exactly as when that interpreter runs.
                    let c = CString::new(exe).map_err(|e| e.to_string())?;
                    let st = ffi::PyConfig_SetBytesString(
                        &mut config,
                        &mut config.program_name,
                        c.as_ptr(),
                    );
                    if ffi::PyStatus_Exception(st) != 0 {
                        ffi::PyConfig_Clear(&mut config);
                        return Err(status_message(st));
                    }
                }
            }
            let st = ffi::Py_InitializeFromConfig(&config);
            ffi::PyConfig_Clear(&mut config);
            if ffi::PyStatus_Exception(st) != 0 {
                return Err(status_message(st));
            }
            ffi::PyEval_SaveThread();
        }
        ATTACHED.with(|a| a.set(fork_generation()));
    }
    crate::rt::fork::watch_forks();
    FIXED_GEN.store(fork_generation(), Ordering::SeqCst);
    with_gil(|py| -> PyResult<()> {
        let sys = py.import("sys")?;
        sys.setattr("argv", vec!["forklift"])?;
        Ok(())
    })
    .map_err(|e| e.to_string())
}

fn status_message(st: ffi::PyStatus) -> String {
    if st.err_msg.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a non-null err_msg of a PyStatus is a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(st.err_msg) }
        .to_string_lossy()
        .into_owned()
}

/// Attaches this thread to the interpreter once (per process): its thread state is kept
/// for the thread's life, so thread-local Python state (asyncio's event loop,
/// `threading.local`) survives between requests.
fn attach() {
    let gen = fork_generation();
    if ATTACHED.with(|a| a.get()) == gen {
        return;
    }
    // SAFETY: PyGILState_GetThisThreadState only reads this thread's TSS slot. When the
    // thread has no state yet, PyGILState_Ensure creates one and takes the GIL, and
    // PyEval_SaveThread releases the GIL while keeping the state (its gilstate counter
    // stays at 1, so later Ensure/Release pairs never delete it).
    unsafe {
        if ffi::PyGILState_GetThisThreadState().is_null() {
            let _ = ffi::PyGILState_Ensure();
            ffi::PyEval_SaveThread();
        }
    }
    ATTACHED.with(|a| a.set(gen));
}

/// Says once whether an event-loop thread serves, or why it could not start.
pub(crate) struct Ready(std::sync::mpsc::Receiver<ReadyWord>);

impl Ready {
    /// Waits for the thread's word (a thread that ended without one died).
    pub(crate) fn wait(self) -> ReadyWord {
        self.0
            .recv()
            .unwrap_or_else(|_| Err("the loop thread died".into()))
    }
}

/// What an event-loop thread says once: it serves, or why it could not start.
type ReadyWord = Result<(), String>;

/// The sending side of [`Ready`]: the first word counts; later ones are dropped.
#[derive(Clone)]
pub(crate) struct ReadySlot(std::sync::Arc<Mutex<Option<std::sync::mpsc::Sender<ReadyWord>>>>);

impl ReadySlot {
    pub(crate) fn tell(&self, result: ReadyWord) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(result);
        }
    }
}

/// Starts the thread `name`, running `body` with the GIL (an event loop, which
/// releases it while it waits) for the thread's life. `body` tells the [`ReadySlot`]
/// once it serves; an error it returns is logged and, if it had not told yet, is the
/// reason the thread could not start.
pub(crate) fn spawn_loop_thread<F>(
    name: String,
    body: F,
) -> std::io::Result<(std::thread::JoinHandle<()>, Ready)>
where
    F: for<'py> FnOnce(Python<'py>, &ReadySlot) -> PyResult<()> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ReadySlot(std::sync::Arc::new(Mutex::new(Some(tx))));
    let t = std::thread::Builder::new().name(name).spawn(move || {
        with_gil(|py| {
            if let Err(e) = body(py, &ready) {
                log_exception(py, &e);
                ready.tell(Err(summary(py, &e)));
            }
        })
    })?;
    Ok((t, Ready(rx)))
}

/// Runs `f` with the GIL, attaching this thread first if needed.
pub(crate) fn with_gil<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    attach();
    // The wait for the GIL, for the stats (`forklift_gil_wait_seconds_total`).
    let asked = crate::ops::card().map(|_| std::time::Instant::now());
    Python::with_gil(|py| {
        if let Some(asked) = asked {
            crate::ops::gil_waited(asked.elapsed());
        }
        f(py)
    })
}

/// Gives this thread its own asyncio event loop once the app has imported asyncio (so
/// `asyncio.get_event_loop()` works on every serving thread). Cheap when already done.
pub(crate) fn ensure_thread_loop(py: Python<'_>) {
    let gen = fork_generation();
    if LOOP_GEN.with(|g| g.get()) == gen {
        return;
    }
    let key = pyo3::intern!(py, "asyncio");
    // SAFETY: PyImport_GetModuleDict returns a borrowed reference to sys.modules, valid
    // while the GIL is held.
    let modules = unsafe {
        Bound::from_borrowed_ptr(py, ffi::PyImport_GetModuleDict())
            .downcast_into_unchecked::<PyDict>()
    };
    let Ok(Some(asyncio)) = modules.get_item(key) else {
        return;
    };
    let res = asyncio
        .call_method0("new_event_loop")
        .and_then(|lp| asyncio.call_method1("set_event_loop", (lp,)));
    if let Err(e) = res {
        log_exception(py, &e);
    }
    LOOP_GEN.with(|g| g.set(gen));
}

/// Tells [`ensure_thread_loop`] this thread already has its event loop (a loop thread
/// whose running loop requests use).
pub(crate) fn mark_thread_loop() {
    LOOP_GEN.with(|g| g.set(fork_generation()));
}

/// In the master, just before forking: take the GIL and Python's fork locks so no other
/// thread holds them at the moment of `fork`. Kept until the process forks again (the
/// master runs no Python after this).
pub(crate) fn before_fork() {
    if !*STARTED.lock().unwrap_or_else(|e| e.into_inner()) {
        return;
    }
    let mut prepared = PREPARED.lock().unwrap_or_else(|e| e.into_inner());
    if prepared.is_some() {
        return;
    }
    freeze_heap();
    attach();
    // SAFETY: this thread is attached; PyGILState_Ensure takes the GIL, and
    // PyOS_BeforeFork must be called with it held, which it is.
    unsafe {
        let g = ffi::PyGILState_Ensure();
        ffi::PyOS_BeforeFork();
        *prepared = Some(g);
    }
}

/// Freezes the objects alive now out of the cyclic garbage collector (`gc.collect()`
/// then `gc.freeze()`), once the app is loaded: in the master before it forks, and in
/// each serving process before its first request. A collection then scans only the
/// objects made since, not the app's whole import-time heap (a FastAPI app serves 1.2×
/// faster for it), and forked workers keep sharing the master's pages. The cost: a
/// frozen object that later becomes cyclic garbage is not freed, so at most the
/// start-up heap the process held anyway. Off with `--no-gc-freeze`.
pub(crate) fn freeze_heap() {
    if !GC_FREEZE.load(Ordering::Relaxed) || !*STARTED.lock().unwrap_or_else(|e| e.into_inner()) {
        return;
    }
    with_gil(|py| {
        if let Err(e) = boot_module(py).and_then(|b| b.call_method0("freeze_heap")) {
            eprintln!("forklift: gc.freeze(): {}", summary(py, &e));
        }
    });
}

/// The master's side after the last fork: give back what `before_fork` (`Handler::before_fork`) took, so the
/// master may run Python again.
pub fn after_fork_parent() {
    let mut prepared = PREPARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = prepared.take() {
        // SAFETY: called on the thread that ran before_fork (the master's), which holds
        // the GIL and the fork locks; this releases them in the documented order.
        unsafe {
            ffi::PyOS_AfterFork_Parent();
            ffi::PyGILState_Release(g);
        }
    }
}

/// In the master, before importing the app again for a reload: gives back the GIL the
/// master kept since forking (see [`before_fork`]; the app's `before_fork` takes it
/// again), then forgets the app's own modules. Returns what [`restore_modules`] puts
/// back if the import fails; `None` when Python is not running.
pub fn forget_app_modules() -> Option<Py<PyDict>> {
    if !*STARTED.lock().unwrap_or_else(|e| e.into_inner()) {
        return None;
    }
    after_fork_parent();
    with_gil(|py| {
        let saved = boot_module(py)
            .and_then(|b| b.call_method0("forget_app_modules"))
            .and_then(|d| Ok(d.downcast_into::<PyDict>()?.unbind()));
        match saved {
            Ok(d) => Some(d),
            Err(e) => {
                log_exception(py, &e);
                None
            }
        }
    })
}

/// Puts back the modules [`forget_app_modules`] removed (the new import failed).
pub fn restore_modules(saved: Py<PyDict>) {
    with_gil(|py| {
        if let Err(e) = boot_module(py).and_then(|b| b.call_method1("restore_modules", (saved,))) {
            log_exception(py, &e);
        }
    });
}

/// In a worker right after `fork`, on the thread that forked: re-initialise Python's
/// locks and thread bookkeeping (`PyOS_AfterFork_Child`), then release the GIL. A no-op
/// when this process was not forked since the last fix-up.
pub(crate) fn after_fork_child() {
    if !*STARTED.lock().unwrap_or_else(|e| e.into_inner()) {
        return;
    }
    let gen = fork_generation();
    if FIXED_GEN.swap(gen, Ordering::SeqCst) == gen {
        return;
    }
    let mut prepared = PREPARED.lock().unwrap_or_else(|e| e.into_inner());
    match prepared.take() {
        // SAFETY: inherited from before_fork on this same thread (the only thread of
        // the child): it holds the GIL, as PyOS_AfterFork_Child requires; the release
        // pairs with that Ensure.
        Some(g) => unsafe {
            ffi::PyOS_AfterFork_Child();
            ffi::PyGILState_Release(g);
        },
        // SAFETY: no before_fork: the GIL was free in the master when it forked (the
        // master's threads only hold it inside a request or a task, which the master
        // does not run), so this thread can take it, fix up, and release it. A thread
        // state created here is kept (SaveThread) so the thread stays attached.
        None => unsafe {
            let had_state = !ffi::PyGILState_GetThisThreadState().is_null();
            let g = ffi::PyGILState_Ensure();
            ffi::PyOS_AfterFork_Child();
            if had_state {
                ffi::PyGILState_Release(g);
            } else {
                ffi::PyEval_SaveThread();
            }
        },
    }
    ATTACHED.with(|a| a.set(gen));
}

/// Runs the functions registered with `atexit` once, when a worker stops (the process
/// exits without finalising the interpreter). Skipped in a master that prepared a fork.
pub(crate) fn run_atexit() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if !*STARTED.lock().unwrap_or_else(|e| e.into_inner())
        || PREPARED.lock().unwrap_or_else(|e| e.into_inner()).is_some()
        || DONE.swap(true, Ordering::SeqCst)
    {
        return;
    }
    with_gil(|py| {
        let res = py
            .import("atexit")
            .and_then(|a| a.call_method0("_run_exitfuncs"));
        if let Err(e) = res {
            log_exception(py, &e);
        }
    });
}

/// Writes `e`'s traceback to `sys.stderr` (the log). Unlike `PyErr::print`, a
/// `SystemExit` raised by an app does not exit the worker, and the exception is not kept
/// alive in `sys.last_value`.
pub(crate) fn log_exception(py: Python<'_>, e: &PyErr) {
    crate::ops::exception();
    let res = py.import("traceback").and_then(|tb| {
        tb.call_method1(
            "print_exception",
            (e.get_type(py), e.value(py), e.traceback(py)),
        )
    });
    if res.is_err() {
        eprintln!("{e}");
    }
}
