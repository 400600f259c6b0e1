"""In-memory kernel maps with the methods of exporter.kernel.maps.BpfMaps: the seam
through which sources' collect() and retirement run in unit tests.

The key layouts here mirror bpf/include/ by hand; that is the one place
outside the kernel that does, and the kernel tests check the real ones.
"""

from __future__ import annotations

import ctypes as ct
from collections import defaultdict

import numpy as np

from exporter.sources.network.flows import IPAddress

SYSCALL_PAIR = np.dtype([("cgroup_id", "<u8"), ("nr", "<u4"), ("pad", "<u4")])
TRAFFIC_KEY = np.dtype(
    [
        ("cgroup_id", "<u8"),
        ("direction", "u1"),
        ("protocol", "u1"),
        ("family", "u1"),
        ("pad", "u1", (5,)),
    ]
)
FLOW_KEY = np.dtype(
    [
        ("cgroup_id", "<u8"),
        ("addr", "u1", (16,)),
        ("family", "u1"),
        ("protocol", "u1"),
        ("direction", "u1"),
        ("pad", "u1", (5,)),
    ]
)
TCP_EVENT_KEY = np.dtype([("cgroup_id", "<u8"), ("event", "<u4"), ("pad", "<u4")])
DNS_COUNT_KEY = np.dtype(
    [
        ("cgroup_id", "<u8"),
        ("role", "u1"),
        ("kind", "u1"),
        ("code", "u1"),
        ("pad", "u1", (5,)),
    ]
)
DNS_PENDING_KEY = np.dtype(
    [
        ("cookie", "<u8"),
        ("peer", "u1", (16,)),
        ("peer_port", "<u2"),
        ("id", "<u2"),
        ("role", "u1"),
        ("family", "u1"),
        ("pad", "u1", (2,)),
    ]
)
KEYS = {
    "syscall_slots": SYSCALL_PAIR,
    "dangerous_counts": SYSCALL_PAIR,
    # Arrays and scalar keys: BCC's ctypes key is a plain integer.
    "dangerous_overflow": np.dtype("<i4"),
    "dangerous_buckets": np.dtype("<u8"),
    "network_traffic": TRAFFIC_KEY,
    "network_tcp": TCP_EVENT_KEY,
    "network_flows": FLOW_KEY,
    "dns_counts": DNS_COUNT_KEY,
    "dns_pending": DNS_PENDING_KEY,
}


def encode(dtype: np.dtype, **fields: int) -> bytes:
    if dtype.names is None:  # a scalar key: its one field, whatever its name
        (value,) = fields.values()
        return np.array([value], dtype=dtype).tobytes()
    key = np.zeros(1, dtype=dtype)
    for name, value in fields.items():
        key[name] = value
    return key.tobytes()


class DangerousEvent(ct.Structure):
    """struct dangerous_event of bpf/include/syscalls.h, as BCC decodes it."""

    _fields_ = [
        ("time_ns", ct.c_uint64),
        ("cgroup_id", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tgid", ct.c_uint32),
        ("uid", ct.c_uint32),
        ("nr", ct.c_uint32),
        ("comm", ct.c_char * 16),
        ("suppressed", ct.c_uint64),
        ("since_ns", ct.c_uint64),
        ("flags", ct.c_uint32),
        ("pad", ct.c_uint32),
    ]


class RingBuffer:
    """A BCC ring buffer table's event(): the record at a pointer (or in bytes)."""

    def __init__(self, record: type[ct.Structure]) -> None:
        self.record = record

    def event(self, data: int | bytes) -> ct.Structure:
        if isinstance(data, bytes):
            buffer = ct.create_string_buffer(data, max(len(data), ct.sizeof(self.record)))
            return self.record.from_buffer_copy(buffer)
        return ct.cast(data, ct.POINTER(self.record)).contents


def encode_flow_key(cgroup_id: int, address: IPAddress, protocol: int, direction: int) -> bytes:
    """A raw kernel flow key, as bpf/network.c builds it."""
    key = np.zeros(1, dtype=FLOW_KEY)
    key["cgroup_id"] = cgroup_id
    packed = address.packed
    key["addr"][0, : len(packed)] = list(packed)
    key["family"] = 0 if address.version == 4 else 1
    key["protocol"] = protocol
    key["direction"] = direction
    return key.tobytes()


class InMemoryMaps:
    """Hashes keyed by raw key bytes (values: lists of counters, already summed
    over CPUs), arrays by index, stacks as lists. `late` adds counts that
    arrive between a collect's read and its atomic take, like a packet of a
    socket that outlived its cgroup."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, list[int]]] = defaultdict(dict)
        self.arrays: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.stacks: dict[str, list[int]] = defaultdict(list)
        self.late: dict[tuple[str, bytes], list[int]] = {}

    # --- what a test does to the "kernel" ------------------------------------

    def set(self, name: str, values: list[int], **fields: int) -> bytes:
        raw = encode(KEYS[name], **fields)
        self.hashes[name][raw] = list(values)
        return raw

    def count_syscall(self, cgroup_id: int, nr: int, n: int) -> None:
        """What bpf/syscalls.c does: a slot per pair from the free stack."""
        raw = encode(SYSCALL_PAIR, cgroup_id=cgroup_id, nr=nr)
        slots = self.hashes["syscall_slots"]
        if raw not in slots:
            slots[raw] = [self.stacks["syscall_free_slots"].pop()]
        self.arrays["syscall_counts"][slots[raw][0]] += n

    # --- the BpfMaps methods -------------------------------------------------

    def read_hash(self, name: str, capacity: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        items = list(self.hashes[name].items())[:capacity]
        keys = np.frombuffer(b"".join(k for k, _ in items), dtype=KEYS[name], count=len(items))
        values = np.array([v for _, v in items], dtype=np.uint64).reshape(len(items), width)
        return keys, values

    def percpu_array_sums(self, name: str, count: int) -> np.ndarray:
        return np.array([self.arrays[name][i] for i in range(count)], dtype=np.uint64)

    def percpu_sum(self, name: str, index: int = 0) -> int:
        return self.arrays[name][index]

    def percpu_values(self, name: str, index: int) -> list[int]:
        return [self.arrays[name][index]]

    def zero(self, name: str, index: int) -> None:
        self.arrays[name][index] = 0

    def put(self, name: str, key: int, value: int) -> None:
        self.arrays[name][key] = value

    def push(self, name: str, value: int) -> None:
        self.stacks[name].append(value)

    def pop(self, name: str, raw_key: bytes) -> int | None:
        value = self.hashes[name].pop(raw_key, None)
        return None if value is None else value[0]

    def delete(self, name: str, raw_key: bytes) -> None:
        self.hashes[name].pop(raw_key, None)

    def take(self, name: str, raw_key: bytes, width: int) -> list[int] | None:
        value = self.hashes[name].pop(raw_key, None)
        if value is None:
            return None
        late = self.late.pop((name, raw_key), [0] * width)
        return [v + extra for v, extra in zip(value, late, strict=True)]

    def programs(self) -> list:
        return []

    def memory(self) -> dict[str, int]:
        """Bytes per map: here, 8 per stored value (a kernel charges its own way)."""
        tables = {**self.hashes, **self.arrays, **self.stacks}
        return {name: 8 * len(table) for name, table in tables.items()}
