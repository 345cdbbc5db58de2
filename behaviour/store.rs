//! The Store behaviour suite, written once and run on every runtime: each runtime
//! crate's `tests/behaviour.rs` includes this file and instantiates
//! `store_behaviour_tests!` with its [`Harness`] and a `block_on`.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use larder_engine::disk::TierError;
use larder_engine::embedded::{Clock, ManualClock, Runtime, Store, StoreConfig, StoreError};
use larder_engine::key::MAX_KEY_LEN;

#[path = "tmpfs.rs"]
mod tmpfs;

/// Environment variable that turns a test binary into the crash test's child.
pub const CRASH_CHILD_ROOT: &str = "LARDER_TEST_CRASH_CHILD_ROOT";

/// Deterministic, key-dependent bytes.
pub fn value(i: usize, len: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Bytes that depend on `i` in every 8-byte word that matters (a window into one
/// random block, stamped with `i` at both ends): cheap to make for gigabytes of values.
pub fn stamped(i: usize, len: usize) -> Vec<u8> {
    static NOISE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let noise = NOISE.get_or_init(|| value(0, 2 << 20));
    let start = (i * 4099) % (1 << 20);
    let mut out = noise[start..start + len].to_vec();
    out[..8].copy_from_slice(&(i as u64).to_le_bytes());
    out[len - 8..].copy_from_slice(&(!(i as u64)).to_le_bytes());
    out
}

pub fn key(i: usize) -> Vec<u8> {
    format!("prefix/{i:06}").into_bytes()
}

pub fn memory_only(memory: u64) -> StoreConfig {
    StoreConfig { memory_bytes: memory, storage_root: None, ..StoreConfig::default() }
}

pub fn persistent(root: &Path, memory: u64) -> StoreConfig {
    StoreConfig { memory_bytes: memory, storage_root: Some(root.to_path_buf()), ..StoreConfig::default() }
}

/// What a runtime crate provides to the suite.
pub trait Harness: Clone + Send + Sync + 'static {
    type R: Runtime;
    fn open(&self, config: StoreConfig) -> impl Future<Output = Result<Store<Self::R>, StoreError>> + Send;
}

pub async fn put_get_and_friends<H: Harness>(h: H) {
    let store = h.open(memory_only(16 << 20)).await.unwrap();
    let v = value(1, 100_000);
    store.put(b"a", &v).await.unwrap();
    assert_eq!(&store.get(b"a").await.unwrap()[..], &v[..]);
    assert_eq!(store.get_size(b"a").await.unwrap(), 100_000);
    assert!(store.exists(b"a").await.unwrap());
    assert!(!store.exists(b"b").await.unwrap());
    let mut buf = vec![0u8; 200_000];
    assert_eq!(store.get_into(b"a", &mut buf).await.unwrap(), 100_000);
    assert_eq!(&buf[..100_000], &v[..]);
    store.put_parts(b"parts", &[&v[..10], &v[10..5000], &v[5000..]]).await.unwrap();
    assert_eq!(&store.get(b"parts").await.unwrap()[..], &v[..]);
    let stats = store.stats();
    assert_eq!(stats.objects, 2);
    assert_eq!(stats.memory_hits, 3);
    assert!(stats.tier.is_none());
    store.close().await.unwrap();
}

pub async fn every_error_is_typed_and_changes_nothing<H: Harness>(h: H) {
    let store = h.open(memory_only(4 << 20)).await.unwrap();
    let v = value(2, 5000);
    store.put(b"k", &v).await.unwrap();
    assert!(matches!(store.put(b"", &v).await, Err(StoreError::InvalidKey(_))));
    assert!(matches!(store.put(&vec![b'x'; MAX_KEY_LEN + 1], &v).await, Err(StoreError::InvalidKey(_))));
    assert!(matches!(store.get(b"").await, Err(StoreError::InvalidKey(_))));
    assert!(matches!(store.put(b"e", &[]).await, Err(StoreError::EmptyValue)));
    assert!(matches!(store.put_parts(b"e", &[&[], &[]]).await, Err(StoreError::EmptyValue)));
    assert!(matches!(
        store.put(b"big", &vec![0u8; 5 << 20]).await,
        Err(StoreError::TooLarge { len, max }) if len == 5 << 20 && max == 4 << 20
    ));
    assert!(matches!(store.put(b"k", &value(3, 10)).await, Err(StoreError::AlreadyExists)));
    assert!(matches!(store.get(b"missing").await, Err(StoreError::NotFound)));
    assert!(matches!(store.get_size(b"missing").await, Err(StoreError::NotFound)));
    assert!(matches!(store.remove(b"missing", false).await, Err(StoreError::NotFound)));
    let mut small = [0u8; 10];
    assert!(matches!(
        store.get_into(b"k", &mut small).await,
        Err(StoreError::BufferTooSmall { needed: 5000, len: 10 })
    ));
    // A read leases "k": removing it then needs force.
    store.get(b"k").await.unwrap();
    assert!(matches!(store.remove(b"k", false).await, Err(StoreError::HasLease)));
    // Nothing above changed "k".
    assert_eq!(&store.get(b"k").await.unwrap()[..], &v[..]);
    assert_eq!(store.stats().objects, 1);
    store.remove(b"k", true).await.unwrap();
    assert!(matches!(store.get(b"k").await, Err(StoreError::NotFound)));
    store.close().await.unwrap();
    assert!(matches!(store.put(b"k", &v).await, Err(StoreError::Closed)));
    assert!(matches!(store.get(b"k").await, Err(StoreError::Closed)));
    assert!(matches!(store.close().await, Err(StoreError::Closed)));
}

pub async fn a_bad_storage_root_is_an_error_at_open<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    assert!(matches!(
        h.open(persistent(&missing, 4 << 20)).await,
        Err(StoreError::Storage(TierError::BadRoot { reason: "does not exist", .. }))
    ));
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        h.open(persistent(&file, 4 << 20)).await,
        Err(StoreError::Storage(TierError::BadRoot { reason: "not a directory", .. }))
    ));
    let first = h.open(persistent(dir.path(), 4 << 20)).await.unwrap();
    assert!(matches!(
        h.open(persistent(dir.path(), 4 << 20)).await,
        Err(StoreError::Storage(TierError::Locked { .. }))
    ));
    first.close().await.unwrap();
    // Closing released the directory.
    h.open(persistent(dir.path(), 4 << 20)).await.unwrap().close().await.unwrap();
}

/// With persistence on, a value larger than one SSD record (4 GiB) is refused at the
/// put, even when the memory segment could hold it: it could never be made durable.
pub async fn a_value_too_large_to_persist_is_refused_at_the_put<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    // Zeroed pages the kernel maps only when touched: neither the segment nor the value
    // costs memory here.
    let store = h.open(persistent(dir.path(), 5 << 30)).await.unwrap();
    let huge = vec![0u8; (4 << 30) + 1];
    assert!(matches!(
        store.put(b"huge", &huge).await,
        Err(StoreError::TooLarge { len, max }) if len == (4 << 30) + 1 && max == 4 << 30
    ));
    assert!(matches!(store.get(b"huge").await, Err(StoreError::NotFound)));
    store.close().await.unwrap();
}

/// Persistence follows puts in the background, with no flush: the tier's events reach
/// the master through the runtime's readiness of the store's eventfd.
pub async fn puts_are_persisted_behind_the_caller<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let store = h.open(persistent(dir.path(), 16 << 20)).await.unwrap();
    for i in 0..8 {
        store.put(&key(i), &value(i, 70_000)).await.unwrap();
    }
    // Nothing asks for the persists: wait for them to happen (the harness bounds it).
    let rt = store.runtime().clone();
    while store.stats().persisted < 8 {
        rt.sleep(Duration::from_millis(1)).await;
    }
    let stats = store.stats();
    assert_eq!(stats.persisted, 8, "{stats:?}");
    assert_eq!(stats.tier.unwrap().objects, 8);
    store.close().await.unwrap();
}

pub async fn memory_pressure_evicts_to_ssd_and_reads_come_back<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let store = h.open(persistent(dir.path(), 8 << 20)).await.unwrap();
    let n = 48; // 48 × 512 KiB = 24 MiB through an 8 MiB segment
    for i in 0..n {
        store.put(&key(i), &value(i, 512 << 10)).await.unwrap();
    }
    store.flush().await.unwrap();
    let stats = store.stats();
    assert!(stats.evicted_to_disk > 0, "{stats:?}");
    assert_eq!(stats.objects, n as u64);
    assert_eq!(stats.tier.unwrap().objects, n as u64);
    for i in 0..n {
        assert_eq!(store.get(&key(i)).await.unwrap(), value(i, 512 << 10), "object {i}");
    }
    let stats = store.stats();
    assert!(stats.disk_hits > 0 && stats.memory_hits > 0, "{stats:?}");
    store.close().await.unwrap();
}

pub async fn memory_only_eviction_drops_the_oldest<H: Harness>(h: H) {
    let store = h.open(memory_only(4 << 20)).await.unwrap();
    for i in 0..32 {
        store.put(&key(i), &value(i, 256 << 10)).await.unwrap();
    }
    let stats = store.stats();
    assert!(stats.evicted_dropped > 0, "{stats:?}");
    assert!(stats.memory_used <= 4 << 20);
    // The newest survived; every survivor reads back intact; the others are gone.
    assert_eq!(store.get(&key(31)).await.unwrap(), value(31, 256 << 10));
    let mut found = 0;
    for i in 0..32 {
        match store.get(&key(i)).await {
            Ok(v) => {
                assert_eq!(v, value(i, 256 << 10));
                found += 1;
            }
            Err(StoreError::NotFound) => {}
            Err(e) => panic!("object {i}: {e}"),
        }
    }
    assert_eq!(found as u64, store.stats().objects);
    store.close().await.unwrap();
}

pub async fn reopening_finds_everything_that_was_persisted<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let store = h.open(persistent(dir.path(), 8 << 20)).await.unwrap();
    for i in 0..20 {
        store.put(&key(i), &value(i, 300_000)).await.unwrap();
    }
    store.remove(&key(3), false).await.unwrap();
    store.close().await.unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path().join("default/1")).unwrap().collect();
    assert!(files.len() > 1, "close deleted no files");
    let store = h.open(persistent(dir.path(), 8 << 20)).await.unwrap();
    assert_eq!(store.stats().recovered, 19);
    for i in 0..20 {
        match store.get(&key(i)).await {
            Ok(v) => assert_eq!(v, value(i, 300_000)),
            Err(StoreError::NotFound) => assert_eq!(i, 3, "only the removed object is gone"),
            Err(e) => panic!("object {i}: {e}"),
        }
    }
    // Promoted back into memory: the next read is a memory hit.
    let hits = store.stats().memory_hits;
    store.get(&key(0)).await.unwrap();
    assert_eq!(store.stats().memory_hits, hits + 1);
    // A re-put after recovery gets a newer version, and survives the next reopen.
    store.remove(&key(5), true).await.unwrap();
    store.put(&key(5), &value(500, 1000)).await.unwrap();
    store.close().await.unwrap();
    let store = h.open(persistent(dir.path(), 8 << 20)).await.unwrap();
    assert_eq!(store.get(&key(5)).await.unwrap(), value(500, 1000));
    store.close().await.unwrap();
}

/// The versions a store hands out lie above every version already on disk, even when
/// the clock has stepped back since the run that wrote them (here: that run's record
/// and removal of "clock" carry a version far in the future). A put after the step back
/// survives the next reopen instead of vanishing behind the old removal.
pub async fn a_clock_stepped_back_cannot_hide_new_puts<H: Harness>(h: H) {
    use larder_engine::disk::{Tier, TierConfig};
    use larder_engine::{KeyRef, NodeId, ObjectVersion};
    let dir = tempfile::tempdir().unwrap();
    let future = ObjectVersion(u64::MAX / 2); // the year 2262, in nanoseconds
    {
        let (tier, _) = Tier::open(TierConfig::new(dir.path(), "default", NodeId(1))).unwrap();
        let (clock, keep) = (KeyRef::new(b"clock").unwrap(), KeyRef::new(b"keep").unwrap());
        tier.put(clock, future, value(1, 5000).into()).unwrap();
        tier.put(keep, ObjectVersion(5), value(2, 5000).into()).unwrap();
        tier.flush().unwrap();
        // Dead in a bucket that stays (it holds "keep"): the log entry stays too.
        assert!(tier.remove_version(clock, future));
        tier.close().unwrap();
    }
    let store = h.open(persistent(dir.path(), 8 << 20)).await.unwrap();
    store.put(b"clock", &value(3, 7000)).await.unwrap();
    store.close().await.unwrap();
    let store = h.open(persistent(dir.path(), 8 << 20)).await.unwrap();
    assert_eq!(store.get(b"clock").await.unwrap(), value(3, 7000), "the new put vanished");
    assert_eq!(store.get(b"keep").await.unwrap(), value(2, 5000));
    store.close().await.unwrap();
}

/// Dropping a store without closing it still writes out what was acknowledged and
/// releases the storage root once its background work has ended.
pub async fn dropping_without_close_loses_nothing_and_releases_the_root<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let store = h.open(persistent(dir.path(), 16 << 20)).await.unwrap();
    for i in 0..6 {
        store.put(&key(i), &value(i, 200_000)).await.unwrap();
    }
    drop(store);
    let store = reopen_when_released(&h, dir.path()).await;
    for i in 0..6 {
        assert_eq!(store.get(&key(i)).await.unwrap(), value(i, 200_000), "object {i}");
    }
    store.close().await.unwrap();
}

pub async fn remove_all_wipes_memory_and_disk<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let store = h.open(persistent(dir.path(), 8 << 20)).await.unwrap();
    for i in 0..10 {
        store.put(&key(i), &value(i, 100_000)).await.unwrap();
    }
    store.flush().await.unwrap();
    store.get(&key(0)).await.unwrap(); // leased
    assert_eq!(store.remove_all(false).await.unwrap(), 9);
    assert!(store.exists(&key(0)).await.unwrap());
    assert_eq!(store.remove_all(true).await.unwrap(), 1);
    assert_eq!(store.stats().objects, 0);
    store.flush().await.unwrap();
    let left: Vec<String> = std::fs::read_dir(dir.path().join("default/1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["LOCK"]);
    store.close().await.unwrap();
    let store = h.open(persistent(dir.path(), 8 << 20)).await.unwrap();
    assert_eq!(store.stats().objects, 0);
    store.close().await.unwrap();
}

pub async fn batch_forms_answer_per_item<H: Harness>(h: H) {
    let store = h.open(memory_only(8 << 20)).await.unwrap();
    let (a, b) = (value(1, 1000), value(2, 2000));
    let puts = store.batch_put(&[(b"a", &a), (b"b", &b), (b"a", &b), (b"", &a)]).await;
    assert!(puts[0].is_ok() && puts[1].is_ok());
    assert!(matches!(puts[2], Err(StoreError::AlreadyExists)));
    assert!(matches!(puts[3], Err(StoreError::InvalidKey(_))));
    let got = store.batch_get(&[b"a", b"zz", b"b"]).await;
    assert_eq!(got[0].as_ref().unwrap(), &a[..]);
    assert!(matches!(got[1], Err(StoreError::NotFound)));
    assert_eq!(got[2].as_ref().unwrap(), &b[..]);
    let ex = store.batch_exists(&[b"a", b"zz"]).await;
    assert!(ex[0].as_ref().unwrap() & !ex[1].as_ref().unwrap());
    let rm = store.batch_remove(&[b"a", b"zz", b"b"], true).await;
    assert!(rm[0].is_ok() && matches!(rm[1], Err(StoreError::NotFound)) && rm[2].is_ok());
    assert_eq!(store.stats().objects, 0);
    store.close().await.unwrap();
}

/// `batch_get_into` copies every object into its own buffer, reading those on disk
/// all at once; each key gets its own answer (a buffer too small, a missing key), and
/// keys and buffers must pair up.
pub async fn batch_get_into_reads_every_object_into_its_own_buffer<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let store = h.open(persistent(dir.path(), 16 << 20)).await.unwrap();
    let len = |i: usize| (300 << 10) + i * 4099;
    for i in 0..12 {
        store.put(&key(i), &stamped(i, len(i))).await.unwrap();
    }
    store.close().await.unwrap();
    // After a reopen every object is on disk only.
    let store = h.open(persistent(dir.path(), 16 << 20)).await.unwrap();
    let keys: Vec<Vec<u8>> = (0..14).map(key).collect(); // 12 and 13 do not exist
    let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
    let mut bufs: Vec<Vec<u8>> = (0..14).map(|i| vec![0u8; if i == 5 { 1000 } else { 1 << 20 }]).collect();
    let mut buf_refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    let got = store.batch_get_into(&key_refs, &mut buf_refs).await;
    for (i, g) in got.iter().enumerate() {
        match (i, g) {
            (5, Err(StoreError::BufferTooSmall { needed, len: 1000 })) => assert_eq!(*needed, len(5) as u64),
            (12 | 13, Err(StoreError::NotFound)) => {}
            (i, Ok(n)) if i < 12 => {
                assert_eq!(*n, len(i));
                assert!(bufs[i][..*n] == stamped(i, len(i)), "object {i}: wrong bytes");
            }
            (i, other) => panic!("object {i}: {other:?}"),
        }
    }
    assert!(store.stats().disk_hits >= 11, "{:?}", store.stats());
    let mut one = [0u8; 10];
    let got = store.batch_get_into(&key_refs[..2], &mut [&mut one[..]]).await;
    assert!(got.iter().all(|g| matches!(g, Err(StoreError::BatchLength { keys: 2, buffers: 1 }))));
    store.close().await.unwrap();
}

/// Many tasks putting through a small memory segment and a small write-behind queue:
/// puts wait for the SSD when they must, none fails, and everything reads back.
pub async fn sustained_puts_wait_for_the_ssd_and_never_fail<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { write_behind_bytes: 1 << 20, ..persistent(dir.path(), 4 << 20) };
    let store = Arc::new(h.open(config).await.unwrap());
    let (tasks, each) = (8, 24);
    let mut done = Vec::new();
    for t in 0..tasks {
        let (tx, rx) = oneshot::channel::<()>();
        let store = Arc::clone(&store);
        store.runtime().clone().spawn(async move {
            for j in 0..each {
                let i = t * 100 + j;
                store.put(&key(i), &value(i, 256 << 10)).await.unwrap_or_else(|e| panic!("put {i}: {e}"));
            }
            tx.send(()).unwrap();
        });
        done.push(rx);
    }
    for rx in done {
        rx.await.expect("a task panicked");
    }
    store.flush().await.unwrap();
    for t in 0..tasks {
        for j in 0..each {
            let i = t * 100 + j;
            assert_eq!(store.get(&key(i)).await.unwrap(), value(i, 256 << 10), "object {i}");
        }
    }
    assert!(store.stats().evicted_to_disk > 0);
    store.close().await.unwrap();
}

/// Gets racing puts, evictions and forced removes in a small memory-only store: every
/// read returns the object's own bytes or `NotFound`, never another object's.
pub async fn gets_racing_evictions_and_removes_never_return_wrong_bytes<H: Harness>(h: H) {
    // No leases: a read leaves its object evictable at once, whatever the scheduler does.
    let config = StoreConfig { lease_ttl: Duration::ZERO, ..memory_only(2 << 20) };
    let store = Arc::new(h.open(config).await.unwrap());
    let (writers, readers, rounds) = (3usize, 3usize, 120usize);
    let mut done = Vec::new();
    for t in 0..writers + readers {
        let (tx, rx) = oneshot::channel::<()>();
        let store = Arc::clone(&store);
        store.runtime().clone().spawn(async move {
            for r in 0..rounds {
                let i = (r * 7 + t * 13) % 64;
                if t < writers {
                    match store.put(&key(i), &value(i, 64 << 10)).await {
                        Ok(()) | Err(StoreError::AlreadyExists) | Err(StoreError::NoSpace) => {}
                        Err(e) => panic!("put {i}: {e}"),
                    }
                    if r % 5 == 0 {
                        let _ = store.remove(&key((i + 1) % 64), true).await;
                    }
                } else {
                    match store.get(&key(i)).await {
                        Ok(v) => assert!(v == value(i, 64 << 10), "object {i} read another object's bytes"),
                        Err(StoreError::NotFound) | Err(StoreError::NotReady) => {}
                        Err(e) => panic!("get {i}: {e}"),
                    }
                }
            }
            tx.send(()).unwrap();
        });
        done.push(rx);
    }
    for rx in done {
        rx.await.expect("a task panicked");
    }
    assert!(store.stats().evicted_dropped > 0, "{:?}", store.stats());
    store.close().await.unwrap();
}

/// Many tasks on the runtime's threads put and get at once.
pub async fn concurrent_puts_and_gets<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(h.open(persistent(dir.path(), 16 << 20)).await.unwrap());
    let tasks = 16;
    let mut done = Vec::new();
    for t in 0..tasks {
        let (tx, rx) = oneshot::channel::<()>();
        let store = Arc::clone(&store);
        store.runtime().clone().spawn(async move {
            for j in 0..12 {
                let i = t * 100 + j;
                store.put(&key(i), &value(i, 64 << 10)).await.unwrap();
                assert_eq!(store.get(&key(i)).await.unwrap(), value(i, 64 << 10));
            }
            tx.send(()).unwrap();
        });
        done.push(rx);
    }
    for rx in done {
        rx.await.expect("a task panicked");
    }
    assert_eq!(store.stats().objects, (tasks * 12) as u64);
    store.close().await.unwrap();
}

/// The storage root vanishes under a running store: puts still succeed in memory,
/// flush reports the failure, and nothing acknowledged in memory is lost.
pub async fn a_vanished_storage_root_is_an_error_and_memory_keeps_everything<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let store = h.open(persistent(dir.path(), 16 << 20)).await.unwrap();
    store.put(&key(0), &value(0, 100_000)).await.unwrap();
    store.flush().await.unwrap();
    std::fs::remove_dir_all(dir.path().join("default")).unwrap();
    for i in 1..5 {
        store.put(&key(i), &value(i, 100_000)).await.unwrap();
    }
    assert!(matches!(store.flush().await, Err(StoreError::Storage(_))));
    for i in 0..5 {
        assert_eq!(store.get(&key(i)).await.unwrap(), value(i, 100_000), "object {i}");
    }
    assert!(store.stats().persist_failures > 0);
    let _ = store.close().await;
}

/// A full disk (a small tmpfs): puts are still acknowledged from memory, flush reports
/// the failure as a storage error, nothing acknowledged is lost, and persistence resumes
/// once space is freed.
pub async fn a_full_disk_is_a_storage_error_and_loses_nothing<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = tmpfs::Tmpfs::mount(&dir.path().join("mnt"), "3m") else {
        eprintln!(
            "SKIPPED: mounting a tmpfs is not permitted here (needs root); the full-disk test did not run"
        );
        return;
    };
    let store = h.open(persistent(&mnt.path, 32 << 20)).await.unwrap();
    for i in 0..12 {
        store.put(&key(i), &value(i, 512 << 10)).await.unwrap(); // 6 MiB onto 3 MiB
    }
    assert!(matches!(store.flush().await, Err(StoreError::Storage(_))));
    assert!(store.stats().persist_failures > 0);
    for i in 0..12 {
        assert_eq!(store.get(&key(i)).await.unwrap(), value(i, 512 << 10), "object {i}");
    }
    // Free the space: what is written next persists. (The bucket being written when
    // everything was removed holds its blocks until its write ends: this flush, with
    // nothing acknowledged left to wait for, waits for that write.)
    store.remove_all(true).await.unwrap();
    store.flush().await.unwrap();
    store.put(&key(100), &value(100, 512 << 10)).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.stats().tier.unwrap().objects, 1);
    store.close().await.unwrap();
    let store = h.open(persistent(&mnt.path, 32 << 20)).await.unwrap();
    assert_eq!(store.get(&key(100)).await.unwrap(), value(100, 512 << 10));
    store.close().await.unwrap();
}

/// `max_disk_bytes` bounds what the filesystem really holds: 1.2 GiB of values through
/// a 192 MiB limit on a 448 MiB tmpfs, with reads of older objects in between (which
/// open buckets that are evicted later), keeps the filesystem within the limit plus the
/// bucket being written, and no put fails.
pub async fn the_disk_limit_bounds_what_the_filesystem_holds<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = tmpfs::Tmpfs::mount(&dir.path().join("mnt"), "448m") else {
        eprintln!(
            "SKIPPED: mounting a tmpfs is not permitted here (needs root); the capacity test did not run"
        );
        return;
    };
    let limit: u64 = 192 << 20;
    let used = || {
        let s = rustix::fs::statvfs(&mnt.path).unwrap();
        (s.f_blocks - s.f_bfree) * s.f_frsize
    };
    // The bucket being written (64 MiB, reserved whole, plus a write chunk) and the
    // node directory's small files come on top of the limit.
    let allowance = limit + (64 << 20) + (1 << 20) + (1 << 20);
    let store =
        h.open(StoreConfig { max_disk_bytes: Some(limit), ..persistent(&mnt.path, 64 << 20) }).await.unwrap();
    let (n, len) = (2400, 512 << 10);
    let mut peak = 0;
    for i in 0..n {
        store.put(&key(i), &stamped(i, len)).await.unwrap_or_else(|e| panic!("put {i}: {e}"));
        if i >= 300 && i % 8 == 0 {
            // Older than memory holds: a read from SSD, unless its bucket was evicted.
            let j = i - 200;
            match store.get(&key(j)).await {
                Ok(v) => assert!(v == stamped(j, len), "object {j}: wrong bytes"),
                Err(StoreError::NotFound) => {}
                Err(e) => panic!("get {j}: {e}"),
            }
        }
        if i % 16 == 0 {
            peak = peak.max(used());
            assert!(
                peak <= allowance,
                "after {i} puts the filesystem holds {peak} bytes (allowed {allowance})"
            );
        }
    }
    store.flush().await.unwrap();
    peak = peak.max(used());
    assert!(peak <= allowance, "the filesystem holds {peak} bytes (allowed {allowance})");
    let stats = store.stats();
    let tier = stats.tier.unwrap();
    eprintln!(
        "disk limit {} MiB: the filesystem held at most {} MiB (allowed {} MiB: the limit, the bucket being written and the small files); {} buckets evicted, {} reads from SSD",
        limit >> 20,
        peak >> 20,
        allowance >> 20,
        tier.evicted_buckets,
        stats.disk_hits
    );
    assert!(tier.evicted_buckets > 0 && stats.disk_hits > 0, "{stats:?}");
    assert!(tier.bytes <= limit, "{tier:?}");
    store.close().await.unwrap();
}

/// The flush contract on a full disk, as a user meets it: on a 24 MiB tmpfs nearly
/// filled by another file, 24 puts (4 KiB – 770 KiB) are acknowledged; flushes (two at
/// once, then another) report the storage error; once the other file is deleted the
/// next flushes (two at once) return `Ok` and `close` returns `Ok`; after reopening,
/// all 24 objects are there, byte for byte.
pub async fn a_flush_after_a_failed_one_is_ok_only_once_everything_is_durable<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = tmpfs::Tmpfs::mount(&dir.path().join("mnt"), "24m") else {
        eprintln!("SKIPPED: mounting a tmpfs is not permitted here (needs root); the flush test did not run");
        return;
    };
    let filler = mnt.path.join("other-file");
    std::fs::write(&filler, vec![1u8; 23 << 20]).unwrap();
    let store = Arc::new(h.open(persistent(&mnt.path, 64 << 20)).await.unwrap());
    let len = |i: usize| 4096 + i * ((770 << 10) - 4096) / 23;
    for i in 0..24 {
        store.put(&key(i), &stamped(i, len(i))).await.unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
    let two_flushes = || {
        let (a, b) = (Arc::clone(&store), Arc::clone(&store));
        let (ta, ra) = oneshot::channel();
        let (tb, rb) = oneshot::channel();
        store.runtime().spawn(async move { ta.send(a.flush().await).unwrap() });
        store.runtime().spawn(async move { tb.send(b.flush().await).unwrap() });
        async move { (ra.await.unwrap(), rb.await.unwrap()) }
    };
    let not_durable = |r: &Result<(), StoreError>| matches!(r, Err(StoreError::Storage(TierError::NotDurable { records, .. })) if *records > 0);
    let (a, b) = two_flushes().await;
    assert!(not_durable(&a) && not_durable(&b), "{a:?} {b:?}");
    let again = store.flush().await;
    assert!(not_durable(&again), "a retried flush forgot the failure: {again:?}");
    std::fs::remove_file(&filler).unwrap();
    let (a, b) = two_flushes().await;
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    store.flush().await.unwrap();
    store.close().await.unwrap();
    let store = h.open(persistent(&mnt.path, 64 << 20)).await.unwrap();
    for i in 0..24 {
        let got = store.get(&key(i)).await.unwrap_or_else(|e| panic!("object {i} after reopen: {e}"));
        assert!(got == stamped(i, len(i)), "object {i}: wrong bytes");
    }
    store.close().await.unwrap();
}

/// Objects whose persist failed and that are then removed leave nothing undurable:
/// the next flush and the close are `Ok` though the disk is still full.
pub async fn removing_what_could_not_be_persisted_leaves_nothing_to_report<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = tmpfs::Tmpfs::mount(&dir.path().join("mnt"), "3m") else {
        eprintln!("SKIPPED: mounting a tmpfs is not permitted here (needs root); the test did not run");
        return;
    };
    let store = h.open(persistent(&mnt.path, 32 << 20)).await.unwrap();
    for i in 0..12 {
        store.put(&key(i), &value(i, 512 << 10)).await.unwrap(); // 6 MiB onto 3 MiB
    }
    assert!(matches!(store.flush().await, Err(StoreError::Storage(TierError::NotDurable { .. }))));
    for i in 0..12 {
        store.remove(&key(i), true).await.unwrap();
    }
    store.flush().await.unwrap();
    store.close().await.unwrap();
}

/// The crash test's child: puts forever on the root in `CRASH_CHILD_ROOT`, printing
/// `flushed N` once objects 0..N are durable.
pub async fn crash_child<H: Harness>(h: H) {
    let Ok(root) = std::env::var(CRASH_CHILD_ROOT) else { return };
    if std::env::var("LARDER_TEST_CRASH_CHILD_MODE").as_deref() == Ok("removals") {
        return removal_child(h, Path::new(&root)).await;
    }
    let start: usize = std::env::var("LARDER_TEST_CRASH_CHILD_START").unwrap().parse().unwrap();
    let store = h.open(persistent(Path::new(&root), 8 << 20)).await.unwrap();
    let mut i = start;
    loop {
        store.put(&key(i), &value(i, 40_000 + (i % 7) * 10_000)).await.unwrap();
        i += 1;
        if i % 10 == 0 {
            store.flush().await.unwrap();
            println!("flushed {i}");
        }
    }
}

/// The removal test's child: puts, removes right away (while the persist is still in
/// flight), puts even ones again, flushes, says so, and waits to be killed.
async fn removal_child<H: Harness>(h: H, root: &Path) {
    let store = h.open(persistent(root, 32 << 20)).await.unwrap();
    for i in 0..20 {
        store.put(&key(i), &value(i, 100_000)).await.unwrap();
        store.remove(&key(i), false).await.unwrap();
        if i % 2 == 0 {
            store.put(&key(i), &value(i + 1000, 90_000)).await.unwrap();
        }
    }
    store.flush().await.unwrap();
    println!("flushed 20");
    loop {
        store.runtime().sleep(Duration::from_secs(3600)).await;
    }
}

/// Runs this test binary's ignored crash child `test_name` on `root` with one more
/// variable, stdout piped (spawned under [`tmpfs::spawning`]).
fn spawn_crash_child(test_name: &str, root: &Path, var: (&str, &str)) -> std::process::Child {
    let _spawning = tmpfs::spawning();
    Command::new(std::env::current_exe().unwrap())
        .args([test_name, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_ROOT, root)
        .env(var.0, var.1)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A removal a flush returned after is durable: the process is killed (no close, no
/// drop) right after the flush, and the reopened store has every removed object gone
/// and every re-put one with its new value.
pub async fn a_flushed_removal_stays_removed_after_a_crash<H: Harness>(h: H, test_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_crash_child(test_name, dir.path(), ("LARDER_TEST_CRASH_CHILD_MODE", "removals"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while !lines.next().expect("child exited early").unwrap().contains("flushed 20") {}
    child.kill().unwrap();
    child.wait().unwrap();
    let store = h.open(persistent(dir.path(), 32 << 20)).await.unwrap();
    for i in 0..20 {
        match store.get(&key(i)).await {
            Ok(v) => {
                assert_eq!(i % 2, 0, "removed object {i} came back after the crash");
                assert_eq!(v, value(i + 1000, 90_000), "object {i}");
            }
            Err(StoreError::NotFound) => assert_eq!(i % 2, 1, "flushed object {i} was lost"),
            Err(e) => panic!("object {i}: {e}"),
        }
    }
    store.close().await.unwrap();
}

/// Removes racing the write-behind: an object removed right after its put (while its
/// record is still being written) stays removed after a reopen, with `close` or
/// without, and the usual overwrite (put, remove, put again) keeps the new value.
pub async fn removals_racing_persistence_stay_removed_across_reopen<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    for close in [true, false] {
        let store = h.open(persistent(dir.path(), 32 << 20)).await.unwrap();
        store.remove_all(true).await.unwrap();
        for i in 0..20 {
            store.put(&key(i), &value(i, 100_000)).await.unwrap();
            store.remove(&key(i), false).await.unwrap();
            if i % 2 == 0 {
                store.put(&key(i), &value(i + 1000, 90_000)).await.unwrap();
            }
        }
        if close {
            store.close().await.unwrap();
        } else {
            drop(store);
        }
        let store = reopen_when_released(&h, dir.path()).await;
        for i in 0..20 {
            match store.get(&key(i)).await {
                Ok(v) => {
                    assert_eq!(i % 2, 0, "removed object {i} came back (close: {close})");
                    assert_eq!(v, value(i + 1000, 90_000), "object {i} (close: {close})");
                }
                Err(StoreError::NotFound) => assert_eq!(i % 2, 1, "object {i} was lost (close: {close})"),
                Err(e) => panic!("object {i}: {e}"),
            }
        }
        store.close().await.unwrap();
    }
}

/// Opens `root` again, waiting while a dropped store's background work still holds it.
async fn reopen_when_released<H: Harness>(h: &H, root: &Path) -> Store<H::R> {
    // Dropping gives no signal to wait on, so look again until the lock is gone. The
    // bound only turns a store that never lets go into a failure instead of a hang.
    let started = std::time::Instant::now();
    loop {
        match h.open(persistent(root, 32 << 20)).await {
            Ok(s) => return s,
            Err(StoreError::Storage(TierError::Locked { .. })) => {
                assert!(started.elapsed() < Duration::from_secs(120), "the root was never released");
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("reopening: {e}"),
        }
    }
}

/// Memory-only, with every object leased: a put that finds no room is refused, and
/// once the leases expire (virtual time: the clock is moved by hand) the master's
/// timers let eviction make room again.
pub async fn eviction_resumes_when_leases_expire<H: Harness>(h: H) {
    let clock = ManualClock::new();
    let config = StoreConfig { clock: Clock::Manual(clock.clone()), ..memory_only(4 << 20) };
    let store = h.open(config).await.unwrap();
    for i in 0..8 {
        store.put(&key(i), &value(i, 512 << 10)).await.unwrap(); // 8 × 512 KiB fill 4 MiB
        store.get(&key(i)).await.unwrap(); // leased for 10 s
    }
    assert!(matches!(store.put(&key(8), &value(8, 512 << 10)).await, Err(StoreError::NoSpace)));
    clock.advance(Duration::from_millis(9_999));
    assert!(matches!(store.put(&key(8), &value(8, 512 << 10)).await, Err(StoreError::NoSpace)));
    clock.advance(Duration::from_millis(1));
    store.put(&key(9), &value(9, 512 << 10)).await.unwrap();
    assert_eq!(store.get(&key(9)).await.unwrap(), value(9, 512 << 10));
    store.close().await.unwrap();
}

/// With persistence on, memory full of leased objects: once nothing is left to
/// persist, a put is refused at once (waiting for the SSD cannot free leased memory),
/// changes nothing, and succeeds once the leases expire (virtual time), its room made
/// by evicting an object to SSD, which reads come back from.
pub async fn a_put_into_leased_memory_is_refused_once_nothing_is_left_to_persist<H: Harness>(h: H) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    // A high watermark of 1.0: filling memory starts no eviction, so no object can be
    // evicted between its put and the get that leases it.
    let config = StoreConfig {
        clock: Clock::Manual(clock.clone()),
        high_watermark: 1.0,
        low_watermark: 0.9,
        ..persistent(dir.path(), 4 << 20)
    };
    let store = h.open(config).await.unwrap();
    for i in 0..8 {
        store.put(&key(i), &value(i, 512 << 10)).await.unwrap(); // 8 × 512 KiB fill 4 MiB
        assert_eq!(store.get(&key(i)).await.unwrap(), value(i, 512 << 10)); // leased for 10 s
    }
    store.flush().await.unwrap();
    assert!(matches!(store.put(&key(8), &value(8, 512 << 10)).await, Err(StoreError::NoSpace)));
    assert!(matches!(store.get(&key(8)).await, Err(StoreError::NotFound)));
    assert_eq!(store.stats().memory_hits, 8, "{:?}", store.stats());
    clock.advance(Duration::from_secs(10));
    store.put(&key(8), &value(8, 512 << 10)).await.unwrap();
    store.flush().await.unwrap();
    for i in 0..9 {
        assert_eq!(store.get(&key(i)).await.unwrap(), value(i, 512 << 10), "object {i}");
    }
    let stats = store.stats();
    assert!(stats.evicted_to_disk > 0 && stats.disk_hits > 0, "{stats:?}");
    store.close().await.unwrap();
}

/// A child putting continuously is SIGKILLed several times; each reopen finds every
/// object whose flush had returned, byte for byte.
pub async fn reopening_after_sigkill_keeps_everything_flushed<H: Harness>(h: H, test_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut next = 0usize;
    for round in 0..4 {
        let start = next.to_string();
        let mut child = spawn_crash_child(test_name, dir.path(), ("LARDER_TEST_CRASH_CHILD_START", &start));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut flushed = next;
        let target = 3 + round * 2;
        let mut seen = 0;
        while seen < target {
            let line = lines.next().expect("child exited early").unwrap();
            if let Some(n) = line.strip_prefix("flushed ") {
                flushed = n.parse().unwrap();
                seen += 1;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let store = h.open(persistent(dir.path(), 8 << 20)).await.unwrap();
        for i in 0..flushed {
            let got = store.get(&key(i)).await.unwrap_or_else(|e| panic!("round {round}: object {i}: {e}"));
            assert_eq!(got, value(i, 40_000 + (i % 7) * 10_000), "round {round}: object {i}");
        }
        // Objects past the last flush may or may not be there, but never wrong.
        let mut i = flushed;
        while let Ok(got) = store.get(&key(i)).await {
            assert_eq!(got, value(i, 40_000 + (i % 7) * 10_000));
            i += 1;
        }
        store.close().await.unwrap();
        next = i;
        let tmp = std::fs::read_dir(dir.path().join("default/1"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        assert_eq!(tmp, 0, "recovery left temporary files");
    }
}

/// Instantiates the suite: `store_behaviour_tests!(harness_expr, block_on_fn);`
macro_rules! store_behaviour_tests {
    ($harness:expr, $block_on:path) => {
        store_behaviour_tests!(@tests $harness, $block_on;
            put_get_and_friends,
            puts_are_persisted_behind_the_caller,
            every_error_is_typed_and_changes_nothing,
            a_bad_storage_root_is_an_error_at_open,
            a_value_too_large_to_persist_is_refused_at_the_put,
            memory_pressure_evicts_to_ssd_and_reads_come_back,
            memory_only_eviction_drops_the_oldest,
            reopening_finds_everything_that_was_persisted,
            a_clock_stepped_back_cannot_hide_new_puts,
            remove_all_wipes_memory_and_disk,
            dropping_without_close_loses_nothing_and_releases_the_root,
            removals_racing_persistence_stay_removed_across_reopen,
            eviction_resumes_when_leases_expire,
            a_put_into_leased_memory_is_refused_once_nothing_is_left_to_persist,
            batch_forms_answer_per_item,
            batch_get_into_reads_every_object_into_its_own_buffer,
            concurrent_puts_and_gets,
            gets_racing_evictions_and_removes_never_return_wrong_bytes,
            sustained_puts_wait_for_the_ssd_and_never_fail,
            a_vanished_storage_root_is_an_error_and_memory_keeps_everything,
            a_full_disk_is_a_storage_error_and_loses_nothing,
            a_flush_after_a_failed_one_is_ok_only_once_everything_is_durable,
            removing_what_could_not_be_persisted_leaves_nothing_to_report,
            the_disk_limit_bounds_what_the_filesystem_holds,
        );
        #[test]
        #[ignore = "the SIGKILL test's child process; runs only when that test spawns it"]
        fn crash_child() {
            $block_on(suite::crash_child($harness));
        }
        #[test]
        fn a_flushed_removal_stays_removed_after_a_crash() {
            $block_on(suite::a_flushed_removal_stays_removed_after_a_crash($harness, "crash_child"));
        }
        #[test]
        fn reopening_after_sigkill_keeps_everything_flushed() {
            $block_on(suite::reopening_after_sigkill_keeps_everything_flushed($harness, "crash_child"));
        }
    };
    (@tests $harness:expr, $block_on:path; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $block_on(suite::$name($harness));
            }
        )*
    };
}
