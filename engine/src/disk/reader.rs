//! The reader: one thread that owns an I/O driver and serves reads from any thread,
//! keeping many in flight. Each read pins its bucket (the bucket protocol's read
//! guard) until the data is in memory and its CRC32C checked; a mismatch drops the
//! record and is an error to the caller, never wrong bytes.
//!
//! A value is read as several chunk reads in flight at once (`read_chunk_bytes` each),
//! so that one caller waiting for one large value keeps the device busy, and so that
//! no single transfer is ever larger than a chunk whatever the value's size.
//!
//! The reader keeps a descriptor per bucket it reads. An unlinked bucket's blocks are
//! freed only when its last descriptor closes, so the reader closes its descriptor as
//! soon as it hears of the unlink ([`Unlinked`]), which happens when the bucket's last
//! read ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::vec::Vec;

use bytes::Bytes;
use crossbeam_queue::SegQueue;

use super::error::TierError;
use super::format::align_up;
use super::index::{Pinned, Unlinked};
use super::tier::Shared;
use crate::checksum::crc32c;
use crate::ids::{BucketId, ObjectVersion};
use crate::key::Key;
use crate::sync::Arc;
use crate::uring::eventfd::{Notifier, wait_any};
use crate::uring::{AlignedBuf, BufId, Driver, Errno, FileId, IoRequest, OpId, Outcome, aligned_zeroed};

/// What a read yields: the version the record holds, and its value.
pub type ReadResult = Result<(ObjectVersion, Bytes), TierError>;

/// A read to perform.
#[derive(Debug)]
pub(super) struct ReadJob {
    pub(super) key: Key,
    pub(super) pinned: Pinned,
    pub(super) reply: oneshot::Sender<ReadResult>,
}

/// Most bucket files the reader keeps open at once.
const OPEN_FILES: usize = 512;

/// The reader thread's handle: submit jobs, stop it.
#[derive(Debug)]
pub(super) struct Reader {
    jobs: Arc<SegQueue<ReadJob>>,
    wake: Arc<Notifier>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts the thread. `wake` is also the signal of `unlinked`.
    pub(super) fn start(
        shared: Arc<Shared>,
        driver: Driver,
        wake: Arc<Notifier>,
        unlinked: Arc<Unlinked>,
    ) -> std::io::Result<Self> {
        let jobs = Arc::new(SegQueue::new());
        let stop = Arc::new(AtomicBool::new(false));
        let chunk = (shared.config.read_chunk_bytes as u64).max(super::format::BLOCK);
        let thread = {
            let (jobs, wake, stop) = (Arc::clone(&jobs), Arc::clone(&wake), Arc::clone(&stop));
            std::thread::Builder::new().name("larder-reader".into()).spawn(move || {
                let serve = Serve {
                    shared,
                    driver,
                    pool: Arc::new(BufferPool::default()),
                    chunk: align_up(chunk),
                    files: HashMap::new(),
                    unlinked,
                    closing: Vec::new(),
                    reads: HashMap::new(),
                    next_read: 0,
                    ops: HashMap::new(),
                };
                serve.run(&jobs, &wake, &stop)
            })?
        };
        Ok(Self { jobs, wake, stop, thread: Some(thread) })
    }

    /// Queues reads and wakes the thread once.
    pub(super) fn submit(&self, jobs: impl IntoIterator<Item = ReadJob>) {
        for job in jobs {
            self.jobs.push(job);
        }
        self.wake.notify();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A read whose chunks are in flight.
struct ActiveRead {
    job: ReadJob,
    buf: BufId,
    /// Chunks not yet completed.
    pending: u32,
    /// The first thing that went wrong with a chunk.
    failure: Option<ChunkFailure>,
}

#[derive(Debug, Clone, Copy)]
enum ChunkFailure {
    /// The file ended before the chunk did: the bucket is damaged.
    Short,
    Errno(Errno),
    Cancelled,
}

struct Serve {
    shared: Arc<Shared>,
    driver: Driver,
    pool: Arc<BufferPool>,
    /// Bytes per chunk read (a whole number of blocks).
    chunk: u64,
    files: HashMap<BucketId, FileId>,
    unlinked: Arc<Unlinked>,
    /// Unlinked buckets whose descriptor could not be closed yet.
    closing: Vec<BucketId>,
    reads: HashMap<u64, ActiveRead>,
    next_read: u64,
    ops: HashMap<OpId, u64>,
}

/// Bytes of idle read buffers kept for reuse. Fresh buffers cost page faults and
/// zeroing on every read; recycled ones cost nothing.
const POOL_BYTES: usize = 64 << 20;

/// Read buffers handed back by values the callers dropped, by length (values of one
/// deployment come in few sizes). Bounded by [`POOL_BYTES`].
#[derive(Debug, Default)]
struct BufferPool {
    free: Mutex<(HashMap<usize, Vec<AlignedBuf>>, usize)>,
}

impl BufferPool {
    /// A buffer of exactly `len` bytes (a multiple of the I/O alignment). A recycled
    /// buffer holds an earlier value's bytes: only bytes a read fills are ever exposed.
    fn take(&self, len: usize) -> AlignedBuf {
        let mut guard = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let (free, bytes) = &mut *guard;
        match free.get_mut(&len).and_then(Vec::pop) {
            Some(buf) => {
                *bytes -= len;
                buf
            }
            None => aligned_zeroed(len),
        }
    }

    fn give_back(&self, buf: AlignedBuf) {
        let mut guard = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let (free, bytes) = &mut *guard;
        if *bytes + buf.len() <= POOL_BYTES {
            *bytes += buf.len();
            free.entry(buf.len()).or_default().push(buf);
        }
    }
}

/// An aligned read buffer exposed as the value's bytes only; it goes back to the pool
/// when the last `Bytes` referring to it is dropped.
struct Value {
    buf: Option<AlignedBuf>,
    len: usize,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        &self.buf.as_ref().expect("present until dropped")[..self.len]
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(buf);
        }
    }
}

impl Serve {
    fn run(mut self, jobs: &SegQueue<ReadJob>, wake: &Notifier, stop: &AtomicBool) {
        loop {
            wake.reset();
            self.close_unlinked();
            while let Some(job) = jobs.pop() {
                self.start(job);
            }
            if let Err(e) = self.driver.submit().and_then(|()| self.driver.reap().map(drop)) {
                tracing::error!(error = %e, "reader I/O driver failed");
            }
            while let Some(c) = self.driver.poll_completion() {
                self.chunk_done(c.id, c.outcome);
            }
            if stop.load(Ordering::Acquire) && self.reads.is_empty() && jobs.is_empty() {
                return;
            }
            if jobs.is_empty() && self.unlinked.is_empty() {
                let _ = wait_any(&[wake.fd(), self.driver.event_fd()], None);
            }
        }
    }

    /// Closes the descriptors of buckets unlinked since the last look, so that their
    /// blocks are freed.
    fn close_unlinked(&mut self) {
        let mut retry = core::mem::take(&mut self.closing);
        retry.extend(core::iter::from_fn(|| self.unlinked.pop()));
        for id in retry {
            let Some(file) = self.files.remove(&id) else { continue };
            if self.driver.remove_file(file).is_err() {
                // A read of it is still being taken in: close it next time round.
                self.files.insert(id, file);
                self.closing.push(id);
            }
        }
    }

    fn start(&mut self, job: ReadJob) {
        let record = job.pinned.record;
        let file = match self.file(record.bucket, &job.pinned) {
            Ok(f) => f,
            Err(e) => return drop(job.reply.send(Err(e))),
        };
        let Ok(len) = usize::try_from(align_up(record.len)) else {
            let max = usize::MAX as u64;
            return drop(job.reply.send(Err(TierError::ValueTooLarge { len: record.len, max })));
        };
        let buf = self.driver.add_buffer(self.pool.take(len));
        let id = self.next_read;
        self.next_read += 1;
        let mut read = ActiveRead { job, buf, pending: 0, failure: None };
        let mut at = 0u64;
        while at < len as u64 {
            let n = self.chunk.min(len as u64 - at) as usize;
            let request = IoRequest::Read {
                file,
                offset: record.value_offset + at,
                buf,
                buf_offset: at as usize,
                len: n,
            };
            match self.driver.push(request) {
                Ok(op) => {
                    self.ops.insert(op, id);
                    read.pending += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not queue a read");
                    read.failure = Some(ChunkFailure::Errno(Errno(libc::EIO)));
                    break;
                }
            }
            at += n as u64;
        }
        if read.pending == 0 {
            self.finish(read);
        } else {
            self.reads.insert(id, read);
        }
    }

    /// The reader's handle on a bucket file, opened (as a duplicate of the index's
    /// handle) on first use.
    fn file(&mut self, bucket: BucketId, pinned: &Pinned) -> Result<FileId, TierError> {
        if let Some(f) = self.files.get(&bucket) {
            return Ok(*f);
        }
        if self.files.len() >= OPEN_FILES {
            self.close_idle_files();
        }
        let path = self.shared.dir.bucket_path(bucket);
        let dup = pinned.file.try_clone().map_err(|e| TierError::io("open bucket for reading", &path, e))?;
        let id = self.driver.add_file(dup);
        self.files.insert(bucket, id);
        Ok(id)
    }

    /// Closes files no read is using.
    fn close_idle_files(&mut self) {
        let driver = &mut self.driver;
        self.files.retain(|_, id| driver.remove_file(*id).is_err());
    }

    fn chunk_done(&mut self, op: OpId, outcome: Outcome) {
        let id = self.ops.remove(&op).expect("completion of a started read");
        let read = self.reads.get_mut(&id).expect("a read with chunks in flight");
        read.pending -= 1;
        let failure = match outcome {
            Outcome::Done { eof: true, .. } => Some(ChunkFailure::Short),
            Outcome::Done { .. } => None,
            Outcome::Failed { errno, .. } => Some(ChunkFailure::Errno(errno)),
            Outcome::Cancelled => Some(ChunkFailure::Cancelled),
        };
        if read.failure.is_none() {
            read.failure = failure;
        }
        if read.pending == 0 {
            let read = self.reads.remove(&id).expect("looked up above");
            self.finish(read);
        }
    }

    fn finish(&mut self, read: ActiveRead) {
        let ActiveRead { job, buf, failure, .. } = read;
        let data = self.driver.remove_buffer(buf).expect("no chunk of a finished read is in flight");
        let record = job.pinned.record;
        let result = match failure {
            None => {
                let value = Value { buf: Some(data), len: record.len as usize, pool: Arc::clone(&self.pool) };
                if crc32c(value.as_ref()) == record.crc {
                    Ok((record.version, Bytes::from_owner(value)))
                } else {
                    Err(self.corrupted(&job))
                }
            }
            Some(failure) => {
                self.pool.give_back(data);
                Err(match failure {
                    ChunkFailure::Short => self.corrupted(&job),
                    ChunkFailure::Errno(errno) => TierError::io(
                        "read bucket",
                        &self.shared.dir.bucket_path(record.bucket),
                        std::io::Error::from_raw_os_error(errno.0),
                    ),
                    ChunkFailure::Cancelled => TierError::Closed,
                })
            }
        };
        // The pin is released only now, after the data is in memory.
        let _ = job.reply.send(result);
    }

    fn corrupted(&self, job: &ReadJob) -> TierError {
        let record = job.pinned.record;
        self.shared.drop_corrupted(&job.key, record.version, record.bucket);
        TierError::Corrupted { key: job.key.clone(), bucket: record.bucket }
    }
}
