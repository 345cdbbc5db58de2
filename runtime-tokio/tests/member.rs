//! An application opening the same `Store` with a master: a member of a real cluster
//! (a `larder master` and a `larder node` process on 127.0.0.1) that contributes its
//! own memory and SSD, or nothing (a pure client). Every byte read back is compared
//! with what was put.

mod common;

use common::{HANG_GUARD, MasterProcess, NodeProcess, assert_same, value};
use larder_engine::embedded::{ConfigError, StoreConfig, StoreError};

/// A member of the test cluster contributing `memory` (and SSD under `root`).
fn member(master: &MasterProcess, memory: u64, root: Option<&std::path::Path>) -> StoreConfig {
    StoreConfig {
        master: Some(master.addr.to_string()),
        cluster: "larder".into(),
        memory_bytes: memory,
        storage_root: root.map(std::path::Path::to_path_buf),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..StoreConfig::default()
    }
}

async fn open(config: StoreConfig) -> larder_tokio::Store {
    let opened = tokio::time::timeout(HANG_GUARD, larder_tokio::open(config)).await.expect("not hung");
    opened.expect("the member joins")
}

fn key(i: u64) -> Vec<u8> {
    format!("member/{i}").into_bytes()
}

/// The application's puts go to its own segment first: with the other node (which has
/// more room, so "most free" alone would choose it) killed, everything the application
/// put still reads back. A pure client's puts and gets cross the network. After a
/// flush and a close, the application opened again on its root is the same node, and
/// its flushed objects read back without a re-put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_member_puts_into_its_own_memory_and_its_flushed_objects_survive_a_reopen() {
    let master = MasterProcess::start("127.0.0.1:0", &["--node-ttl", "3s"]);
    let node_dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(master.addr, "32MiB", node_dir.path());
    master.wait_for_metric("larder_master_segments", 1.0);
    let app_root = tempfile::tempdir().unwrap();
    let app = open(member(&master, 8 << 20, Some(app_root.path()))).await;
    assert!(app.is_member());
    // Opening returns once the member's segment is registered.
    assert_eq!(master.metric("larder_master_segments"), Some(2.0));
    let client = open(member(&master, 0, None)).await;

    for i in 0..6 {
        app.put(&key(i), &value(i, 300_000)).await.unwrap();
    }
    assert_eq!(
        app.put(&key(0), b"again").await.unwrap_err().to_string(),
        StoreError::AlreadyExists.to_string()
    );
    for i in 0..6 {
        assert_same(&client.get(&key(i)).await.unwrap(), &value(i, 300_000), "the pure client's get");
    }
    assert_eq!(client.get_size(&key(3)).await.unwrap(), 300_000);
    let mut small = vec![0u8; 1000];
    assert!(matches!(
        client.get_into(&key(3), &mut small).await,
        Err(StoreError::BufferTooSmall { needed: 300_000, len: 1000 })
    ));
    let mut room = vec![0u8; 400_000];
    assert_eq!(client.get_into(&key(3), &mut room).await.unwrap(), 300_000);
    assert_same(&room[..300_000], &value(3, 300_000), "get_into");
    assert!(matches!(client.get(b"member/missing").await, Err(StoreError::NotFound)));
    assert!(matches!(client.put(b"", b"x").await, Err(StoreError::InvalidKey(_))));

    // The other node goes; what the application put was in its own segment.
    node.kill();
    master.wait_for_metric("larder_master_nodes", 1.0);
    for i in 0..6 {
        assert_same(&app.get(&key(i)).await.unwrap(), &value(i, 300_000), "in the member's own segment");
    }
    // A pure client's put lands in the one segment left, the application's.
    client.put(b"member/from-client", &value(77, 100_000)).await.unwrap();
    assert_same(&app.get(b"member/from-client").await.unwrap(), &value(77, 100_000), "a client's put");

    app.flush().await.unwrap();
    app.close().await.unwrap();
    assert!(matches!(app.get(&key(0)).await, Err(StoreError::Closed)));
    master.wait_for_metric("larder_master_segments", 0.0);

    let app = open(member(&master, 8 << 20, Some(app_root.path()))).await;
    assert_eq!(app.stats().recovered, 7, "the same node, its SSD records recovered");
    for i in 0..6 {
        assert_same(&client.get(&key(i)).await.unwrap(), &value(i, 300_000), "flushed, after the reopen");
    }
    assert_same(&client.get(b"member/from-client").await.unwrap(), &value(77, 100_000), "after the reopen");
    assert!(client.stats().disk_hits >= 7, "read from the reopened member's SSD: {:?}", client.stats());
    assert!(client.remove(&key(0), true).await.is_ok());
    assert!(!client.exists(&key(0)).await.unwrap());
    app.close().await.unwrap();
    client.close().await.unwrap();
}

/// `close` alone makes what it acknowledged durable: puts racing it are either refused
/// (`Closed`) or, acknowledged, read back after the member is opened again on its root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_acknowledged_while_the_member_closes_reads_back_after_a_reopen() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let root = tempfile::tempdir().unwrap();
    let app = std::sync::Arc::new(open(member(&master, 16 << 20, Some(root.path()))).await);
    let (done, mut results) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..40 {
        let (app, done) = (std::sync::Arc::clone(&app), done.clone());
        tokio::spawn(async move { done.send((i, app.put(&key(i), &value(i, 100_000)).await)).unwrap() });
    }
    // Close once ten puts are acknowledged, with the rest in flight.
    let mut outcomes = Vec::new();
    while outcomes.len() < 10 {
        outcomes.push(results.recv().await.unwrap());
    }
    app.close().await.unwrap();
    while outcomes.len() < 40 {
        outcomes.push(results.recv().await.unwrap());
    }
    let acknowledged: Vec<u64> = outcomes
        .iter()
        .filter_map(|(i, outcome)| match outcome {
            Ok(()) => Some(*i),
            Err(StoreError::Closed) => None,
            Err(e) => panic!("put {i}: {e}"),
        })
        .collect();
    assert!(acknowledged.len() >= 10);
    let app = open(member(&master, 16 << 20, Some(root.path()))).await;
    for i in acknowledged {
        assert_same(&app.get(&key(i)).await.unwrap(), &value(i, 100_000), "acknowledged before the close");
    }
    app.close().await.unwrap();
}

/// A master that does not answer is a typed error from open, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_master_that_is_not_there_is_unreachable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let config = StoreConfig { master: Some(addr.to_string()), memory_bytes: 0, ..StoreConfig::default() };
    let opened = tokio::time::timeout(HANG_GUARD, larder_tokio::open(config)).await.expect("not hung");
    assert!(matches!(opened, Err(StoreError::Unreachable(_))), "{opened:?}");
    let unresolvable = StoreConfig {
        master: Some("no-such-host.invalid:50051".into()),
        memory_bytes: 0,
        ..StoreConfig::default()
    };
    assert!(matches!(larder_tokio::open(unresolvable).await, Err(StoreError::Unreachable(_))));
}

/// The embedded store (which smol's `open` is too) refuses a master rather than
/// silently running alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_refuses_a_master() {
    let config = StoreConfig { master: Some("127.0.0.1:50051".into()), ..StoreConfig::default() };
    let refused = larder_tokio::open_embedded(config).await;
    assert!(
        matches!(&refused, Err(StoreError::Config(ConfigError::Invalid { name, .. })) if name == "master"),
        "{refused:?}"
    );
}
