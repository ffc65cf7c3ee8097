//! A small sans-IO HTTP/1.1 response parser: the head through httparse, then a body
//! decoder (Content-Length, chunked, close-delimited) that counts bytes without copying.

use thiserror::Error;

/// Most headers a response may carry before it is called malformed.
const MAX_HEADERS: usize = 64;

/// Why a response could not be parsed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    #[error("bad response head: {0}")]
    Head(String),
    #[error("bad Content-Length")]
    ContentLength,
    #[error("bad chunked encoding")]
    Chunked,
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// The body runs until the server closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes the head took, up to and including the blank line.
    pub len: usize,
    pub framing: Framing,
    /// Whether the connection stays open after this response.
    pub keep_alive: bool,
    /// The `Server:` header, only when asked for (the report needs it once).
    pub server: Option<String>,
}

impl Head {
    /// An interim response (100 Continue, 103 Early Hints) that a final one follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parses a response head at the start of `buf`. `Ok(None)` means more bytes are needed.
/// `head_request` says the request was HEAD (no body whatever the headers say).
pub fn parse_head(
    buf: &[u8],
    head_request: bool,
    want_server: bool,
) -> Result<Option<Head>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ParseError::Head(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut keep_alive = http11;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut server = None;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = parse_decimal(h.value).ok_or(ParseError::ContentLength)?;
            if length.is_some_and(|l| l != v) {
                return Err(ParseError::ContentLength);
            }
            length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding decides; anything but chunked last is close-delimited.
            chunked = last_token(h.value).eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            for tok in h.value.split(|&b| b == b',') {
                let tok = trim(tok);
                if tok.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if want_server && name.eq_ignore_ascii_case(b"server") {
            server = Some(String::from_utf8_lossy(h.value).into_owned());
        }
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(l) = length {
        Framing::Length(l)
    } else {
        Framing::Close
    };
    if framing == Framing::Close {
        keep_alive = false;
    }
    Ok(Some(Head {
        status,
        len,
        framing,
        keep_alive,
        server,
    }))
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn last_token(v: &[u8]) -> &[u8] {
    trim(v.rsplit(|&b| b == b',').next().unwrap_or(v))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { value: u64, digits: u8 },
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
}

/// Consumes a body, counting its payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyDecoder {
    state: BodyState,
    /// The size of the chunk whose size line is still being read.
    pending_size: u64,
    /// Payload bytes seen so far (de-chunked).
    pub body_len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyState {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
            }),
            Framing::Close => BodyState::Close,
        };
        BodyDecoder {
            state,
            pending_size: 0,
            body_len: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == BodyState::Done
    }

    /// Whether the body ends when the connection does.
    pub fn is_close_delimited(&self) -> bool {
        self.state == BodyState::Close
    }

    /// Whether the body had a Content-Length that was not reached.
    pub fn is_short(&self) -> bool {
        matches!(self.state, BodyState::Length(_))
    }

    /// Feeds bytes; returns how many belong to this body. The body is complete when
    /// [`is_done`](Self::is_done) turns true; the rest of `data` is the next response.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, ParseError> {
        match &mut self.state {
            BodyState::Done => Ok(0),
            BodyState::Close => {
                self.body_len += data.len() as u64;
                Ok(data.len())
            }
            BodyState::Length(rem) => {
                let n = (*rem).min(data.len() as u64);
                *rem -= n;
                self.body_len += n;
                if *rem == 0 {
                    self.state = BodyState::Done;
                }
                Ok(n as usize)
            }
            BodyState::Chunked(_) => self.feed_chunked(data),
        }
    }

    fn feed_chunked(&mut self, data: &[u8]) -> Result<usize, ParseError> {
        let BodyState::Chunked(mut st) = self.state else {
            unreachable!("feed_chunked outside a chunked body")
        };
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            st = match st {
                Chunk::Size { value, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        if digits >= 15 {
                            return Err(ParseError::Chunked);
                        }
                        Chunk::Size {
                            value: value * 16 + d,
                            digits: digits + 1,
                        }
                    }
                    b';' | b' ' | b'\t' if digits > 0 => {
                        self.pending_size = value;
                        Chunk::Ext
                    }
                    b'\r' if digits > 0 => {
                        self.pending_size = value;
                        Chunk::SizeLf
                    }
                    b'\n' if digits > 0 => Self::after_size(value),
                    _ => return Err(ParseError::Chunked),
                },
                Chunk::Ext => {
                    if b == b'\n' {
                        Self::after_size(self.pending_size)
                    } else {
                        Chunk::Ext
                    }
                }
                Chunk::SizeLf => {
                    if b == b'\n' {
                        Self::after_size(self.pending_size)
                    } else {
                        return Err(ParseError::Chunked);
                    }
                }
                Chunk::Data(rem) => {
                    let n = rem.min((data.len() - i) as u64);
                    self.body_len += n;
                    i += n as usize;
                    let left = rem - n;
                    st = if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    };
                    continue;
                }
                Chunk::DataCr => match b {
                    b'\r' => Chunk::DataLf,
                    b'\n' => Chunk::Size {
                        value: 0,
                        digits: 0,
                    },
                    _ => return Err(ParseError::Chunked),
                },
                Chunk::DataLf => match b {
                    b'\n' => Chunk::Size {
                        value: 0,
                        digits: 0,
                    },
                    _ => return Err(ParseError::Chunked),
                },
                Chunk::TrailerStart => match b {
                    b'\r' => Chunk::TrailerLf,
                    b'\n' => {
                        self.state = BodyState::Done;
                        return Ok(i + 1);
                    }
                    _ => Chunk::TrailerLine,
                },
                Chunk::TrailerLine => {
                    if b == b'\n' {
                        Chunk::TrailerStart
                    } else {
                        Chunk::TrailerLine
                    }
                }
                Chunk::TrailerLf => match b {
                    b'\n' => {
                        self.state = BodyState::Done;
                        return Ok(i + 1);
                    }
                    _ => return Err(ParseError::Chunked),
                },
            };
            i += 1;
        }
        self.state = BodyState::Chunked(st);
        Ok(i)
    }

    fn after_size(size: u64) -> Chunk {
        if size == 0 {
            Chunk::TrailerStart
        } else {
            Chunk::Data(size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Head {
        parse_head(s.as_bytes(), false, true).unwrap().unwrap()
    }

    #[test]
    fn heads() {
        let h = head("HTTP/1.1 200 OK\r\nServer: x/1\r\nContent-Length: 11\r\n\r\nHello world");
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Length(11));
        assert!(h.keep_alive);
        assert_eq!(h.server.as_deref(), Some("x/1"));
        assert_eq!(h.len, 52);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n");
        assert!(h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);
        let h = head("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Empty);
        let h = head("HTTP/1.1 100 Continue\r\n\r\n");
        assert!(h.is_interim());
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(h.server, None);
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nConte", false, false),
            Ok(None)
        );
        assert!(parse_head(b"garbage\r\n\r\n", false, false).is_err());
        assert_eq!(
            parse_head(
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                false,
                false
            ),
            Err(ParseError::ContentLength)
        );
        assert_eq!(
            parse_head(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                false
            ),
            Err(ParseError::ContentLength)
        );
    }

    #[test]
    fn length_body() {
        let mut d = BodyDecoder::new(Framing::Length(5));
        assert_eq!(d.feed(b"abc").unwrap(), 3);
        assert!(!d.is_done() && d.is_short());
        assert_eq!(d.feed(b"deHTTP").unwrap(), 2);
        assert!(d.is_done());
        assert_eq!(d.body_len, 5);
        assert!(BodyDecoder::new(Framing::Length(0)).is_done());
        assert!(BodyDecoder::new(Framing::Empty).is_done());
    }

    #[test]
    fn close_body() {
        let mut d = BodyDecoder::new(Framing::Close);
        assert_eq!(d.feed(b"abc").unwrap(), 3);
        assert!(d.is_close_delimited() && !d.is_done());
        assert_eq!(d.body_len, 3);
    }

    fn chunked_all_splits(body: &[u8], payload: u64, rest: usize) {
        // Every way of cutting the input in two must give the same result.
        for cut in 0..=body.len() {
            let mut d = BodyDecoder::new(Framing::Chunked);
            let a = d.feed(&body[..cut]).unwrap();
            if !d.is_done() {
                assert_eq!(a, cut, "a part is consumed whole unless the body ended");
            }
            let b = d.feed(&body[cut..]).unwrap();
            assert!(d.is_done(), "cut {cut}");
            assert_eq!(d.body_len, payload);
            assert_eq!(body.len() - (a + b), rest, "cut {cut}");
        }
    }

    #[test]
    fn chunked_bodies() {
        chunked_all_splits(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 11, 0);
        chunked_all_splits(b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nNEXT", 5, 4);
        chunked_all_splits(b"A\r\n0123456789\r\n0\r\n\r\n", 10, 0);
        chunked_all_splits(b"3\nabc\n0\n\n", 3, 0);
    }

    #[test]
    fn bad_chunked() {
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.feed(b"zz\r\n").is_err());
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.feed(b"3\r\nabcX").is_err());
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.feed(b"ffffffffffffffffff\r\n").is_err());
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.feed(b"\r\n").is_err());
    }
}
