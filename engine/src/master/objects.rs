//! The object table: a slab of object records indexed by key.
//!
//! Records live in a slab (`Vec`) so that eviction can sweep them with a clock hand;
//! the key index is a `hashbrown::HashTable` of slab slots (4 bytes per entry), hashed
//! with foldhash from a configured seed so that simulations are deterministic.

use alloc::vec::Vec;
use core::hash::BuildHasher;

use foldhash::fast::FixedState;
use hashbrown::HashTable;
use smallvec::SmallVec;

use super::allocator::AllocId;
use crate::descriptor::{DiskReplica, ReplicaStatus};
use crate::ids::{BucketId, NodeId, ObjectVersion};
use crate::time::Instant;

/// Index of a mounted segment in the master's segment slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentSlot(pub(crate) u32);

/// Where one memory replica sits: the segment and the allocation inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) segment: SegmentSlot,
    pub(crate) alloc: AllocId,
    /// The allocation's offset in granules, cached so that a lookup need not touch the
    /// allocator (a cache miss on every get).
    pub(crate) offset: u32,
}

/// The memory replicas of one object (almost always exactly one).
pub(crate) type Placements = SmallVec<[Placement; 1]>;

/// Flag: read since the clock hand last passed (second chance).
pub(crate) const REFERENCED: u8 = 1;
/// Flag: a node has been asked to persist this version and has not answered; its
/// memory is pinned until it does.
pub(crate) const PERSISTING: u8 = 2;
/// Flag: eviction chose this object; free its memory once the persist completes.
pub(crate) const EVICT_AFTER_PERSIST: u8 = 4;

/// What the master knows about one node's record of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskState {
    /// The node was asked to persist the object and has not answered: a record may
    /// exist (only `replica.node` is meaningful).
    Pending,
    /// Registered and readable.
    Online,
    /// Registered, but the node is gone (expired, or restarted and not yet
    /// re-registered): not readable.
    Offline,
}

/// A record of the object that a node holds, or may hold. Pending and offline entries
/// are not readable but are remembered, so that removing the object tombstones every
/// record a node might still find when it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiskEntry {
    pub(crate) replica: DiskReplica,
    pub(crate) state: DiskState,
}

impl DiskEntry {
    /// An entry for a persist requested from `node`.
    pub(crate) fn pending(node: NodeId, len: u64) -> Self {
        let replica = DiskReplica { node, bucket: BucketId(0), offset: 0, len, crc32c: 0 };
        Self { replica, state: DiskState::Pending }
    }

    pub(crate) fn online(replica: DiskReplica) -> Self {
        Self { replica, state: DiskState::Online }
    }
}

/// An object's key bytes.
pub(crate) type ObjectKey = smallvec::SmallVec<[u8; 32]>;

/// One object version and its replicas.
#[derive(Debug)]
pub(crate) struct Object {
    /// Kept inline up to 32 bytes (the usual prefix hash), so that a lookup compares
    /// the key in the object's own cache lines instead of chasing a pointer.
    pub(crate) key: ObjectKey,
    pub(crate) version: ObjectVersion,
    pub(crate) size: u64,
    /// The writer's CRC32C of the value (set when the put ends, or from the disk
    /// replica an object is recovered from; `None` from a writer that gave none).
    pub(crate) crc32c: Option<u32>,
    /// The node that started the put (meaningful while Processing).
    pub(crate) writer: NodeId,
    /// When the put started (meaningful while Processing).
    pub(crate) started: Instant,
    pub(crate) lease_until: Instant,
    pub(crate) memory: Placements,
    pub(crate) disk: Vec<DiskEntry>,
    /// `Processing` or `Complete`: removed objects leave the table.
    pub(crate) status: ReplicaStatus,
    pub(crate) flags: u8,
}

impl Object {
    pub(crate) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub(crate) fn is_leased(&self, now: Instant) -> bool {
        self.lease_until > now
    }

    /// Disk replicas a reader can use.
    pub(crate) fn readable_disk(&self) -> impl Iterator<Item = &DiskReplica> {
        self.disk.iter().filter(|d| d.state == DiskState::Online).map(|d| &d.replica)
    }

    pub(crate) fn has_readable_disk(&self) -> bool {
        self.readable_disk().next().is_some()
    }

    /// Whether a reader can get the value from anywhere.
    pub(crate) fn is_readable_somewhere(&self) -> bool {
        !self.memory.is_empty() || self.has_readable_disk()
    }
}

/// Slab of objects plus the key index.
#[derive(Debug)]
pub(crate) struct ObjectTable {
    slots: Vec<Option<Object>>,
    vacant: Vec<u32>,
    index: HashTable<u32>,
    hasher: FixedState,
}

impl ObjectTable {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            slots: Vec::new(),
            vacant: Vec::new(),
            index: HashTable::new(),
            hasher: FixedState::with_seed(seed),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Number of slab slots (live or vacant): the clock hand's range.
    pub(crate) fn slot_count(&self) -> u32 {
        self.slots.len() as u32
    }

    pub(crate) fn find(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        self.index.find(hash, |&s| slots[s as usize].as_ref().is_some_and(|o| &*o.key == key)).copied()
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&Object> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut Object> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Inserts an object whose key is not in the table.
    pub(crate) fn insert(&mut self, object: Object) -> u32 {
        let hash = self.hasher.hash_one(&*object.key);
        let slot = match self.vacant.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(object);
                s
            }
            None => {
                self.slots.push(Some(object));
                (self.slots.len() - 1) as u32
            }
        };
        let Self { slots, index, hasher, .. } = self;
        index.insert_unique(hash, slot, |&s| {
            hasher.hash_one(slots[s as usize].as_ref().map_or(&[][..], |o| &o.key))
        });
        slot
    }

    /// Takes an object out of the table.
    pub(crate) fn remove(&mut self, slot: u32) -> Option<Object> {
        let object = self.slots.get_mut(slot as usize)?.take()?;
        let hash = self.hasher.hash_one(&*object.key);
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        self.vacant.push(slot);
        Some(object)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Object)> {
        self.slots.iter().enumerate().filter_map(|(i, o)| o.as_ref().map(|o| (i as u32, o)))
    }

    /// Slots of every live object (a snapshot, so the caller may mutate the table).
    pub(crate) fn live_slots(&self) -> Vec<u32> {
        self.iter().map(|(s, _)| s).collect()
    }

    /// Checks that the index and the slab agree.
    pub(crate) fn index_matches_slab(&self) -> bool {
        let live = self.slots.iter().filter(|o| o.is_some()).count();
        live == self.index.len()
            && self.iter().all(|(slot, o)| self.find(&o.key) == Some(slot))
            && self.vacant.len() + live == self.slots.len()
    }

    /// Heap bytes held by the table's own structures (not counting keys).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * core::mem::size_of::<Option<Object>>()
            + self.vacant.capacity() * 4
            + self.index.allocation_size()
    }
}
