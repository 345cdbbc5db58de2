//! An operation resolved to raw descriptors and addresses, ready for a backend.
// Registered indexes are only read by the io_uring backend.
#![cfg_attr(not(feature = "io-uring"), allow(dead_code))]

use std::os::fd::RawFd;

/// Where the file is: a raw descriptor, and its registered index if it has one.
#[derive(Debug, Clone, Copy)]
pub(super) struct FileTarget {
    pub(super) fd: RawFd,
    pub(super) fixed: Option<u32>,
}

/// One operation with everything a backend needs and nothing it must look up.
#[derive(Debug, Clone, Copy)]
pub(super) enum PreparedOp {
    Read { file: FileTarget, ptr: *mut u8, len: u32, offset: u64, fixed_buf: Option<u16> },
    Write { file: FileTarget, ptr: *const u8, len: u32, offset: u64, fixed_buf: Option<u16> },
    Sync { file: FileTarget, data_only: bool },
}

/// A prepared operation and the tag its completion carries.
#[derive(Debug, Clone, Copy)]
pub(super) struct Prepared {
    pub(super) user_data: u64,
    pub(super) op: PreparedOp,
}

// SAFETY: the raw pointers in a `Prepared` address buffers owned by the driver's buffer
// table, marked busy from before the operation is handed to a worker until after its
// completion is taken back, so no other code frees, moves or borrows them meanwhile;
// sending the pointer to a worker thread is therefore sound.
unsafe impl Send for Prepared {}
