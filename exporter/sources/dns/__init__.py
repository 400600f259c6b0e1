"""The dns probe: DNS queries, answers by response code, timeouts and latency
per cgroup, parsed and counted in the kernel (bpf/dns.c, layouts in
bpf/include/dns.h).

Package layout: metrics.py (the families), maps.py (the kernel maps),
source.py (loader, collect, timeout sweep, retirement).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.config import Spec, map_capacity, positive_float
from exporter.sources import Context, Probe
from exporter.sources.dns.maps import kernel_maps
from exporter.sources.dns.metrics import METRICS

if TYPE_CHECKING:
    from exporter.sources.dns.source import DnsSource

SETTINGS: tuple[Spec, ...] = (
    Spec(
        "dns_count_entries",
        map_capacity,
        16384,
        "capacity of the kernel DNS counter map, in (cgroup, role, kind, code) tuples "
        "(typically 5-15 per cgroup that uses DNS, at most 70)",
        "N",
    ),
    Spec(
        "dns_pending_entries",
        map_capacity,
        16384,
        "capacity of the kernel map of DNS queries waiting for their answer (LRU); when "
        "full the oldest query is evicted (counted in orb8_bpf_map_evictions_total) and "
        "counts neither as answered nor as timed out",
        "N",
    ),
    Spec(
        "dns_timeout",
        positive_float,
        5.0,
        "seconds after which a DNS query without an answer counts as a timeout",
        "SECONDS",
    ),
)


def create(context: Context) -> DnsSource:
    from exporter.sources.cgroupprobe import agent_options
    from exporter.sources.dns.source import DnsSource

    settings = context.settings
    return DnsSource(
        context.resolver,
        count_entries=settings.dns_count_entries,
        pending_entries=settings.dns_pending_entries,
        timeout=settings.dns_timeout,
        **agent_options(context),
    )


PROBE = Probe(
    "dns",
    default=False,
    settings=SETTINGS,
    factory=create,
    bpf=True,
    maps=kernel_maps,
    metrics=METRICS,
)
