//! The batch I/O machine alone (no syscalls): push, submit, complete and reap, per
//! operation, in batches of 64 under a queue depth of 32. Target (issue 3): ≤ 100 ns.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use larder_engine::uring::{BufId, FileId, IoMachine, IoRequest};

fn machine(c: &mut Criterion) {
    let mut m = IoMachine::new(32, 16);
    let mut group = c.benchmark_group("uring_machine");
    group.throughput(Throughput::Elements(64));
    group.bench_function("op_round_trip_x64", |b| {
        b.iter(|| {
            for i in 0..64u32 {
                m.push(IoRequest::Read {
                    file: FileId(0),
                    offset: u64::from(i) << 20,
                    buf: BufId(i),
                    buf_offset: 0,
                    len: 1 << 20,
                });
            }
            let mut done = 0;
            while done < 64 {
                while let Some(s) = m.poll_submission() {
                    m.handle_completion(s.user_data, 1 << 20).expect("known op");
                }
                while let Some(c) = m.poll_completion() {
                    std::hint::black_box(c);
                    done += 1;
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, machine);
criterion_main!(benches);
