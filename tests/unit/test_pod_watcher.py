"""PodWatcher against the test API server, through the real kubernetes client."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest
from kubernetes import client, config

from exporter.identity.kubernetes import PodWatcher, parse_pod
from tests.helpers import wait_for
from tests.k8s_apiserver import ApiServer, make_pod, write_kubeconfig

CID = "c" * 64
INIT = "1" * 64
EPH = "e" * 64


def configuration(kubeconfig):
    def load() -> client.Configuration:
        loaded = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=loaded)
        return loaded

    return load


@pytest.fixture
def server():
    api = ApiServer()
    api.start()
    yield api
    api.stop()


@pytest.fixture
def start_watcher(server, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
    watchers = []

    def start(**kwargs) -> PodWatcher:
        options = {
            "backoff_initial": 0.1,
            "backoff_max": 0.4,
            "relist_interval": 0.1,
            "read_timeout": 5.0,
            **kwargs,
        }
        watcher = PodWatcher(configuration(kubeconfig), "node-a", **options)
        watcher.start()
        watchers.append(watcher)
        assert watcher.synced.wait(10), "first list did not complete"
        return watcher

    yield start
    for watcher in watchers:
        watcher.stop()


def test_parse_pod_keeps_every_container_id_without_runtime_prefix():
    pod = make_pod(
        "web",
        namespace="shop",
        uid="u-1",
        containers=(("app", CID), ("sidecar", None)),
        init_containers=(("migrate", INIT),),
        ephemeral_containers=(("debug", EPH),),
        pod_ips=("198.18.0.7", "fd00::7"),
        runtime="cri-o",
    )
    info = parse_pod(pod)
    assert info.uid == "u-1" and info.namespace == "shop" and info.name == "web"
    assert info.containers == {CID: "app", INIT: "migrate", EPH: "debug"}
    assert not info.all_started  # the sidecar has no container id yet
    assert info.ips == ("198.18.0.7", "fd00::7")
    assert (info.owner_kind, info.owner_name) == ("ReplicaSet", "web-7d9f8")


def test_parse_pod_remembers_the_previous_instance_of_a_restarted_container():
    pod = make_pod("web", containers=(("app", CID),))
    pod["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"containerID": "containerd://" + "d" * 64, "exitCode": 1}
    }
    info = parse_pod(pod)
    assert info.containers == {CID: "app", "d" * 64: "app"}
    assert info.all_started


@pytest.mark.parametrize(
    "obj", [None, [], {}, {"metadata": {}}, {"metadata": {"uid": "x"}}, {"metadata": "nope"}]
)
def test_parse_pod_rejects_malformed_objects(obj):
    with pytest.raises(ValueError):
        parse_pod(obj)


def test_lists_then_watches_only_this_nodes_pods(server, start_watcher):
    mine = server.add_pod(make_pod("mine", uid="u-mine"))
    server.add_pod(make_pod("theirs", uid="u-theirs", node="node-b"))
    watcher = start_watcher()
    assert set(watcher.pods) == {"u-mine"}
    assert watcher.health.connected and watcher.health.last_sync > 0

    server.add_pod(make_pod("later", uid="u-later"))
    wait_for(lambda: "u-later" in watcher.pods, what="ADDED")
    mine["status"]["containerStatuses"][0]["containerID"] = "containerd://" + "f" * 64
    server.update_pod(mine)
    wait_for(lambda: "f" * 64 in watcher.pods["u-mine"].containers, what="MODIFIED")
    server.delete_pod("u-later")
    wait_for(lambda: watcher.pods["u-later"].deleted_at is not None, what="DELETED")
    assert server.count("list") == 1  # no relist in the normal case


def test_deleted_pods_are_forgotten_after_the_grace_period(server, start_watcher):
    watcher = start_watcher(deleted_grace=0.3)
    server.add_pod(make_pod("gone", uid="u-gone"))
    wait_for(lambda: "u-gone" in watcher.pods)
    server.delete_pod("u-gone")
    wait_for(lambda: "u-gone" in watcher.pods and watcher.pods["u-gone"].deleted_at)
    time.sleep(0.4)
    server.add_pod(make_pod("other", uid="u-other"))  # any event prunes expired tombstones
    wait_for(lambda: "u-gone" not in watcher.pods, what="tombstone expiry")


def test_410_mid_watch_relists_and_keeps_the_map_right(server, start_watcher):
    watcher = start_watcher()
    assert server.wait_watches(1)
    server.expire_watches()
    server.add_pod(make_pod("after", uid="u-after"))
    wait_for(lambda: "u-after" in watcher.pods, what="pod after 410")
    wait_for(lambda: server.count("list") >= 2, what="relist")
    # A relist after the backoff, counted as such; nothing else went wrong.
    assert watcher.health.reconnections["expired"] >= 1
    assert watcher.health.total_reconnections == watcher.health.reconnections["expired"]


def test_resume_from_compacted_version_relists(server, start_watcher):
    watcher = start_watcher()
    server.add_pod(make_pod("a", uid="u-a"))
    wait_for(lambda: "u-a" in watcher.pods)
    assert server.wait_watches(1)
    server.compact()
    server.drop_connections()  # the resume will ask for a compacted version
    server.add_pod(make_pod("b", uid="u-b"))
    wait_for(lambda: "u-b" in watcher.pods, what="pod after compaction")
    assert server.count("list") >= 2


def test_malformed_events_are_skipped_and_counted(server, start_watcher):
    watcher = start_watcher()
    assert server.wait_watches(1)
    server.inject_malformed()
    server.add_pod(make_pod("fine", uid="u-fine"))
    wait_for(lambda: "u-fine" in watcher.pods, what="event after malformed ones")
    assert watcher.health.malformed_events == 3
    assert watcher.health.connected


def test_server_errors_back_off_and_recover(server, start_watcher):
    server.fail_next(3, code=500)
    watcher = start_watcher()  # synced only after the failures
    assert watcher.health.reconnections["http_error"] == 3
    assert watcher.health.total_reconnections == 3
    assert "500" in watcher.health.last_error


def test_restart_reconnects_and_rebuilds_the_map(server, start_watcher):
    server.add_pod(make_pod("stays", uid="u-stays"))
    server.add_pod(make_pod("dies", uid="u-dies"))
    watcher = start_watcher()
    server.stop()
    wait_for(lambda: not watcher.health.connected, what="disconnect")
    # While it is down: one pod deleted, one added (as if missed events).
    server.delete_pod("u-dies")
    server.add_pod(make_pod("new", uid="u-new"))
    server.start()
    wait_for(lambda: watcher.health.connected, timeout=5, what="resync within 5 s")
    assert "u-new" in watcher.pods
    assert watcher.pods["u-dies"].deleted_at is not None
    assert watcher.health.total_reconnections >= 1


def test_stalled_watch_is_detected_by_read_timeout(server, start_watcher):
    watcher = start_watcher(read_timeout=0.5)
    assert server.wait_watches(1)
    server.stall(2.0)
    wait_for(lambda: watcher.health.reconnections["stalled"] >= 1, timeout=5, what="stall")
    server.add_pod(make_pod("after-stall", uid="u-as"))
    wait_for(lambda: "u-as" in watcher.pods, timeout=10, what="recovery after stall")


def test_bookmarks_advance_the_resume_point(server, start_watcher):
    # Watches end cleanly every second (timeoutSeconds) and are resumed.
    watcher = start_watcher(watch_timeout=1)
    assert server.wait_watches(1)
    for i in range(5):
        server.add_pod(make_pod(f"p{i}", uid=f"u-{i}", node="node-b"))  # not ours
    server.bookmark()
    time.sleep(0.2)
    server.compact()  # only a resume from the bookmark's version is still valid
    watches = server.count("watch")
    wait_for(lambda: server.count("watch") > watches, what="resumed watch")
    server.add_pod(make_pod("mine", uid="u-mine"))
    wait_for(lambda: "u-mine" in watcher.pods)
    assert server.count("list") == 1, "resumed from the bookmark without a relist"
    assert watcher.health.total_reconnections == 0


def test_paginated_resync_of_1000_pods(server, start_watcher):
    for i in range(1000):
        server.add_pod(make_pod(f"pod-{i}", uid=str(uuid.UUID(int=i))))
    watcher = start_watcher(page_size=100)
    assert len(watcher.pods) == 1000
    assert server.count("list") == 10


# --- faults that must not storm the API server --------------------------------------------
# Each fault runs for a fixed time with a scaled-down backoff (0.2 s doubling to 1 s) and
# the requests that reached the server are bounded. Without a backoff on these paths the
# same 3 s held hundreds of requests.

FAULT_SECONDS = 3.0
STORM_OPTIONS = {"backoff_initial": 0.2, "backoff_max": 1.0, "relist_interval": 1.0}


def _watch_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "exporter.identity.kubernetes" and r.levelname == "WARNING"
    ]


@pytest.mark.parametrize(
    ("fault", "reason", "server_says", "relists"),
    [
        (410, "expired", "injected watch failure 410", True),
        ("expire", "expired", "", True),
        ("end", "closed", "no event", False),
        (500, "http_error", "injected watch failure 500", False),
    ],
)
def test_a_failing_watch_backs_off_and_is_visible(
    server, start_watcher, caplog, fault, reason, server_says, relists
):
    caplog.set_level("INFO", logger="exporter.identity.kubernetes")
    watcher = start_watcher(**STORM_OPTIONS)
    assert server.wait_watches(1)
    lists, watches = server.count("list"), server.count("watch")
    server.break_watches(fault)
    server.drop_connections()  # the open watch fails; every later one meets the fault
    time.sleep(FAULT_SECONDS)
    server.break_watches(None)
    extra_lists = server.count("list") - lists
    extra_watches = server.count("watch") - watches
    # 3 s of 0.1-0.2, 0.2-0.4, 0.4-0.8, then 0.5-1 s waits: at most 9 attempts.
    assert extra_watches <= 10, f"{extra_watches} watch requests in {FAULT_SECONDS}s"
    if relists:
        assert 1 <= extra_lists <= 4, f"{extra_lists} relists in {FAULT_SECONDS}s"
    else:
        assert extra_lists == 0, "a watch failure resumes the watch, it does not relist"
    assert watcher.health.reconnections[reason] >= 3
    # Logged once for the episode, on one line, with what the server said.
    warnings = [w for w in _watch_warnings(caplog) if reason_text(reason) in w]
    assert len(warnings) == 1, warnings
    assert "\n" not in warnings[0] and server_says in warnings[0]
    # Healthy again once a watch delivers something.
    assert server.wait_watches(1, timeout=5)
    server.add_pod(make_pod("after", uid="u-after"))
    wait_for(lambda: "u-after" in watcher.pods, timeout=10, what="recovery")
    wait_for(
        lambda: any("recovered" in r.getMessage() for r in caplog.records), what="recovery log"
    )


def reason_text(reason: str) -> str:
    from exporter.identity.kubernetes import REASONS

    return REASONS[reason]


class _SilentServer:
    """TCP accepted, request read, nothing ever answered: a hung API server."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_a_hung_api_server_is_detected_by_orb8_without_silent_retries(tmp_path, caplog):
    caplog.set_level("INFO", logger="exporter.identity.kubernetes")
    silent = _SilentServer()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{silent.port}")

    watcher = PodWatcher(
        configuration(kubeconfig),
        "node-a",
        list_timeout=0.3,
        backoff_initial=0.2,
        backoff_max=0.4,
        relist_interval=0.2,
    )
    watcher.start()
    try:
        wait_for(lambda: watcher.health.reconnections["stalled"] >= 3, what="3 stalls")
    finally:
        watcher.stop()
        silent.close()
    stalls = watcher.health.reconnections["stalled"]
    # Every connection orb8 opened is a failure it counted (urllib3 would retry 3 more times).
    assert len(silent.accepted) <= stalls + 1, (len(silent.accepted), stalls)
    assert not watcher.health.connected
    warnings = [w for w in _watch_warnings(caplog) if reason_text("stalled") in w]
    assert len(warnings) == 1, warnings


# --- malformed objects ----------------------------------------------------------------------


def _malformed_pods() -> list[dict]:
    status_text = make_pod("status-text", uid="u-bad-status")
    status_text["status"] = "Running"
    uid_object = make_pod("uid-object")
    uid_object["metadata"]["uid"] = {"not": "a string"}
    oops = make_pod("oops", uid="u-oops")
    oops["status"]["containerStatuses"] = ["oops"]
    return [status_text, uid_object, oops]


@pytest.mark.parametrize("index", range(3))
def test_parse_pod_rejects_wrongly_typed_fields(index):
    with pytest.raises(ValueError):
        parse_pod(_malformed_pods()[index])


def test_malformed_pods_are_passed_over_and_counted_and_nothing_else_stops(server, start_watcher):
    from exporter.selfmetrics import identity_families

    server.add_pod(make_pod("good", uid="u-good"))
    for pod in _malformed_pods():
        server.add_pod(pod)
    watcher = start_watcher()
    assert set(watcher.pods) == {"u-good"}
    assert watcher.health.malformed_events == 3
    assert server.wait_watches(1)
    # A watch event with a malformed pod: passed over, counted, the stream goes on.
    good = server.pods()[[p["metadata"].get("uid") for p in server.pods()].index("u-good")]
    good["status"]["containerStatuses"] = ["oops"]
    server.update_pod(good)
    server.add_pod(make_pod("later", uid="u-later"))
    wait_for(lambda: "u-later" in watcher.pods, what="event after the malformed one")
    assert watcher.health.malformed_events == 4
    assert server.count("list") == 1 and watcher.health.total_reconnections == 0
    families = {f.name: f for f in identity_families(None, watcher)}
    assert families["orb8_k8s_watch_malformed_events_total"].samples == [((), 4)]


class _Chunks:
    """What urllib3 hands the watch reader: the body in arbitrary chunks."""

    status = 200
    connection = None

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def stream(self, amt=None, decode_content=None):
        yield from self.chunks

    def close(self):
        self.closed = True

    def release_conn(self):
        pass


def _watch_through_the_bound(chunks: list[bytes], limit: int) -> list:
    """The events kubernetes' own Watch yields from `chunks` behind orb8's line bound."""
    from kubernetes.watch import Watch

    from exporter.identity.kubernetes import _BoundedResponse

    response = _Chunks(chunks)

    def request(**kwargs):
        return _BoundedResponse(response, limit)

    try:
        return list(Watch().stream(request, timeout_seconds=1))
    finally:
        assert response.closed  # Watch closes the response whatever happened


def _event(name: str) -> bytes:
    return json.dumps({"type": "ADDED", "object": {"metadata": {"name": name}}}).encode()


A, B = _event("a"), _event("b")


@pytest.mark.parametrize(
    ("chunks", "names"),
    [
        ([A + b"\n" + B + b"\n"], ["a", "b"]),
        ([A[:5], A[5:] + b"\n" + B[:3], B[3:] + b"\n"], ["a", "b"]),  # split anywhere
        ([b"\n", b"  \n", A + b"\n\n"], [None, None, "a", None]),  # blank lines: None
        ([A[:4], A[4:9], A[9:], b"\n"], ["a"]),  # many chunks, one line
        ([], []),
    ],
)
def test_watch_lines_are_reassembled_from_any_chunking_behind_the_bound(chunks, names):
    events = _watch_through_the_bound(chunks, limit=64)
    assert [e and e["object"]["metadata"]["name"] for e in events] == names
    # No model type: the object is the plain dict orb8 parses itself.
    assert all(e is None or isinstance(e["object"], dict) for e in events)


@pytest.mark.parametrize(
    "chunks",
    [
        [b"y" * 40, b"y" * 40],  # a line that never ends: fails before it ends
        [b"ok\n" + b"z" * 65 + b"\n"],  # one long line inside a chunk
        [b"z" * 30, b"z" * 40 + b"\nafter\n"],  # long once its chunks are joined
    ],
)
def test_a_watch_line_over_the_limit_ends_the_watch(chunks):
    from exporter.identity.kubernetes import WatchFailure

    with pytest.raises(WatchFailure) as failure:
        _watch_through_the_bound(chunks, limit=64)
    assert failure.value.reason == "bad_response"


def test_a_line_over_the_limit_on_the_wire_is_counted_and_the_watch_resumes(server, start_watcher):
    watcher = start_watcher(max_line=64 * 1024)
    assert server.wait_watches(1)
    lists = server.count("list")
    # A pod event of 256 KiB (its annotation) sent in 4 KiB chunks.
    huge = make_pod("huge", uid="u-huge")
    huge["metadata"]["annotations"] = {"blob": "x" * 256 * 1024}
    server.inject_line(json.dumps({"type": "ADDED", "object": huge}).encode() + b"\n", 4096)
    wait_for(lambda: watcher.health.reconnections["bad_response"] == 1, what="line too long")
    assert "u-huge" not in watcher.pods
    server.add_pod(make_pod("after", uid="u-after"))
    wait_for(lambda: "u-after" in watcher.pods, timeout=10, what="the watch resumed")
    assert server.count("list") == lists, "resumed from the last resourceVersion, no relist"


def test_an_error_event_mid_stream_is_counted_with_the_servers_message_and_resumed(
    server, start_watcher
):
    watcher = start_watcher()
    assert server.wait_watches(1)
    status = {"kind": "Status", "code": 500, "reason": "InternalError", "message": "etcd is sad"}
    server.inject_line(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n", 4096)
    wait_for(lambda: watcher.health.reconnections["error_event"] == 1, what="ERROR event")
    assert "etcd is sad" in watcher.health.last_error and "500" in watcher.health.last_error
    server.add_pod(make_pod("after", uid="u-after"))
    wait_for(lambda: "u-after" in watcher.pods, timeout=10, what="the watch resumed")
    assert server.count("list") == 1, "an ERROR event other than 410 resumes, it does not relist"
    assert watcher.health.total_reconnections == 1
