"""The kernel maps bpf/syscalls.c creates, at the configured capacities.

Declared here, once, for what needs their sizes without loading them: the
kernel memory budget of `orb8 diagnose` and benchmarks/map_budget.py (via
exporter.registry.kernel_maps), and tests/kernel/test_map_memory.py, which
checks every declaration against the maps a live orb8 holds. Light: no BCC,
no numpy.
"""

from __future__ import annotations

from exporter.config import Settings
from exporter.kernel.mapmemory import MapDef

EXCLUDED_CAPACITY = 64  # cgroups of orb8 instances whose dangerous calls are not counted
NR_TABLE = 1024  # every ABI's numbers are below this (bpf/syscalls.c)
ABI_TABLES = 3  # native, i386, x32

# sizeof the structs of bpf/syscalls.c and bpf/include/syscalls.h (orb8's own
# layouts, the same on every kernel; the kernel test compares them with the
# live maps' value sizes).
SYSCALL_PAIR = 16  # struct syscall_pair
CPU_CACHE = 16 + 512 * 16  # struct cpu_cache: id, epoch, CACHE_WAYS x cache_entry
DANGEROUS_VALUE = 16  # struct dangerous_value
EVIDENCE_BUCKET = 32  # struct evidence_bucket


def kernel_maps(settings: Settings) -> list[MapDef]:
    slots, dangerous = settings.syscall_slots, settings.dangerous_slots
    return [
        MapDef("syscall_slots", "hash", SYSCALL_PAIR, 4, slots),
        MapDef("syscall_counts", "percpu_array", 4, 8, slots),
        MapDef("syscall_free_slots", "stack", 0, 4, slots),
        MapDef("syscall_cache", "percpu_array", 4, CPU_CACHE, 1),
        MapDef("syscall_epoch", "array", 4, 8, 1),
        MapDef("syscall_update_failures", "percpu_array", 4, 8, 1),
        MapDef("syscall_flags", "array", 4, 4, ABI_TABLES * NR_TABLE),
        MapDef("dangerous_excluded", "hash", 8, 1, EXCLUDED_CAPACITY),
        MapDef("dangerous_config", "array", 4, 8, 1),
        MapDef("dangerous_counts", "hash", SYSCALL_PAIR, DANGEROUS_VALUE, dangerous),
        MapDef("dangerous_overflow", "array", 4, DANGEROUS_VALUE, NR_TABLE),
        MapDef("dangerous_update_failures", "percpu_array", 4, 8, 1),
        MapDef("dangerous_buckets", "lru_hash", 8, EVIDENCE_BUCKET, dangerous),
        MapDef("dangerous_events", "ringbuf", 0, 0, settings.ring_buffer_size),
        MapDef("ringbuf_stats", "percpu_array", 4, 8, 5),
        MapDef("ringbuf_progress", "array", 4, 8, 2),
    ]
