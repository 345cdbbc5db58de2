//! Borrowing the bytes of any Python object that exports the buffer protocol (bytes,
//! bytearray, memoryview, numpy arrays, array.array, mmap) as one contiguous run, for
//! as long as the view lives; and of an object with a `numpy()` method that returns
//! such an array sharing its memory, as a CPU torch tensor does (torch tensors do not
//! export the buffer protocol themselves).

use std::ffi::c_int;

use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::{PyErr, ffi};

/// A held buffer export: the exporter keeps the memory alive and unmoved (a bytearray
/// refuses to resize) until [`Drop`] releases it.
pub(crate) struct ByteView {
    // Boxed: the exporter may keep the view's address until it is released.
    view: Box<ffi::Py_buffer>,
}

impl ByteView {
    /// The bytes of `obj`, read-only. Any contiguous exporter, whatever its item type.
    pub(crate) fn readable(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        Self::get(obj, ffi::PyBUF_SIMPLE)
    }

    /// The bytes of `obj` for writing (a `bytes` object is refused: it is immutable).
    pub(crate) fn writable(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        Self::get(obj, ffi::PyBUF_SIMPLE | ffi::PyBUF_WRITABLE)
    }

    fn get(obj: &Bound<'_, PyAny>, flags: c_int) -> PyResult<Self> {
        let refused = match Self::export(obj, flags) {
            Ok(view) => return Ok(view),
            Err(e) => e,
        };
        let Ok(numpy) = obj.getattr("numpy") else { return Err(refused) };
        let array = numpy.call0().map_err(|_| refused)?;
        Self::export(&array, flags)
    }

    fn export(obj: &Bound<'_, PyAny>, flags: c_int) -> PyResult<Self> {
        let mut view = Box::new(core::mem::MaybeUninit::<ffi::Py_buffer>::zeroed());
        // SAFETY: `obj` is a live object (we hold the GIL through `Bound`), and `view`
        // is writable memory of a `Py_buffer`'s size that outlives the call.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) };
        if rc != 0 {
            return Err(PyErr::take(obj.py()).unwrap_or_else(|| PyBufferError::new_err("no buffer")));
        }
        // SAFETY: PyObject_GetBuffer returned 0, so it filled the whole view in.
        let view = unsafe { Box::from_raw(Box::into_raw(view).cast::<ffi::Py_buffer>()) };
        Ok(Self { view })
    }

    /// The exported bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        let len = usize::try_from(self.view.len).unwrap_or(0);
        if len == 0 || self.view.buf.is_null() {
            return &[];
        }
        // SAFETY: a PyBUF_SIMPLE export is `len` contiguous bytes at `buf`, kept alive
        // and unmoved by the exporter until the view is released in `drop`, which
        // cannot happen while this borrow of `self` lives.
        unsafe { core::slice::from_raw_parts(self.view.buf.cast::<u8>(), len) }
    }

    /// The exported bytes for writing; `None` if the export is read-only.
    pub(crate) fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if self.view.readonly != 0 {
            return None;
        }
        let len = usize::try_from(self.view.len).unwrap_or(0);
        if len == 0 || self.view.buf.is_null() {
            return Some(&mut []);
        }
        // SAFETY: as `as_slice`, and the export is writable (PyBUF_WRITABLE was asked
        // for, `readonly` is 0); the `&mut self` borrow keeps us from handing out two.
        Some(unsafe { core::slice::from_raw_parts_mut(self.view.buf.cast::<u8>(), len) })
    }
}

impl Drop for ByteView {
    fn drop(&mut self) {
        Python::attach(|_| {
            // SAFETY: the view was filled by a successful PyObject_GetBuffer and is
            // released exactly once, with the GIL held.
            unsafe { ffi::PyBuffer_Release(&mut *self.view) }
        });
    }
}
