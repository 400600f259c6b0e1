"""The orb8_bpf_map_* families, declared once for every source with kernel maps.

Each such source describes its maps as MapStats rows; map_families() turns
them into the families (a capacity and a fill for every bounded map, as the
project rules ask). Sources return them from collect() like any family; the
agent merges same-named families of several sources into one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from exporter.model import MetricFamily, counter, gauge


@dataclass(frozen=True)
class MapStats:
    map: str
    entries: int
    capacity: int
    update_failures: int
    evictions: int | None = None  # LRU maps: entries the kernel evicted


def memory_family(memory: dict[str, int]) -> MetricFamily:
    """orb8_bpf_map_memory_bytes for every map of a probe (bounded or not):
    the kernel memory budget per node, as the kernel itself accounts it."""
    family = gauge(
        "orb8_bpf_map_memory_bytes",
        "Kernel memory an orb8 BPF map takes (the kernel's memlock accounting).",
        ("map",),
    )
    for name, size in sorted(memory.items()):
        family.add((name,), size)
    return family


def map_families(maps: Iterable[MapStats]) -> list[MetricFamily]:
    maps = list(maps)
    label = ("map",)
    entries = gauge("orb8_bpf_map_entries", "Entries currently in an orb8 kernel map.", label)
    capacity = gauge("orb8_bpf_map_capacity", "Maximum entries of an orb8 kernel map.", label)
    failures = counter(
        "orb8_bpf_map_update_failures_total",
        "Kernel map updates that failed (map full); the events were not counted.",
        label,
    )
    evictions = counter(
        "orb8_bpf_map_evictions_total",
        "Entries an LRU kernel map evicted to make room for new ones.",
        label,
    )
    for stats in maps:
        entries.add((stats.map,), stats.entries)
        capacity.add((stats.map,), stats.capacity)
        failures.add((stats.map,), stats.update_failures)
        if stats.evictions is not None:
            evictions.add((stats.map,), stats.evictions)
    return [entries, capacity, failures, *([evictions] if evictions.samples else [])]
