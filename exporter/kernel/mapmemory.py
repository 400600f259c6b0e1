"""Kernel memory of orb8's BPF maps, computed from their definitions.

The formulas are the kernel's own accounting, `map_mem_usage` (what
/proc/<pid>/fdinfo/<map fd> shows as `memlock` and bpftool as `memlock`),
added in Linux 6.6 by Yafang Shao's "bpf: ... memory usage" series:

  hash, percpu_hash, lru_hash   kernel/bpf/hashtab.c   htab_map_mem_usage()
  array, percpu_array           kernel/bpf/arraymap.c  array_map_mem_usage()
  stack (and queue)             kernel/bpf/queue_stack_maps.c  queue_stack_map_mem_usage()
  ringbuf                       kernel/bpf/ringbuf.c   ringbuf_map_mem_usage()
  sk_storage                    kernel/bpf/bpf_local_storage.c  bpf_local_storage_map_mem_usage()

In short (values and keys are rounded up to 8 bytes, CPUs are the
*possible* CPUs, /sys/devices/system/cpu/possible; "header", "bucket" and
"elem" are kernel struct sizes, below):

  hash:      header + bucket x buckets + 32 x CPUs        (buckets = max_entries
             rounded up to a power of two; 8 per-CPU lock counters of 4 bytes)
    preallocated (the default):
             + elem x (max_entries + CPUs)  + 8 x CPUs      plain hash
             + elem x max_entries + value x CPUs x max_entries   percpu_hash
             + elem x max_entries                           lru_hash
    BPF_F_NO_PREALLOC: per *current* entry
             (elem + 8), plus (16 + value x CPUs) if per-CPU
    elem = sizeof(struct htab_elem) + key + (8, a pointer, if per-CPU, else value)
  array:     header + value x max_entries
  percpu_array: header + 8 x max_entries + value x CPUs x max_entries
  stack:     header + (max_entries + 1) x value_size (not rounded)
  ringbuf:   header + 4096 x (3 + data pages) + 8 x (3 + 2 x data pages)
  sk_storage: header + bucket x max(2, CPUs rounded up to a power of two); the
             per-socket values are charged to each socket, not the map.

The fixed sizes (sizeof struct bpf_htab, bpf_array, htab_elem, ...) differ
between kernel versions *and builds* of one version (struct
bpf_local_storage_map is 448 bytes on one 6.18.44 config and 480 on another),
so `kernel_sizes()` reads them from the running kernel's BTF. FALLBACK_SIZES,
measured on one Linux 6.18 x86_64 build, is used only where BTF is absent;
it is off by tens of bytes per map at most (each header is under 1 KiB, noise
beside the per-entry terms). tests/kernel/test_map_memory.py checks every
formula against the running kernel's own memlock of each orb8 map.

Arrays are not rounded up to a power of two here: that happens only for
loaders without CAP_PERFMON/CAP_SYS_ADMIN (Spectre v1 masking), and orb8
always has one of them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from exporter.kernel.btf import VMLINUX, Btf, BtfError

PAGE_SIZE = 4096
HASHTAB_MAP_LOCK_COUNT = 8
LLIST_NODE = 8
RINGBUF_META_PAGES = 3  # RINGBUF_NR_META_PAGES: the header page + 2 position pages

# The kernel struct whose sizeof each map type's accounting starts from.
HEADER_STRUCTS = {
    "hash": "bpf_htab",
    "percpu_hash": "bpf_htab",
    "lru_hash": "bpf_htab",
    "array": "bpf_array",
    "percpu_array": "bpf_array",
    "stack": "bpf_queue_stack",
    "ringbuf": "bpf_ringbuf_map",
    "sk_storage": "bpf_local_storage_map",
}
MAP_TYPES = tuple(HEADER_STRUCTS)


@dataclass(frozen=True)
class KernelSizes:
    """sizeof the kernel-internal structs the accounting adds up."""

    headers: Mapping[str, int]  # map type -> sizeof its map struct
    htab_elem: int  # struct htab_elem, before the key and value
    bucket: int  # struct bucket (hash maps)
    storage_bucket: int  # struct bpf_local_storage_map_bucket
    origin: str  # where the figures came from, for diagnose and errors


# Measured from memlock on one Linux 6.18 x86_64 build: only for kernels
# without BTF (CONFIG_DEBUG_INFO_BTF off), where it may be off by a few bytes.
FALLBACK_SIZES = KernelSizes(
    headers={
        "hash": 832,
        "percpu_hash": 832,
        "lru_hash": 832,
        "array": 312,
        "percpu_array": 312,
        "stack": 312,
        "ringbuf": 304,
        "sk_storage": 448,
    },
    htab_elem=48,
    bucket=16,
    storage_bucket=16,
    origin="built-in table (one Linux 6.18 x86_64 build; no kernel BTF)",
)


def sizes_from_btf(btf: Btf) -> KernelSizes:
    """The struct sizes of the kernel `btf` describes; BtfError if one is missing."""
    size = {name: btf.struct_size(name) for name in set(HEADER_STRUCTS.values())}
    return KernelSizes(
        headers={kind: size[name] for kind, name in HEADER_STRUCTS.items()},
        htab_elem=btf.struct_size("htab_elem"),
        bucket=btf.struct_size("bucket"),
        storage_bucket=btf.struct_size("bpf_local_storage_map_bucket"),
        origin="kernel BTF",
    )


@functools.cache
def kernel_sizes(path: Path = VMLINUX) -> KernelSizes:
    """The running kernel's sizes from its BTF, or FALLBACK_SIZES without BTF."""
    try:
        return sizes_from_btf(Btf.from_file(path))
    except BtfError:
        return FALLBACK_SIZES


@dataclass(frozen=True)
class MapDef:
    name: str
    type: str  # one of MAP_TYPES
    key_size: int
    value_size: int
    max_entries: int  # ringbuf: its size in bytes
    prealloc: bool = True  # False: BPF_F_NO_PREALLOC (hashes only)


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def map_memory(
    m: MapDef, cpus: int, entries: int | None = None, sizes: KernelSizes | None = None
) -> int:
    """Bytes the kernel accounts for map `m` with `cpus` possible CPUs.

    entries: current entries, which only a BPF_F_NO_PREALLOC hash depends
    on; default max_entries (its worst case, a full map).
    sizes: the kernel's struct sizes; default the running kernel's.
    """
    if m.type not in MAP_TYPES:
        raise ValueError(f"{m.name}: unknown map type {m.type!r} (known: {', '.join(MAP_TYPES)})")
    if cpus <= 0 or m.max_entries < 0 or m.key_size < 0 or m.value_size < 0:
        raise ValueError(f"{m.name}: sizes and CPUs must be positive")
    sizes = sizes or kernel_sizes()
    usage = sizes.headers[m.type]
    value = _round8(m.value_size)
    if m.type in ("hash", "percpu_hash", "lru_hash"):
        percpu = m.type == "percpu_hash"
        elem = sizes.htab_elem + _round8(m.key_size) + (8 if percpu else value)
        usage += sizes.bucket * _pow2(m.max_entries) + 4 * cpus * HASHTAB_MAP_LOCK_COUNT
        if m.prealloc:
            n = m.max_entries
            if m.type == "hash":
                n += cpus  # extra elements for in-place updates
                usage += 8 * cpus  # a per-CPU pointer to them
            usage += elem * n
            if percpu:
                usage += value * cpus * n
        else:
            n = m.max_entries if entries is None else min(entries, m.max_entries)
            usage += (elem + LLIST_NODE) * n
            if percpu:
                usage += (LLIST_NODE + 8 + value * cpus) * n
    elif m.type == "array":
        usage += value * m.max_entries
    elif m.type == "percpu_array":
        usage += 8 * m.max_entries + value * cpus * m.max_entries
    elif m.type == "stack":
        usage += (m.max_entries + 1) * m.value_size
    elif m.type == "ringbuf":
        data_pages = m.max_entries // PAGE_SIZE
        usage += PAGE_SIZE * (RINGBUF_META_PAGES + data_pages)
        usage += 8 * (RINGBUF_META_PAGES + 2 * data_pages)
    else:  # sk_storage
        usage += sizes.storage_bucket * max(2, _pow2(cpus))
    return usage


def slots_needed(containers: int, syscalls: int, headroom: float = 0.0) -> int:
    """Slot capacity for `containers` x `syscalls` distinct pairs plus a
    fraction of headroom (node services, pause containers, cgroups of deleted
    pods during their grace), rounded up to a multiple of 4096. Not to a power
    of two: the per-CPU count array grows linearly with it."""
    pairs = int(containers * syscalls * (1 + headroom) + 0.5)
    return -(-pairs // 4096) * 4096
