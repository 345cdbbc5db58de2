//! Reading a disk replica straight from its bucket file, without its node: for readers
//! that see the owning node's directory on a storage root they share with it (the
//! seed's DFS mode, `<root>/<cluster>/<node>/`), even after that node is gone.
//!
//! Bucket files are immutable once published, so a reader needs no lock; it reads the
//! whole record (header, key, value) and hands the value out only if the header names
//! the expected key and version with the descriptor's length and CRC32C, and the value
//! matches that CRC32C. A bucket that is gone (evicted, retired, or a root that is not
//! shared after all) is `Missing`: the caller reads through the node instead.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::dir::{bucket_file_name, node_dir_path};
use super::format::{RecordHeader, RecordLayout};
use crate::checksum::crc32c;
use crate::descriptor::DiskReplica;
use crate::ids::ObjectVersion;
use crate::key::KeyRef;

/// Why a direct read gave no bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectReadError {
    /// The bucket file is not there.
    #[error("{0}: no such bucket file")]
    Missing(PathBuf),
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The bucket file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The bytes at the replica's place are not the record it describes, or fail
    /// their CRC32C.
    #[error("{path}: {what}")]
    Mismatch {
        /// The bucket file.
        path: PathBuf,
        /// What did not match.
        what: &'static str,
    },
}

/// The path of the bucket file holding `replica` under `root`.
pub fn replica_path(root: &Path, cluster: &str, replica: &DiskReplica) -> PathBuf {
    node_dir_path(root, cluster, replica.node).join(bucket_file_name(replica.bucket))
}

/// Reads the value of `key` at `version` that `replica` describes from its bucket file
/// under `root` (blocking: call it off the async threads), checked as the module says.
pub fn read_replica(
    root: &Path,
    cluster: &str,
    key: KeyRef<'_>,
    version: ObjectVersion,
    replica: &DiskReplica,
) -> Result<Bytes, DirectReadError> {
    let path = replica_path(root, cluster, replica);
    let mismatch = |what| DirectReadError::Mismatch { path: path.clone(), what };
    let layout = RecordLayout::new(key.len(), replica.len);
    let start = replica
        .offset
        .checked_sub(layout.value_offset)
        .ok_or_else(|| mismatch("offset before the record"))?;
    let total =
        usize::try_from(layout.value_offset + replica.len).map_err(|_| mismatch("record too large"))?;
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(DirectReadError::Missing(path)),
        Err(source) => return Err(DirectReadError::Io { path, source }),
    };
    let mut record = std::vec![0u8; total];
    file.read_exact_at(&mut record, start).map_err(|source| match source.kind() {
        io::ErrorKind::UnexpectedEof => mismatch("the file ends inside the record"),
        _ => DirectReadError::Io { path: path.clone(), source },
    })?;
    let header = RecordHeader::decode(&record).map_err(|_| mismatch("no valid record header there"))?;
    if header.key != key || header.version != version || header.value_len != replica.len {
        return Err(mismatch("the record there is another object's"));
    }
    if header.value_crc != replica.crc32c {
        return Err(mismatch("the record's CRC32C is not the descriptor's"));
    }
    let value_at = usize::try_from(layout.value_offset).expect("inside the record");
    if crc32c(&record[value_at..]) != replica.crc32c {
        return Err(mismatch("the value does not match its CRC32C"));
    }
    Ok(Bytes::from(record).slice(value_at..))
}
