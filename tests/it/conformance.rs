//! The wire-conformance suite, run against every model, alone and as 2 processes.

use std::io::{BufReader, Read, Write};
use std::sync::mpsc;
use std::thread;

use forklift::server::Model;

use crate::support::*;

/// The app under test: each serves the same endpoints (`/`, `/echo`, `/wait`, `/file`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// `builtin:demo`.
    Native,
    /// The ASGI app `demo` in `tests/apps/asgi/raw.py`.
    Asgi,
    /// The WSGI app `demo` in `tests/apps/gevent/demo.py`, under `--gevent 100`.
    Gevent,
}

/// One server configuration under test.
#[derive(Clone, Copy, Debug)]
pub struct Cfg {
    pub model: Model,
    pub processes: u32,
    pub app: App,
}

impl Cfg {
    pub fn args(self) -> Vec<String> {
        let mut v: Vec<String> = match self.app {
            App::Native => vec!["builtin:demo".into()],
            App::Asgi => vec![
                "--asgi".into(),
                "raw:demo".into(),
                "--pythonpath".into(),
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/asgi").into(),
            ],
            App::Gevent => vec![
                "--wsgi-file".into(),
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/gevent/demo.py").into(),
                "--callable".into(),
                "demo".into(),
                "--gevent".into(),
                "100".into(),
                "--virtualenv".into(),
                test_venv(),
            ],
        };
        v.extend([
            "--model".into(),
            self.model.name().into(),
            "--processes".into(),
            self.processes.to_string(),
            "--limit-post".into(),
            "100000".into(),
            "--disable-logging".into(),
        ]);
        if self.model == Model::Threads && self.app != App::Gevent {
            v.extend(["--threads".into(), "4".into()]);
        }
        v
    }

    pub fn start(self) -> Server {
        self.start_with(&[])
    }

    pub fn start_with(self, extra: &[&str]) -> Server {
        let mut args = self.args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(&refs)
    }

    /// One connection at a time per process: other clients wait for it.
    fn serializes(self) -> bool {
        self.model == Model::Linear && self.processes == 1
    }
}

pub fn get_head_post(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    let srv = cfg.start();
    let r = srv.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello world");
    assert_eq!(r.header("content-length"), Some("11"));
    assert!(r.header("date").is_some());

    // HEAD: same headers, no body; the next response on the connection parses cleanly.
    let mut s = srv.connect();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut rd = BufReader::new(s);
    let head = read_response(&mut rd, true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("11"));
    let get = read_response(&mut rd, false).unwrap();
    assert_eq!(get.text(), "Hello world");

    let r = exchange(
        &srv,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/x-test\r\nContent-Length: 9\r\nConnection: close\r\n\r\nsome body",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "some body");
    assert_eq!(r.header("content-type"), Some("text/x-test"));
}

pub fn keep_alive_http11(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    let srv = cfg.start();
    let s = srv.connect();
    let mut w = s.try_clone().unwrap();
    let mut rd = BufReader::new(s);
    for i in 0..5 {
        let body = format!("req{i}");
        write!(
            w,
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let r = read_response(&mut rd, false).unwrap();
        assert_eq!(r.text(), body);
        assert!(!r.closes());
    }
    w.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_response(&mut rd, false).unwrap();
    assert!(r.closes());
    assert!(is_closed(&mut rd));
}

pub fn keep_alive_http10(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    let srv = cfg.start();
    // 1.0 asking for keep-alive: echoed, connection stays (as `ab -k` needs).
    let s = srv.connect();
    let mut w = s.try_clone().unwrap();
    let mut rd = BufReader::new(s);
    for _ in 0..3 {
        w.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let r = read_response(&mut rd, false).unwrap();
        assert_eq!(r.version, "HTTP/1.0");
        assert_eq!(r.text(), "Hello world");
        assert_eq!(
            r.header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("keep-alive")
        );
    }
    // Plain 1.0: closed after the response.
    let s = srv.connect();
    let mut w = s.try_clone().unwrap();
    let mut rd = BufReader::new(s);
    w.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut rd, false).unwrap();
    assert_eq!(r.text(), "Hello world");
    assert!(r.closes());
    assert!(is_closed(&mut rd));
    // 1.0 with an unknown-length body: close-delimited, never chunked.
    let mut s = srv.connect();
    s.write_all(b"GET /file?bytes=5000&chunked=1 HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.to_ascii_lowercase().contains("transfer-encoding"));
    let body_start = text.find("\r\n\r\n").unwrap() + 4;
    assert_eq!(raw.len() - body_start, 5000);
}

pub fn pipelining(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    let srv = cfg.start();
    let mut s = srv.connect();
    let mut batch = Vec::new();
    for i in 0..20 {
        let body = format!("pipelined-{i}");
        batch.extend_from_slice(
            format!(
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    batch.extend_from_slice(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET /wait?duration=0.01 HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(&batch).unwrap();
    let mut rd = BufReader::new(s);
    for i in 0..20 {
        let r = read_response(&mut rd, false).unwrap();
        assert_eq!(r.text(), format!("pipelined-{i}"), "responses in order");
    }
    let head = read_response(&mut rd, true).unwrap();
    assert_eq!(head.header("content-length"), Some("11"));
    assert!(read_response(&mut rd, false)
        .unwrap()
        .text()
        .starts_with("waited"));
    assert_eq!(read_response(&mut rd, false).unwrap().text(), "Hello world");
    assert!(is_closed(&mut rd));
}

pub fn chunked_request_body(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    let srv = cfg.start();
    let mut s = srv.connect();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    // Sent in pieces, as a streaming client would.
    for piece in [
        &b"4\r\nWiki\r\n"[..],
        b"5\r\npedia\r\n",
        b"E;ext=1\r\n in\r\n\r\nchunks.\r\n",
        b"0\r\nTrailer: x\r\n\r\n",
    ] {
        s.write_all(piece).unwrap();
        s.flush().unwrap();
        thread::yield_now();
    }
    let r = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Wikipedia in\r\n\r\nchunks.");
}

pub fn chunked_response_body(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    let srv = cfg.start();
    let r = srv.get("/file?bytes=300000&chunked=1");
    assert_eq!(r.status, 200);
    assert!(r.chunked, "unknown length goes out chunked on 1.1");
    assert_eq!(r.body.len(), 300000);
    let r = srv.get("/file?bytes=300000");
    assert!(!r.chunked);
    assert_eq!(r.header("content-length"), Some("300000"));
    assert_eq!(r.body.len(), 300000);
}

pub fn expect_continue(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    let srv = cfg.start();
    let s = srv.connect();
    let mut w = s.try_clone().unwrap();
    let mut rd = BufReader::new(s);
    w.write_all(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let interim = read_response(&mut rd, false).unwrap();
    assert_eq!(interim.status, 100);
    w.write_all(b"hello").unwrap();
    let r = read_response(&mut rd, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    // Too large: refused up front, without 100 Continue.
    w.write_all(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100001\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut rd, false).unwrap();
    assert_eq!(r.status, 413);
}

fn status_and_closed(srv: &Server, raw: &[u8]) -> u16 {
    let mut s = srv.connect();
    s.write_all(raw).unwrap();
    let mut rd = BufReader::new(s);
    let r = read_response(&mut rd, false).unwrap();
    assert!(
        r.closes(),
        "error responses close: {}",
        String::from_utf8_lossy(raw)
    );
    assert!(is_closed(&mut rd));
    r.status
}

pub fn limits(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    let srv = cfg.start();
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "u".repeat(10_000));
    assert_eq!(status_and_closed(&srv, long_uri.as_bytes()), 414);
    let many = format!(
        "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
        "X-H: v\r\n".repeat(200)
    );
    assert_eq!(status_and_closed(&srv, many.as_bytes()), 431);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70_000)
    );
    assert_eq!(status_and_closed(&srv, big.as_bytes()), 431);
    let body = "x".repeat(100_001);
    let too_long = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(status_and_closed(&srv, too_long.as_bytes()), 413);
    let chunk = format!("{:x}\r\n{}\r\n", 60_000, "c".repeat(60_000));
    let chunked = format!("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n");
    assert_eq!(status_and_closed(&srv, chunked.as_bytes()), 413);
    assert_eq!(status_and_closed(&srv, b"BAD REQUEST LINE\r\n\r\n"), 400);
    assert_eq!(status_and_closed(&srv, b"GET / HTTP/1.1\r\n\r\n"), 400);
    // The server is still fine afterwards.
    assert_eq!(srv.get("/").status, 200);
}

pub fn smuggling(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    let srv = cfg.start();
    let cases: [&[u8]; 5] = [
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n",
    ];
    for raw in cases {
        assert_eq!(
            status_and_closed(&srv, raw),
            400,
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    // A smuggled second request after a refused one is never answered.
    let mut s = srv.connect();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
}

pub fn client_disconnects_mid_request(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    let srv = cfg.start();
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: t\r\nX-Partial"[..],
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nonly-part",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
    ] {
        let mut s = srv.connect();
        s.write_all(raw).unwrap();
        drop(s);
    }
    // Disconnect while a slow reply is pending.
    let mut s = srv.connect();
    s.write_all(b"GET /wait?duration=0.2 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    drop(s);
    // And in the middle of a large response.
    let mut s = srv.connect();
    s.write_all(b"GET /file?bytes=50000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1000];
    s.read_exact(&mut first).unwrap();
    drop(s);
    for _ in 0..3 {
        assert_eq!(srv.get("/").text(), "Hello world");
    }
}

/// Seed 004's 70 MB transfer: one client reads it slowly while others are served, and
/// the server's memory stays bounded.
pub fn slow_reader_70mb(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    const SIZE: usize = 70_000_000;
    let srv = cfg.start();
    let mut a = srv.connect();
    a.write_all(
        format!("GET /file?bytes={SIZE} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < 1_000_000 {
        let n = a.read(&mut buf).unwrap();
        assert!(n > 0);
        got += n;
    }
    // A is now paused, its socket buffers full.
    let (tx, rx) = mpsc::channel();
    let addr = srv.addr;
    let other = thread::spawn(move || {
        for _ in 0..3 {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(IO_GUARD)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let r = read_response(&mut BufReader::new(s), false).unwrap();
            tx.send(r.status).unwrap();
        }
    });
    if !cfg.serializes() {
        for _ in 0..3 {
            assert_eq!(
                rx.recv_timeout(IO_GUARD).expect("served while A is paused"),
                200
            );
        }
        let pids: Vec<i32> = if cfg.processes == 1 {
            vec![srv.pid()]
        } else {
            srv.workers()
        };
        for pid in pids {
            let rss = rss_kib(pid);
            assert!(
                rss < 48 * 1024,
                "memory bounded while streaming 70 MB: {rss} KiB"
            );
        }
    }
    loop {
        let n = a.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    other.join().unwrap();
    if cfg.serializes() {
        for _ in 0..3 {
            assert_eq!(rx.recv_timeout(IO_GUARD).unwrap(), 200);
        }
    }
    // Head + body: the body alone is 70 MB.
    assert!(got > SIZE && got < SIZE + 1000, "got {got} bytes");
}

/// A slow reply (`wait`) does not hold up other requests, except in linear×1 where
/// serving one connection at a time is the model.
pub fn slow_handler_does_not_block(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    if cfg.serializes() {
        return;
    }
    let srv = cfg.start();
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut s = srv.connect();
        s.write_all(b"GET /wait?duration=30 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        slow.push(s);
    }
    for _ in 0..5 {
        assert_eq!(srv.get("/").text(), "Hello world");
    }
}

/// SIGTERM with requests in flight: they complete, and the exit code is 0.
pub fn graceful_sigterm(model: Model, processes: u32, app: App) {
    let cfg = Cfg {
        model,
        processes,
        app,
    };
    let mut srv = cfg.start();
    let mut clients = Vec::new();
    let n = if cfg.serializes() { 1 } else { 3 };
    for _ in 0..n {
        let mut s = srv.connect();
        s.write_all(b"GET /wait?duration=1 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        clients.push(s);
    }
    // Let the requests reach the workers before the signal.
    thread::sleep(std::time::Duration::from_millis(300));
    signal(srv.pid(), libc::SIGTERM);
    for s in clients {
        let r = read_response(&mut BufReader::new(s), false).expect("in-flight request completes");
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with("waited"));
    }
    let status = wait_exit(&mut srv.child);
    assert_eq!(status.code(), Some(0), "exit code after SIGTERM");
}

// One test per body and model, one process: `conformance::pipelining::epoll`.
for_each_model! {
    get_head_post(1, App::Native);
    keep_alive_http11(1, App::Native);
    keep_alive_http10(1, App::Native);
    pipelining(1, App::Native);
    chunked_request_body(1, App::Native);
    chunked_response_body(1, App::Native);
    expect_continue(1, App::Native);
    limits(1, App::Native);
    smuggling(1, App::Native);
    client_disconnects_mid_request(1, App::Native);
    slow_reader_70mb(1, App::Native);
    slow_handler_does_not_block(1, App::Native);
    graceful_sigterm(1, App::Native);
}

/// The same tests with 2 worker processes behind the master:
/// `conformance::prefork::pipelining::epoll`.
mod prefork {
    use super::*;

    for_each_model! {
        get_head_post(2, App::Native);
        keep_alive_http11(2, App::Native);
        keep_alive_http10(2, App::Native);
        pipelining(2, App::Native);
        chunked_request_body(2, App::Native);
        chunked_response_body(2, App::Native);
        expect_continue(2, App::Native);
        limits(2, App::Native);
        smuggling(2, App::Native);
        client_disconnects_mid_request(2, App::Native);
        slow_reader_70mb(2, App::Native);
        slow_handler_does_not_block(2, App::Native);
        graceful_sigterm(2, App::Native);
    }
}
