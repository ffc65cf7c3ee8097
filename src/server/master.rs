//! The pre-fork master (seed 003's prefork, uWSGI's `master = 1` + `processes = N`):
//! forks N workers that share the listening socket, respawns a worker that dies (backing
//! off when workers keep dying young), replaces all workers on SIGHUP, and on
//! SIGTERM/SIGINT asks every worker to finish its in-flight requests, waits for them
//! (killing stragglers after the shutdown timeout) and exits 0.
//!
//! The master stays single-threaded, so `fork` is safe: it waits for signals on a
//! signalfd and runs no runtime of its own.

use std::collections::HashSet;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::{run_worker, Log, ServerConfig};
use crate::app::App;
use crate::rt::Shutdown;

/// A worker younger than this when it dies counts as a failed start (backoff grows).
const QUICK_DEATH: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Errors of the master itself (workers' errors are theirs).
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("master: {0}")]
    Sys(#[from] nix::Error),
}

/// How a worker process gets its app: forked from the master's copy, or loaded in the
/// worker after fork (`--lazy-apps`).
pub enum AppSource {
    Preloaded(App),
    Lazy(Box<dyn Fn() -> Result<App, String>>),
}

struct Slot {
    pid: Option<Pid>,
    started: Instant,
    failures: u32,
    respawn_at: Option<Instant>,
}

/// Runs the master until a stop signal; returns the process exit code.
pub fn run(
    listener: TcpListener,
    source: AppSource,
    config: ServerConfig,
    log: Log,
) -> Result<i32, MasterError> {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;

    if let AppSource::Preloaded(app) = &source {
        app.before_fork();
    }
    if let Some(offload) = crate::offload::global() {
        // Before the first fork: `loop` starts its host process here.
        if let Err(e) = offload.start_in_master() {
            log.line(&format!("forklift: offload: {e}"));
        }
    }
    let n = config.processes.max(1);
    let mut slots: Vec<Slot> = (0..n)
        .map(|_| Slot {
            pid: None,
            started: Instant::now(),
            failures: 0,
            respawn_at: Some(Instant::now()),
        })
        .collect();
    // Workers being replaced (SIGHUP) or stopped: their exit is expected.
    let mut retiring: HashSet<Pid> = HashSet::new();
    let mut stopping: Option<Instant> = None;
    let mut killed = false;

    loop {
        let now = Instant::now();
        if stopping.is_none() {
            for (i, slot) in slots.iter_mut().enumerate() {
                if slot.pid.is_none() && slot.respawn_at.is_some_and(|t| t <= now) {
                    slot.respawn_at = None;
                    slot.started = now;
                    match spawn(i, &listener, &source, &config, &log, &old) {
                        Ok(pid) => {
                            slot.pid = Some(pid);
                            log.line(&format!("forklift: worker {} started (pid {pid})", i + 1));
                        }
                        Err(e) => {
                            log.line(&format!("forklift: cannot fork worker {}: {e}", i + 1));
                            slot.failures += 1;
                            slot.respawn_at = Some(now + backoff(slot.failures));
                        }
                    }
                }
            }
        }
        if stopping.is_none() {
            if let Some(offload) = crate::offload::global() {
                // `loop`: restart the shared offload host if it died.
                if let Err(e) = offload.maintain_in_master() {
                    log.line(&format!("forklift: offload: {e}"));
                }
            }
        }
        let alive = slots.iter().filter(|s| s.pid.is_some()).count() + retiring.len();
        if let Some(deadline) = stopping {
            if alive == 0 {
                return Ok(0);
            }
            if now >= deadline && !killed {
                log.line("forklift: shutdown timeout passed; killing remaining workers");
                for pid in slots
                    .iter()
                    .filter_map(|s| s.pid)
                    .chain(retiring.iter().copied())
                {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                killed = true;
            }
        }
        let next = slots
            .iter()
            .filter_map(|s| s.respawn_at)
            .chain(stopping)
            .min()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let timeout =
            PollTimeout::try_from(next.max(Duration::from_millis(1))).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            let sig = Signal::try_from(info.ssi_signo as i32).ok();
            match sig {
                Some(Signal::SIGCHLD) => {}
                Some(Signal::SIGHUP) if stopping.is_none() => {
                    log.line("forklift: SIGHUP: replacing workers gracefully");
                    for slot in slots.iter_mut() {
                        if let Some(pid) = slot.pid.take() {
                            let _ = kill(pid, Signal::SIGTERM);
                            retiring.insert(pid);
                        }
                        slot.failures = 0;
                        slot.respawn_at = Some(Instant::now());
                    }
                }
                Some(s) if stopping.is_none() => {
                    log.line(&format!("forklift: {s}: stopping gracefully"));
                    stopping =
                        Some(Instant::now() + config.timeouts.shutdown + Duration::from_secs(1));
                    for pid in slots
                        .iter()
                        .filter_map(|s| s.pid)
                        .chain(retiring.iter().copied())
                    {
                        let _ = kill(pid, Signal::SIGTERM);
                    }
                }
                _ => {}
            }
        }
        // Reap every exited child.
        loop {
            let (pid, status_text) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, format!("exited with code {code}")),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, format!("was killed by {sig}")),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            {
                {
                    if retiring.remove(&pid) {
                        continue;
                    }
                    if let Some((i, slot)) = slots
                        .iter_mut()
                        .enumerate()
                        .find(|(_, s)| s.pid == Some(pid))
                    {
                        slot.pid = None;
                        if stopping.is_some() {
                            continue;
                        }
                        if slot.started.elapsed() < QUICK_DEATH {
                            slot.failures += 1;
                        } else {
                            slot.failures = 0;
                        }
                        let delay = if slot.failures == 0 {
                            Duration::ZERO
                        } else {
                            backoff(slot.failures)
                        };
                        log.line(&format!(
                            "forklift: worker {} (pid {pid}) {status_text}; respawning in {} ms",
                            i + 1,
                            delay.as_millis()
                        ));
                        slot.respawn_at = Some(Instant::now() + delay);
                    }
                }
            }
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.min(10).saturating_sub(1));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

fn spawn(
    index: usize,
    listener: &TcpListener,
    source: &AppSource,
    config: &ServerConfig,
    log: &Log,
    old_mask: &SigSet,
) -> Result<Pid, nix::Error> {
    // SAFETY: the master's own loop runs no runtime (it waits for signals on a
    // signalfd). Other threads it may have (a preloaded app's Python threads, offload
    // executors a module used at import) are accounted for: Python's locks are taken
    // in `before_fork` and re-initialised in the child, glibc's allocator has its own
    // fork handlers, and the state a worker uses from then on is per process
    // (`rt::fork::ForkLocal`), never a lock a master thread may hold.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let code = worker_main(index, listener, source, config, log, old_mask);
            std::process::exit(code);
        }
    }
}

fn worker_main(
    index: usize,
    listener: &TcpListener,
    source: &AppSource,
    config: &ServerConfig,
    log: &Log,
    old_mask: &SigSet,
) -> i32 {
    // Die with the master rather than serve on as an orphan.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None);
    let app = match source {
        AppSource::Preloaded(app) => {
            app.after_fork();
            app.clone()
        }
        AppSource::Lazy(load) => match load() {
            Ok(app) => {
                app.after_fork();
                app
            }
            Err(e) => {
                log.line(&format!("forklift: worker {}: {e}", index + 1));
                return 1;
            }
        },
    };
    if let Some(offload) = crate::offload::global() {
        // Drop what came from the master; start this worker's executors.
        offload.after_fork_in_worker();
    }
    let shutdown = Shutdown::new();
    if let Err(e) = super::signals::watch(&shutdown, true) {
        log.line(&format!(
            "forklift: worker {}: cannot watch signals: {e}",
            index + 1
        ));
        return 1;
    }
    let listener = match listener.try_clone() {
        Ok(l) => l,
        Err(e) => {
            log.line(&format!("forklift: worker {}: {e}", index + 1));
            return 1;
        }
    };
    let code = match run_worker(listener, app, config.clone(), log.clone(), shutdown) {
        Ok(()) => 0,
        Err(e) => {
            log.line(&format!("forklift: worker {}: {e}", index + 1));
            1
        }
    };
    if let Some(offload) = crate::offload::global() {
        let report = offload.shutdown(offload.config().drain_timeout);
        if report.dropped > 0 {
            log.line(&format!("forklift: worker {}: {report}", index + 1));
        }
    }
    code
}
