//! Mounted memory segments and the allocator inside each.

use alloc::vec::Vec;
use smallvec::SmallVec;

use super::MasterError;
use super::allocator::SegmentAllocator;
use super::objects::{Placement, SegmentSlot};
use crate::descriptor::MemoryReplica;
use crate::ids::{NodeId, SegmentId};

/// One mounted segment.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) id: SegmentId,
    pub(crate) node: NodeId,
    pub(crate) alloc: SegmentAllocator,
    /// Mounted to name what it holds from an earlier master run: no new replicas go
    /// there until its node mounts it.
    pub(crate) restoring: bool,
}

/// Every mounted segment, with byte accounting across all of them.
#[derive(Debug)]
pub(crate) struct Segments {
    slots: Vec<Option<Segment>>,
    granule_shift: u32,
    used_bytes: u64,
    capacity_bytes: u64,
}

impl Segments {
    pub(crate) fn new(granule: u64) -> Self {
        Self { slots: Vec::new(), granule_shift: granule.trailing_zeros(), used_bytes: 0, capacity_bytes: 0 }
    }

    pub(crate) fn granules(&self, bytes: u64) -> u64 {
        bytes.div_ceil(1 << self.granule_shift)
    }

    pub(crate) fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub(crate) fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Heap bytes held by the segment table and the allocators.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * core::mem::size_of::<Option<Segment>>()
            + self.iter().map(|(_, s)| s.alloc.heap_bytes()).sum::<usize>()
    }

    pub(crate) fn count(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Segments that take new replicas (mounted, not restoring).
    pub(crate) fn placeable(&self) -> usize {
        self.slots.iter().flatten().filter(|s| !s.restoring).count()
    }

    pub(crate) fn find(&self, id: SegmentId) -> Option<SegmentSlot> {
        self.slots.iter().position(|s| s.as_ref().is_some_and(|s| s.id == id)).map(|i| SegmentSlot(i as u32))
    }

    pub(crate) fn get(&self, slot: SegmentSlot) -> &Segment {
        self.slots[slot.0 as usize].as_ref().expect("placements only name mounted segments")
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (SegmentSlot, &Segment)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (SegmentSlot(i as u32), s)))
    }

    /// Mounts a segment of `size` bytes (rounded down to whole granules).
    pub(crate) fn mount(
        &mut self,
        id: SegmentId,
        node: NodeId,
        size: u64,
    ) -> Result<SegmentSlot, MasterError> {
        if self.find(id).is_some() {
            return Err(MasterError::SegmentAlreadyMounted);
        }
        let granules = size >> self.granule_shift;
        let granules = u32::try_from(granules).map_err(|_| MasterError::InvalidSegmentSize)?;
        if granules == 0 {
            return Err(MasterError::InvalidSegmentSize);
        }
        let segment = Segment { id, node, alloc: SegmentAllocator::new(granules), restoring: false };
        self.capacity_bytes += u64::from(granules) << self.granule_shift;
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(segment);
                i
            }
            None => {
                self.slots.push(Some(segment));
                self.slots.len() - 1
            }
        };
        Ok(SegmentSlot(slot as u32))
    }

    /// Removes a segment; its allocations vanish with it.
    pub(crate) fn unmount(&mut self, slot: SegmentSlot) -> Segment {
        let segment = self.slots[slot.0 as usize].take().expect("unmount of a mounted segment");
        let cap = segment.alloc.capacity();
        let used = cap - segment.alloc.free_granules();
        self.capacity_bytes -= u64::from(cap) << self.granule_shift;
        self.used_bytes -= u64::from(used) << self.granule_shift;
        segment
    }

    /// Whether a value of `size` bytes could fit in some mounted segment if it were empty.
    pub(crate) fn could_ever_fit(&self, size: u64) -> bool {
        let needed = self.granules(size);
        self.iter().any(|(_, s)| u64::from(s.alloc.capacity()) >= needed)
    }

    /// Allocates `count` replicas of `size` bytes on distinct segments: on a segment of
    /// `writer` first if it has one (its value is copied in without crossing the
    /// network), then on the segments with the most free space. All or nothing.
    pub(crate) fn place(
        &mut self,
        size: u64,
        count: u8,
        writer: Option<NodeId>,
    ) -> Option<SmallVec<[Placement; 1]>> {
        let granules = u32::try_from(self.granules(size)).ok()?;
        let mut candidates: SmallVec<[(bool, u32, SegmentSlot); 8]> = self
            .iter()
            .filter(|(_, s)| !s.restoring)
            .map(|(slot, s)| (Some(s.node) == writer, s.alloc.free_granules(), slot))
            .collect();
        candidates.sort_unstable_by_key(|&(own, free, _)| core::cmp::Reverse((own, free)));
        let mut placed: SmallVec<[Placement; 1]> = SmallVec::new();
        for (_, _, slot) in candidates {
            if placed.len() == usize::from(count) {
                break;
            }
            let segment = self.slots[slot.0 as usize].as_mut().expect("candidate is mounted");
            if let Some(alloc) = segment.alloc.allocate(granules) {
                placed.push(Placement { segment: slot, alloc, offset: segment.alloc.offset(alloc) });
            }
        }
        if placed.len() < usize::from(count) {
            for p in placed {
                self.release(p);
            }
            return None;
        }
        self.used_bytes += (u64::from(granules) << self.granule_shift) * u64::from(count);
        Some(placed)
    }

    /// Allocates exactly `len` bytes at byte `offset` of segment `slot` (a whole number
    /// of granules from a granule boundary), if that range is free.
    pub(crate) fn allocate_at(&mut self, slot: SegmentSlot, offset: u64, len: u64) -> Option<Placement> {
        if offset & ((1 << self.granule_shift) - 1) != 0 {
            return None;
        }
        let start = u32::try_from(offset >> self.granule_shift).ok()?;
        let granules = u32::try_from(self.granules(len)).ok()?;
        let segment = self.slots[slot.0 as usize].as_mut()?;
        let alloc = segment.alloc.allocate_at(start, granules)?;
        self.used_bytes += u64::from(granules) << self.granule_shift;
        Some(Placement { segment: slot, alloc, offset: start })
    }

    pub(crate) fn get_mut(&mut self, slot: SegmentSlot) -> &mut Segment {
        self.slots[slot.0 as usize].as_mut().expect("placements only name mounted segments")
    }

    /// Frees one placement.
    pub(crate) fn free(&mut self, p: Placement) {
        let granules = self.release(p);
        self.used_bytes -= u64::from(granules) << self.granule_shift;
    }

    fn release(&mut self, p: Placement) -> u32 {
        let segment = self.slots[p.segment.0 as usize].as_mut().expect("placement names a mounted segment");
        let granules = segment.alloc.len(p.alloc);
        // The master holds each placement exactly once, so this free cannot fail; a
        // failure would be a master bug, which `Master::verify` reports.
        let freed = segment.alloc.free(p.alloc);
        debug_assert!(freed.is_ok(), "double free of {p:?}");
        granules
    }

    /// Bytes a placement occupies (whole granules).
    pub(crate) fn placement_bytes(&self, p: Placement) -> u64 {
        u64::from(self.get(p.segment).alloc.len(p.alloc)) << self.granule_shift
    }

    /// The replica descriptor of a placement holding a value of `len` bytes.
    pub(crate) fn replica(&self, p: Placement, len: u64) -> MemoryReplica {
        MemoryReplica {
            segment: self.get(p.segment).id,
            offset: u64::from(p.offset) << self.granule_shift,
            len,
        }
    }

    /// The (offset, len) extents of a segment's live allocations, in bytes.
    pub(crate) fn extents(&self, slot: SegmentSlot) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        self.get(slot).alloc.for_each_allocation(|o, l| {
            out.push((u64::from(o) << self.granule_shift, u64::from(l) << self.granule_shift));
        });
        out
    }
}
