"""Kernel memory of BPF maps from their definitions (exporter/mapmemory.py).

The expected bytes in the first table are the kernel's own accounting
(`memlock` in /proc/self/fdinfo/<map fd>), read on one Linux 6.18 x86_64
build with 2 possible CPUs from maps created by BCC with these definitions;
that build's struct sizes are FALLBACK_SIZES, passed explicitly, so the table
holds on any machine. The 64-CPU rows are the same formulas worked by hand
from kernel/bpf/*.c. tests/kernel/test_map_memory.py checks a live orb8's
maps against the running kernel, with the sizes its BTF gives.
"""

from __future__ import annotations

import pytest

from exporter.kernel.mapmemory import (
    FALLBACK_SIZES,
    HEADER_STRUCTS,
    KernelSizes,
    MapDef,
    kernel_sizes,
    map_memory,
    slots_needed,
)
from exporter.kernel.percpu import parse_cpu_list
from exporter.registry import kernel_maps, load_settings
from tests.helpers import bpftool_structs

MiB = 1 << 20


@pytest.mark.parametrize(
    ("m", "cpus", "entries", "kernel_memlock"),
    [
        # prealloc hash: 832 + 16 x buckets + 64 + 72 x (max + CPUs) + 8 x CPUs
        (MapDef("h", "hash", 16, 4, 1024), 2, None, 91168),
        (MapDef("h", "hash", 16, 4, 2048), 2, None, 181280),
        (MapDef("h", "hash", 16, 4, 1000), 2, None, 89440),  # 1024 buckets
        (MapDef("h", "hash", 8, 1, 64), 2, None, 6160),
        (MapDef("p", "percpu_hash", 16, 8, 1024), 2, None, 107392),
        # BPF_F_NO_PREALLOC: by current entries
        (MapDef("n", "percpu_hash", 16, 16, 1024, prealloc=False), 2, 0, 17280),
        (MapDef("n", "percpu_hash", 16, 16, 1024, prealloc=False), 2, 10, 18560),
        (MapDef("l", "lru_hash", 32, 16, 1024), 2, None, 115584),
        (MapDef("pa", "percpu_array", 4, 8, 1024), 2, None, 24888),
        (MapDef("pa", "percpu_array", 4, 8, 4), 2, None, 408),
        (MapDef("pc", "percpu_array", 4, 8208, 1), 2, None, 16736),
        (MapDef("a", "array", 4, 1, 3072), 2, None, 24888),  # values rounded to 8
        (MapDef("a", "array", 4, 8, 1), 2, None, 320),
        (MapDef("s", "stack", 0, 4, 1024), 2, None, 4412),  # not rounded
        (MapDef("r", "ringbuf", 0, 0, 1 << 20), 2, None, 1065288),
        (MapDef("r", "ringbuf", 0, 0, 1 << 16), 2, None, 78408),
        (MapDef("k", "sk_storage", 4, 16, 0, prealloc=False), 2, None, 480),
        # 64 CPUs, by hand: 312 + 8 x 65536 + 8 x 64 x 65536
        (MapDef("c", "percpu_array", 4, 8, 65536), 64, None, 312 + 524288 + 33554432),
        # 832 + 16 x 65536 + 4 x 64 x 8 + 72 x (65536 + 64) + 8 x 64
        (MapDef("h", "hash", 16, 4, 65536), 64, None, 832 + 1048576 + 2048 + 4723200 + 512),
        # 832 + 16 x 16384 + 2048 + 1000 x (72 + 8 + 8 + 8 + 16 x 64)
        (
            MapDef("t", "percpu_hash", 16, 16, 16384, prealloc=False),
            64,
            1000,
            832 + 262144 + 2048 + 1000 * 1120,
        ),
        (MapDef("k", "sk_storage", 4, 8, 0, prealloc=False), 64, None, 448 + 16 * 64),
    ],
)
def test_map_memory_matches_the_kernels_accounting(m, cpus, entries, kernel_memlock):
    assert map_memory(m, cpus, entries, FALLBACK_SIZES) == kernel_memlock


def test_struct_sizes_come_from_the_build_not_a_table():
    """Another build of the same kernel version: struct bpf_local_storage_map
    is 480 bytes there (448 in FALLBACK_SIZES); every other term is the same."""
    other = KernelSizes(
        headers={**FALLBACK_SIZES.headers, "sk_storage": 480},
        htab_elem=56,
        bucket=FALLBACK_SIZES.bucket,
        storage_bucket=FALLBACK_SIZES.storage_bucket,
        origin="test",
    )
    storage = MapDef("k", "sk_storage", 4, 8, 0, prealloc=False)
    assert map_memory(storage, 2, sizes=other) == map_memory(storage, 2, sizes=FALLBACK_SIZES) + 32
    # htab_elem is paid once per preallocated element: 1024 + 2 extra per CPU.
    h = MapDef("h", "hash", 16, 4, 1024)
    assert map_memory(h, 2, sizes=other) - map_memory(h, 2, sizes=FALLBACK_SIZES) == 8 * 1026


def test_running_kernel_sizes_are_what_bpftool_reads_from_btf():
    sizes = kernel_sizes()
    assert sizes.origin == "kernel BTF"
    oracle = bpftool_structs(
        {*HEADER_STRUCTS.values(), "htab_elem", "bucket", "bpf_local_storage_map_bucket"}
    )
    assert sizes.headers == {kind: oracle[name][0] for kind, name in HEADER_STRUCTS.items()}
    assert sizes.htab_elem == oracle["htab_elem"][0]
    assert sizes.bucket == oracle["bucket"][0]
    assert sizes.storage_bucket == oracle["bpf_local_storage_map_bucket"][0]


def test_without_btf_the_fallback_table_is_used(tmp_path):
    assert kernel_sizes(tmp_path / "no-vmlinux") is FALLBACK_SIZES
    (tmp_path / "garbage").write_bytes(b"\0" * 64)
    assert kernel_sizes(tmp_path / "garbage") is FALLBACK_SIZES


def test_a_no_prealloc_hash_defaults_to_full_and_never_exceeds_it():
    m = MapDef("n", "percpu_hash", 16, 16, 1024, prealloc=False)
    assert map_memory(m, 2) == map_memory(m, 2, 1024) == map_memory(m, 2, 5000)


@pytest.mark.parametrize(
    ("m", "cpus", "match"),
    [
        (MapDef("x", "bloom_filter", 0, 8, 10), 2, "unknown map type 'bloom_filter'"),
        (MapDef("x", "hash", 8, 8, 10), 0, "must be positive"),
        (MapDef("x", "hash", -8, 8, 10), 2, "must be positive"),
    ],
)
def test_bad_definitions_are_clear_errors(m, cpus, match):
    with pytest.raises(ValueError, match=match):
        map_memory(m, cpus)


def test_the_budget_for_1000_containers_x_64_syscalls_on_64_cpus():
    """docs/scaling.md's figures: 65,536 slots hold 64,000 pairs; with the
    network maps at 1,000 containers' occupancy the total is under 64 MiB."""
    assert slots_needed(1000, 64) == 65536
    assert slots_needed(1000, 64, headroom=0.15) == 73728
    maps = kernel_maps(load_settings({"syscall_slots": 65536}, environ={}))
    occupancy = {"network_traffic": 4000, "network_tcp": 5000}
    total = sum(map_memory(m, 64, occupancy.get(m.name), FALLBACK_SIZES) for m in maps)
    assert 52 * MiB < total < 53 * MiB
    worst = sum(map_memory(m, 64, sizes=FALLBACK_SIZES) for m in maps)  # every map full
    assert 67 * MiB < worst < 68 * MiB
    counts = next(m for m in maps if m.name == "syscall_counts")
    assert map_memory(counts, 64, sizes=FALLBACK_SIZES) == 312 + 65536 * 8 * 65


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0\n", 1), ("0-1\n", 2), ("0-63", 64), ("0-3,8-11,16", 9), ("0-255\n", 256)],
)
def test_cpu_lists(text, cpus):
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", "\n", "3-1", "a-b", "0-"])
def test_bad_cpu_lists_are_clear_errors(text):
    with pytest.raises(ValueError):
        parse_cpu_list(text)
