//! The SSD tier against real files: puts, flush, reads, removes, capacity, recovery,
//! locking, bad roots, both I/O drivers and the buffered fallback.

mod support;

use bytes::Bytes;
use larder_engine::disk::{DirectIo, DropCause, LOCK_FILE, Tier, TierError, TierEvent};
use larder_engine::uring::{DriverChoice, DriverKind};
use larder_engine::{BucketId, DiskReplica, NodeId, ObjectVersion};
use support::{config, files, k, key, read_all, scratch, value};

fn put_range(tier: &Tier, range: std::ops::Range<u64>, version: u64) {
    for i in range {
        tier.put(k(&key(i)), ObjectVersion(version), value(i, version)).unwrap();
    }
}

fn check_range(tier: &Tier, range: std::ops::Range<u64>, version: u64) {
    let keys: Vec<Vec<u8>> = range.clone().map(key).collect();
    let refs: Vec<_> = keys.iter().map(|k| k.as_slice()).map(k).collect();
    for (i, got) in range.zip(read_all(tier, &refs)) {
        let (v, bytes) = got.unwrap_or_else(|e| panic!("key {i}: {e}"));
        assert_eq!(v, ObjectVersion(version));
        assert!(bytes == value(i, version), "key {i}: wrong bytes");
    }
}

#[test]
fn puts_flush_and_read_back_byte_identical_on_both_drivers() {
    for (choice, kind) in
        [(DriverChoice::IoUring, DriverKind::IoUring), (DriverChoice::ThreadPool, DriverKind::ThreadPool)]
    {
        let root = scratch(&format!("roundtrip-{choice:?}"));
        let mut c = config(&root);
        c.driver.choice = choice;
        let (tier, recovered) = Tier::open(c).unwrap();
        assert!(recovered.is_empty());
        put_range(&tier, 0..200, 1);
        tier.flush().unwrap();
        check_range(&tier, 0..200, 1);
        let s = tier.stats();
        assert_eq!((s.objects, s.driver), (200, kind));
        assert!(s.direct_io, "ext4 accepts O_DIRECT");
        assert!(s.buckets > 5, "small buckets: {s:?}");
        assert_eq!(s.bytes % 4096, 0);
    }
}

#[test]
fn buffered_io_is_the_fallback_and_works_the_same() {
    let root = scratch("buffered");
    let mut c = config(&root);
    c.direct_io = DirectIo::Never;
    let (tier, _) = Tier::open(c).unwrap();
    put_range(&tier, 0..50, 3);
    tier.flush().unwrap();
    check_range(&tier, 0..50, 3);
    assert!(!tier.stats().direct_io);
}

#[test]
fn reopening_recovers_everything_published() {
    let root = scratch("reopen");
    let (tier, _) = Tier::open(config(&root)).unwrap();
    put_range(&tier, 0..300, 1);
    put_range(&tier, 0..20, 2); // newer versions of twenty keys
    tier.close().unwrap();
    let (tier, recovered) = Tier::open(config(&root)).unwrap();
    assert_eq!(recovered.len(), 300);
    assert!(recovered.iter().all(|r| r.replica.node == NodeId(7)));
    assert_eq!(recovered.iter().filter(|r| r.version == ObjectVersion(2)).count(), 20);
    check_range(&tier, 0..20, 2);
    check_range(&tier, 20..300, 1);
}

#[test]
fn flush_is_a_durability_barrier() {
    let root = scratch("flush");
    let mut c = config(&root);
    c.bucket_bytes = 1 << 30;
    let (tier, _) = Tier::open(c).unwrap();
    put_range(&tier, 0..10, 1);
    tier.flush().unwrap();
    // Durable means published: on disk under its final name, and readable.
    let dir = tier.dir().to_path_buf();
    assert!(files(&dir).iter().any(|f| f.ends_with(".bucket")), "{:?}", files(&dir));
    check_range(&tier, 0..10, 1);
}

#[test]
fn remove_makes_dead_bytes_and_deletes_a_bucket_with_nothing_left() {
    let root = scratch("remove");
    let mut c = config(&root);
    c.bucket_bytes = 64 << 20;
    let (tier, _) = Tier::open(c).unwrap();
    put_range(&tier, 0..4, 1);
    tier.flush().unwrap();
    put_range(&tier, 4..8, 1);
    tier.flush().unwrap();
    assert_eq!(tier.stats().buckets, 2);
    assert_eq!(tier.remove(k(&key(0))), Some(ObjectVersion(1)));
    assert!(matches!(tier.get(k(&key(0))), Err(TierError::NotFound)));
    assert_eq!(tier.stats().buckets, 2, "three records still live in the first bucket");
    for i in 1..4 {
        tier.remove(k(&key(i)));
    }
    assert_eq!(tier.stats().buckets, 1, "the empty bucket is deleted at once");
    assert_eq!(files(tier.dir()).iter().filter(|f| f.ends_with(".bucket")).count(), 1);
    check_range(&tier, 4..8, 1);
    assert_eq!(tier.remove(k(&key(0))), None);
    // A removal survives a restart: the record still sitting in a bucket stays dead.
    assert_eq!(tier.remove(k(&key(4))), Some(ObjectVersion(1)));
    tier.close().unwrap();
    let (tier, recovered) = Tier::open(config(&root)).unwrap();
    let mut keys: Vec<_> = recovered.iter().map(|r| r.key.as_bytes().to_vec()).collect();
    keys.sort();
    assert_eq!(keys, (5..8).map(key).collect::<Vec<_>>());
    assert!(matches!(tier.get(k(&key(4))), Err(TierError::NotFound)));
    // The log was compacted to what still hides a record, and survives another reopen.
    tier.close().unwrap();
    let (_, recovered) = Tier::open(config(&root)).unwrap();
    assert_eq!(recovered.len(), 3);
}

#[test]
fn a_remove_cancels_a_put_not_yet_published() {
    let root = scratch("remove-pending");
    let mut c = config(&root);
    c.bucket_bytes = 1 << 30;
    let (tier, _) = Tier::open(c).unwrap();
    put_range(&tier, 0..3, 1);
    tier.remove(k(&key(1)));
    tier.flush().unwrap();
    assert!(matches!(tier.get(k(&key(1))), Err(TierError::NotFound)));
    check_range(&tier, 0..1, 1);
    // The cancelled record was written into the bucket anyway: after a restart it
    // stays removed.
    tier.close().unwrap();
    let (tier, recovered) = Tier::open(config(&root)).unwrap();
    assert_eq!(recovered.len(), 2);
    assert!(matches!(tier.get(k(&key(1))), Err(TierError::NotFound)));
    // A put after the remove is not cancelled.
    tier.put(k(&key(1)), ObjectVersion(2), value(1, 2)).unwrap();
    tier.flush().unwrap();
    check_range(&tier, 1..2, 2);
}

#[test]
fn remove_all_leaves_only_the_lock() {
    let root = scratch("remove-all");
    let (tier, _) = Tier::open(config(&root)).unwrap();
    put_range(&tier, 0..100, 1);
    tier.flush().unwrap();
    std::fs::write(tier.dir().join("stray-file"), b"x").unwrap();
    assert_eq!(tier.remove_all().unwrap(), 100);
    assert_eq!(files(tier.dir()), [LOCK_FILE]);
    assert!(matches!(tier.get(k(&key(5))), Err(TierError::NotFound)));
    put_range(&tier, 0..5, 2);
    tier.flush().unwrap();
    check_range(&tier, 0..5, 2);
    drop(tier);
    let (_, recovered) = Tier::open(config(&root)).unwrap();
    assert_eq!(recovered.len(), 5);
}

/// Capacity evicts whole buckets, least recently used first, where writing a bucket and
/// reading from it both count as use. Buckets are cut by size only (no deadline), so
/// which bucket holds what is deterministic: four 256 KiB records per 1 MiB bucket.
#[test]
fn capacity_evicts_whole_buckets_least_recently_used_first() {
    let root = scratch("capacity");
    let mut c = config(&root);
    // A bucket takes 1044 KiB: six fit below the high watermark (6.75 MiB), the
    // seventh passes it, and evicting one brings the tier below the low (6.375 MiB).
    c.max_bytes = Some(15 << 19);
    c.low_watermark = 0.85;
    c.events = true;
    let (tier, _) = Tier::open(c).unwrap();
    let v = |i: u64| support::value_of_size(i, 1, 256 << 10);
    let put_bucket = |b: u64| {
        for i in b * 4..b * 4 + 4 {
            tier.put(k(&key(i)), ObjectVersion(1), v(i)).unwrap();
        }
        tier.flush().unwrap();
    };
    for b in 0..6 {
        put_bucket(b); // six buckets, about 6.3 MiB
    }
    assert_eq!((tier.stats().buckets, tier.stats().evicted_buckets), (6, 0));
    tier.get(k(&key(0))).unwrap(); // bucket 0 is now the most recently used
    put_bucket(6); // past the high watermark: the least recently used bucket goes
    let s = tier.stats();
    assert_eq!((s.buckets, s.evicted_buckets, s.evicted_records), (6, 1, 4), "{s:?}");
    assert!(s.bytes <= 15 << 19, "{s:?}");
    let mut evicted: Vec<Vec<u8>> = std::iter::from_fn(|| tier.poll_event())
        .filter_map(|e| match e {
            TierEvent::Dropped { key, cause: DropCause::Evicted, .. } => Some(key.as_bytes().to_vec()),
            _ => None,
        })
        .collect();
    evicted.sort();
    assert_eq!(evicted, (4..8).map(key).collect::<Vec<_>>(), "bucket 1 was the least recently used");
    for i in 0..28 {
        match tier.get(k(&key(i))) {
            Ok((_, bytes)) => assert!(!(4..8).contains(&i) && bytes == v(i), "object {i}"),
            Err(TierError::NotFound) => assert!((4..8).contains(&i), "object {i} was lost"),
            Err(e) => panic!("object {i}: {e}"),
        }
    }
}

#[test]
fn persisted_events_describe_where_records_are() {
    let root = scratch("events");
    let mut c = config(&root);
    c.events = true;
    let (tier, _) = Tier::open(c).unwrap();
    put_range(&tier, 0..3, 9);
    tier.flush().unwrap();
    let events: Vec<TierEvent> = std::iter::from_fn(|| tier.poll_event()).collect();
    assert_eq!(events.len(), 3);
    for e in events {
        let TierEvent::Persisted { version, replica, .. } = e else { panic!("{e:?}") };
        assert_eq!((version, replica.node), (ObjectVersion(9), NodeId(7)));
        assert_eq!(replica.offset % 4096, 0);
    }
}

#[test]
fn a_second_opener_gets_a_lock_error_naming_path_and_holder() {
    let root = scratch("lock");
    let (tier, _) = Tier::open(config(&root)).unwrap();
    let err = Tier::open(config(&root)).unwrap_err();
    let TierError::Locked { path, holder } = &err else { panic!("{err}") };
    assert!(path.ends_with(LOCK_FILE));
    assert!(holder.as_deref().unwrap().contains(&format!("pid {}", std::process::id())), "{err}");
    drop(tier);
    Tier::open(config(&root)).unwrap();
}

#[test]
fn a_missing_or_unusable_root_is_an_error_at_open() {
    let root = scratch("bad-root");
    let err = Tier::open(config(&root.join("nope"))).unwrap_err();
    assert!(matches!(err, TierError::BadRoot { reason: "does not exist", .. }), "{err}");
    std::fs::write(root.join("file"), b"").unwrap();
    let err = Tier::open(config(&root.join("file"))).unwrap_err();
    assert!(matches!(err, TierError::BadRoot { reason: "not a directory", .. }), "{err}");
    let mut c = config(&root);
    c.cluster = "../escape".into();
    assert!(matches!(Tier::open(c), Err(TierError::BadRoot { .. })));
}

#[test]
fn empty_values_are_refused() {
    let root = scratch("empty");
    let (tier, _) = Tier::open(config(&root)).unwrap();
    let err = tier.put(k(b"x"), ObjectVersion(1), bytes::Bytes::new()).unwrap_err();
    assert!(matches!(err, TierError::EmptyValue), "{err}");
}

#[test]
fn keys_never_become_file_names() {
    let root = scratch("names");
    let (tier, _) = Tier::open(config(&root)).unwrap();
    tier.put(k(b"../../escape"), ObjectVersion(1), value(1, 1)).unwrap();
    tier.put(k(b"a/b/c\0d"), ObjectVersion(1), value(2, 1)).unwrap();
    tier.flush().unwrap();
    for f in files(tier.dir()) {
        assert!(f == LOCK_FILE || (f.ends_with(".bucket") && f.len() == 16 + 7), "{f}");
    }
    assert!(tier.get(k(b"../../escape")).unwrap().1 == value(1, 1));
}

#[test]
fn a_replaced_version_stays_dead_after_its_successor_is_removed_and_the_tier_reopens() {
    let root = scratch("replaced");
    let (tier, _) = Tier::open(config(&root)).unwrap();
    tier.put(k(&key(1)), ObjectVersion(1), value(1, 1)).unwrap();
    tier.flush().unwrap();
    tier.put(k(&key(1)), ObjectVersion(2), value(1, 2)).unwrap(); // another bucket
    tier.flush().unwrap();
    assert!(tier.stats().buckets >= 1);
    assert!(tier.remove_version(k(&key(1)), ObjectVersion(2)));
    tier.close().unwrap();
    let (tier, recovered) = Tier::open(config(&root)).unwrap();
    assert!(recovered.is_empty(), "version 1 came back: {recovered:?}");
    assert!(matches!(tier.get(k(&key(1))), Err(TierError::NotFound)));
}

#[test]
fn removing_an_old_version_never_cancels_a_newer_one_queued_behind_it() {
    let root = scratch("remove-version");
    let mut c = config(&root);
    c.bucket_bytes = 1 << 30;
    let (tier, _) = Tier::open(c).unwrap();
    tier.put(k(&key(1)), ObjectVersion(1), value(1, 1)).unwrap();
    tier.put(k(&key(1)), ObjectVersion(2), value(1, 2)).unwrap();
    // Version 1 is dropped while both are still queued: version 2 must survive.
    tier.remove_version(k(&key(1)), ObjectVersion(1));
    tier.flush().unwrap();
    check_range(&tier, 1..2, 2);
    tier.close().unwrap();
    let (tier, recovered) = Tier::open(config(&root)).unwrap();
    assert_eq!(recovered.len(), 1);
    check_range(&tier, 1..2, 2);
}

/// A reader that sees the node directory (a shared root) reads a record straight from
/// its bucket file, with the tier open or closed, and gets only that record's bytes: a
/// descriptor naming another key, another version, a wrong CRC or a missing bucket
/// gives no bytes, and a flipped byte in the file is caught.
#[test]
fn a_record_is_read_straight_from_its_bucket_file_and_only_as_described() {
    use larder_engine::disk::direct::{DirectReadError, read_replica, replica_path};
    let root = scratch("direct");
    let mut c = config(&root);
    c.events = true;
    let (tier, _) = Tier::open(c).unwrap();
    put_range(&tier, 0..4, 9);
    tier.flush().unwrap();
    let persisted: Vec<_> = std::iter::from_fn(|| tier.poll_event())
        .map(|e| match e {
            TierEvent::Persisted { key, version, replica } => (key, version, replica),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(persisted.len(), 4);
    tier.close().unwrap();
    for (key, version, replica) in &persisted {
        let i: u64 = std::str::from_utf8(&key.as_bytes()[7..]).unwrap().parse().unwrap();
        let read = read_replica(&root, "test-cluster", key.as_ref(), *version, replica).unwrap();
        assert_eq!(read, value(i, 9), "object {i}");
    }
    let (key, version, replica) = &persisted[1];
    let other_key = &persisted[2].0;
    let mismatch = |r: Result<Bytes, DirectReadError>| matches!(r, Err(DirectReadError::Mismatch { .. }));
    assert!(mismatch(read_replica(&root, "test-cluster", other_key.as_ref(), *version, replica)));
    assert!(mismatch(read_replica(&root, "test-cluster", key.as_ref(), ObjectVersion(8), replica)));
    let wrong_crc = DiskReplica { crc32c: replica.crc32c ^ 1, ..*replica };
    assert!(mismatch(read_replica(&root, "test-cluster", key.as_ref(), *version, &wrong_crc)));
    let elsewhere = DiskReplica { bucket: BucketId(replica.bucket.0 + 1000), ..*replica };
    assert!(matches!(
        read_replica(&root, "test-cluster", key.as_ref(), *version, &elsewhere),
        Err(DirectReadError::Missing(_))
    ));
    // One flipped bit in the value on disk.
    let path = replica_path(&root, "test-cluster", replica);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[replica.offset as usize + 100] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    assert!(mismatch(read_replica(&root, "test-cluster", key.as_ref(), *version, replica)));
}
