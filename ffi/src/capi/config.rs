//! `larder_config`: the builder a store is opened from.

use std::ffi::{CStr, c_char};

use larder_tokio::StoreConfig;

use super::error::{boundary, fail, larder_result, larder_result::*};
use crate::settings;

/// A store's configuration, built by the `larder_config_*` calls and read by
/// `larder_store_open` (which copies it: free it whenever you like).
#[derive(Debug)]
pub struct larder_config {
    pub(crate) config: StoreConfig,
}

/// The text at `s`, or an error code: null, or not UTF-8.
///
/// # Safety
/// A non-null `s` is a NUL-terminated string that lives for the call.
unsafe fn text<'a>(s: *const c_char, what: &str) -> Result<&'a str, larder_result> {
    if s.is_null() {
        return Err(LARDER_NULL_PARAMETER);
    }
    // SAFETY: non-null and NUL-terminated (the caller's promise).
    let c = unsafe { CStr::from_ptr(s) };
    c.to_str().map_err(|_| fail(LARDER_INVALID_PARAMETER, format_args!("{what} is not UTF-8")))
}

/// Runs `edit` on the configuration at `config` behind the panic boundary.
///
/// # Safety
/// A non-null `config` came from `larder_config_new` or `larder_config_from_env`, is
/// not freed, and no other thread uses it during the call.
unsafe fn with_config(
    config: *mut larder_config,
    edit: impl FnOnce(&mut StoreConfig) -> Result<(), larder_result>,
) -> larder_result {
    boundary(|| {
        // SAFETY: a live `larder_config` only this thread uses now (the caller's promise).
        let Some(config) = (unsafe { config.as_mut() }) else { return LARDER_NULL_PARAMETER };
        edit(&mut config.config).err().unwrap_or(LARDER_OK)
    })
}

/// A configuration with the defaults: the embedded store, memory only, 512 MiB. Free
/// it with `larder_config_free`. Never null.
#[unsafe(no_mangle)]
pub extern "C" fn larder_config_new() -> *mut larder_config {
    // A panic here would be an allocation failure, which aborts rather than unwinds.
    Box::into_raw(Box::new(larder_config { config: StoreConfig::default() }))
}

/// The defaults with the `LARDER_*` environment variables applied, into `*out`
/// (`LARDER_CONFIG` and the reason in `larder_last_error_message` if one does not
/// parse).
///
/// # Safety
/// `out` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_config_from_env(out: *mut *mut larder_config) -> larder_result {
    boundary(|| {
        if out.is_null() {
            return LARDER_NULL_PARAMETER;
        }
        match settings::config_from_env() {
            Ok(config) => {
                // SAFETY: non-null and writable (the caller's promise).
                unsafe { *out = Box::into_raw(Box::new(larder_config { config })) };
                LARDER_OK
            }
            Err(e) => fail(LARDER_CONFIG, e),
        }
    })
}

/// Sets one setting by name from text, as the `LARDER_*` variables and Python's
/// keyword arguments are given: `memory` ("512MiB"), `storage_root` ("" for none),
/// `master` ("host:port"; "" or "embedded" for the embedded store), `cluster`,
/// `lease_ttl` ("500ms"), `max_disk_bytes` ("0" for no limit), `write_behind_bytes`,
/// `high_watermark`, `low_watermark` ("0.9"), `direct_io` ("auto" or "never").
/// Returns `LARDER_CONFIG` (reason in `larder_last_error_message`) for an unknown name
/// or a value that does not parse, and changes nothing then.
///
/// # Safety
/// `config` as for every `larder_config_*` call; `name` and `value` are null or
/// NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_config_set(
    config: *mut larder_config,
    name: *const c_char,
    value: *const c_char,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_config(config, |c| {
            let name = text(name, "the setting's name")?;
            let value = text(value, "the setting's value")?;
            settings::apply_setting(c, name, value).map_err(|e| fail(LARDER_CONFIG, e))
        })
    }
}

/// Bytes of memory the store keeps values in (with a master: contributes; 0 = a pure
/// client). Checked when the store opens.
///
/// # Safety
/// `config` is null or a live configuration no other thread uses during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_config_set_memory_bytes(
    config: *mut larder_config,
    bytes: u64,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_config(config, |c| {
            c.memory_bytes = bytes;
            Ok(())
        })
    }
}

/// The storage root for persistence (an existing, writable directory); null or "" for
/// memory only.
///
/// # Safety
/// `config` as for every `larder_config_*` call; `path` is null or a NUL-terminated
/// string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_config_set_storage_root(
    config: *mut larder_config,
    path: *const c_char,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_config(config, |c| {
            let path = if path.is_null() { "" } else { text(path, "the storage root")? };
            settings::apply_setting(c, "storage_root", path).map_err(|e| fail(LARDER_CONFIG, e))
        })
    }
}

/// A `larder master` to join ("host:port"); null, "" or "embedded" for the embedded
/// store.
///
/// # Safety
/// `config` as for every `larder_config_*` call; `address` is null or a NUL-terminated
/// string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_config_set_master(
    config: *mut larder_config,
    address: *const c_char,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_config(config, |c| {
            let address = if address.is_null() { "" } else { text(address, "the master's address")? };
            settings::apply_setting(c, "master", address).map_err(|e| fail(LARDER_CONFIG, e))
        })
    }
}

/// How long a read keeps an object from eviction and from a remove without force, in
/// milliseconds.
///
/// # Safety
/// `config` is null or a live configuration no other thread uses during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_config_set_lease_ttl_ms(
    config: *mut larder_config,
    millis: u64,
) -> larder_result {
    // SAFETY: forwarded from this function's own contract.
    unsafe {
        with_config(config, |c| {
            c.lease_ttl = core::time::Duration::from_millis(millis);
            Ok(())
        })
    }
}

/// Frees a configuration (null is ignored).
///
/// # Safety
/// A non-null `config` came from `larder_config_new` or `larder_config_from_env` and is
/// not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn larder_config_free(config: *mut larder_config) {
    let _ = boundary(|| {
        if !config.is_null() {
            // SAFETY: made by `Box::into_raw` in this module and not freed before (the
            // caller's promise).
            drop(unsafe { Box::from_raw(config) });
        }
        LARDER_OK
    });
}
