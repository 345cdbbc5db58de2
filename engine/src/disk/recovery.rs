//! Reopening a node directory: delete every `*.tmp`, read each bucket's trailer and
//! footer (never its data), delete buckets whose trailer or footer is damaged, and
//! rebuild the index. The recovered records are handed back so that the master can be
//! told about them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::vec;
use std::vec::Vec;

use super::dir::NodeDir;
use super::error::TierError;
use super::format::{BLOCK, Footer, TRAILER_LEN, Trailer};
use super::index::{BucketFile, Index, Inserted, Record, Unlinked};
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
    pub(super) tmp_removed: usize,
    pub(super) damaged_removed: usize,
    /// The removal log's entries that still hide a record (the compacted log).
    pub(super) removals: Vec<Removal>,
}

/// Scans `dir`, skipping what the removal log says was removed; see the module
/// documentation.
pub(super) fn recover(
    dir: &NodeDir,
    direct_io: bool,
    removed: Removed,
    unlinked: &Arc<Unlinked>,
) -> Result<Recovery, TierError> {
    let mut r = Recovery { tmp_removed: dir.remove_tmp_files()?, ..Recovery::default() };
    // Dead records found, by key: the newest dead version (the compacted log).
    let mut dead: HashMap<Key, ObjectVersion> = HashMap::new();
    let mut mark_dead = |key: Key, version: ObjectVersion| {
        let upto = dead.entry(key).or_insert(version);
        *upto = (*upto).max(version);
    };
    r.next_bucket = removed.wiped_below.0;
    for (id, path) in dir.buckets()? {
        r.next_bucket = r.next_bucket.max(id.0 + 1);
        if id < removed.wiped_below {
            // Wiped while a reader still held it, then the process died.
            tracing::info!(bucket = ?id, "deleting a bucket wiped before the last shutdown");
            std::fs::remove_file(&path).map_err(|e| TierError::io("delete wiped bucket", &path, e))?;
            continue;
        }
        match load_bucket(&path, id) {
            Ok((trailer, footer_bytes)) => {
                let footer = match Footer::decode(&footer_bytes, id, trailer.footer_offset) {
                    Ok(f) if f.entries.len() == trailer.record_count as usize => f,
                    Ok(_) => {
                        discard(&path, id, "footer and trailer disagree on the record count", &mut r);
                        continue;
                    }
                    Err(e) => {
                        discard(&path, id, &std::format!("{e}"), &mut r);
                        continue;
                    }
                };
                let reader = open_for_reads(&path, direct_io)?;
                let cell =
                    Bucket::create(BucketFile::published(id, path.clone(), Arc::clone(unlinked))).publish();
                r.index.add_bucket(id, cell, Arc::new(reader), trailer.file_len());
                for e in &footer.entries {
                    let key = e.key.to_key();
                    if let Some(&upto) = removed.records.get(&key).filter(|upto| e.version <= **upto) {
                        mark_dead(key, upto);
                        continue;
                    }
                    let record = Record {
                        bucket: id,
                        value_offset: e.value_offset(),
                        len: e.value_len,
                        crc: e.value_crc,
                        version: e.version,
                    };
                    match r.index.insert(key.clone(), record) {
                        Inserted::Added => {}
                        Inserted::Replaced(old) => mark_dead(key, old),
                        Inserted::Refused => mark_dead(key, e.version),
                    }
                }
                r.index.retire_if_empty(id);
            }
            Err(Load::Damaged(e)) => discard(&path, id, &std::format!("{e}"), &mut r),
            Err(Load::Io(e)) => return Err(e),
        }
    }
    if r.damaged_removed > 0 || removed.wiped_below.0 > 0 {
        dir.sync()?;
    }
    r.removals = dead.into_iter().map(|(k, v)| Removal::Record(k, v)).collect();
    Ok(r)
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

enum Load {
    Damaged(super::format::FormatError),
    Io(TierError),
}

/// Reads and checks a bucket's trailer, then reads its footer bytes.
fn load_bucket(path: &Path, id: BucketId) -> Result<(Trailer, Vec<u8>), Load> {
    let file = File::open(path).map_err(|e| Load::Io(TierError::io("open bucket", path, e)))?;
    let len = file.metadata().map_err(|e| Load::Io(TierError::io("inspect bucket", path, e)))?.len();
    if len < BLOCK {
        return Err(Load::Damaged(super::format::FormatError::Invalid { what: "bucket length" }));
    }
    let mut tail = [0u8; TRAILER_LEN];
    file.read_exact_at(&mut tail, len - TRAILER_LEN as u64)
        .map_err(|e| Load::Io(TierError::io("read trailer", path, e)))?;
    let trailer = Trailer::decode(&tail, id, len).map_err(Load::Damaged)?;
    let mut footer = vec![0u8; trailer.footer_len as usize];
    file.read_exact_at(&mut footer, trailer.footer_offset)
        .map_err(|e| Load::Io(TierError::io("read footer", path, e)))?;
    Ok((trailer, footer))
}

fn open_for_reads(path: &Path, direct_io: bool) -> Result<File, TierError> {
    let mut o = OpenOptions::new();
    o.read(true);
    if direct_io {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).map_err(|e| TierError::io("open bucket", path, e))
}

fn discard(path: &Path, id: BucketId, why: &str, r: &mut Recovery) {
    tracing::warn!(bucket = ?id, path = %path.display(), reason = why, "deleting damaged bucket");
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not delete damaged bucket");
    }
    r.damaged_removed += 1;
}
