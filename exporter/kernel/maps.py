"""Map reads, deletes and decodes: batch reads, per-CPU sums, atomic
read-and-delete, ring buffers, and BpfMaps, the by-name view of a
compiled probe's maps that sources collect through (tests substitute
in-memory maps with the same methods: tests/bpf_maps.py).

Key layouts are numpy dtypes built from BCC's own table types, which BCC
derives from the C structs in bpf/include/: nothing mirrored by hand.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from typing import Any, Protocol

import numpy as np

from exporter.kernel import ProbeError, percpu
from exporter.kernel.compiler import libbcc
from exporter.kernel.stats import ProgramStats, memlock_by_map, program_stats


def lookup_batch(table: Any, count: int) -> tuple[bytes, memoryview, int]:
    """Read up to `count` entries of a map in as few syscalls as the kernel allows.

    Returns (keys, values, n), n entries: keys as bytes, values as a view of
    the read buffer (not copied: at 256 CPUs a per-CPU map's values are
    ~100 MiB). Per-CPU values are
    round_up(value_size, 8) * possible CPUs bytes each, as the kernel lays
    them out. Written against libbcc directly: bcc 0.26's helper reuses one
    ctypes object for the batch token and the count.
    """
    from bcc.libbcc import lib

    key_size = ct.sizeof(table.Key)
    value_size = ct.sizeof(table.Leaf)
    keys = ct.create_string_buffer(max(key_size * count, 1))
    values = ct.create_string_buffer(max(value_size * count, 1))
    token_in, token_out = ct.c_uint64(0), ct.c_uint64(0)
    total = 0
    while total < count:
        n = ct.c_uint32(count - total)
        res = lib.bpf_lookup_batch(
            table.map_fd,
            ct.cast(ct.byref(token_in), ct.POINTER(ct.c_uint32)) if total else None,
            ct.cast(ct.byref(token_out), ct.POINTER(ct.c_uint32)),
            ct.byref(keys, key_size * total),
            ct.byref(values, value_size * total),
            ct.byref(n),
        )
        err = ct.get_errno()
        total += n.value
        if res != 0:
            if err == errno.ENOENT:
                break
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH on {table.name}: {os.strerror(err)}")
        if n.value == 0:
            break
        token_in.value = token_out.value
    return keys.raw[: key_size * total], memoryview(values)[: value_size * total], total


def key_dtype(table: Any) -> np.dtype:
    """The numpy layout of a map's keys, from BCC's ctypes type of the C key
    (so the C struct in bpf/include/ is the only declaration)."""
    return np.dtype(table.Key)


def read_keys(table: Any, capacity: int) -> tuple[np.ndarray, memoryview, int]:
    """(decoded keys, raw values, n) of every entry of a map, in one batch read."""
    keys, values, n = lookup_batch(table, capacity)
    return np.frombuffer(keys, dtype=key_dtype(table), count=n), values, n


def read_percpu_hash(table: Any, capacity: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(decoded keys, per-key sums over CPUs of `width` u64 values) of a per-CPU hash."""
    decoded, values, n = read_keys(table, capacity)
    if n == 0:
        return decoded, np.zeros((0, width), dtype=np.uint64)
    cpus = values.nbytes // (n * width * 8)
    return decoded, percpu.sums(values, n, cpus, width).reshape(n, width)


def percpu_sum(table: Any, index: int = 0) -> int:
    """Sum over CPUs of one slot of a per-CPU array of u64."""
    return int(percpu.entry_sum(table[ct.c_int(index)]))


def percpu_values(table: Any, index: int) -> list[int]:
    """The per-CPU values of one slot of a per-CPU array of u64."""
    return list(table[ct.c_int(index)])


def lookup_and_delete(table: Any, raw_key: bytes, value_size: int) -> bytes | None:
    """Read and delete one entry in one atomic step: its raw value, or None if
    it was gone (or the kernel cannot do it for this map type)."""
    fn = libbcc().bpf_map_lookup_and_delete_elem
    fn.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
    fn.restype = ct.c_int
    key = ct.create_string_buffer(raw_key, len(raw_key))
    value = ct.create_string_buffer(value_size)
    if fn(table.map_fd, key, value) != 0:
        return None
    return value.raw


def delete(table: Any, raw_key: bytes) -> None:
    """Delete one entry by its raw key; gone already is fine."""
    libbcc().bpf_delete_elem(table.map_fd, ct.create_string_buffer(raw_key, len(raw_key)))


def take_percpu(table: Any, raw_key: bytes, width: int) -> list[int] | None:
    """Read and delete a per-CPU hash entry in one step: its per-CPU sums of
    `width` u64 counters; None if it was gone, or if the kernel cannot do it
    in one step (before 5.14: then it is just deleted)."""
    value = lookup_and_delete(table, raw_key, 8 * width * percpu.possible_cpus())
    if value is None:
        delete(table, raw_key)
        return None
    sums = np.frombuffer(value, dtype=np.uint64).reshape(-1, width).sum(axis=0)
    return [int(v) for v in sums]


def open_ring_buffer(bpf: Any, name: str, callback: Any) -> None:
    """Have poll_ring_buffer() call callback(ctx, data, size) per record."""
    bpf[name.encode()].open_ring_buffer(callback)


def record_reader(bpf: Any, name: str, what: str = "record") -> Any:
    """A decoder of a ring buffer's records: (data, size) -> the record.

    BCC deduces the record's ctypes type from the C struct the program
    reserves (bpf/include/), so nothing mirrors it by hand. The record points
    into the ring buffer: use it inside the callback only. A record shorter
    than the type raises ValueError."""
    table = bpf[name.encode()]

    def read(data: Any, size: int) -> Any:
        record = table.event(data)
        if size < ct.sizeof(record):
            raise ValueError(f"{what} of {size} bytes, expected {ct.sizeof(record)}")
        return record

    return read


def poll_ring_buffer(bpf: Any, timeout_ms: int) -> None:
    bpf.ring_buffer_poll(timeout_ms)


def percpu_u64_sums(table: Any, count: int) -> np.ndarray:
    """Sum over CPUs of the first `count` u64 slots of a per-CPU array."""
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    _, values, n = lookup_batch(table, count)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    return percpu.sums(values, n, values.nbytes // (n * 8))


class KernelMaps(Protocol):
    """What a source reads and changes its kernel maps through, by map name:
    BpfMaps over a loaded probe, or the unit tests' in-memory maps
    (tests/bpf_maps.py) with the same methods."""

    def read_hash(self, name: str, capacity: int, width: int) -> tuple[np.ndarray, np.ndarray]: ...

    def percpu_array_sums(self, name: str, count: int) -> np.ndarray: ...

    def percpu_sum(self, name: str, index: int = 0) -> int: ...

    def percpu_values(self, name: str, index: int) -> list[int]: ...

    def zero(self, name: str, index: int) -> None: ...

    def put(self, name: str, key: int, value: int) -> None: ...

    def push(self, name: str, value: int) -> None: ...

    def pop(self, name: str, raw_key: bytes) -> int | None: ...

    def delete(self, name: str, raw_key: bytes) -> None: ...

    def take(self, name: str, raw_key: bytes, width: int) -> list[int] | None: ...

    def programs(self) -> list[ProgramStats]: ...

    def memory(self) -> dict[str, int]: ...


def loaded(maps: KernelMaps | None, probe: str) -> KernelMaps:
    """A source's maps, or ProbeError naming the probe that is not loaded."""
    if maps is None:
        raise ProbeError(f"{probe} probe is not loaded")
    return maps


class BpfMaps:
    """A loaded probe's maps by name: the only way sources read, write and
    delete kernel entries. Keys come back decoded with numpy dtypes built from
    BCC's table types (the C structs in bpf/include/); counter values as
    uint64 arrays, summed over CPUs for per-CPU maps.

    Sources take any object with these methods: tests/bpf_maps.py is an
    in-memory one, so collect() and retirement run in unit tests.
    """

    def __init__(self, bpf: Any) -> None:
        self.bpf = bpf
        self._tables: dict[str, Any] = {}

    def _table(self, name: str) -> Any:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = self.bpf[name.encode()]
        return table

    def read_hash(self, name: str, capacity: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(decoded keys, values [n, width] uint64) of every entry of a hash.

        Per-CPU values (u64 counters) are summed over CPUs; other values are
        `width` u64 counters, or one u32 (width 1, e.g. a slot index)."""
        table = self._table(name)
        if hasattr(table, "sLeaf"):  # BCC's per-CPU tables keep the one-CPU type there
            return read_percpu_hash(table, capacity, width)
        decoded, values, n = read_keys(table, capacity)
        dtype = "<u4" if ct.sizeof(table.Leaf) == 4 else "<u8"
        array = np.frombuffer(values, dtype=dtype, count=n * width).reshape(n, width)
        return decoded, array.astype(np.uint64) if dtype == "<u4" else array

    def percpu_array_sums(self, name: str, count: int) -> np.ndarray:
        """Sum over CPUs of the first `count` u64 slots of a per-CPU array."""
        return percpu_u64_sums(self._table(name), count)

    def percpu_sum(self, name: str, index: int = 0) -> int:
        return percpu_sum(self._table(name), index)

    def percpu_values(self, name: str, index: int) -> list[int]:
        return percpu_values(self._table(name), index)

    def zero(self, name: str, index: int) -> None:
        """Reset one slot of an array (every CPU's copy of a per-CPU one)."""
        table = self._table(name)
        table[table.Key(index)] = table.Leaf()

    def put(self, name: str, key: int, value: int) -> None:
        """Store a scalar value under a scalar key (array index or integer key)."""
        table = self._table(name)
        table[table.Key(key)] = table.Leaf(value)

    def push(self, name: str, value: int) -> None:
        """Push onto a BPF stack or queue."""
        table = self._table(name)
        table.push(table.Leaf(value))

    def pop(self, name: str, raw_key: bytes) -> int | None:
        """Delete a hash entry whose value is one integer; the value, or None if
        it was gone. Not atomic: for maps nothing writes to while it runs."""
        table = self._table(name)
        key = table.Key.from_buffer_copy(raw_key)
        value = table.get(key)
        if value is None:
            return None
        del table[key]
        return int(value.value)

    def delete(self, name: str, raw_key: bytes) -> None:
        delete(self._table(name), raw_key)

    def take(self, name: str, raw_key: bytes, width: int) -> list[int] | None:
        """Read and delete an entry of `width` u64 counters in one atomic step:
        its final counts (summed over CPUs), or None if it was gone (for a
        per-CPU map also when the kernel cannot do it in one step, before
        5.14: the entry is then just deleted)."""
        table = self._table(name)
        if hasattr(table, "sLeaf"):
            return take_percpu(table, raw_key, width)
        value = lookup_and_delete(table, raw_key, ct.sizeof(table.Leaf))
        if value is None:
            return None
        return [int(v) for v in np.frombuffer(value, dtype="<u8", count=width)]

    def programs(self) -> list[ProgramStats]:
        return program_stats(self.bpf)

    def memory(self) -> dict[str, int]:
        return memlock_by_map(self.bpf)
