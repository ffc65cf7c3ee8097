//! The target of a run: URL parsing and the request bytes built once and sent on every request.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::BenchError;

/// Where requests go: what the user typed, split into the parts the client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as written (without brackets for IPv6 literals).
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
    /// The `Host:` header value (`host` or `host:port`).
    pub host_header: String,
}

/// Parses `http://host[:port][/path]` (the scheme may be left out). `https` is refused:
/// the generator measures servers, not TLS libraries.
pub fn parse_url(url: &str) -> Result<Target, BenchError> {
    let bad = |why: &str| BenchError::Url(format!("{url}: {why}"));
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err(bad("https is not supported"));
    } else if url.contains("://") {
        return Err(bad("only http:// URLs are supported"));
    } else {
        url
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let path = match path.find('#') {
        Some(i) => path[..i].to_string(),
        None => path,
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains('@') {
        return Err(bad("user info in URLs is not supported"));
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let end = inner
            .find(']')
            .ok_or_else(|| bad("unterminated IPv6 literal"))?;
        let host = &inner[..end];
        let after = &inner[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("garbage after IPv6 literal")),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
        None => 80,
    };
    let host_header = if port == 80 {
        authority_host(host)
    } else {
        format!("{}:{port}", authority_host(host))
    };
    Ok(Target {
        host: host.to_string(),
        port,
        path,
        host_header,
    })
}

fn authority_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Resolves the target and returns the first address that accepts a connection (so
/// `localhost` works whether the server listens on 127.0.0.1 or ::1). A target nothing
/// answers on is an error up front, as with ab, rather than a run of connect failures.
pub fn resolve(target: &Target, timeout: Duration) -> Result<SocketAddr, BenchError> {
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| BenchError::Resolve(target.host.clone(), e))?
        .collect();
    if addrs.is_empty() {
        return Err(BenchError::Resolve(
            target.host.clone(),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        ));
    }
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(_) => return Ok(*addr),
            Err(e) => last = Some((*addr, e)),
        }
    }
    let (addr, e) = last.expect("at least one address was tried");
    Err(BenchError::Connect(addr, e))
}

/// What to send, before it is turned into bytes.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: String,
    pub path: String,
    pub host_header: String,
    /// Extra headers as `(name, value)`; a name that matches a default header replaces it.
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub content_type: Option<String>,
    pub keep_alive: bool,
}

/// Splits a `-H 'Name: value'` argument.
pub fn parse_header(h: &str) -> Result<(String, String), BenchError> {
    let (name, value) = h
        .split_once(':')
        .ok_or_else(|| BenchError::Usage(format!("header {h:?} is not 'Name: value'")))?;
    let name = name.trim();
    if name.is_empty() || name.bytes().any(|b| !is_token(b)) {
        return Err(BenchError::Usage(format!("bad header name in {h:?}")));
    }
    let value = value.trim();
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(BenchError::Usage(format!("bad header value in {h:?}")));
    }
    Ok((name.to_string(), value.to_string()))
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Builds the bytes of one HTTP/1.1 request.
pub fn build_request(spec: &RequestSpec) -> Result<Vec<u8>, BenchError> {
    if spec.method.is_empty() || spec.method.bytes().any(|b| !is_token(b)) {
        return Err(BenchError::Usage(format!("bad method {:?}", spec.method)));
    }
    if spec.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(BenchError::Usage(format!(
            "path {:?} has spaces or control characters",
            spec.path
        )));
    }
    let user = |name: &str| {
        spec.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("{} {} HTTP/1.1\r\n", spec.method, spec.path).as_bytes());
    let mut add = |n: &str, v: &str| {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    if !user("host") {
        add("Host", &spec.host_header);
    }
    if !user("user-agent") {
        add(
            "User-Agent",
            concat!("forklift-bench/", env!("CARGO_PKG_VERSION")),
        );
    }
    if !user("accept") {
        add("Accept", "*/*");
    }
    if !spec.keep_alive && !user("connection") {
        add("Connection", "close");
    }
    let needs_length = spec.body.is_some()
        || matches!(
            spec.method.to_ascii_uppercase().as_str(),
            "POST" | "PUT" | "PATCH"
        );
    if needs_length && !user("content-length") {
        let len = spec.body.as_ref().map_or(0, Vec::len);
        add("Content-Length", &len.to_string());
    }
    if let Some(ct) = &spec.content_type {
        if !user("content-type") {
            add("Content-Type", ct);
        }
    }
    for (n, v) in &spec.headers {
        add(n, v);
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = &spec.body {
        out.extend_from_slice(body);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = parse_url("http://127.0.0.1:8080/a/b?x=1").unwrap();
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.port, 8080);
        assert_eq!(t.path, "/a/b?x=1");
        assert_eq!(t.host_header, "127.0.0.1:8080");
        let t = parse_url("localhost").unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.host_header.as_str()),
            (80, "/", "localhost")
        );
        let t = parse_url("http://[::1]:9/x#frag").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 9, "/x"));
        assert_eq!(t.host_header, "[::1]:9");
        let t = parse_url("http://h?q=1").unwrap();
        assert_eq!(t.path, "/?q=1");
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://x:99999/").is_err());
        assert!(parse_url("http:///").is_err());
    }

    #[test]
    fn builds_requests() {
        let spec = RequestSpec {
            method: "POST".into(),
            path: "/p".into(),
            host_header: "h:1".into(),
            headers: vec![
                ("User-Agent".into(), "me".into()),
                ("X-A".into(), "1".into()),
            ],
            body: Some(b"abc".to_vec()),
            content_type: Some("text/plain".into()),
            keep_alive: false,
        };
        let r = String::from_utf8(build_request(&spec).unwrap()).unwrap();
        assert!(r.starts_with("POST /p HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.contains("Content-Length: 3\r\n"));
        assert!(r.contains("Content-Type: text/plain\r\n"));
        assert!(r.contains("User-Agent: me\r\n"));
        assert!(!r.contains("forklift-bench"));
        assert!(r.ends_with("X-A: 1\r\n\r\nabc"));
        let mut spec2 = spec.clone();
        spec2.method = "GE T".into();
        assert!(build_request(&spec2).is_err());
    }

    #[test]
    fn parses_headers() {
        assert_eq!(parse_header("A: b c").unwrap(), ("A".into(), "b c".into()));
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header(": x").is_err());
    }
}
