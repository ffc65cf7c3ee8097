//! `inline`: the task runs before `submit` returns (the blocking baseline).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::app::BoxFuture;
use crate::offload::config::OffloadConfig;
use crate::offload::counters::Counters;
use crate::offload::engine::Engine;
use crate::offload::error::SubmitError;
use crate::offload::exec::run_guarded;
use crate::offload::registry::{Registry, TaskKind};
use crate::offload::task::{DrainReport, Task, TaskId, TaskPayload};

pub struct InlineEngine {
    registry: Registry,
    counters: Arc<Counters>,
    seq: AtomicU64,
    /// Helper threads running blocking tasks for callers on an event loop, at most `cap`.
    helpers: Arc<AtomicUsize>,
    cap: usize,
}

impl InlineEngine {
    pub fn new(cfg: &OffloadConfig, registry: Registry, counters: Arc<Counters>) -> InlineEngine {
        InlineEngine {
            registry,
            counters,
            seq: AtomicU64::new(0),
            helpers: Arc::new(AtomicUsize::new(0)),
            cap: cfg.queue,
        }
    }

    fn payload(&self, task: Task) -> TaskPayload {
        let id = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        TaskPayload::first(id, task.name, task.payload)
    }
}

impl Engine for InlineEngine {
    fn submit(&self, task: Task) -> Result<TaskId, SubmitError> {
        if !task.delay.is_zero() {
            std::thread::sleep(task.delay);
        }
        let p = self.payload(task);
        Counters::inc(&self.counters.running);
        let r = run_guarded(&self.registry, &p);
        self.counters.finished(r.is_ok());
        Ok(p.id)
    }

    fn submit_async(&self, task: Task) -> BoxFuture<Result<TaskId, SubmitError>> {
        let delay = task.delay;
        let p = self.payload(task);
        let registry = self.registry.clone();
        let counters = self.counters.clone();
        let helpers = self.helpers.clone();
        let cap = self.cap;
        Box::pin(async move {
            if !delay.is_zero() {
                crate::rt::sleep(delay).await;
            }
            let id = p.id;
            Counters::inc(&counters.running);
            let ok = match registry.get(&p.name) {
                Some(TaskKind::Async(f)) => f(p.clone()).await.is_ok(),
                _ => {
                    // A blocking task must not run on the event loop: give it a thread
                    // (at most `cap` at once) and wait for it without blocking.
                    if helpers.fetch_add(1, Ordering::AcqRel) >= cap {
                        helpers.fetch_sub(1, Ordering::AcqRel);
                        Counters::dec(&counters.running);
                        return Err(SubmitError::Full { capacity: cap });
                    }
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let h = helpers.clone();
                    let spawned = std::thread::Builder::new()
                        .name("forklift-inline".into())
                        .spawn(move || {
                            let _ = tx.send(run_guarded(&registry, &p).is_ok());
                            h.fetch_sub(1, Ordering::AcqRel);
                        });
                    if let Err(e) = spawned {
                        helpers.fetch_sub(1, Ordering::AcqRel);
                        counters.finished(false);
                        return Err(SubmitError::Unavailable(e));
                    }
                    rx.await.unwrap_or(false)
                }
            };
            counters.finished(ok);
            Ok(id)
        })
    }

    fn shutdown(&self, _timeout: Duration) -> DrainReport {
        DrainReport::default()
    }

    fn queue_depth(&self) -> u64 {
        0
    }
}
