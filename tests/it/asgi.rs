//! ASGI apps over real sockets, through the `forklift` binary: the wire-conformance
//! suite against an ASGI app under every model (one process and two), the `http` scope
//! and message rules of the spec, lifespan, bad apps, a blocked loop, and real FastAPI,
//! Starlette and Django apps (from `$FORKLIFT_TEST_VENV`).

use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};

use forklift::server::Model;

use crate::support::*;

/// The conformance bodies, with the ASGI demo app.
mod conformance {
    pub use crate::conformance::*;
    use crate::support::for_each_model;

    for_each_model! {
        get_head_post(1, App::Asgi);
        keep_alive_http11(1, App::Asgi);
        keep_alive_http10(1, App::Asgi);
        pipelining(1, App::Asgi);
        chunked_request_body(1, App::Asgi);
        chunked_response_body(1, App::Asgi);
        expect_continue(1, App::Asgi);
        limits(1, App::Asgi);
        smuggling(1, App::Asgi);
        client_disconnects_mid_request(1, App::Asgi);
        slow_reader_70mb(1, App::Asgi);
        slow_handler_does_not_block(1, App::Asgi);
        graceful_sigterm(1, App::Asgi);
    }

    /// Two worker processes behind the master.
    mod prefork {
        use super::*;

        for_each_model! {
            get_head_post(2, App::Asgi);
            keep_alive_http11(2, App::Asgi);
            keep_alive_http10(2, App::Asgi);
            pipelining(2, App::Asgi);
            chunked_request_body(2, App::Asgi);
            chunked_response_body(2, App::Asgi);
            expect_continue(2, App::Asgi);
            limits(2, App::Asgi);
            smuggling(2, App::Asgi);
            client_disconnects_mid_request(2, App::Asgi);
            slow_reader_70mb(2, App::Asgi);
            slow_handler_does_not_block(2, App::Asgi);
            graceful_sigterm(2, App::Asgi);
        }
    }
}

const APPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/asgi");

/// `forklift serve --asgi raw:APP` with `extra` options.
fn raw(app: &str, extra: &[&str]) -> Server {
    let spec = format!("raw:{app}");
    let mut args = vec!["--asgi", spec.as_str(), "--pythonpath", APPS];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn model_args(m: Model) -> [&'static str; 2] {
    ["--model", m.name()]
}

/// The virtualenv with FastAPI, Starlette and Django, if any.
fn venv() -> Option<String> {
    match std::env::var("FORKLIFT_TEST_VENV") {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!("note: FORKLIFT_TEST_VENV is not set; skipping the framework test (scripts/test sets it up)");
            None
        }
    }
}

/// Runs `forklift serve ARGS` to its exit; returns (exit code, stderr).
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(BIN)
        .arg("serve")
        .args(args)
        .args(["--http", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run forklift");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads log lines until one contains `needle` (or the guard passes).
fn wait_log(srv: &Server, needle: &str) -> String {
    let deadline = Instant::now() + IO_GUARD;
    let mut seen = String::new();
    while Instant::now() < deadline {
        if let Ok(line) = srv.log.recv_timeout(Duration::from_millis(100)) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return seen;
            }
        }
    }
    panic!("no log line with {needle:?}; saw:\n{seen}");
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

for_each_model! {
    scope_is_complete;
    request_body_in_events;
    misbehaving_apps;
}

/// The `http` scope: every key, header order and duplicates, raw_path as sent.
fn scope_is_complete(m: Model) {
    let srv = raw("probe", &model_args(m));
    let r = exchange(
        &srv,
        b"GET /a%20b/c%2Fd?x=1&y=%20 HTTP/1.1\r\nHost: t:81\r\nX-Dup: one\r\nAccept: */*\r\nx-dup: two\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let s = json(&r);
    assert_eq!(s["type"], "http");
    assert_eq!(s["asgi"]["version"], "3.0");
    assert_eq!(s["asgi"]["spec_version"], "2.4");
    assert_eq!(s["http_version"], "1.1");
    assert_eq!(s["method"], "GET");
    assert_eq!(s["scheme"], "http");
    assert_eq!(s["path"], "/a b/c/d");
    assert_eq!(
        s["raw_path"], "/a%20b/c%2Fd",
        "raw_path keeps the percent-encoding"
    );
    assert_eq!(s["query_string"], "x=1&y=%20");
    assert_eq!(s["root_path"], "");
    assert_eq!(s["types"]["raw_path"], "bytes");
    assert_eq!(s["types"]["query_string"], "bytes");
    assert_eq!(s["types"]["headers"], "list");
    let headers: Vec<(String, String)> = s["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
        .collect();
    let expect = [
        ("host", "t:81"),
        ("x-dup", "one"),
        ("accept", "*/*"),
        ("x-dup", "two"),
        ("connection", "close"),
    ];
    assert_eq!(
        headers,
        expect
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>(),
        "names lower-cased, order and duplicates kept"
    );
    assert_eq!(s["client"][0], "127.0.0.1");
    assert!(s["client"][1].as_u64().unwrap() > 0);
    assert_eq!(s["server"][0], "127.0.0.1");
    assert_eq!(s["server"][1].as_u64().unwrap(), u64::from(srv.addr.port()));
    assert_eq!(
        s["state"]["started_by"], "lifespan",
        "lifespan state reaches requests"
    );
    assert!(s["extensions"]["http.response.pathsend"].is_object());
    assert!(s["extensions"]["http.response.trailers"].is_object());
    // Duplicate response headers are kept too.
    let dups: Vec<_> = r.headers.iter().filter(|(n, _)| n == "x-dup").collect();
    assert_eq!(dups.len(), 2);
    // HTTP/1.0 and a HEAD: no body goes out.
    let mut st = srv.connect();
    st.write_all(b"HEAD /h HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    st.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.ends_with("\r\n\r\n"), "HEAD carries no body: {text}");
}

/// A body arrives as `http.request` events with `more_body`, at most 64 KiB each.
fn request_body_in_events(m: Model) {
    let srv = raw("probe", &model_args(m));
    let body = vec![b'b'; 200_000];
    let mut raw_req = format!(
        "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw_req.extend_from_slice(&body);
    let r = exchange(&srv, &raw_req);
    let s = json(&r);
    let events = s["events"].as_array().unwrap();
    assert!(events.len() >= 4, "{events:?}");
    let total: u64 = events.iter().map(|e| e["len"].as_u64().unwrap()).sum();
    assert_eq!(total, 200_000);
    assert!(events.iter().all(|e| e["len"].as_u64().unwrap() <= 65536));
    let (last, rest) = events.split_last().unwrap();
    assert!(rest.iter().all(|e| e["more_body"] == true));
    assert_eq!(last["more_body"], false);
    // No body: one event, empty, more_body false.
    let s = json(&srv.get("/"));
    assert_eq!(s["events"][0]["type"], "http.request");
    assert_eq!(s["events"][0]["len"], 0);
}

/// Apps that break the protocol: 500 before the response, a closed connection after.
fn misbehaving_apps(m: Model) {
    let srv = raw("misbehave", &model_args(m));
    let r = srv.get("/no-start");
    assert_eq!(
        r.status, 500,
        "an app that never starts a response gets a 500"
    );
    wait_log(&srv, "returned without starting a response");
    assert_eq!(srv.get("/raise-before").status, 500);
    wait_log(&srv, "boom before the response");
    for path in ["/raise-after-start", "/raise-mid-body", "/incomplete"] {
        let mut s = srv.connect();
        write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
        let r = parse_whole(&all, false);
        assert!(
            !r.complete,
            "{path}: the response is cut off, the connection closed"
        );
    }
    // Still serving.
    assert_eq!(srv.get("/ok").text(), "ok");
    // pathsend sends a file.
    let r = srv.get("/pathsend");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Raw ASGI 3 apps"));
}

#[test]
fn disconnect_reaches_a_streaming_app() {
    let srv = raw("misbehave", &[]);
    let mut s = srv.connect();
    s.write_all(b"GET /stream-until-disconnect HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(n > 0);
    drop(s);
    // The app's next send raises ClientDisconnected (an OSError); it records that.
    let deadline = Instant::now() + IO_GUARD;
    loop {
        let log = srv.get("/log").text();
        if log.contains("ClientDisconnected") {
            break;
        }
        assert!(Instant::now() < deadline, "the app never learnt: {log:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

for_each_model! {
    response_trailers;
    request_body_streams_as_it_arrives;
    request_body_backpressure;
    disconnect_while_awaiting_receive;
    disconnect_while_streaming;
}

/// `http.response.trailers` go out as chunked trailers to a client that sent `TE:
/// trailers` (fields that frame the message left out); others get the body alone.
fn response_trailers(m: Model) {
    let srv = raw("misbehave", &model_args(m));
    let get = |path: &str, te: bool| {
        let te = if te { "TE: trailers\r\n" } else { "" };
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{te}Connection: close\r\n\r\n");
        let mut s = srv.connect();
        s.write_all(req.as_bytes()).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        String::from_utf8_lossy(&all).into_owned()
    };
    for path in ["/trailers", "/trailers?one=1"] {
        let text = get(path, true);
        let lower = text.to_ascii_lowercase();
        assert!(lower.contains("transfer-encoding: chunked"), "{text}");
        assert!(lower.contains("trailer: x-checksum, x-late"), "{text}");
        assert!(
            text.ends_with("\r\n0\r\nx-checksum: abc\r\nx-late: 1\r\n\r\n"),
            "{path}: {text}"
        );
        let r = parse_whole(text.as_bytes(), false);
        assert!(r.complete, "{text}");
        let body = if path.contains("one") {
            "whole"
        } else {
            "part1part2"
        };
        assert_eq!(r.text(), body);
        let text = get(path, false);
        assert!(
            !text.contains("x-checksum: abc"),
            "no TE: trailers, no trailers: {text}"
        );
        assert_eq!(parse_whole(text.as_bytes(), false).text(), body);
    }
    // HTTP/1.0 and HEAD: no trailers, and a complete response.
    let mut s = srv.connect();
    s.write_all(b"GET /trailers HTTP/1.0\r\nTE: trailers\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.ends_with("part1part2"), "{text}");
    let r = exchange(
        &srv,
        b"HEAD /trailers HTTP/1.1\r\nHost: t\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(srv.get("/ok").text(), "ok");
}

/// Reads from `s` until what was read contains `needle`; returns all of it.
fn read_until(s: &mut std::net::TcpStream, needle: &str) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&all).contains(needle) {
        let n = s.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Polls the app's log (`/log`) until it contains `needle`.
fn wait_app_log(srv: &Server, needle: &str) -> String {
    let deadline = Instant::now() + IO_GUARD;
    loop {
        let log = srv.get("/log").text();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the app never logged {needle:?}: {log:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The app gets the body as it arrives: what it echoes of the first chunk comes back
/// before the client sends the rest.
fn request_body_streams_as_it_arrives(m: Model) {
    let srv = raw("misbehave", &model_args(m));
    let mut s = srv.connect();
    s.write_all(
        b"POST /echo-as-it-comes HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
    )
    .unwrap();
    let head = read_until(&mut s, "first");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "a response that starts before the body is in closes the connection: {head}"
    );
    s.write_all(b"6\r\nsecond\r\n0\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("second"), "{rest}");
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "the response ends properly: {rest}"
    );
    // A whole body, Content-Length framed, on a kept-alive connection.
    let r = exchange(
        &srv,
        b"POST /echo-as-it-comes HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(r.text(), "hello");
}

/// An app that does not take its body holds the client back: the server stops reading
/// (the client's writes stall) instead of buffering the body; then it all arrives.
fn request_body_backpressure(m: Model) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const MIB: usize = 1 << 20;
    const LEN: usize = 48 * MIB;
    let srv = raw("misbehave", &model_args(m));
    let mut s = srv.connect();
    write!(
        s,
        "POST /hold?s=3 HTTP/1.1\r\nHost: t\r\nContent-Length: {LEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut s = s.try_clone().unwrap();
        let done = done.clone();
        std::thread::spawn(move || {
            let block = vec![b'h'; MIB];
            for _ in 0..LEN / MIB {
                s.write_all(&block).unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !done.load(Ordering::SeqCst),
        "the server took the whole body while the app held it back"
    );
    writer.join().unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let r = parse_whole(&all, false);
    assert_eq!(r.text(), LEN.to_string(), "every byte reached the app");
}

/// The client leaves while the app waits in `receive()` after starting its response:
/// the app gets `http.disconnect` (a close, then a reset).
fn disconnect_while_awaiting_receive(m: Model) {
    let srv = raw("misbehave", &model_args(m));
    for (i, reset) in [false, true].into_iter().enumerate() {
        let mut s = srv.connect();
        s.write_all(b"GET /wait-disconnect HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        read_until(&mut s, "first");
        if reset {
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(s);
        let deadline = Instant::now() + IO_GUARD;
        while wait_app_log(&srv, "http.disconnect")
            .matches("http.disconnect")
            .count()
            <= i
        {
            assert!(
                Instant::now() < deadline,
                "no http.disconnect (reset: {reset})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The client leaves while the app streams: a task of the app waiting in `receive()`
/// hears `http.disconnect` (as Starlette listens for it), not only the next `send()`.
fn disconnect_while_streaming(m: Model) {
    let srv = raw("misbehave", &model_args(m));
    let mut s = srv.connect();
    s.write_all(b"GET /stream-and-listen HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    read_until(&mut s, "tick");
    drop(s);
    wait_app_log(&srv, "stream saw http.disconnect");
}

#[test]
fn websocket_upgrade_is_refused_clearly() {
    let srv = raw("hello", &[]);
    let r = exchange(
        &srv,
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(r.status, 501);
    wait_log(&srv, "WebSocket upgrade requested");
    // An h2c upgrade is ignored: served over HTTP/1.1.
    let r = exchange(
        &srv,
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(r.text(), "Hello world");
}

#[test]
fn failing_startup_stops_with_the_apps_message() {
    let (code, err) = run_to_exit(&["--asgi", "raw:failing_startup", "--pythonpath", APPS]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("database unreachable"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // --lifespan off: the app is never asked.
    let srv = raw("failing_startup", &["--lifespan", "off"]);
    assert_eq!(srv.get("/").text(), "Hello world");
    // Under the master: the worker exits with its own status and the message, and the
    // master stops (instead of respawning workers that fail the same way) with it.
    for extra in [
        &["--processes", "2"][..],
        &["--processes", "2", "--lazy-apps"],
    ] {
        let mut args = vec!["--asgi", "raw:failing_startup", "--pythonpath", APPS];
        args.extend_from_slice(extra);
        let (code, err) = run_to_exit(&args);
        assert_eq!(
            code,
            Some(forklift::server::EXIT_BOOT_FAILED),
            "{extra:?}: {err}"
        );
        assert!(
            err.contains(
                "could not start the app: ASGI lifespan startup failed: database unreachable"
            ),
            "{extra:?}: {err}"
        );
        assert!(!err.contains("respawning"), "{extra:?}: {err}");
    }
}

#[test]
fn lifespan_on_requires_support() {
    // `misbehave` returns at once on the lifespan scope: fine in every mode.
    let srv = raw("misbehave", &["--lifespan", "on"]);
    assert_eq!(srv.get("/ok").text(), "ok");
    // `hello` asserts the scope is http: unsupported lifespan under auto, an error under on.
    let srv = raw("hello", &[]);
    assert_eq!(srv.get("/").text(), "Hello world");
    let (code, err) = run_to_exit(&[
        "--asgi",
        "raw:hello",
        "--pythonpath",
        APPS,
        "--lifespan",
        "on",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("AssertionError"), "{err}");
}

#[test]
fn not_an_asgi_app_is_one_line() {
    for (app, says) in [
        ("wsgi_app", "a WSGI app"),
        ("Asgi2", "ASGI 2"),
        ("not_callable", "is not callable"),
        ("missing", "has no callable 'missing'"),
    ] {
        let spec = format!("raw:{app}");
        let (code, err) = run_to_exit(&["--asgi", &spec, "--pythonpath", APPS]);
        assert_eq!(code, Some(1), "{app}: {err}");
        let line = err.trim();
        assert_eq!(line.lines().count(), 1, "{app}: {err}");
        assert!(line.contains(says), "{app}: {err}");
    }
    // And an ASGI app given as a WSGI one.
    let (code, err) = run_to_exit(&["--module", "raw:hello", "--pythonpath", APPS]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is an ASGI app"), "{err}");
    // --interface asgi with --wsgi-file works like --asgi.
    let file = format!("{APPS}/raw.py");
    let srv = Server::start(&[
        "--wsgi-file",
        &file,
        "--callable",
        "hello",
        "--interface",
        "asgi",
    ]);
    assert_eq!(srv.get("/").text(), "Hello world");
}

#[test]
fn a_blocked_loop_holds_up_only_its_own_requests() {
    let srv = raw("misbehave", &["--threads", "2"]);
    let mut blocked = srv.connect();
    blocked
        .write_all(b"GET /block?s=6 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    wait_log(&srv, "has not run for");
    for _ in 0..5 {
        assert_eq!(srv.get("/ok").text(), "ok");
    }
    blocked.set_nonblocking(true).unwrap();
    let mut b = [0u8; 16];
    assert!(
        blocked.read(&mut b).is_err(),
        "the blocked request is still waiting while the other loop serves"
    );
    blocked.set_nonblocking(false).unwrap();
    let r = read_response(&mut BufReader::new(blocked), false).unwrap();
    assert_eq!(r.text(), "ok");
}

#[test]
fn fetch_is_awaitable_and_offload_works() {
    let backend = Server::start(&["builtin:hello"]);
    let srv = raw("misbehave", &[]);
    let r = srv.get(&format!("/fetch?url=http://{}/", backend.addr));
    assert_eq!(r.text(), "fetched 200 Hello world");
}

#[test]
fn max_requests_and_harakiri_recycle_asgi_workers() {
    let srv = raw("probe", &["--max-requests", "3"]);
    let pid = |srv: &Server| json(&srv.get("/"))["state"]["pid"].as_u64().unwrap();
    let first = pid(&srv);
    let _ = pid(&srv);
    let _ = pid(&srv);
    let deadline = Instant::now() + IO_GUARD;
    while pid(&srv) == first {
        assert!(Instant::now() < deadline, "the worker was never replaced");
    }
    let srv = raw("misbehave", &["--harakiri", "1"]);
    let mut s = srv.connect();
    s.write_all(b"GET /block?s=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    wait_log(&srv, "harakiri");
    // Once the master saw it die: until then the doomed worker may still accept (and
    // lose) the next connection.
    wait_log(&srv, "killed by SIGKILL");
    assert_eq!(srv.get("/ok").text(), "ok");
}

for_each_model! {
    fastapi_app;
}

fn fastapi_app(m: Model) {
    let Some(venv) = venv() else { return };
    let token = format!("{}-{}", m.name(), std::process::id());
    let bg = std::env::temp_dir().join(format!("forklift-fastapi-bg-{token}"));
    let _ = std::fs::remove_file(&bg);
    let srv = Server::start(&[
        "--asgi",
        "fastapi_app:app",
        "--pythonpath",
        APPS,
        "--virtualenv",
        &venv,
        "--model",
        m.name(),
    ]);
    assert_eq!(srv.get("/").text(), "Hello world");
    assert_eq!(srv.get("/async").text(), "Hello async world");
    let item = json(&srv.get("/items/42?q=hat&limit=3"));
    assert_eq!(
        item,
        serde_json::json!({"item_id": 42, "q": "hat", "limit": 3})
    );
    assert_eq!(srv.get("/items/notanint").status, 422);
    let body = br#"{"name": "hat", "price": 2.5, "tags": ["a", "b"]}"#;
    let mut req = format!(
        "POST /items HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let r = exchange(&srv, &req);
    assert_eq!(
        json(&r),
        serde_json::json!({"name": "hat", "total": 5.0, "tags": ["a", "b"]})
    );
    let r = srv.get("/stream");
    assert!(r.chunked);
    assert_eq!(r.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    let req = format!("POST /background/{token} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let r = exchange(&srv, req.as_bytes());
    assert_eq!(json(&r)["scheduled"], token.as_str());
    let deadline = Instant::now() + IO_GUARD;
    while !std::fs::read_to_string(&bg)
        .unwrap_or_default()
        .contains(&token)
    {
        assert!(Instant::now() < deadline, "the background task never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = srv.get("/guarded");
    assert_eq!(r.status, 403);
    assert_eq!(json(&r), serde_json::json!({"detail": "bad key"}));
    let r = exchange(
        &srv,
        b"GET /guarded HTTP/1.1\r\nHost: t\r\nX-Key: secret\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(json(&r)["key"], "ok");
    assert_eq!(json(&srv.get("/state"))["greeting"], "hello from lifespan");
    let _ = std::fs::remove_file(&bg);
}

#[test]
fn starlette_streaming_both_ways() {
    let Some(venv) = venv() else { return };
    let srv = Server::start(&[
        "--asgi",
        "starlette_app:app",
        "--pythonpath",
        APPS,
        "--virtualenv",
        &venv,
    ]);
    assert_eq!(srv.get("/").text(), "starlette home");
    let r = srv.get("/numbers?n=1000");
    assert!(r.chunked);
    let expect: String = (0..1000).map(|i| format!("{i}\n")).collect();
    assert_eq!(r.text(), expect);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let r = json(&exchange(&srv, &req));
    assert_eq!(r["size"], 300_000);
    assert_eq!(r["chunks"], 5, "the body streams in 64 KiB events");
    let out = std::process::Command::new(format!("{venv}/bin/python"))
        .args(["-c", "import hashlib,sys; print(hashlib.sha256(bytes(i % 251 for i in range(300000))).hexdigest())"])
        .output()
        .unwrap();
    assert_eq!(r["sha256"], String::from_utf8_lossy(&out.stdout).trim());
}

#[test]
fn django_async_views() {
    let Some(venv) = venv() else { return };
    let srv = Server::start(&[
        "--asgi",
        "django_asgi:application",
        "--pythonpath",
        APPS,
        "--virtualenv",
        &venv,
    ]);
    let r = srv.get("/async");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "django async view at /async");
    assert_eq!(srv.get("/sync").text(), "django sync view");
    let body = br#"{"a": [1, 2]}"#;
    let mut req = format!(
        "POST /json HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let r = json(&exchange(&srv, &req));
    assert_eq!(
        r,
        serde_json::json!({"got": {"a": [1, 2]}, "method": "POST"})
    );
    assert_eq!(srv.get("/missing").status, 404);
}
