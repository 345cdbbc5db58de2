//! Round trips and strictness for every message.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use smallvec::smallvec;

use super::MasterError;
use super::*;
use crate::descriptor::{DiskReplica, MemoryReplica};
use crate::ids::{BucketId, Incarnation, NodeId, SegmentId};
use crate::key::{Key, KeyRef, MAX_KEY_LEN};

fn k(s: &str) -> KeyRef<'_> {
    KeyRef::new(s.as_bytes()).unwrap()
}

fn mem() -> MemoryReplica {
    MemoryReplica { segment: SegmentId(4), offset: 8192, len: 65536 }
}

fn disk() -> DiskReplica {
    DiskReplica { node: NodeId(3), bucket: BucketId(17), offset: 4096, len: 65536, crc32c: 0xabcd_ef01 }
}

fn list() -> ReplicaList {
    ReplicaList {
        version: ObjectVersion(9),
        size: 65536,
        lease: Duration::from_secs(10),
        crc32c: Some(0xcafe_f00d),
        replicas: smallvec![ReplicaDescriptor::Memory(mem()), ReplicaDescriptor::Disk(disk())],
    }
}

fn grant() -> PutGrant {
    PutGrant { version: ObjectVersion(9), replicas: smallvec![mem(), mem()] }
}

fn requests() -> Vec<Request<'static>> {
    let (a, b) = (k("alpha"), k("beta"));
    let v = ObjectVersion(42);
    let n = NodeId(7);
    vec![
        Request::PutStart { writer: n, key: a, size: 1 << 20, replicas: 2 },
        Request::PutEnd { writer: n, key: a, version: v, crc32c: 0xdead_beef },
        Request::PutRevoke { writer: n, key: a, version: v },
        Request::GetReplicaList { key: a },
        Request::Exists { key: b },
        Request::Remove { key: a, force: true },
        Request::RemoveAll { force: false },
        Request::MountSegment { node: n, segment: SegmentId(1), size: 1 << 30 },
        Request::RestoreSegment { node: n, segment: SegmentId(1), size: 1 << 30 },
        Request::RestoreReplicas {
            node: n,
            segment: SegmentId(1),
            items: vec![
                RestoredReplica { key: a, version: v, offset: 0, len: 4096, crc32c: 1 },
                RestoredReplica { key: b, version: v.next(), offset: 8192, len: 1, crc32c: u32::MAX },
            ],
        },
        Request::UnmountSegment { node: n, segment: SegmentId(1) },
        Request::Ping { node: n, incarnation: Incarnation(5), has_storage: true },
        Request::AddDiskReplica { key: a, version: v, replica: disk(), origin: DiskReplicaOrigin::Recovered },
        Request::RemoveDiskReplica { node: n, key: a, version: v },
        Request::PersistFailed { node: n, key: b, version: v },
        Request::BatchPutStart { writer: n, replicas: 1, items: vec![(a, 10), (b, 20)] },
        Request::BatchPutEnd { writer: n, items: vec![(a, v, 1), (b, v.next(), u32::MAX)] },
        Request::BatchPutRevoke { writer: n, items: vec![(b, v)] },
        Request::BatchGetReplicaList { keys: vec![a, b] },
        Request::BatchExists { keys: vec![] },
        Request::BatchRemove { force: true, keys: vec![a] },
        Request::Locate { segment: SegmentId(77) },
        Request::Flush,
        Request::FlushStatus { barrier: ObjectVersion(12) },
        Request::LocateNode { node: NodeId(5) },
        Request::ReportCrcFailures { reporter: n, count: 3 },
    ]
}

fn responses() -> Vec<Response> {
    let e = MasterError::ObjectHasLease;
    vec![
        Response::PutStart(Ok(grant())),
        Response::PutStart(Err(MasterError::NoSpace)),
        Response::PutEnd(Ok(())),
        Response::PutRevoke(Err(MasterError::NotWriter)),
        Response::GetReplicaList(Ok(list())),
        Response::GetReplicaList(Ok(ReplicaList { crc32c: None, ..list() })),
        Response::GetReplicaList(Err(MasterError::ObjectNotFound)),
        Response::Exists(true),
        Response::Remove(Err(e)),
        Response::RemoveAll(RemoveAllSummary { removed: 5, skipped: 1 }),
        Response::MountSegment(Ok(())),
        Response::RestoreSegment(Err(MasterError::SegmentAlreadyMounted)),
        Response::RestoreReplicas(vec![Ok(()), Err(MasterError::StaleVersion)]),
        Response::UnmountSegment(Err(MasterError::SegmentNotFound)),
        Response::Ping(PingReply { outcome: PingOutcome::Restarted, node_ttl: Duration::from_secs(10) }),
        Response::AddDiskReplica(Err(MasterError::StaleVersion)),
        Response::RemoveDiskReplica(Ok(())),
        Response::PersistFailed(Ok(())),
        Response::BatchPutStart(vec![Ok(Box::new(grant())), Err(MasterError::ObjectAlreadyExists)]),
        Response::BatchPutEnd(vec![Ok(()), Err(MasterError::PutNotInProgress)]),
        Response::BatchPutRevoke(vec![]),
        Response::BatchGetReplicaList(vec![Ok(Box::new(list())), Err(MasterError::ReplicaNotReady)]),
        Response::BatchExists(vec![true, false, true]),
        Response::BatchRemove(vec![Err(e), Ok(())]),
        Response::Locate(Ok(Location { node: NodeId(3), serves: Some("10.1.2.3:4000".parse().unwrap()) })),
        Response::Locate(Ok(Location { node: NodeId(3), serves: Some("[fe80::1]:9".parse().unwrap()) })),
        Response::Locate(Ok(Location { node: NodeId(3), serves: None })),
        Response::Locate(Err(MasterError::SegmentNotFound)),
        Response::LocateNode(Ok(Location { node: NodeId(5), serves: Some("127.0.0.1:80".parse().unwrap()) })),
        Response::LocateNode(Err(MasterError::NodeNotRegistered)),
        Response::ReportCrcFailures(Ok(())),
        Response::Flush(ObjectVersion(99)),
        Response::FlushStatus(FlushStatus::Durable),
        Response::FlushStatus(FlushStatus::Pending),
        Response::FlushStatus(FlushStatus::NotDurable { objects: 3 }),
    ]
}

fn commands() -> Vec<NodeCommand> {
    vec![
        NodeCommand::Persist {
            node: NodeId(1),
            key: Key::new(b"alpha").unwrap(),
            version: ObjectVersion(3),
            source: mem(),
            reason: PersistReason::Offload,
        },
        NodeCommand::DropDiskReplica {
            node: NodeId(1),
            key: Key::new(b"beta").unwrap(),
            version: ObjectVersion(3),
            replica: disk(),
        },
        NodeCommand::WipeDisk { node: NodeId(2) },
        NodeCommand::ForgetRange {
            node: NodeId(2),
            segment: SegmentId(2),
            offset: 1 << 20,
            version: ObjectVersion(77),
        },
    ]
}

fn all_messages() -> Vec<Message<'static>> {
    let mut all: Vec<Message<'static>> = requests().into_iter().map(Message::Request).collect();
    all.extend(responses().into_iter().map(Message::Response));
    all.extend(commands().into_iter().map(Message::Command));
    all
}

fn encode(m: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; m.encoded_len().unwrap()];
    let n = m.encode(&mut buf).unwrap();
    assert_eq!(n, buf.len());
    buf.truncate(n);
    buf
}

#[test]
fn every_message_round_trips_to_identical_bytes() {
    for m in all_messages() {
        let bytes = encode(&m);
        let decoded = Message::decode(&bytes).unwrap();
        assert_eq!(decoded, m);
        assert_eq!(encode(&decoded), bytes);
    }
}

#[test]
fn kind_specific_decoders_agree_with_the_generic_one() {
    for r in requests() {
        let bytes = encode(&Message::Request(r.clone()));
        assert_eq!(Request::decode(&bytes), Ok(r.clone()));
        assert_eq!(r.encoded_len(), Ok(bytes.len()));
        assert!(matches!(Response::decode(&bytes), Err(DecodeError::UnknownTag { .. })));
    }
    for r in responses() {
        let bytes = encode(&Message::Response(r.clone()));
        assert_eq!(Response::decode(&bytes), Ok(r));
        assert!(matches!(NodeCommand::decode(&bytes), Err(DecodeError::UnknownTag { .. })));
    }
    for c in commands() {
        let bytes = encode(&Message::Command(c.clone()));
        assert_eq!(NodeCommand::decode(&bytes), Ok(c));
        assert!(matches!(Request::decode(&bytes), Err(DecodeError::UnknownTag { .. })));
    }
}

#[test]
fn every_truncation_is_a_precise_error() {
    for m in all_messages() {
        let bytes = encode(&m);
        for cut in 0..bytes.len() {
            match Message::decode(&bytes[..cut]) {
                Err(DecodeError::Truncated { .. }) => {}
                other => panic!("{m:?} cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    for m in all_messages() {
        let mut bytes = encode(&m);
        bytes.push(0);
        assert!(matches!(Message::decode(&bytes), Err(DecodeError::TrailingBytes { count: 1, .. })), "{m:?}");
    }
}

#[test]
fn unknown_versions_kinds_and_tags_are_precise_errors() {
    let bytes = encode(&Message::Request(Request::RemoveAll { force: true }));
    let mut v = bytes.clone();
    v[0] = 2;
    assert_eq!(
        Message::decode(&v),
        Err(DecodeError::UnsupportedVersion { what: "message", found: 2, supported: 1 })
    );
    let mut kind = bytes.clone();
    kind[1] = 9;
    assert_eq!(Message::decode(&kind), Err(DecodeError::UnknownTag { what: "message kind", tag: 9 }));
    let mut tag = bytes.clone();
    tag[2] = 200;
    assert_eq!(Message::decode(&tag), Err(DecodeError::UnknownTag { what: "request", tag: 200 }));
    let mut flag = bytes;
    flag[3] = 2;
    assert_eq!(Message::decode(&flag), Err(DecodeError::InvalidValue { what: "force" }));
}

#[test]
fn unknown_error_codes_decode_as_an_unknown_answer_and_re_encode_the_same() {
    let mut bytes = encode(&Message::Response(Response::PutEnd(Err(MasterError::NotWriter))));
    bytes[3..5].copy_from_slice(&999u16.to_le_bytes());
    let decoded = Message::decode(&bytes).expect("an unknown code is still an answer");
    assert_eq!(decoded, Message::Response(Response::PutEnd(Err(MasterError::Unknown(999)))));
    assert_eq!(encode(&decoded), bytes);
}

#[test]
fn encoding_into_a_small_buffer_reports_the_needed_length() {
    for m in all_messages() {
        let needed = encode(&m).len();
        let mut small = vec![0u8; needed - 1];
        assert_eq!(m.encode(&mut small), Err(EncodeError::BufferTooSmall { needed, available: needed - 1 }));
    }
}

#[test]
fn batch_counts_are_bounded_on_both_sides() {
    let keys = vec![k("x"); MAX_BATCH + 1];
    let too_many = Request::BatchExists { keys };
    assert!(matches!(too_many.encoded_len(), Err(EncodeError::TooLong { .. })));
    // A count larger than the input can hold is refused before anything is allocated.
    let mut bytes = encode(&Message::Request(Request::BatchExists { keys: vec![k("x")] }));
    bytes[3..7].copy_from_slice(&(MAX_BATCH as u32).to_le_bytes());
    assert!(matches!(Message::decode(&bytes), Err(DecodeError::Truncated { .. })));
    bytes[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Message::decode(&bytes), Err(DecodeError::TooLong { .. })));
}

#[test]
fn a_replica_list_without_a_checksum_has_one_encoding() {
    let unchecksummed =
        Message::Response(Response::GetReplicaList(Ok(ReplicaList { crc32c: None, ..list() })));
    let mut bytes = encode(&unchecksummed);
    // The header (3), the status (2), version, size, lease (8 each), the flag (1).
    let crc_at = 3 + 2 + 8 + 8 + 8 + 1;
    assert_eq!(bytes[crc_at - 1..crc_at + 4], [0, 0, 0, 0, 0]);
    bytes[crc_at] = 1;
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::InvalidValue { what: "crc32c of an unchecksummed value" })
    );
}

#[test]
fn replica_counts_are_bounded() {
    let many = PutGrant { version: ObjectVersion(1), replicas: (0..=MAX_REPLICAS).map(|_| mem()).collect() };
    let mut buf = vec![0u8; 4096];
    assert!(matches!(Response::PutStart(Ok(many)).encode(&mut buf), Err(EncodeError::TooLong { .. })));
}

#[test]
fn longest_keys_pass_and_longer_ones_do_not() {
    let long = vec![b'k'; MAX_KEY_LEN];
    let r = Request::Exists { key: KeyRef::new(&long).unwrap() };
    let bytes = encode(&Message::Request(r.clone()));
    assert_eq!(Request::decode(&bytes), Ok(r));
    let mut over = bytes.clone();
    over[3..5].copy_from_slice(&((MAX_KEY_LEN + 1) as u16).to_le_bytes());
    over.push(b'k');
    assert!(matches!(Request::decode(&over), Err(DecodeError::TooLong { what: "key", .. })));
}

#[test]
fn decoded_requests_borrow_keys_from_the_input() {
    let bytes = encode(&Message::Request(Request::GetReplicaList { key: k("borrowed") }));
    let Request::GetReplicaList { key } = Request::decode(&bytes).unwrap() else { panic!() };
    let range = bytes.as_ptr_range();
    assert!(range.contains(&key.as_bytes().as_ptr()), "the key points into the input buffer");
}
