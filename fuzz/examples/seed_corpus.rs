//! Writes the seed corpus: `cargo run --example seed_corpus` (in `fuzz/`).
//!
//! Messages come from a recorded trace: every request is sent through a real master,
//! and the request, its response and the commands it produced are all saved, so the
//! corpus holds each message kind as the system really emits it. Descriptors come from
//! the replica lists in that trace. Operation sequences for `master_ops` are
//! pseudo-random bytes of several lengths (every byte string is a valid sequence).

use std::fs;
use std::path::{Path, PathBuf};

use larder_engine::disk::format::{FooterBuilder, FooterEntry, RecordHeader, Trailer};
use larder_engine::disk::removals::Removal;
use larder_engine::master::{Master, MasterConfig};
use larder_engine::wire::{DiskReplicaOrigin, Message, Request, Response};
use larder_engine::{BucketId, DiskReplica, Incarnation, Instant, KeyRef, NodeId, ObjectVersion, SegmentId};

struct Corpus {
    dir: PathBuf,
    count: usize,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> Self {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("corpus dir");
        Self { dir, count: 0 }
    }

    fn save(&mut self, bytes: &[u8]) {
        fs::write(self.dir.join(format!("seed-{:03}", self.count)), bytes).expect("write seed");
        self.count += 1;
    }
}

fn encode(m: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; m.encoded_len().expect("encodable")];
    m.encode(&mut buf).expect("encodable");
    buf
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut messages = Corpus::new(&root, "message_decode");
    let mut descriptors = Corpus::new(&root, "descriptor_decode");
    let mut master = Master::new(MasterConfig::default()).expect("config");
    let now = Instant::from_nanos(1);
    let (a, b) = (NodeId(1), NodeId(2));
    let k = |s: &'static str| KeyRef::new(s.as_bytes()).expect("key");

    let mut send = |master: &mut Master, request: Request<'_>| -> Response {
        messages.save(&encode(&Message::Request(request.clone())));
        let response = master.handle_request(now, &request);
        messages.save(&encode(&Message::Response(response.clone())));
        while let Some(command) = master.poll_command() {
            messages.save(&encode(&Message::Command(command)));
        }
        response
    };

    send(&mut master, Request::Ping { node: a, incarnation: Incarnation(1), has_storage: true });
    send(&mut master, Request::Ping { node: b, incarnation: Incarnation(1), has_storage: false });
    send(&mut master, Request::MountSegment { node: a, segment: SegmentId(1), size: 64 << 20 });
    send(&mut master, Request::MountSegment { node: b, segment: SegmentId(2), size: 64 << 20 });
    let Response::PutStart(Ok(grant)) = send(
        &mut master,
        Request::PutStart { writer: a, key: k("prefix/0001"), size: 256 << 10, replicas: 2 },
    ) else {
        panic!("put start failed")
    };
    let v = grant.version;
    send(&mut master, Request::PutEnd { writer: a, key: k("prefix/0001"), version: v, crc32c: 0x1234_5678 });
    let disk =
        DiskReplica { node: a, bucket: BucketId(7), offset: 4096, len: 256 << 10, crc32c: 0x1234_5678 };
    let origin = DiskReplicaOrigin::Persisted;
    send(&mut master, Request::AddDiskReplica { key: k("prefix/0001"), version: v, replica: disk, origin });
    if let Response::GetReplicaList(Ok(list)) =
        send(&mut master, Request::GetReplicaList { key: k("prefix/0001") })
    {
        for d in &list.replicas {
            let mut buf = [0u8; 64];
            let n = d.encode(&mut buf).expect("descriptor");
            descriptors.save(&buf[..n]);
        }
    }
    send(&mut master, Request::Exists { key: k("prefix/0001") });
    send(&mut master, Request::Remove { key: k("prefix/0001"), force: false });
    send(&mut master, Request::Remove { key: k("prefix/0001"), force: true });
    send(&mut master, Request::RemoveDiskReplica { node: a, key: k("prefix/0001"), version: v });
    let items = vec![(k("batch/1"), 64 << 10), (k("batch/2"), 1 << 20), (k("batch/1"), 1)];
    let Response::BatchPutStart(grants) =
        send(&mut master, Request::BatchPutStart { writer: b, replicas: 1, items })
    else {
        panic!("batch put start failed")
    };
    let ended: Vec<(KeyRef<'_>, ObjectVersion, u32)> = [k("batch/1"), k("batch/2")]
        .into_iter()
        .zip(&grants)
        .filter_map(|(key, g)| g.as_ref().ok().map(|g| (key, g.version, 0x0bad_cafe)))
        .collect();
    send(&mut master, Request::BatchPutEnd { writer: b, items: ended.clone() });
    send(
        &mut master,
        Request::BatchPutRevoke { writer: b, items: ended.iter().map(|(k, v, _)| (*k, *v)).collect() },
    );
    send(&mut master, Request::BatchGetReplicaList { keys: vec![k("batch/1"), k("batch/2"), k("nope")] });
    send(&mut master, Request::BatchExists { keys: vec![k("batch/1"), k("nope")] });
    send(&mut master, Request::BatchRemove { force: false, keys: vec![k("batch/2")] });
    send(&mut master, Request::PutStart { writer: a, key: k("late"), size: 4096, replicas: 1 });
    send(&mut master, Request::PersistFailed { node: a, key: k("late"), version: v });
    send(&mut master, Request::RemoveAll { force: true });
    send(&mut master, Request::UnmountSegment { node: b, segment: SegmentId(2) });
    send(&mut master, Request::Ping { node: a, incarnation: Incarnation(2), has_storage: true });
    // A segment restored after a master restart, and a range freed in it.
    send(&mut master, Request::RestoreSegment { node: a, segment: SegmentId(3), size: 64 << 20 });
    let restored = |key, version, offset| larder_engine::wire::RestoredReplica {
        key: k(key),
        version: ObjectVersion(version),
        offset,
        len: 4096,
        crc32c: 0x0bad_f00d,
    };
    send(
        &mut master,
        Request::RestoreReplicas {
            node: a,
            segment: SegmentId(3),
            items: vec![restored("restored/1", 0, 0), restored("restored/2", 0, 4096)],
        },
    );
    send(&mut master, Request::MountSegment { node: a, segment: SegmentId(3), size: 64 << 20 });
    messages.save(&encode(&Message::Command(larder_engine::wire::NodeCommand::ForgetRange {
        node: a,
        segment: SegmentId(3),
        offset: 4096,
        version: ObjectVersion(3),
    })));

    let mut bucket = Corpus::new(&root, "bucket_decode");
    let mut footer = FooterBuilder::new(larder_fuzz::FUZZ_BUCKET);
    let mut offset = 0;
    for (i, key) in ["prefix/1", "prefix/2", "a-much-longer-key-for-the-third-record"].into_iter().enumerate()
    {
        let header = RecordHeader {
            key: k(key),
            value_len: 1000 << i,
            version: ObjectVersion(i as u64 + 1),
            value_crc: 7,
        };
        let mut block = vec![2u8];
        block.resize(1 + header.encoded_len(), 0);
        header.encode(&mut block[1..]);
        bucket.save(&block);
        let entry = FooterEntry {
            record_offset: offset,
            value_len: header.value_len,
            version: header.version,
            value_crc: 7,
            key: header.key,
        };
        offset = entry.record_end();
        footer.push(&entry);
    }
    let footer = footer.finish();
    let trailer = Trailer {
        bucket: larder_fuzz::FUZZ_BUCKET,
        footer_offset: offset,
        footer_len: footer.len() as u64,
        record_count: 3,
    };
    bucket.save(&[&[1u8][..], &footer].concat());
    bucket.save(&[&[0u8][..], &trailer.file_len().to_le_bytes(), &trailer.encode()].concat());
    let mut log = vec![3u8];
    for r in [
        Removal::Record(k("prefix/1").to_key(), ObjectVersion(7)),
        Removal::WipedBelow(BucketId(4)),
        Removal::Record(k("a-much-longer-key-for-the-third-record").to_key(), ObjectVersion(9)),
    ] {
        r.encode(&mut log);
    }
    bucket.save(&log);

    let mut ops = Corpus::new(&root, "master_ops");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for len in [16usize, 64, 256, 1024, 4096, 16384] {
        for _ in 0..3 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    // xorshift64: seeds only need to differ, not to be good randomness.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            ops.save(&bytes);
        }
    }
    let net = net_seeds(&root);
    let endpoint = endpoint_seeds(&root);
    println!("wrote {endpoint} endpoint seeds");
    println!(
        "wrote {} message, {} descriptor, {} bucket, {} master_ops and {net} net seeds under {}",
        messages.count,
        descriptors.count,
        bucket.count,
        ops.count,
        root.display()
    );
}

/// Seeds for `endpoint_decode`: Infos of one, two and sixteen QPs with and without
/// regions, Readies, and the same bytes cut short or extended.
fn endpoint_seeds(root: &Path) -> usize {
    use larder_engine::rdma::endpoint::{EndpointInfo, EndpointMessage, QpEndpoint, RemoteRegion};
    use larder_engine::rdma::qp::{Mtu, Psn};

    let mut corpus = Corpus::new(root, "endpoint_decode");
    let info = |node, qps: u32, regions: u64| EndpointInfo {
        node: NodeId(node),
        nonce: 0x5eed + node,
        gid: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 2, 0x11, 0x22, 0xff, 0xfe, 0x33, 0x44, node as u8],
        lid: 0,
        mtu: Mtu::Mtu4096,
        qps: (0..qps).map(|i| QpEndpoint { qpn: 0x100 + i, psn: Psn::truncate(i * 7919) }).collect(),
        regions: (0..regions)
            .map(|i| RemoteRegion {
                addr: 0x7f00_0000_0000 + i * (1 << 30),
                len: 1 << 30,
                rkey: 0x1000 + i as u32,
            })
            .collect(),
    };
    let messages = [
        EndpointMessage::Info(info(2, 1, 0)),
        EndpointMessage::Info(info(2, 2, 1)),
        EndpointMessage::Info(info(3, 16, 64)),
        EndpointMessage::Info(EndpointInfo { mtu: Mtu::Mtu1024, lid: 17, ..info(2, 1, 3) }),
        EndpointMessage::Ready { nonce: 0x5eed + 2 },
    ];
    for m in &messages {
        let mut buf = vec![0u8; EndpointMessage::MAX_LEN];
        let n = m.encode(&mut buf).expect("endpoint message");
        corpus.save(&buf[..n]);
        corpus.save(&buf[..n / 2]);
        let mut longer = buf[..n].to_vec();
        longer.push(0);
        corpus.save(&longer);
    }
    corpus.count
}

/// Seeds for `net_decode`: handshake bodies, and streams as a real client and server
/// send them (handshake, requests, heartbeats, commands), plus garbage.
fn net_seeds(root: &Path) -> usize {
    use larder_engine::Duration;
    use larder_engine::net::frame::write_frame;
    use larder_engine::net::{
        ClusterName, FrameHeader, FrameKind, Hello, Refusal, RefusalReason, Role, Welcome,
    };

    let mut net = Corpus::new(root, "net_decode");
    let cluster = ClusterName::new(b"larder").expect("name");
    let hello = |role, serves: Option<std::net::SocketAddr>| Hello {
        min_version: 1,
        max_version: 1,
        cluster,
        role,
        node: NodeId(7),
        incarnation: Incarnation(3),
        serves,
    };
    let hellos = [
        hello(Role::Node, Some("127.0.0.1:4000".parse().expect("addr"))),
        hello(Role::Client, None),
        hello(Role::Peer, Some("[::1]:9".parse().expect("addr"))),
    ];
    let body = |h: &Hello| {
        let mut b = [0u8; Hello::MAX_LEN];
        let n = h.encode(&mut b).expect("hello");
        b[..n].to_vec()
    };
    let with = |selector: u8, bytes: &[u8]| [&[selector][..], bytes].concat();
    for h in &hellos {
        net.save(&with(0, &body(h)));
    }
    let mut welcome = [0u8; Welcome::LEN];
    let n = Welcome { version: 1, incarnation: Incarnation(9), node_ttl: Duration::from_secs(10) }
        .encode(&mut welcome)
        .expect("welcome");
    net.save(&with(1, &welcome[..n]));
    for reason in [RefusalReason::WrongCluster, RefusalReason::ProtocolViolation, RefusalReason::Unknown(77)]
    {
        let mut b = [0u8; Refusal::LEN];
        let n = Refusal { reason, versions: (1, 1) }.encode(&mut b).expect("refusal");
        net.save(&with(1, &b[..n]));
    }
    {
        use larder_engine::net::data::{DataError, DataRequest, DataResponse};
        let mut bodies = Vec::new();
        let write = DataRequest::Write {
            segment: SegmentId(7),
            offset: 4096,
            version: ObjectVersion(9),
            epoch: 3,
            crc32c: 0x1234_5678,
            key: KeyRef::new(b"prefix/9").expect("key"),
            bytes: b"value bytes",
        };
        let read =
            DataRequest::Read { segment: SegmentId(7), offset: 4096, len: 11, version: ObjectVersion(9) };
        let disk =
            DataRequest::ReadDisk { key: KeyRef::new(b"prefix/0").expect("key"), version: ObjectVersion(9) };
        for r in [write, read, disk] {
            let mut out = Vec::new();
            r.encode(&mut out);
            bodies.push(out);
        }
        for r in [
            DataResponse::Written,
            DataResponse::Read { crc32c: 5, bytes: b"value bytes" },
            DataResponse::Refused(DataError::Fenced),
        ] {
            let mut out = Vec::new();
            r.encode(&mut out);
            bodies.push(out);
        }
        for b in &bodies {
            net.save(&with(1, b));
        }
    }
    let frame = |kind, id, body: &[u8]| {
        let mut out = Vec::new();
        write_frame(&mut out, kind, id, body, u32::MAX).expect("frame");
        out
    };
    let request = |id, r: Request<'_>| frame(FrameKind::Request, id, &encode(&Message::Request(r)));
    let k = |s: &'static str| KeyRef::new(s.as_bytes()).expect("key");
    let mut client_stream = frame(FrameKind::Hello, 0, &body(&hellos[0]));
    client_stream.extend(request(
        1,
        Request::Ping { node: NodeId(7), incarnation: Incarnation(3), has_storage: true },
    ));
    client_stream.extend(request(2, Request::GetReplicaList { key: k("prefix/0") }));
    client_stream.extend(frame(FrameKind::Heartbeat, 0, &[]));
    client_stream.extend(frame(FrameKind::CommandAck, 5, &[]));
    client_stream.extend(frame(FrameKind::Hello, 0, &body(&hellos[1])));
    let mut server_stream = frame(FrameKind::Welcome, 0, &welcome[..n]);
    server_stream.extend(frame(FrameKind::Response, 1, &encode(&Message::Response(Response::Exists(true)))));
    server_stream.extend(frame(FrameKind::Command, 5, b"persist"));
    server_stream.extend(frame(FrameKind::HeartbeatAck, 0, &[]));
    let oversized = FrameHeader { kind: FrameKind::Request, id: 1, body_len: u32::MAX }.encode();
    let garbage = b"GET /metrics HTTP/1.1\r\nHost: larder\r\n\r\n".to_vec();
    // Selectors: 2/3 frame streams, 4..=6 a server connection, 7 a client connection;
    // selector / 8 + 1 is the chunk size.
    for (selector, stream) in [
        (2u8, &client_stream),
        (3 + 8 * 3, &server_stream),
        (4, &client_stream),
        (5 + 8 * 15, &client_stream),
        (6 + 8 * 30, &client_stream),
        (4 + 8 * 2, &garbage),
        (5, &oversized.to_vec()),
        (7, &server_stream),
        (7 + 8 * 30, &server_stream),
    ] {
        net.save(&with(selector, stream));
    }
    net.count
}
