//! The portable backend: a small thread pool doing `pread`/`pwrite`/`fdatasync`.
//!
//! Used when io_uring is unavailable (a kernel without it, or a seccomp profile that
//! blocks `io_uring_setup` with `EPERM`), or when configured. Completions are signalled
//! on the same eventfd the io_uring backend uses, so runtimes wait on it the same way.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::vec::Vec;

use crossbeam_queue::SegQueue;

use super::eventfd;
use super::prepared::{Prepared, PreparedOp};
use crate::jobs::JobQueue;

#[derive(Debug)]
struct Shared {
    jobs: JobQueue<Prepared>,
    done: SegQueue<(u64, i32)>,
    wake: Arc<OwnedFd>,
}

/// The thread-pool backend.
#[derive(Debug)]
pub(super) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    pub(super) fn new(threads: usize, wake: Arc<OwnedFd>) -> io::Result<Self> {
        let shared = Arc::new(Shared { jobs: JobQueue::new(), done: SegQueue::new(), wake });
        let workers = (0..threads.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new().name(std::format!("larder-io-{i}")).spawn(move || work(&shared))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self { shared, workers })
    }

    pub(super) fn push(&self, job: Prepared) {
        self.shared.jobs.push(job);
    }

    pub(super) fn flush(&self) {
        self.shared.jobs.wake_all();
    }

    pub(super) fn drain(&self, mut on_completion: impl FnMut(u64, i32)) -> usize {
        eventfd::reset(&self.shared.wake);
        let mut n = 0;
        while let Some((user_data, result)) = self.shared.done.pop() {
            on_completion(user_data, result);
            n += 1;
        }
        n
    }

    pub(super) fn wait(&self) -> io::Result<()> {
        if !self.shared.done.is_empty() {
            return Ok(());
        }
        eventfd::wait_readable(&self.shared.wake)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Jobs queued before still run; then every worker returns (see `JobQueue`).
        self.shared.jobs.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn work(shared: &Shared) {
    while let Some(job) = shared.jobs.next() {
        let result = execute(&job.op);
        shared.done.push((job.user_data, result));
        eventfd::signal(&shared.wake);
    }
}

/// Performs one operation; returns bytes transferred or a negated errno, as io_uring does.
fn execute(op: &PreparedOp) -> i32 {
    let ret = match *op {
        // SAFETY: `ptr` addresses `len` bytes of a live buffer that the driver keeps busy
        // (neither borrowed nor freed) until this operation's completion is taken back.
        PreparedOp::Read { file, ptr, len, offset, .. } => unsafe {
            libc::pread(file.fd, ptr.cast(), len as usize, offset as libc::off_t)
        },
        // SAFETY: as above; the kernel only reads the buffer.
        PreparedOp::Write { file, ptr, len, offset, .. } => unsafe {
            libc::pwrite(file.fd, ptr.cast(), len as usize, offset as libc::off_t)
        },
        // SAFETY: `fd` is an open descriptor owned by the driver's file table, kept
        // open while the operation is outstanding.
        PreparedOp::Sync { file, data_only: true } => unsafe { libc::fdatasync(file.fd) as isize },
        // SAFETY: as above.
        PreparedOp::Sync { file, data_only: false } => unsafe { libc::fsync(file.fd) as isize },
    };
    if ret < 0 { -io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO) } else { ret as i32 }
}
