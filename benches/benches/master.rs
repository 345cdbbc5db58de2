//! Master throughput with one million resident objects (64 KiB values, 32-byte keys).
//!
//! - `put_start_end`: a PutStart and its PutEnd for a new key (the pair is one element);
//! - `get_replica_list`: a lookup of a resident key, granting a lease.
//!
//! Targets (issue 2): ≥ 1M pairs/s and ≥ 2M lookups/s on one core.

use std::time::Instant as WallClock;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use larder_benches::{WRITER, fill, key_bytes, master_with_segment};
use larder_engine::{Instant, KeyRef};

const RESIDENT: u64 = 1_000_000;
const VALUE: u64 = 64 << 10;

fn master_ops(c: &mut Criterion) {
    let mut m = master_with_segment(RESIDENT * 2, VALUE);
    fill(&mut m, 0..RESIDENT, VALUE);
    let now = Instant::from_nanos(2);
    let mut group = c.benchmark_group("master_1M_resident");
    group.throughput(Throughput::Elements(1));

    let mut next = RESIDENT;
    group.bench_function("put_start_end", |b| {
        b.iter_custom(|iters| {
            let keys: Vec<[u8; 32]> = (next..next + iters).map(key_bytes).collect();
            next += iters;
            let start = WallClock::now();
            for key in &keys {
                let key = KeyRef::new(key).expect("key");
                let grant = m.handle_put_start(now, WRITER, key, VALUE, 1).expect("room");
                m.handle_put_end(now, WRITER, key, grant.version, Some(0)).expect("writer");
            }
            let elapsed = start.elapsed();
            // Back to one million resident objects, outside the timed part.
            for key in &keys {
                m.handle_remove(now, KeyRef::new(key).expect("key"), true).expect("present");
            }
            elapsed
        })
    });

    // Visit resident keys in a scattered order (a stride co-prime with the count). The
    // key is made on the spot, as it arrives in a request: hot in cache (a table of a
    // million keys would add a cache miss of the bench's own to every lookup).
    let mut i = 0u64;
    group.bench_function("get_replica_list", |b| {
        b.iter(|| {
            i = (i + 7919) % RESIDENT;
            let bytes = key_bytes(i);
            let key = KeyRef::new(&bytes).expect("key");
            m.handle_get_replica_list(now, std::hint::black_box(key)).expect("resident")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = master_ops
}
criterion_main!(benches);
