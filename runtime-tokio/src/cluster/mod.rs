//! The distributed mode's socket loops on tokio: the master's TCP server (one actor
//! owning the engine's master) and the client connection every node and application
//! uses to reach it. The protocol logic is the engine's ([`larder_engine::net`]); this
//! module only owns sockets, tasks and timers.

pub mod client;
mod clock;
mod connection;
pub mod master;
mod metrics;

pub use client::{CallError, Client, LinkState, PushedCommand};
pub use master::{MasterServer, MasterServerConfig};
