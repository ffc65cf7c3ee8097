//! The flow every `compare` command follows: find the forklift binary, pick the
//! scenarios, start their servers, measure, print the table, and write the chart only
//! when something was measured (saying which scenarios were not).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::args::CommonArgs;
use super::server::ServerProcess;
use crate::bench::chart::Comparison;
use crate::bench::BenchError;

/// One `compare` command, as [`run`] drives it.
pub trait Experiment {
    /// `forklift compare NAME`; also the stem of the files `OUT/NAME.{svg,html,json}`.
    const NAME: &'static str;
    /// Everything a run measured.
    type Measured;
    fn common(&self) -> &CommonArgs;
    /// Measures every scenario with the forklift binary at `bin`. Prints nothing on
    /// stdout (progress on stderr at most).
    fn measure(&self, bin: &Path) -> Result<Self::Measured, BenchError>;
    /// The table and how each scenario fared.
    fn outcome(&self, measured: &Self::Measured) -> Outcome;
}

/// What a run came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub comparison: Comparison,
    pub scenarios: Vec<ScenarioOutcome>,
    /// Something beyond the scenarios went wrong (e.g. a task was lost): the command
    /// exits with 1 even though figures were measured.
    pub failed: bool,
}

/// Whether one row of the table got a figure, and why not.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioOutcome {
    pub label: String,
    pub measured: bool,
    pub error: Option<String>,
}

impl Outcome {
    /// The scenarios without a figure: label and the reason (possibly several lines,
    /// e.g. the end of the server's stderr).
    pub fn unmeasured(&self) -> Vec<(String, String)> {
        self.scenarios
            .iter()
            .filter(|s| !s.measured)
            .map(|s| {
                let why = s.error.as_deref().unwrap_or("no figure");
                (s.label.clone(), why.to_string())
            })
            .collect()
    }
}

/// The whole command: measures, prints the table, writes `OUT/NAME.{svg,html,json}`.
/// Exit code 1 when [`Outcome::failed`], else 0 (scenarios that were not measured are
/// listed after the files); an error, and no chart, when nothing was measured.
pub fn run<E: Experiment>(exp: &E) -> Result<i32, BenchError> {
    let bin = forklift_bin(exp.common())?;
    let measured = exp.measure(&bin)?;
    let outcome = exp.outcome(&measured);
    finish(
        E::NAME,
        &exp.common().out,
        &outcome,
        &mut std::io::stdout().lock(),
    )
}

/// Prints the table to `w`, then writes the chart files and names them, or returns
/// [`BenchError::NothingMeasured`] (no file written) when no scenario got a figure.
pub fn finish(
    name: &'static str,
    out: &Path,
    outcome: &Outcome,
    w: &mut dyn Write,
) -> Result<i32, BenchError> {
    write!(w, "{}", outcome.comparison.to_text()).map_err(BenchError::Io)?;
    let unmeasured = outcome.unmeasured();
    // One scenario per line; the further lines of its reason indented below it.
    let list = |items: &[(String, String)]| {
        items
            .iter()
            .map(|(label, why)| {
                let why: Vec<&str> = why
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                format!("  {label}: {}", why.join("\n      "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    if unmeasured.len() == outcome.scenarios.len() {
        w.flush().map_err(BenchError::Io)?;
        return Err(BenchError::NothingMeasured {
            command: name,
            failures: if unmeasured.is_empty() {
                "  (no scenario ran)".into()
            } else {
                list(&unmeasured)
            },
        });
    }
    let files = outcome
        .comparison
        .write_files(out, name)
        .map_err(|e| BenchError::WriteFile(out.to_path_buf(), e))?;
    for f in files {
        writeln!(w, "wrote {}", f.display()).map_err(BenchError::Io)?;
    }
    if !unmeasured.is_empty() {
        writeln!(
            w,
            "not measured ({} of {}):\n{}",
            unmeasured.len(),
            outcome.scenarios.len(),
            list(&unmeasured)
        )
        .map_err(BenchError::Io)?;
    }
    Ok(i32::from(outcome.failed))
}

/// `--forklift-bin`, or this executable.
fn forklift_bin(common: &CommonArgs) -> Result<PathBuf, BenchError> {
    match &common.forklift_bin {
        Some(b) => Ok(b.clone()),
        None => std::env::current_exe().map_err(BenchError::Io),
    }
}

/// Starts `forklift serve APP SERVE_ARGS EXTRA` (see [`ServerProcess::spawn`]), waiting
/// up to `--startup-timeout` for its banner.
pub fn start_server(
    common: &CommonArgs,
    bin: &Path,
    app: &str,
    name: &str,
    serve_args: &[String],
    extra: &[String],
) -> Result<ServerProcess, BenchError> {
    let startup = Duration::from_secs_f64(common.startup_timeout);
    ServerProcess::spawn(bin, app, name, serve_args, extra, startup)
}

/// The scenarios named in `only`, in its order (all of them when it is empty); a name
/// that is not one of them is a usage error listing the known `what`s.
pub fn select<T: Clone>(
    all: &[T],
    only: &[String],
    name: impl Fn(&T) -> &str,
    what: &str,
) -> Result<Vec<T>, BenchError> {
    if only.is_empty() {
        return Ok(all.to_vec());
    }
    only.iter()
        .map(|wanted| {
            all.iter()
                .find(|s| name(s) == wanted.trim())
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<&str> = all.iter().map(&name).collect();
                    BenchError::Usage(format!(
                        "unknown {what} {wanted:?} (known: {})",
                        known.join(", ")
                    ))
                })
        })
        .collect()
}

/// The first line of a (possibly multi-line) error.
pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::chart::ComparisonRow;

    fn outcome(measured: &[bool]) -> Outcome {
        let rows = measured
            .iter()
            .enumerate()
            .map(|(i, &m)| ComparisonRow {
                scenario: format!("s{i}"),
                seed: Some(1.0),
                ours: m.then_some(2.0),
                extra: Vec::new(),
                note: (!m).then(|| "failed: boom".to_string()),
            })
            .collect();
        Outcome {
            comparison: Comparison {
                title: "t".into(),
                setting: "s".into(),
                metric: "time".into(),
                unit: "s".into(),
                higher_is_better: false,
                extra_columns: Vec::new(),
                rows,
                notes: Vec::new(),
            },
            scenarios: measured
                .iter()
                .enumerate()
                .map(|(i, &m)| ScenarioOutcome {
                    label: format!("s{i}"),
                    measured: m,
                    error: (!m).then(|| format!("server s{i}: exited before listening\nmore")),
                })
                .collect(),
            failed: false,
        }
    }

    fn out_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("forklift-runner-{tag}-{}", std::process::id()))
    }

    #[test]
    fn nothing_measured_is_an_error_and_writes_no_chart() {
        let out = out_dir("none");
        let mut w = Vec::new();
        let e = finish("models", &out, &outcome(&[false, false]), &mut w).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BenchError::NothingMeasured { .. }));
        assert!(msg.contains("no chart"), "{msg}");
        let s0 = "\n  s0: server s0: exited before listening\n      more\n  s1: ";
        assert!(msg.contains(s0), "{msg}");
        let text = String::from_utf8(w).unwrap();
        assert!(!text.contains("wrote"), "{text}");
        assert!(!out.exists());
    }

    #[test]
    fn partly_measured_writes_the_chart_and_names_the_rest() {
        let out = out_dir("some");
        let mut w = Vec::new();
        let code = finish("models", &out, &outcome(&[true, false]), &mut w).unwrap();
        assert_eq!(code, 0);
        let text = String::from_utf8(w).unwrap();
        assert!(text.contains("wrote"), "{text}");
        assert!(
            text.contains(
                "not measured (1 of 2):\n  s1: server s1: exited before listening\n      more"
            ),
            "{text}"
        );
        assert!(out.join("models.svg").exists());
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn select_keeps_the_order_asked_and_rejects_unknown_names() {
        let all = ["a", "b", "c"];
        let pick = |only: &[&str]| {
            let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
            select(&all, &only, |s| s, "model")
        };
        assert_eq!(pick(&[]).unwrap(), all);
        assert_eq!(pick(&["c", " a"]).unwrap(), ["c", "a"]);
        let e = pick(&["z"]).unwrap_err().to_string();
        assert_eq!(e, "unknown model \"z\" (known: a, b, c)");
    }
}
