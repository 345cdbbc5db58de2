//! Larder for foreign callers: the C ABI ([`capi`], header `ffi/include/larder.h`) and
//! the blocking [`facade`] it shares with the Python extension (`ffi/python`).
//!
//! `unsafe` lives here (and in the OS drivers) only: every block says why it holds.

pub mod capi;
pub mod facade;
pub mod ranges;
pub mod settings;

pub use facade::{BlockingStore, RegisteredBuffers, RegistrationError};
pub use larder_tokio::{ConfigError, StoreConfig, StoreError, StoreStats, parse_size};
