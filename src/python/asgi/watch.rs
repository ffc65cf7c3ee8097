//! The blocked-loop watchdog: a thread per worker that notices an event loop which has
//! not run for a while (an app calling `time.sleep` or other blocking code in async
//! code), logs it once with the Python stack it is stuck at, and marks the loop so new
//! requests go to the worker's other loops; it logs again when the loop recovers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::prelude::*;

use crate::python::interp;

use super::looper::{now_ms, LoopHandle};

/// A loop silent for this long is reported as blocked.
pub(crate) const BLOCKED_AFTER_MS: u64 = 1000;
/// How often the loops are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Starts the watchdog over `loops`; it ends when `stop` is set.
pub(crate) fn start(
    loops: Vec<Arc<LoopHandle>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("forklift-asgi-watch".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(CHECK_EVERY);
                for l in &loops {
                    check(l);
                }
            }
        })
}

fn check(l: &LoopHandle) {
    let silent = now_ms().saturating_sub(l.beat.load(Ordering::Relaxed));
    let was = l.blocked.load(Ordering::Relaxed);
    if silent >= BLOCKED_AFTER_MS && !was {
        l.blocked.store(true, Ordering::Relaxed);
        let waiting = l.inflight.load(Ordering::Relaxed);
        let stack = stack_of(l.ident.load(Ordering::Relaxed));
        eprintln!(
            "forklift: the event loop of {} has not run for {:.1} s: blocking code in async \
             code holds up its {waiting} request(s); other loops take new requests. It is at:\n{}",
            l.name,
            silent as f64 / 1000.0,
            stack.trim_end()
        );
    } else if silent < BLOCKED_AFTER_MS && was {
        l.blocked.store(false, Ordering::Relaxed);
        eprintln!("forklift: the event loop of {} runs again", l.name);
    }
}

/// The Python stack of thread `ident` (it released the GIL in a blocking call, or
/// gives it up at the interpreter's switch interval).
fn stack_of(ident: u64) -> String {
    interp::with_gil(|py| {
        let r = (|| -> PyResult<String> {
            let frames = py.import("sys")?.call_method0("_current_frames")?;
            let Some(frame) = frames.get_item(ident).ok() else {
                return Ok("  (no Python frame)".into());
            };
            let lines = py
                .import("traceback")?
                .call_method1("format_stack", (frame,))?;
            let lines: Vec<String> = lines.extract()?;
            Ok(lines.concat())
        })();
        r.unwrap_or_else(|e| format!("  (stack unavailable: {e})"))
    })
}
