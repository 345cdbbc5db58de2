//! Memory regions: what this side registered with its device (lkey, rkey, bounds,
//! access), and the checks a work request's ranges must pass before it is posted.

use alloc::vec::Vec;

use super::endpoint::RemoteRegion;
use super::qp::Access;

/// A registered memory region (`ibv_reg_mr`'s answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// The first address.
    pub addr: u64,
    /// Its length.
    pub len: u64,
    /// The key local work requests name it by.
    pub lkey: u32,
    /// The key peers name it by.
    pub rkey: u32,
    /// What it was registered for.
    pub access: Access,
}

impl MemoryRegion {
    /// The address one past the end.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.len)
    }

    /// What a peer is told of it.
    pub fn remote(&self) -> RemoteRegion {
        RemoteRegion { addr: self.addr, len: self.len, rkey: self.rkey }
    }
}

/// Why a region cannot be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// Empty, or past the end of the address space.
    #[error("a region is not empty and does not wrap the address space")]
    BadRange,
    /// It overlaps a region already registered.
    #[error("the region overlaps one already registered")]
    Overlaps,
    /// REMOTE_WRITE or REMOTE_ATOMIC without LOCAL_WRITE (verbs refuses it).
    #[error("remote write and atomic rights need local write")]
    BadAccess,
}

/// This side's registered regions, sorted by address and disjoint.
#[derive(Debug, Clone, Default)]
pub struct MemoryRegions {
    regions: Vec<MemoryRegion>,
}

impl MemoryRegions {
    /// No regions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a region the device registered.
    pub fn register(&mut self, region: MemoryRegion) -> Result<(), RegionError> {
        if region.len == 0 || region.addr.checked_add(region.len).is_none() {
            return Err(RegionError::BadRange);
        }
        if region.access.intersects(Access::REMOTE_WRITE | Access::REMOTE_ATOMIC)
            && !region.access.contains(Access::LOCAL_WRITE)
        {
            return Err(RegionError::BadAccess);
        }
        let at = self.regions.partition_point(|r| r.addr < region.addr);
        let overlaps_prev = at > 0 && self.regions[at - 1].end() > region.addr;
        let overlaps_next = self.regions.get(at).is_some_and(|next| region.end() > next.addr);
        if overlaps_prev || overlaps_next {
            return Err(RegionError::Overlaps);
        }
        self.regions.insert(at, region);
        Ok(())
    }

    /// Removes the region that starts at `addr` (the caller deregisters it with the
    /// device only once no work request names it).
    pub fn deregister(&mut self, addr: u64) -> Option<MemoryRegion> {
        let at = self.regions.iter().position(|r| r.addr == addr)?;
        Some(self.regions.remove(at))
    }

    /// The region holding `addr`.
    pub fn find(&self, addr: u64) -> Option<&MemoryRegion> {
        find_containing(&self.regions, addr, |r| (r.addr, r.end()))
    }

    /// Every region, in address order.
    pub fn iter(&self) -> impl Iterator<Item = &MemoryRegion> {
        self.regions.iter()
    }

    /// What a peer is told: every region, as [`RemoteRegion`]s.
    pub fn remote_regions(&self) -> Vec<RemoteRegion> {
        self.regions.iter().map(MemoryRegion::remote).collect()
    }
}

/// The element of `sorted` (disjoint ranges in address order) whose range holds `addr`.
pub(crate) fn find_containing<T>(sorted: &[T], addr: u64, range: impl Fn(&T) -> (u64, u64)) -> Option<&T> {
    let at = sorted.partition_point(|r| range(r).0 <= addr);
    let candidate = sorted.get(at.checked_sub(1)?)?;
    let (start, end) = range(candidate);
    (start <= addr && addr < end).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(addr: u64, len: u64) -> MemoryRegion {
        MemoryRegion {
            addr,
            len,
            lkey: addr as u32,
            rkey: (addr as u32).wrapping_add(1),
            access: Access::LOCAL_WRITE,
        }
    }

    #[test]
    fn regions_are_disjoint_and_found_by_any_address_inside() {
        let mut mrs = MemoryRegions::new();
        mrs.register(region(100, 50)).unwrap();
        mrs.register(region(200, 10)).unwrap();
        mrs.register(region(150, 50)).unwrap();
        assert_eq!(mrs.register(region(140, 20)), Err(RegionError::Overlaps));
        assert_eq!(mrs.register(region(90, 11)), Err(RegionError::Overlaps));
        assert_eq!(mrs.register(region(205, 1)), Err(RegionError::Overlaps));
        assert_eq!(mrs.register(region(5, 0)), Err(RegionError::BadRange));
        assert_eq!(mrs.register(region(u64::MAX, 2)), Err(RegionError::BadRange));
        let bad = MemoryRegion { access: Access::REMOTE_WRITE, ..region(500, 1) };
        assert_eq!(mrs.register(bad), Err(RegionError::BadAccess));
        assert_eq!(mrs.find(99), None);
        assert_eq!(mrs.find(100).map(|r| r.addr), Some(100));
        assert_eq!(mrs.find(149).map(|r| r.addr), Some(100));
        assert_eq!(mrs.find(150).map(|r| r.addr), Some(150));
        assert_eq!(mrs.find(209).map(|r| r.addr), Some(200));
        assert_eq!(mrs.find(210), None);
        assert_eq!(mrs.deregister(150).map(|r| r.len), Some(50));
        assert_eq!(mrs.find(160), None);
        assert_eq!(mrs.iter().map(|r| r.addr).collect::<Vec<_>>(), [100, 200]);
    }
}
