//! Structural self-checks, used by tests, simulations and fuzzing (and available to
//! operators as a consistency check).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::Master;
use super::allocator::AllocatorInconsistency;
use super::objects::{EVICT_AFTER_PERSIST, PERSISTING, Placement};
use crate::descriptor::ReplicaStatus;
use crate::ids::{ObjectVersion, SegmentId};

/// A broken master invariant, found by [`Master::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Inconsistency {
    /// A segment's allocator is inconsistent.
    #[error("segment {segment:?}: {source}")]
    Allocator {
        /// The segment.
        segment: SegmentId,
        /// What is wrong.
        source: AllocatorInconsistency,
    },
    /// The key index and the object slab disagree.
    #[error("key index and object slab disagree")]
    Index,
    /// A segment's allocations are not exactly the memory replicas that name it.
    #[error("segment {0:?}: allocations differ from the replicas placed in it")]
    Placements(SegmentId),
    /// The used-byte counter disagrees with the allocations.
    #[error("used-byte counter says {counter}, the allocations add up to {actual}")]
    UsedBytes {
        /// The counter.
        counter: u64,
        /// The sum over allocations.
        actual: u64,
    },
    /// The pending-eviction counter disagrees with the objects marked for eviction.
    #[error("pending-eviction counter says {counter}, the marked objects add up to {actual}")]
    PendingEviction {
        /// The counter.
        counter: u64,
        /// The sum over marked objects.
        actual: u64,
    },
    /// The quarantined-byte counter disagrees with the quarantined ranges.
    #[error("quarantined-byte counter says {counter}, the quarantined ranges add up to {actual}")]
    Quarantined {
        /// The counter.
        counter: u64,
        /// The sum over quarantined ranges.
        actual: u64,
    },
    /// Memory replicas name a segment that is not mounted.
    #[error("memory replicas name an unmounted segment")]
    UnmountedSegment,
    /// An object's replicas or flags contradict its status.
    #[error("object version {0:?} is in an impossible state")]
    ObjectState(ObjectVersion),
    /// A version at or above the next version to hand out.
    #[error("object version {0:?} is not below the next version")]
    FutureVersion(ObjectVersion),
}

impl Master {
    /// Checks every structural invariant: the key index matches the slab; each
    /// segment's allocations are exactly the memory replicas placed in it (so no two
    /// live replicas overlap and bytes in use equal the sum of live replicas); objects'
    /// replicas and flags agree with their status; no version is from the future.
    pub fn verify(&self) -> Result<(), Inconsistency> {
        if !self.objects.index_matches_slab() {
            return Err(Inconsistency::Index);
        }
        let mut placed: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        let mut note = |p: &Placement| {
            let r = self.segments.replica(*p, 1);
            placed.entry(p.segment.0).or_default().push((r.offset, self.segments.placement_bytes(*p)));
        };
        let mut pending = 0;
        for (slot, o) in self.objects.iter() {
            o.memory.iter().for_each(&mut note);
            if o.version >= self.next_version {
                return Err(Inconsistency::FutureVersion(o.version));
            }
            let bad = match o.status {
                ReplicaStatus::Processing => o.memory.is_empty() || !o.disk.is_empty() || o.flags != 0,
                ReplicaStatus::Complete => {
                    !o.is_readable_somewhere()
                        || (o.has(EVICT_AFTER_PERSIST) && !o.has(PERSISTING))
                        || (o.has(PERSISTING) && o.memory.is_empty())
                        || o.disk.iter().any(|d| d.replica.len != o.size)
                }
                _ => true,
            };
            if bad {
                return Err(Inconsistency::ObjectState(o.version));
            }
            if o.has(EVICT_AFTER_PERSIST) {
                pending += self.memory_bytes(slot);
            }
        }
        self.pinned_removed.values().flat_map(|p| p.placements.iter()).for_each(&mut note);
        self.quarantine.values().flatten().for_each(&mut note);
        let quarantined = self.quarantine.values().flatten().map(|p| self.segments.placement_bytes(*p)).sum();
        if quarantined != self.quarantined_bytes {
            return Err(Inconsistency::Quarantined { counter: self.quarantined_bytes, actual: quarantined });
        }
        if pending != self.pending_evict_bytes {
            return Err(Inconsistency::PendingEviction {
                counter: self.pending_evict_bytes,
                actual: pending,
            });
        }
        let mut used = 0;
        for (slot, segment) in self.segments.iter() {
            segment
                .alloc
                .verify()
                .map_err(|source| Inconsistency::Allocator { segment: segment.id, source })?;
            let mut mine = placed.remove(&slot.0).unwrap_or_default();
            mine.sort_unstable();
            let extents = self.segments.extents(slot);
            if mine != extents {
                return Err(Inconsistency::Placements(segment.id));
            }
            used += extents.iter().map(|e| e.1).sum::<u64>();
        }
        if !placed.is_empty() {
            return Err(Inconsistency::UnmountedSegment);
        }
        if used != self.segments.used_bytes() {
            return Err(Inconsistency::UsedBytes { counter: self.segments.used_bytes(), actual: used });
        }
        Ok(())
    }
}
