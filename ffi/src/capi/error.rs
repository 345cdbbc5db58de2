//! Result codes, their messages, the last error's message, and the panic boundary.

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

use larder_tokio::StoreError;

use crate::facade::RegistrationError;

/// What a call did. The numbers are stable: new codes get new numbers.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum larder_result {
    /// Success.
    LARDER_OK = 0,
    /// A pointer that must not be null was null (or a length was impossibly large).
    LARDER_NULL_PARAMETER = 1,
    /// The call panicked; its store is poisoned and every later call on it fails so.
    LARDER_PANIC = 2,
    /// A bug in Larder, or an error this build cannot name.
    LARDER_INTERNAL = 3,
    /// An argument is not valid (a path or name that is not UTF-8, an unknown setting).
    LARDER_INVALID_PARAMETER = 4,
    /// No complete object under the key.
    LARDER_NOT_FOUND = 10,
    /// An object under the key exists (or is being written).
    LARDER_ALREADY_EXISTS = 11,
    /// A read lease protects the object: remove it with force.
    LARDER_HAS_LEASE = 12,
    /// A put of the object is still in progress.
    LARDER_NOT_READY = 13,
    /// Memory is full of objects that cannot be evicted yet.
    LARDER_NO_SPACE = 14,
    /// The value is larger than the store can ever hold.
    LARDER_TOO_LARGE = 15,
    /// Values must hold at least one byte.
    LARDER_EMPTY_VALUE = 16,
    /// The key is empty or too long.
    LARDER_INVALID_KEY = 17,
    /// The buffer is smaller than the value (`*out_len` says how large it must be).
    LARDER_BUFFER_TOO_SMALL = 18,
    /// A batch came with as many keys as buffers it did not.
    LARDER_BATCH_LENGTH = 19,
    /// The stored copy failed its checksum and was dropped.
    LARDER_CORRUPTED = 20,
    /// The configuration cannot be used.
    LARDER_CONFIG = 21,
    /// The SSD tier failed (the storage root, the device, the directory lock).
    LARDER_STORAGE = 22,
    /// The store was closed.
    LARDER_CLOSED = 23,
    /// The cluster could not be reached in time (the call may be tried again).
    LARDER_UNREACHABLE = 24,
    /// A node refused a transfer.
    LARDER_TRANSFER = 25,
    /// A peer answered something this build does not understand.
    LARDER_PROTOCOL = 26,
    /// No buffer is registered at that address.
    LARDER_NOT_REGISTERED = 30,
    /// The buffer overlaps one already registered.
    LARDER_OVERLAPS_REGISTERED = 31,
}

use larder_result::*;

impl larder_result {
    /// Every code, for tests and tables.
    pub const ALL: &'static [larder_result] = &[
        LARDER_OK,
        LARDER_NULL_PARAMETER,
        LARDER_PANIC,
        LARDER_INTERNAL,
        LARDER_INVALID_PARAMETER,
        LARDER_NOT_FOUND,
        LARDER_ALREADY_EXISTS,
        LARDER_HAS_LEASE,
        LARDER_NOT_READY,
        LARDER_NO_SPACE,
        LARDER_TOO_LARGE,
        LARDER_EMPTY_VALUE,
        LARDER_INVALID_KEY,
        LARDER_BUFFER_TOO_SMALL,
        LARDER_BATCH_LENGTH,
        LARDER_CORRUPTED,
        LARDER_CONFIG,
        LARDER_STORAGE,
        LARDER_CLOSED,
        LARDER_UNREACHABLE,
        LARDER_TRANSFER,
        LARDER_PROTOCOL,
        LARDER_NOT_REGISTERED,
        LARDER_OVERLAPS_REGISTERED,
    ];

    /// The code of a store error.
    pub fn of(e: &StoreError) -> Self {
        match e {
            StoreError::NotFound => LARDER_NOT_FOUND,
            StoreError::AlreadyExists => LARDER_ALREADY_EXISTS,
            StoreError::HasLease => LARDER_HAS_LEASE,
            StoreError::NotReady => LARDER_NOT_READY,
            StoreError::NoSpace => LARDER_NO_SPACE,
            StoreError::TooLarge { .. } => LARDER_TOO_LARGE,
            StoreError::EmptyValue => LARDER_EMPTY_VALUE,
            StoreError::InvalidKey(_) => LARDER_INVALID_KEY,
            StoreError::BufferTooSmall { .. } => LARDER_BUFFER_TOO_SMALL,
            StoreError::BatchLength { .. } => LARDER_BATCH_LENGTH,
            StoreError::Corrupted(_) => LARDER_CORRUPTED,
            StoreError::Config(_) => LARDER_CONFIG,
            StoreError::Storage(_) => LARDER_STORAGE,
            StoreError::Closed => LARDER_CLOSED,
            StoreError::Unreachable(_) => LARDER_UNREACHABLE,
            StoreError::Transfer(_) => LARDER_TRANSFER,
            StoreError::Protocol(_) => LARDER_PROTOCOL,
            StoreError::Internal(_) => LARDER_INTERNAL,
            _ => LARDER_INTERNAL,
        }
    }

    /// The code of a registration error.
    pub fn of_registration(e: &RegistrationError) -> Self {
        match e {
            RegistrationError::Invalid => LARDER_INVALID_PARAMETER,
            RegistrationError::Overlaps => LARDER_OVERLAPS_REGISTERED,
            RegistrationError::NotRegistered => LARDER_NOT_REGISTERED,
        }
    }

    /// What the code means, in a sentence.
    pub fn describe(self) -> &'static str {
        match self {
            LARDER_OK => "success",
            LARDER_NULL_PARAMETER => "a pointer argument was null (or a length impossibly large)",
            LARDER_PANIC => "a call panicked; the store is poisoned",
            LARDER_INTERNAL => "internal error",
            LARDER_INVALID_PARAMETER => "an argument is not valid",
            LARDER_NOT_FOUND => "no object under this key",
            LARDER_ALREADY_EXISTS => "an object under this key already exists",
            LARDER_HAS_LEASE => "the object is leased by a recent read; remove it with force",
            LARDER_NOT_READY => "the object is still being written",
            LARDER_NO_SPACE => "no space in memory for the value",
            LARDER_TOO_LARGE => "the value is larger than the store can hold",
            LARDER_EMPTY_VALUE => "empty values are not stored",
            LARDER_INVALID_KEY => "the key is empty or too long",
            LARDER_BUFFER_TOO_SMALL => "the buffer is smaller than the value",
            LARDER_BATCH_LENGTH => "a batch came with as many keys as buffers it did not",
            LARDER_CORRUPTED => "the stored copy failed its checksum and was dropped",
            LARDER_CONFIG => "the configuration cannot be used",
            LARDER_STORAGE => "the SSD tier failed",
            LARDER_CLOSED => "the store is closed",
            LARDER_UNREACHABLE => "the cluster is unreachable",
            LARDER_TRANSFER => "a node refused the transfer",
            LARDER_PROTOCOL => "a peer answered something this build does not understand",
            LARDER_NOT_REGISTERED => "no buffer is registered at this address",
            LARDER_OVERLAPS_REGISTERED => "the buffer overlaps one already registered",
        }
    }
}

thread_local! {
    /// The message of the last call on this thread that failed.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `message` as this thread's last error and returns `code`.
pub(crate) fn fail(code: larder_result, message: impl std::fmt::Display) -> larder_result {
    LAST_ERROR.with(|last| {
        let mut last = last.borrow_mut();
        last.clear();
        use std::fmt::Write;
        let _ = write!(last, "{message}");
    });
    code
}

/// The code of `e`, with its message recorded as this thread's last error.
pub(crate) fn store_failure(e: &StoreError) -> larder_result {
    fail(larder_result::of(e), e)
}

/// Runs `call` behind the panic boundary: a panic becomes `LARDER_PANIC`. A null
/// pointer refused by `call` is recorded as the thread's last error too.
pub(crate) fn boundary(call: impl FnOnce() -> larder_result) -> larder_result {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(LARDER_NULL_PARAMETER) => fail(LARDER_NULL_PARAMETER, LARDER_NULL_PARAMETER.describe()),
        Ok(r) => r,
        Err(_) => fail(LARDER_PANIC, "a call panicked"),
    }
}

/// Copies `text` as a NUL-terminated string into `buf` (truncated to `len - 1` bytes)
/// and sets `*out_n` to the bytes written, without the NUL.
///
/// # Safety
/// `buf` points to `len` writable bytes; `out_n` is null or writable.
unsafe fn write_message(text: &str, buf: *mut c_char, len: usize, out_n: *mut usize) -> larder_result {
    if buf.is_null() || len == 0 {
        return LARDER_NULL_PARAMETER;
    }
    let n = text.len().min(len - 1);
    // SAFETY: `buf` has room for `len` bytes (the caller's promise), `n < len`, and the
    // source is a live `&str` that cannot overlap a caller's buffer we only write.
    unsafe {
        core::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
    if !out_n.is_null() {
        // SAFETY: non-null and writable (the caller's promise).
        unsafe { *out_n = n };
    }
    LARDER_OK
}

/// Writes what `result` means into `buf` (`len` bytes, NUL-terminated, truncated if
/// need be) and the length written, without the NUL, into `*out_n` (may be null).
/// An unknown number is described as such. Returns `LARDER_NULL_PARAMETER` if `buf`
/// is null or `len` is 0.
///
/// # Safety
/// `buf` points to `len` writable bytes; `out_n` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_result_message(
    result: u32,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> larder_result {
    boundary(|| {
        let known = larder_result::ALL.iter().find(|r| **r as u32 == result);
        let text = known.map_or("unknown result code", |r| r.describe());
        // SAFETY: forwarded from this function's own contract.
        unsafe { write_message(text, buf, len, out_n) }
    })
}

/// Writes the message of the last call on this thread that failed (with its details:
/// sizes, paths, the OS error) into `buf` as [`larder_result_message`] does; empty if
/// none failed yet.
///
/// # Safety
/// `buf` points to `len` writable bytes; `out_n` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_last_error_message(
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> larder_result {
    boundary(|| {
        LAST_ERROR.with(|last| {
            // SAFETY: forwarded from this function's own contract.
            unsafe { write_message(&last.borrow(), buf, len, out_n) }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_described() {
        let mut numbers: Vec<u32> = larder_result::ALL.iter().map(|r| *r as u32).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), larder_result::ALL.len());
        for r in larder_result::ALL {
            assert!(!r.describe().is_empty());
        }
    }

    #[test]
    fn a_panic_becomes_a_result_and_a_message() {
        let r = boundary(|| panic!("deliberate"));
        assert_eq!(r, LARDER_PANIC);
        let mut buf = [0 as c_char; 64];
        let mut n = 0;
        // SAFETY: a live local buffer of the length given, and a live `usize`.
        let ok = unsafe { larder_last_error_message(buf.as_mut_ptr(), buf.len(), &mut n) };
        assert_eq!(ok, LARDER_OK);
        let text: Vec<u8> = buf[..n].iter().map(|c| *c as u8).collect();
        assert_eq!(text, b"a call panicked");
    }

    #[test]
    fn messages_are_truncated_to_the_buffer_and_terminated() {
        let mut buf = [1 as c_char; 8];
        let mut n = 0;
        // SAFETY: a live local buffer of the length given, and a live `usize`.
        let r =
            unsafe { larder_result_message(LARDER_NOT_FOUND as u32, buf.as_mut_ptr(), buf.len(), &mut n) };
        assert_eq!((r, n, buf[7]), (LARDER_OK, 7, 0));
        // SAFETY: as above; the number is deliberately not a code.
        let r = unsafe { larder_result_message(9999, buf.as_mut_ptr(), buf.len(), &mut n) };
        assert_eq!(r, LARDER_OK);
        // SAFETY: a null buffer is refused before it is touched.
        let r = unsafe { larder_result_message(0, core::ptr::null_mut(), 8, &mut n) };
        assert_eq!(r, LARDER_NULL_PARAMETER);
    }
}
