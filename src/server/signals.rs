//! Turning SIGTERM / SIGINT (and SIGHUP in a worker) into a graceful [`Shutdown`]: a
//! small thread waits for the signals and triggers it, so no work happens inside a
//! signal handler.

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::rt::Shutdown;

/// Starts the watcher for a serving process. Returns the handle that stops it.
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
            if signals.forever().next().is_some() {
                shutdown.trigger();
            }
        })?;
    Ok(handle)
}
