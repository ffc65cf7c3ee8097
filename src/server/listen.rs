//! Opening the listening socket: uWSGI-style addresses (`:8080`, `host:port`, `[::1]:80`)
//! and a clear one-line error when the address is bad or busy.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};

/// Why the listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("bad address {0:?}: expected HOST:PORT or :PORT (e.g. --http :8080)")]
    BadAddress(String),
    #[error("cannot resolve {0:?}: {1}")]
    Resolve(String, io::Error),
    #[error("cannot listen on {0}: address already in use (another server is running there; stop it or pick another port)")]
    InUse(SocketAddr),
    #[error("cannot listen on {0}: permission denied (ports below 1024 need privileges; pick a port >= 1024)")]
    Denied(SocketAddr),
    #[error("cannot listen on {0}: {1}")]
    Other(SocketAddr, io::Error),
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
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(map)?;
    socket.set_reuse_address(true).map_err(map)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into()).map_err(map)?;
    socket.listen(backlog).map_err(map)?;
    Ok(socket.into())
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
    fn busy_port_is_a_clear_error() {
        let a = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = a.local_addr().unwrap();
        let msg = bind(addr, 16).unwrap_err().to_string();
        assert!(msg.contains("already in use"), "{msg}");
    }
}
