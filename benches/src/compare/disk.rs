//! `compare disk`: the SSD tier against fio and against the seed's design (one file per
//! object, written by a two-thread pool with write + fsync, read back per file).

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use larder_engine::disk::{Tier, TierConfig};
use larder_engine::ids::{NodeId, ObjectVersion};
use larder_engine::key::Key;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};

use super::{drop_caches, mb_per_s, reset_dir};

/// Values are slices of one random pool, so generating them costs nothing per run.
const POOL_BYTES: usize = 64 << 20;

/// Threads of the seed-style baseline (the seed's offload pool has two).
const BASELINE_THREADS: usize = 2;

/// A set of objects: `count` values of `value_size` bytes.
#[derive(Debug)]
pub struct Workload {
    pool: Bytes,
    /// Bytes per value.
    pub value_size: usize,
    /// Values.
    pub count: usize,
}

/// Write and cold-read throughput of one contender, MB/s.
#[derive(Debug, Clone, Copy)]
pub struct WriteRead {
    /// Writing everything until it is durable.
    pub write: f64,
    /// Reading everything back in random order, page cache dropped.
    pub read: f64,
    /// One task reading one value at a time (the first `one_task_count` in the random
    /// order), page cache dropped; 0 if not measured.
    pub read_one_task: f64,
    /// The same with each value read whole, one read in flight (as before values were
    /// read in chunks); 0 if not measured.
    pub read_one_task_whole: f64,
}

impl Workload {
    /// `total` bytes in values of `value_size`.
    pub fn new(value_size: usize, total: u64) -> Self {
        let mut pool = vec![0u8; POOL_BYTES.max(value_size * 2)];
        StdRng::seed_from_u64(7).fill_bytes(&mut pool);
        Self { pool: Bytes::from(pool), value_size, count: (total / value_size as u64) as usize }
    }

    fn key(&self, i: usize) -> Key {
        Key::new(format!("prefix-block/{i:08}").as_bytes()).expect("valid key")
    }

    /// Value `i`: a slice of the pool at an offset that depends on `i`.
    fn value(&self, i: usize) -> Bytes {
        let slots = (self.pool.len() - self.value_size) / 4096;
        let start = (i.wrapping_mul(7919) % slots) * 4096;
        self.pool.slice(start..start + self.value_size)
    }

    fn bytes(&self) -> u64 {
        (self.count * self.value_size) as u64
    }

    /// The order random reads visit objects (fixed, so runs compare).
    fn read_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.count).collect();
        order.shuffle(&mut StdRng::seed_from_u64(0x5eed));
        order
    }
}

/// Larder's tier in `dir` (emptied first): puts until `flush()` returns, then random
/// reads with `depth` in flight after dropping the page cache.
pub fn run_tier(
    w: &Workload,
    dir: &Path,
    depth: usize,
    (bucket_bytes, read_chunk_bytes): (u64, usize),
    one_task_count: usize,
) -> Result<WriteRead, String> {
    reset_dir(dir)?;
    let config = TierConfig { bucket_bytes, read_chunk_bytes, ..TierConfig::new(dir, "compare", NodeId(1)) };
    let (tier, _) = Tier::open(config.clone()).map_err(|e| e.to_string())?;
    let start = Instant::now();
    for i in 0..w.count {
        tier.put(w.key(i).as_ref(), ObjectVersion(1), w.value(i)).map_err(|e| e.to_string())?;
    }
    tier.flush().map_err(|e| e.to_string())?;
    let write = mb_per_s(w.bytes(), start.elapsed());
    drop_caches();
    let start = Instant::now();
    let read = futures::executor::block_on(read_all(&tier, w, depth, w.count))?;
    let read_rate = mb_per_s(read, start.elapsed());
    if read != w.bytes() {
        return Err(format!("tier read back {read} bytes of {}", w.bytes()));
    }
    // One task, one value at a time: a reader restoring a prefix waits on this.
    let one_task = |tier: &Tier| -> Result<f64, String> {
        if one_task_count == 0 {
            return Ok(0.0);
        }
        drop_caches();
        let start = Instant::now();
        let read = futures::executor::block_on(read_all(tier, w, 1, one_task_count))?;
        Ok(mb_per_s(read, start.elapsed()))
    };
    let read_one_task = one_task(&tier)?;
    tier.close().map_err(|e| e.to_string())?;
    // The same directory reopened with values read whole, one read in flight.
    let whole = TierConfig { read_chunk_bytes: usize::MAX / 2, ..config };
    let (tier, _) = Tier::open(whole).map_err(|e| e.to_string())?;
    let read_one_task_whole = one_task(&tier)?;
    tier.close().map_err(|e| e.to_string())?;
    Ok(WriteRead { write, read: read_rate, read_one_task, read_one_task_whole })
}

/// Reads the first `count` objects of the random order, keeping `depth` reads in
/// flight (a new one starts as soon as any finishes); returns the bytes read.
async fn read_all(tier: &Tier, w: &Workload, depth: usize, count: usize) -> Result<u64, String> {
    let mut order = w.read_order().into_iter().take(count);
    let mut in_flight = FuturesUnordered::new();
    let mut read = 0u64;
    loop {
        while in_flight.len() < depth {
            let Some(i) = order.next() else { break };
            in_flight.push(tier.read(w.key(i).as_ref()).map_err(|e| e.to_string())?);
        }
        let Some(reply) = in_flight.next().await else { return Ok(read) };
        let (_, value) = reply.map_err(|_| "tier closed".to_string())?.map_err(|e| e.to_string())?;
        read += value.len() as u64;
    }
}

/// The seed's design: a file per object (named after the key), written by a pool of
/// two threads with write + fsync; read back per file by the same pool after dropping
/// the page cache.
pub fn run_file_per_object(w: &Workload, dir: &Path) -> Result<WriteRead, String> {
    reset_dir(dir)?;
    let path = |i: usize| dir.join(format!("{i:08}.kv"));
    let start = Instant::now();
    on_pool(w.count, |i| {
        let mut f = File::create(path(i))?;
        f.write_all(&w.value(i))?;
        f.sync_all()
    })?;
    // The seed never fsyncs the directory; neither does its baseline.
    let write = mb_per_s(w.bytes(), start.elapsed());
    drop_caches();
    let order = w.read_order();
    let start = Instant::now();
    on_pool(w.count, |n| {
        let mut buf = Vec::with_capacity(w.value_size);
        File::open(path(order[n]))?.read_to_end(&mut buf)?;
        if buf.len() == w.value_size { Ok(()) } else { Err(std::io::Error::other("short file")) }
    })?;
    let read = mb_per_s(w.bytes(), start.elapsed());
    reset_dir(dir)?;
    Ok(WriteRead { write, read, read_one_task: 0.0, read_one_task_whole: 0.0 })
}

/// Runs `job(0..count)` on [`BASELINE_THREADS`] threads.
fn on_pool(count: usize, job: impl Fn(usize) -> std::io::Result<()> + Sync) -> Result<(), String> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..BASELINE_THREADS)
            .map(|_| {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(());
                        }
                        job(i)?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|h| h.join().expect("baseline worker panicked"))
    })
    .map_err(|e: std::io::Error| format!("file-per-object baseline: {e}"))
}
