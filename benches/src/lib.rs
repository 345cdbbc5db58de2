//! Shared helpers for the benches (workload generation) and the comparison harness
//! behind the `compare` binary.

pub mod compare;

use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use larder_engine::master::{Master, MasterConfig};
use larder_engine::{Incarnation, Instant, KeyRef, NodeId, SegmentId};

/// Length of the benches' keys: a 32-byte prefix hash, as inference engines use.
pub const KEY_LEN: usize = 32;

/// The writer node of the master benches.
pub const WRITER: NodeId = NodeId(1);

/// A distinct 32-byte key for every `i`, spread like the prefix hash it stands for:
/// the index hashed under four seeds (the first word keeps `i` itself, so keys never
/// collide).
pub fn key_bytes(i: u64) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    out[..8].copy_from_slice(&i.to_le_bytes());
    for (seed, chunk) in out[8..].chunks_mut(8).enumerate() {
        let word = FixedState::with_seed(seed as u64).hash_one(i);
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// A master with one node (no SSD tier) and one segment large enough that `objects`
/// values of `value_size` bytes fill it to half.
pub fn master_with_segment(objects: u64, value_size: u64) -> Master {
    let mut m = Master::new(MasterConfig::default()).expect("default config");
    let now = Instant::from_nanos(1);
    let _ = m.handle_ping(now, WRITER, Incarnation(1), false);
    let size = (objects * value_size * 2).max(1 << 30);
    m.handle_mount_segment(now, WRITER, SegmentId(1), size).expect("mount");
    m
}

/// Puts objects `range` (keys from [`key_bytes`]) and ends each put.
pub fn fill(m: &mut Master, range: std::ops::Range<u64>, value_size: u64) {
    let now = Instant::from_nanos(1);
    for i in range {
        let key = key_bytes(i);
        let key = KeyRef::new(&key).expect("key");
        let grant = m.handle_put_start(now, WRITER, key, value_size, 1).expect("put start");
        m.handle_put_end(now, WRITER, key, grant.version, Some(0)).expect("put end");
    }
}
