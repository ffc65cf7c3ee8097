//! Integration tests of the `redis` offload strategy against a real `redis-server`
//! (each test starts its own on a free port, in its own directory, with `appendonly
//! yes` and `appendfsync always`, and stops it): serving processes submit, `forklift
//! worker` processes run each task once, a killed worker's task is claimed by another,
//! a Redis restart loses no acknowledged submission, and retries, dead letters,
//! malformed entries and unknown task names behave as the issue and the spool say.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use forklift::cli::{run_spool_cli, SpoolCli, SpoolCmd};
use forklift::offload::{
    Offload, OffloadArgs, OffloadConfig, RedisArgs, Registry, Strategy, Task, TaskError,
};

use crate::support::{read_response, signal, wait_exit, Response, Server, BIN, IO_GUARD};

/// One GET on a fresh connection to `addr`.
fn get(addr: std::net::SocketAddr, path: &str) -> Response {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_GUARD)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut BufReader::new(s), false).expect("response")
}

/// Generous bound on every wait, so a broken build fails instead of hanging.
const GUARD: Duration = Duration::from_secs(30);

/// A fresh directory, removed when dropped.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new(name: &str) -> TmpDir {
        let d =
            std::env::temp_dir().join(format!("forklift-redis-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TmpDir(d)
    }
}

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `redis-server` binary: on PATH, or Debian's.
fn redis_server_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("redis-server"))
            .find(|f| f.is_file())
    });
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"));
    assert!(
        bin.is_file(),
        "redis-server not found on PATH nor at /usr/bin/redis-server: install it \
         (`apt-get install redis-server`; .ci/run does) to run the redis tests"
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of this test, stopped (SIGKILL) when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: dir.join("redis"),
        };
        std::fs::create_dir_all(&r.dir).unwrap();
        r.boot();
        r
    }

    /// Starts the server on its port and directory (reloading its append-only file)
    /// and waits until it answers.
    fn boot(&mut self) {
        let child = Command::new(redis_server_bin())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + GUARD;
        loop {
            let ok = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ok.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start: {ok:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: what the server acknowledged is in its append-only file.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `forklift worker` child process, SIGKILLed if still running when dropped.
struct Worker {
    child: Child,
}

impl Worker {
    fn start(args: &[&str]) -> Worker {
        let mut child = Command::new(BIN)
            .arg("worker")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn forklift worker");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut said = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !said && line.contains("running queue") {
                    said = true;
                    let _ = tx.send(());
                }
                eprintln!("worker: {line}");
            }
        });
        rx.recv_timeout(GUARD)
            .unwrap_or_else(|_| panic!("forklift worker {args:?} did not start"));
        Worker { child }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits (bounded) until `path` has at least `n` lines.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + GUARD;
    loop {
        let l = lines(path);
        if l.len() >= n || Instant::now() > deadline {
            return l;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// slowlog's options for a test: the log in `dir`, no wait.
fn slowlog_args(redis: &Redis, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "builtin:slowlog",
        "--offload",
        "redis",
        "--redis-url",
        &redis.url(),
        "--slowlog-file",
        dir.join("slow.log").to_str().unwrap(),
        "--redis-claim-after",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn two_servers_three_workers_run_each_task_exactly_once() {
    let dir = TmpDir::new("once");
    let redis = Redis::start(&dir);
    let wargs = slowlog_args(&redis, &dir, &["--task-seconds", "0"]);
    let _workers: Vec<Worker> = (0..3).map(|_| Worker::start(&refs(&wargs))).collect();
    let sargs = slowlog_args(&redis, &dir, &["--no-run-tasks"]);
    let servers = [Server::start(&refs(&sargs)), Server::start(&refs(&sargs))];
    let per_server = 100;
    std::thread::scope(|s| {
        for srv in &servers {
            let addr = srv.addr;
            s.spawn(move || {
                for i in 0..per_server {
                    let r = get(addr, &format!("/?n={i}"));
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            });
        }
    });
    let total = 2 * per_server;
    let done = wait_lines(&dir.join("slow.log.done"), total);
    assert_eq!(done.len(), total, "every acknowledged task ran");
    // Give a duplicate the time to show up, then check there is none.
    std::thread::sleep(Duration::from_millis(300));
    let done = lines(&dir.join("slow.log.done"));
    let unique: HashSet<&String> = done.iter().collect();
    assert_eq!(
        (done.len(), unique.len()),
        (total, total),
        "no task ran twice"
    );
    let mut out = Vec::new();
    run_spool_cli(&spool_cli(&redis, SpoolCmd::Stats), &mut out).unwrap();
    let stats = String::from_utf8(out).unwrap();
    assert!(stats.contains("pending 0"), "{stats}");
    assert!(stats.contains(&format!("completed {total}")), "{stats}");
}

fn spool_cli(redis: &Redis, cmd: SpoolCmd) -> SpoolCli {
    SpoolCli {
        cmd,
        spool_dir: PathBuf::from("unused"),
        json: false,
        redis_url: Some(redis.url()),
        redis_queue: "default".into(),
        redis_prefix: "forklift".into(),
    }
}

fn spool_text(redis: &Redis, cmd: SpoolCmd) -> String {
    let mut out = Vec::new();
    run_spool_cli(&spool_cli(redis, cmd), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn a_worker_killed_mid_task_has_its_task_claimed_by_another() {
    let dir = TmpDir::new("claim");
    let redis = Redis::start(&dir);
    // The first worker's task takes a minute: it is killed in the middle.
    let slow = slowlog_args(&redis, &dir, &["--task-seconds", "60"]);
    let mut first = Worker::start(&refs(&slow));
    let sargs = slowlog_args(&redis, &dir, &["--no-run-tasks"]);
    let server = Server::start(&refs(&sargs));
    assert_eq!(server.get("/?n=1").status, 200);
    let started = wait_lines(&dir.join("slow.log"), 1);
    assert_eq!(started.len(), 1, "the task started in the first worker");
    signal(first.child.id() as i32, libc::SIGKILL);
    let _ = first.child.wait();
    let fast = slowlog_args(&redis, &dir, &["--task-seconds", "0"]);
    let _second = Worker::start(&refs(&fast));
    let done = wait_lines(&dir.join("slow.log.done"), 1);
    assert_eq!(done.len(), 1, "the second worker ran the abandoned task");
    assert!(
        started[0].contains(&format!("id={} ", done[0])),
        "{started:?} {done:?}"
    );
    let stats = spool_text(&redis, SpoolCmd::Stats);
    assert!(stats.contains("redelivered 1"), "{stats}");
    assert!(stats.contains("pending 0"), "{stats}");
}

#[test]
fn a_redis_restart_loses_no_acknowledged_submission() {
    let dir = TmpDir::new("restart");
    let mut redis = Redis::start(&dir);
    let wargs = slowlog_args(
        &redis,
        &dir,
        &["--task-seconds", "0", "--redis-timeout", "1"],
    );
    let _worker = Worker::start(&refs(&wargs));
    let sargs = slowlog_args(&redis, &dir, &["--no-run-tasks", "--redis-timeout", "1"]);
    let server = Server::start(&refs(&sargs));
    let stop = AtomicBool::new(false);
    let answers: Mutex<HashMap<u64, u16>> = Mutex::new(HashMap::new());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (addr, stop, answers) = (server.addr, &stop, &answers);
            s.spawn(move || {
                let mut n = t;
                while !stop.load(Ordering::Relaxed) {
                    let r = get(addr, &format!("/?n={n}"));
                    match r.status {
                        200 => {}
                        503 => {
                            assert!(r.header("retry-after").is_some(), "503 without Retry-After")
                        }
                        other => panic!("request {n}: status {other}: {}", r.text()),
                    }
                    answers.lock().unwrap().insert(n, r.status);
                    n += 4;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        redis.kill();
        std::thread::sleep(Duration::from_millis(300));
        redis.boot();
        // Submissions succeed again once the server is back.
        let deadline = Instant::now() + GUARD;
        loop {
            let before = answers.lock().unwrap().len();
            std::thread::sleep(Duration::from_millis(200));
            let recent_ok = server.get("/?n=999999").status == 200;
            if recent_ok && answers.lock().unwrap().len() > before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "submissions never succeeded again"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
    });
    let answers = answers.into_inner().unwrap();
    let ok: Vec<u64> = answers
        .iter()
        .filter(|(_, s)| **s == 200)
        .map(|(n, _)| *n)
        .collect();
    assert!(!ok.is_empty());
    // Every acknowledged request's task ran: its log line names the request and the
    // task id, and the id is in the done file.
    let deadline = Instant::now() + GUARD;
    let missing = loop {
        let log = lines(&dir.join("slow.log"));
        let done: HashSet<String> = lines(&dir.join("slow.log.done")).into_iter().collect();
        let ran = |n: u64| {
            let needle = format!("GET /?n={n} HTTP");
            log.iter().any(|l| {
                l.contains(&needle)
                    && l.split_whitespace()
                        .find_map(|f| f.strip_prefix("id="))
                        .is_some_and(|id| done.contains(id))
            })
        };
        let missing: Vec<u64> = ok.iter().copied().filter(|&n| !ran(n)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged submissions never ran: {missing:?}",
        missing.len(),
        ok.len()
    );
}

/// An engine of this process on `redis`, running tasks from `registry`.
fn engine(redis: &Redis, registry: Registry) -> Offload {
    let args = OffloadArgs {
        offload: Strategy::Redis,
        offload_workers: 4,
        task_retries: 2,
        task_backoff: 0.05,
        redis: RedisArgs {
            redis_url: redis.url(),
            redis_claim_after: 1.0,
            ..RedisArgs::default()
        },
        ..OffloadArgs::default()
    };
    let off = Offload::new(OffloadConfig::from_args(&args).unwrap(), registry).unwrap();
    off.start().unwrap();
    off
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn retries_back_off_then_dead_letter_and_spool_retry_runs_again() {
    let dir = TmpDir::new("retry");
    let redis = Redis::start(&dir);
    let attempts: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let healthy = Arc::new(AtomicBool::new(false));
    let reg = Registry::new();
    let (a, h) = (attempts.clone(), healthy.clone());
    reg.register("flaky", move |p| {
        a.lock().unwrap().push((p.attempt, Instant::now()));
        if h.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(TaskError::new("backend down"))
        }
    });
    reg.register("bad", |_| Err(TaskError::permanent("bad payload")));
    let off = engine(&redis, reg);
    let id = off.submit(Task::new("flaky", "x")).unwrap();
    let bad = off.submit(Task::new("bad", "y")).unwrap();
    wait_until("both dead-lettered", || {
        spool_text(&redis, SpoolCmd::Stats).contains("dead 2")
    });
    let seen = attempts.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "one run and two retries"
    );
    // Backoff: 50 ms, then 100 ms (the mover runs every 100 ms, so never sooner).
    assert!(
        seen[1].1 - seen[0].1 >= Duration::from_millis(45),
        "{seen:?}"
    );
    assert!(
        seen[2].1 - seen[1].1 >= Duration::from_millis(95),
        "{seen:?}"
    );
    let list = spool_text(&redis, SpoolCmd::List { limit: 10 });
    assert!(
        list.contains("flaky") && list.contains("backend down"),
        "{list}"
    );
    assert!(
        list.contains("bad payload"),
        "a permanent failure is not retried: {list}"
    );
    let row = list.lines().find(|l| l.contains("flaky")).unwrap();
    assert!(row.trim_start().starts_with(&id.to_string()), "{row}");
    assert!(row.contains(" 3 "), "three attempts: {row}");
    healthy.store(true, Ordering::SeqCst);
    let out = spool_text(&redis, SpoolCmd::Retry { ids: vec![id] });
    assert!(out.starts_with("1 task(s)"), "{out}");
    wait_until("the retried task ran", || {
        attempts.lock().unwrap().len() == 4
    });
    assert_eq!(attempts.lock().unwrap()[3].0, 1, "attempts start again");
    wait_until("completed", || {
        spool_text(&redis, SpoolCmd::Stats).contains("completed 1")
    });
    let out = spool_text(&redis, SpoolCmd::Purge { ids: vec![bad] });
    assert!(out.starts_with("1 dead"), "{out}");
    let stats = spool_text(&redis, SpoolCmd::Stats);
    assert!(
        stats.contains("dead 0") && stats.contains("pending 0"),
        "{stats}"
    );
    let c = off.counters();
    assert_eq!((c.retried, c.dead, c.completed), (2, 2, 1), "{c:?}");
    off.shutdown(Duration::from_secs(5));
}

#[test]
fn malformed_entries_are_dead_lettered_and_unknown_names_stay_pending() {
    let dir = TmpDir::new("malformed");
    let redis = Redis::start(&dir);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let reg = Registry::new();
    let r = ran.clone();
    reg.register("record", move |p| {
        r.lock().unwrap().push(p.data.clone());
        Ok(())
    });
    let off = engine(&redis, reg);
    let mut c = redis.conn();
    let stream = "forklift:{default}:stream";
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("garbage")
        .arg("1")
        .query(&mut c)
        .unwrap();
    let _: i64 = redis::cmd("ZADD")
        .arg("forklift:{default}:delayed")
        .arg(0)
        .arg("not a task")
        .query(&mut c)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("id")
        .arg(7)
        .arg("name")
        .arg("nobody")
        .arg("payload")
        .arg("z")
        .query(&mut c)
        .unwrap();
    off.submit(Task::new("record", "after")).unwrap();
    wait_until("the good task ran", || ran.lock().unwrap().len() == 1);
    wait_until("both malformed entries dead-lettered", || {
        spool_text(&redis, SpoolCmd::Stats).contains("dead 2")
    });
    let list = spool_text(&redis, SpoolCmd::List { limit: 10 });
    assert!(
        list.contains("malformed entry: field `id` is missing"),
        "{list}"
    );
    assert!(list.contains("could not be decoded"), "{list}");
    let stats = spool_text(&redis, SpoolCmd::Stats);
    assert!(
        stats.contains("unknown 1 (no worker knows: nobody)"),
        "{stats}"
    );
    assert!(stats.contains("pending 1"), "{stats}");
    off.shutdown(Duration::from_secs(5));
}

#[test]
fn delayed_tasks_wait_and_a_graceful_stop_gives_back_what_it_holds() {
    let dir = TmpDir::new("delay");
    let redis = Redis::start(&dir);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let reg = Registry::new();
    let r = ran.clone();
    reg.register("record", move |p| {
        r.lock().unwrap().push((p.data.clone(), Instant::now()));
        Ok(())
    });
    reg.register("forever", |_| {
        std::thread::sleep(Duration::from_secs(2));
        Ok(())
    });
    let off = engine(&redis, reg);
    let t0 = Instant::now();
    off.submit(Task::new("record", "later").after(Duration::from_millis(300)))
        .unwrap();
    off.submit(Task::new("record", "now")).unwrap();
    wait_until("both ran", || ran.lock().unwrap().len() == 2);
    let ran = ran.lock().unwrap().clone();
    assert_eq!(&ran[0].0[..], b"now");
    assert!(
        ran[1].1 - t0 >= Duration::from_millis(300),
        "the delay held"
    );
    off.submit(Task::new("forever", "")).unwrap();
    wait_until("running", || off.counters().running == 1);
    let report = off.shutdown(Duration::from_millis(200));
    assert_eq!(report.left_in_spool, 1, "{report:?}");
    let stats = spool_text(&redis, SpoolCmd::Stats);
    assert!(
        stats.contains("waiting 1") && stats.contains("in flight 0"),
        "{stats}"
    );
}

#[test]
fn unreachable_redis_is_a_one_line_error_and_redis_wait_waits() {
    let dir = TmpDir::new("unreachable");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let out = Command::new(BIN)
        .args([
            "serve",
            "builtin:slowlog",
            "--offload",
            "redis",
            "--redis-url",
            &url,
        ])
        .args(["--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&url) && err.contains("--redis-wait"), "{err}");
    // With --redis-wait the server waits for Redis to come up.
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "builtin:slowlog",
            "--offload",
            "redis",
            "--redis-url",
            &url,
        ])
        .args(["--redis-wait", "20", "--http", "127.0.0.1:0"])
        .arg("--slowlog-file")
        .arg(dir.join("slow.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(GUARD).unwrap();
    assert!(first.contains("waiting up to 20s for Redis"), "{first}");
    let mut redis = Redis {
        child: None,
        port,
        dir: dir.join("redis"),
    };
    std::fs::create_dir_all(&redis.dir).unwrap();
    redis.boot();
    let banner = rx.recv_timeout(GUARD).unwrap();
    assert!(banner.contains("listening on"), "{banner}");
    let addr = banner.split("http://").nth(1).unwrap();
    let addr = addr.split_whitespace().next().unwrap().parse().unwrap();
    // A request served: it submitted to Redis (and the signal handlers are in place).
    assert_eq!(get(addr, "/").status, 200);
    signal(child.id() as i32, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());
}

/// The Python API on Redis: a WSGI app's `task.spool()` (also with a delay) submits
/// from `serve --no-run-tasks`, and `forklift worker --wsgi-file` runs the
/// `@forklift.task` function; a task that raises is retried, then dead-lettered.
#[cfg(feature = "python")]
#[test]
fn python_tasks_go_through_redis_to_a_python_worker() {
    let dir = TmpDir::new("python");
    let redis = Redis::start(&dir);
    let out = dir.join("notes.txt");
    let app = dir.join("app.py");
    std::fs::write(
        &app,
        format!(
            r#"
import forklift

OUT = {out:?}

@forklift.task(name="note")
def note(text):
    with open(OUT, "a") as f:
        f.write(text + "\n")

@forklift.task(name="boom")
def boom():
    raise RuntimeError("kaboom")

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/later":
        body = note.spool_after(0.2, text="later")
    elif path == "/boom":
        body = boom.spool()
    else:
        body = note.spool(text="now")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
"#,
            out = out.display().to_string()
        ),
    )
    .unwrap();
    let common = [
        "--redis-url",
        &redis.url(),
        "--wsgi-file",
        app.to_str().unwrap(),
        "--task-retries",
        "1",
        "--task-backoff",
        "0.05",
    ];
    let _worker = Worker::start(&common);
    let mut sargs = vec!["--offload", "redis", "--no-run-tasks"];
    sargs.extend(common);
    let server = Server::start(&sargs);
    let id: u64 = server.get("/later").text().parse().expect("a task id");
    let id2: u64 = server.get("/").text().parse().expect("a task id");
    assert_ne!(id, id2);
    assert!(server.get("/boom").status == 200);
    let notes = wait_lines(&out, 2);
    assert_eq!(notes, vec!["now", "later"], "the delayed task ran second");
    wait_until("boom dead-lettered", || {
        spool_text(&redis, SpoolCmd::Stats).contains("dead 1")
    });
    let dead = spool_text(&redis, SpoolCmd::List { limit: 10 });
    assert!(dead.contains("boom") && dead.contains("kaboom"), "{dead}");
}

/// `--redis-url` may be the path of Redis's Unix socket.
#[test]
fn a_unix_socket_path_is_a_redis_url() {
    let dir = TmpDir::new("unix");
    let sock = dir.join("redis.sock");
    let mut child = Command::new(redis_server_bin())
        .args(["--port", "0", "--save", "", "--daemonize", "no"])
        .arg("--unixsocket")
        .arg(&sock)
        .arg("--dir")
        .arg(&*dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    wait_until("the socket", || sock.exists());
    let ran = Arc::new(Mutex::new(Vec::new()));
    let reg = Registry::new();
    let r = ran.clone();
    reg.register("record", move |p| {
        r.lock().unwrap().push(p.data.clone());
        Ok(())
    });
    let args = OffloadArgs {
        offload: Strategy::Redis,
        redis: RedisArgs {
            redis_url: sock.display().to_string(),
            redis_wait: Some(10.0),
            ..RedisArgs::default()
        },
        ..OffloadArgs::default()
    };
    let off = Offload::new(OffloadConfig::from_args(&args).unwrap(), reg).unwrap();
    off.start().unwrap();
    off.submit(Task::new("record", "over the socket")).unwrap();
    wait_until("ran", || ran.lock().unwrap().len() == 1);
    off.shutdown(Duration::from_secs(5));
    let _ = child.kill();
    let _ = child.wait();
}
