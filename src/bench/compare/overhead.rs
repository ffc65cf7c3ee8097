//! What the fan-out client costs per call, against a local backend: wall time and CPU time
//! (user + system, of this whole process) per call, for the client called one call at a
//! time, in batches, and for a minimal blocking keep-alive socket client as the baseline.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::fanout::{Client, ClientConfig, FetchRequest};

/// One way of making the calls, measured.
#[derive(Debug, Clone)]
pub struct Overhead {
    pub label: String,
    pub calls: u64,
    pub errors: u64,
    pub wall: Duration,
    /// CPU time of this process (all its threads) while the calls ran.
    pub cpu: Duration,
}

impl Overhead {
    pub fn wall_us_per_call(&self) -> f64 {
        self.wall.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }

    pub fn cpu_us_per_call(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }

    pub fn calls_per_second(&self) -> f64 {
        self.calls as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn to_line(&self) -> String {
        format!(
            "{}: {} calls in {:.3} s, {:.1} µs wall and {:.1} µs CPU per call, {:.0} calls/s, {} errors",
            self.label,
            self.calls,
            self.wall.as_secs_f64(),
            self.wall_us_per_call(),
            self.cpu_us_per_call(),
            self.calls_per_second(),
            self.errors
        )
    }
}

/// CPU time (user + system) of this process so far.
pub fn process_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer we own; on failure it writes
    // nothing and the zeroed value stays (all-zero is a valid `rusage`).
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn measure(label: &str, calls: u64, f: impl FnOnce() -> u64) -> Overhead {
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let errors = f();
    Overhead {
        label: label.to_owned(),
        calls,
        errors,
        wall: t0.elapsed(),
        cpu: process_cpu().saturating_sub(cpu0),
    }
}

/// Measures `calls` GETs of `url` (an `http://HOST:PORT/PATH` of a fast local backend)
/// three ways: a raw blocking socket (the floor), the fan-out client one call at a time,
/// and the client in batches of `batch` concurrent calls.
pub fn client_overhead(url: &str, calls: u64, batch: usize) -> io::Result<Vec<Overhead>> {
    let batch = batch.max(1);
    let (host, path) = split_url(url)?;
    let client = Client::new(ClientConfig::default());
    // Warm up: connections, DNS, the runtime thread.
    for r in client.fetch_all_blocking(
        (0..batch).map(|_| FetchRequest::get(url)).collect(),
        Duration::from_secs(30),
    ) {
        r.map_err(io::Error::other)?;
    }
    let raw = measure("raw blocking socket, 1 at a time", calls, || {
        raw_calls(&host, &path, calls)
    });
    let one = measure("fanout client, 1 at a time", calls, || {
        (0..calls)
            .filter(|_| client.fetch_blocking(FetchRequest::get(url)).is_err())
            .count() as u64
    });
    let batches = calls.div_ceil(batch as u64);
    let many = measure(
        &format!("fanout client, batches of {batch}"),
        batches * batch as u64,
        || {
            let mut errors = 0;
            for _ in 0..batches {
                let reqs = (0..batch).map(|_| FetchRequest::get(url)).collect();
                errors += client
                    .fetch_all_blocking(reqs, Duration::from_secs(30))
                    .iter()
                    .filter(|r| r.is_err())
                    .count() as u64;
            }
            errors
        },
    );
    Ok(vec![raw, one, many])
}

/// `http://HOST:PORT/PATH` → (`HOST:PORT`, `/PATH`).
fn split_url(url: &str) -> io::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| io::Error::other(format!("expected an http:// URL, got {url:?}")))?;
    Ok(match rest.find('/') {
        Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
        None => (rest.to_owned(), "/".to_owned()),
    })
}

/// Sequential keep-alive GETs on one connection with the least work possible; returns
/// the number of failed calls.
fn raw_calls(host: &str, path: &str, calls: u64) -> u64 {
    let Ok(mut s) = TcpStream::connect(host) else {
        return calls;
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut buf = vec![0u8; 64 * 1024];
    for done in 0..calls {
        if s.write_all(req.as_bytes()).is_err() || read_one(&mut s, &mut buf).is_err() {
            return calls - done;
        }
    }
    0
}

/// Reads one response with a `Content-Length` body.
fn read_one(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf[..have]).map_err(io::Error::other)? {
                httparse::Status::Complete(head) => Some((
                    head,
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| {
                            std::str::from_utf8(h.value)
                                .ok()?
                                .trim()
                                .parse::<usize>()
                                .ok()
                        })
                        .ok_or_else(|| io::Error::other("no Content-Length"))?,
                )),
                httparse::Status::Partial => None,
            }
        };
        if let Some((head, len)) = parsed {
            let mut left = (head + len).saturating_sub(have);
            let cap = buf.len();
            while left > 0 {
                let n = s.read(&mut buf[..left.min(cap)])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                left -= n;
            }
            return Ok(());
        }
        if have == buf.len() {
            return Err(io::Error::other("response head too large"));
        }
    }
}
