//! A counting bound shared by the strategies that cap work in progress: `thread` (live
//! task threads) and `pool` (async tasks waiting on its event loop).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

pub struct Slots {
    taken: Mutex<usize>,
    changed: Condvar,
    max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            taken: Mutex::new(0),
            changed: Condvar::new(),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot if one is free now.
    pub fn try_acquire(&self) -> bool {
        let mut n = self.lock();
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// Takes a slot, waiting for one to be released if all are taken.
    pub fn acquire(&self) {
        let mut n = self.lock();
        while *n >= self.max {
            n = self.changed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
    }

    pub fn release(&self) {
        let mut n = self.lock();
        *n = n.saturating_sub(1);
        drop(n);
        // Wakes both kinds of waiter: `acquire` and `wait_empty`.
        self.changed.notify_all();
    }

    pub fn taken(&self) -> usize {
        *self.lock()
    }

    /// Waits until every slot is released or `deadline` passes; returns how many are
    /// still taken.
    pub fn wait_empty(&self, deadline: Instant) -> usize {
        let mut n = self.lock();
        while *n > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            n = self
                .changed
                .wait_timeout(n, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *n
    }
}
