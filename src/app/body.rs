//! A request body that is still arriving while the app runs, for apps that ask for it
//! ([`crate::app::Handler::streams_body`]): the connection moves the bytes into a
//! bounded pipe as the client sends them and stops reading the socket while the pipe
//! is full, so a client can upload more than memory holds and an app that does not
//! read holds the client back, not the server's memory. The same pipe tells the app
//! when the client goes away (the connection reads while the app works, so it sees the
//! end of the client's stream or a reset at once).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;

/// Chunks the pipe holds before the connection stops reading the socket.
pub const PIPE_CHUNKS: usize = 4;
/// Bytes the pipe holds before the connection stops reading the socket.
pub const PIPE_BYTES: usize = 256 * 1024;

/// The app's end of a request body that is still arriving. Clones share the pipe.
pub struct RequestBody {
    pipe: Arc<Pipe>,
}

/// The connection's end of the pipe.
pub(crate) struct BodySender {
    pipe: Arc<Pipe>,
}

/// What [`RequestBody::next`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The next piece of the body (at most 64 KiB).
    Data(Bytes),
    /// The body is over; every byte has been handed out.
    End,
    /// The body broke off: the client went away before sending all of it, sent a
    /// malformed chunk, or stopped sending for longer than the body timeout.
    Failed(String),
    /// Nothing yet: the waker given is woken when something changes.
    Pending,
}

#[derive(Default)]
struct Pipe {
    state: Mutex<State>,
    /// Live [`RequestBody`] handles.
    readers: AtomicUsize,
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    /// The last byte is in `chunks`.
    finished: bool,
    /// Why the body broke off, if it did.
    failed: Option<String>,
    /// The client went away: its stream ended or the connection failed.
    gone: bool,
    /// Every [`RequestBody`] was dropped: the connection discards what comes.
    unread: bool,
    /// The app waits for a chunk, the end, or the client leaving.
    reader: Option<Waker>,
    /// The connection waits for room.
    writer: Option<Waker>,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn store(slot: &mut Option<Waker>, w: &Waker) {
    match slot {
        Some(old) if old.will_wake(w) => {}
        _ => *slot = Some(w.clone()),
    }
}

/// A new pipe: the connection's end and the app's.
pub(crate) fn pipe() -> (BodySender, RequestBody) {
    let pipe = Arc::new(Pipe::default());
    pipe.readers.store(1, Ordering::Relaxed);
    (BodySender { pipe: pipe.clone() }, RequestBody { pipe })
}

impl RequestBody {
    /// The next piece of the body; when there is none yet, `waker` (if given) is woken
    /// once there is, or the body ends, or the client leaves.
    pub fn next(&self, waker: Option<&Waker>) -> Next {
        let mut s = self.pipe.lock();
        if let Some(chunk) = s.chunks.pop_front() {
            s.bytes -= chunk.len();
            let writer = s.writer.take();
            drop(s);
            if let Some(w) = writer {
                w.wake();
            }
            return Next::Data(chunk);
        }
        if s.finished {
            return Next::End;
        }
        if let Some(why) = &s.failed {
            return Next::Failed(why.clone());
        }
        if let Some(w) = waker {
            store(&mut s.reader, w);
        }
        Next::Pending
    }

    /// True when every byte has been handed out and no more will come.
    pub fn at_end(&self) -> bool {
        let s = self.pipe.lock();
        s.finished && s.chunks.is_empty()
    }

    /// True once the client has gone away (closed its side of the connection, or the
    /// connection failed). A response may still reach a client that only closed its
    /// sending side.
    pub fn is_gone(&self) -> bool {
        self.pipe.lock().gone
    }

    /// Wakes `waker` when the client goes away (or more body arrives).
    pub fn watch(&self, waker: &Waker) {
        let mut s = self.pipe.lock();
        if s.gone {
            drop(s);
            waker.wake_by_ref();
        } else {
            store(&mut s.reader, waker);
        }
    }
}

impl Clone for RequestBody {
    fn clone(&self) -> RequestBody {
        self.pipe.readers.fetch_add(1, Ordering::Relaxed);
        RequestBody {
            pipe: self.pipe.clone(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // The last app handle: nobody reads any more, so the connection need not wait.
        if self.pipe.readers.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut s = self.pipe.lock();
            s.unread = true;
            s.chunks.clear();
            s.bytes = 0;
            let writer = s.writer.take();
            drop(s);
            if let Some(w) = writer {
                w.wake();
            }
        }
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.pipe.lock();
        f.debug_struct("RequestBody")
            .field("queued", &s.bytes)
            .field("finished", &s.finished)
            .field("gone", &s.gone)
            .finish()
    }
}

/// The body as a stream of chunks; a broken-off body ends with an error.
impl Stream for RequestBody {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.next(Some(cx.waker())) {
            Next::Data(b) => Poll::Ready(Some(Ok(b))),
            Next::End => Poll::Ready(None),
            Next::Failed(why) => {
                Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, why))))
            }
            Next::Pending => Poll::Pending,
        }
    }
}

impl BodySender {
    /// True when the pipe takes another chunk; otherwise `waker` is woken when it does.
    pub(crate) fn has_room(&self, waker: Option<&Waker>) -> bool {
        let mut s = self.pipe.lock();
        let room = s.unread || (s.chunks.len() < PIPE_CHUNKS && s.bytes < PIPE_BYTES);
        if !room {
            if let Some(w) = waker {
                store(&mut s.writer, w);
            }
        }
        room
    }

    /// Queues a chunk (dropped when nobody reads).
    pub(crate) fn push(&self, chunk: Bytes) {
        let mut s = self.pipe.lock();
        if s.unread || chunk.is_empty() {
            return;
        }
        s.bytes += chunk.len();
        s.chunks.push_back(chunk);
        Self::wake_reader(s);
    }

    /// The body is complete.
    pub(crate) fn finish(&self) {
        let mut s = self.pipe.lock();
        s.finished = true;
        Self::wake_reader(s);
    }

    /// True once the body is complete or broken off.
    pub(crate) fn is_over(&self) -> bool {
        let s = self.pipe.lock();
        s.finished || s.failed.is_some()
    }

    /// The body broke off (`why` says how); the app's reads fail from now on.
    pub(crate) fn fail(&self, why: &str) {
        let mut s = self.pipe.lock();
        if !s.finished && s.failed.is_none() {
            s.failed = Some(why.to_owned());
        }
        Self::wake_reader(s);
    }

    /// The client went away; a body not yet complete breaks off.
    pub(crate) fn gone(&self) {
        let mut s = self.pipe.lock();
        if s.gone {
            return;
        }
        s.gone = true;
        if !s.finished && s.failed.is_none() {
            s.failed = Some("the client went away before sending the whole body".into());
        }
        Self::wake_reader(s);
    }

    fn wake_reader(mut s: MutexGuard<'_, State>) {
        let reader = s.reader.take();
        drop(s);
        if let Some(w) = reader {
            w.wake();
        }
    }
}

impl Drop for BodySender {
    /// The connection is gone (closed, or the request is over): the app hears it.
    fn drop(&mut self) {
        self.gone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn bounded_with_wakeups_both_ways() {
        let (tx, rx) = pipe();
        let app = Arc::new(Count(AtomicUsize::new(0)));
        let conn = Arc::new(Count(AtomicUsize::new(0)));
        let (app_w, conn_w) = (Waker::from(app.clone()), Waker::from(conn.clone()));
        assert_eq!(rx.next(Some(&app_w)), Next::Pending);
        for i in 0..PIPE_CHUNKS {
            assert!(tx.has_room(Some(&conn_w)));
            tx.push(Bytes::from(vec![i as u8; 10]));
        }
        assert_eq!(
            app.0.load(Ordering::SeqCst),
            1,
            "the waiting app is woken once"
        );
        assert!(
            !tx.has_room(Some(&conn_w)),
            "full after {PIPE_CHUNKS} chunks"
        );
        assert!(matches!(rx.next(None), Next::Data(b) if b[0] == 0));
        assert_eq!(
            conn.0.load(Ordering::SeqCst),
            1,
            "the connection reads again"
        );
        assert!(tx.has_room(None));
        tx.finish();
        for _ in 1..PIPE_CHUNKS {
            assert!(matches!(rx.next(None), Next::Data(_)));
        }
        assert!(rx.at_end());
        assert_eq!(rx.next(None), Next::End);
        assert!(!rx.is_gone());
        drop(tx);
        assert!(rx.is_gone(), "the connection ending is the client leaving");
        assert_eq!(rx.next(None), Next::End, "a complete body stays complete");
    }

    #[test]
    fn client_leaving_breaks_the_body_and_wakes_the_app() {
        let (tx, rx) = pipe();
        let app = Arc::new(Count(AtomicUsize::new(0)));
        rx.watch(&Waker::from(app.clone()));
        tx.push(Bytes::from_static(b"part"));
        tx.gone();
        assert!(app.0.load(Ordering::SeqCst) >= 1);
        assert!(rx.is_gone());
        assert_eq!(rx.next(None), Next::Data(Bytes::from_static(b"part")));
        assert!(matches!(rx.next(None), Next::Failed(_)));
    }

    #[test]
    fn an_unread_body_is_discarded() {
        let (tx, rx) = pipe();
        for _ in 0..PIPE_CHUNKS {
            tx.push(Bytes::from_static(b"x"));
        }
        assert!(!tx.has_room(None));
        drop(rx);
        assert!(tx.has_room(None), "nobody reads: the connection discards");
    }
}
