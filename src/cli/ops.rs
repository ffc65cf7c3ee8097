//! `serve` options for running a server in production: the stats and metrics
//! addresses, worker recycling, and the access log's format and file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::CliError;
use crate::ops::{Endpoints, Recycling, Roster, Scorecard};
use crate::server::log::{redirect_output, LogFormat};
use crate::server::master::MasterOptions;
use crate::server::Log;
use crate::server::ServerConfig;

/// Stats, metrics, recycling and log options (flattened into `serve`).
#[derive(Debug, Clone, Default, Args)]
pub struct OpsArgs {
    /// Serve uWSGI's stats document (JSON, what uwsgitop reads) on ADDR: HOST:PORT,
    /// :PORT or a unix socket path. Each connection gets the document, then a close.
    #[arg(long, value_name = "ADDR")]
    pub stats: Option<String>,

    /// Serve the stats document over HTTP on the --stats address.
    #[arg(long)]
    pub stats_http: bool,

    /// Serve Prometheus metrics at /metrics and a live dashboard at / on ADDR.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,

    /// With --max-requests: worker N retires after max-requests + (N-1) × DELTA
    /// requests, so workers do not all recycle at once.
    #[arg(long, value_name = "DELTA")]
    pub max_requests_delta: Option<u64>,

    /// Replace a worker gracefully once its resident memory passes MB megabytes
    /// (checked each second, after it served a request; implies --master).
    #[arg(long, value_name = "MB")]
    pub reload_on_rss: Option<u64>,

    /// Replace a worker gracefully after it lived SECONDS (implies --master).
    #[arg(long, value_name = "SECONDS")]
    pub max_worker_lifetime: Option<f64>,

    /// Access-log line format with uWSGI's variables: %(addr) %(method) %(uri)
    /// %(proto) %(status) %(msecs) %(micros) %(size) %(ltime) %(time) %(uagent)
    /// %(referer) %(host) %(pid) %(wid).
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Write the access log as one JSON object per line.
    #[arg(long)]
    pub log_json: bool,

    /// Log the client address from X-Forwarded-For (its first entry) when present.
    #[arg(long)]
    pub log_x_forwarded_for: bool,

    /// Reopen the --logto file on SIGHUP too (it is always reopened on SIGUSR1), after
    /// a rotation moved it away.
    #[arg(long)]
    pub log_reopen: bool,

    /// Reload (as SIGHUP) when FILE's modification time changes (repeatable; implies
    /// --master).
    #[arg(long, value_name = "FILE")]
    pub touch_reload: Vec<PathBuf>,

    /// Replace the workers one at a time, each once the previous replacement is ready,
    /// when FILE's modification time changes (repeatable; implies --master).
    #[arg(long, value_name = "FILE")]
    pub touch_chain_reload: Vec<PathBuf>,
}

impl OpsArgs {
    /// The recycling limits, validated.
    pub fn recycling(&self) -> Result<Recycling, CliError> {
        let lifetime = match self.max_worker_lifetime {
            None => None,
            Some(v) if v.is_finite() && v > 0.0 && v < 1e9 => Some(Duration::from_secs_f64(v)),
            Some(v) => {
                return Err(CliError::Invalid {
                    option: "max-worker-lifetime",
                    value: v.to_string(),
                    problem: "must be a positive number of seconds".into(),
                })
            }
        };
        if self.reload_on_rss == Some(0) {
            return Err(CliError::Invalid {
                option: "reload-on-rss",
                value: "0".into(),
                problem: "must be a positive number of megabytes".into(),
            });
        }
        Ok(Recycling {
            max_requests_delta: self.max_requests_delta.unwrap_or(0),
            reload_on_rss: self.reload_on_rss.map(|mb| mb * 1024 * 1024),
            max_worker_lifetime: lifetime,
        })
    }

    /// Whether the options need a master process.
    pub fn needs_master(&self) -> bool {
        self.reload_on_rss.is_some()
            || self.max_worker_lifetime.is_some()
            || !self.touch_reload.is_empty()
            || !self.touch_chain_reload.is_empty()
    }

    /// The access-log format.
    pub fn log_format(&self) -> Result<LogFormat, CliError> {
        let mut f = match (&self.log_format, self.log_json) {
            (Some(_), true) => {
                return Err(CliError::Usage(
                    "give --log-format or --log-json, not both".into(),
                ))
            }
            (Some(text), false) => LogFormat::parse(text).map_err(|problem| CliError::Invalid {
                option: "log-format",
                value: text.clone(),
                problem,
            })?,
            (None, true) => LogFormat::json(),
            (None, false) => LogFormat::default(),
        };
        f.x_forwarded_for = self.log_x_forwarded_for;
        Ok(f)
    }

    /// The log: access lines (`access`) in the chosen format, to stderr, which `--logto
    /// FILE` (`logto`) points at the file (as under uWSGI, stdout too, so the app's
    /// prints and tracebacks land beside the access log).
    pub fn open_log(&self, access: bool, logto: Option<&Path>) -> Result<Log, CliError> {
        let format = self.log_format()?;
        if let Some(path) = logto {
            redirect_output(path).map_err(|e| {
                CliError::App(format!("cannot open log file {}: {e}", path.display()))
            })?;
        }
        Ok(Log::stderr(access).with_format(format))
    }

    /// Whether --stats or --metrics is given.
    pub fn has_endpoints(&self) -> bool {
        self.stats.is_some() || self.metrics.is_some()
    }

    /// Binds the --stats and --metrics addresses.
    pub fn endpoints(&self) -> Result<Endpoints, CliError> {
        Ok(Endpoints::bind(
            self.stats.as_deref(),
            self.stats_http,
            self.metrics.as_deref(),
        )?)
    }

    /// What the master does besides supervising, with `endpoints` bound and the
    /// `--logto` file.
    pub fn master_options(
        &self,
        endpoints: Endpoints,
        logto: Option<&PathBuf>,
    ) -> Result<MasterOptions, CliError> {
        Ok(MasterOptions {
            endpoints,
            recycling: self.recycling()?,
            logto: logto.cloned(),
            log_reopen: self.log_reopen,
            touch_reload: self.touch_reload.clone(),
            touch_chain_reload: self.touch_chain_reload.clone(),
            ..MasterOptions::default()
        })
    }
}

/// Without a master: serves `endpoints` from a thread of this process, which is worker
/// 1; returns its card (`None` without stats).
pub fn serve_here(
    endpoints: Endpoints,
    listeners: &[crate::server::Listener],
    config: &ServerConfig,
) -> Result<Option<&'static Scorecard>, CliError> {
    if endpoints.is_empty() {
        return Ok(None);
    }
    let roster = std::sync::Arc::new(Roster::new(1, crate::ops::cores_of(config))?);
    let card = roster.spawning(1);
    roster.started(1, card, std::process::id());
    endpoints.serve(roster, listeners, config.model)?;
    Ok(card)
}
