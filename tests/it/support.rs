//! Test support: a forklift server process that stops on drop, and a raw HTTP/1.1
//! client that reads responses byte by byte so protocol edge cases can be asserted.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous guard so a broken server fails a test instead of hanging it.
pub const IO_GUARD: Duration = Duration::from_secs(30);

pub const BIN: &str = env!("CARGO_BIN_EXE_forklift");

/// A `forklift serve` child process on an ephemeral port.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Lines the server wrote to stderr, collected by a thread.
    pub log: mpsc::Receiver<String>,
    /// What it wrote to stderr before its banner (warnings about its options).
    pub preamble: Vec<String>,
    /// The start-up line naming the listeners (`listening on http://… and uwsgi://…`).
    pub banner: String,
}

impl Server {
    /// Starts `forklift serve ARGS... --http 127.0.0.1:0` and waits for its banner.
    pub fn start(args: &[&str]) -> Server {
        Self::start_in(args, None)
    }

    pub fn start_in(args: &[&str], dir: Option<&std::path::Path>) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").args(args).args(["--http", "127.0.0.1:0"]);
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        Self::launch(cmd, args)
    }

    /// `forklift ARGS` exactly as given (no `serve` added, no address): a server whose
    /// banner says where it listens.
    pub fn start_command(args: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Self::launch(cmd, args)
    }

    fn launch(mut cmd: Command, args: &[&str]) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn forklift");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut preamble = Vec::new();
        let (addr, banner) = loop {
            let line = rx
                .recv_timeout(IO_GUARD)
                .unwrap_or_else(|_| panic!("no banner from forklift {args:?}"));
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let a = rest.split_whitespace().next().unwrap();
                break (a.parse().unwrap(), line);
            }
            preamble.push(line);
        };
        Server {
            child,
            addr,
            log: rx,
            preamble,
            banner,
        }
    }

    /// The address of the server's TCP listener for `scheme` (`uwsgi`), from its banner.
    pub fn listener(&self, scheme: &str) -> SocketAddr {
        let prefix = format!("{scheme}://");
        self.banner
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} listener in {:?}", self.banner))
            .parse()
            .unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(IO_GUARD)).unwrap();
        s.set_write_timeout(Some(IO_GUARD)).unwrap();
        s
    }

    /// One request on a fresh connection; the whole response.
    pub fn get(&self, path: &str) -> Response {
        let mut s = self.connect();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        read_response(&mut BufReader::new(s), false).expect("response")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        wait_exit(&mut self.child)
    }

    /// Children (worker processes) of the server process.
    pub fn workers(&self) -> Vec<i32> {
        let pid = self.pid();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

/// Waits until `cond` holds, at most [`IO_GUARD`]; fails naming `what` otherwise.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_GUARD;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned; no memory is involved.
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.pid(), libc::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            for w in self.workers() {
                signal(w, libc::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub version: String,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body came chunked.
    pub chunked: bool,
    /// The body arrived whole (its framing was satisfied); see [`parse_whole`].
    pub complete: bool,
}

impl Response {
    /// A response with this head and, so far, an empty body.
    fn head(status: u16, version: String, reason: String, headers: Vec<(String, String)>) -> Self {
        Response {
            status,
            version,
            reason,
            headers,
            body: Vec::new(),
            chunked: false,
            complete: true,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the server said it will close.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    let n = r.read_line(&mut line)?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads one response. `head_request`: the request was HEAD (no body follows).
pub fn read_response(r: &mut impl BufRead, head_request: bool) -> std::io::Result<Response> {
    let status_line = read_line(r)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').expect("header line");
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Response::head(status, version, reason, headers);
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        resp.chunked = true;
        loop {
            let size_line = read_line(r)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                loop {
                    if read_line(r)?.is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = resp.body.len();
            resp.body.resize(start + size, 0);
            r.read_exact(&mut resp.body[start..])?;
            let crlf = read_line(r)?;
            assert!(crlf.is_empty(), "chunk not followed by CRLF");
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().unwrap();
        resp.body.resize(len, 0);
        r.read_exact(&mut resp.body)?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// Writes `raw` and reads one response on a fresh connection.
/// Sends `raw` on a new connection to `addr` and parses everything the server sent
/// until it closed (see [`parse_whole`]).
pub fn request_bytes(addr: SocketAddr, raw: &[u8]) -> Response {
    use std::io::Read;
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(raw).expect("send");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_whole(&buf, raw.starts_with(b"HEAD"))
}

/// Parses one response from all the bytes a server sent before closing. Unlike
/// [`read_response`], a body cut short is not an error: `complete` says whether it
/// arrived whole, and `body` holds what came.
pub fn parse_whole(buf: &[u8], head_only: bool) -> Response {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    // Lossy: a header value may carry latin-1 bytes, which `read_response` refuses.
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).expect("a status");
    let reason = parts.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut r = Response::head(status, version, reason, headers);
    if head_only {
        return r;
    }
    let rest = &buf[end + 4..];
    if r.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let (body, complete) = dechunk(rest);
        r.chunked = true;
        r.body = body;
        r.complete = complete;
    } else if let Some(n) = r
        .header("content-length")
        .map(|v| v.parse::<usize>().unwrap())
    {
        r.complete = rest.len() >= n;
        r.body = rest[..n.min(rest.len())].to_vec();
    } else {
        r.body = rest.to_vec();
    }
    r
}

/// A chunked body from a buffer that may end early: (the data, whether it ended).
fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[eol + 2..];
        if size == 0 {
            return (out, true);
        }
        if b.len() < size + 2 {
            out.extend_from_slice(&b[..size.min(b.len())]);
            return (out, false);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

pub fn exchange(server: &Server, raw: &[u8]) -> Response {
    let mut s = server.connect();
    s.write_all(raw).unwrap();
    read_response(&mut BufReader::new(s), false).expect("response")
}

/// True once the peer has closed the connection (reads EOF or reset).
pub fn is_closed(r: &mut impl BufRead) -> bool {
    let mut b = [0u8; 1];
    matches!(r.read(&mut b), Ok(0) | Err(_))
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// For a test that changes process-wide state (hooks of the Python module, the offload
/// engine): runs the test named `test` alone in a child process of this test binary,
/// so other tests neither see its state nor disturb it. Returns true in the child (run
/// the body), false in the parent (which has checked the child passed).
pub fn isolated(test: &str) -> bool {
    if std::env::var_os("FORKLIFT_ISOLATED_TEST").is_some() {
        return true;
    }
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--test-threads", "1", "--nocapture"])
        .env("FORKLIFT_ISOLATED_TEST", "1")
        .output()
        .expect("run the test in its own process");
    assert!(
        out.status.success(),
        "{test} failed in its own process:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 passed"), "{test} did not run: {stdout}");
    false
}

/// Generates one `#[test]` per concurrency model for each test body listed: a module
/// named after the test, holding `linear`, `threads`, `epoll` and `async_`, so
/// `cargo test epoll` selects a model and a failure names it. A body is a function
/// whose first parameter is the [`Model`](forklift::server::Model); further arguments
/// (the app to load, options, a process count) follow its name; the module may be named
/// apart from the body (`name => body(...)`), so one body serves several tests; and
/// `for [...]` limits a test to some models:
///
/// ```ignore
/// for_each_model! {
///     hello;                                  // hello::epoll() calls hello(Model::Epoll)
///     fanout_under(&[]);                      // fanout_under(Model::Epoll, &[])
///     fanout_prefork => fanout_under(&["--processes", "2"]);
///     pipelining(1) for [threads, epoll];     // only those two
/// }
/// ```
///
/// The generated modules `use super::*`, so arguments may name what the caller sees.
macro_rules! for_each_model {
    () => {};
    ($name:ident => $body:ident $(($($arg:expr),* $(,)?))? $(for [$($only:ident),* $(,)?])? ; $($rest:tt)*) => {
        $crate::support::for_each_model!(@entry $name, $body, [$($($arg),*)?], [$($($only),*)?]);
        $crate::support::for_each_model!($($rest)*);
    };
    ($name:ident $(($($arg:expr),* $(,)?))? $(for [$($only:ident),* $(,)?])? ; $($rest:tt)*) => {
        $crate::support::for_each_model!(@entry $name, $name, [$($($arg),*)?], [$($($only),*)?]);
        $crate::support::for_each_model!($($rest)*);
    };
    (@entry $name:ident, $body:ident, $args:tt, []) => {
        $crate::support::for_each_model!(@entry $name, $body, $args, [linear, threads, epoll, async_]);
    };
    (@entry $name:ident, $body:ident, $args:tt, [$($model:ident),+]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $model() {
                    $crate::support::for_each_model!(@call $body, $model, $args)
                }
            )+
        }
    };
    (@call $body:ident, $model:ident, [$($arg:expr),*]) => {
        super::$body($crate::support::for_each_model!(@value $model) $(, $arg)*)
    };
    (@value gevent) => { $crate::support::gevent_model() };
    (@value linear) => { ::forklift::server::Model::Linear };
    (@value threads) => { ::forklift::server::Model::Threads };
    (@value epoll) => { ::forklift::server::Model::Epoll };
    (@value async_) => { ::forklift::server::Model::Async };
}
pub(crate) use for_each_model;

/// [`for_each_model!`] for tests of Python (WSGI) apps: the same forms, and a fifth test
/// per body, `gevent`, where the app runs under `--gevent` (its body gets `Model::Epoll`,
/// the model gevent mode runs on, and [`under_gevent`] is true on its thread).
macro_rules! for_each_python_model {
    () => {};
    ($name:ident => $body:ident $(($($arg:expr),* $(,)?))? for [$($only:ident),* $(,)?] ; $($rest:tt)*) => {
        $crate::support::for_each_model!(@entry $name, $body, [$($($arg),*)?], [$($only),*]);
        $crate::support::for_each_python_model!($($rest)*);
    };
    ($name:ident $(($($arg:expr),* $(,)?))? for [$($only:ident),* $(,)?] ; $($rest:tt)*) => {
        $crate::support::for_each_model!(@entry $name, $name, [$($($arg),*)?], [$($only),*]);
        $crate::support::for_each_python_model!($($rest)*);
    };
    ($name:ident => $body:ident $(($($arg:expr),* $(,)?))? ; $($rest:tt)*) => {
        $crate::support::for_each_model!(@entry $name, $body, [$($($arg),*)?], [linear, threads, epoll, async_, gevent]);
        $crate::support::for_each_python_model!($($rest)*);
    };
    ($name:ident $(($($arg:expr),* $(,)?))? ; $($rest:tt)*) => {
        $crate::support::for_each_model!(@entry $name, $name, [$($($arg),*)?], [linear, threads, epoll, async_, gevent]);
        $crate::support::for_each_python_model!($($rest)*);
    };
}
pub(crate) use for_each_python_model;

thread_local! {
    /// This test thread runs its Python app under `--gevent` (see `for_each_python_model!`).
    static GEVENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The `gevent` entry of the model macros: marks this test thread and gives the model
/// gevent mode runs on.
pub fn gevent_model() -> forklift::server::Model {
    GEVENT.with(|g| g.set(true));
    forklift::server::Model::Epoll
}

/// True on a test thread of a `gevent` entry.
pub fn under_gevent() -> bool {
    GEVENT.with(|g| g.get())
}

/// The virtualenv with the test dependencies (gevent, requests, Flask…):
/// `$FORKLIFT_TEST_VENV`, else the repository's `.venv` (what `scripts/test` makes).
pub fn test_venv() -> String {
    std::env::var("FORKLIFT_TEST_VENV")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv").to_string())
}

/// [`for_each_model!`] for the offload strategies: for each body listed, one `#[test]`
/// per [`Strategy`](forklift::offload::Strategy), named `inline`, `loop_`, `thread`,
/// `pool` and `spool`, in a module named after the test; the same forms:
///
/// ```ignore
/// for_each_strategy! {
///     runs_every_task;                        // runs_every_task::pool() calls runs_every_task(Strategy::Pool)
///     full_queue_is_rejected for [thread, pool, loop_, spool];
/// }
/// ```
macro_rules! for_each_strategy {
    () => {};
    ($name:ident => $body:ident $(($($arg:expr),* $(,)?))? $(for [$($only:ident),* $(,)?])? ; $($rest:tt)*) => {
        $crate::support::for_each_strategy!(@entry $name, $body, [$($($arg),*)?], [$($($only),*)?]);
        $crate::support::for_each_strategy!($($rest)*);
    };
    ($name:ident $(($($arg:expr),* $(,)?))? $(for [$($only:ident),* $(,)?])? ; $($rest:tt)*) => {
        $crate::support::for_each_strategy!(@entry $name, $name, [$($($arg),*)?], [$($($only),*)?]);
        $crate::support::for_each_strategy!($($rest)*);
    };
    (@entry $name:ident, $body:ident, $args:tt, []) => {
        $crate::support::for_each_strategy!(@entry $name, $body, $args, [inline, loop_, thread, pool, spool]);
    };
    (@entry $name:ident, $body:ident, $args:tt, [$($strategy:ident),+]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $strategy() {
                    $crate::support::for_each_strategy!(@call $body, $strategy, $args)
                }
            )+
        }
    };
    (@call $body:ident, $strategy:ident, [$($arg:expr),*]) => {
        super::$body($crate::support::for_each_strategy!(@value $strategy) $(, $arg)*)
    };
    (@value inline) => { ::forklift::offload::Strategy::Inline };
    (@value loop_) => { ::forklift::offload::Strategy::Loop };
    (@value thread) => { ::forklift::offload::Strategy::Thread };
    (@value pool) => { ::forklift::offload::Strategy::Pool };
    (@value spool) => { ::forklift::offload::Strategy::Spool };
}
pub(crate) use for_each_strategy;
