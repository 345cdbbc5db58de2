//! Durability: which acknowledged objects have a disk record yet, the flush barrier
//! computed from that, and the retries of persists that failed.
//!
//! With write-behind, every object whose put ended and that a node was asked to
//! persist is *awaiting durability* until a node registers a record of it (an object
//! that only nodes without an SSD tier hold is memory-only by the cluster's layout, and
//! no flush waits for it). A persist that fails is retried, with a doubling backoff
//! through [`Master::poll_timeout`], until it succeeds or the object leaves the table:
//! nothing acknowledged is given up on, and its memory stays (an eviction waiting for
//! the persist is called off).
//!
//! A flush ([`Master::handle_flush`]) takes the next version as its barrier (every
//! object acknowledged before it has an older version) and asks for every waiting
//! retry at once; [`Master::flush_status`] then says whether every object below the
//! barrier is durable, still being persisted, or could not be persisted since the
//! flush began. Being computed from the master's own record, the answer is the truth
//! for any number of flushes, retried or concurrent.
//!
//! Durable means a record was written. A record that a node later loses to its own
//! capacity limit (the SSD tier evicts whole buckets, least recently used first) is a
//! cache eviction, not a failed persist: the object does not await durability again.

use alloc::collections::{BTreeMap, BTreeSet};

use super::Master;
use super::config::PersistPolicy;
use super::objects::{DiskState, Object, PERSISTING};
use crate::descriptor::ReplicaStatus;
use crate::ids::ObjectVersion;
use crate::time::{Duration, Instant};
use crate::wire::PersistReason;

/// What a flush waits for: the objects acknowledged before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushTicket {
    /// Every object acknowledged before the flush has a version below this.
    barrier: ObjectVersion,
}

impl FlushTicket {
    /// The barrier: every object acknowledged before the flush has a version below it.
    pub fn barrier(&self) -> ObjectVersion {
        self.barrier
    }

    /// The ticket of a flush whose barrier a remote caller holds.
    pub fn from_barrier(barrier: ObjectVersion) -> Self {
        Self { barrier }
    }
}

pub use crate::wire::FlushStatus;

/// A persist that failed and will be asked for again.
#[derive(Debug, Clone, Copy)]
struct Retry {
    slot: u32,
    attempts: u32,
    /// When it is asked for again; `None` while a persist is in flight.
    due: Option<Instant>,
}

/// The durability bookkeeping (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct Durability {
    /// Objects awaiting durability: version and slot.
    awaiting: BTreeSet<(ObjectVersion, u32)>,
    retries: BTreeMap<ObjectVersion, Retry>,
    due: BTreeSet<(Instant, ObjectVersion)>,
}

impl Durability {
    /// Heap bytes held (entries and a share of the tree nodes).
    pub(super) fn heap_bytes(&self) -> usize {
        self.awaiting.len() * (core::mem::size_of::<(ObjectVersion, u32)>() + 8)
            + self.retries.len() * (core::mem::size_of::<(ObjectVersion, Retry)>() + 8)
            + self.due.len() * (core::mem::size_of::<(Instant, ObjectVersion)>() + 8)
    }

    /// The earliest retry deadline.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Whether the object's persist failed and waits for its retry deadline.
    pub(super) fn waits_for_retry(&self, version: ObjectVersion) -> bool {
        self.retries.get(&version).is_some_and(|r| r.due.is_some())
    }

    /// Objects whose persist failed and is retried.
    pub(super) fn retrying(&self) -> u64 {
        self.retries.len() as u64
    }

    fn forget(&mut self, version: ObjectVersion) {
        if let Some(Retry { due: Some(at), .. }) = self.retries.remove(&version) {
            self.due.remove(&(at, version));
        }
    }
}

/// The delay before retry number `attempts` (1, 2, …): `first`, doubling, capped.
pub(super) fn backoff(first: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 1u64 << attempts.saturating_sub(1).min(20);
    Duration::from_nanos(first.as_nanos().saturating_mul(factor).min(max.as_nanos()))
}

/// Whether a node holds a record of the object.
pub(super) fn is_durable(o: &Object) -> bool {
    o.disk.iter().any(|d| d.state != DiskState::Pending)
}

impl Master {
    /// Starts a flush: the barrier is every object acknowledged so far, and every
    /// persist waiting for its retry deadline is asked for now. (Only write-behind makes
    /// objects await durability: under the other policies a flush waits for nothing.) Drain
    /// [`Master::poll_command`] afterwards, then watch [`Master::flush_status`].
    pub fn handle_flush(&mut self, _now: Instant) -> FlushTicket {
        let d = &self.durability;
        let ticket = FlushTicket { barrier: self.next_version };
        let waiting: alloc::vec::Vec<ObjectVersion> = d.due.iter().map(|(_, v)| *v).collect();
        for version in waiting {
            self.retry(version);
        }
        ticket
    }

    /// Where the flush of `ticket` stands: it looks at the objects below the barrier
    /// that await durability (none, usually). An object awaiting durability and not
    /// being persisted has failed since the flush began: the flush asked again for
    /// every persist waiting for a retry.
    pub fn flush_status(&self, ticket: &FlushTicket) -> FlushStatus {
        let (mut pending, mut failed) = (false, 0);
        for &(_, slot) in self.durability.awaiting.range(..(ticket.barrier, 0)) {
            let o = self.object(slot);
            if o.has(PERSISTING) {
                pending = true;
            } else {
                failed += 1;
            }
        }
        match (pending, failed) {
            (true, _) => FlushStatus::Pending,
            (false, 0) => FlushStatus::Durable,
            (false, objects) => FlushStatus::NotDurable { objects },
        }
    }

    /// Objects acknowledged under write-behind that no node holds a record of yet: what
    /// a close right now would leave only in memory.
    pub fn undurable_objects(&self) -> u64 {
        self.durability.awaiting.len() as u64
    }

    /// An object acknowledged under write-behind, which a node was asked to persist.
    pub(super) fn await_durability(&mut self, slot: u32) {
        let version = self.object(slot).version;
        self.durability.awaiting.insert((version, slot));
    }

    /// The object has a record now, or left the table: no flush waits for it, and its
    /// retries end.
    pub(super) fn durable_or_gone(&mut self, slot: u32, version: ObjectVersion) {
        self.durability.awaiting.remove(&(version, slot));
        self.durability.forget(version);
    }

    /// A persist of the object at `slot` failed (or will not produce a record): ask
    /// for it again after the backoff.
    pub(super) fn schedule_retry(&mut self, now: Instant, slot: u32) {
        let version = self.object(slot).version;
        let (first, max) = (self.config.persist_retry, self.config.persist_retry_max);
        let d = &mut self.durability;
        let r = d.retries.entry(version).or_insert(Retry { slot, attempts: 0, due: None });
        if let Some(at) = r.due.take() {
            d.due.remove(&(at, version));
        }
        r.attempts += 1;
        let at = now + backoff(first, max, r.attempts);
        r.due = Some(at);
        d.due.insert((at, version));
    }

    /// Asks for every retry whose deadline has passed.
    pub(super) fn retry_due(&mut self, now: Instant) {
        while let Some(&(at, version)) = self.durability.due.first() {
            if at > now {
                break;
            }
            self.retry(version);
        }
    }

    /// Asks for the persist of a retried object now (if it still needs one).
    fn retry(&mut self, version: ObjectVersion) {
        let d = &mut self.durability;
        let Some(r) = d.retries.get_mut(&version) else { return };
        if let Some(at) = r.due.take() {
            d.due.remove(&(at, version));
        }
        let slot = r.slot;
        let needs = self.objects.get(slot).is_some_and(|o| {
            o.version == version
                && o.status == ReplicaStatus::Complete
                && !is_durable(o)
                && !o.has(PERSISTING)
        });
        if !needs {
            self.durability.forget(version);
            return;
        }
        // (An object no node can persist now stays awaiting durability, and flushes
        // report it, until one can.)
        let reason = match self.config.persist {
            PersistPolicy::WriteBehind => PersistReason::WriteBehind,
            _ => PersistReason::Offload,
        };
        if !self.request_persist(slot, reason) {
            self.durability.forget(version);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_the_cap() {
        let (first, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let delays: alloc::vec::Vec<u64> =
            (1..=8).map(|n| backoff(first, max, n).as_nanos() / 1_000_000).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(first, max, u32::MAX), max);
    }
}
