//! `compare store`: the embedded store with persistence against the SSD tier alone:
//! puts of 1 MiB values until `flush` returns (everything durable), one task and eight,
//! run by run interleaved (the device drifts over minutes), medians and ratios.
//!
//! Both contenders get the same stream of distinct values rotating over 1 GiB, so that
//! neither copies from a value the cache holds already. The store is warmed first (one
//! untimed pass over its 1 GiB of memory): a long-lived store faults its memory in once,
//! and the timed run measures the steady state. The tier alone is handed each
//! value without a copy (`Bytes`), as a caller of the tier would; the store copies it
//! into its memory replica, as a put must.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use larder_engine::disk::{Tier, TierConfig};
use larder_engine::ids::{NodeId, ObjectVersion};
use larder_engine::key::Key;
use larder_tokio::StoreConfig;

use super::mb_per_s;

/// Bytes per value.
pub const VALUE: usize = 1 << 20;

/// Distinct values rotating over 1 GiB (cheap to make: each is stamped with its index).
pub fn rotating_values() -> Arc<Vec<Bytes>> {
    let mut source = vec![0u8; 1 << 30];
    for (i, chunk) in source.chunks_mut(VALUE).enumerate() {
        chunk.fill(i as u8);
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    let source = Bytes::from(source);
    Arc::new((0..(1 << 30) / VALUE).map(|i| source.slice(i * VALUE..(i + 1) * VALUE)).collect())
}

fn key(i: usize) -> Key {
    Key::new(format!("compare-store/{i:010}").as_bytes()).expect("valid key")
}

/// The tier alone in `dir` (emptied first): `count` puts from `tasks` threads, then
/// `flush`; MB/s.
pub fn run_tier(dir: &Path, values: &[Bytes], count: usize, tasks: usize) -> Result<f64, String> {
    super::reset_dir(dir)?;
    let (tier, _) =
        Tier::open(TierConfig::new(dir, "compare", NodeId(1))).map_err(|e| format!("tier: {e}"))?;
    let start = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..tasks)
            .map(|t| {
                let tier = &tier;
                s.spawn(move || -> Result<(), String> {
                    for i in (t..count).step_by(tasks) {
                        let value = values[i % values.len()].clone();
                        tier.put(key(i).as_ref(), ObjectVersion(1), value).map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().expect("put thread"))
    })?;
    tier.flush().map_err(|e| e.to_string())?;
    let rate = mb_per_s((count * VALUE) as u64, start.elapsed());
    tier.close().map_err(|e| e.to_string())?;
    super::reset_dir(dir)?;
    Ok(rate)
}

/// The store with persistence in `dir` (emptied first), 1 GiB of memory: `count` puts
/// from `tasks` tasks (on a runtime with one worker for one task, two otherwise), then
/// `flush`; MB/s.
pub fn run_store(dir: &Path, values: &Arc<Vec<Bytes>>, count: usize, tasks: usize) -> Result<f64, String> {
    super::reset_dir(dir)?;
    let rt = if tasks == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
    }
    .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let config = StoreConfig {
            memory_bytes: 1 << 30,
            storage_root: Some(dir.to_path_buf()),
            ..StoreConfig::default()
        };
        let store = Arc::new(larder_tokio::open(config).await.map_err(|e| format!("store: {e}"))?);
        // A long-lived store has touched its memory once: warm it (one pass over the
        // segment, whose buffers the store then recycles) so that the timed run
        // measures the steady state, not first-touch page faults. The warm-up's objects
        // stay (evicted as the run goes): deleting them would have the device discard
        // a gigabyte under the timed run.
        for i in 0..(1 << 30) / VALUE {
            let key = format!("warm-up/{i}");
            store.put(key.as_bytes(), &values[i % values.len()]).await.map_err(|e| e.to_string())?;
        }
        store.flush().await.map_err(|e| e.to_string())?;
        let start = Instant::now();
        let workers: Vec<_> = (0..tasks)
            .map(|t| {
                let (store, values) = (Arc::clone(&store), Arc::clone(values));
                tokio::spawn(async move {
                    for i in (t..count).step_by(tasks) {
                        let key = key(i);
                        store
                            .put(key.as_bytes(), &values[i % values.len()])
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for w in workers {
            w.await.map_err(|e| e.to_string())??;
        }
        store.flush().await.map_err(|e| e.to_string())?;
        let rate = mb_per_s((count * VALUE) as u64, start.elapsed());
        store.close().await.map_err(|e| e.to_string())?;
        Ok::<f64, String>(rate)
    })
    .and_then(|rate| super::reset_dir(dir).map(|()| rate))
}
