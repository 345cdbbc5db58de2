//! `larder.Store`: the Pythonic face. Errors are exceptions under `larder.StoreError`;
//! values are any buffer-protocol object; keys are `str` or `bytes`.

use larder_ffi::settings::{apply_setting, config_from_env};
use larder_ffi::{BlockingStore, StoreError, StoreStats};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyTuple};

use crate::errors::{check, to_py};
use crate::view::ByteView;
use crate::{Handle, key_bytes, keys_of, new_bytes};

/// A Larder store: embedded (master and node in this process, the default) or, with
/// `master="host:port"`, a member of that cluster.
///
/// `Store(storage_root=None, memory="512MiB", master=None, **settings)`: `storage_root`
/// (an existing directory) turns persistence on; `memory` is the segment's size (an
/// int of bytes or a size such as "4GiB"); further settings by name: `cluster`,
/// `lease_ttl` ("500ms", or seconds as a number), `max_disk_bytes`,
/// `write_behind_bytes`, `high_watermark`, `low_watermark`, `direct_io`. What is not
/// given comes from the `LARDER_*` environment variables, else the defaults.
#[pyclass(module = "larder", frozen)]
pub(crate) struct Store {
    handle: Handle,
}

/// A setting's value as the text `apply_setting` parses.
fn setting_text(name: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    let is_number = !value.is_instance_of::<PyBool>()
        && (value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>());
    if name == "lease_ttl" && is_number {
        let seconds: f64 = value.extract()?;
        if !(seconds.is_finite() && seconds >= 0.0) {
            return Err(to_py(&StoreError::Config(larder_ffi::ConfigError::Invalid {
                name: "lease_ttl".into(),
                reason: "must be a duration, or a number of seconds, at least 0",
            })));
        }
        return Ok(format!("{}ms", (seconds * 1000.0).round() as u64));
    }
    Ok(value.str()?.to_str()?.to_owned())
}

fn stats_dict<'py>(py: Python<'py>, s: &StoreStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("objects", s.objects)?;
    d.set_item("memory_capacity", s.memory_capacity)?;
    d.set_item("memory_used", s.memory_used)?;
    d.set_item("memory_hits", s.memory_hits)?;
    d.set_item("disk_hits", s.disk_hits)?;
    d.set_item("promotions", s.promotions)?;
    d.set_item("evicted_to_disk", s.evicted_to_disk)?;
    d.set_item("evicted_dropped", s.evicted_dropped)?;
    d.set_item("put_waits", s.put_waits)?;
    d.set_item("persisted", s.persisted)?;
    d.set_item("persist_failures", s.persist_failures)?;
    d.set_item("recovered", s.recovered)?;
    if let Some(t) = &s.tier {
        d.set_item("disk_bytes", t.bytes)?;
        d.set_item("disk_objects", t.objects)?;
        d.set_item("disk_queued_bytes", t.queued_bytes)?;
        d.set_item("crc_failures", t.crc_failures)?;
    }
    Ok(d)
}

/// Each item as `None` (it succeeded) or its exception.
fn outcomes<'py>(py: Python<'py>, results: Vec<Result<(), StoreError>>) -> PyResult<Bound<'py, PyList>> {
    per_item(py, &results, |_| Ok(py.None()))
}

/// Each item as `ok`'s object for its value, or as the exception it met.
fn per_item<'py, T>(
    py: Python<'py>,
    results: &[Result<T, StoreError>],
    mut ok: impl FnMut(&T) -> PyResult<Py<PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let items = results
        .iter()
        .map(|r| match r {
            Ok(value) => ok(value),
            Err(e) => Ok(to_py(e).into_value(py).into_any()),
        })
        .collect::<PyResult<Vec<Py<PyAny>>>>()?;
    PyList::new(py, items)
}

#[pymethods]
impl Store {
    #[new]
    #[pyo3(signature = (storage_root=None, memory=None, master=None, **settings))]
    fn new(
        py: Python<'_>,
        storage_root: Option<std::path::PathBuf>,
        memory: Option<&Bound<'_, PyAny>>,
        master: Option<String>,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let config_error = |e| to_py(&StoreError::Config(e));
        let mut config = config_from_env().map_err(config_error)?;
        if let Some(root) = storage_root {
            config.storage_root = Some(root);
        }
        if let Some(memory) = memory {
            apply_setting(&mut config, "memory", &setting_text("memory", memory)?).map_err(config_error)?;
        }
        if let Some(master) = master {
            apply_setting(&mut config, "master", &master).map_err(config_error)?;
        }
        for (name, value) in settings.into_iter().flat_map(|d| d.iter()) {
            let name: String = name.extract()?;
            apply_setting(&mut config, &name, &setting_text(&name, &value)?).map_err(config_error)?;
        }
        let store = check(py.detach(|| BlockingStore::open(config)))?;
        Ok(Self { handle: Handle::open(store) })
    }

    /// Stores `value` (any buffer: bytes, bytearray, memoryview, a numpy array) under
    /// `key`; returns once it is in memory. Raises `AlreadyExists` if the key is taken.
    fn put(&self, py: Python<'_>, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let store = check(self.handle.get())?;
        let (key, value) = (key_bytes(key)?, ByteView::readable(value)?);
        let value = value.as_slice();
        check(py.detach(|| store.put(key, value)))
    }

    /// Stores the concatenation of `parts` under `key`.
    #[pyo3(signature = (key, *parts))]
    fn put_parts(&self, py: Python<'_>, key: &Bound<'_, PyAny>, parts: &Bound<'_, PyTuple>) -> PyResult<()> {
        let store = check(self.handle.get())?;
        let key = key_bytes(key)?;
        let views = parts.iter().map(|p| ByteView::readable(&p)).collect::<PyResult<Vec<_>>>()?;
        let slices: Vec<&[u8]> = views.iter().map(ByteView::as_slice).collect();
        check(py.detach(|| store.put_parts(key, &slices)))
    }

    /// The value under `key` as bytes. Raises `NotFound`.
    fn get<'py>(&self, py: Python<'py>, key: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let store = check(self.handle.get())?;
        let key = key_bytes(key)?;
        let value = check(py.detach(|| store.get(key)))?;
        new_bytes(py, &value)
    }

    /// Copies the value under `key` into `buffer` (a writable buffer: bytearray,
    /// memoryview, numpy array); returns its length. Raises `BufferTooSmall`.
    fn get_into(&self, py: Python<'_>, key: &Bound<'_, PyAny>, buffer: &Bound<'_, PyAny>) -> PyResult<usize> {
        let store = check(self.handle.get())?;
        let key = key_bytes(key)?;
        let mut view = ByteView::writable(buffer)?;
        let buf = view
            .as_mut_slice()
            .ok_or_else(|| pyo3::exceptions::PyTypeError::new_err("the buffer is read-only"))?;
        check(py.detach(|| store.get_into(key, buf)))
    }

    /// The size of the value under `key`. Raises `NotFound`.
    fn get_size(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<u64> {
        let store = check(self.handle.get())?;
        let key = key_bytes(key)?;
        check(py.detach(|| store.get_size(key)))
    }

    /// Whether `key` holds a complete object.
    fn exists(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let store = check(self.handle.get())?;
        let key = key_bytes(key)?;
        check(py.detach(|| store.exists(key)))
    }

    /// Removes the object under `key` (`force`: even while a read lease protects it,
    /// else `HasLease`).
    #[pyo3(signature = (key, force=false))]
    fn remove(&self, py: Python<'_>, key: &Bound<'_, PyAny>, force: bool) -> PyResult<()> {
        let store = check(self.handle.get())?;
        let key = key_bytes(key)?;
        check(py.detach(|| store.remove(key, force)))
    }

    /// Removes every object (`force`: leased ones too); returns how many went.
    #[pyo3(signature = (force=false))]
    fn remove_all(&self, py: Python<'_>, force: bool) -> PyResult<u64> {
        let store = check(self.handle.get())?;
        check(py.detach(|| store.remove_all(force)))
    }

    /// Puts `values[i]` under `keys[i]`; one entry per item: `None`, or the exception
    /// that item met. Raises `BatchLength` if the lists differ in length.
    fn batch_put<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<Bound<'_, PyAny>>,
        values: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let store = check(self.handle.get())?;
        if keys.len() != values.len() {
            return Err(to_py(&StoreError::BatchLength { keys: keys.len(), buffers: values.len() }));
        }
        let keys = keys_of(&keys)?;
        let views = values.iter().map(ByteView::readable).collect::<PyResult<Vec<_>>>()?;
        let items: Vec<(&[u8], &[u8])> = keys.into_iter().zip(views.iter().map(ByteView::as_slice)).collect();
        let results = py.detach(|| store.batch_put(&items));
        outcomes(py, results)
    }

    /// The values under `keys`, with every read from SSD in flight at once: per key
    /// its bytes, `None` if there is no object, or the exception it met.
    fn batch_get<'py>(&self, py: Python<'py>, keys: Vec<Bound<'_, PyAny>>) -> PyResult<Bound<'py, PyList>> {
        let store = check(self.handle.get())?;
        let keys = keys_of(&keys)?;
        let results: Vec<Result<Option<_>, StoreError>> = py
            .detach(|| store.batch_get(&keys))
            .into_iter()
            .map(|r| match r {
                Err(StoreError::NotFound) => Ok(None),
                r => r.map(Some),
            })
            .collect();
        per_item(py, &results, |value| match value {
            Some(bytes) => Ok(new_bytes(py, bytes)?.into_any().unbind()),
            None => Ok(py.None()),
        })
    }

    /// Copies the values under `keys` into `buffers` (one writable buffer per key);
    /// per key its length or the exception it met. Raises `BatchLength`.
    fn batch_get_into<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<Bound<'_, PyAny>>,
        buffers: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let store = check(self.handle.get())?;
        if keys.len() != buffers.len() {
            return Err(to_py(&StoreError::BatchLength { keys: keys.len(), buffers: buffers.len() }));
        }
        let keys = keys_of(&keys)?;
        let mut views = buffers.iter().map(ByteView::writable).collect::<PyResult<Vec<_>>>()?;
        let ranges: Vec<(usize, usize)> =
            views.iter().map(|v| (v.as_slice().as_ptr() as usize, v.as_slice().len())).collect();
        if larder_ffi::ranges::overlapping(&ranges).contains(&true) {
            return Err(pyo3::exceptions::PyValueError::new_err("the buffers overlap one another"));
        }
        let mut bufs = Vec::with_capacity(views.len());
        for view in &mut views {
            bufs.push(
                view.as_mut_slice()
                    .ok_or_else(|| pyo3::exceptions::PyTypeError::new_err("a buffer is read-only"))?,
            );
        }
        let results = py.detach(|| store.batch_get_into(&keys, &mut bufs));
        per_item(py, &results, |n| Ok(n.into_pyobject(py)?.into_any().unbind()))
    }

    /// Whether each key holds a complete object: per key a bool, or the exception it
    /// met.
    fn batch_exists<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let store = check(self.handle.get())?;
        let keys = keys_of(&keys)?;
        let results = py.detach(|| store.batch_exists(&keys));
        per_item(py, &results, |b| Ok(pyo3::types::PyBool::new(py, *b).to_owned().into_any().unbind()))
    }

    /// Removes each key's object; per key `None` or the exception it met.
    #[pyo3(signature = (keys, force=false))]
    fn batch_remove<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<Bound<'_, PyAny>>,
        force: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let store = check(self.handle.get())?;
        let keys = keys_of(&keys)?;
        let results = py.detach(|| store.batch_remove(&keys, force));
        outcomes(py, results)
    }

    /// Waits until everything acknowledged before the call is durable on SSD.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let store = check(self.handle.get())?;
        check(py.detach(|| store.flush()))
    }

    /// Flushes and closes the store; later calls raise `Closed`. Closing twice is fine.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        match self.handle.take() {
            Some(store) => check(py.detach(|| store.close()).or_else(|e| match e {
                StoreError::Closed => Ok(()),
                e => Err(e),
            })),
            None => Ok(()),
        }
    }

    /// Whether the store is closed.
    #[getter]
    fn closed(&self) -> bool {
        !self.handle.is_open()
    }

    /// Counters and gauges, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let store = check(self.handle.get())?;
        stats_dict(py, &store.stats())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}
