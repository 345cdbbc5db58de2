//! The embedded store: the async API over the node (master and memory replicas) and
//! the SSD tier. See `shared` for what is locked when, and `node` for where the bytes
//! of memory replicas live.

use std::vec::Vec;

use bytes::Bytes;

use super::config::{ConfigError, StoreConfig};
use super::error::StoreError;
use super::node::Node;
use super::runtime::{FdWatch, Runtime};
use super::shared::{IDLE_TICK, Inner, WorkDone};
use crate::descriptor::ReplicaDescriptor;
use crate::disk::format::MAX_VALUE_LEN;
use crate::disk::{ReadResult, Tier, TierConfig, TierError, TierStats};
use crate::ids::ObjectVersion;
use crate::key::{Key, KeyRef};
use crate::sync::Arc;
use crate::uring::Notifier;

/// How long a put that found memory full of objects not yet on SSD keeps waiting for
/// the tier while the tier has persists left to write, before it gives up with
/// `NoSpace`.
const NO_SPACE_PATIENCE: core::time::Duration = core::time::Duration::from_secs(30);

/// Counters and gauges of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Objects in the store (in memory, on disk or both).
    pub objects: u64,
    /// Bytes of the memory segment.
    pub memory_capacity: u64,
    /// Bytes of the segment in use.
    pub memory_used: u64,
    /// Gets served from memory.
    pub memory_hits: u64,
    /// Gets served from the SSD tier.
    pub disk_hits: u64,
    /// Objects read from disk and kept in memory again.
    pub promotions: u64,
    /// Objects whose memory replica was evicted while a disk copy kept them.
    pub evicted_to_disk: u64,
    /// Objects evicted with no disk copy (persistence off).
    pub evicted_dropped: u64,
    /// Puts that found memory full of objects not yet on SSD and waited for them.
    pub put_waits: u64,
    /// Objects written to SSD and registered with the master.
    pub persisted: u64,
    /// Persists that failed (the object stays in memory and the persist is retried).
    pub persist_failures: u64,
    /// Objects whose persist failed and waits to be retried.
    pub persist_retries: u64,
    /// Objects recovered from the storage root at open.
    pub recovered: u64,
    /// The SSD tier's statistics, when persistence is on.
    pub tier: Option<TierStats>,
}

/// An embedded Larder store on runtime `R`. Share it between tasks with an `Arc`.
#[derive(Debug)]
pub struct Store<R: Runtime> {
    inner: Arc<Inner>,
    runtime: R,
}

/// Where a get found its object.
enum Found {
    /// In memory: the replica's own bytes.
    Memory(Bytes),
    /// On disk: to be read (the read starts once the node lock is let go).
    Disk { key: Key, version: ObjectVersion },
}

impl<R: Runtime> Store<R> {
    /// Opens an embedded store: the master and one node in this process, with a memory
    /// segment of `config.memory_bytes` and, if `config.storage_root` is set, the SSD
    /// tier under it (recovering what an earlier run persisted).
    ///
    /// Errors: `Config` for unusable values; `Storage` if the root is missing, not a
    /// writable directory, locked by another process, or holds a bucket written by a
    /// newer build.
    pub async fn open(runtime: R, config: StoreConfig) -> Result<Self, StoreError> {
        config.validate()?;
        if config.master.is_some() {
            return Err(StoreError::Config(ConfigError::Invalid {
                name: "master".into(),
                reason: "the embedded store runs no cluster member: open it with larder-tokio's `open`",
            }));
        }
        let wake = Arc::new(Notifier::new().map_err(|e| {
            StoreError::Storage(TierError::io("create notifier", std::path::Path::new("eventfd"), e))
        })?);
        let Some(root) = config.storage_root.clone() else {
            tracing::info!("no storage root configured (LARDER_STORAGE_ROOT): persistence is off");
            let node = Node::new(&config, false, ObjectVersion(1))?;
            return Ok(Self::start(runtime, node, None, wake));
        };
        let tier_config = TierConfig {
            max_bytes: config.max_disk_bytes,
            queue_bytes: config.write_behind_bytes as usize,
            direct_io: config.direct_io,
            events: true,
            event_signal: Some(Arc::clone(&wake)),
            ..TierConfig::new(root, config.cluster.clone(), config.node)
        };
        let (tier, node) = runtime
            .unblock(move || -> Result<(Tier, Node), StoreError> {
                let (tier, recovered) = Tier::open(tier_config)?;
                let mut node = Node::new(&config, true, tier.version_floor())?;
                let taken = node.register_recovered(recovered);
                if taken > 0 {
                    tracing::info!(objects = taken, dir = %tier.dir().display(), "recovered persisted objects");
                }
                Ok((tier, node))
            })
            .await?;
        let store = Self::start(runtime, node, Some(tier), wake);
        // Records the master refused at recovery are dropped off the executor.
        let inner = Arc::clone(&store.inner);
        store.runtime.unblock(move || inner.finish_queued_work()).await;
        Ok(store)
    }

    fn start(runtime: R, node: Node, tier: Option<Tier>, wake: Arc<Notifier>) -> Self {
        let inner = Arc::new(Inner::new(node, tier, wake));
        runtime.spawn(background(runtime.clone(), Arc::clone(&inner)));
        Self { inner, runtime }
    }

    /// Stores `value` under `key`. Returns once the value is in memory; with
    /// persistence on it is written to SSD behind the caller (see [`Store::flush`]).
    ///
    /// Errors: `InvalidKey`, `EmptyValue`, `TooLarge`, `AlreadyExists` (remove first),
    /// `NoSpace`, `Closed`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.put_parts(key, &[value]).await
    }

    /// Stores the concatenation of `parts` under `key` (one copy, into the replica).
    pub async fn put_parts(&self, key: &[u8], parts: &[&[u8]]) -> Result<(), StoreError> {
        let key = KeyRef::new(key)?;
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if len == 0 {
            return Err(StoreError::EmptyValue);
        }
        if self.inner.persistent && len > MAX_VALUE_LEN {
            // It would live in memory but could never be persisted.
            return Err(StoreError::TooLarge { len, max: MAX_VALUE_LEN });
        }
        let started = std::time::Instant::now();
        let mut settled_since_idle = false;
        loop {
            match self.try_put(key, parts, len).await {
                Err(StoreError::NoSpace) => {}
                other => return other,
            }
            let patient = self.inner.persistent && started.elapsed() < NO_SPACE_PATIENCE;
            if patient && self.inner.persists_pending() {
                // Memory is full of objects waiting to be persisted before they can be
                // evicted (the refused put's own evictions may have queued some): let
                // the tier write at least one more, and try again (other puts may take
                // the room first). How fast the tier is does not matter, only whether
                // it has work left.
                settled_since_idle = false;
                self.inner.lock_node().counters.put_waits += 1;
                let inner = Arc::clone(&self.inner);
                let work = self.runtime.unblock(move || {
                    inner.wait_for_tier();
                    !inner.lock_node().work.is_empty()
                });
                self.carry_out_work(work.await).await;
            } else if !settled_since_idle {
                // Nothing is left for the tier to write, but leases may have expired
                // since the master's timers last ran, and the outcomes of the tier's
                // last records may not have reached the master yet (the tier reports
                // records before it counts them written, so they were seen idle first
                // and are all reported now): settle both and try once more.
                settled_since_idle = true;
                let work = self.inner.settle();
                self.carry_out_work(work).await;
            } else {
                // Settled after the tier went idle and still no room: memory is full of
                // leased objects, puts in progress, or persists waiting out a retry
                // backoff; none of it is for this put to wait for.
                return Err(StoreError::NoSpace);
            }
        }
    }

    /// Allocates under the node lock, copies the value into a buffer of its own with
    /// no lock held (the object is in progress meanwhile: readers get `NotReady`,
    /// eviction leaves it be), then ends the put and makes the buffer the replica's
    /// under the node lock, and hands its persist to the tier.
    async fn try_put(&self, key: KeyRef<'_>, parts: &[&[u8]], len: u64) -> Result<(), StoreError> {
        let (grant, work) = self.inner.with_node(|node| {
            let (now, writer, segment) = (node.now(), node.id(), node.segment_bytes());
            node.master
                .handle_put_start(now, writer, key, len, 1)
                .map_err(|e| StoreError::from_master(e, len, segment))
        })?;
        self.carry_out_work(work).await;
        let mut buf = self.inner.buffers.take(len as usize);
        let mut at = 0;
        for p in parts {
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        let value = self.inner.buffers.share(buf, len as usize);
        let offset = grant.replicas[0].offset;
        let ((), work) = self.inner.with_node(|node| {
            let (now, writer) = (node.now(), node.id());
            node.master
                .handle_put_end(now, writer, key, grant.version, None)
                .map_err(StoreError::Internal)?;
            node.set_value(offset, value);
            Ok(())
        })?;
        self.carry_out_work(work).await;
        Ok(())
    }

    /// Carries out the tier work queued so far (this caller's among it): on this task
    /// what never waits, the rest off the executor, and waits until this caller's part
    /// is done even if another caller is carrying it out. A put therefore returns only
    /// once its persist is in the write-behind queue: when that queue is full, puts
    /// wait for the disk instead of piling persists up in memory. If this future is
    /// dropped, the work stays queued in the node and the background task carries it
    /// out.
    async fn carry_out_work(&self, waiting: bool) {
        if !waiting {
            return;
        }
        let mine = self.inner.work_queued();
        self.inner.carry_out_work(false);
        if !self.inner.work_done_upto(mine) {
            let inner = Arc::clone(&self.inner);
            self.runtime.unblock(move || inner.finish_work_upto(mine)).await;
        }
    }

    /// The value under `key`: from memory (the replica's own bytes, no copy), or from
    /// the SSD tier (and then kept in memory again if there is room).
    ///
    /// Errors: `InvalidKey`, `NotFound`, `NotReady`, `Corrupted` (the disk copy failed
    /// its checksum and was dropped), `Storage`, `Closed`.
    pub async fn get(&self, key: &[u8]) -> Result<Bytes, StoreError> {
        self.get_within(key, None).await
    }

    /// Copies the value under `key` into `buf`; returns its length.
    ///
    /// Errors: as [`Store::get`], and `BufferTooSmall`.
    pub async fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<usize, StoreError> {
        let value = self.get_within(key, Some(buf.len())).await?;
        copy_into(&value, buf)
    }

    /// `get`; with `room`, an object larger than that is refused before a lease is
    /// taken.
    async fn get_within(&self, key: &[u8], room: Option<usize>) -> Result<Bytes, StoreError> {
        let key = KeyRef::new(key)?;
        match self.look_up(key, room)? {
            Found::Memory(bytes) => Ok(bytes),
            Found::Disk { key, version } => {
                let read = self.start_reads(&[key.as_ref()]).pop().expect("one read per key");
                self.finish_read(key, version, read).await
            }
        }
    }

    /// The size of the value under `key` (grants no lease).
    pub async fn get_size(&self, key: &[u8]) -> Result<u64, StoreError> {
        let key = KeyRef::new(key)?;
        self.inner.check_open()?;
        self.inner.lock_node().master.object_size(key).ok_or(StoreError::NotFound)
    }

    /// Whether a complete object exists under `key`.
    pub async fn exists(&self, key: &[u8]) -> Result<bool, StoreError> {
        let key = KeyRef::new(key)?;
        self.inner.check_open()?;
        let mut node = self.inner.lock_node();
        let now = node.now();
        Ok(node.master.handle_exists(now, key))
    }

    /// Removes `key` from memory and disk. A recently read object is protected by its
    /// lease unless `force`. The disk record is dropped off the executor.
    ///
    /// Errors: `InvalidKey`, `NotFound`, `HasLease`, `NotReady`, `Closed`.
    pub async fn remove(&self, key: &[u8], force: bool) -> Result<(), StoreError> {
        let key = KeyRef::new(key)?;
        let ((), work) = self.inner.with_node(|node| {
            let now = node.now();
            let segment = node.segment_bytes();
            node.master.handle_remove(now, key, force).map_err(|e| StoreError::from_master(e, 0, segment))
        })?;
        self.carry_out_work(work).await;
        Ok(())
    }

    /// Removes every object (leased ones only if `force`) from memory and disk; returns
    /// how many went. With nothing left on disk, the node directory is wiped.
    pub async fn remove_all(&self, force: bool) -> Result<u64, StoreError> {
        let (summary, work) = self.inner.with_node(|node| {
            let now = node.now();
            Ok(node.master.handle_remove_all(now, force))
        })?;
        self.carry_out_work(work).await;
        Ok(summary.removed)
    }

    /// Puts many objects; one result per item, in order.
    pub async fn batch_put(&self, items: &[(&[u8], &[u8])]) -> Vec<Result<(), StoreError>> {
        let mut out = Vec::with_capacity(items.len());
        for (k, v) in items {
            out.push(self.put(k, v).await);
        }
        out
    }

    /// Gets many objects with all their disk reads in flight at once.
    pub async fn batch_get(&self, keys: &[&[u8]]) -> Vec<Result<Bytes, StoreError>> {
        self.batch_look_up(keys, None).await
    }

    /// Copies many objects into the caller's buffers (one per key, in order), with all
    /// their disk reads in flight at once; one length (or error) per key. A buffer too
    /// small for its object is `BufferTooSmall` for that key alone.
    pub async fn batch_get_into(
        &self,
        keys: &[&[u8]],
        bufs: &mut [&mut [u8]],
    ) -> Vec<Result<usize, StoreError>> {
        if keys.len() != bufs.len() {
            return keys
                .iter()
                .map(|_| Err(StoreError::BatchLength { keys: keys.len(), buffers: bufs.len() }))
                .collect();
        }
        let rooms: Vec<usize> = bufs.iter().map(|b| b.len()).collect();
        let values = self.batch_look_up(keys, Some(&rooms)).await;
        values.into_iter().zip(bufs.iter_mut()).map(|(v, buf)| v.and_then(|v| copy_into(&v, buf))).collect()
    }

    /// Looks every key up (memory hits answered at once), then starts every disk read
    /// at once and waits for them in order.
    async fn batch_look_up(&self, keys: &[&[u8]], rooms: Option<&[usize]>) -> Vec<Result<Bytes, StoreError>> {
        let found: Vec<Result<Found, StoreError>> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let key = KeyRef::new(k)?;
                self.look_up(key, rooms.map(|r| r[i]))
            })
            .collect();
        let on_disk: Vec<KeyRef<'_>> = found
            .iter()
            .filter_map(|f| match f {
                Ok(Found::Disk { key, .. }) => Some(key.as_ref()),
                _ => None,
            })
            .collect();
        let mut reads = self.start_reads(&on_disk).into_iter();
        let mut out = Vec::with_capacity(keys.len());
        for f in found {
            out.push(match f {
                Ok(Found::Memory(bytes)) => Ok(bytes),
                Ok(Found::Disk { key, version }) => {
                    let read = reads.next().expect("one read per disk key");
                    self.finish_read(key, version, read).await
                }
                Err(e) => Err(e),
            });
        }
        out
    }

    /// Whether each key exists.
    pub async fn batch_exists(&self, keys: &[&[u8]]) -> Vec<Result<bool, StoreError>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.exists(k).await);
        }
        out
    }

    /// Removes many objects; one result per key.
    pub async fn batch_remove(&self, keys: &[&[u8]], force: bool) -> Vec<Result<(), StoreError>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.remove(k, force).await);
        }
        out
    }

    /// Waits until every put acknowledged before this call is durable on SSD, and every
    /// removal before it too (a no-op with persistence off). The answer is computed
    /// from the master's record of which objects have a disk copy, so a flush retried
    /// after a failure, and flushes running at once, all tell the truth. Persists that
    /// failed earlier are asked for again at once.
    ///
    /// Errors: `Storage` ([`TierError::NotDurable`]) if some of them could not be
    /// persisted: they stay in memory and are retried in the background (and by the
    /// next flush); or the removal log's own error.
    pub async fn flush(&self) -> Result<(), StoreError> {
        if !self.inner.persistent {
            return self.inner.check_open();
        }
        let inner = Arc::clone(&self.inner);
        self.runtime.unblock(move || inner.flush_blocking()).await
    }

    /// Flushes, stops the background work, settles the last events with the master and
    /// releases the storage root (deleting no files). Every later call fails with
    /// `Closed`.
    ///
    /// Errors: as [`Store::flush`]; `Storage` ([`TierError::NotDurable`]) counts the
    /// objects that were not durable when the store closed, which are lost with its
    /// memory.
    pub async fn close(&self) -> Result<(), StoreError> {
        let flushed = self.flush().await;
        if !self.inner.close() {
            return Err(StoreError::Closed);
        }
        self.inner.wake.notify();
        let inner = Arc::clone(&self.inner);
        self.runtime.unblock(move || inner.shutdown_blocking()).await?;
        flushed
    }

    /// The runtime the store runs on.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// Counters and gauges.
    pub fn stats(&self) -> StoreStats {
        let tier = self.inner.tier_stats();
        let node = self.inner.lock_node();
        let m = node.master.stats();
        let c = node.counters;
        StoreStats {
            objects: m.objects,
            memory_capacity: m.capacity_bytes,
            memory_used: m.used_bytes,
            memory_hits: c.memory_hits,
            disk_hits: c.disk_hits,
            promotions: c.promotions,
            evicted_to_disk: m.evicted_to_disk,
            evicted_dropped: m.evicted_dropped,
            put_waits: c.put_waits,
            persisted: c.persisted,
            persist_failures: c.persist_failures,
            persist_retries: m.persist_retries,
            recovered: c.recovered,
            tier,
        }
    }

    /// Looks `key` up under the node lock: the memory replica's bytes, or the version
    /// to read from disk. With `room`, an object larger than that is refused before a
    /// lease is granted.
    fn look_up(&self, key: KeyRef<'_>, room: Option<usize>) -> Result<Found, StoreError> {
        self.inner.check_open()?;
        let mut node = self.inner.lock_node();
        let (now, segment) = (node.now(), node.segment_bytes());
        if let Some(needed) = room.and_then(|r| node.master.object_size(key).filter(|n| *n > r as u64)) {
            return Err(StoreError::BufferTooSmall { needed, len: room.unwrap_or(0) });
        }
        let list = node
            .master
            .handle_get_replica_list(now, key)
            .map_err(|e| StoreError::from_master(e, 0, segment))?;
        match list.replicas.first() {
            Some(ReplicaDescriptor::Memory(r)) => {
                let bytes = node.value(r.offset).ok_or(StoreError::NotFound)?;
                node.counters.memory_hits += 1;
                Ok(Found::Memory(bytes))
            }
            Some(ReplicaDescriptor::Disk(_)) if self.inner.persistent => {
                Ok(Found::Disk { key: key.to_key(), version: list.version })
            }
            _ => Err(StoreError::NotFound),
        }
    }

    /// Starts disk reads of `keys`, all in flight at once.
    fn start_reads(&self, keys: &[KeyRef<'_>]) -> Vec<Result<oneshot::Receiver<ReadResult>, TierError>> {
        if keys.is_empty() {
            return Vec::new();
        }
        self.inner.read_many(keys).unwrap_or_else(|| keys.iter().map(|_| Err(TierError::Closed)).collect())
    }

    /// Waits for a disk read, checks it is still the version asked for, and keeps the
    /// value in memory again if there is room.
    async fn finish_read(
        &self,
        key: Key,
        version: ObjectVersion,
        read: Result<oneshot::Receiver<ReadResult>, TierError>,
    ) -> Result<Bytes, StoreError> {
        let read = read.map_err(|e| match e {
            TierError::NotFound => StoreError::NotFound,
            other => other.into(),
        })?;
        let (read_version, value) = read.await.map_err(|_| StoreError::Closed)??;
        if read_version != version {
            // Replaced between the lookup and the read: the caller asked for the
            // object as it is now.
            return Err(StoreError::NotFound);
        }
        // A disk hit: keep the value (the read's own buffer) as a memory replica if
        // there is room.
        let promoted = self.inner.with_node(|node| {
            node.counters.disk_hits += 1;
            let now = node.now();
            if let Ok(Some(r)) = node.master.handle_promote(now, key.as_ref(), version) {
                node.set_value(r.offset, value.clone());
                node.counters.promotions += 1;
            }
            Ok(())
        });
        if let Ok(((), work)) = promoted {
            self.carry_out_work(work).await;
        }
        Ok(value)
    }
}

/// Copies `value` into the front of `buf`; its length.
fn copy_into(value: &[u8], buf: &mut [u8]) -> Result<usize, StoreError> {
    let len = buf.len();
    buf.get_mut(..value.len())
        .ok_or(StoreError::BufferTooSmall { needed: value.len() as u64, len })?
        .copy_from_slice(value);
    Ok(value.len())
}

impl<R: Runtime> Drop for Store<R> {
    /// Dropping without `close`: the background task ends, and with it the last
    /// reference to the tier, whose drop writes out what was accepted and releases the
    /// storage root. `close` is the way to wait for that and see its errors.
    fn drop(&mut self) {
        self.inner.close();
        self.inner.wake.notify();
    }
}

/// The background task: carries tier events to the master as they arrive, keeps the
/// master's timers and carries out the tier work they cause, until the store closes.
async fn background<R: Runtime>(runtime: R, inner: Arc<Inner>) {
    let watch = match inner.wake.try_clone_fd().and_then(|fd| runtime.watch_fd(fd)) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the tier's events; polling them every {IDLE_TICK:?}");
            None
        }
    };
    loop {
        // Reset before looking, so that a signal raised meanwhile is not lost.
        inner.wake.reset();
        if inner.is_closed() {
            break;
        }
        if inner.settle() && inner.carry_out_work(false) == WorkDone::WouldBlock {
            let i = Arc::clone(&inner);
            runtime.unblock(move || i.carry_out_work(true)).await;
        }
        let tick = runtime.sleep(inner.until_next_timer());
        match &watch {
            Some(w) => {
                let readable = w.readable();
                futures_lite::future::or(async { drop(readable.await) }, tick).await;
            }
            None => tick.await,
        }
    }
    // Closed, or the store was dropped without `close`: shut the tier down properly
    // (a no-op if `close` did it).
    if let Err(e) = runtime.unblock(move || inner.shutdown_blocking()).await {
        tracing::warn!(error = %e, "shutting the SSD tier down");
    }
}
