//! `loop`: handlers send each task as one message over a Unix `SOCK_SEQPACKET` socket to
//! an event-loop worker (like a Python asyncio worker), which runs tasks concurrently:
//! async tasks wait without holding a thread, blocking ones go to a bounded pool.
//!
//! The worker is a thread of this process (single-process servers), or the offload
//! host process shared by every worker of a pre-fork server. Back-pressure is the
//! socket itself: the worker stops reading when `queue` tasks are in flight, the
//! socket buffer fills, and a non-blocking send reports `Full`.
//!
//! A message is `b"FK1"`, the delay in milliseconds (u32 LE), the client's task id (u64
//! LE), the name length (u8), the name, then the payload.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Semaphore};

use crate::rt::fork::ForkLocal;

use crate::offload::config::OffloadConfig;
use crate::offload::counters::{CounterSnapshot, Counters};
use crate::offload::engine::Engine;
use crate::offload::error::{OffloadError, SubmitError};
use crate::offload::exec::{run_one, Executor};
use crate::offload::host::Role;
use crate::offload::registry::Registry;
use crate::offload::task::{DrainReport, Task, TaskId, TaskPayload, MAX_NAME, MAX_PAYLOAD};

const MAGIC: &[u8; 3] = b"FK1";
/// A request for the worker's counters (answered with a JSON `CounterSnapshot`).
const STATS: &[u8; 3] = b"FKS";
const HEADER: usize = 3 + 4 + 8 + 1;
const MAX_MSG: usize = HEADER + MAX_NAME + MAX_PAYLOAD;
/// Reconnections one submit tries when its connection was refused or broken.
const RECONNECTS: u64 = 10;

/// Encodes a task as one message.
pub fn encode(id: TaskId, task: &Task) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER + task.name.len() + task.payload.len());
    m.extend_from_slice(MAGIC);
    let ms = task.delay.as_millis().min(u32::MAX as u128) as u32;
    m.extend_from_slice(&ms.to_le_bytes());
    m.extend_from_slice(&id.to_le_bytes());
    m.push(task.name.len() as u8);
    m.extend_from_slice(task.name.as_bytes());
    m.extend_from_slice(&task.payload);
    m
}

/// Decodes one message; a malformed one is an error message, never a panic.
pub fn decode(m: &[u8]) -> Result<(TaskPayload, Duration), String> {
    if m.len() < HEADER || &m[..3] != MAGIC {
        return Err(format!("bad message header ({} bytes)", m.len()));
    }
    let delay = u32::from_le_bytes(m[3..7].try_into().expect("4 bytes"));
    let id = u64::from_le_bytes(m[7..15].try_into().expect("8 bytes"));
    let nlen = m[15] as usize;
    let name = m.get(HEADER..HEADER + nlen).ok_or("truncated task name")?;
    let name = std::str::from_utf8(name).map_err(|_| "task name is not UTF-8")?;
    Ok((
        TaskPayload::first(
            id,
            name.to_string(),
            bytes::Bytes::copy_from_slice(&m[HEADER + nlen..]),
        ),
        Duration::from_millis(delay as u64),
    ))
}

/// Binds the worker's socket at `path`, replacing a stale socket file but refusing to
/// steal a live one.
pub fn bind(path: &Path) -> io::Result<Socket> {
    // Checking for a stale socket, removing it and listening on a new one is one step
    // for every process of the server: two that find the path stale at once do not
    // both bind, and a stopping worker does not remove a newer worker's socket.
    let _lock = lock_path(path)?;
    if path.exists() {
        let probe = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        if probe.connect(&SockAddr::unix(path)?).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another offload worker", path.display()),
            ));
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
    sock.bind(&SockAddr::unix(path)?)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    sock.set_cloexec(true)?;
    Ok(sock)
}

/// Takes `PATH.lock` (an exclusive `flock`), held until the file is dropped. The lock
/// file stays: removing it would let two processes lock two different files.
fn lock_path(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&name)?;
    f.lock()?;
    Ok(f)
}

/// The identity (device, inode) of the file at `path`.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Removes the socket at `path` if it is still the one this worker listens on (`id`).
fn remove_own_socket(path: &Path, id: Option<(u64, u64)>) {
    let _lock = lock_path(path);
    if id.is_some() && file_id(path) == id {
        let _ = std::fs::remove_file(path);
    }
}

/// A running worker (thread) in this process.
struct Server {
    stop: watch::Sender<Option<Instant>>,
    join: std::thread::JoinHandle<DrainReport>,
}

/// Starts the worker on a thread of this process, serving `listener`.
fn start_server(
    listener: Socket,
    path: PathBuf,
    cfg: &OffloadConfig,
    registry: Registry,
    counters: Arc<Counters>,
) -> io::Result<Server> {
    let exec = Executor::new(
        "forklift-loop",
        cfg.workers,
        registry.clone(),
        counters.clone(),
    )?;
    let (stop, stop_rx) = watch::channel(None);
    let cap = cfg.queue;
    // The socket file this worker listens on (still listening, so nobody replaced it).
    let id = file_id(&path);
    let join = std::thread::Builder::new()
        .name("forklift-loop".into())
        .spawn(move || {
            // The worker runs as a task on the runtime's thread, so the tasks it
            // starts are queued locally there (spawning from this thread instead would
            // wake the runtime's thread once per task).
            let handle = exec.handle().clone();
            let served = handle.spawn(async move {
                serve(listener, (&path, id), registry, counters, cap, stop_rx).await
            });
            let report = handle.block_on(served).unwrap_or_default();
            drop(exec);
            report
        })?;
    Ok(Server { stop, join })
}

impl Server {
    fn stop(self, timeout: Duration) -> DrainReport {
        let _ = self.stop.send(Some(Instant::now() + timeout));
        self.join.join().unwrap_or_default()
    }
}

/// What the worker's connection tasks share.
struct Shared {
    registry: Registry,
    counters: Arc<Counters>,
    /// One permit per task in flight: bounds the worker's queue.
    sem: Arc<Semaphore>,
    stopping: AtomicBool,
    /// Tasks finished after the stop request.
    drained: AtomicU64,
    /// Tasks already sent by clients that the drain could not start before the deadline.
    lost: AtomicU64,
    cap: usize,
}

/// The worker: accepts clients, reads tasks while fewer than `cap` are in flight, runs
/// them concurrently, and on stop drains what clients already sent.
async fn serve(
    listener: Socket,
    (path, id): (&Path, Option<(u64, u64)>),
    registry: Registry,
    counters: Arc<Counters>,
    cap: usize,
    mut stop: watch::Receiver<Option<Instant>>,
) -> DrainReport {
    let listener = match register(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("forklift: offload loop worker cannot start: {e}");
            return DrainReport::default();
        }
    };
    let shared = Arc::new(Shared {
        registry,
        counters,
        sem: Arc::new(Semaphore::new(cap)),
        stopping: AtomicBool::new(false),
        drained: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        cap,
    });
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = listener.readable() => {
                let Ok(mut guard) = r else { break };
                match guard.try_io(|l| l.get_ref().accept()) {
                    Ok(Ok((sock, _))) => {
                        if sock.set_nonblocking(true).is_err() {
                            continue;
                        }
                        let Ok(sock) = register(sock) else { continue };
                        conns.spawn(connection(sock, shared.clone(), stop.clone()));
                    }
                    Ok(Err(e)) => {
                        // EMFILE and friends: back off instead of spinning.
                        eprintln!("forklift: offload loop worker accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_would_block) => {}
                }
            }
        }
    }
    shared.stopping.store(true, Ordering::Release);
    let deadline = stop.borrow().unwrap_or_else(Instant::now);
    // No new client finds this worker: a client whose send now fails reconnects and
    // finds (or becomes) the next one.
    remove_own_socket(path, id);
    // Clients that connected but were not accepted yet sent tasks too: take them all
    // (twice, a moment apart, for a connect that had looked the path up just before).
    for round in 0..2 {
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        loop {
            match listener.get_ref().accept() {
                Ok((sock, _)) => {
                    if sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if let Ok(sock) = register(sock) {
                        conns.spawn(connection(sock, shared.clone(), stop.clone()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    drop(listener);
    // Connections start what is already buffered, then end.
    while conns.join_next().await.is_some() {}
    // Wait for tasks in flight, until the deadline.
    let cap32 = cap.min(Semaphore::MAX_PERMITS) as u32;
    let all = tokio::time::timeout_at(deadline.into(), shared.sem.acquire_many(cap32)).await;
    let unfinished = match all {
        Ok(_) => 0,
        Err(_) => (cap - shared.sem.available_permits()) as u64,
    };
    let dropped = unfinished + shared.lost.load(Ordering::Relaxed);
    Counters::add(&shared.counters.dropped, dropped);
    DrainReport {
        drained: shared.drained.load(Ordering::Relaxed),
        dropped,
        left_in_spool: 0,
    }
}

async fn connection(
    sock: AsyncFd<Socket>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let mut buf = vec![0u8; MAX_MSG + 1];
    let mut burst = 0usize;
    // A connection accepted while stopping goes straight to draining.
    while !shared.stopping.load(Ordering::Acquire) {
        let permit = tokio::select! {
            p = shared.sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => break,
        };
        let n = tokio::select! {
            r = recv(&sock, &mut buf, &mut burst) => match r { Ok(n) => n, Err(_) => return },
            _ = stop.changed() => break,
        };
        if n == 0 {
            return;
        }
        if &buf[..n] == STATS {
            drop(permit);
            let in_flight = (shared.cap - shared.sem.available_permits()) as u64;
            let running = shared.counters.running.load(Ordering::Relaxed);
            let snap = shared.counters.snapshot(in_flight.saturating_sub(running));
            let json = serde_json::to_vec(&snap).unwrap_or_default();
            let _ = sock.get_ref().send(&json);
            continue;
        }
        start_task(&shared, &buf[..n], permit);
    }
    // Stopping: refuse further sends (the client's next send fails and it reconnects
    // elsewhere; what is queued stays readable), then start whatever this client
    // already sent, while the deadline allows.
    let _ = sock.get_ref().shutdown(std::net::Shutdown::Read);
    let deadline = stop.borrow().unwrap_or_else(Instant::now);
    loop {
        let n = match sock.get_ref().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let permit =
            tokio::time::timeout_at(deadline.into(), shared.sem.clone().acquire_owned()).await;
        match permit {
            Ok(Ok(permit)) => start_task(&shared, &buf[..n], permit),
            _ => Counters::inc(&shared.lost),
        }
    }
}

/// Decodes a message and runs its task concurrently, holding `permit` until it ends.
fn start_task(shared: &Arc<Shared>, msg: &[u8], permit: tokio::sync::OwnedSemaphorePermit) {
    match decode(msg) {
        Ok((p, delay)) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                run_task(&shared.registry, &shared.counters, p, delay).await;
                if shared.stopping.load(Ordering::Acquire) {
                    shared.drained.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            });
        }
        Err(e) => eprintln!("forklift: offload loop worker: dropped a malformed message: {e}"),
    }
}

async fn run_task(registry: &Registry, counters: &Counters, p: TaskPayload, delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Counters::inc(&counters.running);
    let r = run_one(registry, &p).await;
    if let Err(e) = &r {
        eprintln!("forklift: task {} ({}) failed: {e}", p.id, p.name);
    }
    counters.finished(r.is_ok());
}

/// Registers a socket with the runtime's reactor.
fn register(sock: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the `Socket` owns its descriptor, and the `AsyncFd` owns the `Socket`, so
    // the descriptor is neither closed nor replaced while registered.
    unsafe { AsyncFd::register(sock).map_err(|e| e.into_parts().1) }
}

/// A burst of fewer messages than this is followed by a pause of [`TICK`] before the
/// next read: a client sending steadily then wakes this thread once per tick for a
/// batch instead of once per task. Larger bursts read on at once (the sender's socket
/// buffer, a few dozen messages, must not fill while this side pauses).
const SMALL_BURST: usize = 32;

/// The pause after a small burst.
const TICK: Duration = Duration::from_millis(1);

/// Reads one message. `burst` counts the messages read since the socket was last found
/// empty; see [`SMALL_BURST`].
async fn recv(sock: &AsyncFd<Socket>, buf: &mut [u8], burst: &mut usize) -> io::Result<usize> {
    loop {
        if *burst > 0 {
            match sock.get_ref().read(buf) {
                Ok(n) => {
                    *burst += 1;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let small = *burst < SMALL_BURST;
                    *burst = 0;
                    if small {
                        tokio::time::sleep(TICK).await;
                        match sock.get_ref().read(buf) {
                            Ok(n) => {
                                *burst = 1;
                                return Ok(n);
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            // Nothing came during the pause: wait for the next message.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let mut guard = sock.readable().await?;
        match guard.try_io(|s| s.get_ref().read(buf)) {
            Ok(r) => {
                *burst = 1;
                return r;
            }
            Err(_would_block) => continue,
        }
    }
}

pub struct LoopEngine {
    cfg: OffloadConfig,
    registry: Registry,
    counters: Arc<Counters>,
    role: Role,
    /// This process's connection to the worker (a forked child makes its own).
    conn: ForkLocal<Mutex<Option<Arc<Socket>>>>,
    /// The server this process runs, if it serves the socket itself.
    local: ForkLocal<Mutex<Option<Server>>>,
    seq: AtomicU64,
    closing: AtomicBool,
}

impl LoopEngine {
    pub fn new(cfg: &OffloadConfig, registry: Registry, counters: Arc<Counters>) -> LoopEngine {
        LoopEngine {
            cfg: cfg.clone(),
            registry,
            counters,
            role: Role::new(),
            conn: ForkLocal::new(),
            local: ForkLocal::new(),
            seq: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        }
    }

    fn ensure_server(&self) -> Result<(), OffloadError> {
        let mut g = self.local.local().lock().unwrap_or_else(|p| p.into_inner());
        if g.is_some() {
            return Ok(());
        }
        let listener = match bind(&self.cfg.socket) {
            Ok(l) => l,
            // Another process of this server already serves the socket.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        *g = Some(start_server(
            listener,
            self.cfg.socket.clone(),
            &self.cfg,
            self.registry.clone(),
            self.counters.clone(),
        )?);
        Ok(())
    }

    fn connection(&self, fresh: bool) -> io::Result<Arc<Socket>> {
        let mut g = self.conn.local().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.as_ref() {
            if !fresh {
                return Ok(c.clone());
            }
        }
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        sock.set_cloexec(true)?;
        sock.connect(&SockAddr::unix(&self.cfg.socket)?)?;
        sock.set_nonblocking(true)?;
        let sock = Arc::new(sock);
        *g = Some(sock.clone());
        Ok(sock)
    }
}

impl Engine for LoopEngine {
    fn submit(&self, task: Task) -> Result<TaskId, SubmitError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        if self.role.runs_here() {
            self.ensure_server()
                .map_err(|e| SubmitError::Unavailable(io::Error::other(e.to_string())))?;
        }
        let id = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let msg = encode(id, &task);
        // A worker that is stopping refuses sends; the client then reconnects to the
        // next one (or becomes it). A few attempts cover a hand-over in progress.
        let mut attempt = 0;
        loop {
            let fresh = attempt > 0;
            if attempt > 1 {
                std::thread::sleep(Duration::from_millis(2 * attempt));
            }
            let sock = match self.connection(fresh) {
                Ok(s) => s,
                // Nobody serves the socket (the host, or the worker that served it, is
                // gone): serve it from this process, or join whoever just did.
                // Another process may be in the middle of the same hand-over (it bound
                // the path, or is unlinking it as it stops): try again, a few times.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    let served = self
                        .ensure_server()
                        .map_err(|e| io::Error::other(e.to_string()))
                        .and_then(|()| self.connection(true));
                    match served {
                        Ok(s) => s,
                        Err(_) if attempt < RECONNECTS => {
                            attempt += 1;
                            continue;
                        }
                        Err(e) => return Err(SubmitError::Unavailable(e)),
                    }
                }
                Err(e) => return Err(SubmitError::Unavailable(e)),
            };
            match sock.send_with_flags(&msg, libc::MSG_NOSIGNAL) {
                Ok(_) => return Ok(id),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(SubmitError::Full {
                        capacity: self.cfg.queue,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The worker stopped or restarted: reconnect.
                Err(_) if attempt < RECONNECTS => attempt += 1,
                Err(e) => return Err(SubmitError::Unavailable(e)),
            }
        }
    }

    fn start(&self) -> Result<(), OffloadError> {
        if self.role.runs_here() {
            self.ensure_server()?;
        }
        Ok(())
    }

    fn start_in_master(&self) -> Result<(), OffloadError> {
        if !self.role.runs_here() {
            return Ok(());
        }
        let listener = bind(&self.cfg.socket)?;
        let keep = [std::os::fd::AsRawFd::as_raw_fd(&listener)];
        let path = self.cfg.socket.clone();
        let registry = self.registry.clone();
        self.role.start_host(&self.cfg, &keep, move |cfg| {
            let counters = Arc::new(Counters::default());
            let server = start_server(listener, path, cfg, registry, counters)?;
            Ok(Box::new(move |timeout| server.stop(timeout)))
        })
    }

    fn after_fork_in_worker(&self) {
        self.role.after_fork_in_worker();
    }

    fn maintain_in_master(&self) -> Result<bool, OffloadError> {
        if !self.role.reap_dead_host() {
            return Ok(false);
        }
        match self.start_in_master() {
            Ok(()) => Ok(true),
            // A worker noticed first and serves the socket itself.
            Err(OffloadError::Io(e)) if e.kind() == io::ErrorKind::AddrInUse => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn host_pid(&self) -> Option<u32> {
        self.role.host_pid()
    }

    fn executor_counters(&self) -> Option<CounterSnapshot> {
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None).ok()?;
        sock.connect(&SockAddr::unix(&self.cfg.socket).ok()?).ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        sock.send_with_flags(STATS, libc::MSG_NOSIGNAL).ok()?;
        let mut buf = vec![0u8; 4096];
        let n = (&sock).read(&mut buf).ok()?;
        serde_json::from_slice(&buf[..n]).ok()
    }

    fn shutdown(&self, timeout: Duration) -> DrainReport {
        self.closing.store(true, Ordering::Release);
        // Closing our connection lets the worker see the end of this client.
        if let Some(c) = self.conn.get() {
            c.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
        let server = self
            .local
            .get()
            .and_then(|g| g.lock().unwrap_or_else(|p| p.into_inner()).take());
        let mut report = server.map(|s| s.stop(timeout)).unwrap_or_default();
        if let Some(host) = self.role.stop_host(timeout) {
            report.drained += host.drained;
            report.dropped += host.dropped;
        }
        report
    }

    fn queue_depth(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_rejected() {
        let t = Task::new("slowlog", &b"GET / HTTP/1.1"[..]).after(Duration::from_millis(1500));
        let m = encode(7, &t);
        let (p, d) = decode(&m).unwrap();
        assert_eq!(
            (p.id, p.name.as_str(), &p.data[..]),
            (7, "slowlog", &b"GET / HTTP/1.1"[..])
        );
        assert_eq!(d, Duration::from_millis(1500));
        assert!(decode(b"FK1").is_err());
        assert!(decode(&m[..HEADER + 2]).is_err());
        assert!(decode(b"XXXXXXXXXXXXXXXXXXXXXXXXXXXXX").is_err());
    }

    #[test]
    fn a_stale_socket_is_taken_over_by_exactly_one_process_and_kept_from_the_old_one() {
        let dir = std::env::temp_dir().join(format!("forklift-loopsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.sock");
        // A stale socket: bound, then its listener gone.
        drop(bind(&path).unwrap());
        let old_id = file_id(&path);
        assert!(old_id.is_some());
        for _ in 0..20 {
            let _ = std::fs::remove_file(&path);
            drop(bind(&path).unwrap());
            let winners: Vec<_> = (0..4)
                .map(|_| {
                    let p = path.clone();
                    std::thread::spawn(move || bind(&p))
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect();
            let ok = winners.iter().filter(|r| r.is_ok()).count();
            assert_eq!(ok, 1, "{winners:?}");
            assert!(winners
                .iter()
                .filter_map(|r| r.as_ref().err())
                .all(|e| e.kind() == io::ErrorKind::AddrInUse));
        }
        // The socket now at the path is a newer one: an old worker stopping leaves it.
        let live = file_id(&path);
        remove_own_socket(&path, Some((u64::MAX, u64::MAX)));
        assert_eq!(file_id(&path), live);
        remove_own_socket(&path, live);
        assert!(file_id(&path).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
