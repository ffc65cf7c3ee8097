//! `builtin:slowlog`: a request logger whose writes are offloaded. Each request hands a
//! task to the offload engine (appending the request's first 1024 bytes to a log file,
//! then `--task-seconds` of waiting, then a line to `LOG.done` saying it finished) and
//! is answered `Doobie Doo` at once, or after the work with `--offload inline`.
//! `?delay=S` defers the task by S seconds (like asyncio's `call_later`).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{CallContext, Handler, Reply, Request, Response};
use crate::offload::{
    Offload, OffloadConfig, Registry, Strategy, SubmitError, Task, TaskError, TaskPayload,
    MAX_DELAY,
};
use crate::rt::fork::ForkLocal;

/// The registered name of slowlog's task.
pub const SLOWLOG_TASK: &str = "slowlog";

/// How much of each request is logged (one 1024-byte read of the connection).
const LOGGED_BYTES: usize = 1024;

static BODY: &[u8] = b"Doobie Doo";

/// The slowlog app. Build it with [`SlowLog::new`], which also registers its task.
pub struct SlowLog {
    offload: Offload,
    /// Requests seen by this process.
    requests: AtomicU64,
}

impl SlowLog {
    /// Registers the `slowlog` task in `offload`'s registry (logging to
    /// `cfg.slowlog_file`, then waiting `cfg.task_seconds`) and returns the app.
    pub fn new(offload: Offload) -> SlowLog {
        let cfg = offload.config().clone();
        register_task(offload.registry(), &cfg);
        SlowLog {
            offload,
            requests: AtomicU64::new(0),
        }
    }

    pub fn offload(&self) -> &Offload {
        &self.offload
    }

    /// Requests answered by this process.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Registers the `slowlog` task in `registry`.
pub fn register_task(registry: &Registry, cfg: &OffloadConfig) {
    let log = Arc::new(AppendFile::new(cfg.slowlog_file.clone()));
    let done = Arc::new(AppendFile::new(done_file(&cfg.slowlog_file)));
    let wait = cfg.task_seconds;
    registry.register_async(SLOWLOG_TASK, move |p: TaskPayload| {
        let (log, done) = (log.clone(), done.clone());
        Box::pin(async move {
            append_record(&log, &p)?;
            if !wait.is_zero() {
                crate::rt::sleep(wait).await;
            }
            done.append(format!("{}\n", p.id).as_bytes())?;
            Ok::<(), TaskError>(())
        })
    });
}

/// Appends one line per task: a count, the pid, the task id, and the logged bytes with
/// control characters escaped (so a log line is a task, and tools can count them).
fn append_record(log: &AppendFile, p: &TaskPayload) -> std::io::Result<()> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    let mut line = format!(
        "num={n} pid={} id={} {}\n",
        std::process::id(),
        p.id,
        p.data.escape_ascii()
    );
    line.truncate(line.len().min(8 * LOGGED_BYTES));
    log.append(line.as_bytes())
}

/// How often an open log file is checked against its path (moved away or deleted by
/// log rotation: the next line goes to a new file at the path).
const REOPEN_CHECK: Duration = Duration::from_secs(1);

/// A log file kept open for appending, one `write` per line on an `O_APPEND`
/// descriptor, so lines from several processes do not interleave. Each process opens
/// its own on first use.
struct AppendFile {
    path: PathBuf,
    open: ForkLocal<Mutex<Option<OpenLog>>>,
}

struct OpenLog {
    file: File,
    /// Device and inode of `file`, to notice that the path names another file now.
    id: (u64, u64),
    checked: Instant,
}

impl AppendFile {
    fn new(path: PathBuf) -> AppendFile {
        AppendFile {
            path,
            open: ForkLocal::new(),
        }
    }

    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut g = self.open.local().lock().unwrap_or_else(|p| p.into_inner());
        let stale = match g.as_ref() {
            None => true,
            Some(o) if o.checked.elapsed() >= REOPEN_CHECK => {
                let now = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
                now.ok() != Some(o.id)
            }
            Some(_) => false,
        };
        if stale {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let m = file.metadata()?;
            *g = Some(OpenLog {
                file,
                id: (m.dev(), m.ino()),
                checked: Instant::now(),
            });
        }
        let o = g.as_mut().expect("opened above");
        if o.checked.elapsed() >= REOPEN_CHECK {
            o.checked = Instant::now();
        }
        (&o.file).write_all(line)
    }
}

/// Where slowlog's task records that it finished (after its wait): `LOG.done`, one
/// line (the task id) per finished task. `count_records` on it counts finished tasks.
pub fn done_file(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".done");
    PathBuf::from(name)
}

/// Counts the records in a slowlog file (0 if it does not exist).
pub fn count_records(path: &Path) -> u64 {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .unwrap_or(0)
}

/// The request as it came on the wire (request line, headers, body), cut at 1024 bytes.
fn raw_prefix(req: &Request) -> Bytes {
    let mut v = Vec::with_capacity(LOGGED_BYTES);
    v.extend_from_slice(&req.method);
    v.push(b' ');
    v.extend_from_slice(&req.target);
    v.push(b' ');
    v.extend_from_slice(req.version.as_str().as_bytes());
    v.extend_from_slice(b"\r\n");
    for h in &req.headers {
        if v.len() >= LOGGED_BYTES {
            break;
        }
        v.extend_from_slice(&h.name);
        v.extend_from_slice(b": ");
        v.extend_from_slice(&h.value);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"\r\n");
    if v.len() < LOGGED_BYTES {
        let take = (LOGGED_BYTES - v.len()).min(req.body.len());
        v.extend_from_slice(&req.body[..take]);
    }
    v.truncate(LOGGED_BYTES);
    v.into()
}

fn answer(r: Result<u64, SubmitError>) -> Response {
    match r {
        Ok(_) => Response::text(200, Bytes::from_static(BODY)),
        Err(e) if e.is_temporary() => Response::text(503, format!("{e}\n"))
            .with_header("Retry-After", Bytes::from_static(b"1")),
        Err(e) => Response::text(500, format!("offload failed: {e}\n")),
    }
}

impl Handler for SlowLog {
    fn call(&self, req: Request, cx: &CallContext) -> Reply {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut task = Task::new(SLOWLOG_TASK, raw_prefix(&req));
        // `?delay=S` defers the task (like asyncio's `call_later`).
        if let Some(d) = req.query_param("delay") {
            match d.parse::<f64>() {
                Ok(s) if s.is_finite() && (0.0..=MAX_DELAY.as_secs_f64()).contains(&s) => {
                    task = task.after(Duration::from_secs_f64(s));
                }
                _ => {
                    return Reply::Ready(Response::text(
                        400,
                        format!("bad delay {d:?}: expected seconds up to a day, e.g. ?delay=5\n"),
                    ))
                }
            }
        }
        let waits = matches!(
            self.offload.config().strategy,
            Strategy::Inline | Strategy::Spool | Strategy::Redis
        );
        if waits && !cx.may_block {
            let fut = self.offload.submit_async(task);
            return Reply::Later(Box::pin(async move { answer(fut.await) }));
        }
        Reply::Ready(answer(self.offload.submit(task)))
    }

    fn before_fork(&self) {
        if let Err(e) = self.offload.start_in_master() {
            eprintln!("forklift: slowlog: offload engine did not start: {e}");
        }
    }

    fn after_fork(&self) -> Result<(), String> {
        self.offload.after_fork_in_worker();
        Ok(())
    }

    fn shutdown(&self) {
        let report = self.offload.shutdown(self.offload.config().drain_timeout);
        if report.dropped > 0 {
            eprintln!("forklift: slowlog: {report}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_log_is_reopened_at_its_path() {
        let dir = std::env::temp_dir().join(format!("forklift-slowlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let f = AppendFile::new(path.clone());
        f.append(b"one\n").unwrap();
        std::fs::rename(&path, dir.join("log.1")).unwrap();
        // Within the check interval the open file keeps the line...
        f.append(b"two\n").unwrap();
        // ...and after it, the next line goes to a new file at the path.
        let past = Instant::now().checked_sub(REOPEN_CHECK * 2).unwrap();
        f.open.local().lock().unwrap().as_mut().unwrap().checked = past;
        f.append(b"three\n").unwrap();
        assert_eq!(std::fs::read(dir.join("log.1")).unwrap(), b"one\ntwo\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"three\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
