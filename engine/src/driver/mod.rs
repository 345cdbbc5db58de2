//! The runtime-agnostic async glue (std): the embedded [`Store`], generic over a small
//! [`Runtime`] trait that `larder-tokio` and `larder-smol` implement.
//!
//! Embedded mode runs the master state machine and one node in the process: a memory
//! segment the master allocates replicas in (values are copied into it), and, when a
//! storage root is configured, the SSD tier that persists every put behind the caller
//! and serves memory misses. A background task on the runtime carries the tier's
//! events (persisted, dropped, failed) to the master and keeps its timers.

mod config;
mod error;
mod node;
mod runtime;
mod store;

pub use config::{Clock, ConfigError, DEFAULT_MEMORY_BYTES, ManualClock, StoreConfig, parse_size};
pub use error::StoreError;
pub use runtime::{FdWatch, Runtime};
pub use store::{Store, StoreStats};
