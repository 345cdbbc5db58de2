//! The master over TCP against the same master called in-process: pipelined
//! `GetReplicaList` requests per second, the master on one core.
//!
//! Both sides answer the same encoded requests: in-process, each is decoded, handled
//! and its response encoded on one thread (the master's ceiling); over TCP, the whole
//! `larder master` server (accept loop, connections and actor) runs on one
//! current-thread runtime pinned to core 0, and a raw load generator pinned to the
//! other core writes pre-encoded request frames on a few connections and counts the
//! response frames.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant as StdInstant;

use larder_engine::master::{Master, MasterConfig};
use larder_engine::net::frame::write_frame;
use larder_engine::net::{ClientConfig, ClusterName, FRAME_HEADER_LEN, FrameHeader, FrameKind, Hello, Role};
use larder_engine::wire::{Message, Request, Response};
use larder_engine::{Incarnation, Instant, KeyRef, NodeId, SegmentId};
use larder_tokio::cluster::{Client, MasterServerConfig};

/// Objects the master holds during the measurement.
pub const OBJECTS: usize = 10_000;
const NODE: NodeId = NodeId(1);
const VALUE: u64 = 64 << 10;

fn key(i: usize) -> String {
    format!("model/rank0/prefix/{i:08}")
}

fn encode(m: &Message<'_>) -> Vec<u8> {
    let mut out = vec![0u8; m.encoded_len().expect("bounded")];
    let n = m.encode(&mut out).expect("sized");
    out.truncate(n);
    out
}

fn get_request(i: usize) -> Vec<u8> {
    let k = key(i % OBJECTS);
    encode(&Message::Request(Request::GetReplicaList {
        key: KeyRef::new(k.as_bytes()).expect("a valid key"),
    }))
}

/// Pins the calling thread to one CPU (best effort: false if the kernel refused).
pub fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: `set` is a plain bitmask owned by this frame; sched_setaffinity(0, ..)
    // only reads it and changes the calling thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn fill(master: &mut Master, now: Instant) {
    let _ = master.handle_ping(now, NODE, Incarnation(1), false);
    master.handle_mount_segment(now, NODE, SegmentId(1), 1 << 40).expect("mount");
    for i in 0..OBJECTS {
        let k = key(i);
        let k = KeyRef::new(k.as_bytes()).expect("key");
        let grant = master.handle_put_start(now, NODE, k, VALUE, 1).expect("put start");
        master.handle_put_end(now, NODE, k, grant.version, Some(0)).expect("put end");
    }
}

/// Requests per second (thousands) of decode + handle + encode on this thread.
pub fn in_process(requests: usize) -> f64 {
    let mut master = Master::new(MasterConfig::default()).expect("default config");
    let now = Instant::from_nanos(1);
    fill(&mut master, now);
    let bodies: Vec<Vec<u8>> = (0..OBJECTS).map(get_request).collect();
    let start = StdInstant::now();
    let mut answered = 0usize;
    for i in 0..requests {
        let body = &bodies[i % OBJECTS];
        let Ok(Message::Request(request)) = Message::decode(body) else { panic!("decodes") };
        let response = master.handle_request(now, &request);
        answered += usize::from(matches!(response, Response::GetReplicaList(Ok(_))));
        std::hint::black_box(encode(&Message::Response(response)));
    }
    assert_eq!(answered, requests, "every object is found");
    requests as f64 / start.elapsed().as_secs_f64() / 1e3
}

/// Starts a master on its own pinned thread; returns its address.
fn start_master_on_core(cpu: usize) -> Result<SocketAddr, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(String::from("master"))
        .spawn(move || {
            pin_to_cpu(cpu);
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let cluster = ClusterName::new(b"bench").expect("name");
                let mut config = MasterServerConfig::new("127.0.0.1:0".parse().expect("addr"), cluster);
                // The filling client leaves before the runs: its node and objects stay.
                config.master.node_ttl = larder_engine::Duration::from_secs(24 * 3600);
                let server = larder_tokio::cluster::master::start(config).await.map_err(|e| e.to_string());
                let _ = tx.send(server.map(|s| s.addr));
                std::future::pending::<()>().await;
            });
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())?
}

fn hello(node: u64) -> Hello {
    Hello {
        min_version: 1,
        max_version: 1,
        cluster: ClusterName::new(b"bench").expect("name"),
        role: Role::Node,
        node: NodeId(node),
        incarnation: Incarnation(1),
        serves: None,
    }
}

/// Registers the node and puts every object through the tokio client.
fn fill_over_tcp(addr: SocketAddr) -> Result<(), String> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let (client, _) = Client::start(addr, ClientConfig::new(hello(NODE.0)));
        client.wait_up(std::time::Duration::from_secs(30)).await.map_err(|e| e.to_string())?;
        let ping = Request::Ping { node: NODE, incarnation: Incarnation(1), has_storage: false };
        client.call(&ping).await.map_err(|e| e.to_string())?;
        let mount = Request::MountSegment { node: NODE, segment: SegmentId(1), size: 1 << 40 };
        client.call(&mount).await.map_err(|e| e.to_string())?;
        for i in 0..OBJECTS {
            let k = key(i);
            let k = KeyRef::new(k.as_bytes()).map_err(|e| e.to_string())?;
            let start = Request::PutStart { writer: NODE, key: k, size: VALUE, replicas: 1 };
            let Response::PutStart(Ok(grant)) = client.call(&start).await.map_err(|e| e.to_string())? else {
                return Err(String::from("put start refused"));
            };
            let end = Request::PutEnd { writer: NODE, key: k, version: grant.version, crc32c: 0 };
            client.call(&end).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// One raw connection: handshake, then `requests` pre-encoded frames written while a
/// second thread counts the response frames. Returns when every response is in.
fn raw_connection(addr: SocketAddr, node: u64, requests: usize, cpu: usize) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut body = [0u8; Hello::MAX_LEN];
    let n = hello(node).encode(&mut body).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    write_frame(&mut out, FrameKind::Hello, 0, &body[..n], u32::MAX).map_err(|e| e.to_string())?;
    stream.write_all(&out).map_err(|e| e.to_string())?;
    let mut header = [0u8; FRAME_HEADER_LEN];
    stream.read_exact(&mut header).map_err(|e| e.to_string())?;
    let welcome = FrameHeader::decode(&header, u32::MAX).map_err(|e| e.to_string())?;
    if welcome.kind != FrameKind::Welcome {
        return Err(format!("expected a welcome, got {:?}", welcome.kind));
    }
    let mut skip = vec![0u8; welcome.body_len as usize];
    stream.read_exact(&mut skip).map_err(|e| e.to_string())?;
    let mut frames = Vec::new();
    for i in 0..requests {
        write_frame(&mut frames, FrameKind::Request, i as u64 + 1, &get_request(i), u32::MAX)
            .map_err(|e| e.to_string())?;
    }
    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
    let counter = std::thread::spawn(move || -> Result<(), String> {
        pin_to_cpu(cpu);
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &mut reader);
        let mut body = Vec::new();
        for _ in 0..requests {
            reader.read_exact(&mut header).map_err(|e| e.to_string())?;
            let h = FrameHeader::decode(&header, u32::MAX).map_err(|e| e.to_string())?;
            if h.kind != FrameKind::Response {
                return Err(format!("expected a response, got {:?}", h.kind));
            }
            body.resize(h.body_len as usize, 0);
            reader.read_exact(&mut body).map_err(|e| e.to_string())?;
            if !matches!(Message::decode(&body), Ok(Message::Response(Response::GetReplicaList(Ok(_))))) {
                return Err(String::from("a lookup over TCP did not find its object"));
            }
        }
        Ok(())
    });
    pin_to_cpu(cpu);
    stream.write_all(&frames).map_err(|e| e.to_string())?;
    counter.join().map_err(|_| String::from("counter panicked"))?
}

/// Requests per second (thousands) answered over TCP, `connections` connections
/// pipelining `requests` each. The first call starts the master and fills it.
#[derive(Debug)]
pub struct OverTcp {
    addr: SocketAddr,
    next_node: u64,
}

impl OverTcp {
    /// Starts the master on core 0 and fills it.
    pub fn start() -> Result<Self, String> {
        let addr = start_master_on_core(0)?;
        fill_over_tcp(addr)?;
        Ok(Self { addr, next_node: 100 })
    }

    /// One measured run.
    pub fn run(&mut self, connections: usize, requests: usize) -> Result<f64, String> {
        let start = StdInstant::now();
        let handles: Vec<_> = (0..connections)
            .map(|_| {
                self.next_node += 1;
                let (addr, node) = (self.addr, self.next_node);
                std::thread::spawn(move || raw_connection(addr, node, requests, 1))
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| String::from("a connection panicked"))??;
        }
        Ok((connections * requests) as f64 / start.elapsed().as_secs_f64() / 1e3)
    }
}

/// MB/s of one plain loopback TCP stream moving `total` bytes, written in `chunk`s and
/// read into a buffer: the physical limit of the transfers measured beside it.
pub fn raw_stream(total: u64, chunk: usize) -> Result<f64, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || -> Result<(), String> {
        let (mut socket, _) = listener.accept().map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; chunk];
        let mut left = total;
        while left > 0 {
            let n = socket.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(String::from("the stream ended early"));
            }
            left -= n as u64;
        }
        Ok(())
    });
    let mut socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let data = vec![0x5au8; chunk];
    let start = StdInstant::now();
    let mut sent = 0u64;
    while sent < total {
        let n = chunk.min((total - sent) as usize);
        socket.write_all(&data[..n]).map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    reader.join().map_err(|_| String::from("reader panicked"))??;
    Ok(total as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// Redis on loopback (its own `redis-server`, persistence off): SET then GET MB/s of
/// `count` values of `value` bytes from `clients` connections, by `redis-benchmark`.
pub fn redis(value: usize, count: usize, clients: usize) -> Result<(f64, f64), String> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let mut server = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server: {e} (apt-get install redis-server)"))?;
    let result = (|| {
        // Wait until it answers.
        let mut up = false;
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                up = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        if !up {
            return Err(String::from("redis-server did not start"));
        }
        let out = std::process::Command::new("redis-benchmark")
            .args(["-p", &port.to_string(), "-t", "set,get", "-q"])
            .args(["-n", &count.to_string(), "-d", &value.to_string(), "-c", &clients.to_string()])
            .output()
            .map_err(|e| format!("redis-benchmark: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let rps = |op: &str| -> Result<f64, String> {
            let line =
                text.lines().rev().find(|l| l.contains(op)).ok_or_else(|| format!("no {op} in {text}"))?;
            let after = line.rsplit(&format!("{op}: ")).next().unwrap_or("");
            after
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| format!("cannot read {op} in {line:?}"))
        };
        Ok((rps("SET")? * value as f64 / 1e6, rps("GET")? * value as f64 / 1e6))
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// Real Mooncake Store over TCP on the same workload (`benches/mooncake/transfers.py`:
/// its master, two holder processes, a client with no segment), run by `python`, a
/// virtual environment's Python with `mooncake-transfer-engine-non-cuda` installed;
/// (put MB/s, get MB/s). `Err` says why it was not measured.
pub fn mooncake(python: &str, value: usize, count: usize, tasks: usize) -> Result<(f64, f64), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/mooncake/transfers.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(["--value", &value.to_string(), "--count", &count.to_string(), "--tasks", &tasks.to_string()])
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        return Err(format!("{python} {script}: {}: {last}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        text.lines().rev().find(|l| l.starts_with('{')).ok_or_else(|| format!("no result in {text:?}"))?;
    let parsed: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{line}: {e}"))?;
    let field = |name: &str| parsed[name].as_f64().ok_or_else(|| format!("no {name} in {line}"));
    Ok((field("put_mb_s")?, field("get_mb_s")?))
}

/// The read lease of the bench's master: the gets lease every object, so the next
/// run's puts find room only once it has passed.
const BENCH_LEASE_TTL: std::time::Duration = std::time::Duration::from_millis(500);

/// A master and two nodes in this process, with a client that contributes no memory:
/// every byte it puts or gets crosses a loopback connection to a node.
#[derive(Debug)]
pub struct LarderCluster {
    runtime: tokio::runtime::Runtime,
    store: std::sync::Arc<larder_tokio::cluster::RemoteStore>,
    next: u64,
}

impl LarderCluster {
    /// Starts the master and two nodes of `memory` bytes each.
    pub fn start(memory: u64) -> Result<Self, String> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
        let store = runtime.block_on(async {
            let cluster = ClusterName::new(b"bench").expect("name");
            let mut config = MasterServerConfig::new("127.0.0.1:0".parse().expect("addr"), cluster);
            config.master.lease_ttl = BENCH_LEASE_TTL.into();
            let master = larder_tokio::cluster::master::start(config).await.map_err(|e| e.to_string())?;
            for _ in 0..2 {
                let node = larder_tokio::cluster::NodeServerConfig {
                    master: master.addr,
                    listen: "127.0.0.1:0".parse().expect("addr"),
                    cluster,
                    memory_bytes: memory,
                    storage_root: None,
                    node_id: None,
                    tier: Default::default(),
                    rdma: None,
                };
                larder_tokio::cluster::node::start(node).await.map_err(|e| e.to_string())?;
            }
            let timeout = std::time::Duration::from_secs(30);
            let store = larder_tokio::cluster::RemoteStore::connect(master.addr, cluster, timeout)
                .await
                .map_err(|e| e.to_string())?;
            // Wait until both segments are mounted: a put of two replicas then finds
            // room (bounded: a cluster that never comes up is an error).
            let probe = vec![1u8; 1];
            let mut tries = 0;
            while let Err(e) = store.put(b"probe", &probe, 2).await {
                tries += 1;
                if tries > 500 {
                    return Err(format!("the cluster never took a put: {e}"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Ok::<_, String>(std::sync::Arc::new(store))
        })?;
        Ok(Self { runtime, store, next: 0 })
    }

    /// Puts `count` values of `value` bytes with `tasks` tasks at once, then gets them
    /// all back (verified); returns (put MB/s, get MB/s).
    pub fn run(&mut self, value: usize, count: usize, tasks: usize) -> Result<(f64, f64), String> {
        use std::sync::Arc;
        let run = self.next;
        self.next += 1;
        // Every value differs (its key in its first bytes), so a get that returned
        // another object's bytes fails the check; made before the clock starts.
        let objects: Arc<Vec<(String, bytes::Bytes)>> = Arc::new(
            (0..count)
                .map(|i| {
                    let key = format!("run{run}/value{i}");
                    let mut bytes = vec![0xa5u8; value];
                    let n = key.len().min(value);
                    bytes[..n].copy_from_slice(&key.as_bytes()[..n]);
                    (key, bytes::Bytes::from(bytes))
                })
                .collect(),
        );
        let store = Arc::clone(&self.store);
        self.runtime.block_on(async move {
            let timed = |get: bool| {
                let (objects, store) = (Arc::clone(&objects), Arc::clone(&store));
                async move {
                    let start = StdInstant::now();
                    let per_task = count.div_ceil(tasks);
                    let handles: Vec<_> = (0..tasks)
                        .map(|t| {
                            let (objects, store) = (Arc::clone(&objects), Arc::clone(&store));
                            tokio::spawn(async move {
                                for (key, bytes) in objects.iter().skip(t * per_task).take(per_task) {
                                    if get {
                                        let got =
                                            store.get(key.as_bytes()).await.map_err(|e| e.to_string())?;
                                        if got != *bytes {
                                            return Err(String::from("a get returned other bytes"));
                                        }
                                    } else {
                                        store
                                            .put_bytes(key.as_bytes(), bytes.clone(), 1)
                                            .await
                                            .map_err(|e| e.to_string())?;
                                    }
                                }
                                Ok::<(), String>(())
                            })
                        })
                        .collect();
                    for h in handles {
                        h.await.map_err(|e| e.to_string())??;
                    }
                    Ok::<f64, String>((count * value) as f64 / start.elapsed().as_secs_f64() / 1e6)
                }
            };
            let put = timed(false).await?;
            let get = timed(true).await?;
            // Make room for the next run: a forced remove keeps the ranges of objects
            // read in the last lease from other puts until it passes (quarantine).
            for (key, _) in objects.iter() {
                store.remove(key.as_bytes(), true).await.map_err(|e| e.to_string())?;
            }
            tokio::time::sleep(BENCH_LEASE_TTL * 2).await;
            Ok((put, get))
        })
    }
}
