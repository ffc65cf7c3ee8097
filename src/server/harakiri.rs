//! Harakiri (uWSGI's name): a worker whose request runs longer than `--harakiri`
//! seconds is killed with SIGKILL, and the master starts a fresh one. A watchdog thread
//! in each worker watches the start times of in-flight requests; it needs no GIL and no
//! event loop, so it fires even when the app is stuck in C code or a deadlock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Log;

/// The in-flight requests of one worker process.
pub struct Watchdog {
    limit: Duration,
    /// Start times by slot; `None` is a free slot.
    slots: Mutex<Vec<Option<(Instant, String)>>>,
}

/// Marks one request in flight; dropping it marks the request done.
pub struct Ticket {
    dog: Arc<Watchdog>,
    slot: usize,
}

impl Watchdog {
    pub fn new(limit: Duration) -> Arc<Watchdog> {
        Arc::new(Watchdog {
            limit,
            slots: Mutex::new(Vec::new()),
        })
    }

    /// Records a request starting now; `what` names it in the log if it overruns.
    pub fn begin(self: &Arc<Self>, what: impl FnOnce() -> String) -> Ticket {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Some((Instant::now(), what()));
        let slot = match slots.iter().position(Option::is_none) {
            Some(i) => {
                slots[i] = entry;
                i
            }
            None => {
                slots.push(entry);
                slots.len() - 1
            }
        };
        Ticket {
            dog: self.clone(),
            slot,
        }
    }

    /// The oldest request in flight past the limit, if any.
    fn overrun(&self) -> Option<(Duration, String)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .flatten()
            .map(|(t, what)| (t.elapsed(), what))
            .filter(|(age, _)| *age > self.limit)
            .max_by_key(|(age, _)| *age)
            .map(|(age, what)| (age, what.clone()))
    }

    /// Starts the watchdog thread of this worker process (call after fork).
    pub fn start(self: &Arc<Self>, log: Log) -> std::io::Result<()> {
        let dog = self.clone();
        std::thread::Builder::new()
            .name("forklift-harakiri".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(250));
                if let Some((age, what)) = dog.overrun() {
                    log.line(&format!(
                        "forklift: HARAKIRI: {what} ran {:.1} s, over --harakiri {} s; killing worker (pid {})",
                        age.as_secs_f64(),
                        dog.limit.as_secs_f64(),
                        std::process::id()
                    ));
                    crate::ops::harakiri_fired();
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
                }
            })?;
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut slots = self.dog.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get_mut(self.slot) {
            *s = None;
        }
    }
}
