#!/usr/bin/env python3
"""Real Mooncake Store over TCP on `compare net`'s workload, for a side-by-side figure.

Starts `mooncake_master` and two holder processes (each contributing a segment of
the same size as each of Larder's two nodes: the whole data set plus 64 MiB), then a
client contributing no segment that puts COUNT values of VALUE bytes with TASKS threads
and gets them all back, checking every byte. The client uses Mooncake's zero-copy
calls (`register_buffer`, `put_from`, `get_into`: the main path of SGLang's HiCache),
so no Python bytes object is copied on the way. One untimed put and get first opens
the connections, as Larder's probe put does. Prints one JSON line:
{"put_mb_s": ..., "get_mb_s": ...}.

Run with the Python of a virtual environment where `pip install
mooncake-transfer-engine-non-cuda` was done (its binaries need apt libibverbs1).
"""

import argparse
import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(store, master, segment, buffer):
    rc = store.setup("127.0.0.1", "P2PHANDSHAKE", segment, buffer, "tcp", "", master)
    if rc != 0:
        raise SystemExit(f"mooncake setup failed: {rc}")


def hold(master, segment):
    """A holder: contributes its segment until its stdin closes."""
    from mooncake.store import MooncakeDistributedStore

    store = MooncakeDistributedStore()
    setup(store, master, segment, 16 << 20)
    print("ready", flush=True)
    sys.stdin.read()
    store.close()


def wait_for_port(port, deadline):
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mooncake_master did not start")


def fill(buf, offset, i, size):
    """Writes value i (its index first, so a get of another value is caught)."""
    head = f"value{i}/".encode()
    buf[offset : offset + size] = (head + b"\xa5" * size)[:size]


def timed(tasks, count, work):
    """Runs work(i) for i in 0..count on `tasks` threads; seconds taken."""
    errors = []
    per_task = -(-count // tasks)

    def run(t):
        try:
            for i in range(t * per_task, min(count, (t + 1) * per_task)):
                work(i)
        except Exception as e:  # reported after the join
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(tasks)]
    start = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - start
    if errors:
        raise SystemExit(f"mooncake: {errors[0]}")
    return elapsed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--value", type=int, default=1 << 20)
    p.add_argument("--count", type=int, default=512)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--hold", metavar="MASTER", help=argparse.SUPPRESS)
    p.add_argument("--segment", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hold:
        return hold(args.hold, args.segment)
    try:
        import mooncake.store  # noqa: F401
    except ImportError as e:
        print(f"mooncake is not installed in {sys.executable}: {e}", file=sys.stderr)
        sys.exit(3)

    master_bin = os.path.join(os.path.dirname(sys.executable), "mooncake_master")
    port, metrics = free_port(), free_port()
    master = subprocess.Popen(
        [master_bin, f"--rpc_port={port}", f"--metrics_port={metrics}", "--default_kv_lease_ttl=500"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    holders = []
    try:
        wait_for_port(port, time.monotonic() + 30)
        addr = f"127.0.0.1:{port}"
        # As each of Larder's nodes: the whole data set plus 64 MiB.
        segment = args.value * args.count + (64 << 20)
        for _ in range(2):
            h = subprocess.Popen(
                [sys.executable, __file__, "--hold", addr, "--segment", str(segment)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            holders.append(h)
            if h.stdout.readline().strip() != "ready":
                raise SystemExit("a mooncake holder did not start")

        from mooncake.store import MooncakeDistributedStore

        client = MooncakeDistributedStore()
        setup(client, addr, 0, 16 << 20)
        size, count = args.value, args.count
        # Every value in one registered buffer (what put_from reads), and a registered
        # landing buffer per thread (what get_into writes).
        source = ctypes.create_string_buffer(size * count)
        view = memoryview(source).cast("B")
        for i in range(count):
            fill(view, i * size, i, size)
        landing = [ctypes.create_string_buffer(size) for _ in range(args.tasks)]
        for buf, n in [(source, size * count)] + [(b, size) for b in landing]:
            if client.register_buffer(ctypes.addressof(buf), n) != 0:
                raise SystemExit("mooncake register_buffer failed")
        base = ctypes.addressof(source)
        slot = threading.local()
        next_slot = iter(range(args.tasks))
        slot_lock = threading.Lock()

        def landing_of_this_thread():
            if not hasattr(slot, "buf"):
                with slot_lock:
                    slot.buf = landing[next(next_slot)]
            return slot.buf

        def put(key, i):
            rc = client.put_from(key, base + i * size, size)
            if rc != 0:
                raise RuntimeError(f"put {key}: {rc}")

        def get(key, i, buf=None):
            buf = buf or landing_of_this_thread()
            n = client.get_into(key, ctypes.addressof(buf), size)
            if n != size or memoryview(buf).cast("B") != view[i * size : (i + 1) * size]:
                raise RuntimeError(f"get {key} returned other bytes ({n})")

        # Untimed: opens the client's connections to both holders.
        put("warm", 0)
        get("warm", 0, landing[0])
        client.remove("warm")
        total = size * count
        put_s = timed(args.tasks, count, lambda i: put(f"run/value{i}", i))
        get_s = timed(args.tasks, count, lambda i: get(f"run/value{i}", i))
        client.close()
        print(json.dumps({"put_mb_s": total / put_s / 1e6, "get_mb_s": total / get_s / 1e6}))
    finally:
        for h in holders:
            try:
                h.stdin.close()
                h.wait(timeout=10)
            except Exception:
                h.kill()
        master.kill()
        master.wait()


if __name__ == "__main__":
    main()
