//! A deterministic cluster simulator for the master (feature `sim`).
//!
//! [`Cluster`] drives a [`Master`] with virtual time and simulated nodes whose memory
//! segments and disks follow the node protocol (persist on command and register the
//! record, drop and confirm, wipe, re-register everything after a restart). Every
//! [`Op`] is applied, the master's outputs are routed to the nodes, and a checker
//! compares what the master says against what must hold:
//!
//! - the master's own structural invariants ([`Master::verify`]): no two live
//!   allocations overlap, segment bytes in use equal the sum of live memory replicas;
//! - versions granted by put start strictly increase;
//! - a get returns only a version whose put ended (or that a node recovered), never
//!   one a client removed, never one the master dropped (evicted, discarded, lost)
//!   unless a node has since re-registered it from disk, and only disk replicas that
//!   the holding node really has;
//! - exists agrees with the model of complete objects;
//! - a stale disk-replica registration (forged version, removed version) never
//!   succeeds;
//! - a flush the master calls durable covers every live object it asked a node to
//!   persist before the flush: some node's disk holds its record; one it calls not
//!   durable names at least one that no disk holds.
//!
//! Property tests, the multi-node simulation test and the `master_ops` fuzz target all
//! run the same harness.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{DropReason, FlushStatus, FlushTicket, Master, MasterConfig, MasterError, MasterEvent};
use crate::descriptor::{DiskReplica, ReplicaDescriptor};
use crate::ids::{BucketId, Incarnation, NodeId, ObjectVersion, SegmentId};
use crate::key::{Key, KeyRef};
use crate::time::{Duration, Instant};
use crate::wire::{DiskReplicaOrigin, NodeCommand, PingOutcome};

/// One step of a simulation. Small integers pick nodes and keys modulo their counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Op {
    /// A node starts a put of `size_kib` KiB (0 tests the empty-value refusal).
    PutStart {
        /// Writer.
        node: u8,
        /// Key index.
        key: u8,
        /// Size in KiB.
        size_kib: u16,
        /// Replica count.
        replicas: u8,
    },
    /// The writer (or, to test the refusal, another node) ends the latest put of a key.
    PutEnd {
        /// Key index.
        key: u8,
        /// Send it from a node other than the writer.
        by_other_node: bool,
    },
    /// The writer revokes the latest put of a key.
    PutRevoke {
        /// Key index.
        key: u8,
    },
    /// A reader asks for a key's replicas (taking a lease).
    Get {
        /// Key index.
        key: u8,
    },
    /// Is the key there?
    Exists {
        /// Key index.
        key: u8,
    },
    /// Remove a key.
    Remove {
        /// Key index.
        key: u8,
        /// Even if leased.
        force: bool,
    },
    /// Remove everything.
    RemoveAll {
        /// Even if leased.
        force: bool,
    },
    /// A node mounts another segment.
    Mount {
        /// The node.
        node: u8,
        /// Its size in KiB.
        size_kib: u16,
    },
    /// A node unmounts its newest segment.
    Unmount {
        /// The node.
        node: u8,
    },
    /// A running node pings (and, if the master had forgotten it, remounts and
    /// re-registers its disk).
    Ping {
        /// The node.
        node: u8,
    },
    /// A node process restarts: new incarnation, fresh memory, same disk.
    Restart {
        /// The node.
        node: u8,
    },
    /// A node process stops: no more pings, commands to it are lost.
    Stop {
        /// The node.
        node: u8,
    },
    /// Virtual time passes; the master's timers run.
    Advance {
        /// Milliseconds.
        millis: u16,
    },
    /// A node works through the commands the master sent it.
    Deliver {
        /// The node.
        node: u8,
        /// Answer persists with failure instead of writing them.
        fail_persists: bool,
    },
    /// Somebody registers a disk replica for a version other than the live one.
    ForgeDiskReplica {
        /// Key index.
        key: u8,
        /// Offset from the live version (0 is skipped: that is not a forgery).
        version_offset: i8,
        /// Claim it was recovered rather than persisted.
        recovered: bool,
    },
    /// A client flushes: from now on, whenever the master says the flush is durable,
    /// every object it asked a node to persist before the flush, still live, has a
    /// record on some node's disk.
    Flush,
}

/// What went wrong: a property of the master that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl core::fmt::Display for Violation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::error::Error for Violation {}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(Violation(format!($($arg)*)));
        }
    };
}

/// What happened during a simulation, to show that a run exercised what it claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Ops applied.
    pub ops: u64,
    /// Puts that ended.
    pub puts_ended: u64,
    /// Gets answered with replicas.
    pub gets_hit: u64,
    /// Gets answered from disk only.
    pub gets_from_disk: u64,
    /// Removes refused because of a lease.
    pub refused_for_lease: u64,
    /// Objects dropped by eviction.
    pub evicted: u64,
    /// Nodes the master expired.
    pub nodes_expired: u64,
    /// Segments unmounted.
    pub unmounts: u64,
    /// Records persisted by nodes.
    pub persisted: u64,
    /// Records re-registered after a restart.
    pub recovered: u64,
    /// Recovered records the master refused (dropped or removed versions).
    pub recoveries_refused: u64,
    /// Forged registrations (all refused, or the run fails).
    pub forgeries: u64,
    /// Flushes the master answered durable.
    pub flushes_durable: u64,
    /// Flushes the master answered not durable.
    pub flushes_not_durable: u64,
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    incarnation: u64,
    running: bool,
    storage: bool,
    segments: Vec<SegmentId>,
    inbox: VecDeque<NodeCommand>,
    /// Records on this node's disk, by version (versions are unique cluster-wide).
    records: BTreeMap<ObjectVersion, (Key, DiskReplica)>,
    next_bucket: u64,
}

#[derive(Debug, Default)]
struct Model {
    last_grant: ObjectVersion,
    /// The latest grant per key: version and writer.
    grants: BTreeMap<Key, (ObjectVersion, NodeId)>,
    /// Complete objects as the master should have them.
    live: BTreeMap<Key, ObjectVersion>,
    /// Versions whose put ended or that a node recovered.
    completed: BTreeSet<ObjectVersion>,
    /// Versions a client removed: never to be seen again.
    removed: BTreeSet<ObjectVersion>,
    /// Versions the master dropped: seen again only if recovered from a disk.
    dropped: BTreeSet<ObjectVersion>,
    /// Versions the master asked some node to persist.
    persist_requested: BTreeSet<ObjectVersion>,
    /// Memory ranges granted and not reported freed: (segment, offset).
    ranges: BTreeSet<(SegmentId, u64)>,
    /// Memory ranges handed to readers: (segment, offset, len) -> end of the lease.
    /// No put may be granted bytes of one before its lease ends (segment ids are never
    /// reused, so a lost segment's leases need no clearing).
    leased: BTreeMap<(SegmentId, u64, u64), Instant>,
}

/// A master, simulated nodes, virtual time and the property checker.
#[derive(Debug)]
pub struct Cluster {
    master: Master,
    now: Instant,
    nodes: Vec<SimNode>,
    keys: u8,
    segment_kib: u16,
    next_segment: u64,
    model: Model,
    /// Flushes not answered yet, with the objects each must cover.
    flushes: Vec<(FlushTicket, Vec<(Key, ObjectVersion)>)>,
    /// A range reported freed that was not granted (or freed twice).
    bad_free: Option<(SegmentId, u64)>,
    stats: SimStats,
}

impl Cluster {
    /// A cluster of `nodes` nodes (those with an even index have an SSD tier), each with
    /// one segment of `segment_kib` KiB, over `keys` distinct keys.
    pub fn new(config: MasterConfig, nodes: u8, keys: u8, segment_kib: u16) -> Result<Self, Violation> {
        let master = Master::new(config).map_err(|e| Violation(format!("config: {e}")))?;
        let mut c = Self {
            master,
            now: Instant::from_nanos(1),
            nodes: (0..nodes.max(1))
                .map(|i| SimNode {
                    id: NodeId(u64::from(i) + 1),
                    incarnation: 1,
                    running: true,
                    storage: i % 2 == 0,
                    segments: Vec::new(),
                    inbox: VecDeque::new(),
                    records: BTreeMap::new(),
                    next_bucket: 0,
                })
                .collect(),
            keys: keys.max(1),
            segment_kib: segment_kib.max(4),
            next_segment: 1,
            model: Model::default(),
            flushes: Vec::new(),
            bad_free: None,
            stats: SimStats::default(),
        };
        for i in 0..c.nodes.len() {
            c.join(i)?;
        }
        Ok(c)
    }

    /// The master under test.
    pub fn master(&self) -> &Master {
        &self.master
    }

    /// What the run has exercised so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Applies one op and checks every property.
    pub fn apply(&mut self, op: Op) -> Result<(), Violation> {
        self.stats.ops += 1;
        match op {
            Op::PutStart { node, key, size_kib, replicas } => {
                self.put_start(node, key, size_kib, replicas)?
            }
            Op::PutEnd { key, by_other_node } => self.put_end(key, by_other_node)?,
            Op::PutRevoke { key } => self.put_revoke(key)?,
            Op::Get { key } => self.get(key)?,
            Op::Exists { key } => self.exists(key)?,
            Op::Remove { key, force } => self.remove(key, force)?,
            Op::RemoveAll { force } => self.remove_all(force)?,
            Op::Mount { node, size_kib } => {
                let i = self.node_index(node);
                if self.nodes[i].running {
                    self.mount(i, size_kib)?;
                }
            }
            Op::Unmount { node } => self.unmount(node)?,
            Op::Ping { node } => {
                let i = self.node_index(node);
                if self.nodes[i].running {
                    self.ping(i)?;
                }
            }
            Op::Restart { node } => {
                let i = self.node_index(node);
                let n = &mut self.nodes[i];
                n.incarnation += 1;
                n.running = true;
                n.segments.clear();
                n.inbox.clear();
                self.join(i)?;
            }
            Op::Stop { node } => {
                let i = self.node_index(node);
                self.nodes[i].running = false;
                self.nodes[i].inbox.clear();
            }
            Op::Advance { millis } => {
                self.now += Duration::from_millis(u64::from(millis));
                let nodes_before = self.master.stats().nodes;
                self.master.handle_timeout(self.now);
                self.stats.nodes_expired += nodes_before - self.master.stats().nodes;
            }
            Op::Deliver { node, fail_persists } => self.deliver(node, fail_persists)?,
            Op::ForgeDiskReplica { key, version_offset, recovered } => {
                self.forge(key, version_offset, recovered)?
            }
            Op::Flush => self.flush(),
        }
        self.route_outputs();
        if let Some(range) = self.bad_free.take() {
            return Err(Violation(format!(
                "after {op:?}: range {range:?} reported freed, but never granted or already freed"
            )));
        }
        self.check_flushes()?;
        self.master.verify().map_err(|e| Violation(format!("after {op:?}: {e}")))
    }

    fn flush(&mut self) {
        if self.flushes.len() >= 4 {
            return;
        }
        let ticket = self.master.handle_flush(self.now);
        // Only write-behind makes a flush a durability barrier (an offload-on-evict
        // persist is the eviction's business).
        let write_behind = self.master.config().persist == super::PersistPolicy::WriteBehind;
        let covered = self
            .model
            .live
            .iter()
            .filter(|(_, v)| write_behind && self.model.persist_requested.contains(v))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        self.flushes.push((ticket, covered));
    }

    /// Answers the flushes the master has settled, checking each answer.
    fn check_flushes(&mut self) -> Result<(), Violation> {
        let mut still = Vec::new();
        for (ticket, covered) in core::mem::take(&mut self.flushes) {
            let on_disk = |v: &ObjectVersion| self.nodes.iter().any(|n| n.records.contains_key(v));
            let live = |k: &Key, v: &ObjectVersion| self.model.live.get(k) == Some(v);
            match self.master.flush_status(&ticket) {
                FlushStatus::Pending => still.push((ticket, covered)),
                FlushStatus::Durable => {
                    for (k, v) in &covered {
                        ensure!(
                            !live(k, v) || on_disk(v),
                            "flush said durable but {k:?}@{v:?} is on no disk"
                        );
                    }
                    self.stats.flushes_durable += 1;
                }
                FlushStatus::NotDurable { objects } => {
                    ensure!(objects > 0, "not durable, with nothing missing");
                    let missing = self
                        .model
                        .live
                        .values()
                        .any(|v| self.model.persist_requested.contains(v) && !on_disk(v));
                    ensure!(missing, "flush said not durable but every live object is on a disk");
                    self.stats.flushes_not_durable += 1;
                }
            }
        }
        self.flushes = still;
        Ok(())
    }

    fn node_index(&self, node: u8) -> usize {
        usize::from(node) % self.nodes.len()
    }

    fn key(&self, key: u8) -> Key {
        Key::new(format!("key-{}", key % self.keys).as_bytes()).expect("short key")
    }

    /// Moves commands to node inboxes (lost if the node is down) and events into the
    /// model.
    fn route_outputs(&mut self) {
        while let Some(command) = self.master.poll_command() {
            if let NodeCommand::Persist { version, .. } = &command {
                self.model.persist_requested.insert(*version);
            }
            if let Some(n) = self.nodes.iter_mut().find(|n| n.id == command.node() && n.running) {
                n.inbox.push_back(command);
            }
        }
        while let Some(event) = self.master.poll_event() {
            let (key, version, reason) = match event {
                MasterEvent::ObjectDropped { key, version, reason } => (key, version, reason),
                MasterEvent::MemoryFreed { segment, offset, .. } => {
                    if !self.model.ranges.remove(&(segment, offset)) {
                        self.bad_free.get_or_insert((segment, offset));
                    }
                    continue;
                }
            };
            if reason == DropReason::Evicted {
                self.stats.evicted += 1;
            }
            self.model.dropped.insert(version);
            if self.model.live.get(&key) == Some(&version) {
                self.model.live.remove(&key);
            }
        }
    }

    /// Registers a node (ping), mounts a segment and re-registers its disk.
    fn join(&mut self, i: usize) -> Result<(), Violation> {
        let reply = self.ping(i)?;
        if reply == PingOutcome::Refreshed {
            return Ok(());
        }
        self.route_outputs();
        self.mount(i, self.segment_kib)
    }

    fn ping(&mut self, i: usize) -> Result<PingOutcome, Violation> {
        let n = &self.nodes[i];
        let reply = self.master.handle_ping(self.now, n.id, Incarnation(n.incarnation), n.storage);
        if reply.outcome != PingOutcome::Refreshed {
            // The master has no state for this run: mount afresh and re-register the disk
            // (after taking in what the master dropped when it forgot the old run).
            self.route_outputs();
            self.nodes[i].segments.clear();
            self.recover(i)?;
        }
        Ok(reply.outcome)
    }

    fn mount(&mut self, i: usize, size_kib: u16) -> Result<(), Violation> {
        let segment = SegmentId(self.next_segment);
        self.next_segment += 1;
        let size = u64::from(size_kib) * 1024;
        match self.master.handle_mount_segment(self.now, self.nodes[i].id, segment, size) {
            Ok(()) => self.nodes[i].segments.push(segment),
            Err(MasterError::InvalidSegmentSize) => ensure!(size < 4096, "segment of {size} refused"),
            Err(MasterError::NodeNotRegistered) => {}
            Err(e) => return Err(Violation(format!("mount failed: {e}"))),
        }
        Ok(())
    }

    fn unmount(&mut self, node: u8) -> Result<(), Violation> {
        let i = self.node_index(node);
        let Some(segment) = self.nodes[i].segments.pop() else { return Ok(()) };
        match self.master.handle_unmount_segment(self.now, self.nodes[i].id, segment) {
            Ok(()) => self.stats.unmounts += 1,
            // The master may have dropped the node (and its segments) already.
            Err(MasterError::SegmentNotFound) => {}
            Err(e) => return Err(Violation(format!("unmount of {segment:?} failed: {e}"))),
        }
        Ok(())
    }

    /// Re-registers every record on a node's disk; refused ones are deleted.
    fn recover(&mut self, i: usize) -> Result<(), Violation> {
        let records: Vec<(ObjectVersion, Key, DiskReplica)> =
            self.nodes[i].records.iter().map(|(v, (k, d))| (*v, k.clone(), *d)).collect();
        for (version, key, replica) in records {
            match self.master.handle_add_disk_replica(
                self.now,
                key.as_ref(),
                version,
                replica,
                DiskReplicaOrigin::Recovered,
            ) {
                Ok(()) => {
                    ensure!(
                        !self.model.removed.contains(&version),
                        "removed {key:?}@{version:?} was recovered"
                    );
                    self.stats.recovered += 1;
                    self.model.completed.insert(version);
                    self.model.dropped.remove(&version);
                    self.model.live.insert(key, version);
                }
                Err(MasterError::StaleVersion) => {
                    self.stats.recoveries_refused += 1;
                    self.delete_record(i, &key, version);
                }
                Err(e) => return Err(Violation(format!("recovery of {key:?}@{version:?} failed: {e}"))),
            }
        }
        Ok(())
    }

    /// Deletes a record and tells the master (which clears any tombstone for it).
    fn delete_record(&mut self, i: usize, key: &Key, version: ObjectVersion) {
        self.nodes[i].records.remove(&version);
        // Not found / stale answers are expected: the record was not registered.
        let _ = self.master.handle_remove_disk_replica(self.now, self.nodes[i].id, key.as_ref(), version);
    }

    fn put_start(&mut self, node: u8, key: u8, size_kib: u16, replicas: u8) -> Result<(), Violation> {
        let i = self.node_index(node);
        if !self.nodes[i].running {
            return Ok(());
        }
        let writer = self.nodes[i].id;
        let key = self.key(key);
        let size = u64::from(size_kib) * 1024;
        let replicas = replicas % 3;
        match self.master.handle_put_start(self.now, writer, key.as_ref(), size, replicas) {
            Ok(grant) => {
                ensure!(size > 0 && replicas > 0, "put of {size} bytes × {replicas} accepted");
                ensure!(grant.version > self.model.last_grant, "version went backwards: {:?}", grant.version);
                ensure!(!self.model.live.contains_key(&key), "put start over complete {key:?}");
                ensure!(grant.replicas.len() == usize::from(replicas), "wrong replica count");
                let mut segs: Vec<SegmentId> = grant.replicas.iter().map(|r| r.segment).collect();
                segs.sort_unstable();
                segs.dedup();
                ensure!(segs.len() == grant.replicas.len(), "replicas share a segment");
                ensure!(grant.replicas.iter().all(|r| r.len == size), "replica length differs");
                // Ranges the put's eviction freed are reported before the grant is read.
                self.route_outputs();
                for r in &grant.replicas {
                    ensure!(
                        self.model.ranges.insert((r.segment, r.offset)),
                        "range {r:?} granted again without being reported freed"
                    );
                    let now = self.now;
                    let overlapping = self.model.leased.iter().find(|((segment, offset, len), until)| {
                        *segment == r.segment
                            && *offset < r.offset + r.len
                            && r.offset < offset + len
                            && **until > now
                    });
                    ensure!(
                        overlapping.is_none(),
                        "range {r:?} granted inside a reader's lease: {overlapping:?}"
                    );
                }
                self.model.last_grant = grant.version;
                self.model.grants.insert(key, (grant.version, writer));
            }
            Err(MasterError::InvalidSize) => ensure!(size == 0, "size {size} refused"),
            Err(MasterError::InvalidReplicaCount) => ensure!(replicas == 0, "{replicas} replicas refused"),
            Err(MasterError::ObjectAlreadyExists) => {}
            Err(MasterError::NoSpace | MasterError::ObjectTooLarge) => {}
            Err(e) => return Err(Violation(format!("put start: unexpected {e}"))),
        }
        Ok(())
    }

    fn put_end(&mut self, key: u8, by_other_node: bool) -> Result<(), Violation> {
        let key = self.key(key);
        let Some(&(version, writer)) = self.model.grants.get(&key) else { return Ok(()) };
        let sender = if by_other_node { NodeId(writer.0 + 1000) } else { writer };
        match self.master.handle_put_end(self.now, sender, key.as_ref(), version, None) {
            Ok(()) => {
                ensure!(sender == writer, "put end accepted from a non-writer");
                ensure!(self.model.completed.insert(version), "{version:?} ended twice");
                self.model.live.insert(key, version);
                self.stats.puts_ended += 1;
            }
            Err(MasterError::NotWriter) => ensure!(sender != writer, "writer refused as non-writer"),
            Err(MasterError::PutNotInProgress | MasterError::ObjectNotFound) => {}
            Err(e) => return Err(Violation(format!("put end: unexpected {e}"))),
        }
        Ok(())
    }

    fn put_revoke(&mut self, key: u8) -> Result<(), Violation> {
        let key = self.key(key);
        let Some(&(version, writer)) = self.model.grants.get(&key) else { return Ok(()) };
        match self.master.handle_put_revoke(self.now, writer, key.as_ref(), version) {
            Ok(()) => ensure!(!self.model.completed.contains(&version), "revoked a completed put"),
            Err(MasterError::PutNotInProgress | MasterError::ObjectNotFound) => {}
            Err(e) => return Err(Violation(format!("put revoke: unexpected {e}"))),
        }
        Ok(())
    }

    fn get(&mut self, key: u8) -> Result<(), Violation> {
        let key = self.key(key);
        match self.master.handle_get_replica_list(self.now, key.as_ref()) {
            Ok(list) => {
                let v = list.version;
                ensure!(self.model.completed.contains(&v), "get returned {key:?}@{v:?}, never completed");
                ensure!(!self.model.removed.contains(&v), "get returned removed {key:?}@{v:?}");
                ensure!(!self.model.dropped.contains(&v), "get returned dropped {key:?}@{v:?}");
                ensure!(
                    self.model.live.get(&key) == Some(&v),
                    "get returned {v:?}, model has {:?}",
                    self.model.live.get(&key)
                );
                ensure!(!list.replicas.is_empty(), "empty replica list");
                let memory_first =
                    list.replicas.iter().skip_while(|r| matches!(r, ReplicaDescriptor::Memory(_)));
                let mut from_disk = true;
                for r in list.replicas.iter() {
                    if let ReplicaDescriptor::Memory(m) = r {
                        from_disk = false;
                        ensure!(m.len == list.size, "memory replica length");
                        ensure!(
                            self.model.ranges.contains(&(m.segment, m.offset)),
                            "get returned memory {m:?} that was reported freed"
                        );
                        let until = self.now + list.lease;
                        let lease = self.model.leased.entry((m.segment, m.offset, m.len)).or_insert(until);
                        *lease = until.max(*lease);
                    }
                }
                for r in memory_first {
                    let ReplicaDescriptor::Disk(d) = r else {
                        return Err(Violation(String::from("memory replica after a disk replica")));
                    };
                    let holder = self.nodes.iter().find(|n| n.id == d.node);
                    ensure!(
                        holder.is_some_and(|n| n.records.get(&v).is_some_and(|(_, rd)| rd == d)),
                        "disk replica {d:?} of {v:?} is not on its node's disk"
                    );
                }
                self.stats.gets_hit += 1;
                if from_disk {
                    self.stats.gets_from_disk += 1;
                }
            }
            Err(MasterError::ObjectNotFound) => {
                ensure!(!self.model.live.contains_key(&key), "complete {key:?} not found");
            }
            Err(MasterError::ReplicaNotReady) => {
                ensure!(!self.model.live.contains_key(&key), "complete {key:?} not ready");
            }
            Err(e) => return Err(Violation(format!("get: unexpected {e}"))),
        }
        Ok(())
    }

    fn exists(&mut self, key: u8) -> Result<(), Violation> {
        let key = self.key(key);
        let exists = self.master.handle_exists(self.now, key.as_ref());
        ensure!(exists == self.model.live.contains_key(&key), "exists({key:?}) = {exists}, model disagrees");
        Ok(())
    }

    fn remove(&mut self, key: u8, force: bool) -> Result<(), Violation> {
        let key = self.key(key);
        match self.master.handle_remove(self.now, key.as_ref(), force) {
            Ok(()) => {
                let v = self.model.live.remove(&key);
                ensure!(v.is_some(), "removed {key:?}, which the model does not have");
                self.model.removed.extend(v);
            }
            Err(MasterError::ObjectHasLease) => {
                ensure!(!force, "forced remove refused for a lease");
                self.stats.refused_for_lease += 1;
            }
            Err(MasterError::ObjectNotFound | MasterError::ReplicaNotReady) => {
                ensure!(!self.model.live.contains_key(&key), "remove of complete {key:?} refused");
            }
            Err(e) => return Err(Violation(format!("remove: unexpected {e}"))),
        }
        Ok(())
    }

    fn remove_all(&mut self, force: bool) -> Result<(), Violation> {
        let before = self.model.live.len() as u64;
        let summary = self.master.handle_remove_all(self.now, force);
        let live: Vec<(Key, ObjectVersion)> = self.model.live.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (key, version) in live {
            if !self.master.handle_exists(self.now, key.as_ref()) {
                self.model.live.remove(&key);
                self.model.removed.insert(version);
            }
        }
        let removed = before - self.model.live.len() as u64;
        ensure!(summary.removed == removed, "remove-all says {} removed, model {removed}", summary.removed);
        ensure!(!force || self.model.live.is_empty(), "forced remove-all left complete objects");
        Ok(())
    }

    fn deliver(&mut self, node: u8, fail_persists: bool) -> Result<(), Violation> {
        let i = self.node_index(node);
        while let Some(command) = self.nodes[i].inbox.pop_front() {
            match command {
                NodeCommand::Persist { key, version, source, .. } => {
                    self.persist(i, key, version, source.len, fail_persists)?;
                }
                NodeCommand::DropDiskReplica { key, version, .. } => self.delete_record(i, &key, version),
                NodeCommand::WipeDisk { .. } => self.nodes[i].records.clear(),
                // The master state machine never sends it (its server derives it from
                // `MemoryFreed` events).
                NodeCommand::ForgetRange { .. } => {}
            }
            self.route_outputs();
        }
        Ok(())
    }

    fn persist(
        &mut self,
        i: usize,
        key: Key,
        version: ObjectVersion,
        len: u64,
        fail: bool,
    ) -> Result<(), Violation> {
        let node = self.nodes[i].id;
        if fail || !self.nodes[i].storage {
            return match self.master.handle_persist_failed(self.now, node, key.as_ref(), version) {
                Ok(()) | Err(MasterError::ObjectNotFound | MasterError::StaleVersion) => Ok(()),
                Err(e) => Err(Violation(format!("persist failed: unexpected {e}"))),
            };
        }
        let n = &mut self.nodes[i];
        let replica =
            DiskReplica { node, bucket: BucketId(n.next_bucket), offset: 0, len, crc32c: version.0 as u32 };
        n.next_bucket += 1;
        n.records.insert(version, (key.clone(), replica));
        self.stats.persisted += 1;
        match self.master.handle_add_disk_replica(
            self.now,
            key.as_ref(),
            version,
            replica,
            DiskReplicaOrigin::Persisted,
        ) {
            Ok(()) => {
                ensure!(
                    self.model.live.get(&key) == Some(&version),
                    "persisted {key:?}@{version:?} is not live"
                );
            }
            // A record the master did not accept is deleted (and the deletion confirmed).
            Err(MasterError::StaleVersion | MasterError::ObjectNotFound | MasterError::NodeNotRegistered) => {
                self.delete_record(i, &key, version)
            }
            Err(e) => return Err(Violation(format!("add disk replica: unexpected {e}"))),
        }
        Ok(())
    }

    fn forge(&mut self, key: u8, offset: i8, recovered: bool) -> Result<(), Violation> {
        let key = self.key(key);
        let Some(&live) = self.model.live.get(&key) else { return Ok(()) };
        if offset == 0 {
            return Ok(());
        }
        let forged = ObjectVersion(live.0.saturating_add_signed(i64::from(offset)));
        let Some(holder) = self.nodes.iter().find(|n| n.running) else { return Ok(()) };
        let replica =
            DiskReplica { node: holder.id, bucket: BucketId(u64::MAX), offset: 0, len: 4096, crc32c: 0 };
        let origin = if recovered { DiskReplicaOrigin::Recovered } else { DiskReplicaOrigin::Persisted };
        self.stats.forgeries += 1;
        let result =
            self.master.handle_add_disk_replica(self.now, KeyRef::from(&key), forged, replica, origin);
        ensure!(result.is_err(), "forged registration of {key:?}@{forged:?} (live {live:?}) succeeded");
        Ok(())
    }
}
