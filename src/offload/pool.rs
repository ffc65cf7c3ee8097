//! `pool`: a bounded queue (which also holds delayed tasks until they are due) served by
//! N worker threads, started on first use in each process.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::delayq::{DelayQueue, PushError};
use super::{
    pid, run_guarded, Counters, DrainReport, Engine, OffloadConfig, Registry, SubmitError, Task,
    TaskId, TaskPayload,
};

pub struct PoolEngine {
    workers: usize,
    cap: usize,
    registry: Registry,
    counters: Arc<Counters>,
    seq: AtomicU64,
    queue: Arc<DelayQueue<TaskPayload>>,
    /// Tasks taken from the queue and not finished yet.
    busy: Arc<AtomicUsize>,
    /// The pid whose worker threads are running (threads do not survive fork).
    started: Mutex<Option<u32>>,
}

impl PoolEngine {
    pub fn new(cfg: &OffloadConfig, registry: Registry, counters: Arc<Counters>) -> PoolEngine {
        PoolEngine {
            workers: cfg.workers,
            cap: cfg.queue,
            registry,
            counters,
            seq: AtomicU64::new(0),
            queue: Arc::new(DelayQueue::new(cfg.queue)),
            busy: Arc::new(AtomicUsize::new(0)),
            started: Mutex::new(None),
        }
    }

    fn ensure_started(&self) -> Result<(), SubmitError> {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if *started == Some(pid()) {
            return Ok(());
        }
        for i in 0..self.workers {
            let queue = self.queue.clone();
            let registry = self.registry.clone();
            let counters = self.counters.clone();
            let busy = self.busy.clone();
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
        *started = Some(pid());
        Ok(())
    }
}

impl Engine for PoolEngine {
    fn submit(&self, task: Task) -> Result<TaskId, SubmitError> {
        self.ensure_started()?;
        let id = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let payload = TaskPayload {
            id,
            name: task.name,
            data: task.payload,
            attempt: 1,
        };
        match self.queue.push(payload, Instant::now() + task.delay) {
            Ok(()) => Ok(id),
            Err(PushError::Full(_)) => Err(SubmitError::Full { capacity: self.cap }),
            Err(PushError::Closed(_)) => Err(SubmitError::ShuttingDown),
        }
    }

    fn start(&self) -> Result<(), super::OffloadError> {
        self.ensure_started()
            .map_err(|e| super::OffloadError::Io(std::io::Error::other(e.to_string())))
    }

    fn shutdown(&self, timeout: Duration) -> DrainReport {
        let done =
            |c: &Counters| c.completed.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
        let before = done(&self.counters);
        self.queue.close();
        let deadline = Instant::now() + timeout;
        let running_here = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            == Some(&pid());
        while running_here
            && (self.queue.len() > 0 || self.busy.load(Ordering::Acquire) > 0)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let abandoned = self.queue.abort() as u64;
        let dropped = abandoned + self.busy.load(Ordering::Acquire) as u64;
        Counters::add(&self.counters.dropped, dropped);
        DrainReport {
            drained: done(&self.counters) - before,
            dropped,
            left_in_spool: 0,
        }
    }

    fn queue_depth(&self) -> u64 {
        self.queue.len() as u64
    }
}
