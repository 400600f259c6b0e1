"""Pod watcher: the pods of this node, from a reliable list/watch of the API server.

Lists then watches only this node's pods (field selector spec.nodeName),
with the official `kubernetes` client for configuration, auth and HTTP. The
watch stream is read raw (`_preload_content=False`) and each event parsed
into the few fields orb8 needs: that is both faster than building V1Pod
models (a 1,000-pod resync is one JSON parse) and lets a malformed event be
logged and skipped instead of breaking the stream.

Reliability rules:
  - every (re)connect starts with a full list and rebuilds the whole map,
    so nothing missed while disconnected survives as stale state;
  - the watch resumes from the last resourceVersion seen (events and
    BOOKMARKs), and a 410 Gone, as an HTTP status or an ERROR event, leads
    to a relist;
  - failures reconnect forever with exponential backoff, 1 s doubling to
    30 s, reset after a successful list;
  - a read timeout longer than the bookmark interval turns a stalled
    connection into a reconnect.

The map is published as an immutable snapshot (a dict replaced, never
mutated), so scrapes read it without locks. Deleted pods stay in it, marked
with their deletion time, for the deleted-pod grace period.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

log = logging.getLogger(__name__)

# Containers whose cgroup is the pod's infrastructure (sandbox/pause, CRI-O
# conmon, the pod-level cgroup) are labelled like cAdvisor does.
POD_INFRA_CONTAINER = "POD"


class WatchExpired(Exception):
    """410 Gone: the resourceVersion is too old; relist."""


@dataclass(frozen=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    node: str
    containers: Mapping[str, str]  # container id (no runtime:// prefix) -> container name
    all_started: bool  # every container in the spec has reported a container id
    ips: tuple[str, ...] = ()
    owner_kind: str = ""
    owner_name: str = ""
    deleted_at: float | None = None  # monotonic time of the DELETED event


def _strip_runtime(container_id: str) -> str:
    return container_id.split("://", 1)[-1]


def parse_pod(obj: Any) -> PodInfo:
    """The fields orb8 needs from a v1 Pod object; ValueError if it is malformed."""
    if not isinstance(obj, dict):
        raise ValueError("pod is not an object")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("uid") or not meta.get("name"):
        raise ValueError("pod without metadata.uid/name")
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    containers: dict[str, str] = {}
    reported: set[str] = set()
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or ():
            name = cs.get("name", "")
            if cs.get("containerID"):
                containers[_strip_runtime(cs["containerID"])] = name
                reported.add(name)
            # The previous instance of a restarted container keeps its name.
            previous = ((cs.get("lastState") or {}).get("terminated") or {}).get("containerID")
            if previous:
                containers[_strip_runtime(previous)] = name
    expected = {
        c.get("name", "")
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or ()
    }
    ips = tuple(ip["ip"] for ip in status.get("podIPs") or () if ip.get("ip"))
    if not ips and status.get("podIP"):
        ips = (status["podIP"],)
    owners = meta.get("ownerReferences") or []
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else {})
    return PodInfo(
        uid=meta["uid"],
        namespace=meta.get("namespace", ""),
        name=meta["name"],
        node=spec.get("nodeName", ""),
        containers=containers,
        all_started=expected <= reported,
        ips=ips,
        owner_kind=owner.get("kind", ""),
        owner_name=owner.get("name", ""),
    )


def _status_code(obj: Any) -> int:
    return int(obj.get("code", 0)) if isinstance(obj, dict) else 0


@dataclass
class WatchHealth:
    connected: bool = False
    reconnections: int = 0
    last_sync: float = 0.0  # Unix time of the last full list
    malformed_events: int = 0
    last_error: str = ""


@dataclass
class PodWatcher:
    """Keeps `pods` (uid -> PodInfo) current for one node. Runs in a thread."""

    api_factory: Callable[[], Any]  # returns a kubernetes.client.CoreV1Api
    node_name: str
    deleted_grace: float = 60.0
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    watch_timeout: int = 300  # server-side timeoutSeconds of one watch request
    read_timeout: float = 90.0  # no byte (event or bookmark) for this long = stalled
    page_size: int = 500
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    pods: Mapping[str, PodInfo] = field(default_factory=dict)
    health: WatchHealth = field(default_factory=WatchHealth)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._api: Any = None
        self._response: Any = None
        self.synced = threading.Event()  # set after the first successful list

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            _abort(response)
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- main loop ---------------------------------------------------------

    def _run(self) -> None:
        backoff = self.backoff_initial
        first = True
        while not self._stop.is_set():
            try:
                if self._api is None:
                    self._api = self.api_factory()
                resource_version = self._list()
                backoff = self.backoff_initial
                if not first:
                    log.info("pod watch resynced: %d pods on %s", len(self.pods), self.node_name)
                first = False
                self._watch_until_expired(resource_version)
            except WatchExpired:
                log.info("pod watch expired (410 Gone): relisting")
            except Exception as e:
                if getattr(e, "status", None) == 410:
                    log.info("pod watch expired (HTTP 410 Gone): relisting")
                    continue
                if self._stop.is_set():
                    break
                self.health.connected = False
                self.health.reconnections += 1
                self.health.last_error = f"{type(e).__name__}: {e}"[:300]
                log.warning(
                    "pod watch failed (%s); retrying in %.0fs", self.health.last_error, backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
        self.health.connected = False

    def _request(self, **kwargs: Any) -> Any:
        response = self._api.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}",
            _preload_content=False,
            **kwargs,
        )
        self._response = response
        return response

    def _list(self) -> str:
        """Full (paginated) list; rebuilds the map. Returns the list's resourceVersion."""
        fresh: dict[str, PodInfo] = {}
        token: str | None = None
        resource_version = ""
        while True:
            kwargs: dict[str, Any] = {"limit": self.page_size, "_request_timeout": (10, 60)}
            if token:
                kwargs["_continue"] = token
            response = self._request(**kwargs)
            try:
                body = json.loads(response.data)
            finally:
                response.release_conn()
            for item in body.get("items") or ():
                try:
                    pod = parse_pod(item)
                except ValueError as e:
                    self.health.malformed_events += 1
                    log.warning("skipping malformed pod in list: %s", e)
                    continue
                fresh[pod.uid] = pod
            metadata = body.get("metadata") or {}
            resource_version = metadata.get("resourceVersion") or resource_version
            token = metadata.get("continue")
            if not token:
                break
        self._publish_list(fresh)
        self.health.connected = True
        self.health.last_sync = self.wall_clock()
        self.synced.set()
        return resource_version

    def _publish_list(self, fresh: dict[str, PodInfo]) -> None:
        now = self.clock()
        pods = dict(fresh)
        # Pods that vanished while we were not watching were deleted then.
        for uid, old in self.pods.items():
            if uid not in pods:
                pods[uid] = old if old.deleted_at is not None else replace(old, deleted_at=now)
        self.pods = self._expire(pods, now)

    def _expire(self, pods: dict[str, PodInfo], now: float) -> dict[str, PodInfo]:
        return {
            uid: pod
            for uid, pod in pods.items()
            if pod.deleted_at is None or now - pod.deleted_at < self.deleted_grace
        }

    def _watch_until_expired(self, resource_version: str) -> None:
        """Watch from resource_version until stopped; raises WatchExpired on 410."""
        while not self._stop.is_set():
            response = self._request(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout,
                _request_timeout=(10, self.read_timeout),
            )
            try:
                for line in _lines(response):
                    resource_version = self._apply(line, resource_version)
            finally:
                # A watch connection is never reused: an unread remainder
                # would be the next request's response.
                response.close()
                response.release_conn()
                self._response = None
            # The server ended the watch (timeoutSeconds): resume, no relist.

    def _apply(self, line: bytes, resource_version: str) -> str:
        """Apply one watch event line; returns the resourceVersion to resume from."""
        try:
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
        except (ValueError, KeyError, TypeError):
            self._malformed(f"not a watch event: {line[:120]!r}")
            return resource_version
        if kind == "ERROR":
            if _status_code(obj) == 410:
                raise WatchExpired()
            raise RuntimeError(f"watch error event: {str(obj)[:200]}")
        if kind == "BOOKMARK":
            rv = ((obj or {}).get("metadata") or {}).get("resourceVersion")
            return rv or resource_version
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            self._malformed(f"unknown watch event type {kind!r}")
            return resource_version
        try:
            pod = parse_pod(obj)
        except ValueError as e:
            self._malformed(f"{kind} event: {e}")
            return resource_version
        pods = dict(self.pods)
        now = self.clock()
        if kind == "DELETED":
            pods[pod.uid] = replace(pod, deleted_at=now)
        else:
            pods[pod.uid] = pod
        self.pods = self._expire(pods, now)
        return obj["metadata"].get("resourceVersion") or resource_version

    def _malformed(self, what: str) -> None:
        self.health.malformed_events += 1
        log.warning("skipping malformed pod watch event: %s", what)


def _abort(response: Any) -> None:
    """Unblock a read in progress on another thread: shut the socket down."""
    connection = getattr(response, "connection", None) or getattr(response, "_connection", None)
    sock = getattr(connection, "sock", None)
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        response.close()


def _lines(response: Any) -> Iterator[bytes]:
    """Complete lines of a chunked watch response."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if pending.strip():
        yield pending
