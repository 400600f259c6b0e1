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
*possible* CPUs, /sys/devices/system/cpu/possible):

  hash:      header + 16 x buckets + 32 x CPUs            (buckets = max_entries
             rounded up to a power of two; 8 per-CPU lock counters of 4 bytes)
    preallocated (the default):
             + elem x (max_entries + CPUs)  + 8 x CPUs      plain hash
             + elem x max_entries + value x CPUs x max_entries   percpu_hash
             + elem x max_entries                           lru_hash
    BPF_F_NO_PREALLOC: per *current* entry
             (elem + 8), plus (16 + value x CPUs) if per-CPU
    elem = 48 (struct htab_elem) + key + (8, a pointer, if per-CPU, else value)
  array:     header + value x max_entries
  percpu_array: header + 8 x max_entries + value x CPUs x max_entries
  stack:     header + (max_entries + 1) x value_size (not rounded)
  ringbuf:   header + 4096 x (3 + data pages) + 8 x (3 + 2 x data pages)
  sk_storage: header + 16 x max(2, CPUs rounded up to a power of two); the
             per-socket values are charged to each socket, not the map.

The fixed headers (sizeof struct bpf_htab, bpf_array, ...) depend on the
kernel version and config; HEADERS holds the ones measured on Linux 6.18
(x86_64) and they are under 1 KiB each, noise beside the per-entry terms.
tests/kernel/test_map_memory.py checks every formula against the running
kernel's own memlock of each orb8 map.

Arrays are not rounded up to a power of two here: that happens only for
loaders without CAP_PERFMON/CAP_SYS_ADMIN (Spectre v1 masking), and orb8
always has one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE = 4096
HTAB_ELEM = 48  # sizeof(struct htab_elem), 64-bit
BUCKET = 16  # sizeof(struct bucket)
HASHTAB_MAP_LOCK_COUNT = 8
LLIST_NODE = 8
RINGBUF_META_PAGES = 3  # RINGBUF_NR_META_PAGES: the header page + 2 position pages
LOCAL_STORAGE_BUCKET = 16
# sizeof the map's own struct, as measured from memlock on Linux 6.18 x86_64.
HEADERS = {
    "hash": 832,
    "percpu_hash": 832,
    "lru_hash": 832,
    "array": 312,
    "percpu_array": 312,
    "stack": 312,
    "ringbuf": 304,
    "sk_storage": 448,
}
MAP_TYPES = tuple(HEADERS)


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


def map_memory(m: MapDef, cpus: int, entries: int | None = None) -> int:
    """Bytes the kernel accounts for map `m` with `cpus` possible CPUs.

    entries: current entries, which only a BPF_F_NO_PREALLOC hash depends
    on; default max_entries (its worst case, a full map).
    """
    if m.type not in HEADERS:
        raise ValueError(f"{m.name}: unknown map type {m.type!r} (known: {', '.join(MAP_TYPES)})")
    if cpus <= 0 or m.max_entries < 0 or m.key_size < 0 or m.value_size < 0:
        raise ValueError(f"{m.name}: sizes and CPUs must be positive")
    usage = HEADERS[m.type]
    value = _round8(m.value_size)
    if m.type in ("hash", "percpu_hash", "lru_hash"):
        percpu = m.type == "percpu_hash"
        elem = HTAB_ELEM + _round8(m.key_size) + (8 if percpu else value)
        usage += BUCKET * _pow2(m.max_entries) + 4 * cpus * HASHTAB_MAP_LOCK_COUNT
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
        usage += LOCAL_STORAGE_BUCKET * max(2, _pow2(cpus))
    return usage


# Sizes of the structs in bpf/syscalls.c and bpf/include/network.h.
SYSCALL_PAIR = 16  # struct syscall_pair
CPU_CACHE = 16 + 512 * 16  # struct cpu_cache: id, epoch, CACHE_WAYS x cache_entry
TRAFFIC_KEY, TRAFFIC_VALUE = 16, 16
TCP_KEY = 16
FLOW_KEY, FLOW_VALUE = 32, 16
NR_FLAGS = 3 * 1024  # ABI_TABLES x NR_TABLE
NR_TABLE = 1024
DANGEROUS_VALUE = 16  # struct dangerous_value
EVIDENCE_BUCKET = 32  # struct evidence_bucket


def orb8_maps(
    slots: int,
    dangerous: int = 16384,
    excluded: int = 64,
    ring_buffer_bytes: int = 1 << 20,
    traffic: int = 16384,
    tcp: int = 8192,
    flows: int = 16384,
) -> list[MapDef]:
    """Every map bpf/syscalls.c and bpf/network.c create, at the given capacities."""
    return [
        MapDef("syscall_slots", "hash", SYSCALL_PAIR, 4, slots),
        MapDef("syscall_counts", "percpu_array", 4, 8, slots),
        MapDef("syscall_free_slots", "stack", 0, 4, slots),
        MapDef("syscall_cache", "percpu_array", 4, CPU_CACHE, 1),
        MapDef("syscall_epoch", "array", 4, 8, 1),
        MapDef("syscall_update_failures", "percpu_array", 4, 8, 1),
        MapDef("syscall_flags", "array", 4, 4, NR_FLAGS),
        MapDef("dangerous_excluded", "hash", 8, 1, excluded),
        MapDef("dangerous_config", "array", 4, 8, 1),
        MapDef("dangerous_counts", "hash", SYSCALL_PAIR, DANGEROUS_VALUE, dangerous),
        MapDef("dangerous_overflow", "array", 4, DANGEROUS_VALUE, NR_TABLE),
        MapDef("dangerous_update_failures", "percpu_array", 4, 8, 1),
        MapDef("dangerous_buckets", "lru_hash", 8, EVIDENCE_BUCKET, dangerous),
        MapDef("dangerous_events", "ringbuf", 0, 0, ring_buffer_bytes),
        MapDef("ringbuf_stats", "percpu_array", 4, 8, 5),
        MapDef("ringbuf_progress", "array", 4, 8, 2),
        MapDef("network_traffic", "percpu_hash", TRAFFIC_KEY, TRAFFIC_VALUE, traffic, False),
        MapDef("network_tcp", "percpu_hash", TCP_KEY, 8, tcp, False),
        MapDef("network_flows", "lru_hash", FLOW_KEY, FLOW_VALUE, flows),
        MapDef("network_stats", "percpu_array", 4, 8, 4),
        MapDef("network_sockets", "sk_storage", 4, 8, 0, False),
    ]


def slots_needed(containers: int, syscalls: int, headroom: float = 0.0) -> int:
    """Slot capacity for `containers` x `syscalls` distinct pairs plus a
    fraction of headroom (node services, pause containers, cgroups of deleted
    pods during their grace), rounded up to a multiple of 4096. Not to a power
    of two: the per-CPU count array grows linearly with it."""
    pairs = int(containers * syscalls * (1 + headroom) + 0.5)
    return -(-pairs // 4096) * 4096


def parse_cpu_list(text: str) -> int:
    """Number of CPUs in a kernel CPU list such as "0-63" or "0-3,8-11,16"."""
    count = 0
    for part in text.strip().split(","):
        if not part:
            continue
        first, dash, last = part.partition("-")
        low, high = int(first), int(last if dash else first)
        if high < low:
            raise ValueError(f"bad CPU range {part!r}")
        count += high - low + 1
    if count == 0:
        raise ValueError(f"no CPUs in {text!r}")
    return count


def possible_cpus(path: Path = Path("/sys/devices/system/cpu/possible")) -> int:
    """CPUs the kernel sizes per-CPU maps for (possible, not online)."""
    return parse_cpu_list(path.read_text())
