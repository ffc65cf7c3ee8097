//! Turning SIGTERM / SIGINT / SIGQUIT (and SIGHUP in a worker) into a graceful
//! [`Shutdown`]: a small thread waits for the signals and triggers it, so no work
//! happens inside a signal handler. Each signal handled is counted on the stats
//! scoreboard.

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::rt::Shutdown;

/// Starts the watcher for a serving process. With `include_hup` (a worker under the
/// master), SIGHUP is the master's "you are being replaced": a stop that hands the
/// listening socket over (see [`Shutdown::trigger_handover`]); the other signals stop
/// the worker as the last process on the socket. Returns the handle that stops it.
pub fn watch(
    shutdown: &Shutdown,
    include_hup: bool,
) -> std::io::Result<signal_hook::iterator::Handle> {
    let mut sigs = vec![SIGTERM, SIGINT, SIGQUIT];
    if include_hup {
        sigs.push(SIGHUP);
    }
    let mut signals = Signals::new(&sigs)?;
    let handle = signals.handle();
    let shutdown = shutdown.clone();
    std::thread::Builder::new()
        .name("forklift-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                crate::ops::signal_handled();
                if sig == SIGHUP {
                    shutdown.trigger_handover();
                } else {
                    shutdown.trigger();
                }
            }
        })?;
    Ok(handle)
}
