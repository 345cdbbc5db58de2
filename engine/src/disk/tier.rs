//! The SSD tier: puts are persisted behind the caller into bucket files, reads come
//! back checksummed, capacity is enforced by evicting whole buckets, and reopening a
//! node directory recovers everything that was published.
//!
//! Threads: one bucket writer and one reader, each owning an I/O driver (io_uring, or
//! the thread-pool fallback). Callers on any thread put, flush, read and remove.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::vec::Vec;

use bytes::Bytes;
use crossbeam_queue::SegQueue;

use super::config::{DirectIo, TierConfig};
use super::dir::NodeDir;
use super::error::TierError;
use super::format::MAX_VALUE_LEN;
use super::queue::WriteBehind;
use super::reader::{ReadJob, ReadResult, Reader};
use super::recovery::{RecoveredRecord, recover, recovered_records};
use super::removals::RemovalLog;
use super::shared::{Counters, PersistItem, Removals, Shared, TierEvent, Unpersisted};
use super::writer::Writer;
use crate::ids::ObjectVersion;
use crate::key::KeyRef;
use crate::sync::Arc;
use crate::uring::{Driver, DriverConfig, DriverKind, IO_ALIGN, Notifier, aligned_zeroed};

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

    /// Every record the tier holds now, as the master registers them (after a restart
    /// of the master, a node registers them all again).
    pub fn records(&self) -> Vec<RecoveredRecord> {
        let index = self.shared.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        recovered_records(&index, self.shared.config.node)
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

    /// Waits until at least one more put has been written (or has failed) than when
    /// [`Tier::written`] said `past`, without sealing buckets early: for a caller that
    /// needs some progress (memory freed by persists), not everything durable. Returns
    /// at once if nothing is waiting to be written.
    pub fn wait_progress(&self, past: u64) -> u64 {
        self.shared.queue.wait_progress(past)
    }

    /// Whether a put accepted so far has yet to be written (or to fail): what
    /// [`Tier::wait_progress`] would wait for, so false once the tier is shutting down
    /// or its writer is gone.
    pub fn has_unwritten(&self) -> bool {
        self.shared.queue.has_unsettled()
    }

    /// How many puts have been written (or have failed) so far.
    pub fn written(&self) -> u64 {
        self.shared.queue.settled()
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
        // Every bucket published or recovered so far is below this; the one being
        // written, and every later one, is not.
        let marker = index.next_bucket();
        let (records, _) = index.clear();
        self.shared.removal_log.wipe(marker, || self.shared.dir.wipe())?;
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
    pub fn last_failure(&self) -> Option<std::sync::Arc<TierError>> {
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
