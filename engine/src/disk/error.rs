//! What the SSD tier reports when it cannot do what was asked.

use std::io;
use std::path::{Path, PathBuf};
use std::string::String;

use super::format::FormatError;
use super::queue::QueueError;
use crate::ids::BucketId;
use crate::key::Key;
use crate::uring::DriverError;

/// A tier error. Every variant says what failed and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    /// The storage root is missing, not a directory, or not writable.
    #[error("storage root {path}: {reason}")]
    BadRoot {
        /// The root (or the directory under it that failed).
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Another process owns the node directory.
    #[error("node directory is locked by another process: {path}{}", holder.as_deref().map(|h| std::format!(" (held by {h})")).unwrap_or_default())]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as the holder recorded ("pid 123 on host").
        holder: Option<String>,
    },
    /// The device is full.
    #[error("no space left on the device holding {path}")]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The value's bytes do not match their CRC32C: the record is dropped, never
    /// returned.
    #[error("record for {key:?} in bucket {bucket:?} failed its checksum")]
    Corrupted {
        /// The key.
        key: Key,
        /// The bucket.
        bucket: BucketId,
    },
    /// A bucket file's trailer, footer or a record header is damaged.
    #[error("bucket {bucket:?} is damaged: {source}")]
    Damaged {
        /// The bucket.
        bucket: BucketId,
        /// What is wrong.
        source: FormatError,
    },
    /// A bucket file was written by a newer build, in a format this build cannot read:
    /// the directory is left as it is (upgrade, or move the file aside).
    #[error(
        "bucket file {path} has format version {version}; this build reads version {}: it was written by a newer Larder (run that, or move the file aside)",
        super::format::FORMAT_VERSION
    )]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The version it says it has.
        version: u16,
    },
    /// No record under this key.
    #[error("not found")]
    NotFound,
    /// Records hold at least one byte.
    #[error("empty values are not stored")]
    EmptyValue,
    /// A value too large for one record.
    #[error("value of {len} bytes is larger than a record can hold ({max})")]
    ValueTooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Puts accepted before a flush are not durable: their writes failed (the latest
    /// failure is the cause). Every flush reports them until they are written again or
    /// removed.
    #[error("{records} records accepted for persistence are not durable{}", cause.as_ref().map(|c| std::format!(" (latest failure: {c})")).unwrap_or_default())]
    NotDurable {
        /// How many.
        records: u64,
        /// The latest write failure.
        #[source]
        cause: Option<std::sync::Arc<TierError>>,
    },
    /// The write-behind queue refused or could not complete.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The I/O driver could not be started or used.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The tier has been closed.
    #[error("the tier is closed")]
    Closed,
}

impl TierError {
    /// An I/O error on `path`, classified (ENOSPC becomes [`TierError::NoSpace`]).
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            TierError::NoSpace { path: path.to_path_buf() }
        } else {
            TierError::Io { op, path: path.to_path_buf(), source }
        }
    }
}
