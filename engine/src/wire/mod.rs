//! Messages between nodes and the master, and their versioned binary form.
//!
//! Three kinds of message exist: [`Request`]s (node → master), [`Response`]s (master →
//! node, one per request, same tag) and [`NodeCommand`]s (master → node, unsolicited:
//! persist this, drop that). Each encoded message starts with
//! `[WIRE_FORMAT_VERSION, kind, tag]` followed by the body; all integers are
//! little-endian and fixed-width, so every message has exactly one encoding.
//!
//! Decoding is strict: every length and count is bounded and checked against the bytes
//! left before it is used, unknown versions and tags are precise errors, trailing bytes
//! are an error, and the decoder never allocates more than
//! [`MAX_DECODE_ALLOCATION_PER_BYTE`] bytes per input byte: lists are pre-sized only
//! after their count has been checked against the input. Requests borrow their keys
//! from the input, so the master decodes without copying.
//!
//! Framing (length prefixes, request ids) belongs to the transport, not to this module.

mod command;
mod error;
mod request;
mod response;

pub use command::{NodeCommand, PersistReason};
pub use error::MasterError;
pub use request::Request;
pub use response::Response;

use crate::key::KeyRef;

use smallvec::SmallVec;

use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::descriptor::{MemoryReplica, ReplicaDescriptor};
use crate::ids::ObjectVersion;
use crate::time::Duration;

/// The version byte that starts every encoded message.
pub const WIRE_FORMAT_VERSION: u8 = 1;

/// The most entries one batch message may carry.
pub const MAX_BATCH: usize = 65_536;

/// The most memory a decode allocates, per byte of input. The worst case is a batch
/// response: its items are reserved up front at 16 bytes each against their 2-byte
/// minimum (8 per byte), and each item that decodes to a replica list adds a box of
/// at most 4.3 times its encoded size (a 128-byte list from 30 bytes).
pub const MAX_DECODE_ALLOCATION_PER_BYTE: usize = 16;

/// The most replicas one object may have in a message.
pub const MAX_REPLICAS: usize = 16;

const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_COMMAND: u8 = 3;

/// What the master hands a writer on a successful put start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutGrant {
    /// The new object's version; name it in put end / revoke.
    pub version: ObjectVersion,
    /// Where to copy the value (all of them, then end the put).
    pub replicas: SmallVec<[MemoryReplica; 1]>,
}

/// A replica a node's segment still holds from an earlier run of the master, named to
/// the new run ([`Request::RestoreReplicas`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoredReplica<'a> {
    /// The object's key.
    pub key: KeyRef<'a>,
    /// Its version (granted by the earlier run).
    pub version: ObjectVersion,
    /// Where the value starts in the segment.
    pub offset: u64,
    /// Its length (never zero).
    pub len: u64,
    /// The writer's CRC32C of it.
    pub crc32c: u32,
}

/// What a reader gets for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaList {
    /// The object version these replicas hold.
    pub version: ObjectVersion,
    /// The value's size in bytes.
    pub size: u64,
    /// How long the read lease lasts from when the master answered: the replicas will
    /// not be evicted or (unless forced) removed before then.
    pub lease: Duration,
    /// The writer's CRC32C of the value, which every replica holds: a reader checks the
    /// bytes it got against it. `None` only for an object put by the embedded store,
    /// whose readers share the writer's own buffer (its disk replicas carry their
    /// CRC32C in their descriptors all the same).
    pub crc32c: Option<u32>,
    /// Readable replicas, memory replicas first.
    pub replicas: SmallVec<[ReplicaDescriptor; 2]>,
}

/// Where a segment lives: the node that mounted it, and the address it serves its
/// segments on (filled in by the server, which knows it from the node's handshake; the
/// master state machine knows only the owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The owning node.
    pub node: crate::ids::NodeId,
    /// Where it serves data, if it serves it.
    pub serves: Option<core::net::SocketAddr>,
}

/// Where a flush stands (the master's [`crate::master::Master::flush_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushStatus {
    /// Every object acknowledged before the flush has a disk record, or was removed.
    Durable,
    /// Some of them are still being persisted.
    Pending,
    /// This many of them are not durable: their persist failed, and was asked for
    /// again when the flush began and failed again (or no node can persist them). They
    /// stay in memory and are retried.
    NotDurable {
        /// How many.
        objects: u64,
    },
}

/// What a remove-all did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemoveAllSummary {
    /// Objects removed.
    pub removed: u64,
    /// Objects kept because they were leased (without force) or still being written.
    pub skipped: u64,
}

/// How the master took a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    /// A known node, same incarnation: its lease on life is renewed.
    Refreshed,
    /// A node the master did not know (first contact, or after it expired): it must
    /// mount its segments and re-register its disk replicas.
    Registered,
    /// A known node with a new incarnation: what the old run contributed (segments,
    /// disk replicas, unfinished puts) has been dropped; mount and re-register.
    Restarted,
}

/// The master's answer to a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingReply {
    /// What the ping did.
    pub outcome: PingOutcome,
    /// Ping at least this often or be dropped.
    pub node_ttl: Duration,
}

/// Why a node registers a disk replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskReplicaOrigin {
    /// It persisted the version because the master asked (write-behind or offload).
    Persisted,
    /// It found the record while recovering its directory after a restart. The master
    /// accepts it for a key it does not know, unless it told the node to drop that
    /// record before (a pending drop or a wipe).
    Recovered,
}

impl DiskReplicaOrigin {
    fn write_to(self, w: &mut Writer<'_>) {
        w.u8(match self {
            DiskReplicaOrigin::Persisted => 1,
            DiskReplicaOrigin::Recovered => 2,
        });
    }

    fn read_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("disk replica origin")? {
            1 => Ok(DiskReplicaOrigin::Persisted),
            2 => Ok(DiskReplicaOrigin::Recovered),
            tag => Err(DecodeError::UnknownTag { what: "disk replica origin", tag }),
        }
    }
}

/// Any message, as told apart by its kind byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// Node → master.
    Request(Request<'a>),
    /// Master → node, answering a request.
    Response(Response),
    /// Master → node, unsolicited.
    Command(NodeCommand),
}

impl<'a> Message<'a> {
    /// Decodes any message; the whole of `buf` must be exactly one.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        r.version("message", WIRE_FORMAT_VERSION)?;
        match r.u8("message kind")? {
            KIND_REQUEST => Request::decode(buf).map(Message::Request),
            KIND_RESPONSE => Response::decode(buf).map(Message::Response),
            KIND_COMMAND => NodeCommand::decode(buf).map(Message::Command),
            tag => Err(DecodeError::UnknownTag { what: "message kind", tag }),
        }
    }

    /// Encodes the message into `buf`, returning the length written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        self.write_to(&mut w)?;
        w.finish()
    }

    /// The exact length [`Message::encode`] needs.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        measure(|w| self.write_to(w))
    }

    fn write_to(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Message::Request(m) => m.write_to(w),
            Message::Response(m) => m.write_to(w),
            Message::Command(m) => {
                m.write_to(w);
                Ok(())
            }
        }
    }
}

/// The length an encoding needs, found by writing it into an empty buffer.
fn measure(write: impl FnOnce(&mut Writer<'_>) -> Result<(), EncodeError>) -> Result<usize, EncodeError> {
    let mut w = Writer::new(&mut []);
    write(&mut w)?;
    match w.finish() {
        Ok(n) | Err(EncodeError::BufferTooSmall { needed: n, .. }) => Ok(n),
        Err(e) => Err(e),
    }
}

/// Reads the `[version, kind, tag]` header, checking version and kind.
fn read_header(r: &mut Reader<'_>, kind: u8, what: &'static str) -> Result<u8, DecodeError> {
    r.version("message", WIRE_FORMAT_VERSION)?;
    let found = r.u8("message kind")?;
    if found != kind {
        return Err(DecodeError::UnknownTag { what, tag: found });
    }
    r.u8("message tag")
}

fn write_header(w: &mut Writer<'_>, kind: u8, tag: u8) {
    w.u8(WIRE_FORMAT_VERSION);
    w.u8(kind);
    w.u8(tag);
}

fn write_duration(w: &mut Writer<'_>, d: Duration) {
    w.u64(d.as_nanos());
}

fn read_duration(r: &mut Reader<'_>, what: &'static str) -> Result<Duration, DecodeError> {
    Ok(Duration::from_nanos(r.u64(what)?))
}

#[cfg(test)]
mod tests;
