//! The embedded node: the master, the bytes of the memory replicas it allocates, and the
//! queue of work its commands give the SSD tier.
//!
//! Everything here runs under the store's node lock and never waits or does I/O. The
//! master's commands become [`TierWork`] in [`Node::work`], in the master's order; the
//! store carries that work out after letting go of the lock (`store`).
//!
//! # Memory replicas
//!
//! The master allocates each replica a range of the node's segment (the ranges are its
//! accounting of memory); the replica's bytes live in a buffer of their own, kept here
//! under the range's offset. Readers, the SSD tier and promotion share that buffer
//! (`Bytes`): a get hands it out or copies from it with no lock held, a persist hands it
//! to the tier with no copy, and a value read back from disk becomes the replica as it
//! is. When the master frees a range ([`MasterEvent::MemoryFreed`]) the buffer is
//! dropped here; readers that still hold it keep it alive until they let go.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::vec::Vec;

use bytes::Bytes;

use super::config::{Clock, ConfigError, StoreConfig};
use super::error::StoreError;
use crate::disk::{RecoveredRecord, TierEvent};
use crate::ids::{Incarnation, NodeId, ObjectVersion, SegmentId};
use crate::key::{Key, KeyRef};
use crate::master::{Master, MasterConfig, MasterEvent, PersistPolicy};
use crate::time::{Duration, Instant};
use crate::wire::{DiskReplicaOrigin, NodeCommand};

/// The one memory segment of the embedded node.
const SEGMENT: SegmentId = SegmentId(1);

/// Work for the SSD tier, carried out in the order the master asked for it.
#[derive(Debug)]
pub(super) enum TierWork {
    /// Persist this version (the buffer is the memory replica's own).
    Persist {
        /// The key.
        key: Key,
        /// The version.
        version: ObjectVersion,
        /// Its bytes.
        value: Bytes,
    },
    /// Delete this version's record, then tell the master it is gone (which clears
    /// the master's tombstone, if it left one).
    DropRecord {
        /// The key.
        key: Key,
        /// The version.
        version: ObjectVersion,
    },
    /// Delete every record (the master removed everything).
    Wipe,
}

/// Counters the master does not keep.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counters {
    pub(super) memory_hits: u64,
    pub(super) disk_hits: u64,
    pub(super) promotions: u64,
    pub(super) persisted: u64,
    pub(super) put_waits: u64,
    pub(super) persist_failures: u64,
    pub(super) recovered: u64,
}

#[derive(Debug)]
pub(super) struct Node {
    pub(super) master: Master,
    pub(super) counters: Counters,
    /// The memory replicas' bytes, by offset in the segment.
    values: HashMap<u64, Bytes>,
    /// Tier work not yet carried out, in the master's order. It stays here, never in a
    /// caller's future, so that a cancelled caller loses none.
    pub(super) work: VecDeque<TierWork>,
    /// Work items queued so far, and carried out so far: a flush waits for the count
    /// at its start.
    pub(super) work_queued: u64,
    pub(super) work_done: u64,
    /// Somebody is carrying the work out. One at a time, so that the order holds.
    pub(super) working: bool,
    segment_len: u64,
    epoch: std::time::Instant,
    clock: Clock,
    id: NodeId,
}

impl Node {
    /// A master with this node registered and its segment mounted. Versions start at
    /// the wall clock in nanoseconds, or at `version_floor` (above every version the
    /// SSD tier holds) if that is higher: a clock stepped back must not hand out
    /// versions that records or removals on disk already name.
    pub(super) fn new(
        config: &StoreConfig,
        persist: bool,
        version_floor: ObjectVersion,
    ) -> Result<Self, StoreError> {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let master_config = MasterConfig {
            lease_ttl: duration(config.lease_ttl),
            // One process: the node cannot go silent while the master lives.
            node_ttl: Duration::from_secs(u64::from(u32::MAX)),
            high_watermark: config.high_watermark,
            low_watermark: config.low_watermark,
            persist: if persist { PersistPolicy::WriteBehind } else { PersistPolicy::Off },
            first_version: ObjectVersion(wall.max(1)).max(version_floor),
            hash_seed: std::hash::RandomState::new().hash_one(wall),
            ..MasterConfig::default()
        };
        let mut master = Master::new(master_config).map_err(|e| ConfigError::Invalid {
            name: "master".into(),
            reason: if e == crate::master::ConfigError::Watermarks {
                "need 0 < low < high <= 1"
            } else {
                "rejected"
            },
        })?;
        let _ = master.handle_ping(Instant::ZERO, config.node, Incarnation(wall), persist);
        master
            .handle_mount_segment(Instant::ZERO, config.node, SEGMENT, config.memory_bytes)
            .map_err(StoreError::Internal)?;
        Ok(Self {
            master,
            counters: Counters::default(),
            values: HashMap::new(),
            work: VecDeque::new(),
            work_queued: 0,
            work_done: 0,
            working: false,
            segment_len: config.memory_bytes,
            epoch: std::time::Instant::now(),
            clock: config.clock.clone(),
            id: config.node,
        })
    }

    /// This node's id.
    pub(super) fn id(&self) -> NodeId {
        self.id
    }

    /// The engine's time: nanoseconds since the store opened (or the manual clock's).
    pub(super) fn now(&self) -> Instant {
        match &self.clock {
            Clock::System => Instant::from_nanos(self.epoch.elapsed().as_nanos() as u64),
            Clock::Manual(clock) => Instant::from_nanos(clock.nanos()),
        }
    }

    pub(super) fn segment_bytes(&self) -> u64 {
        self.segment_len
    }

    /// The bytes of the memory replica at `offset`.
    pub(super) fn value(&self, offset: u64) -> Option<Bytes> {
        self.values.get(&offset).cloned()
    }

    /// Sets the bytes of the memory replica at `offset` (a put that ended, a promotion).
    pub(super) fn set_value(&mut self, offset: u64, value: Bytes) {
        self.values.insert(offset, value);
    }

    /// Registers what the tier recovered; returns how many the master took. A record
    /// it refuses (an older copy of a key, a removed version) is dropped from disk.
    pub(super) fn register_recovered(&mut self, records: Vec<RecoveredRecord>) -> u64 {
        let now = self.now();
        let mut taken = 0;
        for r in records {
            let origin = DiskReplicaOrigin::Recovered;
            match self.master.handle_add_disk_replica(now, r.key.as_ref(), r.version, r.replica, origin) {
                Ok(()) => taken += 1,
                Err(e) => {
                    // Two records of one key (a crash between a re-put and the drop of
                    // the old record): the newer version won; drop the other.
                    tracing::debug!(key = ?r.key, error = %e, "recovered record refused; dropping it");
                    self.queue(TierWork::DropRecord { key: r.key, version: r.version });
                }
            }
        }
        self.counters.recovered += taken;
        taken
    }

    fn queue(&mut self, work: TierWork) {
        self.work.push_back(work);
        self.work_queued += 1;
    }

    /// Takes in what the master asked for since the last call: commands become tier
    /// work, freed ranges drop their bytes. Call after every master call. Returns
    /// whether work is waiting.
    pub(super) fn collect(&mut self) -> bool {
        while let Some(command) = self.master.poll_command() {
            match command {
                NodeCommand::Persist { key, version, source, .. } => match self.value(source.offset) {
                    // The master keeps the source allocated until the persist ends.
                    Some(value) => self.queue(TierWork::Persist { key, version, value }),
                    None => self.persist_failed(key.as_ref(), version, &"its memory replica is gone"),
                },
                NodeCommand::DropDiskReplica { key, version, .. } => {
                    self.queue(TierWork::DropRecord { key, version });
                }
                NodeCommand::WipeDisk { .. } => self.queue(TierWork::Wipe),
                // A cluster's master server tells remote nodes of freed ranges this way;
                // here they arrive as `MemoryFreed` events, below.
                NodeCommand::ForgetRange { .. } => {}
            }
        }
        while let Some(event) = self.master.poll_event() {
            if let MasterEvent::MemoryFreed { segment: SEGMENT, offset, .. } = event {
                self.values.remove(&offset);
            }
        }
        !self.work.is_empty()
    }

    /// Tells the master that a persist failed (it asks again after a backoff).
    pub(super) fn persist_failed(
        &mut self,
        key: KeyRef<'_>,
        version: ObjectVersion,
        why: &dyn core::fmt::Display,
    ) {
        tracing::warn!(key = ?key, error = %why, "could not persist an object");
        self.counters.persist_failures += 1;
        let _ = self.master.handle_persist_failed(self.now(), self.id, key, version);
    }

    /// The tier deleted a record the master asked it to drop.
    pub(super) fn record_dropped(&mut self, key: KeyRef<'_>, version: ObjectVersion) {
        let _ = self.master.handle_remove_disk_replica(self.now(), self.id, key, version);
    }

    /// Carries one tier event to the master.
    pub(super) fn handle_tier_event(&mut self, event: TierEvent) {
        let now = self.now();
        match event {
            TierEvent::Persisted { key, version, replica } => {
                let added = self.master.handle_add_disk_replica(
                    now,
                    key.as_ref(),
                    version,
                    replica,
                    DiskReplicaOrigin::Persisted,
                );
                if added.is_ok() {
                    self.counters.persisted += 1;
                } else {
                    // Removed or replaced while it was being written: not wanted.
                    self.queue(TierWork::DropRecord { key, version });
                }
            }
            TierEvent::PersistFailed { key, version, no_space } => {
                let why = if no_space { "the device is full" } else { "the write failed" };
                self.persist_failed(key.as_ref(), version, &why);
            }
            TierEvent::Cancelled { key, version } => {
                // Removed (or replaced) while it was written: nothing failed, but the
                // master may still hold its memory until it hears the persist ended.
                let _ = self.master.handle_persist_failed(now, self.id, key.as_ref(), version);
            }
            TierEvent::Dropped { key, version, .. } => self.record_dropped(key.as_ref(), version),
        }
    }
}

fn duration(d: core::time::Duration) -> Duration {
    Duration::from_nanos(d.as_nanos().min(u128::from(u64::MAX)) as u64)
}
