"""Pod watcher: the pods of this node, from a reliable list/watch of the API server.

Lists then watches only this node's pods (field selector spec.nodeName),
with the official `kubernetes` client's public API: `Configuration` for auth
and HTTP settings, `CoreV1Api.list_pod_for_all_namespaces` for the pages of
a list, `kubernetes.watch.Watch().stream` for the watch (its line splitting,
JSON decoding, and ERROR events raised as `ApiException`). Objects stay
plain dicts and are parsed into the few fields orb8 needs: the list is read
with `_preload_content=False`, and the watch is handed a request function
without a model return type, so Watch yields `raw_object` dicts (its
documented behaviour when it cannot determine the model). Building V1Pod
models would cost several times the JSON parse (benchmarks/k8s_watch.py,
docs/architecture.md) and a malformed pod would end the stream
(AttributeError inside the client) instead of being skipped and counted.

What the client lacks and orb8 adds: a bound on one watch line. Watch
buffers bytes until a newline without limit, so the response is handed to
it through `_BoundedResponse`, which ends the watch (counted as
`bad_response`) once a line passes `max_line` bytes, before Watch's buffer
holds more.

Reliability rules (one orb8 runs on every node, so any loop here multiplies
by the cluster size):
  - the first request, and any after a 410 Gone, is a full list that rebuilds
    the whole map, so nothing missed while disconnected survives as stale
    state; full lists are at most one per `relist_interval`;
  - the watch resumes from the last resourceVersion seen (events and
    BOOKMARKs); a watch that ended normally after being healthy is resumed
    at once;
  - every other way back to the API server (410, error answers, dropped or
    stalled connections, a watch that ends at once) waits for one backoff
    with jitter, 1 s doubling to 30 s, reset only when a watch has delivered
    something or stayed open for `healthy_after` seconds;
  - each failure is counted by reason and logged once per episode (a run of
    failures between two healthy states) with the API server's own message;
  - stalls are detected by orb8's read timeouts: urllib3's silent retries are
    switched off (`Configuration.retries = False`);
  - a malformed pod object is skipped and counted; it never stops the watch.

The map is published as an immutable snapshot (a dict replaced, never
mutated), so scrapes read it without locks. Deleted pods stay in it, marked
with their deletion time, for the deleted-pod grace period.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import Configuration

log = logging.getLogger(__name__)

# Containers whose cgroup is the pod's infrastructure (sandbox/pause, CRI-O
# conmon, the pod-level cgroup) are labelled like cAdvisor does.
POD_INFRA_CONTAINER = "POD"
# A pod object is at most etcd's 1.5 MiB request limit; a longer watch line is
# not a pod, and reading on would only grow memory.
MAX_WATCH_LINE = 16 * 2**20


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


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{what} is a {type(value).__name__}, not a string")
    return value


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} is a {type(value).__name__}, not an object")
    return value


def _objects(value: Any, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{what} is a {type(value).__name__}, not a list")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"{what}[{index}] is a {type(item).__name__}, not an object")
    return value


def parse_pod(obj: Any) -> PodInfo:
    """The fields orb8 needs from a v1 Pod object; ValueError if any of them is malformed.

    Every field is type-checked: pods describe untrusted workloads, and one bad
    object must cost only itself, never the watch.
    """
    if not isinstance(obj, dict):
        raise ValueError("pod is not an object")
    meta = _mapping(obj.get("metadata"), "metadata")
    uid = _text(meta.get("uid"), "metadata.uid")
    name = _text(meta.get("name"), "metadata.name")
    if not uid or not name:
        raise ValueError("pod without metadata.uid/name")
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")
    containers: dict[str, str] = {}
    reported: set[str] = set()
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in _objects(status.get(key), f"status.{key}"):
            cname = _text(cs.get("name"), f"status.{key}[].name")
            container_id = _text(cs.get("containerID"), f"status.{key}[].containerID")
            if container_id:
                containers[_strip_runtime(container_id)] = cname
                reported.add(cname)
            # The previous instance of a restarted container keeps its name.
            last = _mapping(cs.get("lastState"), f"status.{key}[].lastState")
            terminated = _mapping(last.get("terminated"), "lastState.terminated")
            previous = _text(terminated.get("containerID"), "lastState.terminated.containerID")
            if previous:
                containers[_strip_runtime(previous)] = cname
    expected = {
        _text(c.get("name"), f"spec.{key}[].name")
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in _objects(spec.get(key), f"spec.{key}")
    }
    ips = tuple(
        ip
        for entry in _objects(status.get("podIPs"), "status.podIPs")
        if (ip := _text(entry.get("ip"), "status.podIPs[].ip"))
    )
    if not ips and status.get("podIP"):
        ips = (_text(status["podIP"], "status.podIP"),)
    owners = _objects(meta.get("ownerReferences"), "metadata.ownerReferences")
    owner = next((o for o in owners if o.get("controller") is True), owners[0] if owners else {})
    return PodInfo(
        uid=uid,
        namespace=_text(meta.get("namespace"), "metadata.namespace"),
        name=name,
        node=_text(spec.get("nodeName"), "spec.nodeName"),
        containers=containers,
        all_started=expected <= reported,
        ips=ips,
        owner_kind=_text(owner.get("kind"), "ownerReferences[].kind"),
        owner_name=_text(owner.get("name"), "ownerReferences[].name"),
    )


# The `reason` label of orb8_k8s_watch_reconnections_total: why the agent went
# back to the API server other than by the normal end of a healthy watch.
REASONS: dict[str, str] = {
    "expired": "resourceVersion too old (410 Gone): relisting",
    "closed": "the watch ended at once without delivering anything",
    "dropped": "the connection broke",
    "stalled": "nothing received within the read timeout",
    "unreachable": "cannot connect to the API server",
    "http_error": "the API server answered with an error",
    "error_event": "the watch sent an ERROR event",
    "bad_response": "the API server's answer could not be parsed",
}


class WatchFailure(Exception):
    """One failed round trip to the API server, classified for the metric and the log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _server_message(body: Any) -> str:
    """The `message` of a v1 Status body (what the API server says went wrong)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body:
        return ""
    with contextlib.suppress(ValueError):
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return _one_line(data["message"])
    return _one_line(body, 200)


def classify(error: BaseException) -> WatchFailure:
    """Map any exception of a list or watch to a WatchFailure with a one-line message."""
    import urllib3.exceptions as u3

    if isinstance(error, WatchFailure):
        return error
    status = getattr(error, "status", None)
    if isinstance(status, int) and status > 0:  # kubernetes.client ApiException
        said = _server_message(getattr(error, "body", None)) or _one_line(
            str(getattr(error, "reason", "") or "")
        )
        return WatchFailure("expired" if status == 410 else "http_error", f"HTTP {status}: {said}")
    if isinstance(error, u3.MaxRetryError) and error.reason is not None:
        return classify(error.reason)
    if isinstance(error, (u3.ConnectTimeoutError, ConnectionRefusedError)):
        return WatchFailure("unreachable", _one_line(str(error)))
    if isinstance(error, (u3.ReadTimeoutError, TimeoutError)):
        return WatchFailure("stalled", _one_line(str(error)))
    if isinstance(error, (u3.HTTPError, OSError)):
        return WatchFailure("dropped", _one_line(f"{type(error).__name__}: {error}"))
    if isinstance(error, (ValueError, TypeError, KeyError, AttributeError)):
        return WatchFailure("bad_response", _one_line(f"{type(error).__name__}: {error}"))
    return WatchFailure("http_error", _one_line(f"{type(error).__name__}: {error}"))


def core_api(configuration: Configuration) -> Any:
    """A CoreV1Api on `configuration` with urllib3's retries switched off.

    urllib3 retries idempotent requests silently (3 times by default): a stalled API
    server then costs minutes with no log. orb8 detects and retries itself, with backoff.
    """
    from kubernetes import client

    configuration.retries = False
    return client.CoreV1Api(client.ApiClient(configuration))


@dataclass
class Backoff:
    """Exponential backoff with jitter: `initial` doubling to `maximum`; each delay is drawn
    from [d/2, d] so that the agents of a whole cluster do not come back in step."""

    initial: float
    maximum: float
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._current = self.initial

    def next(self) -> float:
        delay = self._current
        self._current = min(self._current * 2, self.maximum)
        return delay / 2 + self.rng.uniform(0, delay / 2)

    def reset(self) -> None:
        self._current = self.initial


@dataclass
class WatchHealth:
    connected: bool = False
    reconnections: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    last_sync: float = 0.0  # Unix time of the last full list
    malformed_events: int = 0
    last_error: str = ""

    @property
    def total_reconnections(self) -> int:
        return sum(self.reconnections.values())


@dataclass
class _Episode:
    """A run of failures between two healthy states; each reason is logged once in it."""

    started: float
    failures: int = 0
    logged: set[str] = field(default_factory=set)


@dataclass
class PodWatcher:
    """Keeps `pods` (uid -> PodInfo) current for one node. Runs in a thread."""

    configuration: Callable[[], Configuration]  # kubeconfig or in-cluster; read at first connect
    node_name: str
    deleted_grace: float = 60.0
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    relist_interval: float = 10.0  # at least this long between two full lists
    healthy_after: float = 30.0  # a watch open this long (or delivering events) is healthy
    watch_timeout: int = 300  # server-side timeoutSeconds of one watch request
    read_timeout: float = 90.0  # no byte (event or bookmark) for this long = stalled
    list_timeout: float = 30.0  # no answer to a list page for this long = stalled
    connect_timeout: float = 10.0
    page_size: int = 500
    max_line: int = MAX_WATCH_LINE  # a longer watch line ends the watch (bad_response)
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    pods: Mapping[str, PodInfo] = field(default_factory=dict)
    health: WatchHealth = field(default_factory=WatchHealth)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._api: Any = None  # kubernetes.client.CoreV1Api
        self._stream: Any = None  # kubernetes.watch.Watch
        self._response: Any = None
        self._backoff = Backoff(self.backoff_initial, self.backoff_max)
        self._episode: _Episode | None = None
        self._last_list: float | None = None
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
        """List, then watch and resume; every way back to the API server other than the
        normal end of a healthy watch waits for the one backoff first."""
        resource_version = ""  # empty: the next request is a full list
        while not self._stop.is_set():
            try:
                if self._api is None:
                    self._api = core_api(self.configuration())
                if not resource_version:
                    self._wait_for_relist_slot()
                    if self._stop.is_set():
                        break
                    resource_version = self._list()
                resource_version = self._watch(resource_version)
                continue  # a healthy watch ended normally: resume at once
            except WatchExpired:
                failure = WatchFailure("expired", "the watch's resourceVersion is too old")
                resource_version = ""
            except Exception as e:
                if self._stop.is_set():
                    break
                failure = classify(e)
                if failure.reason == "expired":
                    resource_version = ""
            delay = self._backoff.next()
            self._failed(failure, delay)
            self._stop.wait(delay)
        self.health.connected = False

    def _wait_for_relist_slot(self) -> None:
        """Full lists are the expensive request: at most one per relist_interval."""
        if self._last_list is not None:
            wait = self._last_list + self.relist_interval - self.clock()
            if wait > 0:
                self._stop.wait(wait)
        self._last_list = self.clock()

    def _failed(self, failure: WatchFailure, delay: float) -> None:
        health = self.health
        health.connected = False
        health.reconnections[failure.reason] = health.reconnections.get(failure.reason, 0) + 1
        health.last_error = _one_line(f"{failure.reason}: {failure}")
        if self._episode is None:
            self._episode = _Episode(started=self.clock())
        self._episode.failures += 1
        if failure.reason not in self._episode.logged:
            self._episode.logged.add(failure.reason)
            log.warning(
                "pod watch of node %s: %s (%s); retrying with backoff (next in %.1fs), "
                "repeats not logged until it recovers",
                self.node_name,
                REASONS.get(failure.reason, failure.reason),
                failure,
                delay,
            )

    def _healthy(self) -> None:
        self._backoff.reset()
        if self._episode is not None:
            log.info(
                "pod watch of node %s recovered after %d failed attempts in %.0fs",
                self.node_name,
                self._episode.failures,
                self.clock() - self._episode.started,
            )
            self._episode = None

    def _request(self, **kwargs: Any) -> Any:
        """One list or watch request, with `_preload_content=False` (from the list, or
        from Watch): the raw urllib3 response, no models built."""
        response = self._api.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}", **kwargs
        )
        self._response = response  # for stop() to abort a read in progress
        return response

    def _list(self) -> str:
        """Full (paginated) list; rebuilds the map. Returns the list's resourceVersion."""
        fresh: dict[str, PodInfo] = {}
        token: str | None = None
        resource_version = ""
        while True:
            kwargs: dict[str, Any] = {
                "_preload_content": False,
                "limit": self.page_size,
                "_request_timeout": (self.connect_timeout, self.list_timeout),
            }
            if token:
                kwargs["_continue"] = token
            response = self._request(**kwargs)
            try:
                body = json.loads(response.data)
            finally:
                response.release_conn()
                self._response = None
            if not isinstance(body, dict):
                raise WatchFailure("bad_response", "the pod list is not a JSON object")
            items = body.get("items") or []
            if not isinstance(items, list):
                raise WatchFailure("bad_response", "the pod list's items are not a list")
            for item in items:
                try:
                    pod = parse_pod(item)
                except ValueError as e:
                    self._malformed(f"list item: {e}")
                    continue
                fresh[pod.uid] = pod
            metadata = _mapping(body.get("metadata"), "list metadata")
            resource_version = _text(metadata.get("resourceVersion"), "resourceVersion") or (
                resource_version
            )
            token = _text(metadata.get("continue"), "continue")
            if not token:
                break
        if not resource_version:
            raise WatchFailure("bad_response", "the pod list has no resourceVersion")
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

    def _watch(self, resource_version: str) -> str:
        """One watch request from resource_version; returns where to resume.

        Returns normally only when a healthy watch ended (delivered something or
        stayed open long enough); raises WatchExpired on 410 and WatchFailure or
        the client's exception otherwise.
        """
        from kubernetes.client.rest import ApiException
        from kubernetes.watch import Watch

        if self._stream is None:
            self._stream = Watch()  # one for the watcher's life: each builds an ApiClient
        started = self.clock()
        delivered = False
        opened = False

        # No model return type (annotation or `:rtype:`), so Watch yields plain dicts.
        def request(**kwargs: Any) -> _BoundedResponse:
            nonlocal opened
            response = _BoundedResponse(self._request(**kwargs), self.max_line)
            opened = self.health.connected = True
            return response

        # timeout_seconds also makes Watch end after one request (no retry of its own):
        # resuming, relisting and backing off stay orb8's. Watch closes the response
        # (close, then release_conn), so a half-read watch connection is never reused.
        events = self._stream.stream(
            request,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _request_timeout=(self.connect_timeout, self.read_timeout),
        )
        try:
            for event in events:
                resource_version = self._apply(event, resource_version)
                if not delivered:
                    delivered = True
                    self._healthy()
        except ApiException as e:
            if not opened:  # the request itself was answered with an error status
                raise
            # Watch raises an ERROR event of a stream that was open as ApiException.
            if e.status == 410:
                raise WatchExpired() from None
            raise WatchFailure("error_event", _one_line(f"{e.status}: {e.reason}")) from None
        finally:
            events.close()
            self._response = None
        lasted = self.clock() - started
        if not delivered and lasted < min(self.healthy_after, self.watch_timeout / 2):
            raise WatchFailure("closed", f"the watch ended after {lasted:.1f}s with no event")
        self._healthy()
        return resource_version

    def _apply(self, event: Any, resource_version: str) -> str:
        """Apply one event from Watch; returns the resourceVersion to resume from.

        Watch yields None for a line that is not JSON (and for a blank line, which the
        API server never sends) and raises for ERROR events.
        """
        if not isinstance(event, dict) or "object" not in event:
            self._malformed(f"not a watch event: {_one_line(repr(event), 120)}")
            return resource_version
        kind, obj = event.get("type"), event["object"]
        try:
            rv = _text(
                _mapping(_mapping(obj, "object").get("metadata"), "metadata").get(
                    "resourceVersion"
                ),
                "resourceVersion",
            )
        except ValueError as e:
            self._malformed(f"{kind!r} event: {e}")
            return resource_version
        if kind == "BOOKMARK":
            return rv or resource_version
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            self._malformed(f"unknown watch event type {_one_line(repr(kind), 60)}")
            return resource_version
        try:
            pod = parse_pod(obj)
        except ValueError as e:
            self._malformed(f"{kind} event: {e}")
            return rv or resource_version
        pods = dict(self.pods)
        now = self.clock()
        if kind == "DELETED":
            pods[pod.uid] = replace(pod, deleted_at=now)
        else:
            pods[pod.uid] = pod
        self.pods = self._expire(pods, now)
        return rv or resource_version

    def _malformed(self, what: str) -> None:
        self.health.malformed_events += 1
        log.warning("skipping malformed pod object: %s", _one_line(what))


def _abort(response: Any) -> None:
    """Unblock a read in progress on another thread: shut the socket down (urllib3's
    public `HTTPResponse.connection`; what kubernetes' own Watch.stop does since v37)."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        response.close()


class _BoundedResponse:
    """A watch response as kubernetes.watch.Watch reads it (stream, status, close,
    release_conn, connection), with two things the client's line splitter lacks:

    - a bound: it buffers until a newline however long the line, so each chunk is
      checked before Watch sees it and a line longer than `limit` ends the watch;
    - linear time: it searches its whole buffer again for every chunk it is given
      (a 16 MiB line in 4 KiB chunks cost ~0.5 s of CPU, benchmarks/k8s_watch.py), so
      chunks are handed over only once they end a line.

    Counting newlines is one memchr pass over a chunk already in memory."""

    def __init__(self, response: Any, limit: int) -> None:
        self._response = response
        self._limit = limit
        self.status = response.status

    @property
    def connection(self) -> Any:
        return self._response.connection

    def close(self) -> None:
        self._response.close()

    def release_conn(self) -> None:
        self._response.release_conn()

    def stream(self, amt: int | None = None, decode_content: bool | None = None) -> Iterator[bytes]:
        pending: list[bytes] = []  # chunks of a line not yet ended by a newline
        partial = 0  # their bytes
        for chunk in self._response.stream(amt, decode_content=decode_content):
            start = 0
            while (end := chunk.find(b"\n", start)) != -1:
                _check_line_length(partial + end - start, self._limit)
                partial, start = 0, end + 1
            partial += len(chunk) - start
            _check_line_length(partial, self._limit)
            pending.append(chunk)
            if start:  # the chunk ends at least one line
                yield b"".join(pending)
                pending.clear()
        if pending:
            yield b"".join(pending)


def _check_line_length(length: int, limit: int) -> None:
    if length > limit:
        raise WatchFailure("bad_response", f"a watch event is longer than {limit} bytes")
