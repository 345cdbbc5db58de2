//! The write-behind queue: puts hand records to the bucket writer; a flush waits until
//! everything accepted before it has been written (or has failed).
//!
//! - [`WriteBehind::push`] accepts an item and gives it a sequence number. The queue is
//!   bounded in bytes: a producer waits while it is full (backpressure) — an item is
//!   never dropped. (An item larger than the whole bound is taken when the queue is
//!   empty, so it cannot wait forever.)
//! - The writer takes items with [`WriteBehind::take`], writes them, then reports with
//!   [`WriteBehind::settle`] that every item below a sequence number has settled:
//!   durable, or failed. Which ones failed is the tier's to remember (until they are
//!   written again or removed), not the queue's: a failure is never forgotten by being
//!   reported once.
//! - [`WriteBehind::wait_settled`] notes the next sequence number, asks the writer to
//!   seal early, and returns it once everything below it has settled.
//!
//! Everything is one mutex and one condvar (waiters re-check their condition), which
//! keeps the protocol small enough for loom to check exhaustively (`loom-tests`).

use std::collections::VecDeque;
use std::time::Duration;
use std::vec::Vec;

use crate::sync::{Condvar, Mutex, MutexGuard};

/// Why a push or flush did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue was closed (the tier is shutting down or failed).
    #[error("write-behind queue is closed")]
    Closed,
    /// The writer is gone (it panicked) before it wrote these items.
    #[error("the bucket writer stopped before {items} accepted items were written")]
    Abandoned {
        /// How many of the items waited for.
        items: u64,
    },
}

/// What the writer gets from [`WriteBehind::take`].
#[derive(Debug)]
pub struct Taken<T> {
    /// Items, in sequence order, with their sequence numbers.
    pub items: Vec<(u64, T)>,
    /// A flush is waiting for items up to this sequence number (exclusive): seal what
    /// covers them without waiting for a deadline.
    pub flush_upto: u64,
    /// The queue is closed and empty: the writer should finish.
    pub closed: bool,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<(u64, T, usize)>,
    queued_bytes: usize,
    capacity: usize,
    next_seq: u64,
    /// Every item below this has settled (durable or failed).
    settled: u64,
    /// The highest sequence number any flush waits for.
    flush_upto: u64,
    closed: bool,
    /// The writer is gone for good: nothing unsettled will ever settle.
    abandoned: bool,
}

impl<T> State<T> {
    /// Whether an item of `bytes` fits (an empty queue takes any item, so that one
    /// larger than the capacity cannot wait forever).
    fn has_room(&self, bytes: usize) -> bool {
        self.items.is_empty() || self.queued_bytes + bytes <= self.capacity
    }
}

/// The queue. See the module documentation.
#[derive(Debug)]
pub struct WriteBehind<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

impl<T> WriteBehind<T> {
    /// A queue holding at most `capacity` bytes of items.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                queued_bytes: 0,
                capacity,
                next_seq: 0,
                settled: 0,
                flush_upto: 0,
                closed: false,
                abandoned: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State<T>>) -> MutexGuard<'a, State<T>> {
        self.changed.wait(guard).unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Accepts an item of `bytes` bytes, waiting while the queue is full. Returns its
    /// sequence number.
    pub fn push(&self, item: T, bytes: usize) -> Result<u64, QueueError> {
        let mut s = self.lock();
        while !s.closed && !s.has_room(bytes) {
            s = self.wait(s);
        }
        if s.closed {
            return Err(QueueError::Closed);
        }
        Ok(self.accept(s, item, bytes))
    }

    /// Accepts an item if the queue has room for it now; gives it back if not.
    pub fn try_push(&self, item: T, bytes: usize) -> Result<Result<u64, T>, QueueError> {
        let s = self.lock();
        if s.closed {
            return Err(QueueError::Closed);
        }
        if !s.has_room(bytes) {
            return Ok(Err(item));
        }
        Ok(Ok(self.accept(s, item, bytes)))
    }

    /// Queues an item the caller checked there is room for; wakes the writer.
    fn accept(&self, mut s: MutexGuard<'_, State<T>>, item: T, bytes: usize) -> u64 {
        let seq = s.next_seq;
        s.next_seq += 1;
        s.queued_bytes += bytes;
        s.items.push_back((seq, item, bytes));
        drop(s);
        self.changed.notify_all();
        seq
    }

    /// Takes up to `max_bytes` of items (at least one if any), waiting up to `timeout`
    /// (`None`: indefinitely) while there is nothing to take and no flush waiting.
    pub fn take(&self, max_bytes: usize, timeout: Option<Duration>) -> Taken<T> {
        let mut s = self.lock();
        let idle = |s: &State<T>| s.items.is_empty() && !s.closed && s.flush_upto <= s.settled;
        if idle(&s) {
            s = match timeout {
                None => {
                    while idle(&s) {
                        s = self.wait(s);
                    }
                    s
                }
                Some(t) => self.wait_timeout(s, t),
            };
        }
        let mut items = Vec::new();
        let mut taken = 0;
        while let Some((_, _, bytes)) = s.items.front() {
            if !items.is_empty() && taken + bytes > max_bytes {
                break;
            }
            let (seq, item, bytes) = s.items.pop_front().expect("front exists");
            taken += bytes;
            s.queued_bytes -= bytes;
            items.push((seq, item));
        }
        let taken = Taken { items, flush_upto: s.flush_upto, closed: s.closed && s.items.is_empty() };
        drop(s);
        self.changed.notify_all();
        taken
    }

    #[cfg(not(larder_loom))]
    fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, State<T>>,
        timeout: Duration,
    ) -> MutexGuard<'a, State<T>> {
        self.changed.wait_timeout(guard, timeout).unwrap_or_else(std::sync::PoisonError::into_inner).0
    }

    #[cfg(larder_loom)]
    fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, State<T>>,
        _timeout: Duration,
    ) -> MutexGuard<'a, State<T>> {
        // loom has no clock: a timed wait is a wait that may end for any reason.
        self.wait(guard)
    }

    /// Reports that every item below `upto` has settled (been written, or failed).
    pub fn settle(&self, upto: u64) {
        let mut s = self.lock();
        s.settled = s.settled.max(upto);
        drop(s);
        self.changed.notify_all();
    }

    /// The writer is gone for good (it panicked): the queue closes, its items are
    /// dropped, and every waiting flush and producer wakes up with an error.
    pub fn abort(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.abandoned = true;
        s.items.clear();
        s.queued_bytes = 0;
        drop(s);
        self.changed.notify_all();
    }

    /// Asks the writer to settle everything accepted so far (sealing early) and waits
    /// for it; returns the sequence number waited for: every item below it has been
    /// written or has failed.
    pub fn wait_settled(&self) -> Result<u64, QueueError> {
        let mut s = self.lock();
        let target = s.next_seq;
        s.flush_upto = s.flush_upto.max(target);
        self.changed.notify_all();
        while s.settled < target {
            if s.abandoned {
                return Err(QueueError::Abandoned { items: target - s.settled });
            }
            s = self.wait(s);
        }
        Ok(target)
    }

    /// Waits, without asking the writer to hurry, until more items have settled than
    /// `past` (a count [`WriteBehind::settled`] gave), or the queue is closed or
    /// abandoned, or nothing is left to settle. Returns the count settled now.
    pub fn wait_progress(&self, past: u64) -> u64 {
        let mut s = self.lock();
        while s.settled <= past && s.settled < s.next_seq && !s.abandoned && !s.closed {
            s = self.wait(s);
        }
        s.settled
    }

    /// Whether an accepted item has yet to settle: what [`WriteBehind::wait_progress`]
    /// would wait for, so false once the queue is closed or abandoned.
    pub fn has_unsettled(&self) -> bool {
        let s = self.lock();
        s.settled < s.next_seq && !s.abandoned && !s.closed
    }

    /// How many items have settled.
    pub fn settled(&self) -> u64 {
        self.lock().settled
    }

    /// Closes the queue: pushes fail, the writer drains what is left and then sees
    /// `closed`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Bytes waiting to be taken.
    pub fn queued_bytes(&self) -> usize {
        self.lock().queued_bytes
    }

    /// The sequence number the next accepted item will get: every item accepted so far
    /// is below it.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }
}

#[cfg(all(test, not(larder_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn wait_settled_waits_for_everything_accepted_before_it() {
        let q = Arc::new(WriteBehind::new(1 << 20));
        for i in 0..5u32 {
            q.push(i, 100).unwrap();
        }
        let writer = {
            let q = Arc::clone(&q);
            thread::spawn(move || {
                let t = q.take(1 << 20, None);
                assert_eq!(t.items.len(), 5);
                q.settle(5);
            })
        };
        assert_eq!(q.wait_settled(), Ok(5));
        writer.join().unwrap();
    }

    #[test]
    fn a_waiting_flush_asks_the_writer_to_seal_early() {
        let q = Arc::new(WriteBehind::new(1 << 20));
        q.push(0u32, 1).unwrap();
        let t = q.take(1 << 20, Some(Duration::ZERO));
        assert_eq!((t.items.len(), t.flush_upto), (1, 0), "no flush yet");
        let flusher = {
            let q = Arc::clone(&q);
            thread::spawn(move || q.wait_settled())
        };
        // The writer is woken by the flush (take waits while idle and nothing is
        // asked), and learns what to seal.
        let t = q.take(1 << 20, None);
        assert_eq!(t.flush_upto, 1);
        q.settle(1);
        assert_eq!(flusher.join().unwrap(), Ok(1));
    }

    #[test]
    fn a_full_queue_refuses_without_waiting_and_takes_again_once_drained() {
        let q = Arc::new(WriteBehind::new(250));
        q.push(0u32, 100).unwrap();
        q.push(1, 100).unwrap();
        assert_eq!(q.try_push(2, 100), Ok(Err(2)), "a third item does not fit");
        assert_eq!(q.queued_bytes(), 200);
        let producer = {
            let q = Arc::clone(&q);
            thread::spawn(move || q.push(2, 100).unwrap())
        };
        let t = q.take(100, None);
        assert_eq!(t.items.len(), 1);
        assert_eq!(producer.join().unwrap(), 2, "the waiting producer got in once there was room");
    }

    #[test]
    fn an_item_larger_than_the_bound_is_taken_when_the_queue_is_empty() {
        let q = WriteBehind::new(10);
        q.push(0u32, 1000).unwrap();
        assert_eq!(q.take(5, Some(Duration::ZERO)).items.len(), 1);
    }

    #[test]
    fn try_push_gives_the_item_back_when_full_and_never_waits() {
        let q = WriteBehind::new(10);
        assert_eq!(q.try_push(0u32, 8), Ok(Ok(0)));
        assert_eq!(q.try_push(1u32, 8), Ok(Err(1)), "full: the item comes back");
        assert_eq!(q.queued_bytes(), 8);
        assert_eq!(q.take(100, Some(Duration::ZERO)).items.len(), 1);
        assert_eq!(q.try_push(2u32, 8), Ok(Ok(1)), "room again; sequence numbers stay dense");
        q.close();
        assert_eq!(q.try_push(3u32, 1), Err(QueueError::Closed));
    }

    #[test]
    fn abort_fails_every_waiter_and_every_later_push() {
        let q = Arc::new(WriteBehind::new(3));
        q.push(0u32, 1).unwrap();
        q.settle(1);
        q.push(1u32, 2).unwrap(); // fills the queue (item 0 is settled but not taken)
        let producer = {
            let q = Arc::clone(&q);
            thread::spawn(move || q.push(2u32, 2))
        };
        let flusher = {
            let q = Arc::clone(&q);
            thread::spawn(move || q.wait_settled())
        };
        q.abort();
        assert_eq!(producer.join().unwrap(), Err(QueueError::Closed));
        // Item 1, and item 2 if its push got in before the abort, never settle.
        assert!(matches!(flusher.join().unwrap(), Err(QueueError::Abandoned { items: 1 | 2 })));
        assert_eq!(q.queued_bytes(), 0);
        assert!(matches!(q.wait_settled(), Err(QueueError::Abandoned { .. })));
    }

    #[test]
    fn close_fails_pushes_and_lets_the_writer_drain() {
        let q = WriteBehind::new(1 << 20);
        q.push(0u32, 1).unwrap();
        assert_eq!(q.next_seq(), 1);
        q.close();
        assert_eq!(q.push(1, 1), Err(QueueError::Closed));
        let t = q.take(1, None);
        assert_eq!(t.items.len(), 1, "items accepted before the close are still written");
        assert!(t.closed, "and the writer learns it may finish");
        q.settle(1);
        assert_eq!(q.wait_settled(), Ok(1));
    }

    #[test]
    fn has_unsettled_means_wait_progress_would_wait() {
        let q = WriteBehind::new(1 << 20);
        assert!(!q.has_unsettled(), "nothing accepted");
        q.push(0u32, 1).unwrap();
        q.push(1u32, 1).unwrap();
        assert!(q.has_unsettled());
        assert_eq!(q.take(1 << 20, None).items.len(), 2);
        assert!(q.has_unsettled(), "taken by the writer is not settled");
        q.settle(1);
        assert!(q.has_unsettled(), "one left");
        q.settle(2);
        assert!(!q.has_unsettled());
        q.push(2u32, 1).unwrap();
        q.abort();
        assert!(!q.has_unsettled(), "abandoned: it will never settle");
        assert_eq!(q.wait_progress(2), 2, "and a wait returns at once");
    }

    #[test]
    fn take_returns_empty_handed_when_idle_past_its_timeout() {
        let q: WriteBehind<u32> = WriteBehind::new(1);
        let t = q.take(1, Some(Duration::ZERO));
        assert!(t.items.is_empty() && !t.closed);
    }
}
