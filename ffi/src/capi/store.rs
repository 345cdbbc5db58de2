//! `larder_store`: opening, the data calls, batches, buffer registration, statistics.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use larder_tokio::StoreError;

use super::config::larder_config;
use super::error::{boundary, fail, larder_result, larder_result::*, store_failure};
use super::{borrow, borrow_array, borrow_array_mut, borrow_mut, larder_mut_slice, larder_slice};
use crate::facade::BlockingStore;

/// An open store. Share it between threads freely; free it with `larder_store_free`.
#[derive(Debug)]
pub struct larder_store {
    store: BlockingStore,
    /// A call panicked: the store's state is unknown, so every later call refuses.
    poisoned: AtomicBool,
}

/// The store's counters and gauges (`larder_store_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct larder_stats {
    /// Objects in the store (in memory, on disk or both).
    pub objects: u64,
    /// Bytes of the memory segment.
    pub memory_capacity: u64,
    /// Bytes of the segment in use.
    pub memory_used: u64,
    /// Gets served from memory.
    pub memory_hits: u64,
    /// Gets served from the SSD tier.
    pub disk_hits: u64,
    /// Objects whose memory replica was evicted while a disk copy kept them.
    pub evicted_to_disk: u64,
    /// Objects evicted with no disk copy.
    pub evicted_dropped: u64,
    /// Objects written to SSD.
    pub persisted: u64,
    /// Persists that failed (and are retried).
    pub persist_failures: u64,
    /// Objects recovered from the storage root at open.
    pub recovered: u64,
    /// Bytes of published buckets on SSD (0 without persistence).
    pub disk_bytes: u64,
    /// Disk reads whose value failed its checksum.
    pub crc_failures: u64,
}

/// Runs `call` on the store at `store` behind the panic boundary; a panic poisons it.
///
/// # Safety
/// A non-null `store` came from `larder_store_open` and is not freed during the call.
unsafe fn with_store(
    store: *const larder_store,
    call: impl FnOnce(&BlockingStore) -> larder_result,
) -> larder_result {
    boundary(|| {
        // SAFETY: a live store (the caller's promise); shared use is what it is for.
        let Some(handle) = (unsafe { store.as_ref() }) else { return LARDER_NULL_PARAMETER };
        if handle.poisoned.load(Ordering::Acquire) {
            return fail(LARDER_PANIC, "an earlier call on this store panicked");
        }
        match catch_unwind(AssertUnwindSafe(|| call(&handle.store))) {
            Ok(r) => r,
            Err(_) => {
                handle.poisoned.store(true, Ordering::Release);
                fail(LARDER_PANIC, "the call panicked; the store is poisoned")
            }
        }
    })
}

/// `Ok` as `LARDER_OK`, an error as its code (and message).
fn code<T>(r: &Result<T, StoreError>) -> larder_result {
    match r {
        Ok(_) => LARDER_OK,
        Err(e) => store_failure(e),
    }
}

/// Writes `value` to `out` if `out` is not null.
///
/// # Safety
/// `out` is null or writable.
unsafe fn set<T>(out: *mut T, value: T) {
    // SAFETY: null or writable (the caller's promise).
    if let Some(out) = unsafe { out.as_mut() } {
        *out = value;
    }
}

/// Opens the store `config` describes (the embedded store, or a member of the cluster
/// whose master it names) into `*out`. The configuration is copied.
///
/// # Safety
/// `config` is null or a live configuration; `out` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_store_open(
    config: *const larder_config,
    out: *mut *mut larder_store,
) -> larder_result {
    boundary(|| {
        // SAFETY: null or a live configuration (the caller's promise).
        let Some(config) = (unsafe { config.as_ref() }) else { return LARDER_NULL_PARAMETER };
        if out.is_null() {
            return LARDER_NULL_PARAMETER;
        }
        match BlockingStore::open(config.config.clone()) {
            Ok(store) => {
                let handle = Box::new(larder_store { store, poisoned: AtomicBool::new(false) });
                // SAFETY: non-null and writable (the caller's promise).
                unsafe { *out = Box::into_raw(handle) };
                LARDER_OK
            }
            Err(e) => store_failure(&e),
        }
    })
}

/// Flushes and closes the store: later calls return `LARDER_CLOSED`. The handle stays
/// valid until `larder_store_free`. `LARDER_STORAGE` if some acknowledged values could
/// not be made durable.
///
/// # Safety
/// `store` is null or a live store.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_store_close(store: *const larder_store) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe { with_store(store, |s| code(&s.close())) }
}

/// Frees the store, closing it first if it is open (null is ignored). No call on it
/// may be running on another thread.
///
/// # Safety
/// A non-null `store` came from `larder_store_open`, no call on it is running, and it
/// is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_store_free(store: *mut larder_store) {
    let _ = boundary(|| {
        if !store.is_null() {
            // SAFETY: made by `Box::into_raw` in `larder_store_open`, not freed before
            // and no longer used (the caller's promise).
            drop(unsafe { Box::from_raw(store) });
        }
        LARDER_OK
    });
}

/// Stores `value` under `key`; returns once the value is in memory (and, with
/// persistence, queued for SSD). `LARDER_ALREADY_EXISTS` if the key holds an object.
///
/// # Safety
/// `store` is null or a live store; `key` and `value` point to `key_len` and
/// `value_len` readable bytes (or are null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_put(
    store: *const larder_store,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            let (Some(key), Some(value)) = (borrow(key, key_len), borrow(value, value_len)) else {
                return LARDER_NULL_PARAMETER;
            };
            code(&s.put(key, value))
        })
    }
}

/// Stores the concatenation of `n_parts` slices under `key`.
///
/// # Safety
/// As `larder_put`; `parts` points to `n_parts` slices, each readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_put_parts(
    store: *const larder_store,
    key: *const u8,
    key_len: usize,
    parts: *const larder_slice,
    n_parts: usize,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            let (Some(key), Some(parts)) = (borrow(key, key_len), borrow_array(parts, n_parts)) else {
                return LARDER_NULL_PARAMETER;
            };
            let Some(parts) = parts.iter().map(|p| borrow(p.data, p.len)).collect::<Option<Vec<_>>>() else {
                return LARDER_NULL_PARAMETER;
            };
            code(&s.put_parts(key, &parts))
        })
    }
}

/// Copies the value under `key` into `buf` and its length into `*out_len`. A buffer
/// smaller than the value is `LARDER_BUFFER_TOO_SMALL` with `*out_len` the size needed
/// (nothing is copied).
///
/// # Safety
/// `store` is null or a live store; `key` points to `key_len` readable bytes; `buf` to
/// `buf_len` writable bytes nothing else touches during the call; `out_len` is
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_get_into(
    store: *const larder_store,
    key: *const u8,
    key_len: usize,
    buf: *mut u8,
    buf_len: usize,
    out_len: *mut usize,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            let (Some(key), Some(buf)) = (borrow(key, key_len), borrow_mut(buf, buf_len)) else {
                return LARDER_NULL_PARAMETER;
            };
            if out_len.is_null() {
                return LARDER_NULL_PARAMETER;
            }
            let got = s.get_into(key, buf);
            set(out_len, length_or_needed(&got));
            code(&got)
        })
    }
}

/// The length copied, or the size a too small buffer needed, else 0.
fn length_or_needed(got: &Result<usize, StoreError>) -> usize {
    match got {
        Ok(n) => *n,
        Err(StoreError::BufferTooSmall { needed, .. }) => usize::try_from(*needed).unwrap_or(usize::MAX),
        Err(_) => 0,
    }
}

/// The size of the value under `key`, into `*out_size`.
///
/// # Safety
/// `store` is null or a live store; `key` points to `key_len` readable bytes;
/// `out_size` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_get_size(
    store: *const larder_store,
    key: *const u8,
    key_len: usize,
    out_size: *mut u64,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            let Some(key) = borrow(key, key_len).filter(|_| !out_size.is_null()) else {
                return LARDER_NULL_PARAMETER;
            };
            let size = s.get_size(key);
            set(out_size, *size.as_ref().unwrap_or(&0));
            code(&size)
        })
    }
}

/// Whether `key` holds a complete object, into `*out_exists`.
///
/// # Safety
/// `store` is null or a live store; `key` points to `key_len` readable bytes;
/// `out_exists` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_exists(
    store: *const larder_store,
    key: *const u8,
    key_len: usize,
    out_exists: *mut bool,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            let Some(key) = borrow(key, key_len).filter(|_| !out_exists.is_null()) else {
                return LARDER_NULL_PARAMETER;
            };
            let exists = s.exists(key);
            set(out_exists, *exists.as_ref().unwrap_or(&false));
            code(&exists)
        })
    }
}

/// Removes the object under `key` from memory and SSD; `force` even while a reader
/// holds a lease on it (else `LARDER_HAS_LEASE`).
///
/// # Safety
/// `store` is null or a live store; `key` points to `key_len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_remove(
    store: *const larder_store,
    key: *const u8,
    key_len: usize,
    force: bool,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            let Some(key) = borrow(key, key_len) else { return LARDER_NULL_PARAMETER };
            code(&s.remove(key, force))
        })
    }
}

/// Removes every object (`force`: leased ones too); how many went into `*out_removed`
/// (may be null).
///
/// # Safety
/// `store` is null or a live store; `out_removed` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_remove_all(
    store: *const larder_store,
    force: bool,
    out_removed: *mut u64,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            let removed = s.remove_all(force);
            set(out_removed, *removed.as_ref().unwrap_or(&0));
            code(&removed)
        })
    }
}

/// Waits until every put acknowledged before the call is durable on SSD.
///
/// # Safety
/// `store` is null or a live store.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_flush(store: *const larder_store) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe { with_store(store, |s| code(&s.flush())) }
}

/// `LARDER_OK` if every item succeeded, else the first failed item's code.
fn batch_code(results: &[larder_result]) -> larder_result {
    results.iter().copied().find(|r| *r != LARDER_OK).unwrap_or(LARDER_OK)
}

/// Borrows `n` keys, or `None` if any is null with a length.
///
/// # Safety
/// `keys` points to `n` slices, each readable.
unsafe fn borrow_keys<'a>(keys: *const larder_slice, n: usize) -> Option<Vec<&'a [u8]>> {
    // SAFETY: forwarded from this function's own contract.
    unsafe { borrow_array(keys, n)?.iter().map(|k| borrow(k.data, k.len)).collect() }
}

/// Puts `n` values under `n` keys; each item's code into `results[i]`. Returns
/// `LARDER_OK` if every item succeeded, else the first failure's code.
///
/// # Safety
/// `store` is null or a live store; `keys` and `values` point to `n` readable slices
/// each; `results` to `n` writable codes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_batch_put(
    store: *const larder_store,
    keys: *const larder_slice,
    values: *const larder_slice,
    n: usize,
    results: *mut larder_result,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            let keys = borrow_keys(keys, n);
            let values = borrow_keys(values, n);
            let (Some(keys), Some(values), Some(results)) = (keys, values, borrow_array_mut(results, n))
            else {
                return LARDER_NULL_PARAMETER;
            };
            let items: Vec<(&[u8], &[u8])> = keys.into_iter().zip(values).collect();
            for (out, r) in results.iter_mut().zip(s.batch_put(&items)) {
                *out = code(&r);
            }
            batch_code(results)
        })
    }
}

/// Copies the values under `n` keys into `n` buffers (which must not overlap), with
/// every read from SSD in flight at once; each item's length (or the size a too small
/// buffer needed) into `out_lens[i]` and its code into `results[i]`.
///
/// # Safety
/// `store` is null or a live store; `keys` points to `n` readable slices; `bufs` to `n`
/// slices of writable bytes nothing else touches during the call; `out_lens` and
/// `results` to `n` writable elements each.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_batch_get_into(
    store: *const larder_store,
    keys: *const larder_slice,
    bufs: *const larder_mut_slice,
    n: usize,
    out_lens: *mut usize,
    results: *mut larder_result,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            let keys = borrow_keys(keys, n);
            let bufs: Option<Vec<&mut [u8]>> =
                borrow_array(bufs, n).and_then(|b| b.iter().map(|b| borrow_mut(b.data, b.len)).collect());
            let (Some(keys), Some(mut bufs)) = (keys, bufs) else { return LARDER_NULL_PARAMETER };
            let (Some(lens), Some(results)) = (borrow_array_mut(out_lens, n), borrow_array_mut(results, n))
            else {
                return LARDER_NULL_PARAMETER;
            };
            for ((got, len), out) in
                s.batch_get_into(&keys, &mut bufs).iter().zip(lens).zip(results.iter_mut())
            {
                *len = length_or_needed(got);
                *out = code(got);
            }
            batch_code(results)
        })
    }
}

/// Whether each of `n` keys holds an object, into `out_exists[i]`, with each item's code
/// in `results[i]`.
///
/// # Safety
/// `store` is null or a live store; `keys` points to `n` readable slices; `out_exists`
/// and `results` to `n` writable elements each.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_batch_exists(
    store: *const larder_store,
    keys: *const larder_slice,
    n: usize,
    out_exists: *mut bool,
    results: *mut larder_result,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            let keys = borrow_keys(keys, n);
            let (Some(keys), Some(exists), Some(results)) =
                (keys, borrow_array_mut(out_exists, n), borrow_array_mut(results, n))
            else {
                return LARDER_NULL_PARAMETER;
            };
            for ((r, e), out) in s.batch_exists(&keys).iter().zip(exists).zip(results.iter_mut()) {
                *e = *r.as_ref().unwrap_or(&false);
                *out = code(r);
            }
            batch_code(results)
        })
    }
}

/// Removes the objects under `n` keys; each item's code into `results[i]`.
///
/// # Safety
/// `store` is null or a live store; `keys` points to `n` readable slices; `results` to
/// `n` writable codes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_batch_remove(
    store: *const larder_store,
    keys: *const larder_slice,
    n: usize,
    force: bool,
    results: *mut larder_result,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            let (Some(keys), Some(results)) = (borrow_keys(keys, n), borrow_array_mut(results, n)) else {
                return LARDER_NULL_PARAMETER;
            };
            for (r, out) in s.batch_remove(&keys, force).iter().zip(results.iter_mut()) {
                *out = code(r);
            }
            batch_code(results)
        })
    }
}

/// Registers `len` bytes at `addr` as a buffer the caller keeps alive until it
/// unregisters it (what Mooncake's clients do with their transfer pools). The C calls
/// take any caller memory, registered or not; registration is kept for the same
/// calls' parity with the Python face, where bare addresses must lie inside a
/// registered buffer.
/// `LARDER_OVERLAPS_REGISTERED` if it overlaps one registered; `LARDER_INVALID_PARAMETER`
/// for no bytes.
///
/// # Safety
/// `store` is null or a live store. The memory itself is not touched by this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_register_buffer(
    store: *const larder_store,
    addr: *mut c_void,
    len: usize,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            if addr.is_null() {
                return LARDER_NULL_PARAMETER;
            }
            match s.register_buffer(addr as usize, len) {
                Ok(()) => LARDER_OK,
                Err(e) => fail(larder_result::of_registration(&e), e),
            }
        })
    }
}

/// Forgets the buffer registered at `addr` (`LARDER_NOT_REGISTERED` if none,
/// `LARDER_NULL_PARAMETER` for null).
///
/// # Safety
/// `store` is null or a live store.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_unregister_buffer(
    store: *const larder_store,
    addr: *mut c_void,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            if addr.is_null() {
                return LARDER_NULL_PARAMETER;
            }
            match s.unregister_buffer(addr as usize) {
                Ok(()) => LARDER_OK,
                Err(e) => fail(larder_result::of_registration(&e), e),
            }
        })
    }
}

/// The store's counters and gauges, into `*out`.
///
/// # Safety
/// `store` is null or a live store; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_store_stats(
    store: *const larder_store,
    out: *mut larder_stats,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_store(store, |s| {
            if out.is_null() {
                return LARDER_NULL_PARAMETER;
            }
            let st = s.stats();
            let (disk_bytes, crc_failures) = st.tier.as_ref().map_or((0, 0), |t| (t.bytes, t.crc_failures));
            let stats = larder_stats {
                objects: st.objects,
                memory_capacity: st.memory_capacity,
                memory_used: st.memory_used,
                memory_hits: st.memory_hits,
                disk_hits: st.disk_hits,
                evicted_to_disk: st.evicted_to_disk,
                evicted_dropped: st.evicted_dropped,
                persisted: st.persisted,
                persist_failures: st.persist_failures,
                recovered: st.recovered,
                disk_bytes,
                crc_failures,
            };
            set(out, stats);
            LARDER_OK
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capi::larder_config_new;

    #[test]
    fn a_panic_poisons_the_store_for_every_later_call() {
        let config = larder_config_new();
        let mut store: *mut larder_store = core::ptr::null_mut();
        // SAFETY: a live configuration and a writable handle slot; the store is used
        // only by this thread and freed once at the end.
        unsafe {
            assert_eq!(larder_store_open(config, &mut store), LARDER_OK);
            crate::capi::larder_config_free(config);
            assert_eq!(larder_put(store, b"k".as_ptr(), 1, b"v".as_ptr(), 1), LARDER_OK);
            assert_eq!(with_store(store, |_| panic!("deliberate")), LARDER_PANIC);
            assert_eq!(larder_put(store, b"j".as_ptr(), 1, b"v".as_ptr(), 1), LARDER_PANIC);
            let mut exists = false;
            assert_eq!(larder_exists(store, b"k".as_ptr(), 1, &mut exists), LARDER_PANIC);
            assert_eq!(larder_store_close(store), LARDER_PANIC);
            larder_store_free(store);
        }
    }
}
