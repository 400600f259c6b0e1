"""OTLP export cost for a big node, and what it does to concurrent scrapes.

A real Agent serves /metrics and pushes OTLP (the real output and the SDK's
exporters) into the tests' OTLP receivers (gRPC and HTTP/protobuf), fed by a
synthetic source shaped like a busy node: 1,000 containers x 50 syscalls
plus per-container network bytes/packets (2 directions) and TCP
retransmits, ~55k points per export. Meanwhile a thread scrapes /metrics
over HTTP in a loop.

Measured per protocol, same run:
- wall time and CPU time (the pushing thread) per export;
- how long each export held the agent's lock (its collect);
- the longest time a scrape waited for that lock while exports ran;
- scrape latency while exports run against scrape latency without them
  (a ratio: what a push costs a concurrent scrape).

Appends a report to RESULTS.md, or with --json FILE writes the figures there
instead (benchmarks/bench_scale.py reads them).
Usage: .venv/bin/python benchmarks/otlp_export.py [--exports 8] [--protocols grpc,http/protobuf]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from exporter.agent import Agent  # noqa: E402
from exporter.model import Identity, MetricFamily, counter  # noqa: E402
from exporter.outputs.otlp import OtlpConfig  # noqa: E402
from exporter.registry import load_settings  # noqa: E402
from exporter.sources.lifecycle import CarriedCounts  # noqa: E402
from exporter.sources.syscalls.baseline import Baselines  # noqa: E402
from exporter.sources.syscalls.counts import SyscallCounts  # noqa: E402
from exporter.sources.syscalls.names import abi_tables, syscall_table  # noqa: E402
from tests.helpers import free_port  # noqa: E402

CONTAINERS, SYSCALLS = 1000, 50
EXPORTS = 8
IDENTITY = ("namespace", "pod", "container", "cgroup")


class BusyNode:
    """A source with the series count of a busy node; counters grow every collect.

    orb8_syscalls_total is built as the syscalls source builds it (rows from
    arrays, sources/syscalls/counts.py); the network families as plain ones.
    """

    name = "synthetic"

    def __init__(self) -> None:
        self.round = 0
        self.counts = SyscallCounts(
            abi_tables(),
            (*IDENTITY, "syscall"),
            Baselines(600.0),
            lambda: {},
            CarriedCounts(),
        )
        self.identities = {
            c + 1: Identity(f"ns-{c % 40}", f"pod-{c}-7d9f8b6c5-x2k4q", "app", "")
            for c in range(CONTAINERS)
        }
        nrs = sorted(syscall_table())[:SYSCALLS]
        self.cgroup_ids = np.repeat(np.arange(1, CONTAINERS + 1, dtype=np.uint64), SYSCALLS)
        self.keys = np.tile(np.array(nrs, dtype=np.uint32), CONTAINERS)
        calls = np.tile(np.arange(SYSCALLS, dtype=np.uint64), CONTAINERS)
        self.base = np.uint64(1000) * (self.cgroup_ids - np.uint64(1)) + calls

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def summary(self) -> str:
        return f"{CONTAINERS} containers x {SYSCALLS} syscalls + network"

    def collect(self) -> list[MetricFamily]:
        self.round += 1
        r = self.round
        syscalls = self.counts.update(
            self.identities,
            self.cgroup_ids,
            self.keys,
            self.base + np.uint64(r),
            CarriedCounts(),
            set(self.identities.values()),
        )
        net_bytes = counter(
            "orb8_network_bytes_total", "bytes", (*IDENTITY, "direction", "protocol", "family")
        )
        net_packets = counter(
            "orb8_network_packets_total", "packets", (*IDENTITY, "direction", "protocol", "family")
        )
        retransmits = counter("orb8_tcp_retransmits_total", "retransmits", IDENTITY)
        for c in range(CONTAINERS):
            who = (f"ns-{c % 40}", f"pod-{c}-7d9f8b6c5-x2k4q", "app", "")
            for direction in ("egress", "ingress"):
                net_bytes.add((*who, direction, "tcp", "ipv4"), 1500 * (c + r))
                net_packets.add((*who, direction, "tcp", "ipv4"), c + r)
            retransmits.add(who, c % 7 + r)
        return [syscalls, net_bytes, net_packets, retransmits]


class TimedLock:
    """The agent's lock, recording who waited how long and who held it how long."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waits: list[tuple[str, float]] = []
        self.holds: list[tuple[str, float]] = []
        self._acquired = 0.0

    def __enter__(self) -> TimedLock:
        started = time.perf_counter()
        self._lock.acquire()
        self._acquired = time.perf_counter()
        self.waits.append((threading.current_thread().name, self._acquired - started))
        return self

    def __exit__(self, *exc: object) -> None:
        self.holds.append((threading.current_thread().name, time.perf_counter() - self._acquired))
        self._lock.release()


def scrape_loop(url: str, stop: threading.Event, latencies: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
        latencies.append(time.perf_counter() - started)


def run(protocol: str, sdk: bool, exports: int = EXPORTS) -> dict[str, float]:
    """sdk=True: the former path (SDK MetricsData, its encoder) in the same run."""
    # The collector runs in its own process, as a real one would: its
    # decoding must not compete with orb8 for this process's GIL.
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tests.otlp_receiver", protocol.split("/")[0]],
        cwd=HERE.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdin is not None and receiver.stdout is not None
    endpoint = receiver.stdout.readline().strip()
    endpoint += "" if protocol == "grpc" else "/v1/metrics"
    port = free_port()
    settings = load_settings({"listen": f"127.0.0.1:{port}"}, environ={})
    agent = Agent(
        settings,
        sources=[BusyNode()],
        otlp=OtlpConfig(endpoint, protocol, interval=3600.0, timeout=60.0),
    )
    lock = TimedLock()
    agent._lock = lock  # type: ignore[assignment]
    agent.start()
    assert agent.otlp is not None
    if sdk:
        agent.otlp._writer = None
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        agent.otlp.export_once()  # warm up: imports, channel, first conversion
        # Scrapes alone.
        idle: list[float] = []
        stop = threading.Event()
        scraper = threading.Thread(target=scrape_loop, args=(url, stop, idle), name="scraper")
        scraper.start()
        time.sleep(6)
        stop.set()
        scraper.join()
        # Exports back to back, with the same scrape loop beside them.
        busy: list[float] = []
        stop = threading.Event()
        lock.waits.clear()
        lock.holds.clear()
        scraper = threading.Thread(target=scrape_loop, args=(url, stop, busy), name="scraper")
        scraper.start()
        walls, cpus = [], []
        for _ in range(exports):
            started, cpu = time.perf_counter(), time.thread_time()
            assert agent.otlp.export_once(), "export failed"
            walls.append(time.perf_counter() - started)
            cpus.append(time.thread_time() - cpu)
        stop.set()
        scraper.join()
        points = agent.otlp.last_points
        export_holds = [s for name, s in lock.holds if name == "MainThread"]
        scrape_waits = [s for name, s in lock.waits if name != "MainThread"]
    finally:
        agent.close()
        receiver.stdin.close()
        received = int(receiver.stdout.readline() or 0)
        receiver.wait(timeout=30)
    return {
        "points": points,
        "requests": received,
        "wall_median": statistics.median(walls),
        "wall_max": max(walls),
        "cpu_median": statistics.median(cpus),
        "hold_max": max(export_holds),
        "wait_max": max(scrape_waits) if scrape_waits else 0.0,
        "scrape_idle": statistics.median(idle),
        "scrape_busy": statistics.median(busy),
        "scrapes_busy": len(busy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exports", type=int, default=EXPORTS, help="per protocol and path")
    parser.add_argument("--protocols", default="grpc,http/protobuf")
    parser.add_argument("--json", help="write the figures here instead of RESULTS.md")
    args = parser.parse_args()
    results = {
        f"{protocol}{' (SDK path)' if sdk else ''}": run(protocol, sdk, args.exports)
        for protocol in args.protocols.split(",")
        for sdk in (False, True)
    }
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "containers": CONTAINERS,
                    "syscalls": SYSCALLS,
                    "exports": args.exports,
                    "results": results,
                    "load_average": os.getloadavg(),
                },
                indent=1,
            )
        )
        return
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    lines = [
        f"\n### otlp_export ({datetime.date.today()})\n",
        f"Machine: {cpu}, kernel {platform.release()}, Python {platform.python_version()}. "
        f"{CONTAINERS} containers x {SYSCALLS} syscalls + network, {args.exports} exports per "
        "protocol back to back into the tests' OTLP receiver in its own process, one "
        "thread scraping /metrics in a loop meanwhile.\n",
        "| protocol | points (requests) | wall per export (median / max) | CPU per export | "
        "lock held by export (max) | longest scrape wait for the lock | scrape latency "
        "without / with exports (ratio) |",
        "|---|---|---|---|---|---|---|",
    ]
    for protocol, r in results.items():
        ratio = r["scrape_busy"] / r["scrape_idle"]
        lines.append(
            f"| {protocol} | {r['points']:,} ({r['requests']:.0f}) | "
            f"{r['wall_median']:.2f} s / {r['wall_max']:.2f} s | "
            f"{r['cpu_median']:.2f} s | {r['hold_max'] * 1000:.0f} ms | "
            f"{r['wait_max'] * 1000:.0f} ms | {r['scrape_idle']:.2f} s / "
            f"{r['scrape_busy']:.2f} s ({ratio:.2f}) |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    with (HERE / "RESULTS.md").open("a") as f:
        f.write(report)


if __name__ == "__main__":
    main()
