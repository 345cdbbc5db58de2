//! Recycled value buffers (std).
//!
//! A fresh buffer of a megabyte costs a page fault and a page of zeroing per 4 KiB the
//! first time it is written; a recycled one costs nothing. Values of one deployment
//! come in few sizes, so buffers are kept by length: a value's buffer goes back to its
//! pool when the last `Bytes` referring to it is dropped, and the next value of that
//! length takes it. The SSD tier's reader recycles its (aligned) read buffers so, and
//! the embedded store the buffers of its memory replicas.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::vec::Vec;

use bytes::Bytes;

use crate::uring::{AlignedBuf, aligned_zeroed};
use std::sync::Arc;

/// A buffer a [`BufferPool`] can hand out.
pub(crate) trait PoolBuffer: AsRef<[u8]> + Send + Sync + 'static {
    /// A new buffer of `len` zero bytes.
    fn zeroed(len: usize) -> Self;
    /// Its length.
    fn len(&self) -> usize;
}

impl PoolBuffer for AlignedBuf {
    fn zeroed(len: usize) -> Self {
        aligned_zeroed(len)
    }
    fn len(&self) -> usize {
        self.as_slice().len()
    }
}

impl PoolBuffer for Vec<u8> {
    fn zeroed(len: usize) -> Self {
        std::vec![0u8; len]
    }
    fn len(&self) -> usize {
        self.as_slice().len()
    }
}

/// Idle buffers by length, at most `limit` bytes of them.
#[derive(Debug)]
pub(crate) struct BufferPool<B> {
    free: Mutex<(HashMap<usize, Vec<B>>, usize)>,
    limit: usize,
}

impl<B: PoolBuffer> BufferPool<B> {
    /// A pool keeping at most `limit` bytes of idle buffers.
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { free: Mutex::new((HashMap::new(), 0)), limit })
    }

    /// A buffer of exactly `len` bytes. A recycled buffer holds an earlier value's
    /// bytes: the caller overwrites what it exposes.
    pub(crate) fn take(&self, len: usize) -> B {
        let mut guard = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let (free, bytes) = &mut *guard;
        match free.get_mut(&len).and_then(Vec::pop) {
            Some(buf) => {
                *bytes -= len;
                buf
            }
            None => B::zeroed(len),
        }
    }

    /// Keeps `buf` for reuse, if the pool has room.
    pub(crate) fn give_back(&self, buf: B) {
        let mut guard = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let (free, bytes) = &mut *guard;
        if *bytes + buf.len() <= self.limit {
            *bytes += buf.len();
            free.entry(buf.len()).or_default().push(buf);
        }
    }

    /// `buf`'s first `len` bytes as `Bytes`; the buffer comes back to the pool when the
    /// last of them is dropped.
    pub(crate) fn share(self: &Arc<Self>, buf: B, len: usize) -> Bytes {
        debug_assert!(len <= buf.len());
        Bytes::from_owner(Pooled { buf: Some(buf), len, pool: Arc::clone(self) })
    }
}

/// A pooled buffer exposed as its first `len` bytes only.
struct Pooled<B: PoolBuffer> {
    buf: Option<B>,
    len: usize,
    pool: Arc<BufferPool<B>>,
}

impl<B: PoolBuffer> AsRef<[u8]> for Pooled<B> {
    fn as_ref(&self) -> &[u8] {
        &self.buf.as_ref().expect("present until dropped").as_ref()[..self.len]
    }
}

impl<B: PoolBuffer> Drop for Pooled<B> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(buf);
        }
    }
}

#[cfg(all(test, not(larder_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_value_gives_its_buffer_to_the_next_value_of_its_length() {
        let pool = BufferPool::<Vec<u8>>::new(1 << 20);
        let mut buf = pool.take(4096);
        buf[0] = 7;
        let at = buf.as_ptr();
        let value = pool.share(buf, 100);
        assert_eq!((value.len(), value[0]), (100, 7));
        let clone = value.clone();
        drop(value);
        let fresh = pool.take(4096);
        assert_ne!(fresh.as_ptr(), at, "still in use by a clone: not recycled");
        drop(clone);
        let recycled = pool.take(4096);
        assert_eq!(recycled.as_ptr(), at, "recycled once the last clone went");
        drop(fresh);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_limit() {
        let pool = BufferPool::<Vec<u8>>::new(8192);
        for _ in 0..3 {
            pool.give_back(pool.take(4096));
        }
        let idle = |pool: &BufferPool<Vec<u8>>| pool.free.lock().unwrap().1;
        assert_eq!(idle(&pool), 4096, "the buffer taken back is reused, not added");
        let bufs: Vec<Vec<u8>> = (0..3).map(|_| pool.take(4096)).collect();
        for b in bufs {
            pool.give_back(b);
        }
        assert_eq!(idle(&pool), 8192, "two of three kept");
    }
}
