//! The master: metadata for every object in the cluster, as a sans-IO state machine.
//!
//! The master owns the object table (key → version, size, replicas, lease), the
//! mounted memory segments and the allocator inside each, node liveness, eviction and
//! the registry of disk replicas. It holds no values: writers and readers move bytes
//! themselves, using the replica descriptors the master hands out.
//!
//! # Call order
//!
//! 1. Construct with [`Master::new`].
//! 2. Feed every input through a `handle_*` method (or [`Master::handle_request`] for
//!    a decoded wire request), always with the current time. Each returns the answer
//!    for the caller at once.
//! 3. After each `handle_*` call, drain [`Master::poll_command`] (work for nodes: persist,
//!    drop a disk record, wipe) and [`Master::poll_event`] (objects dropped, memory
//!    ranges freed) until they return `None`.
//! 4. Call [`Master::handle_timeout`] whenever the instant from [`Master::poll_timeout`]
//!    has passed (node TTLs, abandoned puts, eviction retries). Extra calls are harmless.
//!
//! The master never reads a clock: every decision about leases, TTLs and timeouts uses
//! the `now` passed in, so a test or a simulation can drive it with virtual time.
//!
//! # Rules
//!
//! The operations follow the table in DESIGN.md "Objects and replicas"; each method's
//! documentation states its rules and errors. A refused request leaves the state
//! exactly as it was.
//!
//! # Removed memory
//!
//! A removed object's memory ranges are announced freed at once but reused only after
//! its lease has passed, so that a reader inside its lease never reads another
//! object's bytes there (see `quarantine`); one a node is still persisting from stays
//! pinned until the node answers.
//!
//! # Disk replicas and tombstones
//!
//! Disk replicas are registered by the node that holds them and name the object
//! version. When the master forgets a version that a node holds (or may be writing) on
//! disk, it asks the node to drop the record and keeps a *tombstone* `(node, version)`
//! until the node confirms with `RemoveDiskReplica`, so that a node that crashes before
//! deleting cannot resurrect the object by re-registering the record after its restart.
//! A wipe (remove-all) leaves a per-node *floor* instead: recovered records older than
//! the floor are refused.

mod allocator;
mod config;
mod disk;
mod dispatch;
mod durability;
mod eviction;
mod membership;
mod objects;
mod outputs;
mod quarantine;
mod restore;
mod segments;
#[cfg(feature = "sim")]
pub mod sim;
mod verify;

pub use crate::wire::MasterError;
pub use allocator::{AllocError, AllocId, AllocatorInconsistency, SegmentAllocator};
pub use config::{ConfigError, MasterConfig, PersistPolicy};
pub use durability::{FlushStatus, FlushTicket};
pub use outputs::{DiskUsage, DropReason, MasterEvent, MasterStats};
pub use verify::Inconsistency;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use durability::Durability;
use objects::{Object, ObjectKey, ObjectTable, Placement, Placements, REFERENCED};
use segments::Segments;

use crate::descriptor::{MemoryReplica, ReplicaDescriptor, ReplicaStatus};
use crate::ids::{Incarnation, NodeId, ObjectVersion, SegmentId};
use crate::key::{Key, KeyRef};
use crate::time::Instant;
use crate::wire::{MAX_REPLICAS, NodeCommand, PersistReason, PutGrant, ReplicaList};

/// Node liveness record.
#[derive(Debug, Clone, Copy)]
struct NodeInfo {
    incarnation: Incarnation,
    last_seen: Instant,
    has_storage: bool,
}

/// Memory of a removed object that a node is still reading to persist.
#[derive(Debug)]
struct PinnedRemoved {
    placements: Placements,
    node: NodeId,
    /// The object's lease: once the persist is over, the memory is quarantined until
    /// then.
    lease_until: Instant,
}

/// The master state machine. See the module documentation for the call order.
#[derive(Debug)]
pub struct Master {
    config: MasterConfig,
    objects: ObjectTable,
    segments: Segments,
    nodes: BTreeMap<NodeId, NodeInfo>,
    next_version: ObjectVersion,
    /// Puts in progress, by discard deadline (entries may be stale; checked on pop).
    in_progress: VecDeque<(Instant, u32, ObjectVersion)>,
    pinned_removed: BTreeMap<ObjectVersion, PinnedRemoved>,
    /// Ranges of removed objects, by the end of the object's lease: see `quarantine`.
    quarantine: BTreeMap<(Instant, ObjectVersion), Placements>,
    /// The bytes of the ranges in `quarantine`.
    quarantined_bytes: u64,
    tombstones: BTreeSet<(NodeId, ObjectVersion)>,
    wipe_floors: BTreeMap<NodeId, ObjectVersion>,
    /// Replicas a restarted node names from an earlier run are refused below this
    /// (raised by a remove-all).
    restore_floor: ObjectVersion,
    /// Keys a client removed in this run while earlier-run replicas may still be named
    /// (the restore window): no version of an earlier run comes back under them.
    removed_keys: BTreeSet<ObjectKey>,
    /// When the first node pinged this run: the restore window starts then.
    born: Option<Instant>,
    /// The restore window has passed: nodes' memory replicas of an earlier run are
    /// refused, and removed keys are no longer kept.
    restore_window_closed: bool,
    /// Bytes of objects chosen for eviction whose persist has not finished.
    pending_evict_bytes: u64,
    clock_hand: u32,
    /// A sweep fell short of its target; see [`Master::evict`].
    eviction_owed: bool,
    /// When the earliest lease that blocked the last sweep expires.
    eviction_retry_at: Option<Instant>,
    /// What is durable, and the retries of failed persists.
    durability: Durability,
    commands: VecDeque<NodeCommand>,
    events: VecDeque<MasterEvent>,
    evicted_to_disk: u64,
    evicted_dropped: u64,
    persists_requested: u64,
    /// CRC32C mismatches nodes and clients reported.
    crc_failures_reported: u64,
}

impl Master {
    /// A master with no nodes, segments or objects.
    pub fn new(config: MasterConfig) -> Result<Self, ConfigError> {
        let (low, high) = (config.low_watermark, config.high_watermark);
        if !(low > 0.0 && low <= high && high <= 1.0) {
            return Err(ConfigError::Watermarks);
        }
        if !config.granule.is_power_of_two() || config.granule < 64 {
            return Err(ConfigError::Granule);
        }
        if config.max_replicas == 0 || usize::from(config.max_replicas) > MAX_REPLICAS {
            return Err(ConfigError::MaxReplicas);
        }
        if config.first_version.0 == 0 {
            return Err(ConfigError::FirstVersion);
        }
        Ok(Self {
            objects: ObjectTable::new(config.hash_seed),
            segments: Segments::new(config.granule),
            nodes: BTreeMap::new(),
            next_version: config.first_version,
            in_progress: VecDeque::new(),
            pinned_removed: BTreeMap::new(),
            quarantine: BTreeMap::new(),
            quarantined_bytes: 0,
            tombstones: BTreeSet::new(),
            wipe_floors: BTreeMap::new(),
            restore_floor: ObjectVersion(0),
            removed_keys: BTreeSet::new(),
            born: None,
            restore_window_closed: false,
            pending_evict_bytes: 0,
            clock_hand: 0,
            eviction_owed: false,
            eviction_retry_at: None,
            durability: Durability::default(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            evicted_to_disk: 0,
            evicted_dropped: 0,
            persists_requested: 0,
            crc_failures_reported: 0,
            config,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &MasterConfig {
        &self.config
    }

    // ----- puts -------------------------------------------------------------------

    /// Starts a put: allocates `replicas` memory replicas of `size` bytes on distinct
    /// segments (evicting if needed) and returns them with a new version.
    ///
    /// Errors: `InvalidSize` (zero), `InvalidReplicaCount`, `ObjectAlreadyExists` (a
    /// complete object, or a put started less than the discard timeout ago; an older
    /// unfinished put is preempted), `ObjectTooLarge` (no mounted segment could ever
    /// hold it), `NoSpace` (none has room now, or none is mounted yet).
    pub fn handle_put_start(
        &mut self,
        now: Instant,
        writer: NodeId,
        key: KeyRef<'_>,
        size: u64,
        replicas: u8,
    ) -> Result<PutGrant, MasterError> {
        if size == 0 {
            return Err(MasterError::InvalidSize);
        }
        if replicas == 0 || replicas > self.config.max_replicas {
            return Err(MasterError::InvalidReplicaCount);
        }
        let existing = self.objects.find(key.as_bytes());
        if let Some(slot) = existing {
            let o = self.object(slot);
            if o.status == ReplicaStatus::Complete || now < o.started + self.config.put_discard_timeout {
                return Err(MasterError::ObjectAlreadyExists);
            }
        }
        // Too few segments (none, as while the nodes start) is a wait, not a verdict
        // on the value.
        if usize::from(replicas) > self.segments.count() {
            return Err(MasterError::NoSpace);
        }
        if !self.segments.could_ever_fit(size) {
            return Err(MasterError::ObjectTooLarge);
        }
        if let Some(slot) = existing {
            self.drop_object(slot, DropReason::Preempted);
        }
        let placements = self.place(now, size, replicas, writer).ok_or(MasterError::NoSpace)?;
        let version = self.next_version;
        self.next_version = version.next();
        let grant = PutGrant {
            version,
            replicas: placements.iter().map(|p| self.segments.replica(*p, size)).collect(),
        };
        let slot = self.objects.insert(Object {
            key: key.as_bytes().into(),
            version,
            size,
            crc32c: None,
            writer,
            started: now,
            lease_until: Instant::ZERO,
            memory: placements,
            disk: Vec::new(),
            status: ReplicaStatus::Processing,
            flags: 0,
        });
        self.in_progress.push_back((now + self.config.put_discard_timeout, slot, version));
        self.settle_eviction(now);
        Ok(grant)
    }

    /// Ends a put: the writer copied the value, whose CRC32C is `crc32c` (given to
    /// every reader to check the bytes it gets; `None` from a writer whose readers share
    /// its buffer), into every replica, which become readable. With write-behind on, asks the owning node to persist it (if a node
    /// with an SSD tier holds a replica), and the object counts towards the next
    /// flush's barrier.
    ///
    /// Errors: `ObjectNotFound`; `PutNotInProgress` (another version holds the key, or
    /// this one ended already); `NotWriter`.
    pub fn handle_put_end(
        &mut self,
        _now: Instant,
        writer: NodeId,
        key: KeyRef<'_>,
        version: ObjectVersion,
        crc32c: Option<u32>,
    ) -> Result<(), MasterError> {
        let slot = self.writers_put(writer, key, version)?;
        let o = self.objects.get_mut(slot).expect("found above");
        o.status = ReplicaStatus::Complete;
        o.crc32c = crc32c;
        // Only objects some node can persist count towards a flush: one placed on
        // nodes without an SSD tier is memory-only by the cluster's own layout.
        if self.config.persist == PersistPolicy::WriteBehind
            && self.request_persist(slot, PersistReason::WriteBehind)
        {
            self.await_durability(slot);
        }
        self.trim_in_progress();
        Ok(())
    }

    /// Revokes a put: its replicas are freed and the key is free again.
    ///
    /// Errors: as [`Master::handle_put_end`].
    pub fn handle_put_revoke(
        &mut self,
        _now: Instant,
        writer: NodeId,
        key: KeyRef<'_>,
        version: ObjectVersion,
    ) -> Result<(), MasterError> {
        let slot = self.writers_put(writer, key, version)?;
        self.release_object(slot);
        self.trim_in_progress();
        Ok(())
    }

    /// Pops entries at the front of the in-progress queue whose put is no longer in
    /// progress, so that [`Master::poll_timeout`] reports a real deadline.
    pub(super) fn trim_in_progress(&mut self) {
        while let Some(&(_, slot, version)) = self.in_progress.front() {
            let live = self
                .objects
                .get(slot)
                .is_some_and(|o| o.version == version && o.status == ReplicaStatus::Processing);
            if live {
                break;
            }
            self.in_progress.pop_front();
        }
    }

    /// The slot of `writer`'s in-progress put of `key` at `version`.
    fn writers_put(
        &self,
        writer: NodeId,
        key: KeyRef<'_>,
        version: ObjectVersion,
    ) -> Result<u32, MasterError> {
        let slot = self.objects.find(key.as_bytes()).ok_or(MasterError::ObjectNotFound)?;
        let o = self.object(slot);
        if o.version != version {
            return Err(MasterError::PutNotInProgress);
        }
        if o.status != ReplicaStatus::Processing {
            return Err(MasterError::PutNotInProgress);
        }
        if o.writer != writer {
            return Err(MasterError::NotWriter);
        }
        Ok(slot)
    }

    // ----- reads ------------------------------------------------------------------

    /// The readable replicas of `key`, memory first, and a read lease: the object will
    /// not be evicted, nor removed unless forced, before `now + lease_ttl`.
    ///
    /// Errors: `ObjectNotFound`; `ReplicaNotReady` (the put has not ended).
    pub fn handle_get_replica_list(
        &mut self,
        now: Instant,
        key: KeyRef<'_>,
    ) -> Result<ReplicaList, MasterError> {
        let slot = self.objects.find(key.as_bytes()).ok_or(MasterError::ObjectNotFound)?;
        let lease_ttl = self.config.lease_ttl;
        let o = self.objects.get_mut(slot).expect("found above");
        if o.status != ReplicaStatus::Complete {
            return Err(MasterError::ReplicaNotReady);
        }
        o.lease_until = o.lease_until.max(now + lease_ttl);
        o.flags |= REFERENCED;
        let o = self.object(slot);
        // At most what a message may carry: memory replicas first, then disk replicas
        // (one per node, so a cluster of many nodes could otherwise hold more).
        let memory = o.memory.iter().map(|p| ReplicaDescriptor::Memory(self.segments.replica(*p, o.size)));
        let disk = o.readable_disk().map(|d| ReplicaDescriptor::Disk(*d));
        let replicas = memory.chain(disk).take(MAX_REPLICAS).collect();
        Ok(ReplicaList { version: o.version, size: o.size, lease: lease_ttl, crc32c: o.crc32c, replicas })
    }

    /// The size of the complete object under `key`, without granting a lease.
    pub fn object_size(&self, key: KeyRef<'_>) -> Option<u64> {
        let slot = self.objects.find(key.as_bytes())?;
        let o = self.object(slot);
        (o.status == ReplicaStatus::Complete).then_some(o.size)
    }

    /// Gives a complete object that lives only on disk a memory replica again, if
    /// memory has room below the high watermark (promotion never evicts). Returns
    /// `None` when there is no room or the object already has a memory replica.
    ///
    /// The replica is listed as readable at once, so the caller must fill it with the
    /// object's bytes before anyone else can ask for the object: the embedded store
    /// does both under one lock.
    ///
    /// Errors: `ObjectNotFound`; `StaleVersion` (another version holds the key);
    /// `ReplicaNotReady`.
    pub fn handle_promote(
        &mut self,
        _now: Instant,
        key: KeyRef<'_>,
        version: ObjectVersion,
    ) -> Result<Option<MemoryReplica>, MasterError> {
        let slot = self.objects.find(key.as_bytes()).ok_or(MasterError::ObjectNotFound)?;
        let o = self.object(slot);
        if o.version != version {
            return Err(MasterError::StaleVersion);
        }
        if o.status != ReplicaStatus::Complete {
            return Err(MasterError::ReplicaNotReady);
        }
        let size = o.size;
        let needed = self.segments.granules(size) * self.config.granule;
        if !o.memory.is_empty() || self.effective_used_bytes() + needed > self.high_watermark_bytes() {
            return Ok(None);
        }
        let Some(placements) = self.segments.place(size, 1, None) else { return Ok(None) };
        let replica = self.segments.replica(placements[0], size);
        let o = self.objects.get_mut(slot).expect("found above");
        o.memory = placements;
        o.flags |= REFERENCED;
        Ok(Some(replica))
    }

    /// Whether a complete object exists under `key`.
    pub fn handle_exists(&mut self, _now: Instant, key: KeyRef<'_>) -> bool {
        self.objects
            .find(key.as_bytes())
            .is_some_and(|slot| self.object(slot).status == ReplicaStatus::Complete)
    }

    // ----- removal ----------------------------------------------------------------

    /// Removes `key`: memory replicas are freed and the nodes holding disk replicas are
    /// told to drop them.
    ///
    /// Errors: `ObjectNotFound`; `ReplicaNotReady` (a put in progress);
    /// `ObjectHasLease` (leased and not forced).
    pub fn handle_remove(&mut self, now: Instant, key: KeyRef<'_>, force: bool) -> Result<(), MasterError> {
        let slot = self.objects.find(key.as_bytes()).ok_or(MasterError::ObjectNotFound)?;
        let o = self.object(slot);
        if o.status != ReplicaStatus::Complete {
            return Err(MasterError::ReplicaNotReady);
        }
        if o.is_leased(now) && !force {
            return Err(MasterError::ObjectHasLease);
        }
        self.remove_complete(now, slot, |_| false);
        Ok(())
    }

    // ----- outputs ----------------------------------------------------------------

    /// The next command for a node, if any. Drain after every `handle_*` call.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<NodeCommand> {
        self.commands.pop_front()
    }

    /// The next event, if any. Drain after every `handle_*` call.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<MasterEvent> {
        self.events.pop_front()
    }

    /// The node that mounted `segment`, if it is mounted.
    pub fn segment_owner(&self, segment: SegmentId) -> Option<NodeId> {
        self.segments.find(segment).map(|slot| self.segments.get(slot).node)
    }

    /// The incarnation the master knows `node` by, if the node is registered.
    pub fn node_incarnation(&self, node: NodeId) -> Option<Incarnation> {
        self.nodes.get(&node).map(|info| info.incarnation)
    }

    /// What the disk tier holds across nodes: readable disk replicas and their bytes.
    /// Walks the whole object table (not kept up to date on every change, unlike
    /// [`Master::stats`]): call it now and then, not per request.
    pub fn disk_usage(&self) -> DiskUsage {
        let mut usage = DiskUsage::default();
        for (_, object) in self.objects.iter() {
            for replica in object.readable_disk() {
                usage.replicas += 1;
                usage.bytes += replica.len;
            }
        }
        usage
    }

    /// Counters and gauges.
    pub fn stats(&self) -> MasterStats {
        MasterStats {
            objects: self.objects.len() as u64,
            segments: self.segments.count() as u64,
            segments_restoring: (self.segments.count() - self.segments.placeable()) as u64,
            nodes: self.nodes.len() as u64,
            capacity_bytes: self.segments.capacity_bytes(),
            used_bytes: self.segments.used_bytes(),
            evicted_to_disk: self.evicted_to_disk,
            evicted_dropped: self.evicted_dropped,
            persists_requested: self.persists_requested,
            tombstones: self.tombstones.len() as u64,
            pinned_removed: self.pinned_removed.len() as u64,
            quarantined_bytes: self.quarantined_bytes,
            persist_retries: self.durability.retrying(),
            crc_failures_reported: self.crc_failures_reported,
        }
    }

    /// Heap bytes held by the master's own tables. Keys of up to 32 bytes live inside
    /// the object table and are counted; longer keys take their own allocation (their
    /// length plus the allocator's overhead), which is not.
    pub fn heap_bytes(&self) -> usize {
        self.objects.heap_bytes()
            + self.segments.heap_bytes()
            + self.durability.heap_bytes()
            + self.in_progress.capacity() * core::mem::size_of::<(Instant, u32, ObjectVersion)>()
    }

    // ----- internals --------------------------------------------------------------

    pub(super) fn object(&self, slot: u32) -> &Object {
        self.objects.get(slot).expect("slot of a live object")
    }

    /// Frees the memory replicas of object `version`.
    pub(super) fn free_placements(&mut self, placements: &[Placement], version: ObjectVersion) {
        for p in placements {
            self.free_placement(*p, version);
        }
    }

    /// Frees one memory replica's range (object `version`'s), telling its holder.
    pub(super) fn free_placement(&mut self, p: Placement, version: ObjectVersion) {
        self.announce_freed(p, version);
        self.segments.free(p);
    }

    /// Tells the holder of a replica's range that object `version` is no longer there.
    pub(super) fn announce_freed(&mut self, p: Placement, version: ObjectVersion) {
        let replica = self.segments.replica(p, 0);
        self.events.push_back(MasterEvent::MemoryFreed {
            segment: replica.segment,
            offset: replica.offset,
            version,
        });
    }

    /// Takes an object out of the table, settling its eviction bookkeeping. The caller
    /// decides what happens to its memory.
    pub(super) fn take_object(&mut self, slot: u32) -> Object {
        self.clear_persist(slot);
        let o = self.objects.remove(slot).expect("live");
        self.durable_or_gone(slot, o.version);
        o
    }

    /// Takes an object out of the table and frees its memory (no drop event).
    pub(super) fn release_object(&mut self, slot: u32) {
        let o = self.take_object(slot);
        self.free_placements(&o.memory, o.version);
    }

    /// Drops an object that leaves for a reason other than a client's remove.
    pub(super) fn drop_object(&mut self, slot: u32, reason: DropReason) {
        let o = self.take_object(slot);
        self.free_placements(&o.memory, o.version);
        self.events.push_back(MasterEvent::ObjectDropped {
            key: Key::from_boxed_unchecked(o.key.as_slice().into()),
            version: o.version,
            reason,
        });
    }
}

#[cfg(test)]
mod tests;
