//! Connecting to Redis: the `--redis-url` forms, the start-up check (with
//! `--redis-wait`), the reconnecting connections the engine uses, and turning the
//! client's errors into [`RedisError`]s that name the server (never its password).

use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::keys::{Keys, GROUP};
use crate::offload::config::RedisConfig;
use crate::offload::error::RedisError;

/// A Redis server as the engine reaches it.
#[derive(Clone)]
pub struct Server {
    client: redis::Client,
    /// The URL with any password replaced by `***`, for messages.
    pub shown: String,
    pub timeout: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `url` with the password (if any) hidden.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

impl Server {
    /// Parses `--redis-url` (a bare path is a Unix socket). Opens nothing.
    pub fn new(url: &str, timeout: Duration) -> Result<Server, RedisError> {
        let full = if url.starts_with('/') {
            format!("unix://{url}")
        } else {
            url.to_string()
        };
        let shown = redact(url);
        let client = redis::Client::open(full.as_str()).map_err(|e| RedisError::BadUrl {
            url: shown.clone(),
            message: e.to_string(),
        })?;
        Ok(Server {
            client,
            shown,
            timeout,
        })
    }

    pub fn from_config(cfg: &RedisConfig) -> Result<Server, RedisError> {
        Server::new(&cfg.url, cfg.timeout)
    }

    /// The error of a failed command.
    pub fn error(&self, e: redis::RedisError) -> RedisError {
        if e.is_timeout() {
            return RedisError::Timeout {
                url: self.shown.clone(),
                timeout: self.timeout,
            };
        }
        if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            return RedisError::Unreachable {
                url: self.shown.clone(),
                message: e.to_string(),
            };
        }
        RedisError::Command {
            url: self.shown.clone(),
            message: e.to_string(),
        }
    }

    /// A blocking connection (the start-up check and `forklift spool`). Starts no
    /// thread, so it is safe in a pre-fork master.
    pub fn blocking(&self) -> Result<redis::Connection, RedisError> {
        let c = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(|e| RedisError::Unreachable {
                url: self.shown.clone(),
                message: e.to_string(),
            })?;
        c.set_read_timeout(Some(self.timeout))
            .and_then(|()| c.set_write_timeout(Some(self.timeout)))
            .map_err(|e| self.error(e))?;
        Ok(c)
    }

    /// Checks that Redis answers and that the queue's consumer group exists, waiting
    /// up to `wait` for it to come up (saying so once on stderr).
    pub fn check(&self, keys: &Keys, wait: Duration) -> Result<(), RedisError> {
        let deadline = Instant::now() + wait;
        let mut said = false;
        loop {
            let r = self.blocking().and_then(|mut c| {
                redis::cmd("PING")
                    .query::<String>(&mut c)
                    .map_err(|e| self.error(e))?;
                create_group(&mut c, keys).map_err(|e| self.error(e))
            });
            match r {
                Ok(()) => return Ok(()),
                Err(e @ RedisError::Unreachable { .. }) | Err(e @ RedisError::Timeout { .. })
                    if Instant::now() < deadline =>
                {
                    if !said {
                        eprintln!(
                            "forklift: waiting up to {:.0}s for Redis at {}: {e}",
                            wait.as_secs_f64(),
                            self.shown
                        );
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(RedisError::Command { message, .. }) if message.contains("LOADING") => {
                    // Redis is reading its data set: answer once it is done.
                    if Instant::now() >= deadline {
                        return Err(RedisError::Unreachable {
                            url: self.shown.clone(),
                            message,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A reconnecting, multiplexed connection (commands from many tasks share it and
    /// its round trips). Call inside the engine's runtime. `extra` is added to the
    /// response timeout, for blocking reads.
    pub fn manager(&self, extra: Duration) -> Result<ConnectionManager, RedisError> {
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.min(Duration::from_secs(2))))
            .set_response_timeout(Some(self.timeout + extra))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        ConnectionManager::new_lazy_with_config(self.client.clone(), cfg).map_err(|e| self.error(e))
    }
}

/// `XGROUP CREATE … MKSTREAM` from the start of the stream, so tasks submitted before
/// any worker started are run; an existing group is left as it is.
pub fn create_group(c: &mut dyn redis::ConnectionLike, keys: &Keys) -> redis::RedisResult<()> {
    match redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&keys.stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query::<()>(c)
    {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        r => r,
    }
}

/// The async form of [`create_group`].
pub async fn create_group_async(c: &mut ConnectionManager, keys: &Keys) -> redis::RedisResult<()> {
    match redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&keys.stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(c)
        .await
    {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_bad_urls_named() {
        assert_eq!(
            redact("redis://ann:secret@db:6379/1"),
            "redis://ann:***@db:6379/1"
        );
        assert_eq!(redact("redis://db:6379"), "redis://db:6379");
        assert_eq!(redact("rediss://:pw@db"), "rediss://:***@db");
        let e = Server::new("http://x", Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("http://x"), "{e}");
        assert!(Server::new("/tmp/redis.sock", Duration::from_secs(1)).is_ok());
    }
}
