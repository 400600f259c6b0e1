"""The network probe: traffic, TCP health and flows (by peer) per cgroup,
counted in the kernel.

Package layout: source.py (loader, collect, retirement), flows.py (peer
classification and the flow ledger: pure Python, fed what source.py reads).
Program: bpf/network.c, layouts in bpf/include/network.h.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.config import Spec, cidr_list, map_capacity, non_negative_int, positive_float
from exporter.sources import Context, Probe
from exporter.sources.network.maps import kernel_maps

if TYPE_CHECKING:
    from exporter.sources.network.source import NetworkSource

SETTINGS: tuple[Spec, ...] = (
    Spec(
        "network_traffic_entries",
        map_capacity,
        16384,
        "capacity of the kernel traffic map, in (cgroup, direction, protocol, family) "
        "tuples (at most 16 per cgroup)",
        "N",
    ),
    Spec(
        "network_tcp_entries",
        map_capacity,
        8192,
        "capacity of the kernel TCP event map, in (cgroup, event) pairs (5 per cgroup)",
        "N",
    ),
    Spec(
        "network_flow_entries",
        map_capacity,
        16384,
        "capacity of the kernel flow map (LRU, per cgroup and peer); when full the least "
        "recently used flow is evicted and counted in orb8_bpf_map_evictions_total",
        "N",
    ),
    Spec(
        "network_peer_limit",
        non_negative_int,
        16,
        "peer pods per workload exported by name; traffic with further peer pods is "
        'summed in peer_class="other"',
        "N",
    ),
    Spec(
        "network_flow_idle_timeout",
        positive_float,
        300.0,
        "seconds without traffic after which a flow leaves the kernel map",
        "SECONDS",
    ),
    Spec(
        "network_cluster_cidrs",
        cidr_list,
        "",
        "pod and service CIDRs: peers in them that are not known pods are "
        'peer_class="cluster" (else "external")',
        "LIST",
    ),
)


def create(context: Context) -> NetworkSource:
    from exporter.sources.cgroupprobe import agent_options
    from exporter.sources.network.source import NetworkSource

    settings = context.settings
    return NetworkSource(
        context.resolver,
        traffic_entries=settings.network_traffic_entries,
        tcp_entries=settings.network_tcp_entries,
        flow_entries=settings.network_flow_entries,
        peer_limit=settings.network_peer_limit,
        flow_idle_timeout=settings.network_flow_idle_timeout,
        cluster_cidrs=settings.network_cluster_cidrs,
        **agent_options(context),
    )


PROBE = Probe(
    "network", default=True, settings=SETTINGS, factory=create, bpf=True, maps=kernel_maps
)
