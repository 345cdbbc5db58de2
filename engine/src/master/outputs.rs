//! What the master reports besides its answers: events and statistics.

use crate::ids::{ObjectVersion, SegmentId};
use crate::key::Key;

/// Why the master dropped an object (all of its replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Evicted from memory with no disk replica and no way to persist it.
    Evicted,
    /// The node holding its last replica expired or restarted.
    NodeLost,
    /// The segment holding its last replica was unmounted.
    SegmentUnmounted,
    /// Its last disk replica was removed by the node holding it.
    DiskReplicaRemoved,
    /// A newer put of the same key preempted this unfinished one.
    Preempted,
    /// The put was never ended and passed the discard timeout.
    Discarded,
}

/// Something that happened to the object table or the segments, for the nodes that
/// hold the memory, for logs and for statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterEvent {
    /// An object version left the table without being removed by a client.
    ObjectDropped {
        /// Its key.
        key: Key,
        /// Its version.
        version: ObjectVersion,
        /// Why.
        reason: DropReason,
    },
    /// A memory replica's range was freed (evicted, removed, revoked, dropped): its
    /// bytes are no longer readable through the master, and the range may be given to
    /// another put (a removed object's, only once its lease has passed). Reported for
    /// every range freed while its segment stays mounted.
    MemoryFreed {
        /// The segment.
        segment: SegmentId,
        /// The range's offset in it.
        offset: u64,
        /// The object version it held.
        version: ObjectVersion,
    },
}

/// Counters and gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MasterStats {
    /// Objects in the table (complete or in progress).
    pub objects: u64,
    /// Mounted segments.
    pub segments: u64,
    /// Of those, segments whose node is still naming what they held under an earlier
    /// master run (they take no new replicas yet).
    pub segments_restoring: u64,
    /// Registered nodes.
    pub nodes: u64,
    /// Bytes of all mounted segments.
    pub capacity_bytes: u64,
    /// Bytes allocated (whole granules), including pinned memory of removed objects.
    pub used_bytes: u64,
    /// Objects whose memory replicas were evicted while a disk replica kept them.
    pub evicted_to_disk: u64,
    /// Objects dropped entirely by eviction.
    pub evicted_dropped: u64,
    /// Persist commands issued.
    pub persists_requested: u64,
    /// Disk records the master is waiting for nodes to confirm deleted.
    pub tombstones: u64,
    /// Removed objects whose memory stays pinned until a persist finishes.
    pub pinned_removed: u64,
    /// Bytes of removed objects held back from reuse until their leases pass
    /// (counted in `used_bytes` too).
    pub quarantined_bytes: u64,
    /// Objects whose persist failed and is retried.
    pub persist_retries: u64,
    /// CRC32C mismatches reported by nodes and clients ([`crate::wire::Request::ReportCrcFailures`]).
    pub crc_failures_reported: u64,
}

/// Readable disk replicas across the cluster ([`super::Master::disk_usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Disk replicas.
    pub replicas: u64,
    /// Their bytes (values only).
    pub bytes: u64,
}
