//! `larder master`: the engine's [`Master`] owned by one actor task, behind a TCP
//! server whose connections hand it their requests in batches.
//!
//! The actor is the only code that touches the master. It checks each request against
//! the connection's binding (a request naming another node than the Hello's closes the
//! connection), answers it, and routes the master's node commands to the node's
//! connection, each with an id, kept until the node acknowledges it and sent again
//! when the node reconnects.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use larder_engine::master::{Master, MasterConfig, MasterEvent};
use larder_engine::net::{
    ClusterName, DEFAULT_MAX_FRAME_BODY, Hello, PROTOCOL_VERSIONS, RefusalReason, Role, ServerConfig,
};
use larder_engine::wire::{Message, NodeCommand, Request, Response};
use larder_engine::{Duration, Incarnation, NodeId, ObjectVersion};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::clock::EngineClock;
use super::connection::{self, Outbound, Service};
use super::metrics::{self, MasterMetrics};

/// Roles the master accepts.
const MASTER_ROLES: &[Role] = &[Role::Node, Role::Client];

/// How `larder master` runs.
#[derive(Debug, Clone)]
pub struct MasterServerConfig {
    /// Where to listen for nodes and clients (port 0: any free port).
    pub listen: SocketAddr,
    /// Where to serve `/metrics` and `/health`, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The cluster's name: peers of another cluster are refused.
    pub cluster: ClusterName,
    /// The master's rules (lease and node TTLs, watermarks, …).
    pub master: MasterConfig,
    /// A connection that sends no Hello within this is closed.
    pub handshake_timeout: Duration,
}

impl MasterServerConfig {
    /// Listens on `listen` for cluster `cluster`, with the master's defaults. Versions
    /// start at the wall clock (in nanoseconds), so that a restarted master hands out
    /// versions newer than any its nodes hold.
    pub fn new(listen: SocketAddr, cluster: ClusterName) -> Self {
        let wall =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos());
        let master = MasterConfig {
            first_version: ObjectVersion(u64::try_from(wall).unwrap_or(u64::MAX).max(1)),
            ..MasterConfig::default()
        };
        Self { listen, metrics: None, cluster, master, handshake_timeout: Duration::from_secs(5) }
    }
}

/// A running master.
#[derive(Debug)]
pub struct MasterServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address of its metrics endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// This run's incarnation (in every Welcome).
    pub incarnation: Incarnation,
    /// The actor; it ends only if it fails.
    actor: tokio::task::JoinHandle<()>,
}

impl MasterServer {
    /// Resolves if the actor stops (a bug: it never stops on its own), with why.
    pub async fn failed(self) -> String {
        match self.actor.await {
            Ok(()) => String::from("the master's actor stopped"),
            Err(e) => format!("the master's actor failed: {e}"),
        }
    }
}

/// Binds, starts the actor and the accept loop on the current runtime, and returns.
pub async fn start(config: MasterServerConfig) -> std::io::Result<MasterServer> {
    let node_ttl = config.master.node_ttl;
    let master =
        Master::new(config.master).map_err(|e| std::io::Error::other(format!("master config: {e}")))?;
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let (metrics, registry) = MasterMetrics::new();
    let metrics_addr = config.metrics.map(|a| metrics::serve_http(a, registry)).transpose()?;
    let incarnation = Incarnation(rand::random::<u64>() | 1);
    let clock = EngineClock::new();
    let server_config = ServerConfig {
        cluster: config.cluster,
        versions: PROTOCOL_VERSIONS,
        incarnation,
        node_ttl,
        roles: MASTER_ROLES,
        handshake_timeout: config.handshake_timeout,
        // A live peer heartbeats every second; one silent for a node TTL (at least 3 s,
        // three heartbeats) is gone.
        idle_timeout: node_ttl.max(Duration::from_secs(3)),
        max_frame_body: DEFAULT_MAX_FRAME_BODY,
    };
    let (actor_tx, actor_rx) = mpsc::channel(1024);
    let service = Arc::new(ActorService { actor: actor_tx, metrics: Arc::clone(&metrics) });
    let actor = Actor::new(master, clock, metrics);
    let actor = tokio::spawn(actor.run(actor_rx));
    tokio::spawn(connection::accept_loop(listener, server_config, clock, service));
    Ok(MasterServer { addr, metrics_addr, incarnation, actor })
}

/// What a connection tells the actor.
#[derive(Debug)]
enum ToActor {
    /// A Hello that passed the connection's checks: may the node join?
    Hello {
        conn: u64,
        hello: Hello,
        outbound: mpsc::UnboundedSender<Outbound>,
        reply: oneshot::Sender<Result<(), RefusalReason>>,
    },
    /// Requests, in the order they arrived.
    Requests { conn: u64, batch: Vec<(u64, Bytes)> },
    /// The node carried out a command.
    CommandAck { node: NodeId, id: u64 },
    /// The connection is gone.
    Closed { conn: u64 },
}

/// The master's connections hand everything to the actor.
#[derive(Debug)]
struct ActorService {
    actor: mpsc::Sender<ToActor>,
    metrics: Arc<MasterMetrics>,
}

impl Service for ActorService {
    async fn hello(
        &self,
        conn: u64,
        hello: Hello,
        outbound: mpsc::UnboundedSender<Outbound>,
    ) -> Result<(), RefusalReason> {
        let (reply, answer) = oneshot::channel();
        if self.actor.send(ToActor::Hello { conn, hello, outbound, reply }).await.is_err() {
            return Err(RefusalReason::ProtocolViolation);
        }
        answer.await.unwrap_or(Err(RefusalReason::ProtocolViolation))
    }

    async fn requests(&self, conn: u64, batch: Vec<(u64, Bytes)>) -> bool {
        self.actor.send(ToActor::Requests { conn, batch }).await.is_ok()
    }

    async fn command_ack(&self, node: NodeId, id: u64) {
        let _ = self.actor.send(ToActor::CommandAck { node, id }).await;
    }

    async fn closed(&self, conn: u64) {
        let _ = self.actor.send(ToActor::Closed { conn }).await;
    }

    fn close_reason(&self, reason: larder_engine::net::CloseReason) {
        self.metrics.closed(reason);
    }
}

/// A connection that passed the handshake.
#[derive(Debug)]
struct Session {
    hello: Hello,
    outbound: mpsc::UnboundedSender<Outbound>,
}

struct Actor {
    master: Master,
    clock: EngineClock,
    metrics: Arc<MasterMetrics>,
    sessions: HashMap<u64, Session>,
    /// The connection each node speaks through (its newest).
    node_sessions: HashMap<NodeId, u64>,
    /// Commands sent and not yet acknowledged, by node and id, with the incarnation of
    /// the node they were for.
    unacked: BTreeMap<NodeId, BTreeMap<u64, (Incarnation, Vec<u8>)>>,
    next_command: u64,
    /// When the disk tier was last counted for `/metrics` (a walk of the whole table).
    disk_counted_at: Option<larder_engine::Instant>,
}

/// How often the disk tier is counted for `/metrics`: a walk of the object table, so
/// not after every request. Nodes ping at least this often, so it stays current.
const DISK_CENSUS_EVERY: Duration = Duration::from_secs(1);

impl Actor {
    fn new(master: Master, clock: EngineClock, metrics: Arc<MasterMetrics>) -> Self {
        Self {
            master,
            clock,
            metrics,
            sessions: HashMap::new(),
            node_sessions: HashMap::new(),
            unacked: BTreeMap::new(),
            next_command: 1,
            disk_counted_at: None,
        }
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<ToActor>) {
        loop {
            let deadline = self.clock.deadline(self.master.poll_timeout());
            tokio::select! {
                message = inbox.recv() => match message {
                    Some(message) => self.take(message),
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => self.master.handle_timeout(self.clock.now()),
            }
            self.drain_master();
        }
    }

    fn take(&mut self, message: ToActor) {
        match message {
            ToActor::Hello { conn, hello, outbound, reply } => {
                let _ = reply.send(self.admit(conn, hello, outbound));
            }
            ToActor::Requests { conn, batch } => self.answer(conn, batch),
            ToActor::CommandAck { node, id } => {
                if let Some(commands) = self.unacked.get_mut(&node) {
                    commands.remove(&id);
                }
            }
            ToActor::Closed { conn } => {
                if let Some(session) = self.sessions.remove(&conn) {
                    if self.node_sessions.get(&session.hello.node) == Some(&conn) {
                        self.node_sessions.remove(&session.hello.node);
                    }
                }
            }
        }
    }

    /// Decides on a Hello: a node whose incarnation is older than the one the master
    /// knows is a leftover of an earlier run and is refused. A newer connection of the
    /// same node replaces the older one, and the commands it has not acknowledged are
    /// sent again on it.
    fn admit(
        &mut self,
        conn: u64,
        hello: Hello,
        outbound: mpsc::UnboundedSender<Outbound>,
    ) -> Result<(), RefusalReason> {
        let known = self.master.node_incarnation(hello.node);
        let connected = self.node_sessions.get(&hello.node).and_then(|c| self.sessions.get(c));
        if known.is_some_and(|k| hello.incarnation < k)
            || connected.is_some_and(|s| hello.incarnation < s.hello.incarnation)
        {
            return Err(RefusalReason::StaleIncarnation);
        }
        if hello.role == Role::Node {
            if let Some(old) = self.node_sessions.insert(hello.node, conn) {
                if let Some(old) = self.sessions.remove(&old) {
                    let _ = old.outbound.send(Outbound::Refuse(RefusalReason::StaleIncarnation));
                }
            }
            // Commands for this run of the node come again; those for an earlier run
            // are void (its memory is gone) and are dropped once the node re-registers.
            for (id, (incarnation, body)) in self.unacked.get(&hello.node).into_iter().flatten() {
                if *incarnation == hello.incarnation {
                    let _ = outbound.send(Outbound::Command(*id, body.clone()));
                }
            }
        }
        self.sessions.insert(conn, Session { hello, outbound });
        Ok(())
    }

    fn answer(&mut self, conn: u64, batch: Vec<(u64, Bytes)>) {
        let Some(session) = self.sessions.get(&conn) else { return };
        let (bound, incarnation) = (session.hello.node, session.hello.incarnation);
        let now = self.clock.now();
        let mut responses = Vec::with_capacity(batch.len());
        for (id, body) in batch {
            let request = match Message::decode(&body) {
                Ok(Message::Request(request)) => request,
                _ => return self.refuse(conn, RefusalReason::ProtocolViolation),
            };
            let other_run = matches!(request, Request::Ping { incarnation: i, .. } if i != incarnation);
            if other_run || request.node().is_some_and(|node| node != bound) {
                return self.refuse(conn, RefusalReason::ProtocolViolation);
            }
            let mut response = self.master.handle_request(now, &request);
            if let Response::Locate(Ok(location)) | Response::LocateNode(Ok(location)) = &mut response {
                // The master knows the owner; where it serves, its handshake said.
                location.serves = self.node_address(location.node);
            }
            self.metrics.request(op_name(&request), failed(&response));
            match encode(&Message::Response(response)) {
                Ok(body) => responses.push((id, smallvec::smallvec![Bytes::from(body)])),
                Err(e) => {
                    tracing::error!("a response to {} does not encode: {e}", op_name(&request));
                    return self.refuse(conn, RefusalReason::ProtocolViolation);
                }
            }
        }
        if let Some(session) = self.sessions.get(&conn) {
            let _ = session.outbound.send(Outbound::Responses(responses));
        }
    }

    fn node_address(&self, node: NodeId) -> Option<SocketAddr> {
        self.node_sessions.get(&node).and_then(|c| self.sessions.get(c)).and_then(|s| s.hello.serves)
    }

    fn refuse(&mut self, conn: u64, reason: RefusalReason) {
        if let Some(session) = self.sessions.remove(&conn) {
            if self.node_sessions.get(&session.hello.node) == Some(&conn) {
                self.node_sessions.remove(&session.hello.node);
            }
            let _ = session.outbound.send(Outbound::Refuse(reason));
        }
    }

    /// Routes the master's commands, tells nodes of the ranges freed in their segments
    /// and counts the events.
    fn drain_master(&mut self) {
        let mut forgets = Vec::new();
        while let Some(event) = self.master.poll_event() {
            match event {
                MasterEvent::ObjectDropped { reason, .. } => self.metrics.dropped(reason),
                // A range freed in a segment still mounted: its owner forgets that
                // object there, so as not to name it to a restarted master.
                MasterEvent::MemoryFreed { segment, offset, version } => {
                    if let Some(node) = self.master.segment_owner(segment) {
                        forgets.push(NodeCommand::ForgetRange { node, segment, offset, version });
                    }
                }
            }
        }
        let commands = std::iter::from_fn(|| self.master.poll_command()).collect::<Vec<_>>();
        for command in commands.into_iter().chain(forgets) {
            let node = command.node();
            let Some(incarnation) = self.master.node_incarnation(node) else { continue };
            let body = match encode(&Message::Command(command)) {
                Ok(body) => body,
                Err(e) => {
                    tracing::error!("a command for node {node} does not encode: {e}");
                    continue;
                }
            };
            let id = self.next_command;
            self.next_command += 1;
            if let Some(session) = self.node_sessions.get(&node).and_then(|c| self.sessions.get(c)) {
                let _ = session.outbound.send(Outbound::Command(id, body.clone()));
            }
            self.unacked.entry(node).or_default().insert(id, (incarnation, body));
        }
        // Commands for a run of a node the master no longer knows are void.
        let master = &self.master;
        self.unacked.retain(|node, commands| {
            let current = master.node_incarnation(*node);
            // Ids grow and a node's incarnations only grow with them: when the first
            // and last are current, all are.
            let first = commands.first_key_value().map(|(_, (i, _))| *i);
            let last = commands.last_key_value().map(|(_, (i, _))| *i);
            if first != current || last != current {
                commands.retain(|_, (incarnation, _)| Some(*incarnation) == current);
            }
            !commands.is_empty()
        });
        self.metrics.observe(self.master.stats());
        let now = self.clock.now();
        if self.disk_counted_at.is_none_or(|at| now >= at + DISK_CENSUS_EVERY) {
            self.disk_counted_at = Some(now);
            self.metrics.observe_disk(self.master.disk_usage());
        }
        self.metrics.set_connections(self.sessions.len(), self.unacked.values().map(BTreeMap::len).sum());
    }
}

fn encode(message: &Message<'_>) -> Result<Vec<u8>, larder_engine::codec::EncodeError> {
    let mut body = vec![0u8; message.encoded_len()?];
    let n = message.encode(&mut body)?;
    body.truncate(n);
    Ok(body)
}

/// The operation's name in metrics.
fn op_name(request: &Request<'_>) -> &'static str {
    match request {
        Request::PutStart { .. } => "put_start",
        Request::PutEnd { .. } => "put_end",
        Request::PutRevoke { .. } => "put_revoke",
        Request::GetReplicaList { .. } => "get_replica_list",
        Request::Exists { .. } => "exists",
        Request::Remove { .. } => "remove",
        Request::RemoveAll { .. } => "remove_all",
        Request::MountSegment { .. } => "mount_segment",
        Request::RestoreSegment { .. } => "restore_segment",
        Request::RestoreReplicas { .. } => "restore_replicas",
        Request::UnmountSegment { .. } => "unmount_segment",
        Request::Ping { .. } => "ping",
        Request::AddDiskReplica { .. } => "add_disk_replica",
        Request::RemoveDiskReplica { .. } => "remove_disk_replica",
        Request::PersistFailed { .. } => "persist_failed",
        Request::BatchPutStart { .. } => "batch_put_start",
        Request::BatchPutEnd { .. } => "batch_put_end",
        Request::BatchPutRevoke { .. } => "batch_put_revoke",
        Request::BatchGetReplicaList { .. } => "batch_get_replica_list",
        Request::BatchExists { .. } => "batch_exists",
        Request::BatchRemove { .. } => "batch_remove",
        Request::Locate { .. } => "locate",
        Request::LocateNode { .. } => "locate_node",
        Request::ReportCrcFailures { .. } => "report_crc_failures",
        Request::Flush => "flush",
        Request::FlushStatus { .. } => "flush_status",
    }
}

/// True if the master refused the request (or any item of a batch).
fn failed(response: &Response) -> bool {
    match response {
        Response::PutStart(r) => r.is_err(),
        Response::GetReplicaList(r) => r.is_err(),
        Response::PutEnd(r)
        | Response::PutRevoke(r)
        | Response::Remove(r)
        | Response::MountSegment(r)
        | Response::RestoreSegment(r)
        | Response::UnmountSegment(r)
        | Response::AddDiskReplica(r)
        | Response::RemoveDiskReplica(r)
        | Response::PersistFailed(r)
        | Response::ReportCrcFailures(r) => r.is_err(),
        Response::Exists(_) | Response::RemoveAll(_) | Response::Ping(_) | Response::BatchExists(_) => false,
        Response::Locate(r) | Response::LocateNode(r) => r.is_err(),
        Response::Flush(_) => false,
        Response::FlushStatus(s) => matches!(s, larder_engine::wire::FlushStatus::NotDurable { .. }),
        Response::BatchPutStart(items) => items.iter().any(Result::is_err),
        Response::BatchGetReplicaList(items) => items.iter().any(Result::is_err),
        Response::BatchPutEnd(items)
        | Response::BatchPutRevoke(items)
        | Response::BatchRemove(items)
        | Response::RestoreReplicas(items) => items.iter().any(Result::is_err),
    }
}

/// Runs a master until `stop` resolves (the binary passes ctrl-c / SIGTERM).
pub async fn run_until(config: MasterServerConfig, stop: impl Future<Output = ()>) -> std::io::Result<()> {
    let server = start(config).await?;
    println!("larder master listening on {}", server.addr);
    if let Some(metrics) = server.metrics_addr {
        println!("larder master metrics on http://{metrics}/metrics");
    }
    tokio::select! {
        () = stop => Ok(()),
        why = server.failed() => Err(std::io::Error::other(why)),
    }
}
