//! Request decoding: a sans-IO state machine over a byte buffer. Feed it whatever bytes
//! arrived; it answers "need more", "send 100 Continue", a complete [`Request`], or an
//! [`HttpError`] that says which status to answer with before closing. [`head`] parses
//! and checks the request head, [`target`] the request-target form, [`chunked`] the
//! chunked body and its trailers, [`field`] the rules they share.

mod chunked;
mod field;
mod head;
mod target;

use bytes::{Buf, Bytes, BytesMut};

use super::{HttpError, Limits};
use crate::app::{Header, Request, Version};
pub use chunked::ChunkedDecoder;
pub use head::RequestMeta;
use head::{parse_head, Head};

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a request moves once; boxing would allocate each time
pub enum Decoded {
    /// A whole request (head and de-chunked body), consumed from the buffer.
    Request(Request, RequestMeta),
    /// The head asked for `Expect: 100-continue` and the body has not started: answer
    /// `100 Continue`, then keep reading. Reported once per request.
    Continue,
    /// Not enough bytes yet.
    NeedMore,
    /// (From [`Decoder::decode_head_first`] only.) A request whose body has not all
    /// arrived: its `body` holds the bytes already here, [`Decoder::body_piece`] gives
    /// the rest. `expect_continue`: the client waits for `100 Continue` before sending
    /// the body.
    Head {
        req: Request,
        meta: RequestMeta,
        expect_continue: bool,
    },
}

/// A piece of a body decoded after its head (see [`Decoder::body_piece`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Data(Bytes),
    /// The body is complete (bytes after it stay in the buffer).
    End,
    NeedMore,
}

#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
}

#[derive(Debug)]
struct Pending {
    head: PartialRequest,
    body: BytesMut,
    state: BodyState,
    continue_sent: bool,
}

#[derive(Debug, Clone)]
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

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// True while a request's head has been read but its body has not.
    pub fn in_body(&self) -> bool {
        self.pending.is_some()
    }

    /// Like [`Decoder::decode`], but a request whose body has not all arrived is handed
    /// out at once as [`Decoded::Head`]; then [`Decoder::body_piece`] gives the rest
    /// of its body, and must be called until it says [`Piece::End`] before this is
    /// called again.
    pub fn decode_head_first(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Decoded, HttpError> {
        debug_assert!(self.pending.is_none(), "a streamed body is still pending");
        let expect_continue = match self.decode(buf, limits)? {
            // The client waits for `100 Continue` before it sends the body.
            Decoded::Continue => true,
            // Part of the body (or of its framing) is here already.
            Decoded::NeedMore if self.pending.is_some() => false,
            d => return Ok(d),
        };
        let p = self.pending.as_mut().expect("pending request");
        p.continue_sent = true;
        let body = std::mem::take(&mut p.body).freeze();
        Ok(Decoded::Head {
            // The head stays for the body pieces that follow.
            req: p.head.clone().finish(body),
            meta: p.head.meta,
            expect_continue,
        })
    }

    /// The next piece of the body of the request [`Decoder::decode_head_first`] handed
    /// out as a head, from `buf`.
    pub fn body_piece(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Piece, HttpError> {
        let Some(p) = self.pending.as_mut() else {
            return Ok(Piece::End);
        };
        let (data, done) = match &mut p.state {
            BodyState::Length(left) => {
                let take = (*left).min(buf.len() as u64) as usize;
                *left -= take as u64;
                (buf.split_to(take).freeze(), *left == 0)
            }
            BodyState::Chunked(dec) => {
                let mut out = BytesMut::new();
                let done = dec.decode(buf, &mut out, limits.max_body)?;
                (out.freeze(), done)
            }
        };
        if done {
            self.pending = None;
        }
        Ok(match (data.is_empty(), done) {
            (false, _) => Piece::Data(data),
            (true, true) => Piece::End,
            (true, false) => Piece::NeedMore,
        })
    }

    /// Consumes bytes from `buf` and reports what they amount to.
    pub fn decode(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Decoded, HttpError> {
        if self.pending.is_none() {
            let Some((head, len)) = parse_head(buf, limits)? else {
                return Ok(Decoded::NeedMore);
            };
            let head_bytes = buf.split_to(len).freeze();
            let state = body_state(&head, limits)?;
            let partial = PartialRequest::new(head, &head_bytes);
            if let BodyState::Length(0) = state {
                let meta = partial.meta;
                return Ok(Decoded::Request(partial.finish(Bytes::new()), meta));
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
    /// The request parts of `head`, sharing `bytes` (the head's bytes).
    fn new(head: Head, bytes: &Bytes) -> PartialRequest {
        let s = |(a, b): (usize, usize)| bytes.slice(a..b);
        let headers = head
            .headers
            .iter()
            .map(|&(n, v)| Header {
                name: s(n),
                value: s(v),
            })
            .collect();
        PartialRequest {
            method: s(head.method),
            target: s(head.target),
            headers,
            meta: head.meta,
            expect_continue: head.expect_continue && head.version == Version::Http11,
        }
    }

    fn finish(self, body: Bytes) -> Request {
        Request {
            method: self.method,
            target: self.target,
            version: self.meta.version,
            headers: self.headers,
            body,
            rest: None,
            peer: None,
            local: None,
            cgi_vars: Vec::new(),
        }
    }
}

fn body_state(head: &Head, limits: &Limits) -> Result<BodyState, HttpError> {
    if head.chunked {
        return Ok(BodyState::Chunked(ChunkedDecoder::new()));
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
    match &mut p.state {
        BodyState::Length(left) => {
            let take = (*left).min(buf.len() as u64) as usize;
            p.body.extend_from_slice(&buf[..take]);
            buf.advance(take);
            *left -= take as u64;
            Ok(*left == 0)
        }
        BodyState::Chunked(dec) => dec.decode(buf, &mut p.body, limits.max_body),
    }
}
