"""larder.Store, the Pythonic face: every method, every exception, buffers of every
kind, threads, persistence across close and reopen and across a SIGKILL."""

import os
import pathlib
import random
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import larder

MiB = 1 << 20


@pytest.fixture
def store():
    with larder.Store(memory="64MiB", lease_ttl="1h") as s:
        yield s


@pytest.fixture
def persistent(tmp_path):
    def open_store(**settings):
        settings.setdefault("memory", "64MiB")
        settings.setdefault("lease_ttl", "1h")
        return larder.Store(storage_root=str(tmp_path), **settings)

    return open_store


def pattern(n, seed=0):
    return random.Random(seed).randbytes(n)


def test_put_and_get_with_str_and_bytes_keys(store):
    store.put("text-key", b"one")
    store.put(b"bytes-key", b"two")
    assert store.get("text-key") == b"one"
    assert store.get(b"text-key") == b"one", "a str key is its UTF-8 bytes"
    assert store.get("bytes-key") == b"two"
    assert store.exists("text-key") and not store.exists("nothing")
    assert store.get_size("bytes-key") == 3
    with pytest.raises(TypeError):
        store.put(42, b"x")


def test_values_are_any_buffer(store):
    array = np.arange(4096, dtype=np.float32)
    store.put("bytes", b"\x01" * 1000)
    store.put("bytearray", bytearray(b"\x02" * 1000))
    store.put("memoryview", memoryview(b"\x03" * 2000)[500:1500])
    store.put("numpy", array)
    assert store.get("bytearray") == b"\x02" * 1000
    assert store.get("memoryview") == b"\x03" * 1000
    assert store.get("numpy") == array.tobytes()

    out = np.zeros(4096, dtype=np.float32)
    assert store.get_into("numpy", out) == array.nbytes
    assert np.array_equal(out, array)
    target = bytearray(2000)
    assert store.get_into("bytes", target) == 1000
    assert target[:1000] == b"\x01" * 1000
    view = memoryview(bytearray(1500))
    assert store.get_into("memoryview", view[100:]) == 1000
    assert view[100:1100] == b"\x03" * 1000
    with pytest.raises((TypeError, BufferError)):
        store.get_into("bytes", b"immutable" * 200)
    with pytest.raises((BufferError, ValueError)):
        store.put("strided", np.arange(100)[::2])


def test_put_parts_concatenates(store):
    store.put_parts("parts", b"ab", bytearray(b"cd"), np.frombuffer(b"ef", dtype=np.uint8))
    assert store.get("parts") == b"abcdef"


def test_every_error_is_its_exception_under_store_error(store):
    store.put("k", b"v")
    with pytest.raises(larder.NotFound):
        store.get("missing")
    with pytest.raises(larder.NotFound):
        store.get_size("missing")
    with pytest.raises(larder.AlreadyExists):
        store.put("k", b"other")
    assert store.get("k") == b"v", "the first value stays"
    with pytest.raises(larder.EmptyValue):
        store.put("empty", b"")
    with pytest.raises(larder.InvalidKey):
        store.put("", b"v")
    with pytest.raises(larder.TooLarge):
        store.put("huge", bytes(65 * MiB))
    store.put("ten", b"0123456789")
    with pytest.raises(larder.BufferTooSmall):
        store.get_into("ten", bytearray(4))
    assert store.get("ten") == b"0123456789"
    with pytest.raises(larder.HasLease):
        store.remove("ten")
    store.remove("ten", force=True)
    with pytest.raises(larder.NotFound):
        store.remove("ten")
    for cls in (larder.NotFound, larder.AlreadyExists, larder.HasLease, larder.NoSpace, larder.Closed,
                larder.Corrupted, larder.ConfigError, larder.StorageError, larder.Unreachable):
        assert issubclass(cls, larder.StoreError)


def test_bad_configuration_is_config_error(tmp_path):
    with pytest.raises(larder.ConfigError):
        larder.Store(memory="lots")
    with pytest.raises(larder.ConfigError):
        larder.Store(memroy="1GiB")
    with pytest.raises(larder.ConfigError):
        larder.Store(memory=1000)
    with pytest.raises(larder.ConfigError):
        larder.Store(lease_ttl=-1)
    with pytest.raises(larder.ConfigError):
        larder.Store(lease_ttl=float("nan"))
    with pytest.raises((larder.ConfigError, larder.StorageError)):
        larder.Store(storage_root=str(tmp_path / "does-not-exist"))


def test_memory_full_of_leased_objects_is_no_space():
    with larder.Store(memory="1MiB", lease_ttl="1h") as store:
        with pytest.raises(larder.NoSpace):
            for i in range(16):
                store.put(f"full/{i}", bytes(256 << 10))
                store.get(f"full/{i}")


def test_remove_all_and_its_force(store):
    for i in range(5):
        store.put(f"r/{i}", b"x" * 100)
    store.get("r/0")
    assert store.remove_all() == 4, "the leased object stays"
    assert store.remove_all(force=True) == 1
    assert not store.exists("r/0")


def test_batches_answer_per_item(store):
    results = store.batch_put(["b/1", "b/2", "b/1"], [b"one", b"two", b"again"])
    assert results[0] is None and results[1] is None
    assert isinstance(results[2], larder.AlreadyExists)
    assert store.batch_get(["b/1", "b/none", "b/2"]) == [b"one", None, b"two"]
    bufs = [bytearray(3), bytearray(1), bytearray(10)]
    got = store.batch_get_into(["b/1", "b/2", "b/none"], bufs)
    assert got[0] == 3 and bufs[0] == b"one"
    assert isinstance(got[1], larder.BufferTooSmall)
    assert isinstance(got[2], larder.NotFound)
    assert store.batch_exists(["b/1", "b/none"]) == [True, False]
    assert isinstance(store.batch_exists([""])[0], larder.InvalidKey)
    shared = bytearray(16)
    with pytest.raises(ValueError, match="overlap"):
        store.batch_get_into(["b/1", "b/2"], [shared, memoryview(shared)[4:]])
    removed = store.batch_remove(["b/1", "b/2", "b/none"], force=True)
    assert removed[0] is None and removed[1] is None and isinstance(removed[2], larder.NotFound)
    with pytest.raises(larder.BatchLength):
        store.batch_put(["a"], [])
    with pytest.raises(larder.BatchLength):
        store.batch_get_into(["a", "b"], [bytearray(1)])
    assert store.batch_put([], []) == [] and store.batch_get([]) == []


def test_stats_is_a_dict_of_counters(persistent):
    with persistent() as store:
        store.put("s", b"x" * 4096)
        store.get("s")
        store.flush()
        stats = store.stats()
    assert stats["objects"] == 1 and stats["memory_hits"] == 1 and stats["persisted"] == 1
    assert stats["memory_capacity"] == 64 * MiB and stats["disk_bytes"] > 0


def test_a_closed_store_raises_closed(store):
    store.close()
    assert store.closed
    store.close()
    with pytest.raises(larder.Closed):
        store.put("k", b"v")
    with pytest.raises(larder.Closed):
        store.get("k")


def test_flushed_values_survive_close_and_reopen(persistent):
    values = {f"persist/{i}": pattern(64 << 10, i) for i in range(64)}
    with persistent() as store:
        for key, value in values.items():
            store.put(key, value)
        store.flush()
    with persistent() as store:
        assert store.stats()["recovered"] == 64
        for key, value in values.items():
            assert store.get(key) == value


def test_a_flipped_byte_on_disk_is_corrupted_never_other_bytes(persistent, tmp_path):
    with persistent() as store:
        store.put("victim", b"\xab" * (256 << 10))
    bucket = next(tmp_path.rglob("*.bucket"))
    data = bytearray(bucket.read_bytes())
    at = data.index(b"\xab" * 64) + (128 << 10)
    data[at] ^= 0xFF
    bucket.write_bytes(bytes(data))
    with persistent() as store:
        with pytest.raises(larder.Corrupted):
            store.get("victim")
        with pytest.raises(larder.NotFound):
            store.get("victim")


def test_puts_through_a_small_segment_reach_ssd_and_read_back(persistent):
    with persistent(memory="4MiB") as store:
        for i in range(32):
            store.put(f"big/{i}", pattern(MiB, i))
        for i in range(32):
            assert store.get(f"big/{i}") == pattern(MiB, i)
        assert store.stats()["disk_hits"] > 0


def test_eight_threads_put_and_get_one_mib_at_once(persistent):
    errors = []
    barrier = threading.Barrier(8)

    def worker(t):
        try:
            barrier.wait()
            for i in range(8):
                store.put(f"t{t}/{i}", pattern(MiB, t * 8 + i))
            for i in range(8):
                assert store.get(f"t{t}/{i}") == pattern(MiB, t * 8 + i)
        except Exception as e:  # reported below
            errors.append(e)

    with persistent(memory="256MiB") as store:
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.stats()["objects"] == 64


CHILD = r"""
import sys, larder
store = larder.Store(storage_root=sys.argv[1], memory="64MiB")
for i in range(32):
    store.put(f"child/{i}", bytes([i]) * (128 << 10))
store.flush()
print("flushed", flush=True)
sys.stdin.read()  # until killed
"""


def test_a_child_killed_with_sigkill_leaves_its_flushed_values(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "flushed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    with larder.Store(storage_root=str(tmp_path), memory="64MiB") as store:
        for i in range(32):
            assert store.get(f"child/{i}") == bytes([i]) * (128 << 10)


def test_the_package_says_what_it_is():
    assert "Store" in larder.__all__
    assert pathlib.Path(larder.__file__).name == "__init__.py"


class TensorLike:
    """What a CPU torch tensor offers instead of the buffer protocol: numpy(), an array
    sharing its memory."""

    def __init__(self, array):
        self.array = array

    def numpy(self):
        return self.array


def test_objects_with_a_numpy_method_are_values_and_targets(store):
    source = TensorLike(np.arange(1024, dtype=np.float16))
    store.put("tensor", source)
    assert store.get("tensor") == source.array.tobytes()
    target = TensorLike(np.zeros(1024, dtype=np.float16))
    assert store.get_into("tensor", target) == 2048
    assert np.array_equal(target.array, source.array), "written into the tensor's own memory"
    with pytest.raises(TypeError):
        store.put("no-buffer", object())


EXITING_CHILD = r"""
import sys, threading, larder
store = larder.Store(storage_root=sys.argv[1], memory="64MiB")
for i in range(16):
    store.put(f"exit/{i}", bytes([i]) * (256 << 10))
# A daemon thread keeps the store alive past the end of the program, so it is never
# dropped: only the exit hook closes (and flushes) it.
threading.Thread(target=threading.Event().wait, args=(), daemon=True, kwargs={}).start()
keep = threading.Thread(target=lambda s=store: threading.Event().wait(), daemon=True)
keep.start()
del store
"""


def test_a_store_left_open_is_flushed_when_the_interpreter_exits(tmp_path):
    done = subprocess.run([sys.executable, "-c", EXITING_CHILD, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with larder.Store(storage_root=str(tmp_path), memory="64MiB") as store:
        for i in range(16):
            assert store.get(f"exit/{i}") == bytes([i]) * (256 << 10)
