//! One accepted connection of a server (the master, or a node's data server): the
//! socket and the engine's [`ServerConnection`], with requests handed to the server's
//! [`Service`] in batches.

use std::io::IoSlice;

use bytes::Bytes;
use larder_engine::NodeId;
use larder_engine::net::{
    CloseReason, FRAME_HEADER_LEN, FRAME_PROBE, Hello, RefusalReason, Role, ServerConfig, ServerConnection,
    ServerEvent, Transmit,
};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use std::sync::Arc;

use super::clock::EngineClock;

/// What a server does with its connections' traffic: the master hands it to its actor,
/// a node answers data requests itself. Answers go back through the connection's
/// outbound channel, given with the Hello.
pub(crate) trait Service: Send + Sync + 'static {
    /// May this peer join? `outbound` reaches the connection from now on.
    fn hello(
        &self,
        conn: u64,
        hello: Hello,
        outbound: mpsc::UnboundedSender<Outbound>,
    ) -> impl Future<Output = Result<(), RefusalReason>> + Send;

    /// Requests, in the order they arrived; false ends the connection.
    fn requests(&self, conn: u64, batch: Vec<(u64, Bytes)>) -> impl Future<Output = bool> + Send;

    /// The node this connection speaks for carried out command `id`.
    fn command_ack(&self, node: NodeId, id: u64) -> impl Future<Output = ()> + Send;

    /// A joined connection is gone.
    fn closed(&self, conn: u64) -> impl Future<Output = ()> + Send;

    /// A connection closed, refused or not (for metrics).
    fn close_reason(&self, reason: CloseReason) {
        let _ = reason;
    }

    /// Whether the service may take request bodies from the socket itself
    /// ([`Service::divert`]): the connection then reads each frame's head before the
    /// rest of it, to offer it.
    const DIVERTS: bool = false;

    /// Where the rest of a request's body goes if the service takes it from the socket
    /// itself (a write's value, straight into the segment): `received` is the body so
    /// far, `len` its whole length. `None`: the connection buffers it as any other.
    fn divert(&self, conn: u64, received: &[u8], len: usize) -> Option<Box<dyn BodySink>> {
        let _ = (conn, received, len);
        None
    }
}

/// The memory the rest of a diverted request's body is read into, and the answer to it
/// once it is all in.
pub(crate) trait BodySink: Send {
    /// Where the next bytes of the body go; empty once it is all in.
    fn unfilled(&mut self) -> &mut [u8];

    /// The socket put `n` bytes at the start of [`BodySink::unfilled`].
    fn filled(&mut self, n: usize);

    /// The body is all in: the response to send.
    fn finish(self: Box<Self>) -> Bytes;
}

/// A request whose body the service is reading from the socket.
struct Diverting {
    id: u64,
    sink: Box<dyn BodySink>,
}

/// A response's body, in parts sent one after the other (a large part is written from
/// its buffer, not copied).
pub(crate) type ResponseBody = smallvec::SmallVec<[Bytes; 2]>;

/// What the actor tells a connection.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Responses to send.
    Responses(Vec<(u64, ResponseBody)>),
    /// A command to push.
    Command(u64, Vec<u8>),
    /// Refuse the peer and close (it broke the connection's binding).
    Refuse(RefusalReason),
}

/// How long a closed connection may take to write its last bytes.
const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Bytes of answers waiting for a peer before it stops being read.
const MAX_UNSENT: usize = 8 << 20;

/// Requests handed to the service at once (a data read may answer up to a frame).
const MAX_BATCH: usize = 16;

/// Bodies shorter than this are never offered to [`Service::divert`]: buffering and
/// copying a few KiB costs less than the bookkeeping.
const DIVERT_AT_LEAST: usize = 64 << 10;

enum Wake {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Outbound(Option<Outbound>),
    Timer,
}

/// Accepts connections for ever, each served by its own task; the loop owns those
/// tasks, so that aborting it ends every connection too.
pub(crate) async fn accept_loop<S: Service>(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    clock: EngineClock,
    service: Arc<S>,
) {
    let mut next_conn = 0u64;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    next_conn += 1;
                    connections.spawn(serve(socket, next_conn, config, clock, Arc::clone(&service)));
                }
                Err(e) => {
                    // Out of descriptors, usually: give the others a moment to close.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            // Reaps the connections that ended.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one connection until it closes.
pub(crate) async fn serve<S: Service>(
    socket: TcpStream,
    conn: u64,
    config: ServerConfig,
    clock: EngineClock,
    service: Arc<S>,
) {
    let _ = socket.set_nodelay(true);
    let peer = socket.peer_addr().ok();
    let (mut reader, mut writer) = socket.into_split();
    let (outbound_tx, mut outbound) = mpsc::unbounded_channel();
    let mut machine = ServerConnection::new(config, clock.now());
    let mut out = Transmit::new();
    let mut joined = false;
    let mut drain_until = None;
    let mut diverting: Option<Diverting> = None;
    let mut offered = None;
    loop {
        let mut batch = Vec::new();
        // A bounded batch, and none while the peer leaves answers unread: requests not
        // taken stay undecoded in the machine, and the socket is not read meanwhile.
        while batch.len() < MAX_BATCH && out.len() + machine.pending_transmit() < MAX_UNSENT {
            let Some(event) = machine.poll_event() else { break };
            match event {
                ServerEvent::Hello(hello) => match service.hello(conn, hello, outbound_tx.clone()).await {
                    Ok(()) => {
                        joined = true;
                        machine.accept(clock.now());
                    }
                    Err(reason) => machine.refuse(reason),
                },
                ServerEvent::Request { id, body } => batch.push((id, body)),
                ServerEvent::CommandAck { id, .. } => {
                    // Only a node acknowledges its commands, and in the order of its
                    // frames: the requests before the ack go first.
                    let Some(node) = machine.peer().filter(|h| h.role == Role::Node).map(|h| h.node) else {
                        continue;
                    };
                    let earlier = std::mem::take(&mut batch);
                    if !earlier.is_empty() && !service.requests(conn, earlier).await {
                        return;
                    }
                    service.command_ack(node, id).await;
                }
                ServerEvent::Closed(reason) => {
                    tracing::info!("connection from {peer:?} closed: {reason:?}");
                    service.close_reason(reason);
                }
            }
        }
        if !batch.is_empty() && !service.requests(conn, batch).await {
            return;
        }
        if S::DIVERTS && diverting.is_none() {
            diverting = divert(&mut machine, service.as_ref(), conn, &mut offered);
        }
        let _ = machine.poll_transmit_chunks(&mut out);
        if machine.is_closed() {
            if out.is_empty() {
                break;
            }
            // Closed: the actor forgets the session now; the rest is only the last
            // bytes (a refusal), given a little while.
            if joined {
                joined = false;
                service.closed(conn).await;
            }
            drain_until.get_or_insert_with(|| tokio::time::Instant::now() + CLOSE_DRAIN);
        }
        let deadline = drain_until.unwrap_or_else(|| clock.deadline(machine.poll_timeout()));
        let has_output = !out.is_empty();
        // A peer that does not read its answers stops being read.
        let unsent = out.len() + machine.pending_transmit();
        let reading = !machine.is_closed() && unsent < MAX_UNSENT;
        let wake = tokio::select! {
            // In a block: a disabled branch's expression is still evaluated, and the
            // receive buffer would make room while the peer is not being read.
            read = async {
                match &mut diverting {
                    Some(d) => reader.read(d.sink.unfilled()).await,
                    None => {
                        // A large request's head first, so that its rest may be diverted.
                        let limit = if S::DIVERTS { machine.receive_limit() } else { usize::MAX };
                        reader.read_buf(&mut bytes::BufMut::limit(machine.receive_buffer(), limit)).await
                    }
                }
            }, if reading => Wake::Read(read),
            wrote = write_chunks(&mut writer, &out), if has_output => Wake::Wrote(wrote),
            next = outbound.recv() => Wake::Outbound(next),
            () = tokio::time::sleep_until(deadline) => Wake::Timer,
        };
        let now = clock.now();
        match wake {
            Wake::Read(Ok(0) | Err(_)) => {
                // A body cut short: what it was read into goes back unused.
                diverting = None;
                machine.handle_eof(now);
            }
            Wake::Read(Ok(n)) => {
                machine.handle_received(now);
                if let Some(d) = &mut diverting {
                    d.sink.filled(n);
                    if d.sink.unfilled().is_empty() {
                        let Diverting { id, sink } = diverting.take().expect("diverting");
                        if let Err(e) = machine.send_response_parts(id, &[sink.finish()]) {
                            tracing::debug!("response {id} not sent: {e}");
                        }
                    }
                }
            }
            Wake::Wrote(Ok(n)) if n > 0 => out.advance(n),
            Wake::Wrote(_) => break,
            Wake::Outbound(Some(first)) => {
                let mut next = Some(first);
                while let Some(message) = next {
                    deliver(&mut machine, message);
                    next = outbound.try_recv().ok();
                }
            }
            Wake::Outbound(None) => machine.handle_close(),
            Wake::Timer if drain_until.is_some() => break,
            Wake::Timer => machine.handle_timeout(now),
        }
    }
    let _ = writer.shutdown().await;
    if joined {
        service.closed(conn).await;
    }
}

/// Hands the rest of the request being received to the service, if it takes it from
/// the socket itself. Each request is offered once, when its first [`FRAME_PROBE`]
/// bytes are in (`offered`: the last one offered).
fn divert<S: Service>(
    machine: &mut ServerConnection,
    service: &S,
    conn: u64,
    offered: &mut Option<u64>,
) -> Option<Diverting> {
    let (id, received, len) = machine.partial_request()?;
    if len < DIVERT_AT_LEAST || FRAME_HEADER_LEN + received.len() < FRAME_PROBE || *offered == Some(id) {
        return None;
    }
    *offered = Some(id);
    let missing = len - received.len();
    let mut sink = service.divert(conn, received, len)?;
    // A sink of another size would desynchronise the stream: buffered instead.
    if sink.unfilled().len() != missing {
        tracing::error!(
            "a diverted body's sink takes {} bytes, {missing} are to come",
            sink.unfilled().len()
        );
        return None;
    }
    let diverted = machine.divert_request()?;
    debug_assert_eq!((diverted.id, diverted.missing), (id, missing));
    Some(Diverting { id, sink })
}

fn deliver(machine: &mut ServerConnection, message: Outbound) {
    match message {
        Outbound::Responses(responses) => {
            for (id, body) in responses {
                if let Err(e) = machine.send_response_parts(id, &body) {
                    tracing::debug!("response {id} not sent: {e}");
                }
            }
        }
        Outbound::Command(id, body) => {
            if let Err(e) = machine.send_command(id, &body) {
                tracing::debug!("command {id} not sent: {e}");
            }
        }
        Outbound::Refuse(reason) => machine.refuse(reason),
    }
}

/// The most chunks one vectored write carries.
const MAX_WRITE_CHUNKS: usize = 64;

/// Writes the front of `out` with one vectored write (frame headers and the values
/// behind them in one system call, the values from their own buffers); the bytes the
/// socket took.
pub(crate) async fn write_chunks<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &Transmit,
) -> std::io::Result<usize> {
    let slices: smallvec::SmallVec<[IoSlice<'_>; MAX_WRITE_CHUNKS]> =
        out.chunks(MAX_WRITE_CHUNKS).map(IoSlice::new).collect();
    writer.write_vectored(&slices).await
}
