"""Syscalls per cgroup, counted exactly in the kernel.

Hooks: raw tracepoint sys_enter (classic raw_syscalls:sys_enter as fallback)
counts; sched_switch and cgroup_attach_task keep the per-CPU cgroup id cache
honest (see bpf/syscalls.c). Program bpf/syscalls.c.

Metrics: orb8_syscalls_total{namespace,pod,container,cgroup,syscall};
orb8_bpf_map_entries / orb8_bpf_map_capacity /
orb8_bpf_map_update_failures_total for map="syscall_slots".

Overhead: no helper call and three inlined array lookups per syscall on the
hot path, plus one array store per context switch (see bpf/syscalls.c and
benchmarks/RESULTS.md). A collect
reads the slot hash and the used prefix of the per-CPU counts array with
batch operations: a handful of syscalls, whatever the number of series.

Caveats: syscall names are those of the node's native ABI; a 32-bit (compat)
process's syscalls are counted under native numbers. Counts of a removed
cgroup are exported for `deleted_cgroup_grace` seconds, then its kernel
entries are freed and its slots reused; counts folded into
cgroup="<unresolved>" are carried in user space so that series stays
monotonic.
"""

from __future__ import annotations

import ctypes as ct
import logging
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from exporter import probes
from exporter.identity import Resolver
from exporter.model import IDENTITY_LABELS, UNRESOLVED, Identity, MetricFamily, counter, gauge
from exporter.syscall_names import SYSCALLS

log = logging.getLogger(__name__)

PAIR_DTYPE = np.dtype([("cgroup_id", "<u8"), ("nr", "<u4"), ("pad", "<u4")])
SLOT_MAP = "syscall_slots"


def syscall_namer(machine: str | None = None) -> Callable[[int], str]:
    """Name lookup for this architecture; unknown numbers become unknown_<nr>."""
    machine = machine or platform.machine()
    table = SYSCALLS.get({"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine))
    if table is None:
        raise probes.ProbeError(f"no syscall table for architecture {machine}")

    def name(nr: int) -> str:
        return table.get(nr) or f"unknown_{nr}"

    return name


class SyscallSource:
    name = "syscalls"

    def __init__(
        self,
        resolver: Resolver,
        slots: int,
        deleted_grace: float,
        headers: probes.KernelHeaders | None = None,
        clock: Callable[[], float] = time.monotonic,
        hook: str = "auto",
        bpf_dir: Path | None = None,
        deleted_pod_grace: float | None = None,
    ) -> None:
        """hook: "auto" feature-probes the kernel; "raw_tracepoint" or
        "tracepoint" forces a variant (tests exercise the fallback this way)."""
        self.resolver = resolver
        self.requested_hook = hook
        self.bpf_dir = bpf_dir
        self.capacity = slots
        self.deleted_grace = deleted_grace
        self.deleted_pod_grace = deleted_grace if deleted_pod_grace is None else deleted_pod_grace
        self.headers = headers
        self.clock = clock
        self.syscall_name = syscall_namer()
        self.hook = ""
        self._bpf: Any = None
        self._first_seen: dict[int, float] = {}
        self._gone_since: dict[int, float] = {}
        # Final counts of retired cgroups whose series must stay monotonic:
        # {(identity, nr): count}.
        self._carried: dict[tuple[Identity, int], int] = defaultdict(int)

    def describe(self) -> str:
        return f"hook={self.hook or 'none'} slots={self.capacity}"

    def start(self) -> None:
        self.hook = (
            probes.choose_sys_enter_hook() if self.requested_hook == "auto" else self.requested_hook
        )
        bpf = probes.compile_probe(
            "syscalls", {"SLOT_CAPACITY": self.capacity}, self.headers, self.bpf_dir
        )
        try:
            # Fill the free-slot stack before attaching so the first event
            # finds slots; pushed in reverse so slot 0 is handed out first and
            # used slots stay a compact prefix.
            free = bpf[b"syscall_free_slots"]
            for slot in range(self.capacity - 1, -1, -1):
                free.push(ct.c_uint32(slot))
            # Epoch 0 means "invalid" to the per-CPU cgroup id cache.
            bpf[b"syscall_epoch"][ct.c_int(0)] = ct.c_uint64(1)
            # Cache invalidation hooks first, then the counter itself.
            if self.hook == "raw_tracepoint":
                bpf.attach_raw_tracepoint(tp=b"sched_switch", fn_name=b"syscalls_switch_raw")
                bpf.attach_raw_tracepoint(tp=b"cgroup_attach_task", fn_name=b"syscalls_attach_raw")
                bpf.attach_raw_tracepoint(tp=b"sys_enter", fn_name=b"syscalls_enter_raw")
            else:
                bpf.attach_tracepoint(tp=b"sched:sched_switch", fn_name=b"syscalls_switch_tp")
                bpf.attach_tracepoint(
                    tp=b"cgroup:cgroup_attach_task", fn_name=b"syscalls_attach_tp"
                )
                bpf.attach_tracepoint(tp=b"raw_syscalls:sys_enter", fn_name=b"syscalls_enter_tp")
        except Exception as e:
            bpf.cleanup()
            raise probes.ProbeError(f"attaching syscalls probe ({self.hook}) failed: {e}") from e
        self._bpf = bpf
        log.info("syscalls probe attached: %s", self.describe())

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def _read_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cgroup ids, syscall numbers, counts) of every pair in the kernel map."""
        slots_table = self._bpf[SLOT_MAP.encode()]
        keys, values, n = probes.lookup_batch(slots_table, self.capacity)
        pairs = np.frombuffer(keys, dtype=PAIR_DTYPE, count=n)
        slots = np.frombuffer(values, dtype="<u4", count=n)
        used = int(slots.max()) + 1 if n else 0
        totals = probes.percpu_u64_sums(self._bpf[b"syscall_counts"], used)
        return pairs["cgroup_id"], pairs["nr"], totals[slots] if n else slots.astype(np.uint64)

    def _failures(self) -> int:
        return int(sum(self._bpf[b"syscall_update_failures"][0]))

    def collect(self) -> list[MetricFamily]:
        if self._bpf is None:
            raise probes.ProbeError("syscalls probe is not loaded")
        now = self.clock()
        cgroup_ids, nrs, counts = self._read_pairs()
        self.resolver.refresh()

        series: dict[tuple[Identity, int], int] = defaultdict(int)
        for key, value in self._carried.items():
            series[key] += value
        identities: dict[int, Identity] = {}
        retire: list[int] = []
        for cgroup_id in map(int, np.unique(cgroup_ids)):
            first_seen = self._first_seen.setdefault(cgroup_id, now)
            resolution = self.resolver.resolve(cgroup_id, first_seen)
            identities[cgroup_id] = resolution.identity
            if resolution.gone:
                gone_since = self._gone_since.setdefault(cgroup_id, now)
                pod = bool(resolution.identity.pod)
                if now - gone_since >= (self.deleted_pod_grace if pod else self.deleted_grace):
                    retire.append(cgroup_id)
        for cgroup_id, nr, count in zip(
            cgroup_ids.tolist(), nrs.tolist(), counts.tolist(), strict=True
        ):
            series[(identities[cgroup_id], nr)] += count

        families = self._families(series, len(cgroup_ids))
        if retire:
            self._retire(retire, identities, cgroup_ids, nrs, counts)
        return families

    def _families(
        self, series: dict[tuple[Identity, int], int], entries: int
    ) -> list[MetricFamily]:
        syscalls = counter(
            "orb8_syscalls_total",
            "System calls entered, per cgroup and syscall, counted in the kernel.",
            (*IDENTITY_LABELS, "syscall"),
        )
        for (identity, nr), value in series.items():
            syscalls.add((*identity, self.syscall_name(nr)), value)
        entries_family = gauge(
            "orb8_bpf_map_entries", "Entries currently in an orb8 kernel map.", ("map",)
        )
        entries_family.add((SLOT_MAP,), entries)
        capacity = gauge(
            "orb8_bpf_map_capacity", "Maximum entries of an orb8 kernel map.", ("map",)
        )
        capacity.add((SLOT_MAP,), self.capacity)
        failures = counter(
            "orb8_bpf_map_update_failures_total",
            "Kernel map updates that failed (map full); the events were not counted.",
            ("map",),
        )
        failures.add((SLOT_MAP,), self._failures())
        return [syscalls, entries_family, capacity, failures]

    def _retire(
        self,
        retire: list[int],
        identities: dict[int, Identity],
        cgroup_ids: np.ndarray,
        nrs: np.ndarray,
        counts: np.ndarray,
    ) -> None:
        """Free the kernel entries of removed cgroups once their grace is over.

        Their final counts are carried where the series continues: under
        <unresolved>, or under an identity another live cgroup still has
        (a restarted service keeps its path but gets a new cgroup id).
        """
        retiring = set(retire)
        live_identities = {identity for cid, identity in identities.items() if cid not in retiring}
        slots_table = self._bpf[SLOT_MAP.encode()]
        counts_table = self._bpf[b"syscall_counts"]
        free = self._bpf[b"syscall_free_slots"]
        zero = counts_table.Leaf()
        for cgroup_id, nr, count in zip(
            cgroup_ids.tolist(), nrs.tolist(), counts.tolist(), strict=True
        ):
            if cgroup_id not in retiring:
                continue
            identity = identities[cgroup_id]
            if identity == UNRESOLVED or identity in live_identities:
                self._carried[(identity, nr)] += count
            key = slots_table.Key(cgroup_id, nr, 0)
            slot = slots_table.get(key)
            if slot is None:
                continue
            del slots_table[key]
            counts_table[ct.c_uint32(slot.value)] = zero
            free.push(ct.c_uint32(slot.value))
        for cgroup_id in retire:
            self._first_seen.pop(cgroup_id, None)
            self._gone_since.pop(cgroup_id, None)
            self.resolver.forget(cgroup_id)
        for key in [k for k in self._carried if k[0] != UNRESOLVED and k[0] not in live_identities]:
            del self._carried[key]
        log.info("retired %d removed cgroup(s) from the syscall map", len(retire))
