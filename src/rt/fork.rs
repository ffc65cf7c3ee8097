//! Per-process state that survives `fork` safely.
//!
//! A pre-fork master may run threads (offload executors, Python's threads, timers)
//! when it forks. The child gets a copy of every lock as it was at that instant, so a
//! mutex a master thread held is locked forever in the child, and a queue copied
//! mid-update holds the master's tasks too. [`ForkLocal`] gives each process its own
//! value: the first access in a forked child builds a fresh one without touching
//! (locking, or dropping) anything inherited.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

extern "C" fn child_after_fork() {
    // Async-signal-safe, as a handler run in a forked child must be: one atomic add.
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Makes [`generation`] change in every process forked from now on.
pub fn watch_forks() {
    REGISTER.call_once(|| {
        // SAFETY: the handler only does an atomic add, which is async-signal-safe, as
        // required for code run in the child between fork and exec.
        unsafe {
            libc::pthread_atfork(None, None, Some(child_after_fork));
        }
    });
}

/// A number that differs in each process forked after [`watch_forks`] ran (and after
/// any [`ForkLocal`] was created).
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

struct Slot<T> {
    generation: u64,
    value: T,
}

/// A value of which each process has its own copy, made on first use in that process.
///
/// Lookups are one atomic load and a compare. A value inherited from the parent is
/// never locked, used or dropped in the child (it is leaked: one per fork), so threads
/// that held its locks in the parent cannot block the child.
pub struct ForkLocal<T> {
    slot: AtomicPtr<Slot<T>>,
}

impl<T> ForkLocal<T> {
    pub fn new() -> ForkLocal<T> {
        // Registered before any value exists, so a fork that copies one is seen.
        watch_forks();
        ForkLocal {
            slot: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// This process's value, made by `init` on first use here. `init` may run and its
    /// result be dropped when another thread installs a value first: keep it free of
    /// side effects (start threads lazily, from the value's own methods).
    pub fn get_or_init(&self, init: impl Fn() -> T) -> &T {
        let gen = generation();
        loop {
            let cur = self.slot.load(Ordering::Acquire);
            // SAFETY: a non-null pointer came from `Box::into_raw` below and is freed
            // only by `Drop`, which has `&mut self`, so it is valid for `&self`'s life.
            if let Some(s) = unsafe { cur.as_ref() } {
                if s.generation == gen {
                    return &s.value;
                }
            }
            let new = Box::into_raw(Box::new(Slot {
                generation: gen,
                value: init(),
            }));
            match self
                .slot
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                // The replaced slot, if any, belongs to a parent process: leaked.
                // SAFETY: `new` is installed and, like any slot, lives until `Drop`.
                Ok(_) => return unsafe { &(*new).value },
                Err(_) => {
                    // SAFETY: `new` was never shared; this thread still owns it.
                    drop(unsafe { Box::from_raw(new) });
                }
            }
        }
    }

    /// This process's value, if one was made here.
    pub fn get(&self) -> Option<&T> {
        let cur = self.slot.load(Ordering::Acquire);
        // SAFETY: as in `get_or_init`.
        unsafe { cur.as_ref() }
            .filter(|s| s.generation == generation())
            .map(|s| &s.value)
    }
}

impl<T: Default> ForkLocal<T> {
    /// This process's value, made with `T::default()` on first use here.
    pub fn local(&self) -> &T {
        self.get_or_init(T::default)
    }
}

impl<T> Default for ForkLocal<T> {
    fn default() -> Self {
        ForkLocal::new()
    }
}

impl<T> Drop for ForkLocal<T> {
    fn drop(&mut self) {
        let cur = *self.slot.get_mut();
        if cur.is_null() {
            return;
        }
        // SAFETY: `&mut self` means no reference into the slot is alive.
        let slot = unsafe { Box::from_raw(cur) };
        if slot.generation != generation() {
            // The parent's: its locks may be held by threads that do not exist here.
            std::mem::forget(slot);
        }
    }
}

// SAFETY: a ForkLocal hands out `&T` to any thread (so T must be Sync) and may drop
// its T on another thread (so T must be Send), exactly like `OnceLock<T>`.
unsafe impl<T: Send + Sync> Sync for ForkLocal<T> {}
// SAFETY: as above; moving the ForkLocal moves ownership of the boxed T.
unsafe impl<T: Send> Send for ForkLocal<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn one_value_per_process_and_a_locked_parent_value_does_not_block_the_child() {
        let local: ForkLocal<Mutex<u32>> = ForkLocal::new();
        *local.local().lock().unwrap() = 7;
        assert_eq!(*local.local().lock().unwrap(), 7);
        let held = local.local().lock().unwrap();
        // SAFETY: the child only locks a fresh mutex, formats nothing and exits with
        // `_exit`; the test harness's other threads are not touched.
        match unsafe { libc::fork() } {
            0 => {
                let ok = local.get().is_none() && *local.local().lock().unwrap() == 0;
                // SAFETY: leaves without running the parent's atexit handlers.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            child => {
                assert!(child > 0);
                drop(held);
                let mut status = 0;
                // SAFETY: waits for the child forked above.
                unsafe { libc::waitpid(child, &mut status, 0) };
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            }
        }
        assert_eq!(*local.local().lock().unwrap(), 7);
    }
}
