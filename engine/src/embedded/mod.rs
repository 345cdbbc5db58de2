//! The runtime-agnostic async glue (std): the embedded [`Store`], generic over a small
//! [`Runtime`] trait that `larder-tokio` and `larder-smol` implement.
//!
//! Embedded mode runs the master state machine and one node in the process: a memory
//! segment the master allocates replicas in (each replica's bytes in a buffer of its
//! own, shared with readers and the tier without copies), and, when a storage root is
//! configured, the SSD tier that persists every put behind the caller and serves
//! memory misses. A background task on the runtime carries the tier's events
//! (persisted, dropped, failed) to the master, keeps its timers and carries out the
//! tier work they cause.
//!
//! (Not to be confused with [`crate::uring::Driver`], the I/O driver: this module is
//! the glue between the engine's machines, the tier's threads and an async runtime.)

mod config;
mod error;
mod node;
mod runtime;
mod shared;
mod store;

pub use config::{Clock, ConfigError, DEFAULT_MEMORY_BYTES, ManualClock, StoreConfig, parse_size};
pub use error::StoreError;
pub use runtime::{FdWatch, Runtime};
pub use store::{Store, StoreStats};
