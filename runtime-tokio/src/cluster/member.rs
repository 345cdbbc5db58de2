//! A member of a cluster behind the embedded store's API: what [`crate::open`] returns
//! for a [`StoreConfig`] with a `master`.
//!
//! A member that contributes memory runs a [`NodeServer`] in the process (its segment,
//! and its SSD tier with a storage root) and speaks to the master as that node, so that
//! its puts are placed in its own segment first — and written (and read back) there in
//! memory, under the node's checks, without crossing the network; a member with `memory_bytes` 0 is a
//! pure client and every byte it puts or gets crosses the network. Its calls map the
//! cluster's failures to [`StoreError`]s: a master or node out of reach is
//! `Unreachable`, a refused transfer `Transfer`, bytes failing their CRC32C `Corrupted`.

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use larder_engine::disk::TierError;
use larder_engine::embedded::{ConfigError, StoreConfig, StoreError, StoreStats};
use larder_engine::net::ClusterName;
use larder_engine::{KeyRef, SegmentId};

use super::node::{self, NodeServer, NodeServerConfig};
use super::remote::{MAX_VALUE, RemoteError, RemoteStore};

/// How long opening waits for the master to answer and for the member's own segment to
/// be registered.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A member of a cluster. See the module documentation.
#[derive(Debug)]
pub struct Member {
    remote: RemoteStore,
    /// The in-process node contributing memory (and SSD); taken by `close`.
    node: Mutex<Option<NodeServer>>,
    segment: Option<SegmentId>,
    memory_bytes: u64,
    recovered: u64,
    /// Whether the member is closed. Every call holds it shared for as long as it runs
    /// and `close` holds it alone: a put acknowledged is one `close` waited for (and
    /// flushed), never one that slipped in after its flush.
    closed: tokio::sync::RwLock<bool>,
}

impl Member {
    /// Joins the cluster whose master `config.master` names: starts the node if the
    /// member contributes memory and waits until the master has registered it.
    ///
    /// Errors: `Config` (no master, a cluster name the protocol cannot carry),
    /// `Unreachable` (the master's name does not resolve, or it did not answer within
    /// 10 s), `Storage` (the node could not start: its storage root, its listener).
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let master_name = config.master.as_deref().ok_or_else(|| invalid("master", "no master to join"))?;
        let master = resolve(master_name).await?;
        let cluster = ClusterName::new(config.cluster.as_bytes())
            .map_err(|_| invalid("cluster", "1 to 64 printable ASCII characters"))?;
        let node =
            if config.memory_bytes > 0 { Some(start_node(config, master, cluster).await?) } else { None };
        let connected = match &node {
            Some(n) => RemoteStore::connect_as(master, cluster, n.node, n.incarnation, JOIN_TIMEOUT).await,
            None => RemoteStore::connect(master, cluster, JOIN_TIMEOUT).await,
        };
        let remote = match connected {
            // Disk replicas of nodes sharing this root are read straight from their files.
            Ok(remote) => {
                let remote = match &node {
                    Some(n) => remote.with_local_segment(n.local_segment()),
                    None => remote,
                };
                match &config.storage_root {
                    Some(root) => remote.with_shared_root(root.clone()),
                    None => remote,
                }
            }
            Err(e) => {
                if let Some(node) = node {
                    let _ = node.stop().await;
                }
                return Err(unreachable(master_name, &e));
            }
        };
        if let Some(n) = &node {
            if !n.wait_registered(JOIN_TIMEOUT).await {
                let _ = node.expect("checked").stop().await;
                return Err(StoreError::Unreachable(format!(
                    "{master_name}: did not register this member's segment"
                )));
            }
        }
        Ok(Self {
            remote,
            segment: node.as_ref().map(|n| n.segment),
            recovered: node.as_ref().map_or(0, |n| n.recovered as u64),
            node: Mutex::new(node),
            memory_bytes: config.memory_bytes,
            closed: tokio::sync::RwLock::new(false),
        })
    }

    /// Enters a call: `Closed` once `close` began; the guard keeps `close` waiting.
    async fn enter(&self) -> Result<tokio::sync::RwLockReadGuard<'_, bool>, StoreError> {
        let closed = self.closed.read().await;
        if *closed { Err(StoreError::Closed) } else { Ok(closed) }
    }

    /// Stores `value` under `key` (one memory replica; its owner persists it behind).
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.put_bytes(key, Bytes::copy_from_slice(value)).await
    }

    /// Stores the concatenation of `parts` under `key`.
    pub async fn put_parts(&self, key: &[u8], parts: &[&[u8]]) -> Result<(), StoreError> {
        self.put_bytes(key, Bytes::from(parts.concat())).await
    }

    async fn put_bytes(&self, key: &[u8], value: Bytes) -> Result<(), StoreError> {
        let _open = self.enter().await?;
        let checked = KeyRef::new(key)?;
        if value.is_empty() {
            return Err(StoreError::EmptyValue);
        }
        let len = value.len() as u64;
        self.remote.put_bytes(key, value, 1).await.map_err(|e| store_error(e, checked, len))
    }

    /// The value under `key`, read from the first replica whose bytes pass their CRC32C.
    pub async fn get(&self, key: &[u8]) -> Result<Bytes, StoreError> {
        let _open = self.enter().await?;
        let checked = KeyRef::new(key)?;
        self.remote.get(key).await.map_err(|e| store_error(e, checked, 0))
    }

    /// Copies the value under `key` into `buf`; returns its length (a value larger than
    /// `buf` is `BufferTooSmall` before it is transferred).
    pub async fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<usize, StoreError> {
        let _open = self.enter().await?;
        let checked = KeyRef::new(key)?;
        let value =
            self.remote.get_within(key, Some(buf.len())).await.map_err(|e| store_error(e, checked, 0))?;
        buf[..value.len()].copy_from_slice(&value);
        Ok(value.len())
    }

    /// The size of the value under `key`.
    pub async fn get_size(&self, key: &[u8]) -> Result<u64, StoreError> {
        let _open = self.enter().await?;
        let checked = KeyRef::new(key)?;
        self.remote.get_size(key).await.map_err(|e| store_error(e, checked, 0))
    }

    /// Whether `key` holds a complete object.
    pub async fn exists(&self, key: &[u8]) -> Result<bool, StoreError> {
        let _open = self.enter().await?;
        let checked = KeyRef::new(key)?;
        self.remote.exists(key).await.map_err(|e| store_error(e, checked, 0))
    }

    /// Removes the object under `key` (`force`: even while a reader holds a lease).
    pub async fn remove(&self, key: &[u8], force: bool) -> Result<(), StoreError> {
        let _open = self.enter().await?;
        let checked = KeyRef::new(key)?;
        self.remote.remove(key, force).await.map_err(|e| store_error(e, checked, 0))
    }

    /// Removes every object of the cluster (`force`: leased ones too); returns how many.
    pub async fn remove_all(&self, force: bool) -> Result<u64, StoreError> {
        let _open = self.enter().await?;
        let any = KeyRef::new(b"*").expect("a valid key");
        self.remote.remove_all(force).await.map_err(|e| store_error(e, any, 0))
    }

    /// Waits until everything the cluster acknowledged before the call is on SSD.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _open = self.enter().await?;
        let any = KeyRef::new(b"*").expect("a valid key");
        self.remote.flush().await.map_err(|e| store_error(e, any, 0))
    }

    /// Waits for the calls in progress, flushes (everything the cluster acknowledged
    /// is on SSD, where a node can persist it), withdraws this member's segment from the
    /// cluster and stops its node, releasing the storage root. Calls that begin meanwhile
    /// or later fail with `Closed`. Objects whose only replica was in this member's
    /// memory and that no node could persist are gone from the cluster. A failed flush
    /// is returned after the rest is done.
    pub async fn close(&self) -> Result<(), StoreError> {
        let mut closed = self.closed.write().await;
        if *closed {
            return Err(StoreError::Closed);
        }
        *closed = true;
        let any = KeyRef::new(b"*").expect("a valid key");
        let flushed = self.remote.flush().await.map_err(|e| store_error(e, any, 0));
        let node = self.lock_node().take();
        if let Some(node) = node {
            let segment = self.segment.expect("a node has a segment");
            if let Err(e) = self.remote.unmount(segment).await {
                // The master drops it by the node's TTL instead.
                tracing::warn!("withdrawing segment {segment}: {e}");
            }
            node.stop().await.map_err(StoreError::from)?;
        }
        flushed
    }

    fn lock_node(&self) -> std::sync::MutexGuard<'_, Option<NodeServer>> {
        self.node.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What this member knows by itself: the memory it contributes, where its own gets
    /// were served from, what its node recovered and its SSD tier's figures. The
    /// cluster's totals (objects, bytes per tier, evictions) are the master's
    /// `/metrics`; `objects` and `memory_used` here are 0.
    pub fn stats(&self) -> StoreStats {
        let reads = self.remote.stats();
        StoreStats {
            objects: 0,
            memory_capacity: self.memory_bytes,
            memory_used: 0,
            memory_hits: reads.memory_reads,
            disk_hits: reads.disk_reads,
            promotions: 0,
            evicted_to_disk: 0,
            evicted_dropped: 0,
            put_waits: 0,
            persisted: 0,
            persist_failures: 0,
            persist_retries: 0,
            recovered: self.recovered,
            tier: self.lock_node().as_ref().and_then(NodeServer::tier_stats),
        }
    }
}

impl Drop for Member {
    /// A member dropped without `close` stops its node's work (its segment expires by
    /// the master's node TTL); what its SSD tier accepted is written out when the tier
    /// is let go.
    fn drop(&mut self) {
        if let Some(node) = self.lock_node().as_ref() {
            node.abort();
        }
    }
}

/// Starts the member's node, contributing `config.memory_bytes` (and SSD with a root).
async fn start_node(
    config: &StoreConfig,
    master: SocketAddr,
    cluster: ClusterName,
) -> Result<NodeServer, StoreError> {
    let listen = config.listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let node = NodeServerConfig {
        master,
        listen,
        cluster,
        memory_bytes: config.memory_bytes,
        storage_root: config.storage_root.clone(),
        node_id: config.node_id,
        tier: node::TierSettings {
            max_disk_bytes: config.max_disk_bytes,
            write_behind_bytes: usize::try_from(config.write_behind_bytes).expect("validated"),
            direct_io: config.direct_io,
        },
        rdma: None,
    };
    let place = config.storage_root.clone().unwrap_or_else(|| listen.to_string().into());
    node::start(node)
        .await
        .map_err(|e| StoreError::Storage(TierError::io("starting the member's node", &place, e)))
}

/// The first address `name` (`host:port`) resolves to.
async fn resolve(name: &str) -> Result<SocketAddr, StoreError> {
    let mut addrs =
        tokio::net::lookup_host(name).await.map_err(|e| StoreError::Unreachable(format!("{name}: {e}")))?;
    addrs.next().ok_or_else(|| StoreError::Unreachable(format!("{name}: resolves to no address")))
}

fn invalid(name: &str, reason: &'static str) -> StoreError {
    StoreError::Config(ConfigError::Invalid { name: name.into(), reason })
}

fn unreachable(master: &str, e: &RemoteError) -> StoreError {
    StoreError::Unreachable(format!("{master}: {e}"))
}

/// The store error a cluster failure of an operation on `key` (of a value of `len`
/// bytes, for puts) means.
fn store_error(e: RemoteError, key: KeyRef<'_>, len: u64) -> StoreError {
    match e {
        RemoteError::NotFound => StoreError::NotFound,
        RemoteError::AlreadyExists => StoreError::AlreadyExists,
        RemoteError::Master(e) => StoreError::from_master(e, len, MAX_VALUE as u64),
        RemoteError::Data(e) => StoreError::Transfer(e),
        RemoteError::Corrupted => StoreError::Corrupted(key.to_key()),
        RemoteError::Unreachable(e) => StoreError::Unreachable(e.to_string()),
        e @ RemoteError::NodeUnreachable(_) => StoreError::Unreachable(e.to_string()),
        // Every call checks its key first, so this is a disagreement, not bad input.
        RemoteError::InvalidKey => StoreError::Protocol("a valid key was refused as invalid".into()),
        RemoteError::TooLarge { len, max } => StoreError::TooLarge { len, max },
        RemoteError::NotDurable { objects } => {
            StoreError::Storage(TierError::NotDurable { records: objects, cause: None })
        }
        RemoteError::BufferTooSmall { len, needed } => StoreError::BufferTooSmall { len, needed },
        RemoteError::Protocol(what) => StoreError::Protocol(what),
        // RemoteError is this crate's and non-exhaustive only for its users.
    }
}
