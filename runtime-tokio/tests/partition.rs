//! A node cut off from the master by the network while it keeps running: the node runs
//! in its own network namespace, joined to the master's by a veth pair, and the test
//! takes the link down (packets dropped, no connection reset) and up again. Needs root
//! (CI runs as root).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use common::{HANG_GUARD, MasterProcess, NodeProcess, value};
use larder_engine::net::data::{DataError, DataRequest, DataResponse};
use larder_engine::net::{ClientConfig, ClusterName, Hello, Role};
use larder_engine::wire::{Request, Response};
use larder_engine::{Incarnation, KeyRef, NodeId};
use larder_tokio::cluster::{Client, RemoteStore};

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("the ip command runs");
    assert!(status.success(), "ip {args:?} failed");
}

/// A network namespace with one end of a veth pair in it; the other end, in the test's
/// namespace, is the link the test cuts. Deleted when dropped.
struct Netns {
    name: String,
    outside: String,
    outside_ip: IpAddr,
    inside_ip: IpAddr,
}

impl Netns {
    fn new() -> Self {
        let id = std::process::id() % 50_000;
        let (name, outside, inside) = (format!("larder-{id}"), format!("lrdo{id}"), format!("lrdi{id}"));
        let subnet = format!("10.{}.{}", 100 + id / 250 % 100, id % 250);
        ip(&["netns", "add", &name]);
        let netns = Netns {
            outside: outside.clone(),
            outside_ip: format!("{subnet}.1").parse().unwrap(),
            inside_ip: format!("{subnet}.2").parse().unwrap(),
            name,
        };
        ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
        ip(&["link", "set", &inside, "netns", &netns.name]);
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &outside]);
        ip(&["link", "set", &outside, "up"]);
        let inside_addr = format!("{subnet}.2/24");
        for args in [
            vec!["addr", "add", &inside_addr, "dev", &inside],
            vec!["link", "set", &inside, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut full = vec!["netns", "exec", &netns.name, "ip"];
            full.extend(args);
            ip(&full);
        }
        netns
    }

    fn cut(&self) {
        ip(&["link", "set", &self.outside, "down"]);
    }

    fn mend(&self) {
        ip(&["link", "set", &self.outside, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = Command::new("ip").args(["link", "del", &self.outside]).status();
    }
}

/// Cut off by the network, alive: the master expires the node after the TTL; when the
/// link is back it rejoins (mounts again, registers its disk records again) with no
/// restart, its flushed object reads back byte-identical, and a write granted in its
/// old session is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_by_the_network_is_expired_rejoins_and_its_old_session_is_fenced() {
    let netns = Netns::new();
    let master = MasterProcess::start(&format!("{}:0", netns.outside_ip), &["--node-ttl", "3s"]);
    let root = tempfile::tempdir().unwrap();
    let listen = SocketAddr::new(netns.inside_ip, 0).to_string();
    let node =
        NodeProcess::start_in_netns(&netns.name, master.addr, "16MiB", root.path(), &["--listen", &listen]);
    assert_eq!(node.addr.ip(), netns.inside_ip);
    master.wait_for_metric("larder_master_segments", 1.0);
    let cluster = ClusterName::new(b"larder").unwrap();
    let client = RemoteStore::connect(master.addr, cluster, HANG_GUARD).await.unwrap();
    client.put(b"kept", &value(7, 300_000), 1).await.unwrap();
    client.flush().await.unwrap();
    // A put granted before the cut, written only after it.
    let writer = NodeId(4242);
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        cluster,
        role: Role::Client,
        node: writer,
        incarnation: Incarnation(1),
        serves: None,
    };
    let (raw, _) = Client::start(master.addr, ClientConfig::new(hello));
    let welcome = raw.wait_up(HANG_GUARD).await.unwrap();
    let start = Request::PutStart { writer, key: KeyRef::new(b"late").unwrap(), size: 4096, replicas: 1 };
    let Response::PutStart(Ok(grant)) = raw.call(&start).await.unwrap() else { panic!("granted") };

    netns.cut();
    master.wait_for_metric("larder_master_nodes", 0.0);
    assert_eq!(master.metric("larder_master_segments"), Some(0.0), "its segment went with it");
    netns.mend();
    // The same process, never restarted, rejoins by itself.
    master.wait_for_metric("larder_master_segments", 1.0);
    master.wait_for_metric("larder_master_objects", 1.0);
    let got = client.get(b"kept").await.unwrap();
    assert!(got == value(7, 300_000), "the flushed object after the rejoin differs");

    let (to_node, _) = Client::start(node.addr, ClientConfig::new(Hello { role: Role::Peer, ..hello }));
    to_node.wait_up(HANG_GUARD).await.unwrap();
    let junk = [0x66u8; 4096];
    let mut body = Vec::new();
    let old = grant.replicas[0];
    DataRequest::Write {
        segment: old.segment,
        offset: old.offset,
        version: grant.version,
        epoch: welcome.incarnation.0,
        crc32c: larder_engine::checksum::crc32c(&junk),
        key: KeyRef::new(b"late").unwrap(),
        bytes: &junk,
    }
    .encode(&mut body);
    let answer = to_node.call_raw(body).await.unwrap();
    assert_eq!(DataResponse::decode(&answer).unwrap(), DataResponse::Refused(DataError::Fenced));
    // The cluster takes puts on the rejoined node again.
    client.put(b"after", &value(8, 100_000), 1).await.unwrap();
    assert!(client.get(b"after").await.unwrap() == value(8, 100_000));
}
