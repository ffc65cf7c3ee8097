//! The `async` model (uWSGI's async "cores" and its `gevent = 50`): a tokio
//! runtime per worker, an accepting task per listener, a task per connection, and a
//! semaphore of `cores` permits that caps the requests one worker works on at once.
//! The connection logic is the shared [`Conn`] state machine, polled from the task.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, Semaphore};

use super::accept::{self, AcceptError};
use super::conn::{Conn, Step};
use super::listen::{ListenSocket, Protocol};
use super::{Env, Listener, ServerError};
use crate::app::CallContext;

pub fn run(listeners: Vec<Listener>, env: Arc<Env>) -> Result<(), ServerError> {
    for l in &listeners {
        l.set_nonblocking(true)?;
    }
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
        serve(listeners, env.clone()).await
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

/// What every connection task of the worker shares.
struct Shared {
    env: Arc<Env>,
    /// Requests in the app at once (`--cores`).
    cores: Semaphore,
    /// Makes room at `--max-connections`: the acceptor raises it, and idle keep-alive
    /// connections that have waited long enough close themselves.
    pressure: Pressure,
}

/// Pressure on the connection limit. Each raise halves the idle time that makes a
/// keep-alive connection give way (from the keep-alive timeout down to none), so the
/// connections idle longest go first; a connection admitted normally lowers it again.
struct Pressure {
    notify: tokio::sync::Notify,
    level: AtomicU32,
}

impl Pressure {
    fn raise(&self) {
        let _ = self
            .level
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                (l < 16).then_some(l + 1)
            });
        self.notify.notify_waiters();
    }

    fn ease(&self) {
        if self.level.load(Ordering::Relaxed) != 0 {
            self.level.store(0, Ordering::Relaxed);
        }
    }

    /// Whether a connection idle since `since` should give way now.
    fn gives_way(&self, since: Instant, keepalive: Duration) -> bool {
        let level = self.level.load(Ordering::Relaxed);
        level > 0 && since.elapsed() >= keepalive / (1 << level.min(16))
    }
}

/// A listener on the runtime.
enum AsyncListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl AsyncListener {
    fn new(l: Listener) -> io::Result<(AsyncListener, Protocol)> {
        let protocol = l.protocol();
        let l = match l.into_socket() {
            ListenSocket::Tcp(l) => AsyncListener::Tcp(tokio::net::TcpListener::from_std(l)?),
            ListenSocket::Unix(l) => AsyncListener::Unix(tokio::net::UnixListener::from_std(l)?),
        };
        Ok((l, protocol))
    }

    async fn accept(&self) -> io::Result<(AsyncStream, Option<SocketAddr>)> {
        match self {
            AsyncListener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Responses go out in one write; no waiting for delayed ACKs.
                let _ = s.set_nodelay(true);
                Ok((AsyncStream::Tcp(s), Some(peer)))
            }
            AsyncListener::Unix(l) => Ok((AsyncStream::Unix(l.accept().await?.0), None)),
        }
    }
}

/// A connection on the runtime, TCP or unix.
enum AsyncStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncStream {
    fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            AsyncStream::Tcp(s) => s.local_addr().ok(),
            AsyncStream::Unix(_) => None,
        }
    }

    async fn readable(&self) -> io::Result<()> {
        match self {
            AsyncStream::Tcp(s) => s.readable().await,
            AsyncStream::Unix(s) => s.readable().await,
        }
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            AsyncStream::Tcp(s) => s.try_read(buf),
            AsyncStream::Unix(s) => s.try_read(buf),
        }
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            AsyncStream::Tcp(s) => s.poll_read_ready(cx),
            AsyncStream::Unix(s) => s.poll_read_ready(cx),
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            AsyncStream::Tcp(s) => s.write_all(buf).await,
            AsyncStream::Unix(s) => s.write_all(buf).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            AsyncStream::Tcp(s) => s.shutdown().await,
            AsyncStream::Unix(s) => s.shutdown().await,
        }
    }
}

/// What the accepting tasks share.
struct Acceptors {
    shared: Arc<Shared>,
    /// One permit per open connection (`--max-connections`).
    conns: Arc<Semaphore>,
    /// Connections answered 503 while they linger.
    shedding: Arc<Semaphore>,
    /// Every connection task holds a sender; when the last one is dropped, `recv`
    /// returns: all connections have finished.
    finished: mpsc::Sender<()>,
}

async fn serve(listeners: Vec<Listener>, env: Arc<Env>) -> Result<(), ServerError> {
    let shared = Arc::new(Shared {
        cores: Semaphore::new(env.config.cores.max(1)),
        pressure: Pressure {
            notify: tokio::sync::Notify::new(),
            level: AtomicU32::new(0),
        },
        env: env.clone(),
    });
    let max = env.config.max_connections.max(1);
    let (finished_tx, mut finished) = mpsc::channel::<()>(1);
    let acceptors = Arc::new(Acceptors {
        shared,
        conns: Arc::new(Semaphore::new(max)),
        shedding: Arc::new(Semaphore::new(accept::shed_budget(max))),
        finished: finished_tx,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        let (listener, protocol) = AsyncListener::new(l)?;
        tasks.spawn(accept_loop(listener, protocol, acceptors.clone()));
    }
    drop(acceptors);
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            // A listener failed for good: the worker stops (the master starts another).
            env.log.line(&format!("forklift: accept failed: {e}"));
            env.shutdown.trigger();
            result = Err(e);
        }
    }
    // Graceful stop: wait (bounded) until every connection task has finished; idle
    // connections notice the shutdown themselves.
    let _ = tokio::time::timeout(env.config.timeouts.shutdown, finished.recv()).await;
    result
}

/// Accepts on one listener until shutdown, then serves what its backlog already holds.
async fn accept_loop(
    listener: AsyncListener,
    protocol: Protocol,
    a: Arc<Acceptors>,
) -> Result<(), ServerError> {
    let (env, shared) = (&a.shared.env, &a.shared);
    loop {
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
            Ok((stream, peer)) => match a.conns.clone().try_acquire_owned() {
                Ok(permit) => {
                    shared.pressure.ease();
                    let conn = (stream, peer, protocol);
                    spawn_conn(conn, shared, &a.finished, Some(permit), false);
                }
                Err(_) => {
                    shared.pressure.raise();
                    // Answered 503 while there is room for that, else closed at once.
                    if let Ok(permit) = a.shedding.clone().try_acquire_owned() {
                        let conn = (stream, peer, protocol);
                        spawn_conn(conn, shared, &a.finished, Some(permit), true);
                    }
                }
            },
            Err(e) => match accept::classify(&e) {
                AcceptError::WouldBlock | AcceptError::Retry => {}
                AcceptError::Backoff => tokio::time::sleep(accept::BACKOFF).await,
                AcceptError::Fatal => return Err(e.into()),
            },
        }
    }
    // The last process on this socket serves the connections already waiting in the
    // backlog, then stops; on a hand-over they are the next workers'.
    while !env.shutdown.is_handover() {
        let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await
        else {
            break;
        };
        spawn_conn((stream, peer, protocol), shared, &a.finished, None, false);
    }
    Ok(())
}

/// An accepted connection: the stream, the client's address, the listener's protocol.
type Accepted = (AsyncStream, Option<SocketAddr>, Protocol);

/// Serves one accepted connection on its own task, holding its connection permit and a
/// sender of the finished channel until it ends.
fn spawn_conn(
    conn: Accepted,
    shared: &Arc<Shared>,
    finished: &mpsc::Sender<()>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    shed: bool,
) {
    let (shared, finished) = (shared.clone(), finished.clone());
    tokio::spawn(async move {
        let _ = serve_conn(conn, &shared, shed).await;
        drop(permit);
        drop(finished);
    });
}

async fn serve_conn(accepted: Accepted, shared: &Shared, shed: bool) -> io::Result<()> {
    let (mut stream, peer, protocol) = accepted;
    let (env, cores) = (&*shared.env, &shared.cores);
    let mut conn = Conn::new(peer, stream.local_addr(), protocol);
    if shed {
        conn.shed();
    }
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
    let mut stopping = false;
    let mut pressure = std::pin::pin!(shared.pressure.notify.notified());
    loop {
        // A request takes one of the worker's `cores` only once it has arrived whole.
        conn.set_gate(permit.is_none());
        let step = poll_fn(|cx| loop {
            match conn.poll(env, &call, cx, &busy) {
                // While the app works on a request whose body (or whose client's
                // leaving) it takes as it comes, input is read as it arrives.
                Step::Pending if conn.wants_input() => match stream.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => match read_ready(&stream, &mut conn) {
                        Ok(0) => conn.read_closed(),
                        Ok(_) => conn.received(Instant::now()),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    },
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // The client may stall mid-body: the body timeout applies.
                        if let Some(d) = conn.deadline(env) {
                            if d != timer_at {
                                timer_at = d;
                                timer.as_mut().reset(d.into());
                            }
                            if timer.as_mut().poll(cx).is_ready()
                                && conn.expire(env, Instant::now())
                            {
                                continue;
                            }
                        }
                        return Poll::Pending;
                    }
                },
                Step::Pending => return Poll::Pending,
                s => return Poll::Ready(Ok(s)),
            }
        })
        .await?;
        match step {
            Step::Admit => permit = Some(cores.acquire().await.expect("semaphore open")),
            Step::Flush => {
                let send = env.config.timeouts.send;
                match tokio::time::timeout(send, stream.write_all(&conn.outbuf)).await {
                    Ok(r) => r?,
                    // The client stopped reading.
                    Err(_) => return Ok(()),
                }
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
                    // Between requests: give the permit back.
                    permit = None;
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
                            timer_at = conn.deadline(env).unwrap_or(now + env.config.timeouts.keepalive);
                            timer.as_mut().reset(timer_at.into());
                        }
                    }
                    // Stopping moves the deadline of an idle connection closer.
                    () = &mut shutdown, if idle && !stopping => stopping = true,
                    () = &mut pressure, if idle => {
                        let keepalive = env.config.timeouts.keepalive;
                        if !conn.idle_since().is_some_and(|t| shared.pressure.gives_way(t, keepalive)) {
                            pressure.set(shared.pressure.notify.notified());
                        } else {
                            conn.close_if_idle();
                        }
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

async fn read_some(stream: &AsyncStream, conn: &mut Conn) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match read_ready(stream, conn) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Reads what the socket has into the connection's input (WouldBlock when nothing).
fn read_ready(stream: &AsyncStream, conn: &mut Conn) -> io::Result<usize> {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let r = stream.try_read(&mut s);
        if let Ok(n) = r {
            conn.inbuf.extend_from_slice(&s[..n]);
        }
        r
    })
}
