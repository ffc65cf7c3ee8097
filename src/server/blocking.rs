//! The blocking connection driver shared by `linear` and `threads`: one thread owns a
//! connection, reads with a short timeout (so it notices shutdown and the idle limit),
//! writes with `write_all`, and parks while the app's reply is pending.

use std::io::{self, Read, Write};
use std::net::{Shutdown as NetShutdown, TcpStream};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::accept;
use super::conn::{Conn, Step};
use super::Env;
use crate::app::CallContext;

/// How often a blocked read wakes to look at the shutdown flag and the idle timer.
const TICK: Duration = Duration::from_millis(500);

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Serves one connection to the end. `prefer_close` says whether other clients are
/// waiting for this thread (then keep-alive is not offered, and an idle connection is
/// let go).
pub fn serve(stream: TcpStream, env: &Env, prefer_close: &dyn Fn() -> bool) -> u64 {
    accept::tune(&stream);
    let _ = stream.set_read_timeout(Some(TICK));
    let _ = stream.set_write_timeout(Some(env.config.timeouts.http));
    let mut conn = Conn::new(stream.peer_addr().ok(), stream.local_addr().ok());
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let call = CallContext { may_block: true };
    let mut stream = stream;
    let mut last_input = Instant::now();
    loop {
        match conn.poll(env, &call, &mut cx, prefer_close) {
            Step::Flush => {
                if stream.write_all(&conn.outbuf).is_err() {
                    return conn.served;
                }
                conn.outbuf.clear();
            }
            Step::Pending => thread::park(),
            Step::Close => {
                let _ = stream.write_all(&conn.outbuf);
                if conn.error_close {
                    linger_close(&mut stream);
                } else {
                    let _ = stream.shutdown(NetShutdown::Write);
                }
                return conn.served;
            }
            Step::Read => {
                conn.inbuf.reserve(8192);
                match read_some(&mut stream, &mut conn) {
                    Ok(0) => {
                        conn.read_closed();
                        if conn.mid_request() || conn.is_idle() {
                            return conn.served;
                        }
                    }
                    Ok(_) => last_input = Instant::now(),
                    Err(e) if is_timeout(&e) => {
                        let idle = conn.is_idle();
                        if idle && (env.shutdown.is_triggered() || prefer_close()) {
                            return conn.served;
                        }
                        if last_input.elapsed() >= env.config.timeouts.http {
                            if idle {
                                return conn.served;
                            }
                            conn.timeout();
                        }
                    }
                    Err(_) => return conn.served,
                }
            }
        }
    }
}

fn read_some(stream: &mut TcpStream, conn: &mut Conn) -> io::Result<usize> {
    let buf = &mut conn.inbuf;
    let start = buf.len();
    let cap = buf.capacity();
    buf.resize(cap, 0);
    let r = stream.read(&mut buf[start..]);
    let n = *r.as_ref().unwrap_or(&0);
    buf.truncate(start + n);
    r
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Closes after an error response or `Connection: close`: shut down the write side,
/// then drain briefly what the client was still sending, so the kernel does not answer
/// unread input with a RST that destroys the response in flight.
pub fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(NetShutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
