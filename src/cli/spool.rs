//! `forklift spool list|retry|purge|stats --spool-dir DIR`: look into the spool and
//! its dead-letter area.

use std::io::Write;
use std::path::PathBuf;

use crate::offload::{Spool, SpoolError};

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

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SpoolCmd {
    /// Counts: pending, running, dead, completed, and unfinished in live journals.
    Stats,
    /// Lists dead-lettered tasks.
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

/// Runs a `forklift spool` command, printing to `out`.
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
