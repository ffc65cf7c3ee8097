//! The task types: what a handler submits and what a task function receives.
//!
//! [`Task`] as a handler submits it, [`TaskPayload`] as a task function receives it, the
//! limits every strategy enforces, and [`DrainReport`].

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use super::error::{SubmitError, TaskError};

/// The largest payload a task may carry (the `loop` strategy sends a task as one
/// datagram-like message, and every strategy keeps the same limit so a handler behaves
/// the same under each).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The longest name a task may have.
pub const MAX_NAME: usize = 255;

/// The longest delay accepted (a day): a typo must not park a task for years.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// Identifies a submitted task: the spool's row id for `spool`, a per-process sequence
/// number otherwise.
pub type TaskId = u64;

/// A unit of slow work, as a handler submits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The registered task name.
    pub name: String,
    pub payload: Bytes,
    /// Run no earlier than this long after submission (like asyncio's `call_later`).
    pub delay: Duration,
}

impl Task {
    pub fn new(name: impl Into<String>, payload: impl Into<Bytes>) -> Task {
        Task {
            name: name.into(),
            payload: payload.into(),
            delay: Duration::ZERO,
        }
    }

    /// A task whose payload is `value` as JSON.
    pub fn json<T: serde::Serialize>(
        name: impl Into<String>,
        value: &T,
    ) -> Result<Task, SubmitError> {
        let bytes = serde_json::to_vec(value).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        Ok(Task::new(name, bytes))
    }

    /// Runs the task no earlier than `delay` from now.
    pub fn after(mut self, delay: Duration) -> Task {
        self.delay = delay;
        self
    }

    pub(super) fn validate(&self) -> Result<(), SubmitError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME {
            return Err(SubmitError::Invalid(format!(
                "task name must be 1..={MAX_NAME} bytes"
            )));
        }
        if self.payload.len() > MAX_PAYLOAD {
            return Err(SubmitError::TooLarge {
                len: self.payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        if self.delay > MAX_DELAY {
            return Err(SubmitError::Invalid(format!(
                "delay {:?} exceeds the maximum of {:?}",
                self.delay, MAX_DELAY
            )));
        }
        Ok(())
    }
}

/// What a task function receives.
#[derive(Debug, Clone)]
pub struct TaskPayload {
    pub id: TaskId,
    pub name: String,
    pub data: Bytes,
    /// 1 on the first run, 2 on the first retry, ...
    pub attempt: u32,
}

impl TaskPayload {
    /// A task's first run.
    pub fn first(id: TaskId, name: String, data: Bytes) -> TaskPayload {
        TaskPayload {
            id,
            name,
            data,
            attempt: 1,
        }
    }

    /// The payload parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, TaskError> {
        serde_json::from_slice(&self.data)
            .map_err(|e| TaskError::permanent(format!("bad JSON payload: {e}")))
    }
}

/// What graceful shutdown achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrainReport {
    /// Tasks that finished while draining.
    pub drained: u64,
    /// Non-durable tasks abandoned when the drain timeout ran out.
    pub dropped: u64,
    /// Durable tasks left in the spool, resumed on the next start.
    pub left_in_spool: u64,
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "offload drained {} task(s), dropped {}, {} left in the spool",
            self.drained, self.dropped, self.left_in_spool
        )
    }
}
