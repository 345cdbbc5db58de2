//! The endpoint codec's bounds and the handshake in every order.

use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::endpoint::*;
use super::qp::{Mtu, Psn};
use crate::codec::DecodeError;
use crate::ids::NodeId;
use crate::time::{Duration, Instant};

fn info(node: u64, nonce: u64, qps: usize) -> EndpointInfo {
    EndpointInfo {
        node: NodeId(node),
        nonce,
        gid: [node as u8; 16],
        lid: 7,
        mtu: Mtu::Mtu4096,
        qps: (0..qps)
            .map(|i| QpEndpoint { qpn: 100 + i as u32, psn: Psn::truncate(i as u32 * 1000) })
            .collect(),
        regions: vec![
            RemoteRegion { addr: 0x1000, len: 4096, rkey: 9 },
            RemoteRegion { addr: 0x3000, len: 1, rkey: 10 },
        ],
    }
}

fn encode(m: &EndpointMessage) -> Vec<u8> {
    let mut buf = vec![0u8; EndpointMessage::MAX_LEN];
    let n = m.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn messages_round_trip_and_the_largest_fits_max_len() {
    let mut big = info(1, 2, MAX_QPS);
    big.regions =
        (0..MAX_REGIONS as u64).map(|i| RemoteRegion { addr: i * 100, len: 100, rkey: i as u32 }).collect();
    for m in [
        EndpointMessage::Info(info(1, 2, 2)),
        EndpointMessage::Ready { nonce: 5 },
        EndpointMessage::Info(big),
    ] {
        let bytes = encode(&m);
        assert!(bytes.len() <= EndpointMessage::MAX_LEN);
        assert_eq!(EndpointMessage::decode(&bytes), Ok(m));
    }
    let mut big = info(1, 2, MAX_QPS);
    big.regions =
        (0..MAX_REGIONS as u64).map(|i| RemoteRegion { addr: i * 100, len: 100, rkey: i as u32 }).collect();
    assert_eq!(encode(&EndpointMessage::Info(big)).len(), EndpointMessage::MAX_LEN);
}

#[test]
fn every_truncation_and_any_trailing_byte_is_refused() {
    let bytes = encode(&EndpointMessage::Info(info(1, 2, 3)));
    for n in 0..bytes.len() {
        assert!(EndpointMessage::decode(&bytes[..n]).is_err(), "{n} bytes");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(EndpointMessage::decode(&longer), Err(DecodeError::TrailingBytes { .. })));
}

/// Encodes `info` as it is, without the encoder's checks (to make bad inputs).
fn raw(info: &EndpointInfo, qp_count: u32, region_count: u32) -> Vec<u8> {
    let mut v = vec![ENDPOINT_FORMAT_VERSION, 1];
    v.extend(info.node.0.to_le_bytes());
    v.extend(info.nonce.to_le_bytes());
    v.extend(info.gid);
    v.extend(info.lid.to_le_bytes());
    v.push(info.mtu.verbs_code());
    v.extend(qp_count.to_le_bytes());
    for qp in &info.qps {
        v.extend(qp.qpn.to_le_bytes());
        v.extend(qp.psn.get().to_le_bytes());
    }
    v.extend(region_count.to_le_bytes());
    for r in &info.regions {
        v.extend(r.addr.to_le_bytes());
        v.extend(r.len.to_le_bytes());
        v.extend(r.rkey.to_le_bytes());
    }
    v
}

#[test]
fn out_of_bounds_fields_are_refused() {
    let good = info(1, 2, 2);
    assert!(EndpointMessage::decode(&raw(&good, 2, 2)).is_ok());
    let invalid = |bytes: Vec<u8>| EndpointMessage::decode(&bytes).unwrap_err();
    let mut none = good.clone();
    none.qps.clear();
    assert!(matches!(invalid(raw(&none, 0, 2)), DecodeError::InvalidValue { what: "qp count" }));
    assert!(matches!(invalid(raw(&good, MAX_QPS as u32 + 1, 2)), DecodeError::TooLong { .. }));
    assert!(matches!(invalid(raw(&good, 2, MAX_REGIONS as u32 + 1)), DecodeError::TooLong { .. }));
    assert!(
        matches!(invalid(raw(&good, 2, u32::MAX)), DecodeError::TooLong { .. }),
        "a huge count allocates nothing"
    );
    let mut wide = good.clone();
    wide.qps[1].qpn = 1 << 24;
    assert!(matches!(invalid(raw(&wide, 2, 2)), DecodeError::InvalidValue { what: "qp number" }));
    let mut bytes = raw(&good, 2, 2);
    let psn_at = 2 + 8 + 8 + 16 + 2 + 1 + 4 + 4;
    bytes[psn_at + 3] = 1; // a PSN of 25 bits
    assert!(matches!(invalid(bytes), DecodeError::InvalidValue { what: "psn" }));
    let mut bytes = raw(&good, 2, 2);
    bytes[2 + 8 + 8 + 16 + 2] = 6; // no such MTU
    assert!(matches!(invalid(bytes), DecodeError::InvalidValue { what: "mtu" }));
    for regions in [
        vec![RemoteRegion { addr: 5, len: 0, rkey: 1 }],
        vec![RemoteRegion { addr: u64::MAX, len: 2, rkey: 1 }],
        vec![RemoteRegion { addr: 100, len: 10, rkey: 1 }, RemoteRegion { addr: 105, len: 10, rkey: 2 }],
        vec![RemoteRegion { addr: 100, len: 10, rkey: 1 }, RemoteRegion { addr: 50, len: 10, rkey: 2 }],
    ] {
        let bad = EndpointInfo { regions, ..good.clone() };
        let n = bad.regions.len() as u32;
        assert!(matches!(invalid(raw(&bad, 2, n)), DecodeError::InvalidValue { .. }), "{:?}", bad.regions);
    }
    let mut bytes = encode(&EndpointMessage::Ready { nonce: 1 });
    bytes[1] = 9;
    assert!(matches!(invalid(bytes.clone()), DecodeError::UnknownTag { .. }));
    bytes[0] = 2;
    assert!(matches!(invalid(bytes), DecodeError::UnsupportedVersion { .. }));
}

#[test]
fn the_encoder_refuses_what_the_decoder_would() {
    let mut buf = vec![0u8; 4 * EndpointMessage::MAX_LEN];
    let refused = |info: EndpointInfo| {
        EndpointMessage::Info(info).encode(&mut vec![0u8; 4 * EndpointMessage::MAX_LEN]).is_err()
    };
    assert!(refused(info(1, 2, 0)));
    assert!(refused(info(1, 2, MAX_QPS + 1)));
    let mut wide = info(1, 2, 1);
    wide.qps[0].qpn = 1 << 24;
    assert!(refused(wide));
    let mut many = info(1, 2, 1);
    many.regions =
        (0..=MAX_REGIONS as u64).map(|i| RemoteRegion { addr: i * 10, len: 10, rkey: 0 }).collect();
    assert!(refused(many));
    for regions in [
        vec![RemoteRegion { addr: 5, len: 0, rkey: 1 }],
        vec![RemoteRegion { addr: u64::MAX, len: 2, rkey: 1 }],
        vec![RemoteRegion { addr: 100, len: 10, rkey: 1 }, RemoteRegion { addr: 105, len: 10, rkey: 2 }],
        vec![RemoteRegion { addr: 100, len: 10, rkey: 1 }, RemoteRegion { addr: 50, len: 10, rkey: 2 }],
    ] {
        assert!(refused(EndpointInfo { regions: regions.clone(), ..info(1, 2, 1) }), "{regions:?}");
    }
    assert!(EndpointMessage::Info(info(1, 2, 1)).encode(&mut buf).is_ok());
}

const T0: Instant = Instant::ZERO;

fn pair(qps_a: usize, qps_b: usize) -> [EndpointHandshake; 2] {
    let timeout = Duration::from_secs(10);
    [
        EndpointHandshake::new(info(1, 11, qps_a), NodeId(2), T0, timeout),
        EndpointHandshake::new(info(2, 22, qps_b), NodeId(1), T0, timeout),
    ]
}

/// Everything `from` wants to send, as messages.
fn outbox(h: &mut EndpointHandshake) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; EndpointMessage::MAX_LEN];
    core::iter::from_fn(|| h.poll_transmit(&mut buf).map(|n| buf[..n.unwrap()].to_vec())).collect()
}

fn events(h: &mut EndpointHandshake) -> Vec<EndpointEvent> {
    core::iter::from_fn(|| h.poll_event()).collect()
}

/// Answers BringUp at once (the QPs are in RTS).
fn bring_up(h: &mut EndpointHandshake) -> Vec<EndpointEvent> {
    let got = events(h);
    if got.iter().any(|e| matches!(e, EndpointEvent::BringUp { .. })) {
        h.handle_qps_ready();
    }
    got
}

/// Rounds of both sides answering BringUp and exchanging what they send (three are
/// enough for Info, BringUp, Ready).
fn run_to_quiet(a: &mut EndpointHandshake, b: &mut EndpointHandshake) {
    for _ in 0..3 {
        bring_up(a);
        bring_up(b);
        let (ma, mb) = (outbox(a), outbox(b));
        ma.iter().for_each(|m| b.handle_message(m));
        mb.iter().for_each(|m| a.handle_message(m));
    }
}

#[test]
fn both_sides_connect_whoever_speaks_first_or_both_at_once() {
    for order in 0..3 {
        let [mut a, mut b] = pair(2, 2);
        let (from_a, from_b) = (outbox(&mut a), outbox(&mut b));
        match order {
            0 => {
                // A first: B hears A, brings up, answers Info then Ready.
                from_a.iter().for_each(|m| b.handle_message(m));
                bring_up(&mut b);
                from_b.iter().for_each(|m| a.handle_message(m));
            }
            1 => {
                from_b.iter().for_each(|m| a.handle_message(m));
                bring_up(&mut a);
                from_a.iter().for_each(|m| b.handle_message(m));
            }
            _ => {
                // Both Infos cross on the wire.
                from_b.iter().for_each(|m| a.handle_message(m));
                from_a.iter().for_each(|m| b.handle_message(m));
            }
        }
        run_to_quiet(&mut a, &mut b);
        assert_eq!(
            (a.phase(), b.phase()),
            (HandshakePhase::Connected, HandshakePhase::Connected),
            "order {order}"
        );
        assert_eq!(a.peer().map(|p| p.nonce), Some(22));
        assert_eq!(b.peer().map(|p| p.qps.len()), Some(2));
        assert_eq!(a.poll_timeout(), None, "no deadline once connected");
    }
}

#[test]
fn neither_side_is_connected_before_both_readies_have_crossed() {
    let [mut a, mut b] = pair(1, 1);
    outbox(&mut a).iter().for_each(|m| b.handle_message(m));
    outbox(&mut b).iter().for_each(|m| a.handle_message(m));
    // B's QPs are up first: its Ready reaches A, whose QPs are not yet up.
    bring_up(&mut b);
    outbox(&mut b).iter().for_each(|m| a.handle_message(m));
    let got = events(&mut a);
    assert!(matches!(got[..], [EndpointEvent::BringUp { .. }]), "{got:?}");
    assert_eq!(b.phase(), HandshakePhase::AwaitingReady);
    a.handle_qps_ready();
    assert_eq!(a.phase(), HandshakePhase::Connected, "A had B's Ready already");
    outbox(&mut a).iter().for_each(|m| b.handle_message(m));
    assert_eq!(events(&mut b), [EndpointEvent::Connected]);
}

fn failure(h: &mut EndpointHandshake) -> Option<HandshakeError> {
    events(h).into_iter().find_map(|e| match e {
        EndpointEvent::Failed(e) => Some(e),
        _ => None,
    })
}

#[test]
fn out_of_turn_messages_end_the_handshake_with_a_typed_error() {
    let [mut a, _] = pair(2, 2);
    a.handle_message(&encode(&EndpointMessage::Ready { nonce: 22 }));
    assert_eq!(failure(&mut a), Some(HandshakeError::UnexpectedReady), "Ready before Info");

    let [mut a, mut b] = pair(2, 3);
    outbox(&mut b).iter().for_each(|m| a.handle_message(m));
    assert_eq!(failure(&mut a), Some(HandshakeError::QpCountMismatch { local: 2, peer: 3 }));

    let [mut a, _] = pair(2, 2);
    a.handle_message(&encode(&EndpointMessage::Info(info(3, 1, 2))));
    assert_eq!(failure(&mut a), Some(HandshakeError::WrongNode(NodeId(3))));

    let [mut a, mut b] = pair(2, 2);
    outbox(&mut b).iter().for_each(|m| a.handle_message(m));
    a.handle_message(&encode(&EndpointMessage::Info(info(2, 23, 2))));
    assert_eq!(failure(&mut a), Some(HandshakeError::PeerRestarted));

    let [mut a, mut b] = pair(2, 2);
    outbox(&mut b).iter().for_each(|m| a.handle_message(m));
    a.handle_message(&encode(&EndpointMessage::Ready { nonce: 99 }));
    assert_eq!(failure(&mut a), Some(HandshakeError::UnexpectedReady), "a Ready for another nonce");

    let [mut a, _] = pair(2, 2);
    a.handle_message(&[1, 2, 3]);
    assert!(matches!(failure(&mut a), Some(HandshakeError::Decode(_))));
    assert_eq!(a.phase(), HandshakePhase::Failed);
    assert_eq!(a.poll_transmit(&mut [0u8; 8]), None, "a failed handshake sends nothing more");
}

#[test]
fn a_peer_that_restarts_its_endpoint_after_connecting_ends_the_connection() {
    let [mut a, mut b] = pair(1, 1);
    run_to_quiet(&mut a, &mut b);
    assert_eq!(a.phase(), HandshakePhase::Connected);
    events(&mut a);
    // A late duplicate of the same Info is ignored; a new nonce is a restart.
    a.handle_message(&encode(&EndpointMessage::Info(info(2, 22, 1))));
    assert_eq!(a.phase(), HandshakePhase::Connected);
    a.handle_message(&encode(&EndpointMessage::Info(info(2, 23, 1))));
    assert_eq!(failure(&mut a), Some(HandshakeError::PeerRestarted));
}

#[test]
fn a_ready_round_that_does_not_finish_in_time_fails() {
    let [mut a, _] = pair(1, 1);
    let deadline = a.poll_timeout().unwrap();
    assert_eq!(deadline, T0 + Duration::from_secs(10));
    a.handle_timeout(T0 + Duration::from_millis(9_999));
    assert_eq!(failure(&mut a), None);
    a.handle_timeout(deadline);
    assert_eq!(failure(&mut a), Some(HandshakeError::TimedOut));
}

#[test]
fn of_two_crossing_connections_both_sides_keep_the_same_one() {
    for (x, y) in [(1u64, 2u64), (9, 3)] {
        let (x, y) = (NodeId(x), NodeId(y));
        // The connection x dialed, as x and as y see it; then the one y dialed.
        let x_dialed = (keeps_connection(x, y, true), keeps_connection(y, x, false));
        let y_dialed = (keeps_connection(x, y, false), keeps_connection(y, x, true));
        assert_eq!(x_dialed.0, x_dialed.1, "both ends agree on x's connection");
        assert_eq!(y_dialed.0, y_dialed.1, "both ends agree on y's connection");
        assert_ne!(x_dialed.0, y_dialed.0, "exactly one survives");
    }
}

proptest! {
    /// Whatever decodes re-encodes to the same bytes (one encoding per message).
    #[test]
    fn decoding_arbitrary_bytes_never_panics_and_is_canonical(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(m) = EndpointMessage::decode(&bytes) {
            prop_assert_eq!(encode(&m), bytes);
        }
    }
}
