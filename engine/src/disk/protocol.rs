//! The bucket protocol: who may read a bucket file, and who deletes it, exactly once.
//!
//! ```text
//!            publish               retire
//! Writing ──────────▶ Published ──────────▶ Retiring ──(last reader out)──▶ Gone
//!    │                                          (no readers: at once)
//!    └──────── fail (the writer is dropped) ─────────────────────────────▶ Gone
//! ```
//!
//! - **Writing**: one writer ([`WriteGuard`]); readers cannot get in. If the write fails
//!   at any step, dropping the guard (without publishing) unlinks the file exactly once:
//!   nothing half-written is ever visible.
//! - **Published**: any number of [`ReadGuard`]s; each pins the file.
//! - **Retiring** (evicted, removed, wiped): no new readers; whoever brings the reader
//!   count to zero — the retirer if there were none, else the last reader out — unlinks.
//! - **Gone**: unlinked.
//!
//! The phase and the reader count share one atomic word, so every transition is a
//! single compare-and-swap and exactly one party ever sees "retiring, no readers".
//! Guards release in `Drop`, which runs once: releasing twice is impossible by
//! construction. The unlink itself is the caller's (the [`Unlink`] it supplies), so the
//! protocol stays free of I/O.

use crate::sync::{Arc, AtomicU64, Ordering};

/// Deletes a bucket's file. Called at most once per bucket.
pub trait Unlink {
    /// Deletes the file (errors are the implementor's to report).
    fn unlink(&self);
}

/// A bucket's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Being written; invisible to readers.
    Writing,
    /// Readable.
    Published,
    /// Taking no new readers; deleted when the last one leaves.
    Retiring,
    /// Deleted.
    Gone,
}

/// Something that happens to a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The writer made the file durable and visible.
    Publish,
    /// The writer gave up.
    Fail,
    /// A reader asks to read.
    Enter,
    /// A reader leaves; `last` if no other reader remains.
    Leave {
        /// No other reader remains.
        last: bool,
    },
    /// The bucket is to be deleted once unused.
    Retire {
        /// No reader holds it.
        unused: bool,
    },
}

/// The result of an event: the next phase, and whether the caller must unlink now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The phase after the event.
    pub phase: Phase,
    /// The party that caused the event unlinks the file.
    pub unlink: bool,
}

/// The protocol as a pure function: `None` where the event is refused (a reader may not
/// enter, a bucket is retired twice) or impossible.
pub const fn transition(phase: Phase, event: Event) -> Option<Step> {
    let (phase, unlink) = match (phase, event) {
        (Phase::Writing, Event::Publish) => (Phase::Published, false),
        (Phase::Writing, Event::Fail) => (Phase::Gone, true),
        (Phase::Published, Event::Enter) => (Phase::Published, false),
        (Phase::Published, Event::Leave { .. }) => (Phase::Published, false),
        (Phase::Published, Event::Retire { unused: false }) => (Phase::Retiring, false),
        (Phase::Published, Event::Retire { unused: true }) => (Phase::Gone, true),
        (Phase::Retiring, Event::Leave { last: false }) => (Phase::Retiring, false),
        (Phase::Retiring, Event::Leave { last: true }) => (Phase::Gone, true),
        _ => return None,
    };
    Some(Step { phase, unlink })
}

const PHASE_BITS: u64 = 2;
const PHASE_MASK: u64 = (1 << PHASE_BITS) - 1;
const ONE_READER: u64 = 1 << PHASE_BITS;

fn encode(phase: Phase, readers: u64) -> u64 {
    let p = match phase {
        Phase::Writing => 0,
        Phase::Published => 1,
        Phase::Retiring => 2,
        Phase::Gone => 3,
    };
    (readers << PHASE_BITS) | p
}

fn decode(word: u64) -> (Phase, u64) {
    let phase = match word & PHASE_MASK {
        0 => Phase::Writing,
        1 => Phase::Published,
        2 => Phase::Retiring,
        _ => Phase::Gone,
    };
    (phase, word >> PHASE_BITS)
}

/// One bucket's shared state.
#[derive(Debug)]
pub struct Bucket<U: Unlink> {
    word: AtomicU64,
    unlinker: U,
}

/// The right to write a new bucket; dropping it without publishing fails the write.
#[derive(Debug)]
pub struct WriteGuard<U: Unlink> {
    bucket: Option<Arc<Bucket<U>>>,
}

/// A pin on a published bucket: its file stays until every pin is gone.
#[derive(Debug)]
pub struct ReadGuard<U: Unlink> {
    bucket: Arc<Bucket<U>>,
}

/// What [`Bucket::retire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retired {
    /// Nobody was reading: unlinked now.
    Unlinked,
    /// `readers` still read; the last of them unlinks.
    Deferred {
        /// Readers at the time.
        readers: u64,
    },
    /// The bucket was not published (being written, already retiring, or gone).
    NotPublished(Phase),
}

impl<U: Unlink> Bucket<U> {
    /// A new bucket being written; `unlinker` deletes its file when the time comes.
    pub fn create(unlinker: U) -> WriteGuard<U> {
        WriteGuard {
            bucket: Some(Arc::new(Bucket { word: AtomicU64::new(encode(Phase::Writing, 0)), unlinker })),
        }
    }

    /// What deletes the bucket's file.
    pub fn unlinker(&self) -> &U {
        &self.unlinker
    }

    /// The current phase and reader count (a snapshot).
    pub fn state(&self) -> (Phase, u64) {
        decode(self.word.load(Ordering::Acquire))
    }

    /// Pins the bucket for a read, if it is published. (An associated function rather
    /// than a method: loom's `Arc` cannot be a receiver.)
    pub fn read(this: &Arc<Self>) -> Option<ReadGuard<U>> {
        let mut word = this.word.load(Ordering::Acquire);
        loop {
            let (phase, readers) = decode(word);
            transition(phase, Event::Enter)?;
            match this.word.compare_exchange_weak(
                word,
                encode(phase, readers + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(ReadGuard { bucket: Arc::clone(this) }),
                Err(current) => word = current,
            }
        }
    }

    /// Retires a published bucket: no new readers; unlinked now if none read it, else
    /// by the last reader out.
    pub fn retire(&self) -> Retired {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let (phase, readers) = decode(word);
            let Some(step) = transition(phase, Event::Retire { unused: readers == 0 }) else {
                return Retired::NotPublished(phase);
            };
            match self.word.compare_exchange_weak(
                word,
                encode(step.phase, readers),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) if step.unlink => {
                    self.unlinker.unlink();
                    return Retired::Unlinked;
                }
                Ok(_) => return Retired::Deferred { readers },
                Err(current) => word = current,
            }
        }
    }
}

impl<U: Unlink> WriteGuard<U> {
    /// The bucket being written.
    pub fn bucket(&self) -> &Arc<Bucket<U>> {
        self.bucket.as_ref().expect("present until publish or drop")
    }

    /// Makes the bucket readable. Call only once its file is durable and in place.
    pub fn publish(mut self) -> Arc<Bucket<U>> {
        let bucket = self.bucket.take().expect("present until publish or drop");
        let step = transition(Phase::Writing, Event::Publish).expect("a writer publishes once");
        bucket.word.store(encode(step.phase, 0), Ordering::Release);
        bucket
    }
}

impl<U: Unlink> Drop for WriteGuard<U> {
    fn drop(&mut self) {
        // Not published: the write failed somewhere. Nobody else can touch a bucket in
        // Writing, so this is the one and only unlink.
        if let Some(bucket) = self.bucket.take() {
            let step = transition(Phase::Writing, Event::Fail).expect("a writer fails once");
            bucket.word.store(encode(step.phase, 0), Ordering::Release);
            bucket.unlinker.unlink();
        }
    }
}

impl<U: Unlink> ReadGuard<U> {
    /// The pinned bucket.
    pub fn bucket(&self) -> &Arc<Bucket<U>> {
        &self.bucket
    }
}

impl<U: Unlink> Drop for ReadGuard<U> {
    fn drop(&mut self) {
        let before = self.bucket.word.fetch_sub(ONE_READER, Ordering::AcqRel);
        let (phase, readers) = decode(before);
        let step = transition(phase, Event::Leave { last: readers == 1 });
        if let Some(Step { phase: Phase::Gone, unlink: true }) = step {
            // The bucket was retiring and this was the last reader: it is ours to
            // delete. No one else can enter or leave a retiring bucket with no readers.
            self.bucket.word.store(encode(Phase::Gone, 0), Ordering::Release);
            self.bucket.unlinker.unlink();
        }
    }
}

#[cfg(all(test, not(larder_loom)))]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU32;

    #[derive(Debug, Default)]
    struct Count(AtomicU32);
    impl Unlink for &'static Count {
        fn unlink(&self) {
            self.0.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
        }
    }

    fn counter() -> &'static Count {
        alloc::boxed::Box::leak(alloc::boxed::Box::default())
    }

    fn unlinks(c: &Count) -> u32 {
        c.0.load(core::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn transition_table_is_exhaustive() {
        use Phase::*;
        let events = [
            Event::Publish,
            Event::Fail,
            Event::Enter,
            Event::Leave { last: false },
            Event::Leave { last: true },
            Event::Retire { unused: false },
            Event::Retire { unused: true },
        ];
        for phase in [Writing, Published, Retiring, Gone] {
            for event in events {
                let expected = match (phase, event) {
                    (Writing, Event::Publish) => Some((Published, false)),
                    (Writing, Event::Fail) => Some((Gone, true)),
                    (Published, Event::Enter | Event::Leave { .. }) => Some((Published, false)),
                    (Published, Event::Retire { unused }) => {
                        Some(if unused { (Gone, true) } else { (Retiring, false) })
                    }
                    (Retiring, Event::Leave { last }) => {
                        Some(if last { (Gone, true) } else { (Retiring, false) })
                    }
                    _ => None,
                };
                assert_eq!(
                    transition(phase, event).map(|s| (s.phase, s.unlink)),
                    expected,
                    "{phase:?} {event:?}"
                );
            }
        }
    }

    #[test]
    fn a_failed_write_unlinks_once_and_is_never_readable() {
        let c = counter();
        let w = Bucket::create(c);
        let b = Arc::clone(w.bucket());
        assert!(Bucket::read(&b).is_none(), "a bucket being written has no readers");
        drop(w);
        assert_eq!(unlinks(c), 1);
        assert_eq!(b.state(), (Phase::Gone, 0));
        assert!(Bucket::read(&b).is_none());
        assert_eq!(b.retire(), Retired::NotPublished(Phase::Gone));
        assert_eq!(unlinks(c), 1);
    }

    #[test]
    fn retiring_an_unread_bucket_unlinks_at_once() {
        let c = counter();
        let b = Bucket::create(c).publish();
        assert_eq!(b.retire(), Retired::Unlinked);
        assert_eq!(unlinks(c), 1);
        assert_eq!(b.retire(), Retired::NotPublished(Phase::Gone));
    }

    #[test]
    fn the_last_reader_out_unlinks_and_no_reader_enters_after_retire() {
        let c = counter();
        let b = Bucket::create(c).publish();
        let r1 = Bucket::read(&b).unwrap();
        let r2 = Bucket::read(&b).unwrap();
        assert_eq!(b.state(), (Phase::Published, 2));
        assert_eq!(b.retire(), Retired::Deferred { readers: 2 });
        assert!(Bucket::read(&b).is_none(), "a retiring bucket takes no new readers");
        assert_eq!(b.retire(), Retired::NotPublished(Phase::Retiring));
        drop(r1);
        assert_eq!(unlinks(c), 0);
        drop(r2);
        assert_eq!(unlinks(c), 1);
        assert_eq!(b.state(), (Phase::Gone, 0));
    }

    #[test]
    fn readers_of_a_published_bucket_never_unlink() {
        let c = counter();
        let b = Bucket::create(c).publish();
        for _ in 0..3 {
            drop(Bucket::read(&b).unwrap());
        }
        assert_eq!(unlinks(c), 0);
        assert_eq!(b.state(), (Phase::Published, 0));
    }
}
