"""Larder: a tiered KV-cache store for LLM inference (memory + SSD, embedded or a cluster).

Two faces over one native store:

* ``larder.Store`` — Pythonic: exceptions under ``larder.StoreError``, any buffer-protocol
  value (bytes, bytearray, memoryview, numpy arrays), ``str`` or ``bytes`` keys::

      with larder.Store(storage_root="/data/larder", memory="4GiB") as store:
          store.put("prefix/0", b"...")
          value = store.get("prefix/0")

* ``larder.mooncake.MooncakeDistributedStore`` — a drop-in for Mooncake's class: same
  names, signatures and integer return codes.

The GIL is released while a call copies, waits or does I/O.
"""

from ._native import (
    AlreadyExists,
    BatchLength,
    BufferTooSmall,
    Closed,
    ConfigError,
    Corrupted,
    EmptyValue,
    HasLease,
    InternalError,
    InvalidKey,
    NoSpace,
    NotFound,
    NotReady,
    ProtocolError,
    StorageError,
    Store,
    StoreError,
    TooLarge,
    TransferError,
    Unreachable,
)

__all__ = [
    "AlreadyExists",
    "BatchLength",
    "BufferTooSmall",
    "Closed",
    "ConfigError",
    "Corrupted",
    "EmptyValue",
    "HasLease",
    "InternalError",
    "InvalidKey",
    "NoSpace",
    "NotFound",
    "NotReady",
    "ProtocolError",
    "StorageError",
    "Store",
    "StoreError",
    "TooLarge",
    "TransferError",
    "Unreachable",
]
