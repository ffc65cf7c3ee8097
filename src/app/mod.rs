//! The native handler API: what a request looks like to an app, what it answers with,
//! and the [`Handler`] / [`AsyncHandler`] traits every app (built-in, Rust, Python)
//! implements.
//!
//! Every concurrency model drives the same [`Reply`]: a ready [`Response`], or a future
//! that resolves to one. Blocking models wait for the future on the calling thread;
//! event-loop models poll it with a waker tied to the connection, so a handler that
//! waits (a timer, a pool of Python threads, a backend call) never blocks other
//! connections.

pub mod body;
pub mod builtin;
pub mod slowlog;

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;

pub use body::RequestBody;

/// A boxed, sendable future, as handlers return them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A boxed stream of body chunks. An `Err` item aborts the response (the connection is
/// closed, since the length promised to the client can no longer be honoured).
pub type BodyStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// HTTP version of a request. Only 1.0 and 1.1 reach handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// One request header. Names keep the client's spelling; compare them case-insensitively
/// (see [`Request::header`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub name: Bytes,
    pub value: Bytes,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            String::from_utf8_lossy(&self.name),
            String::from_utf8_lossy(&self.value)
        )
    }
}

/// A request, as handed to an app. The body has been de-chunked and is complete (its
/// size was bounded by the server's body limit), unless the app streams request
/// bodies ([`Handler::streams_body`]): then `rest` brings what is still to come.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Bytes,
    /// The request-target exactly as sent (`/a%20b?x=1`).
    pub target: Bytes,
    pub version: Version,
    pub headers: Vec<Header>,
    pub body: Bytes,
    /// For apps that stream request bodies: the rest of the body as it arrives after
    /// `body` (which holds what had arrived when the app was called), and word of the
    /// client leaving. `None` for other apps.
    pub rest: Option<RequestBody>,
    /// Client address, when the transport has one.
    pub peer: Option<SocketAddr>,
    /// Address the connection was accepted on.
    pub local: Option<SocketAddr>,
    /// CGI variables a front server sent with the request over the uwsgi protocol
    /// (`REMOTE_ADDR`, `SERVER_NAME`, `HTTPS`, `SCRIPT_NAME`, `DOCUMENT_ROOT`…), in the
    /// order sent; the WSGI environ takes them as they are. Empty for HTTP.
    pub cgi_vars: Vec<(Bytes, Bytes)>,
}

impl Request {
    /// The method as text (`GET`). Methods are tokens, so this never fails for a parsed
    /// request.
    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.method).unwrap_or("")
    }

    /// The path part of the target, still percent-encoded.
    pub fn raw_path(&self) -> &[u8] {
        match self.target.iter().position(|&b| b == b'?') {
            Some(i) => &self.target[..i],
            None => &self.target,
        }
    }

    /// The path, percent-encoded, as text (targets are ASCII on the wire; anything else is
    /// shown lossily).
    pub fn path(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.raw_path())
    }

    /// The query string after `?`, without the `?`; empty when there is none.
    pub fn query(&self) -> Cow<'_, str> {
        match self.target.iter().position(|&b| b == b'?') {
            Some(i) => String::from_utf8_lossy(&self.target[i + 1..]),
            None => Cow::Borrowed(""),
        }
    }

    /// The value of query parameter `key`, percent-decoded (`+` as space).
    pub fn query_param(&self, key: &str) -> Option<String> {
        let query = self.query();
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == key).then(|| percent_decode(v))
        })
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| &h.value[..])
    }
}

/// Decodes `%XX` escapes and `+` (as space) in a query component. Invalid escapes are
/// kept as written.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response body.
pub enum Body {
    /// No body (and `Content-Length: 0` unless the status forbids a body).
    Empty,
    /// A body held in memory; sent with `Content-Length`.
    Full(Bytes),
    /// Chunks produced over time. Sent with `Content-Length` when the app set one,
    /// otherwise chunked (HTTP/1.1) or close-delimited (HTTP/1.0).
    Stream(BodyStream),
    /// `len` bytes of `file` from `offset`; sent with `Content-Length`, read a piece at a
    /// time so memory stays bounded.
    File { file: File, offset: u64, len: u64 },
}

impl Body {
    /// The exact length when it is known before sending.
    pub fn len_hint(&self) -> Option<u64> {
        match self {
            Body::Empty => Some(0),
            Body::Full(b) => Some(b.len() as u64),
            Body::Stream(_) => None,
            Body::File { len, .. } => Some(*len),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Empty => f.write_str("Body::Empty"),
            Body::Full(b) => write!(f, "Body::Full({} bytes)", b.len()),
            Body::Stream(_) => f.write_str("Body::Stream(..)"),
            Body::File { offset, len, .. } => write!(f, "Body::File({offset}+{len})"),
        }
    }
}

/// A response header name; static for the common ones so building a response does not
/// allocate.
pub type HeaderName = Cow<'static, str>;

/// What an app answers with. The server adds `Date`, `Server`, `Content-Length` or
/// `Transfer-Encoding`, and `Connection` as the protocol requires; an app that sets
/// `Content-Length` itself is held to it (extra bytes are cut, a short body closes the
/// connection).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Reason phrase; the standard one for `status` when `None`.
    pub reason: Option<Cow<'static, str>>,
    pub headers: Vec<(HeaderName, Bytes)>,
    pub body: Body,
    /// Fields to send after the body (the app fills them while it streams the body).
    /// They go out when the body goes out chunked to a client that sent `TE:
    /// trailers` (the body is then sent chunked even when its length is known); other
    /// clients do not get them.
    pub trailers: Option<Trailers>,
}

/// Trailer fields of a response, filled by the app before its body ends and read by
/// the server once it has. Clones share the fields.
#[derive(Debug, Clone, Default)]
pub struct Trailers(Arc<Mutex<Vec<(HeaderName, Bytes)>>>);

impl Trailers {
    pub fn new() -> Trailers {
        Trailers::default()
    }

    pub fn push(&self, name: impl Into<HeaderName>, value: impl Into<Bytes>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.into(), value.into()));
    }

    /// The fields pushed so far, taken out.
    pub fn take(&self) -> Vec<(HeaderName, Bytes)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            reason: None,
            headers: Vec::new(),
            body: Body::Empty,
            trailers: None,
        }
    }

    /// A `text/plain` response with `body`.
    pub fn text(status: u16, body: impl Into<Bytes>) -> Response {
        Response::new(status)
            .with_header("Content-Type", Bytes::from_static(b"text/plain"))
            .with_body(Body::Full(body.into()))
    }

    /// `503 Service Unavailable` with `Retry-After: 1`: the app cannot take the request
    /// now (its queue is full, or it is not running), and the client may retry soon.
    pub fn busy() -> Response {
        Response::text(
            503,
            Bytes::from_static(b"Service Unavailable: the server is busy\n"),
        )
        .with_header("Retry-After", Bytes::from_static(b"1"))
    }

    pub fn with_header(mut self, name: impl Into<HeaderName>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &v[..])
    }
}

/// What the server tells a handler about the thread it is called on.
#[derive(Debug, Clone, Copy)]
pub struct CallContext {
    /// True on the blocking models (`linear`, `threads`): the handler may block this
    /// thread. False on event-loop models (`epoll`, `async`): a handler that would block
    /// must return [`Reply::Later`] and do the blocking part elsewhere (a pool thread).
    pub may_block: bool,
}

/// A handler's answer: now, or later.
pub enum Reply {
    Ready(Response),
    Later(BoxFuture<Response>),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::Ready(r)
    }
}

/// A synchronous app. `call` must not block when `cx.may_block` is false.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, req: Request, cx: &CallContext) -> Reply;

    /// True when the app cannot start another request without queueing it (all its
    /// threads busy). Event-loop models then leave new connections in the kernel's
    /// backlog, where another worker process can take them, instead of hoarding them.
    fn saturated(&self) -> bool {
        false
    }

    /// How many more requests the app can start now without queueing them (its idle
    /// threads), when it has such a bound. With several worker processes, an event
    /// loop accepts only as many new clients as this, so the kernel hands the rest to
    /// processes with idle threads.
    fn idle_threads(&self) -> Option<usize> {
        None
    }

    /// True when the app takes request bodies as they arrive: it is called once the
    /// head is in, with [`Request::rest`] bringing the body (bounded: the connection
    /// stops reading while the app does not take it) and telling it when the client
    /// goes away, which the connection then watches for while the app works.
    fn streams_body(&self) -> bool {
        false
    }

    /// True when the app runs requests on threads of its own (a pool it hands work to),
    /// so an event loop serving it should defer to those threads when both want the CPU.
    fn hands_off(&self) -> bool {
        false
    }

    /// An event loop is about to handle a round of events on this thread: the app may
    /// hold work it hands to other threads until [`Handler::batch_end`], so one wake-up
    /// serves the round.
    fn batch_begin(&self) {}

    /// The round of events that [`Handler::batch_begin`] announced is handled: hand over
    /// what was held.
    fn batch_end(&self) {}

    /// Called in the master just before it forks workers (quiesce threads and locks that
    /// must not be copied mid-use, e.g. the Python interpreter's).
    fn before_fork(&self) {}

    /// Called once in each worker process after fork, before the first request (start
    /// per-process threads and runtimes here, never before fork). An `Err` says the app
    /// cannot start in this process (an ASGI app's failed lifespan startup): the worker
    /// exits with [`crate::server::EXIT_BOOT_FAILED`] and the message, and the master
    /// stops instead of respawning workers that would fail the same way.
    fn after_fork(&self) -> Result<(), String> {
        Ok(())
    }

    /// Called in a worker when it stops (after the last request), to flush and join.
    fn shutdown(&self) {}
}

/// An asynchronous app: runs natively on the `async` model and is driven by the
/// connection's waker on every other model.
pub trait AsyncHandler: Send + Sync + 'static {
    fn call(&self, req: Request) -> BoxFuture<Response>;
}

/// Adapts an [`AsyncHandler`] to [`Handler`].
pub struct Async<H>(pub H);

impl<H: AsyncHandler> Handler for Async<H> {
    fn call(&self, req: Request, _cx: &CallContext) -> Reply {
        Reply::Later(self.0.call(req))
    }
}

/// A shared app, as the servers hold it.
pub type App = Arc<dyn Handler>;

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &'static str) -> Request {
        Request {
            method: Bytes::from_static(b"GET"),
            target: Bytes::from_static(target.as_bytes()),
            version: Version::Http11,
            headers: vec![Header {
                name: Bytes::from_static(b"Content-Type"),
                value: Bytes::from_static(b"text/plain"),
            }],
            body: Bytes::new(),
            rest: None,
            peer: None,
            local: None,
            cgi_vars: Vec::new(),
        }
    }

    #[test]
    fn splits_path_and_query() {
        let r = req("/a%20b?x=1&y=two+words&z=%41");
        assert_eq!(r.path(), "/a%20b");
        assert_eq!(r.query(), "x=1&y=two+words&z=%41");
        assert_eq!(r.query_param("y").as_deref(), Some("two words"));
        assert_eq!(r.query_param("z").as_deref(), Some("A"));
        assert_eq!(r.query_param("missing"), None);
        assert_eq!(req("/").query(), "");
    }

    #[test]
    fn header_lookup_ignores_case() {
        assert_eq!(req("/").header("content-type"), Some(&b"text/plain"[..]));
    }

    #[test]
    fn percent_decode_keeps_bad_escapes() {
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("a%2Fb"), "a/b");
    }
}
