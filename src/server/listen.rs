//! The listening sockets: uWSGI-style addresses (`:8080`, `host:port`, `[::1]:80`, a
//! unix socket path, `@abstract`), each listener tagged with the protocol it speaks
//! (HTTP/1.1 or uwsgi), the connections they accept ([`Stream`]), and a clear one-line
//! error when an address is bad or busy.
//!
//! A unix socket file left by a crashed server (nobody answers on it) is replaced; one
//! another server answers on is refused. `--chmod-socket` and `--chown-socket` apply to
//! the file after binding; `--vacuum` removes it on exit (see [`Listener::path`]). A
//! listener can also be adopted from an inherited descriptor ([`Listener::from_fd`]),
//! its kind read from the socket itself.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// Why the listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("bad address {0:?}: expected HOST:PORT, :PORT, a unix socket path with a / (./app.sock) or @NAME (e.g. --http :8080)")]
    BadAddress(String),
    #[error("cannot resolve {0:?}: {1}")]
    Resolve(String, io::Error),
    #[error("cannot listen on {0}: address already in use (another server is running there; stop it or pick another port)")]
    InUse(SocketAddr),
    #[error("cannot listen on {0}: permission denied (ports below 1024 need privileges; pick a port >= 1024)")]
    Denied(SocketAddr),
    #[error("cannot listen on {0}: {1}")]
    Other(SocketAddr, io::Error),
    #[error("cannot listen on unix socket {0}: another server is answering there (stop it, or pick another path)")]
    UnixInUse(String),
    #[error("cannot listen on unix socket {0}: the path exists and is not a socket (remove it, or pick another path)")]
    NotASocket(String),
    #[error("cannot listen on unix socket {0}: {1}")]
    Unix(String, io::Error),
}

/// Parses `:8080` (all interfaces), `0.0.0.0:8080`, `localhost:8080`, `[::1]:8080`.
pub fn parse_addr(text: &str) -> Result<SocketAddr, ListenError> {
    let t = text.trim();
    let bad = || ListenError::BadAddress(text.to_string());
    let full = if let Some(port) = t.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        t.to_string()
    };
    let (_, port) = full.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    if let Ok(addr) = full.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let mut addrs = full
        .to_socket_addrs()
        .map_err(|e| ListenError::Resolve(text.to_string(), e))?;
    addrs.next().ok_or_else(bad)
}

/// Binds and listens with SO_REUSEADDR and the given backlog. The socket is blocking;
/// models switch it to non-blocking as they need.
pub fn bind(addr: SocketAddr, backlog: i32) -> Result<TcpListener, ListenError> {
    let map = |e: io::Error| match e.kind() {
        io::ErrorKind::AddrInUse => ListenError::InUse(addr),
        io::ErrorKind::PermissionDenied => ListenError::Denied(addr),
        _ => ListenError::Other(addr, e),
    };
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(map)?;
    socket.set_reuse_address(true).map_err(map)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into()).map_err(map)?;
    socket.listen(backlog).map_err(map)?;
    Ok(socket.into())
}

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 (`--http`, `--http-socket`).
    Http,
    /// The uwsgi binary protocol, from a front server such as nginx (`--socket`,
    /// `--uwsgi-socket`).
    Uwsgi,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Uwsgi => "uwsgi",
        }
    }
}

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(SocketAddr),
    /// A unix socket file.
    Unix(PathBuf),
    /// A Linux abstract unix socket (`@name`): no file, gone with the last descriptor.
    Abstract(Vec<u8>),
}

impl Address {
    /// Parses a uWSGI socket address: `@name` is an abstract unix socket; text with a
    /// `/` is a unix socket path (`/run/app.sock`, `./app.sock`); the rest is TCP
    /// (`:8080`, `host:port`, `[::1]:80`). (uWSGI also takes a word without `:` as a
    /// path; here that is refused, since `--http 8080` or a typo would otherwise start
    /// a server nobody can reach.)
    pub fn parse(text: &str) -> Result<Address, ListenError> {
        let t = text.trim();
        if let Some(name) = t.strip_prefix('@') {
            if name.is_empty() {
                return Err(ListenError::BadAddress(text.to_string()));
            }
            return Ok(Address::Abstract(name.as_bytes().to_vec()));
        }
        if t.contains('/') {
            return Ok(Address::Unix(PathBuf::from(t)));
        }
        parse_addr(t).map(Address::Tcp)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Abstract(n) => write!(f, "@{}", String::from_utf8_lossy(n)),
        }
    }
}

/// How unix socket files are set up after binding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnixOptions {
    /// `--chmod-socket`: the file's mode.
    pub mode: Option<u32>,
    /// `--chown-socket`: the file's owner and group.
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// One listening socket, of either kind.
#[derive(Debug)]
pub enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A listening socket and the protocol its connections speak.
#[derive(Debug)]
pub struct Listener {
    socket: ListenSocket,
    protocol: Protocol,
    /// The socket file this process created (removed on exit with `--vacuum`).
    path: Option<PathBuf>,
}

impl Listener {
    /// Binds and listens on `addr` with the given backlog, for `protocol`. TCP sockets
    /// get SO_REUSEADDR; a unix socket file gets `unix`'s mode and owner. The socket is
    /// blocking; models switch it to non-blocking as they need.
    pub fn bind(
        addr: &Address,
        protocol: Protocol,
        backlog: i32,
        unix: &UnixOptions,
    ) -> Result<Listener, ListenError> {
        match addr {
            Address::Tcp(a) => Ok(Listener {
                socket: ListenSocket::Tcp(bind(*a, backlog)?),
                protocol,
                path: None,
            }),
            Address::Unix(path) => bind_unix_path(path, backlog, unix).map(|l| Listener {
                socket: ListenSocket::Unix(l),
                protocol,
                path: Some(path.clone()),
            }),
            Address::Abstract(name) => {
                let shown = addr.to_string();
                let err = |e: io::Error| match e.kind() {
                    io::ErrorKind::AddrInUse => ListenError::UnixInUse(shown.clone()),
                    _ => ListenError::Unix(shown.clone(), e),
                };
                // An abstract name is a path starting with a NUL byte.
                let mut raw = vec![0u8];
                raw.extend_from_slice(name);
                let sa = socket2::SockAddr::unix(std::ffi::OsStr::from_bytes(&raw)).map_err(err)?;
                let l = listen_unix(&sa, backlog).map_err(err)?;
                Ok(Listener {
                    socket: ListenSocket::Unix(l),
                    protocol,
                    path: None,
                })
            }
        }
    }

    /// Adopts a listening socket this process inherited (socket activation, a hand-over
    /// from a previous server), reading from the socket whether it is TCP or unix.
    pub fn from_fd(fd: OwnedFd, protocol: Protocol) -> io::Result<Listener> {
        use nix::sys::socket::SockaddrLike;
        let family =
            nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd.as_raw_fd())?
                .family();
        let accepting: bool =
            nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn)?;
        if !accepting {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "inherited descriptor is not a listening socket",
            ));
        }
        let socket = match family {
            Some(nix::sys::socket::AddressFamily::Unix) => {
                ListenSocket::Unix(UnixListener::from(fd))
            }
            Some(
                nix::sys::socket::AddressFamily::Inet | nix::sys::socket::AddressFamily::Inet6,
            ) => ListenSocket::Tcp(TcpListener::from(fd)),
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("inherited socket of unsupported family {other:?}"),
                ))
            }
        };
        Ok(Listener {
            socket,
            protocol,
            path: None,
        })
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn socket(&self) -> &ListenSocket {
        &self.socket
    }

    /// The socket file this listener created, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn into_socket(self) -> ListenSocket {
        self.socket
    }

    /// The descriptor, for handing the listener over (to a new process, or back to
    /// [`Listener::from_fd`]).
    pub fn into_socket_fd(self) -> OwnedFd {
        match self.socket {
            ListenSocket::Tcp(l) => l.into(),
            ListenSocket::Unix(l) => l.into(),
        }
    }

    /// The TCP address, for a TCP listener.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match &self.socket {
            ListenSocket::Tcp(l) => l.local_addr().ok(),
            ListenSocket::Unix(_) => None,
        }
    }

    /// The address as uWSGI names it (`127.0.0.1:8080`, `/run/app.sock`, `@name`).
    pub fn name(&self) -> String {
        match &self.socket {
            ListenSocket::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            ListenSocket::Unix(l) => match l.local_addr() {
                Ok(a) => match (a.as_pathname(), a.as_abstract_name()) {
                    (Some(p), _) => p.display().to_string(),
                    (_, Some(n)) => format!("@{}", String::from_utf8_lossy(n)),
                    _ => String::new(),
                },
                Err(_) => String::new(),
            },
        }
    }

    /// The listener as a URL-like name for the start-up line: `http://127.0.0.1:8080`,
    /// `uwsgi://127.0.0.1:3031`, `uwsgi+unix:/run/app.sock`, `http+unix:@name`.
    pub fn describe(&self) -> String {
        match &self.socket {
            ListenSocket::Tcp(_) => format!("{}://{}", self.protocol.name(), self.name()),
            ListenSocket::Unix(_) => format!("{}+unix:{}", self.protocol.name(), self.name()),
        }
    }

    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(Listener {
            socket: match &self.socket {
                ListenSocket::Tcp(l) => ListenSocket::Tcp(l.try_clone()?),
                ListenSocket::Unix(l) => ListenSocket::Unix(l.try_clone()?),
            },
            protocol: self.protocol,
            path: self.path.clone(),
        })
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match &self.socket {
            ListenSocket::Tcp(l) => l.set_nonblocking(on),
            ListenSocket::Unix(l) => l.set_nonblocking(on),
        }
    }

    /// Accepts a connection, in non-blocking mode when `nonblocking`; returns it with the
    /// client's address (TCP only). A TCP connection gets TCP_NODELAY: responses go out
    /// in one write, and a small last segment must not wait for the client's delayed
    /// ACK.
    pub fn accept(&self, nonblocking: bool) -> io::Result<(Stream, Option<SocketAddr>)> {
        // SAFETY: an all-zero sockaddr_storage is a valid value of this plain C struct.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let flags = libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
        // SAFETY: accept4 writes at most `len` bytes of address into `storage`, which is
        // that big, and updates `len`; the descriptor is this live listener.
        let fd = unsafe {
            libc::accept4(
                self.as_raw_fd(),
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
                flags,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        match &self.socket {
            ListenSocket::Tcp(_) => {
                let s = TcpStream::from(fd);
                let _ = s.set_nodelay(true);
                // SAFETY: `storage` and `len` are what accept4 filled in.
                let peer = unsafe { socket2::SockAddr::new(storage, len) }.as_socket();
                Ok((Stream::Tcp(s), peer))
            }
            ListenSocket::Unix(_) => Ok((Stream::Unix(UnixStream::from(fd)), None)),
        }
    }
}

/// A TCP listener serving HTTP.
impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Listener {
        Listener {
            socket: ListenSocket::Tcp(l),
            protocol: Protocol::Http,
            path: None,
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            ListenSocket::Tcp(l) => l.as_fd(),
            ListenSocket::Unix(l) => l.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

fn listen_unix(addr: &socket2::SockAddr, backlog: i32) -> io::Result<UnixListener> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(addr)?;
    socket.listen(backlog)?;
    Ok(UnixListener::from(OwnedFd::from(socket)))
}

/// Binds a unix socket file: a stale file (nobody answers) is replaced, a live one
/// refused; then the mode and owner are set.
fn bind_unix_path(
    path: &Path,
    backlog: i32,
    unix: &UnixOptions,
) -> Result<UnixListener, ListenError> {
    let shown = path.display().to_string();
    let err = |e: io::Error| ListenError::Unix(shown.clone(), e);
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(ListenError::NotASocket(shown));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::UnixInUse(shown)),
            // Left by a server that is gone: take its place.
            Err(_) => std::fs::remove_file(path).map_err(err)?,
        }
    }
    let sa = socket2::SockAddr::unix(path).map_err(err)?;
    let l = listen_unix(&sa, backlog).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => ListenError::UnixInUse(shown.clone()),
        _ => err(e),
    })?;
    if unix.owner.is_some() || unix.group.is_some() {
        std::os::unix::fs::chown(path, unix.owner, unix.group).map_err(|e| {
            ListenError::Unix(
                shown.clone(),
                io::Error::new(e.kind(), format!("chown-socket: {e}")),
            )
        })?;
    }
    if let Some(mode) = unix.mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
            ListenError::Unix(
                shown.clone(),
                io::Error::new(e.kind(), format!("chmod-socket: {e}")),
            )
        })?;
    }
    Ok(l)
}

/// An accepted connection, TCP or unix.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// The client's address (TCP only).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().ok(),
            Stream::Unix(_) => None,
        }
    }

    /// The address the connection was accepted on (TCP only).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            Stream::Unix(_) => None,
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }
}

impl Read for Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uwsgi_forms() {
        assert_eq!(
            parse_addr(":5000").unwrap(),
            "0.0.0.0:5000".parse().unwrap()
        );
        assert_eq!(
            parse_addr("127.0.0.1:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert_eq!(parse_addr("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert!(parse_addr("localhost:8080").unwrap().ip().is_loopback());
        assert!(parse_addr("nonsense").is_err());
        assert!(parse_addr(":99999").is_err());
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(
            Address::parse(":3031").unwrap(),
            Address::Tcp("0.0.0.0:3031".parse().unwrap())
        );
        assert_eq!(
            Address::parse("/run/app.sock").unwrap(),
            Address::Unix("/run/app.sock".into())
        );
        assert_eq!(
            Address::parse("./app.sock").unwrap(),
            Address::Unix("./app.sock".into())
        );
        assert_eq!(
            Address::parse("./a:b.sock").unwrap(),
            Address::Unix("./a:b.sock".into())
        );
        assert_eq!(
            Address::parse("@app").unwrap(),
            Address::Abstract(b"app".to_vec())
        );
        for bad in ["", "@", "8080", "host:port", "app.sock", "garbage"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    /// A listener handed over as a bare descriptor (socket activation) is adopted with
    /// its kind read from the socket.
    #[test]
    fn adopted_from_a_descriptor() {
        let tcp = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = tcp.local_addr().unwrap();
        let l = Listener::from_fd(OwnedFd::from(tcp), Protocol::Uwsgi).unwrap();
        assert!(matches!(l.socket(), ListenSocket::Tcp(_)));
        assert_eq!(l.describe(), format!("uwsgi://{addr}"));
        let name = format!("forklift-from-fd-{}", std::process::id());
        let unix = Listener::bind(
            &Address::Abstract(name.as_bytes().to_vec()),
            Protocol::Http,
            16,
            &UnixOptions::default(),
        )
        .unwrap();
        let fd = unix.into_socket_fd();
        let l = Listener::from_fd(fd, Protocol::Http).unwrap();
        assert!(matches!(l.socket(), ListenSocket::Unix(_)));
        assert_eq!(l.describe(), format!("http+unix:@{name}"));
        // Not a listening socket: refused.
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(Listener::from_fd(OwnedFd::from(a), Protocol::Http).is_err());
    }

    #[test]
    fn busy_port_is_a_clear_error() {
        let a = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = a.local_addr().unwrap();
        let msg = bind(addr, 16).unwrap_err().to_string();
        assert!(msg.contains("already in use"), "{msg}");
    }
}
