"""Scrape rendering: orb8's exposition fast path vs prometheus_client, same run.

Builds ~56,000 series the way the sources build them (exporter/model.py
MetricFamily via counter()/gauge(), identity labels first): 1,000 pod
containers x 50 syscalls (orb8_syscalls_total), network bytes/packets
(2 directions each), flow bytes/packets (1 peer each), active flows, map
gauges. Then renders them repeatedly, alternating:
  - baseline: prometheus_client.generate_latest on a registry whose
    collector converts the families (what /metrics did before),
  - orb8: exporter.outputs.exposition.Renderer (what /metrics does now),
with values changing every round as counters do, and reports p50/p90 of
each and the ratio. Both outputs are compared byte for byte every round.

Then the same series the way orb8 builds them since issue 20:
orb8_syscalls_total from the batch read's arrays (sources/syscalls/counts.py,
rows kept between scrapes), rendered and gzipped (level 1) as /metrics
serves them, against generate_latest + gzip of the same series, with
--changed of the syscall counters moving between scrapes (1.0: all of them,
the worst case; a node's counters move in the containers that ran).

Usage: .venv/bin/python benchmarks/scrape_render.py [--rounds 21] [--containers 1000]
"""

from __future__ import annotations

import argparse
import gzip
import random
import statistics
import time

import machine  # benchmarks/machine.py, beside this script
import numpy as np
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.model import IDENTITY_LABELS, Identity, MetricFamily, counter, gauge
from exporter.outputs.exposition import OPENMETRICS, TEXT, Renderer
from exporter.outputs.gzipped import GzipCache
from exporter.outputs.prometheus import GZIP_LEVEL, build_registry
from exporter.rows import RowFamily
from exporter.sources.lifecycle import CarriedCounts
from exporter.sources.network.source import PEER_LABELS
from exporter.sources.syscalls.baseline import Baselines
from exporter.sources.syscalls.counts import SyscallCounts
from exporter.sources.syscalls.names import abi_tables
from exporter.sources.syscalls.tables import SYSCALLS


def identities(containers: int, rng: random.Random) -> list[Identity]:
    out = []
    for i in range(containers):
        namespace = f"team-{i % 40}"
        pod = f"web-{rng.getrandbits(40):010x}-{rng.getrandbits(20):05x}"
        out.append(Identity(namespace, pod, f"app-{i % 3}", ""))
    return out


def families(ids: list[Identity], syscalls: int, rng: random.Random) -> list[MetricFamily]:
    names = sorted(SYSCALLS["x86_64"].values())[:syscalls]
    sys_family = counter(
        "orb8_syscalls_total",
        "System calls entered, per cgroup and syscall, counted in the kernel.",
        (*IDENTITY_LABELS, "syscall"),
    )
    for identity in ids:
        for name in names:
            sys_family.add((*identity, name), rng.randrange(1, 10**9))
    net_labels = (*IDENTITY_LABELS, "direction", "protocol", "family")
    net_bytes = counter("orb8_network_bytes_total", "IP-layer bytes.", net_labels)
    net_packets = counter("orb8_network_packets_total", "IP packets.", net_labels)
    flow_labels = (*IDENTITY_LABELS, "direction", "protocol", *PEER_LABELS)
    flow_bytes = counter("orb8_flow_bytes_total", "Flow bytes.", flow_labels)
    flow_packets = counter("orb8_flow_packets_total", "Flow packets.", flow_labels)
    active = gauge("orb8_active_flows", "Active flows.", IDENTITY_LABELS)
    for identity in ids:
        for direction in ("egress", "ingress"):
            row = (*identity, direction, "tcp", "ipv4")
            net_bytes.add(row, rng.randrange(10**12))
            net_packets.add(row, rng.randrange(10**9))
        peer = (*identity, "egress", "tcp", "db", "postgres-0", "pod")
        flow_bytes.add(peer, rng.randrange(10**12))
        flow_packets.add(peer, rng.randrange(10**9))
        active.add(identity, rng.randrange(10))
    entries = gauge("orb8_bpf_map_entries", "Entries currently in a map.", ("map",))
    for name in ("syscall_slots", "network_traffic", "network_flows"):
        entries.add((name,), rng.randrange(70_000))
    return [sys_family, net_bytes, net_packets, flow_bytes, flow_packets, active, entries]


def bump(fams: list[MetricFamily], rng: random.Random) -> None:
    """Counters advance between scrapes; labels stay."""
    for family in fams:
        family.samples = [(labels, value + rng.randrange(50)) for labels, value in family.samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--syscalls", type=int, default=50)
    parser.add_argument("--changed", type=float, default=1.0)
    args = parser.parse_args()
    rng = random.Random(15)
    fams = families(identities(args.containers, rng), args.syscalls, rng)
    series = sum(len(f.samples) for f in fams)
    registry = build_registry(lambda: fams, process=False)
    renderer = Renderer()
    timings: dict[str, list[float]] = {k: [] for k in ("baseline", "orb8", "om_base", "om_orb8")}
    renderer.render(fams)  # the first scrape fills the prefix cache
    for _ in range(args.rounds):
        bump(fams, rng)
        t0 = time.perf_counter()
        expected = generate_latest(registry)
        t1 = time.perf_counter()
        got = renderer.render(fams, TEXT).encode()
        t2 = time.perf_counter()
        om_expected = generate_openmetrics(registry)
        t3 = time.perf_counter()
        om_got = renderer.render(fams, OPENMETRICS).encode() + b"# EOF\n"
        t4 = time.perf_counter()
        if got != expected or om_got != om_expected:
            raise SystemExit("outputs differ: the fast path is wrong")
        timings["baseline"].append(t1 - t0)
        timings["orb8"].append(t2 - t1)
        timings["om_base"].append(t3 - t2)
        timings["om_orb8"].append(t4 - t3)
    p50 = {k: statistics.median(v) * 1000 for k, v in timings.items()}
    p90 = {k: sorted(v)[int(len(v) * 0.9)] * 1000 for k, v in timings.items()}
    print(f"machine: {machine.describe()}")
    print(f"series: {series}, rounds: {args.rounds}, outputs byte-identical every round")
    forms = (("text 0.0.4", "baseline", "orb8"), ("OpenMetrics", "om_base", "om_orb8"))
    for label, base, fast in forms:
        print(
            f"{label}: generate_latest p50 {p50[base]:.1f} ms (p90 {p90[base]:.1f}); "
            f"orb8 p50 {p50[fast]:.1f} ms (p90 {p90[fast]:.1f}); "
            f"ratio {p50[fast] / p50[base]:.2f}"
        )
    print(f"prefix cache: {renderer.cached_series()} series")
    rows(args, fams[1:], rng)


def rows(args: argparse.Namespace, others: list[MetricFamily], rng: random.Random) -> None:
    """Collect (syscalls from arrays) + render + gzip, against generate_latest + gzip."""
    ids = identities(args.containers, rng)
    numbers = sorted(SYSCALLS["x86_64"])[: args.syscalls]
    counts = SyscallCounts(
        abi_tables("x86_64"), (*IDENTITY_LABELS, "syscall"), Baselines(600.0), dict, CarriedCounts()
    )
    by_id = {i + 1: identity for i, identity in enumerate(ids)}
    cgroup_ids = np.repeat(np.arange(1, args.containers + 1, dtype=np.uint64), args.syscalls)
    keys = np.tile(np.array(numbers, dtype=np.uint32), args.containers)
    values = np.array([rng.randrange(1, 10**9) for _ in range(len(keys))], dtype=np.uint64)
    renderer, cache, present = Renderer(), GzipCache(GZIP_LEVEL), set(ids)

    def scrape() -> tuple[list[MetricFamily], bytes]:
        syscalls = counts.update(by_id, cgroup_ids, keys, values, CarriedCounts(), present)
        families = [syscalls, *others]
        return families, cache.compress(renderer.pieces(families, OPENMETRICS), b"# EOF\n")

    scrape()  # the first scrape builds the rows, prefixes and compressed chunks
    orb8, base = [], []
    for _ in range(args.rounds):
        moved = rng.sample(range(len(values)), int(len(values) * args.changed))
        values[moved] += np.uint64(rng.randrange(1, 50))
        t0 = time.perf_counter()
        families, body = scrape()
        t1 = time.perf_counter()
        registry = build_registry(
            lambda families=families: [
                f.plain() if isinstance(f, RowFamily) else f for f in families
            ],
            process=False,
        )
        t2 = time.perf_counter()
        expected = gzip.compress(generate_openmetrics(registry), compresslevel=GZIP_LEVEL)
        t3 = time.perf_counter()
        if gzip.decompress(body) != gzip.decompress(expected):
            raise SystemExit("outputs differ: the rows' path is wrong")
        orb8.append(t1 - t0)
        base.append(t3 - t2)
    p50, b50 = statistics.median(orb8) * 1000, statistics.median(base) * 1000
    print(
        f"OpenMetrics + gzip {GZIP_LEVEL}, {args.changed:.0%} of syscall counters moving: "
        f"orb8 collect+render+gzip p50 {p50:.1f} ms (p90 "
        f"{sorted(orb8)[int(len(orb8) * 0.9)] * 1000:.1f}); generate_latest+gzip p50 "
        f"{b50:.1f} ms; ratio {p50 / b50:.2f}; bodies identical every round"
    )


if __name__ == "__main__":
    main()
