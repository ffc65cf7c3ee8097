//! A bounded queue whose items become available at a due time (the pool's queue, which
//! also holds delayed tasks).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

struct Item<T> {
    due: Instant,
    seq: u64,
    value: T,
}

impl<T> PartialEq for Item<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl<T> Eq for Item<T> {}
impl<T> PartialOrd for Item<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Item<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

struct State<T> {
    heap: BinaryHeap<Reverse<Item<T>>>,
    seq: u64,
    /// No more pushes; poppers drain what is left.
    closed: bool,
    /// Poppers stop at once, even if items are left.
    aborted: bool,
}

/// Why a push failed; the item is handed back.
pub enum PushError<T> {
    Full(T),
    Closed(T),
}

pub struct DelayQueue<T> {
    cap: usize,
    state: Mutex<State<T>>,
    cond: Condvar,
}

impl<T> DelayQueue<T> {
    pub fn new(cap: usize) -> DelayQueue<T> {
        DelayQueue {
            cap,
            state: Mutex::new(State {
                heap: BinaryHeap::new(),
                seq: 0,
                closed: false,
                aborted: false,
            }),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, value: T, due: Instant) -> Result<(), PushError<T>> {
        let mut s = self.lock();
        if s.closed {
            return Err(PushError::Closed(value));
        }
        if s.heap.len() >= self.cap {
            return Err(PushError::Full(value));
        }
        s.seq += 1;
        let seq = s.seq;
        s.heap.push(Reverse(Item { due, seq, value }));
        drop(s);
        // Wake every waiter: a sleeper waiting for a later item must re-arm for this one.
        self.cond.notify_all();
        Ok(())
    }

    /// Waits for the earliest item to be due and takes it. `None` once the queue is
    /// closed and empty, or aborted.
    pub fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if s.aborted {
                return None;
            }
            let now = Instant::now();
            match s.heap.peek() {
                Some(Reverse(it)) if it.due <= now => {
                    let Reverse(it) = s.heap.pop().expect("peeked");
                    return Some(it.value);
                }
                Some(Reverse(it)) => {
                    let wait = it.due - now;
                    s = self
                        .cond
                        .wait_timeout(s, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                None if s.closed => return None,
                None => s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().heap.len()
    }

    /// Refuses further pushes; poppers drain the rest.
    pub fn close(&self) {
        self.lock().closed = true;
        self.cond.notify_all();
    }

    /// Stops poppers at once and returns how many items were abandoned.
    pub fn abort(&self) -> usize {
        let mut s = self.lock();
        s.aborted = true;
        s.closed = true;
        let n = s.heap.len();
        s.heap.clear();
        drop(s);
        self.cond.notify_all();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn orders_by_due_time_and_bounds() {
        let q = DelayQueue::new(2);
        let now = Instant::now();
        assert!(q.push(1, now + Duration::from_millis(30)).is_ok());
        assert!(q.push(2, now).is_ok());
        assert!(matches!(q.push(3, now), Err(PushError::Full(3))));
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), Some(1));
        assert!(Instant::now() >= now + Duration::from_millis(30));
        q.close();
        assert_eq!(q.pop(), None);
        assert!(matches!(q.push(4, now), Err(PushError::Closed(4))));
    }
}
