//! The loop thread of a greenlet worker: it runs gevent's hub or an asyncio event loop
//! (`runtime.py`) for its whole life. Requests reach it in batches through an
//! [`Inbox`] the loop watches; each becomes a [`Job`] that a core (greenlet) serves by
//! calling the WSGI app. Replies finished during a batch are handed over when the batch
//! ends, so the server's loop is woken once per batch; a streamed body goes out through
//! the request's [`Shared`] channel, its core parked while the channel is full.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyModule;
use tokio::sync::oneshot;

use crate::app::{Body, Request, Response};
use crate::python::asgi::body::{BodyStream, Shared};
use crate::python::asgi::inbox::Inbox;
use crate::python::call::{AppState, Outcome, Step, StreamState};
use crate::python::interp;
use crate::python::loops::{LoopMsg, LoopThread, Vitals};
use crate::server::GreenEngine;

/// The Python half (`runtime.py`).
const RUNTIME: &str = include_str!("runtime.py");

/// How often the loop proves it is running (seconds).
const BEAT_SECONDS: f64 = 0.1;

/// Marks a request in progress on a loop; dropped when its job is done (or dropped
/// unserved).
pub(crate) struct Ticket(Arc<AtomicUsize>);

impl Ticket {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Ticket {
        count.fetch_add(1, Ordering::AcqRel);
        Ticket(count.clone())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the loop is asked to do.
#[allow(clippy::large_enum_variant)] // nearly every message is a Call: boxing it buys nothing
pub(crate) enum Msg {
    /// Serve a request.
    Call {
        req: Request,
        tx: oneshot::Sender<Response>,
        shared: Arc<Shared>,
        ticket: Ticket,
    },
    /// Look at a request again (its connection took body chunks, or went away).
    Poke(u64),
    /// Stop taking requests; end once those in progress are done.
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

/// The loop as the rest of the worker sees it.
pub(crate) struct HubHandle {
    pub(crate) engine: GreenEngine,
    pub(crate) inbox: Inbox<Msg>,
    /// Its beat and requests in progress (running or waiting for a core); when
    /// blocked, the worker takes no new clients.
    pub(crate) vitals: Vitals,
}

impl HubHandle {
    pub(crate) fn new(engine: GreenEngine) -> std::io::Result<HubHandle> {
        Ok(HubHandle {
            engine,
            inbox: Inbox::new()?,
            vitals: Vitals::new(format!("forklift-{}", engine.package())),
        })
    }

    /// The loop's name in log lines.
    pub(crate) fn describe(&self) -> &'static str {
        match self.engine {
            GreenEngine::Gevent => "gevent hub",
            GreenEngine::Asyncio => "asyncio loop",
        }
    }
}

impl LoopThread for HubHandle {
    type Msg = Msg;

    fn vitals(&self) -> &Vitals {
        &self.vitals
    }

    fn inbox(&self) -> &Inbox<Msg> {
        &self.inbox
    }

    fn report_blocked(&self, silent: f64) {
        let waiting = self.vitals.inflight().saturating_sub(1);
        let (what, stack) = blocked_at(self.vitals.ident());
        let culprit = match what {
            Some(w) => format!("request {w} blocks it"),
            None => "code outside a request blocks it".into(),
        };
        let hint = match self.engine {
            GreenEngine::Gevent => {
                "time.sleep, or I/O gevent has not made cooperative: monkey-patch with \
                 --gevent-monkey-patch or gevent.monkey.patch_all()"
            }
            GreenEngine::Asyncio => {
                "time.sleep or blocking I/O: wait on the asyncio loop from the request's \
                 greenlet instead"
            }
        };
        eprintln!(
            "forklift: worker {}: the {} has not run for {silent:.1} s: {culprit} without \
             yielding ({hint}); {waiting} other request(s) wait. It is at:\n{}",
            std::process::id(),
            self.describe(),
            stack.trim_end()
        );
    }

    fn report_running(&self) {
        eprintln!(
            "forklift: worker {}: the {} runs again",
            std::process::id(),
            self.describe()
        );
    }
}

/// The request the loop thread `ident` is stuck in, and its Python stack.
fn blocked_at(ident: u64) -> (Option<String>, String) {
    interp::with_gil(|py| {
        runtime(py)
            .and_then(|rt| rt.call_method1("blocked_at", (ident,)))
            .and_then(|r| r.extract::<(Option<String>, String)>())
            .unwrap_or_else(|e| (None, format!("  (stack unavailable: {e})")))
    })
}

/// The `runtime.py` module, created once per interpreter.
pub(crate) fn runtime(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    interp::helper_module(py, "_forklift_green", RUNTIME, c"<forklift green runtime>")
}

/// What the loop thread needs to start.
pub(crate) struct Setup {
    pub(crate) app: Arc<AppState>,
    pub(crate) cores: usize,
    pub(crate) shutdown_timeout: f64,
}

/// The loop thread's life (started by `loops::spawn`): it tells `ready` when it serves.
pub(crate) fn run(
    py: Python<'_>,
    handle: &Arc<HubHandle>,
    setup: Setup,
    ready: &interp::ReadySlot,
) -> PyResult<()> {
    if handle.engine == GreenEngine::Asyncio {
        // The running loop is this thread's event loop.
        interp::mark_thread_loop();
    }
    let rt = runtime(py)?;
    let hooks = Bound::new(
        py,
        Hooks {
            handle: handle.clone(),
            ready: ready.clone(),
        },
    )?;
    let intake = Bound::new(
        py,
        Intake {
            handle: handle.clone(),
            app: setup.app,
            batch: Mutex::new(Vec::new()),
        },
    )?;
    let serve = match handle.engine {
        GreenEngine::Gevent => "serve_gevent",
        GreenEngine::Asyncio => "serve_asyncio",
    };
    rt.getattr(serve)?.call1((
        handle.inbox.fd(),
        intake,
        hooks.getattr("tick")?,
        BEAT_SECONDS,
        setup.cores,
        hooks.getattr("ready")?,
        hooks.getattr("drained")?,
        setup.shutdown_timeout,
    ))?;
    Ok(())
}

/// Callbacks the Python side calls on the loop.
#[pyclass(frozen)]
struct Hooks {
    handle: Arc<HubHandle>,
    ready: interp::ReadySlot,
}

#[pymethods]
impl Hooks {
    fn tick(&self) {
        self.handle.vitals.tick();
    }

    /// The loop serves.
    fn ready(&self, _cores: &Bound<'_, PyAny>) {
        self.ready.tell(Ok(()));
    }

    /// The loop ended with `left` requests unfinished (the shutdown timeout passed).
    fn drained(&self, left: usize) {
        if left > 0 {
            eprintln!(
                "forklift: worker {}: the {} stopped with {left} request(s) unfinished after the shutdown timeout",
                std::process::id(),
                self.handle.describe()
            );
        }
    }
}

thread_local! {
    /// The loop thread is inside a batch: replies wait in [`REPLIES`] for its end.
    static IN_BATCH: Cell<bool> = const { Cell::new(false) };
    /// Replies finished during the current batch.
    static REPLIES: RefCell<Vec<(oneshot::Sender<Response>, Response)>> =
        const { RefCell::new(Vec::new()) };
}

/// Hands `r` to its connection: at the end of the batch when in one, else now.
fn reply(tx: oneshot::Sender<Response>, r: Response) {
    if IN_BATCH.with(Cell::get) {
        REPLIES.with(|q| q.borrow_mut().push((tx, r)));
    } else {
        let _ = tx.send(r);
    }
}

fn flush_replies() {
    let done = REPLIES.with(|q| std::mem::take(&mut *q.borrow_mut()));
    for (tx, r) in done {
        let _ = tx.send(r);
    }
}

/// The inbox's reader callback: `intake(cores, stop)` takes the queued messages and
/// acts on them.
#[pyclass(frozen)]
struct Intake {
    handle: Arc<HubHandle>,
    app: Arc<AppState>,
    /// Reused buffer for the taken messages.
    batch: Mutex<Vec<Msg>>,
}

#[pymethods]
impl Intake {
    fn __call__(&self, py: Python<'_>, cores: &Bound<'_, PyAny>, stop: &Bound<'_, PyAny>) {
        self.handle.vitals.tick();
        let mut batch = std::mem::take(&mut *self.batch.lock().unwrap_or_else(|p| p.into_inner()));
        self.handle.inbox.take(&mut batch);
        IN_BATCH.with(|b| b.set(true));
        for msg in batch.drain(..) {
            let res = match msg {
                Msg::Call {
                    req,
                    tx,
                    shared,
                    ticket,
                } => {
                    let what = format!("{} {}", req.method(), String::from_utf8_lossy(&req.target));
                    let job = Job {
                        app: self.app.clone(),
                        work: Mutex::new(Some(Work { req, tx, shared })),
                        what,
                        ticket: Mutex::new(Some(ticket)),
                    };
                    Bound::new(py, job)
                        .and_then(|job| cores.call_method1(pyo3::intern!(py, "start"), (job,)))
                }
                Msg::Poke(id) => cores.call_method1(pyo3::intern!(py, "poke"), (id,)),
                Msg::Stop => stop.call0(),
            };
            if let Err(e) = res {
                interp::log_exception(py, &e);
            }
        }
        IN_BATCH.with(|b| b.set(false));
        *self.batch.lock().unwrap_or_else(|p| p.into_inner()) = batch;
        flush_replies();
    }
}

/// What serving a request needs, taken once.
struct Work {
    req: Request,
    tx: oneshot::Sender<Response>,
    shared: Arc<Shared>,
}

/// One request as the loop's cores see it: `job.serve(cores)` runs the app in the
/// calling greenlet.
#[pyclass(frozen)]
struct Job {
    app: Arc<AppState>,
    work: Mutex<Option<Work>>,
    /// `METHOD target`, for the blocked-loop report.
    what: String,
    /// Given back just before the response's last part goes to the connection, so the
    /// server sees the free core when it wakes for that part.
    ticket: Mutex<Option<Ticket>>,
}

#[pymethods]
impl Job {
    fn describe(&self) -> &str {
        &self.what
    }

    fn serve(&self, py: Python<'_>, cores: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(Work { req, tx, shared }) =
            self.work.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return Ok(());
        };
        if tx.is_closed() {
            return Ok(()); // the client left while the request waited for a core
        }
        let ticket = self.ticket.lock().unwrap_or_else(|p| p.into_inner()).take();
        match self.app.run(py, req) {
            Outcome::Done(r) => {
                shared.set_complete();
                drop(ticket);
                reply(tx, r);
                Ok(())
            }
            Outcome::Streaming {
                mut head,
                first,
                iter,
                result,
                sr,
            } => {
                head.body = Body::Stream(Box::pin(BodyStream::new(shared.clone())));
                reply(tx, head);
                let state = StreamState { iter, result, sr };
                let res = stream(py, &state, &shared, first, cores, ticket);
                state.close(py);
                res
            }
        }
    }
}

/// Pulls the rest of a streamed body into the request's channel. The core yields to
/// the others after each chunk, and parks while the channel is full; a client gone
/// ends it (the caller then calls `close()`).
fn stream(
    py: Python<'_>,
    state: &StreamState,
    shared: &Shared,
    first: Bytes,
    cores: &Bound<'_, PyAny>,
    ticket: Option<Ticket>,
) -> PyResult<()> {
    let mut full = shared.push(first);
    loop {
        if full {
            while shared.writer_waiting() && !shared.is_gone() {
                cores.call_method1(pyo3::intern!(py, "wait"), (shared.id,))?;
            }
        } else {
            cores.getattr(pyo3::intern!(py, "pause"))?.call0()?;
        }
        if shared.is_gone() {
            return Ok(());
        }
        match state.next(py) {
            Step::Chunk(b) => full = shared.push(b),
            Step::End => {
                drop(ticket);
                shared.finish(None);
                return Ok(());
            }
            Step::Failed => {
                drop(ticket);
                shared.finish(Some("the app failed while streaming".into()));
                return Ok(());
            }
        }
    }
}
