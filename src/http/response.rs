//! Response encoding: the status line and headers, the framing decision (length,
//! chunked, close-delimited, none), and a [`BodyEncoder`] that frames body bytes and
//! holds an app to the length it promised.

use bytes::{BufMut, Bytes, BytesMut};

use super::date;
use super::request::RequestMeta;
use super::HttpError;
use crate::app::{Body, HeaderName, Response, Version};

/// How the body of a response is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes follow.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// The body ends when the connection closes (HTTP/1.0 clients, unknown length).
    Close,
    /// No body at all (HEAD, 1xx, 204, 304), whatever the headers say.
    None,
}

/// Frames body bytes according to [`Framing`].
#[derive(Debug)]
pub struct BodyEncoder {
    framing: Framing,
    /// Bytes still allowed under `Length`.
    left: u64,
    /// Total body bytes accepted (for the access log).
    pub written: u64,
}

/// An app sent fewer bytes than its Content-Length promised. The connection must close:
/// the client is still waiting for the rest.
#[derive(Debug, PartialEq, Eq)]
pub struct ShortBody {
    pub missing: u64,
}

impl BodyEncoder {
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Appends `data` to `out`, framed. Bytes past a promised length are dropped (the
    /// PEP 3333 rule: never send more than Content-Length).
    pub fn push(&mut self, out: &mut BytesMut, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.framing {
            Framing::None => {}
            Framing::Close => {
                out.extend_from_slice(data);
                self.written += data.len() as u64;
            }
            Framing::Length(_) => {
                let take = (data.len() as u64).min(self.left) as usize;
                out.extend_from_slice(&data[..take]);
                self.left -= take as u64;
                self.written += take as u64;
            }
            Framing::Chunked => {
                write_hex(out, data.len());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
                self.written += data.len() as u64;
            }
        }
    }

    /// True once a length-framed body has everything it promised.
    pub fn is_full(&self) -> bool {
        matches!(self.framing, Framing::Length(_)) && self.left == 0
    }

    /// Ends the body: the last chunk for chunked framing; a check for length framing.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), ShortBody> {
        self.finish_with(out, &[])
    }

    /// [`BodyEncoder::finish`] with trailer fields after a chunked body (checked as
    /// header fields are; those that are not valid, or that frame or route the message,
    /// are left out). Other framings have nowhere to put them.
    pub fn finish_with(
        &mut self,
        out: &mut BytesMut,
        trailers: &[(HeaderName, Bytes)],
    ) -> Result<(), ShortBody> {
        match self.framing {
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers {
                    let valid = !name.is_empty()
                        && name.bytes().all(is_token_byte)
                        && !value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
                        && !is_hop_header(name)
                        && !is_forbidden_trailer(name);
                    if valid {
                        out.extend_from_slice(name.as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(value);
                        out.extend_from_slice(b"\r\n");
                    }
                }
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
            Framing::Length(_) if self.left > 0 => Err(ShortBody { missing: self.left }),
            _ => Ok(()),
        }
    }
}

fn write_hex(out: &mut BytesMut, n: usize) {
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut v = n;
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[v & 15];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// The standard reason phrase for a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Whether a response with this status may carry a body (RFC 9110 §6.4.1).
pub fn status_has_body(status: u16) -> bool {
    !(100..200).contains(&status) && status != 204 && status != 304
}

/// Headers the server owns: an app's values for these are replaced or checked.
/// Fields a trailer section must not carry (RFC 9110 §6.5.1): framing, routing,
/// request modifiers, authentication, and fields that control the response.
fn is_forbidden_trailer(name: &str) -> bool {
    [
        "content-length",
        "content-type",
        "content-encoding",
        "content-range",
        "host",
        "trailer",
        "te",
        "upgrade",
        "set-cookie",
        "authorization",
        "www-authenticate",
        "cache-control",
        "expires",
        "location",
        "retry-after",
        "vary",
    ]
    .iter()
    .any(|f| name.eq_ignore_ascii_case(f))
}

fn is_hop_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("connection")
        || name.eq_ignore_ascii_case("transfer-encoding")
        || name.eq_ignore_ascii_case("keep-alive")
        || name.eq_ignore_ascii_case("date")
}

/// Encodes the status line and headers of `resp` into `out` and decides the framing.
/// `keep_alive` is what the connection would like; the returned flag says whether the
/// connection may stay open after this response.
///
/// A malformed app header (a name that is not a token, a value with CR/LF) makes the
/// response an error the caller turns into a 500.
pub fn encode_head(
    out: &mut BytesMut,
    resp: &Response,
    meta: &RequestMeta,
    server_header: bool,
) -> Result<(BodyEncoder, bool), HttpError> {
    let mut app_length: Option<u64> = None;
    for (name, value) in &resp.headers {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(HttpError::BadAppHeader(format!(
                "invalid header name {name:?}"
            )));
        }
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(HttpError::BadAppHeader(format!(
                "header {name} has a value with CR, LF or NUL"
            )));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(value)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            match parsed {
                Some(n) if app_length.is_none_or(|m| m == n) => app_length = Some(n),
                _ => {
                    return Err(HttpError::BadAppHeader(format!(
                        "invalid Content-Length {:?}",
                        String::from_utf8_lossy(value)
                    )))
                }
            }
        }
    }
    let status = resp.status;
    if !(100..=999).contains(&status) {
        return Err(HttpError::BadAppHeader(format!("invalid status {status}")));
    }
    let body_allowed = status_has_body(status);
    // Trailers go after a chunked body, to a client that accepts them.
    let trailers = resp.trailers.is_some()
        && meta.te_trailers
        && meta.version == Version::Http11
        && app_length.is_none();
    let known = app_length.or_else(|| resp.body.len_hint().filter(|_| !trailers));
    let mut keep_alive = meta.keep_alive;
    let framing = if !body_allowed || meta.head {
        Framing::None
    } else if let Some(n) = known {
        Framing::Length(n)
    } else if meta.version == Version::Http11 && !meta.close_delimited {
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::Close
    };

    out.reserve(256);
    out.put_slice(meta.version.as_str().as_bytes());
    out.put_u8(b' ');
    let mut itoa = itoa::Buffer::new();
    out.put_slice(itoa.format(status).as_bytes());
    out.put_u8(b' ');
    match &resp.reason {
        Some(r) if !r.bytes().any(|b| b == b'\r' || b == b'\n') => out.put_slice(r.as_bytes()),
        _ => out.put_slice(reason(status).as_bytes()),
    }
    out.put_slice(b"\r\n");
    if server_header {
        out.put_slice(b"Server: forklift\r\n");
    }
    date::put_date_header(out);
    for (name, value) in &resp.headers {
        if is_hop_header(name) || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        out.put_slice(name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.put_slice(b"Content-Length: ");
            out.put_slice(itoa.format(n).as_bytes());
            out.put_slice(b"\r\n");
        }
        Framing::Chunked => out.put_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Close => {}
        Framing::None => {
            // HEAD gets the length a GET would have had, when it is known.
            if body_allowed {
                if let Some(n) = known {
                    out.put_slice(b"Content-Length: ");
                    out.put_slice(itoa.format(n).as_bytes());
                    out.put_slice(b"\r\n");
                }
            }
        }
    }
    if !keep_alive {
        out.put_slice(b"Connection: close\r\n");
    } else if meta.echo_keep_alive {
        out.put_slice(b"Connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
    let left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    Ok((
        BodyEncoder {
            framing,
            left,
            written: 0,
        },
        keep_alive,
    ))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A complete error response for `err`, always closing the connection.
pub fn encode_error(out: &mut BytesMut, err: &HttpError, version: Version) {
    let status = err.status();
    let body = err.body();
    let resp = Response::text(status, body);
    let meta = RequestMeta {
        version,
        keep_alive: false,
        head: false,
        echo_keep_alive: false,
        te_trailers: false,
        close_delimited: false,
    };
    if let Ok((mut enc, _)) = encode_head(out, &resp, &meta, true) {
        if let Body::Full(b) = &resp.body {
            enc.push(out, b);
        }
    }
}
