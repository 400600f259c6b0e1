"""What exporter/outputs/gzipped.py saves over gzip.compress of the whole body, same run.

A /metrics body of --series syscall rows in chunks of 512 rows (as the renderer hands
RowFamily chunks over), compressed at level 1 (the scrape's level) by
- `gzip.compress` of the joined body, every scrape (the stdlib baseline);
- GzipCache, with 0%, 10% and 100% of the chunks changed since the last scrape.
Every output is checked to decompress to the body. Appends a report to RESULTS.md.

Usage: .venv/bin/python benchmarks/gzip_pieces.py
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from exporter.outputs.gzipped import GzipCache  # noqa: E402

LEVEL = 1


def median_ms(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=53_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rng = random.Random(1)
    rows = [
        f'orb8_syscalls_total{{namespace="ns{i // 50}",pod="pod-{i // 50}",container="app",'
        f'cgroup="",syscall="sys{i % 50}"}} {rng.randint(0, 10**9)}\n'
        for i in range(args.series)
    ]
    chunks = ["".join(rows[i : i + 512]).encode() for i in range(0, len(rows), 512)]
    body = b"".join(chunks)
    baseline = median_ms(lambda: gzip.compress(body, LEVEL), args.rounds)

    results = []
    for share in (0.0, 0.1, 1.0):
        cache = GzipCache(LEVEL)
        current = list(chunks)
        cache.compress(current)

        def scrape(
            current: list[bytes] = current, cache: GzipCache = cache, share: float = share
        ) -> bytes:
            for j in rng.sample(range(len(current)), int(len(current) * share)):
                current[j] = current[j][:-2] + str(rng.randint(0, 9)).encode() + b"\n"
            return cache.compress(current)

        took = median_ms(scrape, args.rounds)
        assert gzip.decompress(cache.compress(current)) == b"".join(current)
        results.append((share, took))

    rows_md = "\n".join(
        f"| GzipCache, {share:.0%} of chunks changed | {took:.1f} ms | {took / baseline:.2f} |"
        for share, took in results
    )
    report = f"""
### gzip_pieces ({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC)

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} vCPUs, Python
{platform.python_version()}. Body: {args.series:,} rows, {len(body) / 1e6:.1f} MB in
{len(chunks)} chunks; level {LEVEL}; wall time, median of {args.rounds}.

| compressor | per scrape | ratio to gzip.compress |
|---|---|---|
| gzip.compress of the whole body (baseline) | {baseline:.1f} ms | 1.00 |
{rows_md}
"""
    print(report)
    if not args.no_write:
        with (HERE / "RESULTS.md").open("a") as f:
            f.write(report)


if __name__ == "__main__":
    main()
