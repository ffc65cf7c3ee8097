//! Integration tests of the offload engine: every strategy runs what was submitted,
//! bounded queues refuse, delays hold, the spool survives SIGKILL, retries, dead-letters
//! and skips corrupt entries, and builtin:slowlog answers and logs.
//!
//! Child processes are this test binary run again with `FORKLIFT_OFFLOAD_CHILD` set
//! (see `child_entry`), so no extra binary has to be built.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use forklift::app::slowlog::SlowLog;
use forklift::app::{CallContext, Handler, Reply, Request, Version};
use forklift::cli::{run_spool_cmd, SpoolArgs, SpoolCmd};
use forklift::offload::{
    Offload, OffloadArgs, OffloadConfig, Registry, Spool, Strategy, SubmitError, Task, TaskError,
};

mod support {
    use super::*;

    /// A fresh directory for one test, removed when dropped.
    pub struct TmpDir(PathBuf);

    impl std::ops::Deref for TmpDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for TmpDir {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub fn tmpdir(name: &str) -> TmpDir {
        let d = std::env::temp_dir().join(format!(
            "forklift-offload-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TmpDir(d)
    }

    pub fn config(strategy: Strategy, dir: &Path) -> OffloadConfig {
        let args = OffloadArgs {
            offload: strategy,
            offload_workers: 4,
            offload_queue: 256,
            offload_socket: Some(dir.join("loop.sock")),
            spool_dir: dir.join("spool"),
            task_backoff: 0.01,
            task_retries: 2,
            slowlog_file: dir.join("slow.log"),
            task_seconds: 0.05,
            ..OffloadArgs::default()
        };
        OffloadConfig::from_args(&args).unwrap()
    }

    /// Tasks seen, by payload, with when they ran.
    #[derive(Clone, Default)]
    pub struct Seen(pub Arc<Mutex<Vec<(Bytes, Instant)>>>);

    impl Seen {
        pub fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }

        /// Waits (bounded) until `n` tasks ran.
        pub fn wait_for(&self, n: usize) {
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.len() < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        pub fn payloads(&self) -> Vec<Bytes> {
            let mut v: Vec<Bytes> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|(b, _)| b.clone())
                .collect();
            v.sort();
            v
        }
    }

    /// A registry with `record` (blocking), `record_async`, and `fail` tasks.
    pub fn registry(seen: &Seen) -> Registry {
        let r = Registry::new();
        let s = seen.clone();
        r.register("record", move |p| {
            s.0.lock().unwrap().push((p.data.clone(), Instant::now()));
            Ok(())
        });
        let s = seen.clone();
        r.register_async("record_async", move |p| {
            let s = s.clone();
            Box::pin(async move {
                forklift::rt::sleep(Duration::from_millis(1)).await;
                s.0.lock().unwrap().push((p.data.clone(), Instant::now()));
                Ok(())
            })
        });
        r.register("fail", |_| Err(TaskError::new("backend down")));
        r
    }

    /// Runs this test binary as a child in `mode`.
    pub fn child(mode: &str, dir: &Path) -> Command {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args([
            "--exact",
            "offload::child_entry",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("FORKLIFT_OFFLOAD_CHILD", mode)
        .env("FORKLIFT_OFFLOAD_DIR", dir)
        .stdin(Stdio::null());
        c
    }

    pub fn request(body: &'static [u8]) -> Request {
        Request {
            method: Bytes::from_static(b"POST"),
            target: Bytes::from_static(b"/log?x=1"),
            version: Version::Http11,
            headers: vec![forklift::app::Header {
                name: Bytes::from_static(b"Host"),
                value: Bytes::from_static(b"localhost"),
            }],
            body: Bytes::from_static(body),
            rest: None,
            peer: None,
            local: None,
            cgi_vars: Vec::new(),
        }
    }
}

use support::*;

use crate::support::for_each_strategy;

for_each_strategy! {
    runs_every_task => runs_everything_submitted;
}

fn runs_everything_submitted(strategy: Strategy) {
    let dir = tmpdir(&format!("all-{strategy}"));
    let seen = Seen::default();
    let off = Offload::new(config(strategy, &dir), registry(&seen)).unwrap();
    let mut expected = Vec::new();
    for i in 0..60 {
        let name = if i % 2 == 0 { "record" } else { "record_async" };
        let payload = Bytes::from(format!("task-{i}"));
        expected.push(payload.clone());
        off.submit(Task::new(name, payload)).unwrap();
    }
    seen.wait_for(expected.len());
    let report = off.shutdown(Duration::from_secs(10));
    assert_eq!(report.dropped, 0, "{strategy}");
    expected.sort();
    assert_eq!(
        seen.payloads(),
        expected,
        "{strategy}: every task exactly once"
    );
    let c = off.counters();
    assert_eq!(c.submitted, 60, "{strategy}");
    // The loop worker runs in this process here, so it shares the counters.
    assert_eq!(c.completed, 60, "{strategy}");
    // After shutdown the engine refuses new tasks: `shutdown` has set the flag (thread,
    // loop, spool) or closed the queue (pool) that `submit` checks first. `inline` has
    // nothing to stop: its `submit` runs the task in the caller, after shutdown too.
    let late = off.submit(Task::new("record", "late"));
    let c = off.counters();
    if strategy == Strategy::Inline {
        assert!(late.is_ok(), "{strategy}: {late:?}");
        assert_eq!((c.submitted, c.completed, c.rejected), (61, 61, 0));
        assert!(seen.payloads().contains(&Bytes::from_static(b"late")));
    } else {
        assert!(
            matches!(late, Err(SubmitError::ShuttingDown)),
            "{strategy}: {late:?}"
        );
        assert_eq!((c.submitted, c.rejected), (60, 1), "{strategy}");
        assert_eq!(seen.len(), 60, "{strategy}: nothing ran after shutdown");
    }
}

for_each_strategy! {
    a_panicking_task_fails_and_the_next_ones_run;
}

/// A task that panics is a failed task (counted, and under `spool` retried then
/// dead-lettered), never a dead executor: the tasks after it still run.
fn a_panicking_task_fails_and_the_next_ones_run(strategy: Strategy) {
    let dir = tmpdir(&format!("panic-{strategy}"));
    let seen = Seen::default();
    let reg = registry(&seen);
    reg.register_async("explode", |_| Box::pin(async { panic!("boom") }));
    reg.register("explode_blocking", |_| panic!("bang"));
    let mut cfg = config(strategy, &dir);
    cfg.retries = 0;
    let off = Offload::new(cfg, reg).unwrap();
    off.submit(Task::new("explode", "x")).unwrap();
    off.submit(Task::new("explode_blocking", "y")).unwrap();
    for i in 0..10 {
        off.submit(Task::new("record_async", format!("after-{i}")))
            .unwrap();
    }
    seen.wait_for(10);
    let deadline = Instant::now() + Duration::from_secs(30);
    while off.counters().failed < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(off.counters().failed, 2, "{strategy}");
    off.shutdown(Duration::from_secs(10));
}

#[test]
fn unknown_and_oversized_tasks_are_refused() {
    let dir = tmpdir("refused");
    let off = Offload::new(config(Strategy::Pool, &dir), registry(&Seen::default())).unwrap();
    assert!(matches!(
        off.submit(Task::new("nope", "x")),
        Err(SubmitError::UnknownTask(_))
    ));
    assert!(matches!(
        off.submit(Task::new("record", vec![0u8; 1 << 20])),
        Err(SubmitError::TooLarge { .. })
    ));
    assert_eq!(off.counters().rejected, 2);
    off.shutdown(Duration::from_secs(1));
}

/// A registry whose `block` task waits until released.
fn blocking_registry() -> (Registry, Arc<(Mutex<bool>, std::sync::Condvar)>) {
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let r = Registry::new();
    let g = gate.clone();
    r.register("block", move |_| {
        let mut open = g.0.lock().unwrap();
        while !*open {
            open = g.1.wait(open).unwrap();
        }
        Ok(())
    });
    (r, gate)
}

fn release(gate: &(Mutex<bool>, std::sync::Condvar)) {
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
}

// Not `inline`: it has no queue (its `submit` runs the task in the caller).
for_each_strategy! {
    full_queue_is_rejected for [loop_, thread, pool, spool];
}

/// A bounded strategy refuses once full: the pool's queue and the thread cap (2), the
/// spool's limit (3), the loop socket's buffer (1 task queued, but the kernel buffers
/// many: up to 100 000 submissions).
fn full_queue_is_rejected(strategy: Strategy) {
    let (queue, tries) = match strategy {
        Strategy::Pool | Strategy::Thread => (2, 10),
        Strategy::Spool => (3, 10),
        Strategy::Loop => (1, 100_000),
        Strategy::Inline => unreachable!("inline has no queue"),
        Strategy::Redis => unreachable!("redis needs a server: tests/it/redis.rs"),
    };
    let dir = tmpdir(&format!("full-{strategy}"));
    let (reg, gate) = blocking_registry();
    let args = OffloadArgs {
        offload: strategy,
        offload_workers: 1,
        offload_queue: queue,
        offload_socket: Some(dir.join("loop.sock")),
        spool_dir: dir.join("spool"),
        spool_max: queue as u64,
        ..OffloadArgs::default()
    };
    let off = Offload::new(OffloadConfig::from_args(&args).unwrap(), reg).unwrap();
    let mut accepted = 0;
    let mut full = false;
    for _ in 0..tries {
        match off.submit(Task::new("block", vec![7u8; 512])) {
            Ok(_) => accepted += 1,
            Err(e) if e.is_full() => {
                full = true;
                break;
            }
            Err(e) => panic!("{strategy}: unexpected {e}"),
        }
    }
    assert!(
        full,
        "{strategy}: never refused after {accepted} submissions"
    );
    assert!(off.counters().rejected >= 1);
    release(&gate);
    off.shutdown(Duration::from_secs(10));
}

/// With one worker, async tasks still run at once: each waits until all of them have
/// started, which would never happen if each held the worker while it waited.
#[test]
fn pool_async_tasks_wait_without_holding_a_worker() {
    const N: usize = 20;
    let dir = tmpdir("pool-async");
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = Registry::new();
    let (s, f) = (started.clone(), finished.clone());
    r.register_async("rendezvous", move |_| {
        let (s, f) = (s.clone(), f.clone());
        Box::pin(async move {
            use std::sync::atomic::Ordering::SeqCst;
            s.fetch_add(1, SeqCst);
            let give_up = Instant::now() + Duration::from_secs(30);
            while s.load(SeqCst) < N {
                if Instant::now() > give_up {
                    return Err(TaskError::new("the other tasks never started"));
                }
                forklift::rt::sleep(Duration::from_millis(5)).await;
            }
            f.fetch_add(1, SeqCst);
            Ok(())
        })
    });
    let args = OffloadArgs {
        offload: Strategy::Pool,
        offload_workers: 1,
        ..OffloadArgs::default()
    };
    let off = Offload::new(OffloadConfig::from_args(&args).unwrap(), r).unwrap();
    for _ in 0..N {
        off.submit(Task::new("rendezvous", &b""[..])).unwrap();
    }
    let report = off.shutdown(Duration::from_secs(60));
    assert_eq!(report.dropped, 0);
    assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), N);
    let c = off.counters();
    assert_eq!((c.completed, c.failed), (N as u64, 0));
    drop(dir);
}

for_each_strategy! {
    delays_are_honoured;
}

fn delays_are_honoured(strategy: Strategy) {
    let dir = tmpdir(&format!("delay-{strategy}"));
    let seen = Seen::default();
    let off = Offload::new(config(strategy, &dir), registry(&seen)).unwrap();
    let delay = Duration::from_millis(300);
    let t0 = Instant::now();
    off.submit(Task::new("record_async", "later").after(delay))
        .unwrap();
    off.submit(Task::new("record", "now")).unwrap();
    seen.wait_for(2);
    let ran = seen.0.lock().unwrap().clone();
    let later = ran
        .iter()
        .find(|(p, _)| &p[..] == b"later")
        .expect("delayed task ran");
    assert!(
        later.1 - t0 >= delay,
        "{strategy}: ran after {:?}",
        later.1 - t0
    );
    off.shutdown(Duration::from_secs(5));
}

#[test]
fn pool_shutdown_drains_and_reports_dropped() {
    let dir = tmpdir("drain");
    let (reg, gate) = blocking_registry();
    let seen = Seen::default();
    let s = seen.clone();
    reg.register("record", move |p| {
        s.0.lock().unwrap().push((p.data.clone(), Instant::now()));
        Ok(())
    });
    let mut cfg = config(Strategy::Pool, &dir);
    cfg.workers = 1;
    let off = Offload::new(cfg, reg).unwrap();
    for i in 0..5 {
        off.submit(Task::new("record", format!("{i}"))).unwrap();
    }
    let report = off.shutdown(Duration::from_secs(10));
    assert_eq!((report.dropped, seen.len()), (0, 5));

    // A worker stuck in a task, with more queued: the drain gives up and says so.
    let dir = tmpdir("drain-stuck");
    let (reg, gate2) = blocking_registry();
    let mut cfg = config(Strategy::Pool, &dir);
    cfg.workers = 1;
    let off = Offload::new(cfg, reg).unwrap();
    for _ in 0..3 {
        off.submit(Task::new("block", "x")).unwrap();
    }
    let report = off.shutdown(Duration::from_millis(100));
    assert_eq!(report.dropped, 3);
    release(&gate);
    release(&gate2);
}

#[test]
fn spool_resumes_what_a_graceful_stop_left_on_the_next_start() {
    let dir = tmpdir("resume");
    let spool_dir = dir.join("spool");
    let seen = Seen::default();
    let off = Offload::new(config(Strategy::Spool, &dir), registry(&seen)).unwrap();
    // Due now (runs before the stop), in 1.5 s (journal, in memory), and in 10 minutes
    // (past the journal's limit: SQLite).
    off.submit(Task::new("record", "now")).unwrap();
    off.submit(Task::new("record", "soon").after(Duration::from_millis(1500)))
        .unwrap();
    off.submit(Task::new("record", "later").after(Duration::from_secs(600)))
        .unwrap();
    seen.wait_for(1);
    let report = off.shutdown(Duration::from_millis(100));
    assert_eq!(report.left_in_spool, 2, "{report:?}");
    let stats = Spool::open(&spool_dir).unwrap().stats().unwrap();
    assert_eq!((stats.pending, stats.journal), (2, 0), "{stats:?}");
    assert_eq!(seen.payloads(), vec![Bytes::from_static(b"now")]);
    // The next start runs the journal's task at its time; the other stays pending.
    let off = Offload::new(config(Strategy::Spool, &dir), registry(&seen)).unwrap();
    off.start().unwrap();
    seen.wait_for(2);
    assert_eq!(
        seen.payloads(),
        vec![Bytes::from_static(b"now"), Bytes::from_static(b"soon")]
    );
    off.shutdown(Duration::from_secs(5));
    assert_eq!(Spool::open(&spool_dir).unwrap().stats().unwrap().pending, 1);
}

#[test]
fn spool_retries_then_dead_letters_then_retries_from_cli() {
    let dir = tmpdir("dead");
    let seen = Seen::default();
    let reg = registry(&seen);
    let off = Offload::new(config(Strategy::Spool, &dir), reg.clone()).unwrap();
    let id = off.submit(Task::new("fail", "payload")).unwrap();
    let spool_dir = dir.join("spool");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Spool::open(&spool_dir).unwrap().stats().unwrap().dead == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let dead = Spool::open(&spool_dir).unwrap().list_dead(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].attempts, 3, "first run + 2 retries");
    assert_eq!(dead[0].error, "backend down");
    let c = off.counters();
    assert_eq!((c.failed, c.retried, c.dead), (3, 2, 1));
    off.shutdown(Duration::from_secs(5));

    // The CLI lists it; after the backend "recovers" a retry completes it.
    let mut out = Vec::new();
    let args = |cmd| SpoolArgs {
        cmd,
        spool_dir: spool_dir.clone(),
        json: false,
    };
    run_spool_cmd(&args(SpoolCmd::List { limit: 10 }), &mut out).unwrap();
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        text.contains("backend down") && text.contains("fail"),
        "{text}"
    );
    let s = seen.clone();
    reg.register("fail", move |p| {
        s.0.lock().unwrap().push((p.data.clone(), Instant::now()));
        Ok(())
    });
    out.clear();
    run_spool_cmd(&args(SpoolCmd::Retry { ids: vec![id] }), &mut out).unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("1 task"));
    let off = Offload::new(config(Strategy::Spool, &dir), reg).unwrap();
    off.start().unwrap();
    seen.wait_for(1);
    assert_eq!(seen.payloads(), vec![Bytes::from_static(b"payload")]);
    off.shutdown(Duration::from_secs(5));
    out.clear();
    run_spool_cmd(&args(SpoolCmd::Stats), &mut out).unwrap();
    assert!(String::from_utf8_lossy(&out).contains("dead 0"));
}

#[test]
fn spool_skips_corrupt_entries() {
    let dir = tmpdir("corrupt");
    let spool_dir = dir.join("spool");
    {
        let mut s = Spool::open(&spool_dir).unwrap();
        s.insert_batch(&[
            ("record", b"good-1", 0),
            ("record", b"bad", 0),
            ("record", b"good-2", 0),
        ])
        .unwrap();
    }
    // Damage one row behind the spool's back: truncated payload, wrong checksum.
    let db = rusqlite::Connection::open(spool_dir.join(forklift::offload::spool::DB_FILE)).unwrap();
    db.execute(
        "UPDATE tasks SET payload = X'6261' WHERE payload = X'626164'",
        [],
    )
    .unwrap();
    drop(db);
    let seen = Seen::default();
    let off = Offload::new(config(Strategy::Spool, &dir), registry(&seen)).unwrap();
    off.start().unwrap();
    seen.wait_for(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Spool::open(&spool_dir).unwrap().stats().unwrap().dead == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    off.shutdown(Duration::from_secs(5));
    assert_eq!(
        seen.payloads(),
        vec![Bytes::from_static(b"good-1"), Bytes::from_static(b"good-2")]
    );
    let dead = Spool::open(&spool_dir).unwrap().list_dead(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].error.contains("corrupt"), "{:?}", dead[0]);
}

/// Starts a child that submits spool tasks from 4 threads, SIGKILLs it after about
/// 400 acknowledgements, and returns the acknowledged task ids.
fn kill_mid_burst(dir: &Path) -> Vec<u64> {
    let mut submitter = child("submit", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(submitter.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    // Kill it mid-burst: after a few hundred acknowledgements.
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.parse::<u64>().unwrap());
            if acked.len() == 400 {
                break;
            }
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(submitter.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Acknowledgements already written before the kill count too.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.parse::<u64>().unwrap());
        }
    }
    let status = submitter.wait().unwrap();
    assert!(!status.success(), "the child was killed");
    assert!(acked.len() >= 400);
    acked
}

/// Runs every task left in the spool in a new child; returns how many times each task
/// ran, and the child's standard error.
fn run_left(dir: &Path) -> (HashMap<u64, u32>, String) {
    let out = child("run", dir).stdout(Stdio::null()).output().unwrap();
    assert!(out.status.success());
    let done = std::fs::read_to_string(dir.join("done.txt")).unwrap_or_default();
    let mut runs: HashMap<u64, u32> = HashMap::new();
    for l in done.lines() {
        *runs.entry(l.parse().unwrap()).or_default() += 1;
    }
    (runs, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn spool_survives_sigkill_mid_burst() {
    let dir = tmpdir("sigkill");
    let acked = kill_mid_burst(&dir);
    // A new runner on the same spool finishes everything.
    let (runs, _) = run_left(&dir);
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|id| !runs.contains_key(id))
        .collect();
    assert!(
        lost.is_empty(),
        "lost {} acknowledged tasks: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let duplicates: u32 = runs.values().map(|n| n - 1).sum();
    eprintln!(
        "sigkill: {} acknowledged, {} run, {} duplicate run(s)",
        acked.len(),
        runs.len(),
        duplicates
    );
    let stats = Spool::open(&dir.join("spool")).unwrap().stats().unwrap();
    assert_eq!(stats.pending, 0);
    let left = std::fs::read_dir(dir.join("spool/journal"))
        .unwrap()
        .count();
    assert_eq!(
        left, 0,
        "the dead process's journal was imported and removed"
    );
}

#[test]
fn spool_skips_and_reports_a_damaged_journal_record() {
    let dir = tmpdir("sigkill-damaged");
    let acked = kill_mid_burst(&dir);
    // Damage one byte in the middle of the written part of the killed process's journal.
    let journal = std::fs::read_dir(dir.join("spool/journal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::metadata(p).map(|m| m.len() > 16).unwrap_or(false))
        .expect("the killed process's journal");
    let mut data = std::fs::read(&journal).unwrap();
    let used = 16
        + data[16..]
            .windows(64)
            .position(|w| w.iter().all(|&b| b == 0))
            .unwrap_or(data.len() - 16);
    data[used / 2] ^= 0x55;
    std::fs::write(&journal, &data).unwrap();
    let (runs, stderr) = run_left(&dir);
    assert!(stderr.contains("damaged record"), "{stderr}");
    // At most the one task in the damaged record is gone (a damaged `done` record
    // only means tasks run twice).
    let lost = acked.iter().filter(|id| !runs.contains_key(id)).count();
    assert!(lost <= 1, "lost {lost}");
}

#[test]
fn loop_host_serves_forked_workers() {
    let dir = tmpdir("prefork");
    let out = child("prefork-loop", &dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REPORT "))
        .unwrap_or_else(|| panic!("no report line in {stdout}"));
    assert!(report.contains("\"dropped\":0"), "{report}");
    let done = std::fs::read_to_string(dir.join("done.txt")).unwrap();
    let mut lines: Vec<&str> = done.lines().collect();
    lines.sort();
    let mut expected: Vec<String> = (0..2)
        .flat_map(|w| (0..50).map(move |i| format!("w{w}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(lines, expected);
}

for_each_strategy! {
    slowlog_answers_at_once_and_logs_every_request;
}

fn slowlog_answers_at_once_and_logs_every_request(strategy: Strategy) {
    let dir = tmpdir(&format!("slowlog-{strategy}"));
    let cfg = config(strategy, &dir);
    let log = cfg.slowlog_file.clone();
    let off = Offload::new(cfg, Registry::new()).unwrap();
    let app = SlowLog::new(off.clone());
    for may_block in [true, false] {
        for _ in 0..5 {
            let reply = app.call(request(b"hello body"), &CallContext { may_block });
            let resp = match reply {
                Reply::Ready(r) => r,
                Reply::Later(f) => forklift::rt::block_on(f),
            };
            assert_eq!(resp.status, 200, "{strategy}");
            assert!(matches!(&resp.body, forklift::app::Body::Full(b) if &b[..] == b"Doobie Doo"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while forklift::app::slowlog::count_records(&log) < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    app.shutdown();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 10, "{strategy}");
    assert!(
        text.contains("POST /log?x=1 HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\nhello body"),
        "{text}"
    );
    assert_eq!(app.requests(), 10);
}

#[test]
fn loop_host_killed_is_restarted_and_workers_reconnect() {
    let dir = tmpdir("respawn");
    let out = child("loop-respawn", &dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = std::fs::read_to_string(dir.join("done.txt")).unwrap();
    let mut lines: Vec<&str> = done.lines().collect();
    lines.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    expected.sort();
    assert_eq!(lines, expected);
}

#[test]
fn loop_without_host_is_served_by_one_of_the_workers() {
    // As with --lazy-apps: no start_in_master; each worker starts its engine after fork,
    // one of them serves the socket, and when it exits another takes over.
    let dir = tmpdir("lazy");
    let out = child("loop-lazy", &dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = std::fs::read_to_string(dir.join("done.txt")).unwrap();
    let mut lines: Vec<&str> = done.lines().collect();
    lines.sort();
    let mut expected: Vec<String> = (0..3)
        .flat_map(|w| (0..30).map(move |i| format!("w{w}-{i:02}")))
        .collect();
    expected.sort();
    assert_eq!(lines, expected);
}

/// Sends one HTTP request and returns the response (read to the end: `Connection: close`).
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// builtin:slowlog behind the real pre-fork master (2 workers): every request is
/// answered and, after SIGTERM, every task has run (the host drains when the master goes).
fn slowlog_behind_master(strategy: Strategy) {
    let dir = tmpdir(&format!("master-{strategy}"));
    let mut server = child("serve-master", &dir)
        .env("FORKLIFT_OFFLOAD_STRATEGY", strategy.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let mut port = 0u16;
    let mut pid = 0i32;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(p) = line.strip_prefix("PID ") {
            pid = p.parse().unwrap();
        }
        if let Some(p) = line.strip_prefix("PORT ") {
            port = p.parse().unwrap();
            break;
        }
    }
    assert!(port > 0 && pid > 0);
    for i in 0..20 {
        let resp = http_get(port, &format!("/r{i}"));
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("Doobie Doo"), "{resp}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    for _ in lines {}
    assert!(server.wait().unwrap().success());
    // The host may still be finishing its drain after the master exits.
    let log = dir.join("slow.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while forklift::app::slowlog::count_records(&log) < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    for i in 0..20 {
        assert!(
            text.contains(&format!("GET /r{i} HTTP/1.1")),
            "request {i} not logged"
        );
    }
    assert_eq!(text.lines().count(), 20);
}

for_each_strategy! {
    slowlog_behind_prefork_master => slowlog_behind_master;
}

/// The Python glue: `@forklift.task` functions run through the engine, `task.spool()`
/// lands in the spool, `forklift.offload(func)` runs on the engine's pool.
#[cfg(feature = "python")]
#[test]
fn python_tasks_spool_and_offload_through_the_engine() {
    if !crate::support::isolated("offload::python_tasks_spool_and_offload_through_the_engine") {
        return;
    }
    let dir = tmpdir("python");
    let out = dir.join("notes.txt");
    let app_file = dir.join("app.py");
    std::fs::write(
        &app_file,
        format!(
            r#"
import forklift

OUT = {out:?}

@forklift.task(name="note")
def note(text):
    with open(OUT, "a") as f:
        f.write(text + "\n")

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/spool":
        body = note.spool(text="spooled")
    else:
        forklift.offload(note, text="offloaded")
        body = "queued"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
"#,
            out = out.display().to_string()
        ),
    )
    .unwrap();
    let app = forklift::python::load_app(&forklift::python::PythonOptions {
        wsgi_file: Some(app_file),
        ..Default::default()
    })
    .unwrap();
    let get = |path: &'static str| {
        let mut req = request(b"");
        req.method = Bytes::from_static(b"GET");
        req.target = Bytes::from_static(path.as_bytes());
        let resp = match app.call(req, &CallContext { may_block: true }) {
            Reply::Ready(r) => r,
            Reply::Later(f) => forklift::rt::block_on(f),
        };
        match resp.body {
            forklift::app::Body::Full(b) => String::from_utf8_lossy(&b).into_owned(),
            other => panic!("{other:?}"),
        }
    };
    let lines = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.lines().count() >= n || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    let pool = Offload::new(config(Strategy::Pool, &dir), Registry::new()).unwrap();
    let glue = forklift::offload::python::install(&pool);
    assert!(glue.executor && !glue.spool_sink);
    assert_eq!(glue.tasks, vec!["note".to_string()]);
    assert_eq!(get("/offload"), "queued");
    assert_eq!(lines(1), "offloaded\n");
    assert!(pool.counters().completed >= 1, "ran on the engine's pool");

    let spool = Offload::new(config(Strategy::Spool, &dir), Registry::new()).unwrap();
    let glue = forklift::offload::python::install(&spool);
    assert!(glue.spool_sink);
    spool.start().unwrap();
    let id: u64 = get("/spool").parse().unwrap();
    assert!(id > 0);
    assert_eq!(lines(2), "offloaded\nspooled\n");
    spool.shutdown(Duration::from_secs(5));
    pool.shutdown(Duration::from_secs(5));
}

#[test]
fn slowlog_defers_with_delay_and_refuses_a_bad_one() {
    let dir = tmpdir("slowlog-delay");
    let cfg = config(Strategy::Pool, &dir);
    let done = forklift::app::slowlog::done_file(&cfg.slowlog_file);
    let app = SlowLog::new(Offload::new(cfg, Registry::new()).unwrap());
    let call = |target: &'static str| {
        let mut req = request(b"");
        req.target = Bytes::from_static(target.as_bytes());
        match app.call(req, &CallContext { may_block: true }) {
            Reply::Ready(r) => r.status,
            Reply::Later(f) => forklift::rt::block_on(f).status,
        }
    };
    assert_eq!(call("/?delay=soon"), 400);
    assert_eq!(call("/?delay=-1"), 400);
    let t0 = Instant::now();
    assert_eq!(call("/?delay=0.3"), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while forklift::app::slowlog::count_records(&done) < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "the task waited for its delay"
    );
    app.shutdown();
}

/// Child process modes (run by the tests above through `support::child`); a no-op
/// when run as an ordinary test.
#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("FORKLIFT_OFFLOAD_CHILD") else {
        return;
    };
    // The harness has printed "test child_entry ... " without a newline.
    println!();
    let dir = PathBuf::from(std::env::var("FORKLIFT_OFFLOAD_DIR").unwrap());
    let done = dir.join("done.txt");
    let reg = Registry::new();
    let d = done.clone();
    // Records the task id (spool) or payload (loop) as one line, appended.
    reg.register("mark", move |p| {
        use std::io::Write;
        let line = if p.data.is_empty() {
            format!("{}\n", p.id)
        } else {
            format!("{}\n", String::from_utf8_lossy(&p.data))
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&d)?
            .write_all(line.as_bytes())?;
        Ok(())
    });
    match mode.as_str() {
        "submit" => {
            // Submitters on several threads (so commits are shared), printing each id
            // as soon as submit returns; runs tasks meanwhile; never exits by itself.
            let off = Offload::new(config(Strategy::Spool, &dir), reg).unwrap();
            off.start().unwrap();
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let off = off.clone();
                    std::thread::spawn(move || loop {
                        if let Ok(id) = off.submit(Task::new("mark", Bytes::new())) {
                            use std::io::Write;
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "ACK {id}");
                            let _ = out.flush();
                        }
                    })
                })
                .collect();
            for h in handles {
                let _ = h.join();
            }
        }
        "run" => {
            let off = Offload::new(config(Strategy::Spool, &dir), reg).unwrap();
            off.start().unwrap();
            let spool = Spool::open(&dir.join("spool")).unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            while spool.stats().unwrap().pending > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let report = off.shutdown(Duration::from_secs(10));
            println!("REPORT {}", serde_json::to_string(&report).unwrap());
        }
        "prefork-loop" => {
            // A master that starts the loop host, forks two workers that submit 50
            // tasks each, waits for them, then drains the host.
            let off = Offload::new(config(Strategy::Loop, &dir), reg).unwrap();
            off.start_in_master().unwrap();
            let mut kids = Vec::new();
            for w in 0..2 {
                // SAFETY: this child process runs one test on one thread; the forked
                // worker only submits and exits with _exit.
                match unsafe { nix::unistd::fork() }.unwrap() {
                    nix::unistd::ForkResult::Child => {
                        off.after_fork_in_worker();
                        let mut code = 0;
                        for i in 0..50 {
                            let task = Task::new("mark", format!("w{w}-{i}"));
                            if off.submit(task).is_err() {
                                code = 1;
                            }
                        }
                        off.shutdown(Duration::from_secs(5));
                        // SAFETY: leave without running the parent's exit handlers.
                        unsafe { libc::_exit(code) };
                    }
                    nix::unistd::ForkResult::Parent { child } => kids.push(child),
                }
            }
            for k in kids {
                let st = nix::sys::wait::waitpid(k, None).unwrap();
                assert!(
                    matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
                    "{st:?}"
                );
            }
            // The master reads the host's counters over the socket.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let c = off.executor_counters().expect("host answers");
                if c.completed == 100 || Instant::now() > deadline {
                    assert_eq!((c.completed, c.failed), (100, 0), "{c:?}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let report = off.shutdown(Duration::from_secs(10));
            println!("REPORT {}", serde_json::to_string(&report).unwrap());
        }
        "serve-master" => {
            // Fork first so the master runs single-threaded, as in the real binary
            // (the test harness has other threads, which would receive SIGTERM).
            // SAFETY: the child only runs the server and exits.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Parent { child } => {
                    let st = nix::sys::wait::waitpid(child, None).unwrap();
                    assert!(
                        matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
                        "{st:?}"
                    );
                }
                nix::unistd::ForkResult::Child => {
                    let strategy = match std::env::var("FORKLIFT_OFFLOAD_STRATEGY").as_deref() {
                        Ok("spool") => Strategy::Spool,
                        Ok("pool") => Strategy::Pool,
                        Ok("thread") => Strategy::Thread,
                        Ok("inline") => Strategy::Inline,
                        _ => Strategy::Loop,
                    };
                    let off = Offload::new(config(strategy, &dir), Registry::new()).unwrap();
                    let app: forklift::app::App = Arc::new(SlowLog::new(off));
                    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    let port = listener.local_addr().unwrap().port();
                    println!("PID {}\nPORT {port}", std::process::id());
                    let cfg = forklift::server::config::ServerConfig {
                        processes: 2,
                        master: true,
                        ..Default::default()
                    };
                    let log = forklift::server::log::Log::stderr(false);
                    let code = forklift::server::master::run(
                        vec![listener.into()],
                        forklift::server::master::AppSource::Preloaded(app),
                        cfg,
                        log,
                    )
                    .unwrap();
                    // SAFETY: leave without the harness's exit handlers.
                    unsafe { libc::_exit(code) };
                }
            }
        }
        "loop-respawn" => {
            // A master starts the loop host and forks a worker that submits 10 tasks;
            // the host is killed with SIGKILL; the master notices and starts a new one;
            // the same worker submits 10 more, which the new host runs.
            let off = Offload::new(config(Strategy::Loop, &dir), reg).unwrap();
            off.start_in_master().unwrap();
            let go = dir.join("go");
            let count = |d: &Path| {
                std::fs::read_to_string(d.join("done.txt"))
                    .map(|t| t.lines().count())
                    .unwrap_or(0)
            };
            // SAFETY: this child process runs one test on one thread; the forked
            // worker only submits and exits with _exit.
            let worker = match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    off.after_fork_in_worker();
                    let mut code = 0;
                    for i in 0..10 {
                        code |= off.submit(Task::new("mark", format!("t{i:02}"))).is_err() as i32;
                    }
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !go.exists() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    for i in 10..20 {
                        if let Err(e) = off.submit(Task::new("mark", format!("t{i:02}"))) {
                            eprintln!("worker: {e}");
                            code = 1;
                        }
                    }
                    off.shutdown(Duration::from_secs(5));
                    // SAFETY: leave without running the parent's exit handlers.
                    unsafe { libc::_exit(code) };
                }
                nix::unistd::ForkResult::Parent { child } => child,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while count(&dir) < 10 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let host = off.host_pid().expect("host pid");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(host as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !off.maintain_in_master().unwrap() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_ne!(off.host_pid(), Some(host), "a new host runs");
            std::fs::write(&go, b"").unwrap();
            let st = nix::sys::wait::waitpid(worker, None).unwrap();
            assert!(
                matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
                "{st:?}"
            );
            let report = off.shutdown(Duration::from_secs(10));
            println!("REPORT {}", serde_json::to_string(&report).unwrap());
        }
        "loop-lazy" => {
            let off = Offload::new(config(Strategy::Loop, &dir), reg).unwrap();
            let mut kids = Vec::new();
            for w in 0..3 {
                // SAFETY: this child process runs one test on one thread; the forked
                // worker only submits and exits with _exit.
                match unsafe { nix::unistd::fork() }.unwrap() {
                    nix::unistd::ForkResult::Child => {
                        off.after_fork_in_worker();
                        let mut code = 0;
                        for i in 0..30 {
                            if let Err(e) = off.submit(Task::new("mark", format!("w{w}-{i:02}"))) {
                                eprintln!("worker {w}: {e}");
                                code = 1;
                            }
                            std::thread::sleep(Duration::from_millis(w as u64));
                        }
                        off.shutdown(Duration::from_secs(5));
                        // SAFETY: leave without running the parent's exit handlers.
                        unsafe { libc::_exit(code) };
                    }
                    nix::unistd::ForkResult::Parent { child } => kids.push(child),
                }
            }
            for k in kids {
                let st = nix::sys::wait::waitpid(k, None).unwrap();
                assert!(
                    matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
                    "{st:?}"
                );
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}
