//! `forklift compare models`: starts `forklift serve` under each concurrency model as a
//! child process, loads it as the published experiment did (`ab -n 100000 -c 8`, a
//! connection per request), and prints the reference table with forklift's figures
//! beside it, plus SVG/HTML files.

use std::path::Path;

use super::args::{seed_default, CommonArgs, LoadArgs};
use super::runner::{first_line, select, start_server, Experiment, Outcome, ScenarioOutcome};
use crate::bench::chart::{fmt_figure, Comparison, ComparisonRow};
use crate::bench::{run_config, BenchError, Report};

/// Requests in each run of the published experiment (its figures are times for this many).
pub const SEED_REQUESTS: u64 = 100_000;

/// `forklift compare models [--app APP] [--requests N] [--concurrency C] [--out DIR]`
#[derive(Debug, Clone, clap::Parser)]
#[command(
    mut_arg("requests", |a| seed_default(a, "100000", "Requests per model")),
    mut_arg("concurrency", |a| seed_default(a, "8", "Requests in flight at once")),
    mut_arg("keepalive", |a| a.help("Keep connections alive (seed 003 used a connection per request)")),
    mut_arg("serve_args", |a| a.help("Extra argument for every `forklift serve` (repeatable, e.g. --serve-arg=--pythonpath=.)")),
)]
pub struct CompareModelsArgs {
    /// App to serve: builtin:NAME, a WSGI file (app.py) or a module (pkg.mod or pkg.mod:app)
    #[arg(long, default_value = "builtin:hello")]
    pub app: String,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Only these models (comma-separated: linear,prefork,threads,epoll,async)
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Worker processes of the prefork model (seed 003: 8)
    #[arg(long, default_value_t = 8)]
    pub processes: usize,
    /// Threads of the thread-pool model (seed 003: 8)
    #[arg(long = "server-threads", default_value_t = 8)]
    pub server_threads: usize,
}

/// One configuration of the server to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Short name (`--models` selects by it).
    pub name: String,
    /// Row label, as in the reference table.
    pub label: String,
    /// The published time for [`SEED_REQUESTS`] requests, when it measured this model.
    pub seed_seconds: Option<f64>,
    /// Arguments after `serve APP --http 127.0.0.1:0`.
    pub serve_args: Vec<String>,
}

/// The models of the reference table (and async, which it did not have).
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
/// `env!("CARGO_BIN_EXE_forklift")`), one server at a time. Prints nothing.
pub fn compare_models(
    args: &CompareModelsArgs,
    bin: &Path,
) -> Result<ModelsComparison, BenchError> {
    args.load.validate()?;
    args.common.validate()?;
    let all = model_specs(args.processes, args.server_threads);
    let specs = select(&all, &args.models, |s| &s.name, "model")?;
    let mut results = Vec::new();
    for spec in specs {
        let outcome = start_server(
            &args.common,
            bin,
            &args.app,
            &spec.name,
            &spec.serve_args,
            &args.load.serve_args,
        )
        .and_then(|mut srv| {
            let url = format!("http://{}/", srv.addr);
            let cfg = args
                .load
                .bench_config(&url, args.load.requests, args.common.concurrency);
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

/// The reference table with forklift's figures.
pub fn table(args: &CompareModelsArgs, results: &[ModelResult]) -> Comparison {
    let n = args.load.requests;
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
                note: r.error.as_deref().map(|e| first_line(e).to_string()),
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
    let mode = if args.load.keepalive {
        "-k"
    } else {
        "--no-keepalive"
    };
    Comparison {
        title: format!("Seed 003: concurrency models, time taken for {n} requests"),
        setting: format!(
            "forklift bench -n {n} -c {} {mode} against `forklift serve {}` under each model \
             (seed: ab -n {SEED_REQUESTS} -c 8, Connection: close, Python servers)",
            args.common.concurrency, args.app
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

impl Experiment for CompareModelsArgs {
    const NAME: &'static str = "models";
    type Measured = ModelsComparison;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn measure(&self, bin: &Path) -> Result<ModelsComparison, BenchError> {
        compare_models(self, bin)
    }

    fn outcome(&self, mc: &ModelsComparison) -> Outcome {
        Outcome {
            comparison: mc.comparison.clone(),
            scenarios: mc
                .results
                .iter()
                .map(|r| ScenarioOutcome {
                    label: r.spec.label.clone(),
                    measured: r.report.is_some(),
                    error: r.error.clone(),
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

    #[test]
    fn defaults_come_from_the_command_line() {
        let a = CompareModelsArgs::parse_from(["models"]);
        assert_eq!(a.load.requests, SEED_REQUESTS);
        assert_eq!(a.common.concurrency, 8);
        assert_eq!(a.app, "builtin:hello");
        assert!(!a.load.keepalive && a.models.is_empty());
        let a = CompareModelsArgs::parse_from(["models", "-n", "5", "-c", "2", "-k"]);
        assert_eq!((a.load.requests, a.common.concurrency), (5, 2));
        assert!(a.load.keepalive);
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
        let args = CompareModelsArgs::parse_from(["models", "-n", "1000"]);
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
