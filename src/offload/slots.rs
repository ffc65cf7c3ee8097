//! A counting bound shared by the strategies that cap work in progress: `thread` (live
//! task threads) and `pool` (async tasks waiting on its event loop).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

pub struct Slots {
    state: Mutex<State>,
    /// Signalled (one waiter) when a slot is released.
    freed: Condvar,
    /// Signalled (all waiters) when the last slot is released.
    emptied: Condvar,
    max: usize,
}

struct State {
    taken: usize,
    /// Threads in `acquire` and in `wait_empty`: a release wakes them only if there
    /// are any (a notify is a system call even with nobody waiting).
    acquiring: usize,
    emptying: usize,
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            state: Mutex::new(State {
                taken: 0,
                acquiring: 0,
                emptying: 0,
            }),
            freed: Condvar::new(),
            emptied: Condvar::new(),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot if one is free now.
    pub fn try_acquire(&self) -> bool {
        let mut s = self.lock();
        if s.taken >= self.max {
            return false;
        }
        s.taken += 1;
        true
    }

    /// Takes a slot, waiting for one to be released if all are taken.
    pub fn acquire(&self) {
        let mut s = self.lock();
        while s.taken >= self.max {
            s.acquiring += 1;
            s = self.freed.wait(s).unwrap_or_else(|p| p.into_inner());
            s.acquiring -= 1;
        }
        s.taken += 1;
    }

    pub fn release(&self) {
        let mut s = self.lock();
        s.taken = s.taken.saturating_sub(1);
        let (acquiring, emptied) = (s.acquiring > 0, s.taken == 0 && s.emptying > 0);
        drop(s);
        if acquiring {
            self.freed.notify_one();
        }
        if emptied {
            self.emptied.notify_all();
        }
    }

    pub fn taken(&self) -> usize {
        self.lock().taken
    }

    /// Waits until every slot is released or `deadline` passes; returns how many are
    /// still taken.
    pub fn wait_empty(&self, deadline: Instant) -> usize {
        let mut s = self.lock();
        while s.taken > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s.emptying += 1;
            s = self
                .emptied
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            s.emptying -= 1;
        }
        s.taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn acquire_waits_for_a_release_and_wait_empty_for_the_last() {
        let slots = Arc::new(Slots::new(2));
        assert!(slots.try_acquire() && slots.try_acquire());
        assert!(!slots.try_acquire());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = slots.clone();
                std::thread::spawn(move || {
                    s.acquire();
                    s.release();
                })
            })
            .collect();
        let s = slots.clone();
        let empty =
            std::thread::spawn(move || s.wait_empty(Instant::now() + Duration::from_secs(60)));
        slots.release();
        slots.release();
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(empty.join().unwrap(), 0);
        assert_eq!(slots.taken(), 0);
        let past = Instant::now();
        assert!(slots.try_acquire());
        assert_eq!(
            slots.wait_empty(past),
            1,
            "a passed deadline returns at once"
        );
    }
}
