//! `forklift compare models`: starts `forklift serve` under each concurrency model as a
//! child process, loads it like seed 003 (`ab -n 100000 -c 8`, a connection per request),
//! and prints seed 003's table with forklift's figures beside it, plus SVG/HTML files.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::chart::{fmt_figure, Comparison, ComparisonRow};
use super::{run_config, BenchConfig, BenchError, Report};

/// Requests in seed 003's runs (the seed's figures are times for this many).
pub const SEED_REQUESTS: u64 = 100_000;
/// stderr lines kept from a server to explain why it failed.
const KEEP_LINES: usize = 20;

/// `forklift compare models [--app APP] [--requests N] [--concurrency C] [--out DIR]`
#[derive(Debug, Clone, clap::Args)]
pub struct CompareModelsArgs {
    /// App to serve: builtin:NAME, a WSGI file (app.py) or a module (pkg.mod or pkg.mod:app)
    #[arg(long, default_value = "builtin:hello")]
    pub app: String,
    /// Extra argument for every `forklift serve` (repeatable, e.g. --serve-arg=--pythonpath=.)
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// Requests per model
    #[arg(short = 'n', long, default_value_t = SEED_REQUESTS)]
    pub requests: u64,
    /// Requests in flight at once
    #[arg(short = 'c', long, default_value_t = 8)]
    pub concurrency: usize,
    /// Directory for the SVG chart, HTML report and JSON
    #[arg(long, default_value = "forklift-compare")]
    pub out: PathBuf,
    /// Keep connections alive (seed 003 used a connection per request)
    #[arg(short = 'k', long)]
    pub keepalive: bool,
    /// Only these models (comma-separated: linear,prefork,threads,epoll,async)
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Worker processes of the prefork model (seed 003: 8)
    #[arg(long, default_value_t = 8)]
    pub processes: usize,
    /// Threads of the thread-pool model (seed 003: 8)
    #[arg(long = "server-threads", default_value_t = 8)]
    pub server_threads: usize,
    /// Load generator threads (default: CPU count)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds to wait for a server's banner
    #[arg(long, default_value_t = 30.0)]
    pub startup_timeout: f64,
    /// The forklift binary to start (default: this executable)
    #[arg(long, hide = true)]
    pub forklift_bin: Option<PathBuf>,
}

impl CompareModelsArgs {
    /// The defaults, as `forklift compare models` with no options.
    pub fn defaults() -> CompareModelsArgs {
        CompareModelsArgs {
            app: "builtin:hello".into(),
            serve_args: Vec::new(),
            requests: SEED_REQUESTS,
            concurrency: 8,
            out: PathBuf::from("forklift-compare"),
            keepalive: false,
            models: Vec::new(),
            processes: 8,
            server_threads: 8,
            threads: None,
            startup_timeout: 30.0,
            forklift_bin: None,
        }
    }
}

/// One configuration of the server to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Short name (`--models` selects by it).
    pub name: String,
    /// Row label, as in the seed's table.
    pub label: String,
    /// Seed 003's time for 100000 requests, when it measured this model.
    pub seed_seconds: Option<f64>,
    /// Arguments after `serve APP --http 127.0.0.1:0`.
    pub serve_args: Vec<String>,
}

/// Seed 003's models (and async, which it did not have).
pub fn model_specs(processes: usize, threads: usize) -> Vec<ModelSpec> {
    let spec = |name: &str, label: String, seed: Option<f64>, args: &[String]| ModelSpec {
        name: name.into(),
        label,
        seed_seconds: seed,
        serve_args: args.to_vec(),
    };
    let s = |v: &str| v.to_string();
    vec![
        spec(
            "linear",
            s("linear"),
            Some(5.23),
            &[s("--model"), s("linear")],
        ),
        spec(
            "prefork",
            format!("prefork ×{processes}"),
            Some(5.58),
            &[
                s("--model"),
                s("linear"),
                s("--processes"),
                processes.to_string(),
            ],
        ),
        spec(
            "threads",
            format!("thread pool ×{threads}"),
            Some(16.3),
            &[
                s("--model"),
                s("threads"),
                s("--threads"),
                threads.to_string(),
            ],
        ),
        spec("epoll", s("epoll"), Some(5.07), &[s("--model"), s("epoll")]),
        spec("async", s("async"), None, &[s("--model"), s("async")]),
    ]
}

/// How `forklift serve` is told about an app: `builtin:NAME` as is, a `.py` file (or any
/// existing file) with `--wsgi-file`, anything else as a module with `--module`.
pub fn app_args(app: &str) -> Vec<String> {
    if app.starts_with("builtin:") {
        vec![app.to_string()]
    } else if app.ends_with(".py") || Path::new(app).is_file() {
        vec!["--wsgi-file".into(), app.to_string()]
    } else {
        vec!["--module".into(), app.to_string()]
    }
}

/// Finds `listening on http://HOST:PORT` in a line of the server's stderr.
pub fn parse_banner(line: &str) -> Option<SocketAddr> {
    let i = line.find("listening on http://")?;
    let rest = &line[i + "listening on http://".len()..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '/' || c == ',' || c == ')')
        .unwrap_or(rest.len());
    let hostport = &rest[..end];
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Some(a);
    }
    hostport.to_socket_addrs().ok()?.next()
}

/// A `forklift serve` child process; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl ServerProcess {
    /// Starts `BIN serve APP --http 127.0.0.1:0 ARGS --disable-logging EXTRA` and waits for
    /// its banner (APP as [`app_args`] puts it). The child gets its own process group so
    /// its workers can be stopped with it.
    pub fn spawn(
        bin: &Path,
        app: &str,
        spec: &ModelSpec,
        extra: &[String],
        startup: Duration,
    ) -> Result<ServerProcess, BenchError> {
        let err = |why: String| BenchError::Server {
            model: spec.name.clone(),
            why,
        };
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args(app_args(app))
            .args(["--http", "127.0.0.1:0"])
            .args(&spec.serve_args)
            .arg("--disable-logging")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| err(format!("cannot start {}: {e}", bin.display())))?;
        let stderr = child.stderr.take().expect("stderr was piped");
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let kept = lines.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = parse_banner(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                if let Ok(mut k) = kept.lock() {
                    if k.len() == KEEP_LINES {
                        k.pop_front();
                    }
                    k.push_back(line);
                }
            }
        });
        let mut server = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
        };
        match rx.recv_timeout(startup) {
            Ok(addr) => {
                server.addr = addr;
                Ok(server)
            }
            Err(e) => {
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("no 'listening on http://' banner within {startup:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => "exited before listening".to_string(),
                };
                server.stop();
                Err(err(format!("{why}{}", server.last_lines())))
            }
        }
    }

    fn last_lines(&self) -> String {
        let k = self.lines.lock().map(|k| k.clone()).unwrap_or_default();
        if k.is_empty() {
            String::new()
        } else {
            format!("; its stderr ended with:\n  {}", Vec::from(k).join("\n  "))
        }
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL to its whole process group.
    pub fn stop(&mut self) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                // Workers left behind by a master that died are stopped too.
                let _ = killpg(pid, Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One model's outcome.
#[derive(Debug, Clone)]
pub struct ModelResult {
    pub spec: ModelSpec,
    pub report: Option<Report>,
    pub error: Option<String>,
}

/// All models measured, and the table built from them.
#[derive(Debug, Clone)]
pub struct ModelsComparison {
    pub results: Vec<ModelResult>,
    pub comparison: Comparison,
}

/// Measures every selected model with the forklift binary at `bin` (tests pass
/// `env!("CARGO_BIN_EXE_forklift")`). Prints nothing.
pub fn compare_models(
    args: &CompareModelsArgs,
    bin: &Path,
) -> Result<ModelsComparison, BenchError> {
    if args.requests == 0 || args.concurrency == 0 {
        return Err(BenchError::Usage("-n and -c must be at least 1".into()));
    }
    if !(args.startup_timeout.is_finite() && args.startup_timeout > 0.0) {
        return Err(BenchError::Usage(
            "--startup-timeout must be positive".into(),
        ));
    }
    let all = model_specs(args.processes, args.server_threads);
    let specs: Vec<ModelSpec> = if args.models.is_empty() {
        all
    } else {
        let mut v = Vec::new();
        for m in &args.models {
            match all.iter().find(|s| s.name == m.trim()) {
                Some(s) => v.push(s.clone()),
                None => {
                    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
                    return Err(BenchError::Usage(format!(
                        "unknown model {m:?} (known: {})",
                        names.join(", ")
                    )));
                }
            }
        }
        v
    };
    let startup = Duration::from_secs_f64(args.startup_timeout);
    let mut results = Vec::new();
    for spec in specs {
        let outcome = ServerProcess::spawn(bin, &args.app, &spec, &args.serve_args, startup)
            .and_then(|mut srv| {
                let url = format!("http://{}/", srv.addr);
                let mut cfg = BenchConfig::new(&url, args.requests, args.concurrency);
                cfg.keep_alive = args.keepalive;
                if let Some(t) = args.threads {
                    cfg.threads = t;
                }
                let r = run_config(&cfg);
                srv.stop();
                r
            });
        results.push(match outcome {
            Ok(report) => ModelResult {
                spec,
                report: Some(report),
                error: None,
            },
            Err(e) => ModelResult {
                spec,
                report: None,
                error: Some(e.to_string()),
            },
        });
    }
    let comparison = table(args, &results);
    Ok(ModelsComparison {
        results,
        comparison,
    })
}

/// Seed 003's table with forklift's figures.
pub fn table(args: &CompareModelsArgs, results: &[ModelResult]) -> Comparison {
    let n = args.requests;
    let scale = n as f64 / SEED_REQUESTS as f64;
    let mut notes = Vec::new();
    if n != SEED_REQUESTS {
        notes.push(format!(
            "Seed times were measured for {SEED_REQUESTS} requests; shown scaled to {n}."
        ));
    }
    let rows = results
        .iter()
        .map(|r| {
            let extra = match &r.report {
                Some(rep) => vec![
                    fmt_figure(rep.requests_per_second),
                    format!("{:.3}", rep.percentile_ms(50.0)),
                    format!("{:.3}", rep.percentile_ms(99.0)),
                    rep.failed_requests.to_string(),
                    rep.non_2xx_responses.to_string(),
                ],
                None => Vec::new(),
            };
            ComparisonRow {
                scenario: r.spec.label.clone(),
                seed: r.spec.seed_seconds.map(|s| s * scale),
                ours: r.report.as_ref().map(|rep| rep.time_taken_s),
                extra,
                note: r.error.as_ref().map(|e| first_line(e)),
            }
        })
        .collect();
    if let Some(best) = results
        .iter()
        .filter_map(|r| Some((r, r.report.as_ref()?)))
        .filter(|(_, rep)| rep.failed_requests == 0)
        .max_by(|a, b| a.1.requests_per_second.total_cmp(&b.1.requests_per_second))
    {
        notes.push(format!(
            "Best for {}: {} ({} req/s).",
            args.app,
            best.0.spec.label,
            fmt_figure(best.1.requests_per_second)
        ));
    }
    let busy: Vec<&str> = results
        .iter()
        .filter(|r| {
            r.report
                .as_ref()
                .is_some_and(|rep| rep.client_cpu.bottleneck)
        })
        .map(|r| r.spec.label.as_str())
        .collect();
    if !busy.is_empty() {
        notes.push(format!(
            "Warning: the load generator was nearly always on CPU for {}: those figures may be \
             its limit (try --threads).",
            busy.join(", ")
        ));
    }
    for r in results {
        if let Some(e) = &r.error {
            notes.push(format!("{}: {e}", r.spec.label));
        }
    }
    let mode = if args.keepalive {
        "-k"
    } else {
        "--no-keepalive"
    };
    Comparison {
        title: format!("Seed 003: concurrency models, time taken for {n} requests"),
        setting: format!(
            "forklift bench -n {n} -c {} {mode} against `forklift serve {}` under each model \
             (seed: ab -n {SEED_REQUESTS} -c 8, Connection: close, Python servers)",
            args.concurrency, args.app
        ),
        metric: "time".into(),
        unit: "s".into(),
        higher_is_better: false,
        extra_columns: vec![
            "req/s".into(),
            "p50 ms".into(),
            "p99 ms".into(),
            "failed".into(),
            "non-2xx".into(),
        ],
        rows,
        notes,
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// The whole `forklift compare models` command: measures, prints the table, writes
/// `OUT/models.{svg,html,json}`. Returns the exit code (1 when no model could be measured).
pub fn run_compare_models(args: &CompareModelsArgs) -> Result<i32, BenchError> {
    let bin = match &args.forklift_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(BenchError::Io)?,
    };
    let mc = compare_models(args, &bin)?;
    print!("{}", mc.comparison.to_text());
    let files = mc
        .comparison
        .write_files(&args.out, "models")
        .map_err(|e| BenchError::WriteFile(args.out.clone(), e))?;
    for f in files {
        println!("wrote {}", f.display());
    }
    let any = mc.results.iter().any(|r| r.report.is_some());
    Ok(if any { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banners() {
        assert_eq!(
            parse_banner("forklift 0.1: listening on http://127.0.0.1:4321 (model epoll)"),
            Some("127.0.0.1:4321".parse().unwrap())
        );
        assert_eq!(
            parse_banner("listening on http://[::1]:80/"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_banner("listening on unix:/tmp/x"), None);
        assert_eq!(parse_banner("hello"), None);
    }

    #[test]
    fn apps() {
        assert_eq!(app_args("builtin:hello"), ["builtin:hello"]);
        assert_eq!(app_args("myapp.py"), ["--wsgi-file", "myapp.py"]);
        assert_eq!(app_args("pkg.wsgi:app"), ["--module", "pkg.wsgi:app"]);
    }

    #[test]
    fn specs() {
        let s = model_specs(4, 2);
        let names: Vec<&str> = s.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["linear", "prefork", "threads", "epoll", "async"]);
        assert_eq!(s[1].serve_args, ["--model", "linear", "--processes", "4"]);
        assert_eq!(s[2].serve_args, ["--model", "threads", "--threads", "2"]);
        assert_eq!(s[2].seed_seconds, Some(16.3));
        assert_eq!(s[4].seed_seconds, None);
    }

    #[test]
    fn table_scales_seed_figures() {
        let mut args = CompareModelsArgs::defaults();
        args.requests = 1000;
        let results: Vec<ModelResult> = model_specs(8, 8)
            .into_iter()
            .map(|spec| ModelResult {
                spec,
                report: None,
                error: Some("boom\nmore".into()),
            })
            .collect();
        let t = table(&args, &results);
        assert_eq!(t.rows.len(), 5);
        assert!((t.rows[0].seed.unwrap() - 0.0523).abs() < 1e-12);
        assert_eq!(t.rows[0].note.as_deref(), Some("boom"));
        assert!(t.notes[0].contains("scaled"));
        assert!(t.to_text().contains("thread pool ×8"));
    }
}
