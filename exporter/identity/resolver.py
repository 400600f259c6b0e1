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
itself once no source has asked about it for `forget_after` seconds. Cgroups
are something any tenant creates (a CronJob run, a delegated subtree churning
thousands a second), so the ids it remembers are also capped at `capacity`:
past it, the id asked about least recently is forgotten first (a removed
cgroup forgotten while a source still counts it then folds into
<unresolved>; one that still exists is simply looked up again).
orb8_table_entries{table="identity"} shows the fill.

Walking the cgroup tree costs tens of milliseconds on a busy node, so it is
never done per event and never under the lock collects take:
- resolve() (collects) walks at most once for all the new ids of a collect
  (CgroupTree: an id first seen before the last walk began and missing from
  it is gone), and waits for a walk already in flight rather than start one;
- peek() (the evidence reader, one call per record) never walks: an id the
  last walk cannot answer for is None, and walk_if_due() resolves all such
  ids with at most one walk per `walk_interval`.
Walks run outside the resolver's lock; only installing the result takes it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
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


DEFAULT_CAPACITY = 16384  # cgroup ids remembered (a node runs hundreds to a few thousand)
DEFAULT_FORGET_AFTER = 120.0  # >> the longest gap between two collects (10 s)
DEFAULT_WALK_INTERVAL = 1.0  # most walks a second for ids peek() could not answer


class Resolver:
    def __init__(
        self,
        tree: CgroupTree,
        pods: Callable[[], Mapping[str, PodInfo]] = _no_pods,
        max_age: float = 5.0,
        forget_after: float = DEFAULT_FORGET_AFTER,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = DEFAULT_CAPACITY,
        walk_interval: float = DEFAULT_WALK_INTERVAL,
    ) -> None:
        self.tree = tree
        self.pods = pods  # returns the watcher's current snapshot
        self.max_age = max_age  # how late a removed cgroup may be noticed
        self.forget_after = forget_after
        self.capacity = capacity
        self.walk_interval = walk_interval
        self.clock = clock
        # cgroup id -> last time a source asked, least recently asked first
        self._asked: OrderedDict[int, float] = OrderedDict()
        self._known: dict[int, Identity] = {}  # final answers
        self._decoded: dict[int, KubeletCgroup | None] = {}
        self._last_path: dict[int, str] = {}
        self.pending: set[int] = set()
        self.evicted = 0  # ids forgotten early because the table was full
        self._waiting = False  # peek() met an id only a walk can answer
        # Scrapes and the evidence thread resolve concurrently.
        self._lock = threading.RLock()
        # One walk at a time: a caller that needs one while another runs
        # waits for it and uses its result if it started late enough.
        self._walk_lock = threading.Lock()
        self._owners: dict[tuple[str, str], str] = {}
        self._owners_of: Mapping[str, PodInfo] | None = None

    def refresh(self) -> None:
        """Called once per collect, before resolving."""
        if self.tree.stale(self.max_age):
            self._walk(self.clock() - self.max_age)
        with self._lock:
            horizon = self.clock() - self.forget_after
            while self._asked:
                cgroup_id, asked = next(iter(self._asked.items()))
                if asked >= horizon:
                    break
                self._forget(cgroup_id)

    def resolve(self, cgroup_id: int, first_seen: float) -> Resolution:
        """Identity of a cgroup id that a probe had counted by `first_seen`.

        Walks the tree if the last walk began before `first_seen` and did not
        see the id (at most once for all ids first seen by then)."""
        with self._lock:
            if not self.tree.needs_walk(cgroup_id, first_seen):
                return self._remembered(cgroup_id, first_seen)
        self._walk(first_seen)
        with self._lock:
            return self._remembered(cgroup_id, first_seen)

    def peek(self, cgroup_id: int, seen_at: float) -> Resolution | None:
        """resolve() without walking: None if only a walk begun after `seen_at`
        can tell; walk_if_due() then does one for every such id."""
        with self._lock:
            if self.tree.needs_walk(cgroup_id, seen_at):
                self._waiting = True
                return None
            return self._remembered(cgroup_id, seen_at)

    def walk_if_due(self) -> bool:
        """Walk once if peek() met ids the last walk could not answer and the
        last walk is `walk_interval` old; True if the tree is now newer."""
        if not self._waiting or self.clock() - self.tree.scanned_at < self.walk_interval:
            return False
        self._waiting = False
        self._walk(self.clock())
        return True

    def _walk(self, after: float) -> None:
        """Make the table the result of a walk begun at or after `after`."""
        with self._walk_lock:
            if self.tree.scanned_at >= after:
                return  # a walk that began late enough finished meanwhile
            paths, started = self.tree.walk()  # the filesystem, without self._lock
            with self._lock:
                self.tree.install(paths, started)

    def _remembered(self, cgroup_id: int, first_seen: float) -> Resolution:
        resolution = self._resolve(cgroup_id, first_seen)
        if resolution.identity is not UNRESOLVED or cgroup_id in self._asked:
            self._touch(cgroup_id)
        # else: removed before any walk saw it. Nothing is remembered of it,
        # so a churn of such ids takes no room from the ids that matter.
        return resolution

    def _touch(self, cgroup_id: int) -> None:
        self._asked[cgroup_id] = self.clock()
        self._asked.move_to_end(cgroup_id)
        while len(self._asked) > self.capacity:
            self._forget(next(iter(self._asked)))
            self.evicted += 1

    def _resolve(self, cgroup_id: int, first_seen: float) -> Resolution:
        path = self.tree.paths.get(cgroup_id)  # the caller saw to a walk
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
        if identity == known:
            identity = known  # one object per identity: every table that keeps it shares it
        else:
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

    @property
    def entries(self) -> int:
        """cgroup ids remembered (orb8_table_entries{table="identity"})."""
        return len(self._asked)
