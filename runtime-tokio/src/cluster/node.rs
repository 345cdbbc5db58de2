//! `larder node`: a process that contributes a memory segment to the cluster and serves
//! it over TCP.
//!
//! It keeps one link to the master (registering, pinging, mounting its segment again
//! whenever the master does not know it: a master restart, or an expiry while it was
//! cut off) and answers data requests from writers and readers on its own listener.
//! What was written where is the engine's [`Extents`]: a writer whose put the master
//! discarded cannot write into a range since given to a newer object, and a reader gets
//! bytes only for exactly the version it asks for, with their CRC32C.
//!
//! Its node id is stable: kept in `<node dir>/node-id`, so a restarted node is the same
//! node; its incarnation is the wall clock at start, so every run is newer than the
//! last.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use larder_engine::net::data::{DataError, DataRequest, DataResponse, Extents};
use larder_engine::net::{
    ClientConfig, ClusterName, DEFAULT_MAX_FRAME_BODY, Hello, PROTOCOL_VERSIONS, RefusalReason, Role,
    ServerConfig,
};
use larder_engine::wire::{PingOutcome, Request, Response};
use larder_engine::{Duration, Incarnation, NodeId, SegmentId};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::client::{Client, LinkState};
use super::clock::EngineClock;
use super::connection::{self, Outbound, Service};

/// How `larder node` runs.
#[derive(Debug, Clone)]
pub struct NodeServerConfig {
    /// The master.
    pub master: SocketAddr,
    /// Where to serve the segment (port 0: any free port, reported to the master).
    pub listen: SocketAddr,
    /// The cluster's name.
    pub cluster: ClusterName,
    /// Bytes of memory contributed.
    pub memory_bytes: u64,
    /// The node directory holding the node id; `None`: a new id every run.
    pub node_dir: Option<PathBuf>,
}

/// A running node.
#[derive(Debug)]
pub struct NodeServer {
    /// Its id.
    pub node: NodeId,
    /// This run.
    pub incarnation: Incarnation,
    /// Where it serves its segment.
    pub data_addr: SocketAddr,
}

/// A node's segment: its bytes and what was written where.
#[derive(Debug)]
struct Segment {
    id: SegmentId,
    bytes: Vec<u8>,
    extents: Extents,
}

/// Reads or creates the stable node id in `dir`.
fn node_id(dir: Option<&Path>) -> std::io::Result<NodeId> {
    let Some(dir) = dir else { return Ok(NodeId(rand::random::<u64>() | 1)) };
    std::fs::create_dir_all(dir)?;
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(NodeId)
            .map_err(|e| std::io::Error::other(format!("{}: not a node id ({e})", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = NodeId(rand::random::<u64>() | 1);
            let tmp = dir.join("node-id.tmp");
            std::fs::write(&tmp, format!("{}\n", id.0))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

fn wall_clock_incarnation() -> Incarnation {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos());
    Incarnation(u64::try_from(nanos).unwrap_or(u64::MAX).max(1))
}

/// Starts the node on the current runtime: binds, links to the master, and returns.
pub async fn start(config: NodeServerConfig) -> std::io::Result<NodeServer> {
    let node = node_id(config.node_dir.as_deref())?;
    let incarnation = wall_clock_incarnation();
    let listener = TcpListener::bind(config.listen).await?;
    let data_addr = listener.local_addr()?;
    let size = usize::try_from(config.memory_bytes).map_err(|_| std::io::Error::other("memory too large"))?;
    // Zeroed pages are only touched as values arrive.
    let segment = Arc::new(RwLock::new(Segment {
        id: SegmentId(node.0),
        bytes: vec![0u8; size],
        extents: Extents::new(config.memory_bytes),
    }));
    let clock = EngineClock::new();
    let server_config = ServerConfig {
        cluster: config.cluster,
        versions: PROTOCOL_VERSIONS,
        incarnation,
        node_ttl: Duration::from_secs(10),
        roles: &[Role::Peer, Role::Client, Role::Node],
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_frame_body: DEFAULT_MAX_FRAME_BODY,
    };
    let service = Arc::new(DataService { segment: Arc::clone(&segment), outbound: Default::default() });
    tokio::spawn(connection::accept_loop(listener, server_config, clock, service));
    let hello = Hello {
        min_version: PROTOCOL_VERSIONS.0,
        max_version: PROTOCOL_VERSIONS.1,
        cluster: config.cluster,
        role: Role::Node,
        node,
        incarnation,
        serves: Some(data_addr),
    };
    tokio::spawn(keep_registered(config.master, hello, config.memory_bytes, segment));
    Ok(NodeServer { node, incarnation, data_addr })
}

/// Registers with the master and keeps it so: pings every second, and mounts the
/// segment again (empty: the master that knew its objects is gone, or forgot them)
/// whenever a ping finds the master does not know this run.
async fn keep_registered(master: SocketAddr, hello: Hello, size: u64, segment: Arc<RwLock<Segment>>) {
    let (client, mut commands) = Client::start(master, ClientConfig::new(hello));
    let (node, incarnation) = (hello.node, hello.incarnation);
    let segment_id = segment.read().unwrap_or_else(std::sync::PoisonError::into_inner).id;
    loop {
        if !matches!(client.link(), LinkState::Up(_)) {
            tokio::select! {
                changed = client.link_changed() => if changed.is_err() { return },
                // A memory-only node has no command to carry out; acknowledge and go on.
                Some(command) = commands.recv() => { let _ = client.ack(command.id, Vec::new()).await; }
            }
            continue;
        }
        let ping = Request::Ping { node, incarnation, has_storage: false };
        match client.call(&ping).await {
            Ok(Response::Ping(reply)) if reply.outcome != PingOutcome::Refreshed => {
                segment.write().unwrap_or_else(std::sync::PoisonError::into_inner).extents.clear();
                let mount = Request::MountSegment { node, segment: segment_id, size };
                match client.call(&mount).await {
                    Ok(Response::MountSegment(Ok(()))) => {
                        tracing::info!("node {node}: segment {segment_id} mounted")
                    }
                    other => tracing::warn!("node {node}: mounting segment {segment_id}: {other:?}"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("node {node}: ping: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            Some(command) = commands.recv() => { let _ = client.ack(command.id, Vec::new()).await; }
        }
    }
}

/// Answers data requests from the segment.
#[derive(Debug)]
struct DataService {
    segment: Arc<RwLock<Segment>>,
    outbound: std::sync::Mutex<std::collections::HashMap<u64, mpsc::UnboundedSender<Outbound>>>,
}

impl DataService {
    fn answer(&self, body: &[u8], out: &mut Vec<u8>) {
        let Ok(request) = DataRequest::decode(body) else {
            return DataResponse::Refused(DataError::Unknown(0)).encode(out);
        };
        match request {
            DataRequest::Write { segment, offset, version, bytes } => {
                let mut s = self.segment.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                let len = bytes.len() as u64;
                let checked = if segment == s.id {
                    s.extents.check_write(offset, len, version)
                } else {
                    Err(DataError::UnknownSegment)
                };
                if let Err(e) = checked {
                    return DataResponse::Refused(e).encode(out);
                }
                let start = offset as usize;
                s.bytes[start..start + bytes.len()].copy_from_slice(bytes);
                s.extents.record_write(offset, len, version, larder_engine::checksum::crc32c(bytes));
                DataResponse::Written.encode(out);
            }
            DataRequest::Read { segment, offset, len, version } => {
                let s = self.segment.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                let checked = if segment == s.id {
                    s.extents.check_read(offset, len, version)
                } else {
                    Err(DataError::UnknownSegment)
                };
                match checked {
                    Ok(crc) => {
                        DataResponse::encode_read_header(out, crc);
                        out.extend_from_slice(&s.bytes[offset as usize..(offset + len) as usize]);
                    }
                    Err(e) => DataResponse::Refused(e).encode(out),
                }
            }
        }
    }
}

impl Service for DataService {
    async fn hello(
        &self,
        conn: u64,
        _hello: Hello,
        outbound: mpsc::UnboundedSender<Outbound>,
    ) -> Result<(), RefusalReason> {
        self.outbound.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(conn, outbound);
        Ok(())
    }

    async fn requests(&self, conn: u64, batch: Vec<(u64, Vec<u8>)>) -> bool {
        let responses: Vec<(u64, Vec<u8>)> = batch
            .into_iter()
            .map(|(id, body)| {
                let mut out = Vec::new();
                self.answer(&body, &mut out);
                (id, out)
            })
            .collect();
        let outbound =
            self.outbound.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&conn).cloned();
        outbound.is_some_and(|o| o.send(Outbound::Responses(responses)).is_ok())
    }

    async fn command_ack(&self, _node: NodeId, _id: u64) {}

    async fn closed(&self, conn: u64) {
        self.outbound.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&conn);
    }
}
