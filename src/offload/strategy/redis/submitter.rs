//! The submitting side: one task per process on the engine's runtime takes the
//! submissions queued since its last round trip (up to [`MAX_BATCH`]) and sends them
//! as one pipeline of `XADD`s (`ZADD`s for delayed tasks), with several pipelines in
//! flight at once; each submitter is answered when Redis acknowledged its command. Task
//! ids come from a block reserved with one `INCRBY` per [`ID_BLOCK`] tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, Semaphore};

use super::conn::Server;
use super::keys::{now_ms, Keys, Stored, ID_BLOCK};
use crate::offload::error::{RedisError, SubmitError};
use crate::offload::intake::{Ack, Batcher};
use crate::offload::task::{Task, TaskId};

/// Most submissions in one pipeline.
pub const MAX_BATCH: usize = 1024;

/// Pipelines in flight at once (with pipelining on).
const IN_FLIGHT: usize = 8;

/// A task waiting to be sent, and who waits for the answer.
pub struct Submission {
    pub task: Task,
    pub ack: Ack,
}

pub struct Submitter {
    pub server: Server,
    pub keys: Keys,
    pub conn: ConnectionManager,
    /// Share round trips between concurrent submissions (off: one per round trip).
    pub pipeline: bool,
    /// Tasks in the stream and the delayed set, as of the last round trip.
    pub backlog: Arc<AtomicU64>,
    /// Takes the queued submissions in batches (and keeps the engine's queue depth).
    pub batcher: Batcher,
}

/// The unused rest of this process's block of task ids.
#[derive(Default)]
struct Ids {
    next: u64,
    end: u64,
}

impl Submitter {
    /// Runs until every sender is gone and every pipeline answered.
    pub async fn run(self, mut rx: mpsc::Receiver<Submission>) {
        let slots = Arc::new(Semaphore::new(if self.pipeline { IN_FLIGHT } else { 1 }));
        let mut ids = Ids::default();
        let max = if self.pipeline { MAX_BATCH } else { 1 };
        while let Some(first) = rx.recv().await {
            // Wait for a free pipeline first, so what arrives meanwhile joins this one.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let batch = self.batcher.take(first, &mut rx, max);
            if ids.end - ids.next < batch.len() as u64 {
                match self.reserve_ids().await {
                    Ok(block) => ids = block,
                    Err(e) => {
                        for s in batch {
                            let _ = s.ack.send(Err(SubmitError::Redis(e.clone())));
                        }
                        continue;
                    }
                }
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            let now = now_ms();
            let mut acks = Vec::with_capacity(batch.len());
            for s in batch {
                let id = ids.next;
                ids.next += 1;
                let stored = Stored {
                    id,
                    name: s.task.name,
                    payload: s.task.payload,
                    attempt: 1,
                    error: String::new(),
                };
                if s.task.delay.is_zero() {
                    let cmd = pipe.cmd("XADD").arg(&self.keys.stream).arg("*");
                    for (k, v) in stored.fields() {
                        cmd.arg(k).arg(v);
                    }
                } else {
                    pipe.cmd("ZADD")
                        .arg(&self.keys.delayed)
                        .arg(now + s.task.delay.as_millis() as u64)
                        .arg(stored.encode());
                }
                acks.push((id, s.ack));
            }
            pipe.cmd("XLEN").arg(&self.keys.stream);
            pipe.cmd("ZCARD").arg(&self.keys.delayed);
            let mut conn = self.conn.clone();
            let server = self.server.clone();
            let backlog = self.backlog.clone();
            tokio::spawn(async move {
                let r = tokio::time::timeout(
                    server.timeout,
                    pipe.query_async::<Vec<redis::Value>>(&mut conn),
                )
                .await;
                answer(&server, r, acks, &backlog);
                drop(permit);
            });
        }
        // Every sender is gone: wait for the pipelines still in flight.
        let _ = slots.acquire_many(slots_total(self.pipeline)).await;
    }

    async fn reserve_ids(&self) -> Result<Ids, RedisError> {
        let mut conn = self.conn.clone();
        let r = tokio::time::timeout(
            self.server.timeout,
            redis::cmd("INCRBY")
                .arg(&self.keys.ids)
                .arg(ID_BLOCK)
                .query_async::<u64>(&mut conn),
        )
        .await;
        match r {
            Ok(Ok(end)) => Ok(Ids {
                next: end + 1 - ID_BLOCK,
                end: end + 1,
            }),
            Ok(Err(e)) => Err(self.server.error(e)),
            Err(_) => Err(RedisError::Timeout {
                url: self.server.shown.clone(),
                timeout: self.server.timeout,
            }),
        }
    }
}

fn slots_total(pipeline: bool) -> u32 {
    if pipeline {
        IN_FLIGHT as u32
    } else {
        1
    }
}

type Acks = Vec<(TaskId, Ack)>;

/// Answers each submitter of a pipeline: its id once Redis acknowledged its command,
/// else the error.
fn answer(
    server: &Server,
    r: Result<redis::RedisResult<Vec<redis::Value>>, tokio::time::error::Elapsed>,
    acks: Acks,
    backlog: &AtomicU64,
) {
    let values = match r {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            let e = server.error(e);
            for (_, ack) in acks {
                let _ = ack.send(Err(SubmitError::Redis(e.clone())));
            }
            return;
        }
        Err(_) => {
            let e = RedisError::Timeout {
                url: server.shown.clone(),
                timeout: server.timeout,
            };
            for (_, ack) in acks {
                let _ = ack.send(Err(SubmitError::Redis(e.clone())));
            }
            return;
        }
    };
    let count = |v: Option<&redis::Value>| match v {
        Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let n = acks.len();
    backlog.store(
        count(values.get(n)) + count(values.get(n + 1)),
        Ordering::Relaxed,
    );
    for (i, (id, ack)) in acks.into_iter().enumerate() {
        let r = match values.get(i) {
            Some(redis::Value::ServerError(e)) => Err(SubmitError::Redis(RedisError::Command {
                url: server.shown.clone(),
                message: format!("{e:?}"),
            })),
            Some(_) => Ok(id),
            None => Err(SubmitError::Redis(RedisError::Command {
                url: server.shown.clone(),
                message: "missing reply in pipeline".into(),
            })),
        };
        let _ = ack.send(r);
    }
}
