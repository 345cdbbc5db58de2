//! Master memory per resident object: fills a master with one million objects and
//! prints the heap bytes it holds per object, counted by a counting allocator, beside
//! the bytes of the key itself. Run with `cargo bench -p larder-benches --bench
//! master_memory`. Target (issue 2): ≤ 200 bytes per object besides its key.

use std::alloc::System;

use larder_benches::{KEY_LEN, fill, master_with_segment};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const RESIDENT: u64 = 1_000_000;
const VALUE: u64 = 64 << 10;

fn main() {
    // `cargo test --benches` runs bench binaries in test mode; a fill of a million
    // objects is a benchmark, not a test.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let region = Region::new(ALLOCATOR);
    let mut m = master_with_segment(RESIDENT, VALUE);
    fill(&mut m, 0..RESIDENT, VALUE);
    let change = region.change();
    // Growth by realloc is already counted in bytes_allocated (shrinking in deallocated).
    let held = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    let per_object = held as f64 / RESIDENT as f64;
    println!("master memory: {} objects resident, {} heap bytes held", m.stats().objects, held);
    println!(
        "master memory per resident object: {:.1} bytes, of which {} are the key and {:.1} are the master's own",
        per_object,
        KEY_LEN,
        per_object - KEY_LEN as f64
    );
    println!("(target: <= 200 bytes per object besides its key)");
    println!("of which the master's tables (slab, key index, segment allocators) hold {}", m.heap_bytes());
}
