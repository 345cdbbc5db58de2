//! The synchronisation primitives the SSD tier's protocols use: `std`/`core` normally,
//! loom's model-checked versions when built with `RUSTFLAGS="--cfg larder_loom"` (see
//! the `loom-tests` crate). The cfg is `larder_loom`, not `loom`, because tokio and
//! other dependencies change behaviour under `cfg(loom)`.

#[cfg(not(larder_loom))]
pub use alloc::sync::Arc;
#[cfg(not(larder_loom))]
pub use core::sync::atomic::{AtomicU64, Ordering};
#[cfg(all(not(larder_loom), feature = "std"))]
pub use std::sync::{Condvar, Mutex, MutexGuard};

#[cfg(larder_loom)]
pub use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(larder_loom)]
pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
