//! The `forklift` module apps import: `forklift.version`, `forklift.offload(func, ...)`
//! (run a call later on a bounded pool, off the request path) and `@forklift.task`
//! (named tasks that can be spooled durably), plus the Rust hooks the offload engine
//! plugs into ([`SpoolSink`], [`OffloadExecutor`], [`run_task`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Condvar;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule, PyString, PyTuple};

use super::interp::{self, with_gil};
use super::pool::{Job, PoolSlot};

create_exception!(
    forklift,
    QueueFull,
    PyRuntimeError,
    "The offload queue is full; the call was not queued."
);

/// Threads of the built-in offload pool (used until an [`OffloadExecutor`] is set).
const OFFLOAD_THREADS: usize = 2;
/// Most `call_later` calls waiting for their time at once.
const MAX_DELAYED: usize = 10_000;
/// The longest `call_later` delay: a day.
const MAX_DELAY: f64 = 86_400.0;

/// Where durable (`spool`) task invocations go. The offload engine implements this.
pub trait SpoolSink: Send + Sync + 'static {
    /// Stores one invocation of task `task` with keyword arguments `payload_json` (a
    /// JSON object), to run no earlier than `delay` from now, durably; returns its id
    /// once it is safely stored.
    fn spool(&self, task: &str, payload_json: &str, delay: Duration) -> Result<String, String>;
}

/// A job handed to an [`OffloadExecutor`]: it takes the GIL itself.
pub type OffloadJob = Box<dyn FnOnce() + Send + 'static>;

/// Runs offloaded calls. The default is a small bounded pool of Python threads; the
/// offload engine may replace it.
pub trait OffloadExecutor: Send + Sync + 'static {
    /// Queues `job`; returns it when the queue is full.
    fn submit(
        &self,
        job: Box<dyn FnOnce() + Send + 'static>,
    ) -> Result<(), Box<dyn FnOnce() + Send + 'static>>;
}

/// Why [`run_task`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("no task named '{0}' is registered")]
    Unknown(String),
    #[error("bad payload for task '{task}': {reason}")]
    BadPayload { task: String, reason: String },
    #[error("task '{task}' raised: {reason}")]
    Failed { task: String, reason: String },
}

static SPOOL: RwLock<Option<Arc<dyn SpoolSink>>> = RwLock::new(None);
static EXECUTOR: RwLock<Option<Arc<dyn OffloadExecutor>>> = RwLock::new(None);
static TASKS: Mutex<Option<HashMap<String, Py<PyAny>>>> = Mutex::new(None);
static OFFLOAD_POOL: OnceLock<PoolSlot> = OnceLock::new();
static DELAYED: AtomicUsize = AtomicUsize::new(0);
/// Told the name of every task declared (see [`set_task_listener`]).
type TaskListener = Arc<dyn Fn(&str) + Send + Sync>;
static LISTENER: RwLock<Option<TaskListener>> = RwLock::new(None);

/// Sets where `task.spool(...)` stores invocations.
pub fn set_spool_sink(sink: Arc<dyn SpoolSink>) {
    *SPOOL.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
}

/// Replaces the built-in pool behind `forklift.offload`.
pub fn set_offload_executor(exec: Arc<dyn OffloadExecutor>) {
    *EXECUTOR.write().unwrap_or_else(|e| e.into_inner()) = Some(exec);
}

/// Calls `f(name)` for every task declared with `@forklift.task`, those declared
/// already and those declared later (so the offload engine can add them to its
/// registry, running them with [`run_task`]).
pub fn set_task_listener(f: Arc<dyn Fn(&str) + Send + Sync>) {
    *LISTENER.write().unwrap_or_else(|e| e.into_inner()) = Some(f.clone());
    for name in task_names() {
        f(&name);
    }
}

/// Names of the tasks the loaded app declared with `@forklift.task`.
pub fn task_names() -> Vec<String> {
    let tasks = TASKS.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<String> = tasks
        .as_ref()
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs the registered task `name` with the keyword arguments in `payload_json` (a
/// JSON object), on this thread, with the GIL. Used by the spool worker.
pub fn run_task(name: &str, payload_json: &str) -> Result<(), TaskError> {
    with_gil(|py| {
        let func = {
            let tasks = TASKS.lock().unwrap_or_else(|e| e.into_inner());
            tasks
                .as_ref()
                .and_then(|t| t.get(name))
                .map(|f| f.clone_ref(py))
                .ok_or_else(|| TaskError::Unknown(name.to_owned()))?
        };
        let kwargs = py
            .import("json")
            .and_then(|j| j.call_method1("loads", (payload_json,)))
            .and_then(|v| Ok(v.downcast_into::<PyDict>()?))
            .map_err(|e| TaskError::BadPayload {
                task: name.to_owned(),
                reason: interp::summary(py, &e),
            })?;
        func.bind(py).call((), Some(&kwargs)).map_err(|e| {
            interp::log_exception(py, &e);
            TaskError::Failed {
                task: name.to_owned(),
                reason: interp::summary(py, &e),
            }
        })?;
        Ok(())
    })
}

/// Adds the module's contents to `m`.
fn populate(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("version", env!("CARGO_PKG_VERSION"))?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("QueueFull", py.get_type::<QueueFull>())?;
    m.add_class::<Task>()?;
    m.add_class::<TaskDecorator>()?;
    m.add_function(wrap_pyfunction!(offload, m)?)?;
    m.add_function(wrap_pyfunction!(call_later, m)?)?;
    m.add_function(wrap_pyfunction!(task, m)?)?;
    m.add(
        "ClientDisconnected",
        py.get_type::<super::asgi::cycle::ClientDisconnected>(),
    )?;
    super::fanout::populate(m)?;
    Ok(())
}

/// The `forklift` module as the interpreter start takes it ([`interp::initialize`]).
pub(crate) const EMBEDDED: interp::EmbeddedModule = interp::EmbeddedModule {
    register: || pyo3::append_to_inittab!(forklift_module),
    install,
};

/// The init function Python runs on the first `import forklift`.
#[pymodule]
#[pyo3(name = "forklift")]
fn forklift_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    populate(m)
}

/// Puts the module in `sys.modules` (when the interpreter was started by someone else).
fn install(py: Python<'_>) -> PyResult<()> {
    let m = PyModule::new(py, "forklift")?;
    populate(&m)?;
    py.import("sys")?
        .getattr("modules")?
        .set_item("forklift", m)?;
    Ok(())
}

/// A call of `func(*args, **kwargs)` with the GIL, logging an exception.
fn call_job(func: Py<PyAny>, args: Py<PyTuple>, kwargs: Option<Py<PyDict>>) -> Job {
    Box::new(move |py: Python<'_>| {
        interp::ensure_thread_loop(py);
        if let Err(e) = func
            .bind(py)
            .call(args.bind(py), kwargs.as_ref().map(|k| k.bind(py)))
        {
            eprintln!("forklift: an offloaded call raised:");
            interp::log_exception(py, &e);
        }
    })
}

/// Queues `job` on the offload executor (the built-in pool unless one was set). A
/// rejected job is given back (it owns Python objects: drop it with the GIL).
fn submit_job(job: Job) -> Result<(), OffloadJob> {
    let exec = EXECUTOR.read().unwrap_or_else(|e| e.into_inner()).clone();
    match exec {
        Some(x) => x.submit(Box::new(move || with_gil(job))),
        None => OFFLOAD_POOL
            .get_or_init(|| PoolSlot::new(OFFLOAD_THREADS, "forklift-offload", || {}))
            .submit(job)
            .map_err(|job| Box::new(move || with_gil(job)) as OffloadJob),
    }
}

/// Submits a call of `func(*args, **kwargs)`.
fn submit_call(
    py: Python<'_>,
    func: Py<PyAny>,
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
) -> PyResult<()> {
    let _ = py;
    // Never blocks (a full queue is an error), so the GIL is kept: releasing it here
    // could leave the pool's lock held by this thread when a master forks.
    let res = submit_job(call_job(func, args, kwargs));
    // A rejected job still owns Python objects; drop it with the GIL held.
    res.map_err(|job| {
        drop(job);
        QueueFull::new_err("offload queue is full")
    })
}

/// A call waiting for its time.
struct Delayed {
    due: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// The `call_later` timer of one process: a heap and the thread that waits on it. A
/// forked child makes its own (calls scheduled in the master stay the master's).
struct Timer {
    heap: Mutex<(BinaryHeap<Reverse<Delayed>>, u64)>,
    changed: Condvar,
}

static TIMER: Mutex<Option<(u64, Arc<Timer>)>> = Mutex::new(None);

fn timer() -> Option<Arc<Timer>> {
    let gen = interp::fork_generation();
    let mut slot = TIMER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((g, t)) = slot.as_ref() {
        if *g == gen {
            return Some(t.clone());
        }
    }
    if let Some((_, old)) = slot.take() {
        // Inherited from the parent: its thread does not exist here.
        std::mem::forget(old);
    }
    let t = Arc::new(Timer {
        heap: Mutex::new((BinaryHeap::new(), 0)),
        changed: Condvar::new(),
    });
    let t2 = t.clone();
    std::thread::Builder::new()
        .name("forklift-later".into())
        .spawn(move || t2.run())
        .ok()?;
    *slot = Some((gen, t.clone()));
    Some(t)
}

impl Timer {
    fn run(&self) {
        let mut g = self.heap.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while g.0.peek().is_some_and(|Reverse(d)| d.due <= now) {
                due.push(g.0.pop().expect("peeked").0.job);
            }
            if !due.is_empty() {
                drop(g);
                for job in due {
                    DELAYED.fetch_sub(1, Ordering::Relaxed);
                    if submit_job(job).is_err() {
                        eprintln!("forklift: call_later: the offload queue is full; a delayed call was dropped");
                    }
                }
                g = self.heap.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            g = match g.0.peek() {
                Some(Reverse(d)) => {
                    let wait = d.due.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(g, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(g).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    fn add(&self, due: Instant, job: Job) {
        let mut g = self.heap.lock().unwrap_or_else(|e| e.into_inner());
        g.1 += 1;
        let seq = g.1;
        g.0.push(Reverse(Delayed { due, seq, job }));
        drop(g);
        self.changed.notify_one();
    }
}

/// `forklift.call_later(delay, func, *args, **kwargs)`: like `offload`, after `delay`
/// seconds (as asyncio's `loop.call_later(5, read)`, without an event loop to run).
/// Raises `forklift.QueueFull` when too many calls are waiting.
#[pyfunction]
#[pyo3(signature = (delay, func, *args, **kwargs))]
fn call_later(
    py: Python<'_>,
    delay: f64,
    func: Py<PyAny>,
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
) -> PyResult<bool> {
    if !func.bind(py).is_callable() {
        return Err(PyTypeError::new_err("call_later() needs a callable"));
    }
    if !(0.0..=MAX_DELAY).contains(&delay) {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "call_later() delay must be between 0 and 86400 seconds",
        ));
    }
    if delay == 0.0 {
        submit_call(py, func, args, kwargs)?;
        return Ok(true);
    }
    if DELAYED.fetch_add(1, Ordering::Relaxed) >= MAX_DELAYED {
        DELAYED.fetch_sub(1, Ordering::Relaxed);
        return Err(QueueFull::new_err("too many delayed calls waiting"));
    }
    let Some(t) = timer() else {
        DELAYED.fetch_sub(1, Ordering::Relaxed);
        return Err(QueueFull::new_err(
            "cannot start the call_later timer thread",
        ));
    };
    t.add(
        Instant::now() + Duration::from_secs_f64(delay),
        call_job(func, args, kwargs),
    );
    Ok(true)
}

/// `forklift.offload(func, *args, **kwargs)`: run `func` later on a pool thread (with
/// the GIL) and return True at once. Raises `forklift.QueueFull` when the bounded queue
/// is full.
#[pyfunction]
#[pyo3(signature = (func, *args, **kwargs))]
fn offload(
    py: Python<'_>,
    func: Py<PyAny>,
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
) -> PyResult<bool> {
    if !func.bind(py).is_callable() {
        return Err(PyTypeError::new_err("offload() needs a callable"));
    }
    submit_call(py, func, args, kwargs)?;
    Ok(true)
}

/// Stops the built-in offload pool after its queued calls ran.
pub(crate) fn shutdown_offload() {
    if let Some(p) = OFFLOAD_POOL.get() {
        p.shutdown();
    }
}

/// A named task declared with `@forklift.task`.
#[pyclass(module = "forklift")]
pub struct Task {
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    func: Py<PyAny>,
}

#[pymethods]
impl Task {
    /// Calling the task runs it now, in this thread.
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.func.bind(py).call(args, kwargs)
    }

    /// Runs the task later on the offload pool (not durable).
    #[pyo3(signature = (*args, **kwargs))]
    fn offload(
        &self,
        py: Python<'_>,
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
    ) -> PyResult<bool> {
        submit_call(py, self.func.clone_ref(py), args, kwargs)?;
        Ok(true)
    }

    /// Stores the call durably for the spooler (keyword arguments, JSON-serialisable)
    /// and returns its id once it is on disk.
    #[pyo3(signature = (**kwargs))]
    fn spool(&self, py: Python<'_>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<String> {
        self.spool_in(py, Duration::ZERO, kwargs)
    }

    /// Like `spool`, to run no earlier than `delay` seconds from now.
    #[pyo3(signature = (delay, /, **kwargs))]
    fn spool_after(
        &self,
        py: Python<'_>,
        delay: f64,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        if !(0.0..=1e9).contains(&delay) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "spool_after() delay must be a non-negative number of seconds",
            ));
        }
        self.spool_in(py, Duration::from_secs_f64(delay), kwargs)
    }

    fn __repr__(&self) -> String {
        format!("<forklift.Task {}>", self.name)
    }
}

impl Task {
    fn spool_in(
        &self,
        py: Python<'_>,
        delay: Duration,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let empty = PyDict::new(py);
        let kwargs = kwargs.unwrap_or(&empty);
        let payload: String = py
            .import("json")?
            .call_method1("dumps", (kwargs,))?
            .extract()?;
        let sink = SPOOL.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(sink) = sink else {
            return Err(PyRuntimeError::new_err(
                "spool strategy not configured: start forklift with a spool directory to use task.spool()",
            ));
        };
        let name = self.name.clone();
        py.allow_threads(move || sink.spool(&name, &payload, delay))
            .map_err(|e| PyRuntimeError::new_err(format!("cannot spool task '{}': {e}", self.name)))
    }
}

fn register(func: &Bound<'_, PyAny>, name: Option<String>) -> PyResult<Task> {
    if !func.is_callable() {
        return Err(PyTypeError::new_err("@forklift.task decorates a function"));
    }
    let name = match name {
        Some(n) => n,
        None => {
            let module: String = func
                .getattr("__module__")
                .and_then(|m| m.extract())
                .unwrap_or_else(|_| "__main__".into());
            let qual: String = func
                .getattr("__qualname__")
                .and_then(|m| m.extract())
                .map_err(|_| PyTypeError::new_err("cannot name this task; pass name=..."))?;
            format!("{module}.{qual}")
        }
    };
    let replaced = TASKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(name.clone(), func.clone().unbind());
    // Dropped after the lock is released: a decref may run Python code.
    drop(replaced);
    let listener = LISTENER.read().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(f) = listener {
        f(&name);
    }
    Ok(Task {
        name,
        func: func.clone().unbind(),
    })
}

/// `@forklift.task(name=...)` with arguments.
#[pyclass(module = "forklift")]
pub struct TaskDecorator {
    name: Option<String>,
}

#[pymethods]
impl TaskDecorator {
    fn __call__(&self, func: &Bound<'_, PyAny>) -> PyResult<Task> {
        register(func, self.name.clone())
    }
}

/// `@forklift.task` or `@forklift.task(name="...")`: declares a named task.
#[pyfunction]
#[pyo3(signature = (func = None, *, name = None))]
fn task(
    py: Python<'_>,
    func: Option<&Bound<'_, PyAny>>,
    name: Option<&Bound<'_, PyString>>,
) -> PyResult<PyObject> {
    let name = name.map(|n| n.to_string());
    match func {
        Some(f) => Ok(Py::new(py, register(f, name)?)?.into_any()),
        None => Ok(Py::new(py, TaskDecorator { name })?.into_any()),
    }
}
