//! The verbs driver (feature `rdma`): opens a device with libibverbs (through
//! rdma-sys) and executes what the machines of [`crate::rdma`] decide: the
//! [`QueuePair`](super::qp::QueuePair)'s modify requests with `ibv_modify_qp`, the
//! [`WrMachine`](super::transfer::WrMachine)'s chains with `ibv_post_send`, completions
//! with `ibv_poll_cq`, node memory with `ibv_reg_mr`. Every `unsafe` block of the RDMA
//! path is in this file.
//!
//! Objects borrow what they were made from (a QP its CQ, a CQ and a registration their
//! device), so they cannot outlive it. Memory handed to [`Device::register`] must stay
//! valid while any posted work request names it: the work-request machine's rule (a
//! buffer is the machine's until its last completion) is what keeps it so.
//!
//! No RDMA device exists on the machines Larder is built and tested on; the tests that
//! need one are `#[ignore = "needs an RDMA device"]` (run them with `--ignored` where
//! there is one). [`Device::open_first`] answers `None` when there is none, and a node
//! then moves replica bytes over TCP.

use std::ffi::CStr;
use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::ptr;
use std::string::{String, ToString};
use std::vec::Vec;

use rdma_sys::{
    ___ibv_query_port, ibv_ack_cq_events, ibv_alloc_pd, ibv_close_device, ibv_comp_channel, ibv_context,
    ibv_cq, ibv_create_comp_channel, ibv_create_cq, ibv_create_qp, ibv_dealloc_pd, ibv_dereg_mr,
    ibv_destroy_comp_channel, ibv_destroy_cq, ibv_destroy_qp, ibv_free_device_list, ibv_get_cq_event,
    ibv_get_device_list, ibv_get_device_name, ibv_gid, ibv_modify_qp, ibv_mr, ibv_open_device, ibv_pd,
    ibv_poll_cq, ibv_port_attr, ibv_post_send, ibv_qp, ibv_qp_attr, ibv_qp_cap, ibv_qp_init_attr,
    ibv_qp_type, ibv_query_gid, ibv_reg_mr, ibv_req_notify_cq, ibv_send_flags, ibv_send_wr, ibv_sge, ibv_wc,
    ibv_wr_opcode,
};

use super::mr::MemoryRegion;
use super::qp::{Access, AttrMask, ModifyRequest, Mtu, QpConfig};
use super::status::WcStatus;
use super::transfer::{Completion, Opcode, PostFailure, WorkRequest};

/// A verbs call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerbsError {
    /// The call, and the error it set.
    #[error("{call} failed: {source}")]
    Call {
        /// The verbs function.
        call: &'static str,
        /// Its errno.
        source: io::Error,
    },
    /// A port attribute the machines cannot use (an MTU outside 256..4096).
    #[error("port {port} reports an unusable {what}")]
    Port {
        /// The port.
        port: u8,
        /// What.
        what: &'static str,
    },
}

fn failed(call: &'static str) -> VerbsError {
    VerbsError::Call { call, source: io::Error::last_os_error() }
}

fn failed_with(call: &'static str, errno: i32) -> VerbsError {
    VerbsError::Call { call, source: io::Error::from_raw_os_error(errno) }
}

/// An opened device, its protection domain and the port in use.
#[derive(Debug)]
pub struct Device {
    context: *mut ibv_context,
    pd: *mut ibv_pd,
    name: String,
    port: u8,
    gid_index: u8,
    gid: [u8; 16],
    lid: u16,
    mtu: Mtu,
}

// SAFETY: libibverbs objects may be used from any thread ("all verbs are thread
// safe", libibverbs' documentation); `Device` holds only the pointers and plain data.
unsafe impl Send for Device {}

impl Device {
    /// Opens the first device libibverbs lists, on `port` with GID index `gid_index`;
    /// `None` when there is no device (no RDMA hardware, or no kernel support).
    pub fn open_first(port: u8, gid_index: u8) -> Result<Option<Self>, VerbsError> {
        let mut count = 0;
        // SAFETY: `count` is a valid out-pointer; the list is freed below.
        let list = unsafe { ibv_get_device_list(&mut count) };
        if list.is_null() || count <= 0 {
            if !list.is_null() {
                // SAFETY: `list` came from ibv_get_device_list and is freed once.
                unsafe { ibv_free_device_list(list) };
            }
            return Ok(None);
        }
        // SAFETY: the list holds `count` valid device pointers until it is freed.
        let device = unsafe { *list };
        // SAFETY: `device` is a valid entry of the live list; the name is a C string
        // owned by the device, copied before the list is freed.
        let name = unsafe { CStr::from_ptr(ibv_get_device_name(device)) }.to_string_lossy().to_string();
        // SAFETY: as above; the context outlives the list (libibverbs keeps the device).
        let context = unsafe { ibv_open_device(device) };
        // SAFETY: `list` came from ibv_get_device_list and is freed once.
        unsafe { ibv_free_device_list(list) };
        if context.is_null() {
            return Err(failed("ibv_open_device"));
        }
        Self::with_context(context, name, port, gid_index).map(Some)
    }

    fn with_context(
        context: *mut ibv_context,
        name: String,
        port: u8,
        gid_index: u8,
    ) -> Result<Self, VerbsError> {
        let close = |e| {
            // SAFETY: `context` is open and nothing else refers to it yet.
            unsafe { ibv_close_device(context) };
            e
        };
        // SAFETY: an all-zero ibv_port_attr is a valid value of the plain C struct.
        let mut attr: ibv_port_attr = unsafe { core::mem::zeroed() };
        // SAFETY: `context` is open and `attr` a valid out-pointer.
        let rc = unsafe { ___ibv_query_port(context, port, &mut attr) };
        if rc != 0 {
            return Err(close(failed_with("ibv_query_port", rc)));
        }
        let mtu = Mtu::from_verbs_code(attr.active_mtu as u8).ok_or(VerbsError::Port { port, what: "MTU" });
        let mtu = mtu.map_err(close)?;
        // SAFETY: an all-zero ibv_gid is a valid value of the plain C union.
        let mut gid: ibv_gid = unsafe { core::mem::zeroed() };
        // SAFETY: `context` is open and `gid` a valid out-pointer.
        if unsafe { ibv_query_gid(context, port, i32::from(gid_index), &mut gid) } != 0 {
            return Err(close(failed("ibv_query_gid")));
        }
        // SAFETY: `context` is open.
        let pd = unsafe { ibv_alloc_pd(context) };
        if pd.is_null() {
            return Err(close(failed("ibv_alloc_pd")));
        }
        // SAFETY: every bit pattern of the union's 16 bytes is a valid `raw` array.
        let gid = unsafe { gid.raw };
        Ok(Self { context, pd, name, port, gid_index, gid, lid: attr.lid, mtu })
    }

    /// The device's name (`mlx5_0`, `rxe0`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port's GID (at the GID index in use).
    pub fn gid(&self) -> [u8; 16] {
        self.gid
    }

    /// The port's LID (0 on RoCE).
    pub fn lid(&self) -> u16 {
        self.lid
    }

    /// The port's active MTU.
    pub fn mtu(&self) -> Mtu {
        self.mtu
    }

    /// Mooncake's QP settings for this port.
    pub fn qp_config(&self) -> QpConfig {
        QpConfig { port: self.port, sgid_index: self.gid_index, mtu: self.mtu, ..QpConfig::default() }
    }

    /// Registers `len` bytes at `addr` with `access`.
    ///
    /// # Safety
    ///
    /// The memory must stay allocated and must not be reused by anyone else while the
    /// registration lives and while any posted work request names it.
    pub unsafe fn register(
        &self,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<Registration<'_>, VerbsError> {
        // SAFETY: the protection domain is live (it lives as long as `self`); the caller
        // keeps the memory valid, as this function's contract says.
        let mr = unsafe { ibv_reg_mr(self.pd, addr.cast(), len, access.bits() as i32) };
        if mr.is_null() {
            return Err(failed("ibv_reg_mr"));
        }
        Ok(Registration { mr, access, device: PhantomData })
    }

    /// A completion queue of at least `capacity` entries with a completion channel.
    pub fn create_cq(&self, capacity: u32) -> Result<CompletionQueue<'_>, VerbsError> {
        // SAFETY: the context is open.
        let channel = unsafe { ibv_create_comp_channel(self.context) };
        if channel.is_null() {
            return Err(failed("ibv_create_comp_channel"));
        }
        // SAFETY: the context and the channel are live; no CQ context pointer is used.
        let cq = unsafe { ibv_create_cq(self.context, capacity as i32, ptr::null_mut(), channel, 0) };
        if cq.is_null() {
            let e = failed("ibv_create_cq");
            // SAFETY: the channel was created above and nothing uses it.
            unsafe { ibv_destroy_comp_channel(channel) };
            return Err(e);
        }
        Ok(CompletionQueue { cq, channel, polled: core::cell::RefCell::new(Vec::new()), device: PhantomData })
    }

    /// An RC QP in RESET whose sends and receives complete into `cq`, with room for
    /// `max_send_wr` sends of one scatter/gather entry; every request is signaled only
    /// when it asks to be (`sq_sig_all = 0`).
    pub fn create_qp<'c>(
        &self,
        cq: &'c CompletionQueue<'_>,
        max_send_wr: u32,
    ) -> Result<VerbsQp<'c>, VerbsError> {
        let mut init = ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: cq.cq,
            recv_cq: cq.cq,
            srq: ptr::null_mut(),
            cap: ibv_qp_cap {
                max_send_wr,
                max_recv_wr: 1,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            qp_type: ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: the protection domain and the CQ are live; `init` is a valid attribute.
        let qp = unsafe { ibv_create_qp(self.pd, &mut init) };
        if qp.is_null() {
            return Err(failed("ibv_create_qp"));
        }
        Ok(VerbsQp { qp, sges: Vec::new(), wrs: Vec::new(), cq: PhantomData })
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: every object made from the device borrows it, so all are gone; the PD
        // and the context are released once.
        unsafe {
            ibv_dealloc_pd(self.pd);
            ibv_close_device(self.context);
        }
    }
}

/// A registered memory region.
#[derive(Debug)]
pub struct Registration<'d> {
    mr: *mut ibv_mr,
    access: Access,
    device: PhantomData<&'d Device>,
}

impl Registration<'_> {
    /// The region as the work-request machine and the peer know it.
    pub fn region(&self) -> MemoryRegion {
        // SAFETY: `mr` is live until this registration is dropped.
        let mr = unsafe { &*self.mr };
        MemoryRegion {
            addr: mr.addr as u64,
            len: mr.length as u64,
            lkey: mr.lkey,
            rkey: mr.rkey,
            access: self.access,
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        // SAFETY: the region is deregistered once; the memory itself is the caller's.
        unsafe { ibv_dereg_mr(self.mr) };
    }
}

/// A completion queue and its completion channel.
pub struct CompletionQueue<'d> {
    cq: *mut ibv_cq,
    channel: *mut ibv_comp_channel,
    polled: core::cell::RefCell<Vec<ibv_wc>>,
    device: PhantomData<&'d Device>,
}

impl core::fmt::Debug for CompletionQueue<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CompletionQueue").field("cq", &self.cq).field("fd", &self.fd()).finish()
    }
}

impl CompletionQueue<'_> {
    /// The channel's descriptor: readable when an armed CQ has a completion (wait on it
    /// with `Runtime::watch_fd`, then [`CompletionQueue::take_event`]).
    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is live until this CQ is dropped.
        unsafe { (*self.channel).fd }
    }

    /// Asks for one event on the channel at the next completion.
    pub fn arm(&self) -> Result<(), VerbsError> {
        // SAFETY: the CQ is live.
        match unsafe { ibv_req_notify_cq(self.cq, 0) } {
            0 => Ok(()),
            rc => Err(failed_with("ibv_req_notify_cq", rc)),
        }
    }

    /// Takes and acknowledges the event the channel's descriptor signalled (blocks if
    /// there is none: call it only when the descriptor is readable).
    pub fn take_event(&self) -> Result<(), VerbsError> {
        let (mut cq, mut context) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: the channel is live and both out-pointers are valid.
        if unsafe { ibv_get_cq_event(self.channel, &mut cq, &mut context) } != 0 {
            return Err(failed("ibv_get_cq_event"));
        }
        // SAFETY: one event was taken from this CQ and is acknowledged once.
        unsafe { ibv_ack_cq_events(cq, 1) };
        Ok(())
    }

    /// Polls up to `max` completions into `out`.
    pub fn poll(&self, max: usize, out: &mut Vec<Completion>) -> Result<usize, VerbsError> {
        let mut polled = self.polled.borrow_mut();
        // SAFETY: an all-zero ibv_wc is a valid value of the plain C struct.
        polled.resize_with(max, || unsafe { core::mem::zeroed() });
        // SAFETY: the CQ is live and `polled` has room for `max` entries.
        let n = unsafe { ibv_poll_cq(self.cq, max as i32, polled.as_mut_ptr()) };
        if n < 0 {
            return Err(failed_with("ibv_poll_cq", -n));
        }
        let n = n as usize;
        out.extend(
            polled[..n]
                .iter()
                .map(|wc| Completion { wr_id: wc.wr_id, status: WcStatus::from_verbs_code(wc.status) }),
        );
        Ok(n)
    }
}

impl Drop for CompletionQueue<'_> {
    fn drop(&mut self) {
        // SAFETY: every QP on this CQ borrows it, so all are destroyed; the CQ goes
        // before its channel, each once.
        unsafe {
            ibv_destroy_cq(self.cq);
            ibv_destroy_comp_channel(self.channel);
        }
    }
}

/// An RC queue pair.
pub struct VerbsQp<'c> {
    qp: *mut ibv_qp,
    sges: Vec<ibv_sge>,
    wrs: Vec<ibv_send_wr>,
    cq: PhantomData<&'c CompletionQueue<'c>>,
}

impl core::fmt::Debug for VerbsQp<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VerbsQp").field("qpn", &self.qpn()).finish()
    }
}

impl VerbsQp<'_> {
    /// The QP number the peer connects to.
    pub fn qpn(&self) -> u32 {
        // SAFETY: the QP is live until this value is dropped.
        unsafe { (*self.qp).qp_num }
    }

    /// Executes a modify request of the [`QueuePair`](super::qp::QueuePair) machine:
    /// `Err(errno)` leaves the QP as it was.
    pub fn modify(&mut self, request: &ModifyRequest) -> Result<(), i32> {
        let a = &request.attrs;
        // SAFETY: an all-zero ibv_qp_attr is a valid value of the plain C struct.
        let mut attr: ibv_qp_attr = unsafe { core::mem::zeroed() };
        attr.qp_state = a.state.verbs_code();
        attr.pkey_index = a.pkey_index;
        attr.port_num = a.port;
        attr.qp_access_flags = a.access.bits();
        attr.path_mtu = u32::from(a.path_mtu.verbs_code());
        attr.dest_qp_num = a.dest_qpn;
        attr.rq_psn = a.rq_psn.get();
        attr.sq_psn = a.sq_psn.get();
        attr.max_dest_rd_atomic = a.max_dest_rd_atomic;
        attr.min_rnr_timer = a.min_rnr_timer;
        attr.timeout = a.timeout;
        attr.retry_cnt = a.retry_cnt;
        attr.rnr_retry = a.rnr_retry;
        attr.max_rd_atomic = a.max_rd_atomic;
        if request.mask.contains(AttrMask::AV) {
            attr.ah_attr.is_global = 1;
            attr.ah_attr.grh.dgid.raw = a.av.dgid;
            attr.ah_attr.grh.sgid_index = a.av.sgid_index;
            attr.ah_attr.grh.hop_limit = a.av.hop_limit;
            attr.ah_attr.dlid = a.av.dlid;
            attr.ah_attr.port_num = a.av.port;
        }
        // SAFETY: the QP is live and `attr` holds every field the mask names.
        match unsafe { ibv_modify_qp(self.qp, &mut attr, request.mask.bits() as i32) } {
            0 => Ok(()),
            errno => Err(errno),
        }
    }

    /// Posts a chain of the work-request machine with one `ibv_post_send`.
    pub fn post(&mut self, chain: &[WorkRequest]) -> Result<(), PostFailure> {
        if chain.is_empty() {
            return Ok(());
        }
        self.sges.clear();
        self.sges.extend(chain.iter().map(|w| ibv_sge { addr: w.local_addr, length: w.len, lkey: w.lkey }));
        self.wrs.clear();
        for (i, w) in chain.iter().enumerate() {
            // SAFETY: an all-zero ibv_send_wr (null pointers, zero counts) is a valid
            // value of the C struct.
            let mut wr: ibv_send_wr = unsafe { core::mem::zeroed() };
            wr.wr_id = w.wr_id;
            // A zero-length request (a drain marker) carries no scatter/gather entry.
            if w.len > 0 {
                wr.sg_list = &mut self.sges[i];
                wr.num_sge = 1;
            }
            wr.opcode = match w.opcode {
                Opcode::Read => ibv_wr_opcode::IBV_WR_RDMA_READ,
                Opcode::Write => ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            };
            wr.send_flags = if w.signaled { ibv_send_flags::IBV_SEND_SIGNALED.0 } else { 0 };
            wr.wr.rdma.remote_addr = w.remote_addr;
            wr.wr.rdma.rkey = w.rkey;
            self.wrs.push(wr);
        }
        // Chain them only now: `wrs` no longer moves.
        let base = self.wrs.as_mut_ptr();
        for i in 0..self.wrs.len() - 1 {
            // SAFETY: `i + 1` is within `wrs`, which is not resized until the post ends.
            self.wrs[i].next = unsafe { base.add(i + 1) };
        }
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: the QP is live; the chain and its entries live in `wrs` and `sges`
        // for the whole call; the buffers they name are registered and owned by the
        // work-request machine until their completions.
        let rc = unsafe { ibv_post_send(self.qp, base, &mut bad) };
        if rc == 0 {
            return Ok(());
        }
        let first_unposted = if bad.is_null() {
            0
        } else {
            // SAFETY: `bad` points into `wrs` (ibv_post_send returns an element of the
            // chain it was given).
            unsafe { bad.offset_from(base) }.max(0) as usize
        };
        Err(PostFailure { first_unposted, errno: rc })
    }
}

impl Drop for VerbsQp<'_> {
    fn drop(&mut self) {
        // SAFETY: the QP is destroyed once; its CQ outlives it (borrowed).
        unsafe { ibv_destroy_qp(self.qp) };
    }
}

#[cfg(test)]
mod tests {
    use std::vec;

    use super::*;

    #[test]
    fn without_rdma_devices_open_first_says_none() {
        let has_devices =
            std::fs::read_dir("/sys/class/infiniband_verbs").is_ok_and(|mut d| d.next().is_some());
        let opened = Device::open_first(1, 0).expect("opening is not an error");
        assert_eq!(opened.is_some(), has_devices, "a device is opened exactly when the kernel lists one");
    }

    #[test]
    #[ignore = "needs an RDMA device"]
    fn a_loopback_write_moves_the_bytes() {
        use crate::rdma::endpoint::RemoteRegion;
        use crate::rdma::mr::MemoryRegions;
        use crate::rdma::qp::{Psn, QueuePair, RemoteQp};
        use crate::rdma::transfer::{WrConfig, WrEvent, WrMachine};

        let device = Device::open_first(1, 0).expect("open").expect("a device");
        let rights = Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE;
        let (mut local, mut remote) = (vec![7u8; 4 << 20], vec![0u8; 4 << 20]);
        // SAFETY: both vectors outlive the registrations and the QPs (declared first).
        let (l, r) = unsafe {
            (
                device.register(local.as_mut_ptr(), local.len(), rights).expect("reg"),
                device.register(remote.as_mut_ptr(), remote.len(), rights).expect("reg"),
            )
        };
        let cq = device.create_cq(1024).expect("cq");
        let cq2 = device.create_cq(1024).expect("cq");
        let mut a = device.create_qp(&cq, 256).expect("qp");
        let mut b = device.create_qp(&cq2, 256).expect("qp");
        let (qpn_a, qpn_b) = (a.qpn(), b.qpn());
        for (from, to) in [(&mut a, qpn_b), (&mut b, qpn_a)] {
            let mut machine = QueuePair::new(device.qp_config());
            let peer = RemoteQp {
                qpn: to,
                gid: device.gid(),
                lid: device.lid(),
                psn: Psn::default(),
                mtu: device.mtu(),
            };
            machine.connect(peer, Psn::default()).expect("connect");
            while let Some(m) = machine.poll_modify() {
                machine.handle_modify_result(from.modify(&m)).expect("modify");
            }
        }
        let mut regions = MemoryRegions::new();
        regions.register(l.region()).expect("region");
        let rr = r.region();
        let mut wr = WrMachine::new(
            WrConfig { qps: 1, ..WrConfig::default() },
            regions,
            vec![RemoteRegion { addr: rr.addr, len: rr.len, rkey: rr.rkey }],
        );
        wr.submit(Opcode::Write, l.region().addr, rr.addr, 4 << 20).expect("submit");
        let (mut chain, mut polled) = (Vec::new(), Vec::new());
        let mut done = false;
        while !done {
            while wr.poll_post(&mut chain).is_some() {
                let result = a.post(&chain);
                wr.handle_post_result(result);
            }
            polled.clear();
            cq.poll(64, &mut polled).expect("poll");
            for c in polled.drain(..) {
                wr.handle_completion(c);
            }
            while let Some(e) = wr.poll_event() {
                if let WrEvent::Done { result, .. } = e {
                    assert_eq!(result, Ok(4 << 20));
                    done = true;
                }
            }
        }
        drop((a, b));
        assert!(remote.iter().all(|&x| x == 7));
    }
}
