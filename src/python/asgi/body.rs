//! What one request shares between its event loop (the app's side) and its connection
//! (the server's side), without Python objects: the response body channel with
//! backpressure, whether the response is complete, and whether the client went away.
//! The connection side is a future for the response and, for a streamed body, a
//! [`BodyStream`]; dropping either before the response is complete counts as the client
//! leaving, and the loop is told (the app's `receive()` then says `http.disconnect`).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::oneshot;

use crate::app::Response;

/// Body bytes queued towards the connection before the app's `send()` waits.
const HIGH_WATER: usize = 256 * 1024;
/// Chunks queued before the app's `send()` waits (many small chunks).
const MAX_CHUNKS: usize = 16;

/// Tells a request's event loop to look at the request again (from any thread).
pub(crate) trait Poke: Send + Sync {
    fn poke(&self, id: u64);
}

/// The state of one request shared by its loop and its connection.
pub(crate) struct Shared {
    pub(crate) id: u64,
    loop_: Arc<dyn Poke>,
    chan: Mutex<Chan>,
    /// The app finished the response (last body sent, or it failed): dropping the
    /// connection's side from now on is not a disconnect.
    complete: AtomicBool,
    /// The connection's side was dropped before the response was complete.
    gone: AtomicBool,
}

#[derive(Default)]
struct Chan {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// No more chunks will come.
    finished: bool,
    /// The body broke off (the app raised or returned early): the connection closes.
    failed: Option<String>,
    /// The connection waits for a chunk.
    reader: Option<Waker>,
    /// The app waits for room (its `send()` returned a pending future).
    writer_waiting: bool,
}

impl Shared {
    pub(crate) fn new(id: u64, loop_: Arc<dyn Poke>) -> Arc<Shared> {
        Arc::new(Shared {
            id,
            loop_,
            chan: Mutex::new(Chan::default()),
            complete: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        })
    }

    fn chan(&self) -> std::sync::MutexGuard<'_, Chan> {
        self.chan.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    pub(crate) fn set_complete(&self) {
        self.complete.store(true, Ordering::Release);
    }

    /// App side: queues a chunk. Returns true when the app must wait for room (then
    /// the loop is poked once the connection has taken enough).
    pub(crate) fn push(&self, chunk: Bytes) -> bool {
        let mut c = self.chan();
        if !chunk.is_empty() {
            c.bytes += chunk.len();
            c.queue.push_back(chunk);
        }
        let full = c.bytes >= HIGH_WATER || c.queue.len() >= MAX_CHUNKS;
        c.writer_waiting = full;
        let reader = c.reader.take();
        drop(c);
        if let Some(w) = reader {
            w.wake();
        }
        full
    }

    /// App side: true while the app should still wait for room.
    pub(crate) fn writer_waiting(&self) -> bool {
        self.chan().writer_waiting
    }

    /// App side: the body is over, completely (`error` None) or broken off.
    pub(crate) fn finish(&self, error: Option<String>) {
        self.set_complete();
        let mut c = self.chan();
        c.finished = true;
        if c.failed.is_none() {
            c.failed = error;
        }
        let reader = c.reader.take();
        drop(c);
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Connection side: the next chunk, the end, or "wait".
    fn poll_chunk(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let mut c = self.chan();
        if let Some(chunk) = c.queue.pop_front() {
            c.bytes -= chunk.len();
            let resume =
                c.writer_waiting && c.bytes < HIGH_WATER / 2 && c.queue.len() < MAX_CHUNKS / 2;
            if resume {
                c.writer_waiting = false;
            }
            drop(c);
            if resume {
                self.loop_.poke(self.id);
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        if let Some(e) = &c.failed {
            return Poll::Ready(Some(Err(io::Error::other(e.clone()))));
        }
        if c.finished {
            return Poll::Ready(None);
        }
        match &mut c.reader {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// A waker for the request's loop: the request body's pipe wakes the app this way.
impl std::task::Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.loop_.poke(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.loop_.poke(self.id);
    }
}

/// The connection's hold on a request: dropped before the response is complete, it
/// marks the client gone and pokes the loop.
pub(crate) struct Guard(Option<Arc<Shared>>);

impl Guard {
    pub(crate) fn new(shared: Arc<Shared>) -> Guard {
        Guard(Some(shared))
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            if !s.is_complete() && !s.gone.swap(true, Ordering::AcqRel) {
                s.loop_.poke(s.id);
            }
        }
    }
}

/// The connection's future for the response head (and a full body).
pub(crate) struct ReplyFuture {
    rx: oneshot::Receiver<Response>,
    guard: Guard,
}

impl ReplyFuture {
    pub(crate) fn new(rx: oneshot::Receiver<Response>, shared: Arc<Shared>) -> ReplyFuture {
        ReplyFuture {
            rx,
            guard: Guard::new(shared),
        }
    }
}

impl Future for ReplyFuture {
    type Output = Response;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                // A streamed body carries its own guard from here on.
                self.guard.disarm();
                Poll::Ready(r.unwrap_or_else(|_| {
                    eprintln!("forklift: the event loop dropped a request; answering 500");
                    Response::text(500, Bytes::from_static(b"Internal Server Error\n"))
                }))
            }
        }
    }
}

/// A streamed response body, fed by the app's `send()` calls on its loop.
pub(crate) struct BodyStream {
    shared: Arc<Shared>,
    _guard: Guard,
}

impl BodyStream {
    pub(crate) fn new(shared: Arc<Shared>) -> BodyStream {
        BodyStream {
            _guard: Guard::new(shared.clone()),
            shared,
        }
    }
}

impl Stream for BodyStream {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.shared.poll_chunk(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Poke for Count {
        fn poke(&self, _id: u64) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn backpressure_and_end() {
        let pokes = Arc::new(Count(AtomicUsize::new(0)));
        let s = Shared::new(1, pokes.clone());
        let mut stream = BodyStream::new(s.clone());
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut stream).poll_next(&mut cx).is_pending());
        assert!(!s.push(Bytes::from_static(b"a")));
        assert!(s.push(Bytes::from(vec![0u8; HIGH_WATER])));
        assert!(s.writer_waiting());
        let Poll::Ready(Some(Ok(b))) = Pin::new(&mut stream).poll_next(&mut cx) else {
            panic!()
        };
        assert_eq!(&b[..], b"a");
        assert_eq!(pokes.0.load(Ordering::SeqCst), 0);
        assert!(matches!(
            Pin::new(&mut stream).poll_next(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert_eq!(
            pokes.0.load(Ordering::SeqCst),
            1,
            "the app is told there is room"
        );
        s.finish(None);
        assert!(matches!(
            Pin::new(&mut stream).poll_next(&mut cx),
            Poll::Ready(None)
        ));
        drop(stream);
        assert!(!s.is_gone(), "a finished body is not a disconnect");
    }

    #[test]
    fn dropping_early_is_a_disconnect() {
        let pokes = Arc::new(Count(AtomicUsize::new(0)));
        let s = Shared::new(7, pokes.clone());
        drop(BodyStream::new(s.clone()));
        assert!(s.is_gone());
        assert_eq!(pokes.0.load(Ordering::SeqCst), 1);
    }
}
