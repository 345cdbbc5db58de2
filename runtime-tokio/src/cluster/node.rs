//! `larder node`: a process that contributes a memory segment and an SSD tier to the
//! cluster and serves both over TCP.
//!
//! It keeps one link to the master (registering, pinging, mounting its segment and
//! registering its disk records again whenever the master does not know it: a master
//! restart, or an expiry while it was cut off), carries out the master's commands
//! (persist a range to SSD, drop a record, wipe), and answers data requests from
//! writers and readers on its own listener. What was written where in memory is the
//! engine's [`Extents`]: a writer whose put the master discarded cannot write into a
//! range since given to a newer object, and a reader gets bytes only for exactly the
//! version it asks for, with their CRC32C. Disk records are read through the tier,
//! which checks each value's CRC.
//!
//! Its node id is stable (kept in `<root>/<cluster>/node-id`), so a restarted node is
//! the same node and its flushed records come back; its incarnation is the wall clock
//! at start, so every run is newer than the last.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use larder_engine::disk::{DropCause, Tier, TierConfig, TierEvent};
use larder_engine::embedded::{FdWatch, Runtime};
use larder_engine::memory::{SegmentMemory, SharedRange};
use larder_engine::net::data::{
    DataError, DataRequest, DataResponse, EndpointMessages, Extent, Extents, WriteHead,
};
use larder_engine::net::{
    ClientConfig, ClusterName, DEFAULT_MAX_FRAME_BODY, Hello, PROTOCOL_VERSIONS, RefusalReason, Role,
    ServerConfig,
};
use larder_engine::uring::Notifier;
use larder_engine::wire::{
    DiskReplicaOrigin, MasterError, Message, NodeCommand, PingOutcome, Request, Response, RestoredReplica,
};
use larder_engine::{Duration, Incarnation, MemoryReplica, NodeId, ObjectVersion, SegmentId};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::client::{Client, LinkState};
use super::clock::EngineClock;
use super::connection::{self, BodySink, Outbound, ResponseBody, Service};
use super::rdma::{NodeRdma, SimFabric};
use crate::TokioRuntime;

mod receive;

/// How `larder node` runs.
#[derive(Debug, Clone)]
pub struct NodeServerConfig {
    /// The master.
    pub master: SocketAddr,
    /// Where to serve the segment (port 0: any free port, reported to the master).
    pub listen: SocketAddr,
    /// The cluster's name (also the cluster directory under the storage root).
    pub cluster: ClusterName,
    /// Bytes of memory contributed.
    pub memory_bytes: u64,
    /// The storage root: the node's id is kept in `<root>/<cluster>/node-id` and its SSD
    /// tier in `<root>/<cluster>/<node>/`. `None`: memory only, a new id every run.
    pub storage_root: Option<PathBuf>,
    /// The node's id, given rather than kept under the root: nodes sharing one storage
    /// root (the DFS mode) each need their own. `None`: the id kept in
    /// `<root>/<cluster>/node-id` (made at the first start).
    pub node_id: Option<NodeId>,
    /// How its SSD tier runs.
    pub tier: TierSettings,
    /// The RDMA fabric its port attaches to (`None`: no device, replica bytes move
    /// over TCP). Only the simulated fabric exists so far (tests, benchmarks).
    pub rdma: Option<SimFabric>,
}

/// How a node's SSD tier runs: the embedded store's settings of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierSettings {
    /// The most bytes of bucket files (`None`: as the filesystem has room).
    pub max_disk_bytes: Option<u64>,
    /// Bytes of values waiting to be written before persists wait for the disk.
    pub write_behind_bytes: usize,
    /// Whether bucket files are written with O_DIRECT.
    pub direct_io: larder_engine::disk::DirectIo,
}

impl Default for TierSettings {
    fn default() -> Self {
        Self {
            max_disk_bytes: None,
            write_behind_bytes: 256 << 20,
            direct_io: larder_engine::disk::DirectIo::Auto,
        }
    }
}

/// A running node. Dropping it leaves the node running (for the life of the runtime);
/// [`NodeServer::stop`] stops it.
#[derive(Debug)]
pub struct NodeServer {
    /// Its id.
    pub node: NodeId,
    /// This run.
    pub incarnation: Incarnation,
    /// Where it serves its segment.
    pub data_addr: SocketAddr,
    /// Records its SSD tier recovered at start.
    pub recovered: usize,
    /// Its segment.
    pub segment: SegmentId,
    state: Arc<NodeState>,
    registered: tokio::sync::watch::Receiver<bool>,
    /// The listener's accept loop (which owns every connection's task) and the link to
    /// the master.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NodeServer {
    /// Writes whose value was read from the socket straight into the segment (those
    /// whose request body, head and value, is 64 KiB or more, and whose range the
    /// segment took).
    pub fn received_in_place(&self) -> u64 {
        self.state.received_in_place.load(Ordering::Relaxed)
    }

    /// Waits until the master has the segment mounted and every disk record of the
    /// node registered; false if that did not happen within `timeout`.
    pub async fn wait_registered(&self, timeout: std::time::Duration) -> bool {
        let mut registered = self.registered.clone();
        matches!(tokio::time::timeout(timeout, registered.wait_for(|r| *r)).await, Ok(Ok(_)))
    }

    /// Stops serving, pinging and carrying out commands at once, without waiting and
    /// without closing the SSD tier (it closes when its last user lets it go): for a
    /// node dropped without [`NodeServer::stop`].
    pub fn abort(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// A handle on the node's segment for a client in this process.
    pub fn local_segment(&self) -> LocalSegment {
        LocalSegment { id: self.segment, state: Arc::downgrade(&self.state) }
    }

    /// The SSD tier's statistics, if the node has one.
    pub fn tier_stats(&self) -> Option<larder_engine::disk::TierStats> {
        self.state.tier.as_ref().map(|t| t.tier.stats())
    }

    /// Stops the node: no more connections, pings or commands; then writes out what
    /// its SSD tier accepted and releases the node directory (so the same process can
    /// start the node again). The master learns of it by the node's TTL, or at once if
    /// the caller unmounts the segment first.
    ///
    /// Errors: the tier's, closing; `Io` (timed out) if a blocking tier call the node
    /// started (a persist's put, a drop) has not returned within [`STOP_TIMEOUT`]: the
    /// tier is then left to that call, not closed under it.
    pub async fn stop(self) -> Result<(), larder_engine::disk::TierError> {
        self.abort();
        for task in self.tasks {
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::error!("node {}: a task had panicked: {e}", self.node);
                }
            }
        }
        // The tasks are gone with their references; a blocking tier call they started
        // still holds one until it returns.
        let give_up = tokio::time::Instant::now() + STOP_TIMEOUT;
        let mut state = self.state;
        let state = loop {
            match Arc::try_unwrap(state) {
                Ok(state) => break state,
                Err(shared) if tokio::time::Instant::now() < give_up => {
                    state = shared;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Err(shared) => {
                    let dir = shared.tier.as_ref().map_or_else(PathBuf::new, |t| t.tier.dir().to_path_buf());
                    let stuck =
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "a tier call never returned");
                    return Err(larder_engine::disk::TierError::io("stopping the node", &dir, stuck));
                }
            }
        };
        match state.tier {
            Some(tier) => tokio::task::spawn_blocking(move || tier.tier.close())
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
            None => Ok(()),
        }
    }
}

/// How long [`NodeServer::stop`] waits for a blocking tier call the node started.
pub const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A node's segment: its bytes and what was written where.
#[derive(Debug)]
struct Segment {
    id: SegmentId,
    bytes: SegmentMemory,
    extents: Extents,
    /// The master run the segment is mounted with: writes granted by any other are
    /// refused. `None` until mounted.
    epoch: Option<u64>,
    /// Versions below this were granted before the segment was (re)mounted, into the
    /// mount the master dropped (an expiry, a restart of this node): refused.
    version_floor: ObjectVersion,
}

/// Where one write goes, and what it must match: the fields a write request carries
/// before its value.
pub use larder_engine::net::data::WriteHead as SegmentWrite;

/// The segment of a node in this process, for a client in the same process (a member
/// of the cluster contributing memory): its writes and reads of that segment skip the
/// network, under the same checks as a peer's. It does not keep the node alive: once
/// the node is stopped every call is `UnknownSegment`.
#[derive(Debug, Clone)]
pub struct LocalSegment {
    id: SegmentId,
    state: std::sync::Weak<NodeState>,
}

impl LocalSegment {
    /// The segment's id.
    pub fn id(&self) -> SegmentId {
        self.id
    }

    /// Writes `bytes` as a peer's write would be taken.
    pub fn write(&self, write: &SegmentWrite<'_>, bytes: &[u8]) -> Result<(), DataError> {
        self.state.upgrade().ok_or(DataError::UnknownSegment)?.write(write, bytes)
    }

    /// The bytes of `version` at `replica`, if the range holds exactly it and they
    /// match their CRC32C, which must be `crc32c` if given (the writer's, from the
    /// replica list).
    pub fn read(
        &self,
        replica: &MemoryReplica,
        version: ObjectVersion,
        crc32c: Option<u32>,
    ) -> Result<Bytes, DataError> {
        self.state.upgrade().ok_or(DataError::UnknownSegment)?.copy_replica(replica, version, crc32c)
    }
}

/// The SSD tier and the eventfd its events are signalled on.
#[derive(Debug)]
struct NodeTier {
    tier: Tier,
    notifier: Arc<Notifier>,
}

/// What the node's tasks share.
#[derive(Debug)]
struct NodeState {
    segment: RwLock<Segment>,
    tier: Option<NodeTier>,
    /// Bytes found not matching their CRC32C since the last report to the master.
    crc_failures_unreported: AtomicU64,
    /// Writes whose value was read from the socket straight into the segment.
    received_in_place: AtomicU64,
}

impl NodeState {
    /// Bytes did not match their CRC32C (refused, never used): counted for the master.
    fn note_crc_failure(&self) {
        self.crc_failures_unreported.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes `bytes` as object `write.version` at `write.offset` if the write is the
    /// segment's (mounted with the master run `write.epoch`, not fenced by a newer
    /// object or a remount) and the bytes match the writer's CRC32C.
    fn write(&self, write: &SegmentWrite<'_>, bytes: &[u8]) -> Result<(), DataError> {
        // The checksum first, outside the lock: what arrived is what was sent.
        let arrived = larder_engine::checksum::crc32c(bytes) == write.crc32c;
        let mut s = self.segment.write().unwrap_or_else(PoisonError::into_inner);
        let len = bytes.len() as u64;
        s.admits(write.segment, write.epoch, write.version)?;
        if !arrived {
            self.note_crc_failure();
            return Err(DataError::Corrupted);
        }
        s.extents.check_write(write.offset, len, write.version)?;
        // A receive in flight into the range: another write into it is still arriving
        // (a writer the master gave the range to before, its put since revoked, or a
        // retry of this one). This write cannot land beside it: refused, as stale.
        s.range_mut(write.offset, len).ok_or(DataError::Fenced)?.copy_from_slice(bytes);
        s.extents.record_write(write.offset, len, write.version, write.crc32c, write.key);
        Ok(())
    }

    /// A copy of object `version`'s replica in the segment, if the range holds exactly
    /// it and its bytes still match their CRC32C (which must be `expected`, if given).
    fn copy_replica(
        &self,
        replica: &MemoryReplica,
        version: ObjectVersion,
        expected: Option<u32>,
    ) -> Result<Bytes, DataError> {
        self.copy_replica_with_crc(replica, version, expected).map(|(bytes, _)| bytes)
    }

    /// Object `version`'s bytes at `offset`, shared out of the segment (no writer
    /// reaches them until the range is dropped), with the CRC32C they were written with.
    fn share_replica(
        &self,
        segment: SegmentId,
        offset: u64,
        len: u64,
        version: ObjectVersion,
    ) -> Result<(u32, SharedRange), DataError> {
        let s = self.segment.read().unwrap_or_else(PoisonError::into_inner);
        if segment != s.id {
            return Err(DataError::UnknownSegment);
        }
        let crc = s.extents.check_read(offset, len, version)?;
        let (start, len) = usize_range(offset, len);
        let shared = s.bytes.share(start, len).expect("a range holding an extent is inside and not lent");
        Ok((crc, shared))
    }

    /// [`NodeState::copy_replica`], with the CRC32C the bytes match.
    fn copy_replica_with_crc(
        &self,
        replica: &MemoryReplica,
        version: ObjectVersion,
        expected: Option<u32>,
    ) -> Result<(Bytes, u32), DataError> {
        let s = self.segment.read().unwrap_or_else(PoisonError::into_inner);
        if replica.segment != s.id {
            return Err(DataError::UnknownSegment);
        }
        let crc = s.extents.check_read(replica.offset, replica.len, version)?;
        let bytes = s.range(replica.offset, replica.len).to_vec();
        drop(s);
        if expected.is_some_and(|e| e != crc) || larder_engine::checksum::crc32c(&bytes) != crc {
            self.note_crc_failure();
            return Err(DataError::Corrupted);
        }
        Ok((Bytes::from(bytes), crc))
    }
}

impl Segment {
    /// Whether a write into `segment` granted by master run `epoch` to `version` is
    /// this segment's: mounted with that run, and not below its version floor.
    fn admits(&self, segment: SegmentId, epoch: u64, version: ObjectVersion) -> Result<(), DataError> {
        if segment != self.id {
            return Err(DataError::UnknownSegment);
        }
        if self.epoch != Some(epoch) || version < self.version_floor {
            return Err(DataError::Fenced);
        }
        Ok(())
    }

    /// The bytes of a range that [`Extents`] accepted (so it lies inside the segment,
    /// and holds an extent: no receive into it is in flight).
    fn range(&self, offset: u64, len: u64) -> &[u8] {
        let (start, len) = usize_range(offset, len);
        self.bytes.range(start, len).expect("a range holding an extent is inside and not lent")
    }

    /// The bytes of a range to write, unless a receive into part of it is in flight.
    fn range_mut(&mut self, offset: u64, len: u64) -> Option<&mut [u8]> {
        let (start, len) = usize_range(offset, len);
        self.bytes.range_mut(start, len)
    }
}

/// A range [`Extents`] accepted, as memory indices.
fn usize_range(offset: u64, len: u64) -> (usize, usize) {
    let start = usize::try_from(offset).expect("inside the segment");
    (start, usize::try_from(len).expect("inside the segment"))
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

/// Opens the node's SSD tier under `root`.
fn open_tier(
    root: &Path,
    cluster: &ClusterName,
    node: NodeId,
    settings: TierSettings,
) -> std::io::Result<(NodeTier, usize)> {
    let notifier = Arc::new(Notifier::new()?);
    let mut config = TierConfig::new(root, cluster.as_str(), node);
    config.max_bytes = settings.max_disk_bytes;
    config.queue_bytes = settings.write_behind_bytes;
    config.direct_io = settings.direct_io;
    config.event_signal = Some(Arc::clone(&notifier));
    // The master learns of every persist, failure and drop through these events.
    config.events = true;
    let (tier, recovered) = Tier::open(config).map_err(std::io::Error::other)?;
    Ok((NodeTier { tier, notifier }, recovered.len()))
}

/// Starts the node on the current runtime: opens its tier, binds, links to the master,
/// and returns.
pub async fn start(config: NodeServerConfig) -> std::io::Result<NodeServer> {
    let cluster_dir = config.storage_root.as_ref().map(|r| r.join(config.cluster.as_str()));
    let node = match config.node_id {
        Some(id) => id,
        None => node_id(cluster_dir.as_deref())?,
    };
    let incarnation = wall_clock_incarnation();
    let (tier, recovered) = match &config.storage_root {
        Some(root) => {
            let (tier, recovered) = open_tier(root, &config.cluster, node, config.tier)?;
            (Some(tier), recovered)
        }
        None => {
            tracing::warn!("node {node}: no storage root, so memory only: nothing it holds survives it");
            (None, 0)
        }
    };
    let listener = TcpListener::bind(config.listen).await?;
    let data_addr = advertised(listener.local_addr()?, config.master);
    let size = usize::try_from(config.memory_bytes).map_err(|_| std::io::Error::other("memory too large"))?;
    let segment = Segment {
        id: SegmentId(node.0),
        bytes: commit_segment(node, size).await?,
        extents: Extents::new(config.memory_bytes),
        epoch: None,
        version_floor: ObjectVersion(0),
    };
    let state = Arc::new(NodeState {
        segment: RwLock::new(segment),
        tier,
        crc_failures_unreported: AtomicU64::new(0),
        received_in_place: AtomicU64::new(0),
    });
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
    let rdma = match &config.rdma {
        Some(fabric) => Some(Arc::new(std::sync::Mutex::new(NodeRdma::new(fabric, node)))),
        None => {
            tracing::info!("node {node}: no RDMA device: replica bytes move over TCP");
            None
        }
    };
    let service = Arc::new(DataService {
        state: Arc::clone(&state),
        rdma,
        outbound: Default::default(),
        peers: Default::default(),
    });
    let serving = tokio::spawn(connection::accept_loop(listener, server_config, clock, service));
    let hello = Hello {
        min_version: PROTOCOL_VERSIONS.0,
        max_version: PROTOCOL_VERSIONS.1,
        cluster: config.cluster,
        role: Role::Node,
        node,
        incarnation,
        serves: Some(data_addr),
    };
    let (registered_tx, registered) = tokio::sync::watch::channel(false);
    let linked = tokio::spawn(keep_registered(
        config.master,
        hello,
        config.memory_bytes,
        Arc::clone(&state),
        registered_tx,
    ));
    let segment = SegmentId(node.0);
    Ok(NodeServer {
        node,
        incarnation,
        data_addr,
        recovered,
        segment,
        state,
        registered,
        tasks: vec![serving, linked],
    })
}

/// The address the node gives the master for its listener: the bound one, except that
/// a wildcard IP (`0.0.0.0`, `::`) is no address a peer can dial; it becomes this host's
/// address on the route to the master (the address a peer that reaches the master most
/// likely reaches too), or loopback if there is no route.
fn advertised(bound: SocketAddr, master: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let loopback = if master.is_ipv4() {
        std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST)
    } else {
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
    };
    let ip = local_ip_towards(master).filter(|ip| !ip.is_unspecified()).unwrap_or(loopback);
    SocketAddr::new(ip, bound.port())
}

/// This host's source address for packets to `peer`: a UDP socket connected to it
/// (which only looks the route up; nothing is sent).
fn local_ip_towards(peer: SocketAddr) -> Option<std::net::IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("an address");
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(peer).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

/// Registers with the master and keeps it so, and carries out its commands.
///
/// Pings every second; whenever a ping finds that the master does not know this run
/// (a first contact, a master restart, an expiry while cut off) the segment is
/// mounted again, empty (the master that knew its objects is gone or forgot them), and
/// every record of the SSD tier is registered again. Persist commands copy the range
/// (checked against its version and CRC) into the tier; the tier's events register the
/// disk replicas or report the failures.
async fn keep_registered(
    master: SocketAddr,
    hello: Hello,
    size: u64,
    state: Arc<NodeState>,
    registered: tokio::sync::watch::Sender<bool>,
) {
    let (client, mut commands) = Client::start(master, ClientConfig::new(hello));
    let events = match &state.tier {
        Some(tier) => {
            match TokioRuntime::current().watch_fd(tier.notifier.try_clone_fd().expect("an eventfd dup")) {
                Ok(watch) => Some(watch),
                Err(e) => {
                    tracing::error!("watching the SSD tier's events: {e}");
                    None
                }
            }
        }
        None => None,
    };
    let mut link = client.link_watch();
    let mut agent = Agent {
        client: client.clone(),
        node: hello.node,
        incarnation: hello.incarnation,
        size,
        state,
        registration: Registration::Unknown,
        restoring: false,
        last_heard: None,
        unreported: std::collections::VecDeque::new(),
        registered,
        ping_every: std::time::Duration::from_secs(1),
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(agent.ping_every) => agent.keep_registered().await,
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                let up = matches!(*link.borrow_and_update(), LinkState::Up(_));
                if up {
                    agent.keep_registered().await;
                }
            }
            Some(command) = commands.recv() => {
                agent.carry_out(&command.body).await;
                let _ = client.ack(command.id, Vec::new()).await;
            }
            ready = async { events.as_ref().expect("guarded").readable().await }, if events.is_some() => {
                if ready.is_ok() {
                    agent.report_tier_events().await;
                }
            }
        }
    }
}

/// Disk records registered with the master at once when it (re)learns of the node.
const REGISTRATION_WINDOW: usize = 128;

/// Live replicas named to a restarted master per request.
const RESTORE_BATCH: usize = 1024;

/// How a restore went.
enum Restored {
    /// Everything named (what the master refused is forgotten).
    Done,
    /// The master could not be told all of it: again at the next ping.
    Retry,
    /// The master's restore window has passed: the segment's objects are void.
    Refused,
}

/// How far the node's registration with the present master run has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    /// The master may not know this run: ping first.
    Unknown,
    /// Known (a ping said so); the segment is not mounted yet.
    Pinged,
    /// Mounted; the disk records are not all registered yet.
    Mounted,
    /// Everything registered: pings only keep it alive.
    Done,
}

/// What [`keep_registered`] works with.
struct Agent {
    client: Client,
    node: NodeId,
    incarnation: Incarnation,
    size: u64,
    state: Arc<NodeState>,
    registration: Registration,
    /// The segment holds objects of a master run that is gone: they are named to the
    /// new run before the segment is mounted again.
    restoring: bool,
    /// When a ping was last answered.
    last_heard: Option<tokio::time::Instant>,
    /// Tier events the master could not be told of yet, oldest first.
    unreported: std::collections::VecDeque<TierEvent>,
    /// Whether `registration` is `Done`, for [`NodeServer::wait_registered`].
    registered: tokio::sync::watch::Sender<bool>,
    ping_every: std::time::Duration,
}

impl Agent {
    async fn call(&self, request: &Request<'_>) -> Option<Response> {
        match self.client.call(request).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!("node {}: {request:?}: {e}", self.node);
                None
            }
        }
    }

    /// Pings, and carries the registration on as far as it goes; a step that fails is
    /// tried again at the next ping.
    async fn keep_registered(&mut self) {
        let LinkState::Up(welcome) = self.client.link() else { return };
        let has_storage = self.state.tier.is_some();
        let ping = Request::Ping { node: self.node, incarnation: self.incarnation, has_storage };
        let Some(Response::Ping(reply)) = self.call(&ping).await else { return };
        self.report_crc_failures().await;
        // Three pings per TTL: one lost or slow ping does not expire the node.
        let ttl: std::time::Duration = reply.node_ttl.into();
        self.ping_every =
            (ttl / 3).clamp(std::time::Duration::from_millis(50), std::time::Duration::from_secs(1));
        let now = tokio::time::Instant::now();
        // Every answer is the master hearing from the node; the one before this was from
        // the run the node knew until now.
        let heard_before = self.last_heard.replace(now);
        if reply.outcome != PingOutcome::Refreshed {
            // The master does not know this run of the node. A master of another run than
            // the one the segment was mounted with (it restarted) is told what the
            // segment holds — if the node was heard by the old run less than a TTL ago
            // (with a margin), so that the old run cannot have expired it and dropped
            // its objects (and seen removes the node never learnt of). A master that
            // expired the node, and a first contact, void what was granted before.
            let heard_recently = heard_before.is_some_and(|at| now - at < ttl - ttl / 4);
            let mut s = self.state.segment.write().unwrap_or_else(PoisonError::into_inner);
            let master_restarted = s.epoch.is_some_and(|epoch| epoch != welcome.incarnation.0);
            if master_restarted && heard_recently && !s.extents.is_empty() {
                self.restoring = true;
            } else if !self.restoring {
                s.extents.clear();
            }
            // No writes until mounted again (those of the old run are void).
            s.epoch = None;
            drop(s);
            self.registration = Registration::Pinged;
            self.registered.send_replace(false);
        }
        if self.registration == Registration::Unknown {
            self.registration = Registration::Pinged;
        }
        if self.registration == Registration::Pinged {
            // Every version granted so far is below the master's barrier: taken before
            // mounting, it fences out the writers of the mount the master dropped,
            // while every grant into this mount comes after it.
            let Some(Response::Flush(floor)) = self.call(&Request::Flush).await else { return };
            let segment = self.state.segment.read().unwrap_or_else(PoisonError::into_inner).id;
            // Restoring, the disk records go first, so that a memory replica of a
            // version on disk joins its object instead of being persisted again.
            if self.restoring {
                match self.restore(segment).await {
                    Restored::Done => {}
                    Restored::Retry => return,
                    Restored::Refused => {
                        // Past the master's restore window: mounted empty, as after an expiry.
                        self.state.segment.write().unwrap_or_else(PoisonError::into_inner).extents.clear();
                        self.restoring = false;
                    }
                }
            }
            let mount = Request::MountSegment { node: self.node, segment, size: self.size };
            match self.call(&mount).await {
                Some(Response::MountSegment(Ok(()) | Err(MasterError::SegmentAlreadyMounted))) => {
                    let mut s = self.state.segment.write().unwrap_or_else(PoisonError::into_inner);
                    s.epoch = Some(welcome.incarnation.0);
                    s.version_floor = floor;
                    drop(s);
                    tracing::info!("node {}: segment {segment} mounted", self.node);
                    self.registration =
                        if self.restoring { Registration::Done } else { Registration::Mounted };
                    self.restoring = false;
                }
                other => return tracing::warn!("node {}: mounting segment {segment}: {other:?}", self.node),
            }
        }
        if self.registration == Registration::Mounted {
            if !self.register_disk_records().await {
                return; // the master out of reach: all of them again at the next ping
            }
            self.registration = Registration::Done;
        }
        if self.registration == Registration::Done {
            self.registered.send_replace(true);
        }
        if self.registration == Registration::Done && !self.unreported.is_empty() {
            self.report_tier_events().await;
        }
    }

    /// Registers every record of the SSD tier with the master (many at once on the one
    /// connection, pipelined: a node with a million records is registered in seconds,
    /// not one round trip after another); false if the master could not take them all.
    async fn register_disk_records(&self) -> bool {
        let Some(tier) = &self.state.tier else { return true };
        let records = tier.tier.records();
        let count = records.len();
        let mut in_flight = tokio::task::JoinSet::new();
        let mut all_taken = true;
        for record in records {
            if in_flight.len() >= REGISTRATION_WINDOW {
                all_taken &= matches!(in_flight.join_next().await, Some(Ok(true)));
            }
            let client = self.client.clone();
            in_flight.spawn(async move {
                let add = Request::AddDiskReplica {
                    key: record.key.as_ref(),
                    version: record.version,
                    replica: record.replica,
                    origin: DiskReplicaOrigin::Recovered,
                };
                client.call(&add).await.is_ok()
            });
        }
        while let Some(done) = in_flight.join_next().await {
            all_taken &= matches!(done, Ok(true));
        }
        if all_taken {
            tracing::info!("node {}: {count} disk replicas registered", self.node);
        }
        all_taken
    }

    /// Names to a restarted master what the segment still holds (its disk records
    /// first), in ascending offset order; what the master refuses (superseded, removed,
    /// not free) is forgotten.
    async fn restore(&self, segment: SegmentId) -> Restored {
        let node = self.node;
        let restore = Request::RestoreSegment { node, segment, size: self.size };
        match self.call(&restore).await {
            Some(Response::RestoreSegment(Ok(()) | Err(MasterError::SegmentAlreadyMounted))) => {}
            Some(Response::RestoreSegment(Err(MasterError::StaleVersion))) => return Restored::Refused,
            other => {
                tracing::warn!("node {node}: restoring segment {segment}: {other:?}");
                return Restored::Retry;
            }
        }
        if !self.register_disk_records().await {
            return Restored::Retry;
        }
        let live: Vec<(u64, Extent)> = {
            let s = self.state.segment.read().unwrap_or_else(PoisonError::into_inner);
            s.extents.iter().map(|(offset, e)| (offset, e.clone())).collect()
        };
        let mut restored = 0;
        for chunk in live.chunks(RESTORE_BATCH) {
            let items = chunk
                .iter()
                .map(|(offset, e)| RestoredReplica {
                    key: e.key.as_ref(),
                    version: e.version,
                    offset: *offset,
                    len: e.len,
                    crc32c: e.crc32c,
                })
                .collect();
            let Some(Response::RestoreReplicas(results)) =
                self.call(&Request::RestoreReplicas { node, segment, items }).await
            else {
                return Restored::Retry;
            };
            let mut s = self.state.segment.write().unwrap_or_else(PoisonError::into_inner);
            for ((offset, e), result) in chunk.iter().zip(results) {
                match result {
                    Ok(()) => restored += 1,
                    // Superseded, removed, not free; or the segment was mounted for good by
                    // an earlier try (whose answer was lost) and the master does not
                    // hold this one.
                    Err(
                        MasterError::StaleVersion
                        | MasterError::NoSpace
                        | MasterError::InvalidSize
                        | MasterError::SegmentAlreadyMounted,
                    ) => {
                        s.extents.forget(*offset, e.version);
                    }
                    Err(other) => {
                        tracing::warn!("node {node}: restoring {:?}: {other}", e.key);
                        return Restored::Retry;
                    }
                }
            }
        }
        tracing::info!("node {node}: {restored} objects in memory named to the restarted master");
        Restored::Done
    }

    /// Tells the master how many CRC32C mismatches the node found since its last
    /// report (kept for the next one if the master cannot be told).
    async fn report_crc_failures(&self) {
        let count = self.state.crc_failures_unreported.swap(0, Ordering::Relaxed);
        if count == 0 {
            return;
        }
        let report = Request::ReportCrcFailures { reporter: self.node, count };
        if !matches!(self.call(&report).await, Some(Response::ReportCrcFailures(Ok(())))) {
            self.state.crc_failures_unreported.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// Carries out one of the master's commands.
    async fn carry_out(&self, body: &[u8]) {
        let Ok(Message::Command(command)) = Message::decode(body) else {
            return tracing::warn!("node {}: an undecodable command", self.node);
        };
        let node = self.node;
        match command {
            NodeCommand::Persist { key, version, source, .. } => {
                let copied = self.state.copy_replica(&source, version, None);
                let handed = match (copied, &self.state.tier) {
                    (Ok(bytes), Some(_)) => {
                        let (state, key) = (Arc::clone(&self.state), key.clone());
                        let put = tokio::task::spawn_blocking(move || {
                            state.tier.as_ref().expect("checked").tier.put(key.as_ref(), version, bytes)
                        });
                        matches!(put.await, Ok(Ok(())))
                    }
                    _ => false,
                };
                if !handed {
                    let _ = self.call(&Request::PersistFailed { node, key: key.as_ref(), version }).await;
                }
            }
            NodeCommand::DropDiskReplica { key, version, .. } => {
                if self.state.tier.is_some() {
                    let (state, k) = (Arc::clone(&self.state), key.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        state.tier.as_ref().expect("checked").tier.remove_version(k.as_ref(), version)
                    })
                    .await;
                }
                let _ = self.call(&Request::RemoveDiskReplica { node, key: key.as_ref(), version }).await;
            }
            NodeCommand::ForgetRange { segment, offset, version, .. } => {
                let mut s = self.state.segment.write().unwrap_or_else(PoisonError::into_inner);
                if s.id == segment {
                    s.extents.forget(offset, version);
                }
            }
            NodeCommand::WipeDisk { .. } => {
                if self.state.tier.is_some() {
                    let state = Arc::clone(&self.state);
                    let wiped = tokio::task::spawn_blocking(move || {
                        state.tier.as_ref().expect("checked").tier.remove_all()
                    })
                    .await;
                    if !matches!(wiped, Ok(Ok(_))) {
                        tracing::error!("node {node}: wiping the SSD tier failed: {wiped:?}");
                    }
                }
            }
        }
    }

    /// Tells the master what the tier made durable, failed or dropped; what cannot be
    /// told now (the master out of reach) is kept, in order, for the next ping — a lost
    /// drop would leave the master listing a record the node no longer has.
    async fn report_tier_events(&mut self) {
        let Some(tier) = &self.state.tier else { return };
        tier.notifier.reset();
        while let Some(event) = tier.tier.poll_event() {
            if matches!(event, TierEvent::Dropped { cause: DropCause::Corrupted, .. }) {
                self.state.note_crc_failure();
            }
            if report_of(self.node, &event).is_some() {
                self.unreported.push_back(event);
            }
        }
        while let Some(event) = self.unreported.front() {
            let request = report_of(self.node, event).expect("only reportable events are kept");
            if self.call(&request).await.is_none() {
                return;
            }
            self.unreported.pop_front();
        }
    }
}

/// What the master is told of a tier event, if anything.
fn report_of(node: NodeId, event: &TierEvent) -> Option<Request<'_>> {
    Some(match event {
        TierEvent::Persisted { key, version, replica } => Request::AddDiskReplica {
            key: key.as_ref(),
            version: *version,
            replica: *replica,
            origin: DiskReplicaOrigin::Persisted,
        },
        TierEvent::PersistFailed { key, version, .. } => {
            Request::PersistFailed { node, key: key.as_ref(), version: *version }
        }
        TierEvent::Dropped { key, version, .. } => {
            Request::RemoveDiskReplica { node, key: key.as_ref(), version: *version }
        }
        _ => return None,
    })
}

/// The segment's memory, committed now rather than faulted in page by page under the
/// first puts (the kernel zeroes every page: on a VM whose pages are fresh to the host,
/// about a second per GiB), on a blocking thread so as not to hold up the runtime.
async fn commit_segment(node: NodeId, size: usize) -> std::io::Result<SegmentMemory> {
    tracing::info!("node {node}: committing {size} bytes of segment memory");
    tokio::task::spawn_blocking(move || SegmentMemory::committed(size))
        .await
        .map_err(std::io::Error::other)?
}

/// Answers data requests from the segment and the SSD tier.
#[derive(Debug)]
struct DataService {
    state: Arc<NodeState>,
    /// The node's RDMA port, if it has a device. Its work runs on a blocking thread
    /// (a transfer drives the device to its end), not on the workers serving the
    /// other connections.
    rdma: Option<Arc<std::sync::Mutex<NodeRdma>>>,
    outbound: std::sync::Mutex<std::collections::HashMap<u64, mpsc::UnboundedSender<Outbound>>>,
    /// Each connection's peer (node and run), as its handshake bound them.
    peers: std::sync::Mutex<std::collections::HashMap<u64, (NodeId, u64)>>,
}

impl DataService {
    /// Runs `work` on the RDMA port, on a blocking thread. A panic in it switches
    /// RDMA off for good: the device may still hold the staging.
    async fn on_rdma<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut NodeRdma) -> Result<T, DataError> + Send + 'static,
    ) -> Result<T, DataError> {
        let rdma = Arc::clone(self.rdma.as_ref().ok_or(DataError::RdmaUnavailable)?);
        let port = Arc::clone(&rdma);
        let done = tokio::task::spawn_blocking(move || {
            work(&mut port.lock().unwrap_or_else(PoisonError::into_inner))
        });
        done.await.unwrap_or_else(|_| {
            rdma.lock().unwrap_or_else(PoisonError::into_inner).switch_off();
            Err(DataError::RdmaUnavailable)
        })
    }

    fn peer(&self, conn: u64) -> Result<(NodeId, u64), DataError> {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.get(&conn).copied().ok_or(DataError::RdmaUnavailable)
    }

    /// Takes a write whose value the node reads from the writer's memory over RDMA.
    async fn pull_write(
        &self,
        conn: u64,
        write: &SegmentWrite<'_>,
        len: u64,
        source: u64,
    ) -> Result<(), DataError> {
        let peer = self.peer(conn)?;
        let bytes = self.on_rdma(move |rdma| rdma.pull(peer, source, len)).await?;
        self.state.write(write, &bytes)
    }

    /// Checks a read as over TCP, then writes its bytes into the reader's memory over
    /// RDMA; their CRC32C.
    async fn push_read(
        &self,
        conn: u64,
        replica: &MemoryReplica,
        version: ObjectVersion,
        dest: u64,
    ) -> Result<u32, DataError> {
        let peer = self.peer(conn)?;
        let (bytes, crc32c) = self.state.copy_replica_with_crc(replica, version, None)?;
        self.on_rdma(move |rdma| rdma.push(peer, dest, &bytes)).await?;
        Ok(crc32c)
    }

    /// The node's answer to a peer's endpoint messages.
    async fn answer_endpoint(&self, conn: u64, messages: EndpointMessages<'_>) -> Result<Vec<u8>, DataError> {
        let peer = self.peer(conn)?;
        let messages = messages.as_bytes().to_vec();
        self.on_rdma(move |rdma| {
            let messages = EndpointMessages::new(&messages).map_err(|_| DataError::RdmaUnavailable)?;
            let mut answer = Vec::new();
            rdma.answer_endpoint(peer, messages, &mut answer);
            Ok(answer)
        })
        .await
    }

    async fn answer(&self, conn: u64, body: &[u8]) -> ResponseBody {
        let mut out = Vec::new();
        let Ok(request) = DataRequest::decode(body) else {
            DataResponse::Refused(DataError::Unknown(0)).encode(&mut out);
            return smallvec::smallvec![Bytes::from(out)];
        };
        match request {
            DataRequest::Write { segment, offset, version, epoch, crc32c, key, bytes } => {
                let write = SegmentWrite { segment, offset, version, epoch, crc32c, key };
                match self.state.write(&write, bytes) {
                    Ok(()) => DataResponse::Written.encode(&mut out),
                    Err(e) => DataResponse::Refused(e).encode(&mut out),
                }
            }
            DataRequest::Read { segment, offset, len, version } => {
                match self.state.share_replica(segment, offset, len, version) {
                    Ok((crc, shared)) => {
                        // The bytes are sent from the segment itself: no writer reaches the
                        // range until the socket has taken them.
                        DataResponse::encode_read_header(&mut out, crc);
                        return smallvec::smallvec![Bytes::from(out), Bytes::from_owner(shared)];
                    }
                    Err(e) => DataResponse::Refused(e).encode(&mut out),
                }
            }
            DataRequest::ReadDisk { key, version } => match self.read_disk(key, version).await {
                Ok(bytes) => {
                    DataResponse::encode_read_header(&mut out, larder_engine::checksum::crc32c(&bytes));
                    out.extend_from_slice(&bytes);
                }
                Err(e) => DataResponse::Refused(e).encode(&mut out),
            },
            DataRequest::Endpoint { messages } => match self.answer_endpoint(conn, messages).await {
                Ok(answer) => out = answer,
                Err(e) => DataResponse::Refused(e).encode(&mut out),
            },
            DataRequest::PullWrite { segment, offset, version, epoch, crc32c, key, len, source } => {
                let write = SegmentWrite { segment, offset, version, epoch, crc32c, key };
                match self.pull_write(conn, &write, len, source).await {
                    Ok(()) => DataResponse::Written.encode(&mut out),
                    Err(e) => DataResponse::Refused(e).encode(&mut out),
                }
            }
            DataRequest::PushRead { segment, offset, len, version, dest } => {
                match self.push_read(conn, &MemoryReplica { segment, offset, len }, version, dest).await {
                    Ok(crc32c) => DataResponse::Pushed { crc32c }.encode(&mut out),
                    Err(e) => DataResponse::Refused(e).encode(&mut out),
                }
            }
        }
        smallvec::smallvec![Bytes::from(out)]
    }

    /// The tier's copy of `key`, if it is `version` (the tier checks its CRC).
    async fn read_disk(
        &self,
        key: larder_engine::KeyRef<'_>,
        version: ObjectVersion,
    ) -> Result<Bytes, DataError> {
        let Some(tier) = &self.state.tier else { return Err(DataError::DiskUnavailable) };
        let reading = tier.tier.read(key).map_err(|_| DataError::NotHeld)?;
        match reading.await {
            Ok(Ok((v, bytes))) if v == version => Ok(bytes),
            Ok(Ok(_)) => Err(DataError::NotHeld),
            Ok(Err(e)) => {
                tracing::warn!("reading {key:?} from the SSD tier: {e}");
                Err(DataError::DiskUnavailable)
            }
            Err(_) => Err(DataError::DiskUnavailable),
        }
    }
}

impl Service for DataService {
    async fn hello(
        &self,
        conn: u64,
        hello: Hello,
        outbound: mpsc::UnboundedSender<Outbound>,
    ) -> Result<(), RefusalReason> {
        self.outbound.lock().unwrap_or_else(PoisonError::into_inner).insert(conn, outbound);
        let peer = (hello.node, hello.incarnation.0);
        self.peers.lock().unwrap_or_else(PoisonError::into_inner).insert(conn, peer);
        Ok(())
    }

    async fn requests(&self, conn: u64, batch: Vec<(u64, Bytes)>) -> bool {
        let mut responses = Vec::with_capacity(batch.len());
        for (id, body) in batch {
            responses.push((id, self.answer(conn, &body).await));
        }
        let outbound = self.outbound.lock().unwrap_or_else(PoisonError::into_inner).get(&conn).cloned();
        outbound.is_some_and(|o| o.send(Outbound::Responses(responses)).is_ok())
    }

    async fn command_ack(&self, _node: NodeId, _id: u64) {}

    const DIVERTS: bool = true;

    /// A write's value goes straight into its range of the segment, if the segment
    /// takes the write; otherwise it is buffered, and refused by the same checks.
    fn divert(&self, _conn: u64, received: &[u8], len: usize) -> Option<Box<dyn BodySink>> {
        let (head, head_len) = WriteHead::decode_prefix(received).ok()??;
        let value_len = len.checked_sub(head_len).filter(|n| *n > 0)?;
        let receive = self.state.begin_receive(&head, value_len as u64, &received[head_len..]).ok()?;
        Some(Box::new(receive))
    }

    async fn closed(&self, conn: u64) {
        self.outbound.lock().unwrap_or_else(PoisonError::into_inner).remove(&conn);
        let last_of_peer = {
            let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            peers.remove(&conn).filter(|peer| !peers.values().any(|other| other == peer))
        };
        if let Some(peer) = last_of_peer.filter(|_| self.rdma.is_some()) {
            // A client run's endpoint lives as long as one of its connections does.
            let forgotten = self.on_rdma(move |rdma| {
                rdma.forget_peer(peer);
                Ok(())
            });
            let _ = forgotten.await;
        }
    }
}
