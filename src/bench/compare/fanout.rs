//! `forklift compare fanout`: the fan-out experiment. Starts `builtin:wait` as the
//! backend, serves `builtin:fanout` under the published configurations (sequential calls
//! under threads and processes, concurrent calls under threads and async), measures one
//! request and `hammer` runs of 20, 100 and 200 requests, and prints the reference table
//! with forklift's figures beside it, plus the client's overhead per call; SVG/HTML/JSON
//! files are written too.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::args::{seed_default, CommonArgs};
use super::overhead::{client_overhead, Overhead};
use super::runner::{first_line, select, start_server, Experiment, Outcome, ScenarioOutcome};
use crate::bench::chart::{Comparison, ComparisonRow};
use crate::bench::{hammer, BenchError, HammerArgs, Report};
use crate::fanout::{Mode, DEFAULT_DURATIONS, MAX_CALLS};

/// The most requests the published experiment's hammer.py keeps in flight.
pub const SEED_CONCURRENCY: usize = 50;

/// `forklift compare fanout [--requests 20,100,200] [-c 50] [--out DIR] ...`
#[derive(Debug, Clone, clap::Parser)]
#[command(mut_arg("concurrency", |a| {
    seed_default(a, "50", "Requests in flight at once during hammer runs (seed 002: 50)")
}))]
pub struct CompareFanoutArgs {
    /// Hammer runs: this many requests each (after the single request)
    #[arg(long, value_delimiter = ',', default_values_t = [20u64, 100, 200])]
    pub requests: Vec<u64>,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Also hammer this many requests all in flight at once on one process (0: skip)
    #[arg(long, default_value_t = 200)]
    pub all_in_flight: u64,
    /// Seconds of the backend calls each request makes (seed 002: 0.125,0.25,0.375,0.5)
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_DURATIONS.to_vec())]
    pub durations: Vec<f64>,
    /// Run the thread-per-request scenarios with every request count too (slow: 200
    /// sequential requests of 1.25 s on one thread take over four minutes); by default
    /// they run up to 20, as in the seed
    #[arg(long)]
    pub full: bool,
    /// Only these scenarios (comma-separated names; see the table)
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Calls made to measure the client's overhead per call (0: skip)
    #[arg(long, default_value_t = 5000)]
    pub overhead_calls: u64,
}

/// The published gevent app (monkey-patched `requests` calls in greenlets), served by
/// the gevent row: it needs gevent and requests in the active virtualenv
/// (`$VIRTUAL_ENV`).
pub const SEED_GEVENT_APP: &str = "tests/apps/seed002/app_gevent.py";

/// `app` as the server should be given it: a repository file is looked for from the
/// working directory, then in the source tree forklift was built from.
fn app_path(app: &str) -> String {
    if app.starts_with("builtin:") || Path::new(app).exists() {
        return app.to_string();
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(app);
    if built.exists() {
        built.display().to_string()
    } else {
        app.to_string()
    }
}

/// Requests hammered, by default, at configurations that hold a thread per request
/// (the published figures have 20 only; bigger runs take minutes there).
pub const SHORT_RUN: u64 = 20;

/// One server configuration of the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Short name (`--only` selects by it).
    pub name: &'static str,
    /// Short row label for the chart (the reference table's row it answers, in a few words).
    pub short: &'static str,
    /// What the published experiment ran and what forklift runs for it.
    pub label: &'static str,
    /// How `builtin:fanout` makes its calls; `None` for the reference (the backend
    /// hammered directly with the slowest call).
    pub mode: Option<Mode>,
    /// The app served: `builtin:fanout`, or a WSGI file of the published experiment
    /// (its calls fixed by the app, the backend's port given as `?backend=PORT`).
    pub app: &'static str,
    /// Arguments after `serve builtin:fanout --http 127.0.0.1:0`.
    pub serve_args: Vec<String>,
    /// The published figures: one request, then (requests, seconds) of its hammer runs.
    pub seed_one: Option<f64>,
    pub seed_runs: &'static [(u64, f64)],
    /// Whether the all-in-flight run applies (one-process concurrent configurations).
    pub all_in_flight: bool,
}

impl Scenario {
    /// True for the `threads` model, where a request holds a thread while its calls run.
    pub fn holds_a_thread(&self) -> bool {
        self.serve_args
            .windows(2)
            .any(|w| w[0] == "--model" && w[1] == "threads")
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The published configurations (figures from real uWSGI on this kind of machine, see
/// BENCHMARKING.md, and the published slides for gevent's 100 and 200), then forklift's
/// own.
pub fn scenarios() -> Vec<Scenario> {
    use Mode::{Concurrent, Sequential};
    let s = |name, short, label, mode, serve: &[&str], one, runs, all| Scenario {
        name,
        short,
        label,
        mode,
        app: "builtin:fanout",
        serve_args: args(serve),
        seed_one: one,
        seed_runs: runs,
        all_in_flight: all,
    };
    vec![
        s(
            "sync-1p",
            "sync 1p",
            "sync, 1 process → sequential calls, threads ×1",
            Some(Sequential),
            &["--model", "threads", "--threads", "1"],
            Some(1.28),
            &[(20, 25.3)],
            false,
        ),
        s(
            "sync-4p",
            "sync 4p",
            "sync, 4 processes → sequential, 4 processes × threads ×1",
            Some(Sequential),
            &["--model", "threads", "--threads", "1", "--processes", "4"],
            Some(1.27),
            &[(20, 6.37)],
            false,
        ),
        s(
            "sync-4t",
            "sync 4t",
            "sync, 4 threads → sequential, threads ×4",
            Some(Sequential),
            &["--model", "threads", "--threads", "4"],
            Some(1.28),
            &[(20, 6.39)],
            false,
        ),
        s(
            "sync-2x2",
            "sync 2p×2t",
            "sync, 2 processes × 2 threads → sequential, same",
            Some(Sequential),
            &["--model", "threads", "--threads", "2", "--processes", "2"],
            Some(1.27),
            &[(20, 6.37)],
            false,
        ),
        s(
            "asyncio-2p",
            "asyncio 2p",
            "asyncio, 2 processes → concurrent, 2 processes × threads ×1",
            Some(Concurrent),
            &["--model", "threads", "--threads", "1", "--processes", "2"],
            Some(0.52),
            &[(20, 5.08)],
            false,
        ),
        s(
            "asyncio-2x2",
            "asyncio 2p×2t",
            "asyncio, 2 processes × 2 threads → concurrent, same",
            Some(Concurrent),
            &["--model", "threads", "--threads", "2", "--processes", "2"],
            Some(0.52),
            &[(20, 2.57)],
            false,
        ),
        s(
            "gevent-2p",
            "gevent 2p",
            "gevent = 50, 2 processes → concurrent, async cores 50 × 2 processes",
            Some(Concurrent),
            &["--model", "async", "--cores", "50", "--processes", "2"],
            Some(0.52),
            &[(20, 0.59), (100, 1.373), (200, 2.546)],
            false,
        ),
        Scenario {
            app: SEED_GEVENT_APP,
            ..s(
                "gevent-app-2p",
                "gevent app 2p",
                "gevent = 50, 2 processes → the published app_gevent.py under --gevent 50, 2 processes",
                Some(Concurrent),
                &["--gevent", "50", "--processes", "2"],
                Some(0.539),
                &[(20, 0.59), (100, 1.373), (200, 2.546)],
                false,
            )
        },
        s(
            "async-1p",
            "async 1p",
            "forklift: concurrent calls, async, 1 process",
            Some(Concurrent),
            &["--model", "async"],
            None,
            &[],
            true,
        ),
        s(
            "async-seq-1p",
            "async 1p seq",
            "forklift: sequential calls, async, 1 process",
            Some(Sequential),
            &["--model", "async"],
            None,
            &[],
            false,
        ),
        s(
            "epoll-1p",
            "epoll 1p",
            "forklift: concurrent calls, epoll, 1 process",
            Some(Concurrent),
            &["--model", "epoll"],
            None,
            &[],
            true,
        ),
        s(
            "reference",
            "backend",
            "reference: builtin:wait alone, with the slowest call's duration",
            None,
            &[],
            None,
            &[],
            true,
        ),
    ]
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub scenario: String,
    pub short: String,
    pub label: String,
    /// "1 req", "N req" (at the run's concurrency) or "N req cC" (C in flight).
    pub load: String,
    pub seed: Option<f64>,
    pub seconds: Option<f64>,
    pub failed: u64,
    pub non_2xx: u64,
    pub error: Option<String>,
}

/// Everything `compare fanout` measured.
#[derive(Debug, Clone)]
pub struct FanoutComparison {
    pub measurements: Vec<Measurement>,
    pub overhead: Vec<Overhead>,
    pub comparison: Comparison,
}

/// Runs the experiment with the forklift binary at `bin`. Prints progress to stderr only.
pub fn compare_fanout(
    args: &CompareFanoutArgs,
    bin: &Path,
) -> Result<FanoutComparison, BenchError> {
    validate(args)?;
    let chosen = select(&scenarios(), &args.only, |s| s.name, "scenario")?;
    let backend = start_server(
        &args.common,
        bin,
        "builtin:wait",
        "backend",
        &self::args(&["--model", "async"]),
        &[],
    )?;
    let durations = args
        .durations
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let slowest = args.durations.iter().cloned().fold(0.0, f64::max);
    let mut measurements = Vec::new();
    for sc in &chosen {
        eprintln!("compare fanout: {} ...", sc.name);
        let server = match sc.mode {
            None => None,
            Some(_) => match start_server(
                &args.common,
                bin,
                &app_path(sc.app),
                sc.name,
                &sc.serve_args,
                &[],
            ) {
                Ok(s) => Some(s),
                Err(e) => {
                    measurements.push(failed(sc, "1 req", sc.seed_one, e.to_string()));
                    continue;
                }
            },
        };
        let (addr, path) = match (&server, sc.mode) {
            (Some(s), Some(_)) if sc.app != "builtin:fanout" => {
                (s.addr, format!("/?backend={}", backend.addr.port()))
            }
            (Some(s), Some(mode)) => (
                s.addr,
                format!(
                    "/?backend=http://{}&durations={durations}&mode={}",
                    backend.addr,
                    mode.name()
                ),
            ),
            _ => (backend.addr, format!("/?duration={slowest}")),
        };
        measurements.push(match one_request(addr, &path) {
            Ok(secs) => Measurement {
                scenario: sc.name.into(),
                short: sc.short.into(),
                label: sc.label.into(),
                load: "1 req".into(),
                seed: sc.seed_one,
                seconds: Some(secs),
                failed: 0,
                non_2xx: 0,
                error: None,
            },
            Err(e) => failed(sc, "1 req", sc.seed_one, e),
        });
        let mut loads: Vec<(u64, usize)> = args
            .requests
            .iter()
            .filter(|&&n| args.full || !sc.holds_a_thread() || n <= SHORT_RUN)
            .map(|&n| (n, args.common.concurrency))
            .collect();
        if sc.all_in_flight && args.all_in_flight > 0 {
            loads.push((args.all_in_flight, args.all_in_flight as usize));
        }
        for (n, c) in loads {
            let load = if c == args.common.concurrency {
                format!("{n} req")
            } else {
                format!("{n} req c{c}")
            };
            let seed = if c == args.common.concurrency {
                sc.seed_runs
                    .iter()
                    .find(|(sn, _)| *sn == n)
                    .map(|(_, s)| *s)
            } else {
                None
            };
            let url = format!("http://{addr}{path}");
            measurements.push(match hammer_once(&url, n, c) {
                Ok(r) => Measurement {
                    scenario: sc.name.into(),
                    short: sc.short.into(),
                    label: sc.label.into(),
                    load,
                    seed,
                    seconds: Some(r.time_taken_s),
                    failed: r.failed_requests,
                    non_2xx: r.non_2xx_responses,
                    error: None,
                },
                Err(e) => failed(sc, &load, seed, e.to_string()),
            });
        }
        drop(server);
    }
    drop(backend);
    let overhead = if args.overhead_calls > 0 {
        eprintln!("compare fanout: client overhead ...");
        let hello = start_server(
            &args.common,
            bin,
            "builtin:hello",
            "hello",
            &self::args(&["--model", "epoll"]),
            &[],
        )?;
        client_overhead(&format!("http://{}/", hello.addr), args.overhead_calls, 100)
            .map_err(BenchError::Io)?
    } else {
        Vec::new()
    };
    let comparison = table(args, &measurements, &overhead);
    Ok(FanoutComparison {
        measurements,
        overhead,
        comparison,
    })
}

fn validate(args: &CompareFanoutArgs) -> Result<(), BenchError> {
    args.common.validate()?;
    if args.requests.contains(&0) {
        return Err(BenchError::Usage("--requests must be at least 1".into()));
    }
    if args.durations.is_empty()
        || args.durations.len() > MAX_CALLS
        || args.durations.iter().any(|d| !(d.is_finite() && *d >= 0.0))
    {
        return Err(BenchError::Usage(format!(
            "--durations: 1 to {MAX_CALLS} non-negative numbers of seconds"
        )));
    }
    Ok(())
}

fn failed(sc: &Scenario, load: &str, seed: Option<f64>, error: String) -> Measurement {
    Measurement {
        scenario: sc.name.into(),
        short: sc.short.into(),
        label: sc.label.into(),
        load: load.into(),
        seed,
        seconds: None,
        failed: 0,
        non_2xx: 0,
        error: Some(error),
    }
}

fn hammer_once(url: &str, n: u64, c: usize) -> Result<Report, BenchError> {
    let args = HammerArgs {
        port: 0,
        host: String::new(),
        path: String::new(),
        url: Some(url.to_owned()),
        nb_requests: n,
        max_concurrency: c,
        timeout: 120.0,
    };
    Ok(hammer(&args)?.report)
}

/// One GET on a fresh connection. The figure is the app's own "This call lasted X
/// seconds" when it says so (the published figures are that line), else the wall time.
fn one_request(addr: SocketAddr, path: &str) -> Result<f64, String> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: compare\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).map_err(|e| e.to_string())?;
    let mut rest = String::new();
    r.read_to_string(&mut rest).map_err(|e| e.to_string())?;
    let wall = start.elapsed().as_secs_f64();
    if !status.starts_with("HTTP/1.1 200") {
        let body = rest.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        return Err(format!("{}: {body}", status.trim()));
    }
    Ok(rest
        .split("This call lasted ")
        .nth(1)
        .or_else(|| rest.split("This lasted ").nth(1))
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(wall))
}

/// The reference table with forklift's figures, and the overhead lines as notes.
pub fn table(args: &CompareFanoutArgs, ms: &[Measurement], overhead: &[Overhead]) -> Comparison {
    let rows = ms
        .iter()
        .map(|m| ComparisonRow {
            scenario: format!("{} · {}", m.short, m.load),
            seed: m.seed,
            ours: m.seconds,
            extra: vec![
                m.label.clone(),
                m.scenario.clone(),
                m.failed.to_string(),
                m.non_2xx.to_string(),
            ],
            note: m.error.as_deref().map(|e| first_line(e).to_owned()),
        })
        .collect();
    let durations = args
        .durations
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let sum: f64 = args.durations.iter().sum();
    let slowest = args.durations.iter().cloned().fold(0.0, f64::max);
    let mut notes = vec![
        format!(
            "Each request calls the backend {} times ({durations} s): {sum:.3} s one after \
             another, {slowest:.3} s at best concurrently.",
            args.durations.len()
        ),
        "Seed figures: real uWSGI on this kind of machine (BENCHMARKING.md); gevent's 100 and \
         200 from seed 002's slides."
            .to_string(),
    ];
    if !args.full {
        notes.push(format!(
            "Scenarios on the threads model ran up to {SHORT_RUN} requests, as in the seed (--full for all)."
        ));
    }
    for o in overhead {
        notes.push(format!("Client overhead, {}", o.to_line()));
    }
    for m in ms {
        if let Some(e) = &m.error {
            notes.push(format!("{} · {}: {e}", m.scenario, m.load));
        }
    }
    Comparison {
        title: "Seed 002: fan-out to backend services, time taken".into(),
        setting: format!(
            "`forklift serve builtin:fanout` under each configuration, backend `forklift serve \
             builtin:wait --model async`; one request (the app's own figure), then `forklift \
             hammer` of N requests (\"N req\") with at most {} in flight, or C (\"cC\"); seed: \
             hammer.py against uWSGI apps",
            args.common.concurrency
        ),
        metric: "time".into(),
        unit: "s".into(),
        higher_is_better: false,
        extra_columns: vec![
            "seed's app → forklift".into(),
            "--only".into(),
            "failed".into(),
            "non-2xx".into(),
        ],
        rows,
        notes,
    }
}

impl Experiment for CompareFanoutArgs {
    const NAME: &'static str = "fanout";
    type Measured = FanoutComparison;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn measure(&self, bin: &Path) -> Result<FanoutComparison, BenchError> {
        compare_fanout(self, bin)
    }

    /// One row per scenario and load.
    fn outcome(&self, fc: &FanoutComparison) -> Outcome {
        Outcome {
            comparison: fc.comparison.clone(),
            scenarios: fc
                .measurements
                .iter()
                .map(|m| ScenarioOutcome {
                    label: format!("{} · {}", m.scenario, m.load),
                    measured: m.seconds.is_some(),
                    error: m.error.clone(),
                })
                .collect(),
            failed: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> CompareFanoutArgs {
        CompareFanoutArgs::parse_from(std::iter::once(&"fanout").chain(args))
    }

    #[test]
    fn defaults_come_from_the_command_line() {
        let a = parse(&[]);
        assert_eq!(a.requests, [20, 100, 200]);
        assert_eq!(a.common.concurrency, SEED_CONCURRENCY);
        assert_eq!(a.durations, DEFAULT_DURATIONS);
        assert_eq!((a.all_in_flight, a.overhead_calls), (200, 5000));
        assert_eq!(a.common.startup_timeout, 30.0);
    }

    #[test]
    fn scenario_names_are_unique_and_seed_rows_present() {
        let all = scenarios();
        let mut names: Vec<_> = all.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert_eq!(all.iter().filter(|s| s.seed_one.is_some()).count(), 8);
    }

    #[test]
    fn table_puts_seed_beside_ours() {
        let m = Measurement {
            scenario: "sync-1p".into(),
            short: "sync 1p".into(),
            label: "sync, 1 process".into(),
            load: "20 req".into(),
            seed: Some(25.3),
            seconds: Some(25.0),
            failed: 0,
            non_2xx: 0,
            error: None,
        };
        let t = table(&parse(&[]), &[m], &[]);
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.rows[0].extra.len(), t.extra_columns.len());
        let text = t.to_text();
        assert!(
            text.contains("25.30 s") && text.contains("25.00 s"),
            "{text}"
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let mut no_durations = parse(&[]);
        no_durations.durations.clear();
        let bad = [
            parse(&["-c", "0"]),
            parse(&["--requests", "3,0"]),
            parse(&["--durations=-1"]),
            no_durations,
        ];
        for a in bad {
            assert!(matches!(validate(&a), Err(BenchError::Usage(_))));
        }
    }
}
