//! The `async` model (uWSGI's async "cores" and its `gevent = 50`): a tokio
//! runtime per worker, a task per connection, and a semaphore of `cores` permits that
//! caps the requests one worker works on at once. The connection logic is the shared
//! [`Conn`] state machine, polled from the task.

use std::future::poll_fn;
use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::accept::{self, AcceptError};
use super::conn::{Conn, Step};
use super::{Env, ServerError};
use crate::app::CallContext;

pub fn run(listener: TcpListener, env: Arc<Env>) -> Result<(), ServerError> {
    listener.set_nonblocking(true)?;
    let threads = env.config.threads.max(1);
    let hands_off = env.app.hands_off();
    let rt = if threads == 1 {
        if hands_off {
            super::defer_to_app_threads();
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.on_thread_start(move || {
            crate::rt::tokio_timers_here();
            if hands_off {
                super::defer_to_app_threads();
            }
        });
        builder.worker_threads(threads).enable_all().build()
    }
    .map_err(ServerError::Runtime)?;
    let result = rt.block_on(async {
        // The current-thread runtime runs on this thread.
        crate::rt::tokio_timers_here();
        serve(listener, env.clone()).await
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve(listener: TcpListener, env: Arc<Env>) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let cores = Arc::new(Semaphore::new(env.config.cores.max(1)));
    let conns = Arc::new(Semaphore::new(env.config.max_connections.max(1)));
    // One clone per open connection: the count tells when all of them have finished.
    let tracker = Arc::new(());
    loop {
        let permit = tokio::select! {
            p = conns.clone().acquire_owned() => p.expect("semaphore open"),
            _ = env.shutdown.wait() => break,
        };
        // A saturated app (every Python thread busy) leaves new clients in the backlog,
        // where another worker process may take them.
        while env.app.saturated() && !env.shutdown.is_triggered() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = env.shutdown.wait() => break,
        };
        match accepted {
            Ok((stream, _)) => spawn_conn(stream, &env, &cores, &tracker, Some(permit)),
            Err(e) => match accept::classify(&e) {
                AcceptError::WouldBlock | AcceptError::Retry => {}
                AcceptError::Backoff => tokio::time::sleep(accept::BACKOFF).await,
                AcceptError::Fatal => return Err(e.into()),
            },
        }
    }
    // Serve the connections already waiting in the backlog, then stop.
    while let Ok(Ok((stream, _))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await {
        spawn_conn(stream, &env, &cores, &tracker, None);
    }
    drop(listener);
    // Graceful stop: wait (bounded) until every connection task has finished; idle
    // connections notice the shutdown themselves.
    let all_done = async {
        while Arc::strong_count(&tracker) > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _ = tokio::time::timeout(env.config.timeouts.shutdown, all_done).await;
    Ok(())
}

/// Serves one accepted connection on its own task, holding its connection permit and a
/// clone of the open-connections tracker until it ends.
fn spawn_conn(
    stream: TcpStream,
    env: &Arc<Env>,
    cores: &Arc<Semaphore>,
    tracker: &Arc<()>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let (env, cores, guard) = (env.clone(), cores.clone(), tracker.clone());
    tokio::spawn(async move {
        let _ = serve_conn(stream, &env, &cores).await;
        drop(permit);
        drop(guard);
    });
}

async fn serve_conn(mut stream: TcpStream, env: &Env, cores: &Semaphore) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream.peer_addr().ok(), stream.local_addr().ok());
    let call = CallContext { may_block: false };
    let busy = || env.prefer_close(env.app.saturated());
    let mut permit = None;
    // One timer and one shutdown waiter per connection, not per read: the timer is
    // moved only when the connection's deadline comes sooner than it (lingering), and
    // otherwise pushed back lazily when it fires early.
    let mut timer_at = conn.deadline(env).unwrap_or_else(Instant::now);
    let timer = tokio::time::sleep_until(timer_at.into());
    tokio::pin!(timer);
    let shutdown = env.shutdown.wait();
    tokio::pin!(shutdown);
    loop {
        if permit.is_none() && !conn.inbuf.is_empty() {
            permit = Some(cores.acquire().await.expect("semaphore open"));
        }
        let step = poll_fn(|cx| match conn.poll(env, &call, cx, &busy) {
            Step::Pending => Poll::Pending,
            s => Poll::Ready(s),
        })
        .await;
        match step {
            Step::Flush => {
                stream.write_all(&conn.outbuf).await?;
                conn.outbuf.clear();
            }
            Step::ShutdownWrite => {
                let _ = stream.shutdown().await;
            }
            Step::Close => return Ok(()),
            Step::Pending => unreachable!("pending is awaited above"),
            Step::Read => {
                let idle = conn.is_idle();
                if idle {
                    // Between requests: give the permit back and honour shutdown.
                    permit = None;
                    if env.shutdown.is_triggered() {
                        conn.close_if_idle();
                        continue;
                    }
                }
                if let Some(d) = conn.deadline(env) {
                    if d < timer_at {
                        timer_at = d;
                        timer.as_mut().reset(d.into());
                    }
                }
                tokio::select! {
                    r = read_some(&stream, &mut conn) => match r? {
                        0 => conn.read_closed(),
                        _ => conn.received(Instant::now()),
                    },
                    () = &mut timer => {
                        let now = Instant::now();
                        if !conn.expire(env, now) {
                            timer_at = conn.deadline(env).unwrap_or(now + env.config.timeouts.http);
                            timer.as_mut().reset(timer_at.into());
                        }
                    }
                    () = &mut shutdown, if idle => {
                        conn.close_if_idle();
                    }
                }
            }
        }
    }
}

thread_local! {
    /// Each runtime thread reads into one shared buffer; a connection keeps only the
    /// bytes it has not decoded yet, so idle connections hold no read buffer.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

async fn read_some(stream: &TcpStream, conn: &mut Conn) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        let r = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let r = stream.try_read(&mut s);
            if let Ok(n) = r {
                conn.inbuf.extend_from_slice(&s[..n]);
            }
            r
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}
