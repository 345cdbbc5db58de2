//! RDMA queue-pair handling as sans-IO machines: no verbs types, no clock, no syscall.
//!
//! - [`qp`]: QP states, attribute masks, the kernel's RC transition table
//!   ([`qp::check_modify`]) and the [`qp::QueuePair`] machine whose modify requests a
//!   driver executes with `ibv_modify_qp`;
//! - [`endpoint`]: what two nodes exchange over their TCP control connection (GID, LID,
//!   MTU, QP numbers and PSNs, memory regions and rkeys), its bounded codec, and the
//!   [`endpoint::EndpointHandshake`] with its ready round;
//! - [`mr`]: this side's registered memory regions;
//! - [`status`]: work-completion statuses and what each means;
//! - [`transfer`]: the [`transfer::WrMachine`] that slices transfers, posts chains
//!   within the send and completion queues, matches completions and recovers failed
//!   QPs;
//! - `sim` (feature `sim`): a simulated NIC and a two-host link, for tests and
//!   benchmarks where no device exists;
//! - `verbs` (feature `rdma`): the driver over libibverbs (rdma-sys) that executes the
//!   machines' outputs on a real device.

pub mod endpoint;
pub mod mr;
pub mod qp;
#[cfg(feature = "sim")]
pub mod sim;
pub mod status;
pub mod transfer;
#[cfg(feature = "rdma")]
pub mod verbs;

#[cfg(test)]
mod endpoint_tests;
#[cfg(test)]
mod qp_tests;
#[cfg(test)]
mod transfer_tests;
