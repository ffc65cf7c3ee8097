//! A queue into an event loop thread: producers push under a mutex and ring an eventfd
//! only when the queue was empty, so a batch of requests costs one wake-up; the loop
//! watches the eventfd (`loop.add_reader`) and drains the queue when it fires.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// A multi-producer queue drained by one event loop.
pub(crate) struct Inbox<T> {
    queue: Mutex<Vec<T>>,
    /// Readable while the queue may hold items the loop has not taken.
    bell: OwnedFd,
}

impl<T> Inbox<T> {
    pub(crate) fn new() -> io::Result<Inbox<T>> {
        // SAFETY: eventfd takes no pointers; a negative result is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Inbox {
            queue: Mutex::new(Vec::new()),
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            bell: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The descriptor the loop watches for readability.
    pub(crate) fn fd(&self) -> RawFd {
        self.bell.as_raw_fd()
    }

    pub(crate) fn push(&self, item: T) {
        self.push_all(std::iter::once(item));
    }

    /// Queues `items`; rings the bell when the loop had nothing queued.
    pub(crate) fn push_all(&self, items: impl IntoIterator<Item = T>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = q.is_empty();
        q.extend(items);
        let ring = was_empty && !q.is_empty();
        drop(q);
        if ring {
            self.ring();
        }
    }

    fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full counter
        // (EAGAIN) already means "readable", which is all the bell says.
        unsafe {
            libc::write(self.fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// On the loop: silences the bell, then takes everything queued. An item pushed
    /// after the take rings again, so none is left behind.
    pub(crate) fn take(&self, into: &mut Vec<T>) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe {
            libc::read(self.fd(), (&mut count as *mut u64).cast(), 8);
        }
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *q, into);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_once_per_batch_and_drains() {
        let inbox = Inbox::new().unwrap();
        inbox.push_all([1, 2]);
        inbox.push(3);
        let mut got = Vec::new();
        inbox.take(&mut got);
        assert_eq!(got, vec![1, 2, 3]);
        got.clear();
        inbox.take(&mut got);
        assert!(got.is_empty());
    }
}
