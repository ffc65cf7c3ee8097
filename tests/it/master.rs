//! The pre-fork master under load: a worker killed with SIGKILL is replaced and the
//! server keeps answering; SIGHUP replaces workers without dropping the socket.

use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use forklift::server::Model;

use crate::support::*;

fn load(
    srv: &Server,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> thread::JoinHandle<()> {
    let addr = srv.addr;
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let r = (|| -> std::io::Result<u16> {
                let mut s = std::net::TcpStream::connect(addr)?;
                s.set_read_timeout(Some(IO_GUARD))?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
                Ok(read_response(&mut BufReader::new(s), false)?.status)
            })();
            match r {
                Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                _ => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    })
}

fn sigkill_worker_under_load(model: Model) {
    let srv = Server::start(&[
        "builtin:hello",
        "--model",
        model.name(),
        "--processes",
        "2",
        "--disable-logging",
    ]);
    wait_for("two workers", || srv.workers().len() == 2);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let loaders: Vec<_> = (0..4)
        .map(|_| load(&srv, stop.clone(), ok.clone(), failed.clone()))
        .collect();
    wait_for("some load", || ok.load(Ordering::Relaxed) > 50);
    let victim = srv.workers()[0];
    signal(victim, libc::SIGKILL);
    wait_for("the replacement worker", || {
        let w = srv.workers();
        w.len() == 2 && !w.contains(&victim)
    });
    let before = ok.load(Ordering::Relaxed);
    wait_for("answers after the respawn", || {
        ok.load(Ordering::Relaxed) > before + 100
    });
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    // Only requests the killed worker had accepted may fail.
    assert!(
        failed.load(Ordering::Relaxed) <= 4,
        "failed: {}",
        failed.load(Ordering::Relaxed)
    );
}

for_each_model! {
    sigkill_worker => sigkill_worker_under_load;
}

#[test]
fn sigterm_under_load_exits_zero() {
    let mut srv = Server::start(&[
        "builtin:demo",
        "--model",
        "epoll",
        "--processes",
        "2",
        "--disable-logging",
    ]);
    wait_for("two workers", || srv.workers().len() == 2);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let loaders: Vec<_> = (0..2)
        .map(|_| load(&srv, stop.clone(), ok.clone(), failed.clone()))
        .collect();
    let mut slow = srv.connect();
    slow.write_all(b"GET /wait?duration=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    wait_for("some load", || ok.load(Ordering::Relaxed) > 20);
    let status = srv.terminate();
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    let r = read_response(&mut BufReader::new(slow), false).expect("in-flight request completes");
    assert_eq!(r.status, 200);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sighup_replaces_workers() {
    let srv = Server::start(&[
        "builtin:hello",
        "--model",
        "epoll",
        "--processes",
        "2",
        "--disable-logging",
    ]);
    wait_for("two workers", || srv.workers().len() == 2);
    let old = srv.workers();
    signal(srv.pid(), libc::SIGHUP);
    let deadline = Instant::now() + IO_GUARD;
    loop {
        let w = srv.workers();
        if w.len() == 2 && w.iter().all(|p| !old.contains(p)) {
            break;
        }
        if Instant::now() >= deadline {
            let log: Vec<String> = srv.log.try_iter().collect();
            panic!(
                "timed out waiting for new workers (old {old:?}, now {w:?}); log:\n{}",
                log.join("\n")
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(srv.get("/").text(), "Hello world");
}

#[test]
fn busy_port_and_bad_values_are_one_line_errors() {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = a.local_addr().unwrap().port();
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "builtin:hello",
            "--http",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for bad in [
        &["--model", "nope"][..],
        &["--processes", "0"],
        &["--http", "garbage"],
    ] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "builtin:hello"])
            .args(bad)
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{bad:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
    let out = std::process::Command::new(BIN)
        .args(["serve", "builtin:nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn harakiri_kills_and_replaces_a_stuck_worker() {
    let srv = Server::start(&["builtin:demo", "--model", "threads", "--harakiri", "1"]);
    wait_for("the worker", || srv.workers().len() == 1);
    let victim = srv.workers()[0];
    // An idle keep-alive connection is not a request in flight.
    let idle = srv.connect();
    let mut w = idle.try_clone().unwrap();
    let mut rd = BufReader::new(idle);
    w.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut rd, false).unwrap().status, 200);
    thread::sleep(Duration::from_millis(1600));
    w.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut rd, false).unwrap().status, 200);
    assert_eq!(srv.workers(), vec![victim]);
    let mut stuck = srv.connect();
    stuck
        .write_all(b"GET /wait?duration=60 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // The worker is killed: the stuck client sees the connection end, not a response.
    let mut rd = BufReader::new(stuck);
    assert!(read_response(&mut rd, false).is_err());
    wait_for("the replacement worker", || {
        let w = srv.workers();
        w.len() == 1 && w[0] != victim
    });
    assert_eq!(srv.get("/").text(), "Hello world");
    let log: Vec<String> = srv.log.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("HARAKIRI")), "{log:?}");
}

#[test]
fn max_requests_recycles_workers() {
    let srv = Server::start(&[
        "builtin:hello",
        "--model",
        "linear",
        "--max-requests",
        "5",
        "--disable-logging",
    ]);
    wait_for("the worker", || srv.workers().len() == 1);
    let first = srv.workers()[0];
    for _ in 0..12 {
        assert_eq!(srv.get("/").text(), "Hello world");
    }
    wait_for("a recycled worker", || {
        srv.workers().first().is_some_and(|w| *w != first)
    });
}

#[test]
fn sigterm_logs_a_final_stopped_line() {
    let mut srv = Server::start(&[
        "builtin:hello",
        "--model",
        "epoll",
        "--processes",
        "2",
        "--disable-logging",
    ]);
    wait_for("two workers", || srv.workers().len() == 2);
    assert_eq!(srv.terminate().code(), Some(0));
    // The reader thread ends with the pipe, after the last line.
    let log: Vec<String> = srv.log.iter().collect();
    assert_eq!(
        log.last().map(String::as_str),
        Some("forklift: stopped (2 workers, exit 0)"),
        "{log:?}"
    );
}
