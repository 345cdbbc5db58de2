//! The removal log, `removed.log` in the node directory: what was removed from the
//! tier, so that a reopened node does not bring it back from the buckets that still
//! hold it (a removed record is only dead bytes until its whole bucket goes).
//!
//! Entries are appended as removals happen and made durable by the tier's `flush()`
//! (removals, like puts, are durable once a flush returns). Each entry carries its own
//! CRC32C; reading stops at the first entry that does not check (a torn append), and
//! the log is rewritten without it. At open, recovery skips every record the log
//! names, and the log is compacted to the entries that still hide a record.
//!
//! ```text
//! entry: [kind u8][0 u8][key length u16][version or bucket id u64][key][crc32c u32]
//! kind 1: every record of `key` at `version` or older is dead (removed, or replaced)
//! kind 2: every bucket with an id below `bucket id` was wiped (remove_all)
//! ```

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::vec::Vec;

use super::dir::NodeDir;
use super::error::TierError;
use crate::checksum::crc32c;
use crate::ids::{BucketId, ObjectVersion};
use crate::key::{Key, KeyRef, MAX_KEY_LEN};

/// The log's file name in the node directory.
pub const REMOVAL_LOG: &str = "removed.log";

const HEAD_LEN: usize = 12;
const KIND_RECORD: u8 = 1;
const KIND_WIPE: u8 = 2;

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Every record of the key at this version or older is dead (removed, or replaced
    /// by a newer version).
    Record(Key, ObjectVersion),
    /// Every bucket below this id was wiped.
    WipedBelow(BucketId),
}

impl Removal {
    /// Appends the entry's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let (kind, key, n): (u8, &[u8], u64) = match self {
            Removal::Record(key, version) => (KIND_RECORD, key.as_bytes(), version.0),
            Removal::WipedBelow(id) => (KIND_WIPE, &[], id.0),
        };
        out.push(kind);
        out.push(0);
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(key);
        let crc = crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
}

/// What [`decode`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decoded {
    /// Every entry that checked, in order.
    pub entries: Vec<Removal>,
    /// Bytes that belong to no entry that checked (a torn append at the end, or
    /// damage anywhere).
    pub damaged_bytes: usize,
}

/// Decodes a removal log. An entry that does not check is skipped byte by byte until
/// the next one that does, so that damage in the middle loses only what it hit.
/// Never panics; allocates only for entries that checked.
pub fn decode(bytes: &[u8]) -> Decoded {
    let mut d = Decoded::default();
    let mut at = 0;
    while at < bytes.len() {
        match decode_one(&bytes[at..]) {
            Some((entry, len)) => {
                d.entries.push(entry);
                at += len;
            }
            None => {
                d.damaged_bytes += 1;
                at += 1;
            }
        }
    }
    d
}

fn decode_one(b: &[u8]) -> Option<(Removal, usize)> {
    let head = b.get(..HEAD_LEN)?;
    if !matches!(head[0], KIND_RECORD | KIND_WIPE) {
        return None;
    }
    let key_len = usize::from(u16::from_le_bytes([head[2], head[3]]));
    let n = u64::from_le_bytes(head[4..12].try_into().ok()?);
    if head[1] != 0 || key_len > MAX_KEY_LEN {
        return None;
    }
    let len = HEAD_LEN + key_len + 4;
    let body = b.get(..len)?;
    let crc = u32::from_le_bytes(body[len - 4..].try_into().ok()?);
    if crc32c(&body[..len - 4]) != crc {
        return None;
    }
    let key = &body[HEAD_LEN..HEAD_LEN + key_len];
    let entry = match head[0] {
        KIND_RECORD => Removal::Record(KeyRef::new(key).ok()?.to_key(), ObjectVersion(n)),
        KIND_WIPE if key_len == 0 => Removal::WipedBelow(BucketId(n)),
        _ => return None,
    };
    Some((entry, len))
}

/// What the log says recovery must skip.
#[derive(Debug, Default)]
pub(super) struct Removed {
    /// Records of a key at this version or older are dead.
    pub(super) records: HashMap<Key, ObjectVersion>,
    pub(super) wiped_below: BucketId,
    /// The highest version any entry names (also those a wipe superseded): new puts
    /// must get higher versions, or an entry could hide them.
    pub(super) max_version: ObjectVersion,
}

impl Removed {
    fn from_entries(entries: Vec<Removal>) -> Self {
        let mut r = Removed::default();
        for e in entries {
            match e {
                Removal::Record(k, v) => {
                    r.max_version = r.max_version.max(v);
                    let upto = r.records.entry(k).or_insert(v);
                    *upto = (*upto).max(v);
                }
                Removal::WipedBelow(id) => {
                    // A wipe supersedes the removals before it.
                    r.records.clear();
                    r.wiped_below = r.wiped_below.max(id);
                }
            }
        }
        r
    }
}

/// The open log. Appends go to the file at once; [`RemovalLog::sync`] makes them
/// durable. An append that fails is kept and written again by the next append or
/// sync, so a removal is durable or its failure is reported by every sync until it is.
#[derive(Debug)]
pub(super) struct RemovalLog {
    path: PathBuf,
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    /// `None` until the first append, and after a wipe deleted the file.
    file: Option<File>,
    /// Appended since the last sync.
    dirty: bool,
    /// Encoded entries not yet written (their append failed).
    unwritten: Vec<u8>,
}

impl RemovalLog {
    /// Reads the log in `dir` (a missing log is empty).
    pub(super) fn read(dir: &NodeDir) -> Result<Removed, TierError> {
        let path = dir.path().join(REMOVAL_LOG);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(|e| TierError::io("read removal log", &path, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TierError::io("open removal log", &path, e)),
        }
        let decoded = decode(&bytes);
        if decoded.damaged_bytes > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = decoded.damaged_bytes,
                "removal log has damaged or torn bytes; skipped them"
            );
        }
        Ok(Removed::from_entries(decoded.entries))
    }

    /// Writes a compacted log holding `keep` (through a temporary file and a rename,
    /// so that a crash leaves the old log or the new one) and opens it for appends.
    pub(super) fn rewrite(dir: &NodeDir, keep: &[Removal]) -> Result<Self, TierError> {
        let path = dir.path().join(REMOVAL_LOG);
        let tmp = dir.path().join(std::format!("{REMOVAL_LOG}.tmp"));
        let mut bytes = Vec::new();
        for r in keep {
            r.encode(&mut bytes);
        }
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)
        };
        if keep.is_empty() {
            match std::fs::remove_file(&path) {
                Ok(()) => dir.sync()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(TierError::io("delete removal log", &path, e)),
            }
        } else {
            write().map_err(|e| TierError::io("rewrite removal log", &path, e))?;
            dir.sync()?;
        }
        Ok(Self { path, state: Mutex::new(LogState::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a removal (durable after the next [`RemovalLog::sync`]). On error the
    /// entry is kept, and written again by the next append or sync.
    pub(super) fn append(&self, removal: &Removal) -> Result<(), TierError> {
        let mut state = self.lock();
        removal.encode(&mut state.unwritten);
        self.write_unwritten(&mut state)
    }

    /// Writes the entries whose append failed or is pending, opening (creating) the
    /// file if needed. A partial write leaves a torn entry, which decoding skips.
    fn write_unwritten(&self, state: &mut LogState) -> Result<(), TierError> {
        if state.unwritten.is_empty() {
            return Ok(());
        }
        if state.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| TierError::io("open removal log", &self.path, e))?;
            // The file may be new: make its name durable too.
            let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| TierError::io("fsync node directory", dir, e))?;
            state.file = Some(f);
        }
        let LogState { file, dirty, unwritten } = state;
        file.as_mut()
            .expect("opened above")
            .write_all(unwritten)
            .map_err(|e| TierError::io("append to removal log", &self.path, e))?;
        unwritten.clear();
        *dirty = true;
        Ok(())
    }

    /// Makes every append so far durable, writing first those that failed.
    pub(super) fn sync(&self) -> Result<(), TierError> {
        let mut state = self.lock();
        self.write_unwritten(&mut state)?;
        if let (Some(f), true) = (state.file.as_ref(), state.dirty) {
            f.sync_data().map_err(|e| TierError::io("sync removal log", &self.path, e))?;
            state.dirty = false;
        }
        Ok(())
    }

    /// A wipe of every bucket below `marker`, with appends held off:
    ///
    /// 1. a [`Removal::WipedBelow`] entry is made durable first, so that if the wipe
    ///    stops half-way (an error, a crash) recovery deletes every such bucket and no
    ///    removal comes back. If it cannot be (a full disk: freeing space is what the
    ///    wipe is for), the wipe goes on without it, and only a wipe that also stops
    ///    half-way can leave records to come back;
    /// 2. `wipe` deletes the buckets and everything else but the log;
    /// 3. the log goes last, and the next append starts a new one.
    pub(super) fn wipe(
        &self,
        marker: BucketId,
        wipe: impl FnOnce() -> Result<usize, TierError>,
    ) -> Result<usize, TierError> {
        let mut state = self.lock();
        Removal::WipedBelow(marker).encode(&mut state.unwritten);
        let durable = self.write_unwritten(&mut state).and_then(|()| match state.file.as_ref() {
            Some(f) => f.sync_data().map_err(|e| TierError::io("sync removal log", &self.path, e)),
            None => Ok(()),
        });
        if let Err(e) = durable {
            tracing::warn!(error = %e, "cannot log the wipe first; wiping without the marker");
        }
        let removed = wipe()?;
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TierError::io("delete removal log", &self.path, e)),
        }
        *state = LogState::default();
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Key {
        Key::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn entries_round_trip_a_torn_tail_is_skipped_and_damage_loses_only_what_it_hit() {
        let entries = [
            Removal::Record(k("a"), ObjectVersion(7)),
            Removal::WipedBelow(BucketId(3)),
            Removal::Record(k("bb"), ObjectVersion(9)),
        ];
        let mut bytes = Vec::new();
        for e in &entries {
            e.encode(&mut bytes);
        }
        assert_eq!(decode(&bytes), Decoded { entries: entries.to_vec(), damaged_bytes: 0 });
        for cut in 0..bytes.len() {
            let d = decode(&bytes[..cut]);
            assert_eq!(&d.entries[..], &entries[..d.entries.len()], "cut at {cut}");
        }
        let first_len = HEAD_LEN + 1 + 4;
        let mut flipped = bytes.clone();
        flipped[HEAD_LEN] ^= 1; // the first entry's key
        let d = decode(&flipped);
        assert_eq!(d.entries, entries[1..].to_vec(), "the entries after the damage survive");
        assert_eq!(d.damaged_bytes, first_len);
    }

    #[test]
    fn a_key_is_dead_up_to_its_highest_logged_version() {
        let r = Removed::from_entries(std::vec![
            Removal::Record(k("a"), ObjectVersion(9)),
            Removal::Record(k("a"), ObjectVersion(4)),
        ]);
        assert_eq!(r.records.get(&k("a")), Some(&ObjectVersion(9)));
    }

    #[test]
    fn a_wipe_supersedes_earlier_removals() {
        let r = Removed::from_entries(std::vec![
            Removal::Record(k("a"), ObjectVersion(1)),
            Removal::WipedBelow(BucketId(5)),
            Removal::Record(k("b"), ObjectVersion(2)),
        ]);
        assert_eq!(r.wiped_below, BucketId(5));
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.records.get(&k("b")), Some(&ObjectVersion(2)));
    }
}
