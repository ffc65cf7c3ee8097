//! A bounded queue whose items become available at a due time (the pool's queue, which
//! also holds delayed tasks).
//!
//! Many workers may wait on it, so a push wakes one of them, never all: one waiter at a
//! time (the leader) sleeps until the earliest item is due, the others until woken, and
//! a worker that takes an item wakes the next one while items are left.

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
    /// The ticket of the popper waiting for the earliest item's due time, if any.
    leader: Option<u64>,
    tickets: u64,
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
                leader: None,
                tickets: 0,
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
        // Only a new earliest item changes what the waiters wait for: hand its wait
        // (or, when due, the item) to one of them.
        let first = s.heap.peek().is_some_and(|Reverse(it)| it.seq == seq);
        if first {
            s.leader = None;
        }
        drop(s);
        if first {
            self.cond.notify_one();
        }
        Ok(())
    }

    /// Waits for the earliest item to be due and takes it. `None` once the queue is
    /// closed and empty, or aborted.
    pub fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        let out = loop {
            if s.aborted {
                break None;
            }
            let now = Instant::now();
            match s.heap.peek() {
                Some(Reverse(it)) if it.due <= now => {
                    let Reverse(it) = s.heap.pop().expect("peeked");
                    break Some(it.value);
                }
                Some(Reverse(it)) => {
                    let wait = it.due - now;
                    if s.leader.is_some() {
                        s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner());
                    } else {
                        s.tickets += 1;
                        let me = s.tickets;
                        s.leader = Some(me);
                        s = self
                            .cond
                            .wait_timeout(s, wait)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                        if s.leader == Some(me) {
                            s.leader = None;
                        }
                    }
                }
                None if s.closed => break None,
                None => s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner()),
            }
        };
        // Pass the turn on: another waiter takes the next item or leads the wait for it;
        // once a closed queue is empty, every waiter returns.
        let next = out.is_some() && s.leader.is_none() && !s.heap.is_empty();
        let finished = s.closed && s.heap.is_empty();
        drop(s);
        if finished {
            self.cond.notify_all();
        } else if next {
            self.cond.notify_one();
        }
        out
    }

    /// Whether [`DelayQueue::close`] (or abort) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
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

    #[test]
    fn many_poppers_take_every_item_once_whatever_the_order_of_due_times() {
        use std::sync::Arc;
        let q = Arc::new(DelayQueue::new(10_000));
        let poppers: Vec<_> = (0..8)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(v) = q.pop() {
                        got.push(v);
                    }
                    got
                })
            })
            .collect();
        let start = Instant::now();
        // A late item first (a leader waits for it), then earlier ones that must not
        // wait behind it.
        q.push(0u32, start + Duration::from_millis(50))
            .ok()
            .unwrap();
        for i in 1..2000u32 {
            let due = start + Duration::from_millis(u64::from(i % 7));
            q.push(i, due).ok().unwrap();
        }
        q.close();
        let mut all: Vec<u32> = poppers
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..2000).collect::<Vec<_>>());
    }
}
