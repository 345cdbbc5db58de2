//! `larder._native`: the extension module under the `larder` package. Two faces over
//! one [`BlockingStore`] (the facade the C ABI uses too): [`store::Store`], Pythonic
//! with exceptions, and [`mooncake::MooncakeDistributedStore`], Mooncake's class with
//! its names and integer return codes. Every call that copies, waits or does I/O
//! releases the GIL.

use std::sync::{Arc, RwLock};

use larder_ffi::{BlockingStore, StoreError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

mod errors;
mod mooncake;
mod store;
mod view;

/// A store that may be open or not (before `setup`, after `close`), shared by every
/// thread calling the Python object.
#[derive(Default)]
pub(crate) struct Handle(RwLock<Option<Arc<BlockingStore>>>);

impl Handle {
    fn open(store: BlockingStore) -> Self {
        Self(RwLock::new(Some(Arc::new(store))))
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
        *slot = Some(Arc::new(store));
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

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::add_to(m)?;
    m.add_class::<store::Store>()?;
    m.add_class::<mooncake::MooncakeDistributedStore>()?;
    m.add_class::<mooncake::BufferHandle>()?;
    mooncake::add_codes(m)?;
    Ok(())
}
