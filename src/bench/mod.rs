//! forklift's load generator: `forklift bench` (ab's options and report, HTTP/1.1,
//! multi-threaded, microsecond percentiles), `forklift hammer` (the fan-out demo's
//! hammer.py) and the `forklift compare` experiments (a published table, measured).
//!
//! # Layout
//! - [`url`]: target URL parsing and the request bytes built once per run.
//! - [`parse`]: sans-IO HTTP/1.1 response parser (head, Content-Length, chunked, close).
//! - [`stats`]: latency series (HdrHistogram, µs), error counts by kind, per-thread tallies.
//! - [`engine`]: the client engine (std threads × mio loops, closed or open loop):
//!   configuration and `run` in `engine`, one thread's loop in `worker`, one
//!   connection's I/O in `conn`.
//! - [`report`]: ab's report layout and its JSON twin.
//! - [`mod@hammer`]: `forklift hammer`.
//! - [`chart`]: a reusable "scenarios × figure, beside the published one" table → text, SVG,
//!   HTML.
//! - [`compare`]: `forklift compare models|offload|fanout`: shared options and runner,
//!   the `forklift serve` child processes, one module per experiment.

pub mod chart;
pub mod compare;
pub mod engine;
pub mod hammer;
pub mod parse;
pub mod report;
pub mod stats;
pub mod url;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use compare::{compare_models, CompareModelsArgs, ModelsComparison};
pub use engine::{EngineConfig, EngineResult, Shared};
pub use hammer::{hammer, run_hammer, HammerArgs, HammerResult};
pub use report::Report;

/// Everything that can stop a run before it produces a report.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("bad URL {0}")]
    Url(String),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, #[source] std::io::Error),
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, #[source] std::io::Error),
    #[error("cannot read {0}: {1}")]
    ReadFile(PathBuf, #[source] std::io::Error),
    #[error("cannot write {0}: {1}")]
    WriteFile(PathBuf, #[source] std::io::Error),
    #[error("cannot start an engine thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("I/O error: {0}")]
    Io(#[source] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("server {model}: {why}")]
    Server { model: String, why: String },
    /// Every scenario of a `compare` command failed: no figure, so no chart.
    #[error("compare {command}: nothing was measured, so no chart was written:\n{failures}")]
    NothingMeasured {
        command: &'static str,
        /// One line per scenario: `  LABEL: why`.
        failures: String,
    },
}

/// `forklift bench URL`: ab's options where they exist, plus threads, rate, pipelining
/// and JSON output.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Target URL: http://host:port/path (port and path optional)
    pub url: String,
    /// Number of requests (default 1, or unlimited with -t)
    #[arg(short = 'n', long = "requests")]
    pub requests: Option<u64>,
    /// Requests in flight at once (connections)
    #[arg(short = 'c', long = "concurrency", default_value_t = 1)]
    pub concurrency: usize,
    /// Stop after this many seconds (no request cap unlike ab)
    #[arg(short = 't', long = "timelimit")]
    pub timelimit: Option<f64>,
    /// Keep connections alive (the default)
    #[arg(short = 'k', long = "keepalive")]
    pub keepalive: bool,
    /// A new connection per request (`Connection: close`)
    #[arg(long = "no-keepalive", conflicts_with = "keepalive")]
    pub no_keepalive: bool,
    /// Request method (default GET, or POST with -p)
    #[arg(short = 'm', long = "method")]
    pub method: Option<String>,
    /// File whose content is sent as the request body
    #[arg(short = 'p', long = "postfile")]
    pub postfile: Option<PathBuf>,
    /// Content-Type of the body (default text/plain with -p)
    #[arg(short = 'T', long = "content-type")]
    pub content_type: Option<String>,
    /// Extra header 'Name: value' (repeatable)
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Seconds to wait for progress on a request before it fails
    #[arg(short = 's', long = "timeout", default_value_t = 30.0)]
    pub timeout: f64,
    /// Engine threads (default: CPU count, at most the concurrency)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Constant request rate per second (open loop; latency from each intended start)
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests sent back to back on a connection before reading responses
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Also write the report as JSON to this file ("-" for stdout)
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bar
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// A validated run: what the engine needs plus what the report prints.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub url: String,
    pub method: String,
    pub body: Option<Vec<u8>>,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    pub concurrency: usize,
    pub threads: usize,
    pub keep_alive: bool,
    pub pipeline: usize,
    pub rate: Option<f64>,
    pub timeout: Duration,
    /// Draw a progress bar (only ever on a terminal).
    pub progress: bool,
    /// Stop at the first SIGINT and report what was done (a second one kills). Only for
    /// the command line: it installs a process-wide signal handler.
    pub handle_interrupt: bool,
}

impl BenchConfig {
    /// A GET of `url` with the given number of requests and concurrency, keep-alive.
    pub fn new(url: &str, requests: u64, concurrency: usize) -> BenchConfig {
        BenchConfig {
            url: url.to_string(),
            method: "GET".into(),
            body: None,
            content_type: None,
            headers: Vec::new(),
            requests: Some(requests),
            duration: None,
            concurrency,
            threads: default_threads(),
            keep_alive: true,
            pipeline: 1,
            rate: None,
            timeout: Duration::from_secs(30),
            progress: false,
            handle_interrupt: false,
        }
    }

    pub fn from_args(a: &BenchArgs) -> Result<BenchConfig, BenchError> {
        let positive = |v: f64, what: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(BenchError::Usage(format!(
                    "{what} must be a positive number"
                )))
            }
        };
        let duration = a
            .timelimit
            .map(|t| positive(t, "-t").map(Duration::from_secs_f64))
            .transpose()?;
        let rate = a.rate.map(|r| positive(r, "--rate")).transpose()?;
        let timeout = Duration::from_secs_f64(positive(a.timeout, "-s")?);
        let body = match &a.postfile {
            Some(p) => Some(std::fs::read(p).map_err(|e| BenchError::ReadFile(p.clone(), e))?),
            None => None,
        };
        let method = match (&a.method, &body) {
            (Some(m), _) => m.clone(),
            (None, Some(_)) => "POST".into(),
            (None, None) => "GET".into(),
        };
        let content_type = a
            .content_type
            .clone()
            .or_else(|| body.as_ref().map(|_| "text/plain".to_string()));
        let headers = a
            .headers
            .iter()
            .map(|h| url::parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        let requests = match (a.requests, duration) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(1),
        };
        Ok(BenchConfig {
            url: a.url.clone(),
            method,
            body,
            content_type,
            headers,
            requests,
            duration,
            concurrency: a.concurrency,
            threads: a.threads.unwrap_or_else(default_threads),
            keep_alive: !a.no_keepalive,
            pipeline: a.pipeline,
            rate,
            timeout,
            progress: !a.quiet,
            handle_interrupt: false,
        })
    }
}

/// One engine thread per CPU.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs a validated benchmark and returns its report (prints nothing; a progress bar on
/// stderr when it is a terminal and `cfg.progress` is set).
pub fn run_config(cfg: &BenchConfig) -> Result<Report, BenchError> {
    if cfg.concurrency == 0 {
        return Err(BenchError::Usage("-c must be at least 1".into()));
    }
    if cfg.pipeline == 0 {
        return Err(BenchError::Usage("--pipeline must be at least 1".into()));
    }
    if cfg.threads == 0 {
        return Err(BenchError::Usage("--threads must be at least 1".into()));
    }
    if cfg.pipeline > 1 && (!cfg.keep_alive || cfg.rate.is_some()) {
        return Err(BenchError::Usage(
            "--pipeline needs keep-alive and cannot be combined with --rate".into(),
        ));
    }
    if cfg.requests == Some(0) {
        return Err(BenchError::Usage("-n must be at least 1".into()));
    }
    let target = url::parse_url(&cfg.url)?;
    let request = url::build_request(&url::RequestSpec {
        method: cfg.method.clone(),
        path: target.path.clone(),
        host_header: target.host_header.clone(),
        headers: cfg.headers.clone(),
        body: cfg.body.clone(),
        content_type: cfg.content_type.clone(),
        keep_alive: cfg.keep_alive,
    })?;
    let addr = url::resolve(&target, cfg.timeout.min(Duration::from_secs(5)))?;
    // More connections than requests would only sit idle (ab refuses them outright).
    let concurrency = match cfg.requests {
        Some(n) => cfg
            .concurrency
            .min(usize::try_from(n).unwrap_or(usize::MAX)),
        None => cfg.concurrency,
    };
    let threads = cfg.threads.min(concurrency);
    let ecfg = EngineConfig {
        addr,
        request,
        head_request: cfg.method.eq_ignore_ascii_case("HEAD"),
        requests: cfg.requests,
        duration: cfg.duration,
        concurrency,
        threads,
        keep_alive: cfg.keep_alive,
        pipeline: cfg.pipeline,
        rate: cfg.rate,
        timeout: cfg.timeout,
    };
    let shared = Arc::new(Shared::new(cfg.requests));
    let bar = if cfg.progress && std::io::stderr().is_terminal() {
        Some(progress_bar(&shared, cfg.requests, cfg.duration))
    } else {
        None
    };
    let sigint = if cfg.handle_interrupt {
        on_interrupt(&shared.stop)
    } else {
        Vec::new()
    };
    let result = engine::run(&ecfg, &shared);
    for id in sigint {
        signal_hook::low_level::unregister(id);
    }
    if let Some((done, handle)) = bar {
        done.store(true, Ordering::Relaxed);
        let _ = handle.join();
    }
    let result = result?;
    let info = report::RunInfo {
        hostname: target.host.clone(),
        port: target.port,
        path: target.path.clone(),
        concurrency,
        threads,
        keep_alive: cfg.keep_alive,
        pipeline: cfg.pipeline,
        rate: cfg.rate,
    };
    Ok(Report::new(&info, &result))
}

/// First SIGINT sets `stop`; a second one terminates the process as usual.
fn on_interrupt(stop: &Arc<std::sync::atomic::AtomicBool>) -> Vec<signal_hook::SigId> {
    use signal_hook::consts::SIGINT;
    use signal_hook::flag;
    let mut ids = Vec::new();
    if let Ok(id) = flag::register_conditional_shutdown(SIGINT, 130, stop.clone()) {
        ids.push(id);
    }
    if let Ok(id) = flag::register(SIGINT, stop.clone()) {
        ids.push(id);
    }
    ids
}

type BarHandle = (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
);

fn progress_bar(
    shared: &Arc<Shared>,
    requests: Option<u64>,
    duration: Option<Duration>,
) -> BarHandle {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (shared, done2) = (shared.clone(), done.clone());
    let handle = std::thread::spawn(move || {
        let by_time = requests.is_none();
        let len = match (requests, duration) {
            (Some(n), _) => n,
            (None, Some(d)) => d.as_millis() as u64,
            (None, None) => 0,
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let template = if by_time {
            "{spinner} [{elapsed_precise}] {wide_bar} {msg}"
        } else {
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} requests {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        let start = std::time::Instant::now();
        while !done2.load(Ordering::Relaxed) {
            let n = shared.completed.load(Ordering::Relaxed);
            if by_time {
                bar.set_position((start.elapsed().as_millis() as u64).min(len));
                bar.set_message(format!("{n} requests"));
            } else {
                bar.set_position(n);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
    });
    (done, handle)
}

/// Runs `forklift bench` from its arguments and returns the report (prints nothing).
pub fn bench(args: &BenchArgs) -> Result<Report, BenchError> {
    run_config(&BenchConfig::from_args(args)?)
}

/// The whole `forklift bench` command: runs, prints ab's report on stdout, writes the
/// JSON if asked. Returns the process exit code (1 when no request succeeded).
pub fn run_bench(args: &BenchArgs) -> Result<i32, BenchError> {
    let mut cfg = BenchConfig::from_args(args)?;
    cfg.handle_interrupt = true;
    let report = run_config(&cfg)?;
    match args.json.as_deref() {
        Some(p) if p.as_os_str() == "-" => {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Some(p) => {
            print!("{}", report.to_text());
            let json = serde_json::to_string_pretty(&report)?;
            std::fs::write(p, json + "\n")
                .map_err(|e| BenchError::WriteFile(p.to_path_buf(), e))?;
        }
        None => print!("{}", report.to_text()),
    }
    let ok = report.complete_requests > report.failed_requests;
    Ok(if ok { 0 } else { 1 })
}
