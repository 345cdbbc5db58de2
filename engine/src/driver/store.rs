//! The embedded store: the async API over the node (master + segment) and the SSD tier.
//!
//! # Concurrency
//!
//! The node lock guards the master; the segment has a read-write lock of its own,
//! always taken after the node's. A get takes the segment's read lock before it lets
//! go of the node lock and copies with only the segment locked, so gets copy in
//! parallel and the master keeps answering; a replica freed meanwhile cannot be
//! overwritten until the copy ends (writers need the write lock). A put copies into
//! its in-progress replica under the segment's write lock alone. Disk reads, waits for
//! the write-behind queue, `flush` and `close` take neither.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::vec::Vec;

use bytes::Bytes;

use super::config::StoreConfig;
use super::error::StoreError;
use super::node::{Node, Segment, replica, replica_mut};
use super::runtime::{FdWatch, Runtime};
use crate::descriptor::ReplicaDescriptor;
use crate::disk::format::MAX_VALUE_LEN;
use crate::disk::{ReadResult, Tier, TierConfig, TierStats};
use crate::ids::ObjectVersion;
use crate::key::{Key, KeyRef};
use crate::master::FlushStatus;
use crate::sync::Arc;
use crate::uring::Notifier;
use std::string::{String, ToString};

/// How often the background task looks at the master's timers when nothing happens.
const IDLE_TICK: core::time::Duration = core::time::Duration::from_millis(100);

/// How long a put that found memory full of objects not yet on SSD keeps waiting for
/// the tier while the tier makes progress, before it gives up with `NoSpace`.
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
    /// Objects read from disk and copied back into memory.
    pub promotions: u64,
    /// Objects whose memory replica was evicted while a disk copy kept them.
    pub evicted_to_disk: u64,
    /// Objects evicted with no disk copy (persistence off).
    pub evicted_dropped: u64,
    /// Puts that found memory full of objects not yet on SSD and waited for them.
    pub put_waits: u64,
    /// Objects written to SSD and registered with the master.
    pub persisted: u64,
    /// Persists that failed (the object stayed in memory, or was dropped if evicting).
    pub persist_failures: u64,
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

#[derive(Debug)]
struct Inner {
    node: Mutex<Node>,
    /// The values (lock order: node, then segment).
    segment: Segment,
    /// `None` with persistence off, and after `close`.
    tier: RwLock<Option<Tier>>,
    persistent: bool,
    /// Wakes the background task: the tier's events, and `close`.
    wake: Arc<Notifier>,
    closed: AtomicBool,
    /// Held while the tier shuts down.
    shutdown: Mutex<()>,
}

/// Where a get found its object.
enum Found {
    Memory(Bytes),
    /// Copied from memory into the caller's buffer; the length.
    Copied(usize),
    Disk {
        key: Key,
        version: ObjectVersion,
        read: oneshot::Receiver<ReadResult>,
    },
}

impl<R: Runtime> Store<R> {
    /// Opens an embedded store: the master and one node in this process, with a memory
    /// segment of `config.memory_bytes` and, if `config.storage_root` is set, the SSD
    /// tier under it (recovering what an earlier run persisted).
    ///
    /// Errors: `Config` for unusable values; `Storage` if the root is missing, not a
    /// writable directory, or locked by another process.
    pub async fn open(runtime: R, config: StoreConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let wake = Arc::new(Notifier::new().map_err(|e| {
            StoreError::Storage(crate::disk::TierError::io(
                "create notifier",
                std::path::Path::new("eventfd"),
                e,
            ))
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
        let (tier, recovered) = runtime.unblock(move || Tier::open(tier_config)).await?;
        let mut node = Node::new(&config, true, tier.version_floor())?;
        let taken = node.register_recovered(recovered, &tier);
        if taken > 0 {
            tracing::info!(objects = taken, dir = %tier.dir().display(), "recovered persisted objects");
        }
        Ok(Self::start(runtime, node, Some(tier), wake))
    }

    fn start(runtime: R, node: Node, tier: Option<Tier>, wake: Arc<Notifier>) -> Self {
        let inner = Arc::new(Inner {
            segment: Segment::new(node.segment_bytes()),
            node: Mutex::new(node),
            persistent: tier.is_some(),
            tier: RwLock::new(tier),
            wake,
            closed: AtomicBool::new(false),
            shutdown: Mutex::new(()),
        });
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

    /// Stores the concatenation of `parts` under `key` (no intermediate copy).
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
        let mut persisted_at_last_failure = None;
        let mut timers_run = false;
        loop {
            let persisted = self.inner.lock_node().counters.persisted;
            match self.try_put(key, parts, len) {
                Err(StoreError::NoSpace) if !self.inner.persistent && !timers_run => {
                    // Leases may have expired since the background task last ran the
                    // master's timers: run them now and try once more.
                    timers_run = true;
                    let _pending = self.inner.settle();
                }
                Err(StoreError::NoSpace)
                    if self.inner.persistent && started.elapsed() < NO_SPACE_PATIENCE =>
                {
                    // Memory is full of objects waiting to be persisted before they can
                    // be evicted: let the tier catch up and try again, for as long as
                    // objects get persisted between attempts (other puts may take the
                    // room first). Two failures with no persist between them: memory is
                    // full of objects no waiting can free (leased ones).
                    if persisted_at_last_failure == Some(persisted) {
                        return Err(StoreError::NoSpace);
                    }
                    persisted_at_last_failure = Some(persisted);
                    self.inner.lock_node().counters.put_waits += 1;
                    self.wait_for_tier().await?;
                }
                Err(e) => return Err(e),
                Ok(waiting) => return self.hand_over_pending(waiting).await,
            }
        }
    }

    /// Waits until the tier has written (or failed) everything handed to it, and
    /// settles what that freed with the master. Unlike `flush`, it reports no persist
    /// failure: those stay for the caller's own `flush`.
    async fn wait_for_tier(&self) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let waiting = self
            .runtime
            .unblock(move || {
                inner.hand_over_pending_blocking();
                let written = match inner.tier()?.as_ref() {
                    Some(t) => t.wait_written().map_err(StoreError::from),
                    None => Ok(()),
                };
                written.map(|()| inner.settle())
            })
            .await?;
        self.hand_over_pending(waiting).await
    }

    /// Allocates under the node lock, copies under the segment's write lock alone (the
    /// object is in progress meanwhile: readers get `NotReady`, eviction leaves it be),
    /// then ends the put under the node lock.
    fn try_put(&self, key: KeyRef<'_>, parts: &[&[u8]], len: u64) -> Result<bool, StoreError> {
        let (grant, _) = self.inner.with_node(|node| {
            let (now, writer, segment) = (node.now(), node.id(), node.segment_bytes());
            node.master
                .handle_put_start(now, writer, key, len, 1)
                .map_err(|e| StoreError::from_master(e, len, segment))
        })?;
        {
            let mut segment = self.inner.segment.write();
            let dst = replica_mut(&mut segment, &grant.replicas[0]);
            let mut at = 0;
            for p in parts {
                dst[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
        }
        let ((), waiting) = self.inner.with_node(|node| {
            let (now, writer) = (node.now(), node.id());
            node.master.handle_put_end(now, writer, key, grant.version).map_err(StoreError::Internal)
        })?;
        Ok(waiting)
    }

    /// Persists are waiting for room in the write-behind queue: hand them over off the
    /// executor, waiting as long as the queue stays full (backpressure). If this future
    /// is dropped, they stay queued in the node and the background task hands them over.
    async fn hand_over_pending(&self, waiting: bool) -> Result<(), StoreError> {
        if waiting {
            let inner = Arc::clone(&self.inner);
            self.runtime.unblock(move || inner.hand_over_pending_blocking()).await;
        }
        Ok(())
    }

    /// The value under `key`: from memory, or from the SSD tier (and then copied back
    /// into memory if there is room).
    ///
    /// Errors: `InvalidKey`, `NotFound`, `NotReady`, `Corrupted` (the disk copy failed
    /// its checksum and was dropped), `Storage`, `Closed`.
    pub async fn get(&self, key: &[u8]) -> Result<Bytes, StoreError> {
        let key = KeyRef::new(key)?;
        self.finish_get(self.start_get(key, None)?).await
    }

    /// Copies the value under `key` into `buf`; returns its length. A value in memory
    /// is copied straight from the segment.
    ///
    /// Errors: as [`Store::get`], and `BufferTooSmall`.
    pub async fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<usize, StoreError> {
        let key = KeyRef::new(key)?;
        let value = match self.start_get(key, Some(&mut *buf))? {
            Found::Copied(len) => return Ok(len),
            found => self.finish_get(found).await?,
        };
        // Read from SSD; replaced by a larger value meanwhile: still never overrun.
        let len = buf.len();
        buf.get_mut(..value.len())
            .ok_or(StoreError::BufferTooSmall { needed: value.len() as u64, len })?
            .copy_from_slice(&value);
        Ok(value.len())
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
    /// lease unless `force`.
    ///
    /// Errors: `InvalidKey`, `NotFound`, `HasLease`, `NotReady`, `Closed`.
    pub async fn remove(&self, key: &[u8], force: bool) -> Result<(), StoreError> {
        let key = KeyRef::new(key)?;
        let ((), waiting) = self.inner.with_node(|node| {
            let now = node.now();
            let segment = node.segment_bytes();
            node.master.handle_remove(now, key, force).map_err(|e| StoreError::from_master(e, 0, segment))
        })?;
        self.hand_over_pending(waiting).await
    }

    /// Removes every object (leased ones only if `force`) from memory and disk; returns
    /// how many went. With nothing left on disk, the node directory is wiped.
    pub async fn remove_all(&self, force: bool) -> Result<u64, StoreError> {
        let (summary, waiting) = self.inner.with_node(|node| {
            let now = node.now();
            Ok(node.master.handle_remove_all(now, force))
        })?;
        self.hand_over_pending(waiting).await?;
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
        let started: Vec<Result<Found, StoreError>> = keys
            .iter()
            .map(|k| KeyRef::new(k).map_err(StoreError::from).and_then(|k| self.start_get(k, None)))
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for s in started {
            out.push(match s {
                Ok(found) => self.finish_get(found).await,
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
    /// Errors: `Storage` ([`TierError::NotDurable`](crate::disk::TierError::NotDurable))
    /// if some of them could not be persisted: they stay in memory and are retried in
    /// the background (and by the next flush); or the removal log's own error.
    pub async fn flush(&self) -> Result<(), StoreError> {
        if !self.inner.persistent {
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        let (flushed, waiting) = self.runtime.unblock(move || inner.flush_blocking()).await;
        self.hand_over_pending(waiting).await?;
        flushed
    }

    /// Flushes, stops the background work, settles the last events with the master and
    /// releases the storage root (deleting no files). Every later call fails with
    /// `Closed`.
    ///
    /// Errors: as [`Store::flush`]; `Storage` ([`TierError::NotDurable`](crate::disk::TierError::NotDurable))
    /// counts the objects that were not durable when the store closed, which are lost
    /// with its memory.
    pub async fn close(&self) -> Result<(), StoreError> {
        let flushed = self.flush().await;
        if self.inner.closed.swap(true, Ordering::AcqRel) {
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
        let tier = self.inner.tier.read().unwrap_or_else(PoisonError::into_inner).as_ref().map(Tier::stats);
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
            recovered: c.recovered,
            tier,
        }
    }

    /// Looks `key` up: copies it out of memory (into `into` if given, else into new
    /// `Bytes`), or starts its disk read.
    fn start_get(&self, key: KeyRef<'_>, into: Option<&mut [u8]>) -> Result<Found, StoreError> {
        let tier = self.inner.tier()?;
        let mut node = self.inner.lock_node();
        let now = node.now();
        let segment = node.segment_bytes();
        if let Some(buf) = &into {
            // Refuse a short buffer before granting a lease (an object that is not
            // complete gets its precise error from the lookup below).
            if let Some(needed) = node.master.object_size(key).filter(|n| *n > buf.len() as u64) {
                return Err(StoreError::BufferTooSmall { needed, len: buf.len() });
            }
        }
        let list = node
            .master
            .handle_get_replica_list(now, key)
            .map_err(|e| StoreError::from_master(e, 0, segment))?;
        match list.replicas.first() {
            Some(ReplicaDescriptor::Memory(r)) => {
                let r = *r;
                node.counters.memory_hits += 1;
                // Take the segment before letting go of the node: once the node lock
                // is released the replica may be freed, but not overwritten while this
                // read lock is held. Copies by other readers run alongside.
                let segment = self.inner.segment.read();
                drop(node);
                drop(tier);
                let bytes = replica(&segment, &r);
                Ok(match into {
                    Some(buf) => {
                        buf[..bytes.len()].copy_from_slice(bytes);
                        Found::Copied(bytes.len())
                    }
                    None => Found::Memory(Bytes::copy_from_slice(bytes)),
                })
            }
            Some(ReplicaDescriptor::Disk(_)) => {
                let tier = tier.as_ref().ok_or(StoreError::NotFound)?;
                let read = tier.read(key).map_err(|e| match e {
                    crate::disk::TierError::NotFound => StoreError::NotFound,
                    other => other.into(),
                })?;
                Ok(Found::Disk { key: key.to_key(), version: list.version, read })
            }
            None => Err(StoreError::NotFound),
        }
    }

    async fn finish_get(&self, found: Found) -> Result<Bytes, StoreError> {
        let (key, version, read) = match found {
            Found::Memory(bytes) => return Ok(bytes),
            Found::Copied(_) => unreachable!("only get_into passes a buffer, and it takes copies itself"),
            Found::Disk { key, version, read } => (key, version, read),
        };
        let (read_version, value) = read.await.map_err(|_| StoreError::Closed)??;
        if read_version != version {
            // Replaced between the lookup and the read: the caller asked for the
            // object as it is now.
            return Err(StoreError::NotFound);
        }
        self.inner.promote(&key, version, &value);
        Ok(value)
    }
}

impl<R: Runtime> Drop for Store<R> {
    /// Dropping without `close`: the background task ends, and with it the last
    /// reference to the tier, whose drop writes out what was accepted and releases the
    /// storage root. `close` is the way to wait for that and see its errors.
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake.notify();
    }
}

impl Inner {
    fn lock_node(&self) -> MutexGuard<'_, Node> {
        self.node.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) { Err(StoreError::Closed) } else { Ok(()) }
    }

    /// The tier (if persistence is on), or `Closed`.
    fn tier(&self) -> Result<std::sync::RwLockReadGuard<'_, Option<Tier>>, StoreError> {
        self.check_open()?;
        Ok(self.tier.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `op` on the node under its lock, then the commands it caused (also when it
    /// failed: a refused put may have started evictions). Returns `op`'s answer and
    /// whether persists are waiting for room in the write-behind queue.
    fn with_node<T>(
        &self,
        op: impl FnOnce(&mut Node) -> Result<T, StoreError>,
    ) -> Result<(T, bool), StoreError> {
        let tier = self.tier()?;
        let mut node = self.lock_node();
        let out = op(&mut node);
        node.run_commands(tier.as_ref(), &self.segment);
        Ok((out?, !node.pending.is_empty()))
    }

    /// The flush barrier: asks the master for a ticket (which asks again for every
    /// failed persist), then hands persists to the tier, waits for them to be written
    /// and carries the outcomes to the master, until the master says every object
    /// acknowledged before the ticket is durable or that some could not be persisted.
    /// Then the removal log is made durable. Returns whether persists are waiting for
    /// room.
    fn flush_blocking(&self) -> (Result<(), StoreError>, bool) {
        let ticket = match self.with_node(|node| {
            let now = node.now();
            Ok(node.master.handle_flush(now))
        }) {
            Ok((ticket, _)) => ticket,
            Err(e) => return (Err(e), false),
        };
        let flushed = loop {
            // Persists still waiting for queue room were acknowledged before too.
            self.hand_over_pending_blocking();
            let written = match self.tier().map(|t| t.as_ref().map(Tier::wait_written)) {
                Ok(Some(r)) => r.map_err(StoreError::from),
                Ok(None) => Err(StoreError::Closed),
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                break Err(e);
            }
            self.settle();
            let status = self.lock_node().master.flush_status(&ticket);
            match status {
                FlushStatus::Durable => break Ok(()),
                FlushStatus::NotDurable { objects } => break Err(self.not_durable(objects)),
                // Persists asked for after the tier's wait began (a retry whose
                // backoff ended): wait for those too.
                FlushStatus::Pending => {}
            }
        };
        let synced = match self.tier.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
            Some(t) => t.sync_removals().map_err(StoreError::from),
            None => Ok(()),
        };
        let waiting = !self.lock_node().pending.is_empty();
        (flushed.and(synced), waiting)
    }

    /// The error for `objects` not durable, with the tier's latest write failure.
    fn not_durable(&self, objects: u64) -> StoreError {
        let cause =
            self.tier.read().unwrap_or_else(PoisonError::into_inner).as_ref().and_then(Tier::last_failure);
        StoreError::Storage(crate::disk::TierError::NotDurable { records: objects, cause })
    }

    /// Shuts the tier down: waiting persists handed over, the queue written out, the
    /// threads stopped, the last events settled with the master (a removed object's
    /// late record is logged dead here), the removal log synced, the directory
    /// released. Idempotent: whoever comes second finds no tier.
    fn shutdown_blocking(&self) -> Result<(), StoreError> {
        // `close` and the background task may both get here: the second waits for the
        // first to finish, so that `close` returns only once the root is released.
        let _one_at_a_time = self.shutdown.lock().unwrap_or_else(PoisonError::into_inner);
        self.hand_over_pending_blocking();
        let Some(mut tier) = self.tier.write().unwrap_or_else(PoisonError::into_inner).take() else {
            return Ok(());
        };
        let stopped = tier.stop();
        let lost;
        {
            let mut node = self.lock_node();
            while let Some(event) = tier.poll_event() {
                node.handle_tier_event(event, &tier);
            }
            // Persists asked for now cannot happen: the master hears they failed.
            node.run_commands(Some(&tier), &self.segment);
            while let Some(d) = node.pending.pop_front() {
                node.persist_failed(d.key.as_ref(), d.version, &"the store closed");
            }
            lost = node.master.undurable_objects();
        }
        let cause = tier.last_failure();
        let closed = tier.close();
        let stopped = stopped.and(closed).map_err(StoreError::from);
        if lost == 0 {
            return stopped;
        }
        tracing::error!(objects = lost, "the store closed with objects that are not durable; they are lost");
        stopped.and(Err(StoreError::Storage(crate::disk::TierError::NotDurable { records: lost, cause })))
    }

    /// How long until the master's next timer (a lease, a persist retry): at least a
    /// millisecond (a timer the master could not clear must not spin the task), at most
    /// [`IDLE_TICK`].
    fn until_next_timer(&self) -> core::time::Duration {
        let node = self.lock_node();
        let due = node.master.poll_timeout().map(|at| at.saturating_duration_since(node.now()));
        let due = due.map_or(IDLE_TICK, |d| core::time::Duration::from_nanos(d.as_nanos()));
        due.clamp(core::time::Duration::from_millis(1), IDLE_TICK)
    }

    /// A disk hit: count it, and copy it back into memory if there is room.
    fn promote(&self, key: &Key, version: ObjectVersion, value: &[u8]) {
        let mut node = self.lock_node();
        node.counters.disk_hits += 1;
        let now = node.now();
        if let Ok(Some(r)) = node.master.handle_promote(now, key.as_ref(), version) {
            // Under the node lock too: the replica is listed as readable already.
            replica_mut(&mut self.segment.write(), &r).copy_from_slice(value);
            node.counters.promotions += 1;
        }
    }

    /// Hands the waiting persists to the write-behind queue, oldest first, waiting for
    /// room (runs where blocking is allowed). Several callers may drain at once.
    fn hand_over_pending_blocking(&self) {
        loop {
            let Some(d) = self.lock_node().pending.pop_front() else { return };
            let tier = self.tier.read().unwrap_or_else(PoisonError::into_inner);
            let result = match tier.as_ref() {
                Some(t) => t.put(d.key.as_ref(), d.version, d.value).map_err(|e| e.to_string()),
                None => Err(String::from("the store closed")),
            };
            drop(tier);
            if let Err(e) = result {
                self.lock_node().persist_failed(d.key.as_ref(), d.version, &e);
            }
        }
    }

    /// Carries the tier's events to the master, runs the master's timers and what they
    /// ask for. Returns whether persists are waiting for room.
    fn settle(&self) -> bool {
        let tier = self.tier.read().unwrap_or_else(PoisonError::into_inner);
        let mut node = self.lock_node();
        if let Some(t) = tier.as_ref() {
            while let Some(event) = t.poll_event() {
                node.handle_tier_event(event, t);
            }
        }
        let now = node.now();
        node.master.handle_timeout(now);
        node.run_commands(tier.as_ref(), &self.segment);
        !node.pending.is_empty()
    }
}

/// The background task: carries tier events to the master as they arrive and keeps
/// the master's timers, until the store closes.
async fn background<R: Runtime>(runtime: R, inner: Arc<Inner>) {
    let watch = match inner.wake.try_clone_fd().and_then(|fd| runtime.watch_fd(fd)) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the tier's events; polling them every 100 ms");
            None
        }
    };
    loop {
        // Reset before looking, so that a signal raised meanwhile is not lost.
        inner.wake.reset();
        if inner.closed.load(Ordering::Acquire) {
            break;
        }
        if inner.settle() {
            let i = Arc::clone(&inner);
            runtime.unblock(move || i.hand_over_pending_blocking()).await;
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
