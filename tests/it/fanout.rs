//! Fan-out: the outbound client against real backends (`forklift serve builtin:wait`, and
//! a tiny counting backend in this process), and `builtin:fanout` under each model.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use forklift::fanout::{Client, ClientConfig, FetchError, FetchRequest};

use forklift::server::Model;

use crate::support::{for_each_model, Server};

fn wait_backend() -> Server {
    Server::start(&["builtin:wait", "--model", "async"])
}

fn url(addr: SocketAddr, duration: f64) -> String {
    format!("http://{addr}/?duration={duration}")
}

#[test]
fn a_concurrent_batch_costs_less_than_the_sum_of_its_calls() {
    let backend = wait_backend();
    let client = Client::new(ClientConfig::default());
    let durations = [0.125, 0.25, 0.375, 0.5];
    let reqs = durations
        .iter()
        .map(|d| FetchRequest::get(url(backend.addr, *d)))
        .collect();
    let start = Instant::now();
    let results = client.fetch_all_blocking(reqs, Duration::from_secs(20));
    let took = start.elapsed();
    assert_eq!(results.len(), 4);
    for (d, r) in durations.iter().zip(&results) {
        let resp = r.as_ref().expect("call succeeds");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), format!("waited {d}\n"));
        assert!(resp.header("content-type").is_some());
    }
    // Loose on purpose: concurrent calls cost about the slowest (0.5 s), never the sum.
    let sum: f64 = durations.iter().sum();
    assert!(took.as_secs_f64() < sum, "batch took {took:?}");
}

#[test]
fn timeouts_and_errors_are_values_per_call() {
    let backend = wait_backend();
    let client = Client::new(ClientConfig::default());
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let reqs = vec![
        FetchRequest::get(url(backend.addr, 0.0)),
        FetchRequest::get(url(backend.addr, 5.0)).timeout(Duration::from_millis(100)),
        FetchRequest::get(url(closed, 0.0)),
        FetchRequest::get("not a url"),
        FetchRequest::get("https://127.0.0.1/"),
        FetchRequest::get("/relative"),
        FetchRequest::get("http://no-such-host.invalid/"),
        FetchRequest::new("BAD METHOD", url(backend.addr, 0.0)),
        FetchRequest::get(url(backend.addr, 0.0)).header("bad name", "x"),
    ];
    let results = client.fetch_all_blocking(reqs, Duration::from_secs(20));
    assert_eq!(results[0].as_ref().unwrap().status, 200);
    assert!(
        matches!(results[1], Err(FetchError::Timeout(_))),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(FetchError::Connect(_))),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Err(FetchError::InvalidRequest(_))),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(results[4], Err(FetchError::UnsupportedScheme(_))),
        "{:?}",
        results[4]
    );
    assert!(
        matches!(results[5], Err(FetchError::InvalidRequest(_))),
        "{:?}",
        results[5]
    );
    assert!(
        matches!(&results[6], Err(FetchError::Dns { host, .. }) if host == "no-such-host.invalid"),
        "{:?}",
        results[6]
    );
    assert!(
        matches!(results[7], Err(FetchError::InvalidRequest(_))),
        "{:?}",
        results[7]
    );
    assert!(
        matches!(results[8], Err(FetchError::InvalidRequest(_))),
        "{:?}",
        results[8]
    );
    // Every error has a readable message.
    for r in &results[1..] {
        assert!(!r.as_ref().unwrap_err().to_string().is_empty());
    }
    assert_eq!(client.stats().errors, 8);
}

#[test]
fn the_overall_deadline_cuts_a_batch() {
    let backend = wait_backend();
    let client = Client::new(ClientConfig::default());
    let reqs = vec![
        FetchRequest::get(url(backend.addr, 0.0)),
        FetchRequest::get(url(backend.addr, 10.0)),
    ];
    let results = client.fetch_all_blocking(reqs, Duration::from_millis(300));
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(FetchError::Timeout(_))));
}

#[test]
fn pending_calls_are_bounded() {
    let backend = wait_backend();
    let client = Client::new(ClientConfig {
        max_pending: 2,
        ..ClientConfig::default()
    });
    let reqs: Vec<_> = (0..3)
        .map(|_| FetchRequest::get(url(backend.addr, 0.0)))
        .collect();
    let results = client.fetch_all_blocking(reqs.clone(), Duration::from_secs(10));
    assert!(results
        .iter()
        .all(|r| matches!(r, Err(FetchError::Overloaded(2)))));
    // Within the limit, and after the refused batch released nothing it did not hold.
    let results = client.fetch_all_blocking(reqs[..2].to_vec(), Duration::from_secs(10));
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(client.stats().pending, 0);
}

#[test]
fn a_too_large_body_is_an_error() {
    let backend = Server::start(&["builtin:file", "--model", "async"]);
    let client = Client::new(ClientConfig {
        max_response_body: 1000,
        ..ClientConfig::default()
    });
    let ok = client.fetch_blocking(FetchRequest::get(format!(
        "http://{}/?bytes=1000",
        backend.addr
    )));
    assert_eq!(ok.unwrap().body.len(), 1000);
    let big = client.fetch_blocking(FetchRequest::get(format!(
        "http://{}/?bytes=100000&chunked=1",
        backend.addr
    )));
    assert_eq!(big.unwrap_err(), FetchError::BodyTooLarge(1000));
}

#[test]
fn posts_a_body_and_headers() {
    let backend = Server::start(&["builtin:echo", "--model", "epoll"]);
    let client = Client::new(ClientConfig::default());
    let resp = client
        .fetch_blocking(
            FetchRequest::new("POST", format!("http://{}/", backend.addr))
                .header("Content-Type", "text/x-test")
                .body("hello backend"),
        )
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("Content-Type"), Some(&b"text/x-test"[..]));
    assert_eq!(&resp.body[..], b"hello backend");
}

/// A keep-alive HTTP/1.1 backend that counts the connections it accepts and answers
/// every request with `ok`.
fn counting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let mut w = stream.try_clone().unwrap();
                let mut r = BufReader::new(stream);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((n, v)) = line.split_once(':') {
                            if n.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[test]
fn connections_are_reused() {
    let (addr, accepted) = counting_backend();
    let client = Client::new(ClientConfig::default());
    for _ in 0..20 {
        let resp = client
            .fetch_blocking(FetchRequest::get(format!("http://{addr}/")))
            .unwrap();
        assert_eq!(&resp.body[..], b"ok");
    }
    // A batch of 4 at once needs at most 4 connections, and reuses the idle one.
    for _ in 0..5 {
        let reqs = (0..4)
            .map(|_| FetchRequest::get(format!("http://{addr}/")))
            .collect();
        for r in client.fetch_all_blocking(reqs, Duration::from_secs(10)) {
            r.unwrap();
        }
    }
    let seen = accepted.load(Ordering::SeqCst);
    assert!(seen < 40, "the backend saw {seen} connections for 40 calls");
    assert!(seen <= 4, "the backend saw {seen} connections");
    assert_eq!(client.stats().connections as usize, seen);
    assert_eq!(client.stats().calls, 40);
}

#[test]
fn localhost_is_resolved_once_per_ttl() {
    let (addr, _) = counting_backend();
    let client = Client::new(ClientConfig {
        dns_ttl: Duration::from_secs(3600),
        ..ClientConfig::default()
    });
    let target = format!("http://localhost:{}/", addr.port());
    // localhost may resolve to ::1 first, where nothing listens: the connector then tries
    // the next address, so the calls still succeed.
    let reqs = (0..10).map(|_| FetchRequest::get(&target)).collect();
    for r in client.fetch_all_blocking(reqs, Duration::from_secs(10)) {
        r.unwrap();
    }
    for _ in 0..10 {
        client.fetch_blocking(FetchRequest::get(&target)).unwrap();
    }
    assert_eq!(client.stats().dns_lookups, 1);

    let client = Client::new(ClientConfig {
        dns_ttl: Duration::ZERO,
        ..ClientConfig::default()
    });
    for _ in 0..3 {
        client.fetch_blocking(FetchRequest::get(&target)).unwrap();
    }
    // With no TTL, every new connection looks the name up again (kept-alive
    // connections need no lookup at all).
    assert!(client.stats().dns_lookups >= 1);
    assert_eq!(client.stats().dns_lookups, client.stats().connections);
}

#[test]
fn dropping_the_client_fails_nothing_silently() {
    let backend = wait_backend();
    let client = Client::new(ClientConfig::default());
    let pending = client.fetch(FetchRequest::get(url(backend.addr, 10.0)));
    drop(client);
    let r = forklift::rt::block_on(pending);
    assert!(matches!(r, Err(FetchError::Unavailable(_))), "{r:?}");
}

#[test]
fn callbacks_get_every_result() {
    let backend = wait_backend();
    let client = Client::new(ClientConfig::default());
    let (tx, rx) = std::sync::mpsc::channel();
    for d in [0.0, 0.05] {
        let tx = tx.clone();
        client.fetch_then(FetchRequest::get(url(backend.addr, d)), move |r| {
            let _ = tx.send(r.map(|r| r.text()));
        });
    }
    let tx2 = tx.clone();
    client.fetch_then(FetchRequest::get("ftp://x/"), move |r| {
        let _ = tx2.send(r.map(|r| r.text()));
    });
    drop(tx);
    let mut got: Vec<_> = rx.iter().collect();
    got.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(got.len(), 3);
    assert!(got.contains(&Ok("waited 0\n".into())));
    assert!(got.contains(&Ok("waited 0.05\n".into())));
    assert!(got
        .iter()
        .any(|r| matches!(r, Err(FetchError::UnsupportedScheme(_)))));
}

fn fanout_under(model: Model, extra: &[&str]) {
    let backend = wait_backend();
    let mut args = vec!["builtin:fanout", "--model", model.name()];
    args.extend_from_slice(extra);
    let app = Server::start(&args);
    let be = format!("http://{}", backend.addr);
    for mode in ["concurrent", "sequential"] {
        let resp = app.get(&format!(
            "/?backend={be}&durations=0.01,0.02,0.03&mode={mode}"
        ));
        assert_eq!(resp.status, 200, "{model}: {}", resp.text());
        let text = resp.text();
        assert!(
            text.starts_with("This call lasted ")
                && text.ends_with(&format!(" seconds with {mode} calls.\n")),
            "{model}: {text:?}"
        );
    }
    // Several requests at once on one connection each.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let addr = app.addr;
            let be = be.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(crate::support::IO_GUARD)).unwrap();
                write!(
                    s,
                    "GET /?backend={be}&durations=0.05,0.1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                crate::support::read_response(&mut BufReader::new(s), false).unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().status, 200);
    }
    // A dead backend is a 502 naming the failed calls, not a hang or a crash.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let resp = app.get(&format!("/?backend=http://{dead}&durations=0,0"));
    assert_eq!(resp.status, 502);
    assert!(resp.text().contains("cannot connect"), "{}", resp.text());
    let resp = app.get("/?mode=sideways");
    assert_eq!(resp.status, 400);
}

for_each_model! {
    builtin_fanout_under => fanout_under(&[]);
    builtin_fanout_in_forked_workers => fanout_under(&["--processes", "2"]);
}

#[test]
fn client_overhead_measures_every_way() {
    let backend = Server::start(&["builtin:hello", "--model", "epoll"]);
    let url = format!("http://{}/", backend.addr);
    let runs = forklift::bench::compare::overhead::client_overhead(&url, 50, 10).unwrap();
    assert_eq!(runs.len(), 3);
    for r in &runs {
        assert_eq!(r.errors, 0, "{}", r.to_line());
        assert_eq!(r.calls, 50);
        assert!(r.to_line().contains("calls"));
    }
}

#[cfg(feature = "python")]
const PY_APP: &str = r#"
import forklift

BACKEND = "{backend}"

def application(env, start_response):
    q = env.get("QUERY_STRING", "")
    if q == "future":
        futs = [forklift.fetch(f"{BACKEND}/?duration={d}") for d in (0.01, 0.02)]
        out = [f.result(timeout=10).text() for f in futs]
    elif q == "errors":
        rs = forklift.fetch_all(
            [f"{BACKEND}/?duration=5", "http://127.0.0.1:1/", {"url": f"{BACKEND}/?duration=0"}],
            timeout=0.3,
        )
        out = [type(r).__name__ for r in rs]
        out.append(str(isinstance(rs[0], forklift.FetchError)))
    else:
        rs = forklift.fetch_all([f"{BACKEND}/?duration={d}" for d in (0.01, 0.02, 0.03)])
        out = ["%d %s" % (r.status, r.body.decode().strip()) for r in rs]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("|".join(out)).encode()]
"#;

#[cfg(feature = "python")]
for_each_model! {
    python_apps_fetch_and_fetch_all(&["--threads", "2"]);
    // Loaded in the master, then forked: each worker makes its own client.
    python_apps_fetch_in_forked_workers => python_apps_fetch_and_fetch_all(&["--processes", "2"]);
}

#[cfg(feature = "python")]
fn python_apps_fetch_and_fetch_all(model: Model, extra: &[&str]) {
    let backend = wait_backend();
    let dir = std::env::temp_dir().join(format!(
        "forklift-fanout-py-{}-{model}{}",
        std::process::id(),
        extra.concat()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let source = PY_APP.replace("{backend}", &format!("http://{}", backend.addr));
    std::fs::write(dir.join("fanout_app.py"), source).unwrap();
    let mut args = vec!["--wsgi-file", "fanout_app.py", "--model", model.name()];
    args.extend_from_slice(extra);
    let app = Server::start_in(&args, Some(&dir));
    let r = app.get("/");
    assert_eq!(
        r.text(),
        "200 waited 0.01|200 waited 0.02|200 waited 0.03",
        "{model}"
    );
    let r = app.get("/?future");
    assert_eq!(r.text(), "waited 0.01\n|waited 0.02\n", "{model}");
    let r = app.get("/?errors");
    assert_eq!(r.text(), "FetchTimeout|FetchError|Response|True", "{model}");
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_fanout_runs_a_small_experiment() {
    use clap::Parser;
    use forklift::bench::compare::{compare_fanout, CompareFanoutArgs};
    let out = std::env::temp_dir().join(format!("forklift-fanout-cmp-{}", std::process::id()));
    let args = CompareFanoutArgs::parse_from([
        "fanout".as_ref(),
        "--requests=3".as_ref(),
        "-c2".as_ref(),
        "--all-in-flight=4".as_ref(),
        "--durations=0.01,0.02".as_ref(),
        "--only=async-1p,sync-4t,reference".as_ref(),
        "--overhead-calls=20".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let fc = compare_fanout(&args, std::path::Path::new(crate::support::BIN)).unwrap();
    // async-1p: one request, 3 hammered, 4 all in flight; sync-4t: one, 3; reference: like
    // async-1p.
    assert_eq!(fc.measurements.len(), 3 + 2 + 3);
    for m in &fc.measurements {
        assert!(m.seconds.is_some(), "{m:?}");
        assert_eq!((m.failed, m.non_2xx), (0, 0), "{m:?}");
    }
    assert_eq!(fc.overhead.len(), 3);
    let text = fc.comparison.to_text();
    assert!(text.contains("sync, 4 threads"), "{text}");
    let files = fc.comparison.write_files(&out, "fanout").unwrap();
    assert_eq!(files.len(), 3);
    let _ = std::fs::remove_dir_all(&out);
}
