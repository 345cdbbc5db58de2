//! Larder's embedded store on smol.
//!
//! ```no_run
//! # fn demo() -> Result<(), larder_smol::StoreError> {
//! smol::block_on(async {
//!     let store = larder_smol::open(larder_smol::StoreConfig::from_env()?).await?;
//!     store.put(b"prefix/0", &[7u8; 65536]).await?;
//!     assert_eq!(store.get(b"prefix/0").await?.len(), 65536);
//!     store.close().await
//! })
//! # }
//! ```

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;

use smol::Async;

pub use larder_engine::embedded::{
    Clock, ConfigError, ManualClock, StoreConfig, StoreError, StoreStats, parse_size,
};

/// The store on smol.
pub type Store = larder_engine::embedded::Store<SmolRuntime>;

/// Opens an embedded store on smol's global executor.
pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
    Store::open(SmolRuntime, config).await
}

/// [`larder_engine::embedded::Runtime`] for smol (its global executor and reactor).
#[derive(Debug, Clone, Copy, Default)]
pub struct SmolRuntime;

/// The store's wake-up descriptor registered with smol's reactor.
#[derive(Debug)]
pub struct SmolFdWatch(Async<OwnedFd>);

impl larder_engine::embedded::FdWatch for SmolFdWatch {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.0.readable()
    }
}

impl larder_engine::embedded::Runtime for SmolRuntime {
    type FdWatch = SmolFdWatch;

    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        smol::spawn(task).detach();
    }

    fn unblock<T, W>(&self, work: W) -> impl Future<Output = T> + Send
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        smol::unblock(work)
    }

    async fn sleep(&self, duration: std::time::Duration) {
        smol::Timer::after(duration).await;
    }

    fn watch_fd(&self, fd: OwnedFd) -> io::Result<SmolFdWatch> {
        Async::new(fd).map(SmolFdWatch)
    }
}
