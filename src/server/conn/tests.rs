//! `Conn` driven without sockets: a fake driver feeds input, collects output, and
//! records the steps that are not plain reads and writes.

use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::app::{Handler, Request};
use crate::rt::Shutdown;
use crate::server::{Log, ServerConfig};

/// Answers `/` with "ok", `/panic` by panicking, `/later-panic` with a future that
/// panics when polled, `/later` with a future, `/never` with a future that never
/// finishes, and echoes the body of a POST.
struct TestApp;

impl Handler for TestApp {
    fn call(&self, req: Request, _cx: &CallContext) -> Reply {
        match &req.target[..] {
            b"/panic" => panic!("handler bug"),
            b"/later-panic" => Reply::Later(Box::pin(async { panic!("future bug") })),
            b"/later" => Reply::Later(Box::pin(async { Response::text(200, "later") })),
            b"/never" => Reply::Later(Box::pin(std::future::pending())),
            _ if req.method() == "POST" => Response::text(200, req.body.clone()).into(),
            _ => Response::text(200, "ok").into(),
        }
    }
}

fn env_with(config: ServerConfig) -> Env {
    Env::new(
        Arc::new(TestApp),
        config,
        Log::stderr(false),
        Shutdown::new(),
        None,
    )
}

fn env() -> Env {
    env_with(ServerConfig::default())
}

/// What a fake driver saw while running a connection until it wanted input.
#[derive(Debug, Default)]
struct Seen {
    out: Vec<u8>,
    /// How many separate writes the output took.
    writes: usize,
    shut_write: bool,
    closed: bool,
    /// Requests the driver had to admit (the connection was gated).
    admitted: usize,
}

impl Seen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
}

/// Polls `conn` like a driver would until it asks for input (or closes), with `input`
/// appended first; `eof` then reports the end of the client's stream.
fn run(conn: &mut Conn, env: &Env, input: &[u8], eof: bool) -> Seen {
    let mut seen = Seen::default();
    if !input.is_empty() {
        conn.inbuf.extend_from_slice(input);
        conn.received(Instant::now());
    }
    let mut eof_sent = false;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let call = CallContext { may_block: true };
    for _ in 0..100 {
        match conn.poll(env, &call, &mut cx, &|| false) {
            Step::Flush => {
                seen.out.extend_from_slice(&conn.outbuf);
                seen.writes += 1;
                conn.outbuf.clear();
            }
            Step::Admit => {
                seen.admitted += 1;
                conn.set_gate(false);
            }
            Step::Read if eof && !eof_sent => {
                eof_sent = true;
                conn.read_closed();
            }
            Step::Read => return seen,
            // The fake app's futures finish when polled, or never.
            Step::Pending => return seen,
            Step::ShutdownWrite => {
                assert!(conn.outbuf.is_empty(), "shutdown with output unsent");
                seen.shut_write = true;
            }
            Step::Close => {
                assert!(conn.outbuf.is_empty(), "close with output unsent");
                seen.closed = true;
                return seen;
            }
        }
    }
    panic!("connection never settled: {seen:?}");
}

fn new_conn() -> Conn {
    Conn::new(None, None, crate::server::Protocol::Http)
}

#[test]
fn pipelined_requests_are_answered_in_order_in_one_write() {
    let env = env();
    let mut c = new_conn();
    let seen = run(
        &mut c,
        &env,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbodyGET /c HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
    );
    let text = seen.text();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
    let (ok1, body, ok3) = (
        text.find("\r\n\r\nok").unwrap(),
        text.find("\r\n\r\nbody").unwrap(),
        text.rfind("\r\n\r\nok").unwrap(),
    );
    assert!(ok1 < body && body < ok3, "{text}");
    assert_eq!(seen.writes, 1, "small responses are coalesced");
    assert!(!seen.closed && !seen.shut_write);
    assert_eq!(c.served, 3);
    assert!(c.is_idle());
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let env = env();
    let mut c = new_conn();
    let seen = run(
        &mut c,
        &env,
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        false,
    );
    assert_eq!(seen.text(), "HTTP/1.1 100 Continue\r\n\r\n");
    let seen = run(&mut c, &env, b"hello", false);
    let text = seen.text();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
}

#[test]
fn an_error_response_is_sent_then_the_connection_lingers() {
    let env = env();
    let mut c = new_conn();
    let seen = run(
        &mut c,
        &env,
        b"GET / HTTP/1.1\r\nHost x\r\n\r\nmore bytes",
        false,
    );
    assert!(seen.text().starts_with("HTTP/1.1 400 "), "{}", seen.text());
    assert!(seen.shut_write, "the sending side is shut down first");
    assert!(!seen.closed, "input is drained before closing");
    assert!(!c.is_idle());
    // What the client still sends is read and dropped.
    let seen = run(&mut c, &env, b"a body the client was still sending", false);
    assert!(seen.out.is_empty() && !seen.closed);
    assert!(c.inbuf.len() <= 64, "drained input is not kept");
    // Lingering ends when the client closes...
    let seen = run(&mut c, &env, b"", true);
    assert!(seen.closed);
}

#[test]
fn lingering_is_bounded_in_time() {
    let env = env();
    let mut c = new_conn();
    run(&mut c, &env, b"BAD\r\n\r\n", false);
    let until = c
        .deadline(&env)
        .expect("a lingering connection has a deadline");
    assert!(until <= Instant::now() + LINGER);
    assert!(!c.expire(&env, until - Duration::from_millis(1)));
    assert!(c.expire(&env, until));
    assert!(run(&mut c, &env, b"", false).closed);
}

#[test]
fn a_clean_close_does_not_linger() {
    let env = env();
    let mut c = new_conn();
    let seen = run(
        &mut c,
        &env,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        false,
    );
    assert!(
        seen.text().contains("Connection: close\r\n"),
        "{}",
        seen.text()
    );
    assert!(seen.closed && !seen.shut_write);
}

#[test]
fn a_panicking_handler_gets_500_and_its_connection_closes() {
    let env = env();
    for path in ["/panic", "/later-panic"] {
        let mut c = new_conn();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let seen = run(&mut c, &env, req.as_bytes(), false);
        let text = seen.text();
        assert!(text.starts_with("HTTP/1.1 500 "), "{path}: {text}");
        assert!(text.contains("Connection: close\r\n"), "{path}: {text}");
        assert!(seen.closed, "{path}");
    }
    // The worker goes on: the next connection is served.
    let mut c = new_conn();
    let seen = run(
        &mut c,
        &env,
        b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
    );
    assert!(seen.text().ends_with("\r\n\r\nlater"), "{}", seen.text());
}

#[test]
fn max_requests_retires_the_worker_after_the_last_response() {
    let env = env_with(ServerConfig {
        max_requests: Some(3),
        ..ServerConfig::default()
    });
    let mut a = new_conn();
    let seen = run(&mut a, &env, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert!(!seen.text().contains("Connection: close"));
    let mut b = new_conn();
    let seen = run(
        &mut b,
        &env,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
    );
    let text = seen.text();
    assert!(text.contains("Connection: close\r\n"), "{text}");
    assert!(
        env.shutdown.is_triggered(),
        "the third request retires the worker"
    );
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(
        seen.closed || seen.shut_write,
        "the last response ends its connection"
    );
    // The idle connection of another client is let go too.
    assert!(a.close_if_idle());
    assert!(run(&mut a, &env, b"", false).closed);
}

#[test]
fn keep_alive_follows_the_request_and_the_worker() {
    let env = env();
    // HTTP/1.0 without keep-alive: one response, then close.
    let mut c = new_conn();
    let seen = run(&mut c, &env, b"GET / HTTP/1.0\r\n\r\n", false);
    assert!(seen.closed, "{}", seen.text());
    // HTTP/1.0 asking for keep-alive gets it, and the header back.
    let mut c = new_conn();
    let seen = run(
        &mut c,
        &env,
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        false,
    );
    assert!(!seen.closed, "{}", seen.text());
    assert!(seen
        .text()
        .to_ascii_lowercase()
        .contains("connection: keep-alive"));
    // A stopping worker answers, then closes.
    env.shutdown.trigger();
    let mut c = new_conn();
    let seen = run(&mut c, &env, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert!(seen.text().contains("Connection: close\r\n"));
    assert!(seen.closed);
}

#[test]
fn prefer_close_turns_keep_alive_off() {
    let env = env();
    let mut c = new_conn();
    c.inbuf
        .extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let step = c.poll(&env, &CallContext { may_block: true }, &mut cx, &|| true);
    assert_eq!(step, Step::Flush);
    assert!(String::from_utf8_lossy(&c.outbuf).contains("Connection: close\r\n"));
}

#[test]
fn time_limits_close_idle_connections_and_answer_slow_requests() {
    let env = env();
    let t = env.config.timeouts;
    // A new connection must start its request within the header timeout, else it is
    // closed without a word.
    let mut c = new_conn();
    let opened = c.deadline(&env).unwrap() - t.header;
    assert!(!c.expire(&env, opened + t.header - Duration::from_millis(1)));
    assert!(c.expire(&env, opened + t.header));
    let seen = run(&mut c, &env, b"", false);
    assert!(seen.closed && seen.out.is_empty());
    // Between requests the keep-alive timeout applies.
    let mut c = new_conn();
    run(&mut c, &env, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    let idle_until = c.deadline(&env).unwrap();
    assert!(idle_until > Instant::now() + t.keepalive - Duration::from_secs(1));
    // A head sent a byte at a time is not given more time by each byte: 408.
    let mut c = new_conn();
    run(&mut c, &env, b"G", false);
    let head_until = c.deadline(&env).unwrap();
    for b in b"ET / HTTP/1.1\r\nHo" {
        std::thread::sleep(Duration::from_millis(1));
        run(&mut c, &env, &[*b], false);
    }
    assert_eq!(c.deadline(&env), Some(head_until));
    assert!(c.expire(&env, head_until));
    let seen = run(&mut c, &env, b"", false);
    assert!(seen.text().starts_with("HTTP/1.1 408 "), "{}", seen.text());
    assert!(seen.shut_write);
    // A body: each read restarts the body timeout.
    let mut c = new_conn();
    run(
        &mut c,
        &env,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        false,
    );
    let body_until = c.deadline(&env).unwrap();
    std::thread::sleep(Duration::from_millis(2));
    run(&mut c, &env, b"de", false);
    assert!(c.deadline(&env).unwrap() > body_until);
    // While the app works there is no deadline (harakiri bounds that).
    let mut c = new_conn();
    let seen = run(
        &mut c,
        &env,
        b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
    );
    assert!(seen.out.is_empty() && !seen.closed);
    assert_eq!(c.deadline(&env), None);
}

#[test]
fn a_client_that_does_not_read_is_let_go_after_the_send_timeout() {
    let env = env();
    let mut c = new_conn();
    c.inbuf
        .extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let call = CallContext { may_block: true };
    assert_eq!(c.poll(&env, &call, &mut cx, &|| false), Step::Flush);
    let since = Instant::now();
    c.write_blocked(since);
    assert_eq!(c.deadline(&env), Some(since + env.config.timeouts.send));
    assert!(c.expire(&env, since + env.config.timeouts.send));
    assert_eq!(c.poll(&env, &call, &mut cx, &|| false), Step::Close);
}

#[test]
fn a_gated_connection_waits_to_be_admitted() {
    let env = env();
    let mut c = new_conn();
    c.set_gate(true);
    // A partial request is read without asking.
    let seen = run(
        &mut c,
        &env,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab",
        false,
    );
    assert_eq!(seen.admitted, 0);
    assert!(seen.out.is_empty());
    // The whole request is admitted once, then answered.
    let seen = run(&mut c, &env, b"cd", false);
    assert_eq!(seen.admitted, 1);
    assert!(seen.text().ends_with("\r\n\r\nabcd"), "{}", seen.text());
}

#[test]
fn end_of_stream_mid_request_closes_without_an_answer() {
    let env = env();
    let mut c = new_conn();
    let seen = run(&mut c, &env, b"GET / HTTP/1.1\r\nHo", true);
    assert!(seen.closed && seen.out.is_empty());
}

#[test]
fn a_stop_gives_idle_and_new_connections_a_grace() {
    let env = env();
    // A keep-alive connection that answered a request, and one with no request yet.
    let mut idle = new_conn();
    assert!(!run(&mut idle, &env, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).closed);
    let fresh = new_conn();
    let normal = idle.deadline(&env).unwrap();
    env.shutdown.trigger_handover();
    let stop = env.shutdown.since().unwrap();
    for c in [&idle, &fresh] {
        assert_eq!(c.deadline(&env), Some(stop + STOP_GRACE));
        assert!(c.deadline(&env).unwrap() < normal);
    }
    // Within the grace nothing is closed, and a request that arrives is answered and
    // ends its connection.
    assert!(!idle.expire(&env, stop));
    let seen = run(&mut idle, &env, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert!(
        seen.text().contains("Connection: close\r\n"),
        "{}",
        seen.text()
    );
    assert!(seen.closed);
    // After it, a connection still silent is closed.
    let mut fresh = fresh;
    assert!(fresh.expire(&env, stop + STOP_GRACE));
    assert!(run(&mut fresh, &env, b"", false).closed);
}
