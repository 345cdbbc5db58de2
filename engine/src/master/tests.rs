//! One test per rule and per error of the master's operation table.
//!
//! A refused request must leave the master exactly as it was: `refused` compares the
//! master's full `Debug` rendering (every table, queue and counter) before and after.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::descriptor::{DiskReplica, MemoryReplica, ReplicaDescriptor};
use crate::ids::{BucketId, SegmentId};
use crate::time::Duration;
use crate::wire::{
    DiskReplicaOrigin, NodeCommand, PersistReason, PingOutcome, RemoveAllSummary, ReplicaList, Request,
    Response, RestoredReplica,
};

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const SEG_A: SegmentId = SegmentId(10);
const SEG_B: SegmentId = SegmentId(20);
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn at(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

fn k(s: &str) -> KeyRef<'_> {
    KeyRef::new(s.as_bytes()).unwrap()
}

fn master(config: MasterConfig, storage: bool, segment_size: u64) -> Master {
    let mut m = Master::new(config).unwrap();
    assert_eq!(m.handle_ping(at(0), A, Incarnation(1), storage).outcome, PingOutcome::Registered);
    m.handle_mount_segment(at(0), A, SEG_A, segment_size).unwrap();
    m
}

/// A master with one node (no SSD tier) and one 1 MiB segment.
fn plain() -> Master {
    master(MasterConfig::default(), false, MIB)
}

/// A master with one node with an SSD tier and one 1 MiB segment.
fn with_storage() -> Master {
    master(MasterConfig::default(), true, MIB)
}

fn put(m: &mut Master, now: Instant, key: &str, size: u64) -> ObjectVersion {
    let grant = m.handle_put_start(now, A, k(key), size, 1).unwrap();
    m.handle_put_end(now, A, k(key), grant.version, None).unwrap();
    grant.version
}

fn snapshot(m: &Master) -> String {
    format!("{m:?}")
}

/// Runs `op`, checks it fails with `expected`, and that nothing changed.
#[track_caller]
fn refused<T: core::fmt::Debug>(
    m: &mut Master,
    expected: MasterError,
    op: impl FnOnce(&mut Master) -> Result<T, MasterError>,
) {
    let before = snapshot(m);
    let result = op(m);
    assert_eq!(result.err(), Some(expected));
    assert_eq!(snapshot(m), before, "a refused request changed the master");
    m.verify().unwrap();
}

fn commands(m: &mut Master) -> Vec<NodeCommand> {
    core::iter::from_fn(|| m.poll_command()).collect()
}

/// The objects dropped since the last call (memory frees are left out: see
/// `freed`).
fn events(m: &mut Master) -> Vec<MasterEvent> {
    core::iter::from_fn(|| m.poll_event())
        .filter(|e| matches!(e, MasterEvent::ObjectDropped { .. }))
        .collect()
}

/// The memory ranges freed since the last call, as (segment, offset).
fn freed(m: &mut Master) -> Vec<(SegmentId, u64)> {
    core::iter::from_fn(|| m.poll_event())
        .filter_map(|e| match e {
            MasterEvent::MemoryFreed { segment, offset, .. } => Some((segment, offset)),
            MasterEvent::ObjectDropped { .. } => None,
        })
        .collect()
}

fn disk(node: NodeId, len: u64) -> DiskReplica {
    DiskReplica { node, bucket: BucketId(1), offset: 0, len, crc32c: 7 }
}

fn memory_replicas(list: &ReplicaList) -> usize {
    list.replicas.iter().filter(|r| matches!(r, ReplicaDescriptor::Memory(_))).count()
}

// ----- configuration ------------------------------------------------------------------

#[test]
fn bad_configs_are_refused() {
    let bad = |f: fn(&mut MasterConfig)| {
        let mut c = MasterConfig::default();
        f(&mut c);
        Master::new(c).err()
    };
    assert_eq!(bad(|c| c.low_watermark = 0.95), Some(ConfigError::Watermarks));
    assert_eq!(bad(|c| c.high_watermark = 1.5), Some(ConfigError::Watermarks));
    assert_eq!(bad(|c| c.low_watermark = 0.0), Some(ConfigError::Watermarks));
    assert_eq!(bad(|c| c.granule = 3000), Some(ConfigError::Granule));
    assert_eq!(bad(|c| c.granule = 32), Some(ConfigError::Granule));
    assert_eq!(bad(|c| c.max_replicas = 0), Some(ConfigError::MaxReplicas));
    assert_eq!(bad(|c| c.max_replicas = 200), Some(ConfigError::MaxReplicas));
    assert_eq!(bad(|c| c.first_version = ObjectVersion(0)), Some(ConfigError::FirstVersion));
}

// ----- put start ----------------------------------------------------------------------

#[test]
fn put_start_allocates_granule_aligned_processing_replicas() {
    let mut m = plain();
    let g = m.handle_put_start(at(1), A, k("a"), 5000, 1).unwrap();
    assert_eq!(g.replicas.len(), 1);
    let r = g.replicas[0];
    assert_eq!((r.segment, r.len), (SEG_A, 5000));
    assert_eq!(r.offset % 4096, 0);
    // Two granules are in use, and the object is not readable yet.
    assert_eq!(m.stats().used_bytes, 8192);
    assert_eq!(m.handle_get_replica_list(at(1), k("a")).err(), Some(MasterError::ReplicaNotReady));
    assert!(!m.handle_exists(at(1), k("a")));
    m.verify().unwrap();
}

#[test]
fn put_start_refuses_empty_values() {
    let mut m = plain();
    refused(&mut m, MasterError::InvalidSize, |m| m.handle_put_start(at(1), A, k("a"), 0, 1));
}

#[test]
fn put_start_refuses_bad_replica_counts() {
    let mut m = plain();
    refused(&mut m, MasterError::InvalidReplicaCount, |m| m.handle_put_start(at(1), A, k("a"), 10, 0));
    refused(&mut m, MasterError::InvalidReplicaCount, |m| m.handle_put_start(at(1), A, k("a"), 10, 5));
}

#[test]
fn put_start_refuses_a_complete_object() {
    let mut m = plain();
    put(&mut m, at(1), "a", 100);
    refused(&mut m, MasterError::ObjectAlreadyExists, |m| m.handle_put_start(at(2), A, k("a"), 100, 1));
}

#[test]
fn put_start_refuses_a_young_put_in_progress() {
    let mut m = plain();
    m.handle_put_start(at(0), A, k("a"), 100, 1).unwrap();
    let just_before = at(29_999);
    refused(&mut m, MasterError::ObjectAlreadyExists, |m| m.handle_put_start(just_before, B, k("a"), 100, 1));
}

#[test]
fn put_start_preempts_a_stale_put_in_progress() {
    let mut m = plain();
    let old = m.handle_put_start(at(0), A, k("a"), 100, 1).unwrap();
    let new = m.handle_put_start(at(30_000), B, k("a"), 100, 1).unwrap();
    assert!(new.version > old.version);
    assert_eq!(m.stats().objects, 1);
    assert_eq!(m.stats().used_bytes, 4096, "the preempted replica was freed");
    assert_eq!(
        events(&mut m),
        [MasterEvent::ObjectDropped {
            key: k("a").to_key(),
            version: old.version,
            reason: DropReason::Preempted
        }]
    );
    // The preempted writer can no longer end its put; the new one can.
    assert_eq!(
        m.handle_put_end(at(30_001), A, k("a"), old.version, None),
        Err(MasterError::PutNotInProgress)
    );
    m.handle_put_end(at(30_001), B, k("a"), new.version, None).unwrap();
    m.verify().unwrap();
}

#[test]
fn put_start_refuses_values_no_segment_can_hold() {
    let mut m = plain();
    refused(&mut m, MasterError::ObjectTooLarge, |m| m.handle_put_start(at(1), A, k("a"), MIB + 1, 1));
}

#[test]
fn put_start_with_no_segment_mounted_is_no_space_not_too_large() {
    let mut m = Master::new(MasterConfig::default()).unwrap();
    m.handle_ping(at(0), A, Incarnation(1), false);
    refused(&mut m, MasterError::NoSpace, |m| m.handle_put_start(at(1), A, k("a"), 100, 1));
}

#[test]
fn put_start_needs_enough_segments_for_the_replicas() {
    let mut m = plain();
    refused(&mut m, MasterError::NoSpace, |m| m.handle_put_start(at(1), A, k("a"), 100, 2));
    m.handle_mount_segment(at(1), A, SEG_B, MIB).unwrap();
    let g = m.handle_put_start(at(1), A, k("a"), 100, 2).unwrap();
    assert_ne!(g.replicas[0].segment, g.replicas[1].segment, "replicas go to distinct segments");
    m.verify().unwrap();
}

#[test]
fn put_start_fails_with_no_space_when_everything_is_leased() {
    let mut m = plain();
    for i in 0..4 {
        put(&mut m, at(1), &format!("k{i}"), 256 * KIB);
        m.handle_get_replica_list(at(1), k(&format!("k{i}"))).unwrap();
    }
    assert_eq!(m.handle_put_start(at(2), A, k("x"), 256 * KIB, 1).err(), Some(MasterError::NoSpace));
    assert_eq!(m.stats().objects, 4, "leased objects were not evicted");
    m.verify().unwrap();
}

#[test]
fn versions_strictly_increase() {
    let mut m = plain();
    let mut last = ObjectVersion(0);
    for i in 0..20 {
        let v = put(&mut m, at(i), &format!("k{i}"), 10);
        assert!(v > last);
        last = v;
    }
}

// ----- put end / revoke ---------------------------------------------------------------

#[test]
fn put_end_makes_the_object_readable() {
    let mut m = plain();
    let v = put(&mut m, at(1), "a", 100);
    let list = m.handle_get_replica_list(at(2), k("a")).unwrap();
    assert_eq!((list.version, list.size, list.replicas.len()), (v, 100, 1));
    assert!(m.handle_exists(at(2), k("a")));
}

#[test]
fn put_end_is_refused_to_a_non_writer() {
    let mut m = plain();
    let g = m.handle_put_start(at(1), A, k("a"), 100, 1).unwrap();
    refused(&mut m, MasterError::NotWriter, |m| m.handle_put_end(at(2), B, k("a"), g.version, None));
    refused(&mut m, MasterError::NotWriter, |m| m.handle_put_revoke(at(2), B, k("a"), g.version));
}

#[test]
fn a_second_put_end_is_refused() {
    let mut m = plain();
    let v = put(&mut m, at(1), "a", 100);
    refused(&mut m, MasterError::PutNotInProgress, |m| m.handle_put_end(at(2), A, k("a"), v, None));
    refused(&mut m, MasterError::PutNotInProgress, |m| m.handle_put_revoke(at(2), A, k("a"), v));
}

#[test]
fn put_end_of_another_version_or_key_is_refused() {
    let mut m = plain();
    let g = m.handle_put_start(at(1), A, k("a"), 100, 1).unwrap();
    refused(&mut m, MasterError::PutNotInProgress, |m| {
        m.handle_put_end(at(2), A, k("a"), g.version.next(), None)
    });
    refused(&mut m, MasterError::ObjectNotFound, |m| m.handle_put_end(at(2), A, k("b"), g.version, None));
}

#[test]
fn put_revoke_frees_the_replicas_and_the_key() {
    let mut m = plain();
    let g = m.handle_put_start(at(1), A, k("a"), 100, 1).unwrap();
    m.handle_put_revoke(at(2), A, k("a"), g.version).unwrap();
    assert_eq!(m.stats().used_bytes, 0);
    assert_eq!(m.stats().objects, 0);
    assert!(events(&mut m).is_empty(), "a revoke is the writer's choice, not a drop");
    put(&mut m, at(3), "a", 100);
    m.verify().unwrap();
}

/// Every range freed is reported, whatever frees it: a revoke, a remove, an eviction;
/// a range still in use never is.
#[test]
fn every_freed_memory_range_is_reported_to_its_holder() {
    let mut m = plain();
    let revoked = m.handle_put_start(at(1), A, k("revoked"), 100, 1).unwrap();
    m.handle_put_revoke(at(1), A, k("revoked"), revoked.version).unwrap();
    assert_eq!(freed(&mut m), [(SEG_A, revoked.replicas[0].offset)]);
    let kept = m.handle_put_start(at(1), A, k("kept"), 100, 1).unwrap();
    m.handle_put_end(at(1), A, k("kept"), kept.version, None).unwrap();
    let removed = m.handle_put_start(at(1), A, k("removed"), 100, 1).unwrap();
    m.handle_put_end(at(1), A, k("removed"), removed.version, None).unwrap();
    assert!(freed(&mut m).is_empty());
    m.handle_remove(at(2), k("removed"), false).unwrap();
    assert_eq!(freed(&mut m), [(SEG_A, removed.replicas[0].offset)]);
    // Eviction (memory only): every object it drops frees its range, and says so.
    fill(&mut m, 15);
    let all: Vec<MasterEvent> = core::iter::from_fn(|| m.poll_event()).collect();
    let drops = all.iter().filter(|e| matches!(e, MasterEvent::ObjectDropped { .. })).count();
    let frees = all.iter().filter(|e| matches!(e, MasterEvent::MemoryFreed { .. })).count();
    assert!(drops > 0);
    assert_eq!(frees, drops, "each evicted object's range is reported freed: {all:?}");
    m.verify().unwrap();
}

#[test]
fn abandoned_puts_are_discarded_after_the_timeout() {
    let mut m = plain();
    let g = m.handle_put_start(at(0), A, k("a"), 100, 1).unwrap();
    assert_eq!(m.poll_timeout(), Some(at(10_000)), "the node TTL comes first");
    m.handle_ping(at(9_000), A, Incarnation(1), false);
    m.handle_ping(at(18_000), A, Incarnation(1), false);
    m.handle_ping(at(27_000), A, Incarnation(1), false);
    assert_eq!(m.poll_timeout(), Some(at(30_000)));
    m.handle_timeout(at(29_999));
    assert_eq!(m.stats().objects, 1);
    m.handle_timeout(at(30_000));
    assert_eq!(m.stats().objects, 0);
    assert_eq!(m.stats().used_bytes, 0);
    assert_eq!(
        events(&mut m),
        [MasterEvent::ObjectDropped {
            key: k("a").to_key(),
            version: g.version,
            reason: DropReason::Discarded
        }]
    );
    m.verify().unwrap();
}

#[test]
fn a_put_that_ended_is_not_discarded() {
    let mut m = plain();
    put(&mut m, at(0), "a", 100);
    m.handle_ping(at(29_000), A, Incarnation(1), false);
    m.handle_timeout(at(30_000));
    assert!(m.handle_exists(at(30_000), k("a")));
}

// ----- reads --------------------------------------------------------------------------

#[test]
fn get_of_an_unknown_key_is_not_found() {
    let mut m = plain();
    refused(&mut m, MasterError::ObjectNotFound, |m| m.handle_get_replica_list(at(1), k("nope")));
    assert!(!m.handle_exists(at(1), k("nope")));
}

#[test]
fn get_lists_memory_replicas_before_disk_replicas() {
    let mut m = with_storage();
    let v = put(&mut m, at(1), "a", 100);
    m.handle_add_disk_replica(at(1), k("a"), v, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    let list = m.handle_get_replica_list(at(2), k("a")).unwrap();
    assert!(matches!(
        list.replicas[0],
        ReplicaDescriptor::Memory(MemoryReplica { segment: SEG_A, len: 100, .. })
    ));
    assert_eq!(list.replicas[1], ReplicaDescriptor::Disk(disk(A, 100)));
}

#[test]
fn a_replica_list_never_holds_more_than_a_message_can_carry() {
    let mut m = with_storage();
    let v = put(&mut m, at(1), "a", 100);
    for n in 2..40 {
        let node = NodeId(n);
        m.handle_ping(at(1), node, Incarnation(1), true);
        m.handle_add_disk_replica(at(1), k("a"), v, disk(node, 100), DiskReplicaOrigin::Persisted).unwrap();
    }
    let list = m.handle_get_replica_list(at(2), k("a")).unwrap();
    assert_eq!(list.replicas.len(), crate::wire::MAX_REPLICAS);
    assert!(matches!(list.replicas[0], ReplicaDescriptor::Memory(_)), "memory first");
    let message = crate::wire::Message::Response(crate::wire::Response::GetReplicaList(Ok(list)));
    assert!(message.encoded_len().is_ok(), "the answer encodes");
}

#[test]
fn locate_names_the_node_that_mounted_a_segment() {
    let mut m = plain();
    let located = m.handle_request(at(1), &crate::wire::Request::Locate { segment: SEG_A });
    let owner = crate::wire::Location { node: A, serves: None };
    assert_eq!(located, crate::wire::Response::Locate(Ok(owner)));
    let unknown = m.handle_request(at(1), &crate::wire::Request::Locate { segment: SEG_B });
    assert_eq!(unknown, crate::wire::Response::Locate(Err(MasterError::SegmentNotFound)));
}

#[test]
fn get_grants_a_lease_that_blocks_remove_until_it_expires() {
    let mut m = plain();
    put(&mut m, at(0), "a", 100);
    let list = m.handle_get_replica_list(at(1_000), k("a")).unwrap();
    assert_eq!(list.lease, Duration::from_secs(10));
    refused(&mut m, MasterError::ObjectHasLease, |m| m.handle_remove(at(10_999), k("a"), false));
    m.handle_remove(at(11_000), k("a"), false).unwrap();
    assert!(!m.handle_exists(at(11_000), k("a")));
}

#[test]
fn a_later_read_extends_the_lease_an_earlier_one_does_not_shorten_it() {
    let mut m = plain();
    put(&mut m, at(0), "a", 100);
    m.handle_get_replica_list(at(5_000), k("a")).unwrap();
    m.handle_get_replica_list(at(1_000), k("a")).unwrap();
    assert_eq!(m.handle_remove(at(14_000), k("a"), false), Err(MasterError::ObjectHasLease));
}

// ----- remove -------------------------------------------------------------------------

#[test]
fn remove_of_an_unknown_key_is_refused() {
    let mut m = plain();
    refused(&mut m, MasterError::ObjectNotFound, |m| m.handle_remove(at(1), k("a"), false));
    refused(&mut m, MasterError::ObjectNotFound, |m| m.handle_remove(at(1), k("a"), true));
}

#[test]
fn remove_of_a_put_in_progress_is_refused_even_forced() {
    let mut m = plain();
    m.handle_put_start(at(1), A, k("a"), 100, 1).unwrap();
    refused(&mut m, MasterError::ReplicaNotReady, |m| m.handle_remove(at(1), k("a"), false));
    refused(&mut m, MasterError::ReplicaNotReady, |m| m.handle_remove(at(1), k("a"), true));
}

#[test]
fn a_forced_remove_keeps_a_leased_range_from_other_puts_until_the_lease_passes() {
    let config = MasterConfig { node_ttl: Duration::from_secs(60), ..MasterConfig::default() };
    let mut m = master(config, false, MIB);
    put(&mut m, at(0), "a", MIB);
    m.handle_get_replica_list(at(0), k("a")).unwrap();
    m.handle_remove(at(1), k("a"), true).unwrap();
    // The object is gone at once, and its node is told so at once.
    assert!(!m.handle_exists(at(1), k("a")));
    assert_eq!(freed(&mut m), [(SEG_A, 0)]);
    // Its bytes stay where the lease holder may still read them.
    assert_eq!((m.stats().used_bytes, m.stats().quarantined_bytes), (MIB, MIB));
    assert_eq!(m.poll_timeout(), Some(at(10_000)));
    refused(&mut m, MasterError::NoSpace, |m| m.handle_put_start(at(2), A, k("b"), MIB, 1));
    m.handle_timeout(at(9_999));
    refused(&mut m, MasterError::NoSpace, |m| m.handle_put_start(at(9_999), A, k("b"), MIB, 1));
    m.handle_timeout(at(10_000));
    assert_eq!((m.stats().used_bytes, m.stats().quarantined_bytes), (0, 0));
    assert_eq!(freed(&mut m), [], "announced once, at the remove");
    let g = m.handle_put_start(at(10_000), A, k("b"), MIB, 1).unwrap();
    assert_eq!(g.replicas[0].offset, 0);
    m.verify().unwrap();
}

#[test]
fn a_remove_after_the_lease_frees_the_range_at_once() {
    let mut m = plain();
    put(&mut m, at(0), "a", MIB);
    m.handle_get_replica_list(at(0), k("a")).unwrap();
    m.handle_remove(at(10_000), k("a"), true).unwrap();
    assert_eq!(m.stats().used_bytes, 0);
    m.handle_put_start(at(10_000), A, k("b"), MIB, 1).unwrap();
    m.verify().unwrap();
}

#[test]
fn a_forced_remove_all_quarantines_the_leased_objects_ranges_only() {
    let mut m = plain();
    put(&mut m, at(0), "leased", 100);
    put(&mut m, at(0), "free", 100);
    m.handle_get_replica_list(at(0), k("leased")).unwrap();
    assert_eq!(m.handle_remove_all(at(1), true), RemoveAllSummary { removed: 2, skipped: 0 });
    assert_eq!(freed(&mut m).len(), 2);
    assert_eq!((m.stats().used_bytes, m.stats().quarantined_bytes), (4096, 4096));
    m.handle_ping(at(9_000), A, Incarnation(1), false);
    m.handle_timeout(at(9_999));
    assert_eq!(m.stats().used_bytes, 4096);
    m.handle_timeout(at(10_000));
    assert_eq!((m.stats().segments, m.stats().used_bytes), (1, 0));
    m.verify().unwrap();
}

#[test]
fn a_leased_range_pinned_by_a_persist_is_quarantined_once_the_persist_ends() {
    let mut m = with_storage();
    let v = put(&mut m, at(0), "a", 100);
    commands(&mut m);
    m.handle_get_replica_list(at(0), k("a")).unwrap();
    m.handle_remove(at(1), k("a"), true).unwrap();
    assert_eq!(m.stats().pinned_removed, 1);
    assert_eq!(
        m.handle_add_disk_replica(at(3), k("a"), v, disk(A, 100), DiskReplicaOrigin::Persisted),
        Err(MasterError::StaleVersion)
    );
    assert_eq!(m.stats().pinned_removed, 0);
    assert_eq!((m.stats().used_bytes, m.stats().quarantined_bytes), (4096, 4096));
    m.handle_ping(at(9_000), A, Incarnation(1), true);
    m.handle_timeout(at(9_999));
    assert_eq!(m.stats().used_bytes, 4096);
    m.handle_timeout(at(10_000));
    assert_eq!((m.stats().segments, m.stats().used_bytes), (1, 0));
    m.verify().unwrap();
}

#[test]
fn a_quarantined_range_goes_with_its_segment_when_the_node_is_lost() {
    let config = MasterConfig { lease_ttl: Duration::from_secs(60), ..MasterConfig::default() };
    let mut m = master(config, false, MIB);
    put(&mut m, at(0), "a", MIB);
    m.handle_get_replica_list(at(0), k("a")).unwrap();
    m.handle_remove(at(1), k("a"), true).unwrap();
    m.handle_timeout(at(10_000));
    assert_eq!(m.stats().segments, 0, "the node expired");
    assert_eq!((m.stats().used_bytes, m.stats().quarantined_bytes), (0, 0));
    m.verify().unwrap();
    // Back with a fresh segment: the lease's end frees nothing of it.
    m.handle_ping(at(55_000), A, Incarnation(2), false);
    m.handle_mount_segment(at(55_000), A, SEG_A, MIB).unwrap();
    m.handle_timeout(at(60_000));
    m.handle_put_start(at(60_000), A, k("b"), MIB, 1).unwrap();
    m.verify().unwrap();
}

#[test]
fn remove_drops_disk_replicas_with_a_tombstone_until_the_node_confirms() {
    let mut m = with_storage();
    let v = put(&mut m, at(0), "a", 100);
    commands(&mut m);
    m.handle_add_disk_replica(at(0), k("a"), v, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    m.handle_remove(at(1), k("a"), false).unwrap();
    assert_eq!(
        commands(&mut m),
        [NodeCommand::DropDiskReplica { node: A, key: k("a").to_key(), version: v, replica: disk(A, 100) }]
    );
    assert_eq!(m.stats().tombstones, 1);
    // The node restarts before deleting the record: its recovered registration is refused.
    m.handle_ping(at(2), A, Incarnation(2), true);
    refused(&mut m, MasterError::StaleVersion, |m| {
        m.handle_add_disk_replica(at(3), k("a"), v, disk(A, 100), DiskReplicaOrigin::Recovered)
    });
    // The node deletes the record and confirms: the tombstone goes.
    m.handle_remove_disk_replica(at(4), A, k("a"), v).unwrap();
    assert_eq!(m.stats().tombstones, 0);
    m.verify().unwrap();
}

#[test]
fn remove_during_a_persist_pins_the_memory_until_the_node_answers() {
    let mut m = with_storage();
    let v = put(&mut m, at(0), "a", 100);
    assert!(matches!(
        &commands(&mut m)[..],
        [NodeCommand::Persist { reason: PersistReason::WriteBehind, .. }]
    ));
    m.handle_remove(at(1), k("a"), false).unwrap();
    assert_eq!(m.stats().used_bytes, 4096, "the node may still be reading the value");
    assert_eq!(m.stats().pinned_removed, 1);
    // A new put of the key cannot reuse the pinned bytes.
    let g = m.handle_put_start(at(2), A, k("a"), 100, 1).unwrap();
    assert_eq!(m.stats().used_bytes, 8192);
    // The persist finishes: the record is refused and the memory freed.
    assert_eq!(
        m.handle_add_disk_replica(at(3), k("a"), v, disk(A, 100), DiskReplicaOrigin::Persisted),
        Err(MasterError::StaleVersion)
    );
    assert_eq!(m.stats().used_bytes, 4096);
    assert_eq!(m.stats().pinned_removed, 0);
    m.handle_put_end(at(3), A, k("a"), g.version, None).unwrap();
    m.verify().unwrap();
}

// ----- remove all ---------------------------------------------------------------------

#[test]
fn remove_all_skips_leased_and_in_progress_objects_unless_forced() {
    let mut m = plain();
    put(&mut m, at(0), "free", 100);
    put(&mut m, at(0), "leased", 100);
    m.handle_get_replica_list(at(0), k("leased")).unwrap();
    m.handle_put_start(at(0), A, k("writing"), 100, 1).unwrap();
    assert_eq!(m.handle_remove_all(at(1), false), RemoveAllSummary { removed: 1, skipped: 2 });
    assert!(m.handle_exists(at(1), k("leased")));
    assert_eq!(m.handle_remove_all(at(1), true), RemoveAllSummary { removed: 1, skipped: 1 });
    assert_eq!(m.stats().objects, 1, "the put in progress survives even a forced remove-all");
    m.verify().unwrap();
}

#[test]
fn remove_all_wipes_nodes_and_refuses_older_recovered_records() {
    let mut m = with_storage();
    let v = put(&mut m, at(0), "a", 100);
    m.handle_add_disk_replica(at(0), k("a"), v, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    commands(&mut m);
    assert_eq!(m.handle_remove_all(at(1), false).removed, 1);
    assert_eq!(commands(&mut m), [NodeCommand::WipeDisk { node: A }]);
    assert_eq!(m.stats().tombstones, 0, "the wipe floor covers every removed record");
    m.handle_ping(at(2), A, Incarnation(2), true);
    refused(&mut m, MasterError::StaleVersion, |m| {
        m.handle_add_disk_replica(at(3), k("a"), v, disk(A, 100), DiskReplicaOrigin::Recovered)
    });
}

#[test]
fn remove_all_drops_records_one_by_one_when_a_survivor_has_records_on_the_node() {
    let mut m = with_storage();
    let va = put(&mut m, at(0), "a", 100);
    let vb = put(&mut m, at(0), "b", 100);
    m.handle_add_disk_replica(at(0), k("a"), va, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    m.handle_add_disk_replica(at(0), k("b"), vb, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    commands(&mut m);
    m.handle_get_replica_list(at(0), k("b")).unwrap();
    assert_eq!(m.handle_remove_all(at(1), false), RemoveAllSummary { removed: 1, skipped: 1 });
    assert_eq!(
        commands(&mut m),
        [NodeCommand::DropDiskReplica { node: A, key: k("a").to_key(), version: va, replica: disk(A, 100) }]
    );
    // The survivor's record stays registerable after a restart.
    m.handle_ping(at(2), A, Incarnation(2), true);
    m.handle_add_disk_replica(at(3), k("b"), vb, disk(A, 100), DiskReplicaOrigin::Recovered).unwrap();
    m.verify().unwrap();
}

// ----- segments -----------------------------------------------------------------------

#[test]
fn mount_needs_a_registered_node() {
    let mut m = Master::new(MasterConfig::default()).unwrap();
    refused(&mut m, MasterError::NodeNotRegistered, |m| m.handle_mount_segment(at(0), A, SEG_A, MIB));
}

#[test]
fn mount_of_an_already_mounted_segment_id_is_refused() {
    let mut m = plain();
    m.handle_ping(at(0), B, Incarnation(1), false);
    refused(&mut m, MasterError::SegmentAlreadyMounted, |m| m.handle_mount_segment(at(0), A, SEG_A, MIB));
    refused(&mut m, MasterError::SegmentAlreadyMounted, |m| m.handle_mount_segment(at(0), B, SEG_A, 2 * MIB));
}

#[test]
fn mount_of_a_segment_below_one_granule_is_refused() {
    let mut m = plain();
    refused(&mut m, MasterError::InvalidSegmentSize, |m| m.handle_mount_segment(at(0), A, SEG_B, 0));
    refused(&mut m, MasterError::InvalidSegmentSize, |m| m.handle_mount_segment(at(0), A, SEG_B, 4095));
    refused(&mut m, MasterError::InvalidSegmentSize, |m| m.handle_mount_segment(at(0), A, SEG_B, u64::MAX));
    m.handle_mount_segment(at(0), A, SEG_B, 4096 + 100).unwrap();
    assert_eq!(m.stats().capacity_bytes, MIB + 4096, "size is rounded down to whole granules");
}

#[test]
fn unmount_of_an_unknown_or_foreign_segment_is_refused() {
    let mut m = plain();
    m.handle_ping(at(0), B, Incarnation(1), false);
    refused(&mut m, MasterError::SegmentNotFound, |m| m.handle_unmount_segment(at(0), A, SEG_B));
    refused(&mut m, MasterError::NotSegmentOwner, |m| m.handle_unmount_segment(at(0), B, SEG_A));
}

#[test]
fn unmount_drops_its_replicas_and_cancels_puts_in_progress() {
    let mut m = with_storage();
    m.handle_mount_segment(at(0), A, SEG_B, MIB).unwrap();
    let v_disk = put(&mut m, at(0), "on-disk-too", 100);
    m.handle_add_disk_replica(at(0), k("on-disk-too"), v_disk, disk(A, 100), DiskReplicaOrigin::Persisted)
        .unwrap();
    let v_mem = put(&mut m, at(0), "memory-only", 100);
    let writing = m.handle_put_start(at(0), A, k("writing"), 100, 1).unwrap();
    let two = m.handle_put_start(at(0), A, k("two"), 100, 2).unwrap();
    m.handle_put_end(at(0), A, k("two"), two.version, None).unwrap();
    commands(&mut m);
    events(&mut m);
    // Unmount whichever segment holds "memory-only".
    let seg = m.handle_get_replica_list(at(0), k("memory-only")).unwrap().replicas[0];
    let ReplicaDescriptor::Memory(MemoryReplica { segment, .. }) = seg else { panic!() };
    let disk_obj_seg = m.handle_get_replica_list(at(0), k("on-disk-too")).unwrap().replicas[0];
    let writing_seg = writing.replicas[0].segment;
    m.handle_unmount_segment(at(1), A, segment).unwrap();

    assert!(!m.handle_exists(at(1), k("memory-only")));
    assert!(events(&mut m).contains(&MasterEvent::ObjectDropped {
        key: k("memory-only").to_key(),
        version: v_mem,
        reason: DropReason::SegmentUnmounted
    }));
    // The two-replica object keeps the replica on the other segment.
    assert_eq!(memory_replicas(&m.handle_get_replica_list(at(1), k("two")).unwrap()), 1);
    // An object with a disk replica survives, on disk at least.
    assert!(m.handle_exists(at(1), k("on-disk-too")));
    if matches!(disk_obj_seg, ReplicaDescriptor::Memory(r) if r.segment == segment) {
        assert_eq!(memory_replicas(&m.handle_get_replica_list(at(1), k("on-disk-too")).unwrap()), 0);
    }
    if writing_seg == segment {
        assert_eq!(
            m.handle_put_end(at(1), A, k("writing"), writing.version, None),
            Err(MasterError::ObjectNotFound)
        );
    }
    assert_eq!(m.stats().segments, 1);
    m.verify().unwrap();
}

// ----- nodes --------------------------------------------------------------------------

#[test]
fn ping_registers_refreshes_and_detects_restarts() {
    let mut m = Master::new(MasterConfig::default()).unwrap();
    assert_eq!(m.handle_ping(at(0), A, Incarnation(1), true).outcome, PingOutcome::Registered);
    assert_eq!(m.handle_ping(at(1), A, Incarnation(1), true).outcome, PingOutcome::Refreshed);
    assert_eq!(m.handle_ping(at(2), A, Incarnation(2), true).outcome, PingOutcome::Restarted);
    assert_eq!(m.handle_ping(at(2), A, Incarnation(2), true).node_ttl, Duration::from_secs(10));
}

#[test]
fn a_restarted_node_loses_what_its_old_run_contributed() {
    let mut m = with_storage();
    let v = put(&mut m, at(0), "a", 100);
    m.handle_add_disk_replica(at(0), k("a"), v, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    m.handle_put_start(at(0), A, k("writing"), 100, 1).unwrap();
    m.handle_ping(at(1), A, Incarnation(2), true);
    assert_eq!(m.stats().segments, 0);
    assert_eq!(m.stats().objects, 0);
    // It re-registers what it recovered from disk; the object comes back, disk only.
    m.handle_add_disk_replica(at(2), k("a"), v, disk(A, 100), DiskReplicaOrigin::Recovered).unwrap();
    let list = m.handle_get_replica_list(at(2), k("a")).unwrap();
    assert_eq!((list.version, list.replicas.len()), (v, 1));
    m.verify().unwrap();
}

#[test]
fn a_lost_nodes_records_go_offline_and_a_remove_still_tombstones_them() {
    // The value lives in B's memory; A holds its only disk record.
    let mut m = master(MasterConfig::default(), true, MIB);
    m.handle_ping(at(0), B, Incarnation(1), false);
    m.handle_unmount_segment(at(0), A, SEG_A).unwrap();
    m.handle_mount_segment(at(0), B, SEG_B, MIB).unwrap();
    let v = put(&mut m, at(0), "a", 100);
    m.handle_add_disk_replica(at(0), k("a"), v, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    // A restarts: its record is offline (not listed), the object survives in B's memory.
    m.handle_ping(at(1), A, Incarnation(2), true);
    let list = m.handle_get_replica_list(at(1), k("a")).unwrap();
    assert_eq!((list.replicas.len(), memory_replicas(&list)), (1, 1));
    commands(&mut m);
    m.handle_remove(at(20_000), k("a"), false).unwrap();
    assert_eq!(
        commands(&mut m),
        [NodeCommand::DropDiskReplica { node: A, key: k("a").to_key(), version: v, replica: disk(A, 100) }]
    );
    // A recovers the record it never got to delete: refused, not resurrected.
    refused(&mut m, MasterError::StaleVersion, |m| {
        m.handle_add_disk_replica(at(20_001), k("a"), v, disk(A, 100), DiskReplicaOrigin::Recovered)
    });
}

#[test]
fn on_shared_storage_an_expired_nodes_records_stay_readable_and_a_restart_re_registers() {
    for shared_storage in [false, true] {
        let config = MasterConfig { shared_storage, ..MasterConfig::default() };
        let mut m = master(config, true, MIB);
        m.handle_ping(at(0), B, Incarnation(1), true);
        m.handle_mount_segment(at(0), B, SEG_B, MIB).unwrap();
        // "a" lives in A's memory (its writer's own segment) and on A's disk.
        let a = put(&mut m, at(0), "a", 100);
        m.handle_add_disk_replica(at(0), k("a"), a, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
        // A falls silent; B keeps pinging.
        m.handle_ping(at(9_000), B, Incarnation(1), true);
        m.handle_timeout(at(10_000));
        assert_eq!(m.stats().nodes, 1);
        let listed = m.handle_get_replica_list(at(10_000), k("a"));
        if shared_storage {
            let list = listed.unwrap();
            assert_eq!(
                list.replicas.as_slice(),
                [ReplicaDescriptor::Disk(disk(A, 100))],
                "only its file is left"
            );
        } else {
            assert_eq!(listed.unwrap_err(), MasterError::ObjectNotFound, "readable nowhere without A");
        }
        m.verify().unwrap();
        // A restarts on its directory and registers what it recovered: listed once.
        m.handle_ping(at(11_000), A, Incarnation(2), true);
        m.handle_add_disk_replica(at(11_000), k("a"), a, disk(A, 100), DiskReplicaOrigin::Recovered).unwrap();
        let list = m.handle_get_replica_list(at(11_000), k("a")).unwrap();
        assert_eq!((list.version, list.replicas.len()), (a, 1), "shared_storage {shared_storage}");
        m.verify().unwrap();
    }
}

#[test]
fn re_registering_brings_an_offline_record_back_online() {
    let mut m = master(MasterConfig::default(), true, MIB);
    m.handle_ping(at(0), B, Incarnation(1), false);
    m.handle_mount_segment(at(0), B, SEG_B, MIB).unwrap();
    let g = m.handle_put_start(at(0), A, k("a"), 100, 2).unwrap();
    m.handle_put_end(at(0), A, k("a"), g.version, None).unwrap();
    m.handle_add_disk_replica(at(0), k("a"), g.version, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    m.handle_ping(at(1), A, Incarnation(2), true);
    assert_eq!(m.handle_get_replica_list(at(1), k("a")).unwrap().replicas.len(), 1);
    m.handle_add_disk_replica(at(2), k("a"), g.version, disk(A, 100), DiskReplicaOrigin::Recovered).unwrap();
    assert_eq!(m.handle_get_replica_list(at(2), k("a")).unwrap().replicas.len(), 2);
    m.verify().unwrap();
}

#[test]
fn a_silent_node_expires_after_its_ttl() {
    let mut m = with_storage();
    put(&mut m, at(0), "a", 100);
    assert_eq!(m.poll_timeout(), Some(at(10_000)));
    m.handle_timeout(at(9_999));
    assert_eq!(m.stats().nodes, 1);
    m.handle_timeout(at(10_000));
    assert_eq!((m.stats().nodes, m.stats().segments, m.stats().objects), (0, 0, 0));
    assert_eq!(m.poll_timeout(), None);
    // Extra timeouts are harmless.
    m.handle_timeout(at(10_000));
    m.handle_timeout(at(20_000));
    assert_eq!(m.handle_ping(at(20_000), A, Incarnation(1), true).outcome, PingOutcome::Registered);
    m.verify().unwrap();
}

#[test]
fn pings_keep_a_node_alive() {
    let mut m = plain();
    for s in 1..50 {
        m.handle_ping(at(s * 5_000), A, Incarnation(1), false);
        m.handle_timeout(at(s * 5_000 + 1));
    }
    assert_eq!(m.stats().nodes, 1);
}

// ----- eviction -----------------------------------------------------------------------

/// 16 objects of 64 KiB fill a 1 MiB segment; the 15th crosses 90%.
fn fill(m: &mut Master, n: usize) -> Vec<ObjectVersion> {
    (0..n).map(|i| put(m, at(0), &format!("k{i:02}"), 64 * KIB)).collect()
}

#[test]
fn eviction_runs_from_the_high_to_the_low_watermark() {
    let mut m = plain();
    fill(&mut m, 14);
    assert_eq!(m.stats().objects, 14, "below the high watermark nothing is evicted");
    fill_one(&mut m, "k14");
    // 15 × 64 KiB = 93.75% > 90%: evicted down to ≤ 80% (12 objects = 75%).
    assert_eq!(m.stats().objects, 12);
    assert_eq!(m.stats().evicted_dropped, 3);
    assert!(m.stats().used_bytes <= (MIB as f64 * 0.8) as u64);
    m.verify().unwrap();
}

fn fill_one(m: &mut Master, key: &str) -> ObjectVersion {
    put(m, at(0), key, 64 * KIB)
}

#[test]
fn eviction_prefers_objects_not_read_recently() {
    let mut m = plain();
    fill(&mut m, 14);
    for i in 0..4 {
        // Read, then let the lease lapse: only the read bit protects these.
        m.handle_get_replica_list(at(0), k(&format!("k{i:02}"))).unwrap();
    }
    m.handle_put_start(at(20_000), A, k("new"), 64 * KIB, 1).unwrap();
    m.handle_put_start(at(20_000), A, k("new2"), 64 * KIB, 1).unwrap();
    for i in 0..4 {
        assert!(m.handle_exists(at(20_000), k(&format!("k{i:02}"))), "recently read k{i:02} was evicted");
    }
    m.verify().unwrap();
}

#[test]
fn eviction_honours_leases() {
    let mut m = plain();
    fill(&mut m, 14);
    for i in 0..14 {
        m.handle_get_replica_list(at(0), k(&format!("k{i:02}"))).unwrap();
    }
    // Above the high watermark, but every object is leased: nothing goes, the eviction
    // is owed, and the master wakes up when the first blocking lease expires.
    put(&mut m, at(1), "k14", 64 * KIB);
    m.handle_get_replica_list(at(1), k("k14")).unwrap();
    assert_eq!(m.stats().objects, 15);
    m.handle_ping(at(9_000), A, Incarnation(1), false);
    assert_eq!(m.poll_timeout(), Some(at(10_000)));
    // While owed, a put that does not fit fails fast instead of sweeping again.
    assert_eq!(m.handle_put_start(at(9_500), A, k("big"), 128 * KIB, 1).err(), Some(MasterError::NoSpace));
    m.handle_timeout(at(10_000));
    assert_eq!(m.stats().objects, 12, "once the leases lapse the retry evicts");
    assert!(m.handle_exists(at(10_000), k("k14")), "k14's lease runs to 10.001 s");
    m.verify().unwrap();
}

#[test]
fn eviction_keeps_objects_that_have_a_disk_replica_on_disk() {
    let mut m = with_storage();
    let versions = fill(&mut m, 14);
    for (i, v) in versions.iter().enumerate() {
        m.handle_add_disk_replica(
            at(0),
            k(&format!("k{i:02}")),
            *v,
            disk(A, 64 * KIB),
            DiskReplicaOrigin::Persisted,
        )
        .unwrap();
    }
    commands(&mut m);
    let v = fill_one(&mut m, "k14");
    m.handle_add_disk_replica(at(0), k("k14"), v, disk(A, 64 * KIB), DiskReplicaOrigin::Persisted).unwrap();
    assert_eq!(m.stats().objects, 15, "nothing is dropped");
    assert_eq!(m.stats().evicted_to_disk, 3);
    let on_disk_only = (0..15)
        .filter(|i| memory_replicas(&m.handle_get_replica_list(at(0), k(&format!("k{i:02}"))).unwrap()) == 0)
        .count();
    assert_eq!(on_disk_only, 3);
    m.verify().unwrap();
}

#[test]
fn offload_on_evict_persists_first_and_frees_memory_when_the_disk_replica_arrives() {
    let mut m =
        master(MasterConfig { persist: PersistPolicy::OnEvict, ..MasterConfig::default() }, true, MIB);
    fill(&mut m, 14);
    assert!(commands(&mut m).is_empty(), "no write-behind under OnEvict");
    fill_one(&mut m, "k14");
    let offloads = commands(&mut m);
    assert_eq!(offloads.len(), 3);
    assert_eq!(m.stats().objects, 15, "nothing is dropped while offloading");
    let used_before = m.stats().used_bytes;
    for c in offloads {
        let NodeCommand::Persist { node, key, version, source, reason } = c else { panic!("{c:?}") };
        assert_eq!((node, reason, source.len), (A, PersistReason::Offload, 64 * KIB));
        m.handle_add_disk_replica(
            at(1),
            key.as_ref(),
            version,
            disk(A, 64 * KIB),
            DiskReplicaOrigin::Persisted,
        )
        .unwrap();
    }
    assert_eq!(m.stats().used_bytes, used_before - 3 * 64 * KIB);
    assert_eq!(m.stats().evicted_to_disk, 3);
    m.verify().unwrap();
}

#[test]
fn a_read_during_an_offload_keeps_its_memory_replica_until_the_lease_passes() {
    let mut m =
        master(MasterConfig { persist: PersistPolicy::OnEvict, ..MasterConfig::default() }, true, MIB);
    fill(&mut m, 15);
    let NodeCommand::Persist { key, version, source, .. } = commands(&mut m)[0].clone() else { panic!() };
    // A reader is handed the memory replica being offloaded, with a lease.
    let list = m.handle_get_replica_list(at(1), key.as_ref()).unwrap();
    assert_eq!(list.replicas[0], ReplicaDescriptor::Memory(source));
    freed(&mut m);
    m.handle_add_disk_replica(at(2), key.as_ref(), version, disk(A, 64 * KIB), DiskReplicaOrigin::Persisted)
        .unwrap();
    assert_eq!(freed(&mut m), [], "the leased replica was freed under its reader");
    let list = m.handle_get_replica_list(at(2), key.as_ref()).unwrap();
    assert_eq!((memory_replicas(&list), list.replicas.len()), (1, 2), "memory and disk");
    m.verify().unwrap();
}

/// A failed offload keeps the object in memory (the eviction is called off) and asks
/// for the persist again after the backoff; once it succeeds the memory goes.
#[test]
fn a_failed_offload_keeps_the_object_and_retries_after_a_backoff() {
    let mut m =
        master(MasterConfig { persist: PersistPolicy::OnEvict, ..MasterConfig::default() }, true, MIB);
    fill(&mut m, 15);
    let offloads = commands(&mut m);
    let NodeCommand::Persist { key, version, .. } = offloads[0].clone() else { panic!() };
    let used = m.stats().used_bytes;
    m.handle_persist_failed(at(1), A, key.as_ref(), version).unwrap();
    assert!(m.handle_exists(at(1), key.as_ref()), "a failed offload lost an acknowledged object");
    assert_eq!(m.stats().used_bytes, used, "its memory stays");
    assert!(events(&mut m).is_empty(), "nothing was dropped");
    assert_eq!(m.stats().persist_retries, 1);
    assert_eq!(m.poll_timeout(), Some(at(101)), "asked for again 100 ms later");
    m.handle_timeout(at(100));
    assert!(commands(&mut m).is_empty(), "not before the backoff is over");
    m.handle_timeout(at(101));
    let again = commands(&mut m);
    assert!(
        matches!(&again[..], [NodeCommand::Persist { key: k2, version: v2, .. }] if *k2 == key && *v2 == version)
    );
    m.handle_add_disk_replica(
        at(102),
        key.as_ref(),
        version,
        disk(A, 64 * KIB),
        DiskReplicaOrigin::Persisted,
    )
    .unwrap();
    assert_eq!(m.stats().persist_retries, 0);
    m.verify().unwrap();
}

/// A write-behind persist that keeps failing is asked for again with a doubling
/// delay, as long as the object lives; removing the object ends the retries.
#[test]
fn a_failed_write_behind_persist_is_retried_with_backoff_until_the_object_is_removed() {
    let mut m = with_storage();
    let v = put(&mut m, at(0), "a", 100);
    assert_eq!(commands(&mut m).len(), 1);
    let mut now = 0;
    for delay in [100, 200, 400, 800] {
        m.handle_persist_failed(at(now), A, k("a"), v).unwrap();
        assert_eq!(m.poll_timeout(), Some(at(now + delay)));
        m.handle_timeout(at(now + delay - 1));
        assert!(commands(&mut m).is_empty());
        now += delay;
        m.handle_timeout(at(now));
        assert_eq!(commands(&mut m).len(), 1, "retried after {delay} ms");
        m.verify().unwrap();
    }
    m.handle_persist_failed(at(now), A, k("a"), v).unwrap();
    m.handle_remove(at(now), k("a"), true).unwrap();
    assert_eq!(m.stats().persist_retries, 0);
    assert_eq!(m.poll_timeout(), Some(at(10_000)), "no retry of a removed object: only the node's TTL");
    m.handle_timeout(at(now + 10_000));
    assert!(commands(&mut m).is_empty());
    m.verify().unwrap();
}

/// The flush barrier: objects acknowledged before the flush must have a disk record;
/// later ones do not count; a failure is reported, a retried flush asks again at once
/// and tells the truth, and two flushes at once both do.
#[test]
fn flush_is_durable_only_when_everything_acknowledged_before_it_has_a_record() {
    let mut m = with_storage();
    let va = put(&mut m, at(0), "a", 100);
    let vb = put(&mut m, at(0), "b", 100);
    commands(&mut m);
    let first = m.handle_flush(at(0));
    assert!(commands(&mut m).is_empty(), "nothing to ask again");
    let vc = put(&mut m, at(0), "c", 100); // after the barrier
    commands(&mut m);
    assert_eq!(m.flush_status(&first), FlushStatus::Pending);
    m.handle_add_disk_replica(at(1), k("a"), va, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    m.handle_persist_failed(at(1), A, k("b"), vb).unwrap();
    assert_eq!(m.flush_status(&first), FlushStatus::NotDurable { objects: 1 });
    // A second flush asks for b again at once, and covers c too.
    let second = m.handle_flush(at(2));
    assert!(matches!(&commands(&mut m)[..], [NodeCommand::Persist { version, .. }] if *version == vb));
    assert_eq!(m.flush_status(&second), FlushStatus::Pending);
    assert_eq!(m.flush_status(&first), FlushStatus::Pending, "b is being persisted again");
    m.handle_add_disk_replica(at(3), k("b"), vb, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    assert_eq!(m.flush_status(&first), FlushStatus::Durable, "c came after the first flush");
    assert_eq!(m.flush_status(&second), FlushStatus::Pending, "c came before the second");
    m.handle_add_disk_replica(at(3), k("c"), vc, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    assert_eq!(m.flush_status(&second), FlushStatus::Durable);
    assert_eq!(m.undurable_objects(), 0);
    m.verify().unwrap();
}

/// A removed object no longer needs to be durable; nor does one the flush cannot wait
/// for because no node can persist it (that one is reported, not waited for).
#[test]
fn flush_counts_neither_removed_objects_nor_waits_for_ones_no_node_can_persist() {
    let mut m = with_storage();
    let va = put(&mut m, at(0), "a", 100);
    commands(&mut m);
    m.handle_persist_failed(at(0), A, k("a"), va).unwrap();
    m.handle_remove(at(0), k("a"), true).unwrap();
    let ticket = m.handle_flush(at(0));
    assert!(commands(&mut m).is_empty());
    assert_eq!(m.flush_status(&ticket), FlushStatus::Durable);
    let mut plain = plain();
    put(&mut plain, at(0), "x", 100);
    let ticket = plain.handle_flush(at(0));
    assert_eq!(plain.flush_status(&ticket), FlushStatus::Durable, "no node can persist it: memory-only");
}

#[test]
fn write_behind_pins_objects_against_eviction_until_persisted() {
    let mut m = with_storage();
    fill(&mut m, 15);
    let persists = commands(&mut m);
    assert_eq!(persists.len(), 15);
    assert_eq!(m.stats().objects, 15, "nothing evictable while persists are pending");
    assert_eq!(m.handle_put_start(at(0), A, k("x"), 128 * KIB, 1).err(), Some(MasterError::NoSpace));
    for c in persists {
        let NodeCommand::Persist { key, version, .. } = c else { panic!() };
        m.handle_add_disk_replica(
            at(1),
            key.as_ref(),
            version,
            disk(A, 64 * KIB),
            DiskReplicaOrigin::Persisted,
        )
        .unwrap();
    }
    // Persisted objects are evictable: memory goes, the disk replicas stay.
    assert!(m.stats().used_bytes <= (MIB as f64 * 0.8) as u64);
    assert_eq!(m.stats().objects, 15);
    m.handle_put_start(at(2), A, k("x"), 128 * KIB, 1).unwrap();
    m.verify().unwrap();
}

#[test]
fn no_persist_is_asked_of_a_node_without_storage() {
    let mut m = plain();
    put(&mut m, at(0), "a", 100);
    assert!(commands(&mut m).is_empty());
}

// ----- disk replicas ------------------------------------------------------------------

#[test]
fn add_disk_replica_needs_a_registered_node() {
    let mut m = with_storage();
    let v = put(&mut m, at(0), "a", 100);
    refused(&mut m, MasterError::NodeNotRegistered, |m| {
        m.handle_add_disk_replica(at(0), k("a"), v, disk(B, 100), DiskReplicaOrigin::Persisted)
    });
}

#[test]
fn add_disk_replica_for_an_old_version_is_refused() {
    let mut m = with_storage();
    let v1 = put(&mut m, at(0), "a", 100);
    m.handle_remove(at(0), k("a"), false).unwrap();
    m.handle_add_disk_replica(at(0), k("a"), v1, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap_err();
    let _v2 = put(&mut m, at(0), "a", 100);
    for origin in [DiskReplicaOrigin::Persisted, DiskReplicaOrigin::Recovered] {
        refused(&mut m, MasterError::StaleVersion, |m| {
            m.handle_add_disk_replica(at(0), k("a"), v1, disk(A, 100), origin)
        });
    }
}

#[test]
fn add_disk_replica_checks_state_and_length() {
    let mut m = with_storage();
    let g = m.handle_put_start(at(0), A, k("a"), 100, 1).unwrap();
    refused(&mut m, MasterError::ReplicaNotReady, |m| {
        m.handle_add_disk_replica(at(0), k("a"), g.version, disk(A, 100), DiskReplicaOrigin::Persisted)
    });
    m.handle_put_end(at(0), A, k("a"), g.version, None).unwrap();
    refused(&mut m, MasterError::InvalidSize, |m| {
        m.handle_add_disk_replica(at(0), k("a"), g.version, disk(A, 99), DiskReplicaOrigin::Persisted)
    });
    refused(&mut m, MasterError::ObjectNotFound, |m| {
        m.handle_add_disk_replica(at(0), k("b"), g.version, disk(A, 100), DiskReplicaOrigin::Persisted)
    });
}

#[test]
fn re_registering_a_disk_replica_replaces_it() {
    let mut m = with_storage();
    let v = put(&mut m, at(0), "a", 100);
    m.handle_add_disk_replica(at(0), k("a"), v, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    let moved = DiskReplica { bucket: BucketId(9), ..disk(A, 100) };
    m.handle_add_disk_replica(at(0), k("a"), v, moved, DiskReplicaOrigin::Recovered).unwrap();
    let list = m.handle_get_replica_list(at(0), k("a")).unwrap();
    assert_eq!(list.replicas[1..], [ReplicaDescriptor::Disk(moved)]);
}

#[test]
fn a_recovered_record_recreates_an_unknown_object_and_lifts_the_version_floor() {
    let mut m = with_storage();
    let far = ObjectVersion(1_000_000);
    m.handle_add_disk_replica(at(0), k("a"), far, disk(A, 100), DiskReplicaOrigin::Recovered).unwrap();
    assert!(m.handle_exists(at(0), k("a")));
    let v = put(&mut m, at(0), "b", 100);
    assert!(v > far, "new versions are above every recovered one");
    m.verify().unwrap();
}

#[test]
fn remove_disk_replica_rules() {
    let mut m = with_storage();
    let v = put(&mut m, at(0), "a", 100);
    m.handle_add_disk_replica(at(0), k("a"), v, disk(A, 100), DiskReplicaOrigin::Persisted).unwrap();
    refused(&mut m, MasterError::ObjectNotFound, |m| m.handle_remove_disk_replica(at(0), A, k("b"), v));
    refused(&mut m, MasterError::StaleVersion, |m| m.handle_remove_disk_replica(at(0), A, k("a"), v.next()));
    m.handle_ping(at(0), B, Incarnation(1), true);
    refused(&mut m, MasterError::DiskReplicaNotFound, |m| m.handle_remove_disk_replica(at(0), B, k("a"), v));
    m.handle_remove_disk_replica(at(0), A, k("a"), v).unwrap();
    assert!(m.handle_exists(at(0), k("a")), "the memory replica still holds it");
}

#[test]
fn removing_the_last_replica_drops_the_object() {
    let mut m = with_storage();
    m.handle_add_disk_replica(at(0), k("a"), ObjectVersion(5), disk(A, 100), DiskReplicaOrigin::Recovered)
        .unwrap();
    m.handle_remove_disk_replica(at(0), A, k("a"), ObjectVersion(5)).unwrap();
    assert!(!m.handle_exists(at(0), k("a")));
    assert!(matches!(
        &events(&mut m)[..],
        [MasterEvent::ObjectDropped { reason: DropReason::DiskReplicaRemoved, .. }]
    ));
}

#[test]
fn persist_failed_rules() {
    let mut m = with_storage();
    let v = put(&mut m, at(0), "a", 100);
    refused(&mut m, MasterError::ObjectNotFound, |m| m.handle_persist_failed(at(0), A, k("b"), v));
    refused(&mut m, MasterError::StaleVersion, |m| m.handle_persist_failed(at(0), A, k("a"), v.next()));
    m.handle_ping(at(0), B, Incarnation(1), true);
    refused(&mut m, MasterError::PutNotInProgress, |m| m.handle_persist_failed(at(0), B, k("a"), v));
    // A failed write-behind leaves the object in memory, no longer pinned.
    m.handle_persist_failed(at(0), A, k("a"), v).unwrap();
    assert!(m.handle_exists(at(0), k("a")));
    refused(&mut m, MasterError::PutNotInProgress, |m| m.handle_persist_failed(at(0), A, k("a"), v));
    m.verify().unwrap();
}

// ----- the wire -----------------------------------------------------------------------

#[test]
fn batch_requests_answer_item_by_item() {
    let mut m = plain();
    let keys = [k("a"), k("b"), k("a")];
    let Response::BatchPutStart(grants) = m.handle_request(
        at(0),
        &Request::BatchPutStart { writer: A, replicas: 1, items: keys.iter().map(|k| (*k, 100)).collect() },
    ) else {
        panic!()
    };
    assert!(grants[0].is_ok() && grants[1].is_ok());
    assert_eq!(grants[2].as_ref().err(), Some(&MasterError::ObjectAlreadyExists));
    let items = vec_of(&[(k("a"), grants[0].as_ref().unwrap().version, 7), (k("b"), ObjectVersion(999), 8)]);
    let Response::BatchPutEnd(ends) = m.handle_request(at(0), &Request::BatchPutEnd { writer: A, items })
    else {
        panic!()
    };
    assert_eq!(ends, [Ok(()), Err(MasterError::PutNotInProgress)]);
    let Response::BatchExists(found) =
        m.handle_request(at(0), &Request::BatchExists { keys: vec_of(&[k("a"), k("b"), k("c")]) })
    else {
        panic!()
    };
    assert_eq!(found, [true, false, false]);
    let Response::BatchGetReplicaList(lists) =
        m.handle_request(at(0), &Request::BatchGetReplicaList { keys: vec_of(&[k("a"), k("b")]) })
    else {
        panic!()
    };
    assert!(lists[0].is_ok());
    assert_eq!(lists[1].as_ref().err(), Some(&MasterError::ReplicaNotReady));
    let Response::BatchRemove(removed) =
        m.handle_request(at(0), &Request::BatchRemove { force: true, keys: vec_of(&[k("a"), k("zz")]) })
    else {
        panic!()
    };
    assert_eq!(removed, [Ok(()), Err(MasterError::ObjectNotFound)]);
    m.verify().unwrap();
}

fn vec_of<T: Clone>(items: &[T]) -> Vec<T> {
    items.to_vec()
}

// ----- promotion ----------------------------------------------------------------------

/// An object evicted to disk: "a" persisted, then pushed out of memory by "b" (whose
/// persist is answered too, so that nothing stays pinned).
fn disk_only(m: &mut Master) -> ObjectVersion {
    let v = put(m, at(0), "a", 600 << 10);
    commands(m);
    m.handle_add_disk_replica(at(0), k("a"), v, disk(A, 600 << 10), DiskReplicaOrigin::Persisted).unwrap();
    let vb = put(m, at(20_000), "b", 600 << 10);
    commands(m);
    m.handle_add_disk_replica(at(20_000), k("b"), vb, disk(A, 600 << 10), DiskReplicaOrigin::Persisted)
        .unwrap();
    let list = m.handle_get_replica_list(at(20_001), k("a")).unwrap();
    assert_eq!(memory_replicas(&list), 0, "a was evicted to disk");
    v
}

#[test]
fn promote_gives_a_disk_only_object_a_memory_replica_when_there_is_room() {
    let mut m = with_storage();
    let v = disk_only(&mut m);
    // No room while b holds the segment above the high watermark.
    assert_eq!(m.handle_promote(at(20_002), k("a"), v), Ok(None));
    m.handle_remove(at(40_000), k("b"), true).unwrap();
    let replica = m.handle_promote(at(40_001), k("a"), v).unwrap().expect("room now");
    assert_eq!(replica.len, 600 << 10);
    let list = m.handle_get_replica_list(at(40_002), k("a")).unwrap();
    assert!(matches!(list.replicas[0], ReplicaDescriptor::Memory(r) if r == replica));
    // A second promotion has nothing to do.
    assert_eq!(m.handle_promote(at(40_003), k("a"), v), Ok(None));
    m.verify().unwrap();
}

#[test]
fn promote_of_another_version_or_an_unknown_key_is_refused() {
    let mut m = with_storage();
    let v = disk_only(&mut m);
    refused(&mut m, MasterError::StaleVersion, |m| m.handle_promote(at(20_002), k("a"), v.next()));
    refused(&mut m, MasterError::ObjectNotFound, |m| m.handle_promote(at(20_002), k("zz"), v));
    let grant = m.handle_put_start(at(20_003), A, k("c"), 10, 1).unwrap();
    refused(&mut m, MasterError::ReplicaNotReady, |m| m.handle_promote(at(20_004), k("c"), grant.version));
}

#[test]
fn object_size_reports_complete_objects_only_and_grants_no_lease() {
    let mut m = plain();
    put(&mut m, at(0), "a", 100);
    m.handle_put_start(at(0), A, k("b"), 10, 1).unwrap();
    assert_eq!(m.object_size(k("a")), Some(100));
    assert_eq!(m.object_size(k("b")), None);
    assert_eq!(m.object_size(k("zz")), None);
    m.handle_remove(at(1), k("a"), false).unwrap();
}

/// Where the replicas of a put by `writer` land.
fn placed_on(m: &mut Master, writer: NodeId, key: &str, size: u64, replicas: u8) -> Vec<SegmentId> {
    let grant = m.handle_put_start(at(1), writer, k(key), size, replicas).unwrap();
    m.handle_put_end(at(1), writer, k(key), grant.version, None).unwrap();
    grant.replicas.iter().map(|r| r.segment).collect()
}

#[test]
fn a_writer_with_a_segment_gets_its_own_first_and_others_get_the_most_free() {
    let mut m = plain();
    assert_eq!(m.handle_ping(at(0), B, Incarnation(1), false).outcome, PingOutcome::Registered);
    m.handle_mount_segment(at(0), B, SEG_B, 4 * MIB).unwrap();
    // A's segment (1 MiB) has less room than B's (4 MiB): A's own comes first all the same.
    assert_eq!(placed_on(&mut m, A, "a/own", 64 * KIB, 1), vec![SEG_A]);
    // With two replicas, the second goes to the other segment.
    assert_eq!(placed_on(&mut m, A, "a/two", 64 * KIB, 2), vec![SEG_A, SEG_B]);
    // A writer holding no segment gets the most free one.
    let client = NodeId(99);
    assert_eq!(placed_on(&mut m, client, "client", 64 * KIB, 1), vec![SEG_B]);
    // A's puts keep landing in its own segment until it is full, then go elsewhere.
    let mut own = 2;
    loop {
        let segments = placed_on(&mut m, A, &format!("a/fill{own}"), 64 * KIB, 1);
        if segments == vec![SEG_B] {
            break;
        }
        assert_eq!(segments, vec![SEG_A]);
        own += 1;
        assert!(own <= 16, "more than 1 MiB placed in A's 1 MiB segment");
    }
    assert_eq!(own, 16, "A's segment took 16 values of 64 KiB before one went to B");
}

// ----- restoring a segment after a master restart -----------------------------------

/// A master of a later run (its first version above every version of the earlier one)
/// with node A registered, and A's segment of 1 MiB restoring.
fn restarted() -> Master {
    let config = MasterConfig { first_version: ObjectVersion(1_000), ..MasterConfig::default() };
    let mut m = Master::new(config).unwrap();
    m.handle_ping(at(0), A, Incarnation(1), false);
    m.handle_restore_segment(at(0), A, SEG_A, MIB).unwrap();
    m
}

fn live<'a>(key: &'a str, version: u64, offset: u64, len: u64) -> RestoredReplica<'a> {
    RestoredReplica { key: k(key), version: ObjectVersion(version), offset, len, crc32c: version as u32 }
}

fn list(m: &mut Master, key: &str) -> Result<ReplicaList, MasterError> {
    m.handle_get_replica_list(at(1), k(key))
}

#[test]
fn restored_replicas_are_readable_where_they_are_with_their_checksum() {
    let mut m = restarted();
    m.handle_restore_replica(at(0), A, SEG_A, &live("a", 7, 0, 100 * KIB)).unwrap();
    m.handle_restore_replica(at(0), A, SEG_A, &live("b", 9, 512 * KIB, 4 * KIB)).unwrap();
    // A repeated batch (the answer was lost) is taken again without a change.
    let before = snapshot(&m);
    m.handle_restore_replica(at(0), A, SEG_A, &live("a", 7, 0, 100 * KIB)).unwrap();
    assert_eq!(snapshot(&m), before);
    let a = list(&mut m, "a").unwrap();
    assert_eq!((a.version, a.size, a.crc32c), (ObjectVersion(7), 100 * KIB, Some(7)));
    assert_eq!(
        a.replicas.as_slice(),
        [ReplicaDescriptor::Memory(MemoryReplica { segment: SEG_A, offset: 0, len: 100 * KIB })]
    );
    let b = list(&mut m, "b").unwrap();
    assert_eq!(
        b.replicas[0],
        ReplicaDescriptor::Memory(MemoryReplica { segment: SEG_A, offset: 512 * KIB, len: 4 * KIB })
    );
    m.verify().unwrap();
}

#[test]
fn a_restoring_segment_takes_no_new_replica_until_its_node_mounts_it() {
    let mut m = restarted();
    m.handle_restore_replica(at(0), A, SEG_A, &live("a", 7, 0, 512 * KIB)).unwrap();
    assert_eq!(m.handle_put_start(at(0), A, k("new"), 4 * KIB, 1).err(), Some(MasterError::NoSpace));
    m.handle_mount_segment(at(0), A, SEG_A, MIB).unwrap();
    // Mounted: restores are over, and new puts land around what was restored.
    assert_eq!(
        m.handle_restore_replica(at(0), A, SEG_A, &live("late", 8, 768 * KIB, 4 * KIB)),
        Err(MasterError::SegmentAlreadyMounted)
    );
    let grant = m.handle_put_start(at(0), A, k("new"), 512 * KIB, 1).unwrap();
    assert_eq!(grant.replicas[0].offset, 512 * KIB);
    assert!(grant.version >= ObjectVersion(1_000), "this run's versions: {:?}", grant.version);
    m.verify().unwrap();
}

#[test]
fn a_restored_replica_is_refused_when_superseded_removed_or_not_free() {
    let mut m = restarted();
    // Another node's newer version of the key came first.
    m.handle_ping(at(0), B, Incarnation(1), false);
    m.handle_restore_segment(at(0), B, SEG_B, MIB).unwrap();
    m.handle_restore_replica(at(0), B, SEG_B, &live("k", 9, 0, 4 * KIB)).unwrap();
    refused(&mut m, MasterError::StaleVersion, |m| {
        m.handle_restore_replica(at(0), A, SEG_A, &live("k", 8, 0, 4 * KIB))
    });
    // The same version from another node is a second replica; of another length, refused.
    refused(&mut m, MasterError::InvalidSize, |m| {
        m.handle_restore_replica(at(0), A, SEG_A, &live("k", 9, 0, 8 * KIB))
    });
    m.handle_restore_replica(at(0), A, SEG_A, &live("k", 9, 0, 4 * KIB)).unwrap();
    assert_eq!(list(&mut m, "k").unwrap().replicas.len(), 2);
    // An overlapping range, a version of this run, another node's segment.
    refused(&mut m, MasterError::NoSpace, |m| {
        m.handle_restore_replica(at(0), A, SEG_A, &live("o", 5, 0, 4 * KIB))
    });
    refused(&mut m, MasterError::StaleVersion, |m| {
        m.handle_restore_replica(at(0), A, SEG_A, &live("n", 1_000, 64 * KIB, 4 * KIB))
    });
    refused(&mut m, MasterError::NotSegmentOwner, |m| {
        m.handle_restore_replica(at(0), B, SEG_A, &live("x", 5, 64 * KIB, 4 * KIB))
    });
    // Removed by a client of this run: the other node's copy does not bring it back.
    m.handle_remove(at(2), k("k"), true).unwrap();
    m.handle_ping(at(0), NodeId(3), Incarnation(1), false);
    m.handle_restore_segment(at(0), NodeId(3), SegmentId(30), MIB).unwrap();
    refused(&mut m, MasterError::StaleVersion, |m| {
        m.handle_restore_replica(at(0), NodeId(3), SegmentId(30), &live("k", 9, 0, 4 * KIB))
    });
    // After a remove-all nothing of the earlier run comes back.
    m.handle_restore_replica(at(0), NodeId(3), SegmentId(30), &live("kept", 6, 0, 4 * KIB)).unwrap();
    m.handle_remove_all(at(3), true);
    refused(&mut m, MasterError::StaleVersion, |m| {
        m.handle_restore_replica(at(0), NodeId(3), SegmentId(30), &live("other", 4, 64 * KIB, 4 * KIB))
    });
}

#[test]
fn a_restored_replica_newer_than_a_recovered_record_replaces_it() {
    let config = MasterConfig { first_version: ObjectVersion(1_000), ..MasterConfig::default() };
    let mut m = Master::new(config).unwrap();
    m.handle_ping(at(0), A, Incarnation(1), true);
    m.handle_restore_segment(at(0), A, SEG_A, MIB).unwrap();
    let disk = |version: u64| DiskReplica {
        node: A,
        bucket: BucketId(1),
        offset: 0,
        len: 4 * KIB,
        crc32c: version as u32,
    };
    let recovered = DiskReplicaOrigin::Recovered;
    m.handle_add_disk_replica(at(0), k("old"), ObjectVersion(5), disk(5), recovered).unwrap();
    m.handle_add_disk_replica(at(0), k("same"), ObjectVersion(6), disk(6), recovered).unwrap();
    let _ = commands(&mut m);
    m.handle_restore_replica(at(0), A, SEG_A, &live("old", 8, 0, 4 * KIB)).unwrap();
    m.handle_restore_replica(at(0), A, SEG_A, &live("same", 6, 64 * KIB, 4 * KIB)).unwrap();
    let old = list(&mut m, "old").unwrap();
    assert_eq!((old.version, old.replicas.len()), (ObjectVersion(8), 1));
    // The superseded record is dropped; the newer memory-only object is persisted; the
    // same version gains its memory replica beside its record.
    let sent = commands(&mut m);
    assert!(
        sent.iter().any(|c| matches!(c, NodeCommand::DropDiskReplica { version: ObjectVersion(5), .. })),
        "{sent:?}"
    );
    assert!(
        sent.iter().any(|c| matches!(c, NodeCommand::Persist { version: ObjectVersion(8), .. })),
        "{sent:?}"
    );
    let same = list(&mut m, "same").unwrap();
    assert_eq!(same.replicas.len(), 2);
    assert!(matches!(same.replicas[0], ReplicaDescriptor::Memory(_)));
    m.verify().unwrap();
}

#[test]
fn a_key_removed_in_this_run_gets_no_earlier_version_back_from_memory_or_disk() {
    let mut m = restarted();
    m.handle_ping(at(0), B, Incarnation(1), true);
    m.handle_mount_segment(at(0), B, SEG_B, MIB).unwrap();
    // Put and removed in this run, on B: A's older copy in memory stays out.
    let fresh = m.handle_put_start(at(0), B, k("k"), 4 * KIB, 1).unwrap();
    m.handle_put_end(at(0), B, k("k"), fresh.version, Some(1)).unwrap();
    m.handle_remove(at(1), k("k"), true).unwrap();
    refused(&mut m, MasterError::StaleVersion, |m| {
        m.handle_restore_replica(at(1), A, SEG_A, &live("k", 9, 0, 4 * KIB))
    });
    // Restored from A's memory, then removed: B's record of the same version stays out.
    m.handle_restore_replica(at(1), A, SEG_A, &live("r", 8, 0, 4 * KIB)).unwrap();
    m.handle_remove(at(2), k("r"), true).unwrap();
    let record = DiskReplica { node: B, bucket: BucketId(1), offset: 0, len: 4 * KIB, crc32c: 8 };
    refused(&mut m, MasterError::StaleVersion, |m| {
        m.handle_add_disk_replica(at(2), k("r"), ObjectVersion(8), record, DiskReplicaOrigin::Recovered)
    });
    // Another key's record is taken.
    m.handle_add_disk_replica(at(2), k("other"), ObjectVersion(8), record, DiskReplicaOrigin::Recovered)
        .unwrap();
}

#[test]
fn past_the_restore_window_a_segment_is_not_restored() {
    let mut m = restarted();
    let late = at(0) + MasterConfig::default().restore_window;
    m.handle_ping(late, B, Incarnation(1), false);
    refused(&mut m, MasterError::StaleVersion, |m| m.handle_restore_segment(late, B, SEG_B, MIB));
    refused(&mut m, MasterError::StaleVersion, |m| {
        m.handle_restore_replica(late, A, SEG_A, &live("a", 7, 0, 4 * KIB))
    });
    // B mounts empty, as after an expiry.
    m.handle_mount_segment(late, B, SEG_B, MIB).unwrap();
}

#[test]
fn what_a_node_is_restoring_is_not_evicted_for_puts_elsewhere() {
    let mut m = restarted();
    m.handle_restore_replica(at(0), A, SEG_A, &live("restored", 7, 0, 900 * KIB)).unwrap();
    m.handle_ping(at(0), B, Incarnation(1), false);
    m.handle_mount_segment(at(0), B, SEG_B, MIB).unwrap();
    // B fills up; its own objects go, never A's restoring one.
    for i in 0..6 {
        let key = format!("b{i}");
        let grant = m.handle_put_start(at(1), B, k(&key), 300 * KIB, 1).unwrap();
        m.handle_put_end(at(1), B, k(&key), grant.version, Some(0)).unwrap();
    }
    assert!(list(&mut m, "restored").is_ok());
    m.verify().unwrap();
}
