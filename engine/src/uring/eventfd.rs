//! The eventfd that tells a runtime "completions may be ready".

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A non-blocking, close-on-exec eventfd.
pub(super) fn new() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor that
    // nothing else owns.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to the counter, making the fd readable.
pub(super) fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to an eventfd we own. A failure (counter
    // saturated) still leaves the fd readable, which is all a waiter needs.
    unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
}

/// Clears the counter (non-blocking; nothing to clear is fine).
pub(super) fn reset(fd: &OwnedFd) {
    let mut value: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live local from a non-blocking eventfd.
    unsafe { libc::read(fd.as_raw_fd(), (&raw mut value).cast(), 8) };
}

/// Blocks until the fd is readable (or a signal interrupts the wait).
pub(super) fn wait_readable(fd: &OwnedFd) -> io::Result<()> {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: polls one live pollfd; -1 waits without a timeout.
    let ret = unsafe { libc::poll(&raw mut pfd, 1, -1) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}
