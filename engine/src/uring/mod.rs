//! Batch read/write for the SSD tier: a poll-driven machine, and (with `std`) drivers
//! that run it on io_uring or on a portable thread pool.

mod machine;

pub use machine::{
    BufId, Completion, Errno, FileId, IoMachine, IoRequest, MachineError, OpEvent, OpId, OpState, Outcome,
    Submission, transition,
};

#[cfg(test)]
mod tests;
