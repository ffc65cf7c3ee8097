//! The interface every strategy implements.
//!
//! [`super::Offload`] holds one engine and forwards its calls to it.

use std::time::Duration;

use super::counters::CounterSnapshot;
use super::error::{OffloadError, SubmitError};
use super::task::{DrainReport, Task, TaskId};
use crate::app::BoxFuture;

/// One strategy's implementation.
pub(crate) trait Engine: Send + Sync {
    fn submit(&self, task: Task) -> Result<TaskId, SubmitError>;

    /// Like `submit`, for callers on an event loop: the future resolves when the task
    /// is accepted (for `spool`, once it is on disk).
    fn submit_async(&self, task: Task) -> BoxFuture<Result<TaskId, SubmitError>> {
        let r = self.submit(task);
        Box::pin(async move { r })
    }

    /// Starts this process's executors now rather than on first use.
    fn start(&self) -> Result<(), OffloadError> {
        Ok(())
    }

    fn start_in_master(&self) -> Result<(), OffloadError> {
        Ok(())
    }

    fn after_fork_in_worker(&self) {}

    fn maintain_in_master(&self) -> Result<bool, OffloadError> {
        Ok(false)
    }

    fn host_pid(&self) -> Option<u32> {
        None
    }

    fn executor_counters(&self) -> Option<CounterSnapshot> {
        None
    }

    fn shutdown(&self, timeout: Duration) -> DrainReport;

    fn queue_depth(&self) -> u64;
}
