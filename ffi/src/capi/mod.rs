//! The C ABI, in the style of rustls-ffi: opaque handles, a null check on every pointer,
//! a panic boundary on every entry point, one stable [`larder_result`] per error, and
//! memory the caller owns. `ffi/include/larder.h` is generated from this module by
//! cbindgen (the `header_is_current` test regenerates it and fails on a difference).
//!
//! Every call blocks until it is done: when it returns, the store holds no pointer the
//! caller passed in. Handles may be shared between threads; calls on one store run at
//! once. A call that panics returns `LARDER_PANIC` and poisons its store: every later
//! call on it returns `LARDER_PANIC` too (only `larder_store_free` still works).

#![allow(non_camel_case_types)]

mod config;
mod error;
mod store;

pub use config::*;
pub use error::*;
pub use store::*;

/// Bytes the caller lends for the length of a call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct larder_slice {
    /// The first byte (may be null only when `len` is 0).
    pub data: *const u8,
    /// How many bytes.
    pub len: usize,
}

/// A buffer the caller lends for a call to fill.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct larder_mut_slice {
    /// The first byte (may be null only when `len` is 0).
    pub data: *mut u8,
    /// How many bytes may be written.
    pub len: usize,
}

/// The bytes at `data`, or `None` if `data` is null (and `len` is not 0) or `len` is
/// larger than any object.
///
/// # Safety
/// A non-null `data` points to `len` readable bytes that nothing writes while the
/// returned slice lives.
unsafe fn borrow<'a>(data: *const u8, len: usize) -> Option<&'a [u8]> {
    if len > isize::MAX as usize {
        return None;
    }
    if data.is_null() {
        return (len == 0).then_some(&[]);
    }
    // SAFETY: non-null, `len` readable bytes not written meanwhile (the caller's
    // promise), and `len` fits in an `isize`.
    Some(unsafe { core::slice::from_raw_parts(data, len) })
}

/// The bytes at `data` for writing, as [`borrow`].
///
/// # Safety
/// A non-null `data` points to `len` writable bytes that nothing else touches while the
/// returned slice lives.
unsafe fn borrow_mut<'a>(data: *mut u8, len: usize) -> Option<&'a mut [u8]> {
    if len > isize::MAX as usize {
        return None;
    }
    if data.is_null() {
        return (len == 0).then_some(&mut []);
    }
    // SAFETY: non-null, `len` writable bytes nothing else touches (the caller's
    // promise), and `len` fits in an `isize`.
    Some(unsafe { core::slice::from_raw_parts_mut(data, len) })
}

/// `n` elements at `items`, as [`borrow`].
///
/// # Safety
/// A non-null `items` points to `n` initialised `T`s not written while the slice lives.
unsafe fn borrow_array<'a, T>(items: *const T, n: usize) -> Option<&'a [T]> {
    if n.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return None;
    }
    if items.is_null() {
        return (n == 0).then_some(&[]);
    }
    // SAFETY: non-null, `n` initialised elements not written meanwhile (the caller's
    // promise), and their size fits in an `isize`.
    Some(unsafe { core::slice::from_raw_parts(items, n) })
}

/// `n` elements at `items` for writing, as [`borrow_mut`].
///
/// # Safety
/// A non-null `items` points to `n` writable `T`s nothing else touches while the slice
/// lives.
unsafe fn borrow_array_mut<'a, T>(items: *mut T, n: usize) -> Option<&'a mut [T]> {
    if n.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return None;
    }
    if items.is_null() {
        return (n == 0).then_some(&mut []);
    }
    // SAFETY: non-null, `n` writable elements nothing else touches (the caller's
    // promise), and their size fits in an `isize`.
    Some(unsafe { core::slice::from_raw_parts_mut(items, n) })
}
