"""Resolver: cgroup id -> Identity (namespace, pod, container, cgroup).

cgroup id -> path (cgroupfs.CgroupTree) -> pod UID + container id
(kubelet.parse_kubelet_cgroup) -> names (kubernetes.PodWatcher's snapshot).

- A cgroup that is not a pod's is labelled by its path: `cgroup="/system.slice/x"`.
- A pod's cgroup gets namespace/pod/container and an empty `cgroup`. The
  pod's infrastructure (sandbox/pause container, CRI-O conmon, the pod-level
  cgroup) is `container="POD"`, the cAdvisor convention.
- A pod cgroup whose pod (or container) is not known yet is "pending": it is
  labelled by its path for now and resolved again on every collect, so it
  moves to its pod's labels, with its complete count, as soon as the pod
  arrives. Final answers are cached per cgroup id.
- A cgroup removed before it was ever resolved folds into <unresolved>.

Several sources share one resolver, and each retires a removed cgroup on its
own schedule, so no source may make the resolver forget: it forgets an id by
itself once no source has asked about it for `forget_after` seconds. Its
tables are thus bounded by the cgroups counted in that time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from exporter.identity.cgroupfs import CgroupTree
from exporter.identity.kubelet import KubeletCgroup, parse_kubelet_cgroup
from exporter.identity.kubernetes import POD_INFRA_CONTAINER, PodInfo
from exporter.model import UNRESOLVED, Identity


@dataclass(frozen=True)
class Resolution:
    identity: Identity
    gone: bool  # the cgroup no longer exists, or its pod was deleted
    pending: bool = False  # pod-shaped, but its pod or container is not known yet


def _no_pods() -> Mapping[str, PodInfo]:
    return {}


class Resolver:
    def __init__(
        self,
        tree: CgroupTree,
        pods: Callable[[], Mapping[str, PodInfo]] = _no_pods,
        max_age: float = 5.0,
        forget_after: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tree = tree
        self.pods = pods  # returns the watcher's current snapshot
        self.max_age = max_age  # how late a removed cgroup may be noticed
        self.forget_after = forget_after
        self.clock = clock
        self._asked: dict[int, float] = {}  # cgroup id -> last time a source asked
        self._known: dict[int, Identity] = {}  # final answers
        self._decoded: dict[int, KubeletCgroup | None] = {}
        self._last_path: dict[int, str] = {}
        self.pending: set[int] = set()
        # Scrapes and the evidence thread resolve concurrently.
        self._lock = threading.RLock()
        self._owners: dict[tuple[str, str], str] = {}
        self._owners_of: Mapping[str, PodInfo] | None = None

    def refresh(self) -> None:
        """Called once per collect, before resolving."""
        with self._lock:
            self.tree.refresh(self.max_age)
            horizon = self.clock() - self.forget_after
            for cgroup_id in [c for c, asked in self._asked.items() if asked < horizon]:
                self._forget(cgroup_id)

    def resolve(self, cgroup_id: int, first_seen: float) -> Resolution:
        """Identity of a cgroup id that a probe had counted by `first_seen`."""
        with self._lock:
            self._asked[cgroup_id] = self.clock()
            return self._resolve(cgroup_id, first_seen)

    def _resolve(self, cgroup_id: int, first_seen: float) -> Resolution:
        path = self.tree.lookup(cgroup_id, first_seen)
        if path is None:
            self.pending.discard(cgroup_id)
            known = self._known.get(cgroup_id)
            if known is None and cgroup_id in self._last_path:
                known = Identity(cgroup=self._last_path[cgroup_id])
            return Resolution(known or UNRESOLVED, gone=True)
        self._last_path[cgroup_id] = path

        known = self._known.get(cgroup_id)
        if known is not None and not known.pod:
            return Resolution(known, gone=False)
        if cgroup_id not in self._decoded:
            self._decoded[cgroup_id] = parse_kubelet_cgroup(path)
        decoded = self._decoded[cgroup_id]
        if decoded is None:
            identity = Identity(cgroup=path)
            self._known[cgroup_id] = identity
            return Resolution(identity, gone=False)

        pod = self.pods().get(decoded.pod_uid)
        if pod is None:
            if known is not None:  # resolved before, pod since deleted and expired
                return Resolution(known, gone=True)
            self.pending.add(cgroup_id)
            return Resolution(Identity(cgroup=path), gone=False, pending=True)
        container = self._container_name(decoded, pod)
        if container is None:
            self.pending.add(cgroup_id)
            return Resolution(Identity(cgroup=path), gone=False, pending=True)
        self.pending.discard(cgroup_id)
        identity = Identity(pod.namespace, pod.name, container, "")
        self._known[cgroup_id] = identity
        return Resolution(identity, gone=pod.deleted_at is not None)

    @staticmethod
    def _container_name(decoded: KubeletCgroup, pod: PodInfo) -> str | None:
        if not decoded.container_id or decoded.conmon:
            return POD_INFRA_CONTAINER
        name = pod.containers.get(decoded.container_id)
        if name is not None:
            return name
        # Not one of the pod's containers: once every container has reported
        # its id, this is the sandbox; until then it may be a new container.
        return POD_INFRA_CONTAINER if pod.all_started else None

    def owners(self) -> dict[tuple[str, str], str]:
        """(namespace, pod name) -> owner name, for the pods known now."""
        pods = self.pods()
        if pods is not self._owners_of:
            self._owners = {(p.namespace, p.name): p.owner_name for p in pods.values()}
            self._owners_of = pods
        return self._owners

    def _forget(self, cgroup_id: int) -> None:
        for table in (self._known, self._decoded, self._last_path, self._asked):
            table.pop(cgroup_id, None)
        self.pending.discard(cgroup_id)

    @property
    def known(self) -> int:
        return len(self._known)
