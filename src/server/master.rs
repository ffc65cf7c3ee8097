//! The pre-fork master (uWSGI's `master = 1` with `processes = N`): forks N workers
//! that share the listening socket, respawns a worker that dies (backing off when
//! workers keep dying young), replaces all workers on SIGHUP, and on SIGTERM/SIGINT/
//! SIGQUIT asks every worker to finish its in-flight requests, waits for them (killing
//! stragglers after the shutdown timeout), logs `forklift: stopped (...)` and exits 0.
//!
//! The master's own loop runs on one thread with no runtime: it blocks its signals and
//! reads them from a signalfd, forks, and reaps. The process is not necessarily
//! single-threaded when it forks, though: a preloaded app may have started Python
//! threads at import, and through the `forklift` module an offload executor, the
//! `call_later` timer or the outbound HTTP client's thread. `fork` copies only the
//! calling thread, so a lock another thread held stays locked in the child. What keeps
//! a worker sound is that it never takes such a lock: Python's GIL and fork locks are
//! taken in `before_fork` and re-initialised in the child, glibc's allocator has its
//! own fork handlers, and the state a worker uses from then on is per process
//! (`rt::fork::ForkLocal`), built fresh on first use in the child.

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
/// The longest wait before respawning a worker that keeps dying young.
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

/// One worker position: the process in it, and when to start one again.
struct Slot {
    /// The running worker, if any.
    pid: Option<Pid>,
    /// When the current (or last) worker was forked; dying sooner than [`QUICK_DEATH`]
    /// after it counts as a failed start.
    started: Instant,
    /// Failed starts in a row; sets the respawn backoff.
    failures: u32,
    /// When to fork a worker into this slot; `None` while one runs.
    respawn_at: Option<Instant>,
}

/// The master's state, changed by the steps of its loop ([`Master::run`]).
struct Master {
    /// The socket every worker accepts on (inherited through `fork`).
    listener: TcpListener,
    /// What each worker serves: the master's preloaded app, or a loader run after fork.
    source: AppSource,
    /// The worker count and shutdown timeout, and the settings workers run with.
    config: ServerConfig,
    /// Where the master's lines go: the log the start-up line went to.
    log: Log,
    /// The stop, reload and child signals: blocked, and read here instead of handled.
    signals: SignalFd,
    /// The signal mask from before the master blocked its signals; workers restore it.
    worker_mask: SigSet,
    /// One per worker process (`--processes`).
    slots: Vec<Slot>,
    /// Workers replaced on SIGHUP and still finishing their requests: their exit is
    /// expected, and their slots already have new workers.
    retiring: HashSet<Pid>,
    /// Set by a stop signal: when the graceful stop gives up waiting for the workers.
    stop_deadline: Option<Instant>,
    /// Workers killed with SIGKILL when the stop deadline passed (0 until then).
    killed: usize,
}

/// Runs the master until a stop signal; returns the process exit code.
pub fn run(
    listener: TcpListener,
    source: AppSource,
    config: ServerConfig,
    log: Log,
) -> Result<i32, MasterError> {
    Master::new(listener, source, config, log)?.run()
}

impl Master {
    /// Blocks the master's signals (from now on read from a signalfd), prepares a
    /// preloaded app for `fork`, starts the shared offload host, and makes every worker
    /// due at once.
    fn new(
        listener: TcpListener,
        source: AppSource,
        config: ServerConfig,
        log: Log,
    ) -> Result<Master, MasterError> {
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
        let mut worker_mask = SigSet::empty();
        nix::sys::signal::pthread_sigmask(
            SigmaskHow::SIG_BLOCK,
            Some(&mask),
            Some(&mut worker_mask),
        )?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;

        if let AppSource::Preloaded(app) = &source {
            app.before_fork();
        }
        if let Some(offload) = crate::offload::global() {
            // Before the first fork: `loop` starts its host process here.
            if let Err(e) = offload.start_in_master() {
                log.line(&format!("forklift: offload: {e}"));
            }
        }
        let now = Instant::now();
        let slots = (0..config.processes.max(1))
            .map(|_| Slot {
                pid: None,
                started: now,
                failures: 0,
                respawn_at: Some(now),
            })
            .collect();
        Ok(Master {
            listener,
            source,
            config,
            log,
            signals,
            worker_mask,
            slots,
            retiring: HashSet::new(),
            stop_deadline: None,
            killed: 0,
        })
    }

    /// The loop: start the workers that are due, see whether a stop is complete (or
    /// overdue), sleep until a signal or the next due time, act on the signals, reap.
    fn run(mut self) -> Result<i32, MasterError> {
        loop {
            let now = Instant::now();
            if self.stop_deadline.is_none() {
                self.spawn_due(now);
                self.maintain_offload();
            }
            if let Some(code) = self.check_stop(now) {
                self.log.line(&self.stopped_line(code));
                return Ok(code);
            }
            self.wait(self.next_wakeup(now))?;
            self.handle_signals();
            self.reap();
        }
    }

    /// Spawn: forks a worker into each empty slot whose respawn time has come. A failed
    /// fork counts as a failed start.
    fn spawn_due(&mut self, now: Instant) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.pid.is_some() || slot.respawn_at.is_none_or(|t| t > now) {
                continue;
            }
            slot.respawn_at = None;
            slot.started = now;
            match spawn(
                i,
                &self.listener,
                &self.source,
                &self.config,
                &self.log,
                &self.worker_mask,
            ) {
                Ok(pid) => {
                    slot.pid = Some(pid);
                    self.log
                        .line(&format!("forklift: worker {} started (pid {pid})", i + 1));
                }
                Err(e) => {
                    self.log
                        .line(&format!("forklift: cannot fork worker {}: {e}", i + 1));
                    slot.failures += 1;
                    slot.respawn_at = Some(now + backoff(slot.failures));
                }
            }
        }
    }

    /// `--offload loop`: restarts the shared offload host if it died.
    fn maintain_offload(&self) {
        if let Some(offload) = crate::offload::global() {
            if let Err(e) = offload.maintain_in_master() {
                self.log.line(&format!("forklift: offload: {e}"));
            }
        }
    }

    /// The worker processes still running, in slots or retiring.
    fn alive(&self) -> impl Iterator<Item = Pid> + '_ {
        self.slots
            .iter()
            .filter_map(|s| s.pid)
            .chain(self.retiring.iter().copied())
    }

    /// Shutdown deadline: once stopping, the exit code when every worker has exited;
    /// past the deadline, kills the workers still running (once).
    fn check_stop(&mut self, now: Instant) -> Option<i32> {
        let deadline = self.stop_deadline?;
        if self.alive().next().is_none() {
            return Some(0);
        }
        if now >= deadline && self.killed == 0 {
            self.log
                .line("forklift: shutdown timeout passed; killing remaining workers");
            let pids: Vec<Pid> = self.alive().collect();
            for pid in &pids {
                let _ = kill(*pid, Signal::SIGKILL);
            }
            self.killed = pids.len();
        }
        None
    }

    /// The line that closes the log of a stopped master, as `forklift: stopped` closes a
    /// single process's.
    fn stopped_line(&self, code: i32) -> String {
        let n = self.slots.len();
        let workers = if n == 1 { "worker" } else { "workers" };
        match self.killed {
            0 => format!("forklift: stopped ({n} {workers}, exit {code})"),
            k => format!(
                "forklift: stopped ({n} {workers}, {k} killed after the shutdown timeout, exit {code})"
            ),
        }
    }

    /// Respawn backoff / shutdown deadline: how long to sleep before the next slot is
    /// due or the stop deadline passes (at most a second, so a dead offload host is
    /// noticed).
    fn next_wakeup(&self, now: Instant) -> Duration {
        self.slots
            .iter()
            .filter_map(|s| s.respawn_at)
            .chain(self.stop_deadline)
            .min()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1))
    }

    /// Sleeps until a signal arrives or `timeout` passes.
    fn wait(&self, timeout: Duration) -> Result<(), MasterError> {
        let mut fds = [PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout.max(Duration::from_millis(1)))
            .unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Signal handling: SIGHUP replaces every worker (the old ones finish their
    /// requests); SIGTERM/SIGINT/SIGQUIT starts a graceful stop; SIGCHLD only wakes the
    /// loop, for [`Master::reap`]. Once stopping, further signals are ignored.
    fn handle_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let sig = Signal::try_from(info.ssi_signo as i32).ok();
            match sig {
                Some(Signal::SIGCHLD) => {}
                Some(Signal::SIGHUP) if self.stop_deadline.is_none() => {
                    self.log
                        .line("forklift: SIGHUP: replacing workers gracefully");
                    for slot in self.slots.iter_mut() {
                        if let Some(pid) = slot.pid.take() {
                            let _ = kill(pid, Signal::SIGTERM);
                            self.retiring.insert(pid);
                        }
                        slot.failures = 0;
                        slot.respawn_at = Some(Instant::now());
                    }
                }
                Some(s) if self.stop_deadline.is_none() => {
                    self.log
                        .line(&format!("forklift: {s}: stopping gracefully"));
                    self.stop_deadline = Some(
                        Instant::now() + self.config.timeouts.shutdown + Duration::from_secs(1),
                    );
                    for pid in self.alive().collect::<Vec<_>>() {
                        let _ = kill(pid, Signal::SIGTERM);
                    }
                }
                _ => {}
            }
        }
    }

    /// Reap: collects every exited child. A retiring worker is forgotten; a worker that
    /// died while serving is respawned, at once after a long life, else after a backoff
    /// that grows with each quick death. Nothing is respawned once stopping.
    fn reap(&mut self) {
        loop {
            let (pid, status_text) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, format!("exited with code {code}")),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, format!("was killed by {sig}")),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            if self.retiring.remove(&pid) {
                continue;
            }
            let Some((i, slot)) = self
                .slots
                .iter_mut()
                .enumerate()
                .find(|(_, s)| s.pid == Some(pid))
            else {
                continue;
            };
            slot.pid = None;
            if self.stop_deadline.is_some() {
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
            self.log.line(&format!(
                "forklift: worker {} (pid {pid}) {status_text}; respawning in {} ms",
                i + 1,
                delay.as_millis()
            ));
            slot.respawn_at = Some(Instant::now() + delay);
        }
    }
}

/// The delay before restarting a worker after `failures` quick deaths in a row:
/// 100 ms, doubling, at most [`MAX_BACKOFF`].
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
