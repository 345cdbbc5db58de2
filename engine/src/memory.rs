//! Memory a node contributes to the cluster, committed when it starts.
//!
//! A node's segment is one large buffer that values are written into as they arrive.
//! Left to the kernel, each of its pages is faulted in (and zeroed) by the first write
//! that lands on it: on the put path, a fault every 4 KiB. [`SegmentMemory`] instead
//! maps it anonymously (zeroed by the kernel, not by a second pass here), asks for
//! transparent huge pages on it and populates all of it at once, so that its cost is
//! paid when the node starts, like the registration of a buffer an RDMA NIC will write
//! into, and the memory is the node's from then on.

use core::ops::{Deref, DerefMut};

use memmap2::{Advice, MmapMut};

/// The smallest page size of the platforms Larder runs on.
const PAGE: usize = 4096;

/// A zeroed, committed byte buffer for a segment.
#[derive(Debug)]
pub struct SegmentMemory {
    map: MmapMut,
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
        if len == 0 {
            return Ok(Self { map });
        }
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
        Ok(Self { map })
    }
}

impl Deref for SegmentMemory {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl DerefMut for SegmentMemory {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map
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
            assert!(memory.iter().all(|&b| b == 0));
            if let Some(last) = memory.last_mut() {
                *last = 7;
                assert_eq!(memory[len - 1], 7);
            }
        }
    }

    #[test]
    fn every_page_is_resident_before_anything_is_written() {
        let len = 8 << 20;
        let memory = SegmentMemory::committed(len).unwrap();
        let mut resident = alloc::vec![0u8; len.div_ceil(PAGE)];
        // SAFETY: the range is the whole mapping `memory` owns (its start is page
        // aligned, as every mapping is) and `resident` has one byte per page of it, as
        // mincore(2) writes.
        let ret = unsafe { libc::mincore(memory.as_ptr() as *mut _, len, resident.as_mut_ptr()) };
        assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
        let absent = resident.iter().filter(|&&page| page & 1 == 0).count();
        assert_eq!(absent, 0, "{absent} of {} pages not in memory", resident.len());
    }
}
