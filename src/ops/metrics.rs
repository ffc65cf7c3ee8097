//! `/metrics` in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

use super::board::{cum, BUCKETS_US};
use super::roster::{Recycle, Snapshot};
use super::Info;

/// The content type Prometheus expects for this text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    /// One family with a sample per worker.
    fn per_worker(
        &mut self,
        snap: &Snapshot,
        name: &str,
        kind: &str,
        help: &str,
        value: impl Fn(&super::roster::WorkerView) -> u64,
    ) {
        self.family(name, kind, help);
        for w in &snap.workers {
            self.sample(name, &format!("worker=\"{}\"", w.id), value(w));
        }
    }

    /// One family with a single sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }
}

/// The whole text for one scrape.
pub fn render(server: &Info, snap: &Snapshot) -> String {
    let mut o = Out(String::with_capacity(8 * 1024));
    o.family(
        "forklift_requests_total",
        "counter",
        "Requests answered, by worker and status class.",
    );
    for w in &snap.workers {
        for class in 0..5 {
            o.sample(
                "forklift_requests_total",
                &format!("worker=\"{}\",status=\"{}xx\"", w.id, class + 1),
                w.cum[cum::STATUS + class],
            );
        }
    }
    o.family(
        "forklift_request_duration_seconds",
        "histogram",
        "Time from a request arriving whole to the end of its response.",
    );
    let mut running = 0;
    for (i, bound) in BUCKETS_US.iter().enumerate() {
        running += snap.total(cum::HIST + i);
        o.sample(
            "forklift_request_duration_seconds_bucket",
            &format!("le=\"{}\"", *bound as f64 / 1e6),
            running,
        );
    }
    running += snap.total(cum::HIST + BUCKETS_US.len());
    o.sample(
        "forklift_request_duration_seconds_bucket",
        "le=\"+Inf\"",
        running,
    );
    o.sample(
        "forklift_request_duration_seconds_sum",
        "",
        snap.total(cum::RT_US) as f64 / 1e6,
    );
    o.sample("forklift_request_duration_seconds_count", "", running);
    o.per_worker(
        snap,
        "forklift_response_bytes_total",
        "counter",
        "Response body bytes sent.",
        |w| w.cum[cum::TX],
    );
    o.per_worker(
        snap,
        "forklift_requests_in_flight",
        "gauge",
        "Requests handed to the app and not yet answered in full.",
        |w| w.in_flight,
    );
    o.per_worker(
        snap,
        "forklift_connections_open",
        "gauge",
        "Client connections open.",
        |w| w.connections,
    );
    o.per_worker(
        snap,
        "forklift_connections_shed_total",
        "counter",
        "Connections answered 503 because the worker was at --max-connections.",
        |w| w.cum[cum::SHED],
    );
    o.per_worker(
        snap,
        "forklift_signals_total",
        "counter",
        "Signals the worker handled (stop, reload, log reopen).",
        |w| w.cum[cum::SIGNALS],
    );
    let (queue, max_queue) = server.listen_queue();
    o.single(
        "forklift_listen_queue",
        "gauge",
        "Connections waiting in the listen backlog.",
        queue,
    );
    o.single(
        "forklift_listen_queue_max",
        "gauge",
        "The listen backlog's size.",
        max_queue,
    );
    o.single(
        "forklift_listen_queue_full_total",
        "counter",
        "Times the listen backlog was seen full.",
        server.listen_queue_errors(),
    );
    o.per_worker(
        snap,
        "forklift_exceptions_total",
        "counter",
        "App exceptions (Python tracebacks, handler panics, bad responses).",
        |w| w.cum[cum::EXCEPTIONS],
    );
    o.family(
        "forklift_gil_wait_seconds_total",
        "counter",
        "Time Python threads waited to take the GIL.",
    );
    for w in &snap.workers {
        o.sample(
            "forklift_gil_wait_seconds_total",
            &format!("worker=\"{}\"", w.id),
            w.cum[cum::GIL_WAIT_US] as f64 / 1e6,
        );
    }
    o.per_worker(
        snap,
        "forklift_gil_acquisitions_total",
        "counter",
        "Times Python threads took the GIL.",
        |w| w.cum[cum::GIL_WAITS],
    );
    o.per_worker(
        snap,
        "forklift_worker_starts_total",
        "counter",
        "Worker processes started.",
        |w| w.starts,
    );
    o.per_worker(
        snap,
        "forklift_worker_exits_total",
        "counter",
        "Worker processes that exited.",
        |w| w.exits,
    );
    o.per_worker(
        snap,
        "forklift_worker_respawns_total",
        "counter",
        "Worker processes started after the first.",
        |w| w.starts.saturating_sub(1),
    );
    o.per_worker(
        snap,
        "forklift_harakiri_kills_total",
        "counter",
        "Workers killed by --harakiri.",
        |w| w.cum[cum::HARAKIRI],
    );
    o.family(
        "forklift_worker_recycles_total",
        "counter",
        "Workers replaced while serving, by reason.",
    );
    for w in &snap.workers {
        for r in Recycle::ALL {
            o.sample(
                "forklift_worker_recycles_total",
                &format!("worker=\"{}\",reason=\"{}\"", w.id, r.name()),
                w.recycles[r as usize],
            );
        }
    }
    for (name, i, help) in [
        (
            "submitted",
            cum::OFFLOAD_SUBMITTED,
            "Offload tasks accepted.",
        ),
        (
            "done",
            cum::OFFLOAD_DONE,
            "Offload tasks that ran to completion.",
        ),
        (
            "failed",
            cum::OFFLOAD_FAILED,
            "Offload task runs that failed.",
        ),
        (
            "retried",
            cum::OFFLOAD_RETRIED,
            "Failed offload tasks scheduled again.",
        ),
        (
            "dead_lettered",
            cum::OFFLOAD_DEAD,
            "Offload tasks moved to the dead letters.",
        ),
        (
            "rejected",
            cum::OFFLOAD_REJECTED,
            "Offload submissions refused.",
        ),
    ] {
        o.single(
            &format!("forklift_offload_{name}_total"),
            "counter",
            help,
            snap.total(i),
        );
    }
    o.single(
        "forklift_offload_pending",
        "gauge",
        "Offload tasks accepted and not started (for spool: pending in the spool).",
        snap.workers.iter().map(|w| w.offload_pending).sum::<u64>(),
    );
    for (name, i, help) in [
        ("calls", cum::FANOUT_CALLS, "Fan-out calls to backends."),
        (
            "errors",
            cum::FANOUT_ERRORS,
            "Fan-out calls that ended in an error.",
        ),
        (
            "connections_opened",
            cum::FANOUT_CONNECTIONS,
            "Connections the fan-out client opened (calls beyond these reused pooled ones).",
        ),
    ] {
        o.single(
            &format!("forklift_fanout_{name}_total"),
            "counter",
            help,
            snap.total(i),
        );
    }
    o.single(
        "forklift_fanout_connections_open",
        "gauge",
        "Connections of the fan-out client open now, in use or pooled.",
        snap.workers.iter().map(|w| w.fanout_open).sum::<u64>(),
    );
    o.single(
        "forklift_fanout_calls_pending",
        "gauge",
        "Fan-out calls accepted and not finished.",
        snap.workers.iter().map(|w| w.fanout_pending).sum::<u64>(),
    );
    o.0
}
