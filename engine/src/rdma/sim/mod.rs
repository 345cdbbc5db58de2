//! The simulated NIC ([`SimNic`]) and a two-host link over it ([`SimLink`]) (feature
//! `sim`): where no RDMA device exists, the QP, endpoint and work-request machines are
//! tested and measured against these.

mod link;
mod nic;

pub use link::{LinkConfig, LinkStats, SimLink};
pub use nic::{CqId, EINVAL, EIO, ENOMEM, Faults, HostId, NicStats, RNR_FOREVER_CAP, SimNic};
