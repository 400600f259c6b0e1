"""PodWatcher against the test API server, through the real kubernetes client."""

from __future__ import annotations

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
        def factory():
            return client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))

        options = {"backoff_initial": 0.1, "backoff_max": 0.4, "read_timeout": 5.0, **kwargs}
        watcher = PodWatcher(factory, "node-a", **options)
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
    assert watcher.health.reconnections == 0  # a relist, not a failure


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
    assert watcher.health.reconnections == 3
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
    assert watcher.health.reconnections >= 1


def test_stalled_watch_is_detected_by_read_timeout(server, start_watcher):
    watcher = start_watcher(read_timeout=0.5)
    assert server.wait_watches(1)
    server.stall(2.0)
    wait_for(lambda: watcher.health.reconnections >= 1, timeout=5, what="stall detected")
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
    assert watcher.health.reconnections == 0


def test_paginated_resync_of_1000_pods(server, start_watcher):
    for i in range(1000):
        server.add_pod(make_pod(f"pod-{i}", uid=str(uuid.UUID(int=i))))
    watcher = start_watcher(page_size=100)
    assert len(watcher.pods) == 1000
    assert server.count("list") == 10
