//! Request heads: the request line and header section, parsed by httparse and then held
//! to the rules httparse leaves to its caller: request-target forms, version syntax,
//! singleton fields, framing (Content-Length, Transfer-Encoding) and look-alike names.

use super::field;
use super::target;
use crate::app::Version;
use crate::http::{HttpError, Limits};

/// Facts about a request that decide how to frame and whether to keep the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMeta {
    pub version: Version,
    /// The client allows the connection to stay open after this response.
    pub keep_alive: bool,
    /// A HEAD request: the response carries headers but no body.
    pub head: bool,
    /// A 1.0 client asked for keep-alive explicitly, so the response must echo
    /// `Connection: keep-alive` (as `ab -k` expects).
    pub echo_keep_alive: bool,
    /// The client accepts trailer fields after a chunked body (`TE: trailers`).
    pub te_trailers: bool,
    /// The peer takes no chunked body (a front server over the uwsgi protocol, which
    /// passes the response on as it comes): a body of unknown length is sent
    /// close-delimited.
    pub close_delimited: bool,
}

/// A parsed head, as offsets into the head bytes (so the request can share them).
pub(super) struct Head {
    pub method: (usize, usize),
    pub target: (usize, usize),
    pub version: Version,
    pub headers: Vec<((usize, usize), (usize, usize))>,
    pub meta: RequestMeta,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub expect_continue: bool,
}

fn offsets(base: &[u8], part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    (start, start + part.len())
}

/// Parses the request head at the start of `buf`. `Ok(None)` when incomplete.
pub(super) fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(Head, usize)>, HttpError> {
    // Tolerate empty lines before a request (RFC 9112 §2.2), as most servers do.
    let skip = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if skip > limits.max_head {
        // Empty lines count against the head limit, or they could fill memory.
        return Err(HttpError::HeadTooLarge);
    }
    let data = &buf[skip..];
    if data.is_empty() {
        return Ok(None);
    }
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let max = limits.max_headers.min(storage.len());
    let mut req = httparse::Request::new(&mut storage[..max]);
    let status = match req.parse(data) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            // `HTTP/2.0` is a version we do not speak (505); `HTTP/111` or `LINE` is no
            // HTTP-version at all (400). Until the line ends, `HTTP/2` may still become
            // either: wait, so the answer does not depend on how the bytes arrived.
            let line_len = first_line_len(data);
            let line = &data[..line_len];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let version = line.split(|&b| b == b' ').nth(2).unwrap_or(b"");
            if line_len == data.len() && could_become_http_version(version) {
                check_partial_limits(data, limits)?;
                return Ok(None);
            }
            return Err(if is_http_version_syntax(version) {
                HttpError::BadVersion
            } else {
                HttpError::Malformed("invalid request line".into())
            });
        }
        Err(e) => {
            // A request line longer than the URI limit fails as a token error only once
            // bytes past the limit arrive; report the limit, not a parse error.
            if first_line_len(data) > limits.max_uri + 32 {
                return Err(HttpError::UriTooLong);
            }
            return Err(HttpError::Malformed(e.to_string()));
        }
    };
    let httparse::Status::Complete(len) = status else {
        check_partial_limits(data, limits)?;
        return Ok(None);
    };
    let target = req.path.unwrap_or("");
    if target.len() > limits.max_uri {
        return Err(HttpError::UriTooLong);
    }
    if len > limits.max_head {
        return Err(HttpError::HeadTooLarge);
    }
    let version = match req.version {
        Some(0) => Version::Http10,
        _ => Version::Http11,
    };
    let method = req.method.unwrap_or("");
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;
    let mut te_trailers = false;
    let mut headers = Vec::with_capacity(req.headers.len());
    let mut host_seen = false;
    let mut content_type_seen = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = parse_content_length(h.value)?;
            if content_length.is_some_and(|old| old != v) {
                return Err(HttpError::Smuggling("differing Content-Length headers"));
            }
            if content_length.is_some() {
                return Err(HttpError::Smuggling("duplicate Content-Length header"));
            }
            content_length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            chunked = transfer_encoding_is_chunked(h.value, chunked)?;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    conn_close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(HttpError::ExpectationFailed);
            }
        } else if name.eq_ignore_ascii_case(b"te") {
            te_trailers |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        } else if name.eq_ignore_ascii_case(b"host") {
            if host_seen {
                return Err(HttpError::Malformed("duplicate Host header".into()));
            }
            host_seen = true;
        } else if name.eq_ignore_ascii_case(b"content-type") {
            if content_type_seen {
                return Err(HttpError::Malformed("duplicate Content-Type header".into()));
            }
            content_type_seen = true;
        } else if field::is_framing_alias(name) {
            return Err(HttpError::Smuggling("framing field name spelt with '_'"));
        }
        headers.push((offsets(buf, name), offsets(buf, h.value)));
    }
    if version == Version::Http11 && !host_seen {
        return Err(HttpError::Malformed(
            "HTTP/1.1 request without Host header".into(),
        ));
    }
    target::check(method.as_bytes(), target.as_bytes())?;
    if transfer_encoding {
        if content_length.is_some() {
            return Err(HttpError::Smuggling(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if version == Version::Http10 {
            return Err(HttpError::Smuggling(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if !chunked {
            return Err(HttpError::Smuggling(
                "Transfer-Encoding does not end with chunked",
            ));
        }
    }
    let keep_alive = match version {
        Version::Http11 => !conn_close,
        Version::Http10 => conn_keep_alive && !conn_close,
    };
    let meta = RequestMeta {
        version,
        keep_alive,
        head: method == "HEAD",
        echo_keep_alive: version == Version::Http10 && keep_alive,
        te_trailers,
        close_delimited: false,
    };
    let head = Head {
        method: offsets(buf, method.as_bytes()),
        target: offsets(buf, target.as_bytes()),
        version,
        headers,
        meta,
        content_length,
        chunked,
        expect_continue,
    };
    Ok(Some((head, skip + len)))
}

/// `HTTP/` DIGIT `.` DIGIT (RFC 9112 §2.3).
fn is_http_version_syntax(v: &[u8]) -> bool {
    matches!(v, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// True for a prefix of `HTTP/` DIGIT `.` DIGIT (the whole of it included).
fn could_become_http_version(v: &[u8]) -> bool {
    const SHAPE: &[u8] = b"HTTP/0.0";
    v.len() <= SHAPE.len()
        && v.iter().zip(SHAPE).all(|(&b, &s)| {
            if s == b'0' {
                b.is_ascii_digit()
            } else {
                b == s
            }
        })
}

fn first_line_len(data: &[u8]) -> usize {
    data.iter().position(|&b| b == b'\n').unwrap_or(data.len())
}

/// Limits that can be judged before the head is complete, so a client cannot make us
/// buffer an endless request line or header block.
fn check_partial_limits(data: &[u8], limits: &Limits) -> Result<(), HttpError> {
    let line = first_line_len(data);
    // The request line alone is past a limit: the target is what is too long (414).
    // While the line is incomplete, allow for the method and version around it.
    let target_len = if line < data.len() {
        let line = &data[..line];
        let first = line.iter().position(|&b| b == b' ').unwrap_or(0);
        let last = line.iter().rposition(|&b| b == b' ').unwrap_or(first);
        last.saturating_sub(first + 1)
    } else {
        0
    };
    if line > limits.max_uri + 32 || target_len > limits.max_uri || line > limits.max_head {
        return Err(HttpError::UriTooLong);
    }
    if data.len() > limits.max_head {
        return Err(HttpError::HeadTooLarge);
    }
    Ok(())
}

fn parse_content_length(v: &[u8]) -> Result<u64, HttpError> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        // Also rejects lists such as "5, 5" and signs: strict digits only.
        return Err(HttpError::Smuggling("invalid Content-Length"));
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Smuggling("invalid Content-Length"))
}

/// Checks a Transfer-Encoding value; returns whether the (cumulative) list ends with
/// `chunked`. Only `chunked` is supported: anything else is 501 per RFC 9112 §6.1.
fn transfer_encoding_is_chunked(v: &[u8], already: bool) -> Result<bool, HttpError> {
    let mut last_chunked = already;
    for coding in v.split(|&b| b == b',') {
        let c = coding.trim_ascii();
        if c.is_empty() {
            continue;
        }
        if c.eq_ignore_ascii_case(b"chunked") {
            if last_chunked {
                return Err(HttpError::Smuggling("chunked applied twice"));
            }
            last_chunked = true;
        } else if c.eq_ignore_ascii_case(b"identity") {
            return Err(HttpError::Smuggling("Transfer-Encoding: identity"));
        } else if last_chunked {
            return Err(HttpError::Smuggling(
                "Transfer-Encoding does not end with chunked",
            ));
        } else {
            return Err(HttpError::UnsupportedTransferCoding);
        }
    }
    Ok(last_chunked)
}
