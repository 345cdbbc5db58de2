//! Larder on tokio: the embedded store, and the distributed mode ([`cluster`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), larder_tokio::StoreError> {
//! let store = larder_tokio::open(larder_tokio::StoreConfig::from_env()?).await?;
//! store.put(b"prefix/0", &[7u8; 65536]).await?;
//! assert_eq!(store.get(b"prefix/0").await?.len(), 65536);
//! store.close().await
//! # }
//! ```

pub mod cluster;

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;

pub use larder_engine::embedded::{
    Clock, ConfigError, ManualClock, StoreConfig, StoreError, StoreStats, parse_size,
};

mod store;

pub use store::{EmbeddedStore, Store};

/// Opens the store `config` describes on the current tokio runtime (which needs its
/// time and I/O drivers: `enable_all`): the embedded store, or with
/// [`StoreConfig::master`] a member of that cluster.
pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
    Store::open(config).await
}

/// Opens the embedded store (a configured master is refused) on the current tokio
/// runtime.
pub async fn open_embedded(config: StoreConfig) -> Result<EmbeddedStore, StoreError> {
    EmbeddedStore::open(TokioRuntime::current(), config).await
}

/// [`larder_engine::embedded::Runtime`] for tokio.
#[derive(Debug, Clone)]
pub struct TokioRuntime {
    handle: Handle,
}

impl TokioRuntime {
    /// The runtime the caller runs on. Panics outside a tokio runtime.
    pub fn current() -> Self {
        Self { handle: Handle::current() }
    }
}

/// The store's wake-up descriptor registered with tokio's reactor.
#[derive(Debug)]
pub struct TokioFdWatch(AsyncFd<OwnedFd>);

impl larder_engine::embedded::FdWatch for TokioFdWatch {
    async fn readable(&self) -> io::Result<()> {
        let mut guard = self.0.readable().await?;
        // The owner drains the eventfd; forget the cached readiness so that the next
        // wait sees the next signal.
        guard.clear_ready();
        Ok(())
    }
}

impl larder_engine::embedded::Runtime for TokioRuntime {
    type FdWatch = TokioFdWatch;

    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(task));
    }

    fn unblock<T, W>(&self, work: W) -> impl Future<Output = T> + Send
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let task = self.handle.spawn_blocking(work);
        async move {
            match task.await {
                Ok(out) => out,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
    }

    fn sleep(&self, duration: std::time::Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    fn watch_fd(&self, fd: OwnedFd) -> io::Result<TokioFdWatch> {
        let _entered = self.handle.enter();
        // SAFETY: an `OwnedFd` is a valid open descriptor that only closes when dropped,
        // and the `AsyncFd` owns it: it stays open, and the same descriptor, for the
        // registration's whole life.
        let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
        registered.map(TokioFdWatch).map_err(io::Error::from)
    }
}
