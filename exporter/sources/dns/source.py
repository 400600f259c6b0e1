"""DNS per cgroup: queries by type, answers by response code, timeouts,
latency and malformed messages, parsed and counted in the kernel.

Hook: cgroup_skb ingress + egress programs of the probe's own, attached to
the cgroup v2 root (bpf/dns.c) with BPF links where the kernel has them,
else BPF_PROG_ATTACH + BPF_F_ALLOW_MULTI (exporter/kernel/attach.py's
CgroupAttachments, shared with the network probe). Packets are attributed
with bpf_skb_cgroup_id(), the cgroup of the socket, in both directions. A
UDP or TCP packet with port 53 on either side is parsed in the kernel: the
12-byte header and the first question's type; nothing is copied to user
space.

Metrics ({namespace,pod,container,cgroup,role}, role client or server):
orb8_dns_queries_total{qtype}, orb8_dns_responses_total{rcode},
orb8_dns_nodata_responses_total, orb8_dns_timeouts_total,
orb8_dns_latency_seconds (histogram, log2 buckets 16 us..4.19 s),
orb8_dns_malformed_total; orb8_bpf_map_* for dns_counts and dns_pending.

Timeouts: a query's (socket cookie, peer address and port, id, role) waits
in the dns_pending LRU map; its answer deletes it in the kernel and counts
the latency, or a timeout when later than dns_timeout. At each collect this
source deletes entries older than dns_timeout and counts them as timeouts.
Whichever delete succeeds counts, so a query is never both; exactness: a
query is a timeout iff no answer matched it within the window, except
queries evicted from a full dns_pending (counted as evictions, neither
answered nor timed out) and entries nobody swept yet (no collect since
they expired: they count at the next collect).

Overhead: every packet of every socket runs the two programs: an IP header
read, a 4-byte port read and a compare for non-DNS packets. DNS packets add
the header and question walk (one helper read per label) and two hash
updates. See benchmarks/RESULTS.md (network_overhead, dns rows).

Caveats:
  - TCP: socket storage (dns_streams, freed with the socket) keeps where
    the next message starts in each direction, so the rest of a long
    answer and retransmissions are not parsed; one message is parsed per
    segment or GSO/GRO super-packet (pipelined queries written at once
    count once), and a length prefix sent in a segment of its own hides
    that message.
  - IPv6 extension headers are walked up to 6 (hop-by-hop, routing,
    destination options, fragment); a longer chain is not parsed.
  - A query retransmitted with the same id on the same socket counts as a
    query again, its latency runs from the first transmission.
  - The server role needs the answer to leave the socket the query arrived
    on (true of CoreDNS, dnsmasq, BIND, unbound).
  - role of a malformed message is from its local port (53: server).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from exporter import kernel
from exporter.identity import Resolver
from exporter.kernel import compiler, headers
from exporter.kernel.attach import ATTACH_CGROUP_EGRESS, ATTACH_CGROUP_INGRESS, load_program
from exporter.model import Identity, MetricFamily
from exporter.selfmetrics import program_families
from exporter.sources.cgroupprobe import CgroupProbeSource, check_capacities
from exporter.sources.dns.metrics import (
    KERNEL_BUCKETS,
    LATENCY,
    MALFORMED,
    NODATA,
    QTYPES,
    QUERIES,
    RCODES,
    RESPONSES,
    ROLES,
    TIMEOUTS,
)
from exporter.sources.lifecycle import CarriedCounts, CgroupLifecycle
from exporter.sources.mapstats import MapStats

log = logging.getLogger(__name__)

# Must match bpf/include/dns.h.
QUERY, RESPONSE, MALFORMED_KIND, LATENCY_KIND, LATENCY_SUM, TIMEOUT = range(6)
RCODE_NODATA = 5
STAT_COUNT_FAILURES, STAT_PENDING_INSERTS, STAT_PENDING_MATCHED, STAT_PENDING_FAILURES = range(4)
COUNTS_MAP, PENDING_MAP, STATS_MAP = "dns_counts", "dns_pending", "dns_stats"

SeriesKey = tuple[Identity, int, int, int]  # identity, role, kind, code


class DnsSource(CgroupProbeSource):
    name = "dns"

    def __init__(
        self,
        resolver: Resolver,
        count_entries: int = 16384,
        pending_entries: int = 16384,
        timeout: float = 5.0,
        deleted_grace: float = 60.0,
        deleted_pod_grace: float | None = None,
        headers: headers.KernelHeaders | None = None,
        bpf_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        kernel_clock_ns: Callable[[], int] = time.monotonic_ns,
        cgroup_root: Path | None = None,
        attach: str = "auto",
    ) -> None:
        """kernel_clock_ns: the clock of bpf_ktime_get_ns (CLOCK_MONOTONIC),
        which dns_pending's times are on; attach: "auto" | "link" | "prog_attach"."""
        check_capacities(count_entries=count_entries, pending_entries=pending_entries)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.resolver = resolver
        self.count_entries = count_entries
        self.pending_entries = pending_entries
        self.timeout = timeout
        self.timeout_ns = int(timeout * 1e9)
        self.lifecycle = CgroupLifecycle(resolver, deleted_grace, deleted_pod_grace)
        self.headers = headers
        self.bpf_dir = bpf_dir
        self.clock = clock
        self.kernel_clock_ns = kernel_clock_ns
        self.cgroup_root = cgroup_root
        super().__init__(attach)
        self._reset_state()

    def _reset_state(self) -> None:
        self._carried = CarriedCounts()
        # Timeouts found by the sweep, per (cgroup id, role): user space's
        # share of orb8_dns_timeouts_total, moved to _carried on retirement.
        self._swept: dict[tuple[int, int], int] = defaultdict(int)
        self._swept_total = 0
        self._evictions = 0

    def summary(self) -> str:
        return (
            f"hook=cgroup_skb attach={self.attach_mode or 'none'} "
            f"count_entries={self.count_entries} pending_entries={self.pending_entries} "
            f"timeout={self.timeout:g}s"
        )

    # --- lifecycle ----------------------------------------------------------

    def _compile(self) -> Any:
        return compiler.compile_probe(
            "dns",
            {
                "COUNT_CAPACITY": self.count_entries,
                "PENDING_CAPACITY": self.pending_entries,
                "TIMEOUT_NS": f"{self.timeout_ns}ULL",
            },
            self.headers,
            self.bpf_dir,
        )

    def _programs(self, bpf: Any) -> list[tuple[Any, int]]:
        return [
            (load_program(bpf, "dns_ingress", "cgroup_skb"), ATTACH_CGROUP_INGRESS),
            (load_program(bpf, "dns_egress", "cgroup_skb"), ATTACH_CGROUP_EGRESS),
        ]

    # --- collect ------------------------------------------------------------

    def _stats(self) -> list[int]:
        return [self._loaded_maps.percpu_sum(STATS_MAP, i) for i in range(4)]

    def _sweep(self) -> int:
        """Delete pending queries older than the timeout and count them; the
        entries left. The delete is atomic: a query the kernel answered
        meanwhile is not counted here."""
        keys, values = self._loaded_maps.read_hash(PENDING_MAP, self.pending_entries, 2)
        now = self.kernel_clock_ns()
        left = len(keys)
        for key, (start_ns, cgroup_id) in zip(keys, values.tolist(), strict=True):
            if now - start_ns <= self.timeout_ns:
                continue
            if self._loaded_maps.take(PENDING_MAP, key.tobytes(), 2) is not None:
                self._swept[(cgroup_id, int(key["role"]))] += 1
                self._swept_total += 1
                left -= 1
        return left

    def collect(self) -> list[MetricFamily]:
        if self._maps is None:
            raise kernel.ProbeError("dns probe is not loaded")
        now = self.clock()
        inserts = self._stats()[STAT_PENDING_INSERTS]
        pending = self._sweep()
        keys, values = self._loaded_maps.read_hash(COUNTS_MAP, self.count_entries, 1)
        stats = self._stats()
        # Entries leave dns_pending by an answer, a sweep or an eviction.
        # Inserts are read first and matches last: concurrent traffic can
        # only make this low for one collect, never overshoot.
        self._evictions = max(
            self._evictions, inserts - stats[STAT_PENDING_MATCHED] - self._swept_total - pending
        )
        self.resolver.refresh()
        cgroup_ids = set(keys["cgroup_id"].tolist()) | {c for c, _ in self._swept}
        identities, retire = self.lifecycle.resolve(cgroup_ids, now)

        series: dict[SeriesKey, int] = defaultdict(int)
        for key, (count,) in self._carried.items(identities.values()):
            series[key] += count  # type: ignore[index]
        for cgroup_id, role, kind, code, count in zip(
            keys["cgroup_id"].tolist(),
            keys["role"].tolist(),
            keys["kind"].tolist(),
            keys["code"].tolist(),
            values[:, 0].tolist(),
            strict=True,
        ):
            series[(identities[cgroup_id], role, kind, code)] += count
        for (cgroup_id, role), count in self._swept.items():
            series[(identities[cgroup_id], role, TIMEOUT, 0)] += count

        families = [
            *families_from_series(series),
            *self._map_families(len(keys), pending, stats),
            *program_families(self._loaded_maps.programs()),
        ]
        if retire:
            self._retire(retire, identities, keys, values)
        self._carried.expire(identities.values(), now)
        return families

    def _map_families(self, counts: int, pending: int, stats: list[int]) -> list[MetricFamily]:
        return self._bpf_map_families(
            [
                MapStats(COUNTS_MAP, counts, self.count_entries, stats[STAT_COUNT_FAILURES]),
                MapStats(
                    PENDING_MAP,
                    pending,
                    self.pending_entries,
                    stats[STAT_PENDING_FAILURES],
                    self._evictions,
                ),
            ]
        )

    # --- retirement ---------------------------------------------------------

    def _retire(
        self,
        retire: list[int],
        identities: dict[int, Identity],
        keys: np.ndarray,
        values: np.ndarray,
    ) -> None:
        """Free removed cgroups' entries once their grace is over; their final
        counts (read and deleted in one step) go to the carried counts."""
        retiring = set(retire)
        for row, cgroup_id, (count,) in self._take_retiring(COUNTS_MAP, keys, values, retiring, 1):
            key = (identities[cgroup_id], int(row["role"]), int(row["kind"]), int(row["code"]))
            self._carried.add(key, count)
        for cgroup_id, role in [k for k in self._swept if k[0] in retiring]:
            self._carried.add(
                (identities[cgroup_id], role, TIMEOUT, 0), self._swept.pop((cgroup_id, role))
            )
        self.lifecycle.retired(retire)
        log.info("retired %d removed cgroup(s) from the dns maps", len(retire))


def families_from_series(series: dict[SeriesKey, int]) -> list[MetricFamily]:
    """The DNS families from counts per (identity, role, kind, code): a pure
    function of what the kernel (and the sweep) counted. Codes the kernel
    never writes fold into "other", summed, so no series is written twice."""
    rows: dict[str, dict[tuple[str, ...], int]] = defaultdict(lambda: defaultdict(int))
    buckets: dict[tuple[str, ...], list[int]] = {}
    sums: dict[tuple[str, ...], int] = defaultdict(int)
    for (identity, role, kind, code), count in series.items():
        who = (*identity, _name(ROLES, role))
        if kind == QUERY:
            rows[QUERIES.name][(*who, _name(QTYPES, code))] += count
        elif kind == RESPONSE:
            if code == RCODE_NODATA:
                rows[NODATA.name][who] += count
                rows[RESPONSES.name][(*who, "NOERROR")] += count
            else:
                rows[RESPONSES.name][(*who, _name(RCODES, code))] += count
        elif kind == MALFORMED_KIND:
            rows[MALFORMED.name][who] += count
        elif kind == TIMEOUT:
            rows[TIMEOUTS.name][who] += count
        elif kind == LATENCY_KIND and 0 <= code < KERNEL_BUCKETS:
            buckets.setdefault(who, [0] * KERNEL_BUCKETS)[code] += count
        elif kind == LATENCY_SUM:
            sums[who] += count
    families = []
    for spec in (QUERIES, RESPONSES, NODATA, TIMEOUTS, MALFORMED):
        family = spec.family()
        for values, count in sorted(rows[spec.name].items()):
            family.add(values, count)
        families.append(family)
    latency = LATENCY.family()
    for series_key, counts in sorted(buckets.items()):
        cumulative = tuple(int(c) for c in np.cumsum(counts))
        latency.add_histogram(series_key, cumulative, sums.get(series_key, 0) / 1e9)
    return [*families[:4], latency, families[4]]


def _name(names: tuple[str, ...], index: int) -> str:
    return names[index] if 0 <= index < len(names) else "other"
