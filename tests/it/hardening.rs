//! Slow, half-closed and too many clients, under every model: each costs its own
//! buffers and a timer, never a worker, and always gets an answer or a close.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use forklift::server::Model;

use crate::support::*;

fn start(model: Model, extra: &[&str]) -> Server {
    let mut args = vec![
        "builtin:demo",
        "--model",
        model.name(),
        "--disable-logging",
        "--threads",
        "1",
        "--cores",
        "2",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Opens a connection and sends part of a request head, then nothing.
fn slow_client(srv: &Server) -> TcpStream {
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .unwrap();
    s
}

/// Ten clients stuck in the middle of their request heads, and a header timeout far
/// beyond the test's patience: every other client is still served at once, with one
/// thread (`linear`, `threads`) or two cores (`async`).
fn slow_heads_hold_no_worker(model: Model) {
    let srv = start(model, &["--header-timeout", "300"]);
    let slow: Vec<TcpStream> = (0..10).map(|_| slow_client(&srv)).collect();
    for _ in 0..20 {
        let mut s = srv.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let r = read_response(&mut BufReader::new(s), false)
            .unwrap_or_else(|e| panic!("{model}: not served beside slow clients: {e}"));
        assert_eq!(r.status, 200, "{model}");
    }
    drop(slow);
}

/// A head sent a byte at a time is answered 408 once the header timeout has passed
/// since its first byte: the bytes do not stretch it.
fn a_trickled_head_gets_408(model: Model) {
    let srv = start(model, &["--header-timeout", "1"]);
    let mut s = srv.connect();
    let writer = s.try_clone().unwrap();
    let (stop_tx, stop) = mpsc::channel::<()>();
    let trickle = thread::spawn(move || {
        let mut w = writer;
        for b in b"GET / HTTP/1.1\r\nHost: t\r\nX-Trickle: "
            .iter()
            .cycle()
            .take(600)
        {
            if stop.try_recv().is_ok() || w.write_all(&[*b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let _ = stop_tx.send(());
    trickle.join().unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408 "), "{model}: {text:?}");
}

/// Requests whose clients shut down their sending side right after sending: each is
/// answered, and its connection closed by the server.
fn half_closed_connections_are_answered_and_closed(model: Model) {
    let srv = start(model, &[]);
    let addr = srv.addr;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                for _ in 0..250 {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(IO_GUARD)).unwrap();
                    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                    s.shutdown(Shutdown::Write).unwrap();
                    let mut all = Vec::new();
                    s.read_to_end(&mut all).expect("the server closes");
                    assert!(all.starts_with(b"HTTP/1.1 200 OK\r\n"));
                }
            })
        })
        .collect();
    for c in clients {
        c.join()
            .unwrap_or_else(|_| panic!("{model}: a half-closed client failed"));
    }
}

/// Past `--max-connections`, a new client is answered 503 with Retry-After at once;
/// idle keep-alive connections give way to new ones.
fn a_flood_is_answered_503(model: Model) {
    let srv = start(model, &["--max-connections", "4"]);
    // Four connections, each having sent part of a request: none can give way.
    let busy: Vec<TcpStream> = (0..4).map(|_| slow_client(&srv)).collect();
    let refused = srv.get("/");
    assert_eq!(refused.status, 503, "{model}");
    assert_eq!(refused.header("retry-after"), Some("1"), "{model}");
    drop(busy);
    // Four idle keep-alive connections: they make room for newcomers.
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = srv.connect();
            let r = loop {
                write!(s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                let r = read_response(&mut BufReader::new(s.try_clone().unwrap()), false)
                    .expect("a response");
                if r.status == 200 {
                    break r;
                }
                // Still full of the closing slow clients: try again on a new connection.
                s = srv.connect();
            };
            assert_eq!(r.status, 200);
            s
        })
        .collect();
    let served = (0..200).any(|_| srv.get("/").status == 200);
    assert!(served, "{model}: idle connections never gave way");
    drop(idle);
}

/// A client that stops reading a large response is let go after the send timeout: the
/// response is cut short and the connection closed, and the worker serves others.
fn a_client_that_stops_reading_is_let_go(model: Model) {
    let srv = start(model, &["--send-timeout", "1"]);
    let mut s = srv.connect();
    let size = 200_000_000usize;
    write!(s, "GET /file?bytes={size} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(n > 0);
    // Stop reading for well past the send timeout.
    thread::sleep(Duration::from_secs(3));
    let mut got = n;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < size, "{model}: the response was not cut short");
    assert_eq!(srv.get("/").status, 200, "{model}");
}

for_each_model! {
    slow_heads_hold_no_worker;
    a_trickled_head_gets_408;
    half_closed_connections_are_answered_and_closed;
    a_flood_is_answered_503;
    a_client_that_stops_reading_is_let_go;
}
