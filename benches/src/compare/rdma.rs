//! RDMA transfers over the simulated NIC beside memcpy of the same bytes between
//! buffers of the same size: what the work-request machine and the device model cost
//! on top of the copy (there is no RDMA device on these machines).
//!
//! Both sides' buffers are written once before anything is timed, so neither pays for
//! first-touch page faults.

use std::time::Instant;

use larder_engine::rdma::sim::{Faults, LinkConfig, SimLink};
use larder_engine::rdma::transfer::{Opcode, WrConfig};

/// Bytes of each side's buffer; transfers cycle through it.
pub const REGION: usize = 64 << 20;

/// Transfers in flight at a time over the simulated link.
pub const IN_FLIGHT: usize = 64;

fn offset(i: usize, transfer: usize) -> usize {
    (i * transfer) % (REGION - transfer + 1)
}

/// Two faulted-in buffers to copy between.
#[derive(Debug)]
pub struct Memcpy {
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl Memcpy {
    /// Allocates and touches both buffers.
    pub fn new() -> Self {
        Self { src: vec![1; REGION], dst: vec![2; REGION] }
    }

    /// MB/s of copying `size` bytes in `transfer`-byte pieces.
    pub fn run(&mut self, size: u64, transfer: usize) -> f64 {
        let start = Instant::now();
        for i in 0..(size / transfer as u64) as usize {
            let at = offset(i, transfer);
            self.dst[at..at + transfer].copy_from_slice(&self.src[at..at + transfer]);
        }
        std::hint::black_box(&self.dst);
        size as f64 / start.elapsed().as_secs_f64() / 1e6
    }
}

impl Default for Memcpy {
    fn default() -> Self {
        Self::new()
    }
}

/// A simulated link without faults, both regions touched.
#[derive(Debug)]
pub struct Simulated {
    link: SimLink,
}

impl Simulated {
    /// Builds the link (handshake, QPs in RTS) and touches both regions.
    pub fn new() -> Self {
        let mut link = SimLink::new(LinkConfig {
            wr: WrConfig::default(),
            local_len: REGION,
            remote_len: REGION,
            faults: Faults::default(),
            seed: 1,
        });
        for addr in [link.local.addr, link.remote.addr] {
            link.nic.region_bytes_mut(addr).expect("registered").fill(1);
        }
        Self { link }
    }

    /// MB/s of `size` bytes moved as `transfer`-byte RDMA transfers (`opcode`),
    /// [`IN_FLIGHT`] transfers at a time.
    pub fn run(&mut self, opcode: Opcode, size: u64, transfer: usize) -> f64 {
        let pieces = (size / transfer as u64) as usize;
        let start = Instant::now();
        let mut submitted = 0;
        while submitted < pieces {
            let batch = (pieces - submitted).min(IN_FLIGHT);
            for i in submitted..submitted + batch {
                let at = offset(i, transfer) as u64;
                self.link.submit(opcode, at, at, transfer as u64).expect("inside the regions");
            }
            let done = self.link.run();
            assert!(
                done.len() == batch && done.iter().all(|d| d.1.is_ok()),
                "a transfer failed without faults"
            );
            submitted += batch;
        }
        size as f64 / start.elapsed().as_secs_f64() / 1e6
    }
}

impl Default for Simulated {
    fn default() -> Self {
        Self::new()
    }
}
