//! A cluster on 127.0.0.1 as a user runs it: a real `larder master`, real `larder node`
//! processes, a client putting and getting through them; nodes and the master killed
//! with SIGKILL and started again. Every byte read back is compared with what was put.

mod common;

use common::{HANG_GUARD, MasterProcess, NodeProcess, assert_same, unused_fixed_port, value};
use larder_engine::net::data::{DataError, DataRequest, DataResponse};
use larder_engine::net::{ClientConfig, ClusterName, Hello, Role};
use larder_engine::wire::{Request, Response};
use larder_engine::{Incarnation, KeyRef, NodeId, ReplicaDescriptor};
use larder_tokio::cluster::{Client, RemoteError, RemoteStore};

fn cluster() -> ClusterName {
    ClusterName::new(b"larder").unwrap()
}

/// The handshake of a raw client speaking as `node` (its first run).
fn client_hello(node: NodeId) -> Hello {
    Hello {
        min_version: 1,
        max_version: 1,
        cluster: cluster(),
        role: Role::Client,
        node,
        incarnation: Incarnation(1),
        serves: None,
    }
}

async fn store(master: &MasterProcess) -> RemoteStore {
    RemoteStore::connect(master.addr, cluster(), HANG_GUARD).await.expect("the master takes the client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_put_through_the_cluster_read_back_byte_identical() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let _nodes: Vec<NodeProcess> =
        dirs.iter().map(|d| NodeProcess::start(master.addr, "64MiB", d.path())).collect();
    master.wait_for_metric("larder_master_segments", 2.0);
    let client = store(&master).await;
    let sizes = [4096, 65_536, (1 << 20) + 1, 256 << 10, 1, 1 << 20];
    for (i, len) in sizes.iter().enumerate() {
        let replicas = if i % 2 == 0 { 1 } else { 2 };
        client.put(format!("prefix/{i}").as_bytes(), &value(i as u64, *len), replicas).await.unwrap();
    }
    for (i, len) in sizes.iter().enumerate() {
        assert_eq!(
            client.get(format!("prefix/{i}").as_bytes()).await.unwrap(),
            value(i as u64, *len),
            "value {i}"
        );
    }
    assert!(client.exists(b"prefix/0").await.unwrap());
    assert_eq!(client.get(b"missing").await, Err(RemoteError::NotFound));
    assert_eq!(client.put(b"prefix/0", b"again", 1).await, Err(RemoteError::AlreadyExists));
    assert_same(&client.get(b"prefix/0").await.unwrap(), &value(0, sizes[0]), "the first value stays");
}

/// A node listening on every interface reports an address peers can dial (here the
/// loopback route to the master), not the wildcard; a client reaches it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listening_on_the_wildcard_reports_a_dialable_address() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_with(master.addr, "16MiB", dir.path(), &["--listen", "0.0.0.0:0"]);
    assert_eq!(node.addr.ip(), std::net::IpAddr::from([127, 0, 0, 1]), "reported {}", node.addr);
    assert_ne!(node.addr.port(), 0);
    master.wait_for_metric("larder_master_segments", 1.0);
    let client = store(&master).await;
    client.put(b"wildcard/0", &value(7, 200_000), 1).await.unwrap();
    assert_same(
        &client.get(b"wildcard/0").await.unwrap(),
        &value(7, 200_000),
        "through the reported address",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_takes_only_what_it_alone_held_and_nothing_reads_wrong() {
    let master = MasterProcess::start("127.0.0.1:0", &["--node-ttl", "5s"]);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut nodes: Vec<NodeProcess> =
        dirs.iter().map(|d| NodeProcess::start(master.addr, "64MiB", d.path())).collect();
    master.wait_for_metric("larder_master_segments", 2.0);
    let client = store(&master).await;
    for i in 0..12u64 {
        let replicas = if i < 6 { 2 } else { 1 };
        client.put(format!("k/{i}").as_bytes(), &value(i, 300_000), replicas).await.unwrap();
    }
    nodes[0].kill();
    master.wait_for_metric("larder_master_nodes", 1.0);
    let mut lost = 0;
    for i in 0..12u64 {
        match client.get(format!("k/{i}").as_bytes()).await {
            Ok(bytes) => assert_same(&bytes, &value(i, 300_000), "an object on the surviving node"),
            Err(RemoteError::NotFound) => {
                assert!(i >= 6, "object {i} had a replica on the surviving node");
                lost += 1;
            }
            Err(e) => panic!("object {i}: {e}"),
        }
    }
    assert!(lost > 0 && lost < 6, "placement spreads single replicas over both nodes: {lost} lost");
    // The cluster goes on with the node that is left.
    client.put(b"after", &value(99, 1000), 1).await.unwrap();
    assert_same(&client.get(b"after").await.unwrap(), &value(99, 1000), "a put after the loss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_id() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut first = NodeProcess::start(master.addr, "8MiB", dir.path());
    first.kill();
    let second = NodeProcess::start(master.addr, "8MiB", dir.path());
    assert_eq!(second.node, first.node);
    let other = tempfile::tempdir().unwrap();
    assert_ne!(NodeProcess::start(master.addr, "8MiB", other.path()).node, first.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_typed_errors_while_the_master_is_down_and_goes_on_after_its_restart() {
    let listen = format!("127.0.0.1:{}", unused_fixed_port());
    let mut master = MasterProcess::start(&listen, &[]);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let _nodes: Vec<NodeProcess> =
        dirs.iter().map(|d| NodeProcess::start(master.addr, "16MiB", d.path())).collect();
    master.wait_for_metric("larder_master_segments", 2.0);
    let client = store(&master).await;
    client.put(b"before", &value(1, 5000), 1).await.unwrap();
    client.flush().await.unwrap();
    master.kill();
    // While it is down a call fails with a typed error instead of hanging.
    match client.get(b"before").await {
        Err(RemoteError::Unreachable(_)) => {}
        other => panic!("expected an unreachable master, got {other:?}"),
    }
    let master = MasterProcess::start(&listen, &[]);
    master.wait_for_metric("larder_master_segments", 2.0);
    master.wait_for_metric("larder_master_objects", 1.0);
    // The same client, reconnected: the flushed object is back, new puts work.
    let mut link = client.master_link();
    while !matches!(*link.borrow_and_update(), larder_tokio::cluster::LinkState::Up(_)) {
        link.changed().await.unwrap();
    }
    assert_same(&client.get(b"before").await.unwrap(), &value(1, 5000), "the flushed object");
    client.put(b"after", &value(2, 70_000), 2).await.unwrap();
    assert_same(&client.get(b"after").await.unwrap(), &value(2, 70_000), "a put after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_write_of_an_older_version_is_refused_by_the_node() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(master.addr, "16MiB", dir.path());
    master.wait_for_metric("larder_master_segments", 1.0);
    let client = store(&master).await;
    client.put(b"current", &value(5, 8192), 1).await.unwrap();
    // Where it lives, as the master says.
    let hello = client_hello(NodeId(12345));
    let (to_master, _) = Client::start(master.addr, ClientConfig::new(hello));
    to_master.wait_up(HANG_GUARD).await.unwrap();
    let key = KeyRef::new(b"current").unwrap();
    let Response::GetReplicaList(Ok(list)) = to_master.call(&Request::GetReplicaList { key }).await.unwrap()
    else {
        panic!("listed")
    };
    let ReplicaDescriptor::Memory(replica) = list.replicas[0] else { panic!("a memory replica") };
    // A writer of an older put, arriving late, is fenced out of the range.
    let (to_node, _) = Client::start(node.addr, ClientConfig::new(Hello { role: Role::Peer, ..hello }));
    to_node.wait_up(HANG_GUARD).await.unwrap();
    let larder_tokio::cluster::LinkState::Up(welcome) = to_master.link() else { panic!("up") };
    let epoch = welcome.incarnation.0;
    let junk = [0xee; 8192];
    let crc = larder_engine::checksum::crc32c(&junk);
    let (segment, offset) = (replica.segment, replica.offset);
    let write = |version, epoch, crc32c| {
        let mut body = Vec::new();
        DataRequest::Write { segment, offset, version, epoch, crc32c, key, bytes: &junk }.encode(&mut body);
        body
    };
    let stale = larder_engine::ObjectVersion(list.version.0 - 1);
    let answer = to_node.call_raw(write(stale, epoch, crc)).await.unwrap();
    assert_eq!(DataResponse::decode(&answer), Ok(DataResponse::Refused(DataError::Fenced)));
    // A grant of another master run is fenced too, and bytes damaged on the way are
    // refused.
    let newer = list.version.next();
    let answer = to_node.call_raw(write(newer, epoch ^ 1, crc)).await.unwrap();
    assert_eq!(DataResponse::decode(&answer), Ok(DataResponse::Refused(DataError::Fenced)));
    let answer = to_node.call_raw(write(newer, epoch, crc ^ 1)).await.unwrap();
    assert_eq!(DataResponse::decode(&answer), Ok(DataResponse::Refused(DataError::Corrupted)));
    // The node tells the master of the damaged bytes (with its next ping).
    master.wait_for_metric("larder_master_crc_failures_total", 1.0);
    // A read naming another version is refused too; the object reads back intact.
    let mut body = Vec::new();
    DataRequest::Read { segment: replica.segment, offset: replica.offset, len: replica.len, version: stale }
        .encode(&mut body);
    let answer = to_node.call_raw(body).await.unwrap();
    assert_eq!(DataResponse::decode(&answer), Ok(DataResponse::Refused(DataError::NotHeld)));
    assert_same(&client.get(b"current").await.unwrap(), &value(5, 8192), "the object fenced against");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_the_writers_are_never_returned_from_memory_or_disk() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(master.addr, "16MiB", dir.path());
    master.wait_for_metric("larder_master_segments", 1.0);
    // A writer whose bytes differ from the value it names at the put's end (a buffer
    // changed under it mid-put, say): each node copy is self-consistent, the value's
    // CRC32C in the replica list is not theirs.
    let writer = NodeId(777);
    let hello = client_hello(writer);
    let (to_master, _) = Client::start(master.addr, ClientConfig::new(hello));
    to_master.wait_up(HANG_GUARD).await.unwrap();
    let larder_tokio::cluster::LinkState::Up(welcome) = to_master.link() else { panic!("up") };
    let key = KeyRef::new(b"torn").unwrap();
    let (meant, sent) = (value(1, 8192), value(2, 8192));
    let start = Request::PutStart { writer, key, size: 8192, replicas: 1 };
    let Response::PutStart(Ok(grant)) = to_master.call(&start).await.unwrap() else { panic!("granted") };
    let (to_node, _) = Client::start(node.addr, ClientConfig::new(Hello { role: Role::Peer, ..hello }));
    to_node.wait_up(HANG_GUARD).await.unwrap();
    let (segment, offset) = (grant.replicas[0].segment, grant.replicas[0].offset);
    let (version, epoch) = (grant.version, welcome.incarnation.0);
    let crc32c = larder_engine::checksum::crc32c(&sent);
    let mut body = Vec::new();
    DataRequest::Write { segment, offset, version, epoch, crc32c, key, bytes: &sent }.encode(&mut body);
    let answer = to_node.call_raw(body).await.unwrap();
    assert_eq!(DataResponse::decode(&answer), Ok(DataResponse::Written));
    let end = Request::PutEnd { writer, key, version, crc32c: larder_engine::checksum::crc32c(&meant) };
    assert_eq!(to_master.call(&end).await.unwrap(), Response::PutEnd(Ok(())));

    let client = store(&master).await;
    assert_eq!(client.get(b"torn").await, Err(RemoteError::Corrupted), "from the memory replica");
    master.wait_for_metric("larder_master_crc_failures_total", 1.0);
    // The node persisted what it holds: its record is self-consistent too, and refused.
    client.flush().await.unwrap();
    let Response::GetReplicaList(Ok(list)) = to_master.call(&Request::GetReplicaList { key }).await.unwrap()
    else {
        panic!("listed")
    };
    assert!(
        list.replicas.iter().any(|r| matches!(r, ReplicaDescriptor::Disk(d) if d.crc32c == crc32c)),
        "the node's record of what it was sent: {list:?}"
    );
    assert_eq!(client.get(b"torn").await, Err(RemoteError::Corrupted), "from memory, then disk");
    master.wait_for_metric("larder_master_crc_failures_total", 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_serves_its_flushed_objects_again_without_a_re_put() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let root = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(master.addr, "64MiB", root.path());
    master.wait_for_metric("larder_master_segments", 1.0);
    let client = store(&master).await;
    for i in 0..12u64 {
        client.put(format!("flushed/{i}").as_bytes(), &value(i, 300_000 + i as usize), 1).await.unwrap();
    }
    client.flush().await.expect("everything put is durable");
    // /metrics counts what the disk tier holds.
    let flushed_bytes: usize = (0..12).map(|i| 300_000 + i).sum();
    master.wait_for_metric("larder_master_disk_replicas", 12.0);
    master.wait_for_metric(r#"larder_master_used_bytes{tier="disk"}"#, flushed_bytes as f64);
    node.kill();
    let restarted = NodeProcess::start(master.addr, "64MiB", root.path());
    assert_eq!(restarted.node, node.node);
    assert_eq!(restarted.recovered, 12, "its SSD tier recovered every flushed object");
    // The master drops what the old run held, then takes the records registered again.
    master.wait_for_metric(r#"larder_master_dropped_objects_total{reason="node_lost"}"#, 12.0);
    master.wait_for_metric("larder_master_objects", 12.0);
    for i in 0..12u64 {
        let got = client.get(format!("flushed/{i}").as_bytes()).await.unwrap();
        assert_same(&got, &value(i, 300_000 + i as usize), "an object read from the node's SSD");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_master_restart_every_flushed_object_is_readable() {
    let listen = format!("127.0.0.1:{}", unused_fixed_port());
    let mut master = MasterProcess::start(&listen, &[]);
    let roots = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let _nodes: Vec<NodeProcess> =
        roots.iter().map(|r| NodeProcess::start(master.addr, "32MiB", r.path())).collect();
    master.wait_for_metric("larder_master_segments", 2.0);
    let client = store(&master).await;
    for i in 0..8u64 {
        client.put(format!("durable/{i}").as_bytes(), &value(100 + i, 200_000), 1).await.unwrap();
    }
    client.flush().await.unwrap();
    master.kill();
    let master = MasterProcess::start(&listen, &[]);
    // The nodes come back and register their segments and their disk records.
    master.wait_for_metric("larder_master_segments", 2.0);
    master.wait_for_metric("larder_master_objects", 8.0);
    let client = store(&master).await;
    for i in 0..8u64 {
        let got = client.get(format!("durable/{i}").as_bytes()).await.unwrap();
        assert_same(&got, &value(100 + i, 200_000), "a flushed object after the master's restart");
    }
}

/// What was only in a node's memory (no SSD anywhere) survives a restart of the master:
/// the node names it to the new run, which serves it where it is, byte-identical. An
/// object removed before the restart stays removed, and new puts land beside the
/// restored objects, never over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_master_restart_objects_only_in_memory_read_back_and_removed_ones_stay_gone() {
    let listen = format!("127.0.0.1:{}", unused_fixed_port());
    let mut master = MasterProcess::start(&listen, &[]);
    let _node = NodeProcess::start_memory_only(master.addr, "16MiB");
    master.wait_for_metric("larder_master_segments", 1.0);
    let client = store(&master).await;
    let key = |i: u64| format!("live/{i}").into_bytes();
    for i in 0..8u64 {
        client.put(&key(i), &value(200 + i, 300_000), 1).await.unwrap();
    }
    client.remove(&key(3), true).await.unwrap();
    // The node was told of the range freed (every command acknowledged).
    master.wait_for_metric("larder_master_commands_unacked", 0.0);
    master.kill();
    let master = MasterProcess::start(&listen, &[]);
    master.wait_for_metric("larder_master_segments", 1.0);
    master.wait_for_metric("larder_master_objects", 7.0);
    master.wait_for_metric("larder_master_segments_restoring", 0.0);
    let client = store(&master).await;
    let kept = || (0..8u64).filter(|i| *i != 3);
    for i in kept() {
        assert_same(&client.get(&key(i)).await.unwrap(), &value(200 + i, 300_000), "restored from memory");
    }
    assert_eq!(client.get(&key(3)).await, Err(RemoteError::NotFound), "removed before the restart");
    for i in 8..24u64 {
        client.put(&key(i), &value(200 + i, 300_000), 1).await.unwrap();
    }
    for i in kept().chain(8..24) {
        assert_same(&client.get(&key(i)).await.unwrap(), &value(200 + i, 300_000), "after new puts");
    }
}

/// `larder bench --master`, as a user runs it, with `--json`.
fn cluster_bench(master: &MasterProcess, extra: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_larder"))
        .args([
            "bench",
            "--json",
            "--cluster",
            "larder",
            "--count",
            "48",
            "--value-size",
            "256KiB",
            "--tasks",
            "4",
        ])
        .args(["--master", &master.addr.to_string()])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_runs_as_a_client_of_the_cluster_and_verifies_every_byte() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let root = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(master.addr, "64MiB", root.path());
    master.wait_for_metric("larder_master_segments", 1.0);
    let s = cluster_bench(&master, &[]);
    let working_set = 48 * (256 << 10);
    assert_eq!(s["working_set_bytes"], working_set);
    assert_eq!(s["bytes_verified"], 2 * working_set);
    assert_eq!(s["memory_bytes"], 0, "a client contributes no memory unless asked");
    assert_eq!(s["master"], master.addr.to_string());
    let read = &s["first_read"];
    assert_eq!(read["memory"].as_u64().unwrap() + read["ssd"].as_u64().unwrap(), 48, "{s}");
    // With --memory the bench is a node too: the cluster has its segment beside the other.
    let s = cluster_bench(&master, &["--memory", "32MiB"]);
    assert_eq!(s["memory_bytes"], 32 << 20);
    assert_eq!(s["bytes_verified"], 2 * working_set);
    // It withdrew its segment before it exited: no later put is placed in it.
    assert_eq!(master.metric("larder_master_segments"), Some(1.0), "the bench's segment stayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_is_expired_rejoins_and_what_its_old_session_granted_is_refused() {
    let master = MasterProcess::start("127.0.0.1:0", &["--node-ttl", "3s"]);
    let root = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(master.addr, "16MiB", root.path());
    master.wait_for_metric("larder_master_segments", 1.0);
    let client = store(&master).await;
    client.put(b"kept", &value(7, 100_000), 1).await.unwrap();
    client.flush().await.unwrap();
    // A put granted before the cut-off, not yet written or ended.
    let writer = NodeId(4242);
    let hello = client_hello(writer);
    let (raw, _) = Client::start(master.addr, ClientConfig::new(hello));
    let welcome = raw.wait_up(HANG_GUARD).await.unwrap();
    let key = KeyRef::new(b"late").unwrap();
    let start = Request::PutStart { writer, key, size: 4096, replicas: 1 };
    let Response::PutStart(Ok(grant)) = raw.call(&start).await.unwrap() else { panic!("granted") };
    let old = grant.replicas[0];

    // Cut off (alive, silent): expired after the TTL, with everything it held in memory.
    node.process.pause();
    master.wait_for_metric("larder_master_nodes", 0.0);
    node.process.resume();
    // It rejoins: mounts again and registers its disk records again.
    master.wait_for_metric("larder_master_segments", 1.0);
    master.wait_for_metric("larder_master_objects", 1.0);
    assert_same(&client.get(b"kept").await.unwrap(), &value(7, 100_000), "a flushed object after the rejoin");

    // The old put cannot end: its range went with the expiry.
    let end = Request::PutEnd { writer, key, version: grant.version, crc32c: 0 };
    assert!(
        matches!(raw.call(&end).await.unwrap(), Response::PutEnd(Err(_))),
        "a put of the old session ended"
    );
    // Its late bytes are refused by the node, wherever they would land.
    client.put(b"fresh", &value(8, 4096), 1).await.unwrap();
    let (to_node, _) = Client::start(node.addr, ClientConfig::new(Hello { role: Role::Peer, ..hello }));
    to_node.wait_up(HANG_GUARD).await.unwrap();
    let junk = [0x66u8; 4096];
    let mut body = Vec::new();
    DataRequest::Write {
        segment: old.segment,
        offset: old.offset,
        version: grant.version,
        epoch: welcome.incarnation.0,
        crc32c: larder_engine::checksum::crc32c(&junk),
        key,
        bytes: &junk,
    }
    .encode(&mut body);
    let answer = to_node.call_raw(body).await.unwrap();
    let refused = DataResponse::decode(&answer).unwrap();
    assert_eq!(refused, DataResponse::Refused(DataError::Fenced), "the late write landed");
    assert_same(&client.get(b"fresh").await.unwrap(), &value(8, 4096), "an object put after the rejoin");
}

/// Nodes sharing one storage root (the DFS mode, each under its own `--node-id`), the
/// master told so: when a node is killed, its flushed objects still read back
/// byte-identical, straight from its bucket files, for a client that sees the root; a
/// client that does not gets a typed error for them, never wrong bytes; the restarted
/// node serves them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_root_a_killed_nodes_flushed_objects_read_back_from_its_files() {
    let master = MasterProcess::start("127.0.0.1:0", &["--node-ttl", "3s", "--shared-root"]);
    let root = tempfile::tempdir().unwrap();
    let ids = ["11", "12"];
    let mut nodes: Vec<NodeProcess> = ids
        .iter()
        .map(|id| NodeProcess::start_with(master.addr, "16MiB", root.path(), &["--node-id", id]))
        .collect();
    assert_eq!((nodes[0].node, nodes[1].node), (11, 12));
    master.wait_for_metric("larder_master_segments", 2.0);
    let sees_root = store(&master).await.with_shared_root(root.path().to_path_buf());
    let elsewhere = store(&master).await;
    for i in 0..12u64 {
        sees_root.put(format!("shared/{i}").as_bytes(), &value(i, 200_000), 1).await.unwrap();
    }
    sees_root.flush().await.unwrap();
    nodes[0].kill();
    master.wait_for_metric("larder_master_nodes", 1.0);
    let mut unreachable_elsewhere = 0;
    for i in 0..12u64 {
        let key = format!("shared/{i}");
        assert_same(&sees_root.get(key.as_bytes()).await.unwrap(), &value(i, 200_000), "with the root");
        match elsewhere.get(key.as_bytes()).await {
            Ok(bytes) => assert_same(&bytes, &value(i, 200_000), "without the root"),
            Err(RemoteError::NodeUnreachable(NodeId(11))) => unreachable_elsewhere += 1,
            Err(e) => panic!("object {i} without the root: {e}"),
        }
    }
    // Most free placement put some on the killed node: those came from its files.
    assert!(unreachable_elsewhere > 0, "no object was on the killed node");
    assert_eq!(sees_root.stats().direct_disk_reads, unreachable_elsewhere);
    // It restarts on the same root and id, and serves them to everyone again.
    let _back = NodeProcess::start_with(master.addr, "16MiB", root.path(), &["--node-id", "11"]);
    master.wait_for_metric("larder_master_nodes", 2.0);
    master.wait_for_metric("larder_master_segments", 2.0);
    for i in 0..12u64 {
        let key = format!("shared/{i}");
        assert_same(&elsewhere.get(key.as_bytes()).await.unwrap(), &value(i, 200_000), "after the restart");
    }
}

/// A client in the same process as a node, speaking as that node, writes its replicas
/// into the node's segment and reads them back in memory (no network), under the same
/// fencing as a peer's write; replicas on another node still go over TCP; and once the
/// node is stopped the handle refuses instead of keeping it alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_beside_its_own_node_writes_and_reads_its_segment_in_memory() {
    use larder_tokio::cluster::{NodeServerConfig, SegmentWrite, node};
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let dir = tempfile::tempdir().unwrap();
    let _other = NodeProcess::start(master.addr, "64MiB", dir.path());
    master.wait_for_metric("larder_master_segments", 1.0);
    let config = NodeServerConfig {
        master: master.addr,
        listen: "127.0.0.1:0".parse().unwrap(),
        cluster: cluster(),
        memory_bytes: 8 << 20,
        storage_root: None,
        node_id: None,
        tier: Default::default(),
        rdma: None,
    };
    let own = node::start(config).await.unwrap();
    assert!(own.wait_registered(HANG_GUARD).await);
    let local = own.local_segment();
    let client = RemoteStore::connect_as(master.addr, cluster(), own.node, own.incarnation, HANG_GUARD)
        .await
        .unwrap()
        .with_local_segment(local.clone());
    for i in 0..4u64 {
        client.put(format!("local/{i}").as_bytes(), &value(i, 500_000), 1).await.unwrap();
    }
    // Two replicas: one in its own segment, one on the other node (over TCP).
    client.put(b"local/both", &value(9, 300_000), 2).await.unwrap();
    let stats = client.stats();
    assert_eq!(stats.local_writes, 5, "{stats:?}");
    for i in 0..4u64 {
        assert_same(&client.get(format!("local/{i}").as_bytes()).await.unwrap(), &value(i, 500_000), "local");
    }
    assert_eq!(client.stats().local_reads, 4);
    // Another client reads them over TCP from the node's listener.
    let other_client = store(&master).await;
    assert_same(&other_client.get(b"local/2").await.unwrap(), &value(2, 500_000), "over TCP");
    assert_eq!(other_client.stats().local_reads, 0);

    // The local path fences as a peer's write is fenced: another master run's grant.
    let write = SegmentWrite {
        segment: local.id(),
        offset: 0,
        version: larder_engine::ObjectVersion(u64::MAX),
        epoch: 12345,
        crc32c: larder_engine::checksum::crc32c(&[1u8; 4096]),
        key: larder_engine::KeyRef::new(b"local/fenced").unwrap(),
    };
    assert_eq!(local.write(&write, &[1u8; 4096]), Err(DataError::Fenced));
    assert_same(&client.get(b"local/0").await.unwrap(), &value(0, 500_000), "after the refused write");
    own.stop().await.unwrap();
    assert_eq!(local.write(&write, &[1u8; 4096]), Err(DataError::UnknownSegment));
}

/// A node in this process whose RDMA port (if any) attaches to `fabric`.
async fn rdma_node(
    master: &MasterProcess,
    fabric: Option<&larder_tokio::cluster::SimFabric>,
) -> larder_tokio::cluster::NodeServer {
    let config = larder_tokio::cluster::NodeServerConfig {
        master: master.addr,
        listen: "127.0.0.1:0".parse().unwrap(),
        cluster: cluster(),
        memory_bytes: 32 << 20,
        storage_root: None,
        node_id: None,
        tier: Default::default(),
        rdma: fabric.cloned(),
    };
    let node = larder_tokio::cluster::node::start(config).await.unwrap();
    assert!(node.wait_registered(HANG_GUARD).await);
    node
}

/// A client speaking as `node`, beside it in this process, with an RDMA port on `fabric`.
async fn member_client(
    master: &MasterProcess,
    node: &larder_tokio::cluster::NodeServer,
    fabric: &larder_tokio::cluster::SimFabric,
) -> RemoteStore {
    RemoteStore::connect_as(master.addr, cluster(), node.node, node.incarnation, HANG_GUARD)
        .await
        .unwrap()
        .with_local_segment(node.local_segment())
        .with_rdma(fabric)
}

/// Transport selection end to end, the simulated NIC standing in for the device: two
/// nodes with RDMA ports; a put on node A (into its own segment) is read on node B over
/// RDMA, a pure client's puts land on either node over RDMA; a value larger than the
/// staging memory, and a client without a port, go over TCP; every byte is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_both_have_rdma_move_replica_bytes_over_it_and_others_over_tcp() {
    use larder_tokio::cluster::SimFabric;
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let fabric = SimFabric::new(7, 8 << 20);
    let (a, b) = (rdma_node(&master, Some(&fabric)).await, rdma_node(&master, Some(&fabric)).await);
    let (on_a, on_b) = (member_client(&master, &a, &fabric).await, member_client(&master, &b, &fabric).await);
    let sizes = [1, 4096, 65_537, (1 << 20) + 3, 3 << 20];
    for (i, len) in sizes.iter().enumerate() {
        on_a.put(format!("a/{i}").as_bytes(), &value(i as u64, *len), 1).await.unwrap();
    }
    assert_eq!(on_a.stats().local_writes, sizes.len() as u64, "{:?}", on_a.stats());
    for (i, len) in sizes.iter().enumerate() {
        assert_same(&on_b.get(format!("a/{i}").as_bytes()).await.unwrap(), &value(i as u64, *len), "on B");
    }
    assert_eq!(on_b.stats().rdma_reads, sizes.len() as u64, "{:?}", on_b.stats());

    let pure = store(&master).await.with_rdma(&fabric);
    for (i, len) in sizes.iter().enumerate() {
        pure.put(format!("c/{i}").as_bytes(), &value(100 + i as u64, *len), 1).await.unwrap();
    }
    assert_eq!(pure.stats().rdma_writes, sizes.len() as u64, "{:?}", pure.stats());
    for (i, len) in sizes.iter().enumerate() {
        let want = value(100 + i as u64, *len);
        assert_same(&pure.get(format!("c/{i}").as_bytes()).await.unwrap(), &want, "pure client");
    }
    assert_eq!(pure.stats().rdma_reads, sizes.len() as u64, "{:?}", pure.stats());

    // Larger than the staging memory: TCP carries it, both ways.
    let large = value(9, 9 << 20);
    pure.put(b"large", &large, 1).await.unwrap();
    assert_same(&pure.get(b"large").await.unwrap(), &large, "large");
    assert_eq!((pure.stats().rdma_writes, pure.stats().rdma_reads), (sizes.len() as u64, sizes.len() as u64));

    // A client without a port reads the same objects over TCP.
    let tcp = store(&master).await;
    for (i, len) in sizes.iter().enumerate() {
        assert_same(&tcp.get(format!("a/{i}").as_bytes()).await.unwrap(), &value(i as u64, *len), "over TCP");
    }
    assert_eq!(tcp.stats().rdma_reads, 0);
    let moved: u64 = sizes.iter().map(|l| *l as u64).sum::<u64>() * 3;
    assert!(fabric.stats().bytes >= moved, "{:?}", fabric.stats());
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A node without an RDMA port refuses the endpoint: a client that has one moves its
/// bytes over TCP, correctly, and offers it once only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_rdma_is_served_over_tcp_by_a_client_with_it() {
    use larder_tokio::cluster::SimFabric;
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let fabric = SimFabric::new(8, 8 << 20);
    let node = rdma_node(&master, None).await;
    let client = store(&master).await.with_rdma(&fabric);
    for i in 0..4u64 {
        client.put(format!("t/{i}").as_bytes(), &value(i, 200_000), 1).await.unwrap();
        assert_same(&client.get(format!("t/{i}").as_bytes()).await.unwrap(), &value(i, 200_000), "TCP");
    }
    let stats = client.stats();
    assert_eq!((stats.rdma_writes, stats.rdma_reads, stats.memory_reads), (0, 0, 4), "{stats:?}");
    assert_eq!(fabric.stats().bytes, 0);
    node.stop().await.unwrap();
}

/// The simulated device loses packets, forces QPs into ERR, refuses posts and delays
/// completions; transfers are retried on the other QP, or handed to TCP when an
/// endpoint is lost (a new one is set up for the next): every put lands and every get
/// returns the bytes put, whichever transport carried them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdma_faults_never_lose_or_corrupt_a_transfer() {
    use larder_engine::rdma::sim::Faults;
    use larder_tokio::cluster::SimFabric;
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let fabric = SimFabric::new(9, 8 << 20);
    let nodes = [rdma_node(&master, Some(&fabric)).await, rdma_node(&master, Some(&fabric)).await];
    let client = store(&master).await.with_rdma(&fabric);
    fabric.set_faults(Faults {
        lost_packet: 0.05,
        rnr: 0.02,
        remote_access: 0.002,
        qp_error: 0.003,
        refused_post: 0.01,
        max_completion_delay: 8,
        eager: 0.1,
    });
    let count = 40u64;
    for i in 0..count {
        let len = 1000 + (i as usize * 37_813) % (2 << 20);
        client.put(format!("f/{i}").as_bytes(), &value(i, len), 1).await.unwrap();
    }
    for i in 0..count {
        let len = 1000 + (i as usize * 37_813) % (2 << 20);
        assert_same(&client.get(format!("f/{i}").as_bytes()).await.unwrap(), &value(i, len), "under faults");
    }
    let (stats, nic) = (client.stats(), fabric.stats());
    assert_eq!(stats.memory_reads, count, "{stats:?}");
    assert!(stats.rdma_writes > 0 && stats.rdma_reads > 0, "{stats:?}");
    assert!(nic.errors + nic.flushed > 0, "the faults happened: {nic:?}");
    for node in nodes {
        node.stop().await.unwrap();
    }
}

/// Transfers at once over RDMA: 8 tasks share one client's port and put, then get, 6
/// values each on two nodes, under lost packets and delayed completions. The staging
/// slots of transfers in flight must not overlap and each node runs its connections'
/// transfers through one staging buffer: every value read back is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rdma_transfers_each_move_their_own_bytes() {
    use larder_engine::rdma::sim::Faults;
    use larder_tokio::cluster::SimFabric;
    use std::sync::Arc;
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let fabric = SimFabric::new(11, 8 << 20);
    let nodes = [rdma_node(&master, Some(&fabric)).await, rdma_node(&master, Some(&fabric)).await];
    let client = Arc::new(store(&master).await.with_rdma(&fabric));
    fabric.set_faults(Faults { lost_packet: 0.02, max_completion_delay: 4, eager: 0.1, ..Faults::default() });
    let (tasks, per_task) = (8u64, 6u64);
    let len_of = |id: u64| 1000 + (id as usize * 52_361) % (1 << 20);
    let spawned: Vec<_> = (0..tasks)
        .map(|t| {
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                for id in (t * per_task)..((t + 1) * per_task) {
                    client.put(format!("c/{id}").as_bytes(), &value(id, len_of(id)), 1).await.unwrap();
                }
                for id in (t * per_task)..((t + 1) * per_task) {
                    let got = client.get(format!("c/{id}").as_bytes()).await.unwrap();
                    assert_same(&got, &value(id, len_of(id)), "read back by its own task");
                }
            })
        })
        .collect();
    for task in spawned {
        task.await.unwrap();
    }
    let stats = client.stats();
    assert_eq!(stats.memory_reads, tasks * per_task, "{stats:?}");
    assert!(stats.rdma_writes > 0 && stats.rdma_reads > 0, "{stats:?}");
    for node in nodes {
        node.stop().await.unwrap();
    }
}

/// A value of 64 KiB or more is read from the socket straight into the segment, a
/// smaller one is buffered; both read back byte-identical, and a put of either size
/// beside a receive in flight on another connection lands too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_received_straight_into_the_segment() {
    use std::sync::Arc;
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let node = rdma_node(&master, None).await;
    let client = Arc::new(store(&master).await);
    let sizes = [10_000, 64 << 10, (1 << 20) + 5, 3 << 20];
    let puts: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, len)| {
            let client = Arc::clone(&client);
            let len = *len;
            tokio::spawn(async move {
                client.put(format!("in-place/{i}").as_bytes(), &value(i as u64, len), 1).await
            })
        })
        .collect();
    for put in puts {
        put.await.unwrap().unwrap();
    }
    for (i, len) in sizes.iter().enumerate() {
        let got = client.get(format!("in-place/{i}").as_bytes()).await.unwrap();
        assert_same(&got, &value(i as u64, *len), "received in place");
    }
    // Every value of 64 KiB or more: its frame's body (head and value) is larger.
    assert_eq!(node.received_in_place(), 3);
    node.stop().await.unwrap();
}

/// On one connection, a large write (received straight into the segment) and a read
/// of the same range pipelined behind it: the stream goes on after the diverted body,
/// so the read is answered, after the write, with the written bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_behind_a_write_received_in_place_is_answered_after_it() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let node = rdma_node(&master, None).await;
    let writer = NodeId(778);
    let hello = client_hello(writer);
    let (to_master, _) = Client::start(master.addr, ClientConfig::new(hello));
    to_master.wait_up(HANG_GUARD).await.unwrap();
    let larder_tokio::cluster::LinkState::Up(welcome) = to_master.link() else { panic!("up") };
    let key = KeyRef::new(b"pipelined").unwrap();
    let sent = value(3, 300_000);
    let start = Request::PutStart { writer, key, size: sent.len() as u64, replicas: 1 };
    let Response::PutStart(Ok(grant)) = to_master.call(&start).await.unwrap() else { panic!("granted") };
    let (segment, offset, version) = (grant.replicas[0].segment, grant.replicas[0].offset, grant.version);
    let crc32c = larder_engine::checksum::crc32c(&sent);
    let mut write = Vec::new();
    let epoch = welcome.incarnation.0;
    DataRequest::Write { segment, offset, version, epoch, crc32c, key, bytes: &sent }.encode(&mut write);
    let mut read = Vec::new();
    DataRequest::Read { segment, offset, len: sent.len() as u64, version }.encode(&mut read);
    let config = ClientConfig { window: 2, ..ClientConfig::new(Hello { role: Role::Peer, ..hello }) };
    let (to_node, _) = Client::start(node.data_addr, config);
    to_node.wait_up(HANG_GUARD).await.unwrap();
    // Both calls are queued before either is answered: the read follows the write on
    // the connection.
    let (written, got) = tokio::join!(to_node.call_raw(write), to_node.call_raw(read));
    assert_eq!(DataResponse::decode(&written.unwrap()), Ok(DataResponse::Written));
    match DataResponse::decode(&got.unwrap()) {
        Ok(DataResponse::Read { crc32c: read_crc, bytes }) => {
            assert_eq!(read_crc, crc32c);
            assert_same(bytes, &sent, "read behind the write");
        }
        other => panic!("expected the written bytes, got {other:?}"),
    }
    assert_eq!(node.received_in_place(), 1);
    node.stop().await.unwrap();
}
