//! The SSD tier: puts are persisted behind the caller into bucket files, reads come
//! back checksummed, capacity is enforced by evicting whole buckets, and reopening a
//! node directory recovers everything that was published.
//!
//! Threads: one bucket writer and one reader, each owning an I/O driver (io_uring, or
//! the thread-pool fallback). Callers on any thread put, flush, read and remove.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::string::String;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use std::vec::Vec;

use bytes::Bytes;
use crossbeam_queue::SegQueue;

use super::dir::NodeDir;
use super::error::TierError;
use super::format::MAX_VALUE_LEN;
use super::index::Index;
use super::queue::WriteBehind;
use super::reader::{ReadJob, ReadResult, Reader};
use super::recovery::{RecoveredRecord, recover, recovered_records};
use super::removals::{Removal, RemovalLog};
use super::writer::{PersistItem, Writer};
use crate::ids::{BucketId, NodeId, ObjectVersion};
use crate::key::{Key, KeyRef};
use crate::sync::Arc;
use crate::uring::{Driver, DriverConfig, DriverKind, IO_ALIGN, Notifier, aligned_zeroed};

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
    /// ... or this long after its first record (20 ms).
    pub bucket_deadline: Duration,
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
    /// Queue [`TierEvent`]s for [`Tier::poll_event`] (the store uses them to keep the
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
            bucket_deadline: Duration::from_millis(20),
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

/// Something the tier did that the master should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierEvent {
    /// A record is durable and readable.
    Persisted {
        /// The key.
        key: Key,
        /// The version.
        version: ObjectVersion,
        /// Where.
        replica: crate::descriptor::DiskReplica,
    },
    /// A record could not be persisted.
    PersistFailed {
        /// The key.
        key: Key,
        /// The version.
        version: ObjectVersion,
        /// Because the device is full.
        no_space: bool,
    },
    /// A record was written but not kept: a remove cancelled it while its bucket was
    /// being written, or a newer version of the key was already indexed.
    Cancelled {
        /// The key.
        key: Key,
        /// The version.
        version: ObjectVersion,
    },
    /// A record left the tier without a client removing it.
    Dropped {
        /// The key.
        key: Key,
        /// The version.
        version: ObjectVersion,
        /// Why.
        cause: DropCause,
    },
}

/// Why a record left the tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Its bucket was evicted for capacity.
    Evicted,
    /// Its value failed its checksum.
    Corrupted,
}

/// Tier statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierStats {
    /// Physical bytes of published buckets.
    pub bytes: u64,
    /// Published buckets.
    pub buckets: u64,
    /// Indexed records.
    pub objects: u64,
    /// Bytes waiting in the write-behind queue.
    pub queued_bytes: u64,
    /// Buckets evicted for capacity.
    pub evicted_buckets: u64,
    /// Records evicted for capacity.
    pub evicted_records: u64,
    /// Reads whose value failed its checksum.
    pub crc_failures: u64,
    /// Buckets that could not be written.
    pub write_failures: u64,
    /// Of those, because the device was full.
    pub no_space: u64,
    /// Leftover files deleted at open: `*.tmp` (a bucket a crash interrupted) and
    /// `*.retired` (a bucket retired while a reader held it).
    pub tmp_removed: u64,
    /// Damaged buckets moved aside at open (as `*.damaged`, never deleted).
    pub damaged: u64,
    /// Buckets that could not be read at open: left in place, not used, tried again at
    /// the next open.
    pub skipped: u64,
    /// Whether bucket files use `O_DIRECT` (false: the buffered fallback).
    pub direct_io: bool,
    /// The I/O backend (the thread pool is the fallback).
    pub driver: DriverKind,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) evicted_buckets: AtomicU64,
    pub(super) evicted_records: AtomicU64,
    pub(super) crc_failures: AtomicU64,
    pub(super) write_failures: AtomicU64,
    pub(super) no_space: AtomicU64,
}

/// Puts that a remove cancelled before they were published. A key's entry cancels its
/// puts accepted before the removal (sequence number below `before`) whose version is
/// at most `upto`: older versions than the one removed, never a newer one queued
/// meanwhile. `all_before` cancels everything accepted before a `remove_all`.
#[derive(Debug, Default)]
pub(super) struct Removals {
    all_before: u64,
    keys: HashMap<Key, Cancel>,
}

#[derive(Debug, Clone, Copy)]
struct Cancel {
    before: u64,
    upto: ObjectVersion,
}

impl Removals {
    pub(super) fn cancels(&self, key: &Key, version: ObjectVersion, seq: u64) -> bool {
        seq < self.all_before || self.keys.get(key).is_some_and(|c| seq < c.before && version <= c.upto)
    }

    /// Cancels `key`'s puts accepted before `before` at versions up to `upto`.
    fn cancel(&mut self, key: Key, before: u64, upto: ObjectVersion) {
        let c = self.keys.entry(key).or_insert(Cancel { before, upto });
        c.before = c.before.max(before);
        c.upto = c.upto.max(upto);
    }

    /// Cancels every put accepted before `before` (never moving backwards, whatever
    /// order concurrent calls arrive in).
    fn cancel_all_before(&mut self, before: u64) {
        self.all_before = self.all_before.max(before);
    }

    /// Every put below `upto` has been published or failed: their removals are done.
    pub(super) fn forget_before(&mut self, upto: u64) {
        self.keys.retain(|_, c| c.before > upto);
    }
}

/// Puts whose write failed, until they are superseded: the same version (or a newer
/// one) of the key written, or the key removed. While any is left, every flush that
/// covers it fails.
#[derive(Debug, Default)]
pub(super) struct Unpersisted {
    /// Key → the failed version and the put's sequence number.
    puts: HashMap<Key, (ObjectVersion, u64)>,
    /// The latest write failure.
    last_error: Option<Arc<TierError>>,
}

impl Unpersisted {
    /// A put failed with `error`.
    pub(super) fn failed(&mut self, key: Key, version: ObjectVersion, seq: u64) {
        let entry = self.puts.entry(key).or_insert((version, seq));
        if version >= entry.0 {
            *entry = (version, seq);
        }
    }

    pub(super) fn set_error(&mut self, error: Arc<TierError>) {
        self.last_error = Some(error);
    }

    /// `key` is durable at `version`, or removed up to it: older failures are moot.
    pub(super) fn superseded(&mut self, key: &Key, version: ObjectVersion) {
        if self.puts.get(key).is_some_and(|(v, _)| *v <= version) {
            self.puts.remove(key);
        }
    }

    /// Everything accepted before `seq` was removed.
    fn removed_before(&mut self, seq: u64) {
        self.puts.retain(|_, (_, s)| *s >= seq);
    }

    /// `Ok` unless a put below `target` is not durable.
    fn check(&self, target: u64) -> Result<(), TierError> {
        match self.puts.values().filter(|(_, seq)| *seq < target).count() as u64 {
            0 => Ok(()),
            records => Err(TierError::NotDurable { records, cause: self.last_error.clone() }),
        }
    }
}

/// State shared by the tier's callers and its threads.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: TierConfig,
    pub(super) dir: NodeDir,
    pub(super) direct_io: bool,
    pub(super) queue: WriteBehind<PersistItem>,
    removals: Mutex<Removals>,
    unpersisted: Mutex<Unpersisted>,
    pub(super) removal_log: RemovalLog,
    pub(super) stats: Counters,
    index: Mutex<Index>,
    events: SegQueue<TierEvent>,
    events_ready: Arc<Notifier>,
    tmp_removed: u64,
    damaged: u64,
    skipped: u64,
    /// Versions below this may be named by records or removals already on disk.
    version_floor: ObjectVersion,
    driver_kind: DriverKind,
}

impl Shared {
    pub(super) fn lock_index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pending removals. Lock order: removals, then the index, then the log.
    pub(super) fn lock_removals(&self) -> MutexGuard<'_, Removals> {
        self.removals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The puts that failed and are not superseded.
    pub(super) fn lock_unpersisted(&self) -> MutexGuard<'_, Unpersisted> {
        self.unpersisted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn emit(&self, event: TierEvent) {
        if self.config.events {
            self.events.push(event);
            self.events_ready.notify();
        }
    }

    /// Evicts whole buckets once physical use passes the high watermark.
    pub(super) fn enforce_capacity(&self) {
        let Some(max) = self.config.max_bytes else { return };
        let (high, low) = (
            (max as f64 * self.config.high_watermark) as u64,
            (max as f64 * self.config.low_watermark) as u64,
        );
        let mut index = self.lock_index();
        if index.physical_bytes() <= high {
            return;
        }
        let buckets_before = index.buckets();
        let gone = index.evict_to(low);
        let evicted_buckets = (buckets_before - index.buckets()) as u64;
        drop(index);
        self.stats.evicted_buckets.fetch_add(evicted_buckets, Ordering::Relaxed);
        self.stats.evicted_records.fetch_add(gone.len() as u64, Ordering::Relaxed);
        for (key, record) in gone {
            self.emit(TierEvent::Dropped { key, version: record.version, cause: DropCause::Evicted });
        }
    }

    /// A record failed its checksum: it leaves the index (unless a newer version
    /// replaced it meanwhile).
    pub(super) fn drop_corrupted(&self, key: &Key, version: ObjectVersion, bucket: BucketId) {
        self.stats.crc_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key = ?key, bucket = ?bucket, "record failed its checksum; dropped");
        if self.lock_index().remove_version(key.as_bytes(), version) {
            self.log_removal(key.clone(), version);
            self.emit(TierEvent::Dropped { key: key.clone(), version, cause: DropCause::Corrupted });
        }
    }

    /// Records a removal in the removal log (durable at the next flush). A failure to
    /// log is reported; the removal stands for this run either way.
    pub(super) fn log_removal(&self, key: Key, version: ObjectVersion) {
        if let Err(e) = self.removal_log.append(&Removal::Record(key, version)) {
            tracing::warn!(error = %e, "could not log a removal; the record may come back after a restart");
        }
    }
}

/// An open SSD tier. See the module documentation.
#[derive(Debug)]
pub struct Tier {
    shared: Arc<Shared>,
    reader: Option<Reader>,
    writer: Option<JoinHandle<()>>,
}

impl Tier {
    /// Opens the node directory (creating it if needed), recovers what it holds and
    /// starts the writer and reader. Returns the recovered records, for the master.
    pub fn open(config: TierConfig) -> Result<(Tier, Vec<RecoveredRecord>), TierError> {
        let dir = NodeDir::open(&config.root, &config.cluster, config.node)?;
        let direct_io = config.direct_io == DirectIo::Auto && probe_direct_io(&dir);
        if config.direct_io == DirectIo::Auto && !direct_io {
            tracing::info!(dir = %dir.path().display(), "O_DIRECT refused here; using buffered I/O");
        }
        let removed = RemovalLog::read(&dir)?;
        let recovery = recover(&dir, direct_io, removed)?;
        let removal_log = RemovalLog::rewrite(&dir, &recovery.removals)?;
        let records = recovered_records(&recovery.index, config.node);
        // Files are not registered with io_uring: the kernel drops a registered file
        // some time after it is unregistered, and a retired bucket's blocks must be
        // freed as soon as its last descriptor closes.
        let write_driver = Driver::open(&DriverConfig {
            queue_depth: config.write_depth,
            register_files: false,
            ..config.driver.clone()
        })?;
        // Read buffers come and go with values: registering each would cost two
        // syscalls per read and pin memory against RLIMIT_MEMLOCK.
        let read_driver = Driver::open(&DriverConfig {
            queue_depth: config.read_depth,
            register_buffers: false,
            register_files: false,
            ..config.driver.clone()
        })?;
        let shared = Arc::new(Shared {
            queue: WriteBehind::new(config.queue_bytes),
            removals: Mutex::new(Removals::default()),
            unpersisted: Mutex::new(Unpersisted::default()),
            removal_log,
            stats: Counters::default(),
            index: Mutex::new(recovery.index),
            events: SegQueue::new(),
            events_ready: match &config.event_signal {
                Some(n) => Arc::clone(n),
                None => Arc::new(
                    Notifier::new().map_err(|e| TierError::io("create event notifier", dir.path(), e))?,
                ),
            },
            tmp_removed: recovery.tmp_removed as u64,
            damaged: recovery.damaged as u64,
            skipped: recovery.skipped as u64,
            version_floor: recovery.max_version.next(),
            driver_kind: write_driver.info().kind,
            direct_io,
            dir,
            config,
        });
        let writer = {
            let w = Writer::new(Arc::clone(&shared), write_driver, recovery.next_bucket);
            std::thread::Builder::new()
                .name("larder-writer".into())
                .spawn({
                    let shared = Arc::clone(&shared);
                    move || {
                        // A writer that dies must not leave flushes and producers waiting.
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run())).is_err() {
                            tracing::error!("the bucket writer panicked; everything not yet durable failed");
                            shared.queue.abort();
                        }
                    }
                })
                .map_err(|e| TierError::io("start bucket writer", shared.dir.path(), e))?
        };
        let reader = Reader::start(Arc::clone(&shared), read_driver)
            .map_err(|e| TierError::io("start reader", shared.dir.path(), e))?;
        shared.enforce_capacity();
        Ok((Tier { shared, reader: Some(reader), writer: Some(writer) }, records))
    }

    /// The node directory.
    pub fn dir(&self) -> &std::path::Path {
        self.shared.dir.path()
    }

    /// The lowest version a new put may use: above every version that a record or a
    /// removal on disk names (a removal of version `v` hides every record of its key at
    /// `v` or below, so a new put at such a version would vanish at the next open). A
    /// store that takes versions from a clock starts at the larger of the clock and
    /// this, so that a clock stepped back cannot lose data.
    pub fn version_floor(&self) -> ObjectVersion {
        self.shared.version_floor
    }

    /// Accepts `value` of `key` at `version` for persistence and returns; the bucket
    /// writer makes it durable behind the caller. Waits while the write-behind queue is
    /// full (never drops).
    pub fn put(&self, key: KeyRef<'_>, version: ObjectVersion, value: Bytes) -> Result<(), TierError> {
        let (item, bytes) = persist_item(key, version, value)?;
        self.shared.queue.push(item, bytes)?;
        Ok(())
    }

    /// Waits until every put accepted before this call has been written or has failed
    /// (the failures stay for [`Tier::flush`] to report, and are reported as events).
    pub fn wait_written(&self) -> Result<(), TierError> {
        self.shared.queue.wait_settled()?;
        Ok(())
    }

    /// Like [`Tier::put`] but never waits: `Ok(false)` (nothing accepted) when the
    /// write-behind queue is full, so that an async caller can wait elsewhere.
    pub fn try_put(&self, key: KeyRef<'_>, version: ObjectVersion, value: Bytes) -> Result<bool, TierError> {
        let (item, bytes) = persist_item(key, version, value)?;
        Ok(self.shared.queue.try_push(item, bytes)?.is_ok())
    }

    /// Waits until every put accepted before this call has been written, then makes
    /// every removal logged so far durable. `Ok` only if every one of those puts is
    /// durable: a put whose write failed stays not durable, and every flush says so
    /// ([`TierError::NotDurable`]), until the same version (or a newer one) of its key
    /// is written or the key is removed. The tier does not retry by itself: the store
    /// above it does.
    pub fn flush(&self) -> Result<(), TierError> {
        self.settle_and_check()?;
        self.shared.removal_log.sync()
    }

    /// Waits for every put accepted so far to settle; an error if any of them, or any
    /// put before them, is not durable.
    fn settle_and_check(&self) -> Result<(), TierError> {
        let target = self.shared.queue.wait_settled()?;
        self.shared.lock_unpersisted().check(target)
    }

    /// Starts a read of `key`; the receiver yields the value (or an error) when it is
    /// in memory and its checksum verified. It is also a `Future`.
    pub fn read(&self, key: KeyRef<'_>) -> Result<oneshot::Receiver<ReadResult>, TierError> {
        self.read_many(&[key]).pop().expect("one result per key")
    }

    /// Starts reads of many keys, all in flight at once; one receiver (or error) per
    /// key, in order.
    pub fn read_many(&self, keys: &[KeyRef<'_>]) -> Vec<Result<oneshot::Receiver<ReadResult>, TierError>> {
        let Some(reader) = self.reader.as_ref() else {
            return keys.iter().map(|_| Err(TierError::Closed)).collect();
        };
        let mut jobs = Vec::with_capacity(keys.len());
        let receivers = {
            let mut index = self.shared.lock_index();
            keys.iter()
                .map(|key| {
                    let pinned = index.pin(key.as_bytes()).ok_or(TierError::NotFound)?;
                    let (reply, rx) = oneshot::channel();
                    jobs.push(ReadJob { key: key.to_key(), pinned, reply });
                    Ok(rx)
                })
                .collect()
        };
        reader.submit(jobs);
        receivers
    }

    /// Reads `key` (blocking).
    pub fn get(&self, key: KeyRef<'_>) -> ReadResult {
        self.read(key)?.recv().map_err(|_| TierError::Closed)?
    }

    /// The version indexed for `key`, if any.
    pub fn version_of(&self, key: KeyRef<'_>) -> Option<ObjectVersion> {
        self.shared.lock_index().get(key.as_bytes()).map(|r| r.version)
    }

    /// Removes `key`: its record becomes dead bytes (a bucket with nothing left alive is
    /// deleted at once), and puts of it not yet published are cancelled. Returns the
    /// version that was indexed, if any.
    pub fn remove(&self, key: KeyRef<'_>) -> Option<ObjectVersion> {
        self.cancel_puts(key, ObjectVersion(u64::MAX));
        self.shared.lock_unpersisted().superseded(&key.to_key(), ObjectVersion(u64::MAX));
        let version = self.shared.lock_index().remove(key.as_bytes()).map(|r| r.version)?;
        self.shared.log_removal(key.to_key(), version);
        Some(version)
    }

    /// Removes `key`'s record if it holds `version` or an older one, and cancels puts
    /// of `key` at such versions accepted before this call (a newer version queued
    /// meanwhile stays). Returns whether an indexed record went.
    pub fn remove_version(&self, key: KeyRef<'_>, version: ObjectVersion) -> bool {
        self.cancel_puts(key, version);
        self.shared.lock_unpersisted().superseded(&key.to_key(), version);
        let removed = {
            let mut index = self.shared.lock_index();
            let indexed = index.get(key.as_bytes()).filter(|r| r.version <= version);
            indexed.is_some_and(|r| index.remove_version(key.as_bytes(), r.version))
        };
        // Logged even when nothing was indexed: a copy may sit dead in a bucket.
        self.shared.log_removal(key.to_key(), version);
        removed
    }

    fn cancel_puts(&self, key: KeyRef<'_>, upto: ObjectVersion) {
        let before = self.shared.queue.next_seq();
        self.shared.lock_removals().cancel(key.to_key(), before, upto);
    }

    /// Removes everything accepted before the call: every record, every bucket, every
    /// file in the node directory but the lock (a bucket being written keeps only what
    /// was accepted after the call). Returns how many indexed records went.
    ///
    /// It runs under the removal and index locks that publishing takes too, so that no
    /// bucket is published halfway through: a put accepted after the sequence number
    /// read here survives, one accepted before is cancelled or cleared, and the removal
    /// log starts afresh before anything published later logs into it. A bucket that a
    /// reader still holds is renamed `*.retired` as it retires, so a crash before its
    /// last read ends does not bring it back.
    pub fn remove_all(&self) -> Result<usize, TierError> {
        let mut removals = self.shared.lock_removals();
        let mut index = self.shared.lock_index();
        let seq = self.shared.queue.next_seq();
        removals.cancel_all_before(seq);
        self.shared.lock_unpersisted().removed_before(seq);
        let (records, _) = index.clear();
        self.shared.removal_log.wipe(|| self.shared.dir.wipe())?;
        Ok(records)
    }

    /// Statistics.
    pub fn stats(&self) -> TierStats {
        let index = self.shared.lock_index();
        let c = &self.shared.stats;
        TierStats {
            bytes: index.physical_bytes(),
            buckets: index.buckets() as u64,
            objects: index.records() as u64,
            queued_bytes: self.shared.queue.queued_bytes() as u64,
            evicted_buckets: c.evicted_buckets.load(Ordering::Relaxed),
            evicted_records: c.evicted_records.load(Ordering::Relaxed),
            crc_failures: c.crc_failures.load(Ordering::Relaxed),
            write_failures: c.write_failures.load(Ordering::Relaxed),
            no_space: c.no_space.load(Ordering::Relaxed),
            tmp_removed: self.shared.tmp_removed,
            damaged: self.shared.damaged,
            skipped: self.shared.skipped,
            direct_io: self.shared.direct_io,
            driver: self.shared.driver_kind,
        }
    }

    /// The next event, if [`TierConfig::events`] is on.
    pub fn poll_event(&self) -> Option<TierEvent> {
        self.shared.events.pop()
    }

    /// A descriptor that becomes readable when events are queued (an eventfd), for a
    /// runtime to wait on. Call [`Tier::clear_event_signal`] before draining
    /// [`Tier::poll_event`], so that no event queued meanwhile goes unsignalled.
    pub fn event_fd(&self) -> std::os::fd::RawFd {
        self.shared.events_ready.fd()
    }

    /// Resets [`Tier::event_fd`] to not readable.
    pub fn clear_event_signal(&self) {
        self.shared.events_ready.reset();
    }

    /// Writes out everything accepted and stops the writer and reader threads, keeping
    /// the index and the removal log usable ([`Tier::remove_version`],
    /// [`Tier::poll_event`], [`Tier::sync_removals`]): the store settles the last
    /// events with the master before it lets go of the tier. Later puts and reads fail
    /// with `Closed`.
    pub fn stop(&mut self) -> Result<(), TierError> {
        let flushed = self.settle_and_check();
        self.shutdown();
        flushed
    }

    /// The latest failure to write a bucket, if any.
    pub fn last_failure(&self) -> Option<Arc<TierError>> {
        self.shared.lock_unpersisted().last_error.clone()
    }

    /// Makes every removal logged so far durable.
    pub fn sync_removals(&self) -> Result<(), TierError> {
        self.shared.removal_log.sync()
    }

    /// Writes out everything accepted, stops the threads, makes the removal log
    /// durable and releases the directory. Deletes no files.
    pub fn close(mut self) -> Result<(), TierError> {
        let stopped = self.stop();
        let synced = self.sync_removals();
        stopped.and(synced)
    }

    fn shutdown(&mut self) {
        self.shared.queue.close();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.reader.take();
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        self.shutdown();
        if let Err(e) = self.sync_removals() {
            tracing::warn!(error = %e, "could not sync the removal log at shutdown");
        }
    }
}

/// A value checked for the bucket format's bounds, as a queue item and its size.
fn persist_item(
    key: KeyRef<'_>,
    version: ObjectVersion,
    value: Bytes,
) -> Result<(PersistItem, usize), TierError> {
    if value.is_empty() {
        return Err(TierError::EmptyValue);
    }
    if value.len() as u64 > MAX_VALUE_LEN {
        return Err(TierError::ValueTooLarge { len: value.len() as u64, max: MAX_VALUE_LEN });
    }
    let bytes = value.len();
    Ok((PersistItem { key: key.to_key(), version, value }, bytes))
}

/// Whether the directory's filesystem accepts `O_DIRECT` (tmpfs, some FUSE and network
/// filesystems do not): writes one aligned block to a probe file.
fn probe_direct_io(dir: &NodeDir) -> bool {
    let path = dir.path().join(".direct-probe.tmp");
    let ok = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .and_then(|mut f| f.write_all(&aligned_zeroed(IO_ALIGN)))
        .is_ok();
    let _ = std::fs::remove_file(&path);
    ok
}

#[cfg(all(test, not(larder_loom)))]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::new(s.as_bytes()).unwrap()
    }

    /// Two `remove_all`s finishing in the other order never un-cancel what the later
    /// one cancelled.
    #[test]
    fn cancelling_everything_before_a_point_never_moves_backwards() {
        let mut r = Removals::default();
        r.cancel_all_before(7);
        r.cancel_all_before(5);
        assert!(r.cancels(&key("a"), ObjectVersion(1), 6), "seq 6 was cancelled by the call at 7");
        assert!(!r.cancels(&key("a"), ObjectVersion(1), 7));
    }

    #[test]
    fn a_key_cancel_spares_newer_versions_and_later_puts() {
        let mut r = Removals::default();
        r.cancel(key("a"), 10, ObjectVersion(3));
        assert!(r.cancels(&key("a"), ObjectVersion(3), 9));
        assert!(!r.cancels(&key("a"), ObjectVersion(4), 9), "a newer version queued meanwhile stays");
        assert!(!r.cancels(&key("a"), ObjectVersion(3), 10), "a put accepted after the removal stays");
        assert!(!r.cancels(&key("b"), ObjectVersion(1), 0));
        r.forget_before(10);
        assert!(!r.cancels(&key("a"), ObjectVersion(3), 9), "forgotten once everything below 10 settled");
    }
}
