//! The offload host: a process forked by a pre-fork master (before it forks workers)
//! that runs the `loop` worker or the spool runner for every process of the server.
//!
//! It is double-forked and in its own session, so the master's `waitpid(-1)` never
//! sees it and a terminal's Ctrl-C does not kill it mid-drain. It is controlled through
//! two pipes: the master writes a stop request (or simply exits: end of file) on the
//! control pipe, and the host answers on the report pipe, first "ready" (or the error
//! that kept it from starting), and at the end its drain report as JSON.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::{fork, ForkResult};

use super::config::OffloadConfig;
use super::error::OffloadError;
use super::task::DrainReport;

/// What a host runs: built in the host process, returns its shutdown function.
pub type HostMain = Box<dyn FnOnce(Duration) -> DrainReport + Send>;

/// How long the master waits for the host to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Started {
    /// The master that forked the host (workers see a different pid).
    master: u32,
    /// The host's pid, as it reported it.
    host: u32,
    ctl: Option<OwnedFd>,
    report: Option<OwnedFd>,
}

/// Where this process stands: a standalone process running its own executors, or a
/// member (master or worker) of a server whose host runs them.
pub struct Role {
    started: Mutex<Option<Started>>,
}

impl Role {
    pub fn new() -> Role {
        Role {
            started: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Started>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when executors run in this process (no host was started).
    pub fn runs_here(&self) -> bool {
        self.lock().is_none()
    }

    /// Forks the host unless already started. `build` runs in the host process and
    /// returns the function that drains and stops it.
    /// `keep` names descriptors the host needs besides its pipes (the loop's listening
    /// socket); every other inherited descriptor (the server's listener, signalfd, ...)
    /// is closed in the host.
    pub fn start_host<F>(
        &self,
        cfg: &OffloadConfig,
        keep: &[RawFd],
        build: F,
    ) -> Result<(), OffloadError>
    where
        F: FnOnce(&OffloadConfig) -> Result<HostMain, OffloadError>,
    {
        let mut g = self.lock();
        if g.is_some() {
            return Ok(());
        }
        let flags = nix::fcntl::OFlag::O_CLOEXEC;
        let (ctl_r, ctl_w) = nix::unistd::pipe2(flags).map_err(std::io::Error::from)?;
        let (rep_r, rep_w) = nix::unistd::pipe2(flags).map_err(std::io::Error::from)?;
        // SAFETY: the caller runs this in a master that has no other threads (documented
        // on `Offload::start_in_master`); the child only forks again and exits.
        match unsafe { fork() }.map_err(std::io::Error::from)? {
            ForkResult::Child => {
                drop(ctl_w);
                drop(rep_r);
                let _ = nix::unistd::setsid();
                // SAFETY: as above; the grandchild becomes the host, this child exits
                // at once without running destructors.
                match unsafe { fork() } {
                    Ok(ForkResult::Child) => {
                        let mut keep = keep.to_vec();
                        keep.extend([ctl_r.as_raw_fd(), rep_w.as_raw_fd()]);
                        close_inherited(&keep);
                        // The master blocks its signals (it reads them from a signalfd);
                        // the host is an ordinary process.
                        let _ = nix::sys::signal::pthread_sigmask(
                            nix::sys::signal::SigmaskHow::SIG_SETMASK,
                            Some(&nix::sys::signal::SigSet::empty()),
                            None,
                        );
                        host_main(cfg, build, ctl_r, rep_w)
                    }
                    // SAFETY: _exit is async-signal-safe and skips the parent's atexit
                    // handlers, which must not run twice.
                    _ => unsafe { libc::_exit(0) },
                }
            }
            ForkResult::Parent { child } => {
                drop(ctl_r);
                drop(rep_w);
                let _ = nix::sys::wait::waitpid(child, None);
                let mut rep = std::fs::File::from(rep_r);
                let line = read_line(&mut rep, READY_TIMEOUT)?;
                let Some(host) = line.strip_prefix("ready ").and_then(|p| p.parse().ok()) else {
                    return Err(OffloadError::Io(std::io::Error::other(format!(
                        "offload host did not start: {}",
                        if line.is_empty() { "no answer" } else { &line }
                    ))));
                };
                *g = Some(Started {
                    master: pid(),
                    host,
                    ctl: Some(ctl_w),
                    report: Some(OwnedFd::from(rep)),
                });
                Ok(())
            }
        }
    }

    /// In a worker: closes the inherited pipe ends, so the host sees end of file when
    /// the master goes.
    pub fn after_fork_in_worker(&self) {
        let mut g = self.lock();
        if let Some(s) = g.as_mut() {
            if s.master != pid() {
                s.ctl = None;
                s.report = None;
            }
        }
    }

    /// The host's pid, in the master that started it.
    pub fn host_pid(&self) -> Option<u32> {
        let g = self.lock();
        let s = g.as_ref()?;
        (s.master == pid()).then_some(s.host)
    }

    /// In the master: whether the host it started has died (its report pipe reached
    /// end of file without a stop request). If so, forgets it, so that `start_host`
    /// starts a new one.
    pub fn reap_dead_host(&self) -> bool {
        let mut g = self.lock();
        let Some(s) = g.as_ref() else { return false };
        if s.master != pid() {
            return false;
        }
        let Some(rep) = s.report.as_ref() else {
            return false;
        };
        let mut fds = [PollFd::new(rep.as_fd(), PollFlags::POLLIN)];
        let gone = matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0);
        if gone {
            eprintln!(
                "forklift: offload host (pid {}) died; starting a new one",
                s.host
            );
            *g = None;
        }
        gone
    }

    /// In the master: asks the host to drain (for at most `timeout`) and waits for its
    /// report. `None` when this process did not start a host.
    pub fn stop_host(&self, timeout: Duration) -> Option<DrainReport> {
        let mut g = self.lock();
        let s = g.as_mut()?;
        if s.master != pid() {
            return None;
        }
        let ctl = s.ctl.take()?;
        let rep = s.report.take()?;
        let mut ctl = std::fs::File::from(ctl);
        let _ = ctl.write_all(&(timeout.as_millis() as u64).to_le_bytes());
        drop(ctl);
        let mut rep = std::fs::File::from(rep);
        let line = read_line(&mut rep, timeout + Duration::from_secs(5)).ok()?;
        serde_json::from_str(&line).ok()
    }
}

/// Closes every descriptor above stderr except `keep`.
fn close_inherited(keep: &[RawFd]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    // Collect first: the directory listing holds a descriptor of its own.
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: this process owns no Rust object that would use these
            // descriptors again: they were inherited from the master, whose objects
            // are never used here (the host ends with _exit).
            unsafe { libc::close(fd) };
        }
    }
}

/// Reads one line (without the newline) from a pipe, waiting at most `timeout`.
fn read_line(f: &mut std::fs::File, timeout: Duration) -> std::io::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "offload host did not answer",
            ));
        }
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        match f.read(&mut byte) {
            Ok(0) => return Ok(String::from_utf8_lossy(&buf).into_owned()),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&buf).into_owned()),
            Ok(_) => buf.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The host process: start, say ready, wait for a stop request or the master's exit,
/// drain, report, exit.
fn host_main<F>(cfg: &OffloadConfig, build: F, ctl: OwnedFd, rep: OwnedFd) -> !
where
    F: FnOnce(&OffloadConfig) -> Result<HostMain, OffloadError>,
{
    let mut rep = std::fs::File::from(rep);
    let stop = match build(cfg) {
        Ok(stop) => {
            let _ = writeln!(rep, "ready {}", pid());
            stop
        }
        Err(e) => {
            let _ = writeln!(rep, "{e}");
            // SAFETY: see `start_host`.
            unsafe { libc::_exit(1) }
        }
    };
    let mut ctl = std::fs::File::from(ctl);
    let mut msg = [0u8; 8];
    let timeout = match ctl.read_exact(&mut msg) {
        Ok(()) => Duration::from_millis(u64::from_le_bytes(msg)),
        // End of file: the master is gone (and the workers with it, or going).
        Err(_) => cfg.drain_timeout,
    };
    let report = stop(timeout);
    if report.dropped > 0 {
        eprintln!("forklift: offload host: {report}");
    }
    let _ = writeln!(
        rep,
        "{}",
        serde_json::to_string(&report).unwrap_or_else(|_| "{}".into())
    );
    // SAFETY: see `start_host`; exiting without destructors is deliberate (the master's
    // state was copied into this process and must not be torn down here).
    unsafe { libc::_exit(0) }
}

/// Current pid (the host's state compares against it to notice a fork).
fn pid() -> u32 {
    std::process::id()
}
