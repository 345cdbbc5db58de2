//! The blocking store both foreign faces call: the C ABI ([`crate::capi`]) and the
//! Python extension (`ffi/python`). It owns a tokio runtime and a [`Store`] (embedded,
//! or a member of a cluster), and runs every call to its end on that runtime, so a call
//! never returns while the store (or the kernel, for a read from SSD) still holds a
//! caller's buffer.
//!
//! It also keeps the caller's registered buffers: regions of the caller's memory it
//! promises to keep alive until it unregisters them. The store itself copies from and
//! into any slice; the registry is what lets a face that is handed bare addresses (the
//! Mooncake face's `put_from(key, ptr, size)`) refuse an address outside every region
//! instead of dereferencing it.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard};

use std::path::PathBuf;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use larder_engine::disk::TierError;
use larder_tokio::{Store, StoreConfig, StoreError, StoreStats};

/// A [`Store`] behind blocking calls.
#[derive(Debug)]
pub struct BlockingStore {
    // Dropped after `store` (fields drop in order): the store's background tasks and
    // their last I/O run on this runtime.
    store: Store,
    runtime: tokio::runtime::Runtime,
    buffers: RwLock<BufferRegistry>,
}

/// Why a buffer could not be registered or unregistered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationError {
    /// A region at address 0, of no bytes, larger than `isize::MAX`, or one that wraps
    /// around the address space.
    #[error("a registered buffer is a non-null address and 1 to isize::MAX bytes that do not wrap around")]
    Invalid,
    /// The region overlaps one already registered.
    #[error("the buffer overlaps one already registered")]
    Overlaps,
    /// No region registered starts at this address.
    #[error("no buffer is registered at this address")]
    NotRegistered,
}

/// Registered regions of the caller's memory, `start -> len`, never overlapping.
#[derive(Debug, Default)]
struct BufferRegistry {
    regions: BTreeMap<usize, usize>,
}

impl BufferRegistry {
    fn register(&mut self, start: usize, len: usize) -> Result<(), RegistrationError> {
        // Address 0 is never memory, and no Rust slice may exceed `isize::MAX` bytes.
        let valid = start != 0 && len > 0 && len <= isize::MAX as usize;
        let end = start.checked_add(len).filter(|_| valid).ok_or(RegistrationError::Invalid)?;
        let before = self.regions.range(..end).next_back();
        if before.is_some_and(|(&s, &l)| s + l > start) {
            return Err(RegistrationError::Overlaps);
        }
        self.regions.insert(start, len);
        Ok(())
    }

    fn unregister(&mut self, start: usize) -> Result<(), RegistrationError> {
        self.regions.remove(&start).map(drop).ok_or(RegistrationError::NotRegistered)
    }

    /// Whether `[start, start + len)` lies inside one registered region.
    fn contains(&self, start: usize, len: usize) -> bool {
        let Some(end) = start.checked_add(len) else { return false };
        self.regions.range(..=start).next_back().is_some_and(|(&s, &l)| end <= s + l)
    }
}

/// The registered buffers, read: while it is held, none can be unregistered, so a
/// range found inside one stays there.
#[derive(Debug)]
pub struct RegisteredBuffers<'a> {
    registry: RwLockReadGuard<'a, BufferRegistry>,
}

impl RegisteredBuffers<'_> {
    /// Whether `[start, start + len)` lies inside one registered region.
    pub fn contains(&self, start: usize, len: usize) -> bool {
        self.registry.contains(start, len)
    }
}

impl BlockingStore {
    /// Starts a runtime and opens the store `config` describes on it.
    ///
    /// Errors: as [`Store::open`]; `Storage` (an I/O error) if the runtime's threads
    /// cannot start.
    pub fn open(config: StoreConfig) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("larder")
            .enable_all()
            .build()
            .map_err(|source| {
                let op = "starting the store's runtime threads";
                StoreError::Storage(TierError::Io { op, path: PathBuf::new(), source })
            })?;
        let store = runtime.block_on(Store::open(config))?;
        Ok(Self { store, runtime, buffers: RwLock::default() })
    }

    /// Runs `call` to its end on the store's runtime. Most calls on the embedded store
    /// finish without waiting (a put into memory, a get from memory), so the future is
    /// polled once in the runtime's context first and the runtime's `block_on` (which
    /// parks this thread on a waker) is used only if it has to wait; a future polled
    /// with one waker and then another is what the `Future` contract allows.
    fn run<F: Future>(&self, call: F) -> F::Output {
        let _context = self.runtime.enter();
        let mut call = std::pin::pin!(call);
        if let Poll::Ready(out) = call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            return out;
        }
        self.runtime.block_on(call)
    }

    /// See [`Store::put`].
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.run(self.store.put(key, value))
    }

    /// See [`Store::put_parts`].
    pub fn put_parts(&self, key: &[u8], parts: &[&[u8]]) -> Result<(), StoreError> {
        self.run(self.store.put_parts(key, parts))
    }

    /// See [`Store::get`].
    pub fn get(&self, key: &[u8]) -> Result<Bytes, StoreError> {
        self.run(self.store.get(key))
    }

    /// See [`Store::get_into`].
    pub fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<usize, StoreError> {
        self.run(self.store.get_into(key, buf))
    }

    /// See [`Store::get_size`].
    pub fn get_size(&self, key: &[u8]) -> Result<u64, StoreError> {
        self.run(self.store.get_size(key))
    }

    /// See [`Store::exists`].
    pub fn exists(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.run(self.store.exists(key))
    }

    /// See [`Store::remove`].
    pub fn remove(&self, key: &[u8], force: bool) -> Result<(), StoreError> {
        self.run(self.store.remove(key, force))
    }

    /// See [`Store::remove_all`].
    pub fn remove_all(&self, force: bool) -> Result<u64, StoreError> {
        self.run(self.store.remove_all(force))
    }

    /// See [`Store::batch_put`].
    pub fn batch_put(&self, items: &[(&[u8], &[u8])]) -> Vec<Result<(), StoreError>> {
        self.run(self.store.batch_put(items))
    }

    /// See [`Store::batch_get`].
    pub fn batch_get(&self, keys: &[&[u8]]) -> Vec<Result<Bytes, StoreError>> {
        self.run(self.store.batch_get(keys))
    }

    /// See [`Store::batch_get_into`].
    pub fn batch_get_into(&self, keys: &[&[u8]], bufs: &mut [&mut [u8]]) -> Vec<Result<usize, StoreError>> {
        self.run(self.store.batch_get_into(keys, bufs))
    }

    /// See [`Store::batch_exists`].
    pub fn batch_exists(&self, keys: &[&[u8]]) -> Vec<Result<bool, StoreError>> {
        self.run(self.store.batch_exists(keys))
    }

    /// See [`Store::batch_remove`].
    pub fn batch_remove(&self, keys: &[&[u8]], force: bool) -> Vec<Result<(), StoreError>> {
        self.run(self.store.batch_remove(keys, force))
    }

    /// See [`Store::flush`].
    pub fn flush(&self) -> Result<(), StoreError> {
        self.run(self.store.flush())
    }

    /// See [`Store::close`]: flushes and releases everything; later calls are `Closed`.
    pub fn close(&self) -> Result<(), StoreError> {
        self.run(self.store.close())
    }

    /// See [`Store::stats`].
    pub fn stats(&self) -> StoreStats {
        self.store.stats()
    }

    /// Whether this is a member of a cluster (a master was configured).
    pub fn is_member(&self) -> bool {
        self.store.is_member()
    }

    /// Registers `[start, start + len)` of the caller's memory, which the caller keeps
    /// alive and does not move until it unregisters it.
    pub fn register_buffer(&self, start: usize, len: usize) -> Result<(), RegistrationError> {
        self.buffers.write().unwrap_or_else(|e| e.into_inner()).register(start, len)
    }

    /// Forgets the region registered at `start`; waits for calls using it to end (so
    /// call it, and `register_buffer`, where waiting blocks nothing those calls need:
    /// the Python face releases the GIL first).
    pub fn unregister_buffer(&self, start: usize) -> Result<(), RegistrationError> {
        self.buffers.write().unwrap_or_else(|e| e.into_inner()).unregister(start)
    }

    /// The registered buffers, to check ranges against while the answer is held.
    pub fn registered_buffers(&self) -> RegisteredBuffers<'_> {
        RegisteredBuffers { registry: self.buffers.read().unwrap_or_else(|e| e.into_inner()) }
    }
}

impl Drop for BlockingStore {
    /// Closes the store if the caller did not: what was acknowledged is flushed first.
    fn drop(&mut self) {
        match self.close() {
            Ok(()) | Err(StoreError::Closed) => {}
            Err(e) => eprintln!("larder: closing the store on drop: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_registered_only_inside_one_region() {
        let mut r = BufferRegistry::default();
        r.register(1000, 100).unwrap();
        r.register(1100, 50).unwrap();
        assert!(r.contains(1000, 100));
        assert!(r.contains(1010, 10));
        assert!(r.contains(1100, 50));
        assert!(!r.contains(1090, 20), "a range across two regions is not inside one");
        assert!(!r.contains(999, 2));
        assert!(!r.contains(1140, 11));
        assert!(!r.contains(usize::MAX - 1, 5));
        assert!(r.contains(1000, 0));
        assert!(!r.contains(2000, 0));
    }

    #[test]
    fn overlapping_empty_and_wrapping_regions_are_refused() {
        let mut r = BufferRegistry::default();
        r.register(1000, 100).unwrap();
        assert_eq!(r.register(1050, 100), Err(RegistrationError::Overlaps));
        assert_eq!(r.register(950, 51), Err(RegistrationError::Overlaps));
        assert_eq!(r.register(900, 300), Err(RegistrationError::Overlaps));
        assert_eq!(r.register(2000, 0), Err(RegistrationError::Invalid));
        assert_eq!(r.register(usize::MAX - 10, 20), Err(RegistrationError::Invalid));
        assert_eq!(r.register(0, 4096), Err(RegistrationError::Invalid), "address 0 is never memory");
        assert_eq!(r.register(4096, isize::MAX as usize + 1), Err(RegistrationError::Invalid));
        r.register(900, 100).unwrap();
        assert_eq!(r.unregister(1001), Err(RegistrationError::NotRegistered));
        r.unregister(1000).unwrap();
        assert!(!r.contains(1000, 1));
        assert!(r.contains(900, 100));
    }
}
