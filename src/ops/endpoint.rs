//! The stats and metrics server: one plain thread in the master (or the single serving
//! process) answering on its listeners with non-blocking sockets and a `poll` loop, so
//! a client that connects and never reads is closed after a deadline and holds up no
//! one.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{metrics, stats, Info, OpsError};
use crate::server::listen::{self, Stream};

/// What a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// uWSGI's stats socket: the JSON document on connect, then close.
    Stats,
    /// The stats document over HTTP (`--stats-http`).
    StatsHttp,
    /// `/metrics`, the dashboard at `/`, and `/stats.json` for it.
    Metrics,
}

/// A bound listener: TCP `HOST:PORT` / `:PORT`, or a unix socket path.
pub enum Endpoint {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Endpoint {
    /// Binds `addr` for `option` (named in errors): an address with a port is TCP,
    /// anything else a unix socket path (a stale socket file there is replaced; a live
    /// one is "in use").
    pub fn bind(option: &'static str, addr: &str) -> Result<Endpoint, OpsError> {
        let err = |e: String| OpsError::Bind {
            option,
            addr: addr.to_string(),
            problem: e,
        };
        let looks_tcp = addr
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
        let ep = if looks_tcp {
            let sock = listen::parse_addr(addr).map_err(|e| err(e.to_string()))?;
            let l = listen::bind(sock, 64).map_err(|e| match e {
                listen::ListenError::InUse(_) => err("address already in use".into()),
                e => err(e.to_string()),
            })?;
            Endpoint::Tcp(l)
        } else {
            let path = PathBuf::from(addr);
            if UnixStream::connect(&path).is_ok() {
                return Err(err("address already in use".into()));
            }
            if path.exists() {
                let _ = std::fs::remove_file(&path);
            }
            Endpoint::Unix(
                UnixListener::bind(&path).map_err(|e| err(e.to_string()))?,
                path,
            )
        };
        match &ep {
            Endpoint::Tcp(l) => l.set_nonblocking(true),
            Endpoint::Unix(l, _) => l.set_nonblocking(true),
        }
        .map_err(|e| err(e.to_string()))?;
        Ok(ep)
    }

    /// Where it listens, as a client would name it.
    pub fn name(&self) -> String {
        match self {
            Endpoint::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Endpoint::Unix(_, p) => p.display().to_string(),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Endpoint::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Endpoint::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Endpoint::Tcp(l) => l.as_fd(),
            Endpoint::Unix(l, _) => l.as_fd(),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd().as_raw_fd()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Endpoint::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Most clients served at once; more are closed at once.
const MAX_CLIENTS: usize = 64;
/// A client has this long to send its request and take the answer.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// Largest HTTP request head read.
const MAX_REQUEST: usize = 8 * 1024;

struct Client {
    stream: Stream,
    role: Role,
    /// The request read so far (HTTP roles), until the answer is ready.
    inbuf: Vec<u8>,
    /// The answer, once known, and how much of it went out.
    out: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

/// Starts the server thread over `endpoints`.
pub fn spawn(endpoints: Vec<(Role, Endpoint)>, info: Arc<Info>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("forklift-stats".into())
        .spawn(move || run(endpoints, info))?;
    Ok(())
}

fn run(endpoints: Vec<(Role, Endpoint)>, info: Arc<Info>) {
    let mut clients: Vec<Client> = Vec::new();
    let mut last_sample = Instant::now();
    loop {
        let mut fds: Vec<PollFd> = endpoints
            .iter()
            .map(|(_, e)| PollFd::new(e.fd(), PollFlags::POLLIN))
            .collect();
        for c in &clients {
            let ev = if c.out.is_some() {
                PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            fds.push(PollFd::new(c.stream.as_fd(), ev));
        }
        let _ = poll(&mut fds, PollTimeout::from(250u16));
        drop(fds);
        let now = Instant::now();
        if now.duration_since(last_sample) >= Duration::from_secs(1) {
            info.sample_listen_queue();
            last_sample = now;
        }
        for (role, ep) in &endpoints {
            while let Ok(stream) = ep.accept() {
                if clients.len() >= MAX_CLIENTS {
                    continue;
                }
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let out = (*role == Role::Stats).then(|| (stats_body(&info), 0));
                clients.push(Client {
                    stream,
                    role: *role,
                    inbuf: Vec::new(),
                    out,
                    deadline: now + CLIENT_DEADLINE,
                });
            }
        }
        clients.retain_mut(|c| {
            let keep = now < c.deadline && progress(c, &info);
            if !keep {
                // A worker forked meanwhile holds a copy of the descriptor: shutting the
                // socket down (not only closing ours) is what tells the client "done".
                let _ = c.stream.shutdown(Shutdown::Both);
            }
            keep
        });
    }
}

/// Moves a client along without blocking; false when it is finished (or failed).
fn progress(c: &mut Client, info: &Info) -> bool {
    if c.out.is_none() {
        let mut buf = [0u8; 2048];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            if c.inbuf.len() > MAX_REQUEST {
                return false;
            }
        }
        let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return true;
        };
        let head = String::from_utf8_lossy(&c.inbuf[..end]).into_owned();
        c.out = Some((answer(c.role, &head, info), 0));
    }
    let Some((out, sent)) = &mut c.out else {
        return true;
    };
    while *sent < out.len() {
        match c.stream.write(&out[*sent..]) {
            Ok(0) => return false,
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    false
}

fn stats_body(info: &Info) -> Vec<u8> {
    let doc = stats::document(info, &info.roster.snapshot());
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// The HTTP response for a request head on a listener of `role`.
fn answer(role: Role, head: &str, info: &Info) -> Vec<u8> {
    let mut parts = head.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/");
    let path = path.split('?').next().unwrap_or("/");
    if method != "GET" && method != "HEAD" {
        return http(405, "text/plain", b"only GET\n".to_vec(), method == "HEAD");
    }
    let head_only = method == "HEAD";
    match (role, path) {
        (Role::Stats | Role::StatsHttp, _) | (Role::Metrics, "/stats.json") => {
            http(200, "application/json", stats_body(info), head_only)
        }
        (Role::Metrics, "/metrics") => {
            let text = metrics::render(info, &info.roster.snapshot());
            http(200, metrics::CONTENT_TYPE, text.into_bytes(), head_only)
        }
        (Role::Metrics, "/") => http(
            200,
            "text/html; charset=utf-8",
            super::DASHBOARD.as_bytes().to_vec(),
            head_only,
        ),
        _ => http(404, "text/plain", b"not found\n".to_vec(), head_only),
    }
}

fn http(status: u16, ctype: &str, body: Vec<u8>, head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&body);
    }
    out
}
