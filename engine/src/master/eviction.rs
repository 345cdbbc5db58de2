//! Placement, watermark eviction (second-chance CLOCK) and the persist pin that
//! offload-on-evict and write-behind rely on.

use super::objects::{DiskEntry, EVICT_AFTER_PERSIST, Object, PERSISTING, Placement, Placements, REFERENCED};
use super::{DropReason, Master, PersistPolicy};
use crate::descriptor::ReplicaStatus;
use crate::ids::NodeId;
use crate::key::Key;
use crate::time::Instant;
use crate::wire::{NodeCommand, PersistReason};

impl Master {
    /// Allocates replicas (the writer's own segment first, then the most free).
    /// If there is no room and no eviction is already owed, sweeps
    /// for enough room first; an owed eviction means a sweep found nothing evictable,
    /// so another would only cost time: the put fails fast with no space.
    pub(super) fn place(
        &mut self,
        now: Instant,
        size: u64,
        replicas: u8,
        writer: NodeId,
    ) -> Option<Placements> {
        if let Some(p) = self.segments.place(size, replicas, Some(writer)) {
            return Some(p);
        }
        // Evicting cannot help while too few segments take replicas at all (the others
        // restoring): it would only drop what they are restoring.
        if self.eviction_owed || self.segments.placeable() < usize::from(replicas) {
            return None;
        }
        let needed = self.segments.granules(size) * self.config.granule * u64::from(replicas);
        let target = self.low_watermark_bytes().min(self.segments.used_bytes().saturating_sub(needed));
        self.evict(now, target);
        self.segments.place(size, replicas, Some(writer))
    }

    pub(super) fn low_watermark_bytes(&self) -> u64 {
        (self.segments.capacity_bytes() as f64 * self.config.low_watermark) as u64
    }

    pub(super) fn high_watermark_bytes(&self) -> u64 {
        (self.segments.capacity_bytes() as f64 * self.config.high_watermark) as u64
    }

    /// Bytes in use, not counting those of objects already chosen for eviction.
    pub(super) fn effective_used_bytes(&self) -> u64 {
        self.segments.used_bytes() - self.pending_evict_bytes
    }

    /// Starts eviction when memory use crosses the high watermark, and notices when an
    /// owed eviction is no longer needed (memory was freed some other way).
    pub(super) fn settle_eviction(&mut self, now: Instant) {
        if self.eviction_owed {
            if self.effective_used_bytes() <= self.low_watermark_bytes() {
                self.eviction_owed = false;
                self.eviction_retry_at = None;
            }
        } else if self.effective_used_bytes() > self.high_watermark_bytes() {
            let target = self.low_watermark_bytes();
            self.evict(now, target);
        }
    }

    /// Second-chance (CLOCK) eviction, an approximation of LRU: sweeps the object slab,
    /// skipping objects that are leased, in progress, being persisted, or were read
    /// since the hand last passed (their read bit is cleared instead), until memory use
    /// net of pending offloads is at most `target` or two full sweeps are done.
    ///
    /// A sweep that falls short leaves the eviction *owed*: it is settled object by
    /// object as pinned objects finish persisting ([`Master::on_evictable`]), and by
    /// another sweep when the earliest lease that blocked this one expires.
    pub(super) fn evict(&mut self, now: Instant, target: u64) {
        let slots = self.objects.slot_count();
        let mut steps = 0u64;
        let mut first_lease_expiry: Option<Instant> = None;
        while self.effective_used_bytes() > target && steps < 2 * u64::from(slots) {
            steps += 1;
            let slot = self.clock_hand;
            self.clock_hand = if slot + 1 >= slots { 0 } else { slot + 1 };
            // What a node is restoring stays until it is done: its segment takes no puts,
            // so evicting there frees nothing a put could use.
            let restoring_only = self.objects.get(slot).is_some_and(|o| {
                !o.memory.is_empty() && o.memory.iter().all(|p| self.segments.get(p.segment).restoring)
            });
            if restoring_only {
                continue;
            }
            let Some(o) = self.objects.get_mut(slot) else {
                continue;
            };
            if o.memory.is_empty() || o.status != ReplicaStatus::Complete || o.has(PERSISTING) {
                continue;
            }
            if self.durability.waits_for_retry(o.version) {
                // Its persist failed: evicting it would ask for it again before its
                // backoff is over.
                continue;
            }
            if o.is_leased(now) {
                first_lease_expiry = Some(first_lease_expiry.map_or(o.lease_until, |t| t.min(o.lease_until)));
                continue;
            }
            if o.has(REFERENCED) {
                o.flags &= !REFERENCED;
                continue;
            }
            self.evict_one(slot);
        }
        self.eviction_owed = self.effective_used_bytes() > target;
        self.eviction_retry_at = if self.eviction_owed { first_lease_expiry } else { None };
    }

    /// An object's write-behind persist just finished, so evicting its memory is now
    /// cheap and loses nothing. While an eviction is owed it goes at once: the sweep
    /// that fell short had nothing better to offer.
    pub(super) fn on_persisted(&mut self, now: Instant, slot: u32) {
        if !self.eviction_owed {
            return;
        }
        let o = self.object(slot);
        if !o.memory.is_empty() && o.has_readable_disk() && !o.has(PERSISTING) && !o.is_leased(now) {
            self.evict_one(slot);
        }
        self.settle_eviction(now);
    }

    pub(super) fn evict_one(&mut self, slot: u32) {
        let o = self.object(slot);
        if o.has_readable_disk() {
            let o = self.objects.get_mut(slot).expect("live");
            let (memory, version) = (core::mem::take(&mut o.memory), o.version);
            self.free_placements(&memory, version);
            self.evicted_to_disk += 1;
        } else if self.config.persist != PersistPolicy::Off
            && self.request_persist(slot, PersistReason::Offload)
        {
            let bytes = self.memory_bytes(slot);
            self.objects.get_mut(slot).expect("live").flags |= EVICT_AFTER_PERSIST;
            self.pending_evict_bytes += bytes;
        } else {
            self.drop_object(slot, DropReason::Evicted);
            self.evicted_dropped += 1;
        }
    }

    pub(super) fn memory_bytes(&self, slot: u32) -> u64 {
        self.object(slot).memory.iter().map(|p| self.segments.placement_bytes(*p)).sum()
    }

    /// Who persists an object, from which memory replica: the first replica whose
    /// owning node has an SSD tier. Stable while the object is pinned, because pinned
    /// placements do not move and a node's storage flag is fixed per incarnation.
    pub(super) fn persist_source(&self, o: &Object) -> Option<(NodeId, Placement)> {
        o.memory
            .iter()
            .map(|p| (self.segments.get(p.segment).node, *p))
            .find(|(n, _)| self.nodes.get(n).is_some_and(|i| i.has_storage))
    }

    pub(super) fn persist_target(&self, o: &Object) -> Option<NodeId> {
        self.persist_source(o).map(|(node, _)| node)
    }

    /// Asks the owning node to persist an object; false if no owner can.
    pub(super) fn request_persist(&mut self, slot: u32, reason: PersistReason) -> bool {
        let o = self.object(slot);
        let Some((node, source_placement)) = self.persist_source(o) else {
            return false;
        };
        let command = NodeCommand::Persist {
            node,
            key: Key::from_boxed_unchecked(o.key.as_slice().into()),
            version: o.version,
            source: self.segments.replica(source_placement, o.size),
            reason,
        };
        self.commands.push_back(command);
        let o = self.objects.get_mut(slot).expect("live");
        o.flags |= PERSISTING;
        // From now on the node may hold a record, whatever happens to the node.
        if !o.disk.iter().any(|d| d.replica.node == node) {
            o.disk.push(DiskEntry::pending(node, o.size));
        }
        self.persists_requested += 1;
        true
    }

    /// A persist finished: unpin, and complete an eviction that waited for it, unless
    /// a reader took a lease while the persist ran: the lease promises the memory
    /// replica it was handed, so that stays until a later sweep (cheap now: the object
    /// has a disk copy).
    pub(super) fn finish_persist(&mut self, now: Instant, slot: u32) {
        let evicting = self.object(slot).has(EVICT_AFTER_PERSIST) && !self.object(slot).is_leased(now);
        self.clear_persist(slot);
        if evicting {
            let o = self.objects.get_mut(slot).expect("live");
            let (memory, version) = (core::mem::take(&mut o.memory), o.version);
            self.free_placements(&memory, version);
            self.evicted_to_disk += 1;
            self.settle_eviction(now);
        } else {
            self.on_persisted(now, slot);
        }
    }

    pub(super) fn clear_persist(&mut self, slot: u32) {
        if self.object(slot).has(EVICT_AFTER_PERSIST) {
            self.pending_evict_bytes -= self.memory_bytes(slot);
        }
        self.objects.get_mut(slot).expect("live").flags &= !(PERSISTING | EVICT_AFTER_PERSIST);
    }
}
