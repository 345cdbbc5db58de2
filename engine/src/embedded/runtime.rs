//! What the store needs from an async runtime.

use core::future::Future;
use std::os::fd::OwnedFd;

/// An async runtime: spawning, blocking work off the executor, timers and descriptor
/// readiness. Implemented by `larder-tokio` and `larder-smol`.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// A registered descriptor whose readability can be awaited.
    type FdWatch: FdWatch;

    /// Runs `task` in the background.
    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static;

    /// Runs blocking `work` on a thread where blocking is allowed and awaits its result.
    fn unblock<T, W>(&self, work: W) -> impl Future<Output = T> + Send
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static;

    /// Completes after `duration`.
    fn sleep(&self, duration: core::time::Duration) -> impl Future<Output = ()> + Send;

    /// Registers `fd` (non-blocking; the watch owns it) for readiness.
    fn watch_fd(&self, fd: OwnedFd) -> std::io::Result<Self::FdWatch>;
}

/// A descriptor registered with a runtime.
pub trait FdWatch: Send + Sync + 'static {
    /// Completes when the descriptor is readable. The caller drains it (an eventfd is
    /// reset) before waiting again.
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send;
}
