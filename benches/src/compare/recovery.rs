//! `compare recovery`: how long reopening a node directory takes to a usable index,
//! against the floor of reading the same trailers and footers and nothing else.
//!
//! The directory is laid out with the engine's own bucket format: every record has its
//! real header and key, and every footer and trailer is real, but the values are left
//! as holes in sparse files (zeros, whose CRC32C the records carry, so they read back
//! correctly). Recovery never reads values, so this measures exactly what a directory
//! of fully written values would cost, without writing 64 GiB first.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use larder_engine::checksum::crc32c;
use larder_engine::disk::format::{
    FooterBuilder, FooterEntry, RecordHeader, RecordLayout, TRAILER_LEN, Trailer,
};
use larder_engine::disk::{Tier, TierConfig, bucket_file_name};
use larder_engine::ids::{BucketId, NodeId, ObjectVersion};
use larder_engine::key::Key;

/// The cluster directory name the harness uses.
const CLUSTER: &str = "compare";
const NODE: NodeId = NodeId(1);

/// What was laid out.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Records written.
    pub records: usize,
    /// Bucket files.
    pub buckets: usize,
    /// Bytes of values the records describe.
    pub logical_bytes: u64,
}

/// The key of record `i`.
pub fn key(i: usize) -> Key {
    Key::new(format!("prefix-block/{i:08}").as_bytes()).expect("valid key")
}

fn node_dir(root: &Path) -> PathBuf {
    root.join(CLUSTER).join(NODE.0.to_string())
}

/// Writes `records` records of `value_len` bytes into buckets of about `bucket_bytes`
/// under `root` (emptied first), each bucket fdatasync'd.
pub fn lay_out(root: &Path, records: usize, value_len: u64, bucket_bytes: u64) -> Result<Layout, String> {
    let dir = node_dir(root);
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(|e| format!("clearing {}: {e}", root.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let value_crc = crc32c(&vec![0u8; value_len as usize]);
    let record_len = RecordLayout::new(key(0).len(), value_len).len;
    let per_bucket = (bucket_bytes / record_len).max(1) as usize;
    let mut head = vec![0u8; 8192];
    let mut buckets = 0;
    for (b, first) in (0..records).step_by(per_bucket).enumerate() {
        let id = BucketId(b as u64);
        let path = dir.join(bucket_file_name(id));
        let io = |e: std::io::Error| format!("{}: {e}", path.display());
        let file = File::create(&path).map_err(io)?;
        let mut footer = FooterBuilder::new(id);
        let mut offset = 0u64;
        for i in first..records.min(first + per_bucket) {
            let k = key(i);
            let header = RecordHeader { key: k.as_ref(), value_len, version: ObjectVersion(1), value_crc };
            let n = header.encode(&mut head);
            file.write_all_at(&head[..n], offset).map_err(io)?;
            footer.push(&FooterEntry {
                record_offset: offset,
                value_len,
                version: ObjectVersion(1),
                value_crc,
                key: k.as_ref(),
            });
            offset += record_len;
        }
        let record_count = footer.count();
        let footer = footer.finish();
        let trailer =
            Trailer { bucket: id, footer_offset: offset, footer_len: footer.len() as u64, record_count };
        file.write_all_at(&footer, offset).map_err(io)?;
        file.write_all_at(&trailer.encode(), trailer.file_len() - TRAILER_LEN as u64).map_err(io)?;
        file.sync_data().map_err(io)?;
        buckets += 1;
    }
    Ok(Layout { records, buckets, logical_bytes: records as u64 * value_len })
}

/// Reopens the tier under `root`; returns seconds until `Tier::open` handed back a
/// usable index, after checking it holds `expect` records and serves one of them.
pub fn reopen(root: &Path, expect: usize, value_len: u64) -> Result<f64, String> {
    let start = Instant::now();
    let (tier, recovered) =
        Tier::open(TierConfig::new(root, CLUSTER, NODE)).map_err(|e| format!("reopening: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    if recovered.len() != expect {
        return Err(format!("recovered {} records of {expect}", recovered.len()));
    }
    let (_, value) =
        tier.get(key(expect / 2).as_ref()).map_err(|e| format!("reading a recovered record: {e}"))?;
    if value.len() as u64 != value_len || value.iter().any(|&b| b != 0) {
        return Err(String::from("a recovered record read back wrong"));
    }
    tier.close().map_err(|e| e.to_string())?;
    Ok(secs)
}

/// The floor: opening every bucket and reading its trailer and footer, nothing else.
pub fn read_footers(root: &Path) -> Result<f64, String> {
    let dir = node_dir(root);
    let start = Instant::now();
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut tail = [0u8; TRAILER_LEN];
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_none_or(|x| x != "bucket") {
            continue;
        }
        let io = |e: std::io::Error| format!("{}: {e}", path.display());
        let file = File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        file.read_exact_at(&mut tail, len - TRAILER_LEN as u64).map_err(io)?;
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("{}: not a bucket name", path.display()))?;
        let trailer =
            Trailer::decode(&tail, BucketId(id), len).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut footer = vec![0u8; trailer.footer_len as usize];
        file.read_exact_at(&mut footer, trailer.footer_offset).map_err(io)?;
    }
    Ok(start.elapsed().as_secs_f64())
}
