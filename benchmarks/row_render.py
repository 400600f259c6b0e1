"""Render + gzip of one RowFamily of 53,000 rows as the values and rows change.

What a scrape costs in process (exporter/outputs/exposition.row_chunks and
gzipped.GzipCache) when every value changed, when 1% did, when none did,
and when a cgroup's 50 rows came and another's 50 went (a new layout), p50
of --rounds each. Counters here are big (their text takes the exponent
form). Run it in two trees to compare them: it uses the exporter package
of the current directory.

Usage: .venv/bin/python benchmarks/row_render.py [--rows 53000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path.cwd()))

import machine

from exporter.outputs.exposition import OPENMETRICS, Renderer
from exporter.outputs.gzipped import GzipCache
from exporter.rows import RowFamily, RowTable

LABELS = ("namespace", "pod", "container", "cgroup", "syscall")


def labels_of(codes: np.ndarray) -> list[tuple[str, ...]]:
    return [("", "", "", f"/orb8-bench/c{c // 100:04d}", f"sys_{c % 100}") for c in codes.tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=53_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(f"machine: {machine.describe()}")
    table, renderer, cache = RowTable(), Renderer(), GzipCache(1)
    # 50 rows per cgroup, codes spaced so that new cgroups fit in between.
    codes = np.array([(i // 50) * 100 + i % 50 for i in range(args.rows)], dtype=np.int64)
    values = np.arange(args.rows, dtype=np.float64) * 1000 + 10**7

    def scrape(codes: np.ndarray, values: np.ndarray) -> float:
        t0 = time.perf_counter()
        layout = table.update(codes, labels_of)
        family = RowFamily("orb8_syscalls_total", "counter", "h", LABELS, layout, values)
        cache.compress(renderer.pieces([family], OPENMETRICS), b"# EOF\n")
        return time.perf_counter() - t0

    scrape(codes, values)
    results = {}
    for name, step in (
        ("every value changed", lambda v, k: v + 1 + k),
        ("1% of values changed", lambda v, k: np.where(np.arange(len(v)) % 100 == k, v + 1, v)),
        ("no value changed", lambda v, k: v),
    ):
        times = []
        for k in range(args.rounds):
            values = step(values, k)
            times.append(scrape(codes, values))
        results[name] = statistics.median(times)
    times = []
    for k in range(args.rounds):
        # Each row's value follows its code: kept rows keep theirs.
        cgroups = codes // 100
        gone = cgroups == cgroups[len(codes) // 3 + k * 50]
        new = (len(codes) // 2 + k * 100) // 50 * 100 + 50 + np.arange(50)  # between two cgroups
        codes = np.union1d(codes[~gone], new)
        times.append(scrape(codes, codes * 1000.0 + 10**7))
    results["a cgroup's 50 rows in, another's out"] = statistics.median(times)
    for name, took in results.items():
        print(f"{name}: p50 {took * 1000:.1f} ms")


if __name__ == "__main__":
    main()
