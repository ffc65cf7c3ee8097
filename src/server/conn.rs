//! One HTTP connection as a sans-IO state machine, driven by every model.
//!
//! A driver owns the socket. It appends what it reads to [`Conn::inbuf`], calls
//! [`Conn::poll`], and does what the returned [`Step`] asks: write out
//! [`Conn::outbuf`], read more, wait for a wake-up, or close. The connection decodes
//! pipelined requests in order, calls the app, polls deferred replies and body streams
//! with the driver's waker, frames the body, and coalesces small responses into one
//! write. Keeping this in one place is what makes the models behave identically on the
//! wire.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use futures_util::Stream;

use super::Env;
use crate::app::{Body, BodyStream, BoxFuture, CallContext, Reply, Response, Version};
use crate::http::{self, BodyEncoder, Decoded, Decoder, Framing, HttpError, RequestMeta};

/// Flush the output buffer once it holds this much (and stop pulling body chunks).
const HIGH_WATER: usize = 64 * 1024;
/// Buffers above this size are released when a connection goes idle.
const BIG_BUFFER: usize = 64 * 1024;
/// How much to read from a file body at a time.
const FILE_CHUNK: usize = 64 * 1024;

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Write all of `outbuf`, clear it, then poll again.
    Flush,
    /// Read more bytes into `inbuf`, then poll again. `outbuf` is empty.
    Read,
    /// Waiting for the app: poll again when the waker fires. `outbuf` is empty.
    Pending,
    /// Write what is left in `outbuf`, then close the connection.
    Close,
}

enum State {
    /// Between requests, or reading one.
    Idle,
    /// The app returned a future; waiting for its response.
    Waiting {
        fut: BoxFuture<Response>,
        meta: RequestMeta,
        log: Option<LogLine>,
    },
    /// Sending a body that comes in pieces.
    Streaming {
        source: Source,
        enc: BodyEncoder,
        log: Option<LogLine>,
        status: u16,
    },
}

enum Source {
    Stream(BodyStream),
    File { file: File, offset: u64, left: u64 },
}

/// What the access log needs from a request, kept until its response is done.
struct LogLine {
    method: String,
    target: String,
    version: Version,
    start: Instant,
}

/// The per-connection state.
pub struct Conn {
    decoder: Decoder,
    pub inbuf: BytesMut,
    pub outbuf: BytesMut,
    state: State,
    /// Set once the connection must close after `outbuf` is flushed.
    closing: bool,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    /// Requests answered on this connection.
    pub served: u64,
    /// The request in progress, as the harakiri watchdog sees it.
    ticket: Option<super::harakiri::Ticket>,
    /// The connection closes because of a refused request: the client may still be
    /// sending, so the driver should drain before closing (see `linger_close`).
    pub error_close: bool,
}

impl Conn {
    pub fn new(peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Conn {
        Conn {
            decoder: Decoder::new(),
            // Buffers grow on first use: an idle connection should cost little.
            inbuf: BytesMut::new(),
            outbuf: BytesMut::new(),
            state: State::Idle,
            closing: false,
            peer,
            local,
            served: 0,
            ticket: None,
            error_close: false,
        }
    }

    /// True when nothing is in progress: no partial request, no response being made.
    /// An idle connection may be closed (keep-alive timeout, shutdown) without losing
    /// anything.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
            && self.inbuf.is_empty()
            && self.outbuf.is_empty()
            && !self.decoder.in_body()
    }

    /// True while a request has started arriving but is not complete.
    pub fn mid_request(&self) -> bool {
        matches!(self.state, State::Idle) && (!self.inbuf.is_empty() || self.decoder.in_body())
    }

    /// The client stopped sending (read returned 0). Whatever was mid-request is
    /// dropped; a response in progress can still be written.
    pub fn read_closed(&mut self) {
        self.closing = true;
    }

    /// Answers a request that took too long to arrive with 408 and closes.
    pub fn timeout(&mut self) {
        if matches!(self.state, State::Idle) {
            self.inbuf.clear();
            http::encode_error(&mut self.outbuf, &HttpError::Timeout, Version::Http11);
        }
        self.closing = true;
        self.error_close = true;
    }

    /// Advances as far as possible without I/O. `prefer_close` is asked, when a response
    /// head is written, whether other clients are waiting for this worker; if so the
    /// response says `Connection: close` (used by the one-connection-at-a-time models).
    pub fn poll(
        &mut self,
        env: &Env,
        call: &CallContext,
        cx: &mut Context<'_>,
        prefer_close: &dyn Fn() -> bool,
    ) -> Step {
        loop {
            if self.outbuf.len() >= HIGH_WATER {
                return Step::Flush;
            }
            match &mut self.state {
                State::Idle => {
                    if self.closing {
                        return Step::Close;
                    }
                    match self.decoder.decode(&mut self.inbuf, &env.config.limits) {
                        Ok(Decoded::NeedMore) => return self.wait_step(Step::Read),
                        Ok(Decoded::Continue) => {
                            self.outbuf
                                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                            return Step::Flush;
                        }
                        Ok(Decoded::Request(mut req, meta)) => {
                            req.peer = self.peer;
                            req.local = self.local;
                            if let Some(dog) = &env.harakiri {
                                self.ticket = Some(dog.begin(|| {
                                    format!(
                                        "{} {}",
                                        req.method(),
                                        String::from_utf8_lossy(&req.target)
                                    )
                                }));
                            }
                            let log = env.log.enabled().then(|| LogLine {
                                method: req.method().to_owned(),
                                target: String::from_utf8_lossy(&req.target).into_owned(),
                                version: meta.version,
                                start: Instant::now(),
                            });
                            match env.app.call(req, call) {
                                Reply::Ready(resp) => {
                                    self.start(env, resp, meta, log, prefer_close)
                                }
                                Reply::Later(fut) => self.state = State::Waiting { fut, meta, log },
                            }
                        }
                        Err(e) => {
                            let version = Version::Http11;
                            http::encode_error(&mut self.outbuf, &e, version);
                            env.log.protocol_error(self.peer, &e);
                            self.inbuf.clear();
                            self.closing = true;
                            self.error_close = true;
                        }
                    }
                }
                State::Waiting { fut, .. } => match fut.as_mut().poll(cx) {
                    Poll::Ready(resp) => {
                        let State::Waiting { meta, log, .. } =
                            std::mem::replace(&mut self.state, State::Idle)
                        else {
                            unreachable!()
                        };
                        self.start(env, resp, meta, log, prefer_close);
                    }
                    Poll::Pending => return self.wait_step(Step::Pending),
                },
                State::Streaming { source, enc, .. } => {
                    let next = match source {
                        Source::Stream(s) => match Pin::new(s).poll_next(cx) {
                            Poll::Pending => return self.wait_step(Step::Pending),
                            Poll::Ready(None) => Ok(None),
                            Poll::Ready(Some(Ok(chunk))) => {
                                enc.push(&mut self.outbuf, &chunk);
                                Ok(Some(()))
                            }
                            Poll::Ready(Some(Err(e))) => Err(e),
                        },
                        Source::File { file, offset, left } => {
                            read_file_chunk(file, offset, left, enc, &mut self.outbuf)
                        }
                    };
                    match next {
                        Ok(Some(())) if !enc.is_full() => {}
                        Ok(_) => self.finish_body(env),
                        Err(e) => {
                            // The body broke off: the framing cannot be completed, so
                            // the client learns it from the connection closing.
                            env.log.app_error(&format!("response body failed: {e}"));
                            self.end_streaming(env, false);
                            self.closing = true;
                        }
                    }
                }
            }
        }
    }

    fn wait_step(&mut self, step: Step) -> Step {
        if !self.outbuf.is_empty() {
            return Step::Flush;
        }
        // Do not keep a large buffer (a big body went through) on an idle connection.
        if step == Step::Read && self.inbuf.is_empty() && self.inbuf.capacity() > BIG_BUFFER {
            self.inbuf = BytesMut::new();
        }
        if self.outbuf.capacity() > BIG_BUFFER {
            self.outbuf = BytesMut::new();
        }
        step
    }

    fn start(
        &mut self,
        env: &Env,
        resp: Response,
        meta: RequestMeta,
        log: Option<LogLine>,
        prefer_close: &dyn Fn() -> bool,
    ) {
        let mut meta = meta;
        if meta.keep_alive && (env.shutdown.is_triggered() || prefer_close()) {
            meta.keep_alive = false;
            meta.echo_keep_alive = false;
        }
        let mark = self.outbuf.len();
        let (resp, mut enc, keep_alive) =
            match http::encode_head(&mut self.outbuf, &resp, &meta, env.config.server_header) {
                Ok((enc, ka)) => (resp, enc, ka),
                Err(e) => {
                    self.outbuf.truncate(mark);
                    env.log.app_error(&e.to_string());
                    let resp = Response::text(500, "Internal Server Error\n");
                    let (enc, ka) =
                        http::encode_head(&mut self.outbuf, &resp, &meta, env.config.server_header)
                            .expect("a plain 500 always encodes");
                    (resp, enc, ka)
                }
            };
        if !keep_alive {
            self.closing = true;
        }
        let status = resp.status;
        let source = match resp.body {
            Body::Empty => None,
            Body::Full(b) => {
                enc.push(&mut self.outbuf, &b);
                None
            }
            Body::Stream(s) => Some(Source::Stream(s)),
            Body::File { file, offset, len } => Some(Source::File {
                file,
                offset,
                left: len,
            }),
        };
        match source {
            Some(source) if enc.framing() != Framing::None && !enc.is_full() => {
                self.state = State::Streaming {
                    source,
                    enc,
                    log,
                    status,
                };
            }
            _ => {
                // Dropping an unsent stream tells the app it is done (WSGI close()).
                drop(source);
                self.done(env, &mut enc, true, log, status);
            }
        }
    }

    fn finish_body(&mut self, env: &Env) {
        self.end_streaming(env, true);
    }

    fn end_streaming(&mut self, env: &Env, complete: bool) {
        let State::Streaming {
            mut enc,
            log,
            status,
            source,
        } = std::mem::replace(&mut self.state, State::Idle)
        else {
            return;
        };
        drop(source);
        self.done(env, &mut enc, complete, log, status);
    }

    /// A response is over: end its framing (when the body is `complete`), close if the
    /// app sent less than it promised, and account for the request.
    fn done(
        &mut self,
        env: &Env,
        enc: &mut BodyEncoder,
        complete: bool,
        log: Option<LogLine>,
        status: u16,
    ) {
        if complete {
            if let Err(short) = enc.finish(&mut self.outbuf) {
                env.log.app_error(&format!(
                    "response shorter than its Content-Length by {} bytes; closing",
                    short.missing
                ));
                self.closing = true;
            }
        }
        self.served += 1;
        self.ticket = None;
        env.log.request(
            self.peer,
            log.as_ref().map(LogLine::view),
            status,
            enc.written,
        );
    }
}

impl LogLine {
    fn view(&self) -> super::log::RequestView<'_> {
        super::log::RequestView {
            method: &self.method,
            target: &self.target,
            version: self.version,
            start: self.start,
        }
    }
}

fn read_file_chunk(
    file: &File,
    offset: &mut u64,
    left: &mut u64,
    enc: &mut BodyEncoder,
    out: &mut BytesMut,
) -> io::Result<Option<()>> {
    if *left == 0 {
        return Ok(None);
    }
    let want = (*left).min(FILE_CHUNK as u64) as usize;
    let mut buf = vec![0u8; want];
    let n = file.read_at(&mut buf, *offset)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shorter than announced",
        ));
    }
    enc.push(out, &buf[..n]);
    *offset += n as u64;
    *left -= n as u64;
    Ok(Some(()))
}
