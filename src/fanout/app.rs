//! `builtin:fanout`: the fan-out demo app, natively. Each request calls
//! `BACKEND/?duration=D` for every `D` — all at once (`mode=concurrent`, the default) or
//! one after another (`mode=sequential`) — and answers how long that took.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{client, FetchError, FetchRequest, FetchResponse};
use crate::app::{CallContext, Handler, Reply, Request, Response};

/// The demo backend's address.
pub const DEFAULT_BACKEND: &str = "http://127.0.0.1:7001";
/// The demo's four backend calls: `i/8` seconds for `i` in 1..=4.
pub const DEFAULT_DURATIONS: &[f64] = &[0.125, 0.25, 0.375, 0.5];
/// Most backend calls one request may ask for.
pub const MAX_CALLS: usize = 64;
/// Overall limit of one request's calls unless `?timeout=` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `?timeout=` accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// How the backend calls of one request are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Concurrent,
    Sequential,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Concurrent => "concurrent",
            Mode::Sequential => "sequential",
        }
    }
}

/// The `builtin:fanout` handler. Query parameters: `backend` (default
/// `http://127.0.0.1:7001`), `durations` (comma-separated seconds, default
/// `0.125,0.25,0.375,0.5`), `mode` (`concurrent` or `sequential`), `timeout` (seconds for
/// all the calls of the request, default 30).
///
/// The calls go through the process's [`client()`] and the reply is always
/// [`Reply::Later`], so no model's thread or loop is blocked while they run.
pub struct FanoutApp;

/// A parsed request to the app.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub urls: Vec<String>,
    pub mode: Mode,
    pub timeout: Duration,
}

impl Plan {
    /// Reads the query of `req`; the error is the 400 message.
    pub fn from_request(req: &Request) -> Result<Plan, String> {
        let backend = req
            .query_param("backend")
            .unwrap_or_else(|| DEFAULT_BACKEND.to_owned());
        if !backend.starts_with("http://") {
            return Err(format!(
                "bad backend {backend:?}: expected http://HOST:PORT[/PATH]"
            ));
        }
        let durations = match req.query_param("durations") {
            None => DEFAULT_DURATIONS.to_vec(),
            Some(list) => parse_durations(&list)?,
        };
        let mode = match req.query_param("mode").as_deref() {
            None | Some("concurrent") => Mode::Concurrent,
            Some("sequential") => Mode::Sequential,
            Some(other) => {
                return Err(format!(
                    "bad mode {other:?}: expected concurrent or sequential"
                ))
            }
        };
        let timeout = match req.query_param("timeout") {
            None => DEFAULT_TIMEOUT,
            Some(s) => match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Duration::from_secs_f64(v).min(MAX_TIMEOUT),
                _ => return Err(format!("bad timeout {s:?}: expected seconds, e.g. 2.5")),
            },
        };
        let urls = durations.iter().map(|d| call_url(&backend, *d)).collect();
        Ok(Plan {
            urls,
            mode,
            timeout,
        })
    }
}

fn parse_durations(list: &str) -> Result<Vec<f64>, String> {
    let out = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(format!("bad duration {s:?} in durations: expected seconds")),
        })
        .collect::<Result<Vec<f64>, String>>()?;
    if out.len() > MAX_CALLS {
        return Err(format!("too many durations: at most {MAX_CALLS}"));
    }
    Ok(out)
}

/// `BACKEND` plus `?duration=D` (or `&duration=D` when it has a query), with `/` as the
/// path when it has none.
fn call_url(backend: &str, duration: f64) -> String {
    let rest = &backend["http://".len()..];
    let mut url = backend.to_owned();
    if !rest.contains('/') {
        if let Some(q) = url.find('?') {
            url.insert(q, '/');
        } else {
            url.push('/');
        }
    }
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str("duration=");
    url.push_str(&duration.to_string());
    url
}

impl Handler for FanoutApp {
    fn call(&self, req: Request, _cx: &CallContext) -> Reply {
        let plan = match Plan::from_request(&req) {
            Ok(p) => p,
            Err(msg) => return Reply::Ready(Response::text(400, format!("{msg}\n"))),
        };
        Reply::Later(Box::pin(run(plan)))
    }

    /// Starts this worker's client now rather than on the first request (the client is
    /// per process, so this is the earliest safe moment).
    fn after_fork(&self) -> Result<(), String> {
        let _ = client();
        Ok(())
    }
}

/// Makes the calls of `plan` and builds the answer: 200 with the demo's sentence, or 502
/// naming every call that failed.
pub async fn run(plan: Plan) -> Response {
    let start = Instant::now();
    let deadline = start + plan.timeout;
    let results: Vec<Result<FetchResponse, FetchError>> = match plan.mode {
        Mode::Concurrent => {
            let reqs = plan.urls.iter().map(FetchRequest::get).collect();
            client().fetch_all(reqs, plan.timeout).await
        }
        Mode::Sequential => {
            let mut out = Vec::with_capacity(plan.urls.len());
            for url in &plan.urls {
                let left = deadline.saturating_duration_since(Instant::now());
                out.push(client().fetch(FetchRequest::get(url).timeout(left)).await);
            }
            out
        }
    };
    let elapsed = start.elapsed();
    let mut failures = String::new();
    for (url, r) in plan.urls.iter().zip(&results) {
        match r {
            Ok(resp) if resp.status < 400 => {}
            Ok(resp) => failures.push_str(&format!("{url}: HTTP {}\n", resp.status)),
            Err(e) => failures.push_str(&format!("{url}: {e}\n")),
        }
    }
    if !failures.is_empty() {
        return Response::text(
            502,
            format!(
                "backend calls failed after {:.3} seconds:\n{failures}",
                elapsed.as_secs_f64()
            ),
        );
    }
    Response::text(
        200,
        Bytes::from(format!(
            "This call lasted {:.3} seconds with {} calls.\n",
            elapsed.as_secs_f64(),
            plan.mode.name()
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Version;

    fn req(target: &str) -> Request {
        Request {
            method: Bytes::from_static(b"GET"),
            target: Bytes::copy_from_slice(target.as_bytes()),
            version: Version::Http11,
            headers: Vec::new(),
            body: Bytes::new(),
            rest: None,
            peer: None,
            local: None,
            cgi_vars: Vec::new(),
        }
    }

    #[test]
    fn defaults_are_seed_002s() {
        let p = Plan::from_request(&req("/")).unwrap();
        assert_eq!(p.mode, Mode::Concurrent);
        assert_eq!(
            p.urls,
            [
                "http://127.0.0.1:7001/?duration=0.125",
                "http://127.0.0.1:7001/?duration=0.25",
                "http://127.0.0.1:7001/?duration=0.375",
                "http://127.0.0.1:7001/?duration=0.5",
            ]
        );
    }

    #[test]
    fn parses_backend_durations_mode_timeout() {
        let p = Plan::from_request(&req(
            "/?backend=http%3A%2F%2Flocalhost%3A9%2Fwait&durations=1,0.5&mode=sequential&timeout=2",
        ))
        .unwrap();
        assert_eq!(
            p.urls,
            [
                "http://localhost:9/wait?duration=1",
                "http://localhost:9/wait?duration=0.5"
            ]
        );
        assert_eq!(p.mode, Mode::Sequential);
        assert_eq!(p.timeout, Duration::from_secs(2));
        let p = Plan::from_request(&req("/?backend=http://h:1?x=1&durations=0")).unwrap();
        assert_eq!(p.urls, ["http://h:1/?x=1&duration=0"]);
    }

    #[test]
    fn rejects_bad_input() {
        for q in [
            "/?mode=parallel",
            "/?durations=1,x",
            "/?durations=-1",
            "/?timeout=0",
            "/?backend=https://x",
            "/?backend=ftp://x",
        ] {
            assert!(Plan::from_request(&req(q)).is_err(), "{q}");
        }
        let many = vec!["0"; MAX_CALLS + 1].join(",");
        assert!(Plan::from_request(&req(&format!("/?durations={many}"))).is_err());
    }
}
