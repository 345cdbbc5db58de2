//! The store's typed errors.

use crate::disk::TierError;
use crate::key::{Key, KeyError};
use crate::master::MasterError;
use crate::net::data::DataError;

use super::config::ConfigError;

/// Why a store operation failed. Nothing already acknowledged is lost by any of them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No complete object under the key.
    #[error("no object under this key")]
    NotFound,
    /// An object under the key exists (or is being written).
    #[error("an object under this key already exists")]
    AlreadyExists,
    /// A read lease protects the object: remove it with `force`.
    #[error("the object is leased by a recent read; remove it with force")]
    HasLease,
    /// A put of the object is still in progress.
    #[error("the object is still being written")]
    NotReady,
    /// Memory is full of objects that cannot be evicted yet (leased, or waiting to be
    /// persisted).
    #[error("no space in memory for the value")]
    NoSpace,
    /// The value can never be stored: it is larger than the memory segment, or (with
    /// persistence on) than one record on SSD can hold.
    #[error("value of {len} bytes is larger than the store can hold ({max} bytes)")]
    TooLarge {
        /// The value's length.
        len: u64,
        /// The limit: the segment's size, or the largest record.
        max: u64,
    },
    /// Values must hold at least one byte.
    #[error("empty values are not stored")]
    EmptyValue,
    /// The key is empty or too long.
    #[error("invalid key: {0}")]
    InvalidKey(#[from] KeyError),
    /// `get_into` was given a buffer smaller than the value.
    #[error("buffer of {len} bytes cannot hold the value's {needed} bytes")]
    BufferTooSmall {
        /// The value's length.
        needed: u64,
        /// The buffer's length.
        len: usize,
    },
    /// A batch call was given as many keys as buffers it was not.
    #[error("a batch of {keys} keys came with {buffers} buffers")]
    BatchLength {
        /// Keys given.
        keys: usize,
        /// Buffers given.
        buffers: usize,
    },
    /// The persisted copy failed its checksum: it was dropped, and the object with it
    /// if it had no other copy.
    #[error("the stored copy of {0:?} failed its checksum and was dropped")]
    Corrupted(Key),
    /// The configuration cannot be used.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The SSD tier failed (the storage root, the device, the node directory lock).
    #[error(transparent)]
    Storage(TierError),
    /// The master refused something the embedded node should never ask (a bug).
    #[error("internal: {0}")]
    Internal(MasterError),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// A member of a cluster could not reach its master or a node in time (the
    /// connection is redialed in the background; the call may be tried again).
    #[error("the cluster is unreachable: {0}")]
    Unreachable(std::string::String),
    /// A node refused a transfer of a member of a cluster (a range fenced by a newer
    /// grant, a segment no longer mounted, bytes that arrived damaged).
    #[error("a node refused the transfer: {0}")]
    Transfer(DataError),
    /// A peer in the cluster answered something this build does not understand.
    #[error("protocol: {0}")]
    Protocol(std::string::String),
}

impl From<TierError> for StoreError {
    fn from(e: TierError) -> Self {
        match e {
            TierError::Corrupted { key, .. } => StoreError::Corrupted(key),
            TierError::Closed => StoreError::Closed,
            other => StoreError::Storage(other),
        }
    }
}

impl StoreError {
    /// The error a master refusal means for the caller. `segment` is the largest value
    /// the store takes, for `TooLarge`.
    pub fn from_master(e: MasterError, len: u64, segment: u64) -> Self {
        match e {
            MasterError::ObjectNotFound | MasterError::StaleVersion => StoreError::NotFound,
            MasterError::ObjectAlreadyExists => StoreError::AlreadyExists,
            MasterError::ObjectHasLease => StoreError::HasLease,
            MasterError::ReplicaNotReady | MasterError::PutNotInProgress => StoreError::NotReady,
            MasterError::ObjectTooLarge => StoreError::TooLarge { len, max: segment },
            MasterError::InvalidSize => StoreError::EmptyValue,
            MasterError::NoSpace => StoreError::NoSpace,
            other => StoreError::Internal(other),
        }
    }
}
