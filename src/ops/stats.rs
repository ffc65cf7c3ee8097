//! The stats document in uWSGI's schema (what `uwsgitop` and the uWSGI ecosystem
//! read), plus a `forklift` section with the histogram and the offload and fan-out
//! numbers the dashboard shows.

use serde_json::{json, Value};

use super::board::{cum, BUCKETS_US};
use super::roster::Snapshot;
use super::Info;

/// The whole document for one stats request.
pub fn document(server: &Info, snap: &Snapshot) -> Value {
    let (queue, max_queue) = server.listen_queue();
    let in_flight: u64 = snap.workers.iter().map(|w| w.in_flight).sum();
    let workers: Vec<Value> = snap
        .workers
        .iter()
        .map(|w| {
            let requests = w.requests();
            let status = match (w.pid, w.in_flight) {
                (None, _) => "cheap",
                (Some(_), 0) => "idle",
                _ => "busy",
            };
            let cores: Vec<Value> = (0..snap.cores)
                .map(|c| {
                    json!({
                        "id": c,
                        "requests": w.cum[cum::CORE + c],
                        "static_requests": 0,
                        "routed_requests": 0,
                        "offloaded_requests": 0,
                        "write_errors": 0,
                        "read_errors": 0,
                        "in_request": u8::from(w.cores_busy & (1 << c) != 0),
                        "vars": [],
                        "req_info": {},
                    })
                })
                .collect();
            let rt = w.cum[cum::RT_US];
            json!({
                "id": w.id,
                "pid": w.pid.unwrap_or(0),
                "accepting": u8::from(w.accepting),
                "requests": requests,
                "delta_requests": w.delta_requests,
                "exceptions": w.cum[cum::EXCEPTIONS],
                "harakiri_count": w.cum[cum::HARAKIRI],
                "signals": w.cum[cum::SIGNALS],
                "signal_queue": 0,
                "status": status,
                "rss": w.rss,
                "vsz": w.vsz,
                "running_time": rt,
                "last_spawn": w.last_spawn,
                "respawn_count": w.starts.saturating_sub(1),
                "tx": w.cum[cum::TX],
                "avg_rt": rt.checked_div(requests).unwrap_or(0),
                "apps": [{
                    "id": 0,
                    "modifier1": 0,
                    "mountpoint": "",
                    "startup_time": 0,
                    "requests": requests,
                    "exceptions": w.cum[cum::EXCEPTIONS],
                    "chdir": "",
                }],
                "cores": cores,
                "in_flight": w.in_flight,
                "connections": w.connections,
                "shed": w.cum[cum::SHED],
            })
        })
        .collect();
    let hist: Vec<u64> = (0..=BUCKETS_US.len())
        .map(|b| snap.total(cum::HIST + b))
        .collect();
    // SAFETY: getuid and getgid only read the process's credentials.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    json!({
        "version": concat!("forklift-", env!("CARGO_PKG_VERSION")),
        "listen_queue": queue,
        "listen_queue_errors": server.listen_queue_errors(),
        "signal_queue": 0,
        "load": in_flight,
        "pid": std::process::id(),
        "uid": uid,
        "gid": gid,
        "cwd": cwd,
        "locks": [],
        "sockets": [{
            "name": server.http_name(),
            "proto": "http",
            "queue": queue,
            "max_queue": max_queue,
            "shared": 0,
            "can_offload": 0,
        }],
        "workers": workers,
        "forklift": {
            "model": server.model_name(),
            // The server's clock, so rates do not depend on the reader's timers.
            "now_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "buckets_us": BUCKETS_US,
            "histogram": hist,
            "in_flight": in_flight,
            "connections": snap.workers.iter().map(|w| w.connections).sum::<u64>(),
            "shed": snap.total(cum::SHED),
            "offload": {
                "submitted": snap.total(cum::OFFLOAD_SUBMITTED),
                "done": snap.total(cum::OFFLOAD_DONE),
                "failed": snap.total(cum::OFFLOAD_FAILED),
                "retried": snap.total(cum::OFFLOAD_RETRIED),
                "dead": snap.total(cum::OFFLOAD_DEAD),
                "rejected": snap.total(cum::OFFLOAD_REJECTED),
                "pending": snap.workers.iter().map(|w| w.offload_pending).sum::<u64>(),
            },
            "fanout": {
                "calls": snap.total(cum::FANOUT_CALLS),
                "errors": snap.total(cum::FANOUT_ERRORS),
                "connections": snap.total(cum::FANOUT_CONNECTIONS),
                "pending": snap.workers.iter().map(|w| w.fanout_pending).sum::<u64>(),
                "open": snap.workers.iter().map(|w| w.fanout_open).sum::<u64>(),
            },
        },
    })
}
