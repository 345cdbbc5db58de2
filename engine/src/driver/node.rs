//! The embedded node: the master, the memory segment it allocates in, and the glue that
//! carries the master's commands to the SSD tier and the tier's events back.
//!
//! Everything here runs under the store's node lock and never waits: a persist the
//! write-behind queue cannot take now waits in [`Node::pending`], in order, for a
//! caller (or the background task) to hand it over outside the lock.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::vec::Vec;

use bytes::Bytes;

use super::config::{Clock, ConfigError, StoreConfig};
use super::error::StoreError;
use crate::descriptor::MemoryReplica;
use crate::disk::{RecoveredRecord, Tier, TierEvent};
use crate::ids::{Incarnation, NodeId, ObjectVersion, SegmentId};
use crate::key::{Key, KeyRef};
use crate::master::{Master, MasterConfig, PersistPolicy};
use crate::time::{Duration, Instant};
use crate::wire::{DiskReplicaOrigin, NodeCommand};

/// The one memory segment of the embedded node.
const SEGMENT: SegmentId = SegmentId(1);

/// The memory segment's bytes, under a lock of their own so that copies into and out
/// of it do not hold the node lock: gets copy out in parallel, and the master keeps
/// answering while a value is copied. Lock order: the node, then the segment; nothing
/// takes the node lock while holding the segment's.
#[derive(Debug)]
pub(super) struct Segment(RwLock<Vec<u8>>);

impl Segment {
    /// A segment of `len` zero bytes (pages the kernel maps only as values arrive).
    pub(super) fn new(len: u64) -> Self {
        Self(RwLock::new(std::vec![0u8; len as usize]))
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, Vec<u8>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Vec<u8>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A replica's bytes in the segment.
pub(super) fn replica<'a>(segment: &'a [u8], r: &MemoryReplica) -> &'a [u8] {
    &segment[r.offset as usize..(r.offset + r.len) as usize]
}

/// A replica's bytes in the segment, to fill.
pub(super) fn replica_mut<'a>(segment: &'a mut [u8], r: &MemoryReplica) -> &'a mut [u8] {
    &mut segment[r.offset as usize..(r.offset + r.len) as usize]
}

/// A persist waiting for room in the write-behind queue.
#[derive(Debug)]
pub(super) struct Deferred {
    pub(super) key: Key,
    pub(super) version: ObjectVersion,
    pub(super) value: Bytes,
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
    /// Persists waiting for room in the write-behind queue, oldest first. They stay
    /// here, never in a caller's future, so that a cancelled caller loses none.
    pub(super) pending: VecDeque<Deferred>,
    segment_len: u64,
    epoch: std::time::Instant,
    clock: Clock,
    id: NodeId,
}

impl Node {
    /// A master with this node registered and its segment mounted. The segment is
    /// zero pages the kernel maps only as values arrive. Versions start at the wall
    /// clock in nanoseconds, or at `version_floor` (above every version the SSD tier
    /// holds) if that is higher: a clock stepped back must not hand out versions that
    /// records or removals on disk already name.
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
            pending: VecDeque::new(),
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

    /// Registers what the tier recovered; returns how many the master took.
    pub(super) fn register_recovered(&mut self, records: Vec<RecoveredRecord>, tier: &Tier) -> u64 {
        let now = self.now();
        let mut taken = 0;
        for r in records {
            match self.master.handle_add_disk_replica(
                now,
                r.key.as_ref(),
                r.version,
                r.replica,
                DiskReplicaOrigin::Recovered,
            ) {
                Ok(()) => taken += 1,
                Err(e) => {
                    // Two records of one key (a crash between a re-put and the drop of
                    // the old record): the newer version won; drop the other.
                    tracing::debug!(key = ?r.key, error = %e, "recovered record refused; dropping it");
                    tier.remove_version(r.key.as_ref(), r.version);
                }
            }
        }
        self.counters.recovered += taken;
        taken
    }

    /// Carries out the master's commands. A persist the write-behind queue cannot take
    /// now (or that would overtake one already waiting) goes to [`Node::pending`].
    pub(super) fn run_commands(&mut self, tier: Option<&Tier>, segment: &Segment) {
        while let Some(command) = self.master.poll_command() {
            match command {
                NodeCommand::Persist { key, version, source, .. } => {
                    // The master keeps the source allocated until the persist ends.
                    let value = Bytes::copy_from_slice(replica(&segment.read(), &source));
                    let Some(t) = tier else {
                        self.persist_failed(key.as_ref(), version, &"no SSD tier");
                        continue;
                    };
                    if !self.pending.is_empty() {
                        self.pending.push_back(Deferred { key, version, value });
                        continue;
                    }
                    match t.try_put(key.as_ref(), version, value.clone()) {
                        Ok(true) => {}
                        Ok(false) => self.pending.push_back(Deferred { key, version, value }),
                        Err(e) => self.persist_failed(key.as_ref(), version, &e),
                    }
                }
                NodeCommand::DropDiskReplica { key, version, .. } => {
                    if let Some(t) = tier {
                        t.remove_version(key.as_ref(), version);
                    }
                    let _ =
                        self.master.handle_remove_disk_replica(self.now(), self.id, key.as_ref(), version);
                }
                NodeCommand::WipeDisk { .. } => {
                    if let Some(Err(e)) = tier.map(Tier::remove_all) {
                        tracing::warn!(error = %e, "could not wipe the node directory");
                    }
                }
            }
        }
        while self.master.poll_event().is_some() {}
    }

    /// Tells the master that a persist failed.
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

    /// Carries one tier event to the master.
    pub(super) fn handle_tier_event(&mut self, event: TierEvent, tier: &Tier) {
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
                    tier.remove_version(key.as_ref(), version);
                    let _ = self.master.handle_remove_disk_replica(now, self.id, key.as_ref(), version);
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
            TierEvent::Dropped { key, version, .. } => {
                let _ = self.master.handle_remove_disk_replica(now, self.id, key.as_ref(), version);
            }
        }
    }
}

fn duration(d: core::time::Duration) -> Duration {
    Duration::from_nanos(d.as_nanos().min(u128::from(u64::MAX)) as u64)
}
