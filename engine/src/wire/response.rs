//! Master → node responses. Each answers the request with the same tag.

use alloc::boxed::Box;
use alloc::vec::Vec;
use smallvec::SmallVec;

use super::MasterError;
use super::request::*;
use super::{
    FlushStatus, KIND_RESPONSE, Location, MAX_BATCH, MAX_REPLICAS, PingOutcome, PingReply, PutGrant,
    RemoveAllSummary, ReplicaList, measure, read_duration, read_header, write_duration, write_header,
};
use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::descriptor::{MemoryReplica, ReplicaDescriptor};
use crate::ids::{NodeId, ObjectVersion};

/// The master's answer to a [`Request`](super::Request) with the same name.
///
/// Batch answers box their per-item payloads: an item that is an error takes two bytes
/// on the wire, so an unboxed item several times larger in memory would let a short
/// message make the decoder allocate far more than its own size.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // each variant answers the request of the same name
pub enum Response {
    PutStart(Result<PutGrant, MasterError>),
    PutEnd(Result<(), MasterError>),
    PutRevoke(Result<(), MasterError>),
    GetReplicaList(Result<ReplicaList, MasterError>),
    Exists(bool),
    Remove(Result<(), MasterError>),
    RemoveAll(RemoveAllSummary),
    MountSegment(Result<(), MasterError>),
    /// Answers [`Request::RestoreSegment`].
    RestoreSegment(Result<(), MasterError>),
    /// Answers [`Request::RestoreReplicas`], one result per replica in order.
    RestoreReplicas(Vec<Result<(), MasterError>>),
    UnmountSegment(Result<(), MasterError>),
    Ping(PingReply),
    AddDiskReplica(Result<(), MasterError>),
    RemoveDiskReplica(Result<(), MasterError>),
    PersistFailed(Result<(), MasterError>),
    BatchPutStart(Vec<Result<Box<PutGrant>, MasterError>>),
    BatchPutEnd(Vec<Result<(), MasterError>>),
    BatchPutRevoke(Vec<Result<(), MasterError>>),
    BatchGetReplicaList(Vec<Result<Box<ReplicaList>, MasterError>>),
    BatchExists(Vec<bool>),
    BatchRemove(Vec<Result<(), MasterError>>),
    Locate(Result<Location, MasterError>),
    /// The flush's barrier.
    Flush(ObjectVersion),
    FlushStatus(FlushStatus),
    LocateNode(Result<Location, MasterError>),
    ReportCrcFailures(Result<(), MasterError>),
}

type Unit = Result<(), MasterError>;

/// Encoded size of a result's status (0, or an error code): the least a batch item takes.
const STATUS_LEN: usize = 2;

impl Response {
    /// Encodes the response into `buf`, returning the length written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        self.write_to(&mut w)?;
        w.finish()
    }

    /// The exact length [`Response::encode`] needs.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        measure(|w| self.write_to(w))
    }

    pub(super) fn write_to(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Response::PutStart(r) => {
                write_header(w, KIND_RESPONSE, TAG_PUT_START);
                write_result(w, r, write_grant)?;
            }
            Response::PutEnd(r) => write_unit(w, TAG_PUT_END, r),
            Response::PutRevoke(r) => write_unit(w, TAG_PUT_REVOKE, r),
            Response::GetReplicaList(r) => {
                write_header(w, KIND_RESPONSE, TAG_GET_REPLICA_LIST);
                write_result(w, r, write_replica_list)?;
            }
            Response::Exists(b) => {
                write_header(w, KIND_RESPONSE, TAG_EXISTS);
                w.bool(*b);
            }
            Response::Remove(r) => write_unit(w, TAG_REMOVE, r),
            Response::RemoveAll(s) => {
                write_header(w, KIND_RESPONSE, TAG_REMOVE_ALL);
                w.u64(s.removed);
                w.u64(s.skipped);
            }
            Response::MountSegment(r) => write_unit(w, TAG_MOUNT_SEGMENT, r),
            Response::RestoreSegment(r) => write_unit(w, TAG_RESTORE_SEGMENT, r),
            Response::RestoreReplicas(rs) => write_unit_batch(w, TAG_RESTORE_REPLICAS, rs)?,
            Response::UnmountSegment(r) => write_unit(w, TAG_UNMOUNT_SEGMENT, r),
            Response::Ping(p) => {
                write_header(w, KIND_RESPONSE, TAG_PING);
                w.u8(match p.outcome {
                    PingOutcome::Refreshed => 1,
                    PingOutcome::Registered => 2,
                    PingOutcome::Restarted => 3,
                });
                write_duration(w, p.node_ttl);
            }
            Response::AddDiskReplica(r) => write_unit(w, TAG_ADD_DISK_REPLICA, r),
            Response::RemoveDiskReplica(r) => write_unit(w, TAG_REMOVE_DISK_REPLICA, r),
            Response::PersistFailed(r) => write_unit(w, TAG_PERSIST_FAILED, r),
            Response::BatchPutStart(rs) => {
                write_header(w, KIND_RESPONSE, TAG_BATCH_PUT_START);
                write_batch(w, rs, |w, r| write_result(w, r, |w, g| write_grant(w, g)))?;
            }
            Response::BatchPutEnd(rs) => write_unit_batch(w, TAG_BATCH_PUT_END, rs)?,
            Response::BatchPutRevoke(rs) => write_unit_batch(w, TAG_BATCH_PUT_REVOKE, rs)?,
            Response::BatchGetReplicaList(rs) => {
                write_header(w, KIND_RESPONSE, TAG_BATCH_GET_REPLICA_LIST);
                write_batch(w, rs, |w, r| write_result(w, r, |w, l| write_replica_list(w, l)))?;
            }
            Response::BatchExists(bs) => {
                write_header(w, KIND_RESPONSE, TAG_BATCH_EXISTS);
                write_batch(w, bs, |w, b| {
                    w.bool(*b);
                    Ok(())
                })?;
            }
            Response::BatchRemove(rs) => write_unit_batch(w, TAG_BATCH_REMOVE, rs)?,
            Response::Locate(r) => {
                write_header(w, KIND_RESPONSE, TAG_LOCATE);
                write_result(w, r, write_location)?;
            }
            Response::LocateNode(r) => {
                write_header(w, KIND_RESPONSE, TAG_LOCATE_NODE);
                write_result(w, r, write_location)?;
            }
            Response::ReportCrcFailures(r) => write_unit(w, TAG_REPORT_CRC_FAILURES, r),
            Response::Flush(barrier) => {
                write_header(w, KIND_RESPONSE, TAG_FLUSH);
                w.u64(barrier.0);
            }
            Response::FlushStatus(status) => {
                write_header(w, KIND_RESPONSE, TAG_FLUSH_STATUS);
                match status {
                    FlushStatus::Durable => w.u8(1),
                    FlushStatus::Pending => w.u8(2),
                    FlushStatus::NotDurable { objects } => {
                        w.u8(3);
                        w.u64(*objects);
                    }
                }
            }
        }
        Ok(())
    }

    /// Decodes a response; the whole of `buf` must be exactly one.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let tag = read_header(&mut r, KIND_RESPONSE, "response kind")?;
        let response = match tag {
            TAG_PUT_START => Response::PutStart(read_result(&mut r, read_grant)?),
            TAG_PUT_END => Response::PutEnd(read_unit(&mut r)?),
            TAG_PUT_REVOKE => Response::PutRevoke(read_unit(&mut r)?),
            TAG_GET_REPLICA_LIST => Response::GetReplicaList(read_result(&mut r, read_replica_list)?),
            TAG_EXISTS => Response::Exists(r.bool("exists")?),
            TAG_REMOVE => Response::Remove(read_unit(&mut r)?),
            TAG_REMOVE_ALL => Response::RemoveAll(RemoveAllSummary {
                removed: r.u64("removed")?,
                skipped: r.u64("skipped")?,
            }),
            TAG_MOUNT_SEGMENT => Response::MountSegment(read_unit(&mut r)?),
            TAG_RESTORE_SEGMENT => Response::RestoreSegment(read_unit(&mut r)?),
            TAG_RESTORE_REPLICAS => Response::RestoreReplicas(read_batch(&mut r, STATUS_LEN, read_unit)?),
            TAG_UNMOUNT_SEGMENT => Response::UnmountSegment(read_unit(&mut r)?),
            TAG_PING => {
                let outcome = match r.u8("ping outcome")? {
                    1 => PingOutcome::Refreshed,
                    2 => PingOutcome::Registered,
                    3 => PingOutcome::Restarted,
                    tag => {
                        return Err(DecodeError::UnknownTag { what: "ping outcome", tag });
                    }
                };
                Response::Ping(PingReply { outcome, node_ttl: read_duration(&mut r, "node ttl")? })
            }
            TAG_ADD_DISK_REPLICA => Response::AddDiskReplica(read_unit(&mut r)?),
            TAG_REMOVE_DISK_REPLICA => Response::RemoveDiskReplica(read_unit(&mut r)?),
            TAG_PERSIST_FAILED => Response::PersistFailed(read_unit(&mut r)?),
            TAG_BATCH_PUT_START => Response::BatchPutStart(read_batch(&mut r, STATUS_LEN, |r| {
                read_result(r, |r| read_grant(r).map(Box::new))
            })?),
            TAG_BATCH_PUT_END => Response::BatchPutEnd(read_batch(&mut r, STATUS_LEN, read_unit)?),
            TAG_BATCH_PUT_REVOKE => Response::BatchPutRevoke(read_batch(&mut r, STATUS_LEN, read_unit)?),
            TAG_BATCH_GET_REPLICA_LIST => {
                Response::BatchGetReplicaList(read_batch(&mut r, STATUS_LEN, |r| {
                    read_result(r, |r| read_replica_list(r).map(Box::new))
                })?)
            }
            TAG_BATCH_EXISTS => Response::BatchExists(read_batch(&mut r, 1, |r| r.bool("exists"))?),
            TAG_BATCH_REMOVE => Response::BatchRemove(read_batch(&mut r, STATUS_LEN, read_unit)?),
            TAG_LOCATE => Response::Locate(read_result(&mut r, read_location)?),
            TAG_LOCATE_NODE => Response::LocateNode(read_result(&mut r, read_location)?),
            TAG_REPORT_CRC_FAILURES => Response::ReportCrcFailures(read_unit(&mut r)?),
            TAG_FLUSH => Response::Flush(ObjectVersion(r.u64("barrier")?)),
            TAG_FLUSH_STATUS => Response::FlushStatus(match r.u8("flush status")? {
                1 => FlushStatus::Durable,
                2 => FlushStatus::Pending,
                3 => FlushStatus::NotDurable { objects: r.u64("objects")? },
                tag => return Err(DecodeError::UnknownTag { what: "flush status", tag }),
            }),
            tag => {
                return Err(DecodeError::UnknownTag { what: "response", tag });
            }
        };
        r.finish("response")?;
        Ok(response)
    }
}

fn write_location(w: &mut Writer<'_>, l: &Location) -> Result<(), EncodeError> {
    w.u64(l.node.0);
    w.socket_addr(l.serves);
    Ok(())
}

fn read_location(r: &mut Reader<'_>) -> Result<Location, DecodeError> {
    Ok(Location { node: NodeId(r.u64("node")?), serves: r.socket_addr()? })
}

fn write_result<T>(
    w: &mut Writer<'_>,
    result: &Result<T, MasterError>,
    write_ok: impl FnOnce(&mut Writer<'_>, &T) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    match result {
        Ok(v) => {
            w.u16(0);
            write_ok(w, v)
        }
        Err(e) => {
            w.u16(e.code());
            Ok(())
        }
    }
}

fn read_result<'a, T>(
    r: &mut Reader<'a>,
    read_ok: impl FnOnce(&mut Reader<'a>) -> Result<T, DecodeError>,
) -> Result<Result<T, MasterError>, DecodeError> {
    match r.u16("status")? {
        0 => Ok(Ok(read_ok(r)?)),
        code => Ok(Err(MasterError::from_wire(code))),
    }
}

fn write_unit(w: &mut Writer<'_>, tag: u8, result: &Unit) {
    write_header(w, KIND_RESPONSE, tag);
    w.u16(result.err().map_or(0, MasterError::code));
}

fn read_unit(r: &mut Reader<'_>) -> Result<Unit, DecodeError> {
    read_result(r, |_| Ok(()))
}

fn write_unit_batch(w: &mut Writer<'_>, tag: u8, results: &[Unit]) -> Result<(), EncodeError> {
    write_header(w, KIND_RESPONSE, tag);
    write_batch(w, results, |w, r| {
        w.u16(r.err().map_or(0, MasterError::code));
        Ok(())
    })
}

fn write_batch<T>(
    w: &mut Writer<'_>,
    items: &[T],
    mut write_item: impl FnMut(&mut Writer<'_>, &T) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    w.count("batch", items.len(), MAX_BATCH)?;
    items.iter().try_for_each(|item| write_item(w, item))
}

/// Reads a batch whose items each take at least `min_item_len` bytes: the count is
/// checked against that before any space is reserved, so the reservation is bounded by
/// the input (`size_of::<T>() / min_item_len` times its size, at most 8).
fn read_batch<'a, T>(
    r: &mut Reader<'a>,
    min_item_len: usize,
    mut read_item: impl FnMut(&mut Reader<'a>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let n = r.count("batch", MAX_BATCH, min_item_len)?;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push(read_item(r)?);
    }
    Ok(items)
}

fn write_grant(w: &mut Writer<'_>, g: &PutGrant) -> Result<(), EncodeError> {
    w.u64(g.version.0);
    w.count("replicas", g.replicas.len(), MAX_REPLICAS)?;
    g.replicas.iter().for_each(|m| m.write_to(w));
    Ok(())
}

fn read_grant(r: &mut Reader<'_>) -> Result<PutGrant, DecodeError> {
    let version = ObjectVersion(r.u64("version")?);
    let n = r.count("replicas", MAX_REPLICAS, MemoryReplica::ENCODED_LEN)?;
    let mut replicas = SmallVec::with_capacity(n);
    for _ in 0..n {
        replicas.push(MemoryReplica::read_from(r)?);
    }
    Ok(PutGrant { version, replicas })
}

fn write_replica_list(w: &mut Writer<'_>, l: &ReplicaList) -> Result<(), EncodeError> {
    w.u64(l.version.0);
    w.u64(l.size);
    write_duration(w, l.lease);
    w.bool(l.crc32c.is_some());
    w.u32(l.crc32c.unwrap_or(0));
    w.count("replicas", l.replicas.len(), MAX_REPLICAS)?;
    l.replicas.iter().for_each(|d| d.write_to(w));
    Ok(())
}

fn read_replica_list(r: &mut Reader<'_>) -> Result<ReplicaList, DecodeError> {
    let version = ObjectVersion(r.u64("version")?);
    let size = r.u64("size")?;
    let lease = read_duration(r, "lease")?;
    let checksummed = r.bool("checksummed")?;
    let crc32c = r.u32("crc32c")?;
    if !checksummed && crc32c != 0 {
        return Err(DecodeError::InvalidValue { what: "crc32c of an unchecksummed value" });
    }
    let crc32c = checksummed.then_some(crc32c);
    let n = r.count("replicas", MAX_REPLICAS, ReplicaDescriptor::MIN_ENCODED_LEN)?;
    let mut replicas = SmallVec::with_capacity(n);
    for _ in 0..n {
        replicas.push(ReplicaDescriptor::read_from(r)?);
    }
    Ok(ReplicaList { version, size, lease, crc32c, replicas })
}
