//! A client of the cluster: puts and gets whose metadata goes to the master and whose
//! bytes go straight to (and from) the nodes holding the replicas, verified by CRC32C.
//!
//! A put asks the master for ranges (`PutStart`), writes the value into each on its
//! owner, and ends the put (`PutEnd`); if any write fails the put is revoked. The
//! master then has the owners persist it to SSD behind the put. A get asks the master
//! for the replica list and reads the first replica that answers with bytes matching
//! their checksum (memory replicas first, then disk replicas through their nodes,
//! checked against the CRC32C their descriptors carry); it never returns other bytes.
//! A flush waits for the master's barrier: everything acknowledged before it durable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use larder_engine::disk::direct::DirectReadError;
use larder_engine::net::data::{
    DataError, DataRequest, DataResponse, MAX_WRITE_HEAD_LEN, READ_ANSWER_HEADER_LEN,
};
use larder_engine::net::{ClientConfig, ClusterName, DEFAULT_MAX_FRAME_BODY, Hello, PROTOCOL_VERSIONS, Role};
use larder_engine::wire::{FlushStatus, MasterError, ReplicaList, Request, Response};
use larder_engine::{
    DiskReplica, Incarnation, KeyRef, MemoryReplica, NodeId, ObjectVersion, ReplicaDescriptor, SegmentId,
};

use super::client::{CallError, Client, LinkState};
use super::node::{LocalSegment, SegmentWrite};
use super::rdma::{ClientRdma, SimFabric, Transport};

/// Why a cluster operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// No object has this key (or none of its replicas is left).
    #[error("object not found")]
    NotFound,
    /// The key holds an object already.
    #[error("object already exists")]
    AlreadyExists,
    /// The master refused the request.
    #[error("the master refused: {0}")]
    Master(MasterError),
    /// A node refused a transfer.
    #[error("a node refused the transfer: {0}")]
    Data(DataError),
    /// Bytes did not match their checksum.
    #[error("the bytes read do not match their checksum")]
    Corrupted,
    /// The master or a node could not be reached.
    #[error(transparent)]
    Unreachable(#[from] CallError),
    /// The node holding a replica is registered but not connected just now.
    #[error("node {0} is not reachable just now")]
    NodeUnreachable(NodeId),
    /// The key is not a valid key.
    #[error("invalid key")]
    InvalidKey,
    /// The value is larger than a put can carry.
    #[error("value of {len} bytes, the most is {max}")]
    TooLarge {
        /// Its length.
        len: u64,
        /// The most.
        max: u64,
    },
    /// A flush found objects whose persist failed (they stay in memory and are retried).
    #[error("{objects} objects are not durable")]
    NotDurable {
        /// How many.
        objects: u64,
    },
    /// The caller's buffer cannot hold the value.
    #[error("buffer of {len} bytes cannot hold the value's {needed} bytes")]
    BufferTooSmall {
        /// The buffer's length.
        len: usize,
        /// The value's length.
        needed: u64,
    },
    /// An answer of the wrong kind.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

/// A connection to a cluster's master and, as needed, to its nodes.
#[derive(Debug)]
pub struct RemoteStore {
    master: Client,
    cluster: ClusterName,
    writer: NodeId,
    incarnation: Incarnation,
    peers: Mutex<HashMap<SocketAddr, std::sync::Arc<PeerLinks>>>,
    /// Where each segment is served, and by which node.
    locations: Mutex<HashMap<SegmentId, (SocketAddr, NodeId)>>,
    /// A storage root the nodes share with this client: disk replicas are read straight
    /// from their bucket files there.
    shared_root: Option<std::path::PathBuf>,
    /// The segment of this client's own node, written and read without the network.
    local: Option<LocalSegment>,
    /// This client's RDMA port, if it has one: nodes that have one too move replica
    /// bytes with it over RDMA.
    rdma: Option<ClientRdma>,
    memory_reads: AtomicU64,
    disk_reads: AtomicU64,
    direct_disk_reads: AtomicU64,
    local_writes: AtomicU64,
    local_reads: AtomicU64,
    rdma_writes: AtomicU64,
    rdma_reads: AtomicU64,
}

/// Where a client's gets were served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemoteStats {
    /// Gets answered from a memory replica.
    pub memory_reads: u64,
    /// Gets answered from a disk replica (through its node, or from its file).
    pub disk_reads: u64,
    /// Of those, read straight from the bucket file on the shared root.
    pub direct_disk_reads: u64,
    /// Replicas written into this client's own node's segment in memory (no network).
    pub local_writes: u64,
    /// Gets answered from this client's own node's segment in memory (no network).
    pub local_reads: u64,
    /// Replicas written into another node's segment over RDMA (the rest of the
    /// remote ones went over TCP).
    pub rdma_writes: u64,
    /// Memory replicas read from another node's segment over RDMA.
    pub rdma_reads: u64,
}

impl RemoteStore {
    /// Connects to the master at `addr` (waiting up to `timeout` for the handshake).
    pub async fn connect(
        addr: SocketAddr,
        cluster: ClusterName,
        timeout: std::time::Duration,
    ) -> Result<Self, RemoteError> {
        Self::connect_as(addr, cluster, NodeId(rand::random::<u64>() | 1), Incarnation(1), timeout).await
    }

    /// Connects as node `writer` in its run `incarnation`: a process that contributes a
    /// segment (an in-process [`NodeServer`](super::NodeServer)) speaks as that node, so
    /// that its puts are placed in its own segment first.
    pub async fn connect_as(
        addr: SocketAddr,
        cluster: ClusterName,
        writer: NodeId,
        incarnation: Incarnation,
        timeout: std::time::Duration,
    ) -> Result<Self, RemoteError> {
        let (master, _commands) = Client::start(addr, ClientConfig::new(hello(cluster, writer, incarnation)));
        master.wait_up(timeout).await?;
        Ok(Self {
            master,
            cluster,
            writer,
            incarnation,
            peers: Mutex::default(),
            locations: Mutex::default(),
            shared_root: None,
            local: None,
            rdma: None,
            memory_reads: AtomicU64::new(0),
            disk_reads: AtomicU64::new(0),
            direct_disk_reads: AtomicU64::new(0),
            local_writes: AtomicU64::new(0),
            local_reads: AtomicU64::new(0),
            rdma_writes: AtomicU64::new(0),
            rdma_reads: AtomicU64::new(0),
        })
    }

    /// Reads disk replicas straight from their bucket files under `root` when they are
    /// there (the nodes' shared storage root, `<root>/<cluster>/<node>/`), so that they
    /// stay readable after their node is gone; through their node when they are not.
    #[must_use]
    pub fn with_shared_root(mut self, root: std::path::PathBuf) -> Self {
        self.shared_root = Some(root);
        self
    }

    /// Writes and reads replicas in `segment` (the segment of this client's own node,
    /// in this process) straight in memory, with the node's checks, not over TCP.
    #[must_use]
    pub fn with_local_segment(mut self, segment: LocalSegment) -> Self {
        self.local = Some(segment);
        self
    }

    /// Attaches an RDMA port to `fabric`: replica bytes to and from nodes that have a
    /// port too move over RDMA (the node moves them, with the checks it makes on TCP),
    /// to and from the others over TCP.
    #[must_use]
    pub fn with_rdma(mut self, fabric: &SimFabric) -> Self {
        self.rdma = Some(ClientRdma::new(fabric, self.writer));
        self
    }

    /// The own node's segment, if `segment` is it.
    fn local(&self, segment: SegmentId) -> Option<&LocalSegment> {
        self.local.as_ref().filter(|l| l.id() == segment)
    }

    /// Where this client's gets were served from.
    pub fn stats(&self) -> RemoteStats {
        RemoteStats {
            memory_reads: self.memory_reads.load(Ordering::Relaxed),
            disk_reads: self.disk_reads.load(Ordering::Relaxed),
            direct_disk_reads: self.direct_disk_reads.load(Ordering::Relaxed),
            local_writes: self.local_writes.load(Ordering::Relaxed),
            local_reads: self.local_reads.load(Ordering::Relaxed),
            rdma_writes: self.rdma_writes.load(Ordering::Relaxed),
            rdma_reads: self.rdma_reads.load(Ordering::Relaxed),
        }
    }

    /// The link to the master, to wait for it to be up again.
    pub fn master_link(&self) -> tokio::sync::watch::Receiver<LinkState> {
        self.master.link_watch()
    }

    /// Stores `value` under `key` with `replicas` memory replicas on distinct segments
    /// (the value is copied once; [`RemoteStore::put_bytes`] sends it from its buffer).
    pub async fn put(&self, key: &[u8], value: &[u8], replicas: u8) -> Result<(), RemoteError> {
        self.put_bytes(key, Bytes::copy_from_slice(value), replicas).await
    }

    /// Stores `value` under `key` with `replicas` memory replicas on distinct segments,
    /// writing it to each owner straight from `value`'s buffer.
    pub async fn put_bytes(&self, key: &[u8], value: Bytes, replicas: u8) -> Result<(), RemoteError> {
        let key = KeyRef::new(key).map_err(|_| RemoteError::InvalidKey)?;
        if value.len() > MAX_VALUE {
            return Err(RemoteError::TooLarge { len: value.len() as u64, max: MAX_VALUE as u64 });
        }
        // The grant's epoch: the master run this client speaks to.
        let LinkState::Up(welcome) = self.master.link() else {
            return Err(RemoteError::Unreachable(CallError::NotConnected(self.master.addr())));
        };
        let start = Request::PutStart { writer: self.writer, key, size: value.len() as u64, replicas };
        // The checksum is taken while the master places the value: the call is sent
        // when first polled, before the checksum starts.
        let (granted, crc32c) =
            tokio::join!(self.master.call(&start), async { larder_engine::checksum::crc32c(&value) });
        let grant = match granted? {
            Response::PutStart(Ok(grant)) => grant,
            Response::PutStart(Err(e)) => return Err(master_error(e)),
            other => return Err(RemoteError::Protocol(format!("{other:?}"))),
        };
        for replica in &grant.replicas {
            if let Err(e) =
                self.write(replica, key, grant.version, welcome.incarnation.0, crc32c, &value).await
            {
                let revoke = Request::PutRevoke { writer: self.writer, key, version: grant.version };
                let _ = self.master.call(&revoke).await;
                return Err(e);
            }
        }
        let end = Request::PutEnd { writer: self.writer, key, version: grant.version, crc32c };
        match self.master.call(&end).await? {
            Response::PutEnd(Ok(())) => Ok(()),
            Response::PutEnd(Err(e)) => Err(master_error(e)),
            other => Err(RemoteError::Protocol(format!("{other:?}"))),
        }
    }

    /// The value under `key`, read from the first replica that gives verified bytes.
    pub async fn get(&self, key: &[u8]) -> Result<Bytes, RemoteError> {
        self.get_within(key, None).await
    }

    /// [`RemoteStore::get`] for a caller with room for `room` bytes: a larger value is
    /// `BufferTooSmall` before any byte moves.
    pub async fn get_within(&self, key: &[u8], room: Option<usize>) -> Result<Bytes, RemoteError> {
        let key = KeyRef::new(key).map_err(|_| RemoteError::InvalidKey)?;
        let list = self.replica_list(key).await?;
        if let Some(len) = room.filter(|room| (*room as u64) < list.size) {
            return Err(RemoteError::BufferTooSmall { len, needed: list.size });
        }
        // Memory replicas come first in the list, then disk replicas. Whichever gives the
        // bytes, they must match the writer's CRC32C (the list's; a disk replica's own
        // for an object whose writer gave none).
        let mut last = RemoteError::NotFound;
        let mut corrupted = 0;
        for replica in &list.replicas {
            let (read, counter) = match replica {
                ReplicaDescriptor::Memory(memory) => {
                    (self.read(memory, list.version, list.crc32c).await, &self.memory_reads)
                }
                ReplicaDescriptor::Disk(disk) => {
                    let crc32c = list.crc32c.unwrap_or(disk.crc32c);
                    let read = if disk.crc32c == crc32c {
                        self.read_disk(key, disk, list.version).await
                    } else {
                        // Not the writer's bytes, whatever the file says.
                        Err(RemoteError::Corrupted)
                    };
                    (read, &self.disk_reads)
                }
            };
            match read {
                Ok(bytes) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                    self.report_crc_failures(corrupted).await;
                    return Ok(bytes);
                }
                Err(e) => {
                    corrupted += u64::from(e == RemoteError::Corrupted);
                    last = e;
                }
            }
        }
        self.report_crc_failures(corrupted).await;
        Err(match last {
            // The replica went between the list and the read (removed, its node restarted):
            // to the reader the object is not there, as when the master says so.
            RemoteError::Data(DataError::NotHeld | DataError::UnknownSegment) => RemoteError::NotFound,
            // Its own node's segment refused bytes failing their checksum.
            RemoteError::Data(DataError::Corrupted) => RemoteError::Corrupted,
            other => other,
        })
    }

    /// The size of the value under `key`.
    pub async fn get_size(&self, key: &[u8]) -> Result<u64, RemoteError> {
        let key = KeyRef::new(key).map_err(|_| RemoteError::InvalidKey)?;
        Ok(self.replica_list(key).await?.size)
    }

    /// Where the replicas of `key` are (a read lease on them comes with the answer).
    async fn replica_list(&self, key: KeyRef<'_>) -> Result<ReplicaList, RemoteError> {
        match self.master.call(&Request::GetReplicaList { key }).await? {
            Response::GetReplicaList(Ok(list)) => Ok(list),
            Response::GetReplicaList(Err(e)) => Err(master_error(e)),
            other => Err(RemoteError::Protocol(format!("{other:?}"))),
        }
    }

    /// Tells the master of replicas whose bytes did not match their CRC32C (they were
    /// skipped); a report that does not arrive is only a metric lost.
    async fn report_crc_failures(&self, count: u64) {
        if count > 0 {
            let _ = self.master.call(&Request::ReportCrcFailures { reporter: self.writer, count }).await;
        }
    }

    /// Waits until every object this cluster acknowledged before the call has a disk
    /// replica (or was removed). Asks the master for a barrier, then for where it
    /// stands until it is passed.
    pub async fn flush(&self) -> Result<(), RemoteError> {
        let barrier = match self.master.call(&Request::Flush).await? {
            Response::Flush(barrier) => barrier,
            other => return Err(RemoteError::Protocol(format!("{other:?}"))),
        };
        loop {
            match self.master.call(&Request::FlushStatus { barrier }).await? {
                Response::FlushStatus(FlushStatus::Durable) => return Ok(()),
                Response::FlushStatus(FlushStatus::NotDurable { objects }) => {
                    return Err(RemoteError::NotDurable { objects });
                }
                Response::FlushStatus(FlushStatus::Pending) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                other => return Err(RemoteError::Protocol(format!("{other:?}"))),
            }
        }
    }

    /// Whether `key` holds a complete object.
    pub async fn exists(&self, key: &[u8]) -> Result<bool, RemoteError> {
        let key = KeyRef::new(key).map_err(|_| RemoteError::InvalidKey)?;
        match self.master.call(&Request::Exists { key }).await? {
            Response::Exists(e) => Ok(e),
            other => Err(RemoteError::Protocol(format!("{other:?}"))),
        }
    }

    /// Removes the object under `key` (`force`: even while a reader holds a lease).
    pub async fn remove(&self, key: &[u8], force: bool) -> Result<(), RemoteError> {
        let key = KeyRef::new(key).map_err(|_| RemoteError::InvalidKey)?;
        match self.master.call(&Request::Remove { key, force }).await? {
            Response::Remove(Ok(())) => Ok(()),
            Response::Remove(Err(e)) => Err(master_error(e)),
            other => Err(RemoteError::Protocol(format!("{other:?}"))),
        }
    }

    /// Removes every object (`force`: leased ones too); returns how many went.
    pub async fn remove_all(&self, force: bool) -> Result<u64, RemoteError> {
        match self.master.call(&Request::RemoveAll { force }).await? {
            Response::RemoveAll(summary) => Ok(summary.removed),
            other => Err(RemoteError::Protocol(format!("{other:?}"))),
        }
    }

    /// Withdraws this client's own node's segment from the cluster (objects whose only
    /// replica it held are gone; disk replicas stay registered).
    pub async fn unmount(&self, segment: SegmentId) -> Result<(), RemoteError> {
        match self.master.call(&Request::UnmountSegment { node: self.writer, segment }).await? {
            Response::UnmountSegment(Ok(())) => Ok(()),
            Response::UnmountSegment(Err(e)) => Err(master_error(e)),
            other => Err(RemoteError::Protocol(format!("{other:?}"))),
        }
    }

    async fn write(
        &self,
        replica: &MemoryReplica,
        key: KeyRef<'_>,
        version: ObjectVersion,
        epoch: u64,
        crc32c: u32,
        value: &Bytes,
    ) -> Result<(), RemoteError> {
        if let Some(local) = self.local(replica.segment) {
            let write = SegmentWrite {
                segment: replica.segment,
                offset: replica.offset,
                version,
                epoch,
                crc32c,
                key,
            };
            local.write(&write, value).map_err(RemoteError::Data)?;
            self.local_writes.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let (addr, node) = self.locate(replica.segment).await?;
        let peer = self.peer_at(addr).await?;
        let (segment, offset) = (replica.segment, replica.offset);
        if let Some(rdma) = self.rdma_with(addr, node, &peer).await {
            let len = value.len() as u64;
            let write =
                |source| DataRequest::PullWrite { segment, offset, version, epoch, crc32c, key, len, source };
            if let Some(written) = self.write_rdma(rdma, &peer, (segment, value), write).await {
                return written;
            }
        }
        let mut head = Vec::with_capacity(MAX_WRITE_HEAD_LEN);
        DataRequest::Write { segment, offset, version, epoch, crc32c, key, bytes: value }
            .encode_head(&mut head);
        let sent = peer.call_parts(vec![Bytes::from(head), value.clone()]).await;
        let answer = self.forget_on_failure(Some(segment), sent)?;
        match DataResponse::decode(&answer) {
            Ok(DataResponse::Written) => Ok(()),
            Ok(DataResponse::Refused(e)) => Err(RemoteError::Data(e)),
            other => Err(RemoteError::Protocol(format!("{other:?}"))),
        }
    }

    /// Reads a memory replica of `version`, whose bytes must match `crc32c` (the
    /// writer's, from the replica list; `None` only for an object the embedded store
    /// wrote, never seen by a cluster: then the CRC32C the node keeps).
    async fn read(
        &self,
        replica: &MemoryReplica,
        version: ObjectVersion,
        crc32c: Option<u32>,
    ) -> Result<Bytes, RemoteError> {
        if let Some(local) = self.local(replica.segment) {
            // The node checks the bytes against the CRC32C (and counts a mismatch
            // itself, so it is a refusal here, not a failure to report).
            let bytes = local.read(replica, version, crc32c).map_err(RemoteError::Data)?;
            self.local_reads.fetch_add(1, Ordering::Relaxed);
            return Ok(bytes);
        }
        let (addr, node) = self.locate(replica.segment).await?;
        let peer = self.peer_at(addr).await?;
        if let Some(rdma) = self.rdma_with(addr, node, &peer).await {
            if let Some(read) = self.read_rdma(rdma, &peer, replica, version, crc32c).await {
                return read;
            }
        }
        let mut body = Vec::new();
        DataRequest::Read { segment: replica.segment, offset: replica.offset, len: replica.len, version }
            .encode(&mut body);
        let answer = self.forget_on_failure(Some(replica.segment), peer.call_raw(body).await)?;
        match DataResponse::decode(&answer) {
            Ok(DataResponse::Read { crc32c: kept, bytes }) => {
                if !is_replica(bytes, replica.len, kept, crc32c) {
                    return Err(RemoteError::Corrupted);
                }
                Ok(value_of(answer))
            }
            Ok(DataResponse::Refused(e)) => Err(RemoteError::Data(e)),
            other => Err(RemoteError::Protocol(format!("{other:?}"))),
        }
    }

    /// Where the node serving `segment` listens, and which node it is.
    async fn locate(&self, segment: SegmentId) -> Result<(SocketAddr, NodeId), RemoteError> {
        let known =
            self.locations.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&segment).copied();
        if let Some(known) = known {
            return Ok(known);
        }
        let location = match self.master.call(&Request::Locate { segment }).await? {
            Response::Locate(Ok(location)) => location,
            Response::Locate(Err(e)) => return Err(master_error(e)),
            other => return Err(RemoteError::Protocol(format!("{other:?}"))),
        };
        let found = (location.serves.ok_or(not_serving(location.node))?, location.node);
        self.locations.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(segment, found);
        Ok(found)
    }

    /// The RDMA endpoint with the node at `addr`, if transfers with it use RDMA: the
    /// first call per node offers it an endpoint over `peer` (one handshake at a time).
    async fn rdma_with(&self, addr: SocketAddr, node: NodeId, peer: &Client) -> Option<RdmaLink<'_>> {
        let rdma = self.rdma.as_ref()?;
        let link = |transport| match transport {
            Transport::Rdma { generation } => Some(RdmaLink { rdma, addr, generation }),
            Transport::Tcp => None,
        };
        if let Some(settled) = rdma.transport(addr) {
            return link(settled);
        }
        let lock = rdma.handshake_lock(addr);
        let _one = lock.lock().await;
        if let Some(settled) = rdma.transport(addr) {
            return link(settled);
        }
        let (mut body, mut pending) = rdma.begin(addr, node)?;
        loop {
            let answer = peer.call_raw(body).await.ok();
            match rdma.handle_answer(addr, &mut pending, answer.as_deref()) {
                Some(next) => body = next,
                None => return rdma.transport(addr).and_then(link),
            }
        }
    }

    /// A write whose value the node pulls from this client's staging memory over RDMA
    /// (`request`: the request for the staged value's address); `None` when TCP is to
    /// carry it instead (no staging room, or the node has no RDMA for it now).
    async fn write_rdma<'k>(
        &self,
        link: RdmaLink<'_>,
        peer: &Client,
        (segment, value): (SegmentId, &[u8]),
        request: impl FnOnce(u64) -> DataRequest<'k>,
    ) -> Option<Result<(), RemoteError>> {
        let slot = link.rdma.take_slot(value.len() as u64)?;
        link.rdma.fill(&slot, value);
        let mut body = Vec::new();
        request(link.rdma.address(&slot)).encode(&mut body);
        let answer = match peer.call_raw(body).await {
            Ok(answer) => answer,
            // No answer: the node may still be reading the slot, so it is never given
            // out again (it leaks); the endpoint is set up anew.
            Err(e) => return Some(self.forget_on_failure(Some(segment), Err(e)).map_err(RemoteError::from)),
        };
        link.rdma.release(slot);
        Some(match DataResponse::decode(&answer) {
            Ok(DataResponse::Written) => {
                self.rdma_writes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(DataResponse::Refused(DataError::RdmaUnavailable)) => {
                link.forget();
                return None;
            }
            Ok(DataResponse::Refused(e)) => Err(RemoteError::Data(e)),
            other => Err(RemoteError::Protocol(format!("{other:?}"))),
        })
    }

    /// A memory replica the node pushes into this client's staging memory over RDMA,
    /// checked as a TCP read is; `None` when TCP is to carry it instead.
    async fn read_rdma(
        &self,
        link: RdmaLink<'_>,
        peer: &Client,
        replica: &MemoryReplica,
        version: ObjectVersion,
        crc32c: Option<u32>,
    ) -> Option<Result<Bytes, RemoteError>> {
        let slot = link.rdma.take_slot(replica.len)?;
        let (segment, offset, len) = (replica.segment, replica.offset, replica.len);
        let mut body = Vec::new();
        DataRequest::PushRead { segment, offset, len, version, dest: link.rdma.address(&slot) }
            .encode(&mut body);
        let answer = match peer.call_raw(body).await {
            Ok(answer) => answer,
            // No answer: the node may still be writing into the slot, so it leaks.
            Err(e) => return Some(self.forget_on_failure(Some(segment), Err(e)).map_err(RemoteError::from)),
        };
        let result = match DataResponse::decode(&answer) {
            Ok(DataResponse::Pushed { crc32c: kept }) => {
                let bytes = link.rdma.contents(&slot);
                if !is_replica(&bytes, len, kept, crc32c) {
                    Err(RemoteError::Corrupted)
                } else {
                    self.rdma_reads.fetch_add(1, Ordering::Relaxed);
                    Ok(Bytes::from(bytes))
                }
            }
            Ok(DataResponse::Refused(DataError::RdmaUnavailable)) => {
                link.rdma.release(slot);
                link.forget();
                return None;
            }
            Ok(DataResponse::Refused(e)) => Err(RemoteError::Data(e)),
            other => Err(RemoteError::Protocol(format!("{other:?}"))),
        };
        link.rdma.release(slot);
        Some(result)
    }

    /// Reads a disk replica from its bucket file on the shared root if there is one and
    /// the file is there, else through the node that holds it; either way the bytes
    /// must match the CRC32C the replica's descriptor carries.
    async fn read_disk(
        &self,
        key: KeyRef<'_>,
        disk: &DiskReplica,
        version: ObjectVersion,
    ) -> Result<Bytes, RemoteError> {
        if let Some(root) = &self.shared_root {
            let (root, cluster, owned_key, replica) = (root.clone(), self.cluster, key.to_key(), *disk);
            let read = tokio::task::spawn_blocking(move || {
                larder_engine::disk::direct::read_replica(
                    &root,
                    cluster.as_str(),
                    owned_key.as_ref(),
                    version,
                    &replica,
                )
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            match read {
                Ok(bytes) => {
                    self.direct_disk_reads.fetch_add(1, Ordering::Relaxed);
                    return Ok(bytes);
                }
                Err(DirectReadError::Mismatch { path, what }) => {
                    // A shared filesystem may show a stale view of a file (attribute
                    // caches): the node that wrote it is asked before this is called
                    // corruption; its answer is checked the same way.
                    tracing::warn!("{}: {what}; reading through its node", path.display());
                    return match self.read_disk_through_node(key, disk, version).await {
                        Ok(bytes) => Ok(bytes),
                        Err(RemoteError::NodeUnreachable(_) | RemoteError::Unreachable(_)) => {
                            Err(RemoteError::Corrupted)
                        }
                        Err(e) => Err(e),
                    };
                }
                // Not on this root (not shared after all, or the bucket was evicted): the
                // node may still have it.
                Err(e) => tracing::debug!("{e}"),
            }
        }
        self.read_disk_through_node(key, disk, version).await
    }

    /// Reads a disk replica through the node that holds it.
    async fn read_disk_through_node(
        &self,
        key: KeyRef<'_>,
        disk: &DiskReplica,
        version: ObjectVersion,
    ) -> Result<Bytes, RemoteError> {
        let addr = match self.master.call(&Request::LocateNode { node: disk.node }).await? {
            Response::LocateNode(Ok(location)) => location.serves.ok_or(not_serving(disk.node))?,
            // Gone (its files outlive it on a shared root, which this client does not see).
            Response::LocateNode(Err(MasterError::NodeNotRegistered)) => return Err(not_serving(disk.node)),
            Response::LocateNode(Err(e)) => return Err(master_error(e)),
            other => return Err(RemoteError::Protocol(format!("{other:?}"))),
        };
        let peer = self.peer_at(addr).await?;
        let mut body = Vec::new();
        DataRequest::ReadDisk { key, version }.encode(&mut body);
        let answer = self.forget_on_failure(None, peer.call_raw(body).await)?;
        match DataResponse::decode(&answer) {
            Ok(DataResponse::Read { bytes, .. }) => {
                if bytes.len() as u64 != disk.len || larder_engine::checksum::crc32c(bytes) != disk.crc32c {
                    return Err(RemoteError::Corrupted);
                }
                Ok(value_of(answer))
            }
            Ok(DataResponse::Refused(e)) => Err(RemoteError::Data(e)),
            other => Err(RemoteError::Protocol(format!("{other:?}"))),
        }
    }

    /// A transfer that failed for the connection's sake: where the segment is served
    /// is looked up again next time (the node may have restarted elsewhere).
    fn forget_on_failure<T>(
        &self,
        segment: Option<SegmentId>,
        result: Result<T, CallError>,
    ) -> Result<T, CallError> {
        if result.is_err() {
            if let Some(segment) = segment {
                let forgotten =
                    self.locations.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&segment);
                // A node at that address again may be another run, with or without RDMA.
                if let (Some((addr, _)), Some(rdma)) = (forgotten, &self.rdma) {
                    rdma.forget(addr);
                }
            }
        }
        result
    }

    /// A connection to the node serving at `addr`: one of [`LINKS_PER_NODE`], taken in
    /// turn, so that transfers to one node run side by side on several streams.
    async fn peer_at(&self, addr: SocketAddr) -> Result<Client, RemoteError> {
        let links = {
            let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let links = peers.entry(addr).or_insert_with(|| {
                let hello = Hello { role: Role::Peer, ..hello(self.cluster, self.writer, self.incarnation) };
                let clients = (0..LINKS_PER_NODE).map(|_| Client::start(addr, ClientConfig::new(hello)).0);
                std::sync::Arc::new(PeerLinks { clients: clients.collect(), next: AtomicU64::new(0) })
            });
            std::sync::Arc::clone(links)
        };
        let client = links.pick().ok_or(RemoteError::Unreachable(CallError::NotConnected(addr)))?;
        client.wait_up(std::time::Duration::from_secs(5)).await?;
        Ok(client.clone())
    }
}

/// A client's RDMA endpoint with one node, as a transfer uses it.
#[derive(Debug, Clone, Copy)]
struct RdmaLink<'a> {
    rdma: &'a ClientRdma,
    addr: SocketAddr,
    generation: u64,
}

impl RdmaLink<'_> {
    /// The node refused the transfer on this endpoint: the next one sets up another
    /// (unless another transfer already did).
    fn forget(&self) {
        self.rdma.forget_endpoint(self.addr, self.generation);
    }
}

/// Connections opened to each node a client transfers to.
pub const LINKS_PER_NODE: usize = 4;

/// A client's connections to one node.
#[derive(Debug)]
struct PeerLinks {
    clients: Vec<Client>,
    /// Which to take next.
    next: AtomicU64,
}

impl PeerLinks {
    /// The next connection in turn that is up, else one still being dialed for the
    /// first time; `None` if every one was lost and is being redialed in the
    /// background (the caller tries another replica meanwhile).
    fn pick(&self) -> Option<&Client> {
        let start = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        let in_turn = (0..self.clients.len()).map(|i| &self.clients[(start + i) % self.clients.len()]);
        let mut first_dial = None;
        for client in in_turn {
            match client.link() {
                LinkState::Up(_) => return Some(client),
                LinkState::Down(None) => {
                    first_dial.get_or_insert(client);
                }
                LinkState::Down(Some(_)) => {}
            }
        }
        first_dial
    }
}

/// Whether `bytes`, read from a memory replica of `len` bytes whose node kept CRC32C
/// `kept`, are the writer's: `expected` is the writer's CRC32C from the replica list
/// (`None` only for an object no cluster client wrote: then the node's is taken).
fn is_replica(bytes: &[u8], len: u64, kept: u32, expected: Option<u32>) -> bool {
    let expected = expected.unwrap_or(kept);
    bytes.len() as u64 == len && kept == expected && larder_engine::checksum::crc32c(bytes) == expected
}

/// The value in a read answer, without a copy: the answer's bytes past its header.
fn value_of(answer: Bytes) -> Bytes {
    answer.slice(READ_ANSWER_HEADER_LEN..)
}

/// The largest value a put takes: one frame's body less the write's header (with the
/// longest key).
pub const MAX_VALUE: usize = DEFAULT_MAX_FRAME_BODY as usize - MAX_WRITE_HEAD_LEN;

/// A node the master knows that has no connection to it just now.
fn not_serving(node: NodeId) -> RemoteError {
    RemoteError::NodeUnreachable(node)
}

fn hello(cluster: ClusterName, node: NodeId, incarnation: Incarnation) -> Hello {
    Hello {
        min_version: PROTOCOL_VERSIONS.0,
        max_version: PROTOCOL_VERSIONS.1,
        cluster,
        role: Role::Client,
        node,
        incarnation,
        serves: None,
    }
}

fn master_error(e: MasterError) -> RemoteError {
    match e {
        MasterError::ObjectNotFound => RemoteError::NotFound,
        MasterError::ObjectAlreadyExists => RemoteError::AlreadyExists,
        other => RemoteError::Master(other),
    }
}
