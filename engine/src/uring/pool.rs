//! The portable backend: a small thread pool doing `pread`/`pwrite`/`fdatasync`.
//!
//! Used when io_uring is unavailable (a kernel without it, or a seccomp profile that
//! blocks `io_uring_setup` with `EPERM`), or when configured. Completions are signalled
//! on the same eventfd the io_uring backend uses, so runtimes wait on it the same way.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::vec::Vec;

use crossbeam_queue::SegQueue;

use super::eventfd;
use super::prepared::{Prepared, PreparedOp};

#[derive(Debug)]
struct Shared {
    jobs: Mutex<VecDeque<Prepared>>,
    ready: Condvar,
    done: SegQueue<(u64, i32)>,
    wake: Arc<OwnedFd>,
    stop: AtomicBool,
}

/// The thread-pool backend.
#[derive(Debug)]
pub(super) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    pub(super) fn new(threads: usize, wake: Arc<OwnedFd>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            done: SegQueue::new(),
            wake,
            stop: AtomicBool::new(false),
        });
        let workers = (0..threads.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new().name(std::format!("larder-io-{i}")).spawn(move || work(&shared))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self { shared, workers })
    }

    pub(super) fn push(&self, job: Prepared) {
        self.shared.jobs.lock().unwrap_or_else(PoisonError::into_inner).push_back(job);
    }

    pub(super) fn flush(&self) {
        self.shared.ready.notify_all();
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
        {
            // Under the jobs lock: a worker checks `stop` and starts waiting under it,
            // so a store between its check and its wait (whose wakeup it would miss, and
            // this join would hang for ever) cannot happen.
            let _jobs = self.shared.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            self.shared.stop.store(true, Ordering::Release);
        }
        self.shared.ready.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn work(shared: &Shared) {
    loop {
        let job = {
            let mut jobs = shared.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(job) = jobs.pop_front() {
                    break job;
                }
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                jobs = shared.ready.wait(jobs).unwrap_or_else(PoisonError::into_inner);
            }
        };
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
