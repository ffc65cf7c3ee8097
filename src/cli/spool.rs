//! `forklift spool list|retry|purge|stats --spool-dir DIR`: look into the spool and
//! its dead-letter area; with `--redis-url URL`, into a Redis queue instead.

use std::io::Write;
use std::path::PathBuf;

use crate::offload::{RedisAdmin, RedisArgs, RedisConfig, Spool, SpoolError};

/// Arguments of `forklift spool`.
#[derive(Debug, Clone, clap::Args)]
pub struct SpoolArgs {
    #[command(subcommand)]
    pub cmd: SpoolCmd,
    /// Directory of the durable spool.
    #[arg(long, global = true, default_value = "forklift-spool")]
    pub spool_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `forklift spool` as typed: a spool directory's command, or with `--redis-url` a
/// Redis queue's.
#[derive(Debug, Clone, clap::Args)]
pub struct SpoolCli {
    #[command(subcommand)]
    pub cmd: SpoolCmd,
    /// Directory of the durable spool.
    #[arg(long, global = true, default_value = "forklift-spool")]
    pub spool_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Inspect this Redis server's queue instead of a spool directory.
    #[arg(long, global = true, value_name = "URL")]
    pub redis_url: Option<String>,
    /// The Redis queue (with --redis-url).
    #[arg(long, global = true, value_name = "NAME", default_value = "default")]
    pub redis_queue: String,
    /// The Redis key prefix (with --redis-url).
    #[arg(long, global = true, value_name = "PREFIX", default_value = "forklift")]
    pub redis_prefix: String,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SpoolCmd {
    /// Counts: pending, running, dead, completed, and unfinished in live journals.
    Stats,
    /// Lists dead-lettered tasks.
    #[command(visible_alias = "dead")]
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Moves dead-lettered tasks back to the queue (all, or the given ids).
    Retry { ids: Vec<u64> },
    /// Deletes dead-lettered tasks (all, or the given ids).
    Purge { ids: Vec<u64> },
}

/// Why a `forklift spool` command failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolCmdError {
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("{0}")]
    Redis(#[from] crate::offload::RedisError),
    #[error("{0}")]
    Config(#[from] crate::offload::OffloadError),
    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs `forklift spool …` as typed, printing to `out`.
pub fn run_spool_cli(args: &SpoolCli, out: &mut dyn Write) -> Result<(), SpoolCmdError> {
    match &args.redis_url {
        Some(url) => run_redis_cmd(args, url, out),
        None => Ok(run_spool_cmd(
            &SpoolArgs {
                cmd: args.cmd.clone(),
                spool_dir: args.spool_dir.clone(),
                json: args.json,
            },
            out,
        )?),
    }
}

fn run_redis_cmd(args: &SpoolCli, url: &str, out: &mut dyn Write) -> Result<(), SpoolCmdError> {
    let cfg = RedisConfig::from_args(&RedisArgs {
        redis_url: url.to_string(),
        redis_queue: args.redis_queue.clone(),
        redis_prefix: args.redis_prefix.clone(),
        ..RedisArgs::default()
    })?;
    let mut admin = RedisAdmin::open(&cfg)?;
    let ids = |v: &Vec<u64>| (!v.is_empty()).then(|| v.clone());
    match &args.cmd {
        SpoolCmd::Stats => {
            let s = admin.stats()?;
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&s).unwrap_or_default())?;
            } else {
                let consumers: Vec<String> = s
                    .in_flight
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect();
                let held: u64 = s.in_flight.values().sum();
                writeln!(
                    out,
                    "queue {}  pending {}  waiting {}  delayed {}  in flight {}{}  unknown {}{}  dead {}  completed {}  failed {}  retried {}  redelivered {}",
                    s.queue,
                    s.pending(),
                    s.waiting,
                    s.delayed,
                    held,
                    if consumers.is_empty() { String::new() } else { format!(" ({})", consumers.join(", ")) },
                    s.unknown,
                    if s.unknown_names.is_empty() { String::new() } else { format!(" (no worker knows: {})", s.unknown_names.join(", ")) },
                    s.dead,
                    s.completed,
                    s.failed,
                    s.retried,
                    s.redelivered
                )?;
            }
        }
        SpoolCmd::List { limit } => {
            let dead = admin.list_dead(*limit)?;
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&dead).unwrap_or_default())?;
            } else if dead.is_empty() {
                writeln!(out, "no dead tasks")?;
            } else {
                writeln!(
                    out,
                    "{:>10}  {:<20} {:>8} {:>8}  error",
                    "id", "task", "bytes", "attempts"
                )?;
                for d in dead {
                    writeln!(
                        out,
                        "{:>10}  {:<20} {:>8} {:>8}  {}",
                        d.id, d.name, d.payload_len, d.attempts, d.error
                    )?;
                }
            }
        }
        SpoolCmd::Retry { ids: v } => {
            let n = admin.retry_dead(ids(v).as_deref())?;
            writeln!(out, "{n} task(s) moved back to the queue")?;
        }
        SpoolCmd::Purge { ids: v } => {
            let n = admin.purge_dead(ids(v).as_deref())?;
            writeln!(out, "{n} dead task(s) deleted")?;
        }
    }
    Ok(())
}

/// Runs a `forklift spool` command on a spool directory, printing to `out`.
pub fn run_spool_cmd(args: &SpoolArgs, out: &mut dyn Write) -> Result<(), SpoolError> {
    let mut spool = Spool::open(&args.spool_dir)?;
    let ids = |v: &Vec<u64>| (!v.is_empty()).then(|| v.clone());
    let io = |e: std::io::Error| SpoolError::Dir {
        path: args.spool_dir.clone(),
        source: e,
    };
    match &args.cmd {
        SpoolCmd::Stats => {
            let s = spool.stats()?;
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&s).unwrap_or_default()).map_err(io)?;
            } else {
                writeln!(
                    out,
                    "pending {}  running {}  dead {}  completed {}  in journals {}",
                    s.pending, s.running, s.dead, s.completed, s.journal
                )
                .map_err(io)?;
            }
        }
        SpoolCmd::List { limit } => {
            let dead = spool.list_dead(*limit)?;
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&dead).unwrap_or_default())
                    .map_err(io)?;
            } else if dead.is_empty() {
                writeln!(out, "no dead tasks").map_err(io)?;
            } else {
                writeln!(
                    out,
                    "{:>10}  {:<20} {:>8} {:>8}  error",
                    "id", "task", "bytes", "attempts"
                )
                .map_err(io)?;
                for d in dead {
                    writeln!(
                        out,
                        "{:>10}  {:<20} {:>8} {:>8}  {}",
                        d.id, d.name, d.payload_len, d.attempts, d.error
                    )
                    .map_err(io)?;
                }
            }
        }
        SpoolCmd::Retry { ids: v } => {
            let n = spool.retry_dead(ids(v).as_deref())?;
            writeln!(out, "{n} task(s) moved back to the queue").map_err(io)?;
        }
        SpoolCmd::Purge { ids: v } => {
            let n = spool.purge_dead(ids(v).as_deref())?;
            writeln!(out, "{n} dead task(s) deleted").map_err(io)?;
        }
    }
    Ok(())
}
