//! The blocked-hub watchdog: a thread per worker that notices the greenlet loop has not
//! run for a while (a request calling `time.sleep` or blocking I/O that gevent has not
//! made cooperative), logs it once with the request it is stuck in and the Python stack,
//! and marks the loop so the worker takes no new clients until it runs again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::prelude::*;

use crate::python::interp;
use crate::server::GreenEngine;

use super::hub::{now_ms, runtime, HubHandle};

/// A loop silent for this long is reported as blocked.
const BLOCKED_AFTER_MS: u64 = 1000;
/// How often the loop is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Starts the watchdog over `hub`; it ends when `stop` is set.
pub(crate) fn start(hub: Arc<HubHandle>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("{}-watch", hub.name))
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(CHECK_EVERY);
                check(&hub);
            }
        })
}

fn check(hub: &HubHandle) {
    let silent = now_ms().saturating_sub(hub.beat.load(Ordering::Relaxed));
    let was = hub.blocked.load(Ordering::Relaxed);
    if silent >= BLOCKED_AFTER_MS && !was {
        hub.blocked.store(true, Ordering::Relaxed);
        let waiting = hub.inflight.load(Ordering::Relaxed).saturating_sub(1);
        let (what, stack) = blocked_at(hub.ident.load(Ordering::Relaxed));
        let culprit = match what {
            Some(w) => format!("request {w} blocks it"),
            None => "code outside a request blocks it".into(),
        };
        let hint = match hub.engine {
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
            "forklift: worker {}: the {} has not run for {:.1} s: {culprit} without yielding \
             ({hint}); {waiting} other request(s) wait. It is at:\n{}",
            std::process::id(),
            hub.describe(),
            silent as f64 / 1000.0,
            stack.trim_end()
        );
    } else if silent < BLOCKED_AFTER_MS && was {
        hub.blocked.store(false, Ordering::Relaxed);
        eprintln!(
            "forklift: worker {}: the {} runs again",
            std::process::id(),
            hub.describe()
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
