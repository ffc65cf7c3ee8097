//! Running a WSGI app for one request and turning its answer into a [`Response`]: a
//! list of bytes becomes one buffer, a file wrapper over a real file becomes
//! [`Body::File`], anything else streams (pulled with the GIL on blocking models, pushed
//! through a bounded channel from a pool thread on event-loop models). `close()` is
//! always called, also when the client goes away mid-stream.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyIterator, PyList, PyTuple};

use crate::app::{Body, Reply, Request, Response};

use super::interp::{self, with_gil};
use super::options::{PythonError, PythonOptions};
use super::pool::{Job, PoolSlot};
use super::wsgi::{FileWrapper, StartResponse};

/// Single body items at least this big are kept in Python's buffer instead of copied.
const ZERO_COPY_MIN: usize = 64 * 1024;
/// Chunks buffered between a pool thread producing a streamed body and the connection.
const STREAM_CHANNEL: usize = 4;

/// A loaded app: the callable and its environ template.
pub(crate) struct AppState {
    app: Py<PyAny>,
    template: Py<PyDict>,
}

/// What running the app produced.
pub(crate) enum Outcome {
    /// A complete response; `close()` has been called.
    Done(Response),
    /// Headers are known and a first chunk is ready; more may follow from `iter`.
    Streaming {
        head: Response,
        first: Bytes,
        iter: Py<PyIterator>,
        result: Py<PyAny>,
        sr: Py<StartResponse>,
    },
}

impl AppState {
    pub(crate) fn load(py: Python<'_>, opts: &PythonOptions) -> Result<AppState, PythonError> {
        let found = super::load::find(py, opts)?;
        if super::asgi::looks_asgi(&found.app) {
            return Err(PythonError::LooksAsgi {
                what: found.what,
                callable: found.callable,
            });
        }
        let app = found.app;
        let template = super::environ::template(py, opts.multithread, opts.multiprocess)
            .map_err(|e| PythonError::Init(interp::summary(py, &e)))?;
        Ok(AppState {
            app: app.unbind(),
            template,
        })
    }

    /// Serves `req` on this thread (blocking models). The GIL is held for the call; a
    /// streamed body re-acquires it for each chunk.
    pub(crate) fn call_blocking(&self, py: Python<'_>, req: Request) -> Response {
        match self.run(py, req) {
            Outcome::Done(r) => r,
            Outcome::Streaming {
                mut head,
                first,
                iter,
                result,
                sr,
            } => {
                head.body = Body::Stream(Box::pin(PullStream {
                    first: Some(first),
                    state: Some(StreamState { iter, result, sr }),
                }));
                head
            }
        }
    }

    /// Runs the app for `req` on this thread; a streamed body is left for the caller to
    /// pull.
    pub(crate) fn run(&self, py: Python<'_>, req: Request) -> Outcome {
        interp::ensure_thread_loop(py);
        let env = match super::environ::build(py, self.template.bind(py), req) {
            Ok(e) => e,
            Err(e) => return Outcome::Done(error_500(py, &e, "building the environ")),
        };
        let sr = match Bound::new(py, StartResponse::default()) {
            Ok(s) => s,
            Err(e) => return Outcome::Done(error_500(py, &e, "creating start_response")),
        };
        let result = match call2(self.app.bind(py), env.as_any(), sr.as_any()) {
            Ok(r) => r,
            Err(e) => return Outcome::Done(failed(py, &e, &sr)),
        };
        finish(py, result, &sr)
    }
}

/// Calls `f(a, b)` without building an argument tuple.
fn call2<'py>(
    f: &Bound<'py, PyAny>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let args = [a.as_ptr(), b.as_ptr()];
    // SAFETY: `args` holds two borrowed references kept alive by `a` and `b` for the
    // call; PyObject_Vectorcall returns a new reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            f.py(),
            ffi::PyObject_Vectorcall(f.as_ptr(), args.as_ptr(), 2, std::ptr::null_mut()),
        )
    }
}

/// The app raised: log the traceback; answer 500, or, when part of the body already
/// went out through `write()`, send that and abort.
fn failed(py: Python<'_>, e: &PyErr, sr: &Bound<'_, StartResponse>) -> Response {
    let mut me = sr.borrow_mut();
    if me.sent {
        interp::log_exception(py, e);
        let written = me.written.split().freeze();
        let head = me.head.take();
        drop(me);
        let mut r = head_response(head);
        r.body = aborted_after(written);
        return r;
    }
    drop(me);
    error_500(py, e, "the app")
}

fn error_500(py: Python<'_>, e: &PyErr, during: &str) -> Response {
    eprintln!("forklift: exception in {during}; answering 500:");
    interp::log_exception(py, e);
    Response::text(500, Bytes::from_static(b"Internal Server Error\n"))
}

fn plain_500(msg: &str) -> Response {
    eprintln!("forklift: {msg}; answering 500");
    Response::text(500, Bytes::from_static(b"Internal Server Error\n"))
}

fn head_response(head: Option<super::wsgi::Head>) -> Response {
    match head {
        Some(h) => Response {
            status: h.status,
            reason: h.reason,
            headers: h.headers,
            body: Body::Empty,
            trailers: None,
        },
        None => Response::new(500),
    }
}

/// A body that yields `data` and then fails, so the connection is closed.
fn aborted_after(data: Bytes) -> Body {
    let items: Vec<io::Result<Bytes>> = vec![
        Ok(data),
        Err(io::Error::other(
            "the app raised after the response started",
        )),
    ];
    Body::Stream(Box::pin(futures_util::stream::iter(items)))
}

/// Calls `result.close()` when it has one; errors are logged.
fn close(py: Python<'_>, result: &Bound<'_, PyAny>) {
    let name = pyo3::intern!(py, "close");
    if let Ok(c) = result.getattr(name) {
        if let Err(e) = c.call0() {
            eprintln!("forklift: exception in close() of the app's iterable:");
            interp::log_exception(py, &e);
        }
    }
}

fn is_exact_list_or_tuple(o: &Bound<'_, PyAny>) -> bool {
    // SAFETY: type checks on a live object.
    unsafe { ffi::PyList_CheckExact(o.as_ptr()) != 0 || ffi::PyTuple_CheckExact(o.as_ptr()) != 0 }
}

fn finish(py: Python<'_>, result: Bound<'_, PyAny>, sr: &Bound<'_, StartResponse>) -> Outcome {
    if is_exact_list_or_tuple(&result) {
        return Outcome::Done(from_sequence(py, &result, sr));
    }
    if let Ok(fw) = result.downcast::<FileWrapper>() {
        if let Some(resp) = from_file_wrapper(py, fw, sr) {
            close(py, &result);
            return Outcome::Done(resp);
        }
    }
    let mut iter = match result.try_iter() {
        Ok(i) => i,
        Err(e) => {
            close(py, &result);
            return Outcome::Done(failed(py, &e, sr));
        }
    };
    loop {
        match iter.next() {
            None => {
                close(py, &result);
                let mut me = sr.borrow_mut();
                if me.head.is_none() {
                    return Outcome::Done(plain_500(
                        "the app returned without calling start_response()",
                    ));
                }
                let body = me.written.split().freeze();
                let head = me.head.take();
                me.sent = true;
                drop(me);
                let mut r = head_response(head);
                if !body.is_empty() {
                    r.body = Body::Full(body);
                }
                return Outcome::Done(r);
            }
            Some(Err(e)) => {
                close(py, &result);
                return Outcome::Done(failed(py, &e, sr));
            }
            Some(Ok(item)) => {
                let Ok(b) = item.downcast::<PyBytes>() else {
                    close(py, &result);
                    return Outcome::Done(plain_500("the app yielded a non-bytes item"));
                };
                let b = b.as_bytes();
                if b.is_empty() {
                    continue;
                }
                let mut me = sr.borrow_mut();
                let Some(head) = me.head.take() else {
                    drop(me);
                    close(py, &result);
                    return Outcome::Done(plain_500(
                        "the app produced a body before calling start_response()",
                    ));
                };
                me.sent = true;
                let first = if me.written.is_empty() {
                    Bytes::copy_from_slice(b)
                } else {
                    me.written.extend_from_slice(b);
                    me.written.split().freeze()
                };
                drop(me);
                return Outcome::Streaming {
                    head: head_response(Some(head)),
                    first,
                    iter: iter.unbind(),
                    result: result.unbind(),
                    sr: sr.clone().unbind(),
                };
            }
        }
    }
}

/// The fast path: a list or tuple of bytes becomes one buffer.
fn from_sequence(
    py: Python<'_>,
    seq: &Bound<'_, PyAny>,
    sr: &Bound<'_, StartResponse>,
) -> Response {
    let items: &[*mut ffi::PyObject] = if seq.len().unwrap_or(0) == 0 {
        &[]
    } else if let Ok(l) = seq.downcast::<PyList>() {
        // SAFETY: a list's item array is valid for its length while we hold the GIL
        // and do not run Python code (nothing below calls back into Python).
        unsafe {
            let lp = l.as_ptr() as *mut ffi::PyListObject;
            std::slice::from_raw_parts((*lp).ob_item, l.len())
        }
    } else {
        let t = seq.downcast::<PyTuple>().expect("checked exact tuple");
        // SAFETY: as above, for a tuple's inline item array.
        unsafe {
            let tp = t.as_ptr() as *mut ffi::PyTupleObject;
            std::slice::from_raw_parts((*tp).ob_item.as_ptr(), t.len())
        }
    };
    let mut total = 0;
    for &it in items {
        // SAFETY: items of a live list/tuple are live objects.
        if unsafe { ffi::PyBytes_Check(it) } == 0 {
            return plain_500("the app returned a non-bytes item");
        }
        // SAFETY: checked to be bytes.
        total += unsafe { ffi::PyBytes_Size(it) } as usize;
    }
    let mut me = sr.borrow_mut();
    let Some(head) = me.head.take() else {
        return plain_500("the app returned without calling start_response()");
    };
    me.sent = true;
    let written = me.written.split();
    drop(me);
    let mut r = head_response(Some(head));
    if total == 0 && written.is_empty() {
        return r;
    }
    let body = if items.len() == 1 && written.is_empty() {
        // SAFETY: a live bytes object (checked above); borrowed for this scope.
        let b =
            unsafe { Bound::from_borrowed_ptr(py, items[0]).downcast_into_unchecked::<PyBytes>() };
        if total >= ZERO_COPY_MIN {
            Bytes::from_owner(PyBackedBytes::from(b))
        } else {
            Bytes::copy_from_slice(b.as_bytes())
        }
    } else {
        let mut buf = BytesMut::with_capacity(written.len() + total);
        buf.extend_from_slice(&written);
        for &it in items {
            // SAFETY: checked to be bytes; the slice is valid while the object lives.
            unsafe {
                let p = ffi::PyBytes_AsString(it) as *const u8;
                let n = ffi::PyBytes_Size(it) as usize;
                buf.extend_from_slice(std::slice::from_raw_parts(p, n));
            }
        }
        buf.freeze()
    };
    r.body = Body::Full(body);
    r
}

/// A file wrapper over a real file (with a `fileno()`) is sent as [`Body::File`] from
/// the file's current position. `None` to fall back to iterating it.
fn from_file_wrapper(
    py: Python<'_>,
    fw: &Bound<'_, FileWrapper>,
    sr: &Bound<'_, StartResponse>,
) -> Option<Response> {
    let filelike = fw.borrow().filelike.clone_ref(py);
    let f = filelike.bind(py);
    let fd: i32 = f.call_method0("fileno").ok()?.extract().ok()?;
    let offset: u64 = match f.call_method0("tell") {
        Ok(t) => t.extract().ok()?,
        Err(_) => 0,
    };
    if !sr.borrow().written.is_empty() {
        return None;
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor number only reads it; a negative
    // result means it was not open.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return None;
    }
    // SAFETY: `dup` is a fresh descriptor we own.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(dup) });
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut me = sr.borrow_mut();
    let head = me.head.take()?;
    me.sent = true;
    drop(me);
    let mut len = meta.len().saturating_sub(offset);
    let declared = head
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
    if let Some(d) = declared {
        len = len.min(d);
    }
    let mut r = head_response(Some(head));
    r.body = Body::File { file, offset, len };
    Some(r)
}

/// What a streamed body needs to pull more and to clean up.
pub(crate) struct StreamState {
    pub(crate) iter: Py<PyIterator>,
    pub(crate) result: Py<PyAny>,
    pub(crate) sr: Py<StartResponse>,
}

/// One step of a streamed body, run with the GIL.
pub(crate) enum Step {
    Chunk(Bytes),
    End,
    Failed,
}

impl StreamState {
    pub(crate) fn next(&self, py: Python<'_>) -> Step {
        let iter = self.iter.bind(py);
        loop {
            // SAFETY: PyIter_Next on a live iterator returns a new reference, or NULL at
            // the end (no exception) or on error (exception set).
            let item = unsafe { Bound::from_owned_ptr_or_opt(py, ffi::PyIter_Next(iter.as_ptr())) };
            let written = {
                let mut sr = self.sr.bind(py).borrow_mut();
                (!sr.written.is_empty()).then(|| sr.written.split().freeze())
            };
            match item {
                None => {
                    if let Some(e) = PyErr::take(py) {
                        eprintln!("forklift: exception while streaming the response; closing the connection:");
                        interp::log_exception(py, &e);
                        return Step::Failed;
                    }
                    return written.map_or(Step::End, Step::Chunk);
                }
                Some(item) => {
                    let Ok(b) = item.downcast::<PyBytes>() else {
                        eprintln!(
                            "forklift: the app yielded a non-bytes item; closing the connection"
                        );
                        return Step::Failed;
                    };
                    let b = b.as_bytes();
                    match written {
                        Some(w) => {
                            let mut buf = BytesMut::from(&w[..]);
                            buf.extend_from_slice(b);
                            return Step::Chunk(buf.freeze());
                        }
                        None if b.is_empty() => continue,
                        None => return Step::Chunk(Bytes::copy_from_slice(b)),
                    }
                }
            }
        }
    }

    pub(crate) fn close(self, py: Python<'_>) {
        close(py, self.result.bind(py));
    }
}

/// A body pulled from the app's iterable on the consuming thread (blocking models).
/// Dropping it early (client gone) calls `close()`.
struct PullStream {
    first: Option<Bytes>,
    state: Option<StreamState>,
}

impl Stream for PullStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(Ok(b)));
        }
        let Some(state) = self.state.take() else {
            return Poll::Ready(None);
        };
        let (step, state) = with_gil(|py| {
            let step = state.next(py);
            match step {
                Step::Chunk(_) => (step, Some(state)),
                _ => {
                    state.close(py);
                    (step, None)
                }
            }
        });
        self.state = state;
        Poll::Ready(match step {
            Step::Chunk(b) => Some(Ok(b)),
            Step::End => None,
            Step::Failed => Some(Err(io::Error::other("the app failed while streaming"))),
        })
    }
}

impl Drop for PullStream {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            with_gil(|py| state.close(py));
        }
    }
}

/// Serves `req` on the GIL pool (event-loop models): the calling thread never runs
/// Python. A full pool answers 503.
pub(crate) fn call_pooled(app: &Arc<AppState>, pool: &PoolSlot, req: Request) -> Reply {
    let (tx, rx) = tokio::sync::oneshot::channel::<Response>();
    let app = Arc::clone(app);
    let job: Job = Box::new(move |py: Python<'_>| {
        if tx.is_closed() {
            return; // the client left while the request waited in the queue
        }
        match app.run(py, req) {
            // Published by the pool's flush: before the next job, or after the batch.
            Outcome::Done(r) => REPLIES.with(|q| q.borrow_mut().push((tx, r))),
            Outcome::Streaming {
                mut head,
                first,
                iter,
                result,
                sr,
            } => {
                let (ctx, mut crx) =
                    tokio::sync::mpsc::channel::<io::Result<Bytes>>(STREAM_CHANNEL);
                head.body = Body::Stream(Box::pin(futures_util::stream::poll_fn(move |cx| {
                    crx.poll_recv(cx)
                })));
                let state = StreamState { iter, result, sr };
                let sent = py.allow_threads(|| {
                    flush_replies();
                    tx.send(head).is_ok() && ctx.blocking_send(Ok(first)).is_ok()
                });
                if sent {
                    push_stream(py, &state, ctx);
                }
                state.close(py);
            }
        }
    });
    match pool.submit(job) {
        Ok(()) => Reply::Later(Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| plain_500("the Python worker pool dropped a request"))
        })),
        Err(_) => Reply::Ready(Response::busy()),
    }
}

thread_local! {
    /// Replies finished in the current batch of a pool thread, not yet handed over.
    static REPLIES: std::cell::RefCell<Vec<(tokio::sync::oneshot::Sender<Response>, Response)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Hands this thread's finished replies to their connections (the pool's flush hook).
pub(crate) fn flush_replies() {
    let done = REPLIES.with(|q| std::mem::take(&mut *q.borrow_mut()));
    for (tx, r) in done {
        let _ = tx.send(r);
    }
}

/// On a pool thread: pulls the rest of a streamed body into the channel, holding the
/// GIL only to pull; a full channel (slow client) parks this thread without it.
fn push_stream(
    py: Python<'_>,
    state: &StreamState,
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
) {
    loop {
        let item = match state.next(py) {
            Step::Chunk(b) => Ok(b),
            Step::End => return,
            Step::Failed => Err(io::Error::other("the app failed while streaming")),
        };
        let last = item.is_err();
        // Without giving up the GIL while the channel has room; parked without it when
        // the client is slower than the app.
        let sent = match tx.try_send(item) {
            Ok(()) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(item)) => {
                py.allow_threads(|| tx.blocking_send(item)).is_ok()
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        };
        if !sent || last {
            return; // the client went away, or the body failed
        }
    }
}
