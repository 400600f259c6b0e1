"""When a source may free a cgroup's kernel entries, and where their counts go;
shared by every source.

A source counts per cgroup id. Each collect it resolves the ids in its maps;
once an id is known to be gone (its cgroup removed, or its pod deleted) for
the grace period, the source retires it: exports it no more, hands its final
counts to CarriedCounts (the one carry rule), and deletes its kernel entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import numpy as np

from exporter.identity import Resolver
from exporter.model import UNRESOLVED, Identity

T = TypeVar("T")


class CgroupLifecycle:
    def __init__(
        self, resolver: Resolver, deleted_grace: float, deleted_pod_grace: float | None = None
    ) -> None:
        self.resolver = resolver
        self.deleted_grace = deleted_grace
        # Without a pod grace of its own, a deleted pod waits as a removed cgroup does.
        self.deleted_pod_grace = deleted_grace if deleted_pod_grace is None else deleted_pod_grace
        self._first_seen: dict[int, float] = {}
        self._gone_since: dict[int, float] = {}

    def resolve(
        self, cgroup_ids: Iterable[int], now: float
    ) -> tuple[dict[int, Identity], list[int]]:
        """(identity of every id, the ids whose grace is over).

        `cgroup_ids` are all the ids in the source's maps: ids no longer
        there (an LRU map evicted them) are forgotten here too, so these
        tables stay bounded by the maps' capacity whatever the churn."""
        identities: dict[int, Identity] = {}
        retire: list[int] = []
        cgroup_ids = set(cgroup_ids)
        for table in (self._first_seen, self._gone_since):
            for cgroup_id in [c for c in table if c not in cgroup_ids]:
                del table[cgroup_id]
        for cgroup_id in cgroup_ids:
            first_seen = self._first_seen.setdefault(cgroup_id, now)
            resolution = self.resolver.resolve(cgroup_id, first_seen)
            identities[cgroup_id] = resolution.identity
            if resolution.gone:
                gone_since = self._gone_since.setdefault(cgroup_id, now)
                grace = self.deleted_pod_grace if resolution.identity.pod else self.deleted_grace
                if now - gone_since >= grace:
                    retire.append(cgroup_id)
        return identities, retire

    def retired(self, cgroup_ids: Iterable[int]) -> None:
        """The source freed these ids' kernel entries; forget them here too."""
        for cgroup_id in cgroup_ids:
            self._first_seen.pop(cgroup_id, None)
            self._gone_since.pop(cgroup_id, None)


# How long the carried counts of an identity no cgroup has any more are kept,
# so that its series continues if the identity comes back: a container in
# CrashLoopBackOff (the kubelet waits up to 5 minutes between restarts, and
# its cgroup is gone meanwhile), a StatefulSet pod recreated under the same
# name, a systemd service restarted with the same path, late traffic of a
# socket that outlived its cgroup. A comeback after that restarts from 0:
# a counter reset, which rate() and increase() handle, as for any restarted
# exporter. Not longer: under pod churn every deleted pod's series wait here
# (at 2 pods a second, an hour of them filled each table's cap below and
# looked like a leak: issue 20).
CARRY_KEEP = 600.0
# Carried series of identities absent from the maps, kept for a comeback:
# each identity is a cgroup path or pod a tenant can mint by the thousand
# (churn), so past this many series the longest-absent identities go first.
CARRY_ABSENT_CAPACITY = 65536
# A carried series' code: identity index << _REST_BITS | index of the rest of its key.
_REST_BITS = 32
_REST_MASK = (1 << _REST_BITS) - 1


class CarriedCounts:
    """The one carry rule, shared by every source: counters never go backwards.

    Keys are series keys whose first element is the Identity; values are
    lists of counters (e.g. [bytes, packets]). When a source frees a
    cgroup's kernel entries it adds their final counts here, always, whatever
    the order of removal, retirement, reuse and late traffic. A series is
    exported as kernel counts + carried counts:

    - under <unresolved>: for the life of the process (its keys are bounded
      by what a source can key on: syscall tables, protocols, peers);
    - under any other identity: while some cgroup in the source's maps has
      that identity; after it disappears, its carried counts are kept for
      `keep` seconds, unexported, and a comeback continues from them; at
      most `absent_capacity` series of absent identities are kept so
      (longest absent dropped first: its comeback starts from zero).

    Stored dense, because under pod churn it holds tens of thousands of
    series of pods that are gone (issue 20: as a dict of tuples and lists
    it was ~300 bytes a series and RssAnon grew ~1 MiB a minute): a series
    is one int64 code (identity index << 32 | rest-of-key index) in a sorted
    array and one row of uint64 counters, 16-24 bytes. Adds are buffered and
    merged at the next read.
    """

    def __init__(
        self, keep: float = CARRY_KEEP, absent_capacity: int = CARRY_ABSENT_CAPACITY
    ) -> None:
        self.keep = keep
        self.absent_capacity = absent_capacity
        self._identities: Slots[Identity] = Slots()
        self._rests: Slots[tuple] = Slots()
        self._codes = np.zeros(0, dtype=np.int64)  # sorted, unique
        self._values = np.zeros((0, 0), dtype=np.uint64)
        self._pending: list[tuple[int, tuple[int, ...]]] = []
        # Per identity index: when it was first seen absent (NaN: present or unseen).
        self._absent_since = np.zeros(0, dtype=np.float64)

    def add(self, key: tuple, *values: int) -> None:
        code = self._identities(key[0]) << _REST_BITS | self._rests(key[1:])
        # Counters never go backwards: nothing negative is carried (and
        # uint64 could not hold it: one bad value would fail the collect).
        self._pending.append((code, tuple(max(0, int(value)) for value in values)))

    def items(self, present: Iterable[Identity]) -> list[tuple[tuple, list[int]]]:
        """The carried series to export: <unresolved> and identities present now."""
        self._merge()
        index = self._identities.index
        wanted = [index[i] for i in {*present, UNRESOLVED} if i in index]
        if not wanted or not len(self._codes):
            return []
        # Codes sort by identity first: each identity's series are one run.
        wanted_codes = np.array(sorted(wanted), dtype=np.int64) << _REST_BITS
        starts = np.searchsorted(self._codes, wanted_codes)
        ends = np.searchsorted(self._codes, wanted_codes + (1 << _REST_BITS))
        rows = np.concatenate(
            [np.arange(a, b) for a, b in zip(starts, ends, strict=True) if b > a]
            or [np.zeros(0, dtype=np.int64)]
        )
        return [
            (self._key(code), counts)
            for code, counts in zip(
                self._codes[rows].tolist(), self._values[rows].tolist(), strict=True
            )
        ]

    def discard(self, predicate: Callable[[tuple], bool]) -> None:
        """Forget carried series on purpose (e.g. a flow peer pod that is gone)."""
        self._merge()
        keep = np.array(
            [not predicate(self._key(code)) for code in self._codes.tolist()], dtype=np.bool_
        )
        if len(keep) and not keep.all():
            self._keep_rows(keep)

    def expire(self, present: Iterable[Identity], now: float) -> set[Identity]:
        """Drop identities absent for `keep` seconds; returns those dropped."""
        self._merge()
        index = self._identities.index
        since = self._absent_since
        owner = self._codes >> _REST_BITS
        absent = np.zeros(len(self._identities), dtype=bool)
        absent[owner] = True
        for identity in (*present, UNRESOLVED):
            found = index.get(identity)
            if found is not None:
                absent[found] = False
        since[~absent] = np.nan  # present (or without series): not absent
        since[absent & np.isnan(since)] = now
        drop = absent & (now - since >= self.keep)
        series = np.bincount(owner[absent[owner]], minlength=len(absent))
        excess = int(series.sum()) - self.absent_capacity
        if excess > 0:
            # Longest absent first (stable: among equals, the oldest index).
            for i in np.argsort(np.where(absent, since, np.inf), kind="stable").tolist():
                if excess <= 0:
                    break
                if absent[i] and not drop[i]:
                    drop[i] = True
                    excess -= int(series[i])
        if not drop.any():
            return set()
        values = self._identities.values
        dropped = {v for i in np.flatnonzero(drop).tolist() if (v := values[i]) is not None}
        self._keep_rows(~drop[owner])
        return dropped

    def __len__(self) -> int:
        self._merge()
        return len(self._codes)

    def _key(self, code: int) -> tuple:
        """The series key of a code in use (its numbers are never let go while it is)."""
        identity, rest = (
            self._identities.values[code >> _REST_BITS],
            self._rests.values[code & _REST_MASK],
        )
        assert identity is not None and rest is not None
        return (identity, *rest)

    def _merge(self) -> None:
        """Fold the buffered adds into the sorted arrays."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        width = len(pending[0][1])
        codes = np.concatenate([self._codes, np.array([c for c, _ in pending], dtype=np.int64)])
        values = np.concatenate(
            [
                self._values.reshape(-1, width),
                np.array([v for _, v in pending], dtype=np.uint64).reshape(-1, width),
            ]
        )
        self._codes, inverse = np.unique(codes, return_inverse=True)
        self._values = np.zeros((len(self._codes), width), dtype=np.uint64)
        np.add.at(self._values, inverse, values)
        grown = len(self._identities) - len(self._absent_since)
        if grown > 0:
            self._absent_since = np.concatenate([self._absent_since, np.full(grown, np.nan)])

    def _keep_rows(self, keep: np.ndarray) -> None:
        """Keep only these rows; identities and keys no row uses any more are
        let go (their numbers are reused), so the tables are bounded by the
        rows, not by how many pods ever ran."""
        self._codes, self._values = self._codes[keep], self._values[keep]
        identities = np.bincount(self._codes >> _REST_BITS, minlength=len(self._identities))
        unused = np.flatnonzero(identities == 0)
        self._absent_since[unused] = np.nan
        self._identities.release(unused.tolist())
        rests = np.bincount(self._codes & _REST_MASK, minlength=len(self._rests))
        self._rests.release(np.flatnonzero(rests == 0).tolist())


class Slots(Generic[T]):
    """Small ints for hashable values, as rows.Interner, but a value can be
    let go and its number reused: a table of what is kept now, not of
    everything ever seen."""

    def __init__(self) -> None:
        self.index: dict[T, int] = {}
        self.values: list[T | None] = []
        self._free: list[int] = []

    def __call__(self, value: T) -> int:
        found = self.index.get(value)
        if found is None:
            if self._free:
                found = self._free.pop()
                self.values[found] = value
            else:
                found = len(self.values)
                self.values.append(value)
            self.index[value] = found
        return found

    def release(self, numbers: Iterable[int]) -> None:
        """Let these go (numbers not in use are ignored)."""
        for number in numbers:
            value = self.values[number]
            if value is not None:
                del self.index[value]
                self.values[number] = None
                self._free.append(number)

    def __len__(self) -> int:
        return len(self.values)
