//! The reader: one thread that owns an I/O driver and serves reads from any thread,
//! keeping many in flight. Each read pins its bucket (the bucket protocol's read
//! guard) until the data is in memory and its CRC32C checked; a mismatch drops the
//! record and is an error to the caller, never wrong bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::vec::Vec;

use bytes::Bytes;
use crossbeam_queue::SegQueue;

use super::error::TierError;
use super::format::align_up;
use super::index::Pinned;
use super::tier::Shared;
use crate::checksum::crc32c;
use crate::ids::{BucketId, ObjectVersion};
use crate::key::Key;
use crate::sync::Arc;
use crate::uring::eventfd::{Notifier, wait_any};
use crate::uring::{AlignedBuf, Driver, FileId, IoRequest, OpId, Outcome, aligned_zeroed};

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
    pub(super) fn start(shared: Arc<Shared>, driver: Driver) -> std::io::Result<Self> {
        let jobs = Arc::new(SegQueue::new());
        let wake = Arc::new(Notifier::new()?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (jobs, wake, stop) = (Arc::clone(&jobs), Arc::clone(&wake), Arc::clone(&stop));
            std::thread::Builder::new().name("larder-reader".into()).spawn(move || {
                let pool = Arc::new(BufferPool::default());
                Serve { shared, driver, pool, files: HashMap::new(), in_flight: HashMap::new() }
                    .run(&jobs, &wake, &stop)
            })?
        };
        Ok(Self { jobs, wake, stop, thread: Some(thread) })
    }

    pub(super) fn submit(&self, job: ReadJob) {
        self.jobs.push(job);
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

struct Serve {
    shared: Arc<Shared>,
    driver: Driver,
    pool: Arc<BufferPool>,
    files: HashMap<BucketId, FileId>,
    in_flight: HashMap<OpId, ReadJob>,
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
            while let Some(job) = jobs.pop() {
                self.start(job);
            }
            if let Err(e) = self.driver.submit().and_then(|()| self.driver.reap().map(drop)) {
                tracing::error!(error = %e, "reader I/O driver failed");
            }
            while let Some(c) = self.driver.poll_completion() {
                self.finish(c.id, c.buf.expect("reads have buffers"), c.outcome);
            }
            if stop.load(Ordering::Acquire) && self.in_flight.is_empty() && jobs.is_empty() {
                return;
            }
            if jobs.is_empty() {
                let _ = wait_any(&[wake.fd(), self.driver.event_fd()], None);
            }
        }
    }

    fn start(&mut self, job: ReadJob) {
        let record = job.pinned.record;
        let file = match self.file(record.bucket, &job.pinned) {
            Ok(f) => f,
            Err(e) => return drop(job.reply.send(Err(e))),
        };
        let len = align_up(record.len) as usize;
        let buf = self.driver.add_buffer(self.pool.take(len));
        let request = IoRequest::Read { file, offset: record.value_offset, buf, buf_offset: 0, len };
        match self.driver.push(request) {
            Ok(id) => {
                self.in_flight.insert(id, job);
            }
            Err(e) => {
                let _ = self.driver.remove_buffer(buf);
                let _ = job.reply.send(Err(TierError::Driver(e.into())));
            }
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

    /// Closes files no read is using (their buckets may be gone).
    fn close_idle_files(&mut self) {
        let driver = &mut self.driver;
        self.files.retain(|_, id| driver.remove_file(*id).is_err());
    }

    fn finish(&mut self, id: OpId, buf: crate::uring::BufId, outcome: Outcome) {
        let job = self.in_flight.remove(&id).expect("completion of a started read");
        let data = self.driver.remove_buffer(buf).expect("a completed read's buffer is free");
        let record = job.pinned.record;
        let result = match outcome {
            Outcome::Done { bytes, .. } if (bytes as u64) < record.len => Err(self.corrupted(&job)),
            Outcome::Done { .. } => {
                let value = Value { buf: Some(data), len: record.len as usize, pool: Arc::clone(&self.pool) };
                if crc32c(value.as_ref()) == record.crc {
                    Ok((record.version, Bytes::from_owner(value)))
                } else {
                    Err(self.corrupted(&job))
                }
            }
            Outcome::Failed { errno, .. } => Err(TierError::io(
                "read bucket",
                &self.shared.dir.bucket_path(record.bucket),
                std::io::Error::from_raw_os_error(errno.0),
            )),
            Outcome::Cancelled => Err(TierError::Closed),
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

/// Collects many replies (for batch reads).
pub(super) fn wait_all(receivers: Vec<Result<oneshot::Receiver<ReadResult>, TierError>>) -> Vec<ReadResult> {
    receivers.into_iter().map(|r| r.and_then(|rx| rx.recv().map_err(|_| TierError::Closed)?)).collect()
}
