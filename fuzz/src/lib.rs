//! The fuzz targets' bodies, shared by the cargo-fuzz binaries and by the test that
//! replays the committed corpus (`cargo test` in this directory).
//!
//! Each body panics when a property fails; a return means the input was handled.

use std::alloc::System;

use arbitrary::{Arbitrary, Unstructured};
use larder_engine::disk::format::{Footer, FooterBuilder, RecordHeader, Trailer};
use larder_engine::disk::removals;
use larder_engine::master::sim::{Cluster, Op};
use larder_engine::master::{MasterConfig, PersistPolicy};
use larder_engine::wire::Message;
use larder_engine::{BucketId, ReplicaDescriptor};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// Counts allocations, so that decoding can be held to its allocation bound.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The most a decoder may allocate for an input of `len` bytes: the bound the wire
/// module documents (16 bytes per input byte) plus slack for tiny inputs.
pub fn allocation_bound(len: usize) -> usize {
    larder_engine::wire::MAX_DECODE_ALLOCATION_PER_BYTE * len + 256
}

/// Decodes a standalone replica descriptor; a decoded one must re-encode to the same
/// bytes.
pub fn descriptor_decode(data: &[u8]) {
    if let Ok(d) = ReplicaDescriptor::decode(data) {
        let mut buf = [0u8; 64];
        let n = d.encode(&mut buf).expect("a decoded descriptor encodes");
        assert_eq!(&buf[..n], data, "re-encoding differs");
    }
}

/// Decodes any wire message; a decoded one must re-encode to the same bytes, and
/// decoding must stay within [`allocation_bound`].
pub fn message_decode(data: &[u8]) {
    let region = Region::new(ALLOCATOR);
    let decoded = Message::decode(data);
    // Growth by realloc is already part of bytes_allocated.
    let allocated = region.change().bytes_allocated;
    assert!(allocated <= allocation_bound(data.len()), "decoding {} bytes allocated {allocated}", data.len());
    if let Ok(message) = decoded {
        let len = message.encoded_len().expect("a decoded message encodes");
        let mut buf = vec![0u8; len];
        let n = message.encode(&mut buf).expect("a decoded message encodes");
        assert_eq!(&buf[..n], data, "re-encoding differs");
    }
}

/// The bucket id every `bucket_decode` input is checked against.
pub const FUZZ_BUCKET: BucketId = BucketId(0x0102_0304);

/// Decodes bucket structures: the first byte picks a trailer (preceded by the file's
/// length), a footer or a record header; the rest is the input. Whatever decodes must re-encode to the same bytes.
pub fn bucket_decode(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    match selector % 4 {
        0 => {
            // The input is the file's length (8 bytes) and then the trailer.
            let Some((len, trailer)) = rest.split_first_chunk::<8>() else { return };
            if let Ok(t) = Trailer::decode(trailer, FUZZ_BUCKET, u64::from_le_bytes(*len)) {
                assert_eq!(&t.encode()[..], trailer, "trailer re-encoding differs");
            }
        }
        1 => {
            if let Ok(footer) = Footer::decode(rest, FUZZ_BUCKET, u64::MAX) {
                let mut b = FooterBuilder::new(FUZZ_BUCKET);
                footer.entries.iter().for_each(|e| b.push(e));
                assert_eq!(b.finish(), rest, "footer re-encoding differs");
            }
        }
        3 => {
            // The removal log: every byte is in an entry or counted damaged, and an
            // undamaged log re-encodes to itself.
            let d = removals::decode(rest);
            let mut out = Vec::new();
            d.entries.iter().for_each(|e| e.encode(&mut out));
            assert_eq!(out.len() + d.damaged_bytes, rest.len(), "removal log bytes unaccounted for");
            if d.damaged_bytes == 0 {
                assert_eq!(out, rest, "removal log re-encoding differs");
            }
        }
        _ => {
            if let Ok(h) = RecordHeader::decode(rest) {
                let mut out = vec![0u8; h.encoded_len()];
                h.encode(&mut out);
                assert_eq!(&out[..], &rest[..out.len()], "record header re-encoding differs");
            }
        }
    }
}

/// The most operations one input drives (keeps each run short).
const MAX_OPS: usize = 2000;

/// Drives the master through an arbitrary operation sequence in the simulator, which
/// checks every property after every step.
pub fn master_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let persist = match u8::arbitrary(&mut u).unwrap_or(0) % 3 {
        0 => PersistPolicy::WriteBehind,
        1 => PersistPolicy::OnEvict,
        _ => PersistPolicy::Off,
    };
    let config = MasterConfig { persist, ..MasterConfig::default() };
    let mut cluster = Cluster::new(config, 4, 16, 1024).expect("valid config");
    for _ in 0..MAX_OPS {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        if let Err(violation) = cluster.apply(op) {
            panic!("{violation}");
        }
        if u.is_empty() {
            break;
        }
    }
}

/// The cluster a `net_decode` server connection accepts.
pub const FUZZ_CLUSTER: &[u8] = b"larder";

/// Decodes what a peer can send over a connection. The first byte picks the decoder
/// (and, for streams, the chunk size the bytes arrive in):
///
/// - a Hello, Welcome or Refusal body, or a data-plane request or response: whatever
///   decodes re-encodes to the same bytes;
/// - a frame stream: the frames cut from it re-encode to exactly the bytes consumed,
///   and after an error nothing more comes out;
/// - a server connection fed the stream (accepting every Hello, answering every
///   request): it never panics, what it sends is whole frames, and it holds no more
///   than one frame's worth of the peer's bytes;
/// - a client connection fed the stream after dialing: it never panics.
pub fn net_decode(data: &[u8]) {
    use larder_engine::net::frame::write_frame;
    use larder_engine::net::{
        ClientConfig, ClientConnection, ClusterName, Deframer, FRAME_HEADER_LEN, Hello, Refusal, Role,
        ServerConfig, ServerConnection, ServerEvent, Welcome,
    };
    use larder_engine::{Duration, Incarnation, Instant};

    const MAX_BODY: u32 = 4096;
    let Some((&selector, rest)) = data.split_first() else { return };
    let chunk = usize::from(selector / 8) + 1;
    let cluster = ClusterName::new(FUZZ_CLUSTER).expect("a valid name");
    match selector % 8 {
        0 => {
            if let Ok(h) = Hello::decode(rest) {
                let mut buf = [0u8; Hello::MAX_LEN];
                let n = h.encode(&mut buf).expect("a decoded hello encodes");
                assert_eq!(&buf[..n], rest, "hello re-encoding differs");
            }
        }
        1 => {
            if let Ok(w) = Welcome::decode(rest) {
                let mut buf = [0u8; Welcome::LEN];
                let n = w.encode(&mut buf).expect("a decoded welcome encodes");
                assert_eq!(&buf[..n], rest, "welcome re-encoding differs");
            }
            if let Ok(r) = Refusal::decode(rest) {
                let mut buf = [0u8; Refusal::LEN];
                let n = r.encode(&mut buf).expect("a decoded refusal encodes");
                assert_eq!(&buf[..n], rest, "refusal re-encoding differs");
            }
            // The data plane's bodies, as a node and a reader receive them.
            let request = larder_engine::net::data::DataRequest::decode(rest);
            if let Ok(r) = request {
                let mut out = Vec::new();
                r.encode(&mut out);
                assert_eq!(out, rest, "data request re-encoding differs");
            }
            // A write's head, as a node reads it before the value arrives: the same
            // fields as the whole write's, and never more than the body.
            if let Ok(Some((head, len))) = larder_engine::net::data::WriteHead::decode_prefix(rest) {
                assert!(len <= rest.len(), "a head longer than its body");
                if let Ok(larder_engine::net::data::DataRequest::Write {
                    segment,
                    offset,
                    version,
                    epoch,
                    crc32c,
                    key,
                    ..
                }) = request
                {
                    let whole =
                        larder_engine::net::data::WriteHead { segment, offset, version, epoch, crc32c, key };
                    assert_eq!(head, whole, "a write's head differs from the write");
                }
            }
            if let Ok(r) = larder_engine::net::data::DataResponse::decode(rest) {
                let mut out = Vec::new();
                r.encode(&mut out);
                assert_eq!(out, rest, "data response re-encoding differs");
            }
        }
        mode @ (2 | 3) => {
            let mut d = Deframer::new(MAX_BODY);
            let mut out = Vec::new();
            let mut failed = false;
            for piece in rest.chunks(chunk) {
                // Copied in, or read in place as a socket driver does.
                if mode == 2 {
                    d.push(piece);
                } else {
                    d.receive_buffer().extend_from_slice(piece);
                }
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => {
                            assert!(!failed, "a frame after an error");
                            write_frame(&mut out, f.header.kind, f.header.id, &f.body, MAX_BODY)
                                .expect("a decoded frame encodes");
                        }
                        Ok(None) => break,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                assert!(d.buffered() < FRAME_HEADER_LEN + MAX_BODY as usize, "buffered past one frame");
            }
            assert_eq!(&out[..], &rest[..out.len()], "frames re-encode to other bytes");
        }
        mode @ 4..=6 => {
            let config = ServerConfig {
                cluster,
                versions: (1, 1),
                incarnation: Incarnation(1),
                node_ttl: Duration::from_secs(10),
                roles: &[Role::Node, Role::Client],
                handshake_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(10),
                max_frame_body: MAX_BODY,
            };
            let mut s = ServerConnection::new(config, Instant::ZERO);
            let mut sent = Vec::new();
            // Mode 6 drives the connection as the socket loops do: reads in place,
            // answers without copying, vectored transmit.
            let in_place = mode == 6;
            let mut transmit = larder_engine::net::Transmit::new();
            for (i, piece) in rest.chunks(chunk).enumerate() {
                let now = Instant::from_nanos(i as u64 * 1_000_000);
                if in_place {
                    s.receive_buffer().extend_from_slice(piece);
                    s.handle_received(now);
                } else {
                    s.handle_bytes(now, piece);
                }
                while let Some(event) = s.poll_event() {
                    match event {
                        ServerEvent::Hello(_) => s.accept(now),
                        ServerEvent::Request { id, body } if in_place => {
                            s.send_response_parts(id, &[body]).expect("an established connection answers")
                        }
                        ServerEvent::Request { id, body } => {
                            s.send_response(id, &body).expect("an established connection answers")
                        }
                        _ => {}
                    }
                }
                if in_place {
                    let _ = s.poll_transmit_chunks(&mut transmit);
                    transmit.drain_into(&mut sent);
                } else {
                    let _ = s.poll_transmit(&mut sent);
                }
                s.handle_timeout(now);
            }
            let mut d = Deframer::new(u32::MAX);
            d.push(&sent);
            while let Some(_frame) = d.next_frame().expect("the server sends whole frames") {}
            assert_eq!(d.buffered(), 0, "the server sent a partial frame");
        }
        _ => {
            let hello = Hello {
                min_version: 1,
                max_version: 1,
                cluster,
                role: Role::Node,
                node: larder_engine::NodeId(1),
                incarnation: Incarnation(1),
                serves: None,
            };
            let mut config = ClientConfig::new(hello);
            config.max_frame_body = MAX_BODY;
            let mut c = ClientConnection::new(config, Instant::ZERO);
            c.handle_connected(Instant::ZERO);
            let mut sent = Vec::new();
            for (i, piece) in rest.chunks(chunk).enumerate() {
                let now = Instant::from_nanos(i as u64 * 1_000_000);
                c.handle_bytes(now, piece);
                while c.poll_event().is_some() {}
                let _ = c.send_request(now, piece);
                let _ = c.poll_transmit(&mut sent);
                c.handle_timeout(now);
            }
        }
    }
}

/// Decodes an endpoint message of the RDMA handshake: a decoded one re-encodes to the
/// same bytes, decoding stays within [`allocation_bound`], and a handshake that is
/// given the input as its peer's first message ends up where the input says (a
/// matching Info brings the QPs up; anything else fails it), without panicking.
pub fn endpoint_decode(data: &[u8]) {
    use larder_engine::rdma::endpoint::{
        EndpointHandshake, EndpointInfo, EndpointMessage, HandshakePhase, QpEndpoint,
    };
    use larder_engine::rdma::qp::{Mtu, Psn};
    use larder_engine::{Duration, Instant, NodeId};

    let region = Region::new(ALLOCATOR);
    let decoded = EndpointMessage::decode(data);
    let allocated = region.change().bytes_allocated;
    assert!(allocated <= allocation_bound(data.len()), "decoding {} bytes allocated {allocated}", data.len());
    if let Ok(message) = &decoded {
        let mut buf = vec![0u8; EndpointMessage::MAX_LEN];
        let n = message.encode(&mut buf).expect("a decoded message encodes");
        assert_eq!(&buf[..n], data, "re-encoding differs");
    }
    let local = EndpointInfo {
        node: NodeId(1),
        nonce: 1,
        gid: [0; 16],
        lid: 0,
        mtu: Mtu::Mtu4096,
        qps: vec![QpEndpoint { qpn: 1, psn: Psn::truncate(0) }],
        regions: Vec::new(),
    };
    let mut handshake = EndpointHandshake::new(local, NodeId(2), Instant::ZERO, Duration::from_secs(1));
    handshake.handle_message(data);
    let brought_up =
        matches!(&decoded, Ok(EndpointMessage::Info(info)) if info.node == NodeId(2) && info.qps.len() == 1);
    let expected = if brought_up { HandshakePhase::BringingUp } else { HandshakePhase::Failed };
    assert_eq!(handshake.phase(), expected, "{decoded:?}");
}
