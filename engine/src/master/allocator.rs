//! The allocator inside one memory segment.
//!
//! # Policy
//!
//! A two-level segregated good-fit allocator (TLSF) over *granules* (the segment's
//! allocation unit, 4 KiB by default, so that every value starts 4 KiB-aligned and can be
//! written to an `O_DIRECT` file straight from the segment). Free extents are kept in 240
//! size bins: sizes below 8 granules have a bin each, larger sizes are binned by their
//! top four significant bits (an exponent and a 3-bit mantissa), so bins grow by 12.5%
//! steps. Two bitmaps find the first non-empty bin at or above a request in O(1).
//!
//! An allocation takes the head of the first non-empty bin whose *smallest* member fits
//! the request, splits off the remainder and files it back; a free merges the extent with
//! free physical neighbours at once and files the result. Both are O(1). Only when no
//! bin above the request's has an extent (the segment is nearly full) does allocation
//! scan the request's own bin for an extent that happens to be large enough.
//!
//! # Fragmentation bounds
//!
//! - Internal: at most one granule less one byte per value (≤ 6.25% at the smallest
//!   64 KiB KV block), because requests are rounded up to granules and never to bins.
//! - External: two free extents are never adjacent (merging is immediate), so there are
//!   at most `live allocations + 1` free extents, and a request fails only when no
//!   single free extent can hold it. While any extent of at least `n` rounded up to four
//!   significant bits (< 1.125 n) is free, a request for `n` granules is O(1).
//! - The master's eviction frees whole objects, which merge back into large extents; an
//!   allocation failure triggers eviction before the put is refused.

use alloc::vec::Vec;

const MANTISSA_BITS: u32 = 3;
const MANTISSA_VALUE: u32 = 1 << MANTISSA_BITS;
const MANTISSA_MASK: u32 = MANTISSA_VALUE - 1;
const TOP_BINS: usize = 32;
const BINS: usize = TOP_BINS * MANTISSA_VALUE as usize;
const NIL: u32 = u32::MAX;

/// Handle of one live allocation, valid until it is freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllocId(u32);

/// Why an allocator operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// The handle does not name a live allocation (a double free).
    #[error("allocation {0:?} is not live")]
    NotAllocated(AllocId),
}

/// A broken allocator invariant, found by [`SegmentAllocator::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocatorInconsistency {
    /// The physical chain of extents does not tile the segment exactly.
    #[error("extents do not tile the segment: gap or overlap at granule {0}")]
    Tiling(u32),
    /// Two free extents are adjacent (they should have been merged).
    #[error("adjacent free extents at granule {0}")]
    Unmerged(u32),
    /// The free-granule counter disagrees with the extents.
    #[error("free granule count {counted} disagrees with extents {actual}")]
    FreeCount {
        /// The counter.
        counted: u32,
        /// The sum over free extents.
        actual: u32,
    },
    /// A free extent is not filed in the bin its size maps to.
    #[error("free extent at granule {0} is misfiled")]
    Misfiled(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    Free,
    Used,
    Vacant,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    offset: u32,
    len: u32,
    bin_prev: u32,
    bin_next: u32,
    phys_prev: u32,
    phys_next: u32,
    state: NodeState,
}

/// Bin of a size, rounding down: every extent filed in bin `b` has at least
/// `bin_min_size(b)` granules.
fn bin_round_down(size: u32) -> u32 {
    debug_assert!(size > 0);
    if size < MANTISSA_VALUE {
        return size;
    }
    let highest = 31 - size.leading_zeros();
    let shift = highest - MANTISSA_BITS;
    ((shift + 1) << MANTISSA_BITS) + ((size >> shift) & MANTISSA_MASK)
}

/// Bin of a size, rounding up: every extent in this bin or above holds `size`.
fn bin_round_up(size: u32) -> u32 {
    let down = bin_round_down(size);
    if size >= MANTISSA_VALUE {
        let shift = 31 - size.leading_zeros() - MANTISSA_BITS;
        if size & ((1 << shift) - 1) != 0 {
            return down + 1;
        }
    }
    down
}

/// Smallest size filed in bin `bin`.
#[cfg(test)]
fn bin_min_size(bin: u32) -> u64 {
    if bin < MANTISSA_VALUE {
        return u64::from(bin);
    }
    let exp = (bin >> MANTISSA_BITS) - 1;
    u64::from((bin & MANTISSA_MASK) | MANTISSA_VALUE) << exp
}

/// An O(1) good-fit allocator over `capacity` granules. See the module docs.
#[derive(Debug, Clone)]
pub struct SegmentAllocator {
    capacity: u32,
    free: u32,
    live: u32,
    top_bitmap: u32,
    leaf_bitmaps: [u8; TOP_BINS],
    bin_heads: [u32; BINS],
    nodes: Vec<Node>,
    vacant: Vec<u32>,
    /// Where [`SegmentAllocator::allocate_at`] starts looking: the last node it took.
    cursor: u32,
}

impl SegmentAllocator {
    /// An allocator over `capacity` granules, all free.
    pub fn new(capacity: u32) -> Self {
        let mut a = Self {
            capacity,
            free: capacity,
            live: 0,
            top_bitmap: 0,
            leaf_bitmaps: [0; TOP_BINS],
            bin_heads: [NIL; BINS],
            nodes: Vec::new(),
            vacant: Vec::new(),
            cursor: NIL,
        };
        if capacity > 0 {
            let n = a.new_node(0, capacity, NIL, NIL);
            a.file(n);
        }
        a
    }

    /// Granules managed.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Granules not allocated.
    pub fn free_granules(&self) -> u32 {
        self.free
    }

    /// Heap bytes held by the allocator's own structures.
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * core::mem::size_of::<Node>() + self.vacant.capacity() * 4
    }

    /// Number of live allocations.
    pub fn live_allocations(&self) -> u32 {
        self.live
    }

    /// Offset (in granules) of a live allocation.
    pub fn offset(&self, id: AllocId) -> u32 {
        self.nodes[id.0 as usize].offset
    }

    /// Length (in granules) of a live allocation.
    pub fn len(&self, id: AllocId) -> u32 {
        self.nodes[id.0 as usize].len
    }

    /// Allocates `size` contiguous granules, or `None` if no free extent can hold them
    /// (see the module docs for exactly when that happens).
    pub fn allocate(&mut self, size: u32) -> Option<AllocId> {
        if size == 0 || size > self.free {
            return None;
        }
        let n = match self.first_bin_at_or_above(bin_round_up(size)) {
            Some(bin) => self.bin_heads[bin as usize],
            None => self.first_fit_in_own_bin(size)?,
        };
        self.unfile(n);
        if self.nodes[n as usize].len > size {
            let rest = self.split(n, size);
            self.file(rest);
        }
        self.nodes[n as usize].state = NodeState::Used;
        self.free -= size;
        self.live += 1;
        Some(AllocId(n))
    }

    /// Allocates exactly granules `offset..offset + size` if every one is free, else
    /// `None`: for a segment that still holds an earlier master run's values, named to
    /// the new run in ascending offset order, which costs O(1) per call (each search
    /// starts where the last one ended); any other order is correct but walks the
    /// extents from the start.
    pub fn allocate_at(&mut self, offset: u32, size: u32) -> Option<AllocId> {
        let end = offset.checked_add(size)?;
        if size == 0 || end > self.capacity {
            return None;
        }
        let cursor = self.cursor;
        let mut n = if cursor != NIL
            && self.nodes[cursor as usize].state != NodeState::Vacant
            && self.nodes[cursor as usize].offset <= offset
        {
            cursor
        } else {
            self.first_node()
        };
        while n != NIL && self.nodes[n as usize].offset + self.nodes[n as usize].len <= offset {
            n = self.nodes[n as usize].phys_next;
        }
        let node = *self.nodes.get(n as usize)?;
        if node.state != NodeState::Free || node.offset + node.len < end {
            return None;
        }
        self.unfile(n);
        let mut taken = n;
        if node.offset < offset {
            // The free front stays `n`; the rest is a node of its own.
            taken = self.split(n, offset - node.offset);
            self.file(n);
        }
        if self.nodes[taken as usize].len > size {
            let back = self.split(taken, size);
            self.file(back);
        }
        self.nodes[taken as usize].state = NodeState::Used;
        self.free -= size;
        self.live += 1;
        self.cursor = taken;
        Some(AllocId(taken))
    }

    /// Cuts node `n` (unfiled) after its first `keep` granules; the rest becomes a new
    /// free node, its physical successor, returned unfiled.
    fn split(&mut self, n: u32, keep: u32) -> u32 {
        let node = self.nodes[n as usize];
        let rest = self.new_node(node.offset + keep, node.len - keep, n, node.phys_next);
        if node.phys_next != NIL {
            self.nodes[node.phys_next as usize].phys_prev = rest;
        }
        self.nodes[n as usize].phys_next = rest;
        self.nodes[n as usize].len = keep;
        rest
    }

    /// The slow path, taken only when every extent of the bins above is gone: an extent
    /// that holds `size` but is smaller than the round-up bin's minimum can only be in
    /// `size`'s own bin. Scanning that bin makes the allocator exact: it refuses a
    /// request only when no free extent can hold it.
    fn first_fit_in_own_bin(&self, size: u32) -> Option<u32> {
        let mut n = self.bin_heads[bin_round_down(size) as usize];
        while n != NIL {
            if self.nodes[n as usize].len >= size {
                return Some(n);
            }
            n = self.nodes[n as usize].bin_next;
        }
        None
    }

    /// Frees a live allocation, merging it with free neighbours.
    pub fn free(&mut self, id: AllocId) -> Result<(), AllocError> {
        let n = id.0;
        match self.nodes.get(n as usize) {
            Some(node) if node.state == NodeState::Used => {}
            _ => return Err(AllocError::NotAllocated(id)),
        }
        self.free += self.nodes[n as usize].len;
        self.live -= 1;
        self.nodes[n as usize].state = NodeState::Free;
        let prev = self.nodes[n as usize].phys_prev;
        if prev != NIL && self.nodes[prev as usize].state == NodeState::Free {
            self.absorb_next(prev, n);
            self.file_merged(prev);
            return Ok(());
        }
        self.file_merged(n);
        Ok(())
    }

    /// Files a free node after merging its free successor into it.
    fn file_merged(&mut self, n: u32) {
        let next = self.nodes[n as usize].phys_next;
        if next != NIL && self.nodes[next as usize].state == NodeState::Free {
            self.absorb_next(n, next);
        }
        self.file(n);
    }

    /// Merges `next` (the physical successor of `n`) into `n`. A filed node is
    /// unfiled first; `next` becomes vacant.
    fn absorb_next(&mut self, n: u32, next: u32) {
        if self.is_filed(n) {
            self.unfile(n);
        }
        if self.is_filed(next) {
            self.unfile(next);
        }
        let after = self.nodes[next as usize].phys_next;
        self.nodes[n as usize].len += self.nodes[next as usize].len;
        self.nodes[n as usize].phys_next = after;
        if after != NIL {
            self.nodes[after as usize].phys_prev = n;
        }
        self.nodes[next as usize].state = NodeState::Vacant;
        self.vacant.push(next);
    }

    fn is_filed(&self, n: u32) -> bool {
        let node = &self.nodes[n as usize];
        node.bin_prev != NIL || self.bin_heads[bin_round_down(node.len) as usize] == n
    }

    /// Calls `f(offset, len)` (in granules) for every live allocation, in address order.
    pub fn for_each_allocation(&self, mut f: impl FnMut(u32, u32)) {
        let mut n = self.first_node();
        while n != NIL {
            let node = &self.nodes[n as usize];
            if node.state == NodeState::Used {
                f(node.offset, node.len);
            }
            n = node.phys_next;
        }
    }

    /// Checks every structural invariant: the extents tile the segment, no two free
    /// extents touch, the free counter is right, and every free extent is in its bin.
    pub fn verify(&self) -> Result<(), AllocatorInconsistency> {
        let mut expected_offset = 0u32;
        let mut free_sum = 0u32;
        let mut prev_free = false;
        let mut n = self.first_node();
        while n != NIL {
            let node = &self.nodes[n as usize];
            if node.offset != expected_offset || node.len == 0 {
                return Err(AllocatorInconsistency::Tiling(node.offset));
            }
            let is_free = node.state == NodeState::Free;
            if is_free {
                if prev_free {
                    return Err(AllocatorInconsistency::Unmerged(node.offset));
                }
                if !self.bin_contains(bin_round_down(node.len), n) {
                    return Err(AllocatorInconsistency::Misfiled(node.offset));
                }
                free_sum += node.len;
            }
            prev_free = is_free;
            expected_offset = node.offset + node.len;
            n = node.phys_next;
        }
        if expected_offset != self.capacity {
            return Err(AllocatorInconsistency::Tiling(expected_offset));
        }
        if free_sum != self.free {
            return Err(AllocatorInconsistency::FreeCount { counted: self.free, actual: free_sum });
        }
        Ok(())
    }

    fn bin_contains(&self, bin: u32, n: u32) -> bool {
        let mut cur = self.bin_heads[bin as usize];
        while cur != NIL {
            if cur == n {
                return true;
            }
            cur = self.nodes[cur as usize].bin_next;
        }
        false
    }

    fn first_node(&self) -> u32 {
        if self.capacity == 0 {
            return NIL;
        }
        // The node at offset 0 is the one with no physical predecessor.
        self.nodes
            .iter()
            .position(|n| n.state != NodeState::Vacant && n.phys_prev == NIL)
            .map_or(NIL, |i| i as u32)
    }

    fn new_node(&mut self, offset: u32, len: u32, phys_prev: u32, phys_next: u32) -> u32 {
        let node =
            Node { offset, len, bin_prev: NIL, bin_next: NIL, phys_prev, phys_next, state: NodeState::Free };
        match self.vacant.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    fn first_bin_at_or_above(&self, bin: u32) -> Option<u32> {
        let top = bin >> MANTISSA_BITS;
        if top as usize >= TOP_BINS {
            return None;
        }
        let leaf = bin & MANTISSA_MASK;
        let in_top = u32::from(self.leaf_bitmaps[top as usize]) & (!0u32 << leaf);
        if in_top != 0 {
            return Some((top << MANTISSA_BITS) | in_top.trailing_zeros());
        }
        let above = if top + 1 >= TOP_BINS as u32 { 0 } else { self.top_bitmap & (!0u32 << (top + 1)) };
        if above == 0 {
            return None;
        }
        let t = above.trailing_zeros();
        let l = u32::from(self.leaf_bitmaps[t as usize]).trailing_zeros();
        Some((t << MANTISSA_BITS) | l)
    }

    /// Puts a free node at the head of its bin.
    fn file(&mut self, n: u32) {
        let bin = bin_round_down(self.nodes[n as usize].len);
        let head = self.bin_heads[bin as usize];
        self.nodes[n as usize].bin_prev = NIL;
        self.nodes[n as usize].bin_next = head;
        self.nodes[n as usize].state = NodeState::Free;
        if head != NIL {
            self.nodes[head as usize].bin_prev = n;
        }
        self.bin_heads[bin as usize] = n;
        self.top_bitmap |= 1 << (bin >> MANTISSA_BITS);
        self.leaf_bitmaps[(bin >> MANTISSA_BITS) as usize] |= 1 << (bin & MANTISSA_MASK);
    }

    /// Takes a free node out of its bin.
    fn unfile(&mut self, n: u32) {
        let Node { len, bin_prev, bin_next, .. } = self.nodes[n as usize];
        let bin = bin_round_down(len);
        if bin_prev != NIL {
            self.nodes[bin_prev as usize].bin_next = bin_next;
        } else {
            self.bin_heads[bin as usize] = bin_next;
        }
        if bin_next != NIL {
            self.nodes[bin_next as usize].bin_prev = bin_prev;
        }
        self.nodes[n as usize].bin_prev = NIL;
        self.nodes[n as usize].bin_next = NIL;
        if self.bin_heads[bin as usize] == NIL {
            let top = (bin >> MANTISSA_BITS) as usize;
            self.leaf_bitmaps[top] &= !(1 << (bin & MANTISSA_MASK));
            if self.leaf_bitmaps[top] == 0 {
                self.top_bitmap &= !(1 << top);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    #[test]
    fn bins_bracket_sizes() {
        for size in (1..5000u32).chain([u32::MAX, u32::MAX - 1, 1 << 31, (1 << 31) + 1]) {
            let down = bin_round_down(size);
            let up = bin_round_up(size);
            assert!(bin_min_size(down) <= u64::from(size), "size {size} down {down}");
            assert!(bin_min_size(up) >= u64::from(size), "size {size} up {up}");
            assert!(up == down || up == down + 1);
            // The round-up slack is below 12.5% (+1 granule for tiny sizes).
            assert!(bin_min_size(up) * 8 <= u64::from(size) * 9 + 8, "size {size}");
            assert!((up as usize) < BINS);
        }
    }

    #[test]
    fn allocate_split_and_merge_back() {
        let mut a = SegmentAllocator::new(100);
        let x = a.allocate(10).unwrap();
        let y = a.allocate(20).unwrap();
        let z = a.allocate(30).unwrap();
        assert_eq!((a.offset(x), a.offset(y), a.offset(z)), (0, 10, 30));
        assert_eq!(a.free_granules(), 40);
        a.verify().unwrap();
        a.free(y).unwrap();
        a.verify().unwrap();
        a.free(x).unwrap();
        a.verify().unwrap();
        a.free(z).unwrap();
        a.verify().unwrap();
        assert_eq!(a.free_granules(), 100);
        // Everything merged back: the whole segment is one extent again, and a request
        // for exactly its size (not a bin boundary) is served by the slow path.
        let all = a.allocate(100).unwrap();
        assert_eq!((a.offset(all), a.len(all)), (0, 100));
    }

    #[test]
    fn never_refuses_a_request_some_extent_can_hold() {
        // Free extents of 100 and 101 granules (both in bin 36, whose minimum is 96):
        // 101 rounds up to bin 37 (minimum 104), which is empty.
        let mut a = SegmentAllocator::new(203);
        let p = a.allocate(100).unwrap();
        let _sep = a.allocate(1).unwrap();
        let q = a.allocate(101).unwrap();
        let _tail = a.allocate(1).unwrap();
        a.free(p).unwrap();
        a.free(q).unwrap();
        let r = a.allocate(101).unwrap();
        assert_eq!((a.offset(r), a.len(r)), (101, 101));
        assert_eq!(a.allocate(101), None);
        assert!(a.allocate(100).is_some());
        a.verify().unwrap();
    }

    #[test]
    fn double_free_is_an_error_not_a_panic() {
        let mut a = SegmentAllocator::new(16);
        let x = a.allocate(4).unwrap();
        a.free(x).unwrap();
        assert_eq!(a.free(x), Err(AllocError::NotAllocated(x)));
        assert_eq!(a.free(AllocId(999)), Err(AllocError::NotAllocated(AllocId(999))));
        a.verify().unwrap();
    }

    #[test]
    fn refuses_zero_oversized_and_exhausted() {
        let mut a = SegmentAllocator::new(8);
        assert_eq!(a.allocate(0), None);
        assert_eq!(a.allocate(9), None);
        let _x = a.allocate(8).unwrap();
        assert_eq!(a.allocate(1), None);
        assert_eq!(SegmentAllocator::new(0).allocate(1), None);
    }

    #[test]
    fn good_fit_finds_an_extent_at_least_one_bin_larger() {
        // Free extents of 100 and 120 granules: a request for 100 rounds up to the bin
        // above 100's and must be served by the 120 extent.
        let mut a = SegmentAllocator::new(400);
        let p = a.allocate(100).unwrap();
        let _s1 = a.allocate(1).unwrap();
        let q = a.allocate(120).unwrap();
        let _s2 = a.allocate(179).unwrap();
        a.free(p).unwrap();
        a.free(q).unwrap();
        let r = a.allocate(100).unwrap();
        assert_eq!(a.offset(r), 101);
        a.verify().unwrap();
    }

    proptest! {
        #[test]
        fn random_sequences_keep_invariants(ops in prop::collection::vec((any::<bool>(), 1u32..64, any::<prop::sample::Index>()), 1..300)) {
            let mut a = SegmentAllocator::new(1024);
            let mut live: vec::Vec<AllocId> = vec::Vec::new();
            for (alloc, size, pick) in ops {
                if alloc || live.is_empty() {
                    if let Some(id) = a.allocate(size) {
                        live.push(id);
                    }
                } else {
                    let id = live.swap_remove(pick.index(live.len()));
                    a.free(id).unwrap();
                }
                a.verify().unwrap();
                // No two live allocations overlap and the sum of lengths matches.
                let mut extents = vec::Vec::new();
                a.for_each_allocation(|o, l| extents.push((o, l)));
                prop_assert_eq!(extents.len(), live.len());
                for w in extents.windows(2) {
                    prop_assert!(w[0].0 + w[0].1 <= w[1].0);
                }
                let used: u32 = extents.iter().map(|e| e.1).sum();
                prop_assert_eq!(used + a.free_granules(), 1024);
            }
        }

        /// An exact allocation succeeds exactly when every granule it names is free,
        /// and takes exactly those; mixed with ordinary allocations and frees.
        #[test]
        fn exact_allocations_take_exactly_the_free_granules_named(
            ops in prop::collection::vec((0u8..3, 0u32..300, 1u32..40, any::<prop::sample::Index>()), 1..300)
        ) {
            let mut a = SegmentAllocator::new(256);
            let mut live: vec::Vec<AllocId> = vec::Vec::new();
            for (op, offset, size, pick) in ops {
                let mut used = [false; 256];
                a.for_each_allocation(|o, l| used[o as usize..(o + l) as usize].fill(true));
                match op {
                    0 => {
                        let fits = offset + size <= 256
                            && !used[offset as usize..(offset + size) as usize].contains(&true);
                        let got = a.allocate_at(offset, size);
                        prop_assert_eq!(got.is_some(), fits, "{} + {}", offset, size);
                        if let Some(id) = got {
                            prop_assert_eq!((a.offset(id), a.len(id)), (offset, size));
                            live.push(id);
                        }
                    }
                    1 => live.extend(a.allocate(size)),
                    _ if !live.is_empty() => a.free(live.swap_remove(pick.index(live.len()))).unwrap(),
                    _ => {}
                }
                a.verify().unwrap();
                prop_assert_eq!(a.live_allocations() as usize, live.len());
            }
        }
    }

    #[test]
    fn exact_allocations_in_ascending_order_tile_a_segment() {
        let mut a = SegmentAllocator::new(1 << 16);
        for i in 0..4096u32 {
            assert!(a.allocate_at(i * 16, 8).is_some(), "{i}");
        }
        a.verify().unwrap();
        assert_eq!(a.free_granules(), 1 << 15);
        assert!(a.allocate_at(8, 16).is_none(), "overlaps the next one");
        assert!(a.allocate_at(8, 8).is_some(), "the gap between two");
        assert!(a.allocate_at((1 << 16) - 1, 2).is_none(), "past the end");
        a.verify().unwrap();
    }
}
