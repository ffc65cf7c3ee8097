//! Operations: what a running server tells the outside about itself. uWSGI's stats
//! document (`--stats`, `--stats-http`), Prometheus metrics and a live dashboard
//! (`--metrics`), all served by one plain thread of the master (or of the single
//! serving process) from a scoreboard in shared memory that every worker writes
//! without locks.
//!
//! - `board`: the shared-memory scoreboard: a card per worker process, the request hook
//!   ([`Scorecard::begin`] / [`Ticket::done`]) and the connection gauge.
//! - `roster`: the master's per-worker totals over respawns, read into a snapshot.
//! - `stats`: the uWSGI stats JSON; `metrics`: the Prometheus text; `dashboard.html`:
//!   the page at `/` of the metrics address (embedded in the binary).
//! - `endpoint`: binding the addresses and the non-blocking server thread.
//!
//! A worker finds its card through [`card`] (set once per process by
//! `server::run_worker`), so hooks outside the request path — the GIL wait of a Python
//! thread, an exception, a harakiri — need no handle.

mod board;
mod endpoint;
mod metrics;
mod roster;
mod stats;

use std::net::TcpListener;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use board::{cum, ConnGuard, Scoreboard, Scorecard, Ticket, BUCKETS_US, MAX_CORES};
pub use endpoint::{Endpoint, Role};
pub use roster::{memory_of, Recycle, Roster, Snapshot, WorkerView};

use crate::rt::Shutdown;
use crate::server::{Model, ServerConfig};

/// The dashboard page: plain HTML, CSS and script, nothing fetched from elsewhere.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// Errors of the operations endpoints.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("cannot serve --{option} on {addr}: {problem}")]
    Bind {
        option: &'static str,
        addr: String,
        problem: String,
    },
    #[error("cannot set up the stats: {0}")]
    Io(#[from] std::io::Error),
}

/// What the stats and metrics pages need besides the workers' counters.
pub struct Info {
    roster: Arc<Roster>,
    /// A copy of the first listener, for its backlog (`TCP_INFO`, TCP only).
    listener: Option<TcpListener>,
    http_name: String,
    model: Model,
    /// Times the backlog was seen full (sampled each second by the stats thread).
    queue_full: AtomicU64,
}

impl Info {
    /// Connections waiting in the listen backlog, and the backlog's size.
    pub fn listen_queue(&self) -> (u64, u64) {
        let Some(l) = &self.listener else {
            return (0, 0);
        };
        use std::os::fd::AsRawFd;
        // SAFETY: an all-zero tcp_info is a valid value of this plain C struct.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that big,
        // and updates `len`; the descriptor is the live listener.
        let rc = unsafe {
            libc::getsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return (0, 0);
        }
        // For a listening socket Linux reports the accept queue's length in
        // `tcpi_unacked` and its limit in `tcpi_sacked`.
        (u64::from(info.tcpi_unacked), u64::from(info.tcpi_sacked))
    }

    pub fn listen_queue_errors(&self) -> u64 {
        self.queue_full.load(Ordering::Relaxed)
    }

    fn sample_listen_queue(&self) {
        let (q, max) = self.listen_queue();
        if max > 0 && q >= max {
            self.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn http_name(&self) -> &str {
        &self.http_name
    }

    pub fn model_name(&self) -> &'static str {
        self.model.name()
    }
}

/// The `--stats`/`--metrics` listeners, bound at start (so a busy address is an
/// error before anything is served).
#[derive(Default)]
pub struct Endpoints(Vec<(Role, Endpoint)>);

impl Endpoints {
    /// Binds `--stats ADDR` (`http`: `--stats-http`) and `--metrics ADDR`.
    pub fn bind(
        stats: Option<&str>,
        stats_http: bool,
        metrics: Option<&str>,
    ) -> Result<Endpoints, OpsError> {
        let mut v = Vec::new();
        if let Some(a) = stats {
            let role = if stats_http {
                Role::StatsHttp
            } else {
                Role::Stats
            };
            v.push((role, Endpoint::bind("stats", a)?));
        }
        if let Some(a) = metrics {
            v.push((Role::Metrics, Endpoint::bind("metrics", a)?));
        }
        Ok(Endpoints(v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One line per listener, for the start-up log.
    pub fn describe(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(role, e)| match role {
                Role::Stats => format!("forklift: stats on {}", e.name()),
                Role::StatsHttp => format!("forklift: stats (HTTP) on http://{}/", e.name()),
                Role::Metrics => format!(
                    "forklift: metrics on http://{0}/metrics, dashboard on http://{0}/",
                    e.name()
                ),
            })
            .collect()
    }

    /// The listeners' descriptors, which a forked worker closes (it serves none).
    pub fn raw_fds(&self) -> Vec<i32> {
        self.0.iter().map(|(_, e)| e.raw_fd()).collect()
    }

    /// Starts the server thread answering on every listener from `roster`.
    pub fn serve(
        self,
        roster: Arc<Roster>,
        listeners: &[crate::server::Listener],
        model: Model,
    ) -> std::io::Result<()> {
        use crate::server::listen::ListenSocket;
        let first = listeners.first();
        if self.0.is_empty() {
            return Ok(());
        }
        let info = Arc::new(Info {
            roster,
            listener: first.and_then(|l| match l.socket() {
                ListenSocket::Tcp(t) => t.try_clone().ok(),
                ListenSocket::Unix(_) => None,
            }),
            http_name: first.map(|l| l.name()).unwrap_or_default(),
            model,
            queue_full: AtomicU64::new(0),
        });
        endpoint::spawn(self.0, info)
    }
}

/// Request slots a worker of `config` has (uWSGI's cores).
pub fn cores_of(config: &ServerConfig) -> usize {
    match config.model {
        Model::Linear => 1,
        Model::Threads | Model::Epoll => config.threads,
        Model::Async => config.cores,
    }
}

/// Recycling limits the master applies to each worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recycling {
    /// Worker N (1-based) retires after `max_requests + (N - 1) × delta` requests.
    pub max_requests_delta: u64,
    /// A worker whose resident memory passes this many bytes (checked each second,
    /// once it has served a request) is replaced gracefully.
    pub reload_on_rss: Option<u64>,
    /// A worker is replaced gracefully after living this long.
    pub max_worker_lifetime: Option<Duration>,
}

static CARD: AtomicPtr<Scorecard> = AtomicPtr::new(std::ptr::null_mut());

/// This process's card, when it serves with stats on.
pub fn card() -> Option<&'static Scorecard> {
    // SAFETY: the pointer is null or came from a `&'static Scorecard` in `set_card`.
    unsafe { CARD.load(Ordering::Relaxed).as_ref() }
}

/// Makes `card` this process's card (a worker, once, before serving).
pub fn set_card(card: &'static Scorecard) {
    CARD.store(
        card as *const Scorecard as *mut Scorecard,
        Ordering::Relaxed,
    );
}

/// Counts a connection of this process open while the guard lives.
pub fn conn_guard() -> ConnGuard {
    ConnGuard::new(card())
}

/// An app exception (a Python traceback, a handler panic, a bad response).
pub fn exception() {
    if let Some(c) = card() {
        c.add(cum::EXCEPTIONS, 1);
    }
}

/// The process handled a signal (a stop, a reload, a log reopen).
pub fn signal_handled() {
    if let Some(c) = card() {
        c.add(cum::SIGNALS, 1);
    }
}

/// A connection was answered 503 because the worker was at `--max-connections`.
pub fn shed() {
    if let Some(c) = card() {
        c.add(cum::SHED, 1);
    }
}

/// The harakiri watchdog is about to kill this process.
pub fn harakiri_fired() {
    if let Some(c) = card() {
        c.add(cum::HARAKIRI, 1);
    }
}

/// A Python thread waited `waited` for the GIL.
pub fn gil_waited(waited: Duration) {
    if let Some(c) = card() {
        c.add(cum::GIL_WAIT_US, waited.as_micros() as u64);
        c.add(cum::GIL_WAITS, 1);
    }
}

/// How often a worker copies its offload and fan-out counters onto its card.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// Starts the thread that keeps `card` current with what lives outside the request
/// path: the offload engine's and the fan-out client's counters, and whether the
/// worker still accepts (`shutdown`).
pub fn start_publisher(card: &'static Scorecard, shutdown: Shutdown) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("forklift-publish".into())
        .spawn(move || loop {
            publish(card, &shutdown);
            std::thread::sleep(PUBLISH_EVERY);
        })?;
    Ok(())
}

/// Copies the counters that live outside the request path onto `card` now.
pub fn publish(card: &Scorecard, shutdown: &Shutdown) {
    if shutdown.is_triggered() {
        card.accepting.store(0, Ordering::Relaxed);
    }
    if let Some(o) = crate::offload::global() {
        let c = o.counters();
        card.set(cum::OFFLOAD_SUBMITTED, c.submitted);
        card.set(cum::OFFLOAD_DONE, c.completed);
        card.set(cum::OFFLOAD_FAILED, c.failed);
        card.set(cum::OFFLOAD_RETRIED, c.retried);
        card.set(cum::OFFLOAD_DEAD, c.dead);
        card.set(cum::OFFLOAD_REJECTED, c.rejected);
        card.offload_pending.store(c.queue_depth, Ordering::Relaxed);
    }
    if let Some(f) = crate::fanout::started_client() {
        let s = f.stats();
        card.set(cum::FANOUT_CALLS, s.calls);
        card.set(cum::FANOUT_ERRORS, s.errors);
        card.set(cum::FANOUT_CONNECTIONS, s.connections);
        card.fanout_pending
            .store(s.pending as u64, Ordering::Relaxed);
        card.fanout_open.store(s.open, Ordering::Relaxed);
    }
}
