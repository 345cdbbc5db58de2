//! A simulated NIC with reliable-connected semantics (feature `sim`), to test and
//! measure the QP and work-request machines where no RDMA device exists.
//!
//! It models what the machines rely on, as verbs and the rxe provider behave:
//!
//! - memory regions with lkeys, rkeys, bounds and access flags; RDMA READ and WRITE
//!   copy real bytes between them, and only after every check passed;
//! - QP states enforced by [`check_modify`]: a post below RTS is refused (`EINVAL`), a
//!   post to an ERR QP is accepted and flushed, a move to ERR flushes every request
//!   still queued, a move to RESET drops them without completions;
//! - per-QP order (a QP executes and completes its requests in the order posted); the
//!   QPs are interleaved at random, and completions are delivered late, so they are
//!   reordered across QPs;
//! - send-queue slots freed only by a polled completion, which frees its request and
//!   every earlier unsignaled one of its QP (mlx5): a machine that never signals gets
//!   `ENOMEM`; an error always completes, signaled or not;
//! - a CQ of fixed capacity that records an overrun instead of growing;
//! - seeded faults ([`Faults`]): lost packets up to the retry limit
//!   (`RETRY_EXC_ERR`), RNR NAKs up to the RNR limit (7 retries forever), remote
//!   access errors (the responder's QP goes to ERR too, as class C), and QPs forced
//!   into ERR. A run is the same for the same seed.
//!
//! # Call order
//!
//! Set up with [`SimNic::add_host`], [`SimNic::register`], [`SimNic::create_cq`],
//! [`SimNic::create_qp`] and [`SimNic::modify_qp`]; then post with
//! [`SimNic::post_send`], let the device work with [`SimNic::step`] (one unit of work
//! each), and take completions with [`SimNic::poll_cq`].

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::rdma::mr::MemoryRegion;
use crate::rdma::qp::{Access, ModifyRequest, QpState, check_modify};
use crate::rdma::status::WcStatus;
use crate::rdma::transfer::{Completion, Opcode, PostFailure, WorkRequest};

/// `EINVAL`: a post to a QP below RTS, a modify the table refuses.
pub const EINVAL: i32 = 22;
/// `ENOMEM`: the send queue is full.
pub const ENOMEM: i32 = 12;
/// `EIO`: the post failed for a reason of the device's (an injected fault).
pub const EIO: i32 = 5;

/// RNR NAKs in a row after which even "retry forever" (7) gives up in the simulation.
pub const RNR_FOREVER_CAP: u32 = 1000;

/// A simulated machine: its regions are reachable only through its QPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostId(usize);

/// A simulated completion queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CqId(usize);

/// Fault rates, each the chance per attempt (0.0 to 1.0).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// A request's packet is lost (retried by the device up to `retry_cnt` times).
    pub lost_packet: f64,
    /// The responder answers RNR (retried up to `rnr_retry` times; 7 forever).
    pub rnr: f64,
    /// The responder refuses the access as if the rkey were wrong.
    pub remote_access: f64,
    /// The QP is forced into ERR before it executes the request.
    pub qp_error: f64,
    /// A post is refused (`EIO`) at a random request of its chain, the earlier ones
    /// posted: what a driver failing mid-chain does.
    pub refused_post: f64,
    /// Up to this many steps pass before an executed request's completion is
    /// delivered.
    pub max_completion_delay: u32,
    /// The chance that the device executes a request at once, while the chain it is
    /// part of is still being posted (as hardware may): a post refused mid-chain then
    /// leaves executed requests without completions behind.
    pub eager: f64,
}

/// What the device did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicStats {
    /// Requests executed with success.
    pub executed: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Requests completed with an error other than a flush.
    pub errors: u64,
    /// Requests completed flushed.
    pub flushed: u64,
    /// Requests dropped by a move to RESET (no completion).
    pub dropped: u64,
    /// Completions lost because a CQ was full.
    pub cq_overruns: u64,
    /// Posts after which the requests holding slots on a CQ's QPs (each of which could
    /// complete, if only as flushed) outnumbered the CQ's entries.
    pub cq_bound_exceeded: u64,
    /// Requests and completions a move to RESET discarded.
    pub discarded: u64,
    /// Posts refused because a send queue was full.
    pub sq_full: u64,
}

#[derive(Debug)]
struct SimRegion {
    host: HostId,
    mr: MemoryRegion,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct SimQp {
    host: HostId,
    cq: CqId,
    state: QpState,
    dest_qpn: u32,
    access: Access,
    retry_cnt: u8,
    rnr_retry: u8,
    max_send_wr: usize,
    /// Requests not yet executed, in order.
    queued: VecDeque<WorkRequest>,
    /// Posted requests whose slots no polled completion has freed, in order: until
    /// then the device may still touch their buffers.
    slots: VecDeque<WorkRequest>,
    /// Completions produced, waiting to be delivered (each with its remaining delay).
    produced: VecDeque<(Completion, u32)>,
}

#[derive(Debug)]
struct SimCq {
    capacity: usize,
    entries: VecDeque<(u32, Completion)>,
}

/// The simulated device.
#[derive(Debug)]
pub struct SimNic {
    rng: ChaCha8Rng,
    faults: Faults,
    regions: Vec<SimRegion>,
    qps: Vec<SimQp>,
    cqs: Vec<SimCq>,
    hosts: usize,
    next_addr: u64,
    refuse_next_post_at: Option<usize>,
    stats: NicStats,
}

impl SimNic {
    /// A device with no hosts, faults as given, decided by `seed`.
    pub fn new(seed: u64, faults: Faults) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            faults,
            regions: Vec::new(),
            qps: Vec::new(),
            cqs: Vec::new(),
            hosts: 0,
            next_addr: 0x1000_0000,
            refuse_next_post_at: None,
            stats: NicStats::default(),
        }
    }

    /// What the device did so far.
    pub fn stats(&self) -> NicStats {
        self.stats
    }

    /// Makes the next post fail (`EIO`) at request `at` of its chain, the earlier ones
    /// posted: a scripted fault.
    pub fn refuse_next_post(&mut self, at: usize) {
        self.refuse_next_post_at = Some(at);
    }

    /// Changes the fault rates from now on.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// A new machine.
    pub fn add_host(&mut self) -> HostId {
        self.hosts += 1;
        HostId(self.hosts - 1)
    }

    /// Registers `len` zeroed bytes on `host` with `access`. Regions sit at distinct
    /// addresses with gaps between them, so a range past a region's end is in none.
    pub fn register(&mut self, host: HostId, len: usize, access: Access) -> MemoryRegion {
        let key = self.regions.len() as u32 * 2 + 0x100;
        let mr = MemoryRegion { addr: self.next_addr, len: len as u64, lkey: key, rkey: key + 1, access };
        self.next_addr += (len as u64).next_multiple_of(4096) + 4096;
        self.regions.push(SimRegion { host, mr, bytes: vec![0; len] });
        mr
    }

    /// The bytes of the region that starts at `addr`.
    pub fn region_bytes(&self, addr: u64) -> Option<&[u8]> {
        self.regions.iter().find(|r| r.mr.addr == addr).map(|r| r.bytes.as_slice())
    }

    /// The bytes of the region that starts at `addr`, to fill.
    pub fn region_bytes_mut(&mut self, addr: u64) -> Option<&mut [u8]> {
        self.regions.iter_mut().find(|r| r.mr.addr == addr).map(|r| r.bytes.as_mut_slice())
    }

    /// A completion queue of `capacity` entries.
    pub fn create_cq(&mut self, capacity: usize) -> CqId {
        self.cqs.push(SimCq { capacity, entries: VecDeque::new() });
        CqId(self.cqs.len() - 1)
    }

    /// An RC QP on `host`, in RESET, completing into `cq`; its QP number.
    pub fn create_qp(&mut self, host: HostId, cq: CqId, max_send_wr: usize) -> u32 {
        self.qps.push(SimQp {
            host,
            cq,
            state: QpState::Reset,
            dest_qpn: 0,
            access: Access::empty(),
            retry_cnt: 0,
            rnr_retry: 0,
            max_send_wr,
            queued: VecDeque::new(),
            slots: VecDeque::new(),
            produced: VecDeque::new(),
        });
        self.qps.len() as u32
    }

    /// The QP's state as the device holds it.
    pub fn qp_state(&self, qpn: u32) -> Option<QpState> {
        self.qp(qpn).map(|q| q.state)
    }

    fn qp(&self, qpn: u32) -> Option<&SimQp> {
        self.qps.get((qpn as usize).checked_sub(1)?)
    }

    fn qp_index(&self, qpn: u32) -> Option<usize> {
        let i = (qpn as usize).checked_sub(1)?;
        (i < self.qps.len()).then_some(i)
    }

    /// `ibv_modify_qp`: checked against the RC table; `EINVAL` changes nothing.
    pub fn modify_qp(&mut self, qpn: u32, request: &ModifyRequest) -> Result<(), i32> {
        let i = self.qp_index(qpn).ok_or(EINVAL)?;
        let to = check_modify(self.qps[i].state, false, request.call()).map_err(|_| EINVAL)?;
        let a = &request.attrs;
        let qp = &mut self.qps[i];
        let mask = request.mask;
        use crate::rdma::qp::AttrMask as M;
        if mask.contains(M::DEST_QPN) {
            qp.dest_qpn = a.dest_qpn;
        }
        if mask.contains(M::ACCESS_FLAGS) {
            qp.access = a.access;
        }
        if mask.contains(M::RETRY_CNT) {
            qp.retry_cnt = a.retry_cnt;
        }
        if mask.contains(M::RNR_RETRY) {
            qp.rnr_retry = a.rnr_retry;
        }
        match to {
            QpState::Err => self.move_to_err(i),
            QpState::Reset => {
                let qp = &mut self.qps[i];
                self.stats.dropped += qp.queued.len() as u64;
                self.stats.discarded += (qp.queued.len() + qp.produced.len()) as u64;
                qp.queued.clear();
                qp.slots.clear();
                qp.produced.clear();
                qp.state = QpState::Reset;
            }
            state => self.qps[i].state = state,
        }
        Ok(())
    }

    /// `ibv_post_send` of a chain: stops at the first request refused.
    pub fn post_send(&mut self, qpn: u32, chain: &[WorkRequest]) -> Result<(), PostFailure> {
        let Some(i) = self.qp_index(qpn) else {
            return Err(PostFailure { first_unposted: 0, errno: EINVAL });
        };
        let refuse_at = match self.refuse_next_post_at.take() {
            Some(at) => at,
            None if self.chance(self.faults.refused_post) => self.rng.random_range(0..chain.len().max(1)),
            None => usize::MAX,
        };
        for (n, wr) in chain.iter().enumerate() {
            if n == refuse_at {
                return Err(PostFailure { first_unposted: n, errno: EIO });
            }
            let qp = &mut self.qps[i];
            if matches!(qp.state, QpState::Reset | QpState::Init | QpState::Rtr) {
                return Err(PostFailure { first_unposted: n, errno: EINVAL });
            }
            if qp.slots.len() >= qp.max_send_wr {
                self.stats.sq_full += 1;
                return Err(PostFailure { first_unposted: n, errno: ENOMEM });
            }
            qp.slots.push_back(*wr);
            if qp.state == QpState::Err {
                qp.produced.push_back((Completion { wr_id: wr.wr_id, status: WcStatus::WrFlushErr }, 0));
                self.stats.flushed += 1;
            } else {
                qp.queued.push_back(*wr);
            }
            self.check_cq_bound(i);
            if self.chance(self.faults.eager) && runs(self.qps[i].state) {
                self.execute(i);
            }
        }
        Ok(())
    }

    fn check_cq_bound(&mut self, i: usize) {
        let cq = self.qps[i].cq;
        let held: usize = self.qps.iter().filter(|q| q.cq == cq).map(|q| q.slots.len()).sum();
        if held > self.cqs[cq.0].capacity {
            self.stats.cq_bound_exceeded += 1;
        }
    }

    /// `ibv_poll_cq`: up to `max` completions appended to `out`, with the QP number of
    /// each; polling one frees its slot and the earlier ones of its QP.
    pub fn poll_cq(&mut self, cq: CqId, max: usize, out: &mut Vec<(u32, Completion)>) -> usize {
        let mut n = 0;
        while n < max {
            let Some((qpn, completion)) = self.cqs[cq.0].entries.pop_front() else { break };
            if let Some(i) = self.qp_index(qpn) {
                let slots = &mut self.qps[i].slots;
                if let Some(at) = slots.iter().position(|wr| wr.wr_id == completion.wr_id) {
                    slots.drain(..=at);
                }
            }
            out.push((qpn, completion));
            n += 1;
        }
        n
    }

    /// Whether any request posted on `host` whose slot no polled completion has freed
    /// names a local byte in `[addr, addr + len)`: by the verbs rule its buffer is not
    /// free yet.
    pub fn touches(&self, host: HostId, addr: u64, len: u64) -> bool {
        self.qps
            .iter()
            .filter(|q| q.host == host)
            .flat_map(|q| q.slots.iter())
            .any(|wr| wr.len > 0 && wr.local_addr < addr + len && addr < wr.local_addr + u64::from(wr.len))
    }

    /// Runs a random number of [`SimNic::step`]s, 1 to `max`, so that completions pile
    /// up between polls as on a busy device; false if there was nothing to do.
    pub fn run_steps(&mut self, max: usize) -> bool {
        let steps = self.rng.random_range(1..=max.max(1));
        let mut any = false;
        for _ in 0..steps {
            if !self.step() {
                break;
            }
            any = true;
        }
        any
    }

    /// Whether the device has nothing left to do.
    pub fn is_idle(&self) -> bool {
        self.qps.iter().all(|q| q.produced.is_empty() && (q.queued.is_empty() || !runs(q.state)))
    }

    /// One unit of work: a QP chosen at random executes its oldest request, or
    /// delivers its oldest due completion. False when there was nothing to do.
    pub fn step(&mut self) -> bool {
        let busy: Vec<usize> = (0..self.qps.len())
            .filter(|&i| {
                !self.qps[i].produced.is_empty()
                    || (runs(self.qps[i].state) && !self.qps[i].queued.is_empty())
            })
            .collect();
        if busy.is_empty() {
            return false;
        }
        let i = busy[self.rng.random_range(0..busy.len())];
        let can_execute = runs(self.qps[i].state) && !self.qps[i].queued.is_empty();
        if let Some((_, delay)) = self.qps[i].produced.front_mut() {
            if *delay == 0 || !can_execute {
                let (completion, _) = self.qps[i].produced.pop_front().unwrap_or_else(|| unreachable!());
                self.deliver(i, completion);
                return true;
            }
            *delay -= 1;
        }
        if can_execute {
            self.execute(i);
        }
        true
    }

    fn deliver(&mut self, i: usize, completion: Completion) {
        let cq = &mut self.cqs[self.qps[i].cq.0];
        if cq.entries.len() >= cq.capacity {
            self.stats.cq_overruns += 1;
        } else {
            cq.entries.push_back((i as u32 + 1, completion));
        }
    }

    fn execute(&mut self, i: usize) {
        if self.chance(self.faults.qp_error) {
            return self.move_to_err(i);
        }
        let Some(wr) = self.qps[i].queued.pop_front() else { return };
        let status = self.attempt(i, &wr);
        if status == WcStatus::Success {
            self.stats.executed += 1;
            self.stats.bytes += u64::from(wr.len);
            if wr.signaled {
                self.produce(i, wr.wr_id, status);
            }
        } else {
            self.stats.errors += 1;
            self.produce(i, wr.wr_id, status);
            self.move_to_err(i);
        }
    }

    fn produce(&mut self, i: usize, wr_id: u64, status: WcStatus) {
        let delay = match self.faults.max_completion_delay {
            0 => 0,
            max => self.rng.random_range(0..=max),
        };
        self.qps[i].produced.push_back((Completion { wr_id, status }, delay));
    }

    /// Every check and fault of one request, and the copy if all pass.
    fn attempt(&mut self, i: usize, wr: &WorkRequest) -> WcStatus {
        let (host, retry_cnt, rnr_retry) = (self.qps[i].host, self.qps[i].retry_cnt, self.qps[i].rnr_retry);
        // The responder must be connected back to this QP and ready to receive.
        let peer = self.qp_index(self.qps[i].dest_qpn);
        let peer_up = peer.is_some_and(|p| {
            matches!(self.qps[p].state, QpState::Rtr | QpState::Rts | QpState::Sqd)
                && self.qps[p].dest_qpn == i as u32 + 1
        });
        let mut lost = 0;
        while !peer_up || self.chance(self.faults.lost_packet) {
            lost += 1;
            if lost > u32::from(retry_cnt) {
                return WcStatus::RetryExcErr;
            }
        }
        let mut rnr = 0;
        while self.chance(self.faults.rnr) {
            rnr += 1;
            // 7 retries forever; the simulation gives up after RNR_FOREVER_CAP so that
            // a rate of 1.0 cannot hang it.
            if (rnr_retry != 7 && rnr > u32::from(rnr_retry)) || rnr > RNR_FOREVER_CAP {
                return WcStatus::RnrRetryExcErr;
            }
        }
        let Some(p) = peer else { return WcStatus::RetryExcErr };
        if wr.len == 0 {
            // A zero-length write (a drain marker) checks no key and moves nothing.
            return WcStatus::Success;
        }
        let (right, qp_right) = match wr.opcode {
            Opcode::Read => (Access::REMOTE_READ, Access::REMOTE_READ),
            Opcode::Write => (Access::REMOTE_WRITE, Access::REMOTE_WRITE),
        };
        let Some(local) = self.find_region(host, wr.lkey, false, wr.local_addr, wr.len) else {
            return WcStatus::LocProtErr;
        };
        if wr.opcode == Opcode::Read && !self.regions[local].mr.access.contains(Access::LOCAL_WRITE) {
            return WcStatus::LocProtErr;
        }
        let remote = self.find_region(self.qps[p].host, wr.rkey, true, wr.remote_addr, wr.len);
        let allowed = remote.is_some_and(|r| self.regions[r].mr.access.contains(right))
            && self.qps[p].access.contains(qp_right);
        if !allowed || self.chance(self.faults.remote_access) {
            self.move_to_err(p);
            return WcStatus::RemAccessErr;
        }
        let remote = remote.unwrap_or_else(|| unreachable!());
        match wr.opcode {
            Opcode::Read => self.copy(remote, wr.remote_addr, local, wr.local_addr, wr.len),
            Opcode::Write => self.copy(local, wr.local_addr, remote, wr.remote_addr, wr.len),
        }
        WcStatus::Success
    }

    fn find_region(&self, host: HostId, key: u32, remote: bool, addr: u64, len: u32) -> Option<usize> {
        self.regions.iter().position(|r| {
            r.host == host
                && (if remote { r.mr.rkey } else { r.mr.lkey }) == key
                && r.mr.addr <= addr
                && addr.checked_add(u64::from(len)).is_some_and(|end| end <= r.mr.end())
        })
    }

    fn copy(&mut self, from: usize, from_addr: u64, to: usize, to_addr: u64, len: u32) {
        let len = len as usize;
        let src_at = (from_addr - self.regions[from].mr.addr) as usize;
        let dst_at = (to_addr - self.regions[to].mr.addr) as usize;
        if from == to {
            self.regions[from].bytes.copy_within(src_at..src_at + len, dst_at);
        } else if from < to {
            let (a, b) = self.regions.split_at_mut(to);
            b[0].bytes[dst_at..dst_at + len].copy_from_slice(&a[from].bytes[src_at..src_at + len]);
        } else {
            let (a, b) = self.regions.split_at_mut(from);
            a[to].bytes[dst_at..dst_at + len].copy_from_slice(&b[0].bytes[src_at..src_at + len]);
        }
    }

    /// ERR: every queued request completes flushed, in order.
    fn move_to_err(&mut self, i: usize) {
        let qp = &mut self.qps[i];
        qp.state = QpState::Err;
        while let Some(wr) = qp.queued.pop_front() {
            qp.produced.push_back((Completion { wr_id: wr.wr_id, status: WcStatus::WrFlushErr }, 0));
            self.stats.flushed += 1;
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }
}

/// Whether a QP in `state` executes its send queue.
fn runs(state: QpState) -> bool {
    state == QpState::Rts
}
