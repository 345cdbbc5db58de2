//! The bucket writer's policy, as a sans-IO machine: which bucket each record goes
//! into and where, and when a bucket is sealed. The writer thread does the I/O and
//! reads the clock; this decides.
//!
//! # Policy
//!
//! Records are laid out back to back in the open bucket (every record a whole number
//! of blocks, [`RecordLayout`]). The open bucket is sealed when
//! - it holds [`BatchPolicy::bucket_bytes`] (full);
//! - no record has arrived for [`BatchPolicy::idle`] (the stream paused: what came is
//!   made durable soon, however little);
//! - its first record is [`BatchPolicy::max_age`] old (a steady trickle still gets
//!   persisted in bounded time);
//! - a flush waits for one of its records;
//! - the queue closed.
//!
//! Sealing on idleness rather than on age alone keeps buckets full under a steady
//! stream that runs near the device's speed: a deadline counted from the first record
//! cut such a stream into part-filled buckets, and every bucket costs a sync, a rename
//! and a directory sync.
//!
//! # Call order
//!
//! For each batch the writer takes from the queue: [`Batcher::handle_record`] per
//! record (in sequence order), each followed by [`Batcher::poll_full`] (a full bucket
//! is sealed before the next record starts another); then [`Batcher::handle_flush`]
//! with the flush barrier the queue reported, [`Batcher::handle_close`] if it closed;
//! then drain [`Batcher::poll_seal`] with the current time. (Sealing for any other
//! reason between the records of one batch would cut a flushed batch into a bucket
//! per record.) Wait for more input at most until
//! [`Batcher::poll_timeout`]. If a bucket cannot be opened, [`Batcher::handle_abandon`].

use crate::disk::format::RecordLayout;
use crate::ids::BucketId;
use crate::time::{Duration, Instant};

/// When buckets are sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// A bucket holding this many bytes is sealed.
    pub bucket_bytes: u64,
    /// A bucket no record has joined for this long is sealed.
    pub idle: Duration,
    /// A bucket whose first record is this old is sealed.
    pub max_age: Duration,
}

/// Where a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The bucket.
    pub bucket: BucketId,
    /// The bucket is new: open its file before writing the record.
    pub opens: bool,
    /// The record's offset in the bucket.
    pub record_offset: u64,
    /// The record's layout.
    pub layout: RecordLayout,
}

/// A bucket to seal now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// The bucket.
    pub bucket: BucketId,
    /// Bytes of records in it: where its footer goes.
    pub data_len: u64,
    /// Why.
    pub reason: SealReason,
}

/// Why a bucket is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealReason {
    /// It is full.
    Full,
    /// No record joined it for the idle time.
    Idle,
    /// Its first record reached the maximum age.
    Age,
    /// A flush waits for one of its records.
    Flush,
    /// The queue closed.
    Close,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    id: BucketId,
    opened: Instant,
    last_record: Instant,
    len: u64,
    first_seq: u64,
}

/// The policy machine. See the module documentation for the call order.
#[derive(Debug)]
pub struct Batcher {
    policy: BatchPolicy,
    next_id: u64,
    open: Option<Open>,
    flush_upto: u64,
    closing: bool,
}

impl Batcher {
    /// A batcher whose first bucket will be `next_id`.
    pub fn new(policy: BatchPolicy, next_id: u64) -> Self {
        Self { policy, next_id, open: None, flush_upto: 0, closing: false }
    }

    /// Places record `seq` (key and value of these lengths), opening a bucket if none
    /// is open.
    pub fn handle_record(&mut self, now: Instant, seq: u64, key_len: usize, value_len: u64) -> Placement {
        let layout = RecordLayout::new(key_len, value_len);
        let opens = self.open.is_none();
        let open = self.open.get_or_insert_with(|| {
            let id = BucketId(self.next_id);
            self.next_id += 1;
            Open { id, opened: now, last_record: now, len: 0, first_seq: seq }
        });
        let record_offset = open.len;
        open.len += layout.len;
        open.last_record = now;
        Placement { bucket: open.id, opens, record_offset, layout }
    }

    /// A flush waits for every record below `upto`.
    pub fn handle_flush(&mut self, upto: u64) {
        self.flush_upto = self.flush_upto.max(upto);
    }

    /// The queue closed: whatever is open is sealed next.
    pub fn handle_close(&mut self) {
        self.closing = true;
    }

    /// The open bucket could not be opened or written: forget it (its records are the
    /// writer's to fail). The next record opens a new bucket.
    pub fn handle_abandon(&mut self) {
        self.open = None;
    }

    /// The open bucket, if it is full (it is then no longer open).
    #[must_use]
    pub fn poll_full(&mut self) -> Option<Seal> {
        let open = self.open.filter(|o| o.len >= self.policy.bucket_bytes)?;
        self.open = None;
        Some(Seal { bucket: open.id, data_len: open.len, reason: SealReason::Full })
    }

    /// The open bucket, if it must be sealed now (it is then no longer open).
    #[must_use]
    pub fn poll_seal(&mut self, now: Instant) -> Option<Seal> {
        let open = self.open?;
        let reason = seal_reason(&self.policy, &open, now, self.flush_upto, self.closing)?;
        self.open = None;
        Some(Seal { bucket: open.id, data_len: open.len, reason })
    }

    /// When the open bucket will be due with no new input (`None`: nothing is open).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.open.map(|o| (o.last_record + self.policy.idle).min(o.opened + self.policy.max_age))
    }

    /// Whether a bucket is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

/// Why `open` must be sealed at `now`, if it must: the policy as a pure function.
fn seal_reason(
    p: &BatchPolicy,
    open: &Open,
    now: Instant,
    flush_upto: u64,
    closing: bool,
) -> Option<SealReason> {
    if open.len >= p.bucket_bytes {
        Some(SealReason::Full)
    } else if open.first_seq < flush_upto {
        Some(SealReason::Flush)
    } else if closing {
        Some(SealReason::Close)
    } else if now >= open.opened + p.max_age {
        Some(SealReason::Age)
    } else if now >= open.last_record + p.idle {
        Some(SealReason::Idle)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BatchPolicy = BatchPolicy {
        bucket_bytes: 64 << 20,
        idle: Duration::from_millis(20),
        max_age: Duration::from_secs(1),
    };

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn records_are_laid_out_back_to_back_and_a_full_bucket_is_sealed_at_once() {
        let mut b = Batcher::new(POLICY, 7);
        let first = b.handle_record(at(0), 0, 10, 1 << 20);
        assert_eq!((first.bucket, first.opens, first.record_offset), (BucketId(7), true, 0));
        let second = b.handle_record(at(0), 1, 10, 1 << 20);
        assert_eq!((second.bucket, second.opens), (BucketId(7), false));
        assert_eq!(second.record_offset, first.layout.len, "back to back");
        assert_eq!(second.record_offset % 4096, 0);
        assert_eq!(b.poll_seal(at(0)), None);
        for seq in 2..63 {
            b.handle_record(at(1), seq, 10, 1 << 20);
        }
        assert_eq!(b.poll_seal(at(1)), None, "63 records of 1 MiB + headers: not yet 64 MiB");
        b.handle_record(at(1), 63, 10, 1 << 20);
        let seal = b.poll_seal(at(1)).unwrap();
        assert_eq!((seal.bucket, seal.reason), (BucketId(7), SealReason::Full));
        assert_eq!(seal.data_len, 64 * first.layout.len);
        assert!(!b.is_open());
        let next = b.handle_record(at(2), 64, 10, 100);
        assert_eq!((next.bucket, next.opens, next.record_offset), (BucketId(8), true, 0));
    }

    #[test]
    fn a_steady_stream_keeps_the_bucket_open_and_a_pause_seals_it() {
        let mut b = Batcher::new(POLICY, 0);
        for (seq, ms) in (0..30).map(|i| (i, i * 15)) {
            b.handle_record(at(ms), seq, 10, 1 << 20);
            assert_eq!(b.poll_seal(at(ms + 14)), None, "records every 15 ms: never idle for 20");
        }
        assert_eq!(b.poll_timeout(), Some(at(29 * 15 + 20)));
        assert_eq!(b.poll_seal(at(29 * 15 + 19)), None);
        assert_eq!(b.poll_seal(at(29 * 15 + 20)).map(|s| s.reason), Some(SealReason::Idle));
    }

    #[test]
    fn a_trickle_is_sealed_at_the_maximum_age() {
        let mut b = Batcher::new(POLICY, 0);
        for seq in 0..100 {
            b.handle_record(at(seq * 10), seq, 10, 4096);
        }
        assert_eq!(b.poll_timeout(), Some(at(1000)), "the age deadline comes before the idle one");
        assert_eq!(b.poll_seal(at(999)), None);
        assert_eq!(b.poll_seal(at(1000)).map(|s| s.reason), Some(SealReason::Age));
    }

    #[test]
    fn a_flush_seals_the_bucket_holding_records_it_waits_for_and_no_other() {
        let mut b = Batcher::new(POLICY, 0);
        b.handle_record(at(0), 5, 10, 4096);
        b.handle_flush(5);
        assert_eq!(b.poll_seal(at(0)), None, "the flush waits for records below 5 only");
        b.handle_flush(6);
        assert_eq!(b.poll_seal(at(0)).map(|s| s.reason), Some(SealReason::Flush));
        b.handle_record(at(0), 6, 10, 4096);
        assert_eq!(b.poll_seal(at(0)), None, "a new bucket of later records is not the flush's");
    }

    /// A flush covering a whole batch of queued records gets them in one bucket: while
    /// the batch is placed only a full bucket is sealed.
    #[test]
    fn records_placed_between_polls_share_a_bucket_whatever_a_flush_asks() {
        let mut b = Batcher::new(POLICY, 0);
        b.handle_flush(1000);
        for seq in 0..10 {
            let p = b.handle_record(at(0), seq, 10, 1 << 20);
            assert_eq!(p.bucket, BucketId(0));
            assert_eq!(b.poll_full(), None);
        }
        let seal = b.poll_seal(at(0)).unwrap();
        assert_eq!(
            (seal.reason, seal.data_len),
            (SealReason::Flush, 10 * RecordLayout::new(10, 1 << 20).len)
        );
    }

    #[test]
    fn closing_seals_what_is_open_and_nothing_when_nothing_is() {
        let mut b = Batcher::new(POLICY, 0);
        b.handle_close();
        assert_eq!(b.poll_seal(at(0)), None);
        assert_eq!(b.poll_timeout(), None);
        b.handle_record(at(0), 0, 10, 4096);
        assert_eq!(b.poll_seal(at(0)).map(|s| s.reason), Some(SealReason::Close));
    }

    #[test]
    fn an_abandoned_bucket_is_forgotten_and_the_next_record_opens_another() {
        let mut b = Batcher::new(POLICY, 3);
        b.handle_record(at(0), 0, 10, 4096);
        b.handle_abandon();
        assert_eq!(b.poll_seal(at(1000)), None);
        let p = b.handle_record(at(0), 1, 10, 4096);
        assert_eq!((p.bucket, p.opens, p.record_offset), (BucketId(4), true, 0));
    }

    #[test]
    fn the_seal_decision_is_exhaustive_over_its_inputs() {
        let open = Open { id: BucketId(0), opened: at(0), last_record: at(500), len: 100, first_seq: 10 };
        for full in [false, true] {
            for flushed in [false, true] {
                for closing in [false, true] {
                    for now in [at(510), at(520), at(1000)] {
                        let o = Open { len: if full { POLICY.bucket_bytes } else { 100 }, ..open };
                        let got = seal_reason(&POLICY, &o, now, if flushed { 11 } else { 10 }, closing);
                        let expected = if full {
                            Some(SealReason::Full)
                        } else if flushed {
                            Some(SealReason::Flush)
                        } else if closing {
                            Some(SealReason::Close)
                        } else if now == at(1000) {
                            Some(SealReason::Age)
                        } else if now == at(520) {
                            Some(SealReason::Idle)
                        } else {
                            None
                        };
                        assert_eq!(got, expected, "full {full} flushed {flushed} closing {closing} {now:?}");
                    }
                }
            }
        }
    }
}
