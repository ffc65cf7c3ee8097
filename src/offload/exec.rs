//! The task executor shared by the `loop` worker and the spool runner: a small tokio
//! runtime where async tasks wait without holding a thread, and blocking tasks run on
//! its bounded blocking pool.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::registry::TaskKind;
use super::{run_guarded, Counters, Registry, TaskError, TaskPayload};

pub struct Executor {
    rt: tokio::runtime::Runtime,
    registry: Registry,
    counters: Arc<Counters>,
}

impl Executor {
    /// `workers` bounds the threads running blocking tasks at once.
    pub fn new(
        name: &str,
        workers: usize,
        registry: Registry,
        counters: Arc<Counters>,
    ) -> io::Result<Executor> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(workers.max(1))
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(Executor {
            rt,
            registry,
            counters,
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.handle()
    }

    /// Runs `p` after `delay`, then calls `done` with the outcome (on a runtime thread).
    pub fn spawn<D>(&self, p: TaskPayload, delay: Duration, done: D)
    where
        D: FnOnce(TaskPayload, Result<(), TaskError>) + Send + 'static,
    {
        let registry = self.registry.clone();
        let counters = self.counters.clone();
        self.rt.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Counters::inc(&counters.running);
            let r = run_one(&registry, &p).await;
            counters.finished(r.is_ok());
            done(p, r);
        });
    }
}

/// Runs one task: async ones in this task (a panic is caught and becomes the task's
/// error), blocking ones on the blocking pool.
pub async fn run_one(registry: &Registry, p: &TaskPayload) -> Result<(), TaskError> {
    use futures_util::FutureExt;
    match registry.get(&p.name) {
        Some(TaskKind::Async(f)) => {
            match std::panic::AssertUnwindSafe(f(p.clone()))
                .catch_unwind()
                .await
            {
                Ok(r) => r,
                Err(panic) => Err(super::panicked(panic.as_ref())),
            }
        }
        Some(TaskKind::Blocking(_)) => {
            let registry = registry.clone();
            let p = p.clone();
            match tokio::task::spawn_blocking(move || run_guarded(&registry, &p)).await {
                Ok(r) => r,
                Err(e) => Err(TaskError::new(format!("task failed to run: {e}"))),
            }
        }
        None => Err(super::registry::unknown(&p.name)),
    }
}
