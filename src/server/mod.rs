//! The server: configuration, the listening socket, one module per concurrency model
//! (chosen by one `match` in [`run_worker`]), the blocking connection driver they
//! share, the pre-fork master, and the access log.

pub mod accept;
mod blocking;
pub mod config;
pub mod conn;
mod epoll;
mod harakiri;
pub mod inherit;
mod linear;
pub mod listen;
pub mod log;
pub mod master;
pub mod signals;
mod threads;
mod tokio_model;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use config::{GreenEngine, Model, ServerConfig, Timeouts};
pub use listen::{Listener, Protocol};
pub use log::Log;
pub use master::EXIT_BOOT_FAILED;

use crate::app::App;
use crate::rt::Shutdown;

/// What every connection of a worker shares: the app, the settings, the log, and the
/// shutdown signal.
pub struct Env {
    pub app: App,
    pub config: ServerConfig,
    pub log: Log,
    pub shutdown: Shutdown,
    /// Set with `--harakiri`: kills this worker when a request overruns.
    pub harakiri: Option<std::sync::Arc<harakiri::Watchdog>>,
    /// Requests this worker has answered, over all its connections (`--max-requests`).
    pub requests: AtomicU64,
    /// This worker process's card on the stats scoreboard (`--stats`, `--metrics`).
    pub ops: Option<&'static crate::ops::Scorecard>,
}

impl Env {
    /// What the connections of a worker serving `app` share.
    pub fn new(
        app: App,
        config: ServerConfig,
        log: Log,
        shutdown: Shutdown,
        harakiri: Option<Arc<harakiri::Watchdog>>,
    ) -> Env {
        Env {
            app,
            config,
            log,
            shutdown,
            harakiri,
            requests: AtomicU64::new(0),
            ops: None,
        }
    }

    /// Whether a response should close its connection rather than keep it alive because
    /// this worker is `saturated`. Only with several processes: a keep-alive client is
    /// pinned to the process that accepted it, and behind a busy one it would wait while
    /// another process is idle; after a close it reconnects, and the kernel hands the
    /// new connection to whichever process accepts first.
    pub fn prefer_close(&self, saturated: bool) -> bool {
        self.config.processes > 1 && saturated
    }
}

/// Marks the calling event-loop thread SCHED_BATCH, for apps that run requests on
/// threads of their own (the WSGI GIL pool). Woken by a finished reply, the loop then no
/// longer preempts the app thread in the middle of handing over its batch of replies:
/// the thread finishes the batch, the loop takes all of it in one round. On one core
/// this turns a switch per request into a switch per batch (hello-world WSGI: ~1.4× the
/// requests per second). Failure only costs that gain.
pub(crate) fn defer_to_app_threads() {
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid parameter;
    // no memory is shared with the kernel beyond the call.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
    }
}

/// Errors that stop a worker from serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Serves `listeners` (each with its protocol) with the configured model until
/// `shutdown` is triggered and in-flight requests are done (or the shutdown timeout
/// passes).
pub fn run_worker(
    listeners: Vec<Listener>,
    app: App,
    config: ServerConfig,
    log: Log,
    shutdown: Shutdown,
) -> Result<(), ServerError> {
    run_worker_with(listeners, app, config, log, shutdown, None)
}

/// [`run_worker`] for a worker process that counts on `card` of the stats scoreboard.
pub fn run_worker_with(
    listeners: Vec<Listener>,
    app: App,
    config: ServerConfig,
    log: Log,
    shutdown: Shutdown,
    card: Option<&'static crate::ops::Scorecard>,
) -> Result<(), ServerError> {
    let harakiri = config.harakiri.map(harakiri::Watchdog::new);
    if let Some(dog) = &harakiri {
        dog.start(log.clone())?;
    }
    if let Some(card) = card {
        crate::ops::set_card(card);
        crate::ops::start_publisher(card, shutdown.clone())?;
    }
    let mut env = Env::new(app, config, log, shutdown, harakiri);
    env.ops = card;
    let env = Arc::new(env);
    let result = match env.config.model {
        Model::Linear => linear::run(listeners, env.clone()),
        Model::Threads => threads::run(listeners, env.clone()),
        Model::Epoll => epoll::run(listeners, env.clone()),
        Model::Async => tokio_model::run(listeners, env.clone()),
    };
    env.app.shutdown();
    if let Some(card) = card {
        crate::ops::publish(card, &env.shutdown);
    }
    result
}
