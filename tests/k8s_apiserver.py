"""A test Kubernetes API server for pods, speaking the real list/watch HTTP protocol.

Pod-watcher tests point the official `kubernetes` client at it through a kubeconfig, so the
client's real HTTP, chunked-stream and JSON handling is exercised, while the failures a node
agent must survive (API server restarts, 410 Gone, dropped or stalled streams, garbage on the
wire, 5xx answers) can be produced on cue from the test.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import re
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

import yaml

Pod = dict[str, Any]

# The id `make_pod` gives its container unless told otherwise.
APP_CONTAINER_ID = "4f1c0a8e9b7d6c5e3a2f1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e"

_POD_PATH = re.compile(r"/api/v1(?:/namespaces/(?P<namespace>[^/]+))?/pods")
_NODE_SELECTOR = re.compile(r"spec\.nodeName==?(?P<node>[^,=!]*)")
_TRUE = ("1", "true")
_END = b""  # queued after a watch's last frame: finish the stream cleanly
_POLL_S = 0.05  # how often a waiting watch checks whether its client went away


def status(code: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """A v1 Status failure body, as the API server sends with every error."""
    if reason is None:
        reason = {400: "BadRequest", 404: "NotFound", 410: "Expired", 500: "InternalError"}.get(
            code, HTTPStatus(code).phrase.replace(" ", "")
        )
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _too_old(since: int, oldest: int) -> dict[str, Any]:
    """The 410 the watch cache sends when asked to resume from compacted history."""
    return status(410, f"too old resource version: {since} ({oldest})", "Expired")


def _event_line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def _key(uid: Any) -> str:
    """Pods are stored by uid; a malformed (non-string) uid, which tests send on purpose, by
    its JSON text."""
    return uid if isinstance(uid, str) else json.dumps(uid, sort_keys=True)


def _sort_key(pod: Pod) -> tuple[str, str]:
    """etcd order: the list is sorted by the key /registry/pods/<namespace>/<name>."""
    meta = pod.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


def _node_from_selector(selector: str) -> str | None:
    """The node a `spec.nodeName=X` field selector asks for; None when there is no selector.

    Raises ValueError for anything else, which the server answers with 400 like a real one
    answers a selector on a field it does not index.
    """
    if not selector:
        return None
    match = _NODE_SELECTOR.fullmatch(selector)
    if match is None:
        raise ValueError(f'unable to parse requirement: field selector "{selector}" not supported')
    return match["node"]


def _matches(pod: Pod, namespace: str | None, node: str | None) -> bool:
    if namespace is not None and pod.get("metadata", {}).get("namespace") != namespace:
        return False
    return node is None or pod.get("spec", {}).get("nodeName") == node


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the client hung up, which a blocked watch would otherwise only notice on write."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (OSError, ValueError):
        return True


def _abort(sock: socket.socket) -> None:
    """Cut a connection under its handler thread: the client sees EOF mid-response."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


@dataclass(eq=False)
class _Watch:
    """One open watch stream.

    Producers queue frames under the server lock and the handler thread writes them, so events
    keep their order and a stall merely holds them back.
    """

    namespace: str | None
    node: str | None
    bookmarks: bool
    sock: socket.socket
    rv: int  # resourceVersion of the last event queued on this stream
    frames: deque[bytes] = field(default_factory=deque)
    next_bookmark: float | None = None
    ending: bool = False  # _END is queued: take nothing more
    dropped: bool = False  # cut the connection without a terminating chunk

    def push(self, frame: bytes, rv: int | None = None) -> None:
        if not self.ending:
            self.frames.append(frame)
            self.rv = rv if rv is not None else self.rv

    def end(self, *last: bytes) -> None:
        """Queue `last`, then the clean end of the stream; nothing is taken after that."""
        for frame in (*last, _END):
            self.push(frame)
        self.ending = True


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: ApiServer


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, like the real server, so client connection pooling is real."""

    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def handle(self) -> None:
        if self.server.api._track(self.server, self.connection):
            try:
                with contextlib.suppress(ConnectionError):  # a client hanging up is no error
                    super().handle()
            finally:
                self.server.api._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest output is for the test, not for access logs."""

    def do_GET(self) -> None:
        api = self.server.api
        api._record("GET", self.path)
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        match = _POD_PATH.fullmatch(url.path)
        if match is None:
            self._send_json(404, status(404, f"the server could not find {url.path}"))
            return
        code = api._take_failure()
        if code is not None:
            self._send_json(code, status(code, f"injected failure {code}"))
            return
        try:
            node = _node_from_selector(query.get("fieldSelector", ""))
        except ValueError as e:
            self._send_json(400, status(400, str(e)))
            return
        namespace = match["namespace"]
        if query.get("watch", "") in _TRUE:
            fault = api._watch_fault
            if isinstance(fault, int):
                self._send_json(fault, status(fault, f"injected watch failure {fault}"))
            elif fault is not None:
                self._broken_watch(fault)
            else:
                self._watch(namespace, node, query)
        else:
            self._list(namespace, node, query)

    def _unsupported(self) -> None:
        self.server.api._record(self.command, self.path)
        self.close_connection = True  # the request body, if any, is left unread
        self._send_json(404, status(404, f"{self.command} is not served here"))

    do_POST = do_PUT = do_PATCH = do_DELETE = _unsupported

    def _send_json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _list(self, namespace: str | None, node: str | None, query: dict[str, str]) -> None:
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            self._send_json(400, status(400, f"invalid limit: {query['limit']!r}"))
            return
        code, body = self.server.api._list(namespace, node, limit, query.get("continue", ""))
        self._send_json(code, body)

    def _broken_watch(self, fault: str) -> None:
        """A watch that answers 200 and ends at once, after a 410 ERROR event for "expire"."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if fault == "expire":
            frame = _event_line("ERROR", _too_old(0, self.server.api.resource_version))
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        self.wfile.write(b"0\r\n\r\n")

    def _watch(self, namespace: str | None, node: str | None, query: dict[str, str]) -> None:
        try:
            since = int(query.get("resourceVersion") or 0)
            timeout = int(query.get("timeoutSeconds") or 0)
        except ValueError:
            self._send_json(400, status(400, "resourceVersion and timeoutSeconds must be integers"))
            return
        deadline = time.monotonic() + timeout if timeout > 0 else None
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
        except OSError:
            self.close_connection = True
            return
        # Only now does the watch count as open, so a test that cuts it sees the client fail
        # mid-stream rather than before a response, which urllib3 would silently retry.
        api = self.server.api
        bookmarks = query.get("allowWatchBookmarks", "") in _TRUE
        watch = api._open_watch(namespace, node, since, bookmarks, self.connection)
        try:
            while (frames := api._next_frames(watch, deadline)) is not None:
                for frame in frames:
                    if frame == _END:
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            self.close_connection = True  # dropped: no terminating chunk
        except OSError:
            self.close_connection = True
        finally:
            api._close_watch(watch)


class ApiServer:
    """Pods behind /api/v1/pods and /api/v1/namespaces/{ns}/pods, with list, watch and faults.

    State (pods, resourceVersion, history) lives here rather than in the HTTP server, so it
    survives stop()/start() the way etcd outlives an API server restart.
    """

    def __init__(self, port: int = 0, bookmark_interval: float | None = None) -> None:
        self.bookmark_interval = bookmark_interval
        self._port = port
        self._httpd: _HttpServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._lock = threading.RLock()  # reentrant: wait_until predicates may call methods
        self._cond = threading.Condition(self._lock)
        self._rv = 1
        self._pods: dict[str, Pod] = {}  # uid -> pod; stored dicts are never mutated
        self._history: list[tuple[int, str, Pod]] = []  # (rv, type, pod), rv ascending
        self._compacted_rv = 0  # history holds every event with rv > this
        self._snapshots: dict[str, tuple[int, list[Pod]]] = {}  # continue key -> (rv, items)
        self._watches: set[_Watch] = set()
        self._connections: set[socket.socket] = set()
        self._stall_until = 0.0
        self._failures: deque[int] = deque()
        self._watch_fault: int | str | None = None
        self._requests: list[tuple[str, str]] = []

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        """Listen (again) on the same port; the first start picks a free one if port was 0."""
        if self._httpd is not None:
            raise RuntimeError("API server already started")
        httpd = _HttpServer(("127.0.0.1", self._port), _Handler)
        httpd.api = self
        self._port = httpd.server_address[1]
        with self._lock:
            self._httpd = httpd
        self._serve_thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._serve_thread.start()

    def stop(self) -> None:
        """Crash-stop: close the listener and cut every connection, watches mid-stream included."""
        with self._cond:
            httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join()
        with self._cond:
            for watch in self._watches:
                watch.dropped = True
            sockets = list(self._connections)
            self._cond.notify_all()
        for sock in sockets:
            _abort(sock)
        self.wait_until(lambda: not self._watches and not self._connections)

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- pods -------------------------------------------------------------------------------

    def add_pod(self, pod: Pod) -> Pod:
        """Create a pod (ADDED); returns the stored copy with its uid and resourceVersion."""
        with self._cond:
            pod = copy.deepcopy(pod)
            meta = pod.setdefault("metadata", {})
            uid = _key(meta.setdefault("uid", str(uuid.uuid4())))
            if uid in self._pods:
                raise ValueError(f"pod uid {uid} already exists")
            return self._commit("ADDED", pod)

    def update_pod(self, pod: Pod) -> Pod:
        """Replace a pod, matched by uid (MODIFIED)."""
        with self._cond:
            uid = pod["metadata"]["uid"]
            if uid not in self._pods:
                raise KeyError(f"no pod with uid {uid}")
            return self._commit("MODIFIED", pod)

    def delete_pod(self, uid: str) -> None:
        """Delete a pod (DELETED, carrying its last state at a new resourceVersion)."""
        with self._cond:
            self._commit("DELETED", self._pods[uid])

    def pods(self) -> list[Pod]:
        with self._lock:
            return copy.deepcopy(sorted(self._pods.values(), key=_sort_key))

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def _commit(self, kind: str, pod: Pod) -> Pod:
        """Give `pod` the next resourceVersion, store it, record it, queue it on watches."""
        self._rv += 1
        stored = copy.deepcopy(pod)
        stored.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        uid = _key(stored["metadata"]["uid"])
        if kind == "DELETED":
            del self._pods[uid]
        else:
            self._pods[uid] = stored
        self._history.append((self._rv, kind, stored))
        line = _event_line(kind, stored)
        for watch in self._watches:
            if _matches(stored, watch.namespace, watch.node):
                watch.push(line, self._rv)
        self._cond.notify_all()
        return copy.deepcopy(stored)

    # --- faults and signals -----------------------------------------------------------------

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current resourceVersion on every watch that allows them."""
        with self._cond:
            line = self._bookmark_line()
            for watch in self._watches:
                if watch.bookmarks:
                    watch.push(line, self._rv)
            self._cond.notify_all()

    def compact(self) -> None:
        """Drop all history (like etcd compaction): resuming from an older rv now gets 410."""
        with self._cond:
            self._compacted_rv = self._rv
            self._history.clear()
            self._snapshots.clear()
            self._cond.notify_all()

    def expire_watches(self) -> None:
        """End every open watch with the 410 ERROR event, as on compaction under a live watch.

        History is kept, so a client resuming from its last rv succeeds; call compact() too
        to make the resume fail as well.
        """
        with self._cond:
            for watch in self._watches:
                watch.end(_event_line("ERROR", _too_old(watch.rv, self._rv)))
            self._cond.notify_all()

    def end_watches(self) -> None:
        """End every open watch cleanly (terminating chunk), as a real server does when its
        own request timeout for watches elapses."""
        with self._cond:
            for watch in self._watches:
                watch.end()
            self._cond.notify_all()

    def drop_connections(self) -> None:
        """Cut every open watch connection mid-stream (no terminating chunk); waits for it."""
        with self._cond:
            dropped = list(self._watches)
            for watch in dropped:
                watch.dropped = True
            self._cond.notify_all()
        for watch in dropped:
            _abort(watch.sock)
        self.wait_until(lambda: not any(watch in self._watches for watch in dropped))

    def stall(self, seconds: float) -> None:
        """Hold every watch stream, open or new, silent for `seconds`; events queue meanwhile."""
        with self._cond:
            self._stall_until = time.monotonic() + seconds
            self._cond.notify_all()

    def fail_next(self, n: int, code: int = 500) -> None:
        """Answer the next `n` pod list/watch requests with `code` and a Status body."""
        with self._cond:
            self._failures.extend([code] * n)
            self._cond.notify_all()

    def break_watches(self, fault: int | str | None) -> None:
        """Make every new watch request fail while lists keep working, until called with None:
        an int answers with that HTTP status and a Status body, "end" answers 200 and ends the
        stream at once, "expire" answers 200 with a 410 ERROR event and ends."""
        if fault is not None and not isinstance(fault, int) and fault not in ("end", "expire"):
            raise ValueError(f"unknown watch fault {fault!r}")
        with self._cond:
            self._watch_fault = fault
            self._cond.notify_all()

    def inject_malformed(self) -> None:
        """Write garbage into every open watch: a non-JSON line, an event of unknown type
        "BOGUS", and an ADDED event whose object has no metadata. The stream goes on after."""
        with self._cond:
            rv = str(self._rv)
            bogus = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv}}
            lines = [
                b"this is not json\n",
                _event_line("BOGUS", bogus),
                _event_line("ADDED", {"kind": "Pod", "apiVersion": "v1"}),
            ]
            for watch in self._watches:
                for line in lines:
                    watch.push(line)
            self._cond.notify_all()

    def inject_line(self, line: bytes, chunk: int) -> None:
        """Write `line` into every open watch as HTTP chunks of `chunk` bytes, as a long
        event arrives; it enters no history, so a resumed watch does not see it again."""
        with self._cond:
            for watch in self._watches:
                for offset in range(0, len(line), chunk):
                    watch.push(line[offset : offset + chunk])
            self._cond.notify_all()

    # --- observation ------------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path with query) of every request so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def count(self, kind: str) -> int:
        """How many pod "list" or "watch" requests arrived (failed ones included)."""
        if kind not in ("list", "watch"):
            raise ValueError(f"kind must be 'list' or 'watch', not {kind!r}")
        total = 0
        for _, path in self.requests:
            url = urlsplit(path)
            if _POD_PATH.fullmatch(url.path):
                watch = parse_qs(url.query).get("watch", [""])[-1] in _TRUE
                total += watch == (kind == "watch")
        return total

    def open_watches(self) -> int:
        with self._lock:
            return len(self._watches)

    def wait_watches(self, n: int, timeout: float = 5.0) -> bool:
        """Block until exactly `n` watch streams are open; False on timeout."""
        return self.wait_until(lambda: len(self._watches) == n, timeout)

    def wait_until(self, done: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until `done()` holds, re-checking on every change of state, connections and
        watches included; False on timeout. `done` may call this server's methods."""
        with self._cond:
            return self._cond.wait_for(done, timeout)

    # --- used by the request handlers -------------------------------------------------------

    def _record(self, method: str, path: str) -> None:
        with self._cond:
            self._requests.append((method, path))
            self._cond.notify_all()

    def _take_failure(self) -> int | None:
        with self._cond:
            if not self._failures:
                return None
            self._cond.notify_all()
            return self._failures.popleft()

    def _track(self, httpd: _HttpServer, sock: socket.socket) -> bool:
        """Register a connection so stop() can cut it; refuse one the stopping server let in."""
        with self._cond:
            if httpd is not self._httpd:
                return False
            self._connections.add(sock)
            self._cond.notify_all()
            return True

    def _untrack(self, sock: socket.socket) -> None:
        with self._cond:
            self._connections.discard(sock)
            self._cond.notify_all()

    def _list(
        self, namespace: str | None, node: str | None, limit: int, token: str
    ) -> tuple[int, dict[str, Any]]:
        """One page of a list; later pages come from the snapshot the first page took."""
        with self._lock:
            if token:
                try:
                    key, offset = _decode_continue(token)
                except ValueError:
                    return 400, status(400, f"invalid continue token: {token!r}")
                if key not in self._snapshots:
                    return 410, status(410, "the provided continue parameter is too old")
                rv, items = self._snapshots[key]
            else:
                key, offset, rv = uuid.uuid4().hex, 0, self._rv
                items = sorted(
                    (p for p in self._pods.values() if _matches(p, namespace, node)), key=_sort_key
                )
            end = offset + limit if limit > 0 else len(items)
            metadata: dict[str, Any] = {"resourceVersion": str(rv)}
            if end < len(items):
                self._snapshots[key] = (rv, items)
                metadata["continue"] = _encode_continue(key, end)
            body: dict[str, Any] = {"kind": "PodList", "apiVersion": "v1", "metadata": metadata}
            body["items"] = copy.deepcopy(items[offset:end])
            return 200, body

    def _bookmark_line(self) -> bytes:
        meta = {"resourceVersion": str(self._rv)}
        return _event_line("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": meta})

    def _open_watch(
        self,
        namespace: str | None,
        node: str | None,
        since: int,
        bookmarks: bool,
        sock: socket.socket,
    ) -> _Watch:
        """Register a watch with its start queued atomically, so no event falls in between.

        From rv 0 (or none) it starts with a synthetic ADDED per existing pod, from rv N with
        the history after N, and from a compacted rv with the 410 ERROR event alone.
        """
        with self._lock:
            watch = _Watch(namespace, node, bookmarks, sock, rv=since or self._rv)
            if bookmarks and self.bookmark_interval:
                watch.next_bookmark = time.monotonic() + self.bookmark_interval
            if since == 0:
                for pod in sorted(self._pods.values(), key=_sort_key):
                    if _matches(pod, namespace, node):
                        watch.push(_event_line("ADDED", pod))
            elif since < self._compacted_rv:
                watch.end(_event_line("ERROR", _too_old(since, self._compacted_rv)))
            else:
                for rv, kind, pod in self._history:
                    if rv > since and _matches(pod, namespace, node):
                        watch.push(_event_line(kind, pod), rv)
            self._watches.add(watch)
            self._cond.notify_all()
            return watch

    def _next_frames(self, watch: _Watch, deadline: float | None) -> list[bytes] | None:
        """Block until `watch` has something to send; None means cut the connection.

        An expired timeoutSeconds deadline yields [_END]: the stream ends cleanly and whatever
        was still held back by a stall is lost, as it would be on a real server.
        """
        with self._cond:
            while True:
                if watch.dropped or _peer_closed(watch.sock):
                    return None
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return [_END]
                stalled = now < self._stall_until
                if not stalled and watch.frames:
                    frames = list(watch.frames)
                    watch.frames.clear()
                    return frames
                if not stalled and watch.next_bookmark is not None and now >= watch.next_bookmark:
                    watch.next_bookmark = now + (self.bookmark_interval or 0)
                    return [self._bookmark_line()]
                wake = self._stall_until if stalled else watch.next_bookmark
                wakes = [t for t in (deadline, wake, now + _POLL_S) if t is not None]
                self._cond.wait(min(wakes) - now)

    def _close_watch(self, watch: _Watch) -> None:
        with self._cond:
            self._watches.discard(watch)
            self._cond.notify_all()


def _encode_continue(key: str, offset: int) -> str:
    raw = json.dumps({"key": key, "offset": offset}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_continue(token: str) -> tuple[str, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(data["key"]), int(data["offset"])
    except (binascii.Error, json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(token) from e


# --- fixtures' building blocks ----------------------------------------------------------------


def make_pod(
    name: str,
    namespace: str = "default",
    uid: str | None = None,
    node: str | None = "node-a",
    containers: Sequence[tuple[str, str | None]] = (("app", APP_CONTAINER_ID),),
    init_containers: Sequence[tuple[str, str | None]] = (),
    ephemeral_containers: Sequence[tuple[str, str | None]] = (),
    pod_ips: Sequence[str] = ("198.18.0.10",),
    owner: tuple[str, str] | None = ("ReplicaSet", "web-7d9f8"),
    runtime: str = "containerd",
    qos: str = "BestEffort",
) -> Pod:
    """A realistic running v1 Pod. Containers are (name, id); an id of None means "not started
    yet": no containerID, waiting state. Init containers with an id have completed."""
    started_at = "2024-01-01T00:00:05Z"

    def container_status(cname: str, cid: str | None, kind: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": cname,
            "image": f"registry.example/{cname}:1.0",
            "imageID": f"registry.example/{cname}@sha256:{'ab' * 32}",
            "ready": cid is not None and kind == "app",
            "started": cid is not None and kind != "init",
            "restartCount": 0,
        }
        if cid is None:
            entry["state"] = {"waiting": {"reason": "ContainerCreating"}}
            return entry
        entry["containerID"] = f"{runtime}://{cid}"
        if kind == "init":
            entry["state"] = {
                "terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "containerID": entry["containerID"],
                    "startedAt": started_at,
                    "finishedAt": started_at,
                }
            }
        else:
            entry["state"] = {"running": {"startedAt": started_at}}
        return entry

    def spec_containers(items: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        return [{"name": cname, "image": f"registry.example/{cname}:1.0"} for cname, _ in items]

    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid or str(uuid.uuid4()),
        "creationTimestamp": "2024-01-01T00:00:00Z",
        "labels": {"app": name},
    }
    if owner is not None:
        kind, owner_name = owner
        group = {"ReplicaSet": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1"}
        metadata["ownerReferences"] = [
            {
                "apiVersion": group.get(kind, "batch/v1" if kind in ("Job", "CronJob") else "v1"),
                "kind": kind,
                "name": owner_name,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{kind}/{owner_name}")),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    spec: dict[str, Any] = {"containers": spec_containers(containers)}
    if node is not None:
        spec["nodeName"] = node
    if init_containers:
        spec["initContainers"] = spec_containers(init_containers)
    if ephemeral_containers:
        spec["ephemeralContainers"] = spec_containers(ephemeral_containers)
    pod_status: dict[str, Any] = {
        "phase": "Running",
        "qosClass": qos,
        "startTime": "2024-01-01T00:00:01Z",
        "podIPs": [{"ip": ip} for ip in pod_ips],
        "containerStatuses": [container_status(n, c, "app") for n, c in containers],
    }
    if pod_ips:
        pod_status["podIP"] = pod_ips[0]
    if init_containers:
        pod_status["initContainerStatuses"] = [
            container_status(n, c, "init") for n, c in init_containers
        ]
    if ephemeral_containers:
        pod_status["ephemeralContainerStatuses"] = [
            container_status(n, c, "ephemeral") for n, c in ephemeral_containers
        ]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": spec,
        "status": pod_status,
    }


def write_kubeconfig(path: str | Path, server_url: str, namespace: str = "default") -> Path:
    """A kubeconfig for plain-HTTP `server_url` with a dummy bearer token, as the current
    context: what the agent and the `kubernetes` client load outside a cluster."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server_url}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [
            {
                "name": "test",
                "context": {"cluster": "test", "user": "test", "namespace": namespace},
            }
        ],
        "current-context": "test",
        "preferences": {},
    }
    path = Path(path)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def serve(lines: Iterator[str], out: TextIO) -> None:
    """The server in its own process (benchmarks drive it so that its JSON work does not compete
    with theirs for one GIL): prints its URL, then takes one JSON command a line,
    `{"add": pod}` or `{"delete": uid}`, until the input ends; then prints how many pods it
    holds and stops."""
    with ApiServer() as server:
        print(server.url, file=out, flush=True)
        for line in lines:
            command = json.loads(line)
            if "add" in command:
                server.add_pod(command["add"])
            else:
                server.delete_pod(command["delete"])
        print(len(server.pods()), file=out, flush=True)


if __name__ == "__main__":
    import sys

    serve(iter(sys.stdin.readline, ""), sys.stdout)
