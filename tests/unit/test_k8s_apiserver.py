# The client models type every field Optional; these tests read fields the server always sets.
# mypy: disable-error-code="union-attr, index, arg-type"
"""The test API server against the real `kubernetes` client (v37).

Besides proving the server, these tests pin down how the client's `Watch.stream` reacts to
each fault, which is what the pod watcher has to handle:

- BOOKMARK: yielded as an event whose `object` is the raw dict (not a V1Pod); the Watch also
  takes its resourceVersion into `Watch.resource_version`.
- 410 ERROR: raised as ApiException(status=410, reason="Expired: <message>"). Without
  `timeout_seconds` the client first re-watches once from its last resourceVersion and only
  raises if that also fails before any event arrives.
- Dropped connection: urllib3.exceptions.ProtocolError("Response ended prematurely").
- timeoutSeconds expiry: the generator simply returns. Without `timeout_seconds` a cleanly
  ended stream is re-watched silently.
- Non-JSON line: yielded as None. Unknown type: yielded like any event, object as a V1Pod.
- ADDED without metadata: AttributeError escapes from the generator.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import urllib3
from kubernetes.client import CoreV1Api, V1Pod
from kubernetes.client.exceptions import ApiException

from tests.k8s_apiserver import APP_CONTAINER_ID, ApiServer, make_pod, write_kubeconfig

NODE = "spec.nodeName=node-a"


@pytest.fixture
def server() -> Iterator[ApiServer]:
    srv = ApiServer()
    srv.start()
    yield srv
    srv.stop()


def client_for(srv: ApiServer, tmp_path: Path) -> CoreV1Api:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", srv.url)
    return CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))


@pytest.fixture
def api(server: ApiServer, tmp_path: Path) -> Iterator[CoreV1Api]:
    core = client_for(server, tmp_path)
    yield core
    core.api_client.close()


def watch(
    api: CoreV1Api,
    server: ApiServer,
    action: Callable[[], object] | None = None,
    stop_after: int | None = None,
    **kwargs: Any,
) -> tuple[list[Any], BaseException | None, kubernetes.watch.Watch]:
    """Run a real Watch.stream on node-a, doing `action` once the server has the watch open.

    Returns what the generator yielded, what it raised (None if it returned), and the Watch.
    """
    kwargs.setdefault("field_selector", NODE)
    kwargs.setdefault("_request_timeout", 5)
    opened = server.count("watch")

    def act() -> None:
        if server.wait_until(lambda: server.count("watch") > opened and server.open_watches() > 0):
            assert action is not None
            action()

    actor = threading.Thread(target=act)
    if action is not None:
        actor.start()
    w = kubernetes.watch.Watch()
    events: list[Any] = []
    error: BaseException | None = None
    try:
        for event in w.stream(api.list_pod_for_all_namespaces, **kwargs):
            events.append(event)
            if stop_after is not None and len(events) >= stop_after:
                w.stop()
    except Exception as e:
        error = e
    if action is not None:
        actor.join()
    return events, error, w


def types(events: list[Any]) -> list[str | None]:
    return [e["type"] if isinstance(e, dict) else e for e in events]


def rv_of(event: dict[str, Any]) -> int:
    return int(event["raw_object"]["metadata"]["resourceVersion"])


# --- list ---------------------------------------------------------------------------------


def test_list_filters_by_node_and_reports_resource_version(
    server: ApiServer, api: CoreV1Api
) -> None:
    server.add_pod(make_pod("web", init_containers=(("setup", "1" * 64),)))
    server.add_pod(make_pod("db", namespace="data"))
    server.add_pod(make_pod("elsewhere", node="node-b"))

    pods = api.list_pod_for_all_namespaces(field_selector=NODE)
    assert [p.metadata.name for p in pods.items] == ["db", "web"]  # etcd key order
    assert pods.metadata.resource_version == str(server.resource_version)
    web = pods.items[1]
    assert web.spec.node_name == "node-a"
    assert web.status.container_statuses[0].container_id == f"containerd://{APP_CONTAINER_ID}"
    assert web.status.init_container_statuses[0].container_id == f"containerd://{'1' * 64}"
    assert web.metadata.owner_references[0].kind == "ReplicaSet"

    namespaced = api.list_namespaced_pod("data", field_selector="spec.nodeName==node-a")
    assert [p.metadata.name for p in namespaced.items] == ["db"]
    assert len(api.list_pod_for_all_namespaces().items) == 3


def test_unsupported_field_selector_is_400(server: ApiServer, api: CoreV1Api) -> None:
    with pytest.raises(ApiException) as raised:
        api.list_pod_for_all_namespaces(field_selector="status.phase=Running")
    assert raised.value.status == 400
    assert json.loads(raised.value.body)["reason"] == "BadRequest"


def test_unknown_path_is_404_status(server: ApiServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
    conn.request("GET", "/api/v1/nodes")
    response = conn.getresponse()
    assert response.status == 404
    assert json.loads(response.read())["kind"] == "Status"
    conn.close()


def test_pagination_serves_a_consistent_snapshot(server: ApiServer, api: CoreV1Api) -> None:
    for i in range(5):
        server.add_pod(make_pod(f"pod-{i}"))
    first = api.list_pod_for_all_namespaces(field_selector=NODE, limit=2)
    snapshot_rv = first.metadata.resource_version
    server.add_pod(make_pod("pod-late"))  # after the snapshot: must not show up

    names = [p.metadata.name for p in first.items]
    token = first.metadata._continue
    while token:
        page = api.list_pod_for_all_namespaces(field_selector=NODE, limit=2, _continue=token)
        assert page.metadata.resource_version == snapshot_rv
        names += [p.metadata.name for p in page.items]
        token = page.metadata._continue
    assert names == [f"pod-{i}" for i in range(5)]
    assert server.count("list") == 3


# --- watch --------------------------------------------------------------------------------


def test_watch_streams_changes_and_bookmarks(server: ApiServer, api: CoreV1Api) -> None:
    rv = api.list_pod_for_all_namespaces(field_selector=NODE).metadata.resource_version

    def changes() -> None:
        pod = server.add_pod(make_pod("web"))
        server.add_pod(make_pod("other", node="node-b"))  # filtered out
        pod["metadata"]["labels"]["version"] = "2"
        server.update_pod(pod)
        server.delete_pod(pod["metadata"]["uid"])
        server.bookmark()

    events, error, w = watch(
        api,
        server,
        changes,
        stop_after=4,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    )
    assert error is None
    assert types(events) == ["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
    assert all(isinstance(e["object"], V1Pod) for e in events[:3])
    assert events[1]["object"].metadata.labels["version"] == "2"
    assert [rv_of(e) for e in events[:3]] == [int(rv) + 1, int(rv) + 3, int(rv) + 4]
    bookmark = events[3]
    assert bookmark["object"] == bookmark["raw_object"]  # a dict, never deserialized
    assert bookmark["object"]["metadata"]["resourceVersion"] == str(server.resource_version)
    assert w.resource_version == str(server.resource_version)  # taken from the BOOKMARK


def test_watch_replays_history_after_rv_and_starts_fresh_with_adds(
    server: ApiServer, api: CoreV1Api
) -> None:
    rv = server.resource_version
    pod = server.add_pod(make_pod("web"))
    server.update_pod(pod)

    events, error, _ = watch(api, server, stop_after=2, resource_version=str(rv))
    assert error is None
    assert types(events) == ["ADDED", "MODIFIED"]

    events, error, _ = watch(api, server, stop_after=1)  # no resourceVersion: current state
    assert error is None
    assert types(events) == ["ADDED"]
    assert rv_of(events[0]) == server.resource_version


def test_periodic_bookmarks_only_when_allowed(tmp_path: Path) -> None:
    with ApiServer(bookmark_interval=0.1) as srv, client_for(srv, tmp_path).api_client as client:
        api = CoreV1Api(client)
        events, error, _ = watch(api, srv, stop_after=2, allow_watch_bookmarks=True)
        assert error is None
        assert types(events) == ["BOOKMARK", "BOOKMARK"]

        events, error, _ = watch(api, srv, timeout_seconds=1)
        assert error is None
        assert events == []


def test_timeout_seconds_ends_the_stream_cleanly(server: ApiServer, api: CoreV1Api) -> None:
    started = time.monotonic()
    events, error, _ = watch(api, server, resource_version="1", timeout_seconds=1)
    assert (events, error) == ([], None)
    assert 0.9 < time.monotonic() - started < 4  # the server's timeout, not the client's 5 s
    assert server.count("watch") == 1  # no re-watch when timeout_seconds is given


def test_without_timeout_seconds_a_clean_end_is_rewatched(
    server: ApiServer, api: CoreV1Api
) -> None:
    def end_then_change() -> None:
        server.end_watches()
        assert server.wait_until(lambda: server.count("watch") == 2 and server.open_watches() == 1)
        server.add_pod(make_pod("web"))

    events, error, _ = watch(api, server, end_then_change, stop_after=1, resource_version="1")
    assert error is None
    assert types(events) == ["ADDED"]


def test_resuming_from_compacted_rv_raises_410(server: ApiServer, api: CoreV1Api) -> None:
    old_rv = server.resource_version
    server.add_pod(make_pod("web"))
    server.compact()

    events, error, _ = watch(api, server, resource_version=str(old_rv), timeout_seconds=1)
    assert events == []
    assert isinstance(error, ApiException)
    assert error.status == 410
    assert error.reason == f"Expired: too old resource version: {old_rv} ({old_rv + 1})"
    assert server.count("watch") == 1

    # Without timeout_seconds the client re-watches once from the same rv before raising.
    _, error, _ = watch(api, server, resource_version=str(old_rv))
    assert isinstance(error, ApiException)
    assert error.status == 410
    assert server.count("watch") == 3


def test_expire_watches_sends_410(server: ApiServer, api: CoreV1Api) -> None:
    events, error, _ = watch(
        api, server, server.expire_watches, resource_version="1", timeout_seconds=5
    )
    assert events == []
    assert isinstance(error, ApiException)
    assert error.status == 410

    # Without timeout_seconds the client resumes from its last rv; history is still there.
    def expire_then_change() -> None:
        server.expire_watches()
        assert server.wait_until(lambda: server.count("watch") == 3 and server.open_watches() == 1)
        server.add_pod(make_pod("web"))

    events, error, _ = watch(api, server, expire_then_change, stop_after=1, resource_version="1")
    assert error is None
    assert types(events) == ["ADDED"]


def test_fail_next_answers_with_the_status(server: ApiServer, api: CoreV1Api) -> None:
    server.fail_next(2)
    with pytest.raises(ApiException) as raised:
        api.list_pod_for_all_namespaces()
    assert raised.value.status == 500
    assert json.loads(raised.value.body)["code"] == 500

    _, error, _ = watch(api, server, resource_version="1", timeout_seconds=1)
    assert isinstance(error, ApiException)
    assert error.status == 500

    assert api.list_pod_for_all_namespaces().items == []


def test_drop_connections_breaks_the_stream(server: ApiServer, api: CoreV1Api) -> None:
    events, error, _ = watch(
        api, server, server.drop_connections, resource_version="1", timeout_seconds=5
    )
    assert events == []
    assert isinstance(error, urllib3.exceptions.ProtocolError)
    assert "Response ended prematurely" in str(error)
    assert server.open_watches() == 0


def test_restart_keeps_state_and_port(server: ApiServer, api: CoreV1Api) -> None:
    pod = server.add_pod(make_pod("web"))
    rv, port = server.resource_version, server.port
    api.list_pod_for_all_namespaces()  # leaves a pooled keep-alive connection

    _, error, _ = watch(api, server, server.stop, resource_version="1", timeout_seconds=5)
    assert isinstance(error, urllib3.exceptions.ProtocolError)
    server.start()

    assert (server.port, server.resource_version) == (port, rv)
    pods = api.list_pod_for_all_namespaces()
    assert [p.metadata.uid for p in pods.items] == [pod["metadata"]["uid"]]
    assert pods.metadata.resource_version == str(rv)


def test_stall_holds_events_back(server: ApiServer, api: CoreV1Api) -> None:
    def stall_then_change() -> None:
        server.stall(0.5)
        server.add_pod(make_pod("web"))

    started = time.monotonic()
    events, error, _ = watch(
        api, server, stall_then_change, stop_after=1, resource_version="1", timeout_seconds=5
    )
    assert error is None
    assert types(events) == ["ADDED"]
    assert time.monotonic() - started >= 0.5


def test_malformed_lines_through_the_client(server: ApiServer, api: CoreV1Api) -> None:
    events, error, _ = watch(
        api, server, server.inject_malformed, resource_version="1", timeout_seconds=5
    )
    assert events[0] is None  # the non-JSON line
    assert events[1]["type"] == "BOGUS"
    assert isinstance(events[1]["object"], V1Pod)
    assert len(events) == 2
    assert isinstance(error, AttributeError)  # the ADDED event without metadata


def test_malformed_lines_on_the_wire_and_the_stream_goes_on(server: ApiServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
    conn.request("GET", f"/api/v1/pods?watch=1&resourceVersion=1&fieldSelector={NODE}")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Type") == "application/json"
    assert server.wait_watches(1)
    server.inject_malformed()
    server.add_pod(make_pod("web"))

    lines = [response.readline() for _ in range(4)]
    assert lines[0] == b"this is not json\n"
    assert json.loads(lines[1])["type"] == "BOGUS"
    assert "metadata" not in json.loads(lines[2])["object"]
    assert json.loads(lines[3])["type"] == "ADDED"
    conn.close()
    assert server.wait_watches(0)


def test_inject_line_sends_one_line_as_many_http_chunks(server: ApiServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(
        f"GET /api/v1/pods?watch=1&resourceVersion=1&fieldSelector={NODE} HTTP/1.1\r\n"
        "Host: x\r\n\r\n".encode()
    )
    reader = sock.makefile("rb")
    while reader.readline() not in (b"\r\n", b""):
        pass  # status line and headers
    assert server.wait_watches(1)
    line = b'{"type": "ADDED", "object": {"blob": "' + b"x" * 1000 + b'"}}\n'
    server.inject_line(line, 100)
    chunks = []
    while sum(map(len, chunks)) < len(line):
        size = int(reader.readline().strip(), 16)
        chunks.append(reader.read(size))
        assert reader.readline() == b"\r\n"
    sock.close()
    assert b"".join(chunks) == line
    assert [len(c) for c in chunks] == [100] * (len(line) // 100) + [len(line) % 100]


# --- in its own process -------------------------------------------------------------------


def test_own_process_serves_the_pods_its_input_adds_and_deletes(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.k8s_apiserver"],
        cwd=Path(__file__).resolve().parents[2],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        url = proc.stdout.readline().strip()
        web, db = make_pod("web"), make_pod("db", namespace="data")
        for command in ({"add": web}, {"add": db}, {"delete": web["metadata"]["uid"]}):
            proc.stdin.write(json.dumps(command) + "\n")
        proc.stdin.flush()
        core = CoreV1Api(
            kubernetes.config.new_client_from_config(
                config_file=str(write_kubeconfig(tmp_path / "kubeconfig", url))
            )
        )
        deadline = time.monotonic() + 10
        while (names := [p.metadata.name for p in core.list_pod_for_all_namespaces().items]) != [
            "db"
        ] and time.monotonic() < deadline:
            time.sleep(0.05)
        core.api_client.close()
        assert names == ["db"]
        proc.stdin.close()
        assert proc.stdout.readline().strip() == "1"
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
