//! The `forklift` module apps import: `forklift.version`, `forklift.offload(func, ...)`
//! (run a call later on a bounded pool, off the request path) and `@forklift.task`
//! (named tasks that can be spooled durably), plus the Rust hooks the offload engine
//! plugs into ([`SpoolSink`], [`OffloadExecutor`], [`run_task`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule, PyString, PyTuple};

use super::interp::{self, with_gil};
use super::pool::PoolSlot;

create_exception!(
    forklift,
    QueueFull,
    PyRuntimeError,
    "The offload queue is full; the call was not queued."
);

/// Threads of the built-in offload pool (used until an [`OffloadExecutor`] is set).
const OFFLOAD_THREADS: usize = 2;

/// Where durable (`spool`) task invocations go. The offload engine implements this.
pub trait SpoolSink: Send + Sync + 'static {
    /// Stores one invocation of task `task` with keyword arguments `payload_json` (a
    /// JSON object) durably, and returns its id once it is safely stored.
    fn spool(&self, task: &str, payload_json: &str) -> Result<String, String>;
}

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

/// Sets where `task.spool(...)` stores invocations.
pub fn set_spool_sink(sink: Arc<dyn SpoolSink>) {
    *SPOOL.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
}

/// Replaces the built-in pool behind `forklift.offload`.
pub fn set_offload_executor(exec: Arc<dyn OffloadExecutor>) {
    *EXECUTOR.write().unwrap_or_else(|e| e.into_inner()) = Some(exec);
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
            e.print(py);
            TaskError::Failed {
                task: name.to_owned(),
                reason: interp::summary(py, &e),
            }
        })?;
        Ok(())
    })
}

/// Adds the module's contents to `m`.
pub(crate) fn populate(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("version", env!("CARGO_PKG_VERSION"))?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("QueueFull", py.get_type::<QueueFull>())?;
    m.add_class::<Task>()?;
    m.add_class::<TaskDecorator>()?;
    m.add_function(wrap_pyfunction!(offload, m)?)?;
    m.add_function(wrap_pyfunction!(task, m)?)?;
    super::fanout::populate(m)?;
    Ok(())
}

/// Puts the module in `sys.modules` (when the interpreter was started by someone else).
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    let m = PyModule::new(py, "forklift")?;
    populate(&m)?;
    py.import("sys")?
        .getattr("modules")?
        .set_item("forklift", m)?;
    Ok(())
}

/// Submits a call of `func(*args, **kwargs)`.
fn submit_call(
    py: Python<'_>,
    func: Py<PyAny>,
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
) -> PyResult<()> {
    let job: Box<dyn FnOnce() + Send> = Box::new(move || {
        with_gil(|py| {
            interp::ensure_thread_loop(py);
            if let Err(e) = func
                .bind(py)
                .call(args.bind(py), kwargs.as_ref().map(|k| k.bind(py)))
            {
                eprintln!("forklift: an offloaded call raised:");
                e.print(py);
            }
        })
    });
    let exec = EXECUTOR.read().unwrap_or_else(|e| e.into_inner()).clone();
    let res = py.allow_threads(|| match exec {
        Some(x) => x.submit(job).map(|_| ()),
        None => OFFLOAD_POOL
            .get_or_init(|| PoolSlot::named(OFFLOAD_THREADS, "forklift-offload"))
            .submit(job),
    });
    // A rejected job still owns Python objects; drop it with the GIL held.
    res.map_err(|job| {
        drop(job);
        QueueFull::new_err("offload queue is full")
    })
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
        py.allow_threads(move || sink.spool(&name, &payload))
            .map_err(|e| PyRuntimeError::new_err(format!("cannot spool task '{}': {e}", self.name)))
    }

    fn __repr__(&self) -> String {
        format!("<forklift.Task {}>", self.name)
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
