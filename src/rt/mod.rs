//! Small runtime pieces shared by every model: driving a future to completion on a
//! blocking thread ([`block_on`]), a process-wide timer that works under any executor
//! ([`sleep`]), the [`Shutdown`] signal, and per-process state that is safe across
//! `fork` ([`fork::ForkLocal`]).

pub mod fork;
mod shutdown;
mod timer;

pub use shutdown::Shutdown;
pub use timer::{sleep, tokio_timers_here, Sleep};

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `fut` to completion on the current thread, parking between polls. Used by the
/// blocking models to wait for a [`crate::app::Reply::Later`].
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

/// The message a panic carried (`panic!("…")` payloads are `&str` or `String`), for
/// the log line that reports it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn block_on_waits_for_a_timer() {
        let start = Instant::now();
        block_on(sleep(Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn many_sleeps_complete() {
        let handles: Vec<_> = (0..20)
            .map(|i| std::thread::spawn(move || block_on(sleep(Duration::from_millis(i % 5)))))
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
