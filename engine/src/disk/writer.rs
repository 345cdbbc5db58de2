//! The bucket writer: one thread takes records from the write-behind queue, lays them
//! out in a bucket file (`*.tmp`, written through the I/O driver in 4 KiB-aligned
//! chunks, several in flight), and seals the bucket when the policy says so (the
//! sans-IO [`Batcher`]: full, idle, old, flushed, closed): footer and trailer,
//! `fdatasync`, rename into place, directory `fsync`, publish, index. A failure at any
//! step drops the bucket's write guard, which deletes the temporary file; its records
//! are reported failed. This thread reads the clock and does the I/O; the decisions are
//! the batcher's.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::vec::Vec;

use super::batch::{BatchPolicy, Batcher, Seal};

use super::dir::preallocate;
use super::error::TierError;
use super::format::{FooterBuilder, FooterEntry, RecordHeader, TRAILER_LEN, Trailer};
use super::index::{BucketFile, Inserted, Record};
use super::protocol::{Bucket, WriteGuard};
use super::shared::{PersistItem, Shared, TierEvent};
use crate::checksum::crc32c;
use crate::descriptor::DiskReplica;
use crate::ids::{BucketId, ObjectVersion};
use crate::key::Key;
use crate::sync::Arc;
use crate::time::Instant;
use crate::uring::{BufId, Driver, FileId, IoRequest, Outcome};

/// A record written into the open bucket, waiting for the bucket to be published.
#[derive(Debug)]
struct Written {
    seq: u64,
    key: Key,
    record: Record,
}

#[derive(Debug)]
struct OpenBucket {
    id: BucketId,
    guard: WriteGuard<BucketFile>,
    file: FileId,
    /// File offset of the current chunk's first byte.
    chunk_pos: u64,
    /// The chunk being filled, and how full it is.
    chunk: Option<(BufId, usize)>,
    footer: FooterBuilder,
    written: Vec<Written>,
    /// The first failure; the bucket is abandoned once its writes have drained.
    error: Option<TierError>,
}

impl OpenBucket {
    /// Bytes laid out so far (where the next byte goes).
    fn len(&self) -> u64 {
        self.chunk_pos + self.chunk.map_or(0, |(_, fill)| fill as u64)
    }
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    driver: Driver,
    free_chunks: Vec<BufId>,
    chunk_len: usize,
    open: Option<OpenBucket>,
    batcher: Batcher,
    epoch: std::time::Instant,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>, mut driver: Driver, next_id: u64) -> Self {
        let chunk_len = shared.config.chunk_bytes;
        let free_chunks =
            (0..shared.config.write_depth.max(1)).map(|_| driver.alloc_buffer(chunk_len)).collect();
        let c = &shared.config;
        let policy = BatchPolicy {
            bucket_bytes: c.bucket_bytes,
            idle: c.bucket_idle.into(),
            max_age: c.bucket_max_age.into(),
        };
        let batcher = Batcher::new(policy, next_id);
        Self { shared, driver, free_chunks, chunk_len, open: None, batcher, epoch: std::time::Instant::now() }
    }

    /// The batcher's time: since the writer started.
    fn now(&self) -> Instant {
        Instant::from_nanos(self.epoch.elapsed().as_nanos() as u64)
    }

    /// Runs until the queue is closed and drained.
    pub(super) fn run(mut self) {
        loop {
            let now = self.now();
            let timeout = self
                .batcher
                .poll_timeout()
                .map(|at| core::time::Duration::from_nanos(at.saturating_duration_since(now).as_nanos()));
            let taken = self.shared.queue.take(self.shared.config.bucket_bytes as usize, timeout);
            for (seq, item) in taken.items {
                self.append(seq, item);
            }
            self.batcher.handle_flush(taken.flush_upto);
            if taken.closed {
                self.batcher.handle_close();
            }
            self.seal_due();
            if taken.closed && !self.batcher.is_open() {
                return;
            }
        }
    }

    /// Seals what the batcher says is due.
    fn seal_due(&mut self) {
        while let Some(seal) = self.batcher.poll_seal(self.now()) {
            self.seal(seal);
        }
    }

    fn append(&mut self, seq: u64, item: PersistItem) {
        let value_len = item.value.len() as u64;
        let placed = self.batcher.handle_record(self.now(), seq, item.key.len(), value_len);
        if placed.opens {
            match self.open_bucket(placed.bucket) {
                Ok(b) => self.open = Some(b),
                Err(e) => {
                    self.batcher.handle_abandon();
                    self.fail_items(&[(seq, item.key, item.version)], e);
                    return;
                }
            }
        }
        let crc = crc32c(&item.value);
        let (layout, record_offset) = (placed.layout, placed.record_offset);
        debug_assert_eq!(record_offset, self.open.as_ref().expect("opened above").len());
        let header =
            RecordHeader { key: item.key.as_ref(), value_len, version: item.version, value_crc: crc };
        let mut head = [0u8; 2 * 4096];
        let head_len = header.encode(&mut head);
        debug_assert!(head_len as u64 <= layout.value_offset);
        self.append_bytes(&head[..layout.value_offset as usize]);
        self.append_bytes(&item.value);
        self.append_zeros((layout.len - layout.value_offset - value_len) as usize);
        let b = self.open.as_mut().expect("opened above");
        b.footer.push(&FooterEntry {
            record_offset,
            value_len,
            version: item.version,
            value_crc: crc,
            key: item.key.as_ref(),
        });
        let record = Record {
            bucket: b.id,
            value_offset: record_offset + layout.value_offset,
            len: value_len,
            crc,
            version: item.version,
        };
        b.written.push(Written { seq, key: item.key, record });
        // A full bucket is sealed before the next record, which starts another. (Only a
        // full one: the rest of the batch joins the open bucket whatever a flush asks.)
        if let Some(seal) = self.batcher.poll_full() {
            self.seal(seal);
        }
    }

    fn open_bucket(&mut self, id: BucketId) -> Result<OpenBucket, TierError> {
        let dir = &self.shared.dir;
        let tmp = dir.tmp_path(id);
        let guard = Bucket::create(BucketFile::new(dir.bucket_paths(id)));
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true);
        if self.shared.direct_io {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = options.open(&tmp).map_err(|e| TierError::io("create bucket", &tmp, e))?;
        preallocate(&file, self.shared.config.bucket_bytes + self.chunk_len as u64);
        let file = self.driver.add_file(file);
        Ok(OpenBucket {
            id,
            guard,
            file,
            chunk_pos: 0,
            chunk: None,
            footer: FooterBuilder::new(id),
            written: Vec::new(),
            error: None,
        })
    }

    fn append_bytes(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (buf, fill) = self.chunk();
            let n = data.len().min(self.chunk_len - fill);
            self.driver.buffer_mut(buf).expect("a filling chunk is not in flight")[fill..fill + n]
                .copy_from_slice(&data[..n]);
            data = &data[n..];
            self.advance(n);
        }
    }

    fn append_zeros(&mut self, mut n: usize) {
        while n > 0 {
            let (buf, fill) = self.chunk();
            let m = n.min(self.chunk_len - fill);
            self.driver.buffer_mut(buf).expect("a filling chunk is not in flight")[fill..fill + m].fill(0);
            n -= m;
            self.advance(m);
        }
    }

    /// The chunk being filled, taking a free one (waiting for a write to finish if
    /// every chunk is in flight).
    fn chunk(&mut self) -> (BufId, usize) {
        if let Some(chunk) = self.open.as_ref().expect("appending to an open bucket").chunk {
            return chunk;
        }
        while self.free_chunks.is_empty() {
            self.complete_writes(true);
        }
        let buf = self.free_chunks.pop().expect("waited for one");
        self.open.as_mut().expect("appending to an open bucket").chunk = Some((buf, 0));
        (buf, 0)
    }

    fn advance(&mut self, n: usize) {
        let b = self.open.as_mut().expect("appending to an open bucket");
        let (buf, fill) = b.chunk.expect("a chunk is being filled");
        b.chunk = Some((buf, fill + n));
        if fill + n == self.chunk_len {
            self.submit_chunk();
        }
    }

    /// Writes the current chunk out (its fill is a whole number of blocks).
    fn submit_chunk(&mut self) {
        let b = self.open.as_mut().expect("an open bucket");
        let Some((buf, fill)) = b.chunk.take() else { return };
        let request = IoRequest::Write { file: b.file, offset: b.chunk_pos, buf, buf_offset: 0, len: fill };
        b.chunk_pos += fill as u64;
        self.driver.push(request).expect("chunk and file are the writer's own");
        if let Err(e) = self.driver.submit() {
            self.record_error(TierError::Driver(e));
        }
    }

    /// Takes finished writes back (blocking for at least one if `block`).
    fn complete_writes(&mut self, block: bool) {
        if block {
            if let Err(e) = self.driver.wait() {
                self.record_error(TierError::Driver(e));
            }
        }
        if let Err(e) = self.driver.reap() {
            self.record_error(TierError::Driver(e));
        }
        while let Some(c) = self.driver.poll_completion() {
            if let Some(buf) = c.buf {
                self.free_chunks.push(buf);
            }
            if let Outcome::Failed { errno, .. } = c.outcome {
                let path = self.shared.dir.tmp_path(self.open.as_ref().map_or(BucketId(0), |b| b.id));
                self.record_error(TierError::io(
                    "write bucket",
                    &path,
                    std::io::Error::from_raw_os_error(errno.0),
                ));
            }
        }
    }

    fn record_error(&mut self, e: TierError) {
        if let Some(b) = self.open.as_mut() {
            b.error.get_or_insert(e);
        }
    }

    /// Waits until no operation of the open bucket is in flight.
    fn drain(&mut self) {
        while self.driver.in_flight() > 0 || !self.driver.is_idle() {
            self.complete_writes(true);
        }
    }

    /// Finishes the open bucket: footer, trailer, sync, rename, publish, index.
    fn seal(&mut self, seal: Seal) {
        let Some(b) = self.open.as_ref() else { return };
        debug_assert_eq!((b.id, b.len()), (seal.bucket, seal.data_len), "the batcher and the file agree");
        let footer_offset = b.len();
        let footer = b.footer.clone().finish();
        let trailer = Trailer {
            bucket: b.id,
            footer_offset,
            footer_len: footer.len() as u64,
            record_count: b.footer.count(),
        };
        let file_len = trailer.file_len();
        self.append_bytes(&footer);
        self.append_zeros((file_len - footer_offset - footer.len() as u64 - TRAILER_LEN as u64) as usize);
        self.append_bytes(&trailer.encode());
        self.submit_chunk();
        self.drain();
        let file = self.open.as_ref().expect("sealing").file;
        self.trim_preallocation(file, file_len);
        if self.open.as_ref().expect("sealing").error.is_none() {
            self.driver.push(IoRequest::Fdatasync { file }).expect("the writer's own file");
            match self.driver.run_until_idle() {
                Ok(done) => {
                    for c in done {
                        if let Outcome::Failed { errno, .. } = c.outcome {
                            let path = self.shared.dir.tmp_path(self.open.as_ref().expect("sealing").id);
                            self.record_error(TierError::io(
                                "fdatasync bucket",
                                &path,
                                std::io::Error::from_raw_os_error(errno.0),
                            ));
                        }
                    }
                }
                Err(e) => self.record_error(TierError::Driver(e)),
            }
        }
        let b = self.open.take().expect("sealing");
        let file = self.driver.remove_file(b.file).expect("no operation is in flight");
        match b.error {
            Some(e) => self.abandon(b.guard, b.written, e),
            None => self.publish(b.id, b.guard, b.written, file, file_len),
        }
    }

    /// Cuts what [`preallocate`] reserved beyond the trailer, so that the trailer ends
    /// the file (the fdatasync that follows makes the size durable).
    fn trim_preallocation(&mut self, file: FileId, file_len: u64) {
        let result = self.driver.file(file).map(|f| f.set_len(file_len));
        if let Ok(Err(e)) = result {
            let path = self.shared.dir.tmp_path(self.open.as_ref().expect("sealing").id);
            self.record_error(TierError::io("trim bucket", &path, e));
        }
    }

    fn publish(
        &mut self,
        id: BucketId,
        guard: WriteGuard<BucketFile>,
        written: Vec<Written>,
        file: File,
        file_len: u64,
    ) {
        let dir = &self.shared.dir;
        let (tmp, path) = (dir.tmp_path(id), dir.bucket_path(id));
        if let Err(e) = std::fs::rename(&tmp, &path) {
            return self.abandon(guard, written, TierError::io("rename bucket into place", &tmp, e));
        }
        guard.bucket().unlinker().mark_renamed();
        if let Err(e) = dir.sync() {
            return self.abandon(guard, written, e);
        }
        let cell = guard.publish();
        let upto = written.last().map_or(0, |w| w.seq + 1);
        let node = self.shared.config.node;
        {
            let removed = self.shared.lock_removals();
            let mut index = self.shared.lock_index();
            index.add_bucket(id, cell, Arc::new(file), file_len);
            let mut unpersisted = self.shared.lock_unpersisted();
            for w in written {
                let version = w.record.version;
                unpersisted.superseded(&w.key, version);
                let indexed = !removed.cancels(&w.key, version, w.seq)
                    && match index.insert(w.key.clone(), w.record) {
                        Inserted::Added => true,
                        Inserted::Replaced(old) => {
                            // The older record is dead bytes now: keep it dead.
                            self.shared.log_removal(w.key.clone(), old);
                            true
                        }
                        Inserted::Refused => false,
                    };
                if !indexed {
                    // Removed while it was being written, or older than what is
                    // indexed: the bucket holds it, so the log must say it is dead, and
                    // whoever asked for it must hear that it was not kept.
                    self.shared.log_removal(w.key.clone(), version);
                    self.shared.emit(TierEvent::Cancelled { key: w.key, version });
                    continue;
                }
                let replica = DiskReplica {
                    node,
                    bucket: id,
                    offset: w.record.value_offset,
                    len: w.record.len,
                    crc32c: w.record.crc,
                };
                self.shared.emit(TierEvent::Persisted { key: w.key, version: w.record.version, replica });
            }
            index.retire_if_empty(id);
        }
        self.shared.lock_removals().forget_before(upto);
        // Capacity is enforced before the records count as settled, so that a flush
        // returns with the tier back within its limit.
        self.shared.enforce_capacity();
        self.shared.queue.settle(upto);
    }

    /// Gives up on a bucket: dropping the guard deletes its temporary file (once); its
    /// records are reported failed.
    fn abandon(&mut self, guard: WriteGuard<BucketFile>, written: Vec<Written>, error: TierError) {
        drop(guard);
        let items: Vec<(u64, Key, ObjectVersion)> =
            written.into_iter().map(|w| (w.seq, w.key, w.record.version)).collect();
        self.fail_items(&items, error);
    }

    /// The items could not be persisted: the tier remembers them as not durable
    /// (before they count as settled, so that a flush waking up sees them), and the
    /// master hears of each.
    fn fail_items(&mut self, items: &[(u64, Key, ObjectVersion)], error: TierError) {
        tracing::warn!(error = %error, records = items.len(), "could not persist a bucket");
        self.shared.stats.write_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let no_space = matches!(error, TierError::NoSpace { .. });
        if no_space {
            self.shared.stats.no_space.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        {
            let mut unpersisted = self.shared.lock_unpersisted();
            for (seq, key, version) in items {
                unpersisted.failed(key.clone(), *version, *seq);
            }
            unpersisted.set_error(std::sync::Arc::new(error));
        }
        for (_, key, version) in items {
            self.shared.emit(TierEvent::PersistFailed { key: key.clone(), version: *version, no_space });
        }
        if let Some(upto) = items.iter().map(|(seq, _, _)| seq + 1).max() {
            self.shared.queue.settle(upto);
        }
    }
}
