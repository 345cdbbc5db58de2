//! Codec throughput: encode and decode of the hot messages, in bytes per second.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fixtures::list;
use larder_benches::key_bytes;
use larder_engine::wire::{Message, ReplicaList, Request, Response};
use larder_engine::{
    BucketId, DiskReplica, Duration, KeyRef, MemoryReplica, NodeId, ObjectVersion, ReplicaDescriptor,
    SegmentId,
};

mod fixtures {
    use super::*;

    /// A replica list as a get returns it: one memory replica, one disk replica.
    pub(crate) fn list() -> ReplicaList {
        ReplicaList {
            version: ObjectVersion(123_456),
            size: 1 << 20,
            lease: Duration::from_secs(10),
            crc32c: Some(0x5eed_0001),
            replicas: [
                ReplicaDescriptor::Memory(MemoryReplica {
                    segment: SegmentId(3),
                    offset: 1 << 30,
                    len: 1 << 20,
                }),
                ReplicaDescriptor::Disk(DiskReplica {
                    node: NodeId(3),
                    bucket: BucketId(77),
                    offset: 4096,
                    len: 1 << 20,
                    crc32c: 0xdead_beef,
                }),
            ]
            .into_iter()
            .collect(),
        }
    }
}

fn bench_message(c: &mut Criterion, name: &str, message: &Message<'_>) {
    let len = message.encoded_len().expect("encodable");
    let mut buf = vec![0u8; len];
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function(BenchmarkId::new("encode", name), |b| {
        b.iter(|| message.encode(std::hint::black_box(&mut buf)).expect("fits"))
    });
    message.encode(&mut buf).expect("fits");
    group.bench_function(BenchmarkId::new("decode", name), |b| {
        b.iter(|| Message::decode(std::hint::black_box(&buf)).expect("valid"))
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let keys: Vec<[u8; 32]> = (0..64).map(key_bytes).collect();
    let key = KeyRef::new(&keys[0]).expect("key");
    bench_message(c, "get_replica_list_request", &Message::Request(Request::GetReplicaList { key }));
    bench_message(
        c,
        "put_start_request",
        &Message::Request(Request::PutStart { writer: NodeId(1), key, size: 1 << 20, replicas: 1 }),
    );
    bench_message(c, "get_replica_list_response", &Message::Response(Response::GetReplicaList(Ok(list()))));
    let batch: Vec<KeyRef<'_>> = keys.iter().map(|k| KeyRef::new(k).expect("key")).collect();
    bench_message(c, "batch_get_64_request", &Message::Request(Request::BatchGetReplicaList { keys: batch }));
    bench_message(
        c,
        "batch_get_64_response",
        &Message::Response(Response::BatchGetReplicaList((0..64).map(|_| Ok(Box::new(list()))).collect())),
    );

    let descriptor = list().replicas[1];
    let mut buf = [0u8; 64];
    let n = descriptor.encode(&mut buf).expect("fits");
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(n as u64));
    group.bench_function("encode/disk_descriptor", |b| {
        b.iter(|| descriptor.encode(std::hint::black_box(&mut buf)).expect("fits"))
    });
    group.bench_function("decode/disk_descriptor", |b| {
        b.iter(|| ReplicaDescriptor::decode(std::hint::black_box(&buf[..n])).expect("valid"))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
