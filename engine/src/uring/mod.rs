//! Batch read/write for the SSD tier: a poll-driven machine ([`IoMachine`]), and (with
//! `std`) the [`Driver`] that runs it on io_uring or on a portable thread pool.

mod machine;

#[cfg(feature = "std")]
mod buffers;
#[cfg(feature = "std")]
mod driver;
#[cfg(feature = "std")]
pub(crate) mod eventfd;
#[cfg(feature = "std")]
mod pool;
#[cfg(feature = "std")]
mod prepared;
#[cfg(feature = "io-uring")]
mod ring;

pub use machine::{
    BufId, Completion, Errno, FileId, IoMachine, IoRequest, MachineError, OpEvent, OpId, OpState, Outcome,
    Submission, transition,
};

#[cfg(feature = "std")]
pub use buffers::{AlignedBuf, IO_ALIGN, ResourceError, aligned_zeroed};
#[cfg(feature = "std")]
pub use driver::{
    Driver, DriverChoice, DriverConfig, DriverError, DriverInfo, DriverKind, IO_ENV, leaked_buffers,
};
#[cfg(feature = "std")]
pub use eventfd::Notifier;

#[cfg(test)]
mod tests;
