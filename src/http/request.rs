//! Request decoding: a sans-IO state machine over a byte buffer. Feed it whatever bytes
//! arrived; it answers "need more", "send 100 Continue", a complete [`Request`], or an
//! [`HttpError`] that says which status to answer with before closing.

use bytes::{Buf, Bytes, BytesMut};

use super::{HttpError, Limits};
use crate::app::{Header, Request, Version};

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug)]
pub enum Decoded {
    /// A whole request (head and de-chunked body), consumed from the buffer.
    Request(Request, RequestMeta),
    /// The head asked for `Expect: 100-continue` and the body has not started: answer
    /// `100 Continue`, then keep reading. Reported once per request.
    Continue,
    /// Not enough bytes yet.
    NeedMore,
}

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
}

#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(ChunkState),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a `size[;ext]\r\n` line.
    Size,
    /// Inside chunk data with this many bytes left.
    Data(u64),
    /// Expecting the `\r\n` after chunk data.
    DataEnd,
    /// After the zero-size chunk: trailer lines until an empty line.
    Trailer,
}

#[derive(Debug)]
struct Pending {
    head: PartialRequest,
    body: BytesMut,
    state: BodyState,
    continue_sent: bool,
}

#[derive(Debug)]
struct PartialRequest {
    method: Bytes,
    target: Bytes,
    headers: Vec<Header>,
    meta: RequestMeta,
    expect_continue: bool,
}

/// The request decoder for one connection. It keeps the state of a body that arrives in
/// several reads; the head is re-parsed from the start until it is complete (httparse is
/// fast and heads are small).
#[derive(Debug, Default)]
pub struct Decoder {
    pending: Option<Pending>,
}

/// How many bytes a chunk-size line may take (hex digits plus extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// How many bytes of trailers a chunked body may carry.
const MAX_TRAILERS: usize = 16 * 1024;

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// True while a request's head has been read but its body has not.
    pub fn in_body(&self) -> bool {
        self.pending.is_some()
    }

    /// Consumes bytes from `buf` and reports what they amount to.
    pub fn decode(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Decoded, HttpError> {
        if self.pending.is_none() {
            let Some((head, len)) = parse_head(buf, limits)? else {
                return Ok(Decoded::NeedMore);
            };
            let head_bytes = buf.split_to(len).freeze();
            let state = body_state(&head, limits)?;
            let (partial, state) = head.into_partial(&head_bytes, state);
            if let BodyState::Length(0) = state {
                return Ok(Decoded::Request(partial.finish(Bytes::new()), partial.meta));
            }
            let capacity = match state {
                BodyState::Length(n) => n.min(1 << 20) as usize,
                BodyState::Chunked(_) => 0,
            };
            self.pending = Some(Pending {
                head: partial,
                body: BytesMut::with_capacity(capacity),
                state,
                continue_sent: false,
            });
        }
        let pending = self.pending.as_mut().expect("pending request");
        match read_body(pending, buf, limits)? {
            true => {
                let p = self.pending.take().expect("pending request");
                let meta = p.head.meta;
                Ok(Decoded::Request(p.head.finish(p.body.freeze()), meta))
            }
            false => {
                if pending.head.expect_continue && !pending.continue_sent && buf.is_empty() {
                    pending.continue_sent = true;
                    if pending.body.is_empty() {
                        return Ok(Decoded::Continue);
                    }
                }
                Ok(Decoded::NeedMore)
            }
        }
    }
}

impl PartialRequest {
    fn finish(&self, body: Bytes) -> Request {
        Request {
            method: self.method.clone(),
            target: self.target.clone(),
            version: self.meta.version,
            headers: self.headers.clone(),
            body,
            peer: None,
            local: None,
        }
    }
}

/// A parsed head, as offsets into the head bytes (so the request can share them).
struct Head {
    method: (usize, usize),
    target: (usize, usize),
    version: Version,
    headers: Vec<((usize, usize), (usize, usize))>,
    meta: RequestMeta,
    content_length: Option<u64>,
    chunked: bool,
    expect_continue: bool,
}

impl Head {
    fn into_partial(self, bytes: &Bytes, state: BodyState) -> (PartialRequest, BodyState) {
        let s = |(a, b): (usize, usize)| bytes.slice(a..b);
        let headers = self
            .headers
            .iter()
            .map(|&(n, v)| Header {
                name: s(n),
                value: s(v),
            })
            .collect();
        (
            PartialRequest {
                method: s(self.method),
                target: s(self.target),
                headers,
                meta: self.meta,
                expect_continue: self.expect_continue && self.version == Version::Http11,
            },
            state,
        )
    }
}

fn offsets(base: &[u8], part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    (start, start + part.len())
}

/// Parses the request head at the start of `buf`. `Ok(None)` when incomplete.
fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(Head, usize)>, HttpError> {
    // Tolerate empty lines before a request (RFC 9112 §2.2), as most servers do.
    let skip = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
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
            // `HTTP/2.0` is a version we do not speak (505); `LINE` is no version at all.
            let line = &data[..first_line_len(data)];
            let looks_http = line
                .split(|&b| b == b' ')
                .nth(2)
                .is_some_and(|v| v.starts_with(b"HTTP/") && v.len() >= 8 && v[5].is_ascii_digit());
            return Err(if looks_http {
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
    if len > limits.max_head {
        return Err(HttpError::HeadTooLarge);
    }
    let target = req.path.unwrap_or("");
    if target.len() > limits.max_uri {
        return Err(HttpError::UriTooLong);
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
    let mut headers = Vec::with_capacity(req.headers.len());
    let mut host_seen = false;
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
        } else if name.eq_ignore_ascii_case(b"host") {
            if host_seen {
                return Err(HttpError::Malformed("duplicate Host header".into()));
            }
            host_seen = true;
        }
        headers.push((offsets(buf, name), offsets(buf, h.value)));
    }
    if version == Version::Http11 && !host_seen {
        return Err(HttpError::Malformed(
            "HTTP/1.1 request without Host header".into(),
        ));
    }
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

fn first_line_len(data: &[u8]) -> usize {
    data.iter().position(|&b| b == b'\n').unwrap_or(data.len())
}

/// Limits that can be judged before the head is complete, so a client cannot make us
/// buffer an endless request line or header block.
fn check_partial_limits(data: &[u8], limits: &Limits) -> Result<(), HttpError> {
    let line = first_line_len(data);
    if line == data.len() {
        // Still inside the request line.
        if line > limits.max_uri + 32 {
            return Err(HttpError::UriTooLong);
        }
    } else if line > limits.max_uri + 32 {
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

fn body_state(head: &Head, limits: &Limits) -> Result<BodyState, HttpError> {
    if head.chunked {
        return Ok(BodyState::Chunked(ChunkState::Size));
    }
    let n = head.content_length.unwrap_or(0);
    if n > limits.max_body {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(BodyState::Length(n))
}

/// Moves body bytes from `buf` into the pending request. Returns true when the body is
/// complete.
fn read_body(p: &mut Pending, buf: &mut BytesMut, limits: &Limits) -> Result<bool, HttpError> {
    loop {
        match &mut p.state {
            BodyState::Length(left) => {
                let take = (*left).min(buf.len() as u64) as usize;
                p.body.extend_from_slice(&buf[..take]);
                buf.advance(take);
                *left -= take as u64;
                return Ok(*left == 0);
            }
            BodyState::Chunked(state) => match *state {
                ChunkState::Size => {
                    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(HttpError::BadChunk("chunk-size line too long"));
                        }
                        return Ok(false);
                    };
                    if nl == 0 || buf[nl - 1] != b'\r' {
                        return Err(HttpError::BadChunk("chunk-size line not ended by CRLF"));
                    }
                    let size = parse_chunk_size(&buf[..nl - 1])?;
                    buf.advance(nl + 1);
                    if p.body.len() as u64 + size > limits.max_body {
                        return Err(HttpError::BodyTooLarge);
                    }
                    *state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let take = left.min(buf.len() as u64) as usize;
                    if take == 0 {
                        return Ok(false);
                    }
                    p.body.extend_from_slice(&buf[..take]);
                    buf.advance(take);
                    *state = if left == take as u64 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take as u64)
                    };
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(HttpError::BadChunk("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_TRAILERS {
                            return Err(HttpError::HeadTooLarge);
                        }
                        return Ok(false);
                    };
                    if nl == 0 || buf[nl - 1] != b'\r' {
                        return Err(HttpError::BadChunk("trailer line not ended by CRLF"));
                    }
                    let empty = nl == 1;
                    if !empty && !buf[..nl - 1].contains(&b':') {
                        return Err(HttpError::BadChunk("malformed trailer field"));
                    }
                    buf.advance(nl + 1);
                    if empty {
                        return Ok(true);
                    }
                }
            },
        }
    }
}

/// Parses `1a3f[;ext=value]`: hex digits, optional extensions. Rejects signs, `0x`,
/// whitespace before the digits, and sizes that overflow.
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits_end == 0 {
        return Err(HttpError::BadChunk("invalid chunk size"));
    }
    if digits_end > 15 {
        return Err(HttpError::BadChunk("chunk size too large"));
    }
    let rest = &line[digits_end..];
    let rest_ok = rest.is_empty() || {
        let r = rest.trim_ascii_start();
        r.first() == Some(&b';') && !r.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
    };
    if !rest_ok {
        return Err(HttpError::BadChunk("invalid chunk size"));
    }
    let s = std::str::from_utf8(&line[..digits_end]).expect("hex digits are ASCII");
    u64::from_str_radix(s, 16).map_err(|_| HttpError::BadChunk("invalid chunk size"))
}
