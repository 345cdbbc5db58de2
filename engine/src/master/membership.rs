//! Segments and nodes: mounting, unmounting, liveness, and what a lost node takes
//! with it.

use alloc::vec::Vec;

use super::objects::{DiskState, EVICT_AFTER_PERSIST, PERSISTING, Placements, SegmentSlot};
use super::{DropReason, Master, MasterError, NodeInfo};
use crate::descriptor::ReplicaStatus;
use crate::ids::{Incarnation, NodeId, ObjectVersion, SegmentId};
use crate::time::Instant;
use crate::wire::{PingOutcome, PingReply};

impl Master {
    /// Mounts a memory segment of `size` bytes (rounded down to whole granules) owned
    /// by `node`; a segment `node` is restoring ([`Master::handle_restore_segment`]) is
    /// done restoring and takes new replicas from now on.
    ///
    /// Errors: `NodeNotRegistered` (ping first); `SegmentAlreadyMounted`;
    /// `InvalidSegmentSize` (less than one granule, or more than 2^32 granules).
    pub fn handle_mount_segment(
        &mut self,
        now: Instant,
        node: NodeId,
        segment: SegmentId,
        size: u64,
    ) -> Result<(), MasterError> {
        if !self.nodes.contains_key(&node) {
            return Err(MasterError::NodeNotRegistered);
        }
        if let Some(slot) = self.segments.find(segment) {
            let restoring = self.segments.get_mut(slot);
            if restoring.node == node && restoring.restoring {
                // Restored: it takes new replicas from now on, and its objects may be
                // evicted like any others.
                restoring.restoring = false;
                self.settle_eviction(now);
                return Ok(());
            }
        }
        self.segments.mount(segment, node, size).map(|_| ())
    }

    /// Unmounts a segment: every replica in it is dropped (objects left with no replica
    /// leave the table; puts in progress with a replica there are cancelled).
    ///
    /// Errors: `SegmentNotFound`; `NotSegmentOwner`.
    pub fn handle_unmount_segment(
        &mut self,
        now: Instant,
        node: NodeId,
        segment: SegmentId,
    ) -> Result<(), MasterError> {
        let slot = self.segments.find(segment).ok_or(MasterError::SegmentNotFound)?;
        if self.segments.get(slot).node != node {
            return Err(MasterError::NotSegmentOwner);
        }
        self.drop_segment(now, slot, DropReason::SegmentUnmounted);
        Ok(())
    }

    /// Registers a node or renews its liveness. A new incarnation of a known node means
    /// the old process is gone: its segments, disk replicas and unfinished puts are
    /// dropped, and it must mount and re-register.
    pub fn handle_ping(
        &mut self,
        now: Instant,
        node: NodeId,
        incarnation: Incarnation,
        has_storage: bool,
    ) -> PingReply {
        self.age_restore_window(now);
        let outcome = match self.nodes.get_mut(&node) {
            Some(info) if info.incarnation == incarnation => {
                // The storage flag is fixed for an incarnation (persist targets rely
                // on it); a node that gains or loses its SSD tier restarts.
                info.last_seen = now;
                PingOutcome::Refreshed
            }
            Some(_) => {
                // A new run registers again what it recovered, and only that.
                self.drop_node(now, node, false);
                PingOutcome::Restarted
            }
            None => PingOutcome::Registered,
        };
        if outcome != PingOutcome::Refreshed {
            self.nodes.insert(node, NodeInfo { incarnation, last_seen: now, has_storage });
        }
        PingReply { outcome, node_ttl: self.config.node_ttl }
    }

    /// The next instant at which [`Master::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let node_deadline = self.nodes.values().map(|n| n.last_seen + self.config.node_ttl).min();
        let put_deadline = self.in_progress.front().map(|e| e.0);
        let retry = self.durability.next_retry();
        let quarantine = self.quarantine_deadline();
        [node_deadline, put_deadline, self.eviction_retry_at, retry, quarantine].into_iter().flatten().min()
    }

    /// Expires silent nodes, discards puts past the discard timeout, frees quarantined
    /// ranges whose leases have passed, asks again for failed persists whose backoff is
    /// over and retries eviction. Calling it early or
    /// twice does nothing extra.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ttl = self.config.node_ttl;
        let expired: Vec<NodeId> =
            self.nodes.iter().filter(|(_, i)| i.last_seen + ttl <= now).map(|(n, _)| *n).collect();
        for node in expired {
            // Its bucket files outlive it on a shared root; elsewhere they went with it.
            self.drop_node(now, node, self.config.shared_storage);
            self.nodes.remove(&node);
        }
        self.trim_in_progress();
        while let Some(&(deadline, slot, _)) = self.in_progress.front() {
            if deadline > now {
                break;
            }
            // After a trim the front entry is a put still in progress: abandoned.
            self.in_progress.pop_front();
            self.drop_object(slot, DropReason::Discarded);
            self.trim_in_progress();
        }
        self.release_quarantine(now);
        self.retry_due(now);
        if self.eviction_retry_at.is_some_and(|t| t <= now) {
            let target = self.low_watermark_bytes();
            self.evict(now, target);
        }
    }

    /// Drops every replica placed in a segment, then the segment.
    pub(super) fn drop_segment(&mut self, now: Instant, seg: SegmentSlot, reason: DropReason) {
        for slot in self.objects.live_slots() {
            let o = self.object(slot);
            if !o.memory.iter().any(|p| p.segment == seg) {
                continue;
            }
            if o.status == ReplicaStatus::Processing {
                self.release_object(slot);
                continue;
            }
            // A persist reading from this segment will not produce a usable record:
            // ask again, from a replica that stays (if one does).
            let source_lost =
                o.has(PERSISTING) && self.persist_source(o).is_some_and(|(_, p)| p.segment == seg);
            if source_lost {
                self.clear_persist(slot);
            }
            let o = self.objects.get_mut(slot).expect("live");
            let version = o.version;
            let (gone, kept): (Placements, Placements) =
                o.memory.iter().copied().partition(|p| p.segment == seg);
            o.memory = kept;
            let empty = !o.is_readable_somewhere();
            let evicting = o.has(EVICT_AFTER_PERSIST);
            for p in gone {
                if evicting {
                    // Still being offloaded from another replica: these bytes are no
                    // longer among those the offload will free.
                    self.pending_evict_bytes -= self.segments.placement_bytes(p);
                }
                self.free_placement(p, version);
            }
            if empty {
                self.drop_object(slot, reason);
            } else if source_lost {
                self.schedule_retry(now, slot);
            }
        }
        let pinned: Vec<ObjectVersion> = self
            .pinned_removed
            .iter()
            .filter(|(_, p)| p.placements.iter().any(|p| p.segment == seg))
            .map(|(v, _)| *v)
            .collect();
        for version in pinned {
            let p = self.pinned_removed.remove(&version).expect("listed above");
            self.free_after_leases(now, p.placements, version, p.lease_until);
        }
        self.forget_quarantined_in(seg);
        self.segments.unmount(seg);
        self.trim_in_progress();
    }

    /// Forgets what a node's lost run contributed (segments, unfinished puts) and takes
    /// its disk replicas offline until it re-registers them, unless
    /// `disk_stays_readable` (its files are on a shared root).
    pub(super) fn drop_node(&mut self, now: Instant, node: NodeId, disk_stays_readable: bool) {
        let segs: Vec<SegmentSlot> =
            self.segments.iter().filter(|(_, s)| s.node == node).map(|(s, _)| s).collect();
        for seg in segs {
            self.drop_segment(now, seg, DropReason::NodeLost);
        }
        for slot in self.objects.live_slots() {
            let o = self.objects.get_mut(slot).expect("live");
            if o.status == ReplicaStatus::Processing && o.writer == node {
                self.release_object(slot);
                continue;
            }
            if !disk_stays_readable {
                for d in o.disk.iter_mut().filter(|d| d.replica.node == node && d.state == DiskState::Online)
                {
                    d.state = DiskState::Offline;
                }
            }
            if !o.is_readable_somewhere() {
                self.drop_object(slot, DropReason::NodeLost);
            }
        }
        self.trim_in_progress();
    }
}
