//! Larder's engine: the runtime-agnostic, sans-IO core of a tiered KV-cache store.
//!
//! Everything in this crate is a plain data type or a poll-driven state machine.
//! Machines never read a clock, spawn a thread or make a syscall: time arrives as an
//! [`Instant`] argument, inputs through `handle_*` methods, and outputs leave through
//! `#[must_use] poll_*` methods. See each machine's documentation for its call order.
//!
//! The crate is `no_std` + `alloc`; the default `std` feature only adds
//! `std::error::Error`-based conveniences for now and, in later layers, the OS drivers.
//!
//! | module | what it owns |
//! |---|---|
//! | [`time`] | the engine's own [`Instant`] and [`Duration`] |
//! | [`key`] | object keys: non-empty, bounded, never a path |
//! | [`ids`] | node, segment, bucket ids and object versions |
//! | [`descriptor`] | replica descriptors and their versioned binary form |
//! | [`codec`] | the strict little-endian reader/writer every format uses |
//! | [`checksum`] | CRC32C, hardware-accelerated with `std` |
//! | [`disk`] | the SSD tier: bucket format, bucket protocol, and (with `std`) the tier |
//! | [`wire`] | master requests, responses and node commands |
//! | [`sync`] | std / loom switch for the primitives the bucket protocols use |
//! | [`master`] | the master state machine: objects, replicas, segments, leases, eviction |
//! | [`uring`] | batch file I/O: the submission/completion machine and its drivers |
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
pub mod key;
pub mod master;
#[cfg(feature = "std")]
mod pool;
pub mod sync;
pub mod time;
pub mod uring;
pub mod wire;

pub use descriptor::{DiskReplica, MemoryReplica, ReplicaDescriptor, ReplicaStatus};
pub use ids::{BucketId, Incarnation, NodeId, ObjectVersion, SegmentId};
pub use key::{Key, KeyError, KeyRef, MAX_KEY_LEN};
pub use time::{Duration, Instant};
