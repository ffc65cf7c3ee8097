//! Durable submissions per second of the `spool` strategy, with and without group
//! commit: `cargo run --release --example spool_bench -- [TASKS] [THREADS] [--no-group-commit]`.
//! Each submit returns once its task is fsynced; a no-op task runs them meanwhile.
//! Bounded: stops submitting after 20 s whatever TASKS says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use forklift::offload::{Offload, OffloadArgs, OffloadConfig, Registry, Spool, Strategy, Task};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let group = !args.iter().any(|a| a == "--no-group-commit");
    let nums: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let tasks = nums.first().copied().unwrap_or(20_000);
    let threads = nums.get(1).copied().unwrap_or(64);
    let dir = std::env::temp_dir().join(format!("forklift-spool-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let registry = Registry::new();
    let ran = Arc::new(AtomicU64::new(0));
    let r = ran.clone();
    registry.register("noop", move |_| {
        r.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let cfg = OffloadConfig::from_args(&OffloadArgs {
        offload: Strategy::Spool,
        spool_dir: dir.clone(),
        spool_no_group_commit: !group,
        offload_queue: 65_536,
        ..OffloadArgs::default()
    })
    .expect("config");
    let off = Offload::new(cfg, registry).expect("spool");
    off.start().expect("start");

    let next = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(20);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let off = off.clone();
            let next = next.clone();
            std::thread::spawn(move || {
                let mut ok = 0u64;
                while next.fetch_add(1, Ordering::Relaxed) < tasks && Instant::now() < stop_at {
                    if off
                        .submit(Task::new("noop", &b"0123456789abcdef"[..]))
                        .is_ok()
                    {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let submitted: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let submit_secs = t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ran.load(Ordering::Relaxed) < submitted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let all_secs = t0.elapsed().as_secs_f64();
    let report = off.shutdown(Duration::from_secs(10));
    let stats = Spool::open(&dir).and_then(|s| s.stats()).ok();
    println!(
        "group_commit={group} threads={threads} submitted={submitted} in {submit_secs:.2}s = {:.0} durable submits/s; all run after {all_secs:.2}s ({} run); {report}; spool {stats:?}",
        submitted as f64 / submit_secs,
        ran.load(Ordering::Relaxed),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
