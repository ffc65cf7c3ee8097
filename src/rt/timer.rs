//! A process-wide timer: one thread holding a heap of deadlines, waking the waker of each
//! [`Sleep`] when its deadline passes. It works under any executor (the blocking
//! models' [`super::block_on`], the epoll loop's connection wakers, tokio), so a built-in
//! handler can wait without holding a thread.
//!
//! The thread is started lazily on first use, so it is never running across `fork`.
//! It wakes at most once per millisecond tick and fires every deadline that passed, so
//! thousands of sleeps ending in the same millisecond cost one wake-up, not thousands.
//!
//! On the threads of forklift's own tokio runtimes (which mark themselves with
//! [`tokio_timers_here`]), a [`Sleep`] uses tokio's timer instead: no other thread is
//! involved at all.

use std::cell::Cell;
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
                    let wait = tick(e.deadline.saturating_duration_since(now));
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

/// Rounds a wait up to whole milliseconds: deadlines that fall in the same tick fire
/// together (a sleep ends up to 1 ms late, never early).
fn tick(wait: Duration) -> Duration {
    const MS: u128 = 1_000_000;
    let ns = wait.as_nanos();
    Duration::from_nanos(ns.div_ceil(MS).saturating_mul(MS).min(u64::MAX as u128) as u64)
}

thread_local! {
    static TOKIO_TIMERS: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as a thread of a tokio runtime built with its time driver
/// (`enable_time`/`enable_all`): a [`Sleep`] first polled here uses tokio's timer.
pub fn tokio_timers_here() {
    TOKIO_TIMERS.with(|t| t.set(true));
}

/// A future that completes after a duration; see [`sleep`].
pub struct Sleep {
    deadline: Instant,
    state: Option<State>,
}

enum State {
    Thread(Arc<SleepState>),
    Tokio(Pin<Box<tokio::time::Sleep>>),
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
        match &mut self.state {
            Some(State::Tokio(sleep)) => sleep.as_mut().poll(cx),
            Some(State::Thread(state)) => {
                if state.fired.load(Ordering::Acquire) {
                    return Poll::Ready(());
                }
                let mut w = state.waker.lock().unwrap();
                *w = Some(cx.waker().clone());
                drop(w);
                if state.fired.load(Ordering::Acquire) {
                    return Poll::Ready(());
                }
                Poll::Pending
            }
            None if TOKIO_TIMERS.with(Cell::get) => {
                let mut sleep = Box::pin(tokio::time::sleep_until(self.deadline.into()));
                let r = sleep.as_mut().poll(cx);
                self.state = Some(State::Tokio(sleep));
                r
            }
            None => {
                let state = Arc::new(SleepState::default());
                *state.waker.lock().unwrap() = Some(cx.waker().clone());
                timer().add(self.deadline, state.clone());
                self.state = Some(State::Thread(state));
                Poll::Pending
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up_to_whole_milliseconds() {
        assert_eq!(tick(Duration::ZERO), Duration::ZERO);
        assert_eq!(tick(Duration::from_nanos(1)), Duration::from_millis(1));
        assert_eq!(tick(Duration::from_micros(1000)), Duration::from_millis(1));
        assert_eq!(tick(Duration::from_micros(1001)), Duration::from_millis(2));
        assert_eq!(tick(Duration::MAX), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn sleeps_never_end_early_on_either_timer() {
        let dur = Duration::from_millis(3);
        // The timer thread (under block_on).
        let t = Instant::now();
        super::super::block_on(sleep(dur));
        assert!(t.elapsed() >= dur);
        // Tokio's timer, on a marked runtime thread; many at once.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio_timers_here();
            let t = Instant::now();
            let mut s = sleep(dur);
            std::future::poll_fn(|cx| {
                let _ = Pin::new(&mut s).poll(cx);
                Poll::Ready(())
            })
            .await;
            assert!(matches!(s.state, Some(State::Tokio(_))));
            s.await;
            let all: Vec<_> = (0..100).map(|_| sleep(dur)).collect();
            for s in all {
                s.await;
            }
            assert!(t.elapsed() >= dur);
        });
    }
}
