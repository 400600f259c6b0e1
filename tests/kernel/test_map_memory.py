"""exporter/mapmemory.py against the running kernel's own accounting of a live orb8's maps."""

from __future__ import annotations

import json
import subprocess

import pytest

from exporter.kernel.mapmemory import MapDef, map_memory
from exporter.kernel.percpu import possible_cpus
from exporter.registry import kernel_maps, load_settings
from tests.helpers import map_ids_held_by

pytestmark = pytest.mark.kernel


def held_maps(pid: int) -> list[dict]:
    """bpftool's view of the maps process `pid` holds open."""
    held = map_ids_held_by(pid)
    shown = json.loads(subprocess.check_output(["bpftool", "-j", "map", "show"]))
    return [m for m in shown if m["id"] in held]


def test_every_map_of_a_live_orb8_costs_what_the_formulas_say(start_exporter):
    exporter = start_exporter("--probes", "syscalls,network,dns", "--syscall-slots", "4096")
    cpus = possible_cpus()
    loaded = {m["name"]: m for m in held_maps(exporter.proc.pid)}
    # The probes' declarations (exporter/sources/*/maps.py) are the maps the
    # C files create (BPF object names are cut at 15 characters).
    settings = load_settings({"probes": "syscalls,network,dns", "syscall_slots": 4096}, environ={})
    for definition in kernel_maps(settings):
        live = loaded.pop(definition.name[:15])
        assert (live["type"], live["bytes_value"], live["max_entries"]) == (
            definition.type,
            definition.value_size,
            definition.max_entries,
        ), definition.name
        assert bool(live["flags"] & 1) == (not definition.prealloc), definition.name
        if definition.prealloc or definition.type == "sk_storage":
            assert map_memory(definition, cpus) == live["bytes_memlock"], definition.name
        else:
            # A BPF_F_NO_PREALLOC hash costs by its current entries: the
            # kernel's figure must be one of the formula's for some count.
            empty = map_memory(definition, cpus, entries=0)
            one = map_memory(definition, cpus, entries=1) - empty
            assert (live["bytes_memlock"] - empty) % one == 0, definition.name
    assert not loaded, f"maps no probe declares: {sorted(loaded)}"


def test_the_formulas_hold_for_other_shapes_than_orb8s(start_exporter):
    """Same check on a hash/array shape orb8 does not use, via orb8's own maps
    at another capacity: the formulas are not fitted to one size."""
    exporter = start_exporter("--probes", "syscalls", "--syscall-slots", "1000")
    cpus = possible_cpus()
    loaded = {m["name"]: m for m in held_maps(exporter.proc.pid)}
    for name, kind in (("syscall_slots", "hash"), ("syscall_counts", "percpu_array")):
        live = loaded[name]
        m = MapDef(name, kind, live["bytes_key"], live["bytes_value"], live["max_entries"])
        assert live["max_entries"] == 1000
        assert map_memory(m, cpus) == live["bytes_memlock"], name


def test_map_memory_gauge_is_the_kernels_own_figure(start_exporter):
    exporter = start_exporter("--probes", "syscalls,network", "--syscall-slots", "4096")
    loaded = {m["name"]: m for m in held_maps(exporter.proc.pid)}
    gauge = {
        dict(labels)["map"]: value
        for (name, labels), value in exporter.scrape().items()
        if name == "orb8_bpf_map_memory_bytes"
    }
    # Every map the exporter holds has its series (names cut at 15 by the kernel).
    assert {name[:15] for name in gauge} == set(loaded)
    for name, value in gauge.items():
        if loaded[name[:15]]["flags"] & 1:  # no-prealloc hashes grow with entries
            assert value > 0, name
        else:
            assert value == loaded[name[:15]]["bytes_memlock"], name
    assert gauge["syscall_counts"] == map_memory(
        next(
            m
            for m in kernel_maps(load_settings({"syscall_slots": 4096}, environ={}))
            if m.name == "syscall_counts"
        ),
        possible_cpus(),
    )
