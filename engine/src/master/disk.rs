//! Disk replicas: registration by persist and by recovery, removal, failed persists,
//! and remove-all with its wipe floors and tombstones.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use super::objects::{DiskEntry, DiskState, Object, PERSISTING, Placements};
use super::{DropReason, Master, MasterError, PinnedRemoved};
use crate::descriptor::{DiskReplica, ReplicaStatus};
use crate::ids::{NodeId, ObjectVersion};
use crate::key::{Key, KeyRef};
use crate::time::Instant;
use crate::wire::{DiskReplicaOrigin, NodeCommand, RemoveAllSummary};

impl Master {
    /// Registers a disk replica of `key` at `version` held by `replica.node`.
    ///
    /// A `Persisted` replica must name the object's current, complete version; it ends
    /// the pending persist (and, for an offload, frees the memory). A `Recovered`
    /// replica of a key the master does not know recreates the object (disk only),
    /// unless the master told that node to drop the record.
    ///
    /// Errors: `NodeNotRegistered`; `StaleVersion` (another version holds the key, the
    /// object was removed while persisting, or the record was dropped or wiped);
    /// `ObjectNotFound`; `ReplicaNotReady`; `InvalidSize` (length differs from the
    /// object's).
    pub fn handle_add_disk_replica(
        &mut self,
        now: Instant,
        key: KeyRef<'_>,
        version: ObjectVersion,
        replica: DiskReplica,
        origin: DiskReplicaOrigin,
    ) -> Result<(), MasterError> {
        if !self.nodes.contains_key(&replica.node) {
            return Err(MasterError::NodeNotRegistered);
        }
        if self.pinned_removed.get(&version).is_some_and(|p| p.node == replica.node) {
            // Removed while the node persisted it: the memory can go now, the record
            // must not be registered (the tombstone stays until the node drops it).
            let pinned = self.pinned_removed.remove(&version).expect("checked above");
            self.free_after_leases(now, pinned.placements, version, pinned.lease_until);
            return Err(MasterError::StaleVersion);
        }
        let Some(slot) = self.objects.find(key.as_bytes()) else {
            return match origin {
                DiskReplicaOrigin::Persisted => Err(MasterError::ObjectNotFound),
                DiskReplicaOrigin::Recovered => self.recover(key, version, replica),
            };
        };
        let o = self.object(slot);
        if o.version != version {
            return Err(MasterError::StaleVersion);
        }
        if o.status != ReplicaStatus::Complete {
            return Err(MasterError::ReplicaNotReady);
        }
        if o.size != replica.len {
            return Err(MasterError::InvalidSize);
        }
        let o = self.objects.get_mut(slot).expect("found above");
        o.disk.retain(|d| d.replica.node != replica.node);
        o.disk.push(DiskEntry::online(replica));
        if origin == DiskReplicaOrigin::Persisted && o.has(PERSISTING) {
            self.finish_persist(now, slot);
        }
        self.durable_or_gone(slot, version);
        Ok(())
    }

    pub(super) fn recover(
        &mut self,
        key: KeyRef<'_>,
        version: ObjectVersion,
        replica: DiskReplica,
    ) -> Result<(), MasterError> {
        let below_floor = self.wipe_floors.get(&replica.node).is_some_and(|f| version < *f);
        if below_floor
            || self.tombstones.contains(&(replica.node, version))
            || self.removed_since(key, version)
        {
            return Err(MasterError::StaleVersion);
        }
        self.objects.insert(Object {
            key: key.as_bytes().into(),
            version,
            size: replica.len,
            crc32c: Some(replica.crc32c),
            writer: replica.node,
            started: Instant::ZERO,
            lease_until: Instant::ZERO,
            memory: Placements::new(),
            disk: alloc::vec![DiskEntry::online(replica)],
            status: ReplicaStatus::Complete,
            flags: 0,
        });
        self.next_version = self.next_version.max(version.next());
        Ok(())
    }

    /// A node no longer holds its disk replica of `key` at `version` (bucket evicted,
    /// CRC failure, or a drop the master asked for, which clears the tombstone). An
    /// object left with no replica leaves the table.
    ///
    /// Errors: `ObjectNotFound`; `StaleVersion`; `DiskReplicaNotFound`.
    pub fn handle_remove_disk_replica(
        &mut self,
        _now: Instant,
        node: NodeId,
        key: KeyRef<'_>,
        version: ObjectVersion,
    ) -> Result<(), MasterError> {
        if self.tombstones.remove(&(node, version)) {
            return Ok(());
        }
        let slot = self.objects.find(key.as_bytes()).ok_or(MasterError::ObjectNotFound)?;
        let o = self.object(slot);
        if o.version != version {
            return Err(MasterError::StaleVersion);
        }
        let at =
            o.disk.iter().position(|d| d.replica.node == node).ok_or(MasterError::DiskReplicaNotFound)?;
        let o = self.objects.get_mut(slot).expect("found above");
        o.disk.swap_remove(at);
        if !o.is_readable_somewhere() {
            self.drop_object(slot, DropReason::DiskReplicaRemoved);
        }
        Ok(())
    }

    /// A node could not persist `key` at `version`. The object keeps its memory (an
    /// eviction waiting for the persist is called off) and the persist is asked for
    /// again after a backoff ([`Master::poll_timeout`]), until it succeeds or the object
    /// is removed: nothing acknowledged is given up on.
    ///
    /// Errors: `ObjectNotFound`; `StaleVersion`; `PutNotInProgress` (no persist of
    /// that version is pending).
    pub fn handle_persist_failed(
        &mut self,
        now: Instant,
        node: NodeId,
        key: KeyRef<'_>,
        version: ObjectVersion,
    ) -> Result<(), MasterError> {
        if self.pinned_removed.get(&version).is_some_and(|p| p.node == node) {
            let pinned = self.pinned_removed.remove(&version).expect("checked above");
            self.free_after_leases(now, pinned.placements, version, pinned.lease_until);
        }
        // The object was removed: no record was written, so nothing is left to refuse.
        if self.tombstones.remove(&(node, version)) {
            return Ok(());
        }
        let slot = self.objects.find(key.as_bytes()).ok_or(MasterError::ObjectNotFound)?;
        let o = self.object(slot);
        if o.version != version {
            return Err(MasterError::StaleVersion);
        }
        let pinned_by_node = o.has(PERSISTING) && self.persist_target(o) == Some(node);
        let pending_at = o.disk.iter().position(|d| d.replica.node == node && d.state == DiskState::Pending);
        // The pin may already be gone (the node expired meanwhile); the pending entry
        // stays until the node says whether it wrote a record.
        let Some(at) = pending_at else { return Err(MasterError::PutNotInProgress) };
        self.objects.get_mut(slot).expect("live").disk.swap_remove(at);
        if !pinned_by_node {
            return Ok(());
        }
        self.clear_persist(slot);
        self.schedule_retry(now, slot);
        self.settle_eviction(now);
        Ok(())
    }

    /// Removes every complete object that is not leased (or every one, if forced).
    /// Puts in progress are skipped. Nodes whose records all belong to removed objects
    /// are told to wipe their directory; otherwise each record is dropped by itself.
    pub fn handle_remove_all(&mut self, now: Instant, force: bool) -> RemoveAllSummary {
        let mut summary = RemoveAllSummary::default();
        let mut doomed = Vec::new();
        // A node can be wiped only if no surviving object has, or may soon have, a
        // record on it; the floor is the oldest surviving version.
        let mut blocked = BTreeSet::new();
        let mut floor = self.next_version;
        for (slot, o) in self.objects.iter() {
            if o.status == ReplicaStatus::Complete && (force || !o.is_leased(now)) {
                doomed.push(slot);
                continue;
            }
            summary.skipped += 1;
            floor = floor.min(o.version);
            // Records a survivor holds, or is being written right now, would be lost
            // by a wipe. (Persists it gets later are queued behind the wipe.)
            blocked.extend(o.disk.iter().map(|d| d.replica.node));
            if o.has(PERSISTING) {
                blocked.extend(self.persist_target(o));
            }
        }
        let wiped: BTreeSet<NodeId> = self
            .nodes
            .iter()
            .filter(|(n, i)| i.has_storage && !blocked.contains(n))
            .map(|(n, _)| *n)
            .collect();
        for node in &wiped {
            self.commands.push_back(NodeCommand::WipeDisk { node: *node });
            let f = self.wipe_floors.entry(*node).or_insert(floor);
            *f = (*f).max(floor);
            // The floor now refuses these records; their tombstones are redundant.
            let f = *f;
            self.tombstones.retain(|(n, v)| n != node || *v >= f);
        }
        summary.removed = doomed.len() as u64;
        // Nothing of an earlier run that a node still holds in memory comes back.
        self.restore_floor = self.next_version;
        for slot in doomed {
            // Records on wiped nodes go with the wipe; those at or above the floor
            // still need a tombstone, since the floor does not cover them.
            let version = self.object(slot).version;
            self.remove_complete(now, slot, |node| wiped.contains(&node) && version < floor);
        }
        summary
    }

    /// Removes a complete object, telling nodes to drop its disk records (except on
    /// nodes for which `covered_by_wipe` says a wipe already takes care of them); its
    /// memory is quarantined while leased.
    pub(super) fn remove_complete(
        &mut self,
        now: Instant,
        slot: u32,
        covered_by_wipe: impl Fn(NodeId) -> bool,
    ) {
        let persist_node =
            if self.object(slot).has(PERSISTING) { self.persist_target(self.object(slot)) } else { None };
        let o = self.take_object(slot);
        if !self.restore_window_closed {
            self.removed_keys.insert(o.key.clone());
        }
        for d in &o.disk {
            if covered_by_wipe(d.replica.node) {
                continue;
            }
            // Refuse the record if the node recovers it before it has deleted it.
            self.tombstones.insert((d.replica.node, o.version));
            if d.state != DiskState::Pending {
                self.commands.push_back(NodeCommand::DropDiskReplica {
                    node: d.replica.node,
                    key: Key::from_boxed_unchecked(o.key.as_slice().into()),
                    version: o.version,
                    replica: d.replica,
                });
            }
        }
        match persist_node {
            // A node is still copying this memory to disk: keep it allocated until the
            // node answers (its pending entry left a tombstone above).
            Some(node) => {
                let pinned = PinnedRemoved { placements: o.memory, node, lease_until: o.lease_until };
                self.pinned_removed.insert(o.version, pinned);
            }
            None => self.free_after_leases(now, o.memory, o.version, o.lease_until),
        }
    }
}
