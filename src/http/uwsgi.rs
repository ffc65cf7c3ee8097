//! The uwsgi protocol, as nginx's `uwsgi_pass` speaks it: a sans-IO decoder beside the
//! HTTP/1.1 one, feeding the same [`Request`].
//!
//! A request is a 4-byte header (`modifier1`, the size of the vars block as a
//! little-endian u16, `modifier2`), the vars block (pairs of a u16 LE key length, the
//! key, a u16 LE value length, the value: the CGI variables of `uwsgi_params`), then
//! `CONTENT_LENGTH` bytes of body (nginx de-chunks a chunked upload before passing it
//! on). The method comes from `REQUEST_METHOD`, the target from `REQUEST_URI` (or
//! `PATH_INFO` and `QUERY_STRING`), the headers from the `HTTP_*` variables; the other
//! variables (`REMOTE_ADDR`, `SERVER_NAME`, `HTTPS`, `SCRIPT_NAME`, `DOCUMENT_ROOT`…)
//! travel with the request in [`Request::cgi_vars`], so the WSGI environ holds them as
//! the front server sent them. A connection carries one request (nginx opens one per
//! request), and the response is plain HTTP/1.x, close-delimited when its length is
//! unknown.
//!
//! The vars block is bounded by `--buffer-size` ([`Limits::max_uwsgi_vars`], 4096 by
//! default as in uWSGI); a bigger one is refused with [`HttpError::UwsgiVarsTooLarge`],
//! whose message tells the user to raise it.

use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, Bytes, BytesMut};

use super::request::{Decoded, RequestMeta};
use super::{HttpError, Limits};
use crate::app::{Header, Request, Version};

/// The size of the packet header.
pub const HEADER_LEN: usize = 4;

/// The only `modifier1` served: a WSGI/HTTP request (nginx's default `uwsgi_modifier1 0`).
pub const MODIFIER_WSGI: u8 = 0;

/// The decoder of one uwsgi connection: the packet head, then its body.
#[derive(Debug, Default)]
pub struct UwsgiDecoder {
    /// The request whose vars are read, waiting for this many more body bytes.
    pending: Option<(Request, RequestMeta, u64)>,
    body: BytesMut,
    /// One request per connection: set once it has been decoded.
    done: bool,
}

impl UwsgiDecoder {
    pub fn new() -> UwsgiDecoder {
        UwsgiDecoder::default()
    }

    /// True while a request's vars have been read but its body has not.
    pub fn in_body(&self) -> bool {
        self.pending.is_some()
    }

    /// Consumes bytes from `buf` and reports what they amount to. After its one
    /// request, a connection has nothing more to say: further bytes are left in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Decoded, HttpError> {
        if self.done {
            return Ok(Decoded::NeedMore);
        }
        if self.pending.is_none() {
            let Some((req, meta, len)) = parse_packet(buf, limits)? else {
                return Ok(Decoded::NeedMore);
            };
            if len == 0 {
                self.done = true;
                return Ok(Decoded::Request(req, meta));
            }
            self.body = BytesMut::with_capacity(len.min(1 << 20) as usize);
            self.pending = Some((req, meta, len));
        }
        let (_, _, left) = self.pending.as_mut().expect("pending request");
        let take = (*left).min(buf.len() as u64) as usize;
        self.body.extend_from_slice(&buf[..take]);
        buf.advance(take);
        *left -= take as u64;
        if *left > 0 {
            return Ok(Decoded::NeedMore);
        }
        let (mut req, meta, _) = self.pending.take().expect("pending request");
        req.body = std::mem::take(&mut self.body).freeze();
        self.done = true;
        Ok(Decoded::Request(req, meta))
    }
}

fn malformed(what: impl Into<String>) -> HttpError {
    HttpError::Uwsgi(what.into())
}

/// Parses the header and vars block at the start of `buf` once they are all there,
/// consuming them. Returns the request (without its body), its metadata and the body
/// length to read.
fn parse_packet(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<(Request, RequestMeta, u64)>, HttpError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let modifier1 = buf[0];
    let size = u16::from_le_bytes([buf[1], buf[2]]) as usize;
    if modifier1 != MODIFIER_WSGI {
        return Err(HttpError::UwsgiModifier(modifier1));
    }
    if size > limits.max_uwsgi_vars {
        return Err(HttpError::UwsgiVarsTooLarge {
            size,
            max: limits.max_uwsgi_vars,
        });
    }
    if buf.len() < HEADER_LEN + size {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let block = buf.split_to(size).freeze();
    let vars = parse_vars(&block)?;
    let packet = from_vars(&block, &vars, limits)?;
    Ok(Some(packet))
}

/// The (key, value) ranges of a vars block.
/// Where one variable's key and value are in the vars block.
type Var = (std::ops::Range<usize>, std::ops::Range<usize>);

fn parse_vars(block: &[u8]) -> Result<Vec<Var>, HttpError> {
    let mut out = Vec::with_capacity(24);
    let mut at = 0;
    let field = |at: &mut usize, what: &str| -> Result<std::ops::Range<usize>, HttpError> {
        let Some(len) = block.get(*at..*at + 2) else {
            return Err(malformed(format!(
                "vars block ends inside the length of a {what} (at byte {})",
                *at
            )));
        };
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        let start = *at + 2;
        if start + len > block.len() {
            return Err(malformed(format!(
                "a {what} of {len} bytes at byte {} runs past the vars block ({} bytes)",
                *at,
                block.len()
            )));
        }
        *at = start + len;
        Ok(start..start + len)
    };
    while at < block.len() {
        let key = field(&mut at, "key")?;
        let value = field(&mut at, "value")?;
        if key.is_empty() {
            return Err(malformed("a variable with an empty name"));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Builds a request (without its body) from the vars; returns it with its metadata
/// and the body length to read.
fn from_vars(
    block: &Bytes,
    vars: &[Var],
    limits: &Limits,
) -> Result<(Request, RequestMeta, u64), HttpError> {
    let mut method: Option<Bytes> = None;
    let mut uri: Option<Bytes> = None;
    let mut path_info: Option<Bytes> = None;
    let mut query: Option<Bytes> = None;
    let mut content_length: Option<u64> = None;
    let mut version = Version::Http11;
    let mut remote_addr: Option<IpAddr> = None;
    let mut remote_port: u16 = 0;
    let mut headers = Vec::with_capacity(vars.len());
    let mut cgi_vars = Vec::with_capacity(12);
    for (k, v) in vars {
        let key = &block[k.clone()];
        let value = block.slice(v.clone());
        if let Some(name) = key.strip_prefix(b"HTTP_") {
            // The body's length and type travel as CONTENT_LENGTH / CONTENT_TYPE;
            // these names are no headers of the client's.
            if name == b"CONTENT_LENGTH" || name == b"CONTENT_TYPE" {
                continue;
            }
            if name.is_empty() || headers.len() >= limits.max_headers {
                if !name.is_empty() {
                    return Err(HttpError::TooManyHeaders);
                }
                continue;
            }
            let name = header_name(name);
            // nginx may send a header twice (an explicit uwsgi_param and the
            // client's own): the first one wins.
            if headers.iter().any(|h: &Header| h.name == name) {
                continue;
            }
            headers.push(Header { name, value });
            continue;
        }
        match key {
            b"REQUEST_METHOD" => {
                if value.is_empty() || !value.iter().all(|&b| is_token_byte(b)) {
                    return Err(malformed(format!(
                        "REQUEST_METHOD {:?} is not a method",
                        String::from_utf8_lossy(&value)
                    )));
                }
                method = Some(value);
                continue;
            }
            b"CONTENT_LENGTH" => {
                if !value.is_empty() {
                    let n = std::str::from_utf8(&value)
                        .ok()
                        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| {
                            malformed(format!(
                                "CONTENT_LENGTH {:?} is not a length",
                                String::from_utf8_lossy(&value)
                            ))
                        })?;
                    if n > limits.max_body {
                        return Err(HttpError::BodyTooLarge);
                    }
                    content_length = Some(n);
                    headers.push(Header {
                        name: Bytes::from_static(b"content-length"),
                        value,
                    });
                }
                continue;
            }
            b"CONTENT_TYPE" => {
                if !value.is_empty() {
                    headers.push(Header {
                        name: Bytes::from_static(b"content-type"),
                        value,
                    });
                }
                continue;
            }
            b"REQUEST_URI" => uri = Some(value.clone()),
            b"PATH_INFO" => path_info = Some(value.clone()),
            b"QUERY_STRING" => query = Some(value.clone()),
            b"SERVER_PROTOCOL" if &value[..] == b"HTTP/1.0" => version = Version::Http10,
            b"REMOTE_ADDR" => {
                remote_addr = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|s| s.parse().ok())
            }
            b"REMOTE_PORT" => {
                remote_port = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            }
            _ => {}
        }
        cgi_vars.push((block.slice(k.clone()), value));
    }
    let method = method.ok_or_else(|| malformed("no REQUEST_METHOD variable"))?;
    let target = match (uri, path_info) {
        (Some(u), _) if !u.is_empty() => u,
        (_, Some(p)) => target_of(&p, query.as_deref().unwrap_or_default()),
        _ => Bytes::from_static(b"/"),
    };
    if target.len() > limits.max_uri {
        return Err(HttpError::UriTooLong);
    }
    if target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(malformed("REQUEST_URI has spaces or control characters"));
    }
    let head = &method[..] == b"HEAD";
    let request = Request {
        method,
        target,
        version,
        headers,
        body: Bytes::new(),
        peer: remote_addr.map(|ip| SocketAddr::new(ip, remote_port)),
        local: None,
        cgi_vars,
        rest: None,
    };
    let meta = RequestMeta {
        version,
        keep_alive: false,
        head,
        echo_keep_alive: false,
        close_delimited: true,
        te_trailers: false,
    };
    Ok((request, meta, content_length.unwrap_or(0)))
}

/// `USER_AGENT` → `user-agent`.
fn header_name(cgi: &[u8]) -> Bytes {
    let name: Vec<u8> = cgi
        .iter()
        .map(|&b| {
            if b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            }
        })
        .collect();
    Bytes::from(name)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A request-target from a decoded `PATH_INFO` and a `QUERY_STRING`: the path's bytes
/// outside printable ASCII (and `%`, `?`, `#`) percent-encoded again.
fn target_of(path: &[u8], query: &[u8]) -> Bytes {
    let mut t = Vec::with_capacity(path.len() + query.len() + 2);
    if !path.starts_with(b"/") {
        t.push(b'/');
    }
    for &b in path {
        if b <= b' ' || b >= 0x7f || matches!(b, b'%' | b'?' | b'#') {
            t.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            t.push(b);
        }
    }
    if !query.is_empty() {
        t.push(b'?');
        t.extend(query.iter().filter(|&&b| b > b' ' && b != 0x7f));
    }
    Bytes::from(t)
}

/// Encodes a uwsgi request packet (header, vars, body): what nginx sends. For tests,
/// benchmarks and the fuzzer's canonical re-encoding.
pub fn encode_request(vars: &[(&[u8], &[u8])], body: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    for (k, v) in vars {
        block.extend_from_slice(&(k.len() as u16).to_le_bytes());
        block.extend_from_slice(k);
        block.extend_from_slice(&(v.len() as u16).to_le_bytes());
        block.extend_from_slice(v);
    }
    let mut out = Vec::with_capacity(HEADER_LEN + block.len() + body.len());
    out.push(MODIFIER_WSGI);
    out.extend_from_slice(&(block.len() as u16).to_le_bytes());
    out.push(0);
    out.extend_from_slice(&block);
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nginx_vars<'a>(extra: &[(&'a [u8], &'a [u8])]) -> Vec<(&'a [u8], &'a [u8])> {
        let mut v: Vec<(&[u8], &[u8])> = vec![
            (b"QUERY_STRING", b"a=1&b=%20"),
            (b"REQUEST_METHOD", b"GET"),
            (b"CONTENT_TYPE", b""),
            (b"CONTENT_LENGTH", b""),
            (b"REQUEST_URI", b"/caf%C3%A9?a=1&b=%20"),
            (b"PATH_INFO", "/café".as_bytes()),
            (b"DOCUMENT_ROOT", b"/usr/share/nginx/html"),
            (b"SERVER_PROTOCOL", b"HTTP/1.1"),
            (b"REQUEST_SCHEME", b"http"),
            (b"REMOTE_ADDR", b"10.1.2.3"),
            (b"REMOTE_PORT", b"51234"),
            (b"SERVER_PORT", b"80"),
            (b"SERVER_NAME", b"example.org"),
            (b"HTTP_HOST", b"example.org"),
            (b"HTTP_USER_AGENT", b"curl/8"),
        ];
        v.extend_from_slice(extra);
        v
    }

    fn decode_all(
        bytes: &[u8],
        limits: &Limits,
    ) -> Result<Option<(Request, RequestMeta)>, HttpError> {
        let mut dec = UwsgiDecoder::new();
        let mut buf = BytesMut::from(bytes);
        match dec.decode(&mut buf, limits)? {
            Decoded::Request(r, m) => Ok(Some((r, m))),
            Decoded::NeedMore => Ok(None),
            Decoded::Continue => panic!("no 100-continue in uwsgi"),
            Decoded::Head { .. } => panic!("a uwsgi request comes whole"),
        }
    }

    #[test]
    fn nginx_get() {
        let packet = encode_request(&nginx_vars(&[]), b"");
        let (r, m) = decode_all(&packet, &Limits::default()).unwrap().unwrap();
        assert_eq!(r.method(), "GET");
        assert_eq!(&r.target[..], b"/caf%C3%A9?a=1&b=%20");
        assert_eq!(r.query(), "a=1&b=%20");
        assert_eq!(r.header("user-agent"), Some(&b"curl/8"[..]));
        assert_eq!(r.header("host"), Some(&b"example.org"[..]));
        assert_eq!(
            r.header("content-length"),
            None,
            "empty CONTENT_LENGTH is no header"
        );
        assert_eq!(r.peer, Some("10.1.2.3:51234".parse().unwrap()));
        assert!(!m.keep_alive && m.close_delimited && !m.head);
        let names: Vec<&[u8]> = r.cgi_vars.iter().map(|(k, _)| &k[..]).collect();
        assert!(names.contains(&&b"SERVER_NAME"[..]));
        assert!(names.contains(&&b"DOCUMENT_ROOT"[..]));
        assert!(!names.contains(&&b"HTTP_HOST"[..]));
        assert!(!names.contains(&&b"REQUEST_METHOD"[..]));
    }

    #[test]
    fn body_in_pieces() {
        let body = vec![7u8; 10_000];
        let packet = encode_request(
            &nginx_vars(&[(b"CONTENT_LENGTH", b"10000")])
                .into_iter()
                .filter(|(k, v)| *k != b"CONTENT_LENGTH" || !v.is_empty())
                .map(|(k, v)| {
                    if k == b"REQUEST_METHOD" {
                        (k, &b"POST"[..])
                    } else {
                        (k, v)
                    }
                })
                .collect::<Vec<_>>(),
            &body,
        );
        // Every split gives the same request.
        for step in [1, 3, 4, 100, 4096, packet.len()] {
            let mut dec = UwsgiDecoder::new();
            let mut buf = BytesMut::new();
            let mut got = None;
            for piece in packet.chunks(step) {
                buf.extend_from_slice(piece);
                if let Decoded::Request(r, _) = dec.decode(&mut buf, &Limits::default()).unwrap() {
                    got = Some(r);
                }
            }
            let r = got.expect("a request");
            assert_eq!(r.method(), "POST");
            assert_eq!(r.body.len(), 10_000);
            assert_eq!(r.header("content-length"), Some(&b"10000"[..]));
        }
    }

    #[test]
    fn target_from_path_info_when_no_request_uri() {
        let packet = encode_request(
            &[
                (b"REQUEST_METHOD", b"GET"),
                (b"PATH_INFO", "/a b/é".as_bytes()),
                (b"QUERY_STRING", b"x=1"),
                (b"SERVER_PROTOCOL", b"HTTP/1.0"),
            ],
            b"",
        );
        let (r, m) = decode_all(&packet, &Limits::default()).unwrap().unwrap();
        assert_eq!(&r.target[..], b"/a%20b/%C3%A9?x=1");
        assert_eq!(m.version, Version::Http10);
        assert_eq!(r.peer, None);
    }

    #[test]
    fn short_header_and_short_vars_need_more() {
        let packet = encode_request(&nginx_vars(&[]), b"");
        for n in [0, 1, 3, 4, 10, packet.len() - 1] {
            assert!(
                decode_all(&packet[..n], &Limits::default())
                    .unwrap()
                    .is_none(),
                "{n}"
            );
        }
    }

    #[test]
    fn refusals() {
        let limits = Limits::default();
        // Vars block bigger than --buffer-size: refused from the header alone.
        let big = vec![b'x'; 5000];
        let packet = encode_request(&[(b"REQUEST_METHOD", b"GET"), (b"HTTP_COOKIE", &big)], b"");
        let e = decode_all(&packet[..4], &limits).unwrap_err();
        assert_eq!(e.status(), 431);
        assert!(e.to_string().contains("buffer-size"), "{e}");
        let roomy = Limits {
            max_uwsgi_vars: 65535,
            ..limits
        };
        assert!(decode_all(&packet, &roomy).unwrap().is_some());
        // Unknown modifier1.
        let mut p = encode_request(&nginx_vars(&[]), b"");
        p[0] = 5;
        let e = decode_all(&p, &limits).unwrap_err();
        assert_eq!(e.status(), 501);
        assert!(e.to_string().contains("modifier1 5"), "{e}");
        // A value length running past the block.
        let mut p = encode_request(&[(b"REQUEST_METHOD", b"GET")], b"");
        let n = p.len();
        p[n - 5] = 200;
        assert_eq!(decode_all(&p, &limits).unwrap_err().status(), 400);
        // A block that ends inside a length.
        let mut p = encode_request(&[(b"REQUEST_METHOD", b"GET")], b"");
        p.push(1);
        p[1] += 1;
        assert_eq!(decode_all(&p, &limits).unwrap_err().status(), 400);
        // No method; a bad method; a bad length; too big a body.
        let p = encode_request(&[(b"PATH_INFO", b"/")], b"");
        assert!(decode_all(&p, &limits)
            .unwrap_err()
            .to_string()
            .contains("REQUEST_METHOD"));
        let p = encode_request(&[(b"REQUEST_METHOD", b"G T")], b"");
        assert_eq!(decode_all(&p, &limits).unwrap_err().status(), 400);
        let p = encode_request(
            &[(b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", b"-1")],
            b"",
        );
        assert_eq!(decode_all(&p, &limits).unwrap_err().status(), 400);
        let p = encode_request(
            &[
                (b"REQUEST_METHOD", b"POST"),
                (b"CONTENT_LENGTH", b"99999999999"),
            ],
            b"",
        );
        assert_eq!(decode_all(&p, &limits).unwrap_err().status(), 413);
        let p = encode_request(
            &[(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/a\nb")],
            b"",
        );
        assert_eq!(decode_all(&p, &limits).unwrap_err().status(), 400);
    }

    #[test]
    fn one_request_per_connection() {
        let mut two = encode_request(&nginx_vars(&[]), b"");
        two.extend_from_slice(&encode_request(&nginx_vars(&[]), b""));
        let mut dec = UwsgiDecoder::new();
        let mut buf = BytesMut::from(&two[..]);
        assert!(matches!(
            dec.decode(&mut buf, &Limits::default()),
            Ok(Decoded::Request(..))
        ));
        assert!(matches!(
            dec.decode(&mut buf, &Limits::default()),
            Ok(Decoded::NeedMore)
        ));
        assert!(!buf.is_empty());
    }
}
