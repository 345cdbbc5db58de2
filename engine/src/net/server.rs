//! The accepting side of a connection: handshake checks, requests in, responses and
//! commands out, heartbeats answered, silent peers dropped.
//!
//! # Call order
//!
//! 1. [`ServerConnection::new`] when a socket is accepted.
//! 2. Whenever the socket gives bytes, [`ServerConnection::handle_bytes`] (or read
//!    into [`ServerConnection::receive_buffer`], at most
//!    [`ServerConnection::receive_limit`] bytes if large requests are to be diverted,
//!    then [`ServerConnection::handle_received`]); at end of stream,
//!    [`ServerConnection::handle_eof`].
//! 3. Drain [`ServerConnection::poll_event`] until `None`. Frames are decoded lazily
//!    here, one event at a time, so a peer cannot queue more work than the owner takes.
//!    On [`ServerEvent::Hello`] the owner decides at once with
//!    [`ServerConnection::accept`] or [`ServerConnection::refuse`]; until then no
//!    further event comes. A request that breaks the binding is answered by
//!    [`ServerConnection::refuse`] too. Then a large request still arriving
//!    ([`ServerConnection::partial_request`]) may have the rest of its body read by
//!    the owner itself, straight into its own memory
//!    ([`ServerConnection::divert_request`]); the owner answers it as any request.
//! 4. Answer requests with [`ServerConnection::send_response`] (in any order: each
//!    response carries its request's id), push work with
//!    [`ServerConnection::send_command`].
//! 5. Write out what [`ServerConnection::poll_transmit`] (or, without copying bodies,
//!    [`ServerConnection::poll_transmit_chunks`]) gives, then, if
//!    [`ServerConnection::is_closed`], close the socket.
//! 6. Call [`ServerConnection::handle_timeout`] once [`ServerConnection::poll_timeout`]
//!    has passed.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use bytes::{Bytes, BytesMut};

use super::frame::{Deframer, FrameError, FrameKind, Transmit, take_outgoing, take_outgoing_chunks};
use super::handshake::{ClusterName, Hello, Refusal, RefusalReason, Role, Welcome};
use crate::ids::Incarnation;
use crate::time::{Duration, Instant};

/// How the accepting side treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// The only cluster whose peers are accepted.
    pub cluster: ClusterName,
    /// The protocol versions this side speaks (inclusive).
    pub versions: (u16, u16),
    /// This process's run, sent in the Welcome.
    pub incarnation: Incarnation,
    /// The node TTL announced in the Welcome.
    pub node_ttl: Duration,
    /// Roles this side accepts.
    pub roles: &'static [Role],
    /// A connection whose Hello has not arrived by then is closed.
    pub handshake_timeout: Duration,
    /// An established connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// The largest frame body accepted from the peer (and sent to it).
    pub max_frame_body: u32,
}

/// Where a server connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Waiting for the peer's Hello.
    AwaitingHello,
    /// A Hello passed the connection's checks; the owner has not decided yet.
    Deciding,
    /// Accepted: requests flow.
    Established,
    /// Closed (after whatever is left in the transmit buffer).
    Closed,
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer ended the stream.
    PeerClosed,
    /// The bytes were not frames.
    BadFrame(FrameError),
    /// The connection was refused, for this reason (sent to the peer).
    Refused(RefusalReason),
    /// No Hello in time.
    HandshakeTimeout,
    /// Nothing from the peer for the idle timeout.
    IdleTimeout,
    /// The owner closed it.
    Local,
}

/// What the owner of a server connection must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A Hello with a common version and the right cluster and role: accept or refuse.
    Hello(Hello),
    /// A request to answer with [`ServerConnection::send_response`] and the same id.
    Request {
        /// The peer's request id.
        id: u64,
        /// The request body.
        body: Bytes,
    },
    /// The peer carried out the command with this id.
    CommandAck {
        /// The command's id.
        id: u64,
        /// What the peer reported.
        body: Bytes,
    },
    /// The connection closed; no further event comes.
    Closed(CloseReason),
}

/// A request whose body's rest the owner reads from the stream itself (see
/// [`ServerConnection::divert_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivertedRequest {
    /// The peer's request id: answer it as any request.
    pub id: u64,
    /// The body bytes received before the diversion.
    pub received: Bytes,
    /// The body bytes still to come: the next this many bytes of the stream.
    pub missing: usize,
}

/// A send on a connection that cannot take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is not established (or no longer).
    #[error("the connection is not established")]
    NotEstablished,
    /// The body is longer than a frame may be.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The accepting side of one connection. See the module documentation for the call
/// order.
#[derive(Debug)]
pub struct ServerConnection {
    config: ServerConfig,
    state: ServerState,
    peer: Option<Hello>,
    version: u16,
    deframer: Deframer,
    outgoing: Transmit,
    events: VecDeque<ServerEvent>,
    /// When the connection was accepted: the handshake deadline counts from here.
    opened: Instant,
    last_received: Instant,
    closed_reported: bool,
}

impl ServerConnection {
    /// A connection accepted at `now`.
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        // Until the handshake is done, nothing longer than a Hello is accepted.
        let handshake_body = u32::try_from(Hello::MAX_LEN).unwrap_or(u32::MAX).min(config.max_frame_body);
        Self {
            deframer: Deframer::new(handshake_body),
            config,
            state: ServerState::AwaitingHello,
            peer: None,
            version: 0,
            outgoing: Transmit::new(),
            events: VecDeque::new(),
            opened: now,
            last_received: now,
            closed_reported: false,
        }
    }

    /// Where the connection is.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The accepted (or deciding) peer's Hello.
    pub fn peer(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    /// The protocol version agreed, once established.
    pub fn version(&self) -> Option<u16> {
        (self.state == ServerState::Established).then_some(self.version)
    }

    /// True once the connection is closed: write out what is left, then close the
    /// socket.
    pub fn is_closed(&self) -> bool {
        self.state == ServerState::Closed
    }

    /// Bytes from the socket (copied in; [`ServerConnection::receive_buffer`] avoids
    /// the copy).
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.deframer.push(bytes);
        self.handle_received(now);
    }

    /// The buffer to read the socket into: append what the socket gave, then call
    /// [`ServerConnection::handle_received`]. A request's body is handed out as a view
    /// of these bytes.
    pub fn receive_buffer(&mut self) -> &mut BytesMut {
        self.deframer.receive_buffer()
    }

    /// The most bytes to read into [`ServerConnection::receive_buffer`] next, so that
    /// a large request's head is in before the rest of it and the owner may divert that
    /// rest ([`ServerConnection::partial_request`]).
    pub fn receive_limit(&self) -> usize {
        self.deframer.receive_limit()
    }

    /// Bytes were appended to [`ServerConnection::receive_buffer`].
    pub fn handle_received(&mut self, now: Instant) {
        if self.state == ServerState::Closed {
            // A closed connection takes nothing more in.
            self.deframer = Deframer::new(0);
            return;
        }
        self.last_received = now;
    }

    /// The peer ended its stream.
    pub fn handle_eof(&mut self, _now: Instant) {
        self.close(CloseReason::PeerClosed);
    }

    /// Closes the connection from this side.
    pub fn handle_close(&mut self) {
        self.close(CloseReason::Local);
    }

    /// When [`ServerConnection::handle_timeout`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ServerState::AwaitingHello | ServerState::Deciding => {
                Some(self.opened + self.config.handshake_timeout)
            }
            ServerState::Established => Some(self.last_received + self.config.idle_timeout),
            ServerState::Closed => None,
        }
    }

    /// Closes a connection whose peer has been silent too long.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.poll_timeout() else { return };
        if now < deadline {
            return;
        }
        match self.state {
            ServerState::AwaitingHello | ServerState::Deciding => self.close(CloseReason::HandshakeTimeout),
            ServerState::Established => self.close(CloseReason::IdleTimeout),
            ServerState::Closed => {}
        }
    }

    /// The next thing to act on. Decodes at most one frame per call.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            if matches!(self.state, ServerState::Deciding | ServerState::Closed) {
                return None;
            }
            let frame = match self.deframer.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(e) => {
                    self.refuse_and_close(RefusalReason::ProtocolViolation, CloseReason::BadFrame(e));
                    continue;
                }
            };
            let (kind, id, body) = (frame.header.kind, frame.header.id, frame.body);
            match (self.state, kind) {
                (ServerState::AwaitingHello, FrameKind::Hello) => self.take_hello(&body),
                (ServerState::Established, FrameKind::Request) => {
                    return Some(ServerEvent::Request { id, body });
                }
                (ServerState::Established, FrameKind::CommandAck) => {
                    return Some(ServerEvent::CommandAck { id, body });
                }
                (ServerState::Established, FrameKind::Heartbeat) => {
                    let _ = self.outgoing.push_frame_copied(FrameKind::HeartbeatAck, id, &[], u32::MAX);
                }
                // A second Hello, a request before the handshake, or a kind only this
                // side sends.
                _ => self.refuse_and_close(
                    RefusalReason::ProtocolViolation,
                    CloseReason::Refused(RefusalReason::ProtocolViolation),
                ),
            }
        }
    }

    /// The request being received, if every event before it was taken and its body is
    /// not all in yet: its id, the body bytes received so far, and the body's length.
    /// The owner may take the rest of the body from the stream itself
    /// ([`ServerConnection::divert_request`]), for instance a write's value straight
    /// into the memory it is for.
    pub fn partial_request(&self) -> Option<(u64, &[u8], usize)> {
        if self.state != ServerState::Established || !self.events.is_empty() {
            return None;
        }
        let (header, received) = self.deframer.partial_frame()?;
        (header.kind == FrameKind::Request).then_some((header.id, received, header.body_len as usize))
    }

    /// Takes [`ServerConnection::partial_request`] out of the stream. The owner then
    /// reads the next `missing` bytes of the socket itself (calling
    /// [`ServerConnection::handle_received`] as they arrive, which keeps the connection
    /// alive), answers `id` as any request, and only then reads into
    /// [`ServerConnection::receive_buffer`] again.
    pub fn divert_request(&mut self) -> Option<DivertedRequest> {
        self.partial_request()?;
        let (header, received, missing) = self.deframer.take_partial_frame()?;
        Some(DivertedRequest { id: header.id, received, missing })
    }

    fn take_hello(&mut self, body: &[u8]) {
        let Ok(hello) = Hello::decode(body) else {
            let reason = RefusalReason::ProtocolViolation;
            return self.refuse_and_close(reason, CloseReason::Refused(reason));
        };
        let refusal = match hello.common_version(self.config.versions) {
            None => Some(RefusalReason::VersionMismatch),
            Some(_) if hello.cluster != self.config.cluster => Some(RefusalReason::WrongCluster),
            Some(_) if !self.config.roles.contains(&hello.role) => Some(RefusalReason::RoleNotAccepted),
            Some(version) => {
                self.version = version;
                None
            }
        };
        if let Some(reason) = refusal {
            return self.refuse_and_close(reason, CloseReason::Refused(reason));
        }
        self.peer = Some(hello);
        self.state = ServerState::Deciding;
        self.events.push_back(ServerEvent::Hello(hello));
    }

    /// Accepts the peer whose Hello was the last event. Ignored in any other state.
    pub fn accept(&mut self, now: Instant) {
        if self.state != ServerState::Deciding {
            return;
        }
        let welcome = Welcome {
            version: self.version,
            incarnation: self.config.incarnation,
            node_ttl: self.config.node_ttl,
        };
        let mut body = [0u8; Welcome::LEN];
        let n = welcome.encode(&mut body).unwrap_or(0);
        let _ = self.outgoing.push_frame_copied(FrameKind::Welcome, 0, &body[..n], u32::MAX);
        self.state = ServerState::Established;
        self.deframer.set_max_body(self.config.max_frame_body);
        self.last_received = now;
    }

    /// Refuses the peer: sends `reason` and closes. For a Hello the owner will not
    /// take (a stale incarnation), or later for a request that breaks the connection's
    /// binding (it names another node). Ignored once closed.
    pub fn refuse(&mut self, reason: RefusalReason) {
        if self.state != ServerState::Closed {
            self.refuse_and_close(reason, CloseReason::Refused(reason));
        }
    }

    /// Queues the response to request `id` (its body copied).
    pub fn send_response(&mut self, id: u64, body: &[u8]) -> Result<(), SendError> {
        self.send(FrameKind::Response, id, body)
    }

    /// Queues the response to request `id` whose body is `parts` in order; large parts
    /// are written to the socket from their buffers, not copied.
    pub fn send_response_parts(&mut self, id: u64, parts: &[Bytes]) -> Result<(), SendError> {
        if self.state != ServerState::Established {
            return Err(SendError::NotEstablished);
        }
        self.outgoing.push_frame(FrameKind::Response, id, parts, self.config.max_frame_body)?;
        Ok(())
    }

    /// Queues command `id` for the peer.
    pub fn send_command(&mut self, id: u64, body: &[u8]) -> Result<(), SendError> {
        self.send(FrameKind::Command, id, body)
    }

    fn send(&mut self, kind: FrameKind, id: u64, body: &[u8]) -> Result<(), SendError> {
        if self.state != ServerState::Established {
            return Err(SendError::NotEstablished);
        }
        self.outgoing.push_frame_copied(kind, id, body, self.config.max_frame_body)?;
        Ok(())
    }

    /// Bytes queued for the socket and not yet taken by
    /// [`ServerConnection::poll_transmit`]. A driver stops reading while the peer
    /// leaves too much unread (it would otherwise queue answers without bound).
    pub fn pending_transmit(&self) -> usize {
        self.outgoing.len()
    }

    /// Appends the bytes to write to the socket to `out` (a copy); false if there were
    /// none.
    #[must_use]
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        take_outgoing(&mut self.outgoing, out)
    }

    /// Moves the frames to write to the socket behind what `out` holds, without
    /// copying their bodies; false if there were none.
    #[must_use]
    pub fn poll_transmit_chunks(&mut self, out: &mut Transmit) -> bool {
        take_outgoing_chunks(&mut self.outgoing, out)
    }

    fn refuse_and_close(&mut self, reason: RefusalReason, close: CloseReason) {
        let refusal = Refusal { reason, versions: self.config.versions };
        let mut body = [0u8; Refusal::LEN];
        let n = refusal.encode(&mut body).unwrap_or(0);
        let _ = self.outgoing.push_frame_copied(FrameKind::Refuse, 0, &body[..n], u32::MAX);
        self.close(close);
    }

    fn close(&mut self, reason: CloseReason) {
        if self.state == ServerState::Closed {
            return;
        }
        self.state = ServerState::Closed;
        if !self.closed_reported {
            self.closed_reported = true;
            self.events.push_back(ServerEvent::Closed(reason));
        }
    }
}
