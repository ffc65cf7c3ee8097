//! `thread`: a thread per task, at most `queue` alive (like Python's `threading.Thread`
//! per job).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::rt::fork::ForkLocal;

use crate::offload::config::OffloadConfig;
use crate::offload::counters::Counters;
use crate::offload::engine::Engine;
use crate::offload::error::SubmitError;
use crate::offload::exec::run_guarded;
use crate::offload::registry::Registry;
use crate::offload::slots::Slots;
use crate::offload::task::{DrainReport, Task, TaskId, TaskPayload};

pub struct ThreadEngine {
    cap: usize,
    registry: Registry,
    counters: Arc<Counters>,
    seq: AtomicU64,
    closing: AtomicBool,
    /// This process's count of live task threads (threads do not survive fork: a
    /// forked worker starts from 0, with a lock no master thread can hold).
    live: ForkLocal<Arc<Slots>>,
}

impl ThreadEngine {
    pub fn new(cfg: &OffloadConfig, registry: Registry, counters: Arc<Counters>) -> ThreadEngine {
        ThreadEngine {
            cap: cfg.queue,
            registry,
            counters,
            seq: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            live: ForkLocal::new(),
        }
    }

    fn live(&self) -> &Arc<Slots> {
        self.live.get_or_init(|| Arc::new(Slots::new(self.cap)))
    }
}

impl Engine for ThreadEngine {
    fn submit(&self, task: Task) -> Result<TaskId, SubmitError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        if !self.live().try_acquire() {
            return Err(SubmitError::Full { capacity: self.cap });
        }
        let id = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let payload = TaskPayload::first(id, task.name, task.payload);
        let delay = task.delay;
        let registry = self.registry.clone();
        let counters = self.counters.clone();
        let live = self.live().clone();
        let spawned = std::thread::Builder::new()
            .name("forklift-task".into())
            .spawn(move || {
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                Counters::inc(&counters.running);
                let r = run_guarded(&registry, &payload);
                counters.finished(r.is_ok());
                live.release();
            });
        match spawned {
            Ok(_) => Ok(id),
            Err(e) => {
                self.live().release();
                Err(SubmitError::Unavailable(e))
            }
        }
    }

    fn shutdown(&self, timeout: Duration) -> DrainReport {
        self.closing.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        let done_before = self.counters.completed.load(Ordering::Relaxed)
            + self.counters.failed.load(Ordering::Relaxed);
        let dropped = self.live().wait_empty(deadline) as u64;
        Counters::add(&self.counters.dropped, dropped);
        let done_after = self.counters.completed.load(Ordering::Relaxed)
            + self.counters.failed.load(Ordering::Relaxed);
        DrainReport {
            drained: done_after - done_before,
            dropped,
            left_in_spool: 0,
        }
    }

    fn queue_depth(&self) -> u64 {
        let live = self.live.get().map_or(0, |l| l.taken()) as u64;
        live.saturating_sub(self.counters.running.load(Ordering::Relaxed))
    }
}
