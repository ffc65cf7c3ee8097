//! The validated server configuration: what `forklift serve` (flags or an ini file) turns
//! into before any socket is opened.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::http::Limits;

/// A concurrency model (`--model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Model {
    /// One thread: accept, read, handle, write, then the next connection.
    Linear,
    /// An acceptor feeding a bounded queue served by `threads` threads.
    Threads,
    /// One readiness loop (epoll via mio) over non-blocking sockets.
    Epoll,
    /// A tokio runtime; `cores` requests in flight per worker.
    Async,
}

/// The cooperative event loop that runs each WSGI request in a greenlet (uWSGI's
/// `--gevent N` and `--asyncio N --greenlet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreenEngine {
    /// gevent's hub.
    Gevent,
    /// An asyncio event loop, requests in greenlets (the `greenlet` package).
    Asyncio,
}

impl GreenEngine {
    /// The option that asks for it.
    pub fn option(self) -> &'static str {
        match self {
            GreenEngine::Gevent => "--gevent",
            GreenEngine::Asyncio => "--asyncio",
        }
    }

    /// The package it needs.
    pub fn package(self) -> &'static str {
        match self {
            GreenEngine::Gevent => "gevent",
            GreenEngine::Asyncio => "greenlet",
        }
    }
}

impl Model {
    pub const ALL: [Model; 4] = [Model::Linear, Model::Threads, Model::Epoll, Model::Async];

    pub fn name(self) -> &'static str {
        match self {
            Model::Linear => "linear",
            Model::Threads => "threads",
            Model::Epoll => "epoll",
            Model::Async => "async",
        }
    }

    /// True for the models that may block a thread per request.
    pub fn blocking(self) -> bool {
        matches!(self, Model::Linear | Model::Threads)
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Model {
    type Err = String;
    fn from_str(s: &str) -> Result<Model, String> {
        Model::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown model {s:?}: choose linear, threads, epoll or async"))
    }
}

/// Time limits on what a client sends and takes, and on a graceful stop. Each one is a
/// deadline the connection keeps (see `conn::Conn::deadline`), so a client cannot
/// stretch it by sending a byte now and then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// An idle keep-alive connection is closed after this long without a request.
    pub keepalive: Duration,
    /// A request head must arrive whole within this of its first byte (and a new
    /// connection's first request begin within this of opening); 408 after.
    pub header: Duration,
    /// While a request body arrives, each read must come within this of the last; 408
    /// after.
    pub body: Duration,
    /// While output waits for a client that does not read, the client must take some of
    /// it within this; the connection is closed after.
    pub send: Duration,
    /// How long a graceful stop waits for in-flight requests.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            keepalive: Duration::from_secs(60),
            header: Duration::from_secs(10),
            body: Duration::from_secs(60),
            send: Duration::from_secs(60),
            shutdown: Duration::from_secs(30),
        }
    }
}

/// Everything a worker needs to know to serve.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub model: Model,
    /// Worker processes; 1 serves from the current process unless `master` is set.
    pub processes: usize,
    /// Run a master process even with one worker (respawn, graceful reload).
    pub master: bool,
    /// Threads of the `threads` model; worker threads of the `async` runtime.
    pub threads: usize,
    /// Requests in flight per worker in the `async` model.
    pub cores: usize,
    /// Connections queued between the acceptor and the threads of the `threads` model.
    pub queue: usize,
    /// Most connections one `epoll`/`async` worker holds open.
    pub max_connections: usize,
    /// Listen backlog.
    pub backlog: i32,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// A worker exits (and the master replaces it) after this many requests.
    pub max_requests: Option<u64>,
    /// A worker with a request running longer than this is killed (and replaced).
    pub harakiri: Option<Duration>,
    /// Send `Server: forklift`.
    pub server_header: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model: Model::Epoll,
            processes: 1,
            master: false,
            threads: 4,
            cores: 1000,
            queue: 1024,
            max_connections: 100_000,
            backlog: 1024,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            max_requests: None,
            harakiri: None,
            server_header: true,
        }
    }
}
