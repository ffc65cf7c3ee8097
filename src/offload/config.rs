//! Offload configuration: the flags `forklift serve` flattens ([`OffloadArgs`]) and the
//! validated [`OffloadConfig`] the engine is built from.

use std::path::PathBuf;
use std::time::Duration;

use super::error::OffloadError;

/// Where a handler's slow work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Before the response (the blocking baseline).
    Inline,
    /// Over a Unix socket to one event-loop worker shared by all processes.
    Loop,
    /// A thread per task, capped.
    Thread,
    /// A bounded queue served by N worker threads.
    Pool,
    /// Durable: on disk before submit returns, at-least-once, retried, dead-lettered.
    Spool,
    /// Durable across machines: Redis Streams, run by any `forklift worker` (or serving
    /// process) in a consumer group; retried, dead-lettered.
    Redis,
}

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::Inline,
        Strategy::Loop,
        Strategy::Thread,
        Strategy::Pool,
        Strategy::Spool,
        Strategy::Redis,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Inline => "inline",
            Strategy::Loop => "loop",
            Strategy::Thread => "thread",
            Strategy::Pool => "pool",
            Strategy::Spool => "spool",
            Strategy::Redis => "redis",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Offload flags, as typed. Flatten into a command with `#[command(flatten)]`.
#[derive(Debug, Clone, clap::Args)]
pub struct OffloadArgs {
    /// How slow work handed off by handlers runs: inline, loop, thread, pool, spool, redis.
    #[arg(long = "offload", value_enum, default_value_t = Strategy::Pool)]
    pub offload: Strategy,
    /// Worker threads: pool workers; concurrent blocking tasks for loop and spool.
    #[arg(long, default_value_t = 8)]
    pub offload_workers: usize,
    /// Bound on waiting work: pool queue length, live task threads (thread), tasks in
    /// flight in the loop worker (loop), submissions waiting for the disk (spool).
    #[arg(long, default_value_t = 4096)]
    pub offload_queue: usize,
    /// Unix socket of the loop worker [default: a per-server path in the temp dir].
    #[arg(long)]
    pub offload_socket: Option<PathBuf>,
    /// Seconds graceful shutdown waits for non-durable tasks before dropping them.
    #[arg(long, default_value_t = 10.0)]
    pub offload_drain: f64,
    /// Directory of the durable spool (strategy spool).
    #[arg(long, default_value = "forklift-spool")]
    pub spool_dir: PathBuf,
    /// Fsync each spooled task on its own instead of sharing commits (for comparison).
    #[arg(long)]
    pub spool_no_group_commit: bool,
    /// Most tasks the spool holds pending before refusing submissions.
    #[arg(long, default_value_t = 1_000_000)]
    pub spool_max: u64,
    /// Retries of a failing spooled task before it goes to the dead-letter area.
    #[arg(long, default_value_t = 5)]
    pub task_retries: u32,
    /// First retry delay in seconds; doubled on each further retry (capped at 1 hour).
    #[arg(long, default_value_t = 1.0)]
    pub task_backoff: f64,
    /// Seconds of slow work done by builtin:slowlog's task.
    #[arg(long, default_value_t = 1.0)]
    pub task_seconds: f64,
    /// Log file builtin:slowlog's task appends requests to.
    #[arg(long, default_value = "forklift-slowlog.log")]
    pub slowlog_file: PathBuf,
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// The `redis` strategy's flags (also read by `forklift worker` and `forklift spool`).
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis server: redis://[user:pass@]host:port/db, rediss://… (TLS), or the path
    /// of a Unix socket.
    #[arg(long, value_name = "URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Queue name: tasks go to the stream of this queue, workers run that stream.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub redis_queue: String,
    /// Prefix of every key forklift uses in Redis.
    #[arg(long, value_name = "PREFIX", default_value = "forklift")]
    pub redis_prefix: String,
    /// Seconds after which a task held by a worker that stopped heartbeating is claimed
    /// by another worker.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub redis_claim_after: f64,
    /// At start, wait up to SECONDS for Redis to answer instead of failing at once.
    #[arg(long, value_name = "SECONDS")]
    pub redis_wait: Option<f64>,
    /// Seconds a submission (or any Redis command) may take before it fails.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub redis_timeout: f64,
    /// Send each submission in its own round trip instead of pipelining concurrent
    /// ones (for comparison).
    #[arg(long)]
    pub redis_no_pipeline: bool,
    /// With --offload redis: only submit tasks, leave running them to `forklift worker`.
    #[arg(long)]
    pub no_run_tasks: bool,
}

/// Where `--redis-url` points unless given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

impl Default for RedisArgs {
    fn default() -> Self {
        RedisArgs {
            redis_url: DEFAULT_REDIS_URL.into(),
            redis_queue: "default".into(),
            redis_prefix: "forklift".into(),
            redis_claim_after: 30.0,
            redis_wait: None,
            redis_timeout: 5.0,
            redis_no_pipeline: false,
            no_run_tasks: false,
        }
    }
}

/// Validated `redis` settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub queue: String,
    pub prefix: String,
    pub claim_after: Duration,
    /// How long start-up waits for Redis (zero: fail at once).
    pub wait: Duration,
    pub timeout: Duration,
    pub pipeline: bool,
    /// This process runs tasks (a worker, or `serve` without `--no-run-tasks`).
    pub run_tasks: bool,
}

impl RedisConfig {
    pub fn from_args(a: &RedisArgs) -> Result<RedisConfig, OffloadError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
        };
        if !name_ok(&a.redis_queue) {
            return Err(OffloadError::Config(format!(
                "--redis-queue must be 1..=100 printable characters without braces, got {:?}",
                a.redis_queue
            )));
        }
        if !name_ok(&a.redis_prefix) {
            return Err(OffloadError::Config(format!(
                "--redis-prefix must be 1..=100 printable characters without braces, got {:?}",
                a.redis_prefix
            )));
        }
        let claim_after = secs("--redis-claim-after", a.redis_claim_after, 86400.0)?;
        if claim_after < Duration::from_millis(100) {
            return Err(OffloadError::Config(format!(
                "--redis-claim-after must be at least 0.1 seconds, got {}",
                a.redis_claim_after
            )));
        }
        let timeout = secs("--redis-timeout", a.redis_timeout, 3600.0)?;
        if timeout < Duration::from_millis(10) {
            return Err(OffloadError::Config(format!(
                "--redis-timeout must be at least 0.01 seconds, got {}",
                a.redis_timeout
            )));
        }
        Ok(RedisConfig {
            url: a.redis_url.clone(),
            queue: a.redis_queue.clone(),
            prefix: a.redis_prefix.clone(),
            claim_after,
            wait: a
                .redis_wait
                .map(|w| secs("--redis-wait", w, 86400.0))
                .transpose()?
                .unwrap_or(Duration::ZERO),
            timeout,
            pipeline: !a.redis_no_pipeline,
            run_tasks: !a.no_run_tasks,
        })
    }
}

impl Default for OffloadArgs {
    fn default() -> Self {
        OffloadArgs {
            offload: Strategy::Pool,
            offload_workers: 8,
            offload_queue: 4096,
            offload_socket: None,
            offload_drain: 10.0,
            spool_dir: PathBuf::from("forklift-spool"),
            spool_no_group_commit: false,
            spool_max: 1_000_000,
            task_retries: 5,
            task_backoff: 1.0,
            task_seconds: 1.0,
            slowlog_file: PathBuf::from("forklift-slowlog.log"),
            redis: RedisArgs::default(),
        }
    }
}

/// Validated offload settings.
#[derive(Debug, Clone)]
pub struct OffloadConfig {
    pub strategy: Strategy,
    pub workers: usize,
    pub queue: usize,
    /// Socket path for `loop`.
    pub socket: PathBuf,
    pub drain_timeout: Duration,
    pub spool_dir: PathBuf,
    pub group_commit: bool,
    pub spool_max: u64,
    pub retries: u32,
    pub backoff: Duration,
    /// How long a spool runner owns a claimed task before another runner may take it
    /// (when the owner is alive but silent); dead owners are detected at once.
    pub lease: Duration,
    pub task_seconds: Duration,
    pub slowlog_file: PathBuf,
    pub redis: RedisConfig,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig::from_args(&OffloadArgs::default()).expect("defaults are valid")
    }
}

fn secs(name: &str, v: f64, max: f64) -> Result<Duration, OffloadError> {
    if v.is_finite() && (0.0..=max).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(OffloadError::Config(format!(
            "{name} must be between 0 and {max} seconds, got {v}"
        )))
    }
}

impl OffloadConfig {
    pub fn from_args(a: &OffloadArgs) -> Result<OffloadConfig, OffloadError> {
        if !(1..=1024).contains(&a.offload_workers) {
            return Err(OffloadError::Config(format!(
                "--offload-workers must be 1..=1024, got {}",
                a.offload_workers
            )));
        }
        if !(1..=1_000_000).contains(&a.offload_queue) {
            return Err(OffloadError::Config(format!(
                "--offload-queue must be 1..=1000000, got {}",
                a.offload_queue
            )));
        }
        if a.spool_max == 0 {
            return Err(OffloadError::Config(
                "--spool-max must be at least 1".into(),
            ));
        }
        let socket = a.offload_socket.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("forklift-offload-{}.sock", std::process::id()))
        });
        if socket.as_os_str().len() > 100 {
            return Err(OffloadError::Config(format!(
                "--offload-socket path too long for a Unix socket: {}",
                socket.display()
            )));
        }
        Ok(OffloadConfig {
            strategy: a.offload,
            workers: a.offload_workers,
            queue: a.offload_queue,
            socket,
            drain_timeout: secs("--offload-drain", a.offload_drain, 3600.0)?,
            spool_dir: a.spool_dir.clone(),
            group_commit: !a.spool_no_group_commit,
            spool_max: a.spool_max,
            retries: a.task_retries.min(100),
            backoff: secs("--task-backoff", a.task_backoff, 3600.0)?,
            lease: Duration::from_secs(300),
            task_seconds: secs("--task-seconds", a.task_seconds, 3600.0)?,
            slowlog_file: a.slowlog_file.clone(),
            redis: RedisConfig::from_args(&a.redis)?,
        })
    }

    /// The delay before retry number `attempt` (1-based): backoff × 2^(attempt-1), at
    /// most an hour.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.backoff
            .saturating_mul(factor)
            .min(Duration::from_secs(3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_into_serve_without_clashes() {
        use clap::CommandFactory;
        // `forklift serve` flattens OffloadArgs: every name must stay unique.
        crate::cli::Cli::command().debug_assert();
    }

    #[test]
    fn validates_and_backs_off() {
        let mut a = OffloadArgs {
            task_backoff: 0.5,
            ..OffloadArgs::default()
        };
        let c = OffloadConfig::from_args(&a).unwrap();
        assert_eq!(c.retry_delay(1), Duration::from_millis(500));
        assert_eq!(c.retry_delay(3), Duration::from_secs(2));
        assert_eq!(c.retry_delay(99), Duration::from_secs(3600));
        a.offload_workers = 0;
        assert!(OffloadConfig::from_args(&a).is_err());
        a.offload_workers = 1;
        a.task_seconds = f64::NAN;
        assert!(OffloadConfig::from_args(&a).is_err());
    }
}
