//! The running side: a consumer in the queue's group. It reads as many entries as it
//! has free slots (`--offload-workers`), runs them on the executor, and records the
//! outcomes in batches, one `MULTI` each: acknowledged and deleted, plus a retry in the
//! delayed set or an entry in the dead-letter stream per failed task. Beside the reads it keeps its claims alive
//! (`XCLAIM … JUSTID` of what it runs, so their idle time is the time since its last
//! heartbeat), takes over entries idle for `--redis-claim-after` (`XAUTOCLAIM`: their
//! consumer died), moves due delayed tasks into the stream, and forgets consumers that
//! are long gone. On a graceful stop it finishes what it runs until the deadline, then
//! gives back the rest (added again to the stream, acknowledged).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamInfoConsumersReply, StreamReadReply};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use super::conn::{create_group_async, Server};
use super::keys::{now_ms, Keys, Stored, GROUP, MOVE_DUE};
use crate::offload::config::OffloadConfig;
use crate::offload::counters::Counters;
use crate::offload::error::TaskError;
use crate::offload::exec::Executor;
use crate::offload::registry::Registry;
use crate::offload::task::TaskPayload;

/// How long one `XREADGROUP` blocks waiting for entries.
const BLOCK: Duration = Duration::from_millis(500);

/// How often due delayed tasks are moved into the stream.
const MOVE_EVERY: Duration = Duration::from_millis(100);

/// How long a task whose name this worker does not know waits before it is offered again.
const PARK_FOR: Duration = Duration::from_secs(5);

/// Entries moved from a delayed set per script call.
const MOVE_LIMIT: usize = 256;

/// Most entries one `XREADGROUP` asks for.
const READ_BATCH: usize = 256;

/// Most outcomes recorded in one `MULTI`.
const RECORD_BATCH: usize = 256;

/// After a read that found the stream drained, how long the reader waits before the
/// next one, so that the entries added meanwhile come in one read rather than one read
/// per submitter's pipeline. A task starts at most this much later; each read costs
/// Redis and the worker a round trip and a wake-up.
const GATHER: Duration = Duration::from_millis(2);

/// A finished task waiting for its outcome to be recorded. It keeps its slot until then.
struct Outcome {
    entry: String,
    stored: Stored,
    result: Result<(), TaskError>,
    _slot: OwnedSemaphorePermit,
}

pub struct Consumer {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Shared {
    server: Server,
    keys: Keys,
    /// This consumer's name in the group: host, pid, and a random part.
    name: String,
    cfg: OffloadConfig,
    registry: Registry,
    counters: Arc<Counters>,
    /// Runs the tasks; taken (and stopped) by the consumer's shutdown.
    exec: Mutex<Option<Executor>>,
    rt: tokio::runtime::Handle,
    cmd: ConnectionManager,
    /// One permit per task this consumer may hold at once.
    slots: Arc<Semaphore>,
    /// Entries this consumer holds (running, or waiting for their outcome to be
    /// recorded), by stream entry id.
    held: Mutex<HashMap<String, Stored>>,
    /// Finished tasks for the recorder. Unbounded because each outcome holds one of
    /// `slots`: at most `--offload-workers` wait here.
    outcomes: mpsc::UnboundedSender<Outcome>,
    stopping: AtomicBool,
    stop: Notify,
    /// Tasks that finished after the stop began.
    drained: AtomicU64,
    /// Whether the last command failed (to log a lost and a regained connection once).
    down: AtomicBool,
}

/// A unique consumer name: `host:pid:random`.
fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}:{}:{:08x}", std::process::id(), nanos)
}

impl Consumer {
    /// Starts the consumer's tasks on `rt` (the engine's runtime).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        rt: &tokio::runtime::Handle,
        server: Server,
        keys: Keys,
        cfg: &OffloadConfig,
        registry: Registry,
        counters: Arc<Counters>,
    ) -> Result<Consumer, crate::offload::error::OffloadError> {
        let exec = Executor::new(
            "redis-exec",
            cfg.workers,
            registry.clone(),
            counters.clone(),
        )?;
        let _enter = rt.enter();
        let cmd = server.manager(Duration::ZERO)?;
        let reader = server.manager(BLOCK + Duration::from_secs(1))?;
        let (outcomes, finished) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            server,
            keys,
            name: consumer_name(),
            cfg: cfg.clone(),
            registry,
            counters,
            exec: Mutex::new(Some(exec)),
            rt: rt.clone(),
            cmd,
            slots: Arc::new(Semaphore::new(cfg.workers)),
            held: Mutex::new(HashMap::new()),
            outcomes,
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            drained: AtomicU64::new(0),
            down: AtomicBool::new(false),
        });
        let tasks = vec![
            rt.spawn(shared.clone().read_loop(reader)),
            rt.spawn(shared.clone().upkeep_loop()),
        ];
        // Not among `tasks`: it records what finishes while the stop drains, and ends
        // with the runtime.
        rt.spawn(shared.clone().record_loop(finished));
        Ok(Consumer { shared, tasks })
    }

    /// Tasks held right now.
    pub fn held(&self) -> u64 {
        self.shared.lock_held().len() as u64
    }

    /// Stops reading, lets running tasks finish until `deadline`, gives back the rest.
    /// Returns (tasks finished meanwhile, tasks given back). Call from outside the
    /// runtime.
    pub fn shutdown(self, deadline: Instant) -> (u64, u64) {
        let s = self.shared.clone();
        s.stopping.store(true, Ordering::Release);
        s.stop.notify_waiters();
        let rt = s.rt.clone();
        let r = rt.block_on(async move {
            for t in self.tasks {
                let _ = t.await;
            }
            let all = s.cfg.workers as u32;
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, s.slots.acquire_many(all)).await;
            let released = s.release_held().await;
            s.forget_self().await;
            (s.drained.load(Ordering::Relaxed), released)
        });
        let exec = self
            .shared
            .exec
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(exec) = exec {
            exec.shutdown(Duration::from_millis(100));
        }
        r
    }
}

impl Shared {
    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stored>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Notes a command's success or failure, logging only the changes.
    fn health<T>(&self, what: &str, r: &redis::RedisResult<T>) {
        match r {
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    eprintln!(
                        "forklift: redis: {} answers again (consumer {})",
                        self.server.shown, self.name
                    );
                }
            }
            Err(e) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "forklift: redis: {what} failed: {}; retrying",
                        self.server.error(e.clone())
                    );
                }
            }
        }
    }

    /// Reads entries for its free slots; every half `--redis-claim-after` it first
    /// takes over abandoned entries with those slots.
    async fn read_loop(self: Arc<Self>, mut reader: ConnectionManager) {
        let mut pause = Duration::from_millis(50);
        let claim_every = (self.cfg.redis.claim_after / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(10));
        let mut claimed_at = Instant::now();
        let mut cursor = "0-0".to_string();
        loop {
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => p,
                _ = self.stop.notified() => break,
            };
            let Ok(first) = first else { break };
            if self.stopping() {
                break;
            }
            let mut permits = vec![first];
            while permits.len() < READ_BATCH {
                match self.slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            if claimed_at.elapsed() >= claim_every {
                claimed_at = Instant::now();
                cursor = self.clone().claim_abandoned(&mut permits, cursor).await;
                if permits.is_empty() {
                    continue;
                }
            }
            let r = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.name)
                .arg("COUNT")
                .arg(permits.len())
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.keys.stream)
                .arg(">")
                .query_async::<Option<StreamReadReply>>(&mut reader)
                .await;
            self.health("reading the stream", &r);
            match r {
                Ok(reply) => {
                    pause = Duration::from_millis(50);
                    let asked = permits.len();
                    let mut got = 0;
                    for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                        let Some(p) = permits.pop() else { break };
                        got += 1;
                        self.clone().dispatch(entry.id, &entry.map, p, false).await;
                    }
                    drop(permits);
                    if got > 0 && got < asked {
                        tokio::select! {
                            _ = tokio::time::sleep(GATHER) => {}
                            _ = self.stop.notified() => break,
                        }
                    }
                }
                Err(e) => {
                    drop(permits);
                    if e.code() == Some("NOGROUP") {
                        // The stream or group is gone (Redis lost its data): make them again.
                        let mut c = self.cmd.clone();
                        let _ = create_group_async(&mut c, &self.keys).await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.stop.notified() => break,
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Starts one delivered entry: runs it, dead-letters it when malformed, parks it
    /// when no task of that name is registered here.
    async fn dispatch(
        self: Arc<Self>,
        entry: String,
        fields: &HashMap<String, redis::Value>,
        permit: OwnedSemaphorePermit,
        redelivered: bool,
    ) {
        let stored = match Stored::from_fields(fields) {
            Ok(s) => s,
            Err(reason) => {
                self.dead_letter_malformed(&entry, fields, &reason).await;
                return;
            }
        };
        if !self.registry.contains(&stored.name) {
            self.park(&entry, &stored).await;
            return;
        }
        if redelivered {
            Counters::inc(&self.counters.redelivered);
        }
        self.lock_held().insert(entry.clone(), stored.clone());
        let p = TaskPayload {
            id: stored.id,
            name: stored.name.clone(),
            data: stored.payload.clone(),
            attempt: stored.attempt,
        };
        let exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        match exec.as_ref() {
            Some(exec) => {
                let outcomes = self.outcomes.clone();
                exec.spawn(p, Duration::ZERO, move |_, result| {
                    // The recorder runs as long as the runtime, which outlives the
                    // executor's tasks.
                    let _ = outcomes.send(Outcome {
                        entry,
                        stored,
                        result,
                        _slot: permit,
                    });
                })
            }
            // Stopped: the entry is given back by the stop, or claimed by another worker.
            None => drop(permit),
        }
    }

    /// Records outcomes as they come, each batch in one `MULTI`: the tasks that
    /// finished while the previous batch was being written share a round trip (one
    /// `XACK` and one `XDEL` for all of them). Retries while Redis is away (the entries
    /// stay held and heartbeated meanwhile, so nobody else runs them).
    async fn record_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Outcome>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while rx.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            self.record(&mut batch).await;
        }
    }

    /// Writes one batch of outcomes (the entries are acknowledged and deleted, plus a
    /// retry in the delayed set or a dead letter each), then lets go of them.
    async fn record(&self, batch: &mut Vec<Outcome>) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut ack = redis::cmd("XACK");
        ack.arg(&self.keys.stream).arg(GROUP);
        let mut del = redis::cmd("XDEL");
        del.arg(&self.keys.stream);
        for o in batch.iter() {
            ack.arg(&o.entry);
            del.arg(&o.entry);
        }
        pipe.add_command(ack).ignore();
        pipe.add_command(del).ignore();
        let (mut completed, mut retried, mut dead) = (0u64, 0u64, 0u64);
        for o in batch.iter() {
            match &o.result {
                Ok(()) => completed += 1,
                Err(e) if !e.permanent && o.stored.attempt <= self.cfg.retries => {
                    let again = Stored {
                        attempt: o.stored.attempt + 1,
                        error: e.message.clone(),
                        ..o.stored.clone()
                    };
                    let due = now_ms() + self.cfg.retry_delay(o.stored.attempt).as_millis() as u64;
                    pipe.cmd("ZADD")
                        .arg(&self.keys.delayed)
                        .arg(due)
                        .arg(again.encode())
                        .ignore();
                    retried += 1;
                }
                Err(e) => {
                    self.add_dead(&mut pipe, &o.stored, &e.message);
                    dead += 1;
                }
            }
        }
        for (field, n) in [
            ("completed", completed),
            ("retried", retried),
            ("dead", dead),
            ("failed", retried + dead),
        ] {
            if n > 0 {
                pipe.cmd("HINCRBY")
                    .arg(&self.keys.stats)
                    .arg(field)
                    .arg(n)
                    .ignore();
            }
        }
        let written = self.write(&pipe, "recording task outcomes").await;
        if written {
            for _ in 0..retried {
                Counters::inc(&self.counters.retried);
            }
            for _ in 0..dead {
                Counters::inc(&self.counters.dead);
            }
            if self.stopping() {
                self.drained
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            let mut held = self.lock_held();
            for o in batch.iter() {
                held.remove(&o.entry);
            }
        }
        // Dropping the outcomes frees their slots.
        batch.clear();
    }

    fn add_dead(&self, pipe: &mut redis::Pipeline, s: &Stored, error: &str) {
        pipe.cmd("XADD")
            .arg(&self.keys.dead)
            .arg("*")
            .arg("id")
            .arg(s.id)
            .arg("name")
            .arg(&s.name)
            .arg("payload")
            .arg(&s.payload[..])
            .arg("attempts")
            .arg(s.attempt)
            .arg("error")
            .arg(error)
            .arg("failed_at")
            .arg(now_ms())
            .ignore();
    }

    /// Sends an atomic pipeline until Redis takes it; false if the stop's deadline
    /// passed first (the entry stays pending and is claimed by another worker).
    async fn write(&self, pipe: &redis::Pipeline, what: &str) -> bool {
        let mut pause = Duration::from_millis(50);
        loop {
            let mut c = self.cmd.clone();
            let r = match tokio::time::timeout(self.server.timeout, pipe.exec_async(&mut c)).await {
                Ok(r) => r,
                Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))),
            };
            self.health(what, &r);
            if r.is_ok() {
                return true;
            }
            if self.stopping() && pause.as_secs() >= 1 {
                // Stopping with Redis away: leave it pending (another worker claims it)
                // rather than hang the stop.
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// A malformed entry goes to the dead letters with the reason (and whatever fields
    /// it had), and is acknowledged.
    async fn dead_letter_malformed(
        &self,
        entry: &str,
        fields: &HashMap<String, redis::Value>,
        reason: &str,
    ) {
        eprintln!(
            "forklift: redis: entry {entry} of {} is malformed ({reason}): dead-lettered",
            self.keys.stream
        );
        let get = |k: &str| match fields.get(k) {
            Some(redis::Value::BulkString(b)) => b.clone(),
            _ => Vec::new(),
        };
        let id = String::from_utf8(get("id"))
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let mut payload = get("payload");
        if payload.is_empty() {
            payload = get("malformed");
        }
        let s = Stored {
            id,
            name: String::from_utf8_lossy(&get("name")).into_owned(),
            payload: payload.into(),
            attempt: 0,
            error: String::new(),
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XACK")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(entry)
            .ignore();
        pipe.cmd("XDEL").arg(&self.keys.stream).arg(entry).ignore();
        self.add_dead(&mut pipe, &s, &format!("malformed entry: {reason}"));
        pipe.cmd("HINCRBY")
            .arg(&self.keys.stats)
            .arg("dead")
            .arg(1)
            .ignore();
        if self.write(&pipe, "dead-lettering a malformed entry").await {
            Counters::inc(&self.counters.dead);
        }
    }

    /// A task no task function here knows: set aside in the parked set, offered again
    /// after [`PARK_FOR`]; its name is noted for `forklift spool stats`.
    async fn park(&self, entry: &str, s: &Stored) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XACK")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(entry)
            .ignore();
        pipe.cmd("XDEL").arg(&self.keys.stream).arg(entry).ignore();
        pipe.cmd("ZADD")
            .arg(&self.keys.parked)
            .arg(now_ms() + PARK_FOR.as_millis() as u64)
            .arg(s.encode())
            .ignore();
        pipe.cmd("HSET")
            .arg(&self.keys.unknown)
            .arg(&s.name)
            .arg(now_ms())
            .ignore();
        self.write(&pipe, "parking a task of an unknown name").await;
    }

    /// Moving due tasks, heartbeats, forgetting consumers long gone.
    async fn upkeep_loop(self: Arc<Self>) {
        let claim_after = self.cfg.redis.claim_after;
        let beat_every =
            (claim_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
        let forget_every = Duration::from_secs(30);
        let (mut beat, mut forget) = (Instant::now(), Instant::now());
        let mover = redis::Script::new(MOVE_DUE);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(MOVE_EVERY) => {}
                _ = self.stop.notified() => {}
            }
            if self.stopping() {
                break;
            }
            let mut c = self.cmd.clone();
            for set in [&self.keys.delayed, &self.keys.parked] {
                loop {
                    let r = mover
                        .key(set)
                        .key(&self.keys.stream)
                        .arg(now_ms())
                        .arg(MOVE_LIMIT)
                        .invoke_async::<usize>(&mut c)
                        .await;
                    self.health("moving due tasks", &r);
                    if r.map_or(true, |n| n < MOVE_LIMIT) {
                        break;
                    }
                }
            }
            if beat.elapsed() >= beat_every {
                beat = Instant::now();
                self.heartbeat().await;
            }
            if forget.elapsed() >= forget_every {
                forget = Instant::now();
                self.forget_gone().await;
            }
        }
    }

    /// Resets the idle time of every entry this consumer holds.
    async fn heartbeat(&self) {
        let ids: Vec<String> = self.lock_held().keys().cloned().collect();
        for chunk in ids.chunks(256) {
            let mut c = self.cmd.clone();
            let r = redis::cmd("XCLAIM")
                .arg(&self.keys.stream)
                .arg(GROUP)
                .arg(&self.name)
                .arg(0)
                .arg(chunk)
                .arg("JUSTID")
                .query_async::<redis::Value>(&mut c)
                .await;
            self.health("heartbeat", &r);
        }
    }

    /// Takes over entries idle longer than `--redis-claim-after` (their consumer
    /// stopped heartbeating), as many as there are free slots. Returns the next cursor.
    /// Uses the permits it needs from `permits` (the reader's free slots).
    async fn claim_abandoned(
        self: Arc<Self>,
        permits: &mut Vec<OwnedSemaphorePermit>,
        cursor: String,
    ) -> String {
        let mut c = self.cmd.clone();
        let r = redis::cmd("XAUTOCLAIM")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(&self.name)
            .arg(self.cfg.redis.claim_after.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(permits.len())
            .query_async::<StreamAutoClaimReply>(&mut c)
            .await;
        self.health("claiming abandoned tasks", &r);
        let Ok(reply) = r else { return cursor };
        if !reply.claimed.is_empty() {
            let n = reply.claimed.len();
            let mut c = self.cmd.clone();
            let _ = redis::cmd("HINCRBY")
                .arg(&self.keys.stats)
                .arg("redelivered")
                .arg(n)
                .query_async::<i64>(&mut c)
                .await;
        }
        for entry in reply.claimed {
            let Some(p) = permits.pop() else { break };
            self.clone().dispatch(entry.id, &entry.map, p, true).await;
        }
        reply.next_stream_id
    }

    /// Removes consumers that hold nothing and were idle for a long time (workers that
    /// died and whose entries were claimed), so the group lists the living.
    async fn forget_gone(&self) {
        let mut c = self.cmd.clone();
        let r = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .query_async::<StreamInfoConsumersReply>(&mut c)
            .await;
        let Ok(info) = r else { return };
        let gone_after = (self.cfg.redis.claim_after * 4).max(Duration::from_secs(60));
        for con in info.consumers {
            if con.name != self.name
                && con.pending == 0
                && con.idle as u128 > gone_after.as_millis()
            {
                let _ = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.keys.stream)
                    .arg(GROUP)
                    .arg(&con.name)
                    .query_async::<i64>(&mut c)
                    .await;
            }
        }
    }

    /// Gives back every entry still held: added again to the stream (same id, same
    /// attempt) and acknowledged, in one `MULTI` each. Returns how many.
    async fn release_held(&self) -> u64 {
        let held: Vec<(String, Stored)> = self.lock_held().drain().collect();
        let mut released = 0;
        for (entry, s) in held {
            let mut pipe = redis::pipe();
            pipe.atomic();
            let cmd = pipe.cmd("XADD").arg(&self.keys.stream).arg("*");
            for (k, v) in s.fields() {
                cmd.arg(k).arg(v);
            }
            cmd.ignore();
            pipe.cmd("XACK")
                .arg(&self.keys.stream)
                .arg(GROUP)
                .arg(&entry)
                .ignore();
            pipe.cmd("XDEL").arg(&self.keys.stream).arg(&entry).ignore();
            let mut c = self.cmd.clone();
            if let Ok(Ok(())) =
                tokio::time::timeout(self.server.timeout, pipe.exec_async(&mut c)).await
            {
                released += 1;
            }
        }
        released
    }

    /// Leaves the group if nothing is pending on this consumer any more.
    async fn forget_self(&self) {
        let mut c = self.cmd.clone();
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.keys.stream)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&self.name);
        let pending = cmd.query_async::<Vec<redis::Value>>(&mut c);
        if let Ok(Ok(v)) = tokio::time::timeout(self.server.timeout, pending).await {
            if v.is_empty() {
                let _ = tokio::time::timeout(
                    self.server.timeout,
                    redis::cmd("XGROUP")
                        .arg("DELCONSUMER")
                        .arg(&self.keys.stream)
                        .arg(GROUP)
                        .arg(&self.name)
                        .query_async::<i64>(&mut c),
                )
                .await;
            }
        }
    }
}
