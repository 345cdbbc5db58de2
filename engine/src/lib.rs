//! Larder's engine: the runtime-agnostic core of a tiered KV-cache store, and (with
//! `std`) the drivers that run it.
//!
//! # What is sans-IO, and what is not
//!
//! The decisions live in plain data types and poll-driven state machines that never
//! read a clock, spawn a thread or make a syscall: time arrives as an [`Instant`]
//! argument, inputs through `handle_*` methods, and outputs leave through
//! `#[must_use] poll_*` methods (each machine documents its call order). They build
//! with `no_std` + `alloc`:
//!
//! - [`master`]: objects, replicas, segments, leases, eviction, durability and retries;
//! - [`uring::IoMachine`]: batch I/O submissions, completions, short transfers, retries;
//! - [`disk::batch`]: where the bucket writer puts each record and when it seals;
//! - [`disk::protocol`]: who reads a bucket and who deletes it (atomics, no I/O);
//! - [`net`]: frames, the handshake, the client and server connection machines;
//! - [`rdma`]: queue-pair states and transitions, the endpoint handshake, the
//!   work-request machine (and, with `sim`, a simulated NIC);
//! - [`disk::format`], [`wire`], [`descriptor`], [`codec`], [`key`]: formats and codecs.
//!
//! The `std` feature adds what does I/O, owns threads and reads the clock, driving the
//! machines above:
//!
//! - [`uring`]'s `Driver` (io_uring or a thread pool) and its eventfd;
//! - [`disk`]'s `Tier`: the node directory and its lock, the bucket writer and reader
//!   threads, recovery, the removal log, and the index (a data structure under a
//!   mutex, whose bucket files are deleted through the protocol);
//! - `embedded`: the embedded `Store` and its glue to an async runtime.
//!
//! | module | what it owns |
//! |---|---|
//! | [`time`] | the engine's own [`Instant`] and [`Duration`] |
//! | [`key`] | object keys: non-empty, bounded, never a path |
//! | [`ids`] | node, segment, bucket ids and object versions |
//! | [`descriptor`] | replica descriptors and their versioned binary form |
//! | [`codec`] | the strict little-endian reader/writer every format uses |
//! | [`checksum`] | CRC32C, hardware-accelerated with `std` |
//! | [`disk`] | the SSD tier: bucket format, bucket protocol, batching policy, and (with `std`) the tier |
//! | [`wire`] | master requests, responses, node commands and the master's error codes |
//! | [`net`] | frames, the handshake, and the client and server connection machines |
//! | [`rdma`] | RDMA queue pairs, the endpoint handshake, work requests and completions |
//! | [`sync`] | std / loom switch for the primitives the bucket protocols use |
//! | [`master`] | the master state machine |
//! | [`uring`] | batch file I/O: the submission/completion machine and its drivers |
//! | `memory` (std) | a node's segment memory, committed (and in huge pages where given) when it starts |
//! | `embedded` (std) | the embedded async `Store` (master + node in one process, the SSD tier, the glue to an async runtime through a small `Runtime` trait) |
#![no_std]
#![deny(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod checksum;
pub mod codec;
pub mod descriptor;
pub mod disk;
#[cfg(feature = "std")]
pub mod embedded;
pub mod ids;
#[cfg(feature = "std")]
pub mod jobs;
pub mod key;
pub mod master;
#[cfg(feature = "std")]
pub mod memory;
pub mod net;
#[cfg(feature = "std")]
mod pool;
pub mod rdma;
pub mod sync;
pub mod time;
pub mod uring;
pub mod wire;

pub use descriptor::{DiskReplica, MemoryReplica, ReplicaDescriptor, ReplicaStatus};
pub use ids::{BucketId, Incarnation, NodeId, ObjectVersion, SegmentId};
pub use key::{Key, KeyError, KeyRef, MAX_KEY_LEN};
pub use time::{Duration, Instant};
