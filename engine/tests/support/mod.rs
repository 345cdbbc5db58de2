//! Helpers shared by the tier tests.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use larder_engine::disk::TierConfig;
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
    c.bucket_deadline = Duration::from_millis(5);
    c.queue_bytes = 8 << 20;
    c.chunk_bytes = 256 << 10;
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
/// that a wrong record or a torn write never passes for the right one.
pub fn value(i: u64, v: u64) -> Bytes {
    let len = 4096 + ((i * 7919 + v * 104_729) % (96 << 10)) as usize;
    let mut out = Vec::with_capacity(len);
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ v.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
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
