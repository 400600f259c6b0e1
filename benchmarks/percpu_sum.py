"""Summing per-CPU map values over CPUs: 64 and 256 simulated CPUs, same run.

This machine has 2 CPUs, so the batch-lookup output of a per-CPU map is
simulated: a ctypes buffer of entries x CPUs x width u64s, entry-major, as
maps.lookup_batch() fills it (BPF_MAP_LOOKUP_BATCH writes each per-CPU
value as round_up(value_size, 8) bytes per possible CPU). Three ways:
  - python_loop: one Python addition per CPU per entry (what BCC's
    `sum(table[key])` does, done for every entry); timed on the first
    --loop-entries entries and scaled to all of them,
  - current: maps.lookup_batch's `.raw[:size]` (copies of the buffer)
    then np.frombuffer(...).reshape(n, -1, width).sum(axis=1), as
    maps.percpu_u64_sums() and NetworkSource._read_percpu() do,
  - percpu: exporter.kernel.percpu.sums() on the ctypes buffer in place.
Reports the median time of each and the peak extra memory (tracemalloc,
which sees bytes and numpy allocations) of one call, and checks all three
agree.

Usage: .venv/bin/python benchmarks/percpu_sum.py [--entries 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import statistics
import time
import tracemalloc

import machine  # benchmarks/machine.py, beside this script
import numpy as np

from exporter.kernel import percpu


def simulated_batch(entries: int, cpus: int, width: int, rng: np.random.Generator):
    buffer = ct.create_string_buffer(entries * cpus * width * 8)
    view = np.frombuffer(buffer, dtype="<u8")
    view[:] = rng.integers(0, 2**40, size=view.size, dtype=np.uint64)
    return buffer


def python_loop(buffer, entries: int, cpus: int, width: int) -> list[list[int]]:
    values = memoryview(buffer).cast("B").cast("Q")
    out = []
    for i in range(entries):
        base = i * cpus * width
        out.append([sum(values[base + f : base + cpus * width : width]) for f in range(width)])
    return out


def current(buffer, entries: int, cpus: int, width: int) -> np.ndarray:
    raw = buffer.raw[: entries * cpus * width * 8]  # lookup_batch's return value
    return np.frombuffer(raw, dtype=np.uint64).reshape(entries, -1, width).sum(axis=1)


def vectorised(buffer, entries: int, cpus: int, width: int) -> np.ndarray:
    return percpu.sums(buffer, entries, cpus, width).reshape(entries, width)


def measure(fn, *args) -> tuple[float, int]:
    tracemalloc.start()
    t0 = time.perf_counter()
    fn(*args)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--loop-entries", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(15)
    print(f"machine: {machine.describe()}")
    print(
        "| map shape | CPUs | python loop (scaled) | current (copy + numpy) | percpu.sums "
        "| current/percpu | peak extra memory current / percpu |"
    )
    print("|---|---|---|---|---|---|---|")
    for cpus in (64, 256):
        for label, width in (("syscall_counts u64", 1), ("network_traffic {bytes,packets}", 2)):
            n = args.entries
            buffer = simulated_batch(n, cpus, width, rng)
            want = vectorised(buffer, n, cpus, width)
            loop_n = min(args.loop_entries, n)
            got_loop = np.array(python_loop(buffer, loop_n, cpus, width), dtype=np.uint64)
            if not (np.array_equal(current(buffer, n, cpus, width), want)) or not np.array_equal(
                got_loop, want[:loop_n]
            ):
                raise SystemExit("the three ways disagree")
            loop_t = statistics.median(
                measure(python_loop, buffer, loop_n, cpus, width)[0] for _ in range(3)
            ) * (n / loop_n)
            cur = [measure(current, buffer, n, cpus, width) for _ in range(args.rounds)]
            vec = [measure(vectorised, buffer, n, cpus, width) for _ in range(args.rounds)]
            cur_t = statistics.median(t for t, _ in cur)
            vec_t = statistics.median(t for t, _ in vec)
            cur_m = max(m for _, m in cur)
            vec_m = max(m for _, m in vec)
            size = ct.sizeof(buffer) >> 20
            print(
                f"| {n} x {label} ({size} MiB) | {cpus} | {loop_t * 1000:.0f} ms "
                f"| {cur_t * 1000:.1f} ms | {vec_t * 1000:.1f} ms | {cur_t / vec_t:.2f} "
                f"| {cur_m / 2**20:.1f} MiB / {vec_m / 2**20:.2f} MiB |"
            )
            del buffer


if __name__ == "__main__":
    main()
