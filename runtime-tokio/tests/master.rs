//! `larder master` as a user runs it: a real process on 127.0.0.1, real sockets, real
//! peers good and bad, killed with SIGKILL and started again.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use larder_engine::net::frame::write_frame;
use larder_engine::net::{
    ClientConfig, ClusterName, Deframer, FrameHeader, FrameKind, Hello, Refusal, RefusalReason, Role,
};
use larder_engine::wire::{Message, NodeCommand, PingOutcome, Request, Response};
use larder_engine::{Incarnation, KeyRef, NodeId, ObjectVersion, SegmentId};
use larder_tokio::cluster::{CallError, Client, LinkState, PushedCommand};
use tokio::sync::mpsc::UnboundedReceiver;

mod common;

use common::{HANG_GUARD, MasterProcess, http_get, unused_fixed_port};

fn cluster() -> ClusterName {
    ClusterName::new(b"larder").unwrap()
}

fn hello(node: u64, incarnation: u64) -> Hello {
    Hello {
        min_version: 1,
        max_version: 1,
        cluster: cluster(),
        role: Role::Node,
        node: NodeId(node),
        incarnation: Incarnation(incarnation),
        serves: None,
    }
}

fn key(k: &str) -> KeyRef<'_> {
    KeyRef::new(k.as_bytes()).unwrap()
}

async fn connect(addr: SocketAddr, hello: Hello) -> (Client, UnboundedReceiver<PushedCommand>) {
    let (client, commands) = Client::start(addr, ClientConfig::new(hello));
    client.wait_up(HANG_GUARD).await.expect("the master takes the connection");
    (client, commands)
}

/// Registers `node`, mounts a 64 MiB segment and returns its client.
async fn node(
    addr: SocketAddr,
    node: u64,
    incarnation: u64,
    storage: bool,
) -> (Client, UnboundedReceiver<PushedCommand>) {
    let (client, commands) = connect(addr, hello(node, incarnation)).await;
    let ping =
        Request::Ping { node: NodeId(node), incarnation: Incarnation(incarnation), has_storage: storage };
    assert!(
        matches!(client.call(&ping).await.unwrap(), Response::Ping(p) if p.outcome == PingOutcome::Registered)
    );
    let mount = Request::MountSegment { node: NodeId(node), segment: SegmentId(node), size: 64 << 20 };
    assert_eq!(client.call(&mount).await.unwrap(), Response::MountSegment(Ok(())));
    (client, commands)
}

async fn put(client: &Client, writer: u64, k: &str) -> ObjectVersion {
    let start = Request::PutStart { writer: NodeId(writer), key: key(k), size: 1 << 20, replicas: 1 };
    let Response::PutStart(Ok(grant)) = client.call(&start).await.unwrap() else {
        panic!("put start refused")
    };
    let end = Request::PutEnd { writer: NodeId(writer), key: key(k), version: grant.version, crc32c: 0 };
    assert_eq!(client.call(&end).await.unwrap(), Response::PutEnd(Ok(())));
    grant.version
}

/// Opens a raw socket, sends `bytes`, and returns every frame the master sent before it
/// closed the connection.
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    s.write_all(bytes).unwrap();
    let mut received = Vec::new();
    s.read_to_end(&mut received).expect("the master closes the connection");
    let mut d = Deframer::new(u32::MAX);
    d.push(&received);
    std::iter::from_fn(|| d.next_frame().unwrap()).map(|f| (f.header, f.body.to_vec())).collect()
}

fn hello_bytes(h: &Hello) -> Vec<u8> {
    let mut body = [0u8; Hello::MAX_LEN];
    let n = h.encode(&mut body).unwrap();
    let mut out = Vec::new();
    write_frame(&mut out, FrameKind::Hello, 0, &body[..n], u32::MAX).unwrap();
    out
}

fn request_bytes(id: u64, request: &Request<'_>) -> Vec<u8> {
    let m = Message::Request(request.clone());
    let mut body = vec![0u8; m.encoded_len().unwrap()];
    m.encode(&mut body).unwrap();
    let mut out = Vec::new();
    write_frame(&mut out, FrameKind::Request, id, &body, u32::MAX).unwrap();
    out
}

/// The refusal that ended an exchange (its last frame).
fn refusal(frames: &[(FrameHeader, Vec<u8>)]) -> RefusalReason {
    let (header, body) = frames.last().expect("the master said why it closed");
    assert_eq!(header.kind, FrameKind::Refuse, "{frames:?}");
    Refusal::decode(body).unwrap().reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_put_and_read_metadata_over_tcp() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let (a, _) = node(master.addr, 1, 1, false).await;
    let version = put(&a, 1, "prefix/0").await;
    // Another node sees the object and where it lives.
    let (b, _) = node(master.addr, 2, 1, false).await;
    let Response::GetReplicaList(Ok(list)) =
        b.call(&Request::GetReplicaList { key: key("prefix/0") }).await.unwrap()
    else {
        panic!("the object is listed")
    };
    assert_eq!((list.version, list.size, list.replicas.len()), (version, 1 << 20, 1));
    assert_eq!(b.call(&Request::Exists { key: key("nope") }).await.unwrap(), Response::Exists(false));
    // Many requests pipelined on one connection all come back, each to its caller.
    let calls = (0..500).map(|i| {
        let b = b.clone();
        async move {
            let k = format!("missing/{i}");
            b.call(&Request::Exists { key: key(&k) }).await.unwrap()
        }
    });
    let answers = futures_join_all(calls).await;
    assert!(answers.iter().all(|r| *r == Response::Exists(false)));
}

async fn futures_join_all<F: Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_get_a_clear_refusal_and_a_closed_connection_while_others_are_served() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let (good, _) = node(master.addr, 1, 1, false).await;

    // Garbage.
    let frames = raw_exchange(master.addr, b"GET / HTTP/1.1\r\nHost: larder\r\n\r\n");
    assert_eq!(refusal(&frames), RefusalReason::ProtocolViolation);
    // A frame announcing 4 GiB: refused from its header, nothing more is read.
    let huge = FrameHeader { kind: FrameKind::Hello, id: 0, body_len: u32::MAX }.encode();
    assert_eq!(refusal(&raw_exchange(master.addr, &huge)), RefusalReason::ProtocolViolation);
    // Another cluster.
    let other = Hello { cluster: ClusterName::new(b"elsewhere").unwrap(), ..hello(9, 1) };
    assert_eq!(refusal(&raw_exchange(master.addr, &hello_bytes(&other))), RefusalReason::WrongCluster);
    // No common protocol version.
    let future = Hello { min_version: 7, max_version: 9, ..hello(9, 1) };
    assert_eq!(refusal(&raw_exchange(master.addr, &hello_bytes(&future))), RefusalReason::VersionMismatch);
    // A replayed Hello on an established connection.
    let mut twice = hello_bytes(&hello(9, 1));
    twice.extend(hello_bytes(&hello(9, 1)));
    let frames = raw_exchange(master.addr, &twice);
    assert_eq!(frames[0].0.kind, FrameKind::Welcome);
    assert_eq!(refusal(&frames), RefusalReason::ProtocolViolation);
    // A request naming another node than the handshake's.
    let mut impostor = hello_bytes(&hello(9, 1));
    impostor.extend(request_bytes(1, &Request::UnmountSegment { node: NodeId(1), segment: SegmentId(1) }));
    let frames = raw_exchange(master.addr, &impostor);
    assert_eq!(refusal(&frames), RefusalReason::ProtocolViolation);
    assert!(frames.iter().all(|(h, _)| h.kind != FrameKind::Response), "the request was not carried out");
    // A ping for another run of the node than the handshake's.
    let mut other_run = hello_bytes(&hello(9, 1));
    other_run.extend(request_bytes(
        1,
        &Request::Ping { node: NodeId(9), incarnation: Incarnation(2), has_storage: false },
    ));
    assert_eq!(refusal(&raw_exchange(master.addr, &other_run)), RefusalReason::ProtocolViolation);
    // A request before any handshake.
    let early = request_bytes(1, &Request::Exists { key: key("x") });
    assert_eq!(refusal(&raw_exchange(master.addr, &early)), RefusalReason::ProtocolViolation);

    // Through all that, the good node kept its segment and is served.
    assert_eq!(good.call(&Request::Exists { key: key("x") }).await.unwrap(), Response::Exists(false));
    put(&good, 1, "still/served").await;
    let metrics = http_get(master.metrics, "/metrics");
    assert!(
        metrics.contains(r#"larder_master_refused_connections_total{reason="wrong_cluster"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"larder_master_refused_connections_total{reason="version_mismatch"} 1"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_an_earlier_run_is_refused() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let (_current, _) = node(master.addr, 4, 8, false).await;
    let frames = raw_exchange(master.addr, &hello_bytes(&hello(4, 7)));
    assert_eq!(refusal(&frames), RefusalReason::StaleIncarnation);
    let (late, _) = Client::start(master.addr, ClientConfig::new(hello(4, 7)));
    let mut link = late.link_watch();
    link.changed().await.unwrap();
    let state = *link.borrow();
    let refused = Refusal { reason: RefusalReason::StaleIncarnation, versions: (1, 1) };
    assert_eq!(state, LinkState::Down(Some(larder_engine::net::DisconnectReason::Refused(refused))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_pushed_to_their_node_and_replayed_until_acknowledged() {
    let master = MasterProcess::start("127.0.0.1:0", &[]);
    let (first, mut commands) = node(master.addr, 3, 1, true).await;
    let version = put(&first, 3, "persist/me").await;
    let pushed = commands.recv().await.expect("a persist command");
    let Ok(Message::Command(NodeCommand::Persist { node, version: v, .. })) = Message::decode(&pushed.body)
    else {
        panic!("a persist command: {pushed:?}")
    };
    assert_eq!((node, v), (NodeId(3), version));
    // The node reconnects without acknowledging: the command comes again.
    drop(first);
    let (second, mut again) = connect(master.addr, hello(3, 1)).await;
    let replayed = again.recv().await.expect("the command is replayed");
    assert_eq!(replayed, pushed);
    second.ack(replayed.id, Vec::new()).await.unwrap();
    // A connection's frames reach the master in order: once this answer is in, so is
    // the acknowledgement.
    second.call(&Request::Exists { key: key("persist/me") }).await.unwrap();
    // Acknowledged: a third connection gets nothing replayed, only what is new.
    drop(second);
    drop(again);
    let (third, mut fresh) = connect(master.addr, hello(3, 1)).await;
    let newer = put(&third, 3, "persist/me/too").await;
    let next = fresh.recv().await.unwrap();
    let Ok(Message::Command(NodeCommand::Persist { version: v, .. })) = Message::decode(&next.body) else {
        panic!("a persist command")
    };
    assert_eq!(v, newer, "the acknowledged command was not replayed");
    let metrics = http_get(master.metrics, "/metrics");
    assert!(metrics.contains(r#"larder_master_requests_total{op="put_start"} 2"#), "{metrics}");
    assert!(metrics.contains("larder_master_objects 2"), "{metrics}");
    assert!(metrics.contains("larder_master_nodes 1"), "{metrics}");
    assert!(metrics.contains("larder_master_commands_unacked 1"), "{metrics}");
    assert!(http_get(master.metrics, "/health").ends_with("ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_get_typed_errors_while_the_master_is_down_and_reconnect_when_it_is_back() {
    // A port outside the ephemeral range: no connection (the client's redials
    // included) can take it while the master is down.
    let mut master = MasterProcess::start(&format!("127.0.0.1:{}", unused_fixed_port()), &[]);
    let addr = master.addr;
    let (client, _) = node(addr, 5, 1, false).await;
    let LinkState::Up(before) = client.link() else { panic!("up") };
    master.kill();
    // The link drops (the socket ends), and calls fail at once with a typed error.
    loop {
        match client.call(&Request::Exists { key: key("k") }).await {
            Err(CallError::NotConnected(a) | CallError::Disconnected(a)) => {
                assert_eq!(a, addr);
                break;
            }
            Ok(_) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    let restarted = MasterProcess::start(&addr.to_string(), &[]);
    let after = client.wait_up(HANG_GUARD).await.expect("the client redials");
    assert_ne!(after.incarnation, before.incarnation, "a new master run");
    // The new master knows nothing yet: the node registers again.
    let ping = Request::Ping { node: NodeId(5), incarnation: Incarnation(1), has_storage: false };
    assert!(
        matches!(client.call(&ping).await.unwrap(), Response::Ping(p) if p.outcome == PingOutcome::Registered)
    );
    drop(restarted);
}
