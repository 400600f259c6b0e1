"""Resolver: cgroup id -> Identity, remembering answers for ids still counted.

Plain-host mode: a cgroup's identity is its path under the v2 mount. A
cgroup that vanished before it was ever resolved folds into
cgroup="<unresolved>". Kubernetes identity plugs in here later by mapping
paths to pods.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.identity.cgroupfs import CgroupTree
from exporter.model import UNRESOLVED, Identity


@dataclass(frozen=True)
class Resolution:
    # None while the id is neither found nor known to be gone (created after
    # the last walk): callers hold its counts back rather than export them
    # under a label they would later have to move away from.
    identity: Identity | None
    gone: bool  # the cgroup no longer exists (known for sure, not just a miss)


class Resolver:
    def __init__(self, tree: CgroupTree) -> None:
        self.tree = tree
        self._known: dict[int, Identity] = {}

    def resolve(self, cgroup_id: int, first_seen: float) -> Resolution:
        """Identity of a cgroup id that a probe first counted at `first_seen`.

        If a walk that started after first_seen does not find the id, the
        cgroup has been removed: it keeps the identity it had, or folds into
        <unresolved> if it never had one.
        """
        path = self.tree.lookup(cgroup_id)
        if path is not None:
            identity = Identity(cgroup=path)
            self._known[cgroup_id] = identity
            return Resolution(identity, gone=False)
        if self.tree.scanned_at < first_seen:
            return Resolution(self._known.get(cgroup_id), gone=False)
        return Resolution(self._known.get(cgroup_id, UNRESOLVED), gone=True)

    def forget(self, cgroup_id: int) -> None:
        self._known.pop(cgroup_id, None)

    @property
    def known(self) -> int:
        return len(self._known)
