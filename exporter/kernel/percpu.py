"""Per-CPU map values summed over CPUs, vectorised and without copying the batch.

A per-CPU map hands user space every entry once per possible CPU, each
value padded to 8 bytes (kernel/bpf/syscall.c, bpf_map_value_size():
round_up(value_size, 8) * num_possible_cpus()). A batch read of n entries
of a u64 (or a struct of `width` u64s) is therefore n x CPUs x width
little-endian u64s, entry-major. On a 256-CPU node the used part of a
65,536-slot count array is 128 MiB, so two things matter: never loop over
CPUs in Python (12.8 M additions at 50,000 entries), reduce along rows (a
struct's fields summed by numpy over a middle axis is ~10x slower), and
never copy the buffer (ctypes' .raw and slicing each make a full copy, bytes that the
collect holds at its peak RSS).

Sums wrap modulo 2**64, as the kernel's u64 counters do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

U64 = np.dtype("<u8")


def sums(values: Any, entries: int, cpus: int, width: int = 1) -> np.ndarray:
    """Sum over CPUs of `entries` per-CPU values of `width` u64s each.

    values: any buffer holding at least entries x cpus x width u64s laid out
    as the kernel returns them (a ctypes buffer, memoryview, bytes); it is
    viewed in place, not copied. Returns uint64, shape (entries,) when width
    is 1, else (entries, width).
    """
    if entries < 0 or cpus <= 0 or width <= 0:
        raise ValueError(f"bad per-CPU shape: {entries} entries x {cpus} CPUs x {width}")
    needed = entries * cpus * width
    have = memoryview(values).nbytes
    if have < needed * U64.itemsize:
        raise ValueError(
            f"per-CPU buffer of {have} bytes is short of {entries} entries x {cpus} CPUs "
            f"x {width} u64 ({needed * U64.itemsize} bytes)"
        )
    view = np.frombuffer(values, dtype=U64, count=needed) if needed else np.zeros(0, U64)
    rows = view.reshape(entries, cpus * width)
    if width == 1:
        return rows.sum(axis=1, dtype=U64)
    # One strided row sum per field: ~10x faster than .reshape(n, cpus,
    # width).sum(axis=1), whose reduction runs over a middle axis.
    totals = np.empty((entries, width), dtype=U64)
    for field in range(width):
        totals[:, field] = rows[:, field::width].sum(axis=1, dtype=U64)
    return totals


def entry_sum(value: Any, width: int = 1) -> np.ndarray | int:
    """Sum over CPUs of one per-CPU value as BCC returns it (a ctypes array of
    one value per CPU): an int when width is 1, else `width` uint64 sums."""
    view = np.frombuffer(value, dtype=U64)
    if view.size % width:
        raise ValueError(f"a per-CPU value of {view.size} u64s is not a multiple of {width}")
    totals = view.reshape(-1, width).sum(axis=0, dtype=U64)
    return int(totals[0]) if width == 1 else totals


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
