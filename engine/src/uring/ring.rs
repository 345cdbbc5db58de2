//! The io_uring backend: one ring, its eventfd, registered files and buffers when the
//! kernel (and `RLIMIT_MEMLOCK`) allow them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use io_uring::{IoUring, Probe, opcode, squeue, types};

use super::prepared::{FileTarget, Prepared, PreparedOp};

/// Slots in the registered-file table.
pub(super) const FIXED_FILES: u32 = 1024;
/// Slots in the registered-buffer table.
pub(super) const FIXED_BUFFERS: u32 = 256;

/// What the ring could set up beyond the basics.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RingCaps {
    pub(super) fixed_files: bool,
    pub(super) fixed_buffers: bool,
}

/// The io_uring backend.
pub(super) struct Ring {
    ring: IoUring,
    caps: RingCaps,
}

impl core::fmt::Debug for Ring {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ring")
            .field("entries", &self.ring.params().sq_entries())
            .field("caps", &self.caps)
            .finish()
    }
}

impl Ring {
    /// Sets up a ring of at least `entries` submission slots. Fails (and the caller
    /// falls back) if io_uring is unavailable or lacks read, write or fsync.
    pub(super) fn new(entries: u32, wake: &OwnedFd) -> io::Result<Self> {
        let ring = IoUring::builder().build(entries.next_power_of_two().max(8))?;
        let submitter = ring.submitter();
        let mut probe = Probe::new();
        submitter.register_probe(&mut probe)?;
        for (code, name) in
            [(opcode::Read::CODE, "read"), (opcode::Write::CODE, "write"), (opcode::Fsync::CODE, "fsync")]
        {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    std::format!("io_uring lacks {name}"),
                ));
            }
        }
        submitter.register_eventfd(wake.as_raw_fd())?;
        let fixed_files = submitter.register_files_sparse(FIXED_FILES).is_ok();
        let fixed_buffers = probe.is_supported(opcode::ReadFixed::CODE)
            && probe.is_supported(opcode::WriteFixed::CODE)
            && submitter.register_buffers_sparse(FIXED_BUFFERS).is_ok();
        Ok(Self { ring, caps: RingCaps { fixed_files, fixed_buffers } })
    }

    pub(super) fn caps(&self) -> RingCaps {
        self.caps
    }

    /// Puts `fd` in registered-file slot `slot`; false if it cannot be registered.
    pub(super) fn register_file(&mut self, slot: u32, fd: i32) -> bool {
        self.caps.fixed_files
            && slot < FIXED_FILES
            && self.ring.submitter().register_files_update(slot, &[fd]).is_ok()
    }

    /// Empties registered-file slot `slot`.
    pub(super) fn unregister_file(&mut self, slot: u32) {
        let _ = self.ring.submitter().register_files_update(slot, &[-1]);
    }

    /// Registers `len` bytes at `ptr` as fixed buffer `slot`. Registration pins the
    /// memory against `RLIMIT_MEMLOCK`; ENOMEM (over the limit) is expected and means
    /// the buffer is used unregistered.
    ///
    /// # Safety
    ///
    /// The memory must stay allocated until [`Ring::unregister_buffer`] is called for
    /// the slot or the ring is dropped.
    pub(super) unsafe fn register_buffer(&mut self, slot: u32, ptr: *mut u8, len: usize) -> io::Result<()> {
        if !self.caps.fixed_buffers || slot >= FIXED_BUFFERS {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let iov = libc::iovec { iov_base: ptr.cast(), iov_len: len };
        // SAFETY: the caller keeps the memory alive while it is registered.
        unsafe { self.ring.submitter().register_buffers_update(slot, &[iov], None) }
    }

    /// Empties registered-buffer slot `slot`.
    pub(super) fn unregister_buffer(&mut self, slot: u32) {
        let iov = libc::iovec { iov_base: core::ptr::null_mut(), iov_len: 0 };
        // SAFETY: an empty iovec registers no memory; it clears the slot.
        let _ = unsafe { self.ring.submitter().register_buffers_update(slot, &[iov], None) };
    }

    pub(super) fn is_full(&mut self) -> bool {
        self.ring.submission().is_full()
    }

    /// Queues one operation. The caller checked [`Ring::is_full`].
    pub(super) fn push(&mut self, p: &Prepared) {
        let entry = sqe(p);
        // SAFETY: the entry's buffer and file stay valid until its completion is taken
        // back: the driver keeps them busy (neither freed nor reused) until then.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        debug_assert!(pushed.is_ok(), "push after is_full() returned false");
    }

    /// Hands queued entries to the kernel.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            // The completion queue is full: entries stay queued until it is drained.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.kind() == io::ErrorKind::Interrupted => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn drain(&mut self, mut on_completion: impl FnMut(u64, i32)) -> usize {
        let mut n = 0;
        for cqe in self.ring.completion() {
            on_completion(cqe.user_data(), cqe.result());
            n += 1;
        }
        n
    }

    /// Submits what is queued and blocks until at least one completion is available.
    pub(super) fn wait(&mut self) -> io::Result<()> {
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) || e.kind() == io::ErrorKind::Interrupted => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Builds an entry against the registered file slot when there is one, else the fd.
macro_rules! with_file {
    ($file:expr, |$fd:ident| $build:expr) => {{
        let target: FileTarget = $file;
        match target.fixed {
            Some(slot) => {
                let $fd = types::Fixed(slot);
                $build
            }
            None => {
                let $fd = types::Fd(target.fd);
                $build
            }
        }
    }};
}

fn sqe(p: &Prepared) -> squeue::Entry {
    let entry = match p.op {
        PreparedOp::Read { file, ptr, len, offset, fixed_buf: Some(index) } => {
            with_file!(file, |fd| opcode::ReadFixed::new(fd, ptr, len, index).offset(offset).build())
        }
        PreparedOp::Read { file, ptr, len, offset, fixed_buf: None } => {
            with_file!(file, |fd| opcode::Read::new(fd, ptr, len).offset(offset).build())
        }
        PreparedOp::Write { file, ptr, len, offset, fixed_buf: Some(index) } => {
            with_file!(file, |fd| opcode::WriteFixed::new(fd, ptr, len, index).offset(offset).build())
        }
        PreparedOp::Write { file, ptr, len, offset, fixed_buf: None } => {
            with_file!(file, |fd| opcode::Write::new(fd, ptr, len).offset(offset).build())
        }
        PreparedOp::Sync { file, data_only } => {
            let flags = if data_only { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
            with_file!(file, |fd| opcode::Fsync::new(fd).flags(flags).build())
        }
    };
    entry.user_data(p.user_data)
}
