//! One HTTP connection as a sans-IO state machine, driven by every model.
//!
//! A driver owns the socket. It appends what it reads to [`Conn::inbuf`] (and calls
//! [`Conn::received`]), calls [`Conn::poll`], and does what the returned [`Step`] asks:
//! write out [`Conn::outbuf`], read more, wait for a wake-up, shut down its sending
//! side, or close. Between steps it waits at most until [`Conn::deadline`], and then
//! calls [`Conn::expire`].
//!
//! Everything a connection may do is decided here, once for every model: pipelined
//! requests decoded in order, the app called (a panic answered with 500), deferred
//! replies and body streams polled with the driver's waker, small responses coalesced
//! into one write, the worker's request count for `--max-requests`, the keep-alive and
//! request timeouts, and how the connection ends: closed at once, or, after an error
//! response while the client may still be sending, with its sending side shut down and
//! input drained for a moment (lingering), so the client reads the response rather
//! than a reset.
//!
//! For an app that streams request bodies (`Handler::streams_body`), the app is called
//! once the head is in and the body follows through a bounded pipe
//! ([`crate::app::RequestBody`]) while the app works: on [`Step::Pending`] the driver
//! keeps reading as long as [`Conn::wants_input`] says so (not while the pipe is full),
//! which is also how the end of the client's stream reaches the app as it happens.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::Stream;

use super::log::LogLine;
use super::Env;
use crate::app::body::{self as request_body, BodySender};
use crate::app::{Body, BodyStream, BoxFuture, CallContext, Reply, Request, Response, Version};
use crate::http::{
    self, BodyEncoder, Decoded, Decoder, Framing, HttpError, Limits, Piece, RequestMeta,
    UwsgiDecoder,
};
use crate::rt::panic_message;
use crate::server::listen::Protocol;

/// Flush the output buffer once it holds this much (and stop pulling body chunks).
const HIGH_WATER: usize = 64 * 1024;
/// Buffers above this size are released when a connection goes idle.
const BIG_BUFFER: usize = 64 * 1024;
/// How much to read from a file body at a time.
const FILE_CHUNK: usize = 64 * 1024;
/// While the app works on a request whose body is all in, input (pipelined requests)
/// is read ahead up to this much, to see the client leave.
const READ_AHEAD: usize = 64 * 1024;
/// How long a connection that ends with an error response keeps draining input after
/// shutting down its sending side, so the client reads the response before a reset.
pub const LINGER: Duration = Duration::from_millis(500);

/// How long a stopping worker keeps a connection that has nothing in progress: a
/// keep-alive client about to send its next request, or a client that has just
/// connected and whose first request is on its way, is answered (with
/// `Connection: close`) rather than cut off. Counted from the start of the stop.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Write all of `outbuf`, clear it, then poll again.
    Flush,
    /// Read more bytes into `inbuf` (on end of stream call [`Conn::read_closed`]), then
    /// poll again. `outbuf` is empty. Wait at most until [`Conn::deadline`].
    Read,
    /// Waiting for the app: poll again when the waker fires. `outbuf` is empty. While
    /// [`Conn::wants_input`] is true, also read (as for [`Step::Read`]) when input
    /// comes, and poll again.
    Pending,
    /// A request has arrived whole, and the connection is gated (see
    /// [`Conn::set_gate`]): admit it (take a slot, hand it to a thread), open the gate,
    /// then poll again to call the app. `outbuf` is empty.
    Admit,
    /// Shut down the sending side of the socket, then poll again. `outbuf` is empty.
    ShutdownWrite,
    /// Close the socket. `outbuf` is empty.
    Close,
}

enum State {
    /// Between requests, or reading one.
    Idle,
    /// A request arrived whole and waits to be admitted before the app is called.
    Admitting { req: Request, meta: RequestMeta },
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

/// How the connection ends once `closing` is set and the output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Close at once.
    Close,
    /// The client may still be sending: shut down the sending side first, then drain.
    Linger,
    /// Sending side shut down; draining input until the client closes or this instant.
    Draining(Instant),
}

/// The request decoder of a connection, by the protocol of its listener.
enum Codec {
    Http(Decoder),
    Uwsgi(UwsgiDecoder),
}

impl Codec {
    fn in_body(&self) -> bool {
        match self {
            Codec::Http(d) => d.in_body(),
            Codec::Uwsgi(d) => d.in_body(),
        }
    }

    fn decode(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Decoded, HttpError> {
        match self {
            Codec::Http(d) => d.decode(buf, limits),
            Codec::Uwsgi(d) => d.decode(buf, limits),
        }
    }

    /// For an app that streams request bodies: the head as soon as it is here (HTTP).
    /// A uwsgi request comes whole: a front server (nginx) buffers the body before it
    /// passes the request on, so waiting for it costs nothing.
    fn decode_head_first(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Decoded, HttpError> {
        match self {
            Codec::Http(d) => d.decode_head_first(buf, limits),
            Codec::Uwsgi(d) => d.decode(buf, limits),
        }
    }

    /// The next piece of a body whose head came first ([`Piece::End`] when none is
    /// pending, as for every uwsgi request).
    fn body_piece(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Piece, HttpError> {
        match self {
            Codec::Http(d) => d.body_piece(buf, limits),
            Codec::Uwsgi(_) => Ok(Piece::End),
        }
    }

    /// A fresh decoder of the same protocol (after a refused body).
    fn reset(&mut self) {
        *self = match self {
            Codec::Http(_) => Codec::Http(Decoder::new()),
            Codec::Uwsgi(_) => Codec::Uwsgi(UwsgiDecoder::new()),
        };
    }
}

/// The per-connection state.
pub struct Conn {
    decoder: Codec,
    pub inbuf: BytesMut,
    pub outbuf: BytesMut,
    state: State,
    /// Set once the connection must end after the response in progress (if any).
    closing: bool,
    /// How it ends (see [`Ending`]); decided when `closing` is set.
    ending: Ending,
    /// The client closed its sending side (a read returned 0).
    read_eof: bool,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    /// When input last arrived (or the connection opened): the keep-alive and body
    /// timeouts count from here.
    last_input: Instant,
    /// When the first byte of the request head being read arrived: the header timeout
    /// counts from here, however the rest trickles in.
    head_started: Option<Instant>,
    /// Since when the driver has been waiting to write output the client does not take.
    write_blocked: Option<Instant>,
    /// Requests wait in [`State::Admitting`] until the driver admits them.
    gated: bool,
    /// Requests answered on this connection.
    pub served: u64,
    /// The request in progress, as the harakiri watchdog sees it.
    ticket: Option<super::harakiri::Ticket>,
    /// The request in progress, as the stats scoreboard counts it.
    ops: Option<crate::ops::Ticket>,
    /// For an app that streams request bodies: the pipe of the request in progress,
    /// which the body goes through while it arrives and which tells the app when the
    /// client leaves.
    feed: Option<BodySender>,
    /// The feed was full when last looked at: the wait for more body starts again
    /// once the app makes room.
    feed_full: bool,
    /// The trailer fields of the response in progress, sent after its body.
    trailers: Option<crate::app::Trailers>,
    /// Counts this connection open on the scoreboard while it lives.
    _open: crate::ops::ConnGuard,
}

impl Conn {
    /// A connection accepted from a listener speaking `protocol`; `peer` and `local`
    /// are its addresses when the transport has them (TCP).
    pub fn new(peer: Option<SocketAddr>, local: Option<SocketAddr>, protocol: Protocol) -> Conn {
        Conn {
            decoder: match protocol {
                Protocol::Http => Codec::Http(Decoder::new()),
                Protocol::Uwsgi => Codec::Uwsgi(UwsgiDecoder::new()),
            },
            // Buffers grow on first use: an idle connection should cost little.
            inbuf: BytesMut::new(),
            outbuf: BytesMut::new(),
            state: State::Idle,
            closing: false,
            ending: Ending::Close,
            read_eof: false,
            peer,
            local,
            last_input: Instant::now(),
            head_started: None,
            write_blocked: None,
            gated: false,
            served: 0,
            ticket: None,
            ops: None,
            feed: None,
            feed_full: false,
            trailers: None,
            _open: crate::ops::conn_guard(),
        }
    }

    /// True when nothing is in progress: no partial request, no response being made,
    /// and the connection is not ending. An idle connection may be closed (keep-alive
    /// timeout, shutdown, a saturated worker) without losing anything.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
            && !self.closing
            && self.inbuf.is_empty()
            && self.outbuf.is_empty()
            && !self.decoder.in_body()
    }

    /// Since when an idle keep-alive connection (one that has answered a request) has
    /// waited for its next request.
    pub fn idle_since(&self) -> Option<Instant> {
        (self.is_idle() && self.served > 0).then_some(self.last_input)
    }

    /// True until the connection's first request has been handed to the app (it may
    /// be on its way, or partly here).
    pub fn awaiting_first(&self) -> bool {
        self.served == 0 && matches!(self.state, State::Idle) && !self.closing
    }

    /// True while a request has started arriving but is not complete.
    fn mid_request(&self) -> bool {
        matches!(self.state, State::Idle) && (!self.inbuf.is_empty() || self.decoder.in_body())
    }

    /// Input arrived at `now` (the driver appended it to `inbuf`).
    pub fn received(&mut self, now: Instant) {
        self.last_input = now;
        if self.head_started.is_none() && !self.decoder.in_body() {
            self.head_started = Some(now);
        }
    }

    /// The driver could not write all of `outbuf` and waits for the socket to take more
    /// (each call after progress restarts the send timeout).
    pub fn write_blocked(&mut self, now: Instant) {
        self.write_blocked = Some(now);
    }

    /// The driver wrote all it had.
    pub fn write_done(&mut self) {
        self.write_blocked = None;
    }

    /// Gates the app: while set, a request that has arrived whole waits for the driver
    /// to admit it ([`Step::Admit`]), so a driver can bound the requests in the app, or
    /// read a request on one thread and run it on another.
    pub fn set_gate(&mut self, gated: bool) {
        self.gated = gated;
    }

    /// The client stopped sending (a read returned 0). A partial request is dropped; a
    /// response in progress is still written, then the connection closes. An app that
    /// streams request bodies hears that the client left.
    pub fn read_closed(&mut self) {
        self.read_eof = true;
        if let Some(feed) = &self.feed {
            feed.gone();
        }
        self.end(false);
    }

    /// True while the app works on a request whose body (or whose client's leaving) it
    /// takes as it comes: on [`Step::Pending`] the driver should read when input
    /// arrives. False while the body pipe is full, so a client that sends faster than
    /// the app reads is held back by TCP.
    pub fn wants_input(&self) -> bool {
        let Some(feed) = &self.feed else {
            return false;
        };
        if self.read_eof
            || matches!(self.ending, Ending::Draining(_))
            || !matches!(self.state, State::Waiting { .. } | State::Streaming { .. })
        {
            return false;
        }
        if feed.is_over() {
            self.inbuf.len() < READ_AHEAD
        } else {
            feed.has_room(None)
        }
    }

    /// True while the connection waits for the client to send more of a body the app
    /// is ready to take.
    fn awaits_body(&self) -> bool {
        !matches!(self.state, State::Idle)
            && self
                .feed
                .as_ref()
                .is_some_and(|f| !f.is_over() && f.has_room(None))
    }

    /// Moves body bytes that arrived into the pipe of the request in the app, as far as
    /// it has room (when it has none, the waker is woken once it has).
    fn feed_body(&mut self, env: &Env, cx: &Context<'_>) {
        let Some(feed) = &self.feed else {
            return;
        };
        loop {
            if feed.is_over() {
                return;
            }
            if !feed.has_room(Some(cx.waker())) {
                self.feed_full = true;
                return;
            }
            if std::mem::take(&mut self.feed_full) {
                // The app made room: the body timeout counts from now.
                self.last_input = Instant::now();
            }
            match self.decoder.body_piece(&mut self.inbuf, &env.config.limits) {
                Ok(Piece::Data(b)) => feed.push(b),
                Ok(Piece::End) => feed.finish(),
                Ok(Piece::NeedMore) => return,
                Err(e) => {
                    env.log.protocol_error(self.peer, &e);
                    feed.fail(&format!("bad request body: {e}"));
                    self.inbuf.clear();
                    self.decoder.reset();
                    self.end(true);
                    if matches!(self.state, State::Waiting { .. }) {
                        // No response yet: the client gets the status for its body,
                        // as if it had been refused before the app was called (the
                        // app's future is dropped, so it hears the client left).
                        let State::Waiting { meta, log, .. } =
                            std::mem::replace(&mut self.state, State::Idle)
                        else {
                            unreachable!()
                        };
                        let status = e.status();
                        let resp = Response::text(status, format!("{e}\n"));
                        self.start(env, resp, meta, log, &|| false);
                    }
                    return;
                }
            }
        }
    }

    /// Answers a connection the worker has no room for with 503 and `Retry-After`, before
    /// reading anything, then lingers and closes.
    pub fn shed(&mut self) {
        crate::ops::shed();
        self.outbuf.extend_from_slice(super::accept::SHED_RESPONSE);
        self.end(true);
    }

    /// Ends an idle connection (the worker is stopping, or wants its thread back).
    /// Returns false, and changes nothing, when the connection is not idle.
    pub fn close_if_idle(&mut self) -> bool {
        let idle = self.is_idle();
        if idle {
            self.end(false);
        }
        idle
    }

    /// When the connection next needs attention if no I/O happens: the end of
    /// lingering; the send timeout while output waits; while reading, the header timeout
    /// (from a head's first byte, or from opening for the first request), the body
    /// timeout (from the last read), or the keep-alive timeout between requests. `None`
    /// while the app is making a response (harakiri bounds that).
    ///
    /// While the worker stops, a connection with nothing in progress ends at the latest
    /// [`STOP_GRACE`] after the stop began: closing it sooner would cut off a request
    /// already on its way (the client's next keep-alive request, or the first request of
    /// a connection accepted just before), which the client cannot always retry.
    pub fn deadline(&self, env: &Env) -> Option<Instant> {
        let due = self.time_limit(env)?;
        match env.shutdown.since() {
            Some(stop) if self.is_idle() => Some(due.min(stop + STOP_GRACE)),
            _ => Some(due),
        }
    }

    /// [`Conn::deadline`] while the worker serves.
    fn time_limit(&self, env: &Env) -> Option<Instant> {
        let t = &env.config.timeouts;
        if let Ending::Draining(until) = self.ending {
            return Some(until);
        }
        if let Some(since) = self.write_blocked {
            return Some(since + t.send);
        }
        if self.awaits_body() {
            return Some(self.last_input + t.body);
        }
        if !matches!(self.state, State::Idle) {
            return None;
        }
        Some(if self.decoder.in_body() {
            self.last_input + t.body
        } else if !self.inbuf.is_empty() {
            self.head_started.unwrap_or(self.last_input) + t.header
        } else if self.served == 0 {
            self.last_input + t.header
        } else {
            self.last_input + t.keepalive
        })
    }

    /// Applies the time limits at `now`: an idle connection past the keep-alive timeout
    /// is closed; a request that has not arrived in time is answered with 408; lingering
    /// ends. Returns true when something changed (poll again).
    pub fn expire(&mut self, env: &Env, now: Instant) -> bool {
        if self.deadline(env).is_none_or(|d| now < d) {
            return false;
        }
        if self.write_blocked.is_none() && self.awaits_body() {
            // The app waits for a body the client stopped sending: it learns that the
            // body broke off; its response still goes out, then the connection ends.
            if let Some(feed) = &self.feed {
                feed.fail(&format!(
                    "no more of the request body arrived for {} s",
                    env.config.timeouts.body.as_secs()
                ));
            }
            self.end(true);
            return true;
        }
        if matches!(self.ending, Ending::Draining(_))
            || self.closing
            || self.write_blocked.is_some()
        {
            // Lingering is over, or the client has not taken the output in time: give
            // up on it.
            self.outbuf.clear();
            self.read_eof = true;
            self.closing = true;
        } else if self.mid_request() {
            self.inbuf.clear();
            http::encode_error(&mut self.outbuf, &HttpError::Timeout, Version::Http11);
            self.end(true);
        } else {
            self.end(false);
        }
        true
    }

    /// Marks the connection as ending after the response in progress; `error` when it
    /// ends on a refused request, so the client may still be sending.
    fn end(&mut self, error: bool) {
        if !self.closing {
            self.closing = true;
            self.ending = Ending::Close;
        }
        if error && self.ending == Ending::Close {
            self.ending = Ending::Linger;
        }
    }

    /// The step of a connection that is ending, once its output is written.
    fn ending_step(&mut self) -> Step {
        if !self.outbuf.is_empty() {
            return Step::Flush;
        }
        if self.read_eof {
            return Step::Close;
        }
        match self.ending {
            Ending::Close if self.inbuf.is_empty() && !self.decoder.in_body() => Step::Close,
            // Unread input (pipelined requests, a body) would make the kernel answer
            // with a reset that can destroy the last response: linger instead.
            Ending::Close | Ending::Linger => {
                self.ending = Ending::Draining(Instant::now() + LINGER);
                self.inbuf.clear();
                Step::ShutdownWrite
            }
            Ending::Draining(_) => {
                self.inbuf.clear();
                Step::Read
            }
        }
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
        if self.feed.is_some() && !matches!(self.state, State::Idle) {
            self.feed_body(env, cx);
        }
        loop {
            if self.outbuf.len() >= HIGH_WATER {
                return Step::Flush;
            }
            match &mut self.state {
                State::Idle => {
                    if self.closing {
                        return self.ending_step();
                    }
                    let streams = env.app.streams_body();
                    let decoded = if streams {
                        self.decoder
                            .decode_head_first(&mut self.inbuf, &env.config.limits)
                    } else {
                        self.decoder.decode(&mut self.inbuf, &env.config.limits)
                    };
                    match decoded {
                        Ok(Decoded::NeedMore) => return self.wait_step(Step::Read),
                        Ok(Decoded::Head {
                            mut req,
                            meta,
                            expect_continue,
                        }) => {
                            self.head_started = None;
                            if expect_continue {
                                self.outbuf
                                    .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                            }
                            let (feed, body) = request_body::pipe();
                            req.rest = Some(body);
                            self.feed = Some(feed);
                            self.feed_full = false;
                            if self.gated {
                                self.state = State::Admitting { req, meta };
                                return Step::Admit;
                            }
                            self.dispatch(env, call, req, meta, prefer_close);
                        }
                        Ok(Decoded::Continue) => {
                            self.outbuf
                                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                            return Step::Flush;
                        }
                        Ok(Decoded::Request(mut req, meta)) => {
                            self.head_started = None;
                            if streams {
                                // The body is all here; the pipe still tells the app
                                // when the client leaves.
                                let (feed, body) = request_body::pipe();
                                feed.finish();
                                req.rest = Some(body);
                                self.feed = Some(feed);
                            }
                            if self.gated {
                                self.state = State::Admitting { req, meta };
                                return Step::Admit;
                            }
                            self.dispatch(env, call, req, meta, prefer_close);
                        }
                        Err(e) => {
                            let version = Version::Http11;
                            http::encode_error(&mut self.outbuf, &e, version);
                            if let HttpError::UwsgiVarsTooLarge { .. } = e {
                                // A setting to change, not a client to blame: always said.
                                env.log.line(&format!("forklift: {e}"));
                            }
                            env.log.protocol_error(self.peer, &e);
                            self.inbuf.clear();
                            self.end(true);
                        }
                    }
                }
                State::Admitting { .. } if self.gated => return Step::Admit,
                State::Admitting { .. } => {
                    let State::Admitting { req, meta } =
                        std::mem::replace(&mut self.state, State::Idle)
                    else {
                        unreachable!()
                    };
                    self.dispatch(env, call, req, meta, prefer_close);
                }
                State::Waiting { fut, .. } => {
                    let polled = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)));
                    let resp = match polled {
                        Ok(Poll::Ready(resp)) => resp,
                        Ok(Poll::Pending) => return self.wait_step(Step::Pending),
                        Err(p) => self.panicked(env, &*p),
                    };
                    let State::Waiting { meta, log, .. } =
                        std::mem::replace(&mut self.state, State::Idle)
                    else {
                        unreachable!()
                    };
                    self.start(env, resp, meta, log, prefer_close);
                }
                State::Streaming { source, enc, .. } => {
                    let next = match source {
                        Source::Stream(s) => {
                            match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *s).poll_next(cx)))
                            {
                                Ok(Poll::Pending) => return self.wait_step(Step::Pending),
                                Ok(Poll::Ready(None)) => Ok(None),
                                Ok(Poll::Ready(Some(Ok(chunk)))) => {
                                    enc.push(&mut self.outbuf, &chunk);
                                    Ok(Some(()))
                                }
                                Ok(Poll::Ready(Some(Err(e)))) => Err(e),
                                Err(p) => Err(io::Error::other(format!(
                                    "panicked: {}",
                                    panic_message(&*p)
                                ))),
                            }
                        }
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
                            self.end(false);
                        }
                    }
                }
            }
        }
    }

    /// Calls the app with a request that arrived whole; a panic is answered with 500.
    fn dispatch(
        &mut self,
        env: &Env,
        call: &CallContext,
        mut req: Request,
        meta: RequestMeta,
        prefer_close: &dyn Fn() -> bool,
    ) {
        // Over uwsgi the front server names the client (REMOTE_ADDR): that is the peer
        // the app and the access log see.
        match req.peer {
            Some(client) => self.peer = Some(client),
            None => req.peer = self.peer,
        }
        req.local = self.local;
        self.ops = env.ops.map(|card| card.begin());
        if let Some(dog) = &env.harakiri {
            self.ticket =
                Some(dog.begin(|| {
                    format!("{} {}", req.method(), String::from_utf8_lossy(&req.target))
                }));
        }
        let log = env.log.capture(&req, meta.version);
        let reply = catch_unwind(AssertUnwindSafe(|| env.app.call(req, call)))
            .unwrap_or_else(|p| Reply::Ready(self.panicked(env, &*p)));
        match reply {
            Reply::Ready(resp) => self.start(env, resp, meta, log, prefer_close),
            Reply::Later(fut) => self.state = State::Waiting { fut, meta, log },
        }
    }

    /// The response for a handler (or its future) that panicked: 500, and the
    /// connection closes after it. The worker and its other connections go on.
    fn panicked(&mut self, env: &Env, panic: &(dyn std::any::Any + Send)) -> Response {
        env.log
            .app_error(&format!("handler panicked: {}", panic_message(panic)));
        self.end(false);
        Response::text(500, "Internal Server Error\n")
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

    /// Counts a request against `--max-requests`; the one that reaches the limit starts
    /// the worker's graceful stop (the master starts a fresh worker).
    fn count_request(env: &Env) {
        let n = env.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if env.config.max_requests == Some(n) {
            env.log.line(&format!(
                "forklift: worker {} served {n} requests (--max-requests); retiring",
                std::process::id()
            ));
            // Under the master the socket stays open and the replacement takes the
            // backlog; alone, this process serves it before stopping.
            if env.config.master {
                env.shutdown.trigger_handover();
            } else {
                env.shutdown.trigger();
            }
        }
    }

    fn start(
        &mut self,
        env: &Env,
        resp: Response,
        meta: RequestMeta,
        log: Option<LogLine>,
        prefer_close: &dyn Fn() -> bool,
    ) {
        Self::count_request(env);
        if self.feed.as_ref().is_some_and(|f| !f.is_over()) {
            // The client is still sending a body the app may never read: the
            // connection cannot be kept for another request.
            self.end(true);
        }
        let mut meta = meta;
        if meta.keep_alive && (self.closing || env.shutdown.is_triggered() || prefer_close()) {
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
            self.end(false);
        }
        // Only a client that accepts trailers gets them.
        self.trailers = resp.trailers.filter(|_| meta.te_trailers);
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
        let trailers = self.trailers.take().map(|t| t.take()).unwrap_or_default();
        if complete {
            if let Err(short) = enc.finish_with(&mut self.outbuf, &trailers) {
                env.log.app_error(&format!(
                    "response shorter than its Content-Length by {} bytes; closing",
                    short.missing
                ));
                self.end(false);
            }
        }
        if let Some(feed) = self.feed.take() {
            if !feed.is_over() {
                self.skip_body(env);
            }
        }
        self.served += 1;
        self.ticket = None;
        if let Some(t) = self.ops.take() {
            t.done(status, enc.written);
        }
        env.log
            .request(self.peer, log.as_ref(), status, enc.written);
    }
}

impl Conn {
    /// The response is over but the app left part of the body unread: what has arrived
    /// is dropped; if more is to come the connection ends (it was answered with
    /// `Connection: close`).
    fn skip_body(&mut self, env: &Env) {
        loop {
            match self.decoder.body_piece(&mut self.inbuf, &env.config.limits) {
                Ok(Piece::Data(_)) => {}
                Ok(Piece::End) => return,
                Ok(Piece::NeedMore) => {
                    self.end(true);
                    return;
                }
                Err(_) => {
                    self.inbuf.clear();
                    self.decoder.reset();
                    self.end(true);
                    return;
                }
            }
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

#[cfg(test)]
mod tests;
