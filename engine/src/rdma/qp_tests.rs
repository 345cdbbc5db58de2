//! The QP table and machine against a second transcription of the kernel's RC table
//! (../shared/RDMA.md §1.3), written as text so that it shares nothing with
//! [`rc_transition`]'s code.

use alloc::vec::Vec;

use proptest::prelude::*;

use super::qp::*;

/// `from to required optional`, `-` for none; every pair not listed is invalid.
const RC_TABLE: &str = "
RESET RESET - -
RESET INIT PKEY_INDEX,PORT,ACCESS_FLAGS -
INIT RESET - -
INIT ERR - -
INIT INIT - PKEY_INDEX,PORT,ACCESS_FLAGS
INIT RTR AV,PATH_MTU,DEST_QPN,RQ_PSN,MAX_DEST_RD_ATOMIC,MIN_RNR_TIMER ALT_PATH,ACCESS_FLAGS,PKEY_INDEX
RTR RESET - -
RTR ERR - -
RTR RTS TIMEOUT,RETRY_CNT,RNR_RETRY,SQ_PSN,MAX_QP_RD_ATOMIC CUR_STATE,ALT_PATH,ACCESS_FLAGS,MIN_RNR_TIMER,PATH_MIG_STATE
RTS RESET - -
RTS ERR - -
RTS RTS - CUR_STATE,ACCESS_FLAGS,ALT_PATH,PATH_MIG_STATE,MIN_RNR_TIMER
RTS SQD - EN_SQD_ASYNC_NOTIFY
SQD RESET - -
SQD ERR - -
SQD RTS - CUR_STATE,ALT_PATH,ACCESS_FLAGS,MIN_RNR_TIMER,PATH_MIG_STATE
SQD SQD - PORT,AV,TIMEOUT,RETRY_CNT,RNR_RETRY,MAX_QP_RD_ATOMIC,MAX_DEST_RD_ATOMIC,ALT_PATH,ACCESS_FLAGS,PKEY_INDEX,MIN_RNR_TIMER,PATH_MIG_STATE
SQE RESET - -
SQE ERR - -
SQE RTS - -
ERR RESET - -
ERR ERR - -
";

fn state(name: &str) -> QpState {
    match name {
        "RESET" => QpState::Reset,
        "INIT" => QpState::Init,
        "RTR" => QpState::Rtr,
        "RTS" => QpState::Rts,
        "SQD" => QpState::Sqd,
        "SQE" => QpState::Sqe,
        "ERR" => QpState::Err,
        other => panic!("no state {other}"),
    }
}

fn mask(names: &str) -> AttrMask {
    if names == "-" {
        return AttrMask::empty();
    }
    names.split(',').fold(AttrMask::empty(), |m, name| {
        m | AttrMask::from_name(name).unwrap_or_else(|| panic!("no attribute {name}"))
    })
}

/// The table as (from, to, required, optional).
fn table() -> Vec<(QpState, QpState, AttrMask, AttrMask)> {
    RC_TABLE
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (state(f[0]), state(f[1]), mask(f[2]), mask(f[3]))
        })
        .collect()
}

fn row(from: QpState, to: QpState) -> Option<(AttrMask, AttrMask)> {
    table().into_iter().find(|r| r.0 == from && r.1 == to).map(|r| (r.2, r.3))
}

fn call(mask: AttrMask, target: QpState) -> ModifyCall {
    ModifyCall { mask: mask | AttrMask::STATE, target, claimed_current: QpState::Reset }
}

#[test]
fn the_table_is_the_kernels_for_every_pair_of_states() {
    for from in QpState::ALL {
        for to in QpState::ALL {
            let expected = row(from, to).map(|(required, optional)| TransitionRule { required, optional });
            assert_eq!(rc_transition(from, to), expected, "{from:?} -> {to:?}");
        }
    }
    assert_eq!(table().len(), 22, "the RC rows of qp_state_table");
}

#[test]
fn every_state_and_target_is_decided_as_the_kernel_decides() {
    for from in QpState::ALL {
        for to in QpState::ALL {
            let Some((required, optional)) = row(from, to) else {
                for m in [AttrMask::empty(), AttrMask::all().difference(AttrMask::CUR_STATE)] {
                    assert_eq!(
                        check_modify(from, false, call(m, to)),
                        Err(ModifyError::InvalidTransition { from, to }),
                        "{from:?} -> {to:?} is refused whatever the mask"
                    );
                }
                continue;
            };
            // CUR_STATE is judged on its own rule, tested below.
            let optional = optional.difference(AttrMask::CUR_STATE);
            assert_eq!(check_modify(from, false, call(required, to)), Ok(to), "{from:?} -> {to:?} minimal");
            assert_eq!(
                check_modify(from, false, call(required | optional, to)),
                Ok(to),
                "{from:?} -> {to:?} full"
            );
            for bit in required.iter() {
                assert_eq!(
                    check_modify(from, false, call(required.difference(bit), to)),
                    Err(ModifyError::MissingAttributes { from, to, missing: bit }),
                    "{from:?} -> {to:?} without {bit:?}"
                );
            }
            for bit in
                AttrMask::all().difference(required | optional | AttrMask::STATE | AttrMask::CUR_STATE).iter()
            {
                assert_eq!(
                    check_modify(from, false, call(required | bit, to)),
                    Err(ModifyError::UnexpectedAttributes { from, to, extra: bit }),
                    "{from:?} -> {to:?} with {bit:?}"
                );
            }
        }
    }
}

#[test]
fn without_the_state_bit_a_call_is_checked_as_a_move_to_the_same_state() {
    for from in QpState::ALL {
        let m = ModifyCall { mask: AttrMask::empty(), target: QpState::Rts, claimed_current: from };
        let expected = if row(from, from).is_some() {
            Ok(from)
        } else {
            Err(ModifyError::InvalidTransition { from, to: from })
        };
        assert_eq!(check_modify(from, false, m), expected, "{from:?}");
    }
    // RTS -> RTS takes ACCESS_FLAGS, so an attribute-only call in RTS is accepted.
    let m =
        ModifyCall { mask: AttrMask::ACCESS_FLAGS, target: QpState::Reset, claimed_current: QpState::Reset };
    assert_eq!(check_modify(QpState::Rts, false, m), Ok(QpState::Rts));
    // A claimed current state without STATE is checked as that state to itself, and
    // the QP stays where it is.
    let claimed =
        ModifyCall { mask: AttrMask::CUR_STATE, target: QpState::Rts, claimed_current: QpState::Rts };
    assert_eq!(check_modify(QpState::Reset, false, claimed), Ok(QpState::Reset));
    // RTR -> RTR is not a transition.
    assert!(check_modify(QpState::Rtr, false, m).is_err());
}

#[test]
fn the_current_state_may_be_claimed_only_as_rtr_rts_sqd_or_sqe() {
    for claimed in QpState::ALL {
        let m = ModifyCall {
            mask: AttrMask::STATE | AttrMask::CUR_STATE,
            target: QpState::Rts,
            claimed_current: claimed,
        };
        let got = check_modify(QpState::Reset, false, m);
        match claimed {
            QpState::Rts | QpState::Sqd => assert_eq!(got, Ok(QpState::Rts), "{claimed:?}"),
            // RTR -> RTS needs its attributes; SQE -> RTS takes no CUR_STATE on RC.
            QpState::Rtr => assert!(matches!(got, Err(ModifyError::MissingAttributes { .. })), "{got:?}"),
            QpState::Sqe => assert!(matches!(got, Err(ModifyError::UnexpectedAttributes { .. })), "{got:?}"),
            _ => assert_eq!(got, Err(ModifyError::CurrentStateNotAllowed { claimed }), "{claimed:?}"),
        }
    }
}

#[test]
fn the_pairs_that_are_easy_to_get_wrong_are_refused() {
    use QpState as S;
    for (from, to) in [
        (S::Reset, S::Err),
        (S::Rtr, S::Rtr),
        (S::Sqe, S::Sqe),
        (S::Rtr, S::Sqd),
        (S::Init, S::Rts),
        (S::Reset, S::Rtr),
        (S::Err, S::Init),
    ] {
        assert_eq!(
            check_modify(from, false, call(AttrMask::empty(), to)),
            Err(ModifyError::InvalidTransition { from, to })
        );
    }
}

#[test]
fn a_draining_send_queue_may_only_move_to_err() {
    for to in QpState::ALL {
        let got = check_modify(QpState::Sqd, true, call(AttrMask::empty(), to));
        match to {
            QpState::Err => assert_eq!(got, Ok(to)),
            _ => assert_eq!(got, Err(ModifyError::Draining), "{to:?}"),
        }
    }
    // An attribute-only call (no STATE bit) is not a state change.
    let m = ModifyCall { mask: AttrMask::TIMEOUT, target: QpState::Rts, claimed_current: QpState::Sqd };
    assert_eq!(check_modify(QpState::Sqd, true, m), Ok(QpState::Sqd));
}

#[test]
fn psns_are_24_bits() {
    assert_eq!(Psn::new(Psn::MAX).map(Psn::get), Some(0xff_ffff));
    assert_eq!(Psn::new(1 << 24), None);
    assert_eq!(Psn::truncate(0x1234_5678).get(), 0x34_5678);
}

#[test]
fn mtus_and_states_keep_the_verbs_numbers() {
    for (i, s) in QpState::ALL.iter().enumerate() {
        assert_eq!(s.verbs_code(), i as u32);
        assert_eq!(QpState::from_verbs_code(i as u32), Some(*s));
    }
    assert_eq!(QpState::from_verbs_code(7), None);
    for code in 1..=5u8 {
        let mtu = Mtu::from_verbs_code(code).unwrap();
        assert_eq!(mtu.verbs_code(), code);
        assert_eq!(mtu.bytes(), 128 << code);
    }
    assert_eq!(Mtu::from_verbs_code(0), None);
}

fn remote() -> RemoteQp {
    RemoteQp { qpn: 0x11, gid: [7; 16], lid: 3, psn: Psn::truncate(500), mtu: Mtu::Mtu1024 }
}

/// Runs the machine's plan against [`check_modify`] as a device would, returning the
/// requests executed.
fn run(qp: &mut QueuePair, device_state: &mut QpState) -> Vec<ModifyRequest> {
    let mut done = Vec::new();
    while let Some(request) = qp.poll_modify() {
        let result = check_modify(*device_state, false, request.call());
        *device_state = result.unwrap_or(*device_state);
        qp.handle_modify_result(result.map(|_| ()).map_err(|_| 22)).unwrap();
        done.push(request);
    }
    done
}

#[test]
fn connect_brings_a_qp_to_rts_with_the_peers_numbers_and_the_smaller_mtu() {
    let mut qp = QueuePair::new(QpConfig::default());
    let mut device = QpState::Reset;
    qp.connect(remote(), Psn::truncate(42)).unwrap();
    assert!(!qp.can_post());
    let done = run(&mut qp, &mut device);
    assert_eq!(
        done.iter().map(|r| r.attrs.state).collect::<Vec<_>>(),
        [QpState::Init, QpState::Rtr, QpState::Rts]
    );
    assert_eq!((qp.state(), device), (QpState::Rts, QpState::Rts));
    assert!(qp.can_post());
    let rtr = done[1].attrs;
    assert_eq!(
        (rtr.dest_qpn, rtr.rq_psn.get(), rtr.path_mtu, rtr.av.dgid, rtr.av.dlid),
        (0x11, 500, Mtu::Mtu1024, [7; 16], 3)
    );
    assert_eq!(done[2].attrs.sq_psn.get(), 42);
}

#[test]
fn after_a_device_error_the_qp_resets_and_reconnects_with_new_psns() {
    let mut qp = QueuePair::new(QpConfig::default());
    let mut device = QpState::Reset;
    qp.connect(remote(), Psn::truncate(1)).unwrap();
    run(&mut qp, &mut device);
    qp.handle_device_error();
    device = QpState::Err;
    assert!(!qp.can_post());
    assert_eq!(qp.connect(remote(), Psn::truncate(2)), Err(QpError::NotReset(QpState::Err)));
    qp.reset();
    run(&mut qp, &mut device);
    assert_eq!((qp.state(), device), (QpState::Reset, QpState::Reset));
    qp.connect(remote(), Psn::truncate(9)).unwrap();
    let done = run(&mut qp, &mut device);
    assert_eq!((qp.state(), done[2].attrs.sq_psn.get()), (QpState::Rts, 9));
}

#[test]
fn a_failed_modify_leaves_the_state_and_drops_the_plan() {
    let mut qp = QueuePair::new(QpConfig::default());
    qp.connect(remote(), Psn::default()).unwrap();
    let init = qp.poll_modify().unwrap();
    assert_eq!(qp.poll_modify(), None, "one modify outstanding at a time");
    assert_eq!(
        qp.handle_modify_result(Err(12)),
        Err(QpError::ModifyFailed { to: init.attrs.state, errno: 12 })
    );
    assert_eq!(qp.state(), QpState::Reset);
    assert_eq!(qp.poll_modify(), None);
    assert_eq!(qp.handle_modify_result(Ok(())), Err(QpError::NoModifyOutstanding));
    qp.connect(remote(), Psn::default()).unwrap();
}

#[test]
fn fail_moves_a_connected_qp_to_err_and_does_nothing_in_reset() {
    let mut qp = QueuePair::new(QpConfig::default());
    qp.fail();
    assert_eq!(qp.poll_modify(), None, "RESET -> ERR is not a transition");
    let mut device = QpState::Reset;
    qp.connect(remote(), Psn::default()).unwrap();
    run(&mut qp, &mut device);
    qp.fail();
    run(&mut qp, &mut device);
    assert_eq!((qp.state(), device), (QpState::Err, QpState::Err));
}

#[test]
fn a_peer_qp_number_over_24_bits_is_refused() {
    let mut qp = QueuePair::new(QpConfig::default());
    assert_eq!(
        qp.connect(RemoteQp { qpn: 1 << 24, ..remote() }, Psn::default()),
        Err(QpError::BadQpNumber(1 << 24))
    );
}

fn any_state() -> impl Strategy<Value = QpState> {
    (0..7u32).prop_map(|c| QpState::from_verbs_code(c).unwrap())
}

proptest! {
    /// Any mask, any pair of states: accepted exactly when the text table says so.
    #[test]
    fn random_calls_are_accepted_exactly_as_the_table_says(
        from in any_state(), to in any_state(), bits in any::<u32>(), draining in any::<bool>()
    ) {
        let mask = AttrMask::from_bits_truncate(bits).difference(AttrMask::CUR_STATE);
        let got = check_modify(from, draining, ModifyCall { mask, target: to, claimed_current: from });
        let effective_to = if mask.contains(AttrMask::STATE) { to } else { from };
        let allowed = match row(from, effective_to) {
            _ if from == QpState::Sqd && draining && mask.contains(AttrMask::STATE) && effective_to != QpState::Err => false,
            Some((required, optional)) => mask.contains(required) && (required | optional | AttrMask::STATE).contains(mask),
            None => false,
        };
        prop_assert_eq!(got.is_ok(), allowed, "{:?} -> {:?} mask {:?}: {:?}", from, effective_to, mask, got);
        if let Ok(state) = got {
            prop_assert_eq!(state, if mask.contains(AttrMask::STATE) { to } else { from });
        }
    }
}
