//! The access log (one line per request: client, request line, status, body bytes,
//! microseconds) and the server's own error lines, written to stderr (which `--logto
//! FILE` points at the file).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Instant;

use crate::app::Version;
use crate::http::HttpError;

/// The request facts an access-log line shows.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub version: Version,
    pub start: Instant,
}

/// Where log lines go. Cheap to clone; each line is one write under stderr's lock, so
/// lines from threads do not interleave.
#[derive(Clone)]
pub struct Log {
    access: bool,
}

impl Log {
    /// Logs to stderr; `access` turns the per-request lines on.
    pub fn stderr(access: bool) -> Log {
        Log { access }
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

    /// The access-log line for a finished response.
    pub fn request(
        &self,
        peer: Option<SocketAddr>,
        req: Option<RequestView<'_>>,
        status: u16,
        bytes: u64,
    ) {
        let Some(req) = req else { return };
        if !self.access {
            return;
        }
        let us = req.start.elapsed().as_micros();
        let peer = peer
            .map(|p| p.ip().to_string())
            .unwrap_or_else(|| "-".into());
        self.line(&format!(
            "{peer} \"{} {} {}\" {status} {bytes} {us}us",
            req.method,
            req.target.escape_debug(),
            req.version.as_str()
        ));
    }

    /// A request the codec refused (logged with the access log).
    pub fn protocol_error(&self, peer: Option<SocketAddr>, err: &HttpError) {
        if self.access {
            let peer = peer
                .map(|p| p.ip().to_string())
                .unwrap_or_else(|| "-".into());
            self.line(&format!("{peer} bad request: {err} -> {}", err.status()));
        }
    }

    /// An app misbehaved (bad header, short body, failed stream): always logged.
    pub fn app_error(&self, what: &str) {
        self.line(&format!("forklift: app error: {what}"));
    }
}
