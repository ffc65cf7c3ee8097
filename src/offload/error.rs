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
    #[error("{0}")]
    Redis(#[from] RedisError),
}

impl SubmitError {
    /// True for the bounded-queue rejection.
    pub fn is_full(&self) -> bool {
        matches!(self, SubmitError::Full { .. })
    }

    /// True when the same submission may succeed later: the queue is full, or the
    /// backend (the `loop` worker, Redis) is unreachable or shutting down. An HTTP
    /// handler answers these with 503 and `Retry-After`.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            SubmitError::Full { .. }
                | SubmitError::Unavailable(_)
                | SubmitError::ShuttingDown
                | SubmitError::Redis(_)
        )
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
    #[error("{0}")]
    Redis(#[from] RedisError),
}

/// Errors of the `redis` strategy. `url` is the server's URL with any password hidden.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    #[error("bad --redis-url {url}: {message} (expected redis://[user:pass@]host:port/db, rediss://… or a Unix socket path)")]
    BadUrl { url: String, message: String },
    #[error("cannot reach Redis at {url}: {message} (start it, fix --redis-url, or give --redis-wait SECONDS to wait for it)")]
    Unreachable { url: String, message: String },
    #[error("Redis at {url}: {message}")]
    Command { url: String, message: String },
    #[error("Redis at {url} did not answer within {timeout:?}")]
    Timeout {
        url: String,
        timeout: std::time::Duration,
    },
    #[error("the Redis client of this process stopped")]
    Stopped,
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
