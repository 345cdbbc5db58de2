//! The distributed mode's socket loops on tokio: the master's TCP server (one actor
//! owning the engine's master), the node that contributes and serves a memory segment,
//! the client connection every node and application uses, and a client of the whole
//! cluster ([`RemoteStore`]). The protocol logic is the engine's ([`larder_engine::net`]); this
//! module only owns sockets, tasks and timers.

pub mod client;
mod clock;
mod connection;
pub mod master;
pub mod member;
mod metrics;
pub mod node;
mod rdma;
pub mod remote;

pub use client::{CallError, Client, LinkState, PushedCommand};
pub use master::{MasterServer, MasterServerConfig};
pub use member::Member;
pub use node::{LocalSegment, NodeServer, NodeServerConfig, SegmentWrite, TierSettings};
pub use rdma::SimFabric;
pub use remote::{RemoteError, RemoteStats, RemoteStore};
