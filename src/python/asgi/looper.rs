//! The event loop threads of an ASGI worker: each runs one asyncio (or uvloop) loop
//! for its whole life. Requests reach a loop in batches through its [`Inbox`] (one
//! eventfd wake-up per batch); the loop builds each scope, makes a [`Cycle`] and starts
//! the app's coroutine as a task. Loop 0 also runs the lifespan protocol: startup
//! before serving, shutdown after the last request (and background task) is done. A
//! loop the watchdog (`python::loops`) finds blocked is reported here, with its stack.

use std::ffi::CString;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};
use tokio::sync::oneshot;

use crate::app::{Request, Response};
use crate::python::interp;
use crate::python::loops::{LoopMsg, LoopThread, Vitals};

use super::body::Shared;
use super::cycle::{self, Cycle};
use super::inbox::Inbox;
use super::scope::Scopes;

/// The Python half (`runtime.py`).
const RUNTIME: &str = include_str!("runtime.py");

/// How often a loop proves it is running.
const BEAT_SECONDS: f64 = 0.1;

/// What a loop is asked to do. (Not boxed: a request moves once into the inbox and
/// once out, and boxing would allocate for each.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Msg {
    /// Serve a request.
    Call(Request, oneshot::Sender<Response>, Arc<Shared>),
    /// Look at a waiting request again (client gone, body room).
    Poke(u64),
    /// Finish what is in progress and end the loop.
    Stop,
}

impl LoopMsg for Msg {
    fn poke(id: u64) -> Msg {
        Msg::Poke(id)
    }

    fn stop() -> Msg {
        Msg::Stop
    }
}

/// One loop as the rest of the worker sees it.
pub(crate) struct LoopHandle {
    pub(crate) inbox: Inbox<Msg>,
    /// Its beat and requests in progress (those whose coroutine has not ended); when
    /// blocked, new requests go to other loops.
    pub(crate) vitals: Vitals,
}

impl LoopHandle {
    pub(crate) fn new(name: String) -> std::io::Result<LoopHandle> {
        Ok(LoopHandle {
            inbox: Inbox::new()?,
            vitals: Vitals::new(name),
        })
    }
}

impl LoopThread for LoopHandle {
    type Msg = Msg;

    fn vitals(&self) -> &Vitals {
        &self.vitals
    }

    fn inbox(&self) -> &Inbox<Msg> {
        &self.inbox
    }

    fn report_blocked(&self, silent: f64) {
        let waiting = self.vitals.inflight();
        let stack = stack_of(self.vitals.ident());
        eprintln!(
            "forklift: the event loop of {} has not run for {silent:.1} s: blocking code in \
             async code holds up its {waiting} request(s); other loops take new requests. It \
             is at:\n{}",
            self.vitals.name,
            stack.trim_end()
        );
    }

    fn report_running(&self) {
        eprintln!(
            "forklift: the event loop of {} runs again",
            self.vitals.name
        );
    }
}

/// The Python stack of thread `ident` (it released the GIL in a blocking call, or
/// gives it up at the interpreter's switch interval).
fn stack_of(ident: u64) -> String {
    interp::with_gil(|py| {
        let r = (|| -> PyResult<String> {
            let frames = py.import("sys")?.call_method0("_current_frames")?;
            let Some(frame) = frames.get_item(ident).ok() else {
                return Ok("  (no Python frame)".into());
            };
            let lines = py
                .import("traceback")?
                .call_method1("format_stack", (frame,))?;
            let lines: Vec<String> = lines.extract()?;
            Ok(lines.concat())
        })();
        r.unwrap_or_else(|e| format!("  (stack unavailable: {e})"))
    })
}

/// The `runtime.py` module, created once per interpreter.
pub(crate) fn runtime(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let modules = py.import("sys")?.getattr("modules")?;
    if let Ok(m) = modules.get_item("_forklift_asgi") {
        return Ok(m.downcast_into::<PyModule>()?);
    }
    let m = PyModule::from_code(
        py,
        &CString::new(RUNTIME).expect("no NUL in runtime.py"),
        c"<forklift asgi runtime>",
        c"_forklift_asgi",
    )?;
    modules.set_item("_forklift_asgi", &m)?;
    Ok(m)
}

/// What a loop thread needs to start.
pub(crate) struct Setup {
    pub(crate) app: Py<PyAny>,
    pub(crate) state: Py<PyDict>,
    /// `auto`, `asyncio` or `uvloop`.
    pub(crate) event_loop: &'static str,
    /// `auto` or `on` on the loop that runs lifespan; None elsewhere.
    pub(crate) lifespan: Option<&'static str>,
    pub(crate) shutdown_timeout: f64,
}

/// A loop thread's life (started by `loops::spawn`): it tells `ready` when it serves
/// (after lifespan startup) or why it could not start.
pub(crate) fn run(
    py: Python<'_>,
    handle: &Arc<LoopHandle>,
    setup: Setup,
    ready: &interp::ReadySlot,
) -> PyResult<()> {
    let rt = runtime(py)?;
    let lp = rt.call_method1("new_loop", (setup.event_loop,))?;
    py.import("asyncio")?
        .call_method1("set_event_loop", (&lp,))?;
    cycle::set_loop(&lp)?;
    let hooks = Bound::new(
        py,
        Hooks {
            handle: handle.clone(),
        },
    )?;
    let root = rt.call_method1("Root", (&lp,))?;
    let intake = Bound::new(
        py,
        Intake {
            handle: handle.clone(),
            app: setup.app.clone_ref(py),
            state: setup.state.clone_ref(py),
            scopes: Scopes::new(py)?,
            run: rt.getattr("run")?.unbind(),
            create_task: lp.getattr("start_task")?.unbind(),
            stop: root.getattr("finish")?.unbind(),
            batch: Vec::new(),
        },
    )?;
    let fd = handle.inbox.fd();
    lp.call_method1("add_reader", (fd, &intake))?;
    rt.call_method1("beat", (&lp, hooks.getattr("tick")?, BEAT_SECONDS))?;
    let lifespan = match setup.lifespan {
        Some(mode) => {
            let (ls, err): (Bound<'_, PyAny>, Option<String>) = rt
                .call_method1(
                    "lifespan_startup",
                    (&lp, setup.app.bind(py), mode, setup.state.bind(py)),
                )?
                .extract()?;
            if let Some(msg) = err {
                let _ = lp.call_method1("remove_reader", (fd,));
                let _ = rt.call_method1("close", (&lp,));
                ready.tell(Err(msg));
                return Ok(());
            }
            Some(ls)
        }
        None => None,
    };
    ready.tell(Ok(()));
    root.call_method0("run")?;
    rt.call_method1(
        "drain",
        (&lp, hooks.getattr("inflight")?, setup.shutdown_timeout),
    )?;
    if let Some(ls) = lifespan {
        rt.call_method1("lifespan_shutdown", (&lp, ls))?;
    }
    lp.call_method1("remove_reader", (fd,))?;
    rt.call_method1("close", (&lp,))?;
    Ok(())
}

/// Callbacks the Python side calls on a loop: the watchdog pulse and the count of
/// requests in progress.
#[pyclass]
struct Hooks {
    handle: Arc<LoopHandle>,
}

#[pymethods]
impl Hooks {
    fn tick(&self) {
        self.handle.vitals.tick();
    }

    fn inflight(&self) -> usize {
        self.handle.vitals.inflight.load(Ordering::Acquire)
    }
}

/// The inbox's reader callback: takes the queued messages and acts on them.
#[pyclass]
struct Intake {
    handle: Arc<LoopHandle>,
    app: Py<PyAny>,
    state: Py<PyDict>,
    scopes: Scopes,
    /// `runtime.run(app, scope, cycle)`.
    run: Py<PyAny>,
    /// The loop's `start_task`: a task whose first step runs at once.
    create_task: Py<PyAny>,
    stop: Py<PyAny>,
    /// Reused buffer for the taken messages.
    batch: Vec<Msg>,
}

#[pymethods]
impl Intake {
    fn __call__(&mut self, py: Python<'_>) {
        self.handle.vitals.tick();
        let mut batch = std::mem::take(&mut self.batch);
        self.handle.inbox.take(&mut batch);
        for msg in batch.drain(..) {
            match msg {
                Msg::Call(req, tx, shared) => self.start(py, req, tx, shared),
                Msg::Poke(id) => cycle::poke(py, id),
                Msg::Stop => {
                    if let Err(e) = self.stop.bind(py).call0() {
                        interp::log_exception(py, &e);
                    }
                }
            }
        }
        self.batch = batch;
    }
}

impl Intake {
    /// Starts the app's coroutine for one request as a task on this loop.
    fn start(
        &self,
        py: Python<'_>,
        mut req: Request,
        tx: oneshot::Sender<Response>,
        shared: Arc<Shared>,
    ) {
        let inflight = self.handle.vitals.inflight.clone();
        let scope = match self.scopes.build(py, &req, self.state.bind(py)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("forklift: cannot build the ASGI scope; answering 500:");
                interp::log_exception(py, &e);
                inflight.fetch_sub(1, Ordering::AcqRel);
                let _ = tx.send(Response::text(
                    500,
                    Bytes::from_static(b"Internal Server Error\n"),
                ));
                return;
            }
        };
        let body = std::mem::take(&mut req.body);
        let rest = req.rest.take();
        let head_request = req.method.as_ref() == b"HEAD";
        let cycle = Cycle::new(shared, body, rest, head_request, tx, inflight);
        let cycle = match Bound::new(py, cycle) {
            Ok(c) => c,
            Err(e) => {
                interp::log_exception(py, &e);
                return;
            }
        };
        let res = self
            .run
            .bind(py)
            .call1((self.app.bind(py), scope, &cycle))
            .and_then(|coro| self.create_task.bind(py).call1((coro,)));
        if let Err(e) = res {
            let _ = cycle.borrow_mut().failed(py, e.value(py).as_any());
        }
    }
}
