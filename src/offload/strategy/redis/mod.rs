//! `redis`: durable tasks on Redis Streams, run by any process of any host in the
//! queue's consumer group. `submit` returns once Redis acknowledged the `XADD` (or the
//! `ZADD` of a delayed task); concurrent submissions share round trips (a pipeline per
//! batch). Workers (`forklift worker`, and serving processes unless `--no-run-tasks`)
//! read with `XREADGROUP`, record batches of outcomes (`XACK` + `XDEL` in a `MULTI`, with a
//! retry in the delayed set, or a dead letter), heartbeat what they hold and claim what
//! dead consumers held (`XAUTOCLAIM`). Same names, payloads, retries with backoff,
//! delays and dead letters as the spool. See docs/OFFLOAD.md.
//!
//! # Files
//! - this file: [`RedisEngine`], the strategy: a runtime per process, the submitter,
//!   the consumer, draining.
//! - `keys`: key names, entry fields, the delayed-task encoding, the mover script.
//! - `conn`: URLs, the start-up check, reconnecting connections, errors.
//! - `submitter`: batching submissions into pipelines.
//! - `consumer`: reading, running, recording outcomes, heartbeats, claims.
//! - `admin`: the blocking queries of `forklift spool --redis-url`.
//!
//! Dependencies go one way: this file → consumer, submitter, admin → conn → keys.

mod admin;
mod conn;
mod consumer;
mod keys;
mod submitter;

pub use admin::{Admin, QueueStats};
pub use conn::redact as redact_url;
pub use keys::DeadEntry;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::app::BoxFuture;
use crate::offload::config::OffloadConfig;
use crate::offload::counters::Counters;
use crate::offload::engine::Engine;
use crate::offload::error::{OffloadError, RedisError, SubmitError};
use crate::offload::intake::Intake;
use crate::offload::registry::Registry;
use crate::offload::task::{DrainReport, Task, TaskId};
use crate::rt::fork::ForkLocal;
use conn::Server;
use consumer::Consumer;
use keys::Keys;
use submitter::{Submission, Submitter};

/// Per-process state, made on first use in each process (a forked worker makes its own).
#[derive(Default)]
struct Local {
    rt: Option<Arc<tokio::runtime::Runtime>>,
    submitter: Option<(mpsc::Sender<Submission>, tokio::task::JoinHandle<()>)>,
    consumer: Option<Consumer>,
}

/// The `redis` strategy's engine.
pub struct RedisEngine {
    cfg: OffloadConfig,
    registry: Registry,
    counters: Arc<Counters>,
    server: Server,
    keys: Keys,
    local: ForkLocal<Mutex<Local>>,
    /// Submissions queued for the submitter: the bound, the depth, refusing once stopping.
    intake: Intake,
    /// Tasks in the stream and the delayed set at the last submission's round trip.
    backlog: Arc<AtomicU64>,
}

impl RedisEngine {
    /// Checks that Redis answers (waiting `--redis-wait` for it) and that the queue's
    /// group exists. Starts no thread.
    pub fn new(
        cfg: &OffloadConfig,
        registry: Registry,
        counters: Arc<Counters>,
    ) -> Result<RedisEngine, OffloadError> {
        let server = Server::from_config(&cfg.redis)?;
        let keys = Keys::new(&cfg.redis.prefix, &cfg.redis.queue);
        server.check(&keys, cfg.redis.wait)?;
        Ok(RedisEngine {
            cfg: cfg.clone(),
            registry,
            counters,
            server,
            keys,
            local: ForkLocal::new(),
            intake: Intake::new(cfg.queue, || SubmitError::Redis(RedisError::Stopped)),
            backlog: Arc::new(AtomicU64::new(0)),
        })
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.local().lock().unwrap_or_else(|p| p.into_inner())
    }

    fn runtime(&self, g: &mut Local) -> Result<Arc<tokio::runtime::Runtime>, std::io::Error> {
        if let Some(rt) = &g.rt {
            return Ok(rt.clone());
        }
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(4)
                .thread_name("redis-io")
                .enable_all()
                .build()?,
        );
        g.rt = Some(rt.clone());
        Ok(rt)
    }

    fn sender(&self) -> Result<mpsc::Sender<Submission>, SubmitError> {
        let mut g = self.local();
        if let Some((tx, _)) = &g.submitter {
            return Ok(tx.clone());
        }
        let rt = self.runtime(&mut g).map_err(SubmitError::Unavailable)?;
        let conn = {
            let _enter = rt.enter();
            self.server.manager(Duration::ZERO)?
        };
        let (tx, rx) = mpsc::channel(self.intake.capacity());
        let submitter = Submitter {
            server: self.server.clone(),
            keys: self.keys.clone(),
            conn,
            pipeline: self.cfg.redis.pipeline,
            backlog: self.backlog.clone(),
            batcher: self.intake.batcher(),
        };
        let join = rt.spawn(submitter.run(rx));
        g.submitter = Some((tx.clone(), join));
        Ok(tx)
    }

    /// Starts this process's consumer (idempotent; only with `run_tasks`).
    fn start_consumer(&self) -> Result<(), OffloadError> {
        if !self.cfg.redis.run_tasks {
            return Ok(());
        }
        let mut g = self.local();
        if g.consumer.is_some() {
            return Ok(());
        }
        let rt = self.runtime(&mut g)?;
        let consumer = Consumer::start(
            rt.handle(),
            self.server.clone(),
            self.keys.clone(),
            &self.cfg,
            self.registry.clone(),
            self.counters.clone(),
        )?;
        g.consumer = Some(consumer);
        Ok(())
    }
}

impl Engine for RedisEngine {
    fn submit(&self, task: Task) -> Result<TaskId, SubmitError> {
        crate::rt::block_on(self.submit_async(task))
    }

    fn submit_async(&self, task: Task) -> BoxFuture<Result<TaskId, SubmitError>> {
        let queued = (|| {
            self.intake.ensure_open()?;
            if self.backlog.load(Ordering::Relaxed) >= self.cfg.spool_max {
                return Err(SubmitError::Full {
                    capacity: self.cfg.spool_max as usize,
                });
            }
            let tx = self.sender()?;
            self.intake.offer(&tx, |ack| Submission { task, ack })
        })();
        self.intake.wait(queued)
    }

    /// Starts the submitter and, unless `--no-run-tasks`, the consumer. A pre-fork
    /// master starts nothing (`start_in_master` is a no-op): its workers consume.
    fn start(&self) -> Result<(), OffloadError> {
        self.start_consumer()?;
        self.sender().map(drop).map_err(|e| match e {
            SubmitError::Redis(r) => OffloadError::Redis(r),
            other => OffloadError::Io(std::io::Error::other(other.to_string())),
        })
    }

    fn shutdown(&self, timeout: Duration) -> DrainReport {
        self.intake.close();
        let deadline = Instant::now() + timeout;
        let (rt, submitter, consumer) = {
            let mut g = self.local();
            (g.rt.take(), g.submitter.take(), g.consumer.take())
        };
        let mut report = DrainReport::default();
        let Some(rt) = rt else { return report };
        if let Some((tx, join)) = submitter {
            // Every submission already queued is sent and answered.
            drop(tx);
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = rt.block_on(async { tokio::time::timeout(left, join).await });
        }
        if let Some(c) = consumer {
            let (drained, released) = c.shutdown(deadline);
            report.drained = drained;
            report.left_in_spool = released;
        }
        if let Ok(rt) = Arc::try_unwrap(rt) {
            rt.shutdown_timeout(Duration::from_millis(100));
        }
        report
    }

    fn queue_depth(&self) -> u64 {
        let held = self.local().consumer.as_ref().map_or(0, |c| c.held());
        self.intake.depth() + held
    }
}
