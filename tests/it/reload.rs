//! Reloads that drop nothing: under steady load from `forklift bench` (keep-alive and a
//! connection per request at once), each reload kind — SIGHUP, `--touch-reload`, chain
//! reloads, a new master by SIGUSR2 — completes with no failed request and no
//! connection error; new code is served afterwards, a reload whose code fails to import
//! leaves the old workers serving, and connections that are idle or just opened when a
//! worker retires still get their answer. Also systemd socket activation (`LISTEN_FDS`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use forklift::server::Model;

use crate::support::*;

/// Waits until `n` workers have said they are ready (the master logs each), so that a
/// reload replaces serving workers rather than ones still starting.
fn wait_ready(srv: &Server, seen: &mut Vec<String>, n: usize) {
    wait_for("ready workers", || log_has(srv, seen, ") ready", n));
}

/// Collects the server's log lines seen so far into `seen`; true when one contains
/// `needle` at least `count` times in all.
fn log_has(srv: &Server, seen: &mut Vec<String>, needle: &str, count: usize) -> bool {
    seen.extend(srv.log.try_iter());
    seen.iter().filter(|l| l.contains(needle)).count() >= count
}

/// `forklift bench` against `srv` for `secs` seconds, keep-alive or not, in a child
/// process; its JSON report is read by [`BenchRun::finish`].
struct BenchRun {
    child: Child,
    json: PathBuf,
    what: String,
}

impl BenchRun {
    fn start(srv: &Server, secs: u32, keep_alive: bool, dir: &Path) -> BenchRun {
        let what = if keep_alive {
            "keep-alive"
        } else {
            "no-keepalive"
        };
        let json = dir.join(format!("{what}.json"));
        let child = Command::new(BIN)
            .args(["bench", "-q", "-c", "4", "--threads", "1", "-t"])
            .arg(secs.to_string())
            .arg(if keep_alive {
                "--keepalive"
            } else {
                "--no-keepalive"
            })
            .arg("--json")
            .arg(&json)
            .arg(format!("http://{}/", srv.addr))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run forklift bench");
        BenchRun {
            child,
            json,
            what: what.into(),
        }
    }

    /// Waits for the run; asserts it completed requests with no failure, no connection
    /// error and no non-2xx response.
    fn finish(mut self) {
        let status = wait_exit(&mut self.child);
        assert!(status.success(), "bench {}: {status}", self.what);
        let text = std::fs::read_to_string(&self.json).expect("bench JSON report");
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            r["complete_requests"].as_u64().unwrap() > 0,
            "{}: {text}",
            self.what
        );
        assert_eq!(r["failed_requests"], 0, "{}: {}", self.what, r["errors"]);
        assert_eq!(r["errors"]["connect"], 0, "{}: {}", self.what, r["errors"]);
        assert_eq!(r["non_2xx_responses"], 0, "{}: {text}", self.what);
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("forklift-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How a test reloads the server.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// SIGHUP: every worker at once.
    Hup,
    /// SIGHUP with --lazy-apps: one at a time.
    LazyChain,
    /// --touch-reload FILE.
    Touch,
    /// --touch-chain-reload FILE.
    TouchChain,
}

/// Under load of both kinds (keep-alive and a connection per request), two reloads of
/// `kind` replace every worker, and neither client sees a failed request.
fn reload_under_load(model: Model, kind: Kind) {
    let dir = temp_dir(&format!("{kind:?}-{}", model.name()));
    let touch = dir.join("reload");
    std::fs::write(&touch, "").unwrap();
    let mut args = vec![
        "builtin:hello",
        "--model",
        model.name(),
        "--processes",
        "2",
        "--disable-logging",
    ];
    let touch_arg = touch.to_str().unwrap();
    match kind {
        Kind::Hup => {}
        Kind::LazyChain => args.push("--lazy-apps"),
        Kind::Touch => args.extend(["--touch-reload", touch_arg]),
        Kind::TouchChain => args.extend(["--touch-chain-reload", touch_arg]),
    }
    let srv = Server::start(&args);
    let mut seen = Vec::new();
    wait_ready(&srv, &mut seen, 2);
    let runs = [
        BenchRun::start(&srv, 4, true, &dir),
        BenchRun::start(&srv, 4, false, &dir),
    ];
    for round in 1..=2 {
        thread::sleep(Duration::from_millis(1000));
        let old = srv.workers();
        match kind {
            Kind::Hup | Kind::LazyChain => signal(srv.pid(), libc::SIGHUP),
            Kind::Touch | Kind::TouchChain => {
                // A later mtime than any before, whatever the file system's resolution.
                let t = std::time::SystemTime::now() + Duration::from_secs(round * 10);
                let f = std::fs::File::options().write(true).open(&touch).unwrap();
                f.set_modified(t).unwrap();
            }
        }
        wait_for("every worker replaced", || {
            let now = srv.workers();
            log_has(&srv, &mut seen, "; retiring pid", 2 * round as usize)
                && now.len() == 2
                && now.iter().all(|p| !old.contains(p))
        });
    }
    for run in runs {
        run.finish();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn sighup_under_load(model: Model) {
    reload_under_load(model, Kind::Hup);
}

fn chain_reload_under_load(model: Model) {
    reload_under_load(model, Kind::LazyChain);
}

fn touch_reload_under_load(model: Model) {
    reload_under_load(model, Kind::Touch);
}

fn touch_chain_reload_under_load(model: Model) {
    reload_under_load(model, Kind::TouchChain);
}

for_each_model! {
    sighup_under_load;
    chain_reload_under_load;
    touch_reload_under_load for [threads, epoll];
    touch_chain_reload_under_load for [linear, async_];
}

/// A chain reload replaces one worker at a time: each new worker is ready before the
/// next old one is told to retire, so the log alternates "started" and "retiring".
#[test]
fn chain_reload_goes_one_worker_at_a_time() {
    let srv = Server::start(&[
        "builtin:hello",
        "--processes",
        "3",
        "--lazy-apps",
        "--disable-logging",
    ]);
    let mut seen = Vec::new();
    wait_ready(&srv, &mut seen, 3);
    seen.extend(srv.log.try_iter());
    let start = seen.len();
    signal(srv.pid(), libc::SIGHUP);
    wait_for("three replaced", || {
        log_has(&srv, &mut seen, "; retiring pid", 3)
    });
    let events: Vec<&str> = seen[start..]
        .iter()
        .filter_map(|l| {
            if l.contains("started (pid") {
                Some("start")
            } else if l.contains("; retiring pid") {
                Some("retire")
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        events,
        ["start", "retire", "start", "retire", "start", "retire"],
        "{seen:?}"
    );
}

/// The case: 5 idle keep-alive connections (a request answered on each) and 5
/// connections just opened with no request yet; the workers holding them are told to
/// retire; 50 ms later each connection sends a request, and every one is answered.
fn idle_and_fresh_connections_survive(model: Model) {
    let srv = Server::start(&[
        "builtin:hello",
        "--model",
        model.name(),
        "--processes",
        "2",
        "--disable-logging",
    ]);
    let mut seen = Vec::new();
    wait_ready(&srv, &mut seen, 2);
    let mut idle: Vec<TcpStream> = (0..5).map(|_| srv.connect()).collect();
    let mut readers: Vec<BufReader<TcpStream>> = Vec::new();
    for s in &mut idle {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, 200);
        assert!(!resp.closes());
        readers.push(r);
    }
    let mut fresh: Vec<TcpStream> = (0..5).map(|_| srv.connect()).collect();
    // Accepted by the old workers before the reload.
    thread::sleep(Duration::from_millis(100));
    signal(srv.pid(), libc::SIGHUP);
    wait_for("the old workers told to retire", || {
        log_has(&srv, &mut seen, "; retiring pid", 2)
    });
    thread::sleep(Duration::from_millis(50));
    for s in idle.iter_mut().chain(fresh.iter_mut()) {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    }
    for (i, mut r) in readers
        .into_iter()
        .chain(fresh.into_iter().map(BufReader::new))
        .enumerate()
    {
        let what = if i < 5 { "idle" } else { "fresh" };
        let resp = read_response(&mut r, false)
            .unwrap_or_else(|e| panic!("{what} connection {i} lost its request: {e}"));
        assert_eq!(resp.status, 200, "{what} connection {i}");
        assert_eq!(resp.text(), "Hello world");
    }
}

for_each_model! {
    idle_and_fresh_connections_survive;
}

fn write_app(dir: &Path, body: &str) {
    // The app imports a module of its own, which a reload must read anew too. (Each
    // version differs in length: Python's bytecode cache tells a changed source by its
    // size and its mtime in whole seconds.)
    std::fs::write(dir.join("helper.py"), format!("BODY = {body:?}\n")).unwrap();
    std::fs::write(
        dir.join("app.py"),
        "import helper\n\
         def application(environ, start_response):\n\
         \x20   body = helper.BODY.encode()\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [body]\n",
    )
    .unwrap();
}

fn break_app(dir: &Path) {
    std::fs::write(
        dir.join("helper.py"),
        "raise RuntimeError('broken on purpose')\n",
    )
    .unwrap();
}

/// A WSGI app file rewritten, then SIGHUP: the new body is served by new workers (the
/// preloaded app is imported again in the master; with --lazy-apps each new worker
/// imports it). A rewrite that fails to import: the reload fails, the error is logged,
/// the old workers keep serving the old body, and the master stays up; fixed, the next
/// SIGHUP loads it.
fn new_code_and_failed_import(lazy: bool) {
    let dir = temp_dir(if lazy { "code-lazy" } else { "code" });
    write_app(&dir, "v1");
    let app = dir.join("app.py");
    let mut args = vec![
        "--wsgi-file",
        app.to_str().unwrap(),
        "--processes",
        "2",
        "--disable-logging",
    ];
    if lazy {
        args.push("--lazy-apps");
    }
    let srv = Server::start_in(&args, Some(&dir));
    let mut seen = Vec::new();
    wait_ready(&srv, &mut seen, 2);
    assert_eq!(srv.get("/").text(), "v1");

    write_app(&dir, "v2 (second)");
    signal(srv.pid(), libc::SIGHUP);
    let deadline = Instant::now() + IO_GUARD;
    while !(log_has(&srv, &mut seen, "; retiring pid", 2) && srv.get("/").text() == "v2 (second)") {
        assert!(
            Instant::now() < deadline,
            "no new code; the server logged {seen:#?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Every worker serves it.
    for _ in 0..10 {
        assert_eq!(srv.get("/").text(), "v2 (second)");
    }

    break_app(&dir);
    // The retired workers finish and exit on their own time: count only the two that
    // serve.
    wait_for("the retired workers to exit", || srv.workers().len() == 2);
    let before = srv.workers();
    signal(srv.pid(), libc::SIGHUP);
    wait_for("the failed reload logged", || {
        log_has(&srv, &mut seen, "reload failed", 1)
    });
    if lazy {
        // Each new worker fails on its own; the chain stops at the first.
        thread::sleep(Duration::from_millis(300));
    }
    for _ in 0..10 {
        assert_eq!(srv.get("/").text(), "v2 (second)");
    }
    let after = srv.workers();
    assert!(
        before.iter().all(|p| after.contains(p)),
        "old workers kept: {before:?} -> {after:?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("broken on purpose")),
        "{seen:?}"
    );

    write_app(&dir, "v3 (the third)");
    signal(srv.pid(), libc::SIGHUP);
    wait_for("the fixed code", || srv.get("/").text() == "v3 (the third)");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "python")]
#[test]
fn sighup_loads_new_code_and_survives_a_failed_import() {
    new_code_and_failed_import(false);
}

#[cfg(feature = "python")]
#[test]
fn sighup_lazy_loads_new_code_and_survives_a_failed_import() {
    new_code_and_failed_import(true);
}

/// SIGUSR2: the master starts a new master from the binary with the listening socket;
/// once its workers are ready the old master hands over and exits 0. Under load, no
/// request fails; the new master serves on the same address.
fn usr2_new_master_under_load(model: Model) {
    let dir = temp_dir(&format!("usr2-{}", model.name()));
    let mut srv = Server::start(&[
        "builtin:hello",
        "--model",
        model.name(),
        "--processes",
        "2",
        "--disable-logging",
    ]);
    let mut seen = Vec::new();
    wait_ready(&srv, &mut seen, 2);
    let runs = [
        BenchRun::start(&srv, 3, true, &dir),
        BenchRun::start(&srv, 3, false, &dir),
    ];
    thread::sleep(Duration::from_millis(1000));
    signal(srv.pid(), libc::SIGUSR2);
    let status = wait_exit(&mut srv.child);
    assert_eq!(
        status.code(),
        Some(0),
        "the old master hands over and exits 0"
    );
    wait_for("the new master's pid", || {
        log_has(&srv, &mut seen, "started a new master (pid", 1)
    });
    let line = seen
        .iter()
        .find(|l| l.contains("started a new master (pid"))
        .unwrap();
    let new_master: i32 = line
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("stopping the previous master (pid {})", srv.pid()))),
        "{seen:?}"
    );
    for run in runs {
        run.finish();
    }
    assert_eq!(srv.get("/").text(), "Hello world");
    signal(new_master, libc::SIGTERM);
    wait_for("the new master to stop", || {
        // SAFETY: signal 0 sends nothing; it only checks the process exists.
        unsafe { libc::kill(new_master, 0) != 0 }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

for_each_model! {
    usr2_new_master_under_load;
}

/// Starts `forklift serve ARGS` the way systemd's socket activation does: a launcher
/// binds a listener on 127.0.0.1 (port chosen by the kernel), puts it at descriptor 3,
/// sets LISTEN_FDS=1 and LISTEN_PID to its own pid, and executes forklift (the pid
/// stays the same). `pid_offset` makes LISTEN_PID name another process instead.
fn socket_activated(args: &[&str], pid_offset: u32) -> (Child, u16, mpsc::Receiver<String>) {
    let python = std::env::var("FORKLIFT_TEST_VENV")
        .map(|v| format!("{v}/bin/python"))
        .unwrap_or_else(|_| "python3".into());
    let script = "import os, socket, sys\n\
         s = socket.socket()\n\
         s.bind(('127.0.0.1', 0))\n\
         s.listen(128)\n\
         print(s.getsockname()[1], flush=True)\n\
         if s.fileno() != 3:\n\
         \x20   os.dup2(s.fileno(), 3)\n\
         os.set_inheritable(3, True)\n\
         os.environ['LISTEN_FDS'] = '1'\n\
         os.environ['LISTEN_PID'] = str(os.getpid() + int(sys.argv[1]))\n\
         os.execv(sys.argv[2], sys.argv[2:])\n";
    let mut child = Command::new(python)
        .args(["-c", script, &pid_offset.to_string(), BIN, "serve"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the launcher");
    let mut port = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let port: u16 = port.trim().parse().expect("the launcher's port");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, port, rx)
}

fn banner_addr(rx: &mpsc::Receiver<String>) -> std::net::SocketAddr {
    loop {
        let line = rx.recv_timeout(IO_GUARD).expect("no banner from forklift");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            return rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    }
}

fn get(addr: std::net::SocketAddr) -> Response {
    request_bytes(
        addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
}

/// Under a systemd `.socket` unit: the passed socket is served as is (the configured
/// --http address is only a default), alone and with a master and workers.
#[test]
fn socket_activation_serves_the_passed_socket() {
    for extra in [&[][..], &["--processes", "2"][..]] {
        let mut args = vec![
            "builtin:hello",
            "--http",
            "127.0.0.1:1",
            "--disable-logging",
        ];
        args.extend_from_slice(extra);
        let (mut child, port, rx) = socket_activated(&args, 0);
        let addr = banner_addr(&rx);
        assert_eq!(addr.port(), port, "{extra:?}");
        for _ in 0..5 {
            assert_eq!(get(addr).text(), "Hello world");
        }
        signal(child.id() as i32, libc::SIGTERM);
        assert_eq!(wait_exit(&mut child).code(), Some(0));
    }
}

/// LISTEN_PID naming another process: the sockets are not this process's; forklift
/// binds its own address.
#[test]
fn socket_activation_for_another_pid_is_ignored() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let want = free.local_addr().unwrap();
    drop(free);
    let http = want.to_string();
    let (mut child, port, rx) =
        socket_activated(&["builtin:hello", "--http", &http, "--disable-logging"], 1);
    let addr = banner_addr(&rx);
    assert_eq!(addr, want);
    assert_ne!(addr.port(), port);
    assert_eq!(get(addr).text(), "Hello world");
    signal(child.id() as i32, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

/// After a SIGUSR2 hand-over the new master serves the `--stats` address the old one
/// held (bound once the old master has exited).
#[test]
fn usr2_keeps_the_stats_address() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stats = free.local_addr().unwrap().to_string();
    drop(free);
    let mut srv = Server::start(&[
        "builtin:hello",
        "--processes",
        "2",
        "--stats",
        &stats,
        "--disable-logging",
    ]);
    let mut seen = Vec::new();
    wait_ready(&srv, &mut seen, 2);
    signal(srv.pid(), libc::SIGUSR2);
    assert_eq!(wait_exit(&mut srv.child).code(), Some(0));
    wait_for("the new master's stats", || {
        log_has(&srv, &mut seen, &format!("stats on {stats}"), 2)
    });
    let mut s = TcpStream::connect(&stats).unwrap();
    s.set_read_timeout(Some(IO_GUARD)).unwrap();
    let mut doc = String::new();
    std::io::Read::read_to_string(&mut s, &mut doc).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let new_master = doc["pid"].as_i64().unwrap() as i32;
    assert_ne!(new_master, srv.pid());
    assert_eq!(doc["workers"].as_array().unwrap().len(), 2);
    assert_eq!(srv.get("/").text(), "Hello world");
    signal(new_master, libc::SIGTERM);
    wait_for("the new master to stop", || {
        // SAFETY: signal 0 sends nothing; it only checks the process exists.
        unsafe { libc::kill(new_master, 0) != 0 }
    });
}

/// A uwsgi GET over the unix socket at `path`: the response.
fn uwsgi_get_unix(path: &Path) -> Response {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(IO_GUARD)).unwrap();
    let packet = forklift::http::uwsgi::encode_request(
        &[(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/")],
        b"",
    );
    s.write_all(&packet).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    parse_whole(&out, false)
}

/// SIGUSR2 with an HTTP port and a uwsgi unix socket (`--vacuum`): the new master gets
/// both sockets, the old one leaves the socket file in place, and both still answer.
#[test]
fn usr2_hands_over_every_listener() {
    let dir = temp_dir("usr2-listeners");
    let sock = dir.join("app.sock");
    let mut srv = Server::start(&[
        "builtin:hello",
        "--processes",
        "2",
        "--socket",
        sock.to_str().unwrap(),
        "--vacuum",
        "--disable-logging",
    ]);
    let mut seen = Vec::new();
    wait_ready(&srv, &mut seen, 2);
    assert_eq!(uwsgi_get_unix(&sock).text(), "Hello world");
    signal(srv.pid(), libc::SIGUSR2);
    assert_eq!(wait_exit(&mut srv.child).code(), Some(0));
    seen.extend(srv.log.try_iter());
    let new_master: i32 = seen
        .iter()
        .find_map(|l| l.split("started a new master (pid ").nth(1))
        .and_then(|rest| rest.split(')').next()?.parse().ok())
        .expect("the new master's pid in the log");
    assert!(sock.exists(), "the socket file stays for the new master");
    for _ in 0..5 {
        assert_eq!(srv.get("/").text(), "Hello world");
        assert_eq!(uwsgi_get_unix(&sock).text(), "Hello world");
    }
    signal(new_master, libc::SIGTERM);
    wait_for("the new master to stop", || {
        // SAFETY: signal 0 sends nothing; it only checks the process exists.
        unsafe { libc::kill(new_master, 0) != 0 }
    });
    assert!(
        !sock.exists(),
        "the new master vacuums the socket file it took over"
    );
}
