//! The SSD tier's configuration.

use std::path::PathBuf;
use std::string::String;
use std::time::Duration;

use crate::ids::NodeId;
use crate::sync::Arc;
use crate::uring::{DriverConfig, Notifier};

/// Whether bucket files use `O_DIRECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectIo {
    /// Use it if the filesystem accepts it (probed once per directory), else buffered.
    #[default]
    Auto,
    /// Always buffered I/O.
    Never,
}

/// Tier configuration.
#[derive(Debug, Clone)]
pub struct TierConfig {
    /// The storage root (must exist and be a writable directory).
    pub root: PathBuf,
    /// The cluster's directory name under the root.
    pub cluster: String,
    /// This node (its directory is `<root>/<cluster>/<node>/`).
    pub node: NodeId,
    /// Physical bytes the node's buckets may take; `None`: unlimited.
    pub max_bytes: Option<u64>,
    /// Use (fraction of `max_bytes`) at which bucket eviction starts (0.9).
    pub high_watermark: f64,
    /// Use eviction brings the node down to (0.8).
    pub low_watermark: f64,
    /// A bucket is sealed once it holds this many bytes (64 MiB).
    pub bucket_bytes: u64,
    /// ... or once no record has joined it for this long (20 ms: the stream paused)...
    pub bucket_idle: Duration,
    /// ... or once its first record is this old (1 s: a trickle is still persisted in
    /// bounded time). See [`super::batch`].
    pub bucket_max_age: Duration,
    /// Bytes the write-behind queue holds before puts wait (256 MiB).
    pub queue_bytes: usize,
    /// Size of the writer's write chunks (1 MiB).
    pub chunk_bytes: usize,
    /// Chunks the writer keeps in flight (16).
    pub write_depth: u32,
    /// Reads the reader keeps in flight (64).
    pub read_depth: u32,
    /// A value is read as concurrent reads of this many bytes each (256 KiB), so that
    /// one large value keeps several reads in flight.
    pub read_chunk_bytes: usize,
    /// `O_DIRECT` or not.
    pub direct_io: DirectIo,
    /// The I/O drivers' configuration (backend choice, threads).
    pub driver: DriverConfig,
    /// Queue [`TierEvent`](super::TierEvent)s for [`Tier::poll_event`](super::Tier::poll_event) (the store uses them to keep the
    /// master informed). Off, nothing is queued.
    pub events: bool,
    /// Signalled whenever an event is queued (by default the tier makes its own; the
    /// store passes the notifier its background task waits on).
    pub event_signal: Option<Arc<Notifier>>,
}

impl TierConfig {
    /// Defaults for a node directory under `root`.
    pub fn new(root: impl Into<PathBuf>, cluster: impl Into<String>, node: NodeId) -> Self {
        Self {
            root: root.into(),
            cluster: cluster.into(),
            node,
            max_bytes: None,
            high_watermark: 0.9,
            low_watermark: 0.8,
            bucket_bytes: 64 << 20,
            bucket_idle: Duration::from_millis(20),
            bucket_max_age: Duration::from_secs(1),
            queue_bytes: 256 << 20,
            chunk_bytes: 1 << 20,
            write_depth: 16,
            read_depth: 64,
            read_chunk_bytes: 256 << 10,
            direct_io: DirectIo::Auto,
            driver: DriverConfig::default(),
            events: false,
            event_signal: None,
        }
    }
}
