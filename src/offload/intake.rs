//! The acknowledged submission shared by the durable strategies (`spool`, `redis`): a
//! bounded queue of submissions, each carrying the acknowledgement its submitter waits
//! for, and a writer that takes what is queued in batches and answers each submission
//! once its batch is durable (or refused).
//!
//! The backend owns the channel (a thread's or a runtime's), the submission's fields and
//! how a batch is made durable; [`Intake`] owns the rest: refusing once the engine
//! stops, the queue's bound and the error that names it, the queue depth, the
//! submitter's wait, and (through [`Batcher`]) the writer's taking of a batch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::app::BoxFuture;
use crate::offload::error::SubmitError;
use crate::offload::task::TaskId;

/// Where a submission's answer goes: its task id once durable, else why not.
pub type Ack = oneshot::Sender<Result<TaskId, SubmitError>>;

/// What a submitter waits on: the answer sent through its [`Ack`].
pub type Pending = oneshot::Receiver<Result<TaskId, SubmitError>>;

/// Why a channel did not take a submission.
pub enum Refused {
    /// The queue is at its bound.
    Full,
    /// The writer is gone (its receiving half was dropped).
    Closed,
}

/// The sending half of a writer's bounded channel.
pub trait Lane<T> {
    /// Queues `item` without waiting.
    fn offer(&self, item: T) -> Result<(), Refused>;
}

/// The receiving half of a writer's channel, as the batcher sees it.
pub trait Backlog<T> {
    /// The next queued item, if one is there now (never waits).
    fn take_now(&mut self) -> Option<T>;
}

impl<T> Lane<T> for crossbeam_channel::Sender<T> {
    fn offer(&self, item: T) -> Result<(), Refused> {
        self.try_send(item).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => Refused::Full,
            crossbeam_channel::TrySendError::Disconnected(_) => Refused::Closed,
        })
    }
}

impl<T> Lane<T> for tokio::sync::mpsc::Sender<T> {
    fn offer(&self, item: T) -> Result<(), Refused> {
        self.try_send(item).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => Refused::Full,
            tokio::sync::mpsc::error::TrySendError::Closed(_) => Refused::Closed,
        })
    }
}

impl<T> Backlog<T> for crossbeam_channel::Receiver<T> {
    fn take_now(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

impl<T> Backlog<T> for tokio::sync::mpsc::Receiver<T> {
    fn take_now(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

/// A durable engine's submission queue as its submitters see it.
pub struct Intake {
    /// The queue's bound (`--offload-queue`): the capacity a full queue reports.
    capacity: usize,
    /// What a submitter is told when the writer is gone (the backend's own error).
    gone: fn() -> SubmitError,
    /// Set when the engine starts to stop: later submissions are refused.
    closing: AtomicBool,
    /// Submissions queued and not yet taken by the writer (the queue depth).
    waiting: Arc<AtomicU64>,
}

impl Intake {
    /// A queue of at most `capacity` submissions; `gone` is the error for a submission
    /// whose writer is gone.
    pub fn new(capacity: usize, gone: fn() -> SubmitError) -> Intake {
        Intake {
            capacity,
            gone,
            closing: AtomicBool::new(false),
            waiting: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The bound the backend's channel is made with.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Refuses every submission from now on (the engine is stopping).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// `ShuttingDown` once [`Intake::close`] was called.
    pub fn ensure_open(&self) -> Result<(), SubmitError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        Ok(())
    }

    /// Submissions queued and not yet taken by the writer.
    pub fn depth(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The writer's side of the queue's depth.
    pub fn batcher(&self) -> Batcher {
        Batcher {
            waiting: self.waiting.clone(),
        }
    }

    /// Queues the submission `make` builds around its acknowledgement, without waiting:
    /// `Full` (naming the queue's bound) if there is no room, the backend's error if its
    /// writer is gone.
    pub fn offer<T>(
        &self,
        lane: &impl Lane<T>,
        make: impl FnOnce(Ack) -> T,
    ) -> Result<Pending, SubmitError> {
        let (ack, pending) = oneshot::channel();
        // Counted before it is queued, so the writer never takes it before it counts.
        self.waiting.fetch_add(1, Ordering::Relaxed);
        match lane.offer(make(ack)) {
            Ok(()) => Ok(pending),
            Err(refused) => {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                Err(match refused {
                    Refused::Full => SubmitError::Full {
                        capacity: self.capacity,
                    },
                    Refused::Closed => (self.gone)(),
                })
            }
        }
    }

    /// The submitter's wait: the writer's answer to a queued submission (the backend's
    /// error if the writer dropped it unanswered), or at once why it was not queued.
    pub fn wait(
        &self,
        queued: Result<Pending, SubmitError>,
    ) -> BoxFuture<Result<TaskId, SubmitError>> {
        let gone = self.gone;
        Box::pin(async move {
            match queued {
                Ok(pending) => pending.await.unwrap_or_else(|_| Err(gone())),
                Err(e) => Err(e),
            }
        })
    }
}

/// The writer's side: takes the submissions queued so far as one batch.
#[derive(Clone)]
pub struct Batcher {
    waiting: Arc<AtomicU64>,
}

impl Batcher {
    /// `first` (just received) and what else is queued now, up to `max` in all (at least
    /// one), in the order they were queued.
    pub fn take<T>(&self, first: T, rest: &mut impl Backlog<T>, max: usize) -> Vec<T> {
        let mut batch = vec![first];
        while batch.len() < max {
            match rest.take_now() {
                Some(s) => batch.push(s),
                None => break,
            }
        }
        self.waiting
            .fetch_sub(batch.len() as u64, Ordering::Relaxed);
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::error::SpoolError;

    struct Sub(u32, Ack);

    fn gone() -> SubmitError {
        SubmitError::Spool(SpoolError::WriterGone)
    }

    #[test]
    fn a_full_queue_names_its_bound_and_is_not_counted() {
        let intake = Intake::new(2, gone);
        let (tx, _rx) = crossbeam_channel::bounded::<Sub>(intake.capacity());
        let _a = intake.offer(&tx, |ack| Sub(1, ack)).unwrap();
        let _b = intake.offer(&tx, |ack| Sub(2, ack)).unwrap();
        let e = intake.offer(&tx, |ack| Sub(3, ack)).unwrap_err();
        assert!(matches!(e, SubmitError::Full { capacity: 2 }), "{e}");
        assert_eq!(intake.depth(), 2);
    }

    #[test]
    fn a_gone_writer_is_the_backends_error() {
        let intake = Intake::new(4, gone);
        let (tx, rx) = tokio::sync::mpsc::channel::<Sub>(intake.capacity());
        drop(rx);
        let e = intake.offer(&tx, |ack| Sub(1, ack)).unwrap_err();
        assert!(
            matches!(e, SubmitError::Spool(SpoolError::WriterGone)),
            "{e}"
        );
        assert_eq!(intake.depth(), 0);
        // Queued, then dropped unanswered.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Sub>(intake.capacity());
        let pending = intake.offer(&tx, |ack| Sub(1, ack));
        drop(rx.try_recv().unwrap());
        let e = crate::rt::block_on(intake.wait(pending)).unwrap_err();
        assert!(
            matches!(e, SubmitError::Spool(SpoolError::WriterGone)),
            "{e}"
        );
    }

    #[test]
    fn a_batch_takes_what_is_queued_up_to_its_max_in_order() {
        let intake = Intake::new(8, gone);
        let (tx, mut rx) = crossbeam_channel::bounded::<Sub>(intake.capacity());
        let pending: Vec<_> = (0..5)
            .map(|i| intake.offer(&tx, |ack| Sub(i, ack)).unwrap())
            .collect();
        let batcher = intake.batcher();
        let first = rx.recv().unwrap();
        let batch = batcher.take(first, &mut rx, 3);
        assert_eq!(batch.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(intake.depth(), 2);
        for s in batch {
            let _ = s.1.send(Ok(u64::from(s.0) + 100));
        }
        let first = rx.recv().unwrap();
        let batch = batcher.take(first, &mut rx, 3);
        assert_eq!(batch.iter().map(|s| s.0).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(intake.depth(), 0);
        let mut answers = pending.into_iter().map(|p| intake.wait(Ok(p)));
        assert_eq!(crate::rt::block_on(answers.next().unwrap()).unwrap(), 100);
    }

    #[test]
    fn a_closed_intake_refuses() {
        let intake = Intake::new(1, gone);
        assert!(intake.ensure_open().is_ok());
        intake.close();
        assert!(matches!(
            intake.ensure_open(),
            Err(SubmitError::ShuttingDown)
        ));
    }
}
