//! Reopening a node directory: delete every `*.tmp` (a bucket a crash interrupted) and
//! `*.retired` (a bucket retired while a reader held it), read each bucket's trailer and
//! footer (never its data), and rebuild the index. The recovered records are handed
//! back so that the master can be told about them.
//!
//! Recovery destroys nothing it cannot account for:
//! - a bucket written by a newer build (its trailer names a newer format version) stops
//!   the open with [`TierError::NewerFormat`], leaving the directory as it is: a binary
//!   rolled back must not wipe the cache its successor wrote;
//! - a damaged bucket (bad magic, wrong id, a checksum, truncation) is moved aside as
//!   `*.damaged`, logged and counted, never deleted;
//! - a bucket that cannot be read (an I/O error) is skipped: left in place, not indexed,
//!   tried again at the next open. While any bucket is skipped the removal log keeps
//!   every entry, since the skipped bucket may hold records it hides.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::vec;
use std::vec::Vec;

use super::dir::NodeDir;
use super::error::TierError;
use super::format::{BLOCK, FORMAT_VERSION, Footer, FormatError, TRAILER_LEN, Trailer};
use super::index::{BucketFile, Index, Inserted, Record};
use super::protocol::Bucket;
use super::removals::{Removal, Removed};
use crate::descriptor::DiskReplica;
use crate::ids::{BucketId, NodeId, ObjectVersion};
use crate::key::Key;
use crate::sync::Arc;

/// A record found at recovery, for registration with the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredRecord {
    /// The key.
    pub key: Key,
    /// The object version it holds.
    pub version: ObjectVersion,
    /// Where it is.
    pub replica: DiskReplica,
}

/// What recovery found.
#[derive(Debug, Default)]
pub(super) struct Recovery {
    pub(super) index: Index,
    pub(super) next_bucket: u64,
    /// Leftovers of interrupted writes and of retired buckets, deleted.
    pub(super) tmp_removed: usize,
    /// Damaged buckets moved aside.
    pub(super) damaged: usize,
    /// Buckets that could not be read, left in place.
    pub(super) skipped: usize,
    /// The highest object version any footer or removal-log entry names.
    pub(super) max_version: ObjectVersion,
    /// The removal log's entries to keep (compacted unless a bucket was skipped).
    pub(super) removals: Vec<Removal>,
}

/// Scans `dir`, skipping what the removal log says was removed; see the module
/// documentation.
pub(super) fn recover(dir: &NodeDir, direct_io: bool, removed: Removed) -> Result<Recovery, TierError> {
    let mut r = Recovery {
        tmp_removed: dir.remove_leftovers()?,
        max_version: removed.max_version,
        ..Recovery::default()
    };
    // Dead records found, by key: the newest dead version (the compacted log).
    let mut dead: HashMap<Key, ObjectVersion> = HashMap::new();
    let mut moved = false;
    r.next_bucket = removed.wiped_below.0;
    for (id, path) in dir.buckets()? {
        r.next_bucket = r.next_bucket.max(id.0 + 1);
        if id < removed.wiped_below {
            // Wiped while a reader still held it, then the process died (logs written
            // before wiped buckets were renamed `*.retired`).
            tracing::info!(bucket = ?id, "deleting a bucket wiped before the last shutdown");
            match std::fs::remove_file(&path) {
                Ok(()) => moved = true,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete a wiped bucket; skipped");
                    r.skipped += 1;
                }
            }
            continue;
        }
        let footer = match load_bucket(&path, id) {
            Ok(footer) => footer,
            Err(Load::Newer(version)) => return Err(TierError::NewerFormat { path, version }),
            Err(Load::Damaged(why)) => {
                dir.move_aside(&path, &why);
                r.damaged += 1;
                moved = true;
                continue;
            }
            Err(Load::Io(e)) => {
                tracing::warn!(error = %e, "cannot read a bucket; skipped it (it is tried again at the next open)");
                r.skipped += 1;
                continue;
            }
        };
        let reader = match open_for_reads(&path, direct_io) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a bucket for reading; skipped it");
                r.skipped += 1;
                continue;
            }
        };
        let cell = Bucket::create(BucketFile::published(dir.bucket_paths(id))).publish();
        r.index.add_bucket(id, cell, Arc::new(reader), footer.file_len);
        for (key, record) in footer.entries {
            r.max_version = r.max_version.max(record.version);
            if let Some(&upto) = removed.records.get(&key).filter(|upto| record.version <= **upto) {
                mark_max(&mut dead, key, upto);
                continue;
            }
            match r.index.insert(key.clone(), record) {
                Inserted::Added => {}
                Inserted::Replaced(old) => mark_max(&mut dead, key, old),
                Inserted::Refused => mark_max(&mut dead, key, record.version),
            }
        }
        r.index.retire_if_empty(id);
    }
    if moved {
        dir.sync()?;
    }
    r.index.raise_next_bucket(r.next_bucket);
    r.removals = if r.skipped > 0 {
        // A skipped bucket may hold records that only the old entries hide.
        let mut keep: HashMap<Key, ObjectVersion> = removed.records;
        for (k, v) in dead {
            mark_max(&mut keep, k, v);
        }
        let mut out: Vec<Removal> = keep.into_iter().map(|(k, v)| Removal::Record(k, v)).collect();
        if removed.wiped_below.0 > 0 {
            out.insert(0, Removal::WipedBelow(removed.wiped_below));
        }
        out
    } else {
        dead.into_iter().map(|(k, v)| Removal::Record(k, v)).collect()
    };
    Ok(r)
}

fn mark_max(map: &mut HashMap<Key, ObjectVersion>, key: Key, version: ObjectVersion) {
    let upto = map.entry(key).or_insert(version);
    *upto = (*upto).max(version);
}

/// Every indexed record as the master should hear of it.
pub(super) fn recovered_records(index: &Index, node: NodeId) -> Vec<RecoveredRecord> {
    index
        .iter()
        .map(|(key, rec)| RecoveredRecord {
            key: key.clone(),
            version: rec.version,
            replica: DiskReplica {
                node,
                bucket: rec.bucket,
                offset: rec.value_offset,
                len: rec.len,
                crc32c: rec.crc,
            },
        })
        .collect()
}

/// Why a bucket could not be loaded.
enum Load {
    /// Written by a newer build, in this format version.
    Newer(u16),
    /// Damaged: what is wrong.
    Damaged(std::string::String),
    /// Could not be read.
    Io(TierError),
}

/// A checked footer: the file's length and every record it lists.
struct LoadedFooter {
    file_len: u64,
    entries: Vec<(Key, Record)>,
}

/// Reads and checks a bucket's trailer, then its footer.
fn load_bucket(path: &Path, id: BucketId) -> Result<LoadedFooter, Load> {
    let file = File::open(path).map_err(|e| Load::Io(TierError::io("open bucket", path, e)))?;
    let len = file.metadata().map_err(|e| Load::Io(TierError::io("inspect bucket", path, e)))?.len();
    if len < BLOCK {
        return Err(Load::Damaged(std::format!("{len} bytes long, shorter than a block")));
    }
    let mut tail = [0u8; TRAILER_LEN];
    file.read_exact_at(&mut tail, len - TRAILER_LEN as u64)
        .map_err(|e| Load::Io(TierError::io("read trailer", path, e)))?;
    if let Some(version) = Trailer::peek_version(&tail).filter(|v| *v > FORMAT_VERSION) {
        return Err(Load::Newer(version));
    }
    let damaged = |e: FormatError| Load::Damaged(std::format!("{e}"));
    let trailer = Trailer::decode(&tail, id, len).map_err(damaged)?;
    let mut bytes = vec![0u8; trailer.footer_len as usize];
    file.read_exact_at(&mut bytes, trailer.footer_offset)
        .map_err(|e| Load::Io(TierError::io("read footer", path, e)))?;
    let footer = Footer::decode(&bytes, id, trailer.footer_offset).map_err(damaged)?;
    if footer.entries.len() != trailer.record_count as usize {
        return Err(Load::Damaged("footer and trailer disagree on the record count".into()));
    }
    let entries = footer
        .entries
        .iter()
        .map(|e| {
            let record = Record {
                bucket: id,
                value_offset: e.value_offset(),
                len: e.value_len,
                crc: e.value_crc,
                version: e.version,
            };
            (e.key.to_key(), record)
        })
        .collect();
    Ok(LoadedFooter { file_len: trailer.file_len(), entries })
}

fn open_for_reads(path: &Path, direct_io: bool) -> Result<File, TierError> {
    let mut o = OpenOptions::new();
    o.read(true);
    if direct_io {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).map_err(|e| TierError::io("open bucket", path, e))
}
