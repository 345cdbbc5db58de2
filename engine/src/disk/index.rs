//! The tier's index: key → record, and every published bucket with its live records,
//! physical size and last use, written or read (for LRU eviction).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::vec::Vec;

use crossbeam_queue::SegQueue;

use super::protocol::{Bucket, ReadGuard, Unlink};
use crate::ids::{BucketId, ObjectVersion};
use crate::key::Key;
use crate::sync::Arc;
use crate::uring::Notifier;

/// Bucket files unlinked and not yet closed by the reader. An unlinked file's blocks
/// are freed only when its last descriptor closes, so every unlink is reported here and
/// the reader, woken, closes its descriptor of that bucket at once.
#[derive(Debug)]
pub(super) struct Unlinked {
    ids: SegQueue<BucketId>,
    wake: Arc<Notifier>,
}

impl Unlinked {
    /// Unlinks are reported to whoever waits on `wake`.
    pub(super) fn new(wake: Arc<Notifier>) -> Self {
        Self { ids: SegQueue::new(), wake }
    }

    fn report(&self, id: BucketId) {
        self.ids.push(id);
        self.wake.notify();
    }

    /// The next bucket unlinked since the last call.
    pub(super) fn pop(&self) -> Option<BucketId> {
        self.ids.pop()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A bucket's file, deleted through the bucket protocol: the temporary name until the
/// rename publishes it, the final name after.
#[derive(Debug)]
pub(crate) struct BucketFile {
    id: BucketId,
    tmp: PathBuf,
    path: PathBuf,
    renamed: AtomicBool,
    unlinked: Arc<Unlinked>,
}

impl BucketFile {
    pub(super) fn new(id: BucketId, tmp: PathBuf, path: PathBuf, unlinked: Arc<Unlinked>) -> Self {
        Self { id, tmp, path, renamed: AtomicBool::new(false), unlinked }
    }

    /// A file found already published (at recovery).
    pub(super) fn published(id: BucketId, path: PathBuf, unlinked: Arc<Unlinked>) -> Self {
        Self { id, tmp: PathBuf::new(), path, renamed: AtomicBool::new(true), unlinked }
    }

    pub(super) fn mark_renamed(&self) {
        self.renamed.store(true, Ordering::Release);
    }
}

impl Unlink for BucketFile {
    fn unlink(&self) {
        let path = if self.renamed.load(Ordering::Acquire) { &self.path } else { &self.tmp };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not delete bucket file"),
        }
        self.unlinked.report(self.id);
    }
}

/// What [`Index::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inserted {
    /// Indexed (nothing older was, or a copy of the same version was).
    Added,
    /// Indexed, replacing this older version, whose record is now dead.
    Replaced(ObjectVersion),
    /// Not indexed: a newer version is.
    Refused,
}

/// Where one record's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) bucket: BucketId,
    pub(super) value_offset: u64,
    pub(super) len: u64,
    pub(super) crc: u32,
    pub(super) version: ObjectVersion,
}

#[derive(Debug)]
pub(super) struct BucketInfo {
    pub(super) cell: Arc<Bucket<BucketFile>>,
    /// An open handle (O_DIRECT when the directory allows it) that readers duplicate.
    pub(super) file: Arc<File>,
    pub(super) file_len: u64,
    pub(super) live: u32,
    /// When it was last written or read (the index's logical clock), for LRU eviction.
    pub(super) last_used: u64,
    /// Keys indexed into this bucket (some may since have moved on), for eviction.
    keys: Vec<Key>,
}

/// A pinned record: the bucket cannot be deleted while this lives.
#[derive(Debug)]
pub(super) struct Pinned {
    pub(super) record: Record,
    pub(super) file: Arc<File>,
    /// Held for its `Drop`: the pin.
    pub(super) _guard: ReadGuard<BucketFile>,
}

#[derive(Debug, Default)]
pub(super) struct Index {
    records: HashMap<Key, Record>,
    buckets: BTreeMap<BucketId, BucketInfo>,
    physical_bytes: u64,
    clock: u64,
}

impl Index {
    pub(super) fn records(&self) -> usize {
        self.records.len()
    }

    pub(super) fn buckets(&self) -> usize {
        self.buckets.len()
    }

    pub(super) fn physical_bytes(&self) -> u64 {
        self.physical_bytes
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Key, &Record)> {
        self.records.iter()
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<Record> {
        self.records.get(key).copied()
    }

    /// Adds a published bucket (its records follow through [`Index::insert`]).
    pub(super) fn add_bucket(
        &mut self,
        id: BucketId,
        cell: Arc<Bucket<BucketFile>>,
        file: Arc<File>,
        file_len: u64,
    ) {
        self.physical_bytes += file_len;
        // Writing counts as a use: a bucket just written holds the freshest values and
        // must not be the first to go because older buckets happened to be read once.
        self.clock += 1;
        let last_used = self.clock;
        self.buckets.insert(id, BucketInfo { cell, file, file_len, live: 0, last_used, keys: Vec::new() });
    }

    /// Indexes a record unless a newer version of the key is indexed; the record it
    /// replaces (or the one refused) becomes dead bytes, which the caller must log as
    /// removed so that a restart does not bring it back.
    pub(super) fn insert(&mut self, key: Key, record: Record) -> Inserted {
        if self.records.get(key.as_bytes()).is_some_and(|old| old.version > record.version) {
            return Inserted::Refused;
        }
        if let Some(b) = self.buckets.get_mut(&record.bucket) {
            b.live += 1;
            b.keys.push(key.clone());
        }
        match self.records.insert(key, record) {
            Some(old) => {
                self.release(old.bucket);
                if old.version < record.version { Inserted::Replaced(old.version) } else { Inserted::Added }
            }
            None => Inserted::Added,
        }
    }

    /// Retires a bucket whose records are all dead.
    pub(super) fn retire_if_empty(&mut self, id: BucketId) {
        if self.buckets.get(&id).is_some_and(|b| b.live == 0) {
            self.retire(id);
        }
    }

    fn release(&mut self, id: BucketId) {
        if let Some(b) = self.buckets.get_mut(&id) {
            b.live -= 1;
        }
        self.retire_if_empty(id);
    }

    fn retire(&mut self, id: BucketId) {
        if let Some(b) = self.buckets.remove(&id) {
            self.physical_bytes -= b.file_len;
            b.cell.retire();
        }
    }

    /// Pins the record of `key` for reading and marks its bucket read.
    pub(super) fn pin(&mut self, key: &[u8]) -> Option<Pinned> {
        let record = *self.records.get(key)?;
        self.clock += 1;
        let b = self.buckets.get_mut(&record.bucket)?;
        b.last_used = self.clock;
        let guard = Bucket::read(&b.cell)?;
        Some(Pinned { record, file: Arc::clone(&b.file), _guard: guard })
    }

    /// Removes `key`; its bucket is deleted at once if nothing else in it lives.
    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Record> {
        let record = self.records.remove(key)?;
        self.release(record.bucket);
        Some(record)
    }

    /// Removes `key` only if it still holds `version` (a CRC failure drops exactly the
    /// damaged record, not a newer one).
    pub(super) fn remove_version(&mut self, key: &[u8], version: ObjectVersion) -> bool {
        if self.records.get(key).is_some_and(|r| r.version == version) {
            self.remove(key);
            true
        } else {
            false
        }
    }

    /// Evicts whole buckets, least recently used (written or read) first, until the
    /// physical size is at most `target`. Returns the records that went.
    pub(super) fn evict_to(&mut self, target: u64) -> Vec<(Key, Record)> {
        let mut gone = Vec::new();
        while self.physical_bytes > target {
            let Some(victim) =
                self.buckets.iter().min_by_key(|(id, b)| (b.last_used, **id)).map(|(id, _)| *id)
            else {
                break;
            };
            let keys = core::mem::take(&mut self.buckets.get_mut(&victim).expect("chosen above").keys);
            for key in keys {
                if self.records.get(key.as_bytes()).is_some_and(|r| r.bucket == victim) {
                    let record = self.records.remove(key.as_bytes()).expect("checked above");
                    gone.push((key, record));
                }
            }
            self.retire(victim);
        }
        gone
    }

    /// Forgets every record and retires every bucket; returns how many records went
    /// and which buckets were retired.
    pub(super) fn clear(&mut self) -> (usize, Vec<BucketId>) {
        let records = self.records.len();
        self.records.clear();
        let ids: Vec<BucketId> = self.buckets.keys().copied().collect();
        for id in &ids {
            self.retire(*id);
        }
        (records, ids)
    }
}
