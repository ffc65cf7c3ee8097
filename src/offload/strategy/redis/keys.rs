//! What the `redis` strategy stores: key names, the fields of a stream entry, the
//! encoding of a delayed task in a sorted set, and the Lua script that moves due tasks
//! into the stream.
//!
//! Per queue `Q` under prefix `P` (the braces keep a queue's keys in one cluster slot):
//! - `P:{Q}:stream`: tasks ready to run; the consumer group `workers` reads it. An
//!   entry's fields: `id`, `name`, `payload`, and on a retry `attempt` and `error`.
//! - `P:{Q}:delayed`: a sorted set of tasks waiting for their time (delays, retries'
//!   backoff), scored by due time in Unix milliseconds.
//! - `P:{Q}:parked`: tasks whose name no worker that read them knew, offered again
//!   every few seconds (a worker that knows them may have started since).
//! - `P:{Q}:dead`: a stream of dead-lettered tasks (`id`, `name`, `payload`,
//!   `attempts`, `error`, `failed_at`).
//! - `P:{Q}:stats`: a hash of counts (`completed`, `failed`, `retried`, `dead`,
//!   `redelivered`).
//! - `P:{Q}:unknown`: a hash, task name → when a worker last parked it (ms).
//! - `P:ids`: the task id sequence, reserved in blocks by each submitting process.

use std::collections::HashMap;

use bytes::Bytes;

/// The consumer group every worker of a queue joins.
pub const GROUP: &str = "workers";

/// Task ids reserved at once by a submitting process.
pub const ID_BLOCK: u64 = 65_536;

/// The keys of one queue.
#[derive(Debug, Clone)]
pub struct Keys {
    pub stream: String,
    pub delayed: String,
    pub parked: String,
    pub dead: String,
    pub stats: String,
    pub unknown: String,
    pub ids: String,
}

impl Keys {
    pub fn new(prefix: &str, queue: &str) -> Keys {
        let q = |what: &str| format!("{prefix}:{{{queue}}}:{what}");
        Keys {
            stream: q("stream"),
            delayed: q("delayed"),
            parked: q("parked"),
            dead: q("dead"),
            stats: q("stats"),
            unknown: q("unknown"),
            ids: format!("{prefix}:ids"),
        }
    }
}

/// A task as stored: in a stream entry, or encoded in a sorted set member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: u64,
    pub name: String,
    pub payload: Bytes,
    /// 1 for the first run.
    pub attempt: u32,
    /// The previous attempt's error (retries).
    pub error: String,
}

impl Stored {
    /// The sorted-set member: `ID ATTEMPT NAMELEN ERRLEN\n` then name, error, payload.
    /// The id makes every member unique; [`MOVE_DUE`] decodes it in Lua.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = format!(
            "{} {} {} {}\n",
            self.id,
            self.attempt,
            self.name.len(),
            self.error.len()
        )
        .into_bytes();
        m.extend_from_slice(self.name.as_bytes());
        m.extend_from_slice(self.error.as_bytes());
        m.extend_from_slice(&self.payload);
        m
    }

    /// Decodes [`Stored::encode`]'s member; `None` if it is not one.
    pub fn decode(m: &[u8]) -> Option<Stored> {
        let nl = m.iter().position(|&b| b == b'\n')?;
        let head = std::str::from_utf8(&m[..nl]).ok()?;
        let mut it = head.split(' ').map(|f| f.parse::<u64>().ok());
        let (id, attempt, nlen, elen) = (it.next()??, it.next()??, it.next()??, it.next()??);
        let rest = &m[nl + 1..];
        let (nlen, elen) = (nlen as usize, elen as usize);
        if rest.len() < nlen + elen {
            return None;
        }
        Some(Stored {
            id,
            name: String::from_utf8(rest[..nlen].to_vec()).ok()?,
            error: String::from_utf8_lossy(&rest[nlen..nlen + elen]).into_owned(),
            payload: Bytes::copy_from_slice(&rest[nlen + elen..]),
            attempt: u32::try_from(attempt).ok()?,
        })
    }

    /// The stream entry's fields, in `XADD` order.
    pub fn fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut f = vec![
            ("id", self.id.to_string().into_bytes()),
            ("name", self.name.clone().into_bytes()),
            ("payload", self.payload.to_vec()),
        ];
        if self.attempt > 1 {
            f.push(("attempt", self.attempt.to_string().into_bytes()));
        }
        if !self.error.is_empty() {
            f.push(("error", self.error.clone().into_bytes()));
        }
        f
    }

    /// Reads a stream entry's fields; the error says what is wrong with a malformed one.
    pub fn from_fields(map: &HashMap<String, redis::Value>) -> Result<Stored, String> {
        let bytes = |k: &str| -> Option<Vec<u8>> {
            match map.get(k)? {
                redis::Value::BulkString(b) => Some(b.clone()),
                redis::Value::SimpleString(s) => Some(s.clone().into_bytes()),
                redis::Value::Int(i) => Some(i.to_string().into_bytes()),
                _ => None,
            }
        };
        let text = |k: &str| bytes(k).and_then(|b| String::from_utf8(b).ok());
        if let Some(m) = bytes("malformed") {
            return Err(format!(
                "a delayed task could not be decoded ({} bytes)",
                m.len()
            ));
        }
        let id = text("id")
            .ok_or("field `id` is missing")?
            .parse::<u64>()
            .map_err(|_| "field `id` is not a number")?;
        let name = text("name").ok_or("field `name` is missing or not UTF-8")?;
        if name.is_empty() || name.len() > crate::offload::task::MAX_NAME {
            return Err(format!("task name of {} bytes", name.len()));
        }
        let payload = bytes("payload").ok_or("field `payload` is missing")?;
        if payload.len() > crate::offload::task::MAX_PAYLOAD {
            return Err(format!(
                "payload of {} bytes is over the limit",
                payload.len()
            ));
        }
        let attempt = match text("attempt") {
            None => 1,
            Some(a) => a
                .parse::<u32>()
                .ok()
                .filter(|&a| a >= 1)
                .ok_or("field `attempt` is not a positive number")?,
        };
        Ok(Stored {
            id,
            name,
            payload: payload.into(),
            attempt,
            error: text("error").unwrap_or_default(),
        })
    }
}

/// A dead-lettered task, as `forklift spool dead` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadEntry {
    /// The dead-letter stream's entry id (what `retry`/`purge` act on, with `id`).
    pub entry: String,
    pub id: u64,
    pub name: String,
    pub payload_len: usize,
    pub attempts: u32,
    pub error: String,
    pub failed_at_ms: u64,
}

/// Moves due tasks from a sorted set (KEYS[1]) into the stream (KEYS[2]), atomically,
/// at most ARGV[2] of them due at ARGV[1] (ms); returns how many it moved. A member it
/// cannot decode is added as a `malformed` entry, which a worker dead-letters with the
/// reason.
pub const MOVE_DUE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  local nl = string.find(m, '\n', 1, true)
  local id, attempt, nlen, elen
  if nl then
    id, attempt, nlen, elen = string.match(string.sub(m, 1, nl - 1), '^(%d+) (%d+) (%d+) (%d+)$')
  end
  if id and #m >= nl + tonumber(nlen) + tonumber(elen) then
    nlen = tonumber(nlen)
    elen = tonumber(elen)
    local p = nl + 1
    local name = string.sub(m, p, p + nlen - 1)
    p = p + nlen
    local err = string.sub(m, p, p + elen - 1)
    p = p + elen
    local payload = string.sub(m, p)
    if elen > 0 then
      redis.call('XADD', KEYS[2], '*', 'id', id, 'name', name, 'payload', payload, 'attempt', attempt, 'error', err)
    elseif tonumber(attempt) > 1 then
      redis.call('XADD', KEYS[2], '*', 'id', id, 'name', name, 'payload', payload, 'attempt', attempt)
    else
      redis.call('XADD', KEYS[2], '*', 'id', id, 'name', name, 'payload', payload)
    end
  else
    redis.call('XADD', KEYS[2], '*', 'malformed', m)
  end
  redis.call('ZREM', KEYS[1], m)
end
return #due
"#;

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_and_bad_ones_are_refused() {
        let s = Stored {
            id: 42,
            name: "send mail".into(),
            payload: Bytes::from_static(b"\n\x00 12 3\n"),
            attempt: 3,
            error: "backend down".into(),
        };
        assert_eq!(Stored::decode(&s.encode()), Some(s.clone()));
        assert_eq!(Stored::decode(b"1 1 5 0\nabc"), None);
        assert_eq!(Stored::decode(b"garbage"), None);
        let k = Keys::new("fl", "mail");
        assert_eq!(k.stream, "fl:{mail}:stream");
        assert_eq!(k.ids, "fl:ids");
    }

    #[test]
    fn stream_fields_are_checked() {
        let s = Stored {
            id: 7,
            name: "t".into(),
            payload: Bytes::from_static(b"p"),
            attempt: 2,
            error: "e".into(),
        };
        let map: HashMap<String, redis::Value> = s
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), redis::Value::BulkString(v)))
            .collect();
        assert_eq!(Stored::from_fields(&map).unwrap(), s);
        let mut bad = map.clone();
        bad.remove("name");
        assert!(Stored::from_fields(&bad).unwrap_err().contains("name"));
        bad = map;
        bad.insert("id".into(), redis::Value::BulkString(b"x".to_vec()));
        assert!(Stored::from_fields(&bad).unwrap_err().contains("id"));
    }
}
