//! Two simulated hosts joined by one endpoint, driven the way a driver drives the
//! machines: the endpoint handshake over encoded bytes, each QP brought up by its
//! [`QueuePair`] machine, transfers by a [`WrMachine`], failed QPs reset and
//! reconnected with fresh PSNs.

use alloc::vec;
use alloc::vec::Vec;

use super::nic::{CqId, Faults, HostId, SimNic};
use crate::ids::NodeId;
use crate::rdma::endpoint::{
    EndpointEvent, EndpointHandshake, EndpointInfo, EndpointMessage, QpEndpoint, RemoteRegion,
};
use crate::rdma::mr::{MemoryRegion, MemoryRegions};
use crate::rdma::qp::{Access, Mtu, Psn, QpConfig, QpState, QueuePair, RemoteQp};
use crate::rdma::transfer::{
    Completion, Opcode, TransferError, TransferId, WorkRequest, WrConfig, WrEvent, WrMachine,
};
use crate::time::{Duration, Instant};

/// How a link is built.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// The work-request machine's settings (its `qps` is the endpoint's QP count).
    pub wr: WrConfig,
    /// Bytes of the initiator's registered buffer.
    pub local_len: usize,
    /// Bytes of the responder's registered region.
    pub remote_len: usize,
    /// The simulated device's faults.
    pub faults: Faults,
    /// The seed of every choice the device makes.
    pub seed: u64,
}

/// What happened over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// QPs reset and reconnected after a failure.
    pub qps_rebuilt: u64,
    /// Transfers reported done while the device could still touch their buffer
    /// (must stay 0).
    pub released_early: u64,
    /// Posts the device refused for a full send queue (must stay 0: the machine keeps
    /// within the queue).
    pub posts_overflowed: u64,
    /// Posts refused by an injected fault.
    pub posts_failed: u64,
    /// QPs destroyed (reset) after their drain marker was refused.
    pub qps_destroyed: u64,
    /// What those resets discarded (every other discard is a fault of the machine).
    pub discarded_by_destroy: u64,
}

/// One side's QPs: the device's number and the engine's machine for each, and the
/// send PSNs it announced.
#[derive(Debug)]
struct Side {
    host: HostId,
    qps: Vec<(u32, QueuePair)>,
    psns: Vec<Psn>,
}

/// An initiator (host A, which runs the [`WrMachine`]) and a responder (host B) joined
/// by one endpoint of `wr.qps` QPs.
#[derive(Debug)]
pub struct SimLink {
    /// The device.
    pub nic: SimNic,
    /// The initiator's machine.
    pub machine: WrMachine,
    /// The initiator's registered buffer.
    pub local: MemoryRegion,
    /// The responder's registered region.
    pub remote: MemoryRegion,
    a: Side,
    b: Side,
    cq: CqId,
    cq_capacity: usize,
    next_psn: u32,
    chain: Vec<WorkRequest>,
    polled: Vec<(u32, Completion)>,
    done: Vec<(TransferId, Result<u64, TransferError>)>,
    pending: Vec<(TransferId, u64, u64)>,
    stats: LinkStats,
}

impl SimLink {
    /// Builds both hosts, registers their memory, runs the endpoint handshake and
    /// brings every QP to RTS.
    pub fn new(config: LinkConfig) -> Self {
        let config = LinkConfig { wr: config.wr.normalized(), ..config };
        let mut nic = SimNic::new(config.seed, Faults::default());
        let (ha, hb) = (nic.add_host(), nic.add_host());
        let rights = Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE;
        let local = nic.register(ha, config.local_len, rights);
        let remote = nic.register(hb, config.remote_len, rights);
        let cq = nic.create_cq(config.wr.cq_capacity as usize);
        let cq_b = nic.create_cq(config.wr.cq_capacity as usize);
        let qps = config.wr.qps.max(1);
        let max_send_wr = config.wr.max_send_wr as usize;
        let mut a = Side { host: ha, qps: Vec::new(), psns: Vec::new() };
        let mut b = Side { host: hb, qps: Vec::new(), psns: Vec::new() };
        for _ in 0..qps {
            a.qps.push((nic.create_qp(ha, cq, max_send_wr), QueuePair::new(QpConfig::default())));
            b.qps.push((nic.create_qp(hb, cq_b, max_send_wr), QueuePair::new(QpConfig::default())));
        }
        let mut local_regions = MemoryRegions::new();
        local_regions.register(local).unwrap_or_else(|e| panic!("a fresh region: {e}"));
        let mut link = Self {
            machine: WrMachine::new(config.wr, MemoryRegions::new(), Vec::new()),
            nic,
            local,
            remote,
            a,
            b,
            cq,
            cq_capacity: config.wr.cq_capacity as usize,
            next_psn: 1,
            chain: Vec::new(),
            polled: Vec::new(),
            done: Vec::new(),
            pending: Vec::new(),
            stats: LinkStats::default(),
        };
        let peer_regions = link.handshake();
        link.machine = WrMachine::new(config.wr, local_regions, peer_regions);
        link.nic.set_faults(config.faults);
        link
    }

    /// The endpoint handshake between A and B over encoded messages, each side's QPs
    /// brought up when the peer's Info arrives; the regions B offered.
    fn handshake(&mut self) -> Vec<RemoteRegion> {
        let now = Instant::ZERO;
        let info_a = self.info(NodeId(1), 11, &[]);
        let info_b = self.info(NodeId(2), 22, &[self.remote.remote()]);
        let mut hs = [
            EndpointHandshake::new(info_a, NodeId(2), now, Duration::from_secs(10)),
            EndpointHandshake::new(info_b, NodeId(1), now, Duration::from_secs(10)),
        ];
        let mut buf = vec![0u8; EndpointMessage::MAX_LEN];
        let mut connected = [false; 2];
        while !(connected[0] && connected[1]) {
            let mut progress = false;
            for from in 0..2 {
                while let Some(len) = hs[from].poll_transmit(&mut buf) {
                    let len = len.unwrap_or_else(|e| panic!("encode: {e}"));
                    hs[1 - from].handle_message(&buf[..len]);
                    progress = true;
                }
            }
            for side in 0..2 {
                while let Some(event) = hs[side].poll_event() {
                    progress = true;
                    match event {
                        EndpointEvent::BringUp { peer } => {
                            self.bring_up(side, &peer);
                            hs[side].handle_qps_ready();
                        }
                        EndpointEvent::Connected => connected[side] = true,
                        EndpointEvent::Failed(e) => panic!("the simulated handshake failed: {e}"),
                    }
                }
            }
            assert!(progress, "the handshake stalled");
        }
        hs[0].peer().map(|p| p.regions.clone()).unwrap_or_default()
    }

    fn info(&mut self, node: NodeId, nonce: u64, regions: &[RemoteRegion]) -> EndpointInfo {
        let count = self.a.qps.len();
        let psns: Vec<Psn> = (0..count).map(|_| self.fresh_psn()).collect();
        let side = if node == NodeId(1) { &mut self.a } else { &mut self.b };
        side.psns = psns.clone();
        let qps = side.qps.iter().zip(psns).map(|((qpn, _), psn)| QpEndpoint { qpn: *qpn, psn }).collect();
        EndpointInfo {
            node,
            nonce,
            gid: gid_of(node),
            lid: 0,
            mtu: Mtu::Mtu4096,
            qps,
            regions: regions.to_vec(),
        }
    }

    fn fresh_psn(&mut self) -> Psn {
        self.next_psn = self.next_psn.wrapping_mul(2_654_435_761).wrapping_add(7);
        Psn::truncate(self.next_psn)
    }

    fn bring_up(&mut self, side: usize, peer: &EndpointInfo) {
        let nic = &mut self.nic;
        let side = if side == 0 { &mut self.a } else { &mut self.b };
        for (i, (qpn, qp)) in side.qps.iter_mut().enumerate() {
            let remote = peer.remote_qp(i).unwrap_or_else(|| panic!("QP counts were checked"));
            qp.connect(remote, side.psns[i]).unwrap_or_else(|e| panic!("connect: {e}"));
            drive(nic, *qpn, qp);
        }
    }

    /// Queues a transfer between offsets of the two registered regions.
    pub fn submit(
        &mut self,
        opcode: Opcode,
        local_offset: u64,
        remote_offset: u64,
        len: u64,
    ) -> Result<TransferId, TransferError> {
        let id = self.machine.submit(
            opcode,
            self.local.addr + local_offset,
            self.remote.addr + remote_offset,
            len,
        )?;
        self.pending.push((id, self.local.addr + local_offset, len));
        Ok(id)
    }

    /// Runs until the machine and the device are idle: posts, device steps,
    /// completions, QP recovery. Gives every transfer done meanwhile.
    pub fn run(&mut self) -> Vec<(TransferId, Result<u64, TransferError>)> {
        let mut polled = core::mem::take(&mut self.polled);
        loop {
            let mut progress = self.post_all();
            progress |= self.nic.run_steps(2 * self.cq_capacity);
            polled.clear();
            self.nic.poll_cq(self.cq, 64, &mut polled);
            for (_, completion) in polled.drain(..) {
                self.machine.handle_completion(completion);
                progress = true;
            }
            progress |= self.handle_events();
            if !progress && self.nic.is_idle() {
                break;
            }
        }
        self.polled = polled;
        core::mem::take(&mut self.done)
    }

    /// What the run saw.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    fn post_all(&mut self) -> bool {
        let mut progress = false;
        let mut chain = core::mem::take(&mut self.chain);
        while let Some(lane) = self.machine.poll_post(&mut chain) {
            let result = self.nic.post_send(self.a.qps[lane].0, &chain);
            match result {
                Err(failure) if failure.errno == super::nic::ENOMEM => self.stats.posts_overflowed += 1,
                Err(_) => self.stats.posts_failed += 1,
                Ok(()) => {}
            }
            self.machine.handle_post_result(result);
            // Events first: a failed QP goes to ERR before its marker is posted.
            self.handle_events();
            progress = true;
        }
        self.chain = chain;
        progress
    }

    fn handle_events(&mut self) -> bool {
        let mut progress = false;
        while let Some(event) = self.machine.poll_event() {
            progress = true;
            match event {
                WrEvent::Done { id, result } => {
                    if let Some(at) = self.pending.iter().position(|p| p.0 == id) {
                        let (_, addr, len) = self.pending.swap_remove(at);
                        if self.nic.touches(self.a.host, addr, len) {
                            self.stats.released_early += 1;
                        }
                    }
                    self.done.push((id, result));
                }
                WrEvent::QpFailed { qp } => {
                    let (qpn, machine) = &mut self.a.qps[qp];
                    machine.fail();
                    drive(&mut self.nic, *qpn, machine);
                }
                WrEvent::MarkerRefused { qp } => {
                    // Destroying the QP is modelled by a reset: the device drops
                    // everything it holds for it.
                    let before = self.nic.stats().discarded;
                    let (qpn, machine) = &mut self.a.qps[qp];
                    machine.handle_device_error();
                    machine.reset();
                    drive(&mut self.nic, *qpn, machine);
                    self.stats.qps_destroyed += 1;
                    self.stats.discarded_by_destroy += self.nic.stats().discarded - before;
                    self.machine.handle_qp_destroyed(qp);
                }
                WrEvent::QpDrained { qp } => self.rebuild(qp),
            }
        }
        progress
    }

    /// Resets both ends of pair `qp` and connects them again with fresh PSNs.
    fn rebuild(&mut self, qp: usize) {
        for side in [&mut self.a, &mut self.b] {
            let (qpn, machine) = &mut side.qps[qp];
            if self.nic.qp_state(*qpn) == Some(QpState::Err) {
                machine.handle_device_error();
            }
            machine.reset();
            drive(&mut self.nic, *qpn, machine);
        }
        let (psn_a, psn_b) = (self.fresh_psn(), self.fresh_psn());
        self.a.psns[qp] = psn_a;
        self.b.psns[qp] = psn_b;
        let (qpn_a, qpn_b) = (self.a.qps[qp].0, self.b.qps[qp].0);
        let remote_of = |qpn: u32, psn: Psn, node: NodeId| RemoteQp {
            qpn,
            gid: gid_of(node),
            lid: 0,
            psn,
            mtu: Mtu::Mtu4096,
        };
        for (side, remote, psn) in [
            (&mut self.a, remote_of(qpn_b, psn_b, NodeId(2)), psn_a),
            (&mut self.b, remote_of(qpn_a, psn_a, NodeId(1)), psn_b),
        ] {
            let (qpn, machine) = &mut side.qps[qp];
            machine.connect(remote, psn).unwrap_or_else(|e| panic!("reconnect: {e}"));
            drive(&mut self.nic, *qpn, machine);
        }
        if self.machine.handle_qp_restored(qp) {
            self.stats.qps_rebuilt += 1;
        }
    }
}

fn gid_of(node: NodeId) -> [u8; 16] {
    [node.0 as u8; 16]
}

/// Executes every modify the QP machine plans, on the device.
fn drive(nic: &mut SimNic, qpn: u32, qp: &mut QueuePair) {
    while let Some(request) = qp.poll_modify() {
        let result = nic.modify_qp(qpn, &request);
        qp.handle_modify_result(result).unwrap_or_else(|e| panic!("QP {qpn}: {e}"));
    }
}
