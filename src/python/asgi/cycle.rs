//! One HTTP request as the app sees it: the `receive` and `send` callables of an ASGI
//! `http` scope. They live on the request's event loop and answer with awaitables that
//! are already done whenever they can (no future, no loop turn); they wait (an asyncio
//! future) only for what has not happened yet: more of the request body, the client
//! leaving, or room in the response body's channel.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;

use bytes::Bytes;
use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use tokio::sync::oneshot;

use crate::app::body::Next;
use crate::app::{Body, HeaderName, RequestBody, Response, Trailers};

use super::body::{BodyStream, Shared};

create_exception!(
    forklift,
    ClientDisconnected,
    PyOSError,
    "The client went away: the response can no longer be sent."
);

/// Request body bytes handed to the app per `http.request` event.
const BODY_CHUNK: usize = 64 * 1024;

/// Where a response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `http.response.start`.
    Start,
    /// Status and headers known; no body sent yet.
    Started,
    /// Body chunks flow through the channel.
    Streaming,
    /// The body is over; the app declared trailers and sends them now.
    Trailers,
    /// The response is complete (or was given up).
    Done,
}

/// The event loop's cached objects, set once per loop thread.
struct LoopCtx {
    create_future: Py<PyAny>,
}

thread_local! {
    static CTX: RefCell<Option<LoopCtx>> = const { RefCell::new(None) };
    /// Requests of this loop waiting for a poke (request body, the client leaving, body
    /// room).
    static WAITING: RefCell<HashMap<u64, Py<Cycle>>> = RefCell::new(HashMap::new());
}

/// Makes this thread's `receive`/`send` futures belong to `event_loop`.
pub(crate) fn set_loop(event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
    let create_future = event_loop.getattr("create_future")?.unbind();
    CTX.with(|c| *c.borrow_mut() = Some(LoopCtx { create_future }));
    Ok(())
}

fn new_future(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    CTX.with(|c| match c.borrow().as_ref() {
        Some(ctx) => ctx.create_future.bind(py).call0(),
        None => Err(PyRuntimeError::new_err("no ASGI event loop on this thread")),
    })
}

/// Resolves `fut` with `value` unless it is done already (cancelled by the app).
fn resolve(fut: &Bound<'_, PyAny>, value: Bound<'_, PyAny>) -> PyResult<()> {
    if !fut
        .call_method0(pyo3::intern!(fut.py(), "done"))?
        .is_truthy()?
    {
        fut.call_method1(pyo3::intern!(fut.py(), "set_result"), (value,))?;
    }
    Ok(())
}

fn reject(fut: &Bound<'_, PyAny>, err: PyErr) -> PyResult<()> {
    let py = fut.py();
    if !fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
        fut.call_method1(pyo3::intern!(py, "set_exception"), (err.into_value(py),))?;
    }
    Ok(())
}

/// On the loop, for a poke from the connection side: look at request `id` again.
pub(crate) fn poke(py: Python<'_>, id: u64) {
    let Some(cycle) = WAITING.with(|w| w.borrow().get(&id).map(|c| c.clone_ref(py))) else {
        return;
    };
    let res = cycle.bind(py).borrow_mut().wake(py);
    if let Err(e) = res {
        crate::python::interp::log_exception(py, &e);
    }
}

/// An awaitable that is already done: `await` gives `value` without suspending.
#[pyclass(module = "forklift", name = "_Ready")]
pub(crate) struct Ready {
    value: Option<Py<PyAny>>,
}

impl Ready {
    fn awaitable<'py>(
        py: Python<'py>,
        value: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Ok(Bound::new(
            py,
            Ready {
                value: value.map(Bound::unbind),
            },
        )?
        .into_any())
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self) -> PyResult<Option<()>> {
        match self.value.take() {
            None => Ok(None),
            Some(v) => Err(PyStopIteration::new_err((v,))),
        }
    }

    fn send(&mut self, _value: &Bound<'_, PyAny>) -> PyResult<Option<()>> {
        self.__next__()
    }
}

/// The `receive`/`send` pair of one request.
#[pyclass(module = "forklift")]
pub(crate) struct Cycle {
    shared: Arc<Shared>,
    /// Request body bytes here and not yet handed to the app.
    body: Bytes,
    /// The rest of the request body as it arrives, and word of the client leaving.
    rest: Option<RequestBody>,
    /// The `http.request` event with `more_body: False` went out (one goes out even
    /// for an empty body).
    body_done: bool,
    /// Pokes this request on its loop (given to the request body's pipe).
    waker: Waker,
    /// A HEAD request: body chunks from the app are dropped (the server sends none).
    head_request: bool,
    responder: Option<oneshot::Sender<Response>>,
    /// Status and headers from `http.response.start`.
    head: Option<(u16, Vec<(HeaderName, Bytes)>)>,
    /// The app declared trailers (`trailers: True` in `http.response.start`): they
    /// end the response, after the body.
    trailers: Option<Trailers>,
    phase: Phase,
    recv_waiters: Vec<Py<PyAny>>,
    send_waiter: Option<Py<PyAny>>,
    /// The loop's count of requests in progress, decremented once when the app is done.
    inflight: Option<Arc<AtomicUsize>>,
}

impl Cycle {
    pub(crate) fn new(
        shared: Arc<Shared>,
        body: Bytes,
        rest: Option<RequestBody>,
        head_request: bool,
        responder: oneshot::Sender<Response>,
        inflight: Arc<AtomicUsize>,
    ) -> Cycle {
        Cycle {
            waker: Waker::from(shared.clone()),
            shared,
            body,
            rest,
            body_done: false,
            head_request,
            responder: Some(responder),
            head: None,
            trailers: None,
            phase: Phase::Start,
            recv_waiters: Vec::new(),
            send_waiter: None,
            inflight: Some(inflight),
        }
    }

    fn disconnect_msg(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let d = PyDict::new(py);
        d.set_item(
            pyo3::intern!(py, "type"),
            pyo3::intern!(py, "http.disconnect"),
        )?;
        Ok(d.into_any())
    }

    /// Hands the response head (and a full body) to the connection.
    fn reply(&mut self, resp: Response) {
        if let Some(tx) = self.responder.take() {
            let _ = tx.send(resp);
        }
    }

    /// The response is complete: wake whoever waits in `receive()`.
    fn complete(&mut self, py: Python<'_>) -> PyResult<()> {
        self.phase = Phase::Done;
        self.shared.set_complete();
        self.wake(py)
    }

    /// What `receive()` gives now, if anything: the request body in `http.request`
    /// events (data before the news of a client that only closed its sending side),
    /// then `http.disconnect` once the response is complete or the client has gone.
    /// `None`: nothing yet (the loop is poked when something comes).
    fn next_event<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        if self.shared.is_gone() || self.phase == Phase::Done {
            return Self::disconnect_msg(py).map(Some);
        }
        if !self.body_done {
            if self.body.is_empty() {
                if let Some(rest) = &self.rest {
                    match rest.next(Some(&self.waker)) {
                        Next::Data(b) => self.body = b,
                        Next::End => {}
                        Next::Failed(_) => return Self::disconnect_msg(py).map(Some),
                        Next::Pending if rest.is_gone() => {
                            return Self::disconnect_msg(py).map(Some)
                        }
                        Next::Pending => return Ok(None),
                    }
                }
            }
            let n = self.body.len().min(BODY_CHUNK);
            let chunk = self.body.split_to(n);
            let more = !self.body.is_empty() || self.rest.as_ref().is_some_and(|r| !r.at_end());
            self.body_done = !more;
            let d = PyDict::new(py);
            d.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "http.request"))?;
            d.set_item(pyo3::intern!(py, "body"), PyBytes::new(py, &chunk))?;
            d.set_item(pyo3::intern!(py, "more_body"), more)?;
            return Ok(Some(d.into_any()));
        }
        match &self.rest {
            Some(rest) if rest.is_gone() => Self::disconnect_msg(py).map(Some),
            Some(rest) => {
                rest.watch(&self.waker);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Resolves the waiters whose condition now holds; forgets this request's waiting
    /// entry when none is left.
    fn wake(&mut self, py: Python<'_>) -> PyResult<()> {
        // A waiter the app cancelled gets nothing (it would lose a body chunk).
        let mut live = Vec::with_capacity(self.recv_waiters.len());
        for w in std::mem::take(&mut self.recv_waiters) {
            if !w
                .bind(py)
                .call_method0(pyo3::intern!(py, "done"))?
                .is_truthy()?
            {
                live.push(w);
            }
        }
        self.recv_waiters = live;
        while !self.recv_waiters.is_empty() {
            match self.next_event(py)? {
                Some(event) => {
                    let w = self.recv_waiters.remove(0);
                    resolve(w.bind(py), event)?;
                }
                None => break,
            }
        }
        if self.send_waiter.is_some() {
            if self.shared.is_gone() {
                let w = self.send_waiter.take().expect("checked");
                reject(
                    w.bind(py),
                    ClientDisconnected::new_err("the client went away"),
                )?;
            } else if !self.shared.writer_waiting() {
                let w = self.send_waiter.take().expect("checked");
                resolve(w.bind(py), py.None().into_bound(py))?;
            }
        }
        if self.recv_waiters.is_empty() && self.send_waiter.is_none() {
            WAITING.with(|m| m.borrow_mut().remove(&self.shared.id));
        }
        Ok(())
    }

    fn wait_here(&self, slf: &Bound<'_, Cycle>) {
        WAITING.with(|m| {
            m.borrow_mut()
                .entry(self.shared.id)
                .or_insert_with(|| slf.clone().unbind());
        });
    }

    /// The response head from `http.response.start`, as a response without a body.
    fn take_head(&mut self) -> Response {
        let (status, headers) = self.head.take().unwrap_or((500, Vec::new()));
        let mut r = Response::new(status);
        r.headers = headers;
        r.trailers = self.trailers.clone();
        r
    }

    fn done_counting(&mut self) {
        if let Some(n) = self.inflight.take() {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The app's coroutine is over; `error` says how it failed. Whatever part of the
    /// response is missing becomes a 500 (nothing sent yet) or a closed connection.
    fn end(&mut self, py: Python<'_>, error: Option<String>) -> PyResult<()> {
        self.done_counting();
        match self.phase {
            Phase::Start => {
                self.reply(Response::text(
                    500,
                    Bytes::from_static(b"Internal Server Error\n"),
                ));
            }
            Phase::Started => {
                let mut head = self.take_head();
                let shared = self.shared.clone();
                shared.finish(Some(error.unwrap_or_else(|| {
                    "the ASGI app returned without completing the response".into()
                })));
                head.body = Body::Stream(Box::pin(BodyStream::new(shared)));
                self.reply(head);
            }
            Phase::Streaming | Phase::Trailers => {
                self.shared.finish(Some(error.unwrap_or_else(|| {
                    "the ASGI app returned without completing the response".into()
                })))
            }
            Phase::Done => {}
        }
        self.complete(py)?;
        WAITING.with(|m| m.borrow_mut().remove(&self.shared.id));
        Ok(())
    }

    fn start(&mut self, msg: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = msg.py();
        let status: u16 = match msg.get_item(pyo3::intern!(py, "status"))? {
            Some(s) => s
                .extract()
                .map_err(|_| PyTypeError::new_err("'status' must be an int"))?,
            None => return Err(PyValueError::new_err("http.response.start needs 'status'")),
        };
        if !(100..=999).contains(&status) {
            return Err(PyValueError::new_err(format!("invalid status {status}")));
        }
        if let Some(t) = msg.get_item(pyo3::intern!(py, "trailers"))? {
            if t.is_truthy()? {
                self.trailers = Some(Trailers::new());
            }
        }
        let mut list = Vec::new();
        if let Some(headers) = msg.get_item(pyo3::intern!(py, "headers"))? {
            for item in headers.try_iter()? {
                let item = item?;
                let (name, value) = header_pair(&item)?;
                // `Trailer` announces the trailers, when there are any.
                let announces = self.trailers.is_some() && name.eq_ignore_ascii_case("trailer");
                if is_hop_by_hop(&name) && !announces {
                    continue;
                }
                list.push((name, value));
            }
        }
        self.head = Some((status, list));
        self.phase = Phase::Started;
        Ok(())
    }
}

/// A `(name, value)` pair of bytes from the app, checked.
fn header_pair(item: &Bound<'_, PyAny>) -> PyResult<(HeaderName, Bytes)> {
    let bad = || PyTypeError::new_err("each header must be a [name, value] pair of bytes");
    if item.len().map_err(|_| bad())? != 2 {
        return Err(bad());
    }
    let name = item.get_item(0)?;
    let value = item.get_item(1)?;
    let name = name.downcast::<PyBytes>().map_err(|_| bad())?.as_bytes();
    let value = value.downcast::<PyBytes>().map_err(|_| bad())?.as_bytes();
    if name.is_empty()
        || !name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(PyValueError::new_err(format!(
            "invalid header name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(PyValueError::new_err(format!(
            "header {:?} has a value with CR, LF or NUL",
            String::from_utf8_lossy(name)
        )));
    }
    let name = std::str::from_utf8(name).expect("token bytes are ASCII");
    let name: HeaderName = match COMMON_NAMES.iter().find(|c| c.eq_ignore_ascii_case(name)) {
        Some(c) if *c == name => std::borrow::Cow::Borrowed(*c),
        _ => std::borrow::Cow::Owned(name.to_owned()),
    };
    Ok((name, Bytes::copy_from_slice(value)))
}

/// Header names apps usually send, spelled as they usually do, so no allocation.
const COMMON_NAMES: &[&str] = &[
    "content-type",
    "content-length",
    "location",
    "set-cookie",
    "cache-control",
    "etag",
    "last-modified",
    "vary",
    "content-encoding",
    "content-disposition",
];

/// Hop-by-hop headers: the server frames the response and manages the connection.
fn is_hop_by_hop(name: &str) -> bool {
    [
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

#[pymethods]
impl Cycle {
    /// `await receive()`: the request body in `http.request` events as it arrives,
    /// then (once the response is complete or the client has gone) `http.disconnect`.
    fn receive<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let mut me = slf.borrow_mut();
        if !me.recv_waiters.is_empty() {
            // Events go out in order: behind the receive() already waiting.
        } else if let Some(event) = me.next_event(py)? {
            return Ready::awaitable(py, Some(event));
        }
        let fut = new_future(py)?;
        me.recv_waiters.push(fut.clone().unbind());
        me.wait_here(slf);
        Ok(fut)
    }

    /// `await send(message)`: `http.response.start`, `http.response.body`,
    /// `http.response.pathsend`, `http.response.trailers`.
    fn send<'py>(
        slf: &Bound<'py, Self>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let msg = message
            .downcast::<PyDict>()
            .map_err(|_| PyTypeError::new_err("an ASGI message is a dict"))?;
        let kind = msg
            .get_item(pyo3::intern!(py, "type"))?
            .ok_or_else(|| PyValueError::new_err("an ASGI message needs a 'type'"))?;
        let kind = kind
            .downcast::<PyString>()
            .map_err(|_| PyTypeError::new_err("the message 'type' must be a str"))?;
        let kind = kind.to_str()?;
        let mut me = slf.borrow_mut();
        if me.shared.is_gone() {
            return Err(ClientDisconnected::new_err("the client went away"));
        }
        match (kind, me.phase) {
            ("http.response.start", Phase::Start) => {
                me.start(msg)?;
                Ready::awaitable(py, None)
            }
            ("http.response.body", Phase::Started | Phase::Streaming) => {
                let body = match msg.get_item(pyo3::intern!(py, "body"))? {
                    None => Bytes::new(),
                    Some(b) => match b.downcast::<PyBytes>() {
                        Ok(b) => Bytes::copy_from_slice(b.as_bytes()),
                        Err(_) => Bytes::from(
                            b.extract::<Vec<u8>>()
                                .map_err(|_| PyTypeError::new_err("'body' must be bytes"))?,
                        ),
                    },
                };
                let more = match msg.get_item(pyo3::intern!(py, "more_body"))? {
                    None => false,
                    Some(m) => m.is_truthy()?,
                };
                // With trailers declared, the body's end is not the response's.
                let ends = !more && (me.trailers.is_none() || me.head_request);
                if me.phase == Phase::Started {
                    let mut head = me.take_head();
                    if ends {
                        if !body.is_empty() {
                            head.body = Body::Full(body);
                        }
                        me.reply(head);
                        me.complete(py)?;
                        return Ready::awaitable(py, None);
                    }
                    head.body = Body::Stream(Box::pin(BodyStream::new(me.shared.clone())));
                    me.reply(head);
                    me.phase = Phase::Streaming;
                    if me.head_request {
                        // No body goes out: the stream is dropped unread, which is
                        // not the client leaving.
                        me.shared.set_complete();
                    }
                }
                if me.head_request {
                    if !more {
                        me.complete(py)?;
                    }
                    return Ready::awaitable(py, None);
                }
                let full = me.shared.push(body);
                if ends {
                    me.shared.finish(None);
                    me.complete(py)?;
                    return Ready::awaitable(py, None);
                }
                if !more {
                    me.phase = Phase::Trailers;
                }
                if !full {
                    return Ready::awaitable(py, None);
                }
                let fut = new_future(py)?;
                me.send_waiter = Some(fut.clone().unbind());
                me.wait_here(slf);
                Ok(fut)
            }
            ("http.response.pathsend", Phase::Started) => {
                let path: std::path::PathBuf = msg
                    .get_item(pyo3::intern!(py, "path"))?
                    .ok_or_else(|| PyValueError::new_err("http.response.pathsend needs 'path'"))?
                    .extract()?;
                let file = File::open(&path)?;
                let len = file.metadata()?.len();
                let mut head = me.take_head();
                head.body = Body::File {
                    file,
                    offset: 0,
                    len,
                };
                me.reply(head);
                me.complete(py)?;
                Ready::awaitable(py, None)
            }
            ("http.response.trailers", Phase::Trailers) => {
                let trailers = me.trailers.clone().expect("declared");
                if let Some(headers) = msg.get_item(pyo3::intern!(py, "headers"))? {
                    for item in headers.try_iter()? {
                        let (name, value) = header_pair(&item?)?;
                        trailers.push(name, value);
                    }
                }
                let more = match msg.get_item(pyo3::intern!(py, "more_trailers"))? {
                    None => false,
                    Some(m) => m.is_truthy()?,
                };
                if !more {
                    me.shared.finish(None);
                    me.complete(py)?;
                }
                Ready::awaitable(py, None)
            }
            // A HEAD response (no body, no trailers) is complete before them; an app
            // that did not declare trailers and sends them anyway is not broken.
            ("http.response.trailers", Phase::Done) => Ready::awaitable(py, None),
            (
                "http.response.start" | "http.response.body" | "http.response.pathsend",
                Phase::Done,
            ) => Err(PyRuntimeError::new_err(format!(
                "Unexpected ASGI message '{kind}' sent, after response already completed."
            ))),
            ("http.response.start", _) => Err(PyRuntimeError::new_err(
                "Expected ASGI message 'http.response.body', but got 'http.response.start'.",
            )),
            (_, Phase::Start) => Err(PyRuntimeError::new_err(format!(
                "Expected ASGI message 'http.response.start', but got '{kind}'."
            ))),
            _ => Err(PyRuntimeError::new_err(format!(
                "Unexpected ASGI message '{kind}' sent."
            ))),
        }
    }

    /// Called by the runner when the app's coroutine returned.
    fn returned(&mut self, py: Python<'_>) -> PyResult<()> {
        match self.phase {
            Phase::Start => eprintln!(
                "forklift: the ASGI app returned without starting a response; answering 500"
            ),
            Phase::Started | Phase::Streaming | Phase::Trailers => eprintln!(
                "forklift: the ASGI app returned without completing its response; closing the connection"
            ),
            Phase::Done => {}
        }
        self.end(py, None)
    }

    /// Called by the runner when the app's coroutine raised `exc`.
    pub(crate) fn failed(&mut self, py: Python<'_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let err = PyErr::from_value(exc.clone());
        let quiet = err.is_instance_of::<ClientDisconnected>(py) && self.shared.is_gone();
        if !quiet {
            match self.phase {
                Phase::Start => eprintln!("forklift: exception in the ASGI app; answering 500:"),
                Phase::Started | Phase::Streaming | Phase::Trailers => eprintln!(
                    "forklift: exception in the ASGI app after its response started; closing the connection:"
                ),
                Phase::Done => eprintln!("forklift: exception in the ASGI app after its response:"),
            }
            crate::python::interp::log_exception(py, &err);
        }
        self.end(py, Some("the ASGI app raised".into()))
    }
}

impl Drop for Cycle {
    fn drop(&mut self) {
        self.done_counting();
        if self.phase != Phase::Done {
            self.shared
                .finish(Some("the ASGI request was dropped".into()));
        }
    }
}
