"""When a source may free a cgroup's kernel entries, shared by every source.

A source counts per cgroup id. Each collect it resolves the ids in its maps;
once an id is known to be gone (its cgroup removed, or its pod deleted) for
the grace period, the source retires it: exports it no more, carries what
must stay monotonic, and deletes its kernel entries.
"""

from __future__ import annotations

from collections.abc import Iterable

from exporter.identity import Resolver
from exporter.model import Identity


class CgroupLifecycle:
    def __init__(self, resolver: Resolver, deleted_grace: float, deleted_pod_grace: float) -> None:
        self.resolver = resolver
        self.deleted_grace = deleted_grace
        self.deleted_pod_grace = deleted_pod_grace
        self._first_seen: dict[int, float] = {}
        self._gone_since: dict[int, float] = {}

    def resolve(
        self, cgroup_ids: Iterable[int], now: float
    ) -> tuple[dict[int, Identity], list[int]]:
        """(identity of every id, the ids whose grace is over)."""
        identities: dict[int, Identity] = {}
        retire: list[int] = []
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
