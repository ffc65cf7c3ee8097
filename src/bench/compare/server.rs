//! The `forklift serve` child processes the `compare` commands measure: started with a
//! free port, found by their banner, stopped with their whole process group.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bench::BenchError;

/// stderr lines kept from a server to explain why it failed.
const KEEP_LINES: usize = 20;

/// How `forklift serve` is told about an app: `builtin:NAME` as is, a `.py` file (or any
/// existing file) with `--wsgi-file`, anything else as a module with `--module`.
pub fn app_args(app: &str) -> Vec<String> {
    if app.starts_with("builtin:") {
        vec![app.to_string()]
    } else if app.ends_with(".py") || Path::new(app).is_file() {
        vec!["--wsgi-file".into(), app.to_string()]
    } else {
        vec!["--module".into(), app.to_string()]
    }
}

/// Finds `listening on http://HOST:PORT` in a line of the server's stderr.
pub fn parse_banner(line: &str) -> Option<SocketAddr> {
    let i = line.find("listening on http://")?;
    let rest = &line[i + "listening on http://".len()..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '/' || c == ',' || c == ')')
        .unwrap_or(rest.len());
    let hostport = &rest[..end];
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Some(a);
    }
    hostport.to_socket_addrs().ok()?.next()
}

/// A `forklift serve` child process; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl ServerProcess {
    /// Starts `BIN serve APP --http 127.0.0.1:0 ARGS --disable-logging EXTRA` and waits for
    /// its banner (APP as [`app_args`] puts it); `name` names the server in errors. The
    /// child gets its own process group so its workers can be stopped with it.
    pub fn spawn(
        bin: &Path,
        app: &str,
        name: &str,
        serve_args: &[String],
        extra: &[String],
        startup: Duration,
    ) -> Result<ServerProcess, BenchError> {
        let err = |why: String| BenchError::Server {
            model: name.to_string(),
            why,
        };
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args(app_args(app))
            .args(["--http", "127.0.0.1:0"])
            .args(serve_args)
            .arg("--disable-logging")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| err(format!("cannot start {}: {e}", bin.display())))?;
        let stderr = child.stderr.take().expect("stderr was piped");
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let kept = lines.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = parse_banner(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                if let Ok(mut k) = kept.lock() {
                    if k.len() == KEEP_LINES {
                        k.pop_front();
                    }
                    k.push_back(line);
                }
            }
        });
        let mut server = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
        };
        match rx.recv_timeout(startup) {
            Ok(addr) => {
                server.addr = addr;
                Ok(server)
            }
            Err(e) => {
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("no 'listening on http://' banner within {startup:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => "exited before listening".to_string(),
                };
                server.stop();
                Err(err(format!("{why}{}", server.last_lines())))
            }
        }
    }

    fn last_lines(&self) -> String {
        let k = self.lines.lock().map(|k| k.clone()).unwrap_or_default();
        if k.is_empty() {
            String::new()
        } else {
            format!("; its stderr ended with:\n  {}", Vec::from(k).join("\n  "))
        }
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL to its whole process group.
    pub fn stop(&mut self) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                // Workers left behind by a master that died are stopped too.
                let _ = killpg(pid, Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banners() {
        assert_eq!(
            parse_banner("forklift 0.1: listening on http://127.0.0.1:4321 (model epoll)"),
            Some("127.0.0.1:4321".parse().unwrap())
        );
        assert_eq!(
            parse_banner("listening on http://[::1]:80/"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_banner("listening on unix:/tmp/x"), None);
        assert_eq!(parse_banner("hello"), None);
    }

    #[test]
    fn apps() {
        assert_eq!(app_args("builtin:hello"), ["builtin:hello"]);
        assert_eq!(app_args("myapp.py"), ["--wsgi-file", "myapp.py"]);
        assert_eq!(app_args("pkg.wsgi:app"), ["--module", "pkg.wsgi:app"]);
    }
}
