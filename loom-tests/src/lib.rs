//! loom models of the SSD tier's concurrency protocols. The models are in `tests/`
//! and only exist under the `larder_loom` cfg:
//!
//! ```sh
//! RUSTFLAGS="--cfg larder_loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
//!     cargo test -p larder-loom-tests --release
//! ```
//!
//! - `bucket_readers`: readers racing retirement — the file is unlinked exactly once,
//!   after the last reader, and never read after.
//! - `bucket_writer`: a writer failing at each step — unlinked exactly once, never
//!   visible, never released twice.
//! - `write_behind`: a producer, the writer and `flush()` — flush returns only after
//!   everything accepted before it is durable.
//! - `job_queue`: the I/O pool's job queue stopped while its worker waits — every job
//!   queued before runs and the worker returns (no lost wakeup).
//!
//! Each model has a deliberately broken variant that must be caught (`should_panic`).
