//! The offload engine's error types.
//!
//! A task's failure ([`TaskError`]), a rejected submission ([`SubmitError`]), a failure
//! to start ([`OffloadError`]) and the spool's ([`SpoolError`]).

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A task's failure. `permanent` failures are not retried (the spool dead-letters them
/// at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub message: String,
    pub permanent: bool,
}

impl TaskError {
    /// A failure worth retrying (a backend was down).
    pub fn new(message: impl Into<String>) -> TaskError {
        TaskError {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure that retrying cannot fix (a malformed payload).
    pub fn permanent(message: impl Into<String>) -> TaskError {
        TaskError {
            message: message.into(),
            permanent: true,
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

impl From<io::Error> for TaskError {
    fn from(e: io::Error) -> TaskError {
        TaskError::new(e.to_string())
    }
}

/// Why a submission was not accepted. [`SubmitError::Full`] is the ordinary "queue
/// full" rejection: the caller decides (answer 503, run inline, or try again).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("offload queue full ({capacity} tasks)")]
    Full { capacity: usize },
    #[error("unknown task {0:?}: register it in every process before submitting")]
    UnknownTask(String),
    #[error("task payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("invalid task: {0}")]
    Invalid(String),
    #[error("offload engine is shutting down")]
    ShuttingDown,
    #[error("offload worker unavailable: {0}")]
    Unavailable(io::Error),
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
}

impl SubmitError {
    /// True for the bounded-queue rejection.
    pub fn is_full(&self) -> bool {
        matches!(self, SubmitError::Full { .. })
    }
}

/// Errors starting or configuring the engine.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error("invalid offload configuration: {0}")]
    Config(String),
    #[error("offload I/O: {0}")]
    Io(#[from] io::Error),
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
}

/// Spool errors.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot create spool directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("spool database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("spool writer stopped")]
    WriterGone,
}
