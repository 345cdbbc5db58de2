//! The work-request machine's rules, driven by hand (the simulated NIC's suites in
//! `tests/rdma_sim.rs` drive it against a device model).

use alloc::vec;
use alloc::vec::Vec;

use super::endpoint::RemoteRegion;
use super::mr::{MemoryRegion, MemoryRegions};
use super::qp::Access;
use super::status::WcStatus;
use super::transfer::*;

const KIB: u64 = 1024;
const LOCAL: u64 = 0x10_0000;
const REMOTE: u64 = 0x90_0000;

fn machine(config: WrConfig) -> WrMachine {
    let mut local = MemoryRegions::new();
    let rights = Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE;
    local.register(MemoryRegion { addr: LOCAL, len: 1024 * KIB, lkey: 1, rkey: 2, access: rights }).unwrap();
    // A second, adjacent region: a transfer across the seam is cut there.
    local
        .register(MemoryRegion {
            addr: LOCAL + 1024 * KIB,
            len: 1024 * KIB,
            lkey: 3,
            rkey: 4,
            access: rights,
        })
        .unwrap();
    local
        .register(MemoryRegion {
            addr: 0x50_0000_0000,
            len: 64 * KIB,
            lkey: 5,
            rkey: 6,
            access: Access::empty(),
        })
        .unwrap();
    let remote = vec![
        RemoteRegion { addr: REMOTE, len: 512 * KIB, rkey: 7 },
        RemoteRegion { addr: REMOTE + 512 * KIB, len: 4096 * KIB, rkey: 8 },
    ];
    WrMachine::new(config, local, remote)
}

/// Posts every chain the machine gives, successfully; the chains with their QPs.
fn post_all(m: &mut WrMachine) -> Vec<(usize, Vec<WorkRequest>)> {
    let mut chains = Vec::new();
    let mut chain = Vec::new();
    while let Some(qp) = m.poll_post(&mut chain) {
        m.handle_post_result(Ok(()));
        chains.push((qp, chain.clone()));
    }
    chains
}

fn events(m: &mut WrMachine) -> Vec<WrEvent> {
    core::iter::from_fn(|| m.poll_event()).collect()
}

fn ok(wr_id: u64) -> Completion {
    Completion { wr_id, status: WcStatus::Success }
}

#[test]
fn a_transfer_is_cut_into_slices_at_the_slice_size_and_at_region_seams() {
    let mut m = machine(WrConfig { qps: 1, ..WrConfig::default() });
    // 40 KiB before the local seam, then 160 KiB after it.
    let start = LOCAL + 1024 * KIB - 40 * KIB;
    m.submit(Opcode::Write, start, REMOTE, 200 * KIB).unwrap();
    let chains = post_all(&mut m);
    let wrs: Vec<&WorkRequest> = chains.iter().flat_map(|(_, c)| c).collect();
    let lens: Vec<u32> = wrs.iter().map(|w| w.len).collect();
    assert_eq!(lens, [40 * 1024, 64 * 1024, 64 * 1024, 32 * 1024]);
    assert_eq!(wrs.iter().map(|w| w.lkey).collect::<Vec<_>>(), [1, 3, 3, 3]);
    // Contiguous on both sides.
    for pair in wrs.windows(2) {
        assert_eq!(pair[0].local_addr + u64::from(pair[0].len), pair[1].local_addr);
        assert_eq!(pair[0].remote_addr + u64::from(pair[0].len), pair[1].remote_addr);
    }
    // A remote seam cuts too: 500 KiB .. 520 KiB spans rkeys 7 and 8.
    let mut m = machine(WrConfig { qps: 1, ..WrConfig::default() });
    m.submit(Opcode::Read, LOCAL, REMOTE + 500 * KIB, 20 * KIB).unwrap();
    let wrs: Vec<WorkRequest> = post_all(&mut m).into_iter().flat_map(|(_, c)| c).collect();
    assert_eq!(wrs.iter().map(|w| (w.len, w.rkey)).collect::<Vec<_>>(), [(12 * 1024, 7), (8 * 1024, 8)]);
}

#[test]
fn ranges_outside_the_regions_are_refused_and_nothing_is_queued() {
    let mut m = machine(WrConfig::default());
    assert_eq!(m.submit(Opcode::Write, LOCAL, REMOTE, 0), Err(TransferError::Empty));
    assert_eq!(m.submit(Opcode::Write, LOCAL - 1, REMOTE, 10), Err(TransferError::LocalRange));
    assert_eq!(m.submit(Opcode::Write, LOCAL + 2048 * KIB - 10, REMOTE, 11), Err(TransferError::LocalRange));
    assert_eq!(m.submit(Opcode::Write, LOCAL, REMOTE + 4608 * KIB - 10, 11), Err(TransferError::RemoteRange));
    assert_eq!(m.submit(Opcode::Write, LOCAL, REMOTE - 1, 10), Err(TransferError::RemoteRange));
    assert_eq!(m.submit(Opcode::Write, LOCAL, u64::MAX - 5, 10), Err(TransferError::RemoteRange));
    assert_eq!(m.submit(Opcode::Write, u64::MAX - 5, REMOTE, 10), Err(TransferError::LocalRange));
    // A read lands in local memory: the region must allow local writes.
    assert_eq!(m.submit(Opcode::Read, 0x50_0000_0000, REMOTE, 10), Err(TransferError::LocalRange));
    m.submit(Opcode::Write, 0x50_0000_0000, REMOTE, 10).unwrap();
    assert_eq!(
        post_all(&mut m).iter().map(|(_, c)| c.len()).sum::<usize>(),
        1,
        "only the valid transfer was queued"
    );
}

#[test]
fn every_chain_ends_signaled_and_the_send_queue_never_holds_more_than_its_depth() {
    // One slot of each send queue is kept for a drain marker: 20 for transfers.
    let config =
        WrConfig { qps: 2, max_send_wr: 21, signal_interval: 4, max_chain: 7, ..WrConfig::default() };
    let mut m = machine(config);
    m.submit(Opcode::Write, LOCAL, REMOTE, 2048 * KIB).unwrap(); // 32 slices
    m.submit(Opcode::Read, LOCAL, REMOTE + 512 * KIB, 2048 * KIB).unwrap(); // 32 more
    let chains = post_all(&mut m);
    for (qp, chain) in &chains {
        assert!(chain.len() <= 7);
        assert!(chain.last().unwrap().signaled, "the last of every chain is signaled");
        let mut run = 0;
        for wr in chain {
            run = if wr.signaled { 0 } else { run + 1 };
            assert!(run < 4, "one in every 4 is signaled");
        }
        assert!(m.outstanding(*qp) <= 20);
    }
    assert_eq!(
        (m.outstanding(0), m.outstanding(1)),
        (20, 20),
        "both QPs are filled to their depth, no further"
    );
    assert!(
        chains.iter().any(|(qp, _)| *qp == 0) && chains.iter().any(|(qp, _)| *qp == 1),
        "spread over the QPs"
    );
    // One signaled completion frees its request and every earlier one of its QP.
    let on_qp0: Vec<&WorkRequest> = chains.iter().filter(|(qp, _)| *qp == 0).flat_map(|(_, c)| c).collect();
    let last_signaled = on_qp0.iter().rposition(|w| w.signaled).unwrap();
    m.handle_completion(ok(on_qp0[last_signaled].wr_id));
    assert_eq!(m.outstanding(0), on_qp0.len() - last_signaled - 1);
    assert!(!post_all(&mut m).is_empty(), "the freed room is used");
}

#[test]
fn the_completion_queue_bounds_what_is_outstanding_over_all_qps() {
    // One entry per QP is kept for drain markers: 10 for transfers.
    let config = WrConfig { qps: 3, max_send_wr: 100, cq_capacity: 13, ..WrConfig::default() };
    let mut m = machine(config);
    m.submit(Opcode::Write, LOCAL, REMOTE, 2048 * KIB).unwrap();
    post_all(&mut m);
    assert_eq!((0..3).map(|qp| m.outstanding(qp)).sum::<usize>(), 10);
}

#[test]
fn one_chain_at_a_time_until_its_post_result_is_handled() {
    let mut m = machine(WrConfig { max_chain: 2, ..WrConfig::default() });
    m.submit(Opcode::Write, LOCAL, REMOTE, 1024 * KIB).unwrap();
    let mut chain = Vec::new();
    assert!(m.poll_post(&mut chain).is_some());
    assert!(m.poll_post(&mut chain).is_none());
    assert!(chain.is_empty(), "the vector is cleared");
    m.handle_post_result(Ok(()));
    assert!(m.poll_post(&mut chain).is_some());
}

#[test]
fn a_transfer_is_done_once_when_its_last_completion_arrives() {
    let mut m = machine(WrConfig { qps: 1, signal_interval: 100, ..WrConfig::default() });
    let id = m.submit(Opcode::Write, LOCAL, REMOTE, 256 * KIB).unwrap();
    let chains = post_all(&mut m);
    let wrs: Vec<WorkRequest> = chains.into_iter().flat_map(|(_, c)| c).collect();
    assert_eq!(wrs.iter().filter(|w| w.signaled).count(), 1, "one chain, signaled at its end");
    assert!(events(&mut m).is_empty());
    m.handle_completion(ok(wrs[3].wr_id));
    assert_eq!(events(&mut m), [WrEvent::Done { id, result: Ok(256 * KIB) }]);
    assert!(m.is_idle());
    m.handle_completion(ok(wrs[3].wr_id));
    assert_eq!(m.stats().stray_completions, 1, "a second completion for the same id matches nothing");
    assert!(events(&mut m).is_empty());
}

#[test]
fn a_path_error_fails_the_qp_and_its_slices_go_again_on_another() {
    let mut m = machine(WrConfig { qps: 2, signal_interval: 1, max_chain: 2, ..WrConfig::default() });
    let id = m.submit(Opcode::Write, LOCAL, REMOTE, 256 * KIB).unwrap(); // 4 slices
    let chains = post_all(&mut m);
    assert_eq!(chains.iter().map(|(qp, c)| (*qp, c.len())).collect::<Vec<_>>(), [(0, 2), (1, 2)]);
    let (q0, q1) = (&chains[0].1, &chains[1].1);
    // QP 0: its first request fails for want of ACKs; its second is flushed.
    m.handle_completion(Completion { wr_id: q0[0].wr_id, status: WcStatus::RetryExcErr });
    assert_eq!(events(&mut m), [WrEvent::QpFailed { qp: 0 }]);
    m.handle_completion(Completion { wr_id: q0[1].wr_id, status: WcStatus::WrFlushErr });
    assert_eq!(events(&mut m), [WrEvent::QpDrained { qp: 0 }]);
    // Both go again, on QP 1 only (QP 0 is not restored yet), once QP 1 has room.
    m.handle_completion(ok(q1[1].wr_id));
    let again = post_all(&mut m);
    assert!(again.iter().all(|(qp, _)| *qp == 1));
    let again: Vec<WorkRequest> = again.into_iter().flat_map(|(_, c)| c).collect();
    assert_eq!(again.iter().map(|w| w.local_addr).collect::<Vec<_>>(), [q0[0].local_addr, q0[1].local_addr]);
    assert_eq!(m.stats().retries, 2);
    assert!(events(&mut m).is_empty(), "not done before its last completion");
    m.handle_completion(ok(again[1].wr_id));
    assert_eq!(events(&mut m), [WrEvent::Done { id, result: Ok(256 * KIB) }]);
    assert!(m.handle_qp_restored(0));
    assert!(!m.handle_qp_restored(0), "only a drained QP is restored");
}

#[test]
fn a_refused_access_fails_the_transfer_only_after_its_other_requests_complete() {
    let mut m = machine(WrConfig { qps: 2, signal_interval: 1, max_chain: 1, ..WrConfig::default() });
    let id = m.submit(Opcode::Read, LOCAL, REMOTE, 192 * KIB).unwrap(); // 3 slices
    let other = m.submit(Opcode::Read, LOCAL + 512 * KIB, REMOTE, 64 * KIB).unwrap();
    let wrs: Vec<(usize, WorkRequest)> =
        post_all(&mut m).into_iter().flat_map(|(qp, c)| c.into_iter().map(move |w| (qp, w))).collect();
    assert_eq!(wrs.len(), 4);
    m.handle_completion(Completion { wr_id: wrs[0].1.wr_id, status: WcStatus::RemAccessErr });
    assert_eq!(events(&mut m), [WrEvent::QpFailed { qp: wrs[0].0 }]);
    // Slice 2 of the failed transfer is on the other QP and still outstanding.
    m.handle_completion(ok(wrs[1].1.wr_id));
    assert!(events(&mut m).is_empty(), "slice 3 is still with the device");
    m.handle_completion(Completion { wr_id: wrs[2].1.wr_id, status: WcStatus::WrFlushErr });
    let got = events(&mut m);
    assert!(
        got.contains(&WrEvent::Done { id, result: Err(TransferError::Refused(WcStatus::RemAccessErr)) }),
        "{got:?}"
    );
    // The other transfer's request was flushed with its QP: it goes again and succeeds.
    m.handle_completion(Completion { wr_id: wrs[3].1.wr_id, status: WcStatus::WrFlushErr });
    events(&mut m);
    for qp in 0..2 {
        m.handle_qp_restored(qp);
    }
    let again: Vec<WorkRequest> = post_all(&mut m).into_iter().flat_map(|(_, c)| c).collect();
    assert_eq!(again.len(), 1);
    m.handle_completion(ok(again[0].wr_id));
    assert_eq!(events(&mut m), [WrEvent::Done { id: other, result: Ok(64 * KIB) }]);
}

#[test]
fn a_slice_that_keeps_failing_fails_its_transfer_after_max_retries() {
    let mut m = machine(WrConfig { qps: 1, max_retries: 3, ..WrConfig::default() });
    let id = m.submit(Opcode::Write, LOCAL, REMOTE, 10).unwrap();
    for attempt in 0..=3 {
        let wrs: Vec<WorkRequest> = post_all(&mut m).into_iter().flat_map(|(_, c)| c).collect();
        assert_eq!(wrs.len(), 1, "attempt {attempt}");
        m.handle_completion(Completion { wr_id: wrs[0].wr_id, status: WcStatus::RnrRetryExcErr });
        let got = events(&mut m);
        if attempt < 3 {
            assert!(got.contains(&WrEvent::QpDrained { qp: 0 }));
            assert!(m.handle_qp_restored(0));
        } else {
            assert!(got.contains(&WrEvent::Done {
                id,
                result: Err(TransferError::RetriesExhausted(WcStatus::RnrRetryExcErr))
            }));
        }
    }
    assert!(m.is_idle());
}

#[test]
fn a_refused_post_requeues_what_was_not_posted_and_fails_the_qp() {
    let mut m = machine(WrConfig { qps: 2, max_chain: 4, signal_interval: 100, ..WrConfig::default() });
    let id = m.submit(Opcode::Write, LOCAL, REMOTE, 256 * KIB).unwrap();
    let mut chain = Vec::new();
    assert_eq!(m.poll_post(&mut chain), Some(0));
    let posted = chain[..2].to_vec();
    m.handle_post_result(Err(PostFailure { first_unposted: 2, errno: 12 }));
    assert_eq!(events(&mut m), [WrEvent::QpFailed { qp: 0 }]);
    assert_eq!(m.outstanding(0), 2);
    // QP 0 gets its drain marker (its last posted request is unsignaled: without the
    // marker nothing would ever complete it), and the two not posted go to QP 1.
    let again = post_all(&mut m);
    assert_eq!(again.iter().map(|(qp, c)| (*qp, c.len())).collect::<Vec<_>>(), [(0, 1), (1, 2)]);
    let marker = again[0].1[0];
    assert!(marker.signaled && marker.len == 0);
    // In RC order: QP 0's two requests flush (they go again), then the marker.
    for wr in &posted {
        m.handle_completion(Completion { wr_id: wr.wr_id, status: WcStatus::WrFlushErr });
    }
    assert!(events(&mut m).is_empty(), "not drained before the marker's completion");
    m.handle_completion(Completion { wr_id: marker.wr_id, status: WcStatus::WrFlushErr });
    assert_eq!(events(&mut m), [WrEvent::QpDrained { qp: 0 }]);
    let last: Vec<WorkRequest> = post_all(&mut m).into_iter().flat_map(|(_, c)| c).collect();
    assert_eq!(last.len(), 2);
    m.handle_completion(ok(again[1].1[1].wr_id));
    m.handle_completion(ok(last[1].wr_id));
    assert_eq!(events(&mut m), [WrEvent::Done { id, result: Ok(256 * KIB) }]);
    assert_eq!(m.stats().retries, 2, "the flushed ones count; the unposted ones do not");
}

#[test]
fn fail_all_ends_queued_transfers_at_once_and_posted_ones_at_their_completions() {
    let mut m = machine(WrConfig { qps: 1, max_send_wr: 2, signal_interval: 1, ..WrConfig::default() });
    let first = m.submit(Opcode::Write, LOCAL, REMOTE, 128 * KIB).unwrap();
    let queued = m.submit(Opcode::Write, LOCAL, REMOTE, 128 * KIB).unwrap();
    let wrs: Vec<WorkRequest> = post_all(&mut m).into_iter().flat_map(|(_, c)| c).collect();
    m.fail_all(TransferError::Closed);
    assert_eq!(events(&mut m), [WrEvent::Done { id: queued, result: Err(TransferError::Closed) }]);
    m.handle_qp_error(0);
    assert_eq!(events(&mut m), [WrEvent::QpFailed { qp: 0 }]);
    for wr in &wrs {
        m.handle_completion(Completion { wr_id: wr.wr_id, status: WcStatus::WrFlushErr });
    }
    assert_eq!(
        events(&mut m),
        [WrEvent::Done { id: first, result: Err(TransferError::Closed) }, WrEvent::QpDrained { qp: 0 }]
    );
    assert!(m.is_idle());
}

#[test]
fn a_marker_covers_requests_that_executed_without_a_completion() {
    let mut m = machine(WrConfig { qps: 1, max_chain: 3, signal_interval: 100, ..WrConfig::default() });
    let id = m.submit(Opcode::Write, LOCAL, REMOTE, 192 * KIB).unwrap();
    let mut chain = Vec::new();
    assert_eq!(m.poll_post(&mut chain), Some(0));
    // Two of three posted, both unsignaled; the device executes them and says nothing.
    m.handle_post_result(Err(PostFailure { first_unposted: 2, errno: 5 }));
    assert_eq!(events(&mut m), [WrEvent::QpFailed { qp: 0 }]);
    let marker = post_all(&mut m).remove(0).1[0];
    assert_eq!(marker.len, 0);
    // The QP in ERR flushes only the marker: it covers the two, which were executed.
    m.handle_completion(Completion { wr_id: marker.wr_id, status: WcStatus::WrFlushErr });
    assert_eq!(events(&mut m), [WrEvent::QpDrained { qp: 0 }]);
    assert!(m.handle_qp_restored(0));
    let last: Vec<WorkRequest> = post_all(&mut m).into_iter().flat_map(|(_, c)| c).collect();
    assert_eq!(last.len(), 1, "only the unposted slice goes again");
    m.handle_completion(ok(last[0].wr_id));
    assert_eq!(events(&mut m), [WrEvent::Done { id, result: Ok(192 * KIB) }]);
    assert_eq!(m.stats().retries, 0);
}

#[test]
fn a_transfer_failed_between_a_post_and_its_result_is_not_sent_again() {
    let mut m = machine(WrConfig { qps: 2, ..WrConfig::default() });
    let id = m.submit(Opcode::Write, LOCAL, REMOTE, 128 * KIB).unwrap();
    let mut chain = Vec::new();
    assert_eq!(m.poll_post(&mut chain), Some(0));
    m.fail_all(TransferError::Closed);
    m.handle_post_result(Err(PostFailure { first_unposted: 0, errno: 5 }));
    let got = events(&mut m);
    assert!(got.contains(&WrEvent::Done { id, result: Err(TransferError::Closed) }), "{got:?}");
    assert!(post_all(&mut m).is_empty(), "nothing of the closed transfer is posted again");
    assert!(m.is_idle());
}

#[test]
fn a_refused_marker_is_not_offered_again_and_a_destroyed_qp_gives_its_requests_back() {
    let mut m = machine(WrConfig { qps: 2, max_chain: 2, signal_interval: 100, ..WrConfig::default() });
    let id = m.submit(Opcode::Write, LOCAL, REMOTE, 128 * KIB).unwrap();
    let wrs: Vec<(usize, Vec<WorkRequest>)> = post_all(&mut m);
    assert_eq!(wrs.len(), 1);
    m.handle_qp_error(0);
    assert_eq!(events(&mut m), [WrEvent::QpFailed { qp: 0 }]);
    let mut chain = Vec::new();
    assert_eq!(m.poll_post(&mut chain), Some(0));
    assert_eq!(chain[0].len, 0, "the marker");
    m.handle_post_result(Err(PostFailure { first_unposted: 0, errno: 5 }));
    assert_eq!(events(&mut m), [WrEvent::MarkerRefused { qp: 0 }]);
    assert_eq!(m.poll_post(&mut chain), None, "the marker is not offered again");
    m.handle_qp_destroyed(0);
    assert_eq!(events(&mut m), [WrEvent::QpDrained { qp: 0 }]);
    let again: Vec<(usize, Vec<WorkRequest>)> = post_all(&mut m);
    assert_eq!(again.iter().map(|(qp, c)| (*qp, c.len())).collect::<Vec<_>>(), [(1, 2)]);
    m.handle_completion(ok(again[0].1[1].wr_id));
    assert_eq!(events(&mut m), [WrEvent::Done { id, result: Ok(128 * KIB) }]);
}
