//! Fan-out: concurrent calls from any handler to backend services, so a
//! request that needs N backend calls costs the slowest call, not the sum.
//!
//! Each worker process owns one [`Client`] ([`client()`]): a tokio runtime on its own
//! thread, created lazily on first use — after fork, never before (a client made in a
//! parent is not reused by a forked child: the child makes its own) — with pooled
//! keep-alive HTTP/1.1 connections per host, a DNS cache with a TTL (one lookup per host
//! per TTL, no thread per lookup), per-call and overall timeouts and a bounded number of
//! calls in flight and pending. This is the "event loop on its own thread that hands back
//! futures" (as in Crochet and Fido), built in.
//!
//! The futures it returns ([`Fetch`], [`FetchAll`]) do not depend on any executor: wait
//! for them with [`crate::rt::block_on`] on a blocking model, return them inside
//! [`crate::app::Reply::Later`] on an event-loop model, or `.await` them in tokio.
//!
//! ```no_run
//! use std::time::Duration;
//! use forklift::fanout::{client, FetchRequest};
//! let calls = ["0.125", "0.5"]
//!     .map(|d| FetchRequest::get(format!("http://127.0.0.1:7001/?duration={d}")));
//! for r in client().fetch_all_blocking(calls.to_vec(), Duration::from_secs(2)) {
//!     match r {
//!         Ok(resp) => println!("{} {}", resp.status, resp.text()),
//!         Err(e) => println!("failed: {e}"),
//!     }
//! }
//! ```
//!
//! In a native handler, hand the batch back as [`crate::app::Reply::Later`]: the blocking
//! models wait for it on their thread, the event-loop models keep serving meanwhile.
//!
//! ```no_run
//! use std::time::Duration;
//! use forklift::app::{CallContext, Handler, Reply, Request, Response};
//! use forklift::fanout::{client, FetchRequest};
//!
//! struct Profile;
//!
//! impl Handler for Profile {
//!     fn call(&self, _req: Request, _cx: &CallContext) -> Reply {
//!         let calls = vec![
//!             FetchRequest::get("http://session.internal:8001/current"),
//!             FetchRequest::get("http://user.internal:8002/me"),
//!         ];
//!         let batch = client().fetch_all(calls, Duration::from_millis(800));
//!         Reply::Later(Box::pin(async move {
//!             let parts: Vec<String> = batch
//!                 .await
//!                 .into_iter()
//!                 .map(|r| r.map_or_else(|e| format!("error: {e}"), |resp| resp.text()))
//!                 .collect();
//!             Response::text(200, parts.join("\n"))
//!         }))
//!     }
//! }
//! ```
//!
//! The built-in app `builtin:fanout` ([`FanoutApp`]) is the fan-out demo app, natively.

mod app;
mod args;
mod client;
pub mod dns;

pub use app::FanoutApp;
/// The app's call modes and limits, which `forklift compare fanout` drives it with.
pub use app::{Mode, DEFAULT_DURATIONS, MAX_CALLS};
pub use args::FanoutArgs;
pub use client::{
    Client, ClientConfig, ClientStats, Fetch, FetchAll, FetchError, FetchRequest, FetchResponse,
    Pending,
};

use std::sync::Mutex;

/// The process's client, with the pid it was made in (a forked child must not use its
/// parent's: the runtime thread did not survive the fork).
struct Slot {
    pid: u32,
    client: &'static Client,
}

static CLIENT: Mutex<Option<Slot>> = Mutex::new(None);
static CONFIG: Mutex<Option<ClientConfig>> = Mutex::new(None);

/// Errors of the module-level setup.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error(
        "the fan-out client of this process is already running; configure it before the first call"
    )]
    AlreadyStarted,
}

/// Sets the configuration of the process client. Call it before the first [`client()`]
/// in the process (e.g. from `main`, before serving); it is inherited by forked workers,
/// each of which builds its own client with it.
pub fn configure(config: ClientConfig) -> Result<(), FanoutError> {
    let started = CLIENT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|s| s.pid == std::process::id());
    if started {
        return Err(FanoutError::AlreadyStarted);
    }
    *CONFIG.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
    Ok(())
}

/// The fan-out client of this process if it has started (for the metrics, which must
/// not start one).
pub fn started_client() -> Option<&'static Client> {
    let pid = std::process::id();
    let slot = CLIENT.lock().unwrap_or_else(|p| p.into_inner());
    slot.as_ref().filter(|s| s.pid == pid).map(|s| s.client)
}

/// The fan-out client of this process, started on first use. A client inherited across
/// `fork` is abandoned (its thread is gone) and a new one started in the child.
pub fn client() -> &'static Client {
    let pid = std::process::id();
    let mut slot = CLIENT.lock().unwrap_or_else(|p| p.into_inner());
    match &*slot {
        Some(s) if s.pid == pid => s.client,
        _ => {
            let config = CONFIG
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            // Leaked on purpose: it lives as long as the process, and an inherited one
            // must not be dropped (its runtime's threads do not exist in this process).
            let client: &'static Client = Box::leak(Box::new(Client::new(config)));
            *slot = Some(Slot { pid, client });
            client
        }
    }
}
