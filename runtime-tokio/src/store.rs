//! The store an application opens: the embedded store, or with `StoreConfig::master` a
//! member of that cluster ([`Member`]), behind one API.

use bytes::Bytes;
use larder_engine::embedded::{StoreConfig, StoreError, StoreStats};

use crate::TokioRuntime;
use crate::cluster::Member;

/// The embedded store on tokio (master and node in this process).
pub type EmbeddedStore = larder_engine::embedded::Store<TokioRuntime>;

/// A store: embedded (no `master` configured, the default) or a member of a cluster.
/// Every call means the same in both; see [`larder_engine::embedded::Store`] for the
/// embedded store's and [`Member`] for a member's.
#[derive(Debug)]
pub struct Store(Backend);

#[derive(Debug)]
enum Backend {
    Embedded(EmbeddedStore),
    // Boxed: a member's connections and locks are ten times an embedded store's handle.
    Member(Box<Member>),
}

/// Runs the same call on whichever store this is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match &$self.0 {
            Backend::Embedded($s) => $call,
            Backend::Member($s) => $call,
        }
    };
}

impl Store {
    /// Opens the store `config` describes on the current tokio runtime (which needs its
    /// time and I/O drivers: `enable_all`).
    ///
    /// Errors: as [`larder_engine::embedded::Store::open`], or [`Member::open`] with a
    /// master.
    pub async fn open(config: StoreConfig) -> Result<Self, StoreError> {
        match config.master {
            Some(_) => Ok(Self(Backend::Member(Box::new(Member::open(&config).await?)))),
            None => Ok(Self(Backend::Embedded(EmbeddedStore::open(TokioRuntime::current(), config).await?))),
        }
    }

    /// Whether this is a member of a cluster (a master was configured).
    pub fn is_member(&self) -> bool {
        matches!(self.0, Backend::Member(_))
    }

    /// Stores `value` under `key`; returns once the value is in memory.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        each!(self, s => s.put(key, value).await)
    }

    /// Stores the concatenation of `parts` under `key`.
    pub async fn put_parts(&self, key: &[u8], parts: &[&[u8]]) -> Result<(), StoreError> {
        each!(self, s => s.put_parts(key, parts).await)
    }

    /// The value under `key`.
    pub async fn get(&self, key: &[u8]) -> Result<Bytes, StoreError> {
        each!(self, s => s.get(key).await)
    }

    /// Copies the value under `key` into `buf`; returns its length.
    pub async fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<usize, StoreError> {
        each!(self, s => s.get_into(key, buf).await)
    }

    /// The size of the value under `key`.
    pub async fn get_size(&self, key: &[u8]) -> Result<u64, StoreError> {
        each!(self, s => s.get_size(key).await)
    }

    /// Whether `key` holds a complete object.
    pub async fn exists(&self, key: &[u8]) -> Result<bool, StoreError> {
        each!(self, s => s.exists(key).await)
    }

    /// Removes the object under `key` (`force`: even while a reader holds a lease).
    pub async fn remove(&self, key: &[u8], force: bool) -> Result<(), StoreError> {
        each!(self, s => s.remove(key, force).await)
    }

    /// Removes every object (`force`: leased ones too); returns how many went.
    pub async fn remove_all(&self, force: bool) -> Result<u64, StoreError> {
        each!(self, s => s.remove_all(force).await)
    }

    /// [`Store::put`] for each item; one result per item.
    pub async fn batch_put(&self, items: &[(&[u8], &[u8])]) -> Vec<Result<(), StoreError>> {
        match &self.0 {
            Backend::Embedded(s) => s.batch_put(items).await,
            Backend::Member(s) => {
                let mut out = Vec::with_capacity(items.len());
                for (key, value) in items {
                    out.push(s.put(key, value).await);
                }
                out
            }
        }
    }

    /// [`Store::get`] for each key; one result per key.
    pub async fn batch_get(&self, keys: &[&[u8]]) -> Vec<Result<Bytes, StoreError>> {
        match &self.0 {
            Backend::Embedded(s) => s.batch_get(keys).await,
            Backend::Member(s) => {
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    out.push(s.get(key).await);
                }
                out
            }
        }
    }

    /// [`Store::get_into`] for each key and its buffer; one result per key (all
    /// `BatchLength` if the counts differ).
    pub async fn batch_get_into(
        &self,
        keys: &[&[u8]],
        bufs: &mut [&mut [u8]],
    ) -> Vec<Result<usize, StoreError>> {
        match &self.0 {
            Backend::Embedded(s) => s.batch_get_into(keys, bufs).await,
            Backend::Member(s) => {
                if keys.len() != bufs.len() {
                    let (keys, buffers) = (keys.len(), bufs.len());
                    return (0..keys).map(|_| Err(StoreError::BatchLength { keys, buffers })).collect();
                }
                let mut out = Vec::with_capacity(keys.len());
                for (key, buf) in keys.iter().zip(bufs.iter_mut()) {
                    out.push(s.get_into(key, buf).await);
                }
                out
            }
        }
    }

    /// [`Store::exists`] for each key.
    pub async fn batch_exists(&self, keys: &[&[u8]]) -> Vec<Result<bool, StoreError>> {
        match &self.0 {
            Backend::Embedded(s) => s.batch_exists(keys).await,
            Backend::Member(s) => {
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    out.push(s.exists(key).await);
                }
                out
            }
        }
    }

    /// [`Store::remove`] for each key.
    pub async fn batch_remove(&self, keys: &[&[u8]], force: bool) -> Vec<Result<(), StoreError>> {
        match &self.0 {
            Backend::Embedded(s) => s.batch_remove(keys, force).await,
            Backend::Member(s) => {
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    out.push(s.remove(key, force).await);
                }
                out
            }
        }
    }

    /// Waits until everything acknowledged before the call is durable on SSD.
    pub async fn flush(&self) -> Result<(), StoreError> {
        each!(self, s => s.flush().await)
    }

    /// Flushes and releases everything; every later call fails with `Closed`.
    pub async fn close(&self) -> Result<(), StoreError> {
        each!(self, s => s.close().await)
    }

    /// Counters and gauges (a member's are its own; see [`Member::stats`]).
    pub fn stats(&self) -> StoreStats {
        each!(self, s => s.stats())
    }
}
