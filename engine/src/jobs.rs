//! A blocking job queue with shutdown (std): the I/O thread pool's workers take jobs
//! from it, and dropping the pool stops them.
//!
//! The stop flag lives under the same lock as the jobs, and `stop` changes it before
//! it wakes the workers: a worker checks for a job and for the stop and starts waiting
//! under that lock, so the stop can never land between its check and its wait — the
//! wakeup it would miss, leaving the pool's join hung for ever (a bug found in loaded
//! runs, checked by the loom model `loom-tests/tests/job_queue.rs`).

use alloc::collections::VecDeque;
use std::sync::PoisonError;

use crate::sync::{Condvar, Mutex};

/// Jobs for worker threads. See the module documentation.
#[derive(Debug)]
pub struct JobQueue<T> {
    state: Mutex<Jobs<T>>,
    ready: Condvar,
}

#[derive(Debug)]
struct Jobs<T> {
    queue: VecDeque<T>,
    stopped: bool,
}

impl<T> Default for JobQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> JobQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self { state: Mutex::new(Jobs { queue: VecDeque::new(), stopped: false }), ready: Condvar::new() }
    }

    /// Queues a job without waking anyone: [`JobQueue::wake_all`] once a batch is in.
    pub fn push(&self, job: T) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).queue.push_back(job);
    }

    /// Wakes every waiting worker (after a batch of pushes).
    pub fn wake_all(&self) {
        self.ready.notify_all();
    }

    /// The next job, waiting for one; `None` once the queue is stopped and empty (jobs
    /// queued before the stop are still handed out).
    pub fn next(&self) -> Option<T> {
        let mut jobs = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(job) = jobs.queue.pop_front() {
                return Some(job);
            }
            if jobs.stopped {
                return None;
            }
            jobs = self.ready.wait(jobs).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Stops the queue: every worker's `next` returns `None` once the jobs are gone.
    pub fn stop(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).stopped = true;
        self.ready.notify_all();
    }

    /// The bug the loom model must catch: waking the workers before the stop is set, so
    /// that a worker that wakes, finds nothing and waits again is never woken.
    #[cfg(larder_loom)]
    #[doc(hidden)]
    pub fn stop_waking_first(&self) {
        self.ready.notify_all();
        self.state.lock().unwrap_or_else(PoisonError::into_inner).stopped = true;
    }
}
