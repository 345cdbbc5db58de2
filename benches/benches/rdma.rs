//! The work-request machine's own cost (no device: posts succeed, completions are
//! made up), and 1 MiB transfers over the simulated NIC beside memcpy of the same bytes.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use larder_engine::rdma::endpoint::RemoteRegion;
use larder_engine::rdma::mr::{MemoryRegion, MemoryRegions};
use larder_engine::rdma::qp::Access;
use larder_engine::rdma::status::WcStatus;
use larder_engine::rdma::transfer::{Completion, Opcode, WorkRequest, WrConfig, WrMachine};

const MIB: u64 = 1 << 20;

fn machine() -> WrMachine {
    let mut local = MemoryRegions::new();
    local
        .register(MemoryRegion {
            addr: 1 << 32,
            len: 64 * MIB,
            lkey: 1,
            rkey: 2,
            access: Access::LOCAL_WRITE,
        })
        .expect("one region");
    WrMachine::new(WrConfig::default(), local, vec![RemoteRegion { addr: 1 << 40, len: 64 * MIB, rkey: 3 }])
}

/// One transfer of `len` bytes through the machine: submit, post every chain, complete
/// every signaled request, take the events.
fn one_transfer(m: &mut WrMachine, chain: &mut Vec<WorkRequest>, signaled: &mut Vec<u64>, len: u64) {
    m.submit(Opcode::Write, 1 << 32, 1 << 40, len).expect("inside the regions");
    signaled.clear();
    while m.poll_post(chain).is_some() {
        m.handle_post_result(Ok(()));
        signaled.extend(chain.iter().filter(|w| w.signaled).map(|w| w.wr_id));
    }
    for &wr_id in signaled.iter() {
        m.handle_completion(Completion { wr_id, status: WcStatus::Success });
    }
    while m.poll_event().is_some() {}
}

fn wr_machine(c: &mut Criterion) {
    let mut g = c.benchmark_group("wr_machine");
    let (mut chain, mut signaled) = (Vec::new(), Vec::new());
    // A 64 KiB transfer is one work request: the time per element is per request.
    g.throughput(Throughput::Elements(1));
    let mut m = machine();
    g.bench_function("request (one 64 KiB transfer)", |b| {
        b.iter(|| one_transfer(&mut m, &mut chain, &mut signaled, 64 << 10))
    });
    // 1 MiB is 16 slices of 64 KiB.
    g.throughput(Throughput::Elements(16));
    let mut m = machine();
    g.bench_function("transfer 1 MiB (16 requests)", |b| {
        b.iter(|| one_transfer(&mut m, &mut chain, &mut signaled, MIB))
    });
    g.finish();
}

fn simulated_nic(c: &mut Criterion) {
    use larder_benches::compare::rdma::{Memcpy, Simulated};
    let mut g = c.benchmark_group("rdma_1MiB");
    g.throughput(Throughput::Bytes(64 * MIB));
    g.sample_size(20);
    let (mut memcpy, mut simulated) = (Memcpy::new(), Simulated::new());
    g.bench_function("memcpy", |b| b.iter(|| memcpy.run(64 * MIB, MIB as usize)));
    g.bench_function("simulated NIC write", |b| {
        b.iter(|| simulated.run(Opcode::Write, 64 * MIB, MIB as usize))
    });
    g.finish();
}

criterion_group!(benches, wr_machine, simulated_nic);
criterion_main!(benches);
