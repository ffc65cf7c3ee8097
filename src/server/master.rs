//! The pre-fork master (uWSGI's `master = 1` with `processes = N`): forks N workers
//! that share the listening socket, respawns a worker that dies (backing off when
//! workers keep dying young), reloads without dropping a request, and on SIGTERM/
//! SIGINT/SIGQUIT asks every worker to finish its in-flight requests, waits for them
//! (killing stragglers after the shutdown timeout), logs `forklift: stopped (...)` and
//! exits 0.
//!
//! Reloading replaces workers without a gap: a new worker is forked (the master keeps
//! the listening socket, so clients that arrive meanwhile wait in its backlog), and the
//! worker it replaces is told to retire (SIGHUP) only once the new one has loaded its
//! app and reported ready on the readiness pipe. A retiring worker stops accepting at
//! once, answers what it has started, and gives idle connections the stop grace (see
//! `conn::STOP_GRACE`). A new worker that dies before it is ready (the new code does
//! not import) leaves the old one serving. SIGHUP and `--touch-reload` replace every
//! worker at once (a preloaded app is imported again in the master first, and a failed
//! import changes nothing); `--touch-chain-reload`, and SIGHUP with `--lazy-apps`,
//! replace one worker at a time, the next once the previous replacement is ready.
//! SIGUSR2 starts a new master from the binary on disk, handing it the listening socket
//! (`LISTEN_FDS`, see `super::inherit`); once the new master's workers are ready it
//! stops this one, whose workers retire as on a reload.
//!
//! A worker that cannot start its app (a lazy load that fails, an ASGI app's failed
//! lifespan startup) exits with [`EXIT_BOOT_FAILED`] and tells the master why through
//! a pipe; outside a reload the master then stops every worker and exits with that
//! status and the app's message, as gunicorn does, instead of respawning workers that
//! would fail the same way.
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

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
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
/// The exit status of a worker that could not start its app, and then of the master.
pub const EXIT_BOOT_FAILED: i32 = 3;
/// The longest boot failure message a worker passes to the master.
const BOOT_MESSAGE_MAX: usize = 4096;
/// The signal that tells a worker it is replaced: stop accepting and finish, leaving
/// the listening socket's backlog to the other workers.
const RETIRE: Signal = Signal::SIGHUP;

/// Set once this master stops for the new master a SIGUSR2 started, which now serves
/// the same sockets (so their files must stay, whatever `--vacuum` says).
static HANDED_OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this master stopped by handing its sockets over to a new master.
pub fn handed_over() -> bool {
    HANDED_OVER.load(std::sync::atomic::Ordering::Relaxed)
}

/// Errors of the master itself (workers' errors are theirs).
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("master: {0}")]
    Sys(#[from] nix::Error),
    #[error("master: {0}")]
    Io(std::io::Error),
}

/// Loads the app: in the master (re-importing a preloaded app on a reload) or in a
/// worker after fork (`--lazy-apps`). The error is one line for the log.
pub type Loader = Box<dyn Fn() -> Result<App, String>>;

/// How a worker process gets its app: forked from the master's copy, or loaded in the
/// worker after fork (`--lazy-apps`).
pub enum AppSource {
    Preloaded(App),
    Lazy(Loader),
}

/// What the master does besides supervising: serve the stats, recycle workers, reopen
/// the log file, reload on touched files, hand over to a new master.
#[derive(Default)]
pub struct MasterOptions {
    /// `--stats` / `--metrics` listeners, already bound.
    pub endpoints: Endpoints,
    pub recycling: Recycling,
    /// `--logto FILE`, reopened on SIGUSR1 (and SIGHUP with `log_reopen`).
    pub logto: Option<PathBuf>,
    pub log_reopen: bool,
    /// Imports a preloaded app again for a reload (new code, same process). Without
    /// it, a reload of a preloaded app forks the new workers from the app already
    /// loaded.
    pub reload_app: Option<Loader>,
    /// `--touch-reload`: reload (as SIGHUP) when one of these files' mtime changes.
    pub touch_reload: Vec<PathBuf>,
    /// `--touch-chain-reload`: replace the workers one at a time when one changes.
    pub touch_chain_reload: Vec<PathBuf>,
    /// The master this one replaces (started by its SIGUSR2): stopped once this one's
    /// workers are all ready.
    pub predecessor: Option<u32>,
    /// The command line a SIGUSR2 re-executes (program first); `None` disables it.
    pub exec_args: Option<Vec<std::ffi::OsString>>,
    /// Binds the `--stats`/`--metrics` addresses the predecessor still holds: called
    /// once it has exited.
    pub endpoints_later: Option<Box<dyn Fn() -> Result<Endpoints, String>>>,
}

/// One worker position: the process in it, and when to start one again.
struct Slot {
    /// The running worker, if any.
    pid: Option<Pid>,
    /// The worker has loaded its app and accepts (it said so on the readiness pipe).
    ready: bool,
    /// The worker being replaced by `pid`: it serves until `pid` is ready, then retires;
    /// if `pid` dies first it is the slot's worker again.
    outgoing: Option<Pid>,
    /// When the current (or last) worker was forked; dying sooner than [`QUICK_DEATH`]
    /// after it counts as a failed start.
    started: Instant,
    /// Failed starts in a row; sets the respawn backoff.
    failures: u32,
    /// When to fork a worker into this slot; `None` while one runs.
    respawn_at: Option<Instant>,
    /// The read end of the running worker's boot pipe: why it could not start its app.
    boot: Option<OwnedFd>,
}

/// A file whose mtime change triggers a reload.
struct Touch {
    path: PathBuf,
    /// The mtime last seen (`None`: the file did not exist).
    seen: Option<SystemTime>,
    chain: bool,
}

impl Touch {
    fn new(path: PathBuf, chain: bool) -> Touch {
        let seen = mtime(&path);
        Touch { path, seen, chain }
    }
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
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
    /// Readiness pipe: each worker writes its pid here once it has loaded its app and
    /// is about to accept. The master reads the read end; workers inherit the write end.
    ready_rx: OwnedFd,
    ready_tx: OwnedFd,
    /// One per worker process (`--processes`).
    slots: Vec<Slot>,
    /// Workers replaced and still finishing their requests: their exit is expected,
    /// and their slots already have new workers.
    retiring: HashSet<Pid>,
    /// A chain reload's slots still to replace, in order; the head is being replaced.
    chain: VecDeque<usize>,
    /// Set by a stop signal: when the graceful stop gives up waiting for the workers.
    stop_deadline: Option<Instant>,
    /// Workers killed with SIGKILL when the stop deadline passed (0 until then).
    killed: usize,
    /// The master's exit status once stopped: 0, or [`EXIT_BOOT_FAILED`].
    exit_code: i32,
    /// The workers' scoreboard and totals, with `--stats`/`--metrics`/`--reload-on-rss`.
    roster: Option<Arc<Roster>>,
    recycling: Recycling,
    logto: Option<PathBuf>,
    log_reopen: bool,
    reload_app: Option<Loader>,
    touch: Vec<Touch>,
    /// The master this one replaces (see `MasterOptions`), and whether it was told to
    /// stop (once every worker here was ready).
    predecessor: Option<Pid>,
    predecessor_stopped: bool,
    /// See `MasterOptions::endpoints_later`; the error of the last attempt, if any.
    endpoints_later: Option<Box<dyn Fn() -> Result<Endpoints, String>>>,
    endpoints_error: Option<String>,
    exec_args: Option<Vec<std::ffi::OsString>>,
    /// The new master a SIGUSR2 started, while it starts up; its SIGTERM stops this
    /// one as a hand-over.
    successor: Option<Pid>,
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

/// [`run`] with stats, recycling limits, reload triggers and a log file to reopen.
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
            Signal::SIGUSR2,
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
        let (ready_rx, ready_tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let own_fds = options.endpoints.raw_fds();
        let roster = if options.endpoints.is_empty()
            && options.endpoints_later.is_none()
            && options.recycling.reload_on_rss.is_none()
        {
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
                ready: false,
                outgoing: None,
                started: now,
                failures: 0,
                respawn_at: Some(now),
                boot: None,
            })
            .collect();
        let touch = (options
            .touch_reload
            .into_iter()
            .map(|p| Touch::new(p, false)))
        .chain(
            options
                .touch_chain_reload
                .into_iter()
                .map(|p| Touch::new(p, true)),
        )
        .collect();
        Ok(Master {
            listeners,
            source,
            config,
            log,
            signals,
            worker_mask,
            ready_rx,
            ready_tx,
            slots,
            retiring: HashSet::new(),
            chain: VecDeque::new(),
            stop_deadline: None,
            killed: 0,
            exit_code: 0,
            roster,
            recycling: options.recycling,
            logto: options.logto,
            log_reopen: options.log_reopen,
            reload_app: options.reload_app,
            touch,
            predecessor: options.predecessor.map(|p| Pid::from_raw(p as i32)),
            predecessor_stopped: false,
            endpoints_later: options.endpoints_later,
            endpoints_error: None,
            exec_args: options.exec_args,
            successor: None,
            own_fds,
        })
    }

    /// The loop: start the workers that are due, see whether a stop is complete (or
    /// overdue), sleep until a signal, a worker's readiness or the next due time, act on
    /// them, reap.
    fn run(mut self) -> Result<i32, MasterError> {
        loop {
            let now = Instant::now();
            if self.stop_deadline.is_none() {
                self.check_touched();
                self.recycle_due(now);
                self.spawn_due(now);
                self.maintain_offload();
                self.bind_late_endpoints();
            }
            if let Some(code) = self.check_stop(now) {
                self.log.line(&self.stopped_line(code));
                return Ok(code);
            }
            self.wait(self.next_wakeup(now))?;
            self.handle_signals();
            self.read_ready();
            self.reap();
        }
    }

    /// Spawn: forks a worker into each empty slot whose respawn time has come. A failed
    /// fork counts as a failed start.
    fn spawn_due(&mut self, now: Instant) {
        // Workers do not keep each other's boot pipes.
        let mut close = self.own_fds.clone();
        close.extend(
            self.slots
                .iter()
                .filter_map(|s| Some(s.boot.as_ref()?.as_raw_fd())),
        );
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.pid.is_some() || slot.respawn_at.is_none_or(|t| t > now) {
                continue;
            }
            slot.respawn_at = None;
            slot.started = now;
            slot.ready = false;
            let card = self.roster.as_ref().and_then(|r| r.spawning(i + 1));
            let worker = Worker {
                index: i,
                listeners: &self.listeners,
                source: &self.source,
                config: &self.config,
                log: &self.log,
                old_mask: &self.worker_mask,
                card,
                close: &close,
                ready: (self.ready_rx.as_raw_fd(), self.ready_tx.as_raw_fd()),
                logto: self.logto.as_deref(),
                max_requests_delta: self.recycling.max_requests_delta,
            };
            match spawn(&worker) {
                Ok((pid, boot)) => {
                    slot.boot = Some(boot);
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

    /// The worker processes still running: in slots, being replaced, or retiring.
    fn alive(&self) -> impl Iterator<Item = Pid> + '_ {
        self.slots
            .iter()
            .flat_map(|s| s.pid.into_iter().chain(s.outgoing))
            .chain(self.retiring.iter().copied())
    }

    /// Shutdown deadline: once stopping, the exit code when every worker has exited;
    /// past the deadline, kills the workers still running (once).
    fn check_stop(&mut self, now: Instant) -> Option<i32> {
        let deadline = self.stop_deadline?;
        if self.alive().next().is_none() {
            return Some(self.exit_code);
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
    /// due or the stop deadline passes (at most a second, so a dead offload host and a
    /// touched file are noticed).
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

    /// Sleeps until a signal or a readiness message arrives, or `timeout` passes.
    fn wait(&self, timeout: Duration) -> Result<(), MasterError> {
        let mut fds = [
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.ready_rx.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = PollTimeout::try_from(timeout.max(Duration::from_millis(1)))
            .unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Signal handling: SIGHUP reloads; SIGUSR2 starts a new master; SIGUSR1 reopens the
    /// log; SIGTERM/SIGINT/SIGQUIT starts a graceful stop (a SIGTERM from the new master
    /// a SIGUSR2 started is a hand-over: the workers retire); SIGCHLD only wakes the
    /// loop, for [`Master::reap`]. Once stopping, further signals are ignored.
    fn handle_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let sig = Signal::try_from(info.ssi_signo as i32).ok();
            match sig {
                Some(Signal::SIGCHLD) => {}
                Some(Signal::SIGUSR1) => self.reopen_log(true),
                Some(_) if self.stop_deadline.is_some() => {}
                Some(Signal::SIGHUP) => {
                    if self.log_reopen {
                        self.reopen_log(false);
                    }
                    let chain = matches!(self.source, AppSource::Lazy(_));
                    self.reload("SIGHUP", chain);
                }
                Some(Signal::SIGUSR2) => self.exec_successor(),
                Some(s) => {
                    let from = Pid::from_raw(info.ssi_pid as i32);
                    let handover = s == Signal::SIGTERM && self.successor == Some(from);
                    self.stop(s, handover);
                }
                None => {}
            }
        }
    }

    /// Starts the graceful stop: every worker finishes its requests (and with
    /// `handover`, leaves the backlog to the new master's workers).
    fn stop(&mut self, sig: Signal, handover: bool) {
        HANDED_OVER.store(handover, std::sync::atomic::Ordering::Relaxed);
        if handover {
            self.log.line(&format!(
                "forklift: {sig} from the new master: handing over and stopping gracefully"
            ));
        } else {
            self.log
                .line(&format!("forklift: {sig}: stopping gracefully"));
        }
        self.stop_workers(handover);
    }

    /// Tells every worker to finish its requests and exit (with `handover`, to retire,
    /// leaving the backlog to the new master's workers), and sets the stop deadline.
    fn stop_workers(&mut self, handover: bool) {
        self.stop_deadline =
            Some(Instant::now() + self.config.timeouts.shutdown + Duration::from_secs(1));
        let signal = if handover { RETIRE } else { Signal::SIGTERM };
        for pid in self.alive().collect::<Vec<_>>() {
            let _ = kill(pid, signal);
        }
    }

    /// `--touch-reload` / `--touch-chain-reload`: reloads when a file's mtime changed.
    fn check_touched(&mut self) {
        let mut due = None;
        for t in &mut self.touch {
            let now = mtime(&t.path);
            if now != t.seen {
                t.seen = now;
                due = Some((t.path.display().to_string(), t.chain));
            }
        }
        if let Some((path, chain)) = due {
            self.reload(&format!("{path} touched"), chain);
        }
    }

    /// A reload (SIGHUP, a touched file): a preloaded app is imported again (on
    /// failure nothing changes); then every worker is replaced, all at once or, with
    /// `chain`, one at a time.
    fn reload(&mut self, why: &str, chain: bool) {
        let how = if chain {
            "one worker at a time"
        } else {
            "every worker"
        };
        self.log
            .line(&format!("forklift: {why}: reloading ({how})"));
        if let (AppSource::Preloaded(app), Some(load)) = (&mut self.source, &self.reload_app) {
            match load() {
                Ok(new) => *app = new,
                Err(e) => {
                    self.log.line(&format!(
                        "forklift: reload failed: {e}; the workers keep serving the code they have"
                    ));
                    app.before_fork();
                    return;
                }
            }
            app.before_fork();
        }
        if chain {
            self.chain = (0..self.slots.len()).collect();
            if let Some(&first) = self.chain.front() {
                self.replace(first, Recycle::Reload);
            }
        } else {
            self.chain.clear();
            for i in 0..self.slots.len() {
                self.replace(i, Recycle::Reload);
            }
        }
    }

    /// Starts a replacement for the worker in slot `i`; the worker serves until the new
    /// one is ready. A replacement already under way (not ready yet) is given up for a
    /// fresh one.
    fn replace(&mut self, i: usize, why: Recycle) {
        let now = Instant::now();
        let slot = &mut self.slots[i];
        match (slot.pid, slot.ready) {
            (Some(pid), true) => {
                slot.outgoing = Some(pid);
                if let Some(r) = &self.roster {
                    r.retiring(pid.as_raw() as u32, why);
                }
            }
            (Some(pid), false) => {
                // Still loading (what it loads may be stale): not serving anything yet.
                let _ = kill(pid, Signal::SIGTERM);
                self.retiring.insert(pid);
            }
            (None, _) => {}
        }
        slot.pid = None;
        slot.ready = false;
        slot.failures = 0;
        slot.respawn_at = Some(now);
    }

    /// Readiness: a worker has loaded its app and accepts. The worker it replaces (if
    /// any) retires now; a chain reload moves on to the next slot; a new master stops
    /// its predecessor once every worker is ready.
    fn read_ready(&mut self) {
        let mut buf = [0u8; 4 * 64];
        loop {
            let n = match nix::unistd::read(self.ready_rx.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for msg in buf[..n].chunks_exact(4) {
                let pid = Pid::from_raw(i32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]));
                self.on_ready(pid);
            }
        }
    }

    fn on_ready(&mut self, pid: Pid) {
        let Some(i) = self.slots.iter().position(|s| s.pid == Some(pid)) else {
            return;
        };
        let slot = &mut self.slots[i];
        slot.ready = true;
        match slot.outgoing.take() {
            Some(old) => {
                self.log.line(&format!(
                    "forklift: worker {} (pid {pid}) ready; retiring pid {old}",
                    i + 1
                ));
                let _ = kill(old, RETIRE);
                self.retiring.insert(old);
            }
            None => self
                .log
                .line(&format!("forklift: worker {} (pid {pid}) ready", i + 1)),
        }
        if self.chain.front() == Some(&i) {
            self.chain.pop_front();
            if let Some(&next) = self.chain.front() {
                self.replace(next, Recycle::Reload);
            }
        }
        if self.slots.iter().all(|s| s.ready) && !self.predecessor_stopped {
            // Only while it is still this master's parent: once it has exited, its pid
            // may name another process.
            if let Some(old) = self.predecessor.filter(|&p| nix::unistd::getppid() == p) {
                self.log.line(&format!(
                    "forklift: every worker ready; stopping the previous master (pid {old})"
                ));
                let _ = kill(old, Signal::SIGTERM);
            }
            self.predecessor_stopped = true;
        }
    }

    /// After a hand-over: binds the `--stats`/`--metrics` addresses once the previous
    /// master, which held them, has exited (this master is its child until then), and
    /// starts serving them. Retried every turn of the loop until it works.
    fn bind_late_endpoints(&mut self) {
        let Some(bind) = &self.endpoints_later else {
            return;
        };
        if self
            .predecessor
            .is_some_and(|p| nix::unistd::getppid() == p)
        {
            return;
        }
        let served = bind().and_then(|endpoints| {
            let lines = endpoints.describe();
            let fds = endpoints.raw_fds();
            let roster = self.roster.clone().ok_or("no scoreboard")?;
            endpoints
                .serve(roster, &self.listeners, self.config.model)
                .map_err(|e| e.to_string())?;
            Ok((lines, fds))
        });
        match served {
            Ok((lines, fds)) => {
                lines.iter().for_each(|l| self.log.line(l));
                self.own_fds.extend(fds);
                self.endpoints_later = None;
            }
            Err(e) => {
                if self.endpoints_error.as_ref() != Some(&e) {
                    self.log.line(&format!("forklift: {e} (retrying)"));
                }
                self.endpoints_error = Some(e);
            }
        }
    }

    /// SIGUSR2: starts a new master from the binary on disk with the same arguments,
    /// handing it the listening socket as fd 3 (`LISTEN_FDS=1`, `LISTEN_PID`). It
    /// loads the app and starts its workers; once they are ready it sends this master
    /// SIGTERM, and this one hands over (its workers retire) and exits. If the new
    /// master fails, this one keeps serving.
    fn exec_successor(&mut self) {
        let Some(args) = self.exec_args.clone() else {
            self.log
                .line("forklift: SIGUSR2: no command line to run again; ignored");
            return;
        };
        if let Some(pid) = self.successor {
            self.log.line(&format!(
                "forklift: SIGUSR2: a new master (pid {pid}) is already starting; ignored"
            ));
            return;
        }
        let fds: Vec<_> = self.listeners.iter().map(|l| l.as_fd()).collect();
        match super::inherit::exec_with_listeners(
            &args,
            &fds,
            &self.worker_mask,
            std::process::id(),
        ) {
            Ok(pid) => {
                self.log.line(&format!(
                    "forklift: SIGUSR2: started a new master (pid {pid}) with the listening sockets"
                ));
                self.successor = Some(pid);
            }
            Err(e) => self.log.line(&format!(
                "forklift: SIGUSR2: cannot start a new master: {e}"
            )),
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
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            let Some(pid) = slot.pid.filter(|_| slot.ready && slot.outgoing.is_none()) else {
                continue;
            };
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
            self.replace(i, why);
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

    /// Reap: collects every exited child. A retiring worker is forgotten; a replaced
    /// worker that exits early leaves its replacement to carry on; a replacement that
    /// dies before it is ready gives the slot back to the worker it was to replace (the
    /// reload failed there); a worker that died while serving is respawned, at once
    /// after a long life, else after a backoff that grows with each quick death.
    /// Nothing is respawned once stopping.
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
            if self.successor == Some(pid) {
                self.successor = None;
                self.log.line(&format!(
                    "forklift: the new master (pid {pid}) {status_text}; this master keeps serving"
                ));
                continue;
            }
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
            if let Some(slot) = self.slots.iter_mut().find(|s| s.outgoing == Some(pid)) {
                slot.outgoing = None;
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
            let boot = slot.boot.take();
            if self.stop_deadline.is_some() {
                continue;
            }
            if let Some(old) = slot.outgoing.take().filter(|_| !slot.ready) {
                slot.pid = Some(old);
                slot.ready = true;
                self.chain.clear();
                let why = boot
                    .map(read_boot_message)
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                self.log.line(&format!(
                    "forklift: reload failed: the new worker {} (pid {pid}) {status_text} before it was ready{why}; pid {old} keeps serving",
                    i + 1
                ));
                continue;
            }
            slot.ready = false;
            if status_text == format!("exited with code {EXIT_BOOT_FAILED}") {
                let why = boot.map(read_boot_message).unwrap_or_default();
                let why = if why.is_empty() {
                    "no reason given".to_owned()
                } else {
                    why
                };
                self.log.line(&format!(
                    "forklift: worker {} (pid {pid}) could not start the app: {why}; stopping \
                     (a new worker would fail the same way)",
                    i + 1
                ));
                self.exit_code = EXIT_BOOT_FAILED;
                self.stop_workers(false);
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
    /// The readiness pipe (read end, closed in the worker; write end, where the worker
    /// writes its pid once it is ready).
    ready: (RawFd, RawFd),
    logto: Option<&'a std::path::Path>,
    max_requests_delta: u64,
}

/// Reads what a worker that could not start wrote to its boot pipe (it has exited, so
/// the message is all there; the read does not wait in case a child of it still holds
/// the pipe open).
fn read_boot_message(fd: OwnedFd) -> String {
    let _ = nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut buf = vec![0u8; BOOT_MESSAGE_MAX];
    let mut len = 0;
    while len < buf.len() {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    String::from_utf8_lossy(&buf[..len]).trim().to_owned()
}

/// Forks a worker; returns its pid and the read end of its boot pipe.
fn spawn(worker: &Worker<'_>) -> Result<(Pid, OwnedFd), nix::Error> {
    let (boot_rx, boot_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the master's own loop runs no runtime (it waits for signals on a
    // signalfd). Other threads it may have (a preloaded app's Python threads, offload
    // executors a module used at import, the stats thread) are accounted for: Python's
    // locks are taken in `before_fork` and re-initialised in the child, glibc's
    // allocator has its own fork handlers, and the state a worker uses from then on is
    // per process (`rt::fork::ForkLocal`) or its own scoreboard card (atomics only),
    // never a lock a master thread may hold.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(boot_tx);
            Ok((child, boot_rx))
        }
        ForkResult::Child => {
            drop(boot_rx);
            let code = match worker_main(worker) {
                Ok(code) => code,
                Err(why) => {
                    let _ = nix::unistd::write(&boot_tx, why.as_bytes());
                    EXIT_BOOT_FAILED
                }
            };
            std::process::exit(code);
        }
    }
}

/// A worker's life: its exit status, or why it could not start the app.
fn worker_main(w: &Worker<'_>) -> Result<i32, String> {
    let index = w.index;
    // Die with the master rather than serve on as an orphan.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    for &fd in w.close.iter().chain([&w.ready.0]) {
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
        AppSource::Preloaded(app) => app.clone(),
        AppSource::Lazy(load) => load()?,
    };
    app.after_fork()?;
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
        return Ok(1);
    }
    let listeners = match w.listeners.iter().map(Listener::try_clone).collect() {
        Ok(l) => l,
        Err(e) => {
            log.line(&format!("forklift: worker {}: {e}", index + 1));
            return Ok(1);
        }
    };
    // Ready: the app is loaded and the loop starts accepting now (clients that arrive
    // meanwhile wait in the listener's backlog). One write of 4 bytes is atomic.
    let pid = std::process::id() as i32;
    // SAFETY: `ready.1` is the master's pipe write end, inherited through fork and not
    // owned by anything else in this process; it is used once, then closed.
    let ready = unsafe { std::os::fd::BorrowedFd::borrow_raw(w.ready.1) };
    let _ = nix::unistd::write(ready, &pid.to_ne_bytes());
    let _ = nix::unistd::close(w.ready.1);
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
    Ok(code)
}
