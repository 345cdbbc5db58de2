//! Freed memory held back from reuse until every lease that could read it has passed.
//!
//! A forced remove (or remove-all) takes an object that readers may hold a lease on:
//! they were handed its replica descriptors and may be reading those ranges right now
//! — over TCP through the node, which refuses the read once it forgets the object, or
//! one-sidedly, as an RDMA NIC reads, with no one to refuse it. So the master forgets
//! the object at once (the `MemoryFreed` event goes out, its node stops naming it) but
//! gives its ranges to no other put before the object's lease has expired: a reader
//! inside its lease reads the bytes it was promised or is refused, never another
//! object's bytes.
//!
//! Quarantined ranges stay counted in `used_bytes` (they are not free) and in
//! [`MasterStats::quarantined_bytes`](super::MasterStats). They do not survive a master
//! restart; nothing names them to the next run, so the node's version check is then
//! what keeps a late reader from another object's bytes.

use super::Master;
use super::objects::{Placements, SegmentSlot};
use crate::ids::ObjectVersion;
use crate::time::Instant;

impl Master {
    /// Frees object `version`'s memory replicas: their holders are told now, and the
    /// ranges are reused only after `lease_until` (at once if it has passed).
    pub(super) fn free_after_leases(
        &mut self,
        now: Instant,
        placements: Placements,
        version: ObjectVersion,
        lease_until: Instant,
    ) {
        if lease_until <= now || placements.is_empty() {
            return self.free_placements(&placements, version);
        }
        for p in &placements {
            self.announce_freed(*p, version);
            self.quarantined_bytes += self.segments.placement_bytes(*p);
        }
        self.quarantine.insert((lease_until, version), placements);
    }

    /// Frees the quarantined ranges whose leases have passed by `now`.
    pub(super) fn release_quarantine(&mut self, now: Instant) {
        while let Some(entry) = self.quarantine.first_entry() {
            if entry.key().0 > now {
                break;
            }
            for p in entry.remove() {
                self.quarantined_bytes -= self.segments.placement_bytes(p);
                self.segments.free(p);
            }
        }
    }

    /// When the earliest quarantined range may be reused.
    pub(super) fn quarantine_deadline(&self) -> Option<Instant> {
        self.quarantine.keys().next().map(|(until, _)| *until)
    }

    /// Forgets the quarantined ranges in `seg`, which is being unmounted (its allocator
    /// and byte accounting go with it).
    pub(super) fn forget_quarantined_in(&mut self, seg: SegmentSlot) {
        let (segments, mut forgotten) = (&self.segments, 0);
        self.quarantine.retain(|_, placements| {
            placements.retain(|p| {
                let keep = p.segment != seg;
                if !keep {
                    forgotten += segments.placement_bytes(*p);
                }
                keep
            });
            !placements.is_empty()
        });
        self.quarantined_bytes -= forgotten;
    }
}
