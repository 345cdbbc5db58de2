//! `larder._native`: the extension module under the `larder` package. Two faces over
//! one [`BlockingStore`] (the facade the C ABI uses too): [`store::Store`], Pythonic
//! with exceptions, and [`mooncake::MooncakeDistributedStore`], Mooncake's class with
//! its names and integer return codes. Every call that copies, waits or does I/O
//! releases the GIL.

use std::sync::{Arc, Mutex, RwLock, Weak};

use larder_ffi::{BlockingStore, StoreError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

mod errors;
mod mooncake;
mod store;
mod view;

/// Every store opened in this process, so that interpreter exit closes (and so
/// flushes) those the program did not: one in a reference cycle, or held by a daemon
/// thread, would otherwise never be dropped.
static OPEN_STORES: Mutex<Vec<Weak<BlockingStore>>> = Mutex::new(Vec::new());

fn remember(store: BlockingStore) -> Arc<BlockingStore> {
    let store = Arc::new(store);
    let mut open = OPEN_STORES.lock().unwrap_or_else(|e| e.into_inner());
    open.retain(|s| s.strong_count() > 0);
    open.push(Arc::downgrade(&store));
    store
}

/// Closes every store still open (registered with `atexit` when the module loads).
#[pyfunction]
fn _close_all(py: Python<'_>) {
    let open: Vec<Arc<BlockingStore>> =
        OPEN_STORES.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade).collect();
    py.detach(|| {
        for store in open {
            match store.close() {
                Ok(()) | Err(StoreError::Closed) => {}
                Err(e) => eprintln!("larder: closing a store at exit: {e}"),
            }
        }
    });
}

/// A store that may be open or not (before `setup`, after `close`), shared by every
/// thread calling the Python object.
#[derive(Default)]
pub(crate) struct Handle(RwLock<Option<Arc<BlockingStore>>>);

impl Drop for Handle {
    /// A store dropped unclosed closes, flushing first: without the GIL, so that other
    /// Python threads run meanwhile.
    fn drop(&mut self) {
        if let Some(store) = self.take() {
            Python::attach(|py| py.detach(move || drop(store)));
        }
    }
}

impl Handle {
    fn open(store: BlockingStore) -> Self {
        Self(RwLock::new(Some(remember(store))))
    }

    /// The open store, or `Closed`.
    fn get(&self) -> Result<Arc<BlockingStore>, StoreError> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or(StoreError::Closed)
    }

    /// Installs `store`; `false` (and `store` dropped) if one is open already.
    fn set(&self, store: BlockingStore) -> bool {
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return false;
        }
        *slot = Some(remember(store));
        true
    }

    /// Takes the store out (later calls see `Closed`); calls running keep their own
    /// reference until they end.
    fn take(&self) -> Option<Arc<BlockingStore>> {
        self.0.write().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn is_open(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

/// Values at least this large are copied into a new `bytes` with the GIL released (the
/// copy, and the page faults of a fresh allocation, are most of a large get's time);
/// smaller ones are copied at once, cheaper than releasing the GIL.
const COPY_WITHOUT_GIL: usize = 64 << 10;

/// A new `bytes` holding `value`.
pub(crate) fn new_bytes<'py>(py: Python<'py>, value: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    if value.len() < COPY_WITHOUT_GIL {
        return Ok(PyBytes::new(py, value));
    }
    let len = pyo3::ffi::Py_ssize_t::try_from(value.len())
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("value too large for bytes"))?;
    // SAFETY: a null source asks CPython for an uninitialised bytes object of `len`
    // bytes; the result is an owned reference or null with an exception set.
    let bytes = unsafe {
        Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyBytes_FromStringAndSize(core::ptr::null(), len))?
    };
    // SAFETY: `bytes` is a bytes object (just made), so this is its `len` bytes of
    // storage, which live as long as `bytes`.
    let storage = unsafe { pyo3::ffi::PyBytes_AsString(bytes.as_ptr()) } as usize;
    py.detach(|| {
        // SAFETY: nothing else can see the new object yet, so writing its storage
        // without the GIL races with no one; `value` and the storage are distinct
        // allocations of `len` bytes each.
        unsafe { core::ptr::copy_nonoverlapping(value.as_ptr(), storage as *mut u8, value.len()) }
    });
    Ok(bytes.cast_into::<PyBytes>()?)
}

/// A key's bytes: a `str` (as UTF-8) or a bytes-like `bytes` object.
pub(crate) fn key_bytes<'a>(key: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes());
    }
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(b.as_bytes());
    }
    Err(pyo3::exceptions::PyTypeError::new_err("a key is a str or bytes"))
}

/// The bytes of every key of a batch (see [`key_bytes`]).
pub(crate) fn keys_of<'a>(keys: &'a [Bound<'_, PyAny>]) -> PyResult<Vec<&'a [u8]>> {
    keys.iter().map(key_bytes).collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::add_to(m)?;
    m.add_class::<store::Store>()?;
    m.add_class::<mooncake::MooncakeDistributedStore>()?;
    m.add_class::<mooncake::BufferHandle>()?;
    mooncake::add_codes(m)?;
    m.add_function(wrap_pyfunction!(_close_all, m)?)?;
    m.py().import("atexit")?.call_method1("register", (m.getattr("_close_all")?,))?;
    Ok(())
}
