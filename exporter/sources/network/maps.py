"""The kernel maps bpf/network.c creates, at the configured capacities.

Declared once for what needs their sizes without loading them (the memory
budget of `orb8 diagnose`, benchmarks/map_budget.py, via
exporter.registry.kernel_maps); tests/kernel/test_map_memory.py checks each
declaration against the maps a live orb8 holds. Light: no BCC, no numpy.
"""

from __future__ import annotations

from exporter.config import Settings
from exporter.kernel.mapmemory import MapDef

# sizeof the structs of bpf/include/network.h (orb8's own layouts).
TRAFFIC_KEY, TRAFFIC_VALUE = 16, 16
TCP_KEY = 16
FLOW_KEY, FLOW_VALUE = 32, 16


def kernel_maps(settings: Settings) -> list[MapDef]:
    return [
        MapDef(
            "network_traffic",
            "percpu_hash",
            TRAFFIC_KEY,
            TRAFFIC_VALUE,
            settings.network_traffic_entries,
            prealloc=False,
        ),
        MapDef(
            "network_tcp", "percpu_hash", TCP_KEY, 8, settings.network_tcp_entries, prealloc=False
        ),
        MapDef("network_flows", "lru_hash", FLOW_KEY, FLOW_VALUE, settings.network_flow_entries),
        MapDef("network_stats", "percpu_array", 4, 8, 4),
        MapDef("network_sockets", "sk_storage", 4, 8, 0, prealloc=False),
    ]
