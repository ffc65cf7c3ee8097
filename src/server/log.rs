//! The access log and the server's own error lines, written to stderr (which `--logto
//! FILE` points at the file). An access line is, by default, the client, the request
//! line, status, body bytes and microseconds; `--log-format` takes uWSGI's `%(var)`
//! template and `--log-json` writes one JSON object per line.
//!
//! Every line is one `write` to a descriptor opened for appending, so lines from all
//! threads and all worker processes never interleave. `--logto FILE` is reopened on
//! SIGUSR1 (and with `--log-reopen` on SIGHUP), after a rotation moved it away.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::app::{Request, Version};
use crate::http::HttpError;

/// A variable of `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Addr,
    Method,
    Uri,
    Proto,
    Status,
    Msecs,
    Micros,
    Size,
    Ltime,
    Time,
    Uagent,
    Referer,
    Host,
    Pid,
    Wid,
}

impl Var {
    const ALL: [(&'static str, Var); 15] = [
        ("addr", Var::Addr),
        ("method", Var::Method),
        ("uri", Var::Uri),
        ("proto", Var::Proto),
        ("status", Var::Status),
        ("msecs", Var::Msecs),
        ("micros", Var::Micros),
        ("size", Var::Size),
        ("ltime", Var::Ltime),
        ("time", Var::Time),
        ("uagent", Var::Uagent),
        ("referer", Var::Referer),
        ("host", Var::Host),
        ("pid", Var::Pid),
        ("wid", Var::Wid),
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Shape {
    /// `127.0.0.1 "GET / HTTP/1.1" 200 11 38us`.
    #[default]
    Plain,
    Template(Vec<Piece>),
    Json,
}

/// How access lines look (`--log-format`, `--log-json`, `--log-x-forwarded-for`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogFormat {
    shape: Shape,
    /// Log the first `X-Forwarded-For` entry as the client address when present.
    pub x_forwarded_for: bool,
}

impl LogFormat {
    /// One JSON object per line.
    pub fn json() -> LogFormat {
        LogFormat {
            shape: Shape::Json,
            x_forwarded_for: false,
        }
    }

    /// A uWSGI-style template: text with `%(var)` variables. An unknown variable is an
    /// error naming it.
    pub fn parse(text: &str) -> Result<LogFormat, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("%(") {
            if at > 0 {
                pieces.push(Piece::Text(rest[..at].to_string()));
            }
            let after = &rest[at + 2..];
            let end = after
                .find(')')
                .ok_or_else(|| "has a %( without its closing )".to_string())?;
            let name = &after[..end];
            let var = Var::ALL
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    let known: Vec<&str> = Var::ALL.iter().map(|(n, _)| *n).collect();
                    format!(
                        "uses unknown variable %({name}) (known: {})",
                        known.join(", ")
                    )
                })?;
            pieces.push(Piece::Var(var));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(LogFormat {
            shape: Shape::Template(pieces),
            x_forwarded_for: false,
        })
    }

    /// Whether lines show request headers (so they are kept until the response ends).
    fn wants_headers(&self) -> bool {
        self.x_forwarded_for
            || match &self.shape {
                Shape::Plain => false,
                Shape::Json => true,
                Shape::Template(p) => p
                    .iter()
                    .any(|p| matches!(p, Piece::Var(Var::Uagent | Var::Referer | Var::Host))),
            }
    }
}

/// What an access line needs from a request, kept until its response is done.
pub struct LogLine {
    method: String,
    target: String,
    version: Version,
    start: Instant,
    /// User-Agent, Referer, Host and the X-Forwarded-For client, when the format shows
    /// them.
    headers: Option<Box<[Option<String>; 4]>>,
}

/// Where log lines go. Cheap to clone; each line is one write under stderr's lock, so
/// lines from threads do not interleave.
#[derive(Clone)]
pub struct Log {
    access: bool,
    format: Arc<LogFormat>,
    /// The worker position (1-based) of this process; 0 in the master.
    wid: usize,
}

impl Log {
    /// Logs to stderr; `access` turns the per-request lines on.
    pub fn stderr(access: bool) -> Log {
        Log {
            access,
            format: Arc::new(LogFormat::default()),
            wid: 0,
        }
    }

    /// The same log with access lines in `format`.
    pub fn with_format(mut self, format: LogFormat) -> Log {
        self.format = Arc::new(format);
        self
    }

    /// The same log for worker `wid` (1-based), for `%(wid)`.
    pub fn for_worker(mut self, wid: usize) -> Log {
        self.wid = wid;
        self
    }

    /// Whether per-request lines are written.
    pub fn enabled(&self) -> bool {
        self.access
    }

    /// Writes one line (a newline is added).
    pub fn line(&self, text: &str) {
        let mut buf = String::with_capacity(text.len() + 1);
        buf.push_str(text);
        buf.push('\n');
        let _ = io::stderr().lock().write_all(buf.as_bytes());
    }

    /// What the access line of `req` will need, taken as it is handed to the app; `None`
    /// when access lines are off.
    pub fn capture(&self, req: &Request, version: Version) -> Option<LogLine> {
        if !self.access {
            return None;
        }
        let headers = self.format.wants_headers().then(|| {
            let h = |name: &str| {
                req.header(name)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            let xff = h("x-forwarded-for")
                .and_then(|v| v.split(',').next().map(|s| s.trim().to_string()))
                .filter(|v| !v.is_empty());
            Box::new([h("user-agent"), h("referer"), h("host"), xff])
        });
        Some(LogLine {
            method: req.method().to_owned(),
            target: String::from_utf8_lossy(&req.target).into_owned(),
            version,
            start: Instant::now(),
            headers,
        })
    }

    /// The access-log line for a finished response.
    pub fn request(
        &self,
        peer: Option<SocketAddr>,
        req: Option<&LogLine>,
        status: u16,
        bytes: u64,
    ) {
        let Some(req) = req else { return };
        if !self.access {
            return;
        }
        let us = req.start.elapsed().as_micros() as u64;
        let header = |i: usize| req.headers.as_ref().and_then(|h| h[i].as_deref());
        let addr = match header(3) {
            Some(xff) if self.format.x_forwarded_for => xff.to_string(),
            _ => peer
                .map(|p| p.ip().to_string())
                .unwrap_or_else(|| "-".into()),
        };
        let text = match &self.format.shape {
            Shape::Plain => format!(
                "{addr} \"{} {} {}\" {status} {bytes} {us}us",
                req.method,
                req.target.escape_debug(),
                req.version.as_str()
            ),
            Shape::Json => serde_json::json!({
                "time": unix_secs(),
                "addr": addr,
                "method": req.method,
                "uri": req.target,
                "proto": req.version.as_str(),
                "status": status,
                "size": bytes,
                "msecs": us / 1000,
                "micros": us,
                "uagent": header(0),
                "referer": header(1),
                "host": header(2),
                "pid": std::process::id(),
                "wid": self.wid,
            })
            .to_string(),
            Shape::Template(pieces) => {
                let mut out = String::with_capacity(128);
                for p in pieces {
                    match p {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Var(v) => {
                            let value = match v {
                                Var::Addr => addr.clone(),
                                Var::Method => req.method.clone(),
                                Var::Uri => req.target.escape_debug().to_string(),
                                Var::Proto => req.version.as_str().to_string(),
                                Var::Status => status.to_string(),
                                Var::Msecs => (us / 1000).to_string(),
                                Var::Micros => us.to_string(),
                                Var::Size => bytes.to_string(),
                                Var::Ltime => local_time(),
                                Var::Time => unix_secs().to_string(),
                                Var::Uagent => header(0).unwrap_or("-").escape_debug().to_string(),
                                Var::Referer => header(1).unwrap_or("-").escape_debug().to_string(),
                                Var::Host => header(2).unwrap_or("-").escape_debug().to_string(),
                                Var::Pid => std::process::id().to_string(),
                                Var::Wid => self.wid.to_string(),
                            };
                            out.push_str(&value);
                        }
                    }
                }
                out
            }
        };
        self.line(&text);
    }

    /// A request the codec refused (logged with the access log).
    pub fn protocol_error(&self, peer: Option<SocketAddr>, err: &HttpError) {
        if self.access {
            let peer = peer
                .map(|p| p.ip().to_string())
                .unwrap_or_else(|| "-".into());
            if self.format.shape == Shape::Json {
                let line = serde_json::json!({
                    "time": unix_secs(),
                    "addr": peer,
                    "error": err.to_string(),
                    "status": err.status(),
                    "pid": std::process::id(),
                    "wid": self.wid,
                });
                self.line(&line.to_string());
            } else {
                self.line(&format!("{peer} bad request: {err} -> {}", err.status()));
            }
        }
    }

    /// An app misbehaved (bad header, short body, failed stream): always logged, and
    /// counted as an exception in the stats.
    pub fn app_error(&self, what: &str) {
        crate::ops::exception();
        self.line(&format!("forklift: app error: {what}"));
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The local time in Apache's style, as uWSGI's `%(ltime)`: `30/Nov/2026:09:17:52 +0000`.
fn local_time() -> String {
    let now = unix_secs() as libc::time_t;
    // SAFETY: an all-zero tm is a valid value of this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let mut buf = [0u8; 64];
    // SAFETY: localtime_r writes only into `tm`; strftime writes at most `buf.len()`
    // bytes into `buf` and returns how many (0 on overflow), from a NUL-terminated
    // format.
    let n = unsafe {
        if libc::localtime_r(&now, &mut tm).is_null() {
            return now.to_string();
        }
        libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%d/%b/%Y:%H:%M:%S %z".as_ptr(),
            &tm,
        )
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `--logto FILE`: stdout and stderr themselves go to the file (appending), as under
/// uWSGI, so the app's prints and tracebacks land next to the access log. Called again
/// to reopen the file after a rotation moved it away.
pub fn redirect_output(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for target in [1, 2] {
        nix::unistd::dup2(file.as_raw_fd(), target).map_err(io::Error::from)?;
    }
    Ok(())
}

/// Starts a thread that reopens `path` on SIGUSR1 (and on SIGHUP when `hup`), for a
/// process that has no signalfd loop of its own (a worker, or a single process).
pub fn watch_reopen(path: PathBuf, hup: bool) -> io::Result<()> {
    let mut sigs = vec![signal_hook::consts::SIGUSR1];
    if hup {
        sigs.push(signal_hook::consts::SIGHUP);
    }
    let mut signals = signal_hook::iterator::Signals::new(&sigs)?;
    std::thread::Builder::new()
        .name("forklift-logreopen".into())
        .spawn(move || {
            for _ in signals.forever() {
                crate::ops::signal_handled();
                if let Err(e) = redirect_output(&path) {
                    eprintln!("forklift: cannot reopen {}: {e}", path.display());
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_refuse_unknown_variables() {
        let f = LogFormat::parse("%(addr) - %(method) %(uri) %(status)").unwrap();
        assert_eq!(
            f.shape,
            Shape::Template(vec![
                Piece::Var(Var::Addr),
                Piece::Text(" - ".into()),
                Piece::Var(Var::Method),
                Piece::Text(" ".into()),
                Piece::Var(Var::Uri),
                Piece::Text(" ".into()),
                Piece::Var(Var::Status),
            ])
        );
        assert!(!f.wants_headers());
        assert!(LogFormat::parse("%(uagent)").unwrap().wants_headers());
        let e = LogFormat::parse("%(nope)").unwrap_err();
        assert!(e.contains("%(nope)"), "{e}");
        assert!(LogFormat::parse("%(addr").is_err());
    }

    #[test]
    fn ltime_is_apache_style() {
        let t = local_time();
        assert_eq!(t.matches('/').count(), 2, "{t}");
        assert!(t.contains(':') && t.contains(' '), "{t}");
    }
}
