"""What the kernel says about orb8's own BPF objects: per-program run
counts and time (bpf_prog_info, counted while kernel.bpf_stats_enabled is
1) and each map's memory as the kernel accounts it (memlock in fdinfo;
exporter.kernel.mapmemory computes the same from definitions)."""

from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter.kernel.compiler import libbcc

# struct bpf_prog_info (UAPI, append-only): offsets of the kernel's own
# per-program counters. run_cnt and run_time_ns only advance while
# kernel.bpf_stats_enabled is 1; recursion_misses always does.
PROG_INFO_SIZE = 232


PROG_RUN_TIME_NS, PROG_RUN_CNT, PROG_RECURSION_MISSES = 192, 200, 208


BPF_STATS_ENABLED = Path("/proc/sys/kernel/bpf_stats_enabled")


@dataclass(frozen=True)
class ProgramStats:
    program: str
    runs: int
    run_time_ns: int
    recursion_misses: int


def program_stats(bpf: Any) -> list[ProgramStats]:
    """The kernel's counters of every loaded program of a BCC object."""
    from bcc.libbcc import lib

    fn = lib.bpf_obj_get_info
    fn.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
    fn.restype = ct.c_int
    stats = []
    for name, function in sorted(bpf.funcs.items()):
        info = ct.create_string_buffer(PROG_INFO_SIZE)
        length = ct.c_uint32(PROG_INFO_SIZE)
        if fn(function.fd, info, ct.byref(length)) != 0 or length.value <= PROG_RECURSION_MISSES:
            continue  # kernel too old to report these: nothing to export
        run_time, runs, misses = np.frombuffer(
            info.raw, dtype="<u8", count=3, offset=PROG_RUN_TIME_NS
        )
        stats.append(
            ProgramStats(
                name.decode() if isinstance(name, bytes) else str(name),
                int(runs),
                int(run_time),
                int(misses),
            )
        )
    return stats


def bpf_stats_enabled(path: Path = BPF_STATS_ENABLED) -> bool:
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return False


def memlock_by_map(bpf: Any, fdinfo: Path = Path("/proc/self/fdinfo")) -> dict[str, int]:
    """Kernel memory of every map of a loaded probe, by map name: the kernel's
    own accounting (`memlock` in the map fd's fdinfo, what bpftool shows), so
    it is right whatever the kernel version's allocation details are."""
    lib = libbcc()
    count, name_of, fd_of = lib.bpf_num_tables, lib.bpf_table_name, lib.bpf_table_fd_id
    count.restype, count.argtypes = ct.c_size_t, [ct.c_void_p]
    name_of.restype, name_of.argtypes = ct.c_char_p, [ct.c_void_p, ct.c_size_t]
    fd_of.restype, fd_of.argtypes = ct.c_int, [ct.c_void_p, ct.c_size_t]
    memory: dict[str, int] = {}
    for index in range(count(bpf.module)):
        fd = fd_of(bpf.module, index)
        try:
            text = (fdinfo / str(fd)).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key == "memlock":
                memory[name_of(bpf.module, index).decode()] = int(value)
    return memory
