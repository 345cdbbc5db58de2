"""A drop-in for ``mooncake.store``: switch an integration by changing its import::

    from larder.mooncake import MooncakeDistributedStore

    store = MooncakeDistributedStore()
    store.setup("localhost", "P2PHANDSHAKE", 4 << 30, 16 << 20, "tcp", "", "embedded")

``master_server_addr`` "embedded" (or "") opens the embedded store; any other address is
a ``larder master``. Calls return Mooncake's numbers: 0, or its negative error codes
(``ErrorCode`` below).
"""

from ._native import MOONCAKE_CODES, BufferHandle, MooncakeDistributedStore


class ErrorCode:
    """Mooncake's error numbers, as this module returns them."""


for _name, _number in MOONCAKE_CODES.items():
    setattr(ErrorCode, _name, _number)


class ReplicateConfig:
    """Mooncake's per-put replication settings. Accepted by every put for compatibility;
    Larder places replicas by the master's policy (``replica_num`` is not applied yet)."""

    def __init__(self, replica_num=1, with_soft_pin=False, preferred_segment=""):
        self.replica_num = replica_num
        self.with_soft_pin = with_soft_pin
        self.preferred_segment = preferred_segment


__all__ = ["BufferHandle", "ErrorCode", "MooncakeDistributedStore", "ReplicateConfig"]
