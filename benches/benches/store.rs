//! The embedded Store with 1 MiB values, on one thread (tokio's current-thread runtime).
//!
//! - `embedded_1MiB`: the baselines `memcpy_into_1GiB` (a hot 1 MiB value into slots
//!   rotating over 1 GiB, as put copies into its replica), `memcpy_from_256MiB` (values
//!   rotating over 256 MiB into one buffer, as get_into copies out) and the same on 8
//!   threads (`memcpy_from_256MiB_8_threads`: what the machine's cores and memory allow
//!   copies in parallel); `put` (memory only, steady state with eviction), `get` (the
//!   replica's own bytes), `get_into` (into the caller's buffer, one task) and
//!   `get_into_8_tasks` (8 tasks on a 2-worker runtime reading at once: the node lock
//!   is held only for the lookup, so copies run in parallel). Targets: put and get
//!   ≥ 5 GB/s; 8 tasks ≥ 1.8× one.
//! - `persistent_1MiB`: the SSD tier alone (puts, then `flush`) against the store with
//!   persistence (puts, then `flush`), on the same directory, both fed the same stream
//!   of distinct values rotating over 1 GiB. Target: the store ≥ 0.95× the tier.
//!
//! `LARDER_BENCH_DIR` picks the directory for the persistent group (default
//! `target/bench-store`; it must be on the device to measure, not tmpfs).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use larder_engine::disk::{Tier, TierConfig};
use larder_engine::{Key, NodeId, ObjectVersion};
use larder_tokio::{Store, StoreConfig};

const VALUE: usize = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("bench/{i:010}").into_bytes()).collect()
}

/// Puts `iters` values under the next keys of `keys`.
async fn put_fresh(store: &Store, keys: &[Vec<u8>], next: &mut usize, iters: u64, value: &[u8]) {
    for _ in 0..iters {
        store.put(&keys[*next % keys.len()], value).await.expect("put");
        *next += 1;
    }
}

fn embedded(c: &mut Criterion) {
    let rt = runtime();
    let value = vec![0x5au8; VALUE];
    let config = StoreConfig { memory_bytes: 1 << 30, ..StoreConfig::default() };
    let store: Store = rt.block_on(larder_tokio::open(config)).expect("open");
    let mut group = c.benchmark_group("embedded_1MiB");
    group.throughput(Throughput::Bytes(VALUE as u64));
    group.measurement_time(Duration::from_secs(4));

    // The baselines copy as the store does: a hot value into slots rotating over a
    // 1 GiB region (put), and values rotating over 256 MiB into one buffer (get_into).
    let mut region = vec![0u8; 1 << 30];
    let slots = region.len() / VALUE;
    let mut slot = 0usize;
    group.bench_function("memcpy_into_1GiB", |b| {
        b.iter(|| {
            let at = (slot % slots) * VALUE;
            slot += 1;
            region[at..at + VALUE].copy_from_slice(black_box(&value));
        })
    });
    let mut dst = vec![0u8; VALUE];
    group.bench_function("memcpy_from_256MiB", |b| {
        b.iter(|| {
            let at = (slot % 256) * VALUE;
            slot += 1;
            dst.copy_from_slice(&region[at..at + VALUE]);
            black_box(&dst);
        })
    });
    drop(region);

    // Puts of fresh keys: once the segment is full, every put also evicts.
    let all = keys(1 << 20);
    let mut next = 0usize;
    group.bench_function("put", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                put_fresh(&store, &all, &mut next, iters, &value).await;
                start.elapsed()
            })
        })
    });

    let resident = keys(256);
    rt.block_on(async {
        store.remove_all(true).await.expect("clear");
        for k in &resident {
            store.put(k, &value).await.expect("put");
        }
    });
    let mut i = 0usize;
    group.bench_function("get", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(store.get(&resident[i % resident.len()]).await.expect("get"));
                    i += 1;
                }
                start.elapsed()
            })
        })
    });
    let mut buf = vec![0u8; VALUE];
    group.bench_function("get_into", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    store.get_into(&resident[i % resident.len()], &mut buf).await.expect("get");
                    i += 1;
                }
                black_box(&buf);
                start.elapsed()
            })
        })
    });
    // Eight tasks reading at once on a two-worker runtime: copies out of the replicas
    // run in parallel (the node lock is held only for the lookup). Compare with
    // `get_into` (one task) and with eight threads of plain memcpy.
    let store = std::sync::Arc::new(store);
    let resident = std::sync::Arc::new(resident);
    let workers = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    group.bench_function("get_into_8_tasks", |b| {
        b.iter_custom(|iters| {
            workers.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|t| {
                        let (store, resident) =
                            (std::sync::Arc::clone(&store), std::sync::Arc::clone(&resident));
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; VALUE];
                            for n in (t..iters).step_by(TASKS as usize) {
                                let k = &resident[n as usize % resident.len()];
                                store.get_into(k, &mut buf).await.expect("get");
                            }
                            black_box(buf);
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
                start.elapsed()
            })
        })
    });
    let region = vec![0x11u8; 256 << 20];
    group.bench_function("memcpy_from_256MiB_8_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for t in 0..TASKS {
                    let region = &region;
                    scope.spawn(move || {
                        let mut dst = vec![0u8; VALUE];
                        for n in (t..iters).step_by(TASKS as usize) {
                            let at = (n as usize % 256) * VALUE;
                            dst.copy_from_slice(&region[at..at + VALUE]);
                            black_box(&dst);
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    group.finish();
    rt.block_on(store.close()).expect("close");
}

/// Tasks (or threads) of the parallel read benches.
const TASKS: u64 = 8;

fn bench_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("LARDER_BENCH_DIR")
        .map_or_else(|| PathBuf::from("target/bench-store"), PathBuf::from);
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    dir
}

/// 1 GiB of distinct 1 MiB values: both contenders of the persistent group get the
/// same stream, so that neither copies from a value the cache holds already.
fn rotating_values() -> Vec<Bytes> {
    let mut source = vec![0u8; 1 << 30];
    for (i, chunk) in source.chunks_mut(VALUE).enumerate() {
        chunk.fill(i as u8);
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    let source = Bytes::from(source);
    (0..(1 << 30) / VALUE).map(|i| source.slice(i * VALUE..(i + 1) * VALUE)).collect()
}

fn persistent(c: &mut Criterion) {
    let rt = runtime();
    let values = rotating_values();
    let mut group = c.benchmark_group("persistent_1MiB");
    group.throughput(Throughput::Bytes(VALUE as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));

    let dir = bench_dir("tier");
    let (tier, _) = Tier::open(TierConfig::new(&dir, "bench", NodeId(1))).expect("tier");
    let mut n = 0usize;
    group.bench_function("tier_put_flush", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let key = Key::new(format!("bench/{n:010}").as_bytes()).expect("key");
                tier.put(key.as_ref(), ObjectVersion(1), values[n % values.len()].clone()).expect("put");
                n += 1;
            }
            tier.flush().expect("flush");
            let elapsed = start.elapsed();
            tier.remove_all().expect("reclaim space");
            elapsed
        })
    });
    drop(tier);

    let dir = bench_dir("store");
    let config = StoreConfig { memory_bytes: 1 << 30, storage_root: Some(dir), ..StoreConfig::default() };
    let store: Store = rt.block_on(larder_tokio::open(config)).expect("open");
    let all = keys(1 << 20);
    let mut next = 0usize;
    group.bench_function("store_put_flush", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let value = &values[next % values.len()];
                    store.put(&all[next % all.len()], value).await.expect("put");
                    next += 1;
                }
                store.flush().await.expect("flush");
                let elapsed = start.elapsed();
                store.remove_all(true).await.expect("reclaim space");
                elapsed
            })
        })
    });
    group.finish();
    rt.block_on(store.close()).expect("close");
}

criterion_group!(benches, embedded, persistent);
criterion_main!(benches);
