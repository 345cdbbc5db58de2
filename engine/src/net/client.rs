//! The connecting side of a connection: dialing with backoff, the handshake, a
//! pipelining window of requests with timeouts, heartbeats, and commands in.
//!
//! # Call order
//!
//! 1. [`ClientConnection::new`]; its first event is [`ClientEvent::Dial`].
//! 2. On `Dial`, open a socket to the peer, then call
//!    [`ClientConnection::handle_connected`] or
//!    [`ClientConnection::handle_connect_failed`].
//! 3. Whenever the socket gives bytes, [`ClientConnection::handle_bytes`] (or read
//!    into [`ClientConnection::receive_buffer`], then
//!    [`ClientConnection::handle_received`]); when it
//!    ends or fails, [`ClientConnection::handle_disconnected`].
//! 4. Drain [`ClientConnection::poll_event`] until `None`; on
//!    [`ClientEvent::Disconnected`] close the socket (a `Dial` follows after the
//!    backoff).
//! 5. Send with [`ClientConnection::send_request`] once established; every request
//!    ends in exactly one [`ClientEvent::Response`] or [`ClientEvent::RequestFailed`].
//!    Acknowledge commands with [`ClientConnection::ack_command`].
//! 6. Write out what [`ClientConnection::poll_transmit`] (or, without copying bodies,
//!    [`ClientConnection::poll_transmit_chunks`]) gives.
//! 7. Call [`ClientConnection::handle_timeout`] once [`ClientConnection::poll_timeout`]
//!    has passed (request deadlines, heartbeats, the idle check, redial).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use bytes::{Bytes, BytesMut};

use super::frame::{Deframer, FrameError, FrameKind, Transmit, take_outgoing, take_outgoing_chunks};
use super::handshake::{Hello, Refusal, Welcome};
use crate::time::{Duration, Instant};

/// The longest body accepted before the handshake is answered: a Welcome or a
/// Refusal.
const HANDSHAKE_ANSWER_MAX: u32 =
    if Welcome::LEN > Refusal::LEN { Welcome::LEN as u32 } else { Refusal::LEN as u32 };

/// How a client connection behaves.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// What this side says in its Hello.
    pub hello: Hello,
    /// The most requests in flight at once.
    pub window: usize,
    /// A request unanswered this long fails with [`RequestError::TimedOut`].
    pub request_timeout: Duration,
    /// An idle connection sends a heartbeat this often.
    pub heartbeat_interval: Duration,
    /// Nothing received for this long: the connection is dead.
    pub idle_timeout: Duration,
    /// Dialing plus the handshake must finish within this.
    pub connect_timeout: Duration,
    /// The first wait before redialing; doubled on each failure up to `backoff_max`.
    pub backoff_min: Duration,
    /// The longest wait before redialing.
    pub backoff_max: Duration,
    /// The largest frame body accepted from the peer (and sent to it).
    pub max_frame_body: u32,
}

impl ClientConfig {
    /// Defaults for a control connection to the master: a window of 1024, 5 s request
    /// timeout, heartbeats every second, dead after 5 s of silence, redial after
    /// 100 ms doubling to 5 s.
    pub fn new(hello: Hello) -> Self {
        Self {
            hello,
            window: 1024,
            request_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_frame_body: super::frame::DEFAULT_MAX_FRAME_BODY,
        }
    }
}

/// Where a client connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// No socket; dialing again at `retry_at`.
    Waiting {
        /// When to dial.
        retry_at: Instant,
    },
    /// The owner is opening a socket.
    Dialing {
        /// Dialing and the handshake must be done by then.
        deadline: Instant,
    },
    /// Connected; the Hello is sent, the answer not yet in.
    Handshaking {
        /// The answer must come by then.
        deadline: Instant,
    },
    /// Welcomed: requests flow.
    Established,
    /// Closed for good by the owner.
    Closed,
}

/// Why a connection was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The socket could not be opened.
    ConnectFailed,
    /// Dialing or the handshake took longer than the connect timeout.
    ConnectTimeout,
    /// The peer refused the handshake.
    Refused(Refusal),
    /// The socket ended or failed.
    PeerClosed,
    /// Nothing from the peer for the idle timeout.
    IdleTimeout,
    /// The peer sent bytes that are not frames.
    BadFrame(FrameError),
    /// The peer broke the protocol (a frame this side never expects).
    ProtocolViolation,
}

/// Why a request got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No response within the request timeout.
    #[error("no response within the request timeout")]
    TimedOut,
    /// The connection was lost first. The request may or may not have been carried out.
    #[error("the connection was lost before the response")]
    Disconnected,
}

/// A request that cannot be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Not established (dialing, waiting to redial, or closed).
    #[error("not connected")]
    NotConnected,
    /// The pipelining window is full: wait for a response.
    #[error("the request window is full")]
    WindowFull,
    /// The body is longer than a frame may be.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// What the owner of a client connection must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Open a socket to the peer.
    Dial,
    /// The handshake succeeded.
    Established(Welcome),
    /// The response to request `id`.
    Response {
        /// The request's id.
        id: u64,
        /// The response body.
        body: Bytes,
    },
    /// Request `id` ended without a response.
    RequestFailed {
        /// The request's id.
        id: u64,
        /// Why.
        error: RequestError,
    },
    /// A command from the peer; acknowledge it with [`ClientConnection::ack_command`].
    Command {
        /// The command's id.
        id: u64,
        /// Its body.
        body: Bytes,
    },
    /// The connection is lost: close the socket. In-flight requests have failed.
    Disconnected(DisconnectReason),
}

/// The connecting side of a connection. See the module documentation for the call
/// order.
#[derive(Debug)]
pub struct ClientConnection {
    config: ClientConfig,
    state: ClientState,
    next_id: u64,
    /// Request id → deadline. Ids grow and every request has the same timeout, so the
    /// first entry always has the earliest deadline.
    in_flight: BTreeMap<u64, Instant>,
    deframer: Deframer,
    outgoing: Transmit,
    events: VecDeque<ClientEvent>,
    backoff: Duration,
    last_sent: Instant,
    last_received: Instant,
    welcome: Option<Welcome>,
}

impl ClientConnection {
    /// A connection that dials at once.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let mut events = VecDeque::new();
        events.push_back(ClientEvent::Dial);
        Self {
            deframer: Deframer::new(config.max_frame_body),
            state: ClientState::Dialing { deadline: now + config.connect_timeout },
            backoff: config.backoff_min,
            config,
            next_id: 1,
            in_flight: BTreeMap::new(),
            outgoing: Transmit::new(),
            events,
            last_sent: now,
            last_received: now,
            welcome: None,
        }
    }

    /// Where the connection is.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The last Welcome received (kept across reconnects, so a change of the peer's
    /// incarnation can be seen).
    pub fn welcome(&self) -> Option<Welcome> {
        self.welcome
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// True if a request could be sent now.
    pub fn can_send(&self) -> bool {
        self.state == ClientState::Established && self.in_flight.len() < self.config.window
    }

    /// The owner opened the socket.
    pub fn handle_connected(&mut self, now: Instant) {
        let ClientState::Dialing { deadline } = self.state else { return };
        let mut body = [0u8; Hello::MAX_LEN];
        let n = self.config.hello.encode(&mut body).unwrap_or(0);
        self.outgoing.clear();
        let _ = self.outgoing.push_frame_copied(FrameKind::Hello, 0, &body[..n], u32::MAX);
        self.deframer = Deframer::new(HANDSHAKE_ANSWER_MAX);
        self.state = ClientState::Handshaking { deadline };
        self.last_sent = now;
        self.last_received = now;
    }

    /// The owner could not open the socket.
    pub fn handle_connect_failed(&mut self, now: Instant) {
        if matches!(self.state, ClientState::Dialing { .. }) {
            self.disconnect(now, DisconnectReason::ConnectFailed);
        }
    }

    /// The socket ended or failed.
    pub fn handle_disconnected(&mut self, now: Instant) {
        if matches!(self.state, ClientState::Handshaking { .. } | ClientState::Established) {
            self.disconnect(now, DisconnectReason::PeerClosed);
        }
    }

    /// Bytes from the socket (copied in; [`ClientConnection::receive_buffer`] avoids
    /// the copy).
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.deframer.push(bytes);
        self.handle_received(now);
    }

    /// The buffer to read the socket into: append what the socket gave, then call
    /// [`ClientConnection::handle_received`]. A response's body is handed out as a view
    /// of these bytes.
    pub fn receive_buffer(&mut self) -> &mut BytesMut {
        self.deframer.receive_buffer()
    }

    /// Bytes were appended to [`ClientConnection::receive_buffer`].
    pub fn handle_received(&mut self, now: Instant) {
        if !matches!(self.state, ClientState::Handshaking { .. } | ClientState::Established) {
            // Nothing is read while no socket is open; drop what a late read left.
            self.deframer = Deframer::new(self.config.max_frame_body);
            return;
        }
        self.last_received = now;
        self.take_frames(now);
    }

    /// Closes the connection for good: in-flight requests fail, nothing is redialed.
    pub fn close(&mut self) {
        self.fail_in_flight(RequestError::Disconnected);
        self.outgoing.clear();
        self.state = ClientState::Closed;
    }

    /// Sends a request (its body copied), returning its id.
    pub fn send_request(&mut self, now: Instant, body: &[u8]) -> Result<u64, SendError> {
        self.check_can_send()?;
        let id = self.next_id;
        self.outgoing.push_frame_copied(FrameKind::Request, id, body, self.config.max_frame_body)?;
        Ok(self.sent(now, id))
    }

    /// Sends a request whose body is `parts` in order, returning its id. Large parts
    /// are written to the socket from the caller's buffers, not copied.
    pub fn send_request_parts(&mut self, now: Instant, parts: &[Bytes]) -> Result<u64, SendError> {
        self.check_can_send()?;
        let id = self.next_id;
        self.outgoing.push_frame(FrameKind::Request, id, parts, self.config.max_frame_body)?;
        Ok(self.sent(now, id))
    }

    fn check_can_send(&self) -> Result<(), SendError> {
        if self.state != ClientState::Established {
            return Err(SendError::NotConnected);
        }
        if self.in_flight.len() >= self.config.window {
            return Err(SendError::WindowFull);
        }
        Ok(())
    }

    /// Request `id` is queued: it is in flight from now.
    fn sent(&mut self, now: Instant, id: u64) -> u64 {
        self.next_id += 1;
        self.in_flight.insert(id, now + self.config.request_timeout);
        self.last_sent = now;
        id
    }

    /// Acknowledges command `id` with `body`. Dropped when not established: the peer
    /// replays unacknowledged commands after the reconnect.
    pub fn ack_command(&mut self, now: Instant, id: u64, body: &[u8]) {
        if self.state == ClientState::Established
            && self
                .outgoing
                .push_frame_copied(FrameKind::CommandAck, id, body, self.config.max_frame_body)
                .is_ok()
        {
            self.last_sent = now;
        }
    }

    /// The next thing to act on.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
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

    /// When [`ClientConnection::handle_timeout`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ClientState::Waiting { retry_at } => Some(retry_at),
            ClientState::Dialing { deadline } | ClientState::Handshaking { deadline } => Some(deadline),
            ClientState::Established => {
                let heartbeat = self.last_sent + self.config.heartbeat_interval;
                let idle = self.last_received + self.config.idle_timeout;
                let request = self.in_flight.first_key_value().map_or(Instant::MAX, |(_, d)| *d);
                Some(heartbeat.min(idle).min(request))
            }
            ClientState::Closed => None,
        }
    }

    /// Redials, fails late requests, sends heartbeats and drops a silent connection.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            ClientState::Waiting { retry_at } if now >= retry_at => {
                self.state = ClientState::Dialing { deadline: now + self.config.connect_timeout };
                self.events.push_back(ClientEvent::Dial);
            }
            ClientState::Dialing { deadline } | ClientState::Handshaking { deadline } if now >= deadline => {
                self.disconnect(now, DisconnectReason::ConnectTimeout);
            }
            ClientState::Established => {
                if now >= self.last_received + self.config.idle_timeout {
                    return self.disconnect(now, DisconnectReason::IdleTimeout);
                }
                while let Some((&id, &deadline)) = self.in_flight.first_key_value() {
                    if deadline > now {
                        break;
                    }
                    self.in_flight.remove(&id);
                    self.events.push_back(ClientEvent::RequestFailed { id, error: RequestError::TimedOut });
                }
                if now >= self.last_sent + self.config.heartbeat_interval {
                    let _ = self.outgoing.push_frame_copied(FrameKind::Heartbeat, 0, &[], u32::MAX);
                    self.last_sent = now;
                }
            }
            _ => {}
        }
    }

    fn take_frames(&mut self, now: Instant) {
        loop {
            let frame = match self.deframer.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => return self.disconnect(now, DisconnectReason::BadFrame(e)),
            };
            let (kind, id) = (frame.header.kind, frame.header.id);
            match (self.state, kind) {
                (ClientState::Handshaking { .. }, FrameKind::Welcome) => match Welcome::decode(&frame.body) {
                    Ok(welcome)
                        if (self.config.hello.min_version..=self.config.hello.max_version)
                            .contains(&welcome.version) =>
                    {
                        self.deframer.set_max_body(self.config.max_frame_body);
                        self.state = ClientState::Established;
                        self.backoff = self.config.backoff_min;
                        self.welcome = Some(welcome);
                        self.events.push_back(ClientEvent::Established(welcome));
                    }
                    // Undecodable, or a version this side never offered.
                    _ => return self.disconnect(now, DisconnectReason::ProtocolViolation),
                },
                (ClientState::Handshaking { .. } | ClientState::Established, FrameKind::Refuse) => {
                    let reason = match Refusal::decode(&frame.body) {
                        Ok(refusal) => DisconnectReason::Refused(refusal),
                        Err(_) => DisconnectReason::ProtocolViolation,
                    };
                    return self.disconnect(now, reason);
                }
                (ClientState::Established, FrameKind::Response) => {
                    // A response after its request timed out is dropped: the caller
                    // has its answer already.
                    if self.in_flight.remove(&id).is_some() {
                        self.events.push_back(ClientEvent::Response { id, body: frame.body });
                    }
                }
                (ClientState::Established, FrameKind::Command) => {
                    self.events.push_back(ClientEvent::Command { id, body: frame.body });
                }
                (ClientState::Established, FrameKind::HeartbeatAck) => {}
                _ => return self.disconnect(now, DisconnectReason::ProtocolViolation),
            }
        }
    }

    fn disconnect(&mut self, now: Instant, reason: DisconnectReason) {
        self.fail_in_flight(RequestError::Disconnected);
        self.outgoing.clear();
        self.deframer = Deframer::new(self.config.max_frame_body);
        self.state = ClientState::Waiting { retry_at: now + self.backoff };
        self.backoff = (self.backoff + self.backoff).min(self.config.backoff_max);
        self.events.push_back(ClientEvent::Disconnected(reason));
    }

    fn fail_in_flight(&mut self, error: RequestError) {
        for id in core::mem::take(&mut self.in_flight).into_keys() {
            self.events.push_back(ClientEvent::RequestFailed { id, error });
        }
    }
}
