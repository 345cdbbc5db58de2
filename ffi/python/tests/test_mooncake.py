"""larder.mooncake.MooncakeDistributedStore: Mooncake's names, signatures and return
conventions, every method and code."""

import os
import random
import subprocess
import threading
import time

import numpy as np
import pytest

from larder.mooncake import BufferHandle, ErrorCode, MooncakeDistributedStore, ReplicateConfig

MiB = 1 << 20
INVALID_PARAMS = -600


def setup_store(store, segment=64 * MiB, **kwargs):
    return store.setup("localhost", "P2PHANDSHAKE", segment, 16 * MiB, "tcp", "", "embedded", **kwargs)


@pytest.fixture
def store(monkeypatch):
    monkeypatch.setenv("LARDER_LEASE_TTL", "1h")
    s = MooncakeDistributedStore()
    assert setup_store(s) == 0
    yield s
    s.close()


@pytest.fixture
def pool(store):
    """A registered 4 MiB numpy buffer: (array, its address)."""
    array = np.zeros(4 * MiB, dtype=np.uint8)
    assert store.register_buffer(array.ctypes.data, array.nbytes) == 0
    yield array, array.ctypes.data
    store.unregister_buffer(array.ctypes.data)


def test_error_numbers_are_mooncakes():
    assert (ErrorCode.OK, ErrorCode.INTERNAL_ERROR, ErrorCode.NO_AVAILABLE_HANDLE) == (0, -1, -200)
    assert (ErrorCode.INVALID_KEY, ErrorCode.INVALID_PARAMS) == (-400, -600)
    assert (ErrorCode.OBJECT_NOT_FOUND, ErrorCode.OBJECT_ALREADY_EXISTS, ErrorCode.OBJECT_HAS_LEASE) == (-704, -705, -706)
    assert (ErrorCode.REPLICA_IS_NOT_READY, ErrorCode.CHECKSUM_MISMATCH, ErrorCode.RPC_FAIL) == (-703, -801, -900)


def test_setup_forms_and_refusals(tmp_path):
    s = MooncakeDistributedStore()
    assert s.health_check() == 1, "not set up"
    assert s.put("k", b"v") == -1 and s.get("k") == b"" and s.get_buffer("k") is None
    assert s.setup("h", "P2PHANDSHAKE", 16 * MiB, 16 * MiB, "bogus", "", "embedded") == INVALID_PARAMS
    assert s.setup({"local_hostname": "h", "metadata_server": "P2PHANDSHAKE", "global_segment_size": "50%"}) == INVALID_PARAMS
    assert s.setup({"local_hostname": "h"}) == INVALID_PARAMS, "metadata_server is required"
    assert s.setup("h", "P2PHANDSHAKE", 1000, 16 * MiB, "tcp", "", "embedded") == INVALID_PARAMS
    assert s.setup({
        "local_hostname": "dict-host", "metadata_server": "P2PHANDSHAKE", "global_segment_size": "16MB",
        "local_buffer_size": "16MB", "protocol": "tcp", "master_server_addr": "",
    }) == 0
    assert s.get_hostname() == "dict-host"
    assert s.health_check() == 0
    assert setup_store(s) == INVALID_PARAMS, "already set up"
    assert s.close() == 0
    assert s.health_check() == 1 and s.put("k", b"v") == -1 and s.is_exist("k") == -1
    assert s.close() == 0
    assert s.setup("again", "P2PHANDSHAKE", 16 * MiB, 0, "tcp", "", "embedded",
                   enable_ssd_offload=True, ssd_offload_path=str(tmp_path)) == 0
    assert s.get_hostname() == "again"
    assert s.close() == 0
    assert s.setup("h", "P2PHANDSHAKE", 16 * MiB, 0, "tcp", "", "embedded", enable_ssd_offload=True) == INVALID_PARAMS


def test_put_get_and_the_first_value_stays(store):
    assert store.put("k", b"first") == 0
    assert store.put("k", b"second") == 0
    assert store.get("k") == b"first"
    assert store.get("missing") == b""
    assert store.put("np", np.arange(256, dtype=np.int32), config=ReplicateConfig()) == 0
    assert store.get("np") == np.arange(256, dtype=np.int32).tobytes()
    assert store.put_parts("parts", b"ab", memoryview(b"cd"), bytearray(b"ef")) == 0
    assert store.get("parts") == b"abcdef"
    assert store.put("", b"v") == -400
    assert store.put("empty", b"") == INVALID_PARAMS
    assert store.get_batch(["k", "missing", "parts"]) == [b"first", b"", b"abcdef"]
    assert store.get_batch([]) == []


def test_put_batch_is_one_number(store):
    assert store.put_batch(["a", "b"], [b"1", b"2"]) == 0
    assert store.put_batch(["a", "c"], [b"x", b"3"]) == 0, "an existing key is success"
    assert store.put_batch(["d"], [b"1", b"2"]) == INVALID_PARAMS
    assert store.put_batch([], []) == 0
    assert store.get_batch(["a", "b", "c"]) == [b"1", b"2", b"3"]


def test_sizes_existence_and_removal(store):
    store.put("k", b"x" * 1000)
    assert store.get_size("k") == 1000 and store.get_size("none") == -704
    assert store.is_exist("k") == 1 and store.is_exist("none") == 0
    assert store.batch_is_exist(["k", "none"]) == [1, 0] and store.batch_is_exist([]) == []
    assert store.get("k")
    assert store.remove("k") == -706, "a read leases the object"
    assert store.remove("k", force=True) == 0
    assert store.remove("k") == -704
    for i in range(4):
        store.put(f"r/{i}", b"v")
    store.get("r/0")
    assert store.batch_remove(["r/1", "none"]) == [0, -704]
    assert store.remove_all() == 2, "the leased one stays"
    assert store.remove_all(force=True) == 1
    assert store.batch_remove([]) == []


def test_buffers_register_and_unregister(store):
    a = np.zeros(MiB, dtype=np.uint8)
    p = a.ctypes.data
    assert store.register_buffer(p, a.nbytes) == 0
    assert store.register_buffer(p + 100, 10) == INVALID_PARAMS, "overlaps"
    assert store.register_buffer(p + a.nbytes, 0) == INVALID_PARAMS
    assert store.unregister_buffer(p + 1) == INVALID_PARAMS
    assert store.unregister_buffer(p) == 0
    assert store.unregister_buffer(p) == INVALID_PARAMS
    assert store.register_buffer(0, 4096) == INVALID_PARAMS, "address 0 is never memory"
    assert store.put_from("k", 0, 16) == INVALID_PARAMS
    assert store.register_buffer(p, 1 << 63) == INVALID_PARAMS, "larger than any object"


def test_pointer_calls_accept_only_registered_memory(store, pool):
    array, p = pool
    value = random.Random(1).randbytes(MiB)
    array[:MiB] = np.frombuffer(value, dtype=np.uint8)
    assert store.put_from("pf", p, MiB) == 0
    assert store.get("pf") == value
    assert store.put_from("outside", p + 4 * MiB - 10, 20) == INVALID_PARAMS
    assert store.put_from("null", 0, 10) == INVALID_PARAMS
    assert store.put_from("zero", p, 0) == INVALID_PARAMS
    assert store.put_from("wild", 0xDEAD0000, 4096) == INVALID_PARAMS
    assert store.is_exist("wild") == 0

    assert store.get_into("pf", p + 2 * MiB, MiB) == MiB
    assert array[2 * MiB:3 * MiB].tobytes() == value
    assert store.get_into("pf", p + 2 * MiB, MiB - 1) == INVALID_PARAMS, "buffer smaller than the value"
    assert store.get_into("pf", 0xDEAD0000, MiB) == INVALID_PARAMS
    assert store.get_into("none", p, 100) == -704


def test_batch_pointer_calls(store, pool):
    array, p = pool
    array[:3 * 1024] = np.frombuffer(b"a" * 1024 + b"b" * 1024 + b"c" * 1024, dtype=np.uint8)
    codes = store.batch_put_from(["x", "y", "bad"], [p, p + 1024, 0xDEAD0000], [1024, 1024, 1024])
    assert codes == [0, 0, INVALID_PARAMS]
    assert store.batch_put_from(["x", "y"], [p], [1, 2]) == [INVALID_PARAMS, INVALID_PARAMS]
    assert store.batch_put_from([], [], []) == []
    got = store.batch_get_into(["x", "y", "none"], [p + MiB, p + 2 * MiB, p + 3 * MiB], [1024, 1024, 1024])
    assert got == [1024, 1024, -704]
    assert array[MiB:MiB + 1024].tobytes() == b"a" * 1024
    assert array[2 * MiB:2 * MiB + 1024].tobytes() == b"b" * 1024
    overlapping = store.batch_get_into(["x", "y"], [p + MiB, p + MiB + 512], [1024, 1024])
    assert overlapping == [INVALID_PARAMS, INVALID_PARAMS], "buffers that overlap are refused"
    assert store.batch_get_into(["x"], [p, p], [1]) == [INVALID_PARAMS]
    assert store.batch_get_into([], [], []) == []


def test_multi_buffer_calls_gather_and_scatter(store, pool):
    array, p = pool
    array[:300] = np.frombuffer(b"1" * 100 + b"2" * 100 + b"3" * 100, dtype=np.uint8)
    codes = store.batch_put_from_multi_buffers(["m1", "m2"], [[p, p + 200], [p + 100]], [[100, 100], [100]])
    assert codes == [0, 0]
    assert store.get("m1") == b"1" * 100 + b"3" * 100
    assert store.get("m2") == b"2" * 100
    assert store.batch_put_from_multi_buffers(["m3"], [[p, p]], [[10]]) == [INVALID_PARAMS]
    assert store.batch_put_from_multi_buffers(["m3"], [], []) == [INVALID_PARAMS]
    base = p + MiB
    got = store.batch_get_into_multi_buffers(["m1", "m2", "none"], [[base, base + 150], [base + 400], [base + 600]],
                                             [[150, 150], [50], [100]])
    assert got == [200, INVALID_PARAMS, -704]
    assert array[MiB:MiB + 150].tobytes() == b"1" * 100 + b"3" * 50
    assert array[MiB + 150:MiB + 200].tobytes() == b"3" * 50
    assert store.batch_get_into_multi_buffers([], [], []) == []
    assert store.batch_get_into_multi_buffers(["m1"], [[base], [base]], [[10], [10]]) == [INVALID_PARAMS]


def test_get_buffer_exports_the_bytes(store):
    value = random.Random(2).randbytes(256 << 10)
    store.put("buf", value)
    handle = store.get_buffer("buf")
    assert isinstance(handle, BufferHandle)
    assert handle.size() == len(value) == len(handle) and handle.ptr() != 0
    assert bytes(memoryview(handle)) == value
    assert np.frombuffer(handle, dtype=np.uint8).tobytes() == value
    assert store.get_buffer("none") is None
    handles = store.batch_get_buffer(["buf", "none"])
    assert bytes(memoryview(handles[0])) == value and handles[1] is None
    with pytest.raises(TypeError, match="read-only"):
        memoryview(handle)[0:1] = b"x"


def test_ssd_offload_keeps_every_put_through_a_small_segment(tmp_path):
    s = MooncakeDistributedStore()
    assert setup_store(s, segment=4 * MiB, enable_ssd_offload=True, ssd_offload_path=str(tmp_path)) == 0
    values = [random.Random(i).randbytes(MiB) for i in range(24)]
    assert [s.put(f"ssd/{i}", v) for i, v in enumerate(values)] == [0] * 24, "no -200: puts wait for the SSD"
    assert all(s.get(f"ssd/{i}") == v for i, v in enumerate(values))
    assert s.close() == 0
    again = MooncakeDistributedStore()
    assert setup_store(again, segment=4 * MiB, enable_ssd_offload=True, ssd_offload_path=str(tmp_path)) == 0
    assert all(again.get(f"ssd/{i}") == v for i, v in enumerate(values)), "persisted across close and setup"
    assert again.close() == 0


@pytest.mark.parametrize("ttl, code", [("0ms", 0), ("1h", -706)])
def test_larder_lease_ttl_sets_the_read_lease(monkeypatch, ttl, code):
    monkeypatch.setenv("LARDER_LEASE_TTL", ttl)
    s = MooncakeDistributedStore()
    assert setup_store(s) == 0
    s.put("leased", b"v")
    assert s.get("leased") == b"v"
    assert s.remove("leased") == code
    s.close()


def test_an_unreachable_master_is_a_code_not_a_hang():
    s = MooncakeDistributedStore()
    assert s.setup("h", "P2PHANDSHAKE", 0, 0, "tcp", "", "127.0.0.1:1") == -900
    assert s.health_check() == 1, "not set up"


def test_wrong_argument_types_raise_type_error(store):
    with pytest.raises(TypeError):
        store.put_from("k", "not an address", 10)
    with pytest.raises(TypeError):
        store.put(3, b"v")


@pytest.fixture
def master():
    """A real `larder master` on loopback (the binary named by LARDER_BIN_FOR_TESTS,
    which CI builds), its address, and a way to kill it."""
    binary = os.environ.get("LARDER_BIN_FOR_TESTS")
    if not binary:
        pytest.skip("LARDER_BIN_FOR_TESTS names no larder binary")
    proc = subprocess.Popen([binary, "master", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("larder master listening on "):
                yield proc, line.split()[-1]
                break
    finally:
        proc.kill()
        proc.wait()


def test_a_cluster_member_through_a_real_master(master):
    proc, address = master
    s = MooncakeDistributedStore()
    assert s.setup("member", "P2PHANDSHAKE", 64 * MiB, 0, "tcp", "", address) == 0
    assert s.health_check() == 0
    value = random.Random(3).randbytes(MiB)
    assert s.put("remote/0", value) == 0
    assert s.get("remote/0") == value and s.is_exist("remote/0") == 1
    proc.kill()
    proc.wait()
    assert s.health_check() == 2, "the master is unreachable"
    assert s.put("remote/1", value) == -900
    assert s.close() == 0, "closed (as Mooncake's close, 0), though the master could not be told"
    assert s.health_check() == 1


def test_pointer_calls_and_registration_from_many_threads_do_not_stall(store):
    """Readers hold the registry while they copy; a thread registering and unregistering
    meanwhile must wait without the GIL, or every thread stops. The registrar pauses
    between calls (releasing the GIL) so that its calls land while readers copy; the
    only assertion is that every thread finishes."""
    value = 4 * MiB
    pool = np.zeros(24 * MiB, dtype=np.uint8)
    base = pool.ctypes.data
    assert store.register_buffer(base, 16 * MiB) == 0
    pool[:value] = np.frombuffer(random.Random(5).randbytes(value), dtype=np.uint8)
    assert store.put_from("shared", base, value) == 0
    failures = []
    start = threading.Barrier(4)
    readers_done = threading.Event()

    def reader(slot):
        start.wait()
        for _ in range(100):
            n = store.get_into("shared", base + (slot + 1) * value, value)
            if n != value:
                failures.append(n)

    def registrar():
        start.wait()
        while not readers_done.is_set():
            time.sleep(0.001)
            if store.register_buffer(base + 16 * MiB, 8 * MiB) != 0 or store.unregister_buffer(base + 16 * MiB) != 0:
                failures.append("registration")

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    other = threading.Thread(target=registrar)
    for t in readers + [other]:
        t.start()
    for t in readers:
        t.join(timeout=120)  # a guard against a hang, not a timing check
    readers_done.set()
    other.join(timeout=120)
    assert not any(t.is_alive() for t in readers + [other]), "a thread never finished: the calls stalled"
    assert failures == []
    assert all(pool[(i + 1) * value:(i + 2) * value].tobytes() == pool[:value].tobytes() for i in range(3))
