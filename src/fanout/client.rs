//! The per-process outbound HTTP/1.1 client: a tokio runtime on its own thread, hyper's
//! pooled keep-alive connections, the caching resolver, timeouts, and a cap on calls in
//! flight. Callers get runtime-agnostic futures (a oneshot receiver underneath), so they
//! can wait from `rt::block_on`, the epoll loop's wakers, or another tokio runtime.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};

use super::dns::{CachingResolver, ResolveError};
use crate::rt;

/// Tuning of a [`Client`]; the defaults suit the fan-out demo on one process (800
/// concurrent backend calls for 200 concurrent requests).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Calls talking to a backend at once; further calls wait for a slot (their timeout
    /// still runs).
    pub max_in_flight: usize,
    /// Calls accepted but not finished (waiting for a slot or in flight). Past this a call
    /// fails at once with [`FetchError::Overloaded`]: the queue is bounded.
    pub max_pending: usize,
    /// Timeout of a call that does not set its own (connect, send, and read the whole
    /// response).
    pub call_timeout: Duration,
    /// Timeout of the TCP connect alone.
    pub connect_timeout: Duration,
    /// How long a DNS answer is reused.
    pub dns_ttl: Duration,
    /// An idle keep-alive connection is closed after this; kept below the usual server
    /// keep-alive limits (forklift's own: 60 s) so the client, not the server, closes.
    pub pool_idle_timeout: Duration,
    /// Idle keep-alive connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// Largest response body accepted; a longer one is [`FetchError::BodyTooLarge`].
    pub max_response_body: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            max_in_flight: 1024,
            max_pending: 16 * 1024,
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            dns_ttl: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(50),
            pool_max_idle_per_host: 1024,
            max_response_body: 16 << 20,
        }
    }
}

/// One outbound request. Only `http://` URLs (no TLS).
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
    /// This call's own timeout; [`ClientConfig::call_timeout`] when `None`. A batch's
    /// overall deadline applies as well.
    pub timeout: Option<Duration>,
}

impl FetchRequest {
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> FetchRequest {
        FetchRequest {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Bytes::new(),
            timeout: None,
        }
    }

    pub fn get(url: impl Into<String>) -> FetchRequest {
        FetchRequest::new("GET", url)
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct FetchResponse {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
    /// From the call's start (including any wait for a slot) to the end of the body.
    pub elapsed: Duration,
}

impl FetchResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &v[..])
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why one call failed. Errors are per call: one failing call does not fail a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("unsupported URL scheme in {0:?}: only http:// is supported")]
    UnsupportedScheme(String),
    #[error("cannot resolve {host}: {message}")]
    Dns { host: String, message: String },
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("timed out after {:.3} s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("HTTP error: {0}")]
    Http(String),
    #[error("response body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("too many calls pending (limit {0})")]
    Overloaded(usize),
    #[error("blocking wait on the fan-out runtime's own thread would deadlock")]
    WouldDeadlock,
    #[error("fan-out client unavailable: {0}")]
    Unavailable(String),
}

type Http = hyper_util::client::legacy::Client<Counting, Full<Bytes>>;

/// Counters of a client, for stats and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Calls accepted.
    pub calls: u64,
    /// Calls that ended in an error.
    pub errors: u64,
    /// TCP connections opened (fewer than `calls` when keep-alive works).
    pub connections: u64,
    /// TCP connections open now: in use, or idle in the pool.
    pub open: u64,
    /// DNS lookups that reached the system resolver.
    pub dns_lookups: u64,
    /// Calls accepted and not finished right now.
    pub pending: usize,
}

struct Inner {
    config: ClientConfig,
    http: Http,
    resolver: CachingResolver,
    in_flight: Semaphore,
    pending: AtomicUsize,
    calls: AtomicU64,
    errors: AtomicU64,
    connections: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

struct Runtime {
    handle: tokio::runtime::Handle,
    thread: ThreadId,
    /// Dropping it stops the runtime thread.
    _stop: oneshot::Sender<()>,
}

/// The fan-out client. One per process is enough ([`super::client`]); each owns a
/// runtime thread, stopped when the client is dropped.
pub struct Client {
    inner: Arc<Inner>,
    runtime: Result<Runtime, String>,
}

impl Client {
    /// Starts a client: its runtime thread is spawned now. If that fails, the client
    /// still exists and every call fails with [`FetchError::Unavailable`].
    pub fn new(config: ClientConfig) -> Client {
        let resolver = CachingResolver::new(config.dns_ttl);
        let mut connector = HttpConnector::new_with_resolver(resolver.clone());
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let connections = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(Counting {
                inner: connector,
                opened: connections.clone(),
                open: open.clone(),
            });
        let inner = Arc::new(Inner {
            in_flight: Semaphore::new(config.max_in_flight.max(1)),
            config,
            http,
            resolver,
            pending: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connections,
            open,
        });
        Client {
            inner,
            runtime: start_runtime(),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> ClientStats {
        let i = &self.inner;
        ClientStats {
            calls: i.calls.load(Ordering::Relaxed),
            errors: i.errors.load(Ordering::Relaxed),
            connections: i.connections.load(Ordering::Relaxed),
            open: i.open.load(Ordering::Relaxed),
            dns_lookups: i.resolver.lookups(),
            pending: i.pending.load(Ordering::Relaxed),
        }
    }

    /// Starts one call. The call runs whether or not the future is polled; dropping the
    /// future cancels it.
    pub fn fetch(&self, req: FetchRequest) -> Fetch {
        let (handle, admitted) = match self.admit(1) {
            Ok(a) => a,
            Err(e) => return Pending::ready(Err(e)),
        };
        let inner = self.inner.clone();
        let (mut tx, rx) = oneshot::channel();
        handle.spawn(async move {
            let deadline = inner.deadline_for(&req, None);
            let done = tokio::select! {
                r = run_one(&inner, req, deadline) => Some(r),
                _ = tx.closed() => None,
            };
            // Free the slots before the caller hears back, so its next call finds them.
            drop(admitted);
            if let Some(r) = done {
                let _ = tx.send(r);
            }
        });
        Pending::waiting(rx, || Err(lost()))
    }

    /// Starts every call of `reqs` at once and resolves, in the same order, when all have
    /// finished or `timeout` has passed (the unfinished ones are then
    /// [`FetchError::Timeout`]). Each call's own timeout applies too.
    pub fn fetch_all(&self, reqs: Vec<FetchRequest>, timeout: Duration) -> FetchAll {
        let n = reqs.len();
        if n == 0 {
            return Pending::ready(Vec::new());
        }
        let (handle, admitted) = match self.admit(n) {
            Ok(a) => a,
            Err(e) => return Pending::ready(vec![Err(e); n]),
        };
        let inner = self.inner.clone();
        let (mut tx, rx) = oneshot::channel();
        let overall = Instant::now() + timeout;
        handle.spawn(async move {
            let calls = reqs.into_iter().map(|req| {
                let deadline = inner.deadline_for(&req, Some(overall));
                run_one(&inner, req, deadline)
            });
            let done = tokio::select! {
                r = futures_util::future::join_all(calls) => Some(r),
                _ = tx.closed() => None,
            };
            // Free the slots before the caller hears back, so its next call finds them.
            drop(admitted);
            if let Some(r) = done {
                let _ = tx.send(r);
            }
        });
        Pending::waiting(rx, move || vec![Err(lost()); n])
    }

    /// Starts one call and hands its result to `done`, which runs on the client's small
    /// blocking pool (so it may take a lock such as Python's GIL without stalling other
    /// calls). `done` is called exactly once, also if the client stops first.
    pub fn fetch_then<F>(&self, req: FetchRequest, done: F)
    where
        F: FnOnce(Result<FetchResponse, FetchError>) + Send + 'static,
    {
        let mut done = Callback(Some(Box::new(done)));
        let (handle, admitted) = match self.admit(1) {
            Ok(a) => a,
            Err(e) => return done.call(Err(e)),
        };
        let inner = self.inner.clone();
        handle.spawn(async move {
            let deadline = inner.deadline_for(&req, None);
            let r = run_one(&inner, req, deadline).await;
            drop(admitted);
            tokio::task::spawn_blocking(move || done.call(r));
        });
    }

    /// [`Client::fetch`], waiting on the current thread.
    pub fn fetch_blocking(&self, req: FetchRequest) -> Result<FetchResponse, FetchError> {
        self.check_blocking()?;
        rt::block_on(self.fetch(req))
    }

    /// [`Client::fetch_all`], waiting on the current thread.
    pub fn fetch_all_blocking(
        &self,
        reqs: Vec<FetchRequest>,
        timeout: Duration,
    ) -> Vec<Result<FetchResponse, FetchError>> {
        if let Err(e) = self.check_blocking() {
            return vec![Err(e); reqs.len()];
        }
        rt::block_on(self.fetch_all(reqs, timeout))
    }

    fn check_blocking(&self) -> Result<(), FetchError> {
        match &self.runtime {
            Ok(r) if r.thread == thread::current().id() => Err(FetchError::WouldDeadlock),
            _ => Ok(()),
        }
    }

    /// Reserves `n` pending slots, or says why not.
    fn admit(&self, n: usize) -> Result<(&tokio::runtime::Handle, Admitted), FetchError> {
        let runtime = self
            .runtime
            .as_ref()
            .map_err(|e| FetchError::Unavailable(e.clone()))?;
        let limit = self.inner.config.max_pending;
        let before = self.inner.pending.fetch_add(n, Ordering::AcqRel);
        let admitted = Admitted {
            inner: self.inner.clone(),
            n,
        };
        if before + n > limit {
            self.inner.errors.fetch_add(n as u64, Ordering::Relaxed);
            return Err(FetchError::Overloaded(limit));
        }
        self.inner.calls.fetch_add(n as u64, Ordering::Relaxed);
        Ok((&runtime.handle, admitted))
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Inner {
    fn deadline_for(&self, req: &FetchRequest, overall: Option<Instant>) -> Instant {
        let own = Instant::now() + req.timeout.unwrap_or(self.config.call_timeout);
        overall.map_or(own, |o| own.min(o))
    }
}

/// Releases pending slots when a call (or batch) ends, however it ends.
struct Admitted {
    inner: Arc<Inner>,
    n: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.inner.pending.fetch_sub(self.n, Ordering::AcqRel);
    }
}

type DoneFn = Box<dyn FnOnce(Result<FetchResponse, FetchError>) + Send>;

/// A completion callback that is called exactly once: with the result, or with
/// [`FetchError::Unavailable`] if it is dropped uncalled (the runtime stopped).
struct Callback(Option<DoneFn>);

impl Callback {
    fn call(&mut self, r: Result<FetchResponse, FetchError>) {
        if let Some(f) = self.0.take() {
            f(r);
        }
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        self.call(Err(lost()));
    }
}

fn lost() -> FetchError {
    FetchError::Unavailable("the fan-out runtime stopped".into())
}

/// Runs one call to completion or `deadline`.
async fn run_one(
    inner: &Inner,
    req: FetchRequest,
    deadline: Instant,
) -> Result<FetchResponse, FetchError> {
    let start = Instant::now();
    let limit = deadline.saturating_duration_since(start);
    let result = match build_request(req) {
        Err(e) => Err(e),
        Ok(http_req) => {
            let work = async {
                let _slot = inner.in_flight.acquire().await.map_err(|_| lost())?;
                let resp = inner.http.request(http_req).await.map_err(classify)?;
                let (parts, body) = resp.into_parts();
                let body = Limited::new(body, inner.config.max_response_body)
                    .collect()
                    .await
                    .map_err(|e| {
                        if e.downcast_ref::<LengthLimitError>().is_some() {
                            FetchError::BodyTooLarge(inner.config.max_response_body)
                        } else {
                            FetchError::Http(chain(&*e))
                        }
                    })?
                    .to_bytes();
                Ok(FetchResponse {
                    status: parts.status.as_u16(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
                        .collect(),
                    body,
                    elapsed: start.elapsed(),
                })
            };
            match tokio::time::timeout_at(deadline.into(), work).await {
                Ok(r) => r,
                Err(_) => Err(FetchError::Timeout(limit)),
            }
        }
    };
    if result.is_err() {
        inner.errors.fetch_add(1, Ordering::Relaxed);
    }
    result
}

fn build_request(req: FetchRequest) -> Result<http::Request<Full<Bytes>>, FetchError> {
    let uri: http::Uri = req
        .url
        .parse()
        .map_err(|e| FetchError::InvalidRequest(format!("URL {:?}: {e}", req.url)))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(FetchError::UnsupportedScheme(req.url)),
        None => {
            return Err(FetchError::InvalidRequest(format!(
                "URL {:?} is not absolute (expected http://host[:port]/path)",
                req.url
            )))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(FetchError::InvalidRequest(format!(
            "URL {:?} has no host",
            req.url
        )));
    }
    let method = http::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| FetchError::InvalidRequest(format!("method {:?}", req.method)))?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in &req.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| FetchError::InvalidRequest(format!("header name {name:?}")))?;
        let value = http::HeaderValue::from_maybe_shared(value.clone())
            .map_err(|_| FetchError::InvalidRequest(format!("value of header {name}")))?;
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(req.body))
        .map_err(|e| FetchError::InvalidRequest(e.to_string()))
}

/// Maps hyper's error to ours, looking through its sources for a resolver error.
fn classify(e: hyper_util::client::legacy::Error) -> FetchError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<ResolveError>() {
            return FetchError::Dns {
                host: r.host.clone(),
                message: r.message.clone(),
            };
        }
        source = s.source();
    }
    if e.is_connect() {
        // hyper's own wrapper adds nothing past "client error (Connect)".
        FetchError::Connect(e.source().map_or_else(|| e.to_string(), chain))
    } else {
        FetchError::Http(chain(&e))
    }
}

/// An error and its sources, joined with ": ".
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Spawns the runtime thread: a current-thread tokio runtime that runs until the
/// [`Runtime`]'s stop sender is dropped. Its blocking pool (DNS misses, callbacks) is
/// capped at a few threads.
fn start_runtime() -> Result<Runtime, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .thread_name("forklift-fanout-pool")
        .build()
        .map_err(|e| format!("cannot build the fan-out runtime: {e}"))?;
    let handle = rt.handle().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = thread::Builder::new()
        .name("forklift-fanout".into())
        .spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        })
        .map_err(|e| format!("cannot start the fan-out thread: {e}"))?;
    Ok(Runtime {
        handle,
        thread: thread.thread().id(),
        _stop: stop,
    })
}

/// A future of a call's (or batch's) result, independent of any executor.
pub struct Pending<T> {
    state: PendingState<T>,
}

enum PendingState<T> {
    Ready(Option<T>),
    Waiting {
        rx: oneshot::Receiver<T>,
        on_lost: Option<Box<dyn FnOnce() -> T + Send>>,
    },
}

/// The future of [`Client::fetch`].
pub type Fetch = Pending<Result<FetchResponse, FetchError>>;
/// The future of [`Client::fetch_all`]: one result per request, in order.
pub type FetchAll = Pending<Vec<Result<FetchResponse, FetchError>>>;

impl<T> Pending<T> {
    fn ready(v: T) -> Self {
        Pending {
            state: PendingState::Ready(Some(v)),
        }
    }

    fn waiting(rx: oneshot::Receiver<T>, on_lost: impl FnOnce() -> T + Send + 'static) -> Self {
        Pending {
            state: PendingState::Waiting {
                rx,
                on_lost: Some(Box::new(on_lost)),
            },
        }
    }
}

impl<T> Unpin for Pending<T> {}

impl<T> Future for Pending<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.state {
            PendingState::Ready(v) => {
                Poll::Ready(v.take().expect("Pending polled after completion"))
            }
            PendingState::Waiting { rx, on_lost } => match Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(v)) => Poll::Ready(v),
                Poll::Ready(Err(_)) => {
                    Poll::Ready(on_lost.take().expect("Pending polled after completion")())
                }
            },
        }
    }
}

/// The connector: hyper-util's, counting the connections it opens and those open.
#[derive(Clone)]
struct Counting {
    inner: HttpConnector<CachingResolver>,
    opened: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

/// A connection of the client, counted open until dropped (closed by either side, or
/// evicted from the pool).
struct Tracked {
    tcp: TcpStream,
    open: Arc<AtomicU64>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl hyper_util::client::legacy::connect::Connection for Tracked {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.tcp.connected()
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<TokioIo<Tracked>, Box<dyn StdError + Send + Sync>>> + Send>>;

impl tower_service::Service<http::Uri> for Counting {
    type Response = TokioIo<Tracked>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Uri>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> ConnectFuture {
        let connecting = tower_service::Service::call(&mut self.inner, uri);
        let opened = self.opened.clone();
        let open = self.open.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            opened.fetch_add(1, Ordering::Relaxed);
            open.fetch_add(1, Ordering::Relaxed);
            Ok(TokioIo::new(Tracked { tcp, open }))
        })
    }
}
