//! Memory a node contributes to the cluster, committed when it starts.
//!
//! A node's segment is one large buffer that values are written into as they arrive.
//! Left to the kernel, each of its pages is faulted in (and zeroed) by the first write
//! that lands on it: on the put path, a fault every 4 KiB. [`SegmentMemory`] instead
//! maps it anonymously (zeroed by the kernel, not by a second pass here), asks for
//! transparent huge pages on it and populates all of it at once, so that its cost is
//! paid when the node starts, like the registration of a buffer an RDMA NIC will write
//! into, and the memory is the node's from then on.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;
use std::sync::{Mutex, PoisonError};

use memmap2::{Advice, MmapMut};

/// The smallest page size of the platforms Larder runs on.
const PAGE: usize = 4096;

/// A zeroed, committed byte buffer for a segment.
///
/// Its bytes are reached only by range: [`SegmentMemory::range`] and
/// [`SegmentMemory::range_mut`] for the owner; [`SegmentMemory::lend`] for a writer
/// that fills a range outside the owner's borrow (a socket read straight into the
/// segment while the owner serves other ranges); [`SegmentMemory::share`] for a reader
/// that keeps a range beyond the owner's borrow (a socket write straight from the
/// segment). A lent range is refused to everyone else until its [`LentRange`] is
/// dropped; a shared range is refused to writers until its [`SharedRange`] is dropped;
/// no reference to the whole buffer is ever made.
#[derive(Debug)]
pub struct SegmentMemory {
    mapping: Arc<Mapping>,
}

#[derive(Debug)]
struct Mapping {
    /// Owns the mapping. Never borrowed after `base` was taken from it.
    _map: MmapMut,
    base: NonNull<u8>,
    len: usize,
    /// Ranges lent or shared out.
    lent: Mutex<Lends>,
}

/// The ranges handed out of a segment.
#[derive(Debug, Default)]
struct Lends {
    out: Vec<Lend>,
    next_id: u64,
}

#[derive(Debug)]
struct Lend {
    id: u64,
    start: usize,
    end: usize,
    /// Shared with readers (no writer), or lent to one writer (no one else).
    shared: bool,
}

impl Lends {
    /// Whether a lend overlaps `start..end` (only exclusive ones if `writers_only`).
    fn overlaps(&self, start: usize, end: usize, writers_only: bool) -> bool {
        self.out.iter().any(|l| l.start < end && start < l.end && !(writers_only && l.shared))
    }

    fn take(&mut self, start: usize, end: usize, shared: bool) -> u64 {
        self.next_id += 1;
        self.out.push(Lend { id: self.next_id, start, end, shared });
        self.next_id
    }

    fn give_back(&mut self, id: u64) {
        if let Some(at) = self.out.iter().position(|l| l.id == id) {
            self.out.swap_remove(at);
        }
    }
}

// SAFETY: `base` points into the mapping `_map` owns, which lives as long as this
// value; every access through it goes through a range that is either borrowed from
// the `SegmentMemory` (so Rust's borrow rules order it) or lent exclusively to one
// `LentRange` (recorded in `lent`, under its mutex). Moving or sharing the value
// between threads changes neither.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: shared access makes no reference into the bytes by itself.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn lent(&self) -> std::sync::MutexGuard<'_, Lends> {
        self.lent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `start..start + len` if it lies inside.
    fn inside(&self, start: usize, len: usize) -> Option<(usize, usize)> {
        Some((start, start.checked_add(len).filter(|end| *end <= self.len)?))
    }

    /// `start..start + len` if it lies inside and overlaps no lend (no lend to a
    /// writer, if `for_reading`).
    fn free_range(&self, start: usize, len: usize, for_reading: bool) -> Option<(usize, usize)> {
        let (start, end) = self.inside(start, len)?;
        (!self.lent().overlaps(start, end, for_reading)).then_some((start, end))
    }

    /// Records `start..start + len` as handed out (shared with readers, or lent to one
    /// writer) if it lies inside and no lend it may not overlap does; its lend's id.
    fn hand_out(&self, start: usize, len: usize, shared: bool) -> Option<u64> {
        let (start, end) = self.inside(start, len)?;
        let mut lent = self.lent();
        (!lent.overlaps(start, end, shared)).then(|| lent.take(start, end, shared))
    }

    fn pointer(&self, start: usize) -> *mut u8 {
        // `start` is at most `len` (checked by the callers): inside the mapping or one
        // past its end, as `add` requires.
        self.base.as_ptr().wrapping_add(start)
    }
}

impl SegmentMemory {
    /// `len` zeroed bytes, every page of them already in memory.
    ///
    /// Huge pages are asked for (Linux places a mapping this large on a huge-page
    /// boundary); where the kernel does not give them (disabled, or none free), the
    /// buffer is in ordinary pages, committed all the same. Fails only if the address
    /// space cannot be mapped.
    pub fn committed(len: usize) -> std::io::Result<Self> {
        let mut map = MmapMut::map_anon(len)?;
        if len > 0 {
            if let Err(e) = map.advise(Advice::HugePage) {
                tracing::debug!("madvise(MADV_HUGEPAGE): {e}");
            }
            if let Err(e) = map.advise(Advice::PopulateWrite) {
                // Kernels before 5.14: a write per page commits it just the same.
                tracing::debug!("madvise(MADV_POPULATE_WRITE): {e}; touching each page");
                for page in map.chunks_mut(PAGE) {
                    page[0] = 0;
                }
            }
        }
        let base = NonNull::new(map.as_mut_ptr()).unwrap_or(NonNull::dangling());
        Ok(Self { mapping: Arc::new(Mapping { _map: map, base, len, lent: Mutex::default() }) })
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.mapping.len
    }

    /// True if it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.mapping.len == 0
    }

    /// The `len` bytes at `start`; `None` if they are not all inside, or some are lent
    /// to a writer.
    pub fn range(&self, start: usize, len: usize) -> Option<&[u8]> {
        let (start, end) = self.mapping.free_range(start, len, true)?;
        // SAFETY: the range lies inside the mapping, which outlives `&self`. No
        // `LentRange` holds any of it (checked just now), and none can be made while
        // this borrow of `self` lasts (`lend` takes `&mut self`); the owner's mutable
        // ranges need `&mut self` too. So nothing writes these bytes while the slice
        // lives.
        Some(unsafe { core::slice::from_raw_parts(self.mapping.pointer(start), end - start) })
    }

    /// The `len` bytes at `start`, to write; `None` if they are not all inside, or
    /// some are lent.
    pub fn range_mut(&mut self, start: usize, len: usize) -> Option<&mut [u8]> {
        let (start, end) = self.mapping.free_range(start, len, false)?;
        // SAFETY: inside the mapping, which outlives `&mut self`; no `LentRange` or
        // `SharedRange` holds any of it (checked just now, and none can be made during
        // this borrow: `lend` and `share` borrow `self`), and `&mut self` excludes every
        // other range borrowed from `self`.
        Some(unsafe { core::slice::from_raw_parts_mut(self.mapping.pointer(start), end - start) })
    }

    /// Lends the `len` bytes at `start` to be written outside any borrow of `self`,
    /// until the [`LentRange`] is dropped; `None` if they are not all inside, or some
    /// are lent already. The mapping lives at least as long as the range.
    pub fn lend(&mut self, start: usize, len: usize) -> Option<LentRange> {
        if len == 0 {
            return None;
        }
        let id = self.mapping.hand_out(start, len, false)?;
        Some(LentRange { mapping: Arc::clone(&self.mapping), id, start, len })
    }

    /// Shares the `len` bytes at `start` for reading beyond any borrow of `self`, until
    /// the [`SharedRange`] is dropped: no writer reaches them meanwhile (`range_mut`
    /// and `lend` refuse them). `None` if they are not all inside, or some are lent to
    /// a writer. The mapping lives at least as long as the range.
    pub fn share(&self, start: usize, len: usize) -> Option<SharedRange> {
        let id = self.mapping.hand_out(start, len, true)?;
        Some(SharedRange { mapping: Arc::clone(&self.mapping), id, start, len })
    }
}

/// A range of a [`SegmentMemory`] shared with readers: no writer reaches these bytes
/// until it is dropped. Hand it to `Bytes::from_owner` to send it without a copy.
#[derive(Debug)]
pub struct SharedRange {
    mapping: Arc<Mapping>,
    id: u64,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for SharedRange {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the range lies inside the mapping, which `self.mapping` keeps alive;
        // it is recorded as shared, so neither the owner's `range_mut` nor `lend` gives
        // a writer any of it, and `share` refused it while a writer held part of it.
        unsafe { core::slice::from_raw_parts(self.mapping.pointer(self.start), self.len) }
    }
}

impl Drop for SharedRange {
    fn drop(&mut self) {
        self.mapping.lent().give_back(self.id);
    }
}

/// A range of a [`SegmentMemory`] lent to one writer: neither the owner nor another
/// writer reaches these bytes until it is dropped.
#[derive(Debug)]
pub struct LentRange {
    mapping: Arc<Mapping>,
    id: u64,
    start: usize,
    len: usize,
}

impl LentRange {
    /// Where the range starts in the segment.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if it is empty (never: `lend` refuses empty ranges).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, to write.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the range lies inside the mapping, which `self.mapping` keeps alive;
        // it is recorded as lent to this value alone (`lend` refused overlaps), and the
        // owner's `range`/`range_mut` refuse lent bytes, so `&mut self` is the only way
        // to them.
        unsafe { core::slice::from_raw_parts_mut(self.mapping.pointer(self.start), self.len) }
    }

    /// The bytes as they are now.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: as for `bytes_mut`; `&self` excludes writes through `bytes_mut`.
        unsafe { core::slice::from_raw_parts(self.mapping.pointer(self.start), self.len) }
    }
}

impl Drop for LentRange {
    fn drop(&mut self) {
        self.mapping.lent().give_back(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_memory_is_zeroed_and_writable() {
        for len in [0, 1, 4095, (2 << 20) + 3] {
            let mut memory = SegmentMemory::committed(len).unwrap();
            assert_eq!(memory.len(), len);
            assert!(memory.range(0, len).unwrap().iter().all(|&b| b == 0));
            if len > 0 {
                memory.range_mut(len - 1, 1).unwrap()[0] = 7;
                assert_eq!(memory.range(len - 1, 1).unwrap(), &[7]);
            }
            assert!(memory.range(0, len + 1).is_none(), "past the end");
            assert!(memory.range(usize::MAX, 2).is_none(), "overflowing");
        }
    }

    #[test]
    fn a_lent_range_is_refused_to_the_owner_and_other_writers_until_dropped() {
        let mut memory = SegmentMemory::committed(64 << 10).unwrap();
        let mut lent = memory.lend(4096, 8192).unwrap();
        for (start, len) in [(4096, 1), (0, 4097), (12_287, 10), (0, 64 << 10), (8000, 100)] {
            assert!(memory.range(start, len).is_none(), "{start}+{len} read");
            assert!(memory.range_mut(start, len).is_none(), "{start}+{len} written");
            assert!(memory.lend(start, len).is_none(), "{start}+{len} lent twice");
        }
        assert!(memory.range(0, 4096).is_some() && memory.range(12_288, 4096).is_some(), "beside it");
        assert!(memory.lend(0, 0).is_none(), "empty");
        lent.bytes_mut().fill(9);
        assert!(lent.bytes().iter().all(|&b| b == 9));
        // Outliving the owner: the mapping stays until the range goes.
        drop(memory);
        lent.bytes_mut()[0] = 1;
        assert_eq!(lent.bytes()[0], 1);
    }

    #[test]
    fn a_shared_range_is_refused_to_writers_only_until_dropped() {
        let mut memory = SegmentMemory::committed(64 << 10).unwrap();
        memory.range_mut(1000, 100).unwrap().fill(6);
        let shared = memory.share(1000, 100).unwrap();
        let again = memory.share(1050, 100).unwrap();
        assert!(shared.as_ref().iter().all(|&b| b == 6));
        assert!(memory.range(900, 300).is_some(), "the owner still reads it");
        for (start, len) in [(1000, 1), (950, 60), (1099, 1), (1140, 20)] {
            assert!(memory.range_mut(start, len).is_none(), "{start}+{len} written");
            assert!(memory.lend(start, len).is_none(), "{start}+{len} lent");
        }
        drop(shared);
        assert!(memory.range_mut(1000, 50).is_some(), "given back");
        assert!(memory.range_mut(1000, 51).is_none(), "the other share still holds 1050..");
        drop(again);
        let lent = memory.lend(1000, 200).unwrap();
        assert!(memory.share(1100, 1).is_none(), "lent to a writer");
        drop(lent);
        assert!(memory.share(1100, 1).is_some());
        assert!(memory.share(64 << 10, 1).is_none(), "outside");
    }

    #[test]
    fn a_dropped_range_is_the_owners_again_with_what_was_written() {
        let mut memory = SegmentMemory::committed(64 << 10).unwrap();
        let mut lent = memory.lend(100, 50).unwrap();
        let mut beside = memory.lend(150, 50).unwrap();
        lent.bytes_mut().fill(3);
        beside.bytes_mut().fill(4);
        drop(lent);
        assert!(memory.range(100, 50).unwrap().iter().all(|&b| b == 3));
        assert!(memory.range(100, 51).is_none(), "its neighbour is still lent");
        drop(beside);
        assert!(memory.range(150, 50).unwrap().iter().all(|&b| b == 4));
    }

    #[test]
    fn every_page_is_resident_before_anything_is_written() {
        let len = 8 << 20;
        let memory = SegmentMemory::committed(len).unwrap();
        let mut resident = alloc::vec![0u8; len.div_ceil(PAGE)];
        // SAFETY: the range is the whole mapping `memory` owns (its start is page
        // aligned, as every mapping is) and `resident` has one byte per page of it, as
        // mincore(2) writes.
        let ret = unsafe { libc::mincore(memory.mapping.base.as_ptr().cast(), len, resident.as_mut_ptr()) };
        assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
        let absent = resident.iter().filter(|&&page| page & 1 == 0).count();
        assert_eq!(absent, 0, "{absent} of {} pages not in memory", resident.len());
    }
}
