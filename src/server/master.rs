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
//!
//! With `--stats`/`--metrics` the master also runs the stats thread (started after its
//! signals are blocked, so they still reach only the signalfd) over a scoreboard the
//! workers write to (`crate::ops`); a forked worker never touches that thread's state.
//! The master recycles workers gracefully past `--max-worker-lifetime` or
//! `--reload-on-rss`, and reopens `--logto` on SIGUSR1 (passing it on to the workers).

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::{run_worker_with, Listener, Log, ServerConfig};
use crate::app::App;
use crate::ops::{Endpoints, Recycle, Recycling, Roster, Scorecard};
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
    #[error("master: {0}")]
    Io(std::io::Error),
}

/// How a worker process gets its app: forked from the master's copy, or loaded in the
/// worker after fork (`--lazy-apps`).
pub enum AppSource {
    Preloaded(App),
    Lazy(Box<dyn Fn() -> Result<App, String>>),
}

/// What the master does besides supervising: serve the stats, recycle workers, reopen
/// the log file.
#[derive(Default)]
pub struct MasterOptions {
    /// `--stats` / `--metrics` listeners, already bound.
    pub endpoints: Endpoints,
    pub recycling: Recycling,
    /// `--logto FILE`, reopened on SIGUSR1 (and SIGHUP with `log_reopen`).
    pub logto: Option<PathBuf>,
    pub log_reopen: bool,
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
    /// The sockets every worker accepts on (inherited through `fork`).
    listeners: Vec<Listener>,
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
    /// The workers' scoreboard and totals, with `--stats`/`--metrics`/`--reload-on-rss`.
    roster: Option<Arc<Roster>>,
    recycling: Recycling,
    logto: Option<PathBuf>,
    log_reopen: bool,
    /// Descriptors of the master's own (stats) listeners, closed in each worker.
    own_fds: Vec<i32>,
}

/// Runs the master until a stop signal; returns the process exit code.
pub fn run(
    listeners: Vec<Listener>,
    source: AppSource,
    config: ServerConfig,
    log: Log,
) -> Result<i32, MasterError> {
    run_with(listeners, source, config, log, MasterOptions::default())
}

/// [`run`] with stats, recycling limits and a log file to reopen.
pub fn run_with(
    listeners: Vec<Listener>,
    source: AppSource,
    config: ServerConfig,
    log: Log,
    options: MasterOptions,
) -> Result<i32, MasterError> {
    Master::new(listeners, source, config, log, options)?.run()
}

impl Master {
    /// Blocks the master's signals (from now on read from a signalfd), prepares a
    /// preloaded app for `fork`, starts the shared offload host, and makes every worker
    /// due at once.
    fn new(
        listeners: Vec<Listener>,
        source: AppSource,
        config: ServerConfig,
        log: Log,
        options: MasterOptions,
    ) -> Result<Master, MasterError> {
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGHUP,
            Signal::SIGCHLD,
            Signal::SIGUSR1,
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
        let own_fds = options.endpoints.raw_fds();
        let roster = if options.endpoints.is_empty() && options.recycling.reload_on_rss.is_none() {
            None
        } else {
            let roster = Roster::new(config.processes, crate::ops::cores_of(&config))
                .map_err(MasterError::Io)?;
            let roster = Arc::new(roster);
            // After the signals are blocked: the thread inherits the mask.
            options
                .endpoints
                .serve(roster.clone(), &listeners, config.model)
                .map_err(MasterError::Io)?;
            Some(roster)
        };

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
            listeners,
            source,
            config,
            log,
            signals,
            worker_mask,
            slots,
            retiring: HashSet::new(),
            stop_deadline: None,
            killed: 0,
            roster,
            recycling: options.recycling,
            logto: options.logto,
            log_reopen: options.log_reopen,
            own_fds,
        })
    }

    /// The loop: start the workers that are due, see whether a stop is complete (or
    /// overdue), sleep until a signal or the next due time, act on the signals, reap.
    fn run(mut self) -> Result<i32, MasterError> {
        loop {
            let now = Instant::now();
            if self.stop_deadline.is_none() {
                self.recycle_due(now);
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
            let card = self.roster.as_ref().and_then(|r| r.spawning(i + 1));
            let worker = Worker {
                index: i,
                listeners: &self.listeners,
                source: &self.source,
                config: &self.config,
                log: &self.log,
                old_mask: &self.worker_mask,
                card,
                close: &self.own_fds,
                logto: self.logto.as_deref(),
                max_requests_delta: self.recycling.max_requests_delta,
            };
            match spawn(&worker) {
                Ok(pid) => {
                    if let Some(r) = &self.roster {
                        r.started(i + 1, card, pid.as_raw() as u32);
                    }
                    slot.pid = Some(pid);
                    self.log
                        .line(&format!("forklift: worker {} started (pid {pid})", i + 1));
                }
                Err(e) => {
                    if let Some(c) = card {
                        c.clear();
                    }
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
        let lifetime_ends = self.slots.iter().filter_map(|s| {
            let life = self.recycling.max_worker_lifetime?;
            s.pid.map(|_| s.started + life)
        });
        self.slots
            .iter()
            .filter_map(|s| s.respawn_at)
            .chain(lifetime_ends)
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
                Some(Signal::SIGUSR1) => self.reopen_log(true),
                Some(Signal::SIGHUP) if self.stop_deadline.is_none() => {
                    if self.log_reopen {
                        self.reopen_log(false);
                    }
                    self.log
                        .line("forklift: SIGHUP: replacing workers gracefully");
                    for slot in self.slots.iter_mut() {
                        if let Some(pid) = slot.pid.take() {
                            let _ = kill(pid, Signal::SIGTERM);
                            self.retiring.insert(pid);
                            if let Some(r) = &self.roster {
                                r.retiring(pid.as_raw() as u32, Recycle::Reload);
                            }
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

    /// Recycling: replaces, gracefully, each worker past `--max-worker-lifetime` or
    /// over `--reload-on-rss` (once it has served a request: a worker that starts above
    /// the limit would otherwise be replaced forever).
    fn recycle_due(&mut self, now: Instant) {
        let r = self.recycling;
        if r.max_worker_lifetime.is_none() && r.reload_on_rss.is_none() {
            return;
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(pid) = slot.pid else { continue };
            let raw = pid.as_raw() as u32;
            let why = if r
                .max_worker_lifetime
                .is_some_and(|life| now.duration_since(slot.started) >= life)
            {
                Some((Recycle::Lifetime, "--max-worker-lifetime".to_string()))
            } else {
                r.reload_on_rss.and_then(|limit| {
                    let served = self
                        .roster
                        .as_ref()
                        .is_some_and(|ro| ro.requests_of(raw) > 0);
                    let (rss, _) = crate::ops::memory_of(raw)?;
                    (served && rss > limit).then(|| {
                        (
                            Recycle::Rss,
                            format!("--reload-on-rss ({} MB resident)", rss / (1024 * 1024)),
                        )
                    })
                })
            };
            let Some((why, text)) = why else { continue };
            self.log.line(&format!(
                "forklift: worker {} (pid {pid}) recycled: {text}",
                i + 1
            ));
            let _ = kill(pid, Signal::SIGTERM);
            self.retiring.insert(pid);
            if let Some(ro) = &self.roster {
                ro.retiring(raw, why);
            }
            slot.pid = None;
            slot.failures = 0;
            slot.respawn_at = Some(now);
        }
    }

    /// Reopens `--logto` (after a rotation moved it) and, for SIGUSR1, asks every
    /// worker to do the same.
    fn reopen_log(&self, workers: bool) {
        let Some(path) = &self.logto else { return };
        if let Err(e) = super::log::redirect_output(path) {
            self.log
                .line(&format!("forklift: cannot reopen {}: {e}", path.display()));
            return;
        }
        if workers {
            for pid in self.alive() {
                let _ = kill(pid, Signal::SIGUSR1);
            }
        }
    }

    /// Reap: collects every exited child. A retiring worker is forgotten; a worker that
    /// died while serving is respawned, at once after a long life, else after a backoff
    /// that grows with each quick death. Nothing is respawned once stopping.
    fn reap(&mut self) {
        loop {
            let (pid, status_text, clean) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    (pid, format!("exited with code {code}"), code == 0)
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    (pid, format!("was killed by {sig}"), false)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            let retired = self.retiring.remove(&pid);
            if let Some(r) = &self.roster {
                // A worker that left by itself, cleanly, retired after --max-requests.
                let recycled = !retired
                    && clean
                    && self.stop_deadline.is_none()
                    && self.config.max_requests.is_some();
                r.exited(pid.as_raw() as u32, recycled);
            }
            if retired {
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
            // A worker retiring after --max-requests is not a failed start, however
            // soon it got there.
            let retired_by_count = clean && self.config.max_requests.is_some();
            if slot.started.elapsed() < QUICK_DEATH && !retired_by_count {
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

/// What a forked worker needs from the master.
struct Worker<'a> {
    index: usize,
    listeners: &'a [Listener],
    source: &'a AppSource,
    config: &'a ServerConfig,
    log: &'a Log,
    old_mask: &'a SigSet,
    /// Its card on the stats scoreboard.
    card: Option<&'static Scorecard>,
    /// The master's own descriptors, closed in the worker.
    close: &'a [i32],
    logto: Option<&'a std::path::Path>,
    max_requests_delta: u64,
}

fn spawn(worker: &Worker<'_>) -> Result<Pid, nix::Error> {
    // SAFETY: the master's own loop runs no runtime (it waits for signals on a
    // signalfd). Other threads it may have (a preloaded app's Python threads, offload
    // executors a module used at import, the stats thread) are accounted for: Python's
    // locks are taken in `before_fork` and re-initialised in the child, glibc's
    // allocator has its own fork handlers, and the state a worker uses from then on is
    // per process (`rt::fork::ForkLocal`) or its own scoreboard card (atomics only),
    // never a lock a master thread may hold.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let code = worker_main(worker);
            std::process::exit(code);
        }
    }
}

fn worker_main(w: &Worker<'_>) -> i32 {
    let index = w.index;
    // Die with the master rather than serve on as an orphan.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    for &fd in w.close {
        let _ = nix::unistd::close(fd);
    }
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(w.old_mask), None);
    if let Some(path) = w.logto {
        // The master passes SIGUSR1 on to reopen the log file.
        let _ = super::log::watch_reopen(path.to_path_buf(), false);
    }
    let log = &w.log.clone().for_worker(index + 1);
    let mut config = w.config.clone();
    // --max-requests-delta: workers retire at staggered counts.
    config.max_requests = config
        .max_requests
        .map(|m| m + index as u64 * w.max_requests_delta);
    let app = match w.source {
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
    let listeners = match w.listeners.iter().map(Listener::try_clone).collect() {
        Ok(l) => l,
        Err(e) => {
            log.line(&format!("forklift: worker {}: {e}", index + 1));
            return 1;
        }
    };
    let code = match run_worker_with(listeners, app, config, log.clone(), shutdown, w.card) {
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
