//! Master configuration.

use crate::ids::ObjectVersion;
use crate::time::Duration;
use crate::wire::MAX_REPLICAS;

/// When the master asks nodes to persist objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistPolicy {
    /// Never: eviction drops objects that have no disk replica.
    Off,
    /// Only when an object without a disk replica is evicted from memory.
    OnEvict,
    /// After every put ends (write-behind), and on eviction if that has not happened.
    WriteBehind,
}

/// Master configuration.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// How long a [`Master::handle_get_replica_list`](super::Master::handle_get_replica_list) lease lasts (default 10 s).
    pub lease_ttl: Duration,
    /// How long a put may stay in progress before another put of the same key may
    /// preempt it, and before it is discarded (default 30 s).
    pub put_discard_timeout: Duration,
    /// How long a node may stay silent before it is dropped (default 10 s).
    pub node_ttl: Duration,
    /// Segment use (fraction of capacity) at which eviction starts (default 0.90).
    pub high_watermark: f64,
    /// Segment use eviction brings memory down to (default 0.80).
    pub low_watermark: f64,
    /// When to ask nodes to persist (default write-behind).
    pub persist: PersistPolicy,
    /// Allocation unit inside segments, a power of two (default 4096, so values are
    /// O_DIRECT-aligned).
    pub granule: u64,
    /// The most memory replicas one put may ask for (default 4).
    pub max_replicas: u8,
    /// The first version handed out. A master that restarts should start above every
    /// version it handed out before (the runtimes pass the wall clock in nanoseconds),
    /// so that versions never go backwards across restarts.
    pub first_version: ObjectVersion,
    /// How long after the first node's ping a node may still name the memory replicas
    /// it holds from an earlier run of the master (a restarted master's restore window).
    pub restore_window: Duration,
    /// Seed of the key hash (the runtimes pass a random one).
    pub hash_seed: u64,
    /// How long after a failed persist it is asked for again (default 100 ms); the
    /// delay doubles with every failure of the same object, up to `persist_retry_max`.
    pub persist_retry: Duration,
    /// The longest delay between retries of a failed persist (default 10 s).
    pub persist_retry_max: Duration,
    /// The nodes' storage roots are one shared filesystem (the DFS mode), so a node's
    /// bucket files stay readable by others after it is lost: its disk replicas stay
    /// listed when it expires (readers read them straight from the files) instead of
    /// going offline until it re-registers them. A node that restarts still
    /// re-registers what it recovered. Default false.
    pub shared_storage: bool,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(10),
            put_discard_timeout: Duration::from_secs(30),
            node_ttl: Duration::from_secs(10),
            high_watermark: 0.90,
            low_watermark: 0.80,
            persist: PersistPolicy::WriteBehind,
            granule: 4096,
            max_replicas: 4,
            first_version: ObjectVersion(1),
            restore_window: Duration::from_secs(60),
            hash_seed: 0x6c61_7264_6572,
            persist_retry: Duration::from_millis(100),
            persist_retry_max: Duration::from_secs(10),
            shared_storage: false,
        }
    }
}

/// A configuration the master cannot run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Watermarks must satisfy `0 < low <= high <= 1`.
    #[error("watermarks must satisfy 0 < low <= high <= 1")]
    Watermarks,
    /// The granule must be a power of two of at least 64 bytes.
    #[error("granule must be a power of two of at least 64 bytes")]
    Granule,
    /// `max_replicas` must be between 1 and the wire limit.
    #[error("max_replicas must be between 1 and {MAX_REPLICAS}")]
    MaxReplicas,
    /// The first version must not be zero.
    #[error("first_version must not be zero")]
    FirstVersion,
}
