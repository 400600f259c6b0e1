"""When a source may free a cgroup's kernel entries, and where their counts go;
shared by every source.

A source counts per cgroup id. Each collect it resolves the ids in its maps;
once an id is known to be gone (its cgroup removed, or its pod deleted) for
the grace period, the source retires it: exports it no more, hands its final
counts to CarriedCounts (the one carry rule), and deletes its kernel entries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from exporter.identity import Resolver
from exporter.model import UNRESOLVED, Identity


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
# so that its series continues if the identity comes back (a systemd service
# restarted with the same path, late traffic of a socket that outlived its
# cgroup). Longer than Prometheus' 5-minute staleness: a series absent for
# longer is a new series to every query that does not span the gap.
CARRY_KEEP = 3600.0
# Carried series of identities absent from the maps, kept for a comeback:
# each identity is a cgroup path or pod a tenant can mint by the thousand
# (churn), so past this many series the longest-absent identities go first.
CARRY_ABSENT_CAPACITY = 65536


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
    """

    def __init__(
        self, keep: float = CARRY_KEEP, absent_capacity: int = CARRY_ABSENT_CAPACITY
    ) -> None:
        self.keep = keep
        self.absent_capacity = absent_capacity
        self._counts: dict[tuple, list[int]] = {}
        self._absent_since: dict[Identity, float] = {}

    def add(self, key: tuple, *values: int) -> None:
        counts = self._counts.get(key)
        if counts is None:
            self._counts[key] = list(values)
        else:
            for i, value in enumerate(values):
                counts[i] += value

    def items(self, present: Iterable[Identity]) -> list[tuple[tuple, list[int]]]:
        """The carried series to export: <unresolved> and identities present now."""
        present = set(present)
        return [
            (key, counts)
            for key, counts in self._counts.items()
            if key[0] == UNRESOLVED or key[0] in present
        ]

    def discard(self, predicate: Callable[[tuple], bool]) -> None:
        """Forget carried series on purpose (e.g. a flow peer pod that is gone)."""
        for key in [key for key in self._counts if predicate(key)]:
            del self._counts[key]

    def expire(self, present: Iterable[Identity], now: float) -> set[Identity]:
        """Drop identities absent for `keep` seconds; returns those dropped."""
        present = set(present)
        for identity in present:
            self._absent_since.pop(identity, None)
        absent = {key[0] for key in self._counts} - present - {UNRESOLVED}
        dropped = set()
        for identity in absent:
            since = self._absent_since.setdefault(identity, now)
            if now - since >= self.keep:
                dropped.add(identity)
        series = Counter(key[0] for key in self._counts if key[0] in absent)
        excess = sum(series.values()) - self.absent_capacity
        if excess > 0:
            for identity in sorted(absent, key=lambda identity: self._absent_since[identity]):
                if excess <= 0:
                    break
                if identity not in dropped:
                    dropped.add(identity)
                    excess -= series[identity]
        for identity in dropped:
            self._absent_since.pop(identity, None)
        if dropped:
            self.discard(lambda key: key[0] in dropped)
        for identity in [i for i in self._absent_since if i not in absent]:
            del self._absent_since[identity]
        return dropped

    def __len__(self) -> int:
        return len(self._counts)
