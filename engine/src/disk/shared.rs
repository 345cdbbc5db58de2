//! What the tier's callers and its threads (the bucket writer, the reader) share:
//! configuration, the write-behind queue, the index, the removal log and what the
//! tier reports. The writer and the reader depend on this, never on `tier`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use crossbeam_queue::SegQueue;

use super::config::TierConfig;
use super::dir::NodeDir;
use super::error::TierError;
use super::index::Index;
use super::queue::WriteBehind;
use super::removals::{Removal, RemovalLog};
use crate::ids::{BucketId, ObjectVersion};
use crate::key::Key;
use crate::sync::Arc;
use crate::uring::{DriverKind, Notifier};

/// A record waiting to be persisted.
#[derive(Debug)]
pub(super) struct PersistItem {
    pub(super) key: Key,
    pub(super) version: ObjectVersion,
    pub(super) value: Bytes,
}

/// Something the tier did that the master should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierEvent {
    /// A record is durable and readable.
    Persisted {
        /// The key.
        key: Key,
        /// The version.
        version: ObjectVersion,
        /// Where.
        replica: crate::descriptor::DiskReplica,
    },
    /// A record could not be persisted.
    PersistFailed {
        /// The key.
        key: Key,
        /// The version.
        version: ObjectVersion,
        /// Because the device is full.
        no_space: bool,
    },
    /// A record was written but not kept: a remove cancelled it while its bucket was
    /// being written, or a newer version of the key was already indexed.
    Cancelled {
        /// The key.
        key: Key,
        /// The version.
        version: ObjectVersion,
    },
    /// A record left the tier without a client removing it.
    Dropped {
        /// The key.
        key: Key,
        /// The version.
        version: ObjectVersion,
        /// Why.
        cause: DropCause,
    },
}

/// Why a record left the tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Its bucket was evicted for capacity.
    Evicted,
    /// Its value failed its checksum.
    Corrupted,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) evicted_buckets: AtomicU64,
    pub(super) evicted_records: AtomicU64,
    pub(super) crc_failures: AtomicU64,
    pub(super) write_failures: AtomicU64,
    pub(super) no_space: AtomicU64,
}

/// Puts that a remove cancelled before they were published. A key's entry cancels its
/// puts accepted before the removal (sequence number below `before`) whose version is
/// at most `upto`: older versions than the one removed, never a newer one queued
/// meanwhile. `all_before` cancels everything accepted before a `remove_all`.
#[derive(Debug, Default)]
pub(super) struct Removals {
    all_before: u64,
    keys: HashMap<Key, Cancel>,
}

#[derive(Debug, Clone, Copy)]
struct Cancel {
    before: u64,
    upto: ObjectVersion,
}

impl Removals {
    pub(super) fn cancels(&self, key: &Key, version: ObjectVersion, seq: u64) -> bool {
        seq < self.all_before || self.keys.get(key).is_some_and(|c| seq < c.before && version <= c.upto)
    }

    /// Cancels `key`'s puts accepted before `before` at versions up to `upto`.
    pub(super) fn cancel(&mut self, key: Key, before: u64, upto: ObjectVersion) {
        let c = self.keys.entry(key).or_insert(Cancel { before, upto });
        c.before = c.before.max(before);
        c.upto = c.upto.max(upto);
    }

    /// Cancels every put accepted before `before` (never moving backwards, whatever
    /// order concurrent calls arrive in).
    pub(super) fn cancel_all_before(&mut self, before: u64) {
        self.all_before = self.all_before.max(before);
    }

    /// Every put below `upto` has been published or failed: their removals are done.
    pub(super) fn forget_before(&mut self, upto: u64) {
        self.keys.retain(|_, c| c.before > upto);
    }
}

/// Puts whose write failed, until they are superseded: the same version (or a newer
/// one) of the key written, or the key removed. While any is left, every flush that
/// covers it fails.
#[derive(Debug, Default)]
pub(super) struct Unpersisted {
    /// Key → the failed version and the put's sequence number.
    puts: HashMap<Key, (ObjectVersion, u64)>,
    /// The latest write failure.
    pub(super) last_error: Option<std::sync::Arc<TierError>>,
}

impl Unpersisted {
    /// A put failed with `error`.
    pub(super) fn failed(&mut self, key: Key, version: ObjectVersion, seq: u64) {
        let entry = self.puts.entry(key).or_insert((version, seq));
        if version >= entry.0 {
            *entry = (version, seq);
        }
    }

    pub(super) fn set_error(&mut self, error: std::sync::Arc<TierError>) {
        self.last_error = Some(error);
    }

    /// `key` is durable at `version`, or removed up to it: older failures are moot.
    pub(super) fn superseded(&mut self, key: &Key, version: ObjectVersion) {
        if self.puts.get(key).is_some_and(|(v, _)| *v <= version) {
            self.puts.remove(key);
        }
    }

    /// Everything accepted before `seq` was removed.
    pub(super) fn removed_before(&mut self, seq: u64) {
        self.puts.retain(|_, (_, s)| *s >= seq);
    }

    /// `Ok` unless a put below `target` is not durable.
    pub(super) fn check(&self, target: u64) -> Result<(), TierError> {
        match self.puts.values().filter(|(_, seq)| *seq < target).count() as u64 {
            0 => Ok(()),
            records => Err(TierError::NotDurable { records, cause: self.last_error.clone() }),
        }
    }
}

/// State shared by the tier's callers and its threads.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: TierConfig,
    pub(super) dir: NodeDir,
    pub(super) direct_io: bool,
    pub(super) queue: WriteBehind<PersistItem>,
    pub(super) removals: Mutex<Removals>,
    pub(super) unpersisted: Mutex<Unpersisted>,
    pub(super) removal_log: RemovalLog,
    pub(super) stats: Counters,
    pub(super) index: Mutex<Index>,
    pub(super) events: SegQueue<TierEvent>,
    pub(super) events_ready: Arc<Notifier>,
    pub(super) tmp_removed: u64,
    pub(super) damaged: u64,
    pub(super) skipped: u64,
    /// Versions below this may be named by records or removals already on disk.
    pub(super) version_floor: ObjectVersion,
    pub(super) driver_kind: DriverKind,
}

impl Shared {
    pub(super) fn lock_index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pending removals. Lock order: removals, then the index, then the log.
    pub(super) fn lock_removals(&self) -> MutexGuard<'_, Removals> {
        self.removals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The puts that failed and are not superseded.
    pub(super) fn lock_unpersisted(&self) -> MutexGuard<'_, Unpersisted> {
        self.unpersisted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn emit(&self, event: TierEvent) {
        if self.config.events {
            self.events.push(event);
            self.events_ready.notify();
        }
    }

    /// Evicts whole buckets once physical use passes the high watermark.
    pub(super) fn enforce_capacity(&self) {
        let Some(max) = self.config.max_bytes else { return };
        let (high, low) = (
            (max as f64 * self.config.high_watermark) as u64,
            (max as f64 * self.config.low_watermark) as u64,
        );
        let mut index = self.lock_index();
        if index.physical_bytes() <= high {
            return;
        }
        let buckets_before = index.buckets();
        let gone = index.evict_to(low);
        let evicted_buckets = (buckets_before - index.buckets()) as u64;
        drop(index);
        self.stats.evicted_buckets.fetch_add(evicted_buckets, Ordering::Relaxed);
        self.stats.evicted_records.fetch_add(gone.len() as u64, Ordering::Relaxed);
        for (key, record) in gone {
            self.emit(TierEvent::Dropped { key, version: record.version, cause: DropCause::Evicted });
        }
    }

    /// A record failed its checksum: it leaves the index (unless a newer version
    /// replaced it meanwhile).
    pub(super) fn drop_corrupted(&self, key: &Key, version: ObjectVersion, bucket: BucketId) {
        self.stats.crc_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key = ?key, bucket = ?bucket, "record failed its checksum; dropped");
        if self.lock_index().remove_version(key.as_bytes(), version) {
            self.log_removal(key.clone(), version);
            self.emit(TierEvent::Dropped { key: key.clone(), version, cause: DropCause::Corrupted });
        }
    }

    /// Records a removal in the removal log (durable at the next flush). A failure to
    /// log is reported; the removal stands for this run either way.
    pub(super) fn log_removal(&self, key: Key, version: ObjectVersion) {
        if let Err(e) = self.removal_log.append(&Removal::Record(key, version)) {
            tracing::warn!(error = %e, "could not log a removal; the record may come back after a restart");
        }
    }
}

#[cfg(all(test, not(larder_loom)))]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::new(s.as_bytes()).unwrap()
    }

    /// Two `remove_all`s finishing in the other order never un-cancel what the later
    /// one cancelled.
    #[test]
    fn cancelling_everything_before_a_point_never_moves_backwards() {
        let mut r = Removals::default();
        r.cancel_all_before(7);
        r.cancel_all_before(5);
        assert!(r.cancels(&key("a"), ObjectVersion(1), 6), "seq 6 was cancelled by the call at 7");
        assert!(!r.cancels(&key("a"), ObjectVersion(1), 7));
    }

    #[test]
    fn a_key_cancel_spares_newer_versions_and_later_puts() {
        let mut r = Removals::default();
        r.cancel(key("a"), 10, ObjectVersion(3));
        assert!(r.cancels(&key("a"), ObjectVersion(3), 9));
        assert!(!r.cancels(&key("a"), ObjectVersion(4), 9), "a newer version queued meanwhile stays");
        assert!(!r.cancels(&key("a"), ObjectVersion(3), 10), "a put accepted after the removal stays");
        assert!(!r.cancels(&key("b"), ObjectVersion(1), 0));
        r.forget_before(10);
        assert!(!r.cancels(&key("a"), ObjectVersion(3), 9), "forgotten once everything below 10 settled");
    }
}
