//! Restoring a segment after a master restart: the live objects a node's segment still
//! holds from an earlier run of the master are named to the new run, so that they stay
//! readable without a re-put.
//!
//! The node mounts the segment with [`Master::handle_restore_segment`] (no new replica
//! is placed there meanwhile), registers its disk records, names every live replica
//! with [`Master::handle_restore_replica`] in ascending offset order, and then mounts
//! it for good with [`Master::handle_mount_segment`]. A replica is taken only within the
//! restore window (`MasterConfig::restore_window` from the first node's ping), only if
//! it is from an earlier run (its version is below this run's first), newer than what
//! the key holds, and its key was not removed by a client of this run (nor everything
//! by a remove-all). The same rule keeps an earlier run's disk record of a key removed
//! in this run from being recovered.

use smallvec::smallvec;

use super::objects::{EVICT_AFTER_PERSIST, Object, PERSISTING};
use super::{Master, MasterError};
use crate::descriptor::ReplicaStatus;
use crate::ids::{NodeId, ObjectVersion, SegmentId};
use crate::key::KeyRef;
use crate::time::Instant;
use crate::wire::{PersistReason, RestoredReplica};

impl Master {
    /// Mounts `segment` of `node` for restoring: it holds objects of an earlier master
    /// run, named next; it takes no new replicas until `node` mounts it.
    ///
    /// Errors: `NodeNotRegistered`; `StaleVersion` (the restore window has passed:
    /// forget what the segment held and mount it); `SegmentAlreadyMounted` (restoring
    /// or mounted already, by an earlier try); `InvalidSegmentSize`.
    pub fn handle_restore_segment(
        &mut self,
        now: Instant,
        node: NodeId,
        segment: SegmentId,
        size: u64,
    ) -> Result<(), MasterError> {
        self.age_restore_window(now);
        if !self.nodes.contains_key(&node) {
            return Err(MasterError::NodeNotRegistered);
        }
        if self.restore_window_closed {
            return Err(MasterError::StaleVersion);
        }
        let slot = self.segments.mount(segment, node, size)?;
        self.segments.get_mut(slot).restoring = true;
        self.heard_from(now, node);
        Ok(())
    }

    /// A node's restore counts as hearing from it: a long restore does not expire it.
    fn heard_from(&mut self, now: Instant, node: NodeId) {
        if let Some(info) = self.nodes.get_mut(&node) {
            info.last_seen = info.last_seen.max(now);
        }
    }

    /// Takes `replica`, which `node`'s restoring `segment` holds from an earlier run of
    /// the master, as a memory replica of its object (a new object, or one more replica
    /// of the version a disk record or another node restored). Naming a replica that was
    /// taken already is `Ok` (a retried batch).
    ///
    /// Errors: `SegmentNotFound`; `NotSegmentOwner`; `SegmentAlreadyMounted` (the
    /// segment is not restoring: mounted for good); `StaleVersion` (not from an earlier
    /// run, superseded by a newer version or a put in progress, or removed since);
    /// `InvalidSize` (the key's object of that version has another length or CRC32C);
    /// `NoSpace` (the range is not free in the segment: it overlaps another replica).
    /// A refused replica is for the node to forget.
    pub fn handle_restore_replica(
        &mut self,
        now: Instant,
        node: NodeId,
        segment: SegmentId,
        replica: &RestoredReplica<'_>,
    ) -> Result<(), MasterError> {
        self.age_restore_window(now);
        let taken = self.restore_replica(now, node, segment, replica);
        if taken.is_ok() {
            self.heard_from(now, node);
        }
        taken
    }

    fn restore_replica(
        &mut self,
        now: Instant,
        node: NodeId,
        segment: SegmentId,
        replica: &RestoredReplica<'_>,
    ) -> Result<(), MasterError> {
        let slot = self.segments.find(segment).ok_or(MasterError::SegmentNotFound)?;
        let seg = self.segments.get(slot);
        if seg.node != node {
            return Err(MasterError::NotSegmentOwner);
        }
        let restoring = seg.restoring;
        let version = replica.version;
        let offset_granule = replica.offset >> self.config.granule.trailing_zeros();
        let existing = self.objects.find(replica.key.as_bytes());
        if let Some(existing) = existing {
            let o = self.object(existing);
            if o.version == version
                && o.memory.iter().any(|p| p.segment == slot && u64::from(p.offset) == offset_granule)
            {
                return Ok(());
            }
        }
        if !restoring {
            return Err(MasterError::SegmentAlreadyMounted);
        }
        if self.restore_window_closed
            || version >= self.config.first_version
            || self.removed_since(replica.key, version)
        {
            return Err(MasterError::StaleVersion);
        }
        if let Some(existing) = existing {
            let o = self.object(existing);
            // Superseded, or a put in progress; or an eviction waiting for the object's
            // persist counts the replicas it frees, and one more would upset that.
            if o.version > version
                || o.status != ReplicaStatus::Complete
                || o.has(PERSISTING | EVICT_AFTER_PERSIST)
            {
                return Err(MasterError::StaleVersion);
            }
            if o.version == version {
                if o.size != replica.len || o.crc32c.is_some_and(|c| c != replica.crc32c) {
                    return Err(MasterError::InvalidSize);
                }
                let p = self
                    .segments
                    .allocate_at(slot, replica.offset, replica.len)
                    .ok_or(MasterError::NoSpace)?;
                let o = self.objects.get_mut(existing).expect("found above");
                o.memory.push(p);
                o.crc32c = Some(replica.crc32c);
                return Ok(());
            }
        }
        let p = self.segments.allocate_at(slot, replica.offset, replica.len).ok_or(MasterError::NoSpace)?;
        if let Some(older) = existing {
            // What the key held is older (a disk record of an earlier put): it goes, as
            // a newer put's end would have made it go.
            self.remove_complete(now, older, |_| false);
        }
        let slot = self.objects.insert(Object {
            key: replica.key.as_bytes().into(),
            version,
            size: replica.len,
            crc32c: Some(replica.crc32c),
            writer: node,
            started: now,
            lease_until: Instant::ZERO,
            memory: smallvec![p],
            disk: alloc::vec::Vec::new(),
            status: ReplicaStatus::Complete,
            flags: 0,
        });
        self.next_version = self.next_version.max(version.next());
        if self.config.persist == super::PersistPolicy::WriteBehind
            && self.request_persist(slot, PersistReason::WriteBehind)
        {
            self.await_durability(slot);
        }
        // Eviction waits for the segment to be mounted ([`Master::handle_mount_segment`]).
        Ok(())
    }

    /// Whether `version` of `key` is from an earlier run and must not come back: all
    /// was removed since (a remove-all), or this key was (a remove), within the window.
    pub(super) fn removed_since(&self, key: KeyRef<'_>, version: ObjectVersion) -> bool {
        version < self.config.first_version
            && (version < self.restore_floor || self.removed_keys.contains(key.as_bytes()))
    }

    /// Closes the restore window once it has passed (from the first ping this run): no
    /// memory replica of an earlier run is taken after that, and removed keys need not
    /// be kept any more.
    pub(super) fn age_restore_window(&mut self, now: Instant) {
        let born = *self.born.get_or_insert(now);
        if !self.restore_window_closed && now >= born + self.config.restore_window {
            self.restore_window_closed = true;
            self.removed_keys = alloc::collections::BTreeSet::new();
        }
    }
}
