//! The QP, endpoint and work-request machines against the simulated NIC: random
//! transfer sizes and fault schedules; every transfer ends exactly once, its bytes are
//! the source's, no buffer is released while the device can touch it, the send queue
//! never overflows, and failed QPs come back.

use std::collections::HashSet;

use larder_engine::rdma::sim::{Faults, LinkConfig, LinkStats, NicStats, SimLink};
use larder_engine::rdma::status::WcStatus;
use larder_engine::rdma::transfer::{Opcode, TransferError, WrConfig, WrStats};
use proptest::prelude::*;

mod rdma {
    use super::*;

    const REGION: usize = 4 << 20;

    fn link(wr: WrConfig, faults: Faults, seed: u64) -> SimLink {
        SimLink::new(LinkConfig { wr, local_len: REGION, remote_len: REGION, faults, seed })
    }

    /// The bytes a region starts with: one pattern per side, made once.
    fn pattern(salt: u8) -> &'static [u8] {
        static PATTERNS: std::sync::OnceLock<[Vec<u8>; 2]> = std::sync::OnceLock::new();
        let make = |salt: u8| {
            (0..REGION).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 8) as u8).collect()
        };
        &PATTERNS.get_or_init(|| [make(1), make(2)])[usize::from(salt - 1)]
    }

    /// A transfer of the test: where, how long, which way.
    #[derive(Debug, Clone, Copy)]
    struct Case {
        opcode: Opcode,
        offset: u64,
        len: u64,
    }

    fn cases() -> impl Strategy<Value = Vec<Case>> {
        prop::collection::vec(
            (any::<bool>(), 0u64..(3 << 20), 1u64..(300 << 10)).prop_map(|(read, offset, len)| Case {
                opcode: if read { Opcode::Read } else { Opcode::Write },
                offset,
                len,
            }),
            1..12,
        )
    }

    fn faults() -> impl Strategy<Value = Faults> {
        (0.0..0.2f64, 0.0..0.1f64, prop::bool::weighted(0.3), 0.0..0.02f64, 0.0..0.1f64, 0u32..8, 0.0..0.5f64)
            .prop_map(|(lost_packet, rnr, access, qp_error, refused_post, delay, eager)| Faults {
                lost_packet,
                rnr,
                remote_access: if access { 0.01 } else { 0.0 },
                qp_error,
                refused_post,
                max_completion_delay: delay,
                eager,
            })
    }

    /// What one run did.
    #[derive(Debug, Default)]
    struct Outcome {
        failures: Vec<TransferError>,
        link: LinkStats,
        wr: WrStats,
        nic: NicStats,
    }

    /// Runs `cases` over disjoint ranges (so that each transfer's bytes can be checked
    /// on its own) and checks every rule; the transfers that failed and why.
    fn run_and_check(wr: WrConfig, faults: Faults, seed: u64, cases: &[Case]) -> Vec<TransferError> {
        run_and_check_outcome(wr, faults, seed, cases).failures
    }

    fn run_and_check_outcome(wr: WrConfig, faults: Faults, seed: u64, cases: &[Case]) -> Outcome {
        let mut link = link(wr, faults, seed);
        let (local, remote) = (link.local.addr, link.remote.addr);
        link.nic.region_bytes_mut(local).unwrap().copy_from_slice(pattern(1));
        link.nic.region_bytes_mut(remote).unwrap().copy_from_slice(pattern(2));
        let mut submitted = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            // Disjoint slots of the regions: transfer i owns [i * 320 KiB, +len).
            let at = i as u64 * (320 << 10) + case.offset % (8 << 10);
            let id = link.submit(case.opcode, at, at, case.len).expect("in range");
            submitted.push((id, *case, at));
        }
        let done = link.run();
        let ids: Vec<_> = done.iter().map(|d| d.0).collect();
        assert_eq!(ids.len(), submitted.len(), "every transfer ends");
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "and exactly once");
        let stats = link.stats();
        assert_eq!(stats.released_early, 0, "a buffer was released while the device could touch it");
        assert_eq!(stats.posts_overflowed, 0, "the machine over-filled a send queue");
        let nic = link.nic.stats();
        assert_eq!(nic.cq_overruns, 0, "the completion queue overflowed");
        assert_eq!(nic.cq_bound_exceeded, 0, "more requests held slots than the CQ has entries");
        assert_eq!(nic.sq_full, 0);
        assert_eq!(nic.discarded, stats.discarded_by_destroy, "a reset discarded requests or completions");
        assert_eq!(link.machine.stats().stray_completions, 0, "a completion matched no outstanding request");
        assert!(link.machine.is_idle());
        let mut outcome =
            Outcome { link: stats, wr: link.machine.stats(), nic: link.nic.stats(), ..Outcome::default() };
        for (id, case, at) in submitted {
            let result = done.iter().find(|d| d.0 == id).unwrap().1;
            let (dst, src_salt) = match case.opcode {
                Opcode::Write => (remote, 1),
                Opcode::Read => (local, 2),
            };
            let range = at as usize..(at + case.len) as usize;
            match result {
                Ok(n) => {
                    assert_eq!(n, case.len);
                    let got = &link.nic.region_bytes(dst).unwrap()[range.clone()];
                    assert!(got == &pattern(src_salt)[range], "{case:?}: other bytes arrived");
                }
                Err(e) => outcome.failures.push(e),
            }
        }
        outcome
    }

    #[test]
    fn without_faults_every_transfer_completes_with_its_bytes() {
        let cases: Vec<Case> = (0..10)
            .map(|i| Case {
                opcode: if i % 2 == 0 { Opcode::Write } else { Opcode::Read },
                offset: i * 777,
                len: 1 + i * 29_000,
            })
            .collect();
        let failures = run_and_check(WrConfig::default(), Faults::default(), 1, &cases);
        assert!(failures.is_empty(), "{failures:?}");
    }

    #[test]
    fn lost_packets_and_broken_qps_are_retried_and_the_qps_rebuilt() {
        let faults =
            Faults { lost_packet: 0.6, qp_error: 0.05, max_completion_delay: 4, ..Faults::default() };
        let wr = WrConfig { max_retries: 50, ..WrConfig::default() };
        let mut link = link(wr, faults, 7);
        for i in 0..8u64 {
            link.submit(Opcode::Write, i * (320 << 10), i * (320 << 10), 256 << 10).unwrap();
        }
        let done = link.run();
        assert_eq!(done.len(), 8);
        assert!(done.iter().all(|d| d.1.is_ok()), "{done:?}");
        assert!(link.stats().qps_rebuilt > 0, "the faults broke QPs and they were rebuilt");
        assert!(link.machine.stats().retries > 0);
        assert_eq!(link.stats().released_early, 0);
    }

    #[test]
    fn fault_schedules_exercise_every_recovery_path() {
        let faults = Faults {
            lost_packet: 0.6,
            rnr: 0.05,
            remote_access: 0.01,
            qp_error: 0.02,
            refused_post: 0.1,
            max_completion_delay: 4,
            eager: 0.3,
        };
        let wr = WrConfig { max_send_wr: 16, signal_interval: 5, max_chain: 8, ..WrConfig::default() };
        let cases: Vec<Case> = (0..12)
            .map(|i| Case {
                opcode: if i % 3 == 0 { Opcode::Read } else { Opcode::Write },
                offset: i * 1000,
                len: 200_000,
            })
            .collect();
        let mut total = Outcome::default();
        for seed in 0..16 {
            let o = run_and_check_outcome(wr, faults, seed, &cases);
            total.failures.extend(o.failures);
            total.link.qps_rebuilt += o.link.qps_rebuilt;
            total.link.posts_failed += o.link.posts_failed;
            total.wr.retries += o.wr.retries;
            total.nic.errors += o.nic.errors;
            total.nic.flushed += o.nic.flushed;
        }
        assert!(total.link.qps_rebuilt > 0 && total.link.posts_failed > 0, "{total:?}");
        assert!(total.wr.retries > 0 && total.nic.errors > 0 && total.nic.flushed > 0, "{total:?}");
        assert!(total.failures.contains(&TransferError::Refused(WcStatus::RemAccessErr)), "{total:?}");
        assert!(total.failures.len() < 12 * 16 / 4, "most transfers complete despite the faults: {total:?}");
    }

    #[test]
    fn deep_send_queues_on_a_small_cq_keep_within_the_cq() {
        let wr = WrConfig { qps: 4, max_send_wr: 64, cq_capacity: 16, max_chain: 8, ..WrConfig::default() };
        let cases: Vec<Case> =
            (0..12).map(|_| Case { opcode: Opcode::Write, offset: 0, len: 256 << 10 }).collect();
        let o = run_and_check_outcome(wr, Faults { max_completion_delay: 6, ..Faults::default() }, 9, &cases);
        assert!(o.failures.is_empty());
    }

    /// A post refused after the device already executed the requests before the
    /// refusal, all unsignaled: nothing would ever complete them but the drain marker.
    #[test]
    fn requests_executed_before_a_refused_post_are_completed_by_the_drain_marker() {
        let wr = WrConfig { qps: 2, signal_interval: 100, max_chain: 4, ..WrConfig::default() };
        let mut link = link(wr, Faults { eager: 1.0, ..Faults::default() }, 4);
        link.nic.refuse_next_post(3);
        let id = link.submit(Opcode::Write, 0, 0, 256 << 10).unwrap();
        let done = link.run();
        assert_eq!(done, [(id, Ok(256 << 10))]);
        assert_eq!((link.stats().posts_failed, link.stats().qps_rebuilt), (1, 1));
        assert!(link.machine.is_idle());
    }

    #[test]
    fn a_refused_access_fails_its_transfer_with_a_typed_error() {
        let faults = Faults { remote_access: 1.0, ..Faults::default() };
        let failures = run_and_check(
            WrConfig::default(),
            faults,
            3,
            &[Case { opcode: Opcode::Read, offset: 0, len: 100_000 }],
        );
        assert_eq!(failures, [TransferError::Refused(WcStatus::RemAccessErr)]);
    }

    #[test]
    fn a_peer_that_never_answers_exhausts_the_retries() {
        let faults = Faults { lost_packet: 1.0, ..Faults::default() };
        let wr = WrConfig { max_retries: 4, ..WrConfig::default() };
        let failures = run_and_check(wr, faults, 5, &[Case { opcode: Opcode::Write, offset: 0, len: 10 }]);
        assert_eq!(failures, [TransferError::RetriesExhausted(WcStatus::RetryExcErr)]);
    }

    use larder_engine::rdma::mr::MemoryRegion;
    use larder_engine::rdma::sim::{CqId, HostId, SimNic};
    use larder_engine::rdma::transfer::WorkRequest;

    /// A device with two hosts, a 4 KiB region on each and one connected pair of QPs
    /// with `depth` send slots; the initiator's host, regions, CQ and QP number.
    fn connected_pair(depth: usize) -> (SimNic, HostId, MemoryRegion, MemoryRegion, CqId, u32) {
        use larder_engine::rdma::qp::{Access, Mtu, QpConfig, QueuePair, RemoteQp};
        let mut nic = SimNic::new(1, Faults::default());
        let (a, b) = (nic.add_host(), nic.add_host());
        let rights = Access::LOCAL_WRITE | Access::REMOTE_WRITE;
        let (local, remote) = (nic.register(a, 4096, rights), nic.register(b, 4096, rights));
        let cq = nic.create_cq(64);
        let (qa, qb) = (nic.create_qp(a, cq, depth), nic.create_qp(b, cq, depth));
        for (qpn, peer) in [(qa, qb), (qb, qa)] {
            let mut qp = QueuePair::new(QpConfig::default());
            let remote =
                RemoteQp { qpn: peer, gid: [0; 16], lid: 0, psn: Default::default(), mtu: Mtu::Mtu4096 };
            qp.connect(remote, Default::default()).unwrap();
            while let Some(m) = qp.poll_modify() {
                qp.handle_modify_result(nic.modify_qp(qpn, &m)).unwrap();
            }
        }
        (nic, a, local, remote, cq, qa)
    }

    fn write(local: &MemoryRegion, remote: &MemoryRegion, wr_id: u64, signaled: bool) -> WorkRequest {
        WorkRequest {
            wr_id,
            opcode: Opcode::Write,
            local_addr: local.addr,
            lkey: local.lkey,
            len: 8,
            remote_addr: remote.addr,
            rkey: remote.rkey,
            signaled,
        }
    }

    /// The device rule the machine's signaling exists for: a queue filled with
    /// unsignaled requests stays full after they execute.
    #[test]
    fn the_simulated_device_never_frees_slots_of_unsignaled_requests_alone() {
        use larder_engine::rdma::sim::ENOMEM;
        let (mut nic, _, local, remote, cq, qp) = connected_pair(4);
        let chain: Vec<WorkRequest> = (1..=4).map(|id| write(&local, &remote, id, false)).collect();
        nic.post_send(qp, &chain).unwrap();
        while nic.step() {}
        assert_eq!(nic.stats().executed, 4);
        assert_eq!(nic.poll_cq(cq, 16, &mut Vec::new()), 0);
        let refused = nic.post_send(qp, &[write(&local, &remote, 5, true)]).unwrap_err();
        assert_eq!((refused.first_unposted, refused.errno), (0, ENOMEM));
    }

    /// ... and one polled completion frees its request and every earlier one of its QP.
    #[test]
    fn one_polled_completion_frees_the_slots_of_its_qps_earlier_requests() {
        let (mut nic, host, local, remote, cq, qp) = connected_pair(4);
        let chain: Vec<WorkRequest> = (1..=4).map(|id| write(&local, &remote, id, id == 4)).collect();
        nic.post_send(qp, &chain).unwrap();
        while nic.step() {}
        assert!(nic.touches(host, local.addr, 8), "executed, but no completion polled yet");
        assert_eq!(nic.poll_cq(cq, 16, &mut Vec::new()), 1);
        assert!(!nic.touches(host, local.addr, 8));
        let again: Vec<WorkRequest> = (5..=8).map(|id| write(&local, &remote, id, id == 8)).collect();
        nic.post_send(qp, &again).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random sizes, directions and fault schedules: the rules hold, and a failure
        /// is only ever one the faults can cause.
        #[test]
        fn random_transfers_under_random_faults_keep_every_rule(
            cases in cases(), faults in faults(), seed in any::<u64>(), qps in 1usize..4,
            max_send_wr in 4u32..64, signal_interval in 1u32..16, cq_capacity in 8u32..256,
        ) {
            let wr = WrConfig { qps, max_send_wr, signal_interval, cq_capacity, max_chain: 8, ..WrConfig::default() };
            for failure in run_and_check(wr, faults, seed, &cases) {
                match failure {
                    TransferError::Refused(WcStatus::RemAccessErr) => prop_assert!(faults.remote_access > 0.0),
                    TransferError::RetriesExhausted(_) => prop_assert!(
                        faults.lost_packet + faults.rnr + faults.qp_error + faults.refused_post + faults.remote_access > 0.0,
                        "retries exhausted without faults"
                    ),
                    other => prop_assert!(false, "unexpected failure {:?}", other),
                }
            }
        }
    }
}
