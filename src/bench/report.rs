//! The report of a run: built from the engine's tally, printed in ab's layout (same field
//! names, microsecond precision, extra percentiles, error breakdown, client CPU) or as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::engine::{EngineResult, ThreadCpu};
use super::stats::{ErrorCounts, Percentile, Summary};

/// A busiest-thread CPU share above this means the generator, not the server, may have
/// set the pace.
pub const BOTTLENECK_SHARE: f64 = 0.9;

/// Everything ab prints, and more; serialised as is for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub server_software: Option<String>,
    pub server_hostname: String,
    pub server_port: u16,
    pub document_path: String,
    /// Body length of the first 2xx response.
    pub document_length: u64,
    pub concurrency_level: usize,
    pub threads: usize,
    pub keep_alive: bool,
    pub pipeline: usize,
    /// Target request rate (open loop), when one was set.
    pub rate: Option<f64>,
    pub time_taken_s: f64,
    pub complete_requests: u64,
    pub failed_requests: u64,
    pub errors: ErrorCounts,
    pub non_2xx_responses: u64,
    pub keep_alive_requests: u64,
    pub connections: u64,
    pub total_transferred: u64,
    pub html_transferred: u64,
    pub requests_per_second: f64,
    /// ab's first "Time per request": concurrency × time / requests.
    pub time_per_request_ms: f64,
    /// ab's second one: time / requests.
    pub time_per_request_all_ms: f64,
    pub transfer_rate_kbps: f64,
    pub connection_times: ConnectionTimes,
    pub percentiles: Vec<Percentile>,
    /// Responses per status code.
    pub status_codes: Vec<StatusCount>,
    pub client_cpu: ClientCpu,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct StatusCount {
    pub status: u16,
    pub count: u64,
}

/// ab's "Connection Times (ms)" table.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct ConnectionTimes {
    pub connect: Summary,
    pub processing: Summary,
    pub waiting: Summary,
    pub total: Summary,
}

/// The generator's own CPU use (getrusage per engine thread).
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct ClientCpu {
    pub user_s: f64,
    pub system_s: f64,
    /// CPU time of the busiest engine thread over its wall time (1.0 = a full core).
    pub busiest_thread_share: f64,
    /// The busiest thread was nearly always on CPU: the figures may be the client's limit.
    pub bottleneck: bool,
}

/// What the report needs besides the engine's result.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub hostname: String,
    pub port: u16,
    pub path: String,
    pub concurrency: usize,
    pub threads: usize,
    pub keep_alive: bool,
    pub pipeline: usize,
    pub rate: Option<f64>,
}

impl Report {
    /// The latency at percentile `p` (50.0, 99.0, …) in milliseconds; 0 when the
    /// report has no such row.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        self.percentiles
            .iter()
            .find(|x| x.percent == p)
            .map_or(0.0, |x| x.ms)
    }

    pub fn new(info: &RunInfo, r: &EngineResult) -> Report {
        let t = &r.tally;
        let secs = r.elapsed.as_secs_f64();
        let done = t.completed;
        let per_sec = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
        let per_req = |x: f64| if done > 0 { x / done as f64 } else { 0.0 };
        Report {
            server_software: r.server.clone(),
            server_hostname: info.hostname.clone(),
            server_port: info.port,
            document_path: info.path.clone(),
            document_length: r.document_length.unwrap_or(0),
            concurrency_level: info.concurrency,
            threads: info.threads,
            keep_alive: info.keep_alive,
            pipeline: info.pipeline,
            rate: info.rate,
            time_taken_s: secs,
            complete_requests: done,
            failed_requests: t.errors.failed(),
            errors: t.errors,
            non_2xx_responses: t.errors.non_2xx,
            keep_alive_requests: t.keep_alive_requests,
            connections: t.connections,
            total_transferred: t.bytes_total,
            html_transferred: t.bytes_body,
            requests_per_second: per_sec(done as f64),
            time_per_request_ms: per_req(info.concurrency as f64 * secs * 1000.0),
            time_per_request_all_ms: per_req(secs * 1000.0),
            transfer_rate_kbps: per_sec(t.bytes_total as f64 / 1024.0),
            connection_times: ConnectionTimes {
                connect: t.connect.summary(),
                processing: t.processing.summary(),
                waiting: t.waiting.summary(),
                total: t.total.summary(),
            },
            percentiles: t.total.percentiles(),
            status_codes: t
                .statuses
                .iter()
                .map(|&(status, count)| StatusCount { status, count })
                .collect(),
            client_cpu: client_cpu(&r.cpu),
        }
    }

    /// The report in ab's layout.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let w = &mut o;
        let field = |w: &mut String, name: &str, value: &str| {
            let _ = writeln!(w, "{:<24}{}", format!("{name}:"), value);
        };
        field(
            w,
            "Server Software",
            self.server_software.as_deref().unwrap_or(""),
        );
        field(w, "Server Hostname", &self.server_hostname);
        field(w, "Server Port", &self.server_port.to_string());
        w.push('\n');
        field(w, "Document Path", &self.document_path);
        field(
            w,
            "Document Length",
            &format!("{} bytes", self.document_length),
        );
        w.push('\n');
        field(w, "Concurrency Level", &self.concurrency_level.to_string());
        field(
            w,
            "Time taken for tests",
            &format!("{:.3} seconds", self.time_taken_s),
        );
        field(w, "Complete requests", &self.complete_requests.to_string());
        field(w, "Failed requests", &self.failed_requests.to_string());
        if self.failed_requests > 0 {
            let (c, r, l, e) = self.errors.ab_split();
            let _ = writeln!(
                w,
                "   (Connect: {c}, Receive: {r}, Length: {l}, Exceptions: {e})"
            );
        }
        if self.non_2xx_responses > 0 {
            field(w, "Non-2xx responses", &self.non_2xx_responses.to_string());
        }
        if self.keep_alive {
            field(
                w,
                "Keep-Alive requests",
                &self.keep_alive_requests.to_string(),
            );
        }
        field(
            w,
            "Total transferred",
            &format!("{} bytes", self.total_transferred),
        );
        field(
            w,
            "HTML transferred",
            &format!("{} bytes", self.html_transferred),
        );
        field(
            w,
            "Requests per second",
            &format!("{:.2} [#/sec] (mean)", self.requests_per_second),
        );
        field(
            w,
            "Time per request",
            &format!("{:.3} [ms] (mean)", self.time_per_request_ms),
        );
        field(
            w,
            "Time per request",
            &format!(
                "{:.3} [ms] (mean, across all concurrent requests)",
                self.time_per_request_all_ms
            ),
        );
        field(
            w,
            "Transfer rate",
            &format!("{:.2} [Kbytes/sec] received", self.transfer_rate_kbps),
        );
        w.push('\n');
        w.push_str(&connection_times_table(&self.connection_times));
        w.push('\n');
        w.push_str(&percentile_table(&self.percentiles));
        w.push('\n');
        let _ = writeln!(
            w,
            "Threads / connections:  {} / {} ({}{}{})",
            self.threads,
            self.connections,
            if self.keep_alive {
                "keep-alive"
            } else {
                "connection per request"
            },
            if self.pipeline > 1 {
                format!(", pipeline {}", self.pipeline)
            } else {
                String::new()
            },
            match self.rate {
                Some(r) => format!(", constant rate {r} req/s, latency from intended start"),
                None => String::new(),
            }
        );
        if !self.status_codes.is_empty() {
            let codes: Vec<String> = self
                .status_codes
                .iter()
                .map(|s| format!("{}: {}", s.status, s.count))
                .collect();
            field(w, "Status codes", &codes.join(", "));
        }
        let kinds: Vec<String> = self
            .errors
            .by_kind()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        field(
            w,
            "Errors by kind",
            &if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds.join(", ")
            },
        );
        let c = &self.client_cpu;
        field(
            w,
            "Client CPU time",
            &format!(
                "{:.3} s user, {:.3} s system (busiest thread {:.0}% of a core)",
                c.user_s,
                c.system_s,
                c.busiest_thread_share * 100.0
            ),
        );
        if c.bottleneck {
            let _ = writeln!(
                w,
                "WARNING: the load generator was busy {:.0}% of the time: these figures may be \
                 its limit rather than the server's (try more --threads).",
                c.busiest_thread_share * 100.0
            );
        }
        o
    }
}

fn client_cpu(cpu: &[ThreadCpu]) -> ClientCpu {
    let user: Duration = cpu.iter().map(|c| c.user).sum();
    let system: Duration = cpu.iter().map(|c| c.system).sum();
    let busiest = cpu
        .iter()
        .filter(|c| !c.wall.is_zero())
        .map(|c| (c.user + c.system).as_secs_f64() / c.wall.as_secs_f64())
        .fold(0.0, f64::max);
    ClientCpu {
        user_s: user.as_secs_f64(),
        system_s: system.as_secs_f64(),
        busiest_thread_share: busiest,
        // A run too short to measure says nothing about the client.
        bottleneck: busiest >= BOTTLENECK_SHARE
            && cpu.iter().map(|c| c.wall).max().unwrap_or_default() >= Duration::from_millis(200),
    }
}

/// ab's "Connection Times (ms)" table, with three decimals.
pub fn connection_times_table(t: &ConnectionTimes) -> String {
    let mut o = String::from("Connection Times (ms)\n");
    let _ = writeln!(
        o,
        "{:<12}{:>10} {:>9} {:>8} {:>9} {:>10}",
        "", "min", "mean", "[+/-sd]", "median", "max"
    );
    for (name, s) in [
        ("Connect:", &t.connect),
        ("Processing:", &t.processing),
        ("Waiting:", &t.waiting),
        ("Total:", &t.total),
    ] {
        let _ = writeln!(
            o,
            "{:<12}{:>10.3} {:>9.3} {:>8.3} {:>9.3} {:>10.3}",
            name, s.min, s.mean, s.sd, s.median, s.max
        );
    }
    o
}

/// ab's percentile table, with three decimals and the extra 99.9 / 99.99 rows.
pub fn percentile_table(p: &[Percentile]) -> String {
    let mut o = String::from("Percentage of the requests served within a certain time (ms)\n");
    for row in p {
        let pct = format!("{}%", trim_float(row.percent));
        let _ = write!(o, "{:>8} {:>10.3}", pct, row.ms);
        if row.percent >= 100.0 {
            o.push_str(" (longest request)");
        }
        o.push('\n');
    }
    o
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::{ErrorKind, Tally};

    fn sample() -> Report {
        let mut t = Tally::default();
        for us in [100u64, 200, 300, 400, 1500] {
            t.total.record(us);
            t.connect.record(10);
            t.processing.record(us - 10);
            t.waiting.record(us / 2);
            t.completed += 1;
            t.count_status(200);
        }
        t.completed += 2;
        t.errors.add(ErrorKind::Length);
        t.errors.add(ErrorKind::Connect);
        t.errors.non_2xx = 0;
        t.bytes_total = 700;
        t.bytes_body = 55;
        t.connections = 7;
        let r = EngineResult {
            tally: t,
            elapsed: Duration::from_millis(500),
            cpu: vec![ThreadCpu {
                user: Duration::from_millis(300),
                system: Duration::from_millis(180),
                wall: Duration::from_millis(500),
            }],
            document_length: Some(11),
            server: Some("test/1".into()),
        };
        let info = RunInfo {
            hostname: "127.0.0.1".into(),
            port: 8080,
            path: "/".into(),
            concurrency: 2,
            threads: 1,
            keep_alive: false,
            pipeline: 1,
            rate: None,
        };
        Report::new(&info, &r)
    }

    #[test]
    fn figures() {
        let r = sample();
        assert_eq!(r.complete_requests, 7);
        assert_eq!(r.failed_requests, 2);
        assert!((r.requests_per_second - 14.0).abs() < 1e-9);
        assert!((r.time_per_request_all_ms - 500.0 / 7.0).abs() < 1e-9);
        assert!((r.time_per_request_ms - 1000.0 / 7.0).abs() < 1e-9);
        assert_eq!(r.connection_times.total.max, 1.5);
        assert_eq!(r.connection_times.total.median, 0.3);
        assert_eq!(r.percentiles.last().unwrap().ms, 1.5);
        assert!(r.client_cpu.bottleneck);
        assert!((r.client_cpu.busiest_thread_share - 0.96).abs() < 1e-9);
    }

    #[test]
    fn ab_layout() {
        let text = sample().to_text();
        for line in [
            "Server Software:        test/1\n",
            "Server Hostname:        127.0.0.1\n",
            "Server Port:            8080\n",
            "Document Path:          /\n",
            "Document Length:        11 bytes\n",
            "Concurrency Level:      2\n",
            "Time taken for tests:   0.500 seconds\n",
            "Complete requests:      7\n",
            "Failed requests:        2\n",
            "   (Connect: 1, Receive: 0, Length: 1, Exceptions: 0)\n",
            "Total transferred:      700 bytes\n",
            "HTML transferred:       55 bytes\n",
            "Requests per second:    14.00 [#/sec] (mean)\n",
            "Time per request:       142.857 [ms] (mean)\n",
            "Time per request:       71.429 [ms] (mean, across all concurrent requests)\n",
            "Transfer rate:          1.37 [Kbytes/sec] received\n",
            "Connection Times (ms)\n",
            "Percentage of the requests served within a certain time (ms)\n",
            "     50%      0.300\n",
            "   99.9%      1.500\n",
            "  99.99%      1.500\n",
            "    100%      1.500 (longest request)\n",
            "Errors by kind:         connect: 1, length: 1\n",
            "WARNING: the load generator",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("Non-2xx"));
        assert!(!text.contains("Keep-Alive requests"));
        let total = text.lines().find(|l| l.starts_with("Total:")).unwrap();
        let cols: Vec<&str> = total.split_whitespace().collect();
        assert_eq!(
            cols,
            ["Total:", "0.100", "0.500", "0.570", "0.300", "1.500"]
        );
    }

    #[test]
    fn json_has_the_same_content() {
        let v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["complete_requests"], 7);
        assert_eq!(v["errors"]["length"], 1);
        assert_eq!(v["connection_times"]["total"]["max"], 1.5);
        assert_eq!(v["percentiles"][8]["percent"], 99.9);
        assert_eq!(v["server_software"], "test/1");
    }
}
