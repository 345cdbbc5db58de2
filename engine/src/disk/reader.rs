//! The reader: one thread that owns an I/O driver and serves reads from any thread,
//! keeping many in flight. Each read pins its bucket (the bucket protocol's read
//! guard) until the data is in memory and its CRC32C checked; a mismatch drops the
//! record and is an error to the caller, never wrong bytes.
//!
//! A value is read as several chunk reads in flight at once (`read_chunk_bytes` each),
//! so that one caller waiting for one large value keeps the device busy, and so that
//! no single transfer is ever larger than a chunk whatever the value's size.
//!
//! The reader holds a descriptor of a bucket only while reads of it are in flight, and
//! closes it before the last of them is answered: an unlinked bucket's blocks are freed
//! only when its last descriptor closes, so a retired bucket's space is back by the
//! time its last reader has the value (a descriptor kept for later would hold it).
//! Reads that overlap share one descriptor; one opened and closed per read costs two
//! syscalls beside a read of at least 64 KiB.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_queue::SegQueue;

use super::error::TierError;
use super::format::align_up;
use super::index::Pinned;
use super::shared::Shared;
use crate::checksum::crc32c;
use crate::ids::{BucketId, ObjectVersion};
use crate::key::Key;
use crate::pool::BufferPool;
use crate::sync::Arc;
use crate::uring::eventfd::{Notifier, wait_any};
use crate::uring::{AlignedBuf, BufId, Driver, Errno, FileId, IoRequest, OpId, Outcome};

/// What a read yields: the version the record holds, and its value.
pub type ReadResult = Result<(ObjectVersion, Bytes), TierError>;

/// A read to perform.
#[derive(Debug)]
pub(super) struct ReadJob {
    pub(super) key: Key,
    pub(super) pinned: Pinned,
    pub(super) reply: oneshot::Sender<ReadResult>,
}

/// The reader thread's handle: submit jobs, stop it.
#[derive(Debug)]
pub(super) struct Reader {
    jobs: Arc<SegQueue<ReadJob>>,
    wake: Arc<Notifier>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts the thread.
    pub(super) fn start(shared: Arc<Shared>, driver: Driver) -> std::io::Result<Self> {
        let jobs = Arc::new(SegQueue::new());
        let wake = Arc::new(Notifier::new()?);
        let stop = Arc::new(AtomicBool::new(false));
        let chunk = (shared.config.read_chunk_bytes as u64).max(super::format::BLOCK);
        let thread = {
            let (jobs, wake, stop) = (Arc::clone(&jobs), Arc::clone(&wake), Arc::clone(&stop));
            std::thread::Builder::new().name("larder-reader".into()).spawn(move || {
                let serve = Serve {
                    shared,
                    driver,
                    pool: BufferPool::new(POOL_BYTES),
                    chunk: align_up(chunk),
                    files: HashMap::new(),
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
    pool: std::sync::Arc<BufferPool<AlignedBuf>>,
    /// Bytes per chunk read (a whole number of blocks).
    chunk: u64,
    /// Descriptors of buckets with reads in flight, and how many reads.
    files: HashMap<BucketId, (FileId, u32)>,
    reads: HashMap<u64, ActiveRead>,
    next_read: u64,
    ops: HashMap<OpId, u64>,
}

/// Bytes of idle read buffers kept for reuse.
const POOL_BYTES: usize = 64 << 20;

impl Serve {
    fn run(mut self, jobs: &SegQueue<ReadJob>, wake: &Notifier, stop: &AtomicBool) {
        loop {
            wake.reset();
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
            if jobs.is_empty() {
                let _ = wait_any(&[wake.fd(), self.driver.event_fd()], None);
            }
        }
    }

    fn start(&mut self, job: ReadJob) {
        let record = job.pinned.record;
        let Ok(len) = usize::try_from(align_up(record.len)) else {
            let max = usize::MAX as u64;
            return drop(job.reply.send(Err(TierError::ValueTooLarge { len: record.len, max })));
        };
        let file = match self.file(record.bucket, &job.pinned) {
            Ok(f) => f,
            Err(e) => return drop(job.reply.send(Err(e))),
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

    /// The reader's handle on a bucket file for one more read: a duplicate of the
    /// index's handle, shared by the reads in flight.
    fn file(&mut self, bucket: BucketId, pinned: &Pinned) -> Result<FileId, TierError> {
        if let Some((f, reads)) = self.files.get_mut(&bucket) {
            *reads += 1;
            return Ok(*f);
        }
        let path = self.shared.dir.bucket_path(bucket);
        let dup = pinned.file.try_clone().map_err(|e| TierError::io("open bucket for reading", &path, e))?;
        let id = self.driver.add_file(dup);
        self.files.insert(bucket, (id, 1));
        Ok(id)
    }

    /// A read of `bucket` is over: the last one closes the descriptor.
    fn release_file(&mut self, bucket: BucketId) {
        let Some((file, reads)) = self.files.get_mut(&bucket) else { return };
        *reads -= 1;
        if *reads == 0 {
            let file = *file;
            self.files.remove(&bucket);
            self.driver.remove_file(file).expect("no operation of a finished read is in flight");
        }
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
        let ActiveRead { job: ReadJob { key, pinned, reply }, buf, failure, .. } = read;
        let data = self.driver.remove_buffer(buf).expect("no chunk of a finished read is in flight");
        let record = pinned.record;
        let result = match failure {
            None if crc32c(&data[..record.len as usize]) == record.crc => {
                Ok((record.version, self.pool.share(data, record.len as usize)))
            }
            None => {
                self.pool.give_back(data);
                Err(self.corrupted(key, record))
            }
            Some(failure) => {
                self.pool.give_back(data);
                Err(match failure {
                    ChunkFailure::Short => self.corrupted(key, record),
                    ChunkFailure::Errno(errno) => TierError::io(
                        "read bucket",
                        &self.shared.dir.bucket_path(record.bucket),
                        std::io::Error::from_raw_os_error(errno.0),
                    ),
                    ChunkFailure::Cancelled => TierError::Closed,
                })
            }
        };
        // The data is in memory: close the descriptor if this was the bucket's last read
        // and release the pin, so that a retired bucket's blocks are free by the time
        // the caller has the value.
        self.release_file(record.bucket);
        drop(pinned);
        let _ = reply.send(result);
    }

    fn corrupted(&self, key: Key, record: super::index::Record) -> TierError {
        self.shared.drop_corrupted(&key, record.version, record.bucket);
        TierError::Corrupted { key, bucket: record.bucket }
    }
}
