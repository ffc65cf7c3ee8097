//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally: chunk-size lines
//! with optional extensions, chunk data, the last chunk, and a trailer section that is
//! parsed like a header section, checked, and dropped.

use bytes::{Buf, BytesMut};

use super::field;
use crate::http::HttpError;

/// How many bytes a chunk-size line may take (hex digits plus extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// How many bytes of trailers a chunked body may carry.
const MAX_TRAILERS: usize = 16 * 1024;
/// How many trailer fields a chunked body may carry.
const MAX_TRAILER_FIELDS: usize = 32;

/// Decodes one chunked body. Feed it bytes as they arrive; it moves the data into an
/// output buffer and consumes the framing.
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    state: State,
    /// Data bytes so far, held to the body limit.
    total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Expecting a `size[;ext]\r\n` line.
    #[default]
    Size,
    /// Inside chunk data with this many bytes left.
    Data(u64),
    /// Expecting the `\r\n` after chunk data.
    DataEnd,
    /// After the last chunk: the trailer section, up to and including its empty line.
    Trailer,
    /// The body is complete.
    Done,
}

impl ChunkedDecoder {
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder::default()
    }

    /// Moves data from `buf` to `out`, consuming the chunk framing, until the body ends
    /// (`Ok(true)`, with the bytes after it left in `buf`) or `buf` runs out
    /// (`Ok(false)`). More than `max_body` data bytes is 413.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        out: &mut BytesMut,
        max_body: u64,
    ) -> Result<bool, HttpError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line_len) = self.size_line(buf, max_body)? else {
                        return Ok(false);
                    };
                    buf.advance(line_len);
                }
                State::Data(left) => {
                    let take = left.min(buf.len() as u64) as usize;
                    if take == 0 {
                        return Ok(false);
                    }
                    out.extend_from_slice(&buf[..take]);
                    buf.advance(take);
                    self.state = match left - take as u64 {
                        0 => State::DataEnd,
                        rest => State::Data(rest),
                    };
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(HttpError::BadChunk("chunk data not followed by CRLF"));
                        }
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(HttpError::BadChunk("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailer => {
                    let Some(len) = trailer_section(buf)? else {
                        return Ok(false);
                    };
                    buf.advance(len);
                    self.state = State::Done;
                }
                State::Done => return Ok(true),
            }
        }
    }

    /// Parses a chunk-size line at the start of `buf` and moves to the state it leads
    /// to. Returns the line's length with its CRLF, or `None` if it is incomplete.
    fn size_line(&mut self, buf: &[u8], max_body: u64) -> Result<Option<usize>, HttpError> {
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > MAX_CHUNK_LINE {
                return Err(HttpError::BadChunk("chunk-size line too long"));
            }
            return Ok(None);
        };
        if nl > MAX_CHUNK_LINE {
            return Err(HttpError::BadChunk("chunk-size line too long"));
        }
        if nl == 0 || buf[nl - 1] != b'\r' {
            return Err(HttpError::BadChunk("chunk-size line not ended by CRLF"));
        }
        let size = parse_chunk_size(&buf[..nl - 1])?;
        if self.total.saturating_add(size) > max_body {
            return Err(HttpError::BodyTooLarge);
        }
        self.total += size;
        self.state = if size == 0 {
            State::Trailer
        } else {
            State::Data(size)
        };
        Ok(Some(nl + 1))
    }
}

/// Parses `1a3f[;ext=value]`: hex digits, optional extensions. Rejects signs, `0x`,
/// whitespace before the digits or without an extension, control characters in an
/// extension, and sizes that overflow.
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
        let ext = rest.trim_ascii_start();
        ext.first() == Some(&b';') && ext.iter().all(|&b| field::is_value_byte(b))
    };
    if !rest_ok {
        return Err(HttpError::BadChunk("invalid chunk size"));
    }
    let s = std::str::from_utf8(&line[..digits_end]).expect("hex digits are ASCII");
    u64::from_str_radix(s, 16).map_err(|_| HttpError::BadChunk("invalid chunk size"))
}

/// Parses the trailer section at the start of `buf`, with the rules of a header
/// section. Returns its length once complete (`None` before). Fields that may not be
/// trailers are refused; the others are dropped (apps are not shown trailers).
fn trailer_section(buf: &[u8]) -> Result<Option<usize>, HttpError> {
    if buf.starts_with(b"\r\n") {
        return Ok(Some(2));
    }
    let mut storage = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let (len, fields) = match httparse::parse_headers(buf, &mut storage) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_TRAILERS {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(_) => return Err(HttpError::BadChunk("malformed trailer field")),
    };
    if len > MAX_TRAILERS {
        return Err(HttpError::HeadTooLarge);
    }
    for f in fields {
        let name = f.name.as_bytes();
        if field::forbidden_in_trailer(name) || field::is_framing_alias(name) {
            return Err(HttpError::BadChunk("field not allowed in trailers"));
        }
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> Result<(Vec<u8>, Vec<u8>), HttpError> {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::from(input);
        let mut out = BytesMut::new();
        if dec.decode(&mut buf, &mut out, 1 << 20)? {
            Ok((out.to_vec(), buf.to_vec()))
        } else {
            Err(HttpError::Timeout)
        }
    }

    #[test]
    fn body_and_rest() {
        let (body, rest) = run(b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nTrailer: X-Sum\r\n\r\nNEXT").unwrap();
        assert_eq!((&body[..], &rest[..]), (&b"abc"[..], &b"NEXT"[..]));
    }

    #[test]
    fn trailers_are_checked_like_fields() {
        for bad in [
            &b"0\r\nContent-Length: 9\r\n\r\n"[..],
            b"0\r\nhost: x\r\n\r\n",
            b"0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"0\r\nContent_Length: 9\r\n\r\n",
            b"0\r\nX: a\rb\r\n\r\n",
            b"0\r\nX: a\0b\r\n\r\n",
            b"0\r\nX : y\r\n\r\n",
            b"0\r\n y\r\n\r\n",
            b"0\r\nnocolon\r\n\r\n",
        ] {
            assert_eq!(
                run(bad).unwrap_err().status(),
                400,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many = format!("0\r\n{}\r\n", "X: y\r\n".repeat(40));
        assert_eq!(run(many.as_bytes()).unwrap_err().status(), 431);
    }

    #[test]
    fn extensions_refuse_control_characters() {
        assert!(run(b"5;a=\"b c\"\r\nhello\r\n0\r\n\r\n").is_ok());
        assert_eq!(
            run(b"5;a=b\rc\r\nhello\r\n0\r\n\r\n").unwrap_err().status(),
            400
        );
        assert_eq!(
            run(b"5;a=\x7f\r\nhello\r\n0\r\n\r\n").unwrap_err().status(),
            400
        );
    }

    #[test]
    fn body_limit_counts_every_chunk() {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"[..]);
        let err = dec.decode(&mut buf, &mut BytesMut::new(), 4).unwrap_err();
        assert_eq!(err.status(), 413);
    }
}
