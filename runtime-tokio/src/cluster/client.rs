//! A connection to the master (or any Larder server) driven on tokio: one task owns
//! the socket and the engine's [`ClientConnection`]; callers send requests through a
//! channel and await their answers, pipelined up to the connection's window.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use larder_engine::net::{
    ClientConfig, ClientConnection, ClientEvent, ClientState, DisconnectReason, RequestError, Transmit,
    Welcome,
};
use larder_engine::wire::{Message, Request, Response};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};

use super::clock::EngineClock;
use super::connection::write_chunks;

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The connection is not established (the server is down, or being redialed).
    #[error("not connected to {0}")]
    NotConnected(SocketAddr),
    /// No answer within the request timeout.
    #[error("no answer from {0} within the request timeout")]
    TimedOut(SocketAddr),
    /// The connection was lost before the answer; the request may have been carried
    /// out.
    #[error("the connection to {0} was lost before the answer")]
    Disconnected(SocketAddr),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// The answer was not a response of the right form.
    #[error("a malformed answer: {0}")]
    Malformed(String),
}

/// Where the link to the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected yet, or lost (with the last reason).
    Down(Option<DisconnectReason>),
    /// Established, with the server's Welcome.
    Up(Welcome),
}

/// Where a call's answer goes.
type Reply = oneshot::Sender<Result<Bytes, CallError>>;

enum Call {
    Request { parts: Vec<Bytes>, reply: Reply },
    Ack { id: u64, body: Vec<u8> },
}

/// A command pushed by the server: carry it out, then [`Client::ack`] its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedCommand {
    /// Its id, to acknowledge.
    pub id: u64,
    /// Its body (a [`larder_engine::wire::NodeCommand`] from the master).
    pub body: Bytes,
}

/// A connection to a server. Cloning shares it; the connection ends when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    calls: mpsc::Sender<Call>,
    link: watch::Receiver<LinkState>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Request { parts, .. } => {
                write!(f, "Request({} bytes)", parts.iter().map(Bytes::len).sum::<usize>())
            }
            Call::Ack { id, .. } => write!(f, "Ack({id})"),
        }
    }
}

impl Client {
    /// Starts connecting to `addr` (redialing with backoff whenever the link drops) and
    /// returns at once, with the receiver of the commands the server pushes.
    pub fn start(addr: SocketAddr, config: ClientConfig) -> (Client, mpsc::UnboundedReceiver<PushedCommand>) {
        let (calls, calls_rx) = mpsc::channel(config.window.max(1) * 2);
        let (link_tx, link) = watch::channel(LinkState::Down(None));
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let driver = Driver::new(addr, config, calls_rx, link_tx, commands_tx);
        tokio::spawn(driver.run());
        (Client { addr, calls, link }, commands)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the link is now.
    pub fn link(&self) -> LinkState {
        *self.link.borrow()
    }

    /// Waits until the link is up (or `timeout` passes), returning the server's Welcome.
    pub async fn wait_up(&self, timeout: std::time::Duration) -> Result<Welcome, CallError> {
        let mut link = self.link.clone();
        let up = link.wait_for(|s| matches!(s, LinkState::Up(_)));
        match tokio::time::timeout(timeout, up).await {
            Ok(Ok(state)) => match *state {
                LinkState::Up(w) => Ok(w),
                LinkState::Down(_) => Err(CallError::NotConnected(self.addr)),
            },
            Ok(Err(_)) => Err(CallError::Closed),
            Err(_) => Err(CallError::NotConnected(self.addr)),
        }
    }

    /// A receiver of the link's changes, with the present state already seen: its
    /// `changed()` resolves at the next change. Keep it across waits (a fresh one per
    /// wait would miss nothing, but one kept marks what it has seen).
    pub fn link_watch(&self) -> watch::Receiver<LinkState> {
        let mut link = self.link.clone();
        link.borrow_and_update();
        link
    }

    /// Sends an encoded request and awaits its encoded response.
    pub async fn call_raw(&self, body: Vec<u8>) -> Result<Bytes, CallError> {
        self.call_parts(vec![Bytes::from(body)]).await
    }

    /// Sends a request whose body is `parts` in order and awaits its encoded response.
    /// Large parts are written to the socket from their own buffers, never copied.
    pub async fn call_parts(&self, parts: Vec<Bytes>) -> Result<Bytes, CallError> {
        let (reply, answer) = oneshot::channel();
        self.calls.send(Call::Request { parts, reply }).await.map_err(|_| CallError::Closed)?;
        answer.await.map_err(|_| CallError::Closed)?
    }

    /// Sends a master request and awaits its response.
    pub async fn call(&self, request: &Request<'_>) -> Result<Response, CallError> {
        let message = Message::Request(request.clone());
        let len = message.encoded_len().map_err(|e| CallError::Malformed(e.to_string()))?;
        let mut body = vec![0u8; len];
        message.encode(&mut body).map_err(|e| CallError::Malformed(e.to_string()))?;
        let answer = self.call_raw(body).await?;
        match Message::decode(&answer) {
            Ok(Message::Response(response)) => Ok(response),
            Ok(other) => Err(CallError::Malformed(format!("expected a response, got {other:?}"))),
            Err(e) => Err(CallError::Malformed(e.to_string())),
        }
    }

    /// Acknowledges a pushed command.
    pub async fn ack(&self, id: u64, body: Vec<u8>) -> Result<(), CallError> {
        self.calls.send(Call::Ack { id, body }).await.map_err(|_| CallError::Closed)
    }
}

type Dialing = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;

/// What woke the driver.
enum Wake {
    Dialed(std::io::Result<TcpStream>),
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Call(Option<Call>),
    Timer,
}

/// The task behind a [`Client`].
struct Driver {
    addr: SocketAddr,
    clock: EngineClock,
    machine: ClientConnection,
    calls: mpsc::Receiver<Call>,
    link: watch::Sender<LinkState>,
    commands: mpsc::UnboundedSender<PushedCommand>,
    /// Calls that arrived while the window was full.
    waiting: VecDeque<(Vec<Bytes>, Reply)>,
    pending: HashMap<u64, Reply>,
    dialing: Option<Dialing>,
    reader: Option<OwnedReadHalf>,
    writer: Option<OwnedWriteHalf>,
    out: Transmit,
    window: usize,
}

impl Driver {
    fn new(
        addr: SocketAddr,
        config: ClientConfig,
        calls: mpsc::Receiver<Call>,
        link: watch::Sender<LinkState>,
        commands: mpsc::UnboundedSender<PushedCommand>,
    ) -> Self {
        let clock = EngineClock::new();
        Self {
            addr,
            machine: ClientConnection::new(config, clock.now()),
            clock,
            calls,
            link,
            commands,
            waiting: VecDeque::new(),
            pending: HashMap::new(),
            dialing: None,
            reader: None,
            writer: None,
            out: Transmit::new(),
            window: config.window,
        }
    }

    async fn run(mut self) {
        let mut callers_gone = false;
        loop {
            self.take_events();
            self.send_waiting();
            let _ = self.machine.poll_transmit_chunks(&mut self.out);
            let flushed = self.out.is_empty() || self.writer.is_none();
            if callers_gone && self.pending.is_empty() && self.waiting.is_empty() && flushed {
                self.machine.close();
                return;
            }
            let deadline = self.clock.deadline(self.machine.poll_timeout());
            let room = self.waiting.len() < self.window;
            let wake = {
                let Driver { dialing, reader, writer, calls, out, machine, .. } = &mut self;
                let has_output = !out.is_empty();
                tokio::select! {
                    dialed = async { dialing.as_mut().expect("guarded").await }, if dialing.is_some() => {
                        Wake::Dialed(dialed)
                    }
                    read = async { reader.as_mut().expect("guarded").read_buf(machine.receive_buffer()).await }, if reader.is_some() => {
                        Wake::Read(read)
                    }
                    wrote = async { write_chunks(writer.as_mut().expect("guarded"), out).await },
                        if writer.is_some() && has_output => Wake::Wrote(wrote),
                    call = calls.recv(), if !callers_gone && room => Wake::Call(call),
                    () = tokio::time::sleep_until(deadline) => Wake::Timer,
                }
            };
            let now = self.clock.now();
            match wake {
                Wake::Dialed(Ok(stream)) if matches!(self.machine.state(), ClientState::Dialing { .. }) => {
                    self.dialing = None;
                    let _ = stream.set_nodelay(true);
                    let (reader, writer) = stream.into_split();
                    (self.reader, self.writer) = (Some(reader), Some(writer));
                    self.machine.handle_connected(now);
                }
                // A dial that finished after the machine gave up on it.
                Wake::Dialed(Ok(_late)) => self.dialing = None,
                Wake::Dialed(Err(e)) => {
                    self.dialing = None;
                    tracing::debug!("dialing {}: {e}", self.addr);
                    self.machine.handle_connect_failed(now);
                }
                Wake::Read(Ok(0) | Err(_)) | Wake::Wrote(Ok(0) | Err(_)) => {
                    self.machine.handle_disconnected(now);
                    // Whatever the machine made of it, this socket is done.
                    (self.reader, self.writer) = (None, None);
                }
                Wake::Read(Ok(_)) => self.machine.handle_received(now),
                Wake::Wrote(Ok(n)) => self.out.advance(n),
                Wake::Call(Some(call)) => self.take_call(call),
                Wake::Call(None) => callers_gone = true,
                Wake::Timer => self.machine.handle_timeout(now),
            }
        }
    }

    fn take_call(&mut self, call: Call) {
        match call {
            Call::Request { parts, reply } => {
                if matches!(*self.link.borrow(), LinkState::Down(_)) {
                    let _ = reply.send(Err(CallError::NotConnected(self.addr)));
                } else {
                    self.waiting.push_back((parts, reply));
                }
            }
            Call::Ack { id, body } => self.machine.ack_command(self.clock.now(), id, &body),
        }
    }

    fn send_waiting(&mut self) {
        while self.machine.can_send() {
            let Some((parts, reply)) = self.waiting.pop_front() else { return };
            match self.machine.send_request_parts(self.clock.now(), &parts) {
                Ok(id) => {
                    self.pending.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(CallError::Malformed(e.to_string())));
                }
            }
        }
    }

    fn take_events(&mut self) {
        while let Some(event) = self.machine.poll_event() {
            match event {
                ClientEvent::Dial => {
                    let addr = self.addr;
                    self.dialing = Some(Box::pin(TcpStream::connect(addr)));
                }
                ClientEvent::Established(welcome) => {
                    let _ = self.link.send(LinkState::Up(welcome));
                }
                ClientEvent::Response { id, body } => {
                    if let Some(reply) = self.pending.remove(&id) {
                        let _ = reply.send(Ok(body));
                    }
                }
                ClientEvent::RequestFailed { id, error } => {
                    if let Some(reply) = self.pending.remove(&id) {
                        let _ = reply.send(Err(match error {
                            RequestError::TimedOut => CallError::TimedOut(self.addr),
                            _ => CallError::Disconnected(self.addr),
                        }));
                    }
                }
                ClientEvent::Command { id, body } => {
                    let _ = self.commands.send(PushedCommand { id, body });
                }
                ClientEvent::Disconnected(reason) => {
                    tracing::debug!("link to {} down: {reason:?}", self.addr);
                    (self.reader, self.writer) = (None, None);
                    self.dialing = None;
                    self.out.clear();
                    for (_, reply) in self.waiting.drain(..) {
                        let _ = reply.send(Err(CallError::Disconnected(self.addr)));
                    }
                    let _ = self.link.send(LinkState::Down(Some(reason)));
                }
            }
        }
    }
}
