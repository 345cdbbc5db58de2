//! Node → master requests.

use alloc::vec::Vec;

use super::{
    DiskReplicaOrigin, KIND_REQUEST, MAX_BATCH, RestoredReplica, measure, read_header, write_header,
};
use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::descriptor::DiskReplica;
use crate::ids::{Incarnation, NodeId, ObjectVersion, SegmentId};
use crate::key::KeyRef;

pub(super) const TAG_PUT_START: u8 = 1;
pub(super) const TAG_PUT_END: u8 = 2;
pub(super) const TAG_PUT_REVOKE: u8 = 3;
pub(super) const TAG_GET_REPLICA_LIST: u8 = 4;
pub(super) const TAG_EXISTS: u8 = 5;
pub(super) const TAG_REMOVE: u8 = 6;
pub(super) const TAG_REMOVE_ALL: u8 = 7;
pub(super) const TAG_MOUNT_SEGMENT: u8 = 8;
pub(super) const TAG_UNMOUNT_SEGMENT: u8 = 9;
pub(super) const TAG_PING: u8 = 10;
pub(super) const TAG_ADD_DISK_REPLICA: u8 = 11;
pub(super) const TAG_REMOVE_DISK_REPLICA: u8 = 12;
pub(super) const TAG_PERSIST_FAILED: u8 = 13;
pub(super) const TAG_BATCH_PUT_START: u8 = 14;
pub(super) const TAG_BATCH_PUT_END: u8 = 15;
pub(super) const TAG_BATCH_PUT_REVOKE: u8 = 16;
pub(super) const TAG_BATCH_GET_REPLICA_LIST: u8 = 17;
pub(super) const TAG_BATCH_EXISTS: u8 = 18;
pub(super) const TAG_BATCH_REMOVE: u8 = 19;
pub(super) const TAG_LOCATE: u8 = 20;
pub(super) const TAG_FLUSH: u8 = 21;
pub(super) const TAG_FLUSH_STATUS: u8 = 22;
pub(super) const TAG_LOCATE_NODE: u8 = 23;
pub(super) const TAG_REPORT_CRC_FAILURES: u8 = 24;
pub(super) const TAG_RESTORE_SEGMENT: u8 = 25;
pub(super) const TAG_RESTORE_REPLICAS: u8 = 26;

/// Smallest encoded key: a two-byte length and one byte.
const MIN_KEY_LEN: usize = 3;

/// A request to the master. Keys borrow from the decoded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Allocate replicas for a new object.
    PutStart {
        /// The node writing the value (only it may end or revoke the put).
        writer: NodeId,
        /// The object's key.
        key: KeyRef<'a>,
        /// The value's size in bytes.
        size: u64,
        /// How many memory replicas to allocate.
        replicas: u8,
    },
    /// The writer copied the value into every replica.
    PutEnd {
        /// The writer.
        writer: NodeId,
        /// The key.
        key: KeyRef<'a>,
        /// The version the put start granted.
        version: ObjectVersion,
        /// The writer's CRC32C of the value: every reader checks the bytes it got
        /// against it.
        crc32c: u32,
    },
    /// The writer gives up; free the replicas.
    PutRevoke {
        /// The writer.
        writer: NodeId,
        /// The key.
        key: KeyRef<'a>,
        /// The version the put start granted.
        version: ObjectVersion,
    },
    /// Where can this object be read? Grants a read lease.
    GetReplicaList {
        /// The key.
        key: KeyRef<'a>,
    },
    /// Is there a complete object under this key?
    Exists {
        /// The key.
        key: KeyRef<'a>,
    },
    /// Remove an object (memory and disk replicas).
    Remove {
        /// The key.
        key: KeyRef<'a>,
        /// Remove even while leased.
        force: bool,
    },
    /// Remove every object.
    RemoveAll {
        /// Remove leased objects too.
        force: bool,
    },
    /// Contribute a memory segment.
    MountSegment {
        /// The node that owns the memory.
        node: NodeId,
        /// The segment's cluster-unique id.
        segment: SegmentId,
        /// Its size in bytes.
        size: u64,
    },
    /// Withdraw a memory segment; its replicas are dropped.
    UnmountSegment {
        /// The owning node.
        node: NodeId,
        /// The segment.
        segment: SegmentId,
    },
    /// Liveness and registration.
    Ping {
        /// The node.
        node: NodeId,
        /// This run of the node process.
        incarnation: Incarnation,
        /// Whether the node has an SSD tier (can persist).
        has_storage: bool,
    },
    /// A node holds this version on its SSD.
    AddDiskReplica {
        /// The key.
        key: KeyRef<'a>,
        /// The version persisted.
        version: ObjectVersion,
        /// Where it is.
        replica: DiskReplica,
        /// Why the node registers it.
        origin: DiskReplicaOrigin,
    },
    /// A node no longer holds this version on its SSD (its bucket was evicted, its
    /// record failed a CRC check, or it executed a drop the master asked for).
    RemoveDiskReplica {
        /// The node.
        node: NodeId,
        /// The key.
        key: KeyRef<'a>,
        /// The version.
        version: ObjectVersion,
    },
    /// A node could not persist a version the master asked it to.
    PersistFailed {
        /// The node.
        node: NodeId,
        /// The key.
        key: KeyRef<'a>,
        /// The version.
        version: ObjectVersion,
    },
    /// [`Request::PutStart`] for many objects.
    BatchPutStart {
        /// The writer.
        writer: NodeId,
        /// Replicas per object.
        replicas: u8,
        /// Key and size of each object.
        items: Vec<(KeyRef<'a>, u64)>,
    },
    /// [`Request::PutEnd`] for many objects.
    BatchPutEnd {
        /// The writer.
        writer: NodeId,
        /// Key, granted version and CRC32C of the value of each object.
        items: Vec<(KeyRef<'a>, ObjectVersion, u32)>,
    },
    /// [`Request::PutRevoke`] for many objects.
    BatchPutRevoke {
        /// The writer.
        writer: NodeId,
        /// Key and granted version of each object.
        items: Vec<(KeyRef<'a>, ObjectVersion)>,
    },
    /// [`Request::GetReplicaList`] for many keys.
    BatchGetReplicaList {
        /// The keys.
        keys: Vec<KeyRef<'a>>,
    },
    /// [`Request::Exists`] for many keys.
    BatchExists {
        /// The keys.
        keys: Vec<KeyRef<'a>>,
    },
    /// [`Request::Remove`] for many keys.
    BatchRemove {
        /// Remove even while leased.
        force: bool,
        /// The keys.
        keys: Vec<KeyRef<'a>>,
    },
    /// Which node owns a segment, and where it serves it.
    Locate {
        /// The segment.
        segment: SegmentId,
    },
    /// Begin a flush: the answer is its barrier (every object acknowledged before it
    /// has a lower version), to ask about with [`Request::FlushStatus`].
    Flush,
    /// Where the flush with this barrier stands.
    FlushStatus {
        /// The barrier [`Request::Flush`] answered.
        barrier: ObjectVersion,
    },
    /// The reporter found bytes that did not match their CRC32C (a transfer that
    /// arrived damaged, a replica that rotted in memory or on disk) `count` times since
    /// its last report. Counted for the operator; the bytes were never returned.
    ReportCrcFailures {
        /// The node or client that checked them.
        reporter: NodeId,
        /// Failures since its last report.
        count: u64,
    },
    /// Where a node serves (to read a disk replica through its owner).
    LocateNode {
        /// The node.
        node: NodeId,
    },
    /// Mount a segment that still holds objects written under an earlier run of the
    /// master, to name them with [`Request::RestoreReplicas`]: it takes no new
    /// replicas until the node mounts it ([`Request::MountSegment`]) when it is done.
    RestoreSegment {
        /// The owning node.
        node: NodeId,
        /// The segment.
        segment: SegmentId,
        /// Its size in bytes.
        size: u64,
    },
    /// Objects a restoring segment holds, in ascending offset order (across batches
    /// too); each is answered on its own.
    RestoreReplicas {
        /// The owning node.
        node: NodeId,
        /// The segment.
        segment: SegmentId,
        /// The replicas.
        items: Vec<RestoredReplica<'a>>,
    },
}

impl<'a> Request<'a> {
    /// The node this request speaks for, if it names one: a connection bound to one
    /// node by its handshake refuses requests that name another.
    pub fn node(&self) -> Option<NodeId> {
        match self {
            Request::PutStart { writer, .. }
            | Request::PutEnd { writer, .. }
            | Request::PutRevoke { writer, .. }
            | Request::BatchPutStart { writer, .. }
            | Request::BatchPutEnd { writer, .. }
            | Request::BatchPutRevoke { writer, .. } => Some(*writer),
            Request::MountSegment { node, .. }
            | Request::UnmountSegment { node, .. }
            | Request::Ping { node, .. }
            | Request::RemoveDiskReplica { node, .. }
            | Request::PersistFailed { node, .. }
            | Request::RestoreSegment { node, .. }
            | Request::RestoreReplicas { node, .. } => Some(*node),
            Request::ReportCrcFailures { reporter, .. } => Some(*reporter),
            Request::AddDiskReplica { replica, .. } => Some(replica.node),
            Request::GetReplicaList { .. }
            | Request::Exists { .. }
            | Request::Remove { .. }
            | Request::RemoveAll { .. }
            | Request::BatchGetReplicaList { .. }
            | Request::BatchExists { .. }
            | Request::BatchRemove { .. }
            | Request::Locate { .. }
            | Request::Flush
            | Request::FlushStatus { .. }
            | Request::LocateNode { .. } => None,
        }
    }

    /// Encodes the request into `buf`, returning the length written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        self.write_to(&mut w)?;
        w.finish()
    }

    /// The exact length [`Request::encode`] needs.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        measure(|w| self.write_to(w))
    }

    pub(super) fn write_to(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Request::PutStart { writer, key, size, replicas } => {
                write_header(w, KIND_REQUEST, TAG_PUT_START);
                w.u64(writer.0);
                w.key(*key);
                w.u64(*size);
                w.u8(*replicas);
            }
            Request::PutEnd { writer, key, version, crc32c } => {
                write_header(w, KIND_REQUEST, TAG_PUT_END);
                write_writer_key_version(w, *writer, *key, *version);
                w.u32(*crc32c);
            }
            Request::PutRevoke { writer, key, version } => {
                write_header(w, KIND_REQUEST, TAG_PUT_REVOKE);
                write_writer_key_version(w, *writer, *key, *version);
            }
            Request::GetReplicaList { key } => {
                write_header(w, KIND_REQUEST, TAG_GET_REPLICA_LIST);
                w.key(*key);
            }
            Request::Exists { key } => {
                write_header(w, KIND_REQUEST, TAG_EXISTS);
                w.key(*key);
            }
            Request::Remove { key, force } => {
                write_header(w, KIND_REQUEST, TAG_REMOVE);
                w.key(*key);
                w.bool(*force);
            }
            Request::RemoveAll { force } => {
                write_header(w, KIND_REQUEST, TAG_REMOVE_ALL);
                w.bool(*force);
            }
            Request::MountSegment { node, segment, size } => {
                write_header(w, KIND_REQUEST, TAG_MOUNT_SEGMENT);
                w.u64(node.0);
                w.u64(segment.0);
                w.u64(*size);
            }
            Request::RestoreSegment { node, segment, size } => {
                write_header(w, KIND_REQUEST, TAG_RESTORE_SEGMENT);
                w.u64(node.0);
                w.u64(segment.0);
                w.u64(*size);
            }
            Request::RestoreReplicas { node, segment, items } => {
                write_header(w, KIND_REQUEST, TAG_RESTORE_REPLICAS);
                w.u64(node.0);
                w.u64(segment.0);
                w.count("batch", items.len(), MAX_BATCH)?;
                for item in items {
                    w.key(item.key);
                    w.u64(item.version.0);
                    w.u64(item.offset);
                    w.u64(item.len);
                    w.u32(item.crc32c);
                }
            }
            Request::UnmountSegment { node, segment } => {
                write_header(w, KIND_REQUEST, TAG_UNMOUNT_SEGMENT);
                w.u64(node.0);
                w.u64(segment.0);
            }
            Request::Ping { node, incarnation, has_storage } => {
                write_header(w, KIND_REQUEST, TAG_PING);
                w.u64(node.0);
                w.u64(incarnation.0);
                w.bool(*has_storage);
            }
            Request::AddDiskReplica { key, version, replica, origin } => {
                write_header(w, KIND_REQUEST, TAG_ADD_DISK_REPLICA);
                w.key(*key);
                w.u64(version.0);
                replica.write_to(w);
                origin.write_to(w);
            }
            Request::RemoveDiskReplica { node, key, version } => {
                write_header(w, KIND_REQUEST, TAG_REMOVE_DISK_REPLICA);
                write_writer_key_version(w, *node, *key, *version);
            }
            Request::PersistFailed { node, key, version } => {
                write_header(w, KIND_REQUEST, TAG_PERSIST_FAILED);
                write_writer_key_version(w, *node, *key, *version);
            }
            Request::BatchPutStart { writer, replicas, items } => {
                write_header(w, KIND_REQUEST, TAG_BATCH_PUT_START);
                w.u64(writer.0);
                w.u8(*replicas);
                w.count("batch", items.len(), MAX_BATCH)?;
                for (key, size) in items {
                    w.key(*key);
                    w.u64(*size);
                }
            }
            Request::BatchPutEnd { writer, items } => {
                write_header(w, KIND_REQUEST, TAG_BATCH_PUT_END);
                write_put_end_items(w, *writer, items)?;
            }
            Request::BatchPutRevoke { writer, items } => {
                write_header(w, KIND_REQUEST, TAG_BATCH_PUT_REVOKE);
                write_versioned_items(w, *writer, items)?;
            }
            Request::BatchGetReplicaList { keys } => {
                write_header(w, KIND_REQUEST, TAG_BATCH_GET_REPLICA_LIST);
                write_keys(w, keys)?;
            }
            Request::BatchExists { keys } => {
                write_header(w, KIND_REQUEST, TAG_BATCH_EXISTS);
                write_keys(w, keys)?;
            }
            Request::BatchRemove { force, keys } => {
                write_header(w, KIND_REQUEST, TAG_BATCH_REMOVE);
                w.bool(*force);
                write_keys(w, keys)?;
            }
            Request::Locate { segment } => {
                write_header(w, KIND_REQUEST, TAG_LOCATE);
                w.u64(segment.0);
            }
            Request::Flush => write_header(w, KIND_REQUEST, TAG_FLUSH),
            Request::FlushStatus { barrier } => {
                write_header(w, KIND_REQUEST, TAG_FLUSH_STATUS);
                w.u64(barrier.0);
            }
            Request::LocateNode { node } => {
                write_header(w, KIND_REQUEST, TAG_LOCATE_NODE);
                w.u64(node.0);
            }
            Request::ReportCrcFailures { reporter, count } => {
                write_header(w, KIND_REQUEST, TAG_REPORT_CRC_FAILURES);
                w.u64(reporter.0);
                w.u64(*count);
            }
        }
        Ok(())
    }

    /// Decodes a request; the whole of `buf` must be exactly one.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let tag = read_header(&mut r, KIND_REQUEST, "request kind")?;
        let request = match tag {
            TAG_PUT_START => Request::PutStart {
                writer: NodeId(r.u64("writer")?),
                key: r.key()?,
                size: r.u64("size")?,
                replicas: r.u8("replicas")?,
            },
            TAG_PUT_END => {
                let (writer, key, version) = read_writer_key_version(&mut r)?;
                Request::PutEnd { writer, key, version, crc32c: r.u32("crc32c")? }
            }
            TAG_PUT_REVOKE => {
                let (writer, key, version) = read_writer_key_version(&mut r)?;
                Request::PutRevoke { writer, key, version }
            }
            TAG_GET_REPLICA_LIST => Request::GetReplicaList { key: r.key()? },
            TAG_EXISTS => Request::Exists { key: r.key()? },
            TAG_REMOVE => Request::Remove { key: r.key()?, force: r.bool("force")? },
            TAG_REMOVE_ALL => Request::RemoveAll { force: r.bool("force")? },
            TAG_MOUNT_SEGMENT => Request::MountSegment {
                node: NodeId(r.u64("node")?),
                segment: SegmentId(r.u64("segment")?),
                size: r.u64("segment size")?,
            },
            TAG_UNMOUNT_SEGMENT => Request::UnmountSegment {
                node: NodeId(r.u64("node")?),
                segment: SegmentId(r.u64("segment")?),
            },
            TAG_PING => Request::Ping {
                node: NodeId(r.u64("node")?),
                incarnation: Incarnation(r.u64("incarnation")?),
                has_storage: r.bool("has storage")?,
            },
            TAG_ADD_DISK_REPLICA => Request::AddDiskReplica {
                key: r.key()?,
                version: ObjectVersion(r.u64("version")?),
                replica: DiskReplica::read_from(&mut r)?,
                origin: DiskReplicaOrigin::read_from(&mut r)?,
            },
            TAG_REMOVE_DISK_REPLICA => {
                let (node, key, version) = read_writer_key_version(&mut r)?;
                Request::RemoveDiskReplica { node, key, version }
            }
            TAG_PERSIST_FAILED => {
                let (node, key, version) = read_writer_key_version(&mut r)?;
                Request::PersistFailed { node, key, version }
            }
            TAG_BATCH_PUT_START => {
                let writer = NodeId(r.u64("writer")?);
                let replicas = r.u8("replicas")?;
                let n = r.count("batch", MAX_BATCH, MIN_KEY_LEN + 8)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push((r.key()?, r.u64("size")?));
                }
                Request::BatchPutStart { writer, replicas, items }
            }
            TAG_BATCH_PUT_END => {
                let (writer, items) = read_put_end_items(&mut r)?;
                Request::BatchPutEnd { writer, items }
            }
            TAG_BATCH_PUT_REVOKE => {
                let (writer, items) = read_versioned_items(&mut r)?;
                Request::BatchPutRevoke { writer, items }
            }
            TAG_BATCH_GET_REPLICA_LIST => Request::BatchGetReplicaList { keys: read_keys(&mut r)? },
            TAG_BATCH_EXISTS => Request::BatchExists { keys: read_keys(&mut r)? },
            TAG_BATCH_REMOVE => {
                let force = r.bool("force")?;
                Request::BatchRemove { force, keys: read_keys(&mut r)? }
            }
            TAG_LOCATE => Request::Locate { segment: SegmentId(r.u64("segment")?) },
            TAG_FLUSH => Request::Flush,
            TAG_FLUSH_STATUS => Request::FlushStatus { barrier: ObjectVersion(r.u64("barrier")?) },
            TAG_LOCATE_NODE => Request::LocateNode { node: NodeId(r.u64("node")?) },
            TAG_RESTORE_SEGMENT => Request::RestoreSegment {
                node: NodeId(r.u64("node")?),
                segment: SegmentId(r.u64("segment")?),
                size: r.u64("size")?,
            },
            TAG_RESTORE_REPLICAS => {
                let node = NodeId(r.u64("node")?);
                let segment = SegmentId(r.u64("segment")?);
                Request::RestoreReplicas { node, segment, items: read_restored(&mut r)? }
            }
            TAG_REPORT_CRC_FAILURES => {
                Request::ReportCrcFailures { reporter: NodeId(r.u64("reporter")?), count: r.u64("count")? }
            }
            tag => {
                return Err(DecodeError::UnknownTag { what: "request", tag });
            }
        };
        r.finish("request")?;
        Ok(request)
    }
}

fn write_writer_key_version(w: &mut Writer<'_>, node: NodeId, key: KeyRef<'_>, version: ObjectVersion) {
    w.u64(node.0);
    w.key(key);
    w.u64(version.0);
}

fn read_writer_key_version<'a>(
    r: &mut Reader<'a>,
) -> Result<(NodeId, KeyRef<'a>, ObjectVersion), DecodeError> {
    Ok((NodeId(r.u64("node")?), r.key()?, ObjectVersion(r.u64("version")?)))
}

fn write_versioned_items(
    w: &mut Writer<'_>,
    writer: NodeId,
    items: &[(KeyRef<'_>, ObjectVersion)],
) -> Result<(), EncodeError> {
    w.u64(writer.0);
    w.count("batch", items.len(), MAX_BATCH)?;
    for (key, version) in items {
        w.key(*key);
        w.u64(version.0);
    }
    Ok(())
}

#[allow(clippy::type_complexity)] // a pair of plain types, named at the call sites
fn read_versioned_items<'a>(
    r: &mut Reader<'a>,
) -> Result<(NodeId, Vec<(KeyRef<'a>, ObjectVersion)>), DecodeError> {
    let writer = NodeId(r.u64("writer")?);
    let n = r.count("batch", MAX_BATCH, MIN_KEY_LEN + 8)?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push((r.key()?, ObjectVersion(r.u64("version")?)));
    }
    Ok((writer, items))
}

fn write_put_end_items(
    w: &mut Writer<'_>,
    writer: NodeId,
    items: &[(KeyRef<'_>, ObjectVersion, u32)],
) -> Result<(), EncodeError> {
    w.u64(writer.0);
    w.count("batch", items.len(), MAX_BATCH)?;
    for (key, version, crc32c) in items {
        w.key(*key);
        w.u64(version.0);
        w.u32(*crc32c);
    }
    Ok(())
}

#[allow(clippy::type_complexity)] // plain types, named at the call sites
fn read_put_end_items<'a>(
    r: &mut Reader<'a>,
) -> Result<(NodeId, Vec<(KeyRef<'a>, ObjectVersion, u32)>), DecodeError> {
    let writer = NodeId(r.u64("writer")?);
    let n = r.count("batch", MAX_BATCH, MIN_KEY_LEN + 12)?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push((r.key()?, ObjectVersion(r.u64("version")?), r.u32("crc32c")?));
    }
    Ok((writer, items))
}

fn read_restored<'a>(r: &mut Reader<'a>) -> Result<Vec<RestoredReplica<'a>>, DecodeError> {
    let n = r.count("batch", MAX_BATCH, MIN_KEY_LEN + 28)?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let key = r.key()?;
        let version = ObjectVersion(r.u64("version")?);
        let offset = r.u64("offset")?;
        let len = r.u64("length")?;
        if len == 0 {
            return Err(DecodeError::InvalidValue { what: "restored replica length" });
        }
        items.push(RestoredReplica { key, version, offset, len, crc32c: r.u32("crc32c")? });
    }
    Ok(items)
}

fn write_keys(w: &mut Writer<'_>, keys: &[KeyRef<'_>]) -> Result<(), EncodeError> {
    w.count("batch", keys.len(), MAX_BATCH)?;
    for key in keys {
        w.key(*key);
    }
    Ok(())
}

fn read_keys<'a>(r: &mut Reader<'a>) -> Result<Vec<KeyRef<'a>>, DecodeError> {
    let n = r.count("batch", MAX_BATCH, MIN_KEY_LEN)?;
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        keys.push(r.key()?);
    }
    Ok(keys)
}
