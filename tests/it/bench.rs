//! Integration tests of the load generator against real sockets: small purpose-built
//! std::net servers for each behaviour (well-behaved, closing early, wrong lengths,
//! non-2xx, silent), and `compare models` against a spawned server binary.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use clap::Parser;
use forklift::bench::compare::models::model_specs;
use forklift::bench::compare::ServerProcess;
use forklift::bench::{
    bench, compare_models, hammer, run_config, BenchArgs, BenchConfig, CompareModelsArgs,
    HammerArgs,
};
use forklift::server::Model;

use crate::support::for_each_model;

mod support {
    //! Tiny HTTP/1.1 servers with scripted behaviour; each stops when dropped.

    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// What the server does with each request.
    #[derive(Clone, Copy, Debug)]
    pub enum Behaviour {
        /// `200 Hello world` with Content-Length, keep-alive unless asked to close.
        Hello,
        /// Reads the request, closes without answering.
        CloseEarly,
        /// Promises 20 bytes, sends 11, closes.
        ShortBody,
        /// Answers with this status (and a body).
        Status(u16),
        /// Reads the request and never answers.
        Silent,
        /// A chunked `Hello world` (11 bytes in two chunks).
        Chunked,
        /// HTTP/1.0-style body delimited by closing the connection.
        CloseDelimited,
        /// Bodies of 11 and 12 bytes alternately (counted over the server), then close.
        AlternatingLength,
        /// Echoes the request body.
        Echo,
        /// Says Content-Length: 5 and sends 11 bytes.
        LongBody,
        /// Answers the first request of a connection with `Connection: close`, then
        /// closes, whatever else was pipelined.
        CloseAfterFirst,
    }

    #[derive(Default, Debug)]
    pub struct Counters {
        pub connections: AtomicU64,
        pub requests: AtomicU64,
        /// Requests that arrived with others in one read (pipelining).
        pub batched: AtomicU64,
        /// Requests that asked for `Connection: close`.
        pub close_requested: AtomicU64,
        pub bodies: AtomicU64,
    }

    pub struct TestServer {
        pub addr: SocketAddr,
        pub counters: Arc<Counters>,
        stop: Arc<AtomicBool>,
    }

    impl TestServer {
        pub fn start(b: Behaviour) -> TestServer {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let counters = Arc::new(Counters::default());
            let stop = Arc::new(AtomicBool::new(false));
            let (c, s) = (counters.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    c.connections.fetch_add(1, Ordering::Relaxed);
                    let (c, s) = (c.clone(), s.clone());
                    std::thread::spawn(move || serve(conn, b, &c, &s));
                }
            });
            TestServer {
                addr,
                counters,
                stop,
            }
        }

        pub fn url(&self) -> String {
            format!("http://{}/", self.addr)
        }

        pub fn get(&self, c: fn(&Counters) -> &AtomicU64) -> u64 {
            c(&self.counters).load(Ordering::Relaxed)
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            let _ = TcpStream::connect(self.addr);
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    /// Splits one complete request off the front of `buf`: (length, close asked, body).
    fn take_request(buf: &[u8]) -> Option<(usize, bool, Vec<u8>)> {
        let end = find(buf, b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        if buf.len() < end + len {
            return None;
        }
        let close = head.contains("connection: close");
        Some((end + len, close, buf[end..end + len].to_vec()))
    }

    fn serve(mut s: TcpStream, b: Behaviour, c: &Counters, stop: &AtomicBool) {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(_) => return,
            }
            let mut in_this_read = 0u64;
            while let Some((used, close, body)) = take_request(&buf) {
                buf.drain(..used);
                in_this_read += 1;
                let nth = c.requests.fetch_add(1, Ordering::Relaxed) + 1;
                if in_this_read > 1 {
                    c.batched.fetch_add(1, Ordering::Relaxed);
                }
                if close {
                    c.close_requested.fetch_add(1, Ordering::Relaxed);
                }
                if !body.is_empty() {
                    c.bodies.fetch_add(1, Ordering::Relaxed);
                }
                let conn_hdr = if close { "Connection: close\r\n" } else { "" };
                let out: Vec<u8> = match b {
                    Behaviour::Hello => format!(
                        "HTTP/1.1 200 OK\r\nServer: testsrv/1\r\n{conn_hdr}Content-Length: 11\r\n\r\nHello world"
                    )
                    .into_bytes(),
                    Behaviour::CloseEarly => return,
                    Behaviour::ShortBody => {
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nHello world",
                        );
                        return;
                    }
                    Behaviour::Status(code) => format!(
                        "HTTP/1.1 {code} Whatever\r\n{conn_hdr}Content-Length: 4\r\n\r\nnope"
                    )
                    .into_bytes(),
                    Behaviour::Silent => continue,
                    Behaviour::Chunked => format!(
                        "HTTP/1.1 200 OK\r\n{conn_hdr}Transfer-Encoding: chunked\r\n\r\n5\r\nHello\r\n6;x=y\r\n world\r\n0\r\n\r\n"
                    )
                    .into_bytes(),
                    Behaviour::CloseDelimited => {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nHello world");
                        return;
                    }
                    Behaviour::AlternatingLength => {
                        let body = if nth.is_multiple_of(2) { "Hello world!" } else { "Hello world" };
                        format!(
                            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes()
                    }
                    Behaviour::LongBody => {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHello world".to_vec()
                    }
                    Behaviour::CloseAfterFirst => {
                        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 11\r\n\r\nHello world"
                            .to_vec()
                    }
                    Behaviour::Echo => {
                        let mut o = format!(
                            "HTTP/1.1 200 OK\r\n{conn_hdr}Content-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        o.extend_from_slice(&body);
                        o
                    }
                };
                if s.write_all(&out).is_err() {
                    return;
                }
                if close || matches!(b, Behaviour::AlternatingLength | Behaviour::CloseAfterFirst) {
                    return;
                }
            }
        }
    }
}

use support::{Behaviour, TestServer};

fn args(url: &str, extra: &[&str]) -> BenchArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: BenchArgs,
    }
    let mut argv = vec!["bench", "-q"];
    argv.extend_from_slice(extra);
    argv.push(url);
    Cli::try_parse_from(argv).unwrap().a
}

#[test]
fn keep_alive_counts() {
    let srv = TestServer::start(Behaviour::Hello);
    let r = bench(&args(
        &srv.url(),
        &["-n", "300", "-c", "4", "--threads", "2"],
    ))
    .unwrap();
    assert_eq!(r.complete_requests, 300);
    assert_eq!(r.failed_requests, 0);
    assert_eq!(r.non_2xx_responses, 0);
    assert_eq!(r.document_length, 11);
    assert_eq!(r.html_transferred, 3300);
    assert_eq!(r.server_software.as_deref(), Some("testsrv/1"));
    assert_eq!(
        r.connection_times.total.max,
        r.percentiles.last().unwrap().ms
    );
    assert_eq!(srv.get(|c| &c.requests), 300);
    assert_eq!(srv.get(|c| &c.close_requested), 0);
    // At most four connections (a thread that starts late may find no request left), plus
    // the up-front reachability check.
    assert!((1..=4).contains(&r.connections), "{}", r.connections);
    assert_eq!(srv.get(|c| &c.connections), r.connections + 1);
    assert_eq!(r.keep_alive_requests, 300 - r.connections);
    let text = r.to_text();
    assert!(text.contains("Complete requests:      300\n"), "{text}");
    assert!(text.contains("Keep-Alive requests:    29"), "{text}");
}

#[test]
fn connection_per_request() {
    let srv = TestServer::start(Behaviour::Hello);
    let r = bench(&args(
        &srv.url(),
        &["-n", "60", "-c", "3", "--no-keepalive"],
    ))
    .unwrap();
    assert_eq!(r.complete_requests, 60);
    assert_eq!(r.failed_requests, 0);
    assert_eq!(r.connections, 60);
    assert_eq!(srv.get(|c| &c.close_requested), 60);
    assert_eq!(srv.get(|c| &c.connections), 61);
}

#[test]
fn server_closing_early_is_a_receive_failure() {
    let srv = TestServer::start(Behaviour::CloseEarly);
    let r = bench(&args(&srv.url(), &["-n", "20", "-c", "2"])).unwrap();
    assert_eq!(r.complete_requests, 20);
    assert_eq!(r.failed_requests, 20);
    assert_eq!(r.errors.closed, 20);
    assert_eq!(r.errors.ab_split(), (0, 20, 0, 0));
    assert!(r
        .to_text()
        .contains("   (Connect: 0, Receive: 20, Length: 0, Exceptions: 0)\n"));
}

#[test]
fn short_body_is_a_length_failure() {
    let srv = TestServer::start(Behaviour::ShortBody);
    let r = bench(&args(&srv.url(), &["-n", "10", "-c", "2"])).unwrap();
    assert_eq!(r.failed_requests, 10);
    assert_eq!(r.errors.length, 10);
}

#[test]
fn differing_lengths_are_length_failures() {
    let srv = TestServer::start(Behaviour::AlternatingLength);
    // One connection, one request each: responses alternate 11 and 12 bytes.
    let r = bench(&args(&srv.url(), &["-n", "10", "-c", "1"])).unwrap();
    assert_eq!(r.complete_requests, 10);
    assert_eq!(r.errors.length, 5);
    assert_eq!(r.document_length, 11);
}

#[test]
fn bytes_beyond_the_content_length_are_reported() {
    let srv = TestServer::start(Behaviour::LongBody);
    let r = bench(&args(&srv.url(), &["-n", "5", "-c", "1"])).unwrap();
    assert_eq!(r.complete_requests, 5);
    // Seen after the response (no request waiting), or as the head of the next response.
    assert_eq!(r.errors.extra_bytes + r.errors.parse, 5, "{:?}", r.errors);
    assert_eq!(r.document_length, 5);
}

#[test]
fn non_2xx_are_counted_not_failed() {
    let srv = TestServer::start(Behaviour::Status(503));
    let r = bench(&args(&srv.url(), &["-n", "25", "-c", "5"])).unwrap();
    assert_eq!(r.complete_requests, 25);
    assert_eq!(r.failed_requests, 0);
    assert_eq!(r.non_2xx_responses, 25);
    assert_eq!(r.status_codes.len(), 1);
    assert_eq!(
        (r.status_codes[0].status, r.status_codes[0].count),
        (503, 25)
    );
    assert!(r.to_text().contains("Non-2xx responses:      25\n"));
}

#[test]
fn pipelining() {
    let srv = TestServer::start(Behaviour::Hello);
    let r = bench(&args(
        &srv.url(),
        &["-n", "205", "-c", "2", "--pipeline", "10"],
    ))
    .unwrap();
    assert_eq!(r.complete_requests, 205);
    assert_eq!(r.failed_requests, 0);
    assert_eq!(srv.get(|c| &c.requests), 205);
    assert!(r.connections <= 2);
}

#[test]
fn pipelined_requests_are_resent_when_the_server_closes() {
    let srv = TestServer::start(Behaviour::CloseAfterFirst);
    let r = bench(&args(
        &srv.url(),
        &["-n", "20", "-c", "1", "--pipeline", "4"],
    ))
    .unwrap();
    assert_eq!(r.complete_requests, 20);
    assert_eq!(r.failed_requests, 0);
    assert_eq!(r.connections, 20);
    assert_eq!(r.keep_alive_requests, 0);
}

#[test]
fn timeouts() {
    let srv = TestServer::start(Behaviour::Silent);
    let r = bench(&args(&srv.url(), &["-n", "3", "-c", "3", "-s", "0.3"])).unwrap();
    assert_eq!(r.complete_requests, 3);
    assert_eq!(r.errors.timeout, 3);
    assert_eq!(r.errors.ab_split(), (0, 0, 0, 3));
}

#[test]
fn constant_rate() {
    let srv = TestServer::start(Behaviour::Hello);
    let r = bench(&args(&srv.url(), &["-n", "40", "-c", "4", "--rate", "400"])).unwrap();
    assert_eq!(r.complete_requests, 40);
    assert_eq!(r.failed_requests, 0);
    assert_eq!(r.rate, Some(400.0));
    assert_eq!(srv.get(|c| &c.requests), 40);
    assert!(r.to_text().contains("constant rate 400 req/s"));
}

#[test]
fn time_limit_without_request_count() {
    let srv = TestServer::start(Behaviour::Hello);
    let r = bench(&args(&srv.url(), &["-t", "1", "-c", "2"])).unwrap();
    assert!(r.complete_requests > 0);
    assert_eq!(r.failed_requests, 0);
}

#[test]
fn chunked_and_close_delimited_bodies() {
    let srv = TestServer::start(Behaviour::Chunked);
    let r = bench(&args(&srv.url(), &["-n", "30", "-c", "3"])).unwrap();
    assert_eq!(r.failed_requests, 0);
    assert_eq!(r.document_length, 11);
    assert_eq!(r.html_transferred, 330);
    assert!(r.connections <= 3);

    let srv = TestServer::start(Behaviour::CloseDelimited);
    let r = bench(&args(&srv.url(), &["-n", "30", "-c", "3"])).unwrap();
    assert_eq!(r.failed_requests, 0);
    assert_eq!(r.document_length, 11);
    assert_eq!(r.connections, 30);
}

#[test]
fn post_body_and_headers() {
    let srv = TestServer::start(Behaviour::Echo);
    let dir = std::env::temp_dir().join(format!("forklift-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("body.txt");
    std::fs::write(&file, b"0123456789abcdef").unwrap();
    let f = file.to_str().unwrap();
    let r = bench(&args(
        &srv.url(),
        &[
            "-n",
            "10",
            "-c",
            "2",
            "-p",
            f,
            "-T",
            "application/x",
            "-H",
            "X-Test: 1",
        ],
    ))
    .unwrap();
    assert_eq!(r.failed_requests, 0);
    assert_eq!(r.document_length, 16);
    assert_eq!(srv.get(|c| &c.bodies), 10);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["complete_requests"], 10);
    assert_eq!(json["document_length"], 16);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreachable_target_is_an_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = bench(&args(&format!("http://127.0.0.1:{port}/"), &["-n", "1"])).unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
    assert!(bench(&args("https://127.0.0.1/", &[])).is_err());
}

#[test]
fn hammer_reports_like_hammer_py() {
    let srv = TestServer::start(Behaviour::Hello);
    let h = hammer(&HammerArgs {
        port: srv.addr.port(),
        host: "127.0.0.1".into(),
        path: "/".into(),
        url: None,
        nb_requests: 20,
        max_concurrency: 50,
        timeout: 10.0,
    })
    .unwrap();
    assert_eq!(h.report.complete_requests, 20);
    assert_eq!(h.report.concurrency_level, 20);
    let text = h.to_text();
    assert!(text.starts_with("We did 20 requests in "), "{text}");
    assert!(text.contains("failed 0"), "{text}");
}

#[test]
fn engine_progress_counter_matches() {
    use forklift::bench::{EngineConfig, Shared};
    let srv = TestServer::start(Behaviour::Hello);
    let cfg = EngineConfig {
        addr: srv.addr,
        request: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        head_request: false,
        requests: Some(50),
        duration: None,
        concurrency: 5,
        threads: 2,
        keep_alive: true,
        pipeline: 1,
        rate: None,
        timeout: std::time::Duration::from_secs(10),
    };
    let shared = std::sync::Arc::new(Shared::new(Some(50)));
    let r = forklift::bench::engine::run(&cfg, &shared).unwrap();
    assert_eq!(r.tally.completed, 50);
    assert_eq!(shared.completed.load(Ordering::Relaxed), 50);
    assert_eq!(r.cpu.len(), 2);
    assert_eq!(r.document_length, Some(11));
}

/// A stand-in for the forklift binary: prints the banner and serves hello world.
fn fake_forklift(dir: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("fake-forklift");
    std::fs::write(
        &script,
        r#"#!/bin/sh
exec python3 -c '
import sys, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "11")
        self.end_headers()
        self.wfile.write(b"Hello world")
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print("fake: listening on http://127.0.0.1:%d" % s.server_address[1], file=sys.stderr, flush=True)
s.serve_forever()
'
"#,
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn check_outputs(out: &std::path::Path, labels: &[&str]) {
    let svg = std::fs::read_to_string(out.join("models.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let html = std::fs::read_to_string(out.join("models.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for tag in [
        "<html", "<head>", "<title>", "<body>", "<table>", "<svg", "</html>",
    ] {
        assert!(html.contains(tag), "{tag} missing from the HTML report");
    }
    for l in labels {
        assert!(svg.contains(l), "{l} missing from the SVG");
        assert!(
            html.contains(&format!("<td>{l}</td>")),
            "{l} missing from the HTML"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("models.json")).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), labels.len());
}

#[test]
fn compare_models_with_a_stand_in_binary() {
    let dir = std::env::temp_dir().join(format!("forklift-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = fake_forklift(&dir);
    let out = dir.join("out");
    let a = CompareModelsArgs::parse_from([
        "models".as_ref(),
        "-n30".as_ref(),
        "-c2".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let mc = compare_models(&a, &bin).unwrap();
    assert_eq!(mc.results.len(), 5);
    for r in &mc.results {
        let rep = r.report.as_ref().unwrap_or_else(|| panic!("{:?}", r.error));
        assert_eq!(rep.complete_requests, 30);
        assert_eq!(rep.failed_requests, 0);
    }
    let text = mc.comparison.to_text();
    for l in ["linear", "prefork ×8", "thread pool ×8", "epoll", "async"] {
        assert!(text.contains(l), "{l} missing:\n{text}");
    }
    mc.comparison.write_files(&out, "models").unwrap();
    check_outputs(
        &out,
        &["linear", "prefork ×8", "thread pool ×8", "epoll", "async"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_models_reports_a_server_that_does_not_start() {
    let mut a =
        CompareModelsArgs::parse_from(["models", "-n5", "--models=linear", "--startup-timeout=5"]);
    // `false` exits at once without a banner.
    let mc = compare_models(&a, std::path::Path::new("/bin/false")).unwrap();
    assert!(mc.results[0].report.is_none());
    assert!(mc.results[0]
        .error
        .as_ref()
        .unwrap()
        .contains("exited before listening"));
    assert!(mc.comparison.to_text().contains("failed:"));
    a.models = vec!["nope".into()];
    assert!(compare_models(&a, std::path::Path::new("/bin/false")).is_err());
}

/// `forklift compare …` run as a command; (exit code, stdout, stderr).
fn forklift_compare(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forklift"))
        .arg("compare")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn compare_with_no_server_started_names_the_failures_and_writes_no_chart() {
    let dir = std::env::temp_dir().join(format!("forklift-compare-none-{}", std::process::id()));
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    // An app the server does not have: every server exits before listening.
    let (code, stdout, stderr) = forklift_compare(&[
        os("models"),
        os("--app=builtin:nope"),
        os("--models=linear,epoll"),
        os("-n5"),
        os("--out"),
        dir.as_os_str(),
    ]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(!stdout.contains("wrote"), "{stdout}");
    assert!(
        stderr.contains("nothing was measured, so no chart was written"),
        "{stderr}"
    );
    for l in [
        "linear: server linear: exited before listening",
        "epoll: server epoll",
    ] {
        assert!(stderr.contains(l), "{l} missing:\n{stderr}");
    }
    assert!(!dir.join("models.svg").exists());
    // A binary that does not exist.
    let (code, stdout, stderr) = forklift_compare(&[
        os("offload"),
        os("--strategies=none,loop"),
        os("-n5"),
        os("--forklift-bin=/nonexistent/forklift"),
        os("--out"),
        dir.as_os_str(),
    ]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(!stdout.contains("wrote"), "{stdout}");
    assert!(
        stderr.contains("no slow work: server none: cannot start /nonexistent/forklift"),
        "{stderr}"
    );
    assert!(
        stderr.contains("loop (async epoll): server loop"),
        "{stderr}"
    );
    assert!(!dir.join("offload.svg").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real server, spawned from the forklift binary under test.
fn forklift_serve(model: &str) -> ServerProcess {
    let spec = model_specs(2, 2)
        .into_iter()
        .find(|m| m.name == model)
        .unwrap();
    ServerProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_forklift")),
        "builtin:hello",
        &spec.name,
        &spec.serve_args,
        &[],
        std::time::Duration::from_secs(30),
    )
    .unwrap()
}

for_each_model! {
    against_forklift_serve;
}

fn against_forklift_serve(model: Model) {
    let srv = forklift_serve(model.name());
    let url = format!("http://{}/", srv.addr);
    let r = bench(&args(&url, &["-n", "400", "-c", "4"])).unwrap();
    assert_eq!(
        (r.complete_requests, r.failed_requests),
        (400, 0),
        "{model} keep-alive"
    );
    assert_eq!(r.document_length, 11, "{model}");
    assert!(r.server_software.is_some(), "{model}");
    let r = bench(&args(&url, &["-n", "100", "-c", "4", "--no-keepalive"])).unwrap();
    assert_eq!(
        (r.complete_requests, r.failed_requests),
        (100, 0),
        "{model} close"
    );
    assert_eq!(r.connections, 100, "{model}");
    let r = bench(&args(&url, &["-n", "50", "-c", "2", "-m", "HEAD"])).unwrap();
    assert_eq!(
        (r.complete_requests, r.failed_requests),
        (50, 0),
        "{model} HEAD"
    );
    assert_eq!(r.html_transferred, 0, "{model} HEAD");
    let r = bench(&args(&url, &["-n", "50", "-c", "2", "--rate", "500"])).unwrap();
    assert_eq!(
        (r.complete_requests, r.failed_requests),
        (50, 0),
        "{model} rate"
    );
    let r = bench(&args(&url, &["-n", "400", "-c", "2", "--pipeline", "8"])).unwrap();
    assert_eq!(
        (r.complete_requests, r.failed_requests),
        (400, 0),
        "{model} pipeline"
    );
}

#[test]
fn compare_models_against_forklift() {
    let dir = std::env::temp_dir().join(format!("forklift-compare-real-{}", std::process::id()));
    let a = CompareModelsArgs::parse_from([
        "models".as_ref(),
        "-n200".as_ref(),
        "-c4".as_ref(),
        "--processes=2".as_ref(),
        "--server-threads=2".as_ref(),
        "--out".as_ref(),
        dir.as_os_str(),
    ]);
    let mc = compare_models(&a, std::path::Path::new(env!("CARGO_BIN_EXE_forklift"))).unwrap();
    for r in &mc.results {
        let rep = r
            .report
            .as_ref()
            .unwrap_or_else(|| panic!("{}: {:?}", r.spec.name, r.error));
        assert_eq!(rep.complete_requests, 200, "{}", r.spec.name);
        assert_eq!(rep.failed_requests, 0, "{}", r.spec.name);
    }
    mc.comparison.write_files(&dir, "models").unwrap();
    check_outputs(
        &dir,
        &["linear", "prefork ×2", "thread pool ×2", "epoll", "async"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refused_connections_are_failures() {
    // Accepts the reachability check, then stops listening.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || drop(l.accept()));
    let url = format!("http://{addr}/");
    let mut cfg = BenchConfig::new(&url, 30, 3);
    cfg.timeout = std::time::Duration::from_secs(5);
    // Resolution happens first, inside run_config; the listener goes away right after.
    let r = std::thread::spawn(move || run_config(&cfg));
    t.join().unwrap();
    let r = r.join().unwrap().unwrap();
    assert_eq!(r.complete_requests, 30);
    assert_eq!(r.failed_requests, 30);
    let e = r.errors;
    assert_eq!(e.connect + e.closed + e.read + e.write, 30, "{e:?}");
}
