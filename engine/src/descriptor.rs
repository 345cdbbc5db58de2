//! Replica descriptors: where the bytes of one object version live.
//!
//! A replica is either a range of a memory segment or a record in a bucket file on one
//! node's SSD. Descriptors are plain `Copy` data; their binary form (standalone, with a
//! format version byte, or embedded in a [`wire`](crate::wire) message) is strict and
//! canonical.

use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::ids::{BucketId, NodeId, SegmentId};

/// The version byte that starts a standalone encoded descriptor.
pub const DESCRIPTOR_FORMAT_VERSION: u8 = 1;

const TAG_MEMORY: u8 = 1;
const TAG_DISK: u8 = 2;

/// The bytes of an object inside a memory segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryReplica {
    /// The segment holding the bytes.
    pub segment: SegmentId,
    /// Byte offset of the value inside the segment.
    pub offset: u64,
    /// Length of the value in bytes (never zero).
    pub len: u64,
}

/// The bytes of an object inside a bucket file on a node's SSD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiskReplica {
    /// The node whose SSD directory holds the bucket.
    pub node: NodeId,
    /// The bucket file.
    pub bucket: BucketId,
    /// Byte offset of the value inside the bucket file.
    pub offset: u64,
    /// Length of the value in bytes (never zero).
    pub len: u64,
    /// CRC32C of the value, checked on every read.
    pub crc32c: u32,
}

/// Where one replica of an object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaDescriptor {
    /// In a memory segment.
    Memory(MemoryReplica),
    /// On a node's SSD.
    Disk(DiskReplica),
}

impl ReplicaDescriptor {
    /// The value's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            ReplicaDescriptor::Memory(m) => m.len,
            ReplicaDescriptor::Disk(d) => d.len,
        }
    }

    /// Always false: replicas of empty values do not exist.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encodes the descriptor standalone (format version byte first) into `buf`,
    /// returning the length written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u8(DESCRIPTOR_FORMAT_VERSION);
        self.write_to(&mut w);
        w.finish()
    }

    /// Decodes a standalone descriptor; the whole of `buf` must be exactly one.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        r.version("descriptor", DESCRIPTOR_FORMAT_VERSION)?;
        let d = Self::read_from(&mut r)?;
        r.finish("descriptor")?;
        Ok(d)
    }

    /// Smallest encoded size of an embedded descriptor (tag and the smaller variant),
    /// used to bound list counts.
    pub const MIN_ENCODED_LEN: usize = 1 + if MemoryReplica::ENCODED_LEN < DiskReplica::ENCODED_LEN {
        MemoryReplica::ENCODED_LEN
    } else {
        DiskReplica::ENCODED_LEN
    };

    /// Writes the descriptor embedded in a larger message (no version byte).
    pub fn write_to(&self, w: &mut Writer<'_>) {
        match self {
            ReplicaDescriptor::Memory(m) => {
                w.u8(TAG_MEMORY);
                m.write_to(w);
            }
            ReplicaDescriptor::Disk(d) => {
                w.u8(TAG_DISK);
                d.write_to(w);
            }
        }
    }

    /// Reads a descriptor embedded in a larger message.
    pub fn read_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("replica tag")? {
            TAG_MEMORY => Ok(ReplicaDescriptor::Memory(MemoryReplica::read_from(r)?)),
            TAG_DISK => Ok(ReplicaDescriptor::Disk(DiskReplica::read_from(r)?)),
            tag => Err(DecodeError::UnknownTag { what: "replica", tag }),
        }
    }
}

fn read_extent(r: &mut Reader<'_>) -> Result<(u64, u64), DecodeError> {
    let offset = r.u64("replica offset")?;
    let len = r.u64("replica length")?;
    if len == 0 {
        return Err(DecodeError::InvalidValue { what: "replica length" });
    }
    if offset.checked_add(len).is_none() {
        return Err(DecodeError::InvalidValue { what: "replica extent" });
    }
    Ok((offset, len))
}

impl MemoryReplica {
    /// Encoded size when embedded.
    pub const ENCODED_LEN: usize = 24;

    /// Writes the replica's fields (no tag).
    pub fn write_to(&self, w: &mut Writer<'_>) {
        w.u64(self.segment.0);
        w.u64(self.offset);
        w.u64(self.len);
    }

    /// Reads the replica's fields (no tag).
    pub fn read_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let segment = SegmentId(r.u64("segment id")?);
        let (offset, len) = read_extent(r)?;
        Ok(Self { segment, offset, len })
    }
}

impl DiskReplica {
    /// Encoded size when embedded.
    pub const ENCODED_LEN: usize = 36;

    /// Writes the replica's fields (no tag).
    pub fn write_to(&self, w: &mut Writer<'_>) {
        w.u64(self.node.0);
        w.u64(self.bucket.0);
        w.u64(self.offset);
        w.u64(self.len);
        w.u32(self.crc32c);
    }

    /// Reads the replica's fields (no tag).
    pub fn read_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let node = NodeId(r.u64("node id")?);
        let bucket = BucketId(r.u64("bucket id")?);
        let (offset, len) = read_extent(r)?;
        let crc32c = r.u32("crc32c")?;
        Ok(Self { node, bucket, offset, len, crc32c })
    }
}

/// The life cycle of a replica.
///
/// ```text
/// Processing ──PutEnd──▶ Complete ──Remove──▶ Removed
///     │
///     └──Revoke──▶ Failed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaStatus {
    /// Space is allocated; the writer is copying the value in. Not readable.
    Processing,
    /// The value is complete and readable.
    Complete,
    /// The replica was removed (explicitly, by eviction or by node loss).
    Removed,
    /// The put was revoked or preempted before it completed.
    Failed,
}

/// What happens to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaEvent {
    /// The writer finished the put.
    PutEnd,
    /// The writer revoked the put, or a newer put preempted it.
    Revoke,
    /// The replica is removed.
    Remove,
}

/// A transition the replica life cycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("replica in state {from:?} cannot take event {event:?}")]
pub struct IllegalTransition {
    /// The state the replica was in.
    pub from: ReplicaStatus,
    /// The event it was given.
    pub event: ReplicaEvent,
}

impl ReplicaStatus {
    /// The state after `event`, or why `event` is not allowed now.
    pub const fn on(self, event: ReplicaEvent) -> Result<ReplicaStatus, IllegalTransition> {
        match (self, event) {
            (ReplicaStatus::Processing, ReplicaEvent::PutEnd) => Ok(ReplicaStatus::Complete),
            (ReplicaStatus::Processing, ReplicaEvent::Revoke) => Ok(ReplicaStatus::Failed),
            (ReplicaStatus::Complete, ReplicaEvent::Remove) => Ok(ReplicaStatus::Removed),
            (from, event) => Err(IllegalTransition { from, event }),
        }
    }

    /// Whether a reader may be handed this replica.
    pub const fn is_readable(self) -> bool {
        matches!(self, ReplicaStatus::Complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_STATUSES: [ReplicaStatus; 4] =
        [ReplicaStatus::Processing, ReplicaStatus::Complete, ReplicaStatus::Removed, ReplicaStatus::Failed];
    const ALL_EVENTS: [ReplicaEvent; 3] = [ReplicaEvent::PutEnd, ReplicaEvent::Revoke, ReplicaEvent::Remove];

    #[test]
    fn transition_table_is_exactly_the_documented_one() {
        for from in ALL_STATUSES {
            for event in ALL_EVENTS {
                let expected = match (from, event) {
                    (ReplicaStatus::Processing, ReplicaEvent::PutEnd) => Some(ReplicaStatus::Complete),
                    (ReplicaStatus::Processing, ReplicaEvent::Revoke) => Some(ReplicaStatus::Failed),
                    (ReplicaStatus::Complete, ReplicaEvent::Remove) => Some(ReplicaStatus::Removed),
                    _ => None,
                };
                match expected {
                    Some(to) => assert_eq!(from.on(event), Ok(to), "{from:?} + {event:?}"),
                    None => assert_eq!(from.on(event), Err(IllegalTransition { from, event })),
                }
            }
        }
    }

    #[test]
    fn only_complete_is_readable() {
        for s in ALL_STATUSES {
            assert_eq!(s.is_readable(), s == ReplicaStatus::Complete);
        }
    }

    fn samples() -> [ReplicaDescriptor; 2] {
        [
            ReplicaDescriptor::Memory(MemoryReplica { segment: SegmentId(3), offset: 4096, len: 65536 }),
            ReplicaDescriptor::Disk(DiskReplica {
                node: NodeId(7),
                bucket: BucketId(11),
                offset: 8192,
                len: 1 << 20,
                crc32c: 0xdead_beef,
            }),
        ]
    }

    #[test]
    fn standalone_round_trip() {
        for d in samples() {
            let mut buf = [0u8; 64];
            let n = d.encode(&mut buf).unwrap();
            assert_eq!(ReplicaDescriptor::decode(&buf[..n]), Ok(d));
            // Every strict prefix is a precise truncation error, never a panic.
            for cut in 0..n {
                assert!(matches!(ReplicaDescriptor::decode(&buf[..cut]), Err(DecodeError::Truncated { .. })));
            }
            // Trailing bytes are refused.
            assert!(matches!(
                ReplicaDescriptor::decode(&buf[..n + 1]),
                Err(DecodeError::TrailingBytes { count: 1, .. })
            ));
        }
    }

    #[test]
    fn bad_version_tag_and_extent_are_precise_errors() {
        let mut buf = [0u8; 64];
        let n = samples()[0].encode(&mut buf).unwrap();
        let mut bad = buf;
        bad[0] = 9;
        assert!(matches!(
            ReplicaDescriptor::decode(&bad[..n]),
            Err(DecodeError::UnsupportedVersion { found: 9, .. })
        ));
        let mut bad = buf;
        bad[1] = 77;
        assert_eq!(
            ReplicaDescriptor::decode(&bad[..n]),
            Err(DecodeError::UnknownTag { what: "replica", tag: 77 })
        );
        let zero_len = ReplicaDescriptor::Memory(MemoryReplica { segment: SegmentId(1), offset: 0, len: 1 });
        let n = zero_len.encode(&mut buf).unwrap();
        buf[18..26].fill(0);
        assert_eq!(
            ReplicaDescriptor::decode(&buf[..n]),
            Err(DecodeError::InvalidValue { what: "replica length" })
        );
        let wraps =
            ReplicaDescriptor::Memory(MemoryReplica { segment: SegmentId(1), offset: u64::MAX, len: 1 });
        let n = wraps.encode(&mut buf).unwrap();
        assert_eq!(
            ReplicaDescriptor::decode(&buf[..n]),
            Err(DecodeError::InvalidValue { what: "replica extent" })
        );
    }

    #[test]
    fn encoded_lengths_match_constants() {
        let mut buf = [0u8; 64];
        let [m, d] = samples();
        assert_eq!(m.encode(&mut buf), Ok(2 + MemoryReplica::ENCODED_LEN));
        assert_eq!(d.encode(&mut buf), Ok(2 + DiskReplica::ENCODED_LEN));
    }
}
