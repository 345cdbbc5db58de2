//! Connections between Larder processes, as sans-IO machines: frames, the handshake,
//! and the two ends of a connection.
//!
//! - [`frame`]: the 16-byte frame header (magic, kind, flags, body length, request id)
//!   and the [`Deframer`] that cuts a byte stream into frames, checking every length
//!   against a maximum before buffering the body;
//! - [`handshake`]: [`Hello`] / [`Welcome`] / [`Refusal`], bound to the connection;
//! - [`ClientConnection`]: the connecting side (dial with backoff, handshake, a
//!   pipelining window, request timeouts, heartbeats, commands in);
//! - [`ServerConnection`]: the accepting side (handshake checks, requests in, responses
//!   and commands out, heartbeats answered, silent peers dropped);
//! - [`data`]: the data plane's bodies (read and write a range of a node's segment) and
//!   the [`data::Extents`] fence that keeps stale writers out of reused ranges.
//!
//! The machines hold no socket and read no clock: the runtime crates own the sockets
//! and feed bytes and `now` in; what to write comes out of `poll_transmit`. Message
//! bodies are opaque here: the master's requests are [`crate::wire`] messages.

pub mod client;
pub mod data;
pub mod frame;
pub mod handshake;
pub mod server;

pub use client::{ClientConfig, ClientConnection, ClientEvent, ClientState, DisconnectReason, RequestError};
pub use frame::{
    DEFAULT_MAX_FRAME_BODY, Deframer, FRAME_HEADER_LEN, FRAME_PROBE, Frame, FrameError, FrameHeader,
    FrameKind, Transmit,
};
pub use handshake::{
    ClusterName, ClusterNameError, Hello, PROTOCOL_VERSIONS, Refusal, RefusalReason, Role, Welcome,
};
pub use server::{CloseReason, DivertedRequest, ServerConfig, ServerConnection, ServerEvent, ServerState};

#[cfg(test)]
mod tests;
