//! `pool`: a bounded queue (which also holds delayed tasks until they are due) served by
//! N worker threads, started on first use in each process.
//!
//! A blocking task holds its worker until it returns, so N bounds the blocking work
//! done at once. An async task (registered with [`Registry::register_async`], like
//! slowlog's wait) is started by a worker on the pool's event loop and waits there
//! without holding the worker: 1000 one-second waits finish in about a second, not
//! 1000 / N seconds. At most `queue` async tasks run at once; a worker that would
//! start one more waits for one to end, and the queue in front of it fills and refuses.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::rt::fork::ForkLocal;

use crate::offload::config::OffloadConfig;
use crate::offload::counters::Counters;
use crate::offload::delayq::{DelayQueue, PushError};
use crate::offload::engine::Engine;
use crate::offload::error::{OffloadError, SubmitError};
use crate::offload::exec::{run_guarded, Executor};
use crate::offload::registry::{Registry, TaskKind};
use crate::offload::slots::Slots;
use crate::offload::task::{DrainReport, Task, TaskId, TaskPayload};

pub struct PoolEngine {
    workers: usize,
    cap: usize,
    registry: Registry,
    counters: Arc<Counters>,
    seq: AtomicU64,
    /// This process's queue and threads: a forked worker starts empty, with its own
    /// threads, and never touches the master's (their locks may be held).
    local: ForkLocal<Local>,
}

struct Local {
    queue: Arc<DelayQueue<TaskPayload>>,
    /// Tasks taken from the queue and not finished yet (blocking and async).
    busy: Arc<AtomicUsize>,
    /// Async tasks running on the event loop, bounded by the queue capacity.
    waiting: Arc<Slots>,
    /// Whether the worker threads were started.
    started: Mutex<bool>,
    /// The event loop for async tasks, made when the first one is taken.
    exec: Arc<OnceLock<Executor>>,
}

impl PoolEngine {
    pub fn new(cfg: &OffloadConfig, registry: Registry, counters: Arc<Counters>) -> PoolEngine {
        PoolEngine {
            workers: cfg.workers,
            cap: cfg.queue,
            registry,
            counters,
            seq: AtomicU64::new(0),
            local: ForkLocal::new(),
        }
    }

    fn local(&self) -> &Local {
        self.local.get_or_init(|| Local {
            queue: Arc::new(DelayQueue::new(self.cap)),
            busy: Arc::new(AtomicUsize::new(0)),
            waiting: Arc::new(Slots::new(self.cap)),
            started: Mutex::new(false),
            exec: Arc::new(OnceLock::new()),
        })
    }

    fn ensure_started(&self) -> Result<&Local, SubmitError> {
        let local = self.local();
        let mut started = local.started.lock().unwrap_or_else(|p| p.into_inner());
        if *started {
            return Ok(local);
        }
        for i in 0..self.workers {
            let worker = Worker {
                queue: local.queue.clone(),
                registry: self.registry.clone(),
                counters: self.counters.clone(),
                busy: local.busy.clone(),
                waiting: local.waiting.clone(),
                exec: local.exec.clone(),
                workers: self.workers,
            };
            std::thread::Builder::new()
                .name(format!("forklift-pool-{i}"))
                .spawn(move || worker.run())
                .map_err(SubmitError::Unavailable)?;
        }
        *started = true;
        Ok(local)
    }
}

/// One worker thread's handles.
struct Worker {
    queue: Arc<DelayQueue<TaskPayload>>,
    registry: Registry,
    counters: Arc<Counters>,
    busy: Arc<AtomicUsize>,
    waiting: Arc<Slots>,
    exec: Arc<OnceLock<Executor>>,
    workers: usize,
}

impl Worker {
    fn run(self) {
        while let Some(p) = self.queue.pop() {
            if matches!(self.registry.get(&p.name), Some(TaskKind::Async(_))) {
                if let Some(exec) = self.executor() {
                    self.waiting.acquire();
                    start_async(exec, p, &self.busy, &self.waiting);
                    continue;
                }
            }
            self.busy.fetch_add(1, Ordering::AcqRel);
            Counters::inc(&self.counters.running);
            let r = run_guarded(&self.registry, &p);
            self.counters.finished(r.is_ok());
            self.busy.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn executor(&self) -> Option<&Executor> {
        executor(&self.exec, self.workers, &self.registry, &self.counters)
    }
}

/// The pool's event loop, made on first use; `None` if it cannot start (async tasks
/// then run on the workers, as blocking ones do).
fn executor<'a>(
    exec: &'a OnceLock<Executor>,
    workers: usize,
    registry: &Registry,
    counters: &Arc<Counters>,
) -> Option<&'a Executor> {
    if let Some(e) = exec.get() {
        return Some(e);
    }
    match Executor::new(
        "forklift-pool-io",
        workers,
        registry.clone(),
        counters.clone(),
    ) {
        Ok(e) => {
            // Another thread may have made one first: keep the first.
            let _ = exec.set(e);
            exec.get()
        }
        Err(e) => {
            eprintln!("forklift: offload pool: cannot start its event loop: {e}");
            None
        }
    }
}

/// Starts `p` on the event loop in one of `waiting`'s slots (taken by the caller);
/// `busy` counts it until it ends.
fn start_async(exec: &Executor, p: TaskPayload, busy: &Arc<AtomicUsize>, waiting: &Arc<Slots>) {
    busy.fetch_add(1, Ordering::AcqRel);
    let busy = busy.clone();
    let waiting = waiting.clone();
    // The executor counts it running and finished.
    exec.spawn(p, Duration::ZERO, move |_, _| {
        waiting.release();
        busy.fetch_sub(1, Ordering::AcqRel);
    });
}

impl Engine for PoolEngine {
    fn submit(&self, task: Task) -> Result<TaskId, SubmitError> {
        let local = self.ensure_started()?;
        let id = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let payload = TaskPayload::first(id, task.name, task.payload);
        // An async task due now goes straight to the event loop when it has room:
        // no worker needs to wake up to pass it on.
        if task.delay.is_zero()
            && matches!(self.registry.get(&payload.name), Some(TaskKind::Async(_)))
            && !local.queue.is_closed()
        {
            if let Some(exec) = executor(&local.exec, self.workers, &self.registry, &self.counters)
            {
                if local.waiting.try_acquire() {
                    start_async(exec, payload, &local.busy, &local.waiting);
                    return Ok(id);
                }
            }
        }
        match local.queue.push(payload, Instant::now() + task.delay) {
            Ok(()) => Ok(id),
            Err(PushError::Full(_)) => Err(SubmitError::Full { capacity: self.cap }),
            Err(PushError::Closed(_)) => Err(SubmitError::ShuttingDown),
        }
    }

    fn start(&self) -> Result<(), OffloadError> {
        self.ensure_started()
            .map(|_| ())
            .map_err(|e| OffloadError::Io(std::io::Error::other(e.to_string())))
    }

    fn shutdown(&self, timeout: Duration) -> DrainReport {
        let done =
            |c: &Counters| c.completed.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
        let before = done(&self.counters);
        let local = self.local();
        local.queue.close();
        let deadline = Instant::now() + timeout;
        let running_here = *local.started.lock().unwrap_or_else(|p| p.into_inner());
        while running_here
            && (local.queue.len() > 0 || local.busy.load(Ordering::Acquire) > 0)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let abandoned = local.queue.abort() as u64;
        let dropped = abandoned + local.busy.load(Ordering::Acquire) as u64;
        Counters::add(&self.counters.dropped, dropped);
        DrainReport {
            drained: done(&self.counters) - before,
            dropped,
            left_in_spool: 0,
        }
    }

    fn queue_depth(&self) -> u64 {
        self.local.get().map_or(0, |l| l.queue.len() as u64)
    }
}
