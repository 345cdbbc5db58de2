//! Helpers shared by the tier tests.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use larder_engine::disk::{ReadResult, Tier, TierConfig, TierError};
use larder_engine::{KeyRef, NodeId};

/// A fresh scratch root on the build's filesystem (not tmpfs: O_DIRECT works there).
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tier").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A tier configuration with small buckets, so that tests make many of them.
pub fn config(root: &Path) -> TierConfig {
    let mut c = TierConfig::new(root, "test-cluster", NodeId(7));
    c.bucket_bytes = 1 << 20;
    // Only size and flushes seal buckets: which bucket holds what never depends on how
    // fast a test runs.
    c.bucket_idle = Duration::from_secs(3600);
    c.bucket_max_age = Duration::from_secs(3600);
    c.queue_bytes = 8 << 20;
    c.chunk_bytes = 256 << 10;
    c.read_chunk_bytes = 32 << 10; // most values are read in several chunks
    c.write_depth = 4;
    c
}

/// The key of object `i`.
pub fn key(i: u64) -> Vec<u8> {
    format!("prefix/{i:08}").into_bytes()
}

pub fn k(bytes: &[u8]) -> KeyRef<'_> {
    KeyRef::new(bytes).expect("valid key")
}

/// The value of object `i` at version `v`: its length and every byte depend on both, so
/// that a wrong record or a torn write never passes for the right one. (A window into one
/// precomputed random block, stamped with `i` and `v`: cheap even in debug builds.)
pub fn value(i: u64, v: u64) -> Bytes {
    value_of_size(i, v, 4096 + ((i * 7919 + v * 104_729) % (96 << 10)) as usize)
}

/// A small value (4–8 KiB) made the same way, for tests that write many.
pub fn small_value(i: u64, v: u64) -> Bytes {
    value_of_size(i, v, 4096 + ((i * 7919 + v * 104_729) % 4096) as usize)
}

pub fn value_of_size(i: u64, v: u64, len: usize) -> Bytes {
    static NOISE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let noise = NOISE.get_or_init(|| {
        use rand::{RngCore, SeedableRng};
        let mut block = vec![0u8; 512 << 10];
        rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut block);
        block
    });
    let start = ((i * 31 + v * 17) % (128 << 10)) as usize;
    let mut out = noise[start..start + len].to_vec();
    out[..8].copy_from_slice(&i.to_le_bytes());
    out[8..16].copy_from_slice(&v.to_le_bytes());
    out[len - 8..].copy_from_slice(&(i ^ v.rotate_left(32)).to_le_bytes());
    Bytes::from(out)
}

/// Files in a directory, by name.
pub fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Reads many keys with every read in flight at once, and waits for them all.
pub fn read_all(tier: &Tier, keys: &[KeyRef<'_>]) -> Vec<ReadResult> {
    tier.read_many(keys)
        .into_iter()
        .map(|r| r.and_then(|rx| rx.recv().map_err(|_| TierError::Closed)?))
        .collect()
}
