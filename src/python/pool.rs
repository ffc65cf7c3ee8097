//! A bounded pool of threads that run Python for event-loop models. Threads start on
//! first use in each process (never before `fork`), each attaches to the interpreter
//! once, and the queue in front of them has a fixed capacity: a full queue is reported
//! to the caller, which answers 503.

use std::sync::Mutex;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender, TrySendError};

use super::interp;

/// A unit of work for a pool thread.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// Queued jobs allowed per pool thread.
const QUEUE_PER_THREAD: usize = 64;

struct Running {
    /// Fork generation the threads were started in; stale after a fork.
    generation: u64,
    tx: Sender<Job>,
    threads: Vec<JoinHandle<()>>,
}

/// A lazily started pool.
pub(crate) struct PoolSlot {
    threads: usize,
    name: &'static str,
    running: Mutex<Option<Running>>,
}

impl PoolSlot {
    pub(crate) fn new(threads: usize) -> PoolSlot {
        PoolSlot::named(threads, "forklift-py")
    }

    pub(crate) fn named(threads: usize, name: &'static str) -> PoolSlot {
        PoolSlot {
            threads: threads.max(1),
            name,
            running: Mutex::new(None),
        }
    }

    /// Queues `job`; gives it back when the queue is full (or threads cannot start).
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        let tx = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let gen = interp::fork_generation();
            match running.as_ref() {
                Some(r) if r.generation == gen => r.tx.clone(),
                _ => {
                    // Threads inherited across fork do not exist here: forget them.
                    if let Some(old) = running.take() {
                        std::mem::forget(old.threads);
                    }
                    match self.start(gen) {
                        Some(r) => {
                            let tx = r.tx.clone();
                            *running = Some(r);
                            tx
                        }
                        None => return Err(job),
                    }
                }
            }
        };
        tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
        })
    }

    fn start(&self, generation: u64) -> Option<Running> {
        let (tx, rx) = bounded::<Job>(self.threads * QUEUE_PER_THREAD);
        let mut threads = Vec::with_capacity(self.threads);
        for i in 0..self.threads {
            let rx = rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                            eprintln!(
                                "forklift: a Python pool job panicked; the thread carries on"
                            );
                        }
                    }
                });
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    eprintln!("forklift: cannot start a Python pool thread: {e}");
                    break;
                }
            }
        }
        if threads.is_empty() {
            return None;
        }
        Some(Running {
            generation,
            tx,
            threads,
        })
    }

    /// Stops taking work, lets the threads finish what is queued, and joins them.
    pub(crate) fn shutdown(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(r) = running {
            if r.generation != interp::fork_generation() {
                std::mem::forget(r.threads);
                return;
            }
            drop(r.tx);
            for t in r.threads {
                let _ = t.join();
            }
        }
    }
}
