//! Listening sockets handed to this process instead of bound by it: by systemd socket
//! activation (a `.socket` unit) or by the master this one replaces (SIGUSR2). Both use
//! systemd's protocol: `LISTEN_FDS=N` sockets at descriptors 3 to 3+N-1, meant for the
//! process whose pid is `LISTEN_PID`. A hand-over from a forklift master also sets
//! `FORKLIFT_PREDECESSOR` to the old master's pid, which the new one stops once its
//! workers are ready.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{fork, ForkResult, Pid};

use super::listen::{Address, Listener, Protocol};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;
/// More than this many passed sockets is taken as a malformed `LISTEN_FDS`.
const MAX_FDS: usize = 64;
const PREDECESSOR: &str = "FORKLIFT_PREDECESSOR";

/// Why the passed sockets could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    #[error("LISTEN_FDS={0:?} is not a number of sockets (from 1 to {MAX_FDS})")]
    BadCount(String),
    #[error("LISTEN_FDS names descriptor {0}, which is not open: {1}")]
    NotOpen(RawFd, nix::Error),
}

/// What this process was handed at start.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The passed sockets, in order (descriptor 3 first), each close-on-exec now.
    pub fds: Vec<OwnedFd>,
    /// The master to stop once this one serves (a SIGUSR2 hand-over), when it is this
    /// process's parent.
    pub predecessor: Option<u32>,
}

/// Takes the sockets passed with `LISTEN_FDS`/`LISTEN_PID` (when `LISTEN_PID` is this
/// process; otherwise they were meant for another process and are left alone), marks
/// them close-on-exec, and removes the variables so that children (the app's
/// subprocesses, a later hand-over) do not take them for theirs. Call it once, early,
/// before any other descriptor may be opened at 3 and up.
pub fn take() -> Result<Inherited, InheritError> {
    let count = std::env::var("LISTEN_FDS").ok();
    let pid = std::env::var("LISTEN_PID").ok();
    let predecessor = std::env::var(PREDECESSOR).ok();
    for name in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", PREDECESSOR] {
        std::env::remove_var(name);
    }
    let me = std::process::id();
    let for_me = pid.and_then(|p| p.trim().parse::<u32>().ok()) == Some(me);
    let Some(count) = count.filter(|_| for_me) else {
        return Ok(Inherited::default());
    };
    let n = count
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_FDS).contains(n))
        .ok_or_else(|| InheritError::BadCount(count.clone()))?;
    let mut fds = Vec::with_capacity(n);
    for fd in FIRST_FD..FIRST_FD + n as RawFd {
        // SAFETY: `fd` is only borrowed for fcntl; F_SETFD fails with EBADF (reported)
        // when it is not open.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        fcntl(borrowed.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|e| InheritError::NotOpen(fd, e))?;
        // SAFETY: the descriptor is open (fcntl succeeded) and, by the LISTEN_FDS
        // protocol, handed to this process to own; nothing else in it refers to it.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let parent = nix::unistd::getppid().as_raw() as u32;
    let predecessor = predecessor
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|&p| p == parent);
    Ok(Inherited { fds, predecessor })
}

impl Inherited {
    /// The passed listening sockets that serve the configured `wanted` sockets, one
    /// entry per wanted socket: first each passed socket bound exactly where a wanted
    /// one is; then, for a wanted socket still without one, the next passed socket in
    /// order (a socket unit decides the addresses; the configured ones are then only
    /// defaults), flagged `false`. The sockets taken are removed from `fds`.
    pub fn assign(&mut self, wanted: &[(Address, Protocol)]) -> Vec<Option<(Listener, bool)>> {
        let bound: Vec<Option<Address>> = self.fds.iter().map(listener_address).collect();
        let mut taken = vec![false; bound.len()];
        let mut pick: Vec<Option<(usize, bool)>> = vec![None; wanted.len()];
        for (w, (want, _)) in wanted.iter().enumerate() {
            let exact = (0..bound.len())
                .find(|&i| !taken[i] && bound[i].as_ref().is_some_and(|b| serves(b, want)));
            if let Some(i) = exact {
                taken[i] = true;
                pick[w] = Some((i, true));
            }
        }
        for p in pick.iter_mut().filter(|p| p.is_none()) {
            if let Some(i) = (0..bound.len()).find(|&i| !taken[i] && bound[i].is_some()) {
                taken[i] = true;
                *p = Some((i, false));
            }
        }
        let mut fds: Vec<Option<OwnedFd>> = std::mem::take(&mut self.fds)
            .into_iter()
            .map(Some)
            .collect();
        let out = pick
            .iter()
            .zip(wanted)
            .map(|(p, (_, protocol))| {
                let (i, exact) = (*p)?;
                let fd = fds[i].take()?;
                Listener::from_fd(fd, *protocol).ok().map(|l| (l, exact))
            })
            .collect();
        self.fds = fds.into_iter().flatten().collect();
        out
    }
}

/// Whether a listener bound at `bound` serves the configured `want`: the same unix path
/// or abstract name, or for TCP `same_addr`.
fn serves(bound: &Address, want: &Address) -> bool {
    match (bound, want) {
        (Address::Tcp(b), Address::Tcp(w)) => same_addr(*b, *w),
        (Address::Unix(b), Address::Unix(w)) => {
            b == w
                || matches!(
                    (std::fs::canonicalize(b), std::fs::canonicalize(w)),
                    (Ok(x), Ok(y)) if x == y
                )
        }
        (Address::Abstract(b), Address::Abstract(w)) => b == w,
        _ => false,
    }
}

/// Whether a listener bound to `bound` serves the configured `want` (a port 0 in `want`
/// matches any port; an unspecified address matches the same unspecified address).
fn same_addr(bound: SocketAddr, want: SocketAddr) -> bool {
    let ip_ok =
        bound.ip() == want.ip() || (bound.ip().is_unspecified() && want.ip().is_unspecified());
    ip_ok && (want.port() == 0 || bound.port() == want.port())
}

/// Where `fd` listens, when it is a listening stream socket (TCP or unix).
fn listener_address(fd: &OwnedFd) -> Option<Address> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockaddrStorage};
    let sock = socket2::SockRef::from(fd);
    if sock.r#type().ok()? != socket2::Type::STREAM {
        return None;
    }
    if !getsockopt(fd, sockopt::AcceptConn).ok()? {
        return None;
    }
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).ok()?;
    if let Some(unix) = addr.as_unix_addr() {
        return match (unix.path(), unix.as_abstract()) {
            (Some(p), _) => Some(Address::Unix(p.to_path_buf())),
            (_, Some(name)) => Some(Address::Abstract(name.to_vec())),
            _ => None,
        };
    }
    sock.local_addr().ok()?.as_socket().map(Address::Tcp)
}

/// Forks and executes `args` (program first) with `listeners` at descriptors 3, 4, …
/// and `LISTEN_FDS` (their number), `LISTEN_PID` (the child's pid),
/// `FORKLIFT_PREDECESSOR` (`predecessor`) set, and the signal mask `mask` restored.
/// Returns the child's pid.
pub fn exec_with_listeners(
    args: &[OsString],
    listeners: &[BorrowedFd<'_>],
    mask: &SigSet,
    predecessor: u32,
) -> io::Result<Pid> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| io::Error::other("empty command line"))?;
    if listeners.is_empty() || listeners.len() > MAX_FDS {
        return Err(io::Error::other("no listening socket to hand over"));
    }
    let n = listeners.len();
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest)
        .env(PREDECESSOR, predecessor.to_string())
        .env("LISTEN_FDS", n.to_string());
    let mut sources = [0 as RawFd; MAX_FDS];
    for (slot, l) in sources.iter_mut().zip(listeners) {
        *slot = l.as_raw_fd();
    }
    // SAFETY: the master runs no runtime; the child only moves descriptors, sets its
    // signal mask and environment, and executes (or exits). The environment is the
    // child's own copy: its other threads did not survive the fork.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(mask), None);
            // First out of the way of the target range (a source may sit where another
            // goes), then into place; dup2 leaves the copies without close-on-exec.
            let above = FIRST_FD + n as RawFd;
            let mut ok = true;
            for src in sources.iter_mut().take(n) {
                match fcntl(*src, FcntlArg::F_DUPFD_CLOEXEC(above)) {
                    Ok(high) => *src = high,
                    Err(_) => ok = false,
                }
            }
            for (i, &high) in sources.iter().take(n).enumerate() {
                let target = FIRST_FD + i as RawFd;
                ok = ok
                    && nix::unistd::dup2(high, target).is_ok()
                    && fcntl(target, FcntlArg::F_SETFD(FdFlag::empty())).is_ok();
            }
            if ok {
                cmd.env("LISTEN_PID", std::process::id().to_string());
                let e = cmd.exec();
                eprintln!(
                    "forklift: cannot execute {}: {e}",
                    program.to_string_lossy()
                );
            }
            std::process::exit(127);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn addresses_match_as_configured() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(same_addr(a("127.0.0.1:8080"), a("127.0.0.1:8080")));
        assert!(same_addr(a("127.0.0.1:8080"), a("127.0.0.1:0")));
        assert!(same_addr(a("0.0.0.0:80"), a("0.0.0.0:80")));
        assert!(!same_addr(a("127.0.0.1:8080"), a("127.0.0.1:8081")));
        assert!(!same_addr(a("127.0.0.2:8080"), a("127.0.0.1:8080")));
    }

    #[test]
    fn a_listener_is_recognised() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let fd = OwnedFd::from(l);
        assert_eq!(listener_address(&fd), Some(Address::Tcp(addr)));
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut inh = Inherited {
            fds: vec![OwnedFd::from(other), fd],
            predecessor: None,
        };
        // The exact match first, then the other passed socket for a wanted one without.
        let wanted = [
            (Address::Tcp(addr), Protocol::Http),
            (Address::Unix("/nowhere.sock".into()), Protocol::Uwsgi),
        ];
        let got = inh.assign(&wanted);
        let (l, exact) = got[0].as_ref().unwrap();
        assert!(exact);
        assert_eq!(l.tcp_addr(), Some(addr));
        let (l, exact) = got[1].as_ref().unwrap();
        assert!(!exact);
        assert_eq!(l.protocol(), Protocol::Uwsgi);
        assert!(inh.fds.is_empty());
    }

    #[test]
    fn a_connected_socket_is_not_a_listener() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(listener_address(&OwnedFd::from(c)), None);
    }
}
