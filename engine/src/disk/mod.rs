//! The SSD tier.
//!
//! - [`format`] (`no_std`): the bucket file format.
//! - [`protocol`] (`no_std`): who reads a bucket and who deletes it, exactly once.
//! - [`batch`] (`no_std`): the bucket writer's policy (where records go, when buckets
//!   are sealed), a sans-IO machine.
//! - [`queue`]: the write-behind queue and its flush barrier.
//! - [`removals`]: the removal log that keeps removed records removed across restarts.
//! - [`direct`]: a disk replica read straight from its bucket file on a shared root.
//! - [`Tier`]: bucket files in a locked node directory, written behind the caller,
//!   read back checksummed, evicted for capacity, recovered at open.

pub mod batch;
pub mod format;
pub mod protocol;
#[cfg(feature = "std")]
pub mod queue;

#[cfg(feature = "std")]
mod config;
#[cfg(feature = "std")]
mod dir;
#[cfg(feature = "std")]
pub mod direct;
#[cfg(feature = "std")]
mod error;
#[cfg(feature = "std")]
mod index;
#[cfg(feature = "std")]
mod reader;
#[cfg(feature = "std")]
mod recovery;
#[cfg(feature = "std")]
pub mod removals;
#[cfg(feature = "std")]
mod shared;
#[cfg(feature = "std")]
mod tier;
#[cfg(feature = "std")]
mod writer;

#[cfg(feature = "std")]
pub use config::{DirectIo, TierConfig};
#[cfg(feature = "std")]
pub use dir::{LOCK_FILE, bucket_file_name};
#[cfg(feature = "std")]
pub use error::TierError;
#[cfg(feature = "std")]
pub use reader::ReadResult;
#[cfg(feature = "std")]
pub use recovery::RecoveredRecord;
#[cfg(feature = "std")]
pub use shared::{DropCause, TierEvent};
#[cfg(feature = "std")]
pub use tier::{Tier, TierStats};

#[cfg(test)]
mod tests;
