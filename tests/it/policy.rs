//! Connection policy that every model must apply alike: `--max-requests` retires a
//! worker, a panicking handler costs one response and not the worker, and an error
//! response reaches a client that is still sending. The worker runs in-process on a
//! listener bound to 127.0.0.1:0, with a native app written here.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread;

use forklift::app::{CallContext, Handler, Reply, Request, Response};
use forklift::rt::Shutdown;
use forklift::server::{run_worker, Log, Model, ServerConfig};

use crate::support::{for_each_model, read_response, IO_GUARD};

/// `/panic` panics in the handler, `/later-panic` in the reply's future; anything
/// else is answered "ok".
struct PanickyApp;

impl Handler for PanickyApp {
    fn call(&self, req: Request, _cx: &CallContext) -> Reply {
        match &req.target[..] {
            b"/panic" => panic!("test handler panics on purpose"),
            b"/later-panic" => Reply::Later(Box::pin(async {
                panic!("test reply future panics on purpose")
            })),
            _ => Response::text(200, "ok").into(),
        }
    }
}

/// A worker serving [`PanickyApp`] in a thread; `done` reports when `run_worker`
/// returns.
struct Worker {
    addr: SocketAddr,
    shutdown: Shutdown,
    done: mpsc::Receiver<()>,
}

impl Worker {
    fn start(model: Model, tune: impl FnOnce(&mut ServerConfig)) -> Worker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = ServerConfig {
            model,
            ..ServerConfig::default()
        };
        tune(&mut config);
        let shutdown = Shutdown::new();
        let (tx, done) = mpsc::channel();
        let stop = shutdown.clone();
        thread::spawn(move || {
            run_worker(
                vec![listener.into()],
                Arc::new(PanickyApp),
                config,
                Log::stderr(false),
                stop,
            )
            .expect("worker runs");
            let _ = tx.send(());
        });
        Worker {
            addr,
            shutdown,
            done,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(IO_GUARD)).unwrap();
        s.set_write_timeout(Some(IO_GUARD)).unwrap();
        s
    }

    /// One request on a fresh connection: status and body.
    fn get(&self, path: &str) -> (u16, String) {
        let mut s = self.connect();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let r = read_response(&mut BufReader::new(s), false).expect("a response");
        (r.status, r.text())
    }

    fn stopped(&self) -> bool {
        self.done.recv_timeout(IO_GUARD).is_ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The request that reaches `--max-requests` is answered with `Connection: close`,
/// and the worker then stops by itself (its master starts a fresh one).
fn max_requests_retires_the_worker(model: Model) {
    let w = Worker::start(model, |c| c.max_requests = Some(3));
    let mut s = w.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for i in 1..=3 {
        write!(s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let resp = read_response(&mut r, false).expect("a response");
        assert_eq!(resp.status, 200);
        let close = resp.header("connection").is_some_and(|v| v == "close");
        assert_eq!(close, i == 3, "Connection: close on response {i} only");
    }
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "the connection closes after the last response"
    );
    assert!(w.stopped(), "{model}: the worker stops after 3 requests");
}

/// A handler (or its future) that panics gets its client a 500; the worker, and every
/// thread it has, goes on serving.
fn a_panicking_handler_costs_one_response(model: Model) {
    let w = Worker::start(model, |c| c.threads = 2);
    for _ in 0..3 {
        for path in ["/panic", "/later-panic"] {
            let (status, _) = w.get(path);
            assert_eq!(status, 500, "{model} {path}");
            assert_eq!(
                w.get("/").1,
                "ok",
                "{model}: served after a panic in {path}"
            );
        }
    }
    // Several clients at once still find a free thread.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let addr = w.addr;
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(IO_GUARD)).unwrap();
                write!(s, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
                read_response(&mut BufReader::new(s), false).map(|r| r.status)
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap().ok(), Some(200), "{model}");
    }
}

/// A request refused at its head (413 here) while the client goes on sending the body:
/// the client can go on sending after the refusal has arrived, without a reset, and
/// then reads the 413.
fn an_error_response_reaches_a_client_still_sending(model: Model) {
    let w = Worker::start(model, |c| c.limits.max_body = 1000);
    let mut s = w.connect();
    let body_len = 1 << 20;
    write!(
        s,
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {body_len}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'x'; 16 * 1024];
    s.write_all(&chunk).unwrap();
    // Wait until the refusal is here: the server has decided to close by now.
    let mut first = [0u8; 1];
    assert_eq!(
        s.peek(&mut first).unwrap(),
        1,
        "{model}: a response arrives"
    );
    for sent in (chunk.len()..body_len).step_by(chunk.len()) {
        if let Err(e) = s.write_all(&chunk) {
            panic!("{model}: sending the body failed after {sent} bytes: {e}");
        }
    }
    let resp = read_response(&mut BufReader::new(s), false).expect("the error response");
    assert_eq!(resp.status, 413, "{model}");
}

for_each_model! {
    max_requests_retires_the_worker;
    a_panicking_handler_costs_one_response;
    an_error_response_reaches_a_client_still_sending;
}
