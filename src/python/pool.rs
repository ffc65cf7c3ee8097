//! A bounded pool of threads that run Python for event-loop models. Threads start on
//! first use in each process (never before `fork`), each attaches to the interpreter
//! once, and the queue in front of them has a fixed capacity: a full queue is reported
//! to the caller, which answers 503.
//!
//! A thread takes the GIL once for a batch of queued jobs (up to [`MAX_BATCH`]). The
//! pool's `flush` hook publishes the replies finished so far: before each further job
//! of the batch (so no reply waits behind a slow request), and after the batch, once
//! the GIL is released.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use pyo3::Python;

use super::interp;
use crate::rt::fork::ForkLocal;

/// A unit of work for a pool thread, run with the GIL held.
pub(crate) type Job = Box<dyn for<'py> FnOnce(Python<'py>) + Send + 'static>;

/// Most jobs run under one hold of the GIL.
const MAX_BATCH: usize = 32;

/// Queued jobs allowed per pool thread...
const QUEUE_PER_THREAD: usize = 64;
/// ...and at least this many in all, so a one-thread pool behind an event loop holding
/// hundreds of connections queues their requests instead of refusing them.
const MIN_QUEUE: usize = 1024;

thread_local! {
    /// Jobs submitted by this (event-loop) thread during the current batch.
    static DEFERRED: std::cell::RefCell<Option<Vec<Job>>> = const { std::cell::RefCell::new(None) };
}

/// Starts holding this thread's submissions until [`PoolSlot::end_batch`]: an event
/// loop calls it before handling a round of events.
pub(crate) fn begin_batch() {
    DEFERRED.with(|d| {
        d.borrow_mut().get_or_insert_with(Vec::new);
    });
}

struct Running {
    tx: Sender<Job>,
    threads: Vec<JoinHandle<()>>,
}

/// A lazily started pool.
pub(crate) struct PoolSlot {
    threads: usize,
    name: &'static str,
    /// Run after each batch, without the GIL.
    flush: fn(),
    min_queue: usize,
    /// This process's threads and count: a forked worker starts its own, never
    /// touching the master's (whose locks a master thread may hold).
    local: ForkLocal<Local>,
}

#[derive(Default)]
struct Local {
    running: Mutex<Option<Running>>,
    /// Jobs submitted and not yet finished (queued or running).
    inflight: Arc<AtomicUsize>,
}

impl PoolSlot {
    /// A pool for requests: its queue holds at least [`MIN_QUEUE`] jobs.
    pub(crate) fn for_requests(threads: usize, name: &'static str, flush: fn()) -> PoolSlot {
        PoolSlot {
            min_queue: MIN_QUEUE,
            ..PoolSlot::new(threads, name, flush)
        }
    }

    pub(crate) fn new(threads: usize, name: &'static str, flush: fn()) -> PoolSlot {
        PoolSlot {
            threads: threads.max(1),
            name,
            flush,
            min_queue: 0,
            local: ForkLocal::new(),
        }
    }

    /// Queues `job`; gives it back when the queue is full (or threads cannot start).
    /// Inside a batch (see [`begin_batch`]) the job is held on this thread and sent by
    /// [`PoolSlot::end_batch`], so one wake-up of the pool serves the whole batch.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        let inflight = &self.local.local().inflight;
        let job = match DEFERRED.with(|d| match d.borrow_mut().as_mut() {
            Some(held) if inflight.load(Ordering::Acquire) < self.capacity() => {
                inflight.fetch_add(1, Ordering::AcqRel);
                held.push(job);
                None
            }
            _ => Some(job),
        }) {
            None => return Ok(()),
            Some(job) => job,
        };
        inflight.fetch_add(1, Ordering::AcqRel);
        self.send(job).inspect_err(|_| {
            inflight.fetch_sub(1, Ordering::AcqRel);
        })
    }

    /// Sends the jobs held since [`begin_batch`] and ends the batch. A job the queue
    /// cannot take is dropped, which answers its request with a 500.
    pub(crate) fn end_batch(&self) {
        let held = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
        let inflight = &self.local.local().inflight;
        for job in held {
            if self.send(job).is_err() {
                inflight.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    fn capacity(&self) -> usize {
        (self.threads * QUEUE_PER_THREAD).max(self.min_queue)
    }

    fn send(&self, job: Job) -> Result<(), Job> {
        let local = self.local.local();
        let tx = {
            let mut running = local.running.lock().unwrap_or_else(|e| e.into_inner());
            match running.as_ref() {
                Some(r) => r.tx.clone(),
                None => match self.start(&local.inflight) {
                    Some(r) => {
                        let tx = r.tx.clone();
                        *running = Some(r);
                        tx
                    }
                    None => return Err(job),
                },
            }
        };
        tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
        })
    }

    /// Threads without a job.
    pub(crate) fn idle(&self) -> usize {
        let busy = self
            .local
            .get()
            .map_or(0, |l| l.inflight.load(Ordering::Acquire));
        self.threads.saturating_sub(busy)
    }

    /// True when every thread has a job: another request would wait in the queue.
    pub(crate) fn saturated(&self) -> bool {
        self.local
            .get()
            .is_some_and(|l| l.inflight.load(Ordering::Acquire) >= self.threads)
    }

    fn start(&self, inflight: &Arc<AtomicUsize>) -> Option<Running> {
        let (tx, rx) = bounded::<Job>(self.capacity());
        let mut threads = Vec::with_capacity(self.threads);
        for i in 0..self.threads {
            let rx = rx.clone();
            let flush = self.flush;
            let inflight = inflight.clone();
            let t = std::thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || work(&rx, flush, &inflight));
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
        Some(Running { tx, threads })
    }

    /// Stops taking work, lets the threads finish what is queued, and joins them.
    pub(crate) fn shutdown(&self) {
        let running = self
            .local
            .get()
            .and_then(|l| l.running.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(r) = running {
            drop(r.tx);
            for t in r.threads {
                let _ = t.join();
            }
        }
    }
}

fn run(py: Python<'_>, job: Job) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(py))).is_err() {
        eprintln!("forklift: a Python pool job panicked; the thread carries on");
    }
}

/// A pool thread: waits for a job without the GIL, then runs it and whatever else is
/// queued (up to a batch) under one hold of the GIL. The replies finished so far are
/// published before each further job (no GIL is needed for that): the next job may be a
/// slow request, and a finished reply must not wait for it. A batch of fast jobs still
/// takes the GIL once, and the event loop, busy with the first reply, picks up the rest
/// in the same round.
fn work(rx: &Receiver<Job>, flush: fn(), inflight: &AtomicUsize) {
    while let Ok(job) = rx.recv() {
        interp::with_gil(|py| {
            run(py, job);
            inflight.fetch_sub(1, Ordering::AcqRel);
            for _ in 1..MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => {
                        flush();
                        run(py, job);
                        inflight.fetch_sub(1, Ordering::AcqRel);
                    }
                    Err(_) => break,
                }
            }
        });
        flush();
    }
}
