//! `forklift hammer`: the fan-out demo's hammer.py — N requests with at most C in flight, then
//! "We did N requests in X.XXX" and a one-line latency summary.

use std::time::Duration;

use super::{run_config, BenchConfig, BenchError, Report};

/// `forklift hammer --port P --nb_requests N --max_concurrency C`
#[derive(Debug, Clone, clap::Args)]
pub struct HammerArgs {
    /// Port on the host
    #[arg(long, default_value_t = 5000)]
    pub port: u16,
    /// Host to hammer
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// Path to request
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Full URL (overrides --host, --port and --path)
    #[arg(long)]
    pub url: Option<String>,
    /// Number of requests
    #[arg(
        long = "nb_requests",
        visible_alias = "nb-requests",
        default_value_t = 20
    )]
    pub nb_requests: u64,
    /// Most requests in flight at once
    #[arg(
        long = "max_concurrency",
        visible_alias = "max-concurrency",
        default_value_t = 50
    )]
    pub max_concurrency: usize,
    /// Seconds to wait for progress on a request before it fails
    #[arg(short = 's', long = "timeout", default_value_t = 60.0)]
    pub timeout: f64,
}

/// The outcome of a hammer run.
#[derive(Debug, Clone)]
pub struct HammerResult {
    pub report: Report,
}

impl HammerResult {
    /// hammer.py's line, then the latency summary.
    pub fn to_text(&self) -> String {
        let r = &self.report;
        let pct = |p: f64| r.percentile_ms(p);
        let t = &r.connection_times.total;
        format!(
            "We did {} requests in {:.3}\nlatency (ms): min {:.3}, mean {:.3}, p50 {:.3}, p90 {:.3}, \
             p99 {:.3}, max {:.3}; failed {}, non-2xx {}\n",
            r.complete_requests,
            r.time_taken_s,
            t.min,
            t.mean,
            pct(50.0),
            pct(90.0),
            pct(99.0),
            t.max,
            r.failed_requests,
            r.non_2xx_responses
        )
    }
}

/// The whole `forklift hammer` command: runs, prints hammer.py's line and the latency
/// summary. Returns the process exit code (1 when no request succeeded).
pub fn run_hammer(args: &HammerArgs) -> Result<i32, BenchError> {
    let r = hammer(args)?;
    print!("{}", r.to_text());
    let ok = r.report.complete_requests > r.report.failed_requests;
    Ok(if ok { 0 } else { 1 })
}

/// Runs `forklift hammer` and returns the result (prints nothing).
pub fn hammer(args: &HammerArgs) -> Result<HammerResult, BenchError> {
    let url = match &args.url {
        Some(u) => u.clone(),
        None => {
            let host = if args.host.contains(':') {
                format!("[{}]", args.host)
            } else {
                args.host.clone()
            };
            let path = if args.path.starts_with('/') {
                args.path.clone()
            } else {
                format!("/{}", args.path)
            };
            format!("http://{host}:{}{path}", args.port)
        }
    };
    if args.nb_requests == 0 || args.max_concurrency == 0 {
        return Err(BenchError::Usage(
            "--nb_requests and --max_concurrency must be at least 1".into(),
        ));
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(BenchError::Usage(
            "--timeout must be a positive number".into(),
        ));
    }
    let mut cfg = BenchConfig::new(&url, args.nb_requests, args.max_concurrency);
    // Hammering is about slow requests, not client throughput: one loop is plenty.
    cfg.threads = 1;
    cfg.timeout = Duration::from_secs_f64(args.timeout);
    Ok(HammerResult {
        report: run_config(&cfg)?,
    })
}
