//! Operations, against the real binary: uWSGI's stats document (read raw, and by
//! `uwsgitop` in tmux), Prometheus metrics (parsed by prometheus-client's parser), the
//! dashboard (rendered by headless Chromium), worker recycling under every model, and
//! the access log's formats, file reopening and whole lines.
//!
//! A test that needs an outside tool (tmux, uwsgitop, chromium, prometheus-client)
//! skips when it is missing, unless `CI` is set: there it must be present.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use forklift::server::Model;
use serde_json::Value;

use crate::support::*;

/// A server started with stats and/or metrics on ephemeral ports, and the lines it
/// logged so far.
struct Ops {
    srv: Server,
    stats: Option<String>,
    metrics: Option<String>,
    lines: Vec<String>,
}

impl Ops {
    /// `forklift serve ARGS`; `--stats`/`--metrics` given as `127.0.0.1:0` are read back
    /// from the start-up lines.
    fn start(args: &[&str]) -> Ops {
        Ops::start_expecting(args, args.contains(&"--stats"), args.contains(&"--metrics"))
    }

    /// [`Ops::start`] for options that come from elsewhere (an ini file).
    fn start_expecting(args: &[&str], want_stats: bool, want_metrics: bool) -> Ops {
        let srv = Server::start(args);
        let mut ops = Ops {
            srv,
            stats: None,
            metrics: None,
            lines: Vec::new(),
        };
        while (want_stats && ops.stats.is_none()) || (want_metrics && ops.metrics.is_none()) {
            let line = ops.next_line();
            if let Some(rest) = line.strip_prefix("forklift: stats on ") {
                ops.stats = Some(rest.to_string());
            } else if let Some(rest) = line.strip_prefix("forklift: stats (HTTP) on http://") {
                ops.stats = Some(rest.trim_end_matches('/').to_string());
            } else if let Some(rest) = line.strip_prefix("forklift: metrics on http://") {
                ops.metrics = Some(rest.split('/').next().unwrap().to_string());
            }
        }
        ops
    }

    fn next_line(&mut self) -> String {
        let line = self
            .srv
            .log
            .recv_timeout(IO_GUARD)
            .expect("a log line from forklift");
        self.lines.push(line.clone());
        line
    }

    /// Waits for a logged line containing `needle` (already seen, or to come).
    fn wait_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.lines.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let line = self.next_line();
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn stats_doc(&self) -> Value {
        let mut s = TcpStream::connect(self.stats.as_deref().unwrap()).unwrap();
        s.set_read_timeout(Some(IO_GUARD)).unwrap();
        let mut buf = Vec::new();
        if let Err(e) = s.read_to_end(&mut buf) {
            let more: Vec<String> = self.srv.log.try_iter().collect();
            panic!(
                "reading the stats: {e}; the server logged {:?} {more:?}",
                self.lines
            );
        }
        serde_json::from_slice(&buf)
            .unwrap_or_else(|e| panic!("stats JSON: {e}: {}", String::from_utf8_lossy(&buf)))
    }

    fn metrics_get(&self, path: &str) -> Response {
        http_get(self.metrics.as_deref().unwrap(), path)
    }
}

fn http_get(addr: &str, path: &str) -> Response {
    let addr: SocketAddr = addr.parse().unwrap();
    request_bytes(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// `n` requests to `path`, each on a new connection, each answered 200.
fn send(srv: &Server, path: &str, n: usize) {
    for _ in 0..n {
        let r = srv.get(path);
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// One request that may meet a worker as it retires (a reset): whether it was
/// answered 200.
fn try_send(srv: &Server, path: &str) -> bool {
    let mut s = srv.connect();
    let sent = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    sent.is_ok()
        && read_response(&mut std::io::BufReader::new(s), false).is_ok_and(|r| r.status == 200)
}

/// A program the test needs: from the test virtualenv, else `PATH`. Missing: `None`
/// (the test skips), unless CI is set.
fn tool(name: &str) -> Option<PathBuf> {
    let venv =
        std::env::var_os("FORKLIFT_TEST_VENV").map(|v| PathBuf::from(v).join("bin").join(name));
    let found = venv.filter(|p| p.exists()).or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.exists())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is required in CI (see .ci/run and scripts/test)"
        );
        eprintln!("note: {name} not found; skipping");
    }
    found
}

/// The test venv's python, if it can import `module`.
fn python_with(module: &str) -> Option<PathBuf> {
    let py = tool("python3")?;
    let ok = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python module {module} is required in CI (scripts/test installs it)"
        );
        eprintln!("note: python module {module} not found; skipping");
        return None;
    }
    Some(py)
}

const SCHEMA_TOP: &[&str] = &[
    "version",
    "listen_queue",
    "listen_queue_errors",
    "load",
    "pid",
    "uid",
    "gid",
    "cwd",
    "sockets",
    "workers",
];
const SCHEMA_WORKER: &[&str] = &[
    "id",
    "pid",
    "accepting",
    "requests",
    "delta_requests",
    "exceptions",
    "harakiri_count",
    "signals",
    "status",
    "rss",
    "vsz",
    "running_time",
    "last_spawn",
    "respawn_count",
    "tx",
    "avg_rt",
    "apps",
    "cores",
];

fn stats_count_the_load(model: Model) {
    let ops = Ops::start(&[
        "builtin:hello",
        "--model",
        model.name(),
        "--processes",
        "2",
        "--stats",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    wait_for("two workers", || ops.srv.workers().len() == 2);
    send(&ops.srv, "/", 30);
    let doc = ops.stats_doc();
    for k in SCHEMA_TOP {
        assert!(doc.get(k).is_some(), "{model}: no {k} in {doc}");
    }
    assert_eq!(doc["pid"], ops.srv.pid());
    let workers = doc["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    let pids = ops.srv.workers();
    let mut total = 0;
    for w in workers {
        for k in SCHEMA_WORKER {
            assert!(w.get(k).is_some(), "{model}: no {k} in {w}");
        }
        assert!(pids.contains(&(w["pid"].as_i64().unwrap() as i32)), "{w}");
        assert_eq!(w["status"], "idle");
        assert_eq!(w["accepting"], 1);
        assert_eq!(w["requests"], w["delta_requests"]);
        assert!(w["rss"].as_u64().unwrap() > 0);
        let req = w["requests"].as_u64().unwrap();
        assert_eq!(w["tx"].as_u64().unwrap(), req * "Hello world".len() as u64);
        let cores = w["cores"].as_array().unwrap();
        assert!(!cores.is_empty());
        assert!(cores.iter().all(|c| c["in_request"] == 0));
        let core_sum: u64 = cores.iter().map(|c| c["requests"].as_u64().unwrap()).sum();
        assert_eq!(core_sum, req, "{model}: cores {w}");
        total += req;
    }
    assert_eq!(total, 30, "{model}: {doc}");
}

fn metrics_count_the_load(model: Model) {
    let Some(py) = python_with("prometheus_client") else {
        return;
    };
    let ops = Ops::start(&[
        "builtin:demo",
        "--model",
        model.name(),
        "--processes",
        "2",
        "--metrics",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    wait_for("two workers", || ops.srv.workers().len() == 2);
    send(&ops.srv, "/", 20);
    send(&ops.srv, "/file?bytes=1000", 5);
    let r = ops.metrics_get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let samples = prometheus_parse(&py, &r.text());
    let sum = |name: &str, filter: &dyn Fn(&HashMap<String, String>) -> bool| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| n == name && filter(l))
            .map(|(_, _, v)| v)
            .sum()
    };
    let all = &|_: &HashMap<String, String>| true;
    assert_eq!(sum("forklift_requests_total", all), 25.0, "{model}");
    assert_eq!(
        sum("forklift_requests_total", &|l| l["status"] == "2xx"),
        25.0
    );
    assert_eq!(sum("forklift_request_duration_seconds_count", all), 25.0);
    assert_eq!(
        sum("forklift_request_duration_seconds_bucket", &|l| l["le"]
            == "+Inf"),
        25.0
    );
    assert_eq!(
        sum("forklift_response_bytes_total", all),
        (20 * "Hello world".len() + 5 * 1000) as f64,
        "{model}"
    );
    assert_eq!(sum("forklift_worker_starts_total", all), 2.0);
    assert_eq!(sum("forklift_worker_respawns_total", all), 0.0);
    assert_eq!(sum("forklift_requests_in_flight", all), 0.0);
    for family in [
        "forklift_connections_open",
        "forklift_listen_queue",
        "forklift_gil_wait_seconds_total",
        "forklift_harakiri_kills_total",
        "forklift_worker_recycles_total",
        "forklift_offload_submitted_total",
        "forklift_offload_pending",
        "forklift_fanout_calls_total",
        "forklift_fanout_connections_opened_total",
    ] {
        assert!(
            samples.iter().any(|(n, _, _)| n == family),
            "{model}: no {family}"
        );
    }
}

/// The samples of a Prometheus text, as prometheus-client's parser reads them: (name,
/// labels, value).
fn prometheus_parse(py: &PathBuf, text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new(py)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser refused:\n{text}");
    let v: Vec<(String, HashMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v.is_empty());
    v
}

for_each_model! {
    stats_count_the_load;
    metrics_count_the_load;
}

#[test]
fn stats_over_http_and_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("forklift-ops-unix-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let sock = dir.join("stats.sock");
    let ops = Ops::start(&[
        "builtin:hello",
        "--stats",
        sock.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    send(&ops.srv, "/", 3);
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let doc: Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(doc["workers"][0]["requests"], 3);
    assert_eq!(doc["workers"][0]["pid"], ops.srv.pid());
    // The dashboard's document is the same one, over HTTP.
    let r = ops.metrics_get("/stats.json");
    let doc: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["workers"][0]["requests"], 3);
    let page = ops.metrics_get("/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<title>forklift</title>"));
    assert!(!page.text().contains("http://") && !page.text().contains("https://"));
    assert_eq!(ops.metrics_get("/nope").status, 404);
    drop(ops);
    let _ = std::fs::remove_dir_all(&dir);

    let ops = Ops::start(&[
        "builtin:hello",
        "--stats",
        "127.0.0.1:0",
        "--stats-http",
        "--disable-logging",
    ]);
    send(&ops.srv, "/", 2);
    let r = http_get(ops.stats.as_deref().unwrap(), "/");
    let doc: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["workers"][0]["requests"], 2);
}

#[test]
fn a_busy_stats_or_metrics_address_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for option in ["--stats", "--metrics"] {
        let out = Command::new(BIN)
            .args([
                "serve",
                "builtin:hello",
                "--http",
                "127.0.0.1:0",
                option,
                &addr,
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("already in use") && err.contains(&addr),
            "{err}"
        );
        assert!(!err.contains("listening"), "{err}");
    }
}

#[test]
fn clients_that_never_read_hold_up_nothing() {
    let ops = Ops::start(&[
        "builtin:hello",
        "--processes",
        "2",
        "--stats",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    // Connections that never send a request or read the answer.
    let idle: Vec<TcpStream> = (0..20)
        .flat_map(|_| {
            [
                TcpStream::connect(ops.stats.as_deref().unwrap()).unwrap(),
                TcpStream::connect(ops.metrics.as_deref().unwrap()).unwrap(),
            ]
        })
        .collect();
    send(&ops.srv, "/", 10);
    let doc = ops.stats_doc();
    let total: u64 = doc["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 10);
    assert_eq!(ops.metrics_get("/metrics").status, 200);
    let mut ops = ops;
    assert!(ops.srv.terminate().success());
    drop(idle);
}

#[test]
fn uwsgitop_shows_every_worker() {
    let (Some(tmux), Some(uwsgitop)) = (tool("tmux"), tool("uwsgitop")) else {
        return;
    };
    let ops = Ops::start(&[
        "builtin:hello",
        "--processes",
        "3",
        "--stats",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    wait_for("three workers", || ops.srv.workers().len() == 3);
    send(&ops.srv, "/", 45);
    let socket = format!("forklift-test-{}", std::process::id());
    let tmux_cmd = |args: &[&str]| {
        Command::new(&tmux)
            .args(["-L", &socket])
            .args(args)
            .env("TERM", "xterm")
            .output()
            .unwrap()
    };
    let top = format!("{} {}", uwsgitop.display(), ops.stats.as_deref().unwrap());
    let started = tmux_cmd(&["new-session", "-d", "-x", "200", "-y", "30", &top]);
    assert!(started.status.success(), "{started:?}");
    let mut screen = String::new();
    let deadline = Instant::now() + IO_GUARD;
    while Instant::now() < deadline {
        screen = String::from_utf8_lossy(&tmux_cmd(&["capture-pane", "-p"]).stdout).into_owned();
        if screen.contains("req: 45") && screen.contains("WID") {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    tmux_cmd(&["kill-server"]);
    assert!(screen.contains("req: 45"), "uwsgitop showed:\n{screen}");
    // One row per worker: WID % PID REQ ...; the REQ column adds up to the load.
    let pids = ops.srv.workers();
    let rows: Vec<Vec<&str>> = screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 4 && f[2].parse::<i32>().is_ok_and(|p| pids.contains(&p)))
        .collect();
    assert_eq!(rows.len(), 3, "uwsgitop showed:\n{screen}");
    let req: u64 = rows.iter().map(|f| f[3].parse::<u64>().unwrap()).sum();
    assert_eq!(req, 45, "uwsgitop showed:\n{screen}");
    eprintln!("uwsgitop:\n{screen}");
}

#[test]
fn dashboard_shows_live_numbers_in_chromium() {
    let Some(chromium) = tool("chromium") else {
        return;
    };
    let ops = Ops::start(&[
        "builtin:hello",
        "--processes",
        "2",
        "--metrics",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let addr = ops.srv.addr;
    let load = {
        let (stop, sent) = (stop.clone(), sent.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = request_bytes(
                    addr,
                    b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                );
                assert_eq!(r.status, 200);
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    wait_for("some load", || sent.load(Ordering::Relaxed) > 20);
    let profile = std::env::temp_dir().join(format!("forklift-chromium-{}", std::process::id()));
    let out = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=120000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://{}/", ops.metrics.as_deref().unwrap()))
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    let number = |id: &str| -> u64 {
        let at = dom
            .find(&format!("id=\"{id}\">"))
            .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
        let text = &dom[at + id.len() + 6..];
        let text: String = text[..text.find('<').unwrap()]
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        text.parse().unwrap_or(0)
    };
    assert!(number("requests") > 0, "{dom}");
    assert!(number("rps") > 0, "{dom}");
    assert!(dom.contains("● live"), "{dom}");
    assert!(dom.matches("class=\"l idle\"").count() + dom.matches("class=\"l busy\"").count() >= 2);
}

// Recycling, under every model.

fn max_requests_delta_staggers_workers(model: Model) {
    let mut ops = Ops::start(&[
        "builtin:hello",
        "--model",
        model.name(),
        "--processes",
        "2",
        "--max-requests",
        "4",
        "--max-requests-delta",
        "6",
        "--stats",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    wait_for("two workers", || ops.srv.workers().len() == 2);
    // Worker 1 retires after 4 requests, worker 2 after 10.
    let mut n = 0;
    let seen = |lines: &[String], n: u32| {
        let needle = format!("served {n} requests");
        lines.iter().any(|l| l.contains(&needle))
    };
    while !(seen(&ops.lines, 10) && seen(&ops.lines, 4)) {
        assert!(
            n < 2000,
            "{model}: no worker reached 10 requests: {:?}",
            ops.lines
        );
        try_send(&ops.srv, "/");
        n += 1;
        while let Ok(l) = ops.srv.log.try_recv() {
            ops.lines.push(l);
        }
    }
    assert!(!ops.lines.iter().any(|l| l.contains("served 5 requests")));
    wait_for("the recycles counted", || {
        let doc = ops.stats_doc();
        doc["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["respawn_count"].as_u64() >= Some(1))
    });
}

fn max_worker_lifetime_replaces_the_worker(model: Model) {
    let mut ops = Ops::start(&[
        "builtin:hello",
        "--model",
        model.name(),
        "--max-worker-lifetime",
        "1",
        "--disable-logging",
    ]);
    wait_for("a worker", || ops.srv.workers().len() == 1);
    let first = ops.srv.workers()[0];
    send(&ops.srv, "/", 3);
    ops.wait_line("recycled: --max-worker-lifetime");
    wait_for("the replacement", || {
        let w = ops.srv.workers();
        w.len() == 1 && w[0] != first
    });
    send(&ops.srv, "/", 3);
}

fn reload_on_rss_replaces_the_worker(model: Model) {
    let mut ops = Ops::start(&[
        "builtin:hello",
        "--model",
        model.name(),
        "--reload-on-rss",
        "1",
        "--metrics",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    wait_for("a worker", || ops.srv.workers().len() == 1);
    let first = ops.srv.workers()[0];
    // Above 1 MB from the start, but only replaced once it has served a request.
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(ops.srv.workers(), vec![first]);
    send(&ops.srv, "/", 2);
    ops.wait_line("recycled: --reload-on-rss");
    wait_for("the replacement", || {
        let w = ops.srv.workers();
        !w.is_empty() && !w.contains(&first)
    });
    send(&ops.srv, "/", 1);
    let text = ops.metrics_get("/metrics").text();
    assert!(
        text.contains("forklift_worker_recycles_total{worker=\"1\",reason=\"rss\"} 1"),
        "{text}"
    );
}

for_each_model! {
    max_requests_delta_staggers_workers;
    max_worker_lifetime_replaces_the_worker;
    reload_on_rss_replaces_the_worker;
}

// The access log.

fn raw_get(srv: &Server, extra_headers: &str) {
    let r = exchange(
        srv,
        format!(
            "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\n{extra_headers}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn log_format_with_uwsgi_variables() {
    let mut ops = Ops::start(&[
        "builtin:hello",
        "--processes",
        "2",
        "--log-format",
        "%(addr) - [%(ltime)] %(method) %(uri) %(proto) %(status) %(size) %(msecs)ms ua=%(uagent) ref=%(referer) pid=%(pid) wid=%(wid)",
    ]);
    raw_get(
        &ops.srv,
        "User-Agent: probe/1.0\r\nReferer: http://r.test/\r\n",
    );
    let line = ops.wait_line("GET /a?b=1");
    assert!(line.starts_with("127.0.0.1 - ["), "{line}");
    assert!(
        line.contains("] GET /a?b=1 HTTP/1.1 200 11 0ms ua=probe/1.0 ref=http://r.test/ pid="),
        "{line}"
    );
    let wid: u32 = line.rsplit("wid=").next().unwrap().parse().unwrap();
    assert!(wid == 1 || wid == 2, "{line}");
}

#[test]
fn log_json_and_x_forwarded_for() {
    let mut ops = Ops::start(&["builtin:hello", "--log-json", "--log-x-forwarded-for"]);
    raw_get(
        &ops.srv,
        "X-Forwarded-For: 203.0.113.9, 10.0.0.1\r\nUser-Agent: probe\r\n",
    );
    let line = ops.wait_line("\"method\"");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["addr"], "203.0.113.9");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["uri"], "/a?b=1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["size"], 11);
    assert_eq!(v["uagent"], "probe");
    assert_eq!(v["host"], "example.test");
    assert_eq!(v["pid"], ops.srv.pid());
    let bad = Command::new(BIN)
        .args(["serve", "builtin:hello", "--log-format", "%(nope)"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("%(nope)"));
}

/// `forklift serve ARGS --logto FILE`: the banner goes to the file, so the address is
/// read from there.
fn start_logging_to(file: &std::path::Path, args: &[&str]) -> Server {
    let child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .args(["--http", "127.0.0.1:0", "--logto", file.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut addr = None;
    wait_for("the banner in the log file", || {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        addr = text
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
        addr.is_some()
    });
    let (_tx, log) = std::sync::mpsc::channel();
    Server {
        child,
        addr: addr.unwrap(),
        log,
        preamble: Vec::new(),
        banner: String::new(),
    }
}

#[test]
fn logto_is_reopened_after_rotation_and_lines_stay_whole() {
    let dir = std::env::temp_dir().join(format!("forklift-ops-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("access.log");
    let mut srv = start_logging_to(
        &file,
        &[
            "builtin:hello",
            "--processes",
            "4",
            "--model",
            "threads",
            "--threads",
            "4",
        ],
    );
    wait_for("four workers", || srv.workers().len() == 4);
    let addr = srv.addr;
    let long = "x".repeat(1500);
    let loaders: Vec<_> = (0..6)
        .map(|t| {
            let long = long.clone();
            thread::spawn(move || {
                for i in 0..100 {
                    let r = request_bytes(
                        addr,
                        format!(
                            "GET /{t}/{i}/{long} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for l in loaders {
        l.join().unwrap();
    }
    let rotated = dir.join("access.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    signal(srv.pid(), libc::SIGUSR1);
    wait_for("the log reopened", || file.exists());
    thread::sleep(Duration::from_millis(300));
    send(&srv, "/after-rotation", 8);
    assert!(srv.terminate().success());
    let old = std::fs::read_to_string(&rotated).unwrap();
    let access: Vec<&str> = old.lines().filter(|l| l.contains("\" 200 ")).collect();
    assert_eq!(access.len(), 600, "lines went missing or merged");
    for l in &access {
        let ok = l.starts_with("127.0.0.1 \"GET /")
            && l.ends_with("us")
            && l.contains(&format!("/{long} HTTP/1.1\" 200 11 "));
        assert!(ok, "a broken line: {l}");
    }
    let new = std::fs::read_to_string(&file).unwrap();
    assert_eq!(new.matches("GET /after-rotation").count(), 8, "{new}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "python")]
#[test]
fn wsgi_metrics_count_gil_waits_and_exceptions() {
    let dir = std::env::temp_dir().join(format!("forklift-ops-wsgi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let app = dir.join("app.py");
    std::fs::write(
        &app,
        "def application(environ, start_response):\n    if environ['PATH_INFO'] == '/boom':\n        raise RuntimeError('boom')\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'ok']\n",
    )
    .unwrap();
    let ops = Ops::start(&[
        "--wsgi-file",
        app.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    send(&ops.srv, "/", 5);
    assert_eq!(ops.srv.get("/boom").status, 500);
    let text = ops.metrics_get("/metrics").text();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert!(
        value("forklift_gil_acquisitions_total{worker=\"1\"}") >= 6.0,
        "{text}"
    );
    assert!(value("forklift_gil_wait_seconds_total{worker=\"1\"}") >= 0.0);
    assert_eq!(
        value("forklift_exceptions_total{worker=\"1\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("forklift_requests_total{worker=\"1\",status=\"2xx\"}"),
        5.0
    );
    assert_eq!(
        value("forklift_requests_total{worker=\"1\",status=\"5xx\"}"),
        1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn harakiri_kills_and_respawns_are_counted() {
    let ops = Ops::start(&[
        "builtin:wait",
        "--harakiri",
        "1",
        "--stats",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    wait_for("a worker", || ops.srv.workers().len() == 1);
    let first = ops.srv.workers()[0];
    // A request that runs past --harakiri: the worker is killed, the client gets EOF.
    let mut s = ops.srv.connect();
    s.write_all(b"GET /?duration=5 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    wait_for("the replacement", || {
        let w = ops.srv.workers();
        w.len() == 1 && w[0] != first
    });
    wait_for("the counts", || {
        let doc = ops.stats_doc();
        let w = &doc["workers"][0];
        w["harakiri_count"] == 1 && w["respawn_count"] == 1 && w["pid"] != first
    });
}

#[test]
fn an_ini_file_sets_the_stats_and_metrics_addresses() {
    let dir = std::env::temp_dir().join(format!("forklift-ops-ini-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ini = dir.join("app.ini");
    std::fs::write(
        &ini,
        "[uwsgi]\nstats = 127.0.0.1:0\nstats-http = true\nmetrics = 127.0.0.1:0\nprocesses = 2\nmax-requests = 100\nmax-requests-delta = 10\n",
    )
    .unwrap();
    let ops = Ops::start_expecting(
        &["builtin:hello", "--ini", ini.to_str().unwrap()],
        true,
        true,
    );
    send(&ops.srv, "/", 4);
    let r = http_get(ops.stats.as_deref().unwrap(), "/");
    let doc: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["workers"].as_array().unwrap().len(), 2);
    assert_eq!(ops.metrics_get("/metrics").status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn offload_and_fanout_counters_equal_the_work_sent() {
    let dir = std::env::temp_dir().join(format!("forklift-ops-offload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let slowlog = dir.join("slow.log");
    let ops = Ops::start(&[
        "builtin:slowlog",
        "--processes",
        "2",
        "--offload",
        "pool",
        "--task-seconds",
        "0",
        "--slowlog-file",
        slowlog.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    send(&ops.srv, "/", 12);
    let value = |text: &str, name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    // Workers publish these every 200 ms.
    wait_for("the offload counters", || {
        let text = ops.metrics_get("/metrics").text();
        value(&text, "forklift_offload_submitted_total") == 12
            && value(&text, "forklift_offload_done_total") == 12
    });
    let text = ops.metrics_get("/metrics").text();
    assert_eq!(value(&text, "forklift_offload_failed_total"), 0);
    assert_eq!(value(&text, "forklift_offload_pending"), 0);
    let _ = std::fs::remove_dir_all(&dir);

    let backend = Server::start(&["builtin:wait", "--model", "async"]);
    let ops = Ops::start(&[
        "builtin:fanout",
        "--metrics",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    for _ in 0..3 {
        let r = ops.srv.get(&format!(
            "/?backend=http://{}&durations=0,0.01",
            backend.addr
        ));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = ops.srv.get("/?backend=http://127.0.0.1:1&durations=0");
    assert_ne!(r.status, 200);
    wait_for("the fan-out counters", || {
        let text = ops.metrics_get("/metrics").text();
        value(&text, "forklift_fanout_calls_total") == 7
            && value(&text, "forklift_fanout_errors_total") == 1
    });
    let text = ops.metrics_get("/metrics").text();
    let opened = value(&text, "forklift_fanout_connections_opened_total");
    assert!((1..=7).contains(&opened), "{text}");
    // The backend keeps its connections alive: they wait in the pool.
    let open = value(&text, "forklift_fanout_connections_open");
    assert!((1..=opened).contains(&open), "{text}");
    assert_eq!(value(&text, "forklift_fanout_calls_pending"), 0);
}

#[test]
fn log_reopen_reopens_the_file_on_a_reload() {
    let dir = std::env::temp_dir().join(format!("forklift-ops-hup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("access.log");
    let srv = start_logging_to(&file, &["builtin:hello", "--master", "--log-reopen"]);
    wait_for("a worker", || srv.workers().len() == 1);
    let first = srv.workers()[0];
    send(&srv, "/before", 2);
    std::fs::rename(&file, dir.join("access.log.1")).unwrap();
    signal(srv.pid(), libc::SIGHUP);
    wait_for("the new worker", || {
        let w = srv.workers();
        w.len() == 1 && w[0] != first
    });
    send(&srv, "/after", 2);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.matches("GET /after").count(), 2, "{text}");
    assert!(text.contains("SIGHUP"), "{text}");
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The value of the sample `series` (name and labels, as written) in a metrics text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A connection refused at `--max-connections` (answered 503) is counted, per worker;
/// the signals a worker handles (here the reload's) are counted in the stats and the
/// metrics; the duration histogram has buckets below a millisecond.
fn shed_and_signals_are_counted(model: Model) {
    let mut ops = Ops::start(&[
        "builtin:hello",
        "--model",
        model.name(),
        "--master",
        "--max-connections",
        "1",
        "--stats",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--disable-logging",
    ]);
    ops.wait_line("(pid");
    ops.wait_line(") ready");
    // The one connection allowed, with a request half sent: not idle, so not let go.
    let mut held = ops.srv.connect();
    held.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    thread::sleep(Duration::from_millis(100));
    let r = request_bytes(ops.srv.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 503, "{model}");
    drop(held);
    let text = ops.metrics_get("/metrics").text();
    assert_eq!(
        metric(&text, "forklift_connections_shed_total{worker=\"1\"}"),
        Some(1.0),
        "{model}: {text}"
    );
    assert_eq!(ops.stats_doc()["forklift"]["shed"], 1);
    for le in [
        "0.00001", "0.000025", "0.00005", "0.0001", "0.00025", "0.0005",
    ] {
        let series = format!("forklift_request_duration_seconds_bucket{{le=\"{le}\"}}");
        assert!(metric(&text, &series).is_some(), "no {series}: {text}");
    }

    signal(ops.srv.pid(), libc::SIGHUP);
    ops.wait_line("; retiring pid");
    wait_for("the retired worker's signal counted", || {
        ops.stats_doc()["workers"][0]["signals"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    });
    let text = ops.metrics_get("/metrics").text();
    assert!(
        metric(&text, "forklift_signals_total{worker=\"1\"}").is_some_and(|n| n >= 1.0),
        "{text}"
    );
}

for_each_model! {
    shed_and_signals_are_counted for [threads, epoll, async_];
}
