//! `pool`: a bounded queue (which also holds delayed tasks until they are due) served by
//! N worker threads, started on first use in each process.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::delayq::{DelayQueue, PushError};
use crate::rt::fork::ForkLocal;

use super::{
    run_guarded, Counters, DrainReport, Engine, OffloadConfig, Registry, SubmitError, Task, TaskId,
    TaskPayload,
};

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
    /// Tasks taken from the queue and not finished yet.
    busy: Arc<AtomicUsize>,
    /// Whether the worker threads were started.
    started: Mutex<bool>,
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
            started: Mutex::new(false),
        })
    }

    fn ensure_started(&self) -> Result<&Local, SubmitError> {
        let local = self.local();
        let mut started = local.started.lock().unwrap_or_else(|p| p.into_inner());
        if *started {
            return Ok(local);
        }
        for i in 0..self.workers {
            let queue = local.queue.clone();
            let registry = self.registry.clone();
            let counters = self.counters.clone();
            let busy = local.busy.clone();
            std::thread::Builder::new()
                .name(format!("forklift-pool-{i}"))
                .spawn(move || {
                    while let Some(p) = queue.pop() {
                        busy.fetch_add(1, Ordering::AcqRel);
                        Counters::inc(&counters.running);
                        let r = run_guarded(&registry, &p);
                        counters.finished(r.is_ok());
                        busy.fetch_sub(1, Ordering::AcqRel);
                    }
                })
                .map_err(SubmitError::Unavailable)?;
        }
        *started = true;
        Ok(local)
    }
}

impl Engine for PoolEngine {
    fn submit(&self, task: Task) -> Result<TaskId, SubmitError> {
        let local = self.ensure_started()?;
        let id = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let payload = TaskPayload {
            id,
            name: task.name,
            data: task.payload,
            attempt: 1,
        };
        match local.queue.push(payload, Instant::now() + task.delay) {
            Ok(()) => Ok(id),
            Err(PushError::Full(_)) => Err(SubmitError::Full { capacity: self.cap }),
            Err(PushError::Closed(_)) => Err(SubmitError::ShuttingDown),
        }
    }

    fn start(&self) -> Result<(), super::OffloadError> {
        self.ensure_started()
            .map(|_| ())
            .map_err(|e| super::OffloadError::Io(std::io::Error::other(e.to_string())))
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
