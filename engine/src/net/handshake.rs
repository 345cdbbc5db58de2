//! The handshake that opens every connection, and its versioned binary form.
//!
//! The connecting side sends a [`Hello`] (protocol versions it speaks, the cluster it
//! belongs to, its role, node id and incarnation, and the address it serves data on);
//! the accepting side answers with a [`Welcome`] (the version chosen) or a
//! [`Refusal`] and closes. Whatever the Hello said is bound to the connection: the
//! accepting side refuses any later request that names another node.
//!
//! Each body starts with its own format byte ([`HANDSHAKE_FORMAT_VERSION`]); integers
//! are little-endian and fixed-width; decoding is strict (every length bounded, no
//! trailing bytes) and allocates nothing.

use core::net::SocketAddr;

use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::ids::{Incarnation, NodeId};
use crate::time::Duration;

/// The format byte that starts every handshake body.
pub const HANDSHAKE_FORMAT_VERSION: u8 = 1;

/// The protocol versions this build speaks (inclusive).
pub const PROTOCOL_VERSIONS: (u16, u16) = (1, 1);

/// The longest cluster name.
pub const MAX_CLUSTER_NAME: usize = 64;

/// A cluster's name: 1 to 64 bytes of printable ASCII (as Mooncake's `--cluster_id`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterName {
    len: u8,
    bytes: [u8; MAX_CLUSTER_NAME],
}

/// A cluster name that is empty, too long or not printable ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a cluster name is 1 to 64 printable ASCII characters")]
pub struct ClusterNameError;

impl ClusterName {
    /// Checks and copies `name`.
    pub fn new(name: &[u8]) -> Result<Self, ClusterNameError> {
        if name.is_empty() || name.len() > MAX_CLUSTER_NAME || !name.iter().all(|b| b.is_ascii_graphic()) {
            return Err(ClusterNameError);
        }
        let mut bytes = [0u8; MAX_CLUSTER_NAME];
        bytes[..name.len()].copy_from_slice(name);
        Ok(Self { len: name.len() as u8, bytes })
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The name (always ASCII).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl core::fmt::Debug for ClusterName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ClusterName({:?})", self.as_str())
    }
}

/// What the connecting side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// A node: contributes memory and/or SSD, serves them, takes node commands.
    Node,
    /// A pure client: puts and gets, contributes nothing.
    Client,
    /// Another node opening a data connection to read or write a segment range.
    Peer,
}

impl Role {
    const fn code(self) -> u8 {
        match self {
            Role::Node => 1,
            Role::Client => 2,
            Role::Peer => 3,
        }
    }

    fn from_code(code: u8) -> Result<Self, DecodeError> {
        match code {
            1 => Ok(Role::Node),
            2 => Ok(Role::Client),
            3 => Ok(Role::Peer),
            tag => Err(DecodeError::UnknownTag { what: "role", tag }),
        }
    }
}

/// The connecting side's first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The oldest protocol version it speaks.
    pub min_version: u16,
    /// The newest protocol version it speaks.
    pub max_version: u16,
    /// The cluster it belongs to.
    pub cluster: ClusterName,
    /// What it is.
    pub role: Role,
    /// Its node id (stable across its restarts).
    pub node: NodeId,
    /// This run of it.
    pub incarnation: Incarnation,
    /// Where it serves its segment and SSD to peers, if it does.
    pub serves: Option<SocketAddr>,
}

/// The accepting side's answer when it takes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// The protocol version both sides now speak.
    pub version: u16,
    /// The accepting process's run: a node that sees it change knows the master
    /// restarted and re-registers everything.
    pub incarnation: Incarnation,
    /// A node silent for this long is expired.
    pub node_ttl: Duration,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// No protocol version in common.
    VersionMismatch,
    /// The Hello names another cluster.
    WrongCluster,
    /// The node has a newer incarnation: this is a message from its earlier run.
    StaleIncarnation,
    /// The role is not one this side accepts.
    RoleNotAccepted,
    /// The peer broke the protocol (a second Hello, a request before the handshake, a
    /// bad frame).
    ProtocolViolation,
    /// A code this build does not know (sent by a newer peer).
    Unknown(u16),
}

impl RefusalReason {
    const fn code(self) -> u16 {
        match self {
            RefusalReason::VersionMismatch => 1,
            RefusalReason::WrongCluster => 2,
            RefusalReason::StaleIncarnation => 3,
            RefusalReason::RoleNotAccepted => 4,
            RefusalReason::ProtocolViolation => 5,
            RefusalReason::Unknown(code) => code,
        }
    }

    fn from_code(code: u16) -> Self {
        match code {
            1 => RefusalReason::VersionMismatch,
            2 => RefusalReason::WrongCluster,
            3 => RefusalReason::StaleIncarnation,
            4 => RefusalReason::RoleNotAccepted,
            5 => RefusalReason::ProtocolViolation,
            other => RefusalReason::Unknown(other),
        }
    }
}

/// The accepting side's answer when it refuses the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: RefusalReason,
    /// The protocol versions the refusing side speaks.
    pub versions: (u16, u16),
}

impl Hello {
    /// Bytes [`Hello::encode`] writes at most.
    pub const MAX_LEN: usize = 1 + 2 + 2 + 1 + 8 + 8 + 1 + MAX_CLUSTER_NAME + 1 + 16 + 2;

    /// Encodes into `buf`, returning the length written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u8(HANDSHAKE_FORMAT_VERSION);
        w.u16(self.min_version);
        w.u16(self.max_version);
        w.u8(self.role.code());
        w.u64(self.node.0);
        w.u64(self.incarnation.0);
        w.u8(self.cluster.len);
        w.bytes(self.cluster.as_bytes());
        w.socket_addr(self.serves);
        w.finish()
    }

    /// Decodes a whole Hello body.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        r.version("hello", HANDSHAKE_FORMAT_VERSION)?;
        let min_version = r.u16("min version")?;
        let max_version = r.u16("max version")?;
        if min_version > max_version || min_version == 0 {
            return Err(DecodeError::InvalidValue { what: "protocol version range" });
        }
        let role = Role::from_code(r.u8("role")?)?;
        let node = NodeId(r.u64("node")?);
        let incarnation = Incarnation(r.u64("incarnation")?);
        let len = usize::from(r.u8("cluster name length")?);
        let name = r.bytes(len, "cluster name")?;
        let cluster =
            ClusterName::new(name).map_err(|_| DecodeError::InvalidValue { what: "cluster name" })?;
        let serves = r.socket_addr()?;
        r.finish("hello")?;
        Ok(Self { min_version, max_version, cluster, role, node, incarnation, serves })
    }

    /// The newest version both this Hello and `ours` speak.
    pub fn common_version(&self, ours: (u16, u16)) -> Option<u16> {
        let low = self.min_version.max(ours.0);
        let high = self.max_version.min(ours.1);
        (low <= high).then_some(high)
    }
}

impl Welcome {
    /// Bytes [`Welcome::encode`] writes.
    pub const LEN: usize = 1 + 2 + 8 + 8;

    /// Encodes into `buf`, returning the length written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u8(HANDSHAKE_FORMAT_VERSION);
        w.u16(self.version);
        w.u64(self.incarnation.0);
        w.u64(self.node_ttl.as_nanos());
        w.finish()
    }

    /// Decodes a whole Welcome body.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        r.version("welcome", HANDSHAKE_FORMAT_VERSION)?;
        let version = r.u16("version")?;
        let incarnation = Incarnation(r.u64("incarnation")?);
        let node_ttl = Duration::from_nanos(r.u64("node ttl")?);
        r.finish("welcome")?;
        Ok(Self { version, incarnation, node_ttl })
    }
}

impl Refusal {
    /// Bytes [`Refusal::encode`] writes.
    pub const LEN: usize = 1 + 2 + 2 + 2;

    /// Encodes into `buf`, returning the length written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u8(HANDSHAKE_FORMAT_VERSION);
        w.u16(self.reason.code());
        w.u16(self.versions.0);
        w.u16(self.versions.1);
        w.finish()
    }

    /// Decodes a whole Refusal body. An unknown reason decodes as
    /// [`RefusalReason::Unknown`].
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        r.version("refusal", HANDSHAKE_FORMAT_VERSION)?;
        let reason = RefusalReason::from_code(r.u16("refusal reason")?);
        let versions = (r.u16("min version")?, r.u16("max version")?);
        r.finish("refusal")?;
        Ok(Self { reason, versions })
    }
}
