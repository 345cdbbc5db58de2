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
