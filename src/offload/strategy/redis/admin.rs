//! `forklift spool … --redis-url`: a queue's counts (waiting, delayed, in flight per
//! consumer, unknown task names, dead, completed), its dead letters, and moving them
//! back to the stream or deleting them. Blocking commands; no runtime.

use std::collections::{BTreeMap, HashMap};

use redis::streams::{StreamInfoConsumersReply, StreamRangeReply};

use super::conn::Server;
use super::keys::{DeadEntry, Keys, Stored, GROUP};
use crate::offload::config::RedisConfig;
use crate::offload::error::RedisError;

/// A queue's state.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueStats {
    pub queue: String,
    /// In the stream, not yet delivered to a worker.
    pub waiting: u64,
    /// Waiting for their time (delays and retries' backoff).
    pub delayed: u64,
    /// Delivered to a worker and not finished, by consumer.
    pub in_flight: BTreeMap<String, u64>,
    /// Tasks no worker that read them knew, set aside and offered again.
    pub unknown: u64,
    /// The names of those tasks.
    pub unknown_names: Vec<String>,
    pub dead: u64,
    pub completed: u64,
    pub failed: u64,
    pub retried: u64,
    pub redelivered: u64,
}

impl QueueStats {
    /// Everything not finished: waiting, delayed, in flight, unknown.
    pub fn pending(&self) -> u64 {
        self.waiting + self.delayed + self.in_flight.values().sum::<u64>() + self.unknown
    }
}

/// A blocking view of one queue.
pub struct Admin {
    server: Server,
    keys: Keys,
    queue: String,
    conn: redis::Connection,
}

impl Admin {
    pub fn open(cfg: &RedisConfig) -> Result<Admin, RedisError> {
        let server = Server::from_config(cfg)?;
        let conn = server.blocking()?;
        Ok(Admin {
            keys: Keys::new(&cfg.prefix, &cfg.queue),
            queue: cfg.queue.clone(),
            server,
            conn,
        })
    }

    fn q<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        cmd.query(&mut self.conn).map_err(|e| self.server.error(e))
    }

    pub fn stats(&mut self) -> Result<QueueStats, RedisError> {
        let k = self.keys.clone();
        let len: u64 = self.q(redis::cmd("XLEN").arg(&k.stream))?;
        let delayed: u64 = self.q(redis::cmd("ZCARD").arg(&k.delayed))?;
        let unknown: u64 = self.q(redis::cmd("ZCARD").arg(&k.parked))?;
        let dead: u64 = self.q(redis::cmd("XLEN").arg(&k.dead))?;
        let counts: HashMap<String, u64> = self.q(redis::cmd("HGETALL").arg(&k.stats))?;
        let consumers = match self.q::<StreamInfoConsumersReply>(
            redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&k.stream)
                .arg(GROUP),
        ) {
            Ok(c) => c.consumers,
            // No stream or group yet: nothing in flight.
            Err(RedisError::Command { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let in_flight: BTreeMap<String, u64> = consumers
            .into_iter()
            .map(|c| (c.name, c.pending as u64))
            .collect();
        let held: u64 = in_flight.values().sum();
        let parked: Vec<Vec<u8>> = self.q(redis::cmd("ZRANGE").arg(&k.parked).arg(0).arg(999))?;
        let mut names: Vec<String> = parked
            .iter()
            .filter_map(|m| Stored::decode(m))
            .map(|s| s.name)
            .collect();
        names.sort();
        names.dedup();
        let c = |n: &str| counts.get(n).copied().unwrap_or(0);
        Ok(QueueStats {
            queue: self.queue.clone(),
            waiting: len.saturating_sub(held),
            delayed,
            in_flight,
            unknown,
            unknown_names: names,
            dead,
            completed: c("completed"),
            failed: c("failed"),
            retried: c("retried"),
            redelivered: c("redelivered"),
        })
    }

    /// Dead-lettered tasks, oldest first, at most `limit`.
    pub fn list_dead(&mut self, limit: usize) -> Result<Vec<DeadEntry>, RedisError> {
        let r: StreamRangeReply = self.q(redis::cmd("XRANGE")
            .arg(&self.keys.dead)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1)))?;
        Ok(r.ids.into_iter().map(dead_entry).collect())
    }

    /// Every dead entry, or those whose task id is in `ids`.
    fn select_dead(&mut self, ids: Option<&[u64]>) -> Result<Vec<(String, Stored)>, RedisError> {
        let mut out = Vec::new();
        let mut start = "-".to_string();
        loop {
            let r: StreamRangeReply = self.q(redis::cmd("XRANGE")
                .arg(&self.keys.dead)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(1000))?;
            let Some(last) = r.ids.last().map(|e| e.id.clone()) else {
                break;
            };
            for e in r.ids {
                let d = dead_entry(e.clone());
                if ids.is_none_or(|v| v.contains(&d.id)) {
                    let get = |k: &str| match e.map.get(k) {
                        Some(redis::Value::BulkString(b)) => b.clone(),
                        _ => Vec::new(),
                    };
                    out.push((
                        d.entry,
                        Stored {
                            id: d.id,
                            name: d.name,
                            payload: get("payload").into(),
                            attempt: 1,
                            error: String::new(),
                        },
                    ));
                }
            }
            start = format!("({last}");
        }
        Ok(out)
    }

    /// Moves dead tasks (all, or those with these task ids) back to the stream with
    /// their attempts reset. Returns how many.
    pub fn retry_dead(&mut self, ids: Option<&[u64]>) -> Result<u64, RedisError> {
        let chosen = self.select_dead(ids)?;
        let mut n = 0;
        for (entry, s) in chosen {
            let mut pipe = redis::pipe();
            pipe.atomic();
            let cmd = pipe.cmd("XADD").arg(&self.keys.stream).arg("*");
            for (k, v) in s.fields() {
                cmd.arg(k).arg(v);
            }
            cmd.ignore();
            pipe.cmd("XDEL").arg(&self.keys.dead).arg(&entry).ignore();
            pipe.query::<()>(&mut self.conn)
                .map_err(|e| self.server.error(e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Deletes dead tasks (all, or those with these task ids). Returns how many.
    pub fn purge_dead(&mut self, ids: Option<&[u64]>) -> Result<u64, RedisError> {
        let chosen = self.select_dead(ids)?;
        let mut n = 0;
        for chunk in chosen.chunks(500) {
            let entries: Vec<&String> = chunk.iter().map(|(e, _)| e).collect();
            n += self.q::<u64>(redis::cmd("XDEL").arg(&self.keys.dead).arg(entries))?;
        }
        Ok(n)
    }
}

fn dead_entry(e: redis::streams::StreamId) -> DeadEntry {
    let text = |k: &str| match e.map.get(k) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    let payload_len = match e.map.get("payload") {
        Some(redis::Value::BulkString(b)) => b.len(),
        _ => 0,
    };
    DeadEntry {
        id: text("id").parse().unwrap_or(0),
        name: text("name"),
        payload_len,
        attempts: text("attempts").parse().unwrap_or(0),
        error: text("error"),
        failed_at_ms: text("failed_at").parse().unwrap_or(0),
        entry: e.id,
    }
}
