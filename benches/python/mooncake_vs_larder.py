#!/usr/bin/env python3
"""Larder's MooncakeDistributedStore against real Mooncake's, one workload, one run.

Each (store, case) runs in a fresh process, `--runs` times; the table gives medians and
Larder's ratio to Mooncake measured in the same run. Cases, one Python writer as an
inference worker's connector is:

  put/get N MiB          put(key, bytes) then get(key), memory only (segment: data + 64 MiB)
  batch_put_from/...     batch_put_from / batch_get_into of 16 keys into registered buffers
  ssd offload put/get    1024 puts of 1 MiB through a 512 MiB segment with SSD offload
                         (a put refused with -200 is retried, as Mooncake's users do), then
                         every get
  call 64 B              microseconds per put and per get of a 64-byte value

Larder is `larder.mooncake` (the embedded store); Mooncake is
`pip install mooncake-transfer-engine-non-cuda` (its binaries need apt libibverbs1) with its
`mooncake_master` on loopback. Run with a Python that has both, or name Mooncake's with
--mooncake-python. `--json` prints the rows as JSON.
"""

import argparse
import ctypes
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
CASES = ["mem-1", "mem-4", "buf-1", "buf-4", "ssd-1", "call-64"]


# ----------------------------------------------------------------- one store, one case


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_store(impl, segment, ssd_dir):
    """The store under test, set up as a user would; and what to stop afterwards."""
    master = None
    if impl == "larder":
        from larder.mooncake import MooncakeDistributedStore

        address = "embedded"
    else:
        from mooncake.store import MooncakeDistributedStore

        port = free_port()
        flags = [f"--rpc_port={port}", f"--metrics_port={free_port()}", "--default_kv_lease_ttl=500"]
        if ssd_dir:
            flags += ["--enable_offload=true", "--offload_on_evict=true"]
            os.environ["MOONCAKE_OFFLOAD_FILE_STORAGE_PATH"] = ssd_dir
        binary = os.path.join(os.path.dirname(sys.executable), "mooncake_master")
        master = subprocess.Popen([binary, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("mooncake_master did not start")
                time.sleep(0.05)
        address = f"127.0.0.1:{port}"
    store = MooncakeDistributedStore()
    extra = {"enable_ssd_offload": True, "ssd_offload_path": ssd_dir} if ssd_dir else {}
    rc = store.setup("127.0.0.1", "P2PHANDSHAKE", segment, 64 * MiB, "tcp", "", address, **extra)
    if rc != 0:
        raise SystemExit(f"{impl}: setup returned {rc}")
    return store, master


def values(count, size):
    body = os.urandom(size)
    return [(f"value{i}/".encode() + body)[:size] for i in range(count)]


def check(got, want, what):
    if got != want:
        raise SystemExit(f"{what}: other bytes came back")


def case_mem(store, size, count):
    vals = values(count, size)
    start = time.perf_counter()
    for i, v in enumerate(vals):
        rc = store.put(f"mem/{i}", v)
        if rc != 0:
            raise SystemExit(f"put returned {rc}")
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    got = [store.get(f"mem/{i}") for i in range(count)]
    get_s = time.perf_counter() - start
    for i, v in enumerate(vals):
        check(got[i], v, f"get mem/{i}")
    total = size * count / 1e6
    return {"put": total / put_s, "get": total / get_s}


def case_buf(store, size, count, batch=16):
    source = ctypes.create_string_buffer(size * count)
    landing = ctypes.create_string_buffer(size * count)
    src = memoryview(source).cast("B")
    for i, v in enumerate(values(count, size)):
        src[i * size:(i + 1) * size] = v
    for buf in (source, landing):
        if store.register_buffer(ctypes.addressof(buf), size * count) != 0:
            raise SystemExit("register_buffer failed")
    base, land = ctypes.addressof(source), ctypes.addressof(landing)
    groups = [list(range(g, min(count, g + batch))) for g in range(0, count, batch)]
    start = time.perf_counter()
    for g in groups:
        codes = store.batch_put_from([f"buf/{i}" for i in g], [base + i * size for i in g], [size] * len(g))
        if any(c != 0 for c in codes):
            raise SystemExit(f"batch_put_from returned {codes}")
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    for g in groups:
        got = store.batch_get_into([f"buf/{i}" for i in g], [land + i * size for i in g], [size] * len(g))
        if any(n != size for n in got):
            raise SystemExit(f"batch_get_into returned {got}")
    get_s = time.perf_counter() - start
    check(memoryview(landing).cast("B"), src, "batch_get_into")
    # The physical limit of a get into a registered buffer: one memcpy of the same
    # bytes between the same two (already faulted-in) buffers.
    start = time.perf_counter()
    for i in range(count):
        ctypes.memmove(land + i * size, base + i * size, size)
    memcpy_s = time.perf_counter() - start
    total = size * count / 1e6
    return {"put": total / put_s, "get": total / get_s, "memcpy": total / memcpy_s}


def case_ssd(store, size=MiB, count=1024):
    vals = values(count, size)
    retries = 0
    start = time.perf_counter()
    for i, v in enumerate(vals):
        while (rc := store.put(f"ssd/{i}", v)) == -200:
            retries += 1
            time.sleep(0.001)
        if rc != 0:
            raise SystemExit(f"put returned {rc}")
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    got = [store.get(f"ssd/{i}") for i in range(count)]
    get_s = time.perf_counter() - start
    missing = sum(1 for g in got if not g)
    for i, v in enumerate(vals):
        if got[i]:
            check(got[i], v, f"get ssd/{i}")
    total = size * count / 1e6
    return {"put": total / put_s, "get": total / get_s, "put_retries": retries, "get_missing": missing}


def case_call(store, n=20000):
    value = b"v" * 64
    start = time.perf_counter()
    for i in range(n):
        store.put(f"call/{i}", value)
    put_us = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for i in range(n):
        store.get(f"call/{i}")
    get_us = (time.perf_counter() - start) / n * 1e6
    # The binding's own round trip: a call refused by the store at once (an empty key
    # is invalid), so what is timed is Python -> extension -> store -> back.
    start = time.perf_counter()
    for _ in range(n):
        store.is_exist("")
    binding_us = (time.perf_counter() - start) / n * 1e6
    return {"put_us": put_us, "get_us": get_us, "binding_us": binding_us}


def run_one(impl, case):
    kind, arg = case.split("-")
    size = int(arg) * MiB
    count = {1: 256, 4: 64}.get(int(arg), 0)
    with tempfile.TemporaryDirectory(prefix=f"{impl}-bench-") as ssd_dir:
        if kind == "ssd":
            store, master = open_store(impl, 512 * MiB, ssd_dir)
        elif kind == "call":
            store, master = open_store(impl, 256 * MiB, None)
        else:
            store, master = open_store(impl, size * count + 64 * MiB, None)
        try:
            if kind == "mem":
                result = case_mem(store, size, count)
            elif kind == "buf":
                result = case_buf(store, size, count)
            elif kind == "ssd":
                result = case_ssd(store)
            else:
                result = case_call(store)
        finally:
            store.close()
            if master:
                master.kill()
                master.wait()
    print(json.dumps(result), flush=True)


# ----------------------------------------------------------------- the driver


def measure(python, impl, case, runs):
    results = []
    for _ in range(runs):
        out = subprocess.run([python, __file__, "--one", impl, case], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{impl} {case}: failed: {out.stderr.strip()[-500:]}", file=sys.stderr)
            return None
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


ROWS = [
    ("put 1 MiB", "mem-1", "put", "MB/s"), ("get 1 MiB", "mem-1", "get", "MB/s"),
    ("put 4 MiB", "mem-4", "put", "MB/s"), ("get 4 MiB", "mem-4", "get", "MB/s"),
    ("batch_put_from 1 MiB", "buf-1", "put", "MB/s"), ("batch_get_into 1 MiB", "buf-1", "get", "MB/s"),
    ("batch_put_from 4 MiB", "buf-4", "put", "MB/s"), ("batch_get_into 4 MiB", "buf-4", "get", "MB/s"),
    ("ssd offload put 1 MiB", "ssd-1", "put", "MB/s"), ("ssd offload get 1 MiB", "ssd-1", "get", "MB/s"),
    ("call: put 64 B", "call-64", "put_us", "us"), ("call: get 64 B", "call-64", "get_us", "us"),
    ("call: binding round trip (is_exist(''))", "call-64", "binding_us", "us"),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="runs per store and case (medians; default 3)")
    p.add_argument("--mooncake-python", default=sys.executable, help="a Python with mooncake installed")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {','.join(CASES)}")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--one", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return run_one(*args.one)
    cases = args.cases.split(",")
    larder = {c: measure(sys.executable, "larder", c, args.runs) for c in cases}
    has_mooncake = subprocess.run([args.mooncake_python, "-c", "import mooncake.store"], capture_output=True).returncode == 0
    mooncake = {c: measure(args.mooncake_python, "mooncake", c, args.runs) if has_mooncake else None for c in cases}
    rows = []
    for name, case, field, unit in ROWS:
        if case not in cases or not larder[case]:
            continue
        ours = larder[case][field]
        theirs = mooncake[case][field] if mooncake[case] else None
        if theirs is None:
            ratio = None
        else:
            ratio = ours / theirs if unit == "MB/s" else theirs / ours
        rows.append({"case": name, "unit": unit, "larder": ours, "mooncake": theirs, "larder_vs_mooncake": ratio})
    for case, size in (("buf-1", "1 MiB"), ("buf-4", "4 MiB")):
        if case in cases and larder[case]:
            rows.append({"case": f"memcpy, same bytes and buffers, {size}", "unit": "MB/s",
                         "larder": larder[case]["memcpy"], "mooncake": mooncake[case]["memcpy"] if mooncake.get(case) else None,
                         "larder_vs_mooncake": None})
    for case in ("ssd-1",):
        for who, table in (("larder", larder), ("mooncake", mooncake)):
            if case in cases and table.get(case):
                rows.append({"case": f"{who} ssd: retried puts / missing gets", "unit": "count",
                             "larder" if who == "larder" else "mooncake":
                             f"{table[case]['put_retries']:.0f} / {table[case]['get_missing']:.0f}"})
    if args.json:
        print(json.dumps({"runs": args.runs, "rows": rows}, indent=2))
        return
    print(f"Larder vs Mooncake, MooncakeDistributedStore from Python, medians of {args.runs} runs"
          " (ratio: higher is Larder better; for µs rows, Mooncake's time / Larder's)")
    print(f"{'case':<36} {'unit':>6} {'Larder':>10} {'Mooncake':>10} {'ratio':>8}")
    for r in rows:
        fmt = lambda v: "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
        ratio = "-" if r.get("larder_vs_mooncake") is None else f"{r['larder_vs_mooncake']:.2f}x"
        print(f"{r['case']:<36} {r['unit']:>6} {fmt(r.get('larder')):>10} {fmt(r.get('mooncake')):>10} {ratio:>8}")


if __name__ == "__main__":
    main()
