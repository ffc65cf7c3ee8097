//! A process-wide timer: one thread holding a heap of deadlines, waking the waker of each
//! [`Sleep`] when its deadline passes. It works under any executor (the blocking
//! models' [`super::block_on`], the epoll loop's connection wakers, tokio), so a built-in
//! handler can wait without holding a thread.
//!
//! The thread is started lazily on first use, so it is never running across `fork`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

struct Entry {
    deadline: Instant,
    seq: u64,
    state: Arc<SleepState>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.deadline, self.seq) == (o.deadline, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(o.deadline, o.seq))
    }
}

#[derive(Default)]
struct SleepState {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

struct Timer {
    heap: Mutex<(BinaryHeap<Reverse<Entry>>, u64)>,
    changed: Condvar,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer {
            heap: Mutex::new((BinaryHeap::new(), 0)),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("forklift-timer".into())
            .spawn(move || t.run())
            .expect("spawn timer thread");
        t
    })
}

impl Timer {
    fn run(&self) {
        let mut guard = self.heap.lock().unwrap();
        loop {
            let now = Instant::now();
            while guard.0.peek().is_some_and(|Reverse(e)| e.deadline <= now) {
                let Reverse(e) = guard.0.pop().unwrap();
                e.state.fired.store(true, Ordering::Release);
                let waker = e.state.waker.lock().unwrap().take();
                if let Some(w) = waker {
                    w.wake();
                }
            }
            guard = match guard.0.peek() {
                Some(Reverse(e)) => {
                    let wait = e.deadline.saturating_duration_since(now);
                    self.changed.wait_timeout(guard, wait).unwrap().0
                }
                None => self.changed.wait(guard).unwrap(),
            };
        }
    }

    fn add(&self, deadline: Instant, state: Arc<SleepState>) {
        let mut g = self.heap.lock().unwrap();
        g.1 += 1;
        let seq = g.1;
        let earliest = g.0.peek().is_none_or(|Reverse(e)| deadline < e.deadline);
        g.0.push(Reverse(Entry {
            deadline,
            seq,
            state,
        }));
        drop(g);
        if earliest {
            self.changed.notify_one();
        }
    }
}

/// A future that completes after a duration; see [`sleep`].
pub struct Sleep {
    deadline: Instant,
    state: Option<Arc<SleepState>>,
}

/// Completes after `dur`, under any executor.
pub fn sleep(dur: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now() + dur,
        state: None,
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        match &self.state {
            Some(state) => {
                if state.fired.load(Ordering::Acquire) {
                    return Poll::Ready(());
                }
                let mut w = state.waker.lock().unwrap();
                *w = Some(cx.waker().clone());
                drop(w);
                if state.fired.load(Ordering::Acquire) {
                    return Poll::Ready(());
                }
            }
            None => {
                let state = Arc::new(SleepState::default());
                *state.waker.lock().unwrap() = Some(cx.waker().clone());
                timer().add(self.deadline, state.clone());
                self.state = Some(state);
            }
        }
        Poll::Pending
    }
}

impl Sleep {
    /// The instant this sleep completes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// How long is left.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}
