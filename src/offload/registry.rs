//! The task registry: task name → function, shared by every strategy of a process.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use super::error::TaskError;
use super::task::TaskPayload;
use crate::app::BoxFuture;

/// A blocking task function. Runs on a thread that may block (a pool worker, a task
/// thread, the loop worker's blocking pool).
pub type TaskFn = Arc<dyn Fn(&TaskPayload) -> Result<(), TaskError> + Send + Sync>;

/// An asynchronous task function. Under `loop` its waits hold no thread; the other
/// strategies drive it to completion on their worker thread.
pub type AsyncTaskFn = Arc<dyn Fn(TaskPayload) -> BoxFuture<Result<(), TaskError>> + Send + Sync>;

/// A registered task.
#[derive(Clone)]
pub enum TaskKind {
    Blocking(TaskFn),
    Async(AsyncTaskFn),
}

/// Names → task functions. Cheap to clone (shared); [`Registry::global`] is the one
/// `forklift serve` and the Python module use.
#[derive(Clone, Default)]
pub struct Registry {
    map: Arc<RwLock<HashMap<String, TaskKind>>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The process-wide registry.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(Registry::new)
    }

    /// Registers (or replaces) a blocking task.
    pub fn register<F>(&self, name: impl Into<String>, f: F)
    where
        F: Fn(&TaskPayload) -> Result<(), TaskError> + Send + Sync + 'static,
    {
        self.insert(name.into(), TaskKind::Blocking(Arc::new(f)));
    }

    /// Registers (or replaces) an asynchronous task.
    pub fn register_async<F>(&self, name: impl Into<String>, f: F)
    where
        F: Fn(TaskPayload) -> BoxFuture<Result<(), TaskError>> + Send + Sync + 'static,
    {
        self.insert(name.into(), TaskKind::Async(Arc::new(f)));
    }

    fn insert(&self, name: String, kind: TaskKind) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, kind);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    pub fn get(&self, name: &str) -> Option<TaskKind> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Runs `payload`'s task on this (blocking) thread.
    pub fn run_blocking(&self, payload: &TaskPayload) -> Result<(), TaskError> {
        match self.get(&payload.name) {
            Some(TaskKind::Blocking(f)) => f(payload),
            Some(TaskKind::Async(f)) => crate::rt::block_on(f(payload.clone())),
            None => Err(unknown(&payload.name)),
        }
    }
}

pub(crate) fn unknown(name: &str) -> TaskError {
    TaskError::new(format!(
        "no task named {name:?} is registered in this process"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn payload(name: &str) -> TaskPayload {
        TaskPayload {
            id: 1,
            name: name.into(),
            data: Bytes::from_static(b"x"),
            attempt: 1,
        }
    }

    #[test]
    fn runs_blocking_and_async_tasks() {
        let r = Registry::new();
        r.register("ok", |p| {
            assert_eq!(&p.data[..], b"x");
            Ok(())
        });
        r.register_async("later", |_| {
            Box::pin(async {
                crate::rt::sleep(std::time::Duration::from_millis(1)).await;
                Err(TaskError::new("nope"))
            })
        });
        assert_eq!(r.names(), vec!["later", "ok"]);
        assert!(r.run_blocking(&payload("ok")).is_ok());
        assert_eq!(
            r.run_blocking(&payload("later")).unwrap_err().message,
            "nope"
        );
        assert!(r.run_blocking(&payload("missing")).is_err());
    }
}
