"""Process memory: what /proc says orb8 holds, and giving freed heap back.

Compiling the probes runs LLVM inside orb8 (BCC), which leaves tens of MiB
of freed but unreturned heap: glibc keeps freed chunks below the top of
the heap for reuse, and they stay resident (RssAnon, which the kernel cannot
reclaim and which counts against the container's memory limit). One
malloc_trim(0) after the last probe is compiled hands the free pages back
(madvise(MADV_DONTNEED) on every free page, not only the top of the heap).
See benchmarks/RESULTS.md (footprint) for what it returns.

The same free pages are dirtied again, one here, one there, as the heap is
reused: under pod churn RssAnon crept back up to the heap's size (issue 20),
so the agent trims again every TRIM_INTERVAL (about a millisecond each).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

# Seconds between malloc_trim() calls while serving.
TRIM_INTERVAL = 10.0

# /proc/<pid>/status fields, in kB there.
FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")


def parse_status(text: str) -> dict[str, int]:
    """The memory fields of a /proc/<pid>/status text, in bytes."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            number, _, unit = rest.strip().partition(" ")
            if unit.strip() != "kB" or not number.isdigit():
                raise ValueError(f"unexpected /proc status line: {line!r}")
            values[key] = int(number) * 1024
    return values


def process_memory(pid: int | str = "self", proc: Path = Path("/proc")) -> dict[str, int]:
    return parse_status((proc / str(pid) / "status").read_text())


@functools.cache  # found once: find_library may run ldconfig, and the agent trims every 10 s
def _libc_malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl has no malloc_trim): nothing to do
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


# glibc mallopt parameters (malloc.h) and orb8's values. Each thread that
# allocates gets its own arena (up to 8 per core), and the mmap threshold
# rises to the largest block freed (up to 32 MiB): the HTTP workers and the
# housekeeping thread each kept the high-water mark of a scrape's
# temporaries (a 7 MiB body, numpy arrays) in their own arena. Two arenas
# and a fixed 256 KiB threshold (big blocks are mmapped, and unmapped when
# freed) took RssAnon at 1,000 cgroups from 219 to 137 MiB
# (benchmarks/RESULTS.md, issue 20).
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
TUNING = {
    "MALLOC_ARENA_MAX": (M_ARENA_MAX, 2),
    "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, 256 << 10),
}


def tune_malloc(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Apply TUNING before the threads start; what was set (by name). A value
    the operator set in the environment (glibc reads it itself) is left alone;
    nothing happens without glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = {}
    for name, (param, value) in TUNING.items():
        if name not in environ and mallopt(param, value) == 1:
            applied[name] = value
    if applied:
        log.debug("malloc tuned: %s", applied)
    return applied


def malloc_trim(level: int = logging.INFO) -> int:
    """Give the C heap's free pages back to the kernel; returns the bytes of
    RssAnon that went (0 where there is no glibc or nothing was free)."""
    trim = _libc_malloc_trim()
    if trim is None:
        return 0
    before = process_memory().get("RssAnon", 0)
    trim(0)
    freed = max(0, before - process_memory().get("RssAnon", 0))
    log.log(level, "malloc_trim returned %.1f MiB to the kernel", freed / 2**20)
    return freed
