//! Master → node commands: what the master asks a node to do with its SSD tier, and
//! what it freed in its segment.

use super::{KIND_COMMAND, measure, read_header, write_header};
use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::descriptor::{DiskReplica, MemoryReplica};
use crate::ids::{NodeId, ObjectVersion, SegmentId};
use crate::key::Key;

const TAG_PERSIST: u8 = 1;
const TAG_DROP_DISK_REPLICA: u8 = 2;
const TAG_WIPE_DISK: u8 = 3;
const TAG_FORGET_RANGE: u8 = 4;

/// Why the master asks for a persist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistReason {
    /// Write-behind after a put ended.
    WriteBehind,
    /// The object is being evicted from memory and has no disk replica yet.
    Offload,
}

/// Something the master asks one node to do.
///
/// A node answers a `Persist` with `AddDiskReplica` (origin `Persisted`) or
/// `PersistFailed`; until then the source memory is pinned. It answers a
/// `DropDiskReplica` by deleting the record and sending `RemoveDiskReplica`, which
/// clears the master's tombstone for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// Copy this memory replica to your SSD tier.
    Persist {
        /// The node that should persist (it owns the source segment).
        node: NodeId,
        /// The object's key.
        key: Key,
        /// The version to persist; name it when registering the disk replica.
        version: ObjectVersion,
        /// Where the bytes are.
        source: MemoryReplica,
        /// Why.
        reason: PersistReason,
    },
    /// Delete this record from your SSD tier: the object was removed.
    DropDiskReplica {
        /// The node holding the record.
        node: NodeId,
        /// The object's key.
        key: Key,
        /// The version the record holds.
        version: ObjectVersion,
        /// The record.
        replica: DiskReplica,
    },
    /// Delete every bucket in your node directory: everything was removed.
    WipeDisk {
        /// The node.
        node: NodeId,
    },
    /// The range at `offset` of your segment no longer holds object `version` (removed,
    /// evicted, revoked): forget it, unless a newer write is there already, so that it
    /// is not named to a restarted master as a live object.
    ForgetRange {
        /// The node.
        node: NodeId,
        /// Its segment.
        segment: SegmentId,
        /// Where the range starts.
        offset: u64,
        /// The version it held.
        version: ObjectVersion,
    },
}

impl NodeCommand {
    /// The node the command is for.
    pub fn node(&self) -> NodeId {
        match self {
            NodeCommand::Persist { node, .. }
            | NodeCommand::DropDiskReplica { node, .. }
            | NodeCommand::WipeDisk { node }
            | NodeCommand::ForgetRange { node, .. } => *node,
        }
    }

    /// Encodes the command into `buf`, returning the length written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        self.write_to(&mut w);
        w.finish()
    }

    /// The exact length [`NodeCommand::encode`] needs.
    pub fn encoded_len(&self) -> usize {
        measure(|w| {
            self.write_to(w);
            Ok(())
        })
        .unwrap_or(0)
    }

    pub(super) fn write_to(&self, w: &mut Writer<'_>) {
        let w = &mut *w;
        match self {
            NodeCommand::Persist { node, key, version, source, reason } => {
                write_header(w, KIND_COMMAND, TAG_PERSIST);
                w.u64(node.0);
                w.key(key.as_ref());
                w.u64(version.0);
                source.write_to(w);
                w.u8(match reason {
                    PersistReason::WriteBehind => 1,
                    PersistReason::Offload => 2,
                });
            }
            NodeCommand::DropDiskReplica { node, key, version, replica } => {
                write_header(w, KIND_COMMAND, TAG_DROP_DISK_REPLICA);
                w.u64(node.0);
                w.key(key.as_ref());
                w.u64(version.0);
                replica.write_to(w);
            }
            NodeCommand::WipeDisk { node } => {
                write_header(w, KIND_COMMAND, TAG_WIPE_DISK);
                w.u64(node.0);
            }
            NodeCommand::ForgetRange { node, segment, offset, version } => {
                write_header(w, KIND_COMMAND, TAG_FORGET_RANGE);
                w.u64(node.0);
                w.u64(segment.0);
                w.u64(*offset);
                w.u64(version.0);
            }
        }
    }

    /// Decodes a command; the whole of `buf` must be exactly one.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let tag = read_header(&mut r, KIND_COMMAND, "command kind")?;
        let command = match tag {
            TAG_PERSIST => NodeCommand::Persist {
                node: NodeId(r.u64("node")?),
                key: r.key()?.to_key(),
                version: ObjectVersion(r.u64("version")?),
                source: MemoryReplica::read_from(&mut r)?,
                reason: read_reason(&mut r)?,
            },
            TAG_DROP_DISK_REPLICA => NodeCommand::DropDiskReplica {
                node: NodeId(r.u64("node")?),
                key: r.key()?.to_key(),
                version: ObjectVersion(r.u64("version")?),
                replica: DiskReplica::read_from(&mut r)?,
            },
            TAG_WIPE_DISK => NodeCommand::WipeDisk { node: NodeId(r.u64("node")?) },
            TAG_FORGET_RANGE => NodeCommand::ForgetRange {
                node: NodeId(r.u64("node")?),
                segment: SegmentId(r.u64("segment")?),
                offset: r.u64("offset")?,
                version: ObjectVersion(r.u64("version")?),
            },
            tag => {
                return Err(DecodeError::UnknownTag { what: "command", tag });
            }
        };
        r.finish("command")?;
        Ok(command)
    }
}

fn read_reason(r: &mut Reader<'_>) -> Result<PersistReason, DecodeError> {
    match r.u8("persist reason")? {
        1 => Ok(PersistReason::WriteBehind),
        2 => Ok(PersistReason::Offload),
        tag => Err(DecodeError::UnknownTag { what: "persist reason", tag }),
    }
}
