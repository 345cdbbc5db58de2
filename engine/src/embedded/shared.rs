//! What the store's callers and its background task share: the node behind its lock,
//! the SSD tier, and the carrying out of tier work.
//!
//! # Locks and blocking
//!
//! The node lock guards the master, the replicas' bytes and the queue of tier work; it
//! is held only for master calls and map lookups, never across a copy, a syscall or a
//! wait. Tier work is carried out after the lock is let go, by one caller at a time (so
//! that it happens in the master's order): on the caller's own executor thread for what
//! never waits (handing a persist to a write-behind queue with room), through
//! `Runtime::unblock` for the rest (a full queue, removals, which append to the log and
//! may unlink and fsync, and wipes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use super::error::StoreError;
use super::node::{Node, TierWork};
use crate::disk::{Tier, TierError};
use crate::master::{FlushStatus, FlushTicket};
use crate::pool::BufferPool;
use crate::sync::Arc;
use crate::uring::Notifier;

/// How often the background task looks at the master's timers when nothing happens.
pub(super) const IDLE_TICK: core::time::Duration = core::time::Duration::from_millis(100);

#[derive(Debug)]
pub(super) struct Inner {
    node: Mutex<Node>,
    /// Signalled whenever tier work is carried out (a flush may be waiting for it).
    work_progress: Condvar,
    /// `None` with persistence off, and after shutdown.
    tier: RwLock<Option<Tier>>,
    pub(super) persistent: bool,
    /// Wakes the background task: the tier's events, and `close`.
    pub(super) wake: Arc<Notifier>,
    closed: AtomicBool,
    /// Held while the tier shuts down.
    shutdown: Mutex<()>,
    /// Buffers of memory replicas, recycled as replicas are freed.
    pub(super) buffers: std::sync::Arc<BufferPool<std::vec::Vec<u8>>>,
}

/// How far [`Inner::carry_out_work`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WorkDone {
    /// Nothing is left, or whoever carries the work out now will see to it.
    Handed,
    /// The next item would wait: carry on where waiting is allowed.
    WouldBlock,
}

impl Inner {
    pub(super) fn new(node: Node, tier: Option<Tier>, wake: Arc<Notifier>) -> Self {
        // Up to a segment's worth: a buffer goes idle only as a replica is freed, so
        // idle and live buffers together stay near the segment's size, as the pages of
        // a segment allocated whole would (and none is faulted in twice).
        let pooled = usize::try_from(node.segment_bytes()).unwrap_or(usize::MAX);
        Self {
            buffers: BufferPool::new(pooled),
            node: Mutex::new(node),
            work_progress: Condvar::new(),
            persistent: tier.is_some(),
            tier: RwLock::new(tier),
            wake,
            closed: AtomicBool::new(false),
            shutdown: Mutex::new(()),
        }
    }

    pub(super) fn lock_node(&self) -> MutexGuard<'_, Node> {
        self.node.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_tier(&self) -> RwLockReadGuard<'_, Option<Tier>> {
        self.tier.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) { Err(StoreError::Closed) } else { Ok(()) }
    }

    /// Marks the store closed; false if it already was.
    pub(super) fn close(&self) -> bool {
        !self.closed.swap(true, Ordering::AcqRel)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Runs `op` on the node under its lock and takes in what it caused (also when it
    /// failed: a refused put may have started evictions). Returns `op`'s answer and
    /// whether tier work is waiting.
    pub(super) fn with_node<T>(
        &self,
        op: impl FnOnce(&mut Node) -> Result<T, StoreError>,
    ) -> Result<(T, bool), StoreError> {
        self.check_open()?;
        let mut node = self.lock_node();
        // Whatever an earlier master call left uncollected goes first (a freed range
        // must lose its bytes before `op` may set new ones at its offset).
        node.collect();
        let out = op(&mut node);
        let work = node.collect();
        Ok((out?, work))
    }

    /// Starts a read from the tier (pinning the record; no I/O here).
    pub(super) fn read_many(
        &self,
        keys: &[crate::key::KeyRef<'_>],
    ) -> Option<std::vec::Vec<Result<oneshot::Receiver<crate::disk::ReadResult>, TierError>>> {
        self.read_tier().as_ref().map(|t| t.read_many(keys))
    }

    /// The tier's statistics, with persistence on.
    pub(super) fn tier_stats(&self) -> Option<crate::disk::TierStats> {
        self.read_tier().as_ref().map(Tier::stats)
    }

    /// Carries the queued tier work out, in order, unless somebody else is doing so
    /// (they will see to it) or the store is closing (its shutdown does). With
    /// `blocking` false only what never waits is done: the first item that would wait
    /// is left at the front.
    pub(super) fn carry_out_work(&self, blocking: bool) -> WorkDone {
        if self.is_closed() {
            return WorkDone::Handed;
        }
        {
            let mut node = self.lock_node();
            if node.working || node.work.is_empty() {
                return WorkDone::Handed;
            }
            node.working = true;
        }
        let tier = self.read_tier();
        self.drain(tier.as_ref(), blocking)
    }

    /// Drains the work queue in order as the one who carries it out (`working` is
    /// set), with `tier` for the whole drain, then lets go of the role.
    fn drain(&self, tier: Option<&Tier>, blocking: bool) -> WorkDone {
        loop {
            let item = {
                let mut node = self.lock_node();
                match node.work.pop_front() {
                    Some(item) => item,
                    None => {
                        node.working = false;
                        drop(node);
                        self.work_progress.notify_all();
                        return WorkDone::Handed;
                    }
                }
            };
            let left = self.carry_out(tier, item, blocking);
            let mut node = self.lock_node();
            if let Some(item) = left {
                node.work.push_front(item);
                node.working = false;
                drop(node);
                self.work_progress.notify_all();
                return WorkDone::WouldBlock;
            }
            node.work_done += 1;
            drop(node);
            self.work_progress.notify_all();
        }
    }

    /// At shutdown: waits for whoever carries work out to finish, then carries out
    /// everything queued with `tier` (the running tier, or the stopped one, whose index
    /// and removal log still work).
    fn drain_for_shutdown(&self, tier: &Tier) {
        {
            let mut node = self.lock_node();
            while node.working {
                node = self.work_progress.wait(node).unwrap_or_else(PoisonError::into_inner);
            }
            node.working = true;
        }
        self.drain(Some(tier), true);
    }

    /// Carries out one item with `tier` (none: persistence is off, or the store has
    /// shut the tier down); gives it back if it would wait and `blocking` is false.
    fn carry_out(&self, tier: Option<&Tier>, item: TierWork, blocking: bool) -> Option<TierWork> {
        match item {
            TierWork::Persist { key, version, value } => {
                let Some(t) = tier else {
                    self.persist_failed(key.as_ref(), version, &"the store closed");
                    return None;
                };
                let handed = if blocking {
                    t.put(key.as_ref(), version, value.clone()).map(|()| true)
                } else {
                    t.try_put(key.as_ref(), version, value.clone())
                };
                match handed {
                    Ok(true) => None,
                    Ok(false) => Some(TierWork::Persist { key, version, value }),
                    Err(e) => {
                        self.persist_failed(key.as_ref(), version, &e);
                        None
                    }
                }
            }
            TierWork::DropRecord { .. } | TierWork::Wipe if !blocking => Some(item),
            TierWork::DropRecord { key, version } => {
                // With no tier the record was not dropped: the master keeps its
                // tombstone (it only hears of drops that happened).
                if let Some(t) = tier {
                    t.remove_version(key.as_ref(), version);
                    let mut node = self.lock_node();
                    node.record_dropped(key.as_ref(), version);
                    node.collect();
                }
                None
            }
            TierWork::Wipe => {
                if let Some(Err(e)) = tier.map(Tier::remove_all) {
                    tracing::warn!(error = %e, "could not wipe the node directory");
                }
                None
            }
        }
    }

    /// Tells the master a persist failed, and takes in what that caused (a call to the
    /// master is always followed by `collect`: a range it freed must lose its bytes
    /// before anything is set at that offset again).
    fn persist_failed(
        &self,
        key: crate::key::KeyRef<'_>,
        version: crate::ids::ObjectVersion,
        why: &dyn core::fmt::Display,
    ) {
        let mut node = self.lock_node();
        node.persist_failed(key, version, why);
        node.collect();
    }

    /// Carries out (or waits for whoever carries out) every work item queued before
    /// the call. Blocks: call where blocking is allowed.
    pub(super) fn finish_queued_work(&self) {
        let target = self.lock_node().work_queued;
        self.finish_work_upto(target);
    }

    /// How many work items have been queued so far.
    pub(super) fn work_queued(&self) -> u64 {
        self.lock_node().work_queued
    }

    /// Whether the first `target` work items are done.
    pub(super) fn work_done_upto(&self, target: u64) -> bool {
        self.lock_node().work_done >= target
    }

    /// Carries out (or waits for whoever carries out) the work items up to the
    /// `target`-th. Blocks. Once the store is closing, returns at once: the shutdown
    /// carries out what is left.
    pub(super) fn finish_work_upto(&self, target: u64) {
        while !self.is_closed() {
            self.carry_out_work(true);
            let mut node = self.lock_node();
            while node.working && node.work_done < target {
                node = self.work_progress.wait(node).unwrap_or_else(PoisonError::into_inner);
            }
            if node.work_done >= target {
                return;
            }
        }
    }

    /// Hands the queued persists to the tier, waits until it has written (or failed)
    /// at least one more than when it was asked, without making it seal early, and
    /// settles the outcomes with the master (whose evictions free memory). For a put
    /// that found memory full of objects waiting for the SSD: the pipeline keeps
    /// flowing. Reports no persist failure: those are for `flush`. Blocks.
    pub(super) fn wait_for_tier(&self) {
        let written = self.read_tier().as_ref().map(Tier::written);
        self.finish_queued_work();
        if let (Some(t), Some(past)) = (self.read_tier().as_ref(), written) {
            t.wait_progress(past);
        }
        self.settle();
    }

    /// Whether tier work is queued or being carried out, or the tier has persists not
    /// yet written: a persist pins its object's memory until it ends, so waiting for
    /// the tier can free room.
    pub(super) fn persists_pending(&self) -> bool {
        {
            let node = self.lock_node();
            if node.working || !node.work.is_empty() {
                return true;
            }
        }
        self.read_tier().as_ref().is_some_and(Tier::has_unwritten)
    }

    /// The flush barrier: asks the master for a ticket (which asks again for every
    /// failed persist), then carries out the tier work, waits for the tier to write it
    /// and carries the outcomes to the master, until the master says every object
    /// acknowledged before the ticket is durable or that some could not be persisted.
    /// Then the removal log is made durable. Blocks.
    pub(super) fn flush_blocking(&self) -> Result<(), StoreError> {
        let (ticket, _) = self.with_node(|node| {
            let now = node.now();
            Ok(node.master.handle_flush(now))
        })?;
        let flushed = self.wait_for_barrier(&ticket);
        let synced = match self.read_tier().as_ref() {
            Some(t) => t.sync_removals().map_err(StoreError::from),
            None => Ok(()),
        };
        flushed.and(synced)
    }

    fn wait_for_barrier(&self, ticket: &FlushTicket) -> Result<(), StoreError> {
        loop {
            self.finish_queued_work();
            match self.read_tier().as_ref() {
                Some(t) => t.wait_written()?,
                None => return Err(StoreError::Closed),
            }
            self.settle();
            // (The status in a statement of its own: the node lock must not be held
            // into `not_durable`, which takes the tier's.)
            let status = self.lock_node().master.flush_status(ticket);
            match status {
                FlushStatus::Durable => {
                    // Settling may have queued drops of records written for objects
                    // removed meanwhile: they are removals before the flush too, and
                    // must reach the removal log before it is synced.
                    self.finish_queued_work();
                    return Ok(());
                }
                FlushStatus::NotDurable { objects } => return Err(self.not_durable(objects)),
                // Persists asked for after the tier's wait began (a retry whose
                // backoff ended): wait for those too.
                FlushStatus::Pending => {}
            }
        }
    }

    /// The error for `objects` not durable, with the tier's latest write failure.
    fn not_durable(&self, objects: u64) -> StoreError {
        let cause = self.read_tier().as_ref().and_then(Tier::last_failure);
        StoreError::Storage(TierError::NotDurable { records: objects, cause })
    }

    /// Carries the tier's events to the master and runs the master's timers. Returns
    /// whether tier work is waiting.
    pub(super) fn settle(&self) -> bool {
        let tier = self.read_tier();
        let mut node = self.lock_node();
        if let Some(t) = tier.as_ref() {
            while let Some(event) = t.poll_event() {
                node.handle_tier_event(event);
            }
        }
        let now = node.now();
        node.master.handle_timeout(now);
        node.collect()
    }

    /// How long until the master's next timer (a lease, a persist retry): at least a
    /// millisecond (a timer the master could not clear must not spin the task), at most
    /// [`IDLE_TICK`].
    pub(super) fn until_next_timer(&self) -> core::time::Duration {
        let node = self.lock_node();
        let due = node.master.poll_timeout().map(|at| at.saturating_duration_since(node.now()));
        let due = due.map_or(IDLE_TICK, |d| core::time::Duration::from_nanos(d.as_nanos()));
        due.clamp(core::time::Duration::from_millis(1), IDLE_TICK)
    }

    /// Shuts the tier down: the queued work carried out, the queue written out, the
    /// threads stopped, the last events settled with the master (a removed object's
    /// late record is dropped here), the removal log synced, the directory released.
    /// Idempotent: whoever comes second finds no tier. Reports the objects that were
    /// not durable when it shut down, which are lost with the store's memory.
    pub(super) fn shutdown_blocking(&self) -> Result<(), StoreError> {
        // `close` and the background task may both get here: the second waits for the
        // first to finish, so that `close` returns only once the root is released.
        let _one_at_a_time = self.shutdown.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = self.read_tier().as_ref() {
            self.drain_for_shutdown(t);
        }
        let Some(mut tier) = self.tier.write().unwrap_or_else(PoisonError::into_inner).take() else {
            return Ok(());
        };
        let stopped = tier.stop();
        {
            let mut node = self.lock_node();
            while let Some(event) = tier.poll_event() {
                node.handle_tier_event(event);
            }
            node.collect();
        }
        // What the last events asked for: drops still happen (the index and the log
        // outlive the threads); persists cannot, and the master hears they failed.
        self.drain_for_shutdown(&tier);
        let lost = self.lock_node().master.undurable_objects();
        let cause = tier.last_failure();
        // The master's count of what is not durable is the store's answer: the tier's
        // own (puts whose write failed and that nobody told it were removed since) is
        // not, and neither is its check at stop.
        let stopped = match stopped {
            Err(TierError::NotDurable { .. }) => Ok(()),
            other => other,
        };
        let synced = tier.sync_removals();
        drop(tier); // releases the directory
        let stopped = stopped.and(synced).map_err(StoreError::from);
        if lost == 0 {
            return stopped;
        }
        tracing::error!(objects = lost, "the store closed with objects that are not durable; they are lost");
        stopped.and(Err(StoreError::Storage(TierError::NotDurable { records: lost, cause })))
    }
}
