"""orb8_syscalls_total built from the batch read's arrays, and the baselines it feeds.

At 1,000 containers x 50 syscalls the former collect spent ~8 us per series
in Python (a dict per (identity, key), _by_name, MetricFamily.add, a
last-count dict for the baselines): ~230 ms of a scrape and ~25 MiB of
short-lived objects per collect. Here a series is an int64 code:

    key series  (identity index, key index)   kernel key = (ABI << 16) | nr
    name series (identity index, name index)  what /metrics shows

computed with numpy from the read; sums are exact uint64 (np.add.at), names
come from one lookup array over the key index, identities are resolved once
per cgroup (the lifecycle) and interned. The rows and their labels are kept
between collects (exporter/rows.py): Python work per collect is per cgroup,
plus per series whose count went up (baselines), plus per new series.

Baselines: a key series whose count went up is observed under its workload
as before; a (workload, name) whose observe() said "not novel" is learned
for good (Baselines only ever adds), so it is not asked again: a collect
asks only for calls that are still novel or not learned yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from exporter.identity.kubelet import parse_kubelet_cgroup
from exporter.model import UNRESOLVED, Identity
from exporter.rows import Interner, RowFamily, RowTable, group_sum
from exporter.sources.lifecycle import CarriedCounts
from exporter.sources.syscalls.baseline import Baselines

ABI_SHIFT = 16
NR_TABLE = 1024  # bpf/syscalls.c: every ABI's numbers are below this
ABI_COUNT = 3  # native, i386, x32 (names.ABIS)
KEY_UNKNOWN = 0xFFFFFFFF
UNKNOWN_INDEX = ABI_COUNT * NR_TABLE  # every key no table names
KEYS = UNKNOWN_INDEX + 1
# The interners are rebuilt when they hold this many more entries than in
# use (identities of deleted pods, workloads gone): bounded by what is
# counted, not by how many pods ever ran.
SLACK = 1024


def key_index(keys: np.ndarray) -> np.ndarray:
    """Kernel keys -> 0..KEYS-1 (int64); anything outside the tables -> UNKNOWN_INDEX."""
    keys = keys.astype(np.int64)
    abi, nr = keys >> ABI_SHIFT, keys & 0xFFFF
    known = (abi < ABI_COUNT) & (nr < NR_TABLE)
    return np.where(known, abi * NR_TABLE + nr, UNKNOWN_INDEX)


def _key_index(key: int) -> int:
    abi, nr = key >> ABI_SHIFT, key & 0xFFFF
    return abi * NR_TABLE + nr if abi < ABI_COUNT and nr < NR_TABLE else UNKNOWN_INDEX


def kernel_key(index: int) -> int:
    if index >= UNKNOWN_INDEX:
        return KEY_UNKNOWN
    return (index // NR_TABLE) << ABI_SHIFT | index % NR_TABLE


class SyscallCounts:
    """One source's orb8_syscalls_total rows, updated from each batch read."""

    NAME = "orb8_syscalls_total"
    HELP = "System calls entered, per cgroup and syscall, counted in the kernel."

    def __init__(
        self,
        tables: Mapping[int, Mapping[int, str]],
        labels: tuple[str, ...],
        baselines: Baselines,
        owners: Callable[[], Mapping[tuple[str, str], str]],
        novel: CarriedCounts,
    ) -> None:
        names = sorted({name for table in tables.values() for name in table.values()})
        self.names = [*names, "unknown"]
        index = {name: i for i, name in enumerate(self.names)}
        self.name_of_key = np.full(KEYS, index["unknown"], dtype=np.int64)
        for abi, table in tables.items():
            for nr, name in table.items():
                if abi < ABI_COUNT and nr < NR_TABLE:
                    self.name_of_key[abi * NR_TABLE + nr] = index[name]
        self.labels = labels
        self.baselines = baselines
        self.owners = owners
        self.novel = novel
        self.identities: Interner[Identity] = Interner()
        self.table = RowTable()
        self._workloads: Interner[str] = Interner()
        self._learned = np.zeros(0, dtype=np.int64)  # sorted workload x name codes
        # Key series as of the last collect; after a renumbering, the
        # identities of the former numbering (to translate the last codes).
        self._last_codes = np.zeros(0, dtype=np.int64)
        self._last_sums = np.zeros(0, dtype=np.uint64)
        self._renumbered: list[Identity] | None = None
        # The last read's grouping (key series, name series), reused while the
        # kernel keys, their identities and the carried keys are unchanged.
        self._plan: Any = None

    # --- collect ----------------------------------------------------------------

    def update(
        self,
        identities: Mapping[int, Identity],
        cgroup_ids: np.ndarray,
        keys: np.ndarray,
        counts: np.ndarray,
        carried: CarriedCounts,
        present: set[Identity],
    ) -> RowFamily:
        """The family for one read: kernel rows (cgroup id, key, count) plus carried counts."""
        self._prune(present)
        known = np.fromiter(identities, dtype=np.uint64, count=len(identities))
        known.sort()
        idents = np.array([self.identities(identities[c]) for c in known.tolist()], dtype=np.int64)
        extra = [
            (self.identities(key[0]) * KEYS + _key_index(key[1]), value)
            for key, (value,) in carried.items(present)
        ]
        extra_codes = np.array([c for c, _ in extra], dtype=np.int64)
        signature = (
            cgroup_ids.tobytes(),
            keys.tobytes(),
            known.tobytes(),
            idents.tobytes(),
            extra_codes.tobytes(),
        )
        plan = self._plan
        if plan is None or plan[0] != signature:
            rows = idents[np.searchsorted(known, cgroup_ids)] * KEYS + key_index(keys)
            key_codes, key_inverse = np.unique(
                np.concatenate([rows, extra_codes]), return_inverse=True
            )
            name_codes = (key_codes // KEYS) * len(self.names) + self.name_of_key[key_codes % KEYS]
            names, name_inverse = np.unique(name_codes, return_inverse=True)
            plan = self._plan = (signature, key_codes, key_inverse, names, name_inverse)
        _, key_codes, key_inverse, names, name_inverse = plan
        values = np.concatenate(
            [counts.astype(np.uint64, copy=False), np.array([v for _, v in extra], np.uint64)]
        )
        key_sums = np.zeros(len(key_codes), dtype=np.uint64)
        np.add.at(key_sums, key_inverse, values)
        # What of each key series was carried: not new calls when it (re)appears.
        key_carried = np.zeros(len(key_codes), dtype=np.uint64)
        np.add.at(key_carried, key_inverse[len(counts) :], values[len(counts) :])
        self._observe(key_codes, key_sums, key_carried)
        sums = np.zeros(len(names), dtype=np.uint64)
        np.add.at(sums, name_inverse, key_sums)
        layout = self.table.update(names, self._labels_of)
        return RowFamily(
            self.NAME, "counter", self.HELP, self.labels, layout, sums.astype(np.float64)
        )

    def _labels_of(self, codes: np.ndarray) -> list[tuple[str, ...]]:
        return identity_name_labels(self.identities, self.names, codes)

    # --- baselines --------------------------------------------------------------

    def _observe(self, codes: np.ndarray, sums: np.ndarray, carried: np.ndarray) -> None:
        """Baselines see what each key series counted since the last collect.
        A series not in the last collect starts from what was carried for it
        (its identity came back): only the calls after that are new."""
        if self._renumbered is not None:
            self._translate_last(self._renumbered)
            self._renumbered = None
        last_codes, last_sums = self._last_codes, self._last_sums
        if codes is last_codes:  # the same key series as last time (the plan was reused)
            previous = last_sums
        else:
            previous = carried.copy()
            if len(last_codes):
                pos = np.minimum(np.searchsorted(last_codes, codes), len(last_codes) - 1)
                found = last_codes[pos] == codes
                previous[found] = last_sums[pos[found]]
        self._last_codes, self._last_sums = codes, sums

        grew = np.flatnonzero(sums > previous)
        if not len(grew):
            return
        workload = self._workload_index(codes[grew] // KEYS)
        # Every workload that made calls is alive, also one whose calls are
        # all learned (not asked below): its baseline must not age out.
        for index in np.unique(workload[workload >= 0]).tolist():
            self.baselines.seen(self._workloads.values[index])
        name = self.name_of_key[codes[grew] % KEYS]
        learned_codes = workload * len(self.names) + name
        ask = (workload >= 0) & ~_contains(self._learned, learned_codes)
        learned: list[int] = []
        deltas = (sums[grew] - previous[grew]).tolist()
        for i in np.flatnonzero(ask).tolist():
            identity_index, index = divmod(int(codes[grew[i]]), KEYS)
            syscall = self.names[int(name[i])]
            if self.baselines.observe(self._workloads.values[int(workload[i])], syscall):
                identity = self.identities.values[identity_index]
                self.novel.add((identity, kernel_key(index)), deltas[i])
            else:
                learned.append(int(learned_codes[i]))
        if learned:
            self._learned = np.union1d(self._learned, learned)

    def _translate_last(self, former: list[Identity]) -> None:
        """Renumber the last collect's key series into the current numbering;
        series whose identity this read does not have are let go (a comeback
        starts from its carried counts)."""
        index = self.identities.index
        new = np.array(
            [index.get(former[i], -1) for i in (self._last_codes // KEYS).tolist()], dtype=np.int64
        )
        keep = new >= 0
        codes = new[keep] * KEYS + self._last_codes[keep] % KEYS
        order = np.argsort(codes)
        self._last_codes, self._last_sums = codes[order], self._last_sums[keep][order]

    def _workload_index(self, identity_indices: np.ndarray) -> np.ndarray:
        """Workload (interned) of each identity index; -1: not observed."""
        owners = self.owners()
        unique, inverse = np.unique(identity_indices, return_inverse=True)
        workloads = [
            -1 if name is None else self._workloads(name)
            for name in (_workload(self.identities.values[i], owners) for i in unique.tolist())
        ]
        return np.array(workloads, dtype=np.int64)[inverse]

    # --- bounds -----------------------------------------------------------------

    def _prune(self, present: set[Identity]) -> None:
        """Renumber when the interners hold many entries no longer in use."""
        if len(self.identities) > 2 * len(present) + SLACK:
            # The last codes are translated once this read has numbered its identities.
            self._renumbered = list(self.identities.values)
            self.identities.clear()
            self.table.reset()  # codes change meaning: no row or plan may survive
            self._plan = None
        if len(self._workloads) > 2 * len(present) + SLACK:
            self._workloads.clear()
            self._learned = np.zeros(0, dtype=np.int64)


def identity_name_labels(
    identities: Interner[Identity], names: list[str], codes: np.ndarray
) -> list[tuple[str, ...]]:
    """Label values of (identity index x len(names) + name index) codes."""
    named = len(names)
    return [(*identities.values[code // named], names[code % named]) for code in codes.tolist()]


def _contains(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """codes in sorted_codes (a binary search each: cheaper than np.isin's sort of both)."""
    if not len(sorted_codes):
        return np.zeros(len(codes), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
    return sorted_codes[pos] == codes


def _workload(identity: Identity, owners: Mapping[tuple[str, str], str]) -> str | None:
    """The baseline a cgroup's calls are learned under; None: not observed."""
    if identity == UNRESOLVED:
        return None
    if identity.pod:
        owner = owners.get((identity.namespace, identity.pod)) or identity.pod
        return f"{identity.namespace}/{owner}/{identity.container}"
    if parse_kubelet_cgroup(identity.cgroup) is not None:
        return None  # a pod's cgroup whose pod is not known yet
    return f"cgroup:{identity.cgroup}"


class NamedCounts:
    """(identity, syscall name) rows summed from a read's (cgroup id, key, count)
    arrays plus counts held in user space: orb8_dangerous_syscalls_total on
    the rows path (exporter/rows.py), named by SyscallCounts' lookup array.

    Its own identity numbering (the dangerous map holds other cgroups than
    the slot map), renumbered as SyscallCounts' is."""

    def __init__(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...],
        names: list[str],
        name_of_key: np.ndarray,
    ) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.names = names
        self.name_of_key = name_of_key
        self.identities: Interner[Identity] = Interner()
        self.table = RowTable()

    def update(
        self,
        identities: Mapping[int, Identity],
        cgroup_ids: np.ndarray,
        keys: np.ndarray,
        counts: np.ndarray,
        extra: Iterable[tuple[tuple[Identity, int], int]],
        present: set[Identity],
        shown: Callable[[Identity], bool],
    ) -> RowFamily:
        """extra: ((identity, kernel key), count) held in user space (carried
        counts, overflow); shown(identity) False leaves its rows out."""
        if len(self.identities) > 2 * len(present) + SLACK:
            self.identities.clear()
            self.table.reset()  # codes change meaning: no row may survive
        # The cgroups of this read only: `identities` holds every cgroup of
        # the source's maps (1,000s), the dangerous map a few of them.
        known = np.unique(cgroup_ids).astype(np.uint64)
        idents = np.array([self.identities(identities[c]) for c in known.tolist()], dtype=np.int64)
        extra = list(extra)
        extra_codes = np.array(
            [self.identities(identity) * KEYS + _key_index(key) for (identity, key), _ in extra],
            dtype=np.int64,
        )
        codes = np.concatenate(
            [idents[np.searchsorted(known, cgroup_ids)] * KEYS + key_index(keys), extra_codes]
        )
        values = np.concatenate(
            [counts.astype(np.uint64, copy=False), np.array([v for _, v in extra], np.uint64)]
        )
        named = len(self.names)
        unique, sums = group_sum((codes // KEYS) * named + self.name_of_key[codes % KEYS], values)
        owners = unique // named
        hidden = [i for i in np.unique(owners).tolist() if not shown(self.identities.values[i])]
        if hidden:
            keep = ~np.isin(owners, hidden)
            unique, sums = unique[keep], sums[keep]
        layout = self.table.update(unique, self._labels_of)
        return RowFamily(
            self.name, "counter", self.help, self.labels, layout, sums.astype(np.float64)
        )

    def _labels_of(self, codes: np.ndarray) -> list[tuple[str, ...]]:
        return identity_name_labels(self.identities, self.names, codes)
