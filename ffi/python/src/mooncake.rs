//! `larder.mooncake.MooncakeDistributedStore`: Mooncake's Python class, with its names,
//! signatures and return conventions, over a Larder store. An integration switches by
//! changing its import.
//!
//! Conventions (Mooncake's): calls return 0 or a negative Mooncake error number, never
//! raise for a store error (only for arguments of the wrong type); a put on an existing
//! key returns 0 and keeps the first value; `get` returns `b""` for a missing key and
//! `get_buffer` `None`; batches answer one entry per key, every entry negative when the
//! lists differ in length, `[]` when empty. A raw address is used only inside a region
//! given to `register_buffer`: anything else is -600, never a dereference.

use std::ffi::{c_int, c_void};

use bytes::Bytes;
use larder_ffi::ranges::overlapping;
use larder_ffi::settings::{apply_setting, config_from_env};
use larder_ffi::{BlockingStore, RegisteredBuffers, StoreConfig, StoreError};
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyTuple};
use pyo3::{PyErr, ffi};

use crate::view::ByteView;
use crate::{Handle, key_bytes, keys_of};

/// Mooncake's error numbers (its `ErrorCode`), the ones this face returns.
pub(crate) mod code {
    pub(crate) const OK: i64 = 0;
    pub(crate) const INTERNAL_ERROR: i64 = -1;
    pub(crate) const NO_AVAILABLE_HANDLE: i64 = -200;
    pub(crate) const INVALID_KEY: i64 = -400;
    pub(crate) const INVALID_PARAMS: i64 = -600;
    pub(crate) const REPLICA_IS_NOT_READY: i64 = -703;
    pub(crate) const OBJECT_NOT_FOUND: i64 = -704;
    pub(crate) const OBJECT_ALREADY_EXISTS: i64 = -705;
    pub(crate) const OBJECT_HAS_LEASE: i64 = -706;
    pub(crate) const TRANSFER_FAIL: i64 = -800;
    pub(crate) const CHECKSUM_MISMATCH: i64 = -801;
    pub(crate) const RPC_FAIL: i64 = -900;
    pub(crate) const FILE_WRITE_FAIL: i64 = -1102;

    /// Name and number of each, exported to Python.
    pub(crate) const ALL: &[(&str, i64)] = &[
        ("OK", OK),
        ("INTERNAL_ERROR", INTERNAL_ERROR),
        ("NO_AVAILABLE_HANDLE", NO_AVAILABLE_HANDLE),
        ("INVALID_KEY", INVALID_KEY),
        ("INVALID_PARAMS", INVALID_PARAMS),
        ("REPLICA_IS_NOT_READY", REPLICA_IS_NOT_READY),
        ("OBJECT_NOT_FOUND", OBJECT_NOT_FOUND),
        ("OBJECT_ALREADY_EXISTS", OBJECT_ALREADY_EXISTS),
        ("OBJECT_HAS_LEASE", OBJECT_HAS_LEASE),
        ("TRANSFER_FAIL", TRANSFER_FAIL),
        ("CHECKSUM_MISMATCH", CHECKSUM_MISMATCH),
        ("RPC_FAIL", RPC_FAIL),
        ("FILE_WRITE_FAIL", FILE_WRITE_FAIL),
    ];
}

/// Adds `larder._native.codes`, a dict of the error numbers.
pub(crate) fn add_codes(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let codes = PyDict::new(m.py());
    for (name, number) in code::ALL {
        codes.set_item(name, number)?;
    }
    m.add("MOONCAKE_CODES", codes)
}

/// Mooncake's number for a store error.
fn code_of(e: &StoreError) -> i64 {
    match e {
        StoreError::NotFound => code::OBJECT_NOT_FOUND,
        StoreError::AlreadyExists => code::OBJECT_ALREADY_EXISTS,
        StoreError::HasLease => code::OBJECT_HAS_LEASE,
        StoreError::NotReady => code::REPLICA_IS_NOT_READY,
        StoreError::NoSpace => code::NO_AVAILABLE_HANDLE,
        StoreError::InvalidKey(_) => code::INVALID_KEY,
        StoreError::TooLarge { .. }
        | StoreError::EmptyValue
        | StoreError::BufferTooSmall { .. }
        | StoreError::BatchLength { .. }
        | StoreError::Config(_) => code::INVALID_PARAMS,
        StoreError::Corrupted(_) => code::CHECKSUM_MISMATCH,
        StoreError::Storage(_) => code::FILE_WRITE_FAIL,
        StoreError::Unreachable(_) => code::RPC_FAIL,
        StoreError::Transfer(_) => code::TRANSFER_FAIL,
        _ => code::INTERNAL_ERROR,
    }
}

/// A put's number: an existing key keeps its first value and is success, as Mooncake's.
fn put_code(r: &Result<(), StoreError>) -> i64 {
    match r {
        Ok(()) | Err(StoreError::AlreadyExists) => code::OK,
        Err(e) => code_of(e),
    }
}

/// Bytes read from a store, exported to Python through the buffer protocol without a
/// copy (`memoryview(handle)`, `numpy.frombuffer(handle, ...)`), as Mooncake's
/// `BufferHandle`: `ptr()` and `size()`.
#[pyclass(module = "larder.mooncake", frozen)]
pub(crate) struct BufferHandle {
    bytes: Bytes,
}

#[pymethods]
impl BufferHandle {
    /// The address of the first byte.
    fn ptr(&self) -> usize {
        self.bytes.as_ptr() as usize
    }

    /// How many bytes.
    fn size(&self) -> usize {
        self.bytes.len()
    }

    fn __len__(&self) -> usize {
        self.bytes.len()
    }

    /// # Safety
    /// Called by Python with a view to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        // PyBuffer_FillInfo itself refuses a writable request (BufferError).
        let bytes = &slf.get().bytes;
        let len = isize::try_from(bytes.len()).map_err(|_| PyBufferError::new_err("too large"))?;
        // SAFETY: `view` is the caller's view to fill; the bytes live as long as this
        // object, which PyBuffer_FillInfo keeps alive (it takes a reference to it in
        // `view.obj`) until the view is released; they are exported read-only.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                bytes.as_ptr().cast_mut().cast::<c_void>(),
                len,
                1,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::take(slf.py()).unwrap_or_else(|| PyBufferError::new_err("cannot export")));
        }
        Ok(())
    }

    /// # Safety
    /// Called by Python; nothing to release (the bytes go with the object).
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}

/// The bytes at `[ptr, ptr + size)` if that range lies inside a registered buffer.
fn registered<'a>(buffers: &'a RegisteredBuffers<'_>, ptr: usize, size: usize) -> Option<&'a [u8]> {
    if size == 0 || !buffers.contains(ptr, size) {
        return None;
    }
    // SAFETY: the range lies inside a region the caller registered, promising it is
    // live memory it keeps until it unregisters it; `buffers` holds the registry, so it
    // cannot be unregistered while the slice lives.
    Some(unsafe { core::slice::from_raw_parts(ptr as *const u8, size) })
}

/// The bytes at `[ptr, ptr + size)` for writing, as [`registered`]; the caller makes
/// sure no two such slices overlap ([`overlapping`]).
// The bytes are the caller's memory, not the registry's: the shared borrow only keeps
// the region registered while the slice lives.
#[allow(clippy::mut_from_ref)]
fn registered_mut<'a>(buffers: &'a RegisteredBuffers<'_>, ptr: usize, size: usize) -> Option<&'a mut [u8]> {
    if size == 0 || !buffers.contains(ptr, size) {
        return None;
    }
    // SAFETY: as `registered`; the callers hand out one slice per range and drop every
    // range that overlaps another, so no two live `&mut` alias.
    Some(unsafe { core::slice::from_raw_parts_mut(ptr as *mut u8, size) })
}

/// Mooncake's `global_segment_size` when none is given: 16 MB.
const DEFAULT_SEGMENT: u64 = 16 << 20;

/// `setup`'s arguments, from its positional form or its dict.
#[derive(Debug, Default)]
struct Setup {
    hostname: String,
    segment: Option<u64>,
    protocol: String,
    master: String,
    ssd: bool,
    ssd_path: String,
    tenant: Option<String>,
}

/// A size as Mooncake takes it: an int, or a string such as "16MB" (binary units;
/// "50%" is refused).
fn size_arg(name: &str, value: &Bound<'_, PyAny>) -> Result<u64, i64> {
    if value.is_instance_of::<PyInt>() {
        return value.extract::<u64>().map_err(|_| code::INVALID_PARAMS);
    }
    let text: String = value.extract().map_err(|_| code::INVALID_PARAMS)?;
    larder_ffi::parse_size(name, &text).map_err(|_| code::INVALID_PARAMS)
}

impl Setup {
    fn from_dict(d: &Bound<'_, PyDict>) -> Result<Self, i64> {
        let text = |key: &str, default: &str| -> Result<String, i64> {
            match d.get_item(key).map_err(|_| code::INVALID_PARAMS)? {
                Some(v) => v.extract::<String>().map_err(|_| code::INVALID_PARAMS),
                None => Ok(default.to_owned()),
            }
        };
        let hostname = d.get_item("local_hostname").ok().flatten().ok_or(code::INVALID_PARAMS)?;
        d.get_item("metadata_server").ok().flatten().ok_or(code::INVALID_PARAMS)?;
        let segment = match d.get_item("global_segment_size").map_err(|_| code::INVALID_PARAMS)? {
            Some(v) => Some(size_arg("global_segment_size", &v)?),
            None => Some(DEFAULT_SEGMENT),
        };
        if let Some(v) = d.get_item("local_buffer_size").map_err(|_| code::INVALID_PARAMS)? {
            size_arg("local_buffer_size", &v)?;
        }
        let ssd = match d.get_item("enable_ssd_offload").map_err(|_| code::INVALID_PARAMS)? {
            Some(v) => v.is_truthy().map_err(|_| code::INVALID_PARAMS)?,
            None => false,
        };
        Ok(Self {
            hostname: hostname.extract().map_err(|_| code::INVALID_PARAMS)?,
            segment,
            protocol: text("protocol", "tcp")?,
            master: text("master_server_addr", "embedded")?,
            ssd,
            ssd_path: text("ssd_offload_path", "")?,
            tenant: match d.get_item("tenant_id").map_err(|_| code::INVALID_PARAMS)? {
                Some(v) => Some(v.extract().map_err(|_| code::INVALID_PARAMS)?),
                None => None,
            },
        })
    }

    /// The store configuration: the `LARDER_*` environment, then these arguments.
    fn config(&self) -> Result<StoreConfig, i64> {
        if !matches!(self.protocol.as_str(), "tcp" | "rdma") {
            return Err(code::INVALID_PARAMS);
        }
        let mut config = config_from_env().map_err(|_| code::INVALID_PARAMS)?;
        if let Some(bytes) = self.segment {
            config.memory_bytes = bytes;
        }
        apply_setting(&mut config, "master", &self.master).map_err(|_| code::INVALID_PARAMS)?;
        if let Some(tenant) = &self.tenant {
            config.cluster = tenant.clone();
        }
        config.storage_root = match self.ssd {
            false => None,
            true => {
                let path = Some(self.ssd_path.clone())
                    .filter(|p| !p.is_empty())
                    .or_else(|| std::env::var("MOONCAKE_OFFLOAD_FILE_STORAGE_PATH").ok())
                    .or_else(|| config.storage_root.as_ref().map(|p| p.display().to_string()));
                Some(path.filter(|p| !p.is_empty()).ok_or(code::INVALID_PARAMS)?.into())
            }
        };
        Ok(config)
    }
}

/// Mooncake's `MooncakeDistributedStore` over Larder. `setup` with
/// `master_server_addr` "embedded" (or "") opens the embedded store; any other address
/// is a `larder master`. `global_segment_size` is the memory contributed;
/// `enable_ssd_offload` with `ssd_offload_path` is the storage root. `LARDER_LEASE_TTL`
/// (e.g. "500ms") sets the read lease, as Mooncake's `--default_kv_lease_ttl`.
#[pyclass(module = "larder.mooncake", frozen)]
pub(crate) struct MooncakeDistributedStore {
    handle: Handle,
    hostname: std::sync::Mutex<String>,
}

impl MooncakeDistributedStore {
    fn store(&self) -> Result<std::sync::Arc<BlockingStore>, i64> {
        self.handle.get().map_err(|_| code::INTERNAL_ERROR)
    }
}

/// One negative entry per key: the lists given differ in length.
fn mismatched(n: usize) -> Vec<i64> {
    vec![code::INVALID_PARAMS; n]
}

#[pymethods]
impl MooncakeDistributedStore {
    #[new]
    fn new() -> Self {
        Self { handle: Handle::default(), hostname: std::sync::Mutex::new(String::new()) }
    }

    /// `setup(local_hostname, metadata_server, global_segment_size, local_buffer_size,
    /// protocol, rdma_devices, master_server_addr, engine=None, enable_ssd_offload=False,
    /// ssd_offload_path="", tenant_id="default", enable_client_http_server=False,
    /// client_http_port=9300)` or `setup(dict)`. 0, or -600 for arguments it cannot use
    /// (a size such as "50%", an unknown protocol, a store already set up).
    #[pyo3(signature = (
        local_hostname, metadata_server=None, global_segment_size=None, local_buffer_size=None,
        protocol=None, rdma_devices=None, master_server_addr=None, engine=None,
        enable_ssd_offload=false, ssd_offload_path=None, tenant_id=None,
        enable_client_http_server=false, client_http_port=9300
    ))]
    #[allow(clippy::too_many_arguments)]
    fn setup(
        &self,
        py: Python<'_>,
        local_hostname: &Bound<'_, PyAny>,
        metadata_server: Option<&Bound<'_, PyAny>>,
        global_segment_size: Option<&Bound<'_, PyAny>>,
        local_buffer_size: Option<&Bound<'_, PyAny>>,
        protocol: Option<String>,
        rdma_devices: Option<&Bound<'_, PyAny>>,
        master_server_addr: Option<String>,
        engine: Option<&Bound<'_, PyAny>>,
        enable_ssd_offload: bool,
        ssd_offload_path: Option<String>,
        tenant_id: Option<String>,
        enable_client_http_server: bool,
        client_http_port: u16,
    ) -> PyResult<i64> {
        // Transfer-engine details Larder has no use for: its transfers are its own.
        let _ = (metadata_server, rdma_devices, engine, enable_client_http_server, client_http_port);
        let setup = match local_hostname.cast::<PyDict>() {
            Ok(d) => Setup::from_dict(d),
            Err(_) => (|| {
                let segment = match global_segment_size {
                    Some(v) => size_arg("global_segment_size", v)?,
                    None => DEFAULT_SEGMENT,
                };
                if let Some(v) = local_buffer_size {
                    size_arg("local_buffer_size", v)?;
                }
                Ok(Setup {
                    hostname: local_hostname.extract().map_err(|_| code::INVALID_PARAMS)?,
                    segment: Some(segment),
                    protocol: protocol.unwrap_or_else(|| "tcp".into()),
                    master: master_server_addr.unwrap_or_default(),
                    ssd: enable_ssd_offload,
                    ssd_path: ssd_offload_path.unwrap_or_default(),
                    tenant: tenant_id,
                })
            })(),
        };
        let config = match setup.as_ref().map_err(|c| *c).and_then(Setup::config) {
            Ok(config) => config,
            Err(c) => return Ok(c),
        };
        if self.handle.is_open() {
            return Ok(code::INVALID_PARAMS);
        }
        match py.detach(|| BlockingStore::open(config)) {
            Ok(store) => {
                if !self.handle.set(store) {
                    return Ok(code::INVALID_PARAMS);
                }
                if let Ok(setup) = setup {
                    *self.hostname.lock().unwrap_or_else(|e| e.into_inner()) = setup.hostname;
                }
                Ok(code::OK)
            }
            Err(e) => Ok(code_of(&e)),
        }
    }

    /// Stores `value` (any buffer) under `key`: 0 (also when the key exists: the first
    /// value stays), or a negative number.
    #[pyo3(signature = (key, value, config=None))]
    fn put(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i64> {
        let _ = config;
        let Ok(store) = self.store() else { return Ok(code::INTERNAL_ERROR) };
        let (key, value) = (key_bytes(key)?, ByteView::readable(value)?);
        let value = value.as_slice();
        Ok(put_code(&py.detach(|| store.put(key, value))))
    }

    /// Stores the concatenation of `parts` under `key`.
    #[pyo3(signature = (key, *parts, config=None))]
    fn put_parts(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        parts: &Bound<'_, PyTuple>,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i64> {
        let _ = config;
        let Ok(store) = self.store() else { return Ok(code::INTERNAL_ERROR) };
        let key = key_bytes(key)?;
        let views = parts.iter().map(|p| ByteView::readable(&p)).collect::<PyResult<Vec<_>>>()?;
        let slices: Vec<&[u8]> = views.iter().map(ByteView::as_slice).collect();
        Ok(put_code(&py.detach(|| store.put_parts(key, &slices))))
    }

    /// Puts each value under its key: 0 if every put succeeded, else the first
    /// failure's number (-600 if the lists differ in length).
    #[pyo3(signature = (keys, values, config=None))]
    fn put_batch(
        &self,
        py: Python<'_>,
        keys: Vec<Bound<'_, PyAny>>,
        values: Vec<Bound<'_, PyAny>>,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i64> {
        let _ = config;
        let Ok(store) = self.store() else { return Ok(code::INTERNAL_ERROR) };
        if keys.len() != values.len() {
            return Ok(code::INVALID_PARAMS);
        }
        let keys = keys_of(&keys)?;
        let views = values.iter().map(ByteView::readable).collect::<PyResult<Vec<_>>>()?;
        let items: Vec<(&[u8], &[u8])> = keys.into_iter().zip(views.iter().map(ByteView::as_slice)).collect();
        let results = py.detach(|| store.batch_put(&items));
        Ok(results.iter().map(put_code).find(|c| *c != code::OK).unwrap_or(code::OK))
    }

    /// Stores `size` bytes at address `buffer_ptr`, which must lie inside a registered
    /// buffer (else -600).
    #[pyo3(signature = (key, buffer_ptr, size, config=None))]
    fn put_from(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        buffer_ptr: usize,
        size: usize,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i64> {
        let _ = config;
        let Ok(store) = self.store() else { return Ok(code::INTERNAL_ERROR) };
        let key = key_bytes(key)?;
        // The registry is read with the GIL released: a thread holding the GIL never
        // waits on it, so an unregister waiting for this call cannot stall the call.
        Ok(py.detach(|| {
            let buffers = store.registered_buffers();
            match registered(&buffers, buffer_ptr, size) {
                Some(value) => put_code(&store.put(key, value)),
                None => code::INVALID_PARAMS,
            }
        }))
    }

    /// `put_from` for each key: one number per key.
    #[pyo3(signature = (keys, buffer_ptrs, sizes, config=None))]
    fn batch_put_from(
        &self,
        py: Python<'_>,
        keys: Vec<Bound<'_, PyAny>>,
        buffer_ptrs: Vec<usize>,
        sizes: Vec<usize>,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<i64>> {
        let _ = config;
        let Ok(store) = self.store() else { return Ok(vec![code::INTERNAL_ERROR; keys.len()]) };
        if keys.len() != buffer_ptrs.len() || keys.len() != sizes.len() {
            return Ok(mismatched(keys.len()));
        }
        let keys = keys_of(&keys)?;
        Ok(py.detach(|| {
            let buffers = store.registered_buffers();
            let mut codes = vec![code::INVALID_PARAMS; keys.len()];
            let mut items = Vec::with_capacity(keys.len());
            let mut at = Vec::with_capacity(keys.len());
            for (i, (&ptr, &size)) in buffer_ptrs.iter().zip(&sizes).enumerate() {
                if let Some(value) = registered(&buffers, ptr, size) {
                    items.push((keys[i], value));
                    at.push(i);
                }
            }
            let results = store.batch_put(&items);
            for (i, r) in at.into_iter().zip(&results) {
                codes[i] = put_code(r);
            }
            codes
        }))
    }

    /// Stores, under each key, the concatenation of its buffers (`all_buffer_ptrs[i]`,
    /// `all_sizes[i]`, each inside a registered buffer): one number per key.
    #[pyo3(signature = (keys, all_buffer_ptrs, all_sizes, config=None))]
    fn batch_put_from_multi_buffers(
        &self,
        py: Python<'_>,
        keys: Vec<Bound<'_, PyAny>>,
        all_buffer_ptrs: Vec<Vec<usize>>,
        all_sizes: Vec<Vec<usize>>,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<i64>> {
        let _ = config;
        let Ok(store) = self.store() else { return Ok(vec![code::INTERNAL_ERROR; keys.len()]) };
        if keys.len() != all_buffer_ptrs.len() || keys.len() != all_sizes.len() {
            return Ok(mismatched(keys.len()));
        }
        let keys = keys_of(&keys)?;
        let codes = py.detach(|| {
            let buffers = store.registered_buffers();
            let parts: Vec<Option<Vec<&[u8]>>> = all_buffer_ptrs
                .iter()
                .zip(&all_sizes)
                .map(|(ptrs, sizes)| {
                    (ptrs.len() == sizes.len() && !ptrs.is_empty())
                        .then(|| ptrs.iter().zip(sizes).map(|(&p, &s)| registered(&buffers, p, s)).collect())
                        .flatten()
                })
                .collect();

            keys.iter()
                .zip(&parts)
                .map(|(key, parts)| match parts {
                    Some(parts) => put_code(&store.put_parts(key, parts)),
                    None => code::INVALID_PARAMS,
                })
                .collect()
        });
        Ok(codes)
    }

    /// The value under `key` as bytes; `b""` if there is none (or on any error).
    fn get<'py>(&self, py: Python<'py>, key: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let Ok(store) = self.store() else { return Ok(PyBytes::new(py, b"")) };
        let key = key_bytes(key)?;
        let value = py.detach(|| store.get(key)).unwrap_or_default();
        crate::new_bytes(py, &value)
    }

    /// `get` for each key (`b""` for each missing one), with every read from SSD in
    /// flight at once.
    fn get_batch<'py>(&self, py: Python<'py>, keys: Vec<Bound<'_, PyAny>>) -> PyResult<Bound<'py, PyList>> {
        let values = match self.store() {
            Ok(store) => {
                let keys = keys_of(&keys)?;
                py.detach(|| store.batch_get(&keys))
            }
            Err(_) => keys.iter().map(|_| Err(StoreError::Closed)).collect(),
        };
        let values = values
            .iter()
            .map(|v| crate::new_bytes(py, v.as_deref().unwrap_or_default()))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, values)
    }

    /// The value under `key` without a copy into Python (a `BufferHandle`), or `None`.
    fn get_buffer(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<BufferHandle>> {
        let Ok(store) = self.store() else { return Ok(None) };
        let key = key_bytes(key)?;
        Ok(py.detach(|| store.get(key)).ok().map(|bytes| BufferHandle { bytes }))
    }

    /// `get_buffer` for each key.
    fn batch_get_buffer(
        &self,
        py: Python<'_>,
        keys: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<Vec<Option<BufferHandle>>> {
        let Ok(store) = self.store() else { return Ok(keys.iter().map(|_| None).collect()) };
        let keys = keys_of(&keys)?;
        let values = py.detach(|| store.batch_get(&keys));
        Ok(values.into_iter().map(|v| v.ok().map(|bytes| BufferHandle { bytes })).collect())
    }

    /// Copies the value under `key` to `[buffer_ptr, buffer_ptr + size)` (inside a
    /// registered buffer); the bytes copied, or a negative number (-600 if the buffer
    /// is smaller than the value).
    fn get_into(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        buffer_ptr: usize,
        size: usize,
    ) -> PyResult<i64> {
        let Ok(store) = self.store() else { return Ok(code::INTERNAL_ERROR) };
        let key = key_bytes(key)?;
        Ok(py.detach(|| {
            let buffers = store.registered_buffers();
            let Some(buf) = registered_mut(&buffers, buffer_ptr, size) else { return code::INVALID_PARAMS };
            match store.get_into(key, buf) {
                Ok(n) => n as i64,
                Err(e) => code_of(&e),
            }
        }))
    }

    /// `get_into` for each key, every read from SSD in flight at once: one number per
    /// key (buffers that overlap each other are -600).
    fn batch_get_into(
        &self,
        py: Python<'_>,
        keys: Vec<Bound<'_, PyAny>>,
        buffer_ptrs: Vec<usize>,
        sizes: Vec<usize>,
    ) -> PyResult<Vec<i64>> {
        let Ok(store) = self.store() else { return Ok(vec![code::INTERNAL_ERROR; keys.len()]) };
        if keys.len() != buffer_ptrs.len() || keys.len() != sizes.len() {
            return Ok(mismatched(keys.len()));
        }
        let keys = keys_of(&keys)?;
        let ranges: Vec<(usize, usize)> = buffer_ptrs.into_iter().zip(sizes).collect();
        let refused = overlapping(&ranges);
        Ok(py.detach(|| {
            let buffers = store.registered_buffers();
            let mut codes = vec![code::INVALID_PARAMS; keys.len()];
            let (mut wanted, mut bufs, mut at) = (Vec::new(), Vec::new(), Vec::new());
            for (i, &(ptr, size)) in ranges.iter().enumerate() {
                if refused[i] {
                    continue;
                }
                if let Some(buf) = registered_mut(&buffers, ptr, size) {
                    wanted.push(keys[i]);
                    bufs.push(buf);
                    at.push(i);
                }
            }
            let results = store.batch_get_into(&wanted, &mut bufs);
            for (i, r) in at.into_iter().zip(&results) {
                codes[i] = match r {
                    Ok(n) => *n as i64,
                    Err(e) => code_of(e),
                };
            }
            codes
        }))
    }

    /// Copies each key's value across its buffers in order (`all_buffer_ptrs[i]`,
    /// `all_sizes[i]`, inside registered buffers): the bytes copied per key, or a
    /// negative number (-600 if the buffers together are smaller than the value).
    #[pyo3(signature = (keys, all_buffer_ptrs, all_sizes, prefer_alloc_in_same_node=false))]
    fn batch_get_into_multi_buffers(
        &self,
        py: Python<'_>,
        keys: Vec<Bound<'_, PyAny>>,
        all_buffer_ptrs: Vec<Vec<usize>>,
        all_sizes: Vec<Vec<usize>>,
        prefer_alloc_in_same_node: bool,
    ) -> PyResult<Vec<i64>> {
        let _ = prefer_alloc_in_same_node;
        let Ok(store) = self.store() else { return Ok(vec![code::INTERNAL_ERROR; keys.len()]) };
        if keys.len() != all_buffer_ptrs.len() || keys.len() != all_sizes.len() {
            return Ok(mismatched(keys.len()));
        }
        let keys = keys_of(&keys)?;
        // Every range of every key, and which key it belongs to.
        let mut ranges = Vec::new();
        let mut owner = Vec::new();
        let mut shape_ok = vec![true; keys.len()];
        for (i, (ptrs, sizes)) in all_buffer_ptrs.iter().zip(&all_sizes).enumerate() {
            shape_ok[i] = ptrs.len() == sizes.len() && !ptrs.is_empty();
            for (&p, &s) in ptrs.iter().zip(sizes) {
                ranges.push((p, s));
                owner.push(i);
            }
        }
        for (r, refused) in overlapping(&ranges).into_iter().enumerate() {
            if refused {
                shape_ok[owner[r]] = false;
            }
        }
        let codes = py.detach(|| {
            let buffers = store.registered_buffers();
            let mut targets: Vec<Option<Vec<&mut [u8]>>> =
                shape_ok.iter().map(|ok| ok.then(Vec::new)).collect();
            for (r, &(p, s)) in ranges.iter().enumerate() {
                let key = owner[r];
                match (targets[key].as_mut(), registered_mut(&buffers, p, s)) {
                    (Some(list), Some(buf)) => list.push(buf),
                    _ => targets[key] = None,
                }
            }
            let wanted: Vec<&[u8]> =
                keys.iter().zip(&targets).filter(|(_, t)| t.is_some()).map(|(k, _)| *k).collect();
            let mut values = store.batch_get(&wanted).into_iter();
            targets
                .iter_mut()
                .map(|target| match target {
                    None => code::INVALID_PARAMS,
                    Some(bufs) => match values.next().expect("one value per wanted key") {
                        Ok(value) => scatter(&value, bufs),
                        Err(e) => code_of(&e),
                    },
                })
                .collect()
        });
        Ok(codes)
    }

    /// The size of the value under `key`, or a negative number.
    fn get_size(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<i64> {
        let Ok(store) = self.store() else { return Ok(code::INTERNAL_ERROR) };
        let key = key_bytes(key)?;
        Ok(match py.detach(|| store.get_size(key)) {
            Ok(n) => n as i64,
            Err(e) => code_of(&e),
        })
    }

    /// 1 if `key` holds an object, 0 if not, or a negative number.
    fn is_exist(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<i64> {
        let Ok(store) = self.store() else { return Ok(code::INTERNAL_ERROR) };
        let key = key_bytes(key)?;
        Ok(exist_code(&py.detach(|| store.exists(key))))
    }

    /// `is_exist` for each key.
    fn batch_is_exist(&self, py: Python<'_>, keys: Vec<Bound<'_, PyAny>>) -> PyResult<Vec<i64>> {
        let Ok(store) = self.store() else { return Ok(vec![code::INTERNAL_ERROR; keys.len()]) };
        let keys = keys_of(&keys)?;
        Ok(py.detach(|| store.batch_exists(&keys)).iter().map(exist_code).collect())
    }

    /// Removes the object under `key` (`force`: even while a read lease protects it,
    /// else -706).
    #[pyo3(signature = (key, force=false))]
    fn remove(&self, py: Python<'_>, key: &Bound<'_, PyAny>, force: bool) -> PyResult<i64> {
        let Ok(store) = self.store() else { return Ok(code::INTERNAL_ERROR) };
        let key = key_bytes(key)?;
        Ok(unit_code(&py.detach(|| store.remove(key, force))))
    }

    /// Removes every object (`force`: leased ones too): how many went, or a negative
    /// number.
    #[pyo3(signature = (force=false))]
    fn remove_all(&self, py: Python<'_>, force: bool) -> i64 {
        let Ok(store) = self.store() else { return code::INTERNAL_ERROR };
        match py.detach(|| store.remove_all(force)) {
            Ok(n) => n as i64,
            Err(e) => code_of(&e),
        }
    }

    /// `remove` for each key.
    #[pyo3(signature = (keys, force=false))]
    fn batch_remove(&self, py: Python<'_>, keys: Vec<Bound<'_, PyAny>>, force: bool) -> PyResult<Vec<i64>> {
        let Ok(store) = self.store() else { return Ok(vec![code::INTERNAL_ERROR; keys.len()]) };
        let keys = keys_of(&keys)?;
        Ok(py.detach(|| store.batch_remove(&keys, force)).iter().map(unit_code).collect())
    }

    /// Registers `size` bytes at `buffer_ptr` for the pointer calls: 0, or -600 (no
    /// bytes, or overlapping a registered buffer).
    fn register_buffer(&self, py: Python<'_>, buffer_ptr: usize, size: usize) -> i64 {
        let Ok(store) = self.store() else { return code::INTERNAL_ERROR };
        // Without the GIL: it may wait for pointer calls running on other threads.
        match py.detach(|| store.register_buffer(buffer_ptr, size)) {
            Ok(()) => code::OK,
            Err(_) => code::INVALID_PARAMS,
        }
    }

    /// Forgets the buffer registered at `buffer_ptr`: 0, or -600 if none is.
    fn unregister_buffer(&self, py: Python<'_>, buffer_ptr: usize) -> i64 {
        let Ok(store) = self.store() else { return code::INTERNAL_ERROR };
        match py.detach(|| store.unregister_buffer(buffer_ptr)) {
            Ok(()) => code::OK,
            Err(_) => code::INVALID_PARAMS,
        }
    }

    /// Flushes and closes the store: 0, as Mooncake's (objects held only in this
    /// client's segment go with it; with a storage root they are on SSD first). A
    /// close that could not flush, or not tell an unreachable master, says so on
    /// stderr; the store is closed all the same.
    fn close(&self, py: Python<'_>) -> i64 {
        if let Some(store) = self.handle.take() {
            match py.detach(|| store.close()) {
                Ok(()) | Err(StoreError::Closed) => {}
                Err(e) => eprintln!("larder: close: {e}"),
            }
        }
        code::OK
    }

    /// 0 healthy, 1 closed (or never set up), 2 the master is unreachable.
    fn health_check(&self, py: Python<'_>) -> i64 {
        let Ok(store) = self.store() else { return 1 };
        if !store.is_member() {
            return 0;
        }
        match py.detach(|| store.exists(b"larder/health-check")) {
            Err(StoreError::Unreachable(_)) => 2,
            Err(StoreError::Closed) => 1,
            _ => 0,
        }
    }

    /// The `local_hostname` given to `setup`.
    fn get_hostname(&self) -> String {
        self.hostname.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn exist_code(r: &Result<bool, StoreError>) -> i64 {
    match r {
        Ok(true) => 1,
        Ok(false) => 0,
        Err(e) => code_of(e),
    }
}

fn unit_code(r: &Result<(), StoreError>) -> i64 {
    match r {
        Ok(()) => code::OK,
        Err(e) => code_of(e),
    }
}

/// Copies `value` across `bufs` in order: its length, or -600 if they are too small.
fn scatter(value: &[u8], bufs: &mut [&mut [u8]]) -> i64 {
    match larder_ffi::ranges::scatter(value, bufs) {
        Some(n) => n as i64,
        None => code::INVALID_PARAMS,
    }
}
