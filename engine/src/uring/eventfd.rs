//! The eventfd that tells a runtime "completions may be ready".

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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
    wait_any(&[fd.as_raw_fd()], None)
}

/// Blocks until one of `fds` is readable, a signal interrupts the wait, or `timeout`
/// passes.
pub(crate) fn wait_any(fds: &[RawFd], timeout: Option<std::time::Duration>) -> io::Result<()> {
    let mut pfds: std::vec::Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let timeout_ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    // SAFETY: polls `pfds.len()` live pollfds owned by this function.
    let ret = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// An eventfd one thread signals to wake another that polls it.
/// A wake-up signal a thread or an async runtime can wait on: an eventfd that
/// [`Notifier::notify`] makes readable and [`Notifier::reset`] drains.
#[derive(Debug)]
pub struct Notifier(OwnedFd);

impl Notifier {
    /// A new, unsignalled notifier.
    pub fn new() -> io::Result<Self> {
        new().map(Notifier)
    }

    /// Makes the descriptor readable (wakes whoever waits on it).
    pub fn notify(&self) {
        signal(&self.0);
    }

    /// Drains the signal: call before checking for work, then wait.
    pub fn reset(&self) {
        reset(&self.0);
    }

    /// A duplicate of the descriptor (same eventfd), for a runtime to register and own.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.0.try_clone()
    }

    /// The descriptor to wait on (non-blocking, readable while signalled).
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
