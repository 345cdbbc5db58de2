//! The exceptions of `larder.Store`: one class per `StoreError` variant, all under
//! `larder.StoreError`.

use larder_ffi::StoreError as Error;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::{PyErr, create_exception};

create_exception!(larder, StoreError, PyException, "A store operation failed.");
create_exception!(larder, NotFound, StoreError, "No complete object under the key.");
create_exception!(larder, AlreadyExists, StoreError, "An object under the key exists (or is being written).");
create_exception!(
    larder,
    HasLease,
    StoreError,
    "A read lease protects the object: remove it with force=True."
);
create_exception!(larder, NotReady, StoreError, "A put of the object is still in progress.");
create_exception!(larder, NoSpace, StoreError, "Memory is full of objects that cannot be evicted yet.");
create_exception!(larder, TooLarge, StoreError, "The value is larger than the store can ever hold.");
create_exception!(larder, EmptyValue, StoreError, "Values must hold at least one byte.");
create_exception!(larder, InvalidKey, StoreError, "The key is empty or too long.");
create_exception!(larder, BufferTooSmall, StoreError, "The buffer is smaller than the value.");
create_exception!(
    larder,
    BatchLength,
    StoreError,
    "A batch came with as many keys as values or buffers it did not."
);
create_exception!(larder, Corrupted, StoreError, "The stored copy failed its checksum and was dropped.");
create_exception!(larder, ConfigError, StoreError, "The configuration cannot be used.");
create_exception!(
    larder,
    StorageError,
    StoreError,
    "The SSD tier failed (the storage root, the device, its lock)."
);
create_exception!(larder, Closed, StoreError, "The store is closed.");
create_exception!(larder, Unreachable, StoreError, "The cluster could not be reached in time; try again.");
create_exception!(larder, TransferError, StoreError, "A node refused a transfer.");
create_exception!(
    larder,
    ProtocolError,
    StoreError,
    "A peer answered something this build does not understand."
);
create_exception!(larder, InternalError, StoreError, "A bug in Larder.");

/// The exception for a store error, with its message.
pub(crate) fn to_py(e: &Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::NotFound => NotFound::new_err(msg),
        Error::AlreadyExists => AlreadyExists::new_err(msg),
        Error::HasLease => HasLease::new_err(msg),
        Error::NotReady => NotReady::new_err(msg),
        Error::NoSpace => NoSpace::new_err(msg),
        Error::TooLarge { .. } => TooLarge::new_err(msg),
        Error::EmptyValue => EmptyValue::new_err(msg),
        Error::InvalidKey(_) => InvalidKey::new_err(msg),
        Error::BufferTooSmall { .. } => BufferTooSmall::new_err(msg),
        Error::BatchLength { .. } => BatchLength::new_err(msg),
        Error::Corrupted(_) => Corrupted::new_err(msg),
        Error::Config(_) => ConfigError::new_err(msg),
        Error::Storage(_) => StorageError::new_err(msg),
        Error::Closed => Closed::new_err(msg),
        Error::Unreachable(_) => Unreachable::new_err(msg),
        Error::Transfer(_) => TransferError::new_err(msg),
        Error::Protocol(_) => ProtocolError::new_err(msg),
        _ => InternalError::new_err(msg),
    }
}

/// `Result<T, StoreError>` as a Python result.
pub(crate) fn check<T>(r: Result<T, Error>) -> PyResult<T> {
    r.map_err(|e| to_py(&e))
}

/// Adds every exception class to the module.
pub(crate) fn add_to(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("AlreadyExists", py.get_type::<AlreadyExists>())?;
    m.add("HasLease", py.get_type::<HasLease>())?;
    m.add("NotReady", py.get_type::<NotReady>())?;
    m.add("NoSpace", py.get_type::<NoSpace>())?;
    m.add("TooLarge", py.get_type::<TooLarge>())?;
    m.add("EmptyValue", py.get_type::<EmptyValue>())?;
    m.add("InvalidKey", py.get_type::<InvalidKey>())?;
    m.add("BufferTooSmall", py.get_type::<BufferTooSmall>())?;
    m.add("BatchLength", py.get_type::<BatchLength>())?;
    m.add("Corrupted", py.get_type::<Corrupted>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("StorageError", py.get_type::<StorageError>())?;
    m.add("Closed", py.get_type::<Closed>())?;
    m.add("Unreachable", py.get_type::<Unreachable>())?;
    m.add("TransferError", py.get_type::<TransferError>())?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}
