//! The work-request machine: transfers (an RDMA READ or WRITE of a remote range) cut
//! into slices, posted as chains over an endpoint's QPs, completions matched exactly
//! once, and errors recovered.
//!
//! # Rules it keeps
//!
//! - **The send queue never wraps.** A QP's slots are freed only when a completion is
//!   polled, and polling one frees it and every earlier unsignaled request of that QP
//!   (mlx5). So every chain ends with a signaled request, one in every
//!   `signal_interval` is signaled, and a QP never holds more than `max_send_wr`
//!   requests that no polled completion has covered.
//! - **The completion queue never overflows.** An error completes every outstanding
//!   request, signaled or not, so the requests outstanding over all QPs (sharing one
//!   CQ) never exceed `cq_capacity`.
//! - **A buffer belongs to the machine until its last completion.** A transfer ends
//!   ([`WrEvent::Done`]) only when no request of it is outstanding on any QP, even one
//!   that failed: until then the device may still read or write its memory.
//! - **Errors.** A completion with an error moves its QP to ERR (the device does that;
//!   the machine stops using the QP and says [`WrEvent::QpFailed`]); its later requests
//!   complete flushed. Requests a failed QP executed without a completion (unsignaled)
//!   would never be heard of again, so the machine then posts one signaled marker (a
//!   zero-length write) to the QP in ERR: its flushed completion covers every earlier
//!   request (the kernel's `__ib_drain_sq`). One send-queue slot per QP and one CQ
//!   entry per QP are kept for it. Flushed and transient failures send the slice again on another
//!   QP, up to `max_retries` times each (Mooncake: 9); a refused key, bound or right
//!   fails the transfer ([`TransferError::Refused`]). A QP whose requests have all
//!   completed is [`WrEvent::QpDrained`]: it may be reset, reconnected and given back
//!   with [`WrMachine::handle_qp_restored`].
//!
//! # Call order
//!
//! 1. [`WrMachine::new`] with the local regions and the peer's.
//! 2. [`WrMachine::submit`] transfers at any time.
//! 3. Take [`WrMachine::poll_post`] (a chain for one QP, written into a caller-owned
//!    vector), post it with one `ibv_post_send`, and report the outcome with
//!    [`WrMachine::handle_post_result`] before the next `poll_post`. Repeat while it
//!    gives chains.
//! 4. Feed every polled completion to [`WrMachine::handle_completion`], and a QP's
//!    fatal event to [`WrMachine::handle_qp_error`].
//! 5. Drain [`WrMachine::poll_event`] after every `handle_*` call: on
//!    [`WrEvent::QpFailed`] move that QP to ERR before the next `poll_post` (which
//!    then gives its marker); on [`WrEvent::MarkerRefused`] destroy the QP and call
//!    [`WrMachine::handle_qp_destroyed`]; on [`WrEvent::QpDrained`] reset and
//!    reconnect it, then [`WrMachine::handle_qp_restored`]. Go back to step 3
//!    (completions free room).

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::endpoint::RemoteRegion;
use super::mr::{MemoryRegions, find_containing};
use super::qp::Access;
use super::status::{StatusClass, WcStatus};

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// RDMA READ: remote memory into the local buffer.
    Read,
    /// RDMA WRITE: the local buffer into remote memory.
    Write,
}

/// One work request with one scatter/gather entry, for the driver to post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkRequest {
    /// The id its completion carries.
    pub wr_id: u64,
    /// Read or write.
    pub opcode: Opcode,
    /// The local address.
    pub local_addr: u64,
    /// The local region's lkey.
    pub lkey: u32,
    /// Bytes.
    pub len: u32,
    /// The remote address.
    pub remote_addr: u64,
    /// The remote region's rkey.
    pub rkey: u32,
    /// Whether it asks for a completion (`IBV_SEND_SIGNALED`).
    pub signaled: bool,
}

/// A polled work completion (only the fields that are valid on an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The request's id.
    pub wr_id: u64,
    /// Its status.
    pub status: WcStatus,
}

/// `ibv_post_send` refused the request at `first_unposted` of the chain (and every
/// later one); those before it were posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostFailure {
    /// The index of `bad_wr` in the chain.
    pub first_unposted: usize,
    /// The error number.
    pub errno: i32,
}

/// How the machine posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrConfig {
    /// The endpoint's QPs.
    pub qps: usize,
    /// Each QP's `max_send_wr` (as `ibv_create_qp` gave it back).
    pub max_send_wr: u32,
    /// The entries of the CQ this endpoint's QPs complete into. The CQ is this
    /// machine's alone: `wr_id`s are unique per machine, not across machines.
    pub cq_capacity: u32,
    /// One request in this many is signaled (and always a chain's last).
    pub signal_interval: u32,
    /// The longest slice.
    pub slice_size: u32,
    /// How many times one slice is sent again before its transfer fails.
    pub max_retries: u32,
    /// The longest chain one post takes.
    pub max_chain: u32,
}

impl Default for WrConfig {
    /// Mooncake's: 2 QPs of 256 requests, a CQ of 4096, 64 KiB slices, 9 retries; one
    /// request in 16 signaled, chains of up to 32.
    fn default() -> Self {
        Self {
            qps: 2,
            max_send_wr: 256,
            cq_capacity: 4096,
            signal_interval: 16,
            slice_size: 64 * 1024,
            max_retries: 9,
            max_chain: 32,
        }
    }
}

impl WrConfig {
    /// The configuration the machine runs with: at least one QP, send queues of at
    /// least 2 and a CQ of at least 2 per QP (one each is kept for drain markers), and
    /// no zero interval, slice or chain. Size the device's queues from this.
    pub fn normalized(self) -> Self {
        let qps = self.qps.max(1);
        Self {
            qps,
            max_send_wr: self.max_send_wr.max(2),
            cq_capacity: self.cq_capacity.max(2 * qps as u32),
            signal_interval: self.signal_interval.max(1),
            slice_size: self.slice_size.max(1),
            max_chain: self.max_chain.max(1),
            ..self
        }
    }
}

/// Identifies a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransferId(u64);

/// Why a transfer was refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// A transfer of no bytes.
    #[error("a transfer moves at least one byte")]
    Empty,
    /// Part of the local range is in no registered region (or, for a read, one without
    /// local write).
    #[error("the local range is not inside a registered region that allows it")]
    LocalRange,
    /// Part of the remote range is in no region the peer offered.
    #[error("the remote range is not inside a region the peer offered")]
    RemoteRange,
    /// The device refused a key, bound or right: sending again would fail again.
    #[error("the device refused the transfer: {0:?}")]
    Refused(WcStatus),
    /// A slice failed more than `max_retries` times; the last status.
    #[error("a slice failed after every retry; last status {0:?}")]
    RetriesExhausted(WcStatus),
    /// [`WrMachine::fail_all`] ended it.
    #[error("the endpoint closed")]
    Closed,
}

/// What the machine tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrEvent {
    /// The transfer is over and no request of it is outstanding: its buffer is free.
    Done {
        /// Which.
        id: TransferId,
        /// Bytes moved, or why not.
        result: Result<u64, TransferError>,
    },
    /// The QP is no longer used: move it to ERR (if the device has not) before the next
    /// [`WrMachine::poll_post`], so that its outstanding requests and the marker that
    /// follows complete flushed.
    QpFailed {
        /// Its index.
        qp: usize,
    },
    /// Posting the failed QP's drain marker was refused, so its outstanding requests
    /// may never complete: destroy the QP (its buffers are then out of the device's
    /// reach) and call [`WrMachine::handle_qp_destroyed`].
    MarkerRefused {
        /// Its index.
        qp: usize,
    },
    /// Every request of the failed QP has completed: it may be reset and reconnected.
    QpDrained {
        /// Its index.
        qp: usize,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WrStats {
    /// Requests posted.
    pub posted: u64,
    /// Requests handed out signaled (in chains, posted or not).
    pub signaled: u64,
    /// Slices sent again.
    pub retries: u64,
    /// Completions whose id matched no outstanding request (ignored).
    pub stray_completions: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slice {
    transfer: TransferId,
    local_addr: u64,
    lkey: u32,
    remote_addr: u64,
    rkey: u32,
    len: u32,
    attempts: u32,
}

#[derive(Debug)]
struct Transfer {
    id: TransferId,
    opcode: Opcode,
    len: u64,
    queued: u32,
    in_flight: u32,
    error: Option<TransferError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaneState {
    Up,
    Failed,
    Drained,
}

#[derive(Debug)]
struct Lane {
    state: LaneState,
    /// Posted requests no polled completion has covered yet, oldest first.
    outstanding: VecDeque<u64>,
    since_signal: u32,
    /// A failed lane's drain marker is posted.
    marker_posted: bool,
}

/// A slab whose ids carry a generation, so that a stale id never matches.
#[derive(Debug)]
struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Self { slots: Vec::new(), free: Vec::new() }
    }

    fn insert(&mut self, make: impl FnOnce(u64) -> T) -> u64 {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push((0, None));
            (self.slots.len() - 1) as u32
        });
        let slot = &mut self.slots[index as usize];
        let id = (u64::from(slot.0) << 32) | u64::from(index);
        slot.1 = Some(make(id));
        id
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        let (generation, value) = self.slots.get_mut((id & 0xffff_ffff) as usize)?;
        if u64::from(*generation) != id >> 32 {
            return None;
        }
        value.as_mut()
    }

    fn remove(&mut self, id: u64) -> Option<T> {
        let index = (id & 0xffff_ffff) as u32;
        let (generation, value) = self.slots.get_mut(index as usize)?;
        if u64::from(*generation) != id >> 32 || value.is_none() {
            return None;
        }
        *generation = generation.wrapping_add(1);
        self.free.push(index);
        value.take()
    }

    fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }
}

/// The posted request behind a `wr_id`: a slice, or (`None`) a drain marker.
#[derive(Debug)]
struct Posted {
    slice: Option<Slice>,
    lane: usize,
}

/// The work-request machine of one endpoint.
#[derive(Debug)]
pub struct WrMachine {
    config: WrConfig,
    local: MemoryRegions,
    remote: Vec<RemoteRegion>,
    transfers: Slab<Transfer>,
    posted: Slab<Posted>,
    queue: VecDeque<Slice>,
    lanes: Vec<Lane>,
    next_lane: usize,
    cq_outstanding: u32,
    awaiting_post: Option<(usize, usize)>,
    events: VecDeque<WrEvent>,
    stats: WrStats,
}

impl WrMachine {
    /// A machine over `config.qps` QPs (all in RTS), this side's `local` regions and the
    /// `remote` regions the peer offered (sorted and disjoint, as decoded). A send queue
    /// takes at least 2 requests and the CQ at least 2 per QP (one each is kept for
    /// drain markers).
    pub fn new(config: WrConfig, local: MemoryRegions, remote: Vec<RemoteRegion>) -> Self {
        let config = config.normalized();
        let lanes = (0..config.qps)
            .map(|_| Lane {
                state: LaneState::Up,
                outstanding: VecDeque::new(),
                since_signal: 0,
                marker_posted: false,
            })
            .collect();
        Self {
            config,
            local,
            remote,
            transfers: Slab::new(),
            posted: Slab::new(),
            queue: VecDeque::new(),
            lanes,
            next_lane: 0,
            cq_outstanding: 0,
            awaiting_post: None,
            events: VecDeque::new(),
            stats: WrStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> WrStats {
        self.stats
    }

    /// Requests posted and not yet covered by a polled completion, on QP `qp`.
    pub fn outstanding(&self, qp: usize) -> usize {
        self.lanes.get(qp).map_or(0, |l| l.outstanding.len())
    }

    /// Whether no transfer is open and no request outstanding.
    pub fn is_idle(&self) -> bool {
        self.transfers.is_empty() && self.posted.is_empty()
    }

    /// Queues a transfer of `len` bytes between `local_addr` and `remote_addr`: cut
    /// into slices of at most `slice_size` that each lie inside one local and one
    /// remote region. Nothing is queued if any part is refused.
    pub fn submit(
        &mut self,
        opcode: Opcode,
        local_addr: u64,
        remote_addr: u64,
        len: u64,
    ) -> Result<TransferId, TransferError> {
        let id = TransferId(self.transfers.insert(|id| Transfer {
            id: TransferId(id),
            opcode,
            len,
            queued: 0,
            in_flight: 0,
            error: None,
        }));
        let before = self.queue.len();
        match self.cut(id, opcode, local_addr, remote_addr, len) {
            Ok(count) => {
                if let Some(t) = self.transfers.get_mut(id.0) {
                    t.queued = count;
                }
                Ok(id)
            }
            Err(e) => {
                self.queue.truncate(before);
                self.transfers.remove(id.0);
                Err(e)
            }
        }
    }

    /// Queues the slices of transfer `id`, returning how many; on an error some may
    /// have been queued (the caller takes them back).
    fn cut(
        &mut self,
        id: TransferId,
        opcode: Opcode,
        local_addr: u64,
        remote_addr: u64,
        len: u64,
    ) -> Result<u32, TransferError> {
        if len == 0 {
            return Err(TransferError::Empty);
        }
        let local_end = local_addr.checked_add(len).ok_or(TransferError::LocalRange)?;
        remote_addr.checked_add(len).ok_or(TransferError::RemoteRange)?;
        let (mut offset, mut count) = (0, 0);
        while offset < len {
            let (l, r) = (local_addr + offset, remote_addr + offset);
            let local = self.local.find(l).ok_or(TransferError::LocalRange)?;
            if opcode == Opcode::Read && !local.access.contains(Access::LOCAL_WRITE) {
                return Err(TransferError::LocalRange);
            }
            let remote =
                find_containing(&self.remote, r, |x| (x.addr, x.end())).ok_or(TransferError::RemoteRange)?;
            let n = u64::from(self.config.slice_size)
                .min(local_end - l)
                .min(local.end() - l)
                .min(remote.end() - r);
            self.queue.push_back(Slice {
                transfer: id,
                local_addr: l,
                lkey: local.lkey,
                remote_addr: r,
                rkey: remote.rkey,
                len: n as u32,
                attempts: 0,
            });
            offset += n;
            count += 1;
        }
        Ok(count)
    }

    /// Writes the next chain into `chain` (cleared first) and gives the QP to post it
    /// on, or `None` when nothing can be posted now (no slice queued, no room, or the
    /// previous chain's result not yet handled).
    #[must_use]
    pub fn poll_post(&mut self, chain: &mut Vec<WorkRequest>) -> Option<usize> {
        chain.clear();
        if self.awaiting_post.is_some() {
            return None;
        }
        let needs_marker =
            |l: &Lane| l.state == LaneState::Failed && !l.marker_posted && !l.outstanding.is_empty();
        if let Some(qp) = self.lanes.iter().position(needs_marker) {
            chain.push(self.post_marker(qp));
            self.awaiting_post = Some((qp, 1));
            return Some(qp);
        }
        if self.queue.is_empty() {
            return None;
        }
        // One CQ entry per QP and one slot of each send queue stay free for markers.
        let cq_room = self.config.cq_capacity.saturating_sub(self.cq_outstanding + self.lanes.len() as u32);
        for step in 0..self.lanes.len() {
            let qp = (self.next_lane + step) % self.lanes.len();
            let lane = &self.lanes[qp];
            if lane.state != LaneState::Up {
                continue;
            }
            let sq_room = (self.config.max_send_wr - 1).saturating_sub(lane.outstanding.len() as u32);
            let room = sq_room.min(cq_room).min(self.config.max_chain) as usize;
            if room == 0 {
                continue;
            }
            self.next_lane = qp + 1;
            while chain.len() < room {
                let Some(slice) = self.queue.pop_front() else { break };
                if let Some(wr) = self.post_one(qp, slice) {
                    chain.push(wr);
                }
            }
            let last = chain.last_mut()?;
            // Every chain ends signaled, so that its last slot is freed by a completion.
            if !last.signaled {
                last.signaled = true;
                self.lanes[qp].since_signal = 0;
                self.stats.signaled += 1;
            }
            self.awaiting_post = Some((qp, chain.len()));
            return Some(qp);
        }
        None
    }

    /// The request for one queued slice; `None` (and dropped) if its transfer is gone,
    /// which the counters never allow.
    fn post_one(&mut self, qp: usize, slice: Slice) -> Option<WorkRequest> {
        let Some(t) = self.transfers.get_mut(slice.transfer.0) else {
            debug_assert!(false, "a queued slice outlived its transfer");
            return None;
        };
        debug_assert!(t.error.is_none(), "a failed transfer's slices are never queued");
        t.queued -= 1;
        t.in_flight += 1;
        let opcode = t.opcode;
        let wr_id = self.posted.insert(|_| Posted { slice: Some(slice), lane: qp });
        let lane = &mut self.lanes[qp];
        lane.since_signal += 1;
        let signaled = lane.since_signal >= self.config.signal_interval;
        if signaled {
            lane.since_signal = 0;
            self.stats.signaled += 1;
        }
        lane.outstanding.push_back(wr_id);
        self.cq_outstanding += 1;
        Some(WorkRequest {
            wr_id,
            opcode,
            local_addr: slice.local_addr,
            lkey: slice.lkey,
            len: slice.len,
            remote_addr: slice.remote_addr,
            rkey: slice.rkey,
            signaled,
        })
    }

    fn post_marker(&mut self, qp: usize) -> WorkRequest {
        let wr_id = self.posted.insert(|_| Posted { slice: None, lane: qp });
        let lane = &mut self.lanes[qp];
        lane.marker_posted = true;
        lane.outstanding.push_back(wr_id);
        self.cq_outstanding += 1;
        self.stats.signaled += 1;
        WorkRequest {
            wr_id,
            opcode: Opcode::Write,
            local_addr: 0,
            lkey: 0,
            len: 0,
            remote_addr: 0,
            rkey: 0,
            signaled: true,
        }
    }

    /// The outcome of posting the last chain. On a failure the requests not posted go
    /// back to the queue (no retry counted) and the QP is failed: its last posted
    /// request may be unsignaled, and only a flush makes sure it completes.
    pub fn handle_post_result(&mut self, result: Result<(), PostFailure>) {
        let Some((qp, count)) = self.awaiting_post.take() else { return };
        let posted = match result {
            Ok(()) => count,
            Err(failure) => failure.first_unposted.min(count),
        };
        self.stats.posted += posted as u64;
        if posted == count {
            return;
        }
        for _ in posted..count {
            let Some(wr_id) = self.lanes[qp].outstanding.pop_back() else { break };
            let Some(posted) = self.posted.remove(wr_id) else { continue };
            self.cq_outstanding -= 1;
            let Some(slice) = posted.slice else {
                // The drain marker itself was refused: offering it again would loop.
                // The QP must be destroyed (which ends the device's access to every
                // buffer it names) and reported with handle_qp_destroyed.
                self.events.push_back(WrEvent::MarkerRefused { qp });
                continue;
            };
            let Some(t) = self.transfers.get_mut(slice.transfer.0) else { continue };
            if t.error.is_some() {
                // Failed meanwhile (fail_all between the post and its result): not sent
                // again.
                self.slice_left(slice.transfer);
            } else {
                t.in_flight -= 1;
                t.queued += 1;
                self.queue.push_front(slice);
            }
        }
        self.fail_lane(qp);
        self.check_drained(qp);
    }

    /// One polled completion. Matched exactly once by its id: an id that is not
    /// outstanding is counted in [`WrStats::stray_completions`] and ignored.
    pub fn handle_completion(&mut self, completion: Completion) {
        let Some(qp) = self.posted.get_mut(completion.wr_id).map(|p| p.lane) else {
            self.stats.stray_completions += 1;
            return;
        };
        if !self.lanes[qp].outstanding.contains(&completion.wr_id) {
            self.stats.stray_completions += 1;
            return;
        }
        let class = completion.status.class();
        // The completion covers every earlier request of its QP, and itself.
        while let Some(wr_id) = self.lanes[qp].outstanding.pop_front() {
            let this = wr_id == completion.wr_id;
            if let Some(Posted { slice: Some(slice), .. }) = self.posted.remove(wr_id) {
                self.slice_covered(slice, class, this, completion.status);
            }
            self.cq_outstanding -= 1;
            if this {
                break;
            }
        }
        if class != StatusClass::Success {
            self.fail_lane(qp);
        }
        self.check_drained(qp);
    }

    /// What a completion of `class` means for a slice it covers (`this`: the request it
    /// names; the others are earlier ones of its QP).
    fn slice_covered(&mut self, slice: Slice, class: StatusClass, this: bool, status: WcStatus) {
        match class {
            // Earlier requests without a completion of their own were executed, in
            // order, before the one completed: a failed or flushed request always
            // completes (signaled or not), and on an RC QP completions come in order.
            _ if !this => self.slice_left(slice.transfer),
            StatusClass::Success => self.slice_left(slice.transfer),
            StatusClass::Flushed => self.slice_again(slice, status),
            StatusClass::Transient => self.slice_again(slice, status),
            StatusClass::Refused => {
                self.fail_transfer(slice.transfer, TransferError::Refused(status));
                self.slice_left(slice.transfer);
            }
        }
    }

    /// The device reported the QP fatal (or the caller gave up on it): it is no longer
    /// used, and its outstanding requests are expected to complete flushed.
    pub fn handle_qp_error(&mut self, qp: usize) {
        if qp < self.lanes.len() {
            self.fail_lane(qp);
            self.check_drained(qp);
        }
    }

    /// The QP was destroyed (or reset, which drops its requests without completions):
    /// the device touches none of its buffers any more, so its outstanding requests are
    /// sent again on other QPs, and it is drained.
    pub fn handle_qp_destroyed(&mut self, qp: usize) {
        if qp >= self.lanes.len() {
            return;
        }
        self.fail_lane(qp);
        while let Some(wr_id) = self.lanes[qp].outstanding.pop_front() {
            if let Some(Posted { slice: Some(slice), .. }) = self.posted.remove(wr_id) {
                self.slice_again(slice, WcStatus::WrFlushErr);
            }
            self.cq_outstanding -= 1;
        }
        self.check_drained(qp);
    }

    /// The drained QP `qp` is connected again (reset, RESET → RTS): it takes requests.
    pub fn handle_qp_restored(&mut self, qp: usize) -> bool {
        match self.lanes.get_mut(qp) {
            Some(lane) if lane.state == LaneState::Drained => {
                lane.state = LaneState::Up;
                lane.since_signal = 0;
                lane.marker_posted = false;
                true
            }
            _ => false,
        }
    }

    /// Fails every open transfer with `error` (each still ends only after its last
    /// completion) and drops what is queued.
    pub fn fail_all(&mut self, error: TransferError) {
        let open: Vec<TransferId> =
            self.transfers.slots.iter().filter_map(|(_, t)| t.as_ref().map(|t| t.id)).collect();
        for id in open {
            self.fail_transfer(id, error);
        }
    }

    /// What happened, oldest first.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<WrEvent> {
        self.events.pop_front()
    }

    fn slice_again(&mut self, mut slice: Slice, status: WcStatus) {
        let Some(t) = self.transfers.get_mut(slice.transfer.0) else { return };
        if t.error.is_some() {
            return self.slice_left(slice.transfer);
        }
        if slice.attempts >= self.config.max_retries {
            self.fail_transfer(slice.transfer, TransferError::RetriesExhausted(status));
            return self.slice_left(slice.transfer);
        }
        slice.attempts += 1;
        t.in_flight -= 1;
        t.queued += 1;
        self.stats.retries += 1;
        self.queue.push_back(slice);
    }

    /// A slice of the transfer has left the device (done, or given up).
    fn slice_left(&mut self, id: TransferId) {
        let Some(t) = self.transfers.get_mut(id.0) else { return };
        t.in_flight -= 1;
        self.check_done(id);
    }

    fn fail_transfer(&mut self, id: TransferId, error: TransferError) {
        let Some(t) = self.transfers.get_mut(id.0) else { return };
        if t.error.is_none() {
            t.error = Some(error);
        }
        if t.queued > 0 {
            t.queued = 0;
            self.queue.retain(|s| s.transfer != id);
        }
        self.check_done(id);
    }

    fn check_done(&mut self, id: TransferId) {
        let Some(t) = self.transfers.get_mut(id.0) else { return };
        if t.queued == 0 && t.in_flight == 0 {
            let result = t.error.map_or(Ok(t.len), Err);
            self.transfers.remove(id.0);
            self.events.push_back(WrEvent::Done { id, result });
        }
    }

    fn fail_lane(&mut self, qp: usize) {
        let lane = &mut self.lanes[qp];
        if lane.state == LaneState::Up {
            lane.state = LaneState::Failed;
            lane.marker_posted = false;
            self.events.push_back(WrEvent::QpFailed { qp });
        }
    }

    fn check_drained(&mut self, qp: usize) {
        let lane = &mut self.lanes[qp];
        if lane.state == LaneState::Failed && lane.outstanding.is_empty() {
            lane.state = LaneState::Drained;
            self.events.push_back(WrEvent::QpDrained { qp });
        }
    }
}
