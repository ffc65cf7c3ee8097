//! `forklift compare offload`: the non-blocking request handling experiment.
//! `forklift serve builtin:slowlog` is started under each offload strategy, loaded like
//! `ab -n 100 -c 10`, and the reference table is printed with forklift's figures beside it,
//! plus how long until every task had run and how many were lost (counted in slowlog's
//! log file), and an SVG/HTML chart like `compare models`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::args::{seed_default, CommonArgs, LoadArgs};
use super::runner::{first_line, select, start_server, Experiment, Outcome, ScenarioOutcome};
use super::server::ServerProcess;
use crate::app::slowlog::{count_records, done_file};
use crate::bench::chart::{fmt_figure, Comparison, ComparisonRow};
use crate::bench::{run_config, BenchError, Report};

/// `forklift compare offload [-n N] [-c C] [--task-seconds S] [--strategies …]`
#[derive(Debug, Clone, clap::Parser)]
#[command(
    mut_arg("requests", |a| seed_default(a, "1000", "Requests per strategy (seed 000: ab -n 100)")),
    mut_arg("concurrency", |a| seed_default(a, "10", "Requests in flight at once (seed 000: -c 10)")),
    mut_arg("keepalive", |a| a.help("Keep connections alive (seed 000's ab used a connection per request)")),
    mut_arg("out", |a| a.help("Directory for the SVG chart, HTML report, JSON, and the servers' work files")),
)]
pub struct CompareOffloadArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Seconds of slow work per request (seed 000: time.sleep(1))
    #[arg(long, default_value_t = 1.0)]
    pub task_seconds: f64,
    /// Requests for `inline`, where each one waits for its task [default: 10 × -c]
    #[arg(long)]
    pub inline_requests: Option<u64>,
    /// Rounds of -n requests per scenario, on the same server after a warm-up; the
    /// scenarios take turns round by round, and the median round is reported (`inline`
    /// runs one round)
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
    /// Only these scenarios (comma-separated: none,inline,loop,thread,pool,spool,redis)
    #[arg(long, value_delimiter = ',')]
    pub strategies: Vec<String>,
    /// Server model (`forklift serve --model`)
    #[arg(long, default_value = "epoll")]
    pub model: String,
    /// Server worker processes (with more than one, `loop` runs one shared host)
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// --offload-workers for the server (pool threads; blocking tasks of loop/spool)
    #[arg(long, default_value_t = 100)]
    pub offload_workers: usize,
    /// --offload-queue for the server [default: room for every task of the run at
    /// once, so the strategy is measured rather than its bound]
    #[arg(long)]
    pub offload_queue: Option<usize>,
    /// Seconds to wait, after the load, for every task to have run
    #[arg(long, default_value_t = 300.0)]
    pub finish_timeout: f64,
    /// The `redis` row's `redis-server --appendfsync`: `everysec` (Redis's default: an
    /// acknowledged task is in the append-only file, synced within a second) or
    /// `always` (synced before Redis answers)
    #[arg(long, default_value = "everysec", value_parser = ["everysec", "always"])]
    pub redis_appendfsync: String,
}

impl CompareOffloadArgs {
    /// The server's `--offload-queue`: as given, or twice the tasks of a whole run
    /// (warm-up and every round; with 1 s tasks they are all in flight at once), at
    /// least the server's default.
    pub fn queue(&self) -> usize {
        self.offload_queue.unwrap_or_else(|| {
            let run = (self.rounds.max(1) as u64 + 1) * self.load.requests;
            (2 * run).clamp(4096, 1_000_000) as usize
        })
    }
}

/// One scenario of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Short name (`--strategies` selects by it).
    pub name: &'static str,
    /// Row label, as in the reference table.
    pub label: &'static str,
    /// The published req/s, where the reference table has this column.
    pub seed_rps: Option<f64>,
    /// `--offload` value.
    pub strategy: &'static str,
    /// Whether the scenario does the slow work (no: "no handling").
    pub slow: bool,
}

/// The reference table's columns, then the strategies it did not have.
pub const SCENARIOS: [Scenario; 7] = [
    Scenario {
        name: "none",
        label: "no slow work",
        seed_rps: Some(10_000.0),
        strategy: "inline",
        slow: false,
    },
    Scenario {
        name: "inline",
        label: "inline (sync)",
        seed_rps: Some(1.0),
        strategy: "inline",
        slow: true,
    },
    Scenario {
        name: "loop",
        label: "loop (async epoll)",
        seed_rps: Some(12_000.0),
        strategy: "loop",
        slow: true,
    },
    Scenario {
        name: "thread",
        label: "thread (async threads)",
        seed_rps: Some(3_500.0),
        strategy: "thread",
        slow: true,
    },
    Scenario {
        name: "pool",
        label: "pool",
        seed_rps: None,
        strategy: "pool",
        slow: true,
    },
    Scenario {
        name: "spool",
        label: "spool (durable)",
        seed_rps: None,
        strategy: "spool",
        slow: true,
    },
    Scenario {
        name: "redis",
        label: "redis (durable, shared)",
        seed_rps: None,
        strategy: "redis",
        slow: true,
    },
];

/// Tasks the `redis` scenario's worker runs at once (`--offload-workers`, at most
/// 1024): slowlog's task waits without a thread, and a round's tasks (`-n`, 1000 by
/// default) then all wait at once, as under the other strategies.
const REDIS_TASKS_AT_ONCE: usize = 1024;

/// The `redis` scenario's `forklift worker`, which runs the tasks the server (started
/// with `--no-run-tasks`) submits; stopped (SIGTERM, then SIGKILL) when dropped.
struct RedisWorker(std::process::Child);

impl RedisWorker {
    fn start(
        bin: &Path,
        url: &str,
        log: &Path,
        task_seconds: f64,
        startup: Duration,
    ) -> Result<RedisWorker, String> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin)
            .args(["worker", "builtin:slowlog", "--redis-url", url])
            .args(["--task-seconds", &task_seconds.to_string()])
            .args(["--offload-workers", &REDIS_TASKS_AT_ONCE.to_string()])
            .arg("--slowlog-file")
            .arg(log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start forklift worker: {e}"))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let worker = RedisWorker(child);
        let deadline = Instant::now() + startup;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("running queue") => return Ok(worker),
                Ok(_) => {}
                Err(_) => return Err("forklift worker did not start".into()),
            }
        }
    }
}

impl Drop for RedisWorker {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `redis-server` of the `redis` scenario: its own port and directory, stopped
/// when dropped. `appendonly yes`, by default with Redis's default `appendfsync
/// everysec`: an acknowledged task was written to the append-only file before the
/// answer (it survives Redis being killed), and reaches the disk within a second (a
/// machine crash may lose that second; `--redis-appendfsync always` closes it at the
/// cost of a sync per event-loop turn, see docs/PERFORMANCE.md).
struct RedisServer {
    child: std::process::Child,
    url: String,
}

impl RedisServer {
    fn start(dir: &Path, appendfsync: &str, startup: Duration) -> Result<RedisServer, String> {
        let bin = std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("redis-server"))
                    .find(|f| f.is_file())
            })
            .unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"));
        if !bin.is_file() {
            return Err("redis-server not found on PATH: install it to measure `redis`".into());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for redis-server: {e}"))?
            .port();
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let child = std::process::Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", appendfsync])
            .args(["--save", ""])
            .arg("--dir")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        let deadline = Instant::now() + startup;
        loop {
            let ping = redis::Client::open(server.url.as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            match ping {
                Ok(_) => return Ok(server),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("redis-server did not answer: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct OffloadResult {
    pub scenario: Scenario,
    /// Requests per round.
    pub requests: u64,
    /// The median round's report (by requests per second).
    pub report: Option<Report>,
    /// Requests per second of every round, in order.
    pub rounds_rps: Vec<f64>,
    /// Tasks the server accepted (2xx answers), warm-up included.
    pub expected_tasks: u64,
    /// Tasks recorded as finished once the server stopped.
    pub logged_tasks: u64,
    /// The slowest round's time from its last response until every task it submitted
    /// had run (`None`: some never did within `--finish-timeout`).
    pub all_done_s: Option<f64>,
    pub error: Option<String>,
}

impl OffloadResult {
    pub fn lost(&self) -> u64 {
        self.expected_tasks.saturating_sub(self.logged_tasks)
    }
}

/// Measures every selected scenario with the forklift binary at `bin`.
pub fn compare_offload(
    args: &CompareOffloadArgs,
    bin: &Path,
) -> Result<Vec<OffloadResult>, BenchError> {
    args.load.validate()?;
    args.common.validate()?;
    let valid = args.finish_timeout.is_finite()
        && args.finish_timeout > 0.0
        && args.task_seconds.is_finite()
        && args.task_seconds >= 0.0;
    if !valid {
        return Err(BenchError::Usage(
            "--task-seconds and --finish-timeout must be positive".into(),
        ));
    }
    let chosen = select(&SCENARIOS, &args.strategies, |s| s.name, "scenario")?;
    let work = args.common.out.join("offload-work");
    // Every server runs from the start, and the rounds take turns (round 1 of each
    // scenario, then round 2 of each, ...): a slow spell of the machine then hits all
    // scenarios alike instead of one. Each round waits for its tasks to finish before
    // the next starts, so no scenario's slow work runs during another's round.
    let mut running: Vec<Running> = chosen
        .into_iter()
        .map(|sc| Running::start(args, bin, &work, sc))
        .collect();
    for r in &mut running {
        r.warm_up(args);
    }
    for round in 1..=args.rounds.max(1) {
        for r in &mut running {
            if round == 1 || !r.inline {
                r.round(args);
            }
        }
    }
    Ok(running.into_iter().map(Running::finish).collect())
}

/// A scenario's server while the comparison runs.
struct Running {
    result: OffloadResult,
    inline: bool,
    server: Option<ServerProcess>,
    url: String,
    done: PathBuf,
    socket: PathBuf,
    reports: Vec<Report>,
    /// The slowest round's wait for its tasks (`None` once one timed out).
    slowest: Option<f64>,
    finish: Duration,
    /// The `redis` scenario's worker and Redis, stopped after the forklift server
    /// (in that order: fields drop first to last).
    redis: Option<(RedisWorker, RedisServer)>,
}

impl Running {
    fn start(args: &CompareOffloadArgs, bin: &Path, work: &Path, sc: Scenario) -> Running {
        let inline = sc.strategy == "inline" && sc.slow;
        let requests = if inline {
            args.inline_requests
                .unwrap_or(10 * args.common.concurrency as u64)
                .min(args.load.requests)
        } else {
            args.load.requests
        };
        let dir = work.join(sc.name);
        let log = dir.join("slowlog.log");
        // Unix socket paths are short: keep it in the temp directory.
        let socket = std::env::temp_dir().join(format!(
            "forklift-compare-{}-{}.sock",
            std::process::id(),
            sc.name
        ));
        let mut run = Running {
            result: OffloadResult {
                scenario: sc.clone(),
                requests,
                report: None,
                rounds_rps: Vec::new(),
                expected_tasks: 0,
                logged_tasks: 0,
                all_done_s: None,
                error: None,
            },
            inline,
            server: None,
            url: String::new(),
            done: done_file(&log),
            socket: socket.clone(),
            reports: Vec::new(),
            slowest: Some(0.0),
            finish: Duration::from_secs_f64(args.finish_timeout),
            redis: None,
        };
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            run.result.error = Some(format!("cannot create {}: {e}", dir.display()));
            return run;
        }
        let task_seconds = if sc.slow { args.task_seconds } else { 0.0 };
        let s = |v: &str| v.to_string();
        let mut serve_args = vec![
            s("--model"),
            args.model.clone(),
            s("--processes"),
            args.processes.to_string(),
            s("--offload"),
            s(sc.strategy),
            s("--offload-workers"),
            args.offload_workers.to_string(),
            s("--offload-queue"),
            args.queue().to_string(),
            s("--task-seconds"),
            task_seconds.to_string(),
            s("--slowlog-file"),
            log.display().to_string(),
            s("--spool-dir"),
            dir.join("spool").display().to_string(),
            s("--offload-socket"),
            socket.display().to_string(),
        ];
        if sc.strategy == "redis" {
            let startup = Duration::from_secs_f64(args.common.startup_timeout);
            let started = RedisServer::start(&dir.join("redis"), &args.redis_appendfsync, startup)
                .and_then(|r| {
                    let w = RedisWorker::start(bin, &r.url, &log, task_seconds, startup)?;
                    Ok((w, r))
                });
            match started {
                Ok((w, r)) => {
                    serve_args.extend([s("--redis-url"), r.url.clone(), s("--no-run-tasks")]);
                    run.redis = Some((w, r));
                }
                Err(e) => {
                    run.result.error = Some(e);
                    return run;
                }
            }
        }
        match start_server(
            &args.common,
            bin,
            "builtin:slowlog",
            sc.name,
            &serve_args,
            &args.load.serve_args,
        ) {
            Ok(server) => {
                run.url = format!("http://{}/", server.addr);
                run.server = Some(server);
            }
            Err(e) => run.result.error = Some(e.to_string()),
        }
        run
    }

    /// Whether rounds can run (the server started, nothing failed yet).
    fn live(&self) -> bool {
        self.server.is_some() && self.result.error.is_none() && self.slowest.is_some()
    }

    /// Runs `n` requests and waits for their tasks; the report and the wait, or `None`
    /// after recording an error.
    fn load(&mut self, args: &CompareOffloadArgs, n: u64) -> Option<(Report, Option<f64>)> {
        let cfg = args
            .load
            .bench_config(&self.url, n, args.common.concurrency);
        let report = match run_config(&cfg) {
            Ok(r) => r,
            Err(e) => {
                self.result.error = Some(e.to_string());
                return None;
            }
        };
        self.result.expected_tasks += report
            .status_codes
            .iter()
            .filter(|s| (200..300).contains(&s.status))
            .map(|s| s.count)
            .sum::<u64>();
        // Waits until every accepted task is recorded; how long it took, or None.
        let t = Instant::now();
        let took = loop {
            if count_records(&self.done) >= self.result.expected_tasks {
                break Some(t.elapsed().as_secs_f64());
            }
            if t.elapsed() > self.finish {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Some((report, took))
    }

    /// The warm-up (not reported) opens the spool's files, starts the executors, and
    /// fills the page cache, so a round measures the steady state.
    fn warm_up(&mut self, args: &CompareOffloadArgs) {
        if self.inline || !self.live() {
            return;
        }
        if let Some((_, took)) = self.load(args, self.result.requests.min(100)) {
            if took.is_none() {
                self.slowest = None;
            }
        }
    }

    fn round(&mut self, args: &CompareOffloadArgs) {
        if !self.live() {
            return;
        }
        if let Some((report, took)) = self.load(args, self.result.requests) {
            self.slowest = match (self.slowest, took) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            self.reports.push(report);
        }
    }

    fn finish(mut self) -> OffloadResult {
        if let Some(mut server) = self.server.take() {
            server.stop();
        }
        // A loop host finishes its drain after the server's processes are gone.
        let deadline = Instant::now() + Duration::from_secs(15);
        while count_records(&self.done) < self.result.expected_tasks && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut result = self.result;
        result.logged_tasks = count_records(&self.done);
        let mut reports = self.reports;
        result.rounds_rps = reports.iter().map(|r| r.requests_per_second).collect();
        reports.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
        if !reports.is_empty() {
            result.all_done_s = self.slowest;
            result.report = Some(reports.swap_remove(reports.len() / 2));
        }
        let _ = std::fs::remove_file(&self.socket);
        let mut lock = self.socket.into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
        drop(self.redis);
        result
    }
}

/// The reference table with forklift's figures and the task columns.
pub fn table(args: &CompareOffloadArgs, results: &[OffloadResult]) -> Comparison {
    let rows = results
        .iter()
        .map(|r| {
            let extra = match &r.report {
                Some(rep) => vec![
                    r.requests.to_string(),
                    rounds_range(&r.rounds_rps),
                    match r.all_done_s {
                        Some(s) => format!("{s:.2}"),
                        None => format!("> {}", args.finish_timeout),
                    },
                    r.lost().to_string(),
                    r.logged_tasks.saturating_sub(r.expected_tasks).to_string(),
                    format!("{:.2}", rep.percentile_ms(99.0)),
                    rep.failed_requests.to_string(),
                    rep.non_2xx_responses.to_string(),
                ],
                None => Vec::new(),
            };
            ComparisonRow {
                scenario: r.scenario.label.to_string(),
                seed: r.scenario.seed_rps,
                ours: r.report.as_ref().map(|rep| rep.requests_per_second),
                extra,
                note: r.error.as_deref().map(|e| first_line(e).to_string()),
            }
        })
        .collect();
    let mut notes = vec![
        "Seed 000: Python 2 scripts, ab -n 100 -c 10, 1 s of slow work per request; \
         'no handling' skipped the work entirely."
            .to_string(),
        format!(
            "req/s: the median of {} rounds of -n requests per server, after a warm-up of \
             100 (rounds: slowest–fastest); the scenarios take turns round by round, and \
             each round waits for its tasks; inline runs one round.",
            args.rounds.max(1)
        ),
        "tasks done: seconds from a round's last response until every task it submitted \
         had finished (logged, waited, recorded in LOG.done), slowest round; lost = \
         accepted − finished (must be 0); dup = extra runs (at-least-once)."
            .to_string(),
    ];
    if let Some(r) = results
        .iter()
        .find(|r| r.scenario.name == "inline" && r.report.is_some())
    {
        notes.push(format!(
            "inline ran {} requests (each waits for its task); every other row ran {}.",
            r.requests, args.load.requests
        ));
    }
    if results.iter().any(|r| r.scenario.name == "redis") {
        notes.push(format!(
            "redis: the server only submits (--no-run-tasks) to its own redis-server \
             (appendonly yes, appendfsync {}); one `forklift worker` runs the tasks \
             ({REDIS_TASKS_AT_ONCE} at once).",
            args.redis_appendfsync
        ));
    }
    let lost: u64 = results.iter().map(OffloadResult::lost).sum();
    if results.iter().any(|r| r.report.is_some()) {
        notes.push(if lost == 0 {
            "No task was lost.".to_string()
        } else {
            format!("{lost} task(s) lost.")
        });
    }
    let none_rps = results
        .iter()
        .find(|r| r.scenario.name == "none")
        .and_then(|r| r.report.as_ref())
        .map(|r| r.requests_per_second);
    if let Some(none) = none_rps {
        let ratios: Vec<String> = results
            .iter()
            .filter(|r| r.scenario.slow && r.scenario.strategy != "inline")
            .filter_map(|r| {
                let rps = r.report.as_ref()?.requests_per_second;
                Some(format!(
                    "{} {:.2}×",
                    r.scenario.name,
                    rps / none.max(f64::MIN_POSITIVE)
                ))
            })
            .collect();
        if !ratios.is_empty() {
            notes.push(format!(
                "Throughput with slow work offloaded, against no slow work: {}.",
                ratios.join(", ")
            ));
        }
    }
    if let (Some(none), Some(best)) = (
        results
            .iter()
            .find(|r| r.scenario.name == "none")
            .and_then(|r| r.report.as_ref()),
        results
            .iter()
            .filter(|r| r.scenario.slow && r.scenario.strategy != "inline")
            .filter_map(|r| Some((r, r.report.as_ref()?)))
            .max_by(|a, b| a.1.requests_per_second.total_cmp(&b.1.requests_per_second)),
    ) {
        notes.push(format!(
            "Best offload: {} at {} req/s = {:.0}% of the same server with no slow work ({} req/s).",
            best.0.scenario.label,
            fmt_figure(best.1.requests_per_second),
            100.0 * best.1.requests_per_second / none.requests_per_second.max(f64::MIN_POSITIVE),
            fmt_figure(none.requests_per_second)
        ));
    }
    for r in results {
        if let Some(e) = &r.error {
            notes.push(format!("{}: {e}", r.scenario.label));
        }
    }
    let mode = if args.load.keepalive {
        "-k"
    } else {
        "--no-keepalive"
    };
    Comparison {
        title: "Seed 000: non-blocking request handling, requests per second".into(),
        setting: format!(
            "forklift bench -n {} -c {} {mode} against `forklift serve builtin:slowlog --model {} \
             --processes {} --offload S --offload-queue {} --task-seconds {}` (seed: ab -n 100 -c 10 against Python scripts)",
            args.load.requests, args.common.concurrency, args.model, args.processes, args.queue(), args.task_seconds
        ),
        metric: "req/s".into(),
        unit: "req/s".into(),
        higher_is_better: true,
        extra_columns: vec![
            "requests".into(),
            "rounds req/s".into(),
            "tasks done (s)".into(),
            "lost".into(),
            "dup".into(),
            "p99 ms".into(),
            "failed".into(),
            "non-2xx".into(),
        ],
        rows,
        notes,
    }
}

/// "slowest–fastest" requests per second of the rounds.
fn rounds_range(rps: &[f64]) -> String {
    let lo = rps.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rps.iter().copied().fold(0.0, f64::max);
    match rps.len() {
        0 => "—".into(),
        1 => fmt_figure(lo),
        _ => format!("{}–{}", fmt_figure(lo), fmt_figure(hi)),
    }
}

impl Experiment for CompareOffloadArgs {
    const NAME: &'static str = "offload";
    type Measured = Vec<OffloadResult>;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn measure(&self, bin: &Path) -> Result<Vec<OffloadResult>, BenchError> {
        compare_offload(self, bin)
    }

    /// A lost task fails the run even when every scenario was measured.
    fn outcome(&self, results: &Vec<OffloadResult>) -> Outcome {
        Outcome {
            comparison: table(self, results),
            scenarios: results
                .iter()
                .map(|r| ScenarioOutcome {
                    label: r.scenario.label.to_string(),
                    measured: r.report.is_some(),
                    error: r.error.clone(),
                })
                .collect(),
            failed: results.iter().any(|r| r.lost() > 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_come_from_the_command_line() {
        let a = CompareOffloadArgs::parse_from(["offload"]);
        assert_eq!((a.load.requests, a.common.concurrency), (1000, 10));
        assert_eq!((a.rounds, a.processes, a.offload_workers), (9, 1, 100));
        assert_eq!(a.model, "epoll");
        assert_eq!(a.common.out, PathBuf::from("forklift-compare"));
        assert_eq!(a.queue(), 20_000);
        assert_eq!(a.redis_appendfsync, "everysec");
    }

    #[test]
    fn redis_appendfsync_is_everysec_or_always() {
        let a = CompareOffloadArgs::parse_from(["offload", "--redis-appendfsync", "always"]);
        assert_eq!(a.redis_appendfsync, "always");
        assert!(
            CompareOffloadArgs::try_parse_from(["offload", "--redis-appendfsync", "no"]).is_err()
        );
    }

    #[test]
    fn scenarios_have_unique_names_and_seed_figures() {
        let mut names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        names.dedup();
        assert_eq!(names.len(), 7);
        let seeded = SCENARIOS.iter().filter(|s| s.seed_rps.is_some()).count();
        assert_eq!(seeded, 4, "the seed measured four columns");
    }

    #[test]
    fn unknown_scenario_is_a_usage_error() {
        let a = CompareOffloadArgs::parse_from(["offload", "--strategies", "warp"]);
        assert!(matches!(
            compare_offload(&a, Path::new("/nonexistent")),
            Err(BenchError::Usage(_))
        ));
    }

    #[test]
    fn a_failed_server_is_a_row_with_a_note() {
        let out = std::env::temp_dir().join(format!("forklift-cmp-unit-{}", std::process::id()));
        let a = CompareOffloadArgs::parse_from([
            "offload".as_ref(),
            "--strategies=loop".as_ref(),
            "--startup-timeout=2".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
        let results = compare_offload(&a, Path::new("/nonexistent/forklift")).unwrap();
        assert!(results[0].report.is_none() && results[0].error.is_some());
        let t = table(&a, &results).to_text();
        assert!(t.contains("loop (async epoll)"), "{t}");
        let _ = std::fs::remove_dir_all(&a.common.out);
    }
}
