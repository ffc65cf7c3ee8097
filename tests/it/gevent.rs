//! gevent mode (`--gevent N`) and uWSGI's asyncio loop engine (`--asyncio N
//! --greenlet`) through the `forklift` binary, with real gevent, greenlet and requests
//! from the test virtualenv: many requests in flight on one worker, the cores bound,
//! monkey-patched outbound calls, streaming, bodies, file wrappers, failures, clients
//! leaving, a blocked hub, pre-forked and lazy workers, recycling, harakiri, graceful
//! stop, the seeds' command line and ini files, and the wire-conformance suite.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn apps() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

fn app_py() -> String {
    apps().join("gevent/app.py").display().to_string()
}

/// `forklift serve --wsgi-file tests/apps/gevent/app.py --gevent N EXTRA…` with the test
/// virtualenv.
fn gevent_server(cores: &str, extra: &[&str]) -> Server {
    let venv = test_venv();
    let file = app_py();
    let mut args = vec![
        "--wsgi-file",
        &file,
        "--gevent",
        cores,
        "--virtualenv",
        &venv,
        "--disable-logging",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Sends `GET path` on its own connection without reading the answer.
fn send(srv: &Server, path: &str) -> TcpStream {
    let mut s = srv.connect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

fn read_all(s: TcpStream) -> Response {
    read_response(&mut BufReader::new(s), false).expect("a response")
}

/// Lines of the server's log until one contains `want` (or `within` passes).
fn log_until(srv: &Server, want: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = srv.log.recv_timeout(Duration::from_millis(100)) {
            let hit = line.contains(want);
            seen.push(line);
            if hit {
                break;
            }
        }
    }
    seen
}

#[test]
fn a_thousand_sleeping_requests_on_one_worker() {
    let srv = gevent_server("1000", &[]);
    let conns: Vec<TcpStream> = (0..1000)
        .map(|_| send(&srv, "/barrier?n=1000&s=1&t=60"))
        .collect();
    let mut met = 0;
    for c in conns {
        let r = read_all(c);
        assert_eq!(r.status, 200, "{}", r.text());
        if r.text() == "met" {
            met += 1;
        }
    }
    assert_eq!(met, 1000, "every request was in flight at once");
    assert!(srv.get("/stats").text().contains("peak=1000"));
}

#[test]
fn ten_cores_serve_ten_at_a_time_and_the_eleventh_waits() {
    let srv = gevent_server("10", &[]);
    // The first ten meet at the barrier and sleep; the eleventh gets a core only when
    // one of them is done.
    let conns: Vec<TcpStream> = (0..11)
        .map(|_| send(&srv, "/barrier?n=10&s=0.3&t=30"))
        .collect();
    for c in conns {
        let r = read_all(c);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "met");
    }
    let stats = srv.get("/stats").text();
    assert!(stats.contains("now=0 peak=10 "), "{stats}");
}

#[test]
fn monkey_patched_requests_calls_run_concurrently_within_and_across_requests() {
    // The backend counts the calls in flight: twelve must meet (three requests of four
    // calls each).
    let backend = gevent_server("100", &[]);
    let venv = test_venv();
    let front_app = apps().join("gevent/fanout.py").display().to_string();
    let front = Server::start(&[
        "--wsgi-file",
        &front_app,
        "--gevent",
        "10",
        "--virtualenv",
        &venv,
        "--disable-logging",
    ]);
    let path = format!(
        "/?backend={}&path=/barrier?n=12%26s=0%26t=30",
        backend.addr.port()
    );
    let conns: Vec<TcpStream> = (0..3).map(|_| send(&front, &path)).collect();
    for c in conns {
        let r = read_all(c);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "met met met met");
    }
}

#[test]
fn streaming_bodies_bodies_files_and_failures() {
    let srv = gevent_server("20", &[]);
    let r = srv.get("/stream");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n",
        "a generator sleeping between chunks"
    );
    assert!(r.chunked);

    // A 5 MB body read 64 KiB at a time, yielding between pieces.
    let body: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut s = srv.connect();
    write!(
        s,
        "POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let r = read_all(s);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        format!("{} {} {}", body.len(), body.len() / 65536, adler32(&body))
    );

    let r = srv.get("/file");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        std::fs::read(app_py()).unwrap(),
        "wsgi.file_wrapper"
    );

    let r = srv.get("/boom");
    assert_eq!(r.status, 500);
    let r = srv.get("/");
    assert_eq!((r.status, r.text().as_str()), (200, "Hello World"));
    let seen = log_until(&srv, "boom in a greenlet", Duration::from_secs(10));
    assert!(seen.iter().any(|l| l.contains("boom in a greenlet")));
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

#[test]
fn a_client_leaving_frees_its_greenlet() {
    let srv = gevent_server("10", &[]);
    // An endless streamed body: the client reads a little and leaves; the app's
    // iterable is closed and its core freed.
    let mut s = send(&srv, "/endless");
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    assert!(n > 0);
    drop(s);
    // A request sleeping when its client leaves ends on its own.
    drop(send(&srv, "/sleep?0.3"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = srv.get("/stats").text();
        if stats.contains("now=0 ") && stats.contains("closed=1") {
            break;
        }
        assert!(Instant::now() < deadline, "not freed: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // All ten cores are free again: ten requests meet at a barrier.
    let conns: Vec<TcpStream> = (0..10).map(|_| send(&srv, "/barrier?n=10&t=30")).collect();
    for c in conns {
        assert_eq!(read_all(c).text(), "met");
    }
}

#[test]
fn a_request_blocking_the_hub_is_reported_once_with_its_path() {
    let srv = gevent_server("10", &[]);
    let sleeper = send(&srv, "/sleep?2");
    let r = srv.get("/block?2");
    assert_eq!(r.text(), "blocked");
    assert_eq!(read_all(sleeper).status, 200);
    let seen = log_until(&srv, "runs again", Duration::from_secs(10));
    let reports: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("has not run for"))
        .collect();
    assert_eq!(reports.len(), 1, "{seen:#?}");
    assert!(
        reports[0].contains("request GET /block?2 blocks it"),
        "{}",
        reports[0]
    );
    assert!(seen.iter().any(|l| l.contains("time.sleep(")), "{seen:#?}");
    assert_eq!(srv.get("/").status, 200);
}

#[test]
fn prefork_lazy_apps_and_monkey_patching() {
    // Loaded (and patched) in the master, then forked: each worker reinitialises
    // gevent and runs its own hub.
    for extra in [
        &["--processes", "2", "--gevent-early-monkey-patch"][..],
        &["--processes", "2", "--lazy-apps", "--gevent-monkey-patch"][..],
    ] {
        let srv = gevent_server("50", extra);
        assert_eq!(srv.get("/patched").text(), "socket=True", "{extra:?}");
        let mut pids = std::collections::HashSet::new();
        for _ in 0..40 {
            let conns: Vec<TcpStream> = (0..4).map(|_| send(&srv, "/pid")).collect();
            for c in conns {
                let r = read_all(c);
                assert_eq!(r.status, 200, "{extra:?}: {}", r.text());
                pids.insert(r.text());
            }
            let conns: Vec<TcpStream> = (0..8).map(|_| send(&srv, "/sleep?0.05")).collect();
            for c in conns {
                assert_eq!(read_all(c).status, 200);
            }
            if pids.len() == 2 {
                break;
            }
        }
        assert!(!pids.is_empty());
    }
    // Without a patch option the app's own modules are left alone.
    let srv = gevent_server("50", &[]);
    assert_eq!(srv.get("/patched").text(), "socket=False");
}

#[test]
fn max_requests_recycles_and_graceful_stop_lets_greenlets_finish() {
    let mut srv = gevent_server("50", &["--master", "--max-requests", "3"]);
    let mut pids = std::collections::HashSet::new();
    for _ in 0..9 {
        let r = srv.get("/pid");
        assert_eq!(r.status, 200);
        pids.insert(r.text());
    }
    assert!(pids.len() >= 2, "the worker was replaced: {pids:?}");

    // SIGTERM with requests sleeping in greenlets: each still gets its answer.
    let conns: Vec<TcpStream> = (0..5).map(|_| send(&srv, "/sleep?1")).collect();
    std::thread::sleep(Duration::from_millis(300));
    signal(srv.pid(), libc::SIGTERM);
    for c in conns {
        let r = read_all(c);
        assert_eq!((r.status, r.text().as_str()), (200, "slept"));
    }
    let status = wait_exit(&mut srv.child);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn harakiri_kills_an_overrunning_worker() {
    let srv = gevent_server("10", &["--harakiri", "1"]);
    let r = read_response(&mut BufReader::new(send(&srv, "/sleep?5")), false);
    assert!(r.is_err() || r.unwrap().status >= 500);
    let seen = log_until(&srv, "HARAKIRI", Duration::from_secs(10));
    assert!(seen.iter().any(|l| l.contains("HARAKIRI")), "{seen:#?}");
    // The master's new worker serves.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = std::panic::catch_unwind(|| srv.get("/").status == 200).unwrap_or(false);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "no worker after harakiri");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `forklift ARGS` (as given, no `--http` added); its one-line error.
fn refused(args: &[&str], venv: bool) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if venv {
        cmd.env("VIRTUAL_ENV", test_venv());
    } else {
        cmd.env_remove("VIRTUAL_ENV");
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run forklift");
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

#[test]
fn bad_gevent_and_asyncio_options_are_one_line_errors() {
    let file = app_py();
    let f = file.as_str();
    let e = refused(&["serve", "--wsgi-file", f, "--gevent", "0"], true);
    assert!(e.contains("--gevent") && e.contains("1 to"), "{e}");
    let e = refused(
        &[
            "serve",
            "--wsgi-file",
            f,
            "--gevent",
            "10",
            "--threads",
            "4",
        ],
        true,
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("forklift: --gevent cannot go with --threads 4"),
        "{e}"
    );
    let e = refused(&["serve", "--wsgi-file", f, "--asyncio", "2"], true);
    assert!(e.contains("--asyncio needs --greenlet"), "{e}");
    let e = refused(
        &["serve", "--wsgi-file", f, "--asyncio", "1", "--greenlet"],
        true,
    );
    assert!(e.contains("--asyncio") && e.contains("2 or more"), "{e}");
    let e = refused(&["serve", "--wsgi-file", f, "--greenlet"], true);
    assert!(e.contains("--greenlet") && e.contains("--asyncio N"), "{e}");
    // The interpreter forklift was built with, without the virtualenv: no gevent.
    let e = refused(
        &[
            "serve",
            "--wsgi-file",
            f,
            "--gevent",
            "10",
            "--http",
            "127.0.0.1:0",
        ],
        false,
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("--gevent needs the gevent package") && e.contains("pip install gevent"),
        "{e}"
    );
}

/// Seed 001's command line, as the seed gives it (with `forklift serve` for `uwsgi` and
/// a free port): the request answers at once, and five seconds later the loop reads the
/// file into the log.
#[test]
fn seed_001_asyncio_greenlet_command_line() {
    let dir = tempdir("seed001");
    for f in ["webapp_greenlet.py", "numbers.txt"] {
        std::fs::copy(apps().join("seed001").join(f), dir.join(f)).unwrap();
    }
    std::fs::rename(dir.join("webapp_greenlet.py"), dir.join("webapp.py")).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // The seed's command line word for word, with `forklift` in place of `uwsgi` (no
    // subcommand).
    let mut child = Command::new(BIN)
        .args([
            "--asyncio",
            "2",
            "--http-socket",
            &addr,
            "--greenlet",
            "--processes",
            "1",
            "--threads",
            "1",
            "--logto",
            "uwsgi.log",
            "--wsgi-file",
            "webapp.py",
        ])
        .env("VIRTUAL_ENV", test_venv())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = dir.join("uwsgi.log");
    wait_for_file(&log, "listening on", Duration::from_secs(30));
    let started = Instant::now();
    let r = crate::support::request_bytes(
        addr.parse().unwrap(),
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "Hello World"));
    assert_eq!(r.header("content-type"), Some("text/html"));
    let text = wait_for_file(&log, "5:five", Duration::from_secs(30));
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "read ran early"
    );
    for (i, w) in ["zero", "one", "two", "three", "four", "five"]
        .iter()
        .enumerate()
    {
        assert!(text.contains(&format!("{i}:{w}")), "{text}");
    }
    signal(child.id() as i32, libc::SIGTERM);
    wait_exit(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Seed 002's gevent ini files as given: the gevent backend (`wait_server/uwsgi.ini`,
/// gevent = 100, 2 processes) and the gevent app (gevent = 50, 2 processes, the app
/// monkey-patching itself), each started in its directory, on free ports.
#[test]
fn seed_002_gevent_ini_files() {
    let venv = test_venv();
    let backend = Server::start_in(
        &[
            "--ini",
            "uwsgi.ini",
            "--virtualenv",
            &venv,
            "--disable-logging",
        ],
        Some(&apps().join("seed002/wait_server")),
    );
    let app = Server::start_in(
        &[
            "--ini",
            "app_gevent.ini",
            "--virtualenv",
            &venv,
            "--disable-logging",
        ],
        Some(&apps().join("seed002")),
    );
    let path = format!("/?backend={}", backend.addr.port());
    let r = app.get(&path);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("seconds with async calls using gevent"),
        "{}",
        r.text()
    );
    let conns: Vec<TcpStream> = (0..20).map(|_| send(&app, &path)).collect();
    for c in conns {
        let r = read_all(c);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = backend.get("/?duration=0.01");
    assert_eq!((r.status, r.text().as_str()), (200, "Waited 0"));
}

#[test]
fn asyncio_requests_wait_on_the_loop_together() {
    let venv = test_venv();
    let file = apps().join("gevent/asyncio_wait.py").display().to_string();
    let srv = Server::start(&[
        "--wsgi-file",
        &file,
        "--asyncio",
        "8",
        "--greenlet",
        "--virtualenv",
        &venv,
        "--disable-logging",
    ]);
    let conns: Vec<TcpStream> = (0..8).map(|_| send(&srv, "/")).collect();
    for c in conns {
        let r = read_all(c);
        assert_eq!((r.status, r.text().as_str()), (200, "waited on the loop"));
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "forklift-gevent-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The file's text once it contains `want` (panics after `within`).
fn wait_for_file(path: &Path, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{want:?} not in {path:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The wire-conformance bodies, with `tests/apps/gevent/demo.py` under `--gevent 100`
/// (on the epoll model, the one gevent mode runs on), alone and as two processes.
mod conformance {
    pub use crate::conformance::*;
    use crate::support::for_each_model;

    for_each_model! {
        get_head_post(1, App::Gevent) for [epoll];
        keep_alive_http11(1, App::Gevent) for [epoll];
        keep_alive_http10(1, App::Gevent) for [epoll];
        pipelining(1, App::Gevent) for [epoll];
        chunked_request_body(1, App::Gevent) for [epoll];
        chunked_response_body(1, App::Gevent) for [epoll];
        expect_continue(1, App::Gevent) for [epoll];
        limits(1, App::Gevent) for [epoll];
        smuggling(1, App::Gevent) for [epoll];
        client_disconnects_mid_request(1, App::Gevent) for [epoll];
        slow_reader_70mb(1, App::Gevent) for [epoll];
        slow_handler_does_not_block(1, App::Gevent) for [epoll];
        graceful_sigterm(1, App::Gevent) for [epoll];
    }

    mod prefork {
        use super::*;

        for_each_model! {
            get_head_post(2, App::Gevent) for [epoll];
            pipelining(2, App::Gevent) for [epoll];
            client_disconnects_mid_request(2, App::Gevent) for [epoll];
            slow_handler_does_not_block(2, App::Gevent) for [epoll];
            graceful_sigterm(2, App::Gevent) for [epoll];
        }
    }
}
