//! The tier's index: key → record, and every published bucket with its live records,
//! physical size and last use, written or read (for LRU eviction).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::vec::Vec;

use super::dir::BucketPaths;
use super::protocol::{Bucket, ReadGuard, Retired, Unlink};
use crate::ids::{BucketId, ObjectVersion};
use crate::key::Key;
use crate::sync::Arc;

/// Which name a bucket's file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileName {
    /// Being written.
    Tmp,
    /// Published.
    Published,
    /// Retired while readers held it.
    Retired,
    /// Unlinked.
    Gone,
}

/// A bucket's file, deleted through the bucket protocol: the temporary name until the
/// rename publishes it, the final name after, and the retired name if it is retired
/// while readers still hold it (so that a crash before the last reader leaves does not
/// bring it back: recovery deletes retired files).
#[derive(Debug)]
pub(crate) struct BucketFile {
    paths: BucketPaths,
    name: std::sync::Mutex<FileName>,
}

impl BucketFile {
    /// A bucket about to be written under its temporary name.
    pub(super) fn new(paths: BucketPaths) -> Self {
        Self { paths, name: std::sync::Mutex::new(FileName::Tmp) }
    }

    /// A file found already published (at recovery).
    pub(super) fn published(paths: BucketPaths) -> Self {
        Self { paths, name: std::sync::Mutex::new(FileName::Published) }
    }

    fn name(&self) -> std::sync::MutexGuard<'_, FileName> {
        self.name.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The writer renamed the file into place.
    pub(super) fn mark_renamed(&self) {
        *self.name() = FileName::Published;
    }

    /// The bucket was retired while readers hold it: give the file its retired name,
    /// which recovery deletes. (A failed rename is logged; the file then keeps its
    /// name until the last reader unlinks it.)
    fn move_to_retired(&self) {
        let mut name = self.name();
        if *name != FileName::Published {
            return; // the last reader unlinked it already
        }
        match std::fs::rename(&self.paths.published, &self.paths.retired) {
            Ok(()) => *name = FileName::Retired,
            Err(e) => tracing::warn!(
                path = %self.paths.published.display(),
                error = %e,
                "could not rename a retired bucket; a crash before its last read ends would bring it back"
            ),
        }
    }
}

impl Unlink for BucketFile {
    fn unlink(&self) {
        let mut name = self.name();
        let path = match *name {
            FileName::Tmp => &self.paths.tmp,
            FileName::Published => &self.paths.published,
            FileName::Retired => &self.paths.retired,
            FileName::Gone => return,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not delete bucket file"),
        }
        *name = FileName::Gone;
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
    /// Above every bucket id the node directory has used (the wipe marker's bound).
    next_bucket: u64,
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

    /// A bucket id above every bucket published (or found at recovery) so far.
    pub(super) fn next_bucket(&self) -> BucketId {
        BucketId(self.next_bucket)
    }

    /// Recovery found bucket ids up to below `next`.
    pub(super) fn raise_next_bucket(&mut self, next: u64) {
        self.next_bucket = self.next_bucket.max(next);
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
        self.next_bucket = self.next_bucket.max(id.0 + 1);
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
            if let Retired::Deferred { .. } = b.cell.retire() {
                b.cell.unlinker().move_to_retired();
            }
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

#[cfg(all(test, not(larder_loom)))]
mod tests {
    use super::*;

    fn bucket(dir: &std::path::Path, id: u64) -> (BucketPaths, Index) {
        let at = |suffix: &str| dir.join(std::format!("{id}.bucket{suffix}"));
        let paths = BucketPaths { tmp: at(".tmp"), published: at(""), retired: at(".retired") };
        std::fs::write(&paths.published, b"bucket").unwrap();
        let cell = Bucket::create(BucketFile::published(paths.clone())).publish();
        let mut index = Index::default();
        index.add_bucket(BucketId(id), cell, Arc::new(File::open(&paths.published).unwrap()), 4096);
        let record =
            Record { bucket: BucketId(id), value_offset: 4096, len: 1, crc: 0, version: ObjectVersion(1) };
        assert_eq!(index.insert(Key::new(b"k").unwrap(), record), Inserted::Added);
        (paths, index)
    }

    /// A bucket retired while a read holds it takes the retired name at once (recovery
    /// deletes that name), and is unlinked when the read ends.
    #[test]
    fn a_bucket_retired_under_a_reader_is_renamed_then_unlinked_by_the_last_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, mut index) = bucket(dir.path(), 1);
        let pinned = index.pin(b"k").unwrap();
        assert!(index.remove(b"k").is_some()); // nothing left alive: retired
        assert!(!paths.published.exists() && paths.retired.exists(), "retired under a reader: renamed");
        drop(pinned);
        assert!(!paths.retired.exists(), "the last reader out unlinks the retired name");
    }

    #[test]
    fn a_bucket_retired_with_no_reader_is_unlinked_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, mut index) = bucket(dir.path(), 2);
        index.remove(b"k");
        assert!(!paths.published.exists() && !paths.retired.exists());
    }
}
