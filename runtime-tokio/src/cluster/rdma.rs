//! Replica bytes over RDMA between the cluster's processes, with TCP as the fallback.
//!
//! Transport selection: a client that has an RDMA port offers an endpoint to a node
//! the first time it transfers to it ([`DataRequest::Endpoint`] on the data
//! connection, the engine's [`EndpointHandshake`] with its ready round). A node that
//! has a port answers with its own endpoint; one that has none (or an older build)
//! refuses, and the client moves that node's bytes over TCP from then on. So two sides
//! that both have a device use RDMA, anything else TCP.
//!
//! The node moves the bytes, so that it keeps every check it makes on TCP: for a put it
//! reads the value from the writer's registered staging memory (RDMA READ) into its own
//! staging buffer and takes it exactly as a TCP write (fence, epoch, CRC32C); for a get
//! it checks the range as for a TCP read, then writes the bytes into the reader's
//! staging memory (RDMA WRITE), and the reader checks their CRC32C. A writer therefore
//! never writes into a segment one-sidedly, and a stale writer stays fenced.
//!
//! A transfer is run by the engine's [`WrMachine`] over the endpoint's QPs; the node
//! answers only once the machine reports it done, when the device touches neither
//! side's staging any more. A failed QP is drained and left down; when none is left, or
//! a transfer stalls, the node resets the endpoint's QPs (the device drops what it
//! holds of them), refuses with [`DataError::RdmaUnavailable`], and the client hands
//! the transfer to TCP and sets up a new endpoint for the next one.
//!
//! The device here is the engine's simulated NIC ([`SimFabric`], shared by every
//! participant in one process): it stands in for the hardware in tests and benchmarks.
//! The runtime does not drive a verbs device yet (`larder_engine::rdma::verbs` is the
//! driver to plug in at this seam), so `larder node` processes move bytes over TCP and
//! say so once at start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use larder_engine::net::data::{DataError, DataRequest, DataResponse, EndpointMessages};
use larder_engine::rdma::endpoint::{
    EndpointEvent, EndpointHandshake, EndpointInfo, EndpointMessage, HandshakePhase, QpEndpoint,
};
use larder_engine::rdma::mr::{MemoryRegion, MemoryRegions};
use larder_engine::rdma::qp::{Access, Mtu, Psn, QpConfig, QueuePair};
use larder_engine::rdma::sim::{CqId, Faults, HostId, NicStats, SimNic};
use larder_engine::rdma::transfer::{
    Opcode, TransferError, TransferId, WorkRequest, WrConfig, WrEvent, WrMachine,
};
use larder_engine::{Duration, Instant, NodeId};

/// Device steps a node runs per transfer before it gives up on the device (the
/// simulated device always finishes far sooner; a stall is a fault to survive).
const MAX_DRIVE_ROUNDS: usize = 1_000_000;

/// A simulated RDMA fabric: one simulated NIC that every participant in this process
/// (nodes and clients) attaches a port to, as hosts on one switch. For tests and
/// benchmarks; cloning shares it.
#[derive(Debug, Clone)]
pub struct SimFabric {
    nic: Arc<Mutex<SimNic>>,
    staging_bytes: usize,
}

impl SimFabric {
    /// A fabric whose device makes its choices from `seed`; each port registers
    /// `staging_bytes` of staging memory (the largest value it moves over RDMA).
    pub fn new(seed: u64, staging_bytes: usize) -> Self {
        Self { nic: Arc::new(Mutex::new(SimNic::new(seed, Faults::default()))), staging_bytes }
    }

    /// Changes the device's fault rates from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().set_faults(faults);
    }

    /// What the device did so far.
    pub fn stats(&self) -> NicStats {
        self.lock().stats()
    }

    fn lock(&self) -> MutexGuard<'_, SimNic> {
        self.nic.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One participant's attachment to the fabric: its host and its registered staging
/// memory.
#[derive(Debug)]
struct Port {
    fabric: SimFabric,
    host: HostId,
    staging: MemoryRegion,
}

impl Port {
    fn open(fabric: &SimFabric) -> Self {
        let mut nic = fabric.lock();
        let host = nic.add_host();
        let rights = Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE;
        let staging = nic.register(host, fabric.staging_bytes, rights);
        drop(nic);
        Self { fabric: fabric.clone(), host, staging }
    }

    /// `count` new QPs on this host, in RESET, completing into `cq`.
    fn create_qps(&self, nic: &mut SimNic, cq: CqId, count: usize) -> Vec<(u32, QueuePair)> {
        let max_send_wr = WrConfig::default().normalized().max_send_wr as usize;
        (0..count)
            .map(|_| (nic.create_qp(self.host, cq, max_send_wr), QueuePair::new(QpConfig::default())))
            .collect()
    }
}

/// What one side announces: its QPs with fresh PSNs, and the regions it offers.
fn endpoint_info(
    node: NodeId,
    qps: &[(u32, QueuePair)],
    regions: Vec<MemoryRegion>,
) -> (EndpointInfo, Vec<Psn>) {
    let psns: Vec<Psn> = qps.iter().map(|_| Psn::truncate(rand::random::<u32>())).collect();
    let info = EndpointInfo {
        node,
        nonce: rand::random::<u64>(),
        gid: gid_of(node),
        lid: 0,
        mtu: Mtu::Mtu4096,
        qps: qps.iter().zip(&psns).map(|((qpn, _), psn)| QpEndpoint { qpn: *qpn, psn: *psn }).collect(),
        regions: regions.iter().map(MemoryRegion::remote).collect(),
    };
    (info, psns)
}

/// The simulated port's GID: the node's id (the device does not route by it).
fn gid_of(node: NodeId) -> [u8; 16] {
    let mut gid = [0u8; 16];
    gid[8..].copy_from_slice(&node.0.to_be_bytes());
    gid
}

/// Connects every QP to the peer's of the same index, executing the QP machines'
/// modifies on the device; false if the peer's info does not fit or a modify fails.
fn bring_up(nic: &mut SimNic, qps: &mut [(u32, QueuePair)], psns: &[Psn], peer: &EndpointInfo) -> bool {
    qps.iter_mut().zip(psns).enumerate().all(|(i, ((qpn, qp), psn))| {
        peer.remote_qp(i).is_some_and(|remote| qp.connect(remote, *psn).is_ok())
            && execute_modifies(nic, *qpn, qp)
    })
}

/// Executes every modify the QP machine plans; false if one fails.
fn execute_modifies(nic: &mut SimNic, qpn: u32, qp: &mut QueuePair) -> bool {
    while let Some(request) = qp.poll_modify() {
        let result = nic.modify_qp(qpn, &request);
        if qp.handle_modify_result(result).is_err() {
            return false;
        }
    }
    true
}

/// Feeds `messages` to `hs`, brings the QPs up when the peer's info arrives, and
/// gives what `hs` has to send; `Err` if the handshake failed.
fn step_handshake(
    nic: &mut SimNic,
    hs: &mut EndpointHandshake,
    qps: &mut [(u32, QueuePair)],
    psns: &[Psn],
    messages: EndpointMessages<'_>,
) -> Result<(Vec<u8>, bool), ()> {
    for message in messages.iter() {
        hs.handle_message(message);
    }
    let mut connected = false;
    while let Some(event) = hs.poll_event() {
        match event {
            EndpointEvent::BringUp { peer } => {
                if !bring_up(nic, qps, psns, &peer) {
                    return Err(());
                }
                hs.handle_qps_ready();
            }
            EndpointEvent::Connected => connected = true,
            EndpointEvent::Failed(e) => {
                tracing::debug!("RDMA endpoint handshake: {e}");
                return Err(());
            }
        }
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; EndpointMessage::MAX_LEN];
    while let Some(encoded) = hs.poll_transmit(&mut buf) {
        let len = encoded.map_err(|_| ())?;
        EndpointMessages::push(&mut out, &buf[..len]);
    }
    Ok((out, connected))
}

/// The endpoint handshake's own deadline. Each of its two rounds is one request on
/// the data connection, whose timeout bounds it first, so this is never reached here.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------
// The client side: offers endpoints, stages values, lets the node move the bytes.

/// A client's RDMA port: its staging memory, carved into one slot per transfer in
/// flight, and the endpoints it set up with nodes.
#[derive(Debug)]
pub(crate) struct ClientRdma {
    port: Port,
    node: NodeId,
    /// Staging ranges in use, `(offset, len)`, sorted by offset.
    slots: Mutex<Vec<(u64, u64)>>,
    endpoints: Mutex<HashMap<SocketAddr, ClientEndpoint>>,
    /// The generation the next connected endpoint gets.
    next_generation: std::sync::atomic::AtomicU64,
    /// One lock per node, held through a handshake with it, so that two transfers to
    /// a new node set up one endpoint, not two that replace each other (handshakes
    /// with other nodes go on meanwhile).
    handshaking: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

/// Where a client stands with one node.
#[derive(Debug)]
enum ClientEndpoint {
    /// Connected: its QPs stay for the life of the endpoint (the node posts to them).
    Connected {
        /// Which endpoint with this node it is: a failure seen on an earlier one must
        /// not forget it.
        generation: u64,
        _qps: Vec<(u32, QueuePair)>,
    },
    /// The node offers no RDMA: TCP until its connection fails.
    NotOffered,
}

/// How a client's transfers with one node go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Over RDMA, on the endpoint of this generation.
    Rdma {
        /// The endpoint's generation.
        generation: u64,
    },
    /// Over TCP.
    Tcp,
}

/// A range of the client's staging memory, held for one transfer.
#[derive(Debug)]
pub(crate) struct Slot {
    offset: u64,
    len: u64,
}

/// A handshake the client is in the middle of.
pub(crate) struct PendingEndpoint {
    hs: EndpointHandshake,
    qps: Vec<(u32, QueuePair)>,
    psns: Vec<Psn>,
}

impl ClientRdma {
    pub(crate) fn new(fabric: &SimFabric, node: NodeId) -> Self {
        Self {
            port: Port::open(fabric),
            node,
            slots: Mutex::default(),
            endpoints: Mutex::default(),
            next_generation: std::sync::atomic::AtomicU64::new(1),
            handshaking: Mutex::default(),
        }
    }

    /// The lock to hold through a handshake with the node at `addr`.
    pub(crate) fn handshake_lock(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.handshaking.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(locks.entry(addr).or_default())
    }

    fn endpoints(&self) -> MutexGuard<'_, HashMap<SocketAddr, ClientEndpoint>> {
        self.endpoints.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How transfers with the node at `addr` go; `None`: not settled yet (hand shake
    /// first).
    pub(crate) fn transport(&self, addr: SocketAddr) -> Option<Transport> {
        self.endpoints().get(&addr).map(|e| match e {
            ClientEndpoint::Connected { generation, .. } => Transport::Rdma { generation: *generation },
            ClientEndpoint::NotOffered => Transport::Tcp,
        })
    }

    /// Starts a handshake with `node`: the first body to send, and the handshake to
    /// hand its answer to ([`ClientRdma::handle_answer`]). `None`: TCP (noted for
    /// `addr`).
    pub(crate) fn begin(&self, addr: SocketAddr, node: NodeId) -> Option<(Vec<u8>, PendingEndpoint)> {
        let mut nic = self.port.fabric.lock();
        // The client's QPs are only ever the target of the node's requests: their CQ
        // receives nothing.
        let cq = nic.create_cq(2 * WrConfig::default().qps);
        let mut qps = self.port.create_qps(&mut nic, cq, WrConfig::default().qps);
        let (info, psns) = endpoint_info(self.node, &qps, vec![self.port.staging]);
        let mut hs = EndpointHandshake::new(info, node, Instant::ZERO, HANDSHAKE_TIMEOUT);
        let stepped = step_handshake(&mut nic, &mut hs, &mut qps, &psns, EndpointMessages::EMPTY);
        drop(nic);
        match stepped {
            Ok((messages, _)) => Some((endpoint_body(&messages), PendingEndpoint { hs, qps, psns })),
            Err(()) => {
                self.settle(addr, ClientEndpoint::NotOffered);
                None
            }
        }
    }

    /// The node's answer to an endpoint request (`None`: no answer came): the next
    /// body to send, or `None` when the handshake is over (connected, or TCP).
    pub(crate) fn handle_answer(
        &self,
        addr: SocketAddr,
        pending: &mut PendingEndpoint,
        answer: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        let messages = match answer.map(DataResponse::decode) {
            Some(Ok(DataResponse::Endpoint { messages })) => messages,
            // No RDMA there, an older node, or the connection failed: TCP.
            _ => {
                self.settle(addr, ClientEndpoint::NotOffered);
                return None;
            }
        };
        let stepped = {
            let mut nic = self.port.fabric.lock();
            step_handshake(&mut nic, &mut pending.hs, &mut pending.qps, &pending.psns, messages)
        };
        match stepped {
            Ok((out, _)) if !out.is_empty() => Some(endpoint_body(&out)),
            // The node's empty answer to this side's Ready: both sides are connected.
            Ok(_) if pending.hs.phase() == HandshakePhase::Connected => {
                let qps = std::mem::take(&mut pending.qps);
                let generation = self.next_generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.settle(addr, ClientEndpoint::Connected { generation, _qps: qps });
                None
            }
            _ => {
                self.settle(addr, ClientEndpoint::NotOffered);
                None
            }
        }
    }

    fn settle(&self, addr: SocketAddr, endpoint: ClientEndpoint) {
        if matches!(endpoint, ClientEndpoint::NotOffered) {
            tracing::info!("the node at {addr} offers no RDMA endpoint: its transfers use TCP");
        }
        self.endpoints().insert(addr, endpoint);
    }

    /// The connection to `addr` failed (the node may be another run now): the next
    /// transfer hands shake again.
    pub(crate) fn forget(&self, addr: SocketAddr) {
        self.endpoints().remove(&addr);
    }

    /// A transfer on endpoint `generation` with `addr` failed: the next transfer hands
    /// shake again, unless a newer endpoint took its place meanwhile.
    pub(crate) fn forget_endpoint(&self, addr: SocketAddr, generation: u64) {
        let mut endpoints = self.endpoints();
        if matches!(endpoints.get(&addr), Some(ClientEndpoint::Connected { generation: g, .. }) if *g == generation)
        {
            endpoints.remove(&addr);
        }
    }

    /// A staging slot of `len` bytes, if there is room.
    pub(crate) fn take_slot(&self, len: u64) -> Option<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut start = 0;
        let mut at = slots.len();
        for (i, (offset, used)) in slots.iter().enumerate() {
            if offset - start >= len {
                at = i;
                break;
            }
            start = offset + used;
        }
        if at == slots.len() && self.port.staging.len - start < len {
            return None;
        }
        slots.insert(at, (start, len));
        Some(Slot { offset: start, len })
    }

    /// The slot is free again: call it only once the node answered the transfer that
    /// used it (the node answers after the device let go of both sides' memory). A
    /// slot whose transfer got no answer is never released: on doubt, it leaks.
    pub(crate) fn release(&self, slot: Slot) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.retain(|s| *s != (slot.offset, slot.len));
    }

    /// The slot's address, as the node names it.
    pub(crate) fn address(&self, slot: &Slot) -> u64 {
        self.port.staging.addr + slot.offset
    }

    /// Copies `value` into the slot (the simulated device owns the registered bytes;
    /// on hardware the value's own buffer would be registered instead).
    pub(crate) fn fill(&self, slot: &Slot, value: &[u8]) {
        let mut nic = self.port.fabric.lock();
        let staging = nic.region_bytes_mut(self.port.staging.addr).expect("the port's staging is registered");
        staging[range(slot)].copy_from_slice(value);
    }

    /// A copy of the slot's bytes.
    pub(crate) fn contents(&self, slot: &Slot) -> Vec<u8> {
        let nic = self.port.fabric.lock();
        nic.region_bytes(self.port.staging.addr).expect("the port's staging is registered")[range(slot)]
            .to_vec()
    }
}

fn range(slot: &Slot) -> std::ops::Range<usize> {
    let start = usize::try_from(slot.offset).expect("inside the staging");
    start..start + usize::try_from(slot.len).expect("inside the staging")
}

fn endpoint_body(messages: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let messages = EndpointMessages::new(messages).expect("built by push");
    DataRequest::Endpoint { messages }.encode(&mut body);
    body
}

// ---------------------------------------------------------------------------------
// The node side: answers endpoint offers and runs the transfers.

/// A node's RDMA port and its endpoints, one per peer run. Transfers run one at a time
/// through the node's one staging buffer.
#[derive(Debug)]
pub(crate) struct NodeRdma {
    port: Port,
    node: NodeId,
    endpoints: HashMap<(NodeId, u64), NodeEndpoint>,
    /// The device was seen touching the staging after a transfer ended: it is never
    /// used again (nor is RDMA).
    poisoned: bool,
    /// Rounds of device work a transfer gets before it counts as stalled.
    max_drive_rounds: usize,
}

/// One peer's endpoint on the node.
#[derive(Debug)]
struct NodeEndpoint {
    hs: EndpointHandshake,
    qps: Vec<(u32, QueuePair)>,
    psns: Vec<Psn>,
    cq: CqId,
    /// Set once connected.
    machine: Option<WrMachine>,
    /// QPs the machine gave up on.
    failed: Vec<bool>,
}

impl NodeRdma {
    pub(crate) fn new(fabric: &SimFabric, node: NodeId) -> Self {
        Self {
            port: Port::open(fabric),
            node,
            endpoints: HashMap::new(),
            poisoned: false,
            max_drive_rounds: MAX_DRIVE_ROUNDS,
        }
    }

    /// Switches RDMA off for good (the device may still hold the staging).
    pub(crate) fn switch_off(&mut self) {
        self.poisoned = true;
    }

    /// Answers a peer's endpoint messages (`peer`: the node and incarnation its
    /// connection's handshake bound).
    pub(crate) fn answer_endpoint(
        &mut self,
        peer: (NodeId, u64),
        messages: EndpointMessages<'_>,
        out: &mut Vec<u8>,
    ) {
        if self.poisoned {
            return DataResponse::Refused(DataError::RdmaUnavailable).encode(out);
        }
        let fabric = self.port.fabric.clone();
        let mut nic = fabric.lock();
        let opens = messages
            .iter()
            .next()
            .is_some_and(|m| matches!(EndpointMessage::decode(m), Ok(EndpointMessage::Info(_))));
        if opens {
            // A new endpoint from this peer (its first, or after a failure): the old
            // one's QPs are idle (transfers run to their end before the answer) and go.
            if let Some(mut old) = self.endpoints.remove(&peer) {
                old.reset(&mut nic);
            }
            let cq_capacity = WrConfig::default().normalized().cq_capacity as usize;
            let cq = nic.create_cq(cq_capacity);
            let qps = self.port.create_qps(&mut nic, cq, WrConfig::default().qps);
            let (info, psns) = endpoint_info(self.node, &qps, Vec::new());
            let hs = EndpointHandshake::new(info, peer.0, Instant::ZERO, HANDSHAKE_TIMEOUT);
            let failed = vec![false; qps.len()];
            self.endpoints.insert(peer, NodeEndpoint { hs, qps, psns, cq, machine: None, failed });
        }
        let Some(endpoint) = self.endpoints.get_mut(&peer) else {
            return DataResponse::Refused(DataError::RdmaUnavailable).encode(out);
        };
        match step_handshake(&mut nic, &mut endpoint.hs, &mut endpoint.qps, &endpoint.psns, messages) {
            Ok((messages, connected)) => {
                if connected {
                    let mut local = MemoryRegions::new();
                    local.register(self.port.staging).expect("one region");
                    let remote = endpoint.hs.peer().map(|p| p.regions.clone()).unwrap_or_default();
                    endpoint.machine = Some(WrMachine::new(WrConfig::default(), local, remote));
                }
                let messages = EndpointMessages::new(&messages).expect("built by push");
                DataResponse::Endpoint { messages }.encode(out);
            }
            Err(()) => {
                if let Some(mut endpoint) = self.endpoints.remove(&peer) {
                    endpoint.reset(&mut nic);
                }
                DataResponse::Refused(DataError::RdmaUnavailable).encode(out);
            }
        }
    }

    /// Reads `len` bytes from the peer's memory at `source`; gives them once the
    /// device let go of the staging.
    pub(crate) fn pull(&mut self, peer: (NodeId, u64), source: u64, len: u64) -> Result<Vec<u8>, DataError> {
        self.transfer(peer, Opcode::Read, source, len, |staging| staging.to_vec(), &[])
    }

    /// Writes `bytes` into the peer's memory at `dest`; returns once they are there.
    pub(crate) fn push(&mut self, peer: (NodeId, u64), dest: u64, bytes: &[u8]) -> Result<(), DataError> {
        self.transfer(peer, Opcode::Write, dest, bytes.len() as u64, |_| (), bytes)
    }

    /// Runs one transfer between the staging (`fill` copied in first) and the peer's
    /// `remote` address; `take` reads the staging after it.
    fn transfer<T>(
        &mut self,
        peer: (NodeId, u64),
        opcode: Opcode,
        remote: u64,
        len: u64,
        take: impl FnOnce(&[u8]) -> T,
        fill: &[u8],
    ) -> Result<T, DataError> {
        if self.poisoned || len > self.port.staging.len {
            return Err(DataError::RdmaUnavailable);
        }
        let fabric = self.port.fabric.clone();
        let mut nic = fabric.lock();
        let Some(endpoint) = self.endpoints.get_mut(&peer).filter(|e| e.machine.is_some()) else {
            return Err(DataError::RdmaUnavailable);
        };
        let staging = self.port.staging;
        if !fill.is_empty() {
            nic.region_bytes_mut(staging.addr).expect("registered")[..fill.len()].copy_from_slice(fill);
        }
        let outcome = endpoint.run(&mut nic, opcode, staging.addr, remote, len, self.max_drive_rounds);
        if !matches!(outcome, Some(Ok(_))) {
            // Failed, or stalled with requests still in the device: the QPs go to RESET,
            // which drops whatever the device holds of them, so that neither side's
            // memory is touched after the refusal; the peer sets up a new endpoint.
            tracing::debug!("RDMA transfer with {:?}: {outcome:?}; the peer falls back to TCP", peer.0);
            self.drop_endpoint(&mut nic, peer);
        }
        // Every request of the node's names its staging: none may be left.
        if nic.touches(self.port.host, staging.addr, len) {
            tracing::error!("the RDMA device still holds the staging after a transfer: RDMA is off");
            self.poisoned = true;
        }
        match outcome {
            Some(Ok(_)) if !self.poisoned => {
                let len = usize::try_from(len).expect("inside the staging");
                Ok(take(&nic.region_bytes(staging.addr).expect("registered")[..len]))
            }
            _ => Err(DataError::RdmaUnavailable),
        }
    }

    /// The peer's last connection closed: its endpoint goes (its QPs to RESET, which
    /// drops whatever the device holds of them). No transfer is in flight on it: they
    /// run under the port's lock, to their end.
    pub(crate) fn forget_peer(&mut self, peer: (NodeId, u64)) {
        let fabric = self.port.fabric.clone();
        self.drop_endpoint(&mut fabric.lock(), peer);
    }

    /// Peers with an endpoint (connected or in a handshake).
    #[cfg(test)]
    fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    fn drop_endpoint(&mut self, nic: &mut SimNic, peer: (NodeId, u64)) {
        if let Some(mut endpoint) = self.endpoints.remove(&peer) {
            endpoint.reset(nic);
        }
    }
}

impl NodeEndpoint {
    /// Runs one transfer to its end; `None` if the device stopped making progress
    /// before the machine reported it done.
    fn run(
        &mut self,
        nic: &mut SimNic,
        opcode: Opcode,
        local: u64,
        remote: u64,
        len: u64,
        max_rounds: usize,
    ) -> Option<Result<u64, TransferError>> {
        let machine = self.machine.as_mut()?;
        let id = match machine.submit(opcode, local, remote, len) {
            Ok(id) => id,
            Err(e) => return Some(Err(e)),
        };
        let mut chain: Vec<WorkRequest> = Vec::new();
        let mut polled = Vec::new();
        for _ in 0..max_rounds {
            let mut progress = false;
            while let Some(lane) = self.machine.as_mut()?.poll_post(&mut chain) {
                let result = nic.post_send(self.qps[lane].0, &chain);
                self.machine.as_mut()?.handle_post_result(result);
                progress = true;
                if let Some(done) = self.handle_events(nic, id) {
                    return Some(done);
                }
            }
            progress |= nic.run_steps(64);
            polled.clear();
            nic.poll_cq(self.cq, 64, &mut polled);
            for (_, completion) in polled.drain(..) {
                self.machine.as_mut()?.handle_completion(completion);
                progress = true;
            }
            if let Some(done) = self.handle_events(nic, id) {
                return Some(done);
            }
            if !progress && nic.is_idle() {
                return None;
            }
        }
        None
    }

    /// Carries out the machine's events; the result of transfer `id` once done.
    fn handle_events(&mut self, nic: &mut SimNic, id: TransferId) -> Option<Result<u64, TransferError>> {
        let mut done = None;
        while let Some(event) = self.machine.as_mut()?.poll_event() {
            match event {
                WrEvent::Done { id: finished, result } if finished == id => done = Some(result),
                WrEvent::Done { .. } => {}
                WrEvent::QpFailed { qp } => {
                    let (qpn, machine) = &mut self.qps[qp];
                    machine.fail();
                    execute_modifies(nic, *qpn, machine);
                    self.failed[qp] = true;
                    if self.failed.iter().all(|f| *f) {
                        // No QP left to send on: the transfer fails (once its requests
                        // have completed) and the peer sets up a new endpoint.
                        self.machine.as_mut()?.fail_all(TransferError::Closed);
                    }
                }
                WrEvent::MarkerRefused { qp } => {
                    let (qpn, machine) = &mut self.qps[qp];
                    machine.handle_device_error();
                    machine.reset();
                    execute_modifies(nic, *qpn, machine);
                    self.machine.as_mut()?.handle_qp_destroyed(qp);
                }
                // Left down: a QP is rebuilt only with the peer, by a new endpoint.
                WrEvent::QpDrained { .. } => {}
            }
        }
        done
    }

    /// Moves every QP to RESET: the device drops whatever they still hold.
    fn reset(&mut self, nic: &mut SimNic) {
        for (qpn, qp) in &mut self.qps {
            qp.handle_device_error();
            qp.reset();
            execute_modifies(nic, *qpn, qp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: NodeId = NodeId(11);
    const NODE: NodeId = NodeId(22);
    /// The client's connection, as the node's handshake bound it.
    const PEER: (NodeId, u64) = (CLIENT, 1);

    fn node_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    /// Runs the endpoint handshake between `client` and `node` over the bodies their
    /// data connection would carry.
    fn connect(client: &ClientRdma, node: &mut NodeRdma) {
        let (mut body, mut pending) = client.begin(node_addr(), NODE).expect("an offer");
        loop {
            let Ok(DataRequest::Endpoint { messages }) = DataRequest::decode(&body) else {
                panic!("not an endpoint body")
            };
            let mut answer = Vec::new();
            node.answer_endpoint(PEER, messages, &mut answer);
            match client.handle_answer(node_addr(), &mut pending, Some(&answer)) {
                Some(next) => body = next,
                None => break,
            }
        }
    }

    /// A push the node gives up on (stalled) is refused, and the refusal lets the reader
    /// reuse its slot: nothing left in the device may write into it afterwards.
    #[test]
    fn a_stalled_push_leaves_nothing_in_the_device_that_could_write_into_the_readers_slot() {
        const LEN: usize = 8 << 20;
        let fabric = SimFabric::new(3, LEN);
        let client = ClientRdma::new(&fabric, CLIENT);
        let mut node = NodeRdma::new(&fabric, NODE);
        connect(&client, &mut node);
        // 128 slices, at most 64 device steps: the transfer cannot end in one round.
        node.max_drive_rounds = 1;
        let slot = client.take_slot(LEN as u64).expect("room");
        assert_eq!(node.push(PEER, client.address(&slot), &vec![7u8; LEN]), Err(DataError::RdmaUnavailable));
        client.fill(&slot, &vec![1u8; LEN]);
        let mut nic = fabric.lock();
        while nic.step() {}
        drop(nic);
        assert!(client.contents(&slot).iter().all(|b| *b == 1), "the device wrote into a released slot");
    }

    fn generation(client: &ClientRdma) -> u64 {
        match client.transport(node_addr()) {
            Some(Transport::Rdma { generation }) => generation,
            other => panic!("not connected: {other:?}"),
        }
    }

    /// A transfer that failed on an endpoint the client has since replaced (it was in
    /// flight during the new handshake) does not forget the new one.
    #[test]
    fn a_failure_on_an_older_endpoint_does_not_forget_the_newer_one() {
        let fabric = SimFabric::new(4, 1 << 20);
        let client = ClientRdma::new(&fabric, CLIENT);
        let mut node = NodeRdma::new(&fabric, NODE);
        connect(&client, &mut node);
        let first = generation(&client);
        client.forget_endpoint(node_addr(), first);
        assert_eq!(client.transport(node_addr()), None, "its own failure forgets it");
        connect(&client, &mut node);
        let second = generation(&client);
        assert_ne!(first, second);
        client.forget_endpoint(node_addr(), first);
        assert_eq!(generation(&client), second, "a late failure of the first kept the second");
        let slot = client.take_slot(4096).expect("room");
        assert_eq!(node.push(PEER, client.address(&slot), &[5u8; 4096]), Ok(()));
        assert!(client.contents(&slot).iter().all(|b| *b == 5));
    }

    /// A peer whose connections all closed leaves no endpoint behind on the node, and
    /// nothing of it can move bytes any more.
    #[test]
    fn a_gone_peers_endpoint_is_dropped_and_moves_no_bytes() {
        let fabric = SimFabric::new(5, 1 << 20);
        let client = ClientRdma::new(&fabric, CLIENT);
        let mut node = NodeRdma::new(&fabric, NODE);
        connect(&client, &mut node);
        assert_eq!(node.endpoint_count(), 1);
        node.forget_peer(PEER);
        assert_eq!(node.endpoint_count(), 0);
        let slot = client.take_slot(4096).expect("room");
        client.fill(&slot, &[1u8; 4096]);
        let moved = fabric.stats().bytes;
        assert_eq!(node.push(PEER, client.address(&slot), &[5u8; 4096]), Err(DataError::RdmaUnavailable));
        assert_eq!(fabric.stats().bytes, moved);
        assert!(client.contents(&slot).iter().all(|b| *b == 1));
    }
}
