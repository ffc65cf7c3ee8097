//! The options the `compare` commands share, flattened into each command's own.

use std::path::PathBuf;

use crate::bench::{BenchConfig, BenchError};

/// Options of every `compare` command. `--concurrency` has no default here: each command
/// gives the reference experiment's with [`seed_default`] (in a `#[command(mut_arg(...))]`).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Requests in flight at once
    #[arg(short = 'c', long)]
    pub concurrency: usize,
    /// Directory for the SVG chart, HTML report and JSON
    #[arg(long, default_value = "forklift-compare")]
    pub out: PathBuf,
    /// Seconds to wait for a server's banner
    #[arg(long, default_value_t = 30.0)]
    pub startup_timeout: f64,
    /// The forklift binary to start (default: this executable)
    #[arg(long, hide = true)]
    pub forklift_bin: Option<PathBuf>,
}

impl CommonArgs {
    /// Checks what every command needs: at least one request in flight, a positive
    /// startup timeout.
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.concurrency == 0 {
            return Err(BenchError::Usage("-c must be at least 1".into()));
        }
        if !(self.startup_timeout.is_finite() && self.startup_timeout > 0.0) {
            return Err(BenchError::Usage(
                "--startup-timeout must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Options of the commands that load each server with `forklift bench` (`models`,
/// `offload`). `--requests` has no default here: each command gives its own with
/// [`seed_default`].
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Requests per scenario
    #[arg(short = 'n', long)]
    pub requests: u64,
    /// Keep connections alive (the seeds' ab used a connection per request)
    #[arg(short = 'k', long)]
    pub keepalive: bool,
    /// Load generator threads (default: CPU count)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Extra argument for every `forklift serve` (repeatable, e.g. --serve-arg=--threads=8)
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
}

impl LoadArgs {
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.requests == 0 {
            return Err(BenchError::Usage("-n must be at least 1".into()));
        }
        Ok(())
    }

    /// The `forklift bench` run of `n` requests at `url`: `concurrency` in flight, with
    /// these options' keep-alive and threads.
    pub fn bench_config(&self, url: &str, n: u64, concurrency: usize) -> BenchConfig {
        let mut cfg = BenchConfig::new(url, n, concurrency);
        cfg.keep_alive = self.keepalive;
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        cfg
    }
}

/// Gives a shared option one command's default and help line, e.g.
/// `#[command(mut_arg("concurrency", |a| seed_default(a, "10", "Requests in flight at once")))]`.
pub fn seed_default(arg: clap::Arg, value: &'static str, help: &'static str) -> clap::Arg {
    arg.default_value(value).required(false).help(help)
}
