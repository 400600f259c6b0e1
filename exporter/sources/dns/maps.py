"""The kernel maps bpf/dns.c creates, at the configured capacities.

Declared once for what needs their sizes without loading them (the memory
budget of `orb8 diagnose`, benchmarks/map_budget.py, via
exporter.registry.kernel_maps); tests/kernel/test_map_memory.py checks each
declaration against the maps a live orb8 holds. Light: no BCC, no numpy.
"""

from __future__ import annotations

from exporter.config import Settings
from exporter.kernel.mapmemory import MapDef

# sizeof the structs of bpf/include/dns.h (orb8's own layouts).
COUNT_KEY = 16
PENDING_KEY, PENDING_VALUE = 32, 16
STAT_COUNT = 4
STREAM_VALUE = 16


def kernel_maps(settings: Settings) -> list[MapDef]:
    return [
        MapDef(
            "dns_counts", "percpu_hash", COUNT_KEY, 8, settings.dns_count_entries, prealloc=False
        ),
        MapDef("dns_pending", "lru_hash", PENDING_KEY, PENDING_VALUE, settings.dns_pending_entries),
        MapDef("dns_stats", "percpu_array", 4, 8, STAT_COUNT),
        # Per TCP socket that carries DNS: no capacity of its own (freed
        # with the socket).
        MapDef("dns_streams", "sk_storage", 4, STREAM_VALUE, 0, prealloc=False),
    ]
