//! The endpoint handshake: what two nodes tell each other over their TCP control
//! connection before either posts an RDMA work request, its versioned binary form,
//! and the machine that runs it.
//!
//! Each side sends an [`EndpointInfo`] (its port's GID, LID and MTU, one QP number and
//! first PSN per QP, and the memory regions the peer may read or write with their
//! rkeys), brings its QPs up towards the peer's, then sends [`EndpointMessage::Ready`];
//! the endpoint is connected once both Readies have crossed (Mooncake's ready ACK:
//! neither side posts before the other's QPs are in RTS). The exchange is symmetric, so
//! it does not matter which side speaks first, or whether both speak at once.
//!
//! Two nodes that dial each other at the same moment get two control connections;
//! [`keeps_connection`] decides, the same way on both sides, which one survives.
//!
//! # Call order of [`EndpointHandshake`]
//!
//! 1. [`EndpointHandshake::new`] with this side's info and `now`.
//! 2. Send what [`EndpointHandshake::poll_transmit`] writes, as whole messages.
//! 3. Each message the peer sends goes to [`EndpointHandshake::handle_message`].
//! 4. Drain [`EndpointHandshake::poll_event`]: on [`EndpointEvent::BringUp`] connect
//!    this side's QPs to the peer's (see [`super::qp::QueuePair`]) and, once all are in
//!    RTS, call [`EndpointHandshake::handle_qps_ready`] (back to step 2);
//!    [`EndpointEvent::Connected`] allows posting; [`EndpointEvent::Failed`] ends it.
//! 5. Call [`EndpointHandshake::handle_timeout`] once
//!    [`EndpointHandshake::poll_timeout`] has passed.

use alloc::vec::Vec;

use super::qp::{Mtu, Psn, RemoteQp};
use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::ids::NodeId;
use crate::time::{Duration, Instant};

/// The format byte that starts every endpoint message.
pub const ENDPOINT_FORMAT_VERSION: u8 = 1;

/// The most QPs an endpoint has.
pub const MAX_QPS: usize = 16;

/// The most memory regions one side offers.
pub const MAX_REGIONS: usize = 64;

/// One of this side's QPs, as the peer needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpEndpoint {
    /// The QP number (24 bits).
    pub qpn: u32,
    /// The first PSN the QP sends.
    pub psn: Psn,
}

/// A memory region the peer may access: the virtual address range and its rkey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRegion {
    /// The first address.
    pub addr: u64,
    /// Its length (not zero).
    pub len: u64,
    /// The key the peer puts in its work requests.
    pub rkey: u32,
}

impl RemoteRegion {
    /// The address one past the end (never overflows for a decoded region).
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.len)
    }
}

/// What one side sends about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The sending node.
    pub node: NodeId,
    /// This endpoint's run: a peer that sends another nonce has rebuilt its QPs.
    pub nonce: u64,
    /// The port's GID.
    pub gid: [u8; 16],
    /// The port's LID (0 on RoCE).
    pub lid: u16,
    /// The port's active MTU.
    pub mtu: Mtu,
    /// One entry per QP, in the order both sides pair them (1 to [`MAX_QPS`]).
    pub qps: Vec<QpEndpoint>,
    /// The regions the peer may access (at most [`MAX_REGIONS`], sorted, disjoint).
    pub regions: Vec<RemoteRegion>,
}

impl EndpointInfo {
    /// What the decoder refuses: no QP or more than [`MAX_QPS`], a QP number of more
    /// than 24 bits, more than [`MAX_REGIONS`] regions, an empty or wrapping region, or
    /// regions not sorted and disjoint.
    fn check(&self) -> Result<(), EncodeError> {
        let invalid = |what| Err(EncodeError::Invalid { what });
        if self.qps.is_empty() {
            return invalid("qp count (at least 1)");
        }
        if self.qps.len() > MAX_QPS {
            return Err(EncodeError::TooLong {
                what: "qp count",
                len: self.qps.len() as u64,
                max: MAX_QPS as u64,
            });
        }
        if self.qps.iter().any(|qp| qp.qpn > Psn::MAX) {
            return invalid("qp number (24 bits)");
        }
        if self.regions.iter().any(|r| r.len == 0 || r.addr.checked_add(r.len).is_none()) {
            return invalid("region range");
        }
        if self.regions.windows(2).any(|pair| pair[0].end() > pair[1].addr) {
            return invalid("region order (sorted, disjoint)");
        }
        Ok(())
    }

    /// What the QP at `index` connects to on this side.
    pub fn remote_qp(&self, index: usize) -> Option<RemoteQp> {
        let qp = self.qps.get(index)?;
        Some(RemoteQp { qpn: qp.qpn, gid: self.gid, lid: self.lid, psn: qp.psn, mtu: self.mtu })
    }
}

/// A message of the endpoint handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointMessage {
    /// The sender's endpoint.
    Info(EndpointInfo),
    /// The sender's QPs are all in RTS (for the endpoint of that nonce).
    Ready {
        /// The nonce of the sender's Info.
        nonce: u64,
    },
}

const TAG_INFO: u8 = 1;
const TAG_READY: u8 = 2;

/// Bytes of one QP entry and one region entry.
const QP_ENTRY_LEN: usize = 8;
const REGION_ENTRY_LEN: usize = 20;

impl EndpointMessage {
    /// Bytes the longest message takes.
    pub const MAX_LEN: usize =
        2 + 8 + 8 + 16 + 2 + 1 + 4 + MAX_QPS * QP_ENTRY_LEN + 4 + MAX_REGIONS * REGION_ENTRY_LEN;

    /// Encodes into `buf`, returning the length written. Refuses what the decoder would
    /// refuse.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf);
        w.u8(ENDPOINT_FORMAT_VERSION);
        match self {
            EndpointMessage::Info(info) => {
                info.check()?;
                w.u8(TAG_INFO);
                w.u64(info.node.0);
                w.u64(info.nonce);
                w.bytes(&info.gid);
                w.u16(info.lid);
                w.u8(info.mtu.verbs_code());
                w.count("qp count", info.qps.len(), MAX_QPS)?;
                for qp in &info.qps {
                    w.u32(qp.qpn);
                    w.u32(qp.psn.get());
                }
                w.count("region count", info.regions.len(), MAX_REGIONS)?;
                for region in &info.regions {
                    w.u64(region.addr);
                    w.u64(region.len);
                    w.u32(region.rkey);
                }
            }
            EndpointMessage::Ready { nonce } => {
                w.u8(TAG_READY);
                w.u64(*nonce);
            }
        }
        w.finish()
    }

    /// Decodes one whole message: strict (every count bounded, QP numbers and PSNs of
    /// 24 bits, regions non-empty, sorted, disjoint and not wrapping, no trailing
    /// bytes).
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        r.version("endpoint message", ENDPOINT_FORMAT_VERSION)?;
        let message = match r.u8("endpoint message tag")? {
            TAG_INFO => EndpointMessage::Info(decode_info(&mut r)?),
            TAG_READY => EndpointMessage::Ready { nonce: r.u64("nonce")? },
            tag => return Err(DecodeError::UnknownTag { what: "endpoint message", tag }),
        };
        r.finish("endpoint message")?;
        Ok(message)
    }
}

fn decode_info(r: &mut Reader<'_>) -> Result<EndpointInfo, DecodeError> {
    let node = NodeId(r.u64("node")?);
    let nonce = r.u64("nonce")?;
    let mut gid = [0u8; 16];
    gid.copy_from_slice(r.bytes(16, "gid")?);
    let lid = r.u16("lid")?;
    let mtu = Mtu::from_verbs_code(r.u8("mtu")?).ok_or(DecodeError::InvalidValue { what: "mtu" })?;
    let qp_count = r.count("qp count", MAX_QPS, QP_ENTRY_LEN)?;
    if qp_count == 0 {
        return Err(DecodeError::InvalidValue { what: "qp count" });
    }
    let mut qps = Vec::with_capacity(qp_count);
    for _ in 0..qp_count {
        let qpn = r.u32("qp number")?;
        if qpn > Psn::MAX {
            return Err(DecodeError::InvalidValue { what: "qp number" });
        }
        let psn = Psn::new(r.u32("psn")?).ok_or(DecodeError::InvalidValue { what: "psn" })?;
        qps.push(QpEndpoint { qpn, psn });
    }
    let region_count = r.count("region count", MAX_REGIONS, REGION_ENTRY_LEN)?;
    let mut regions: Vec<RemoteRegion> = Vec::with_capacity(region_count);
    for _ in 0..region_count {
        let region = RemoteRegion {
            addr: r.u64("region address")?,
            len: r.u64("region length")?,
            rkey: r.u32("rkey")?,
        };
        if region.len == 0 || region.addr.checked_add(region.len).is_none() {
            return Err(DecodeError::InvalidValue { what: "region range" });
        }
        if regions.last().is_some_and(|prev| prev.end() > region.addr) {
            return Err(DecodeError::InvalidValue { what: "region order (sorted, disjoint)" });
        }
        regions.push(region);
    }
    Ok(EndpointInfo { node, nonce, gid, lid, mtu, qps, regions })
}

/// Which of two control connections between the same two nodes survives: the one
/// dialed by the node with the lower id. Both sides decide the same way, so exactly one
/// remains.
pub fn keeps_connection(local: NodeId, peer: NodeId, dialed_by_local: bool) -> bool {
    (local < peer) == dialed_by_local
}

/// Why an endpoint handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A message did not decode.
    #[error("bad endpoint message: {0}")]
    Decode(#[from] DecodeError),
    /// The peer has another number of QPs (both sides must pair them one to one).
    #[error("the peer has {peer} QPs, this side {local}")]
    QpCountMismatch {
        /// This side's count.
        local: usize,
        /// The peer's count.
        peer: usize,
    },
    /// The Info came from another node than the connection's.
    #[error("the endpoint info names node {0:?}, not the connection's")]
    WrongNode(NodeId),
    /// A Ready before any Info, or for another nonce than the peer's Info.
    #[error("the peer said Ready out of turn")]
    UnexpectedReady,
    /// The peer sent a second Info with another nonce: it rebuilt its QPs, so this
    /// endpoint must be rebuilt too.
    #[error("the peer restarted its endpoint")]
    PeerRestarted,
    /// The ready round did not finish in time.
    #[error("the endpoint handshake timed out")]
    TimedOut,
}

/// What the handshake asks of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointEvent {
    /// Connect this side's QP `i` to `peer.remote_qp(i)` for every `i`, then call
    /// [`EndpointHandshake::handle_qps_ready`].
    BringUp {
        /// What the peer sent.
        peer: EndpointInfo,
    },
    /// Both sides' QPs are in RTS: work requests may be posted.
    Connected,
    /// The handshake is over without a connection (or, with
    /// [`HandshakeError::PeerRestarted`], a connection is over: rebuild the endpoint).
    Failed(HandshakeError),
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakePhase {
    /// Waiting for the peer's Info.
    AwaitingInfo,
    /// The peer's Info is in: this side's QPs are being brought up.
    BringingUp,
    /// This side's Ready is sent: waiting for the peer's.
    AwaitingReady,
    /// Connected.
    Connected,
    /// Failed.
    Failed,
}

/// One endpoint handshake over a control connection.
#[derive(Debug)]
pub struct EndpointHandshake {
    local: EndpointInfo,
    expected_peer: NodeId,
    phase: HandshakePhase,
    peer: Option<EndpointInfo>,
    peer_ready: bool,
    info_sent: bool,
    ready_queued: bool,
    events: Vec<EndpointEvent>,
    deadline: Instant,
}

impl EndpointHandshake {
    /// Mooncake's bound on the ready round.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Starts the handshake of `local` with `expected_peer` (the node the control
    /// connection's handshake bound); it must finish within `timeout` of `now`.
    pub fn new(local: EndpointInfo, expected_peer: NodeId, now: Instant, timeout: Duration) -> Self {
        Self {
            local,
            expected_peer,
            phase: HandshakePhase::AwaitingInfo,
            peer: None,
            peer_ready: false,
            info_sent: false,
            ready_queued: false,
            events: Vec::new(),
            deadline: now + timeout,
        }
    }

    /// Where the handshake is.
    pub fn phase(&self) -> HandshakePhase {
        self.phase
    }

    /// The peer's info, once received.
    pub fn peer(&self) -> Option<&EndpointInfo> {
        self.peer.as_ref()
    }

    /// Writes the next message to send into `buf` (at least
    /// [`EndpointMessage::MAX_LEN`] bytes), returning its length.
    #[must_use = "the message must be sent"]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Result<usize, EncodeError>> {
        if self.phase == HandshakePhase::Failed {
            return None;
        }
        if !self.info_sent {
            self.info_sent = true;
            return Some(EndpointMessage::Info(self.local.clone()).encode(buf));
        }
        if self.ready_queued {
            self.ready_queued = false;
            return Some(EndpointMessage::Ready { nonce: self.local.nonce }.encode(buf));
        }
        None
    }

    /// One message from the peer.
    pub fn handle_message(&mut self, bytes: &[u8]) {
        if self.phase == HandshakePhase::Failed {
            return;
        }
        if self.phase == HandshakePhase::Connected {
            // Connected: only a restart of the peer's endpoint matters (its QPs are
            // new, so these are dead); anything else is a late duplicate.
            if let Ok(EndpointMessage::Info(info)) = EndpointMessage::decode(bytes) {
                if self.peer.as_ref().is_some_and(|p| p.nonce != info.nonce) {
                    self.fail(HandshakeError::PeerRestarted);
                }
            }
            return;
        }
        match EndpointMessage::decode(bytes) {
            Err(e) => self.fail(HandshakeError::Decode(e)),
            Ok(EndpointMessage::Info(info)) => self.handle_info(info),
            Ok(EndpointMessage::Ready { nonce }) => {
                if self.peer.as_ref().is_none_or(|p| p.nonce != nonce) || self.peer_ready {
                    return self.fail(HandshakeError::UnexpectedReady);
                }
                self.peer_ready = true;
                self.check_connected();
            }
        }
    }

    fn handle_info(&mut self, info: EndpointInfo) {
        if let Some(peer) = &self.peer {
            let error = if peer.nonce == info.nonce {
                HandshakeError::UnexpectedReady
            } else {
                HandshakeError::PeerRestarted
            };
            return self.fail(error);
        }
        if info.node != self.expected_peer {
            return self.fail(HandshakeError::WrongNode(info.node));
        }
        if info.qps.len() != self.local.qps.len() {
            return self
                .fail(HandshakeError::QpCountMismatch { local: self.local.qps.len(), peer: info.qps.len() });
        }
        self.peer = Some(info.clone());
        self.phase = HandshakePhase::BringingUp;
        self.events.push(EndpointEvent::BringUp { peer: info });
    }

    /// Every QP of this side is in RTS towards the peer's.
    pub fn handle_qps_ready(&mut self) {
        if self.phase == HandshakePhase::BringingUp {
            self.phase = HandshakePhase::AwaitingReady;
            self.ready_queued = true;
            self.check_connected();
        }
    }

    fn check_connected(&mut self) {
        if self.phase == HandshakePhase::AwaitingReady && self.peer_ready {
            self.phase = HandshakePhase::Connected;
            self.events.push(EndpointEvent::Connected);
        }
    }

    fn fail(&mut self, error: HandshakeError) {
        self.phase = HandshakePhase::Failed;
        self.ready_queued = false;
        self.events.push(EndpointEvent::Failed(error));
    }

    /// The next thing to do.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }

    /// When [`EndpointHandshake::handle_timeout`] is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!matches!(self.phase, HandshakePhase::Connected | HandshakePhase::Failed)).then_some(self.deadline)
    }

    /// Time has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|deadline| now >= deadline) {
            self.fail(HandshakeError::TimedOut);
        }
    }
}
