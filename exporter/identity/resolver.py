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
    identity: Identity
    gone: bool  # the cgroup no longer exists


class Resolver:
    def __init__(self, tree: CgroupTree, max_age: float = 5.0) -> None:
        self.tree = tree
        self.max_age = max_age  # how late a removed cgroup may be noticed
        self._known: dict[int, Identity] = {}

    def refresh(self) -> None:
        """Called once per collect, before resolving."""
        self.tree.refresh(self.max_age)

    def resolve(self, cgroup_id: int, first_seen: float) -> Resolution:
        """Identity of a cgroup id that a probe had counted by `first_seen`.

        A removed cgroup keeps the identity it had, or folds into
        <unresolved> if it was removed before it was ever resolved.
        """
        path = self.tree.lookup(cgroup_id, first_seen)
        if path is not None:
            identity = Identity(cgroup=path)
            self._known[cgroup_id] = identity
            return Resolution(identity, gone=False)
        return Resolution(self._known.get(cgroup_id, UNRESOLVED), gone=True)

    def forget(self, cgroup_id: int) -> None:
        self._known.pop(cgroup_id, None)

    @property
    def known(self) -> int:
        return len(self._known)
