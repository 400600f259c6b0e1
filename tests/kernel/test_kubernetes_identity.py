"""End to end: kubelet-shaped cgroups on the real kernel, pods from the test API
server, exact counts under the right namespace/pod/container on /metrics."""

from __future__ import annotations

import time
import uuid

import pytest

from exporter.sources.syscalls import native_syscall_numbers
from tests.helpers import kernel_pairs_of, run_workload, series, wait_for
from tests.k8s_apiserver import ApiServer, make_pod, write_kubeconfig

pytestmark = pytest.mark.kernel

# The workload makes raw syscall(2) calls: this architecture's numbers, not x86_64's.
GETPPID, GETPGID = (str(native_syscall_numbers()[name]) for name in ("getppid", "getpgid"))


def cid() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def systemd_path(uid: str, qos: str, container: str) -> str:
    sd = uid.replace("-", "_")
    if qos == "guaranteed":
        return f"kubepods.slice/kubepods-pod{sd}.slice/{container}"
    return f"kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{sd}.slice/{container}"


def cgroupfs_path(uid: str, qos: str, container: str) -> str:
    return (
        f"kubepods/{qos}/pod{uid}/{container}"
        if qos != "guaranteed"
        else f"kubepods/pod{uid}/{container}"
    )


@pytest.fixture
def apiserver():
    server = ApiServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def k8s_exporter(start_exporter, apiserver, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)

    def start(*args: str):
        return start_exporter("--kubeconfig", str(kubeconfig), "--node-name", "node-a", *args)

    return start


def test_exact_counts_land_on_the_right_pod_for_every_layout(
    apiserver, k8s_exporter, cgroups, workload
):
    layouts = [
        # (namespace, pod, container, qos, path builder, runtime prefix/suffix)
        ("shop", "cart", "app", "burstable", systemd_path, "cri-containerd-{}.scope", "containerd"),
        ("shop", "search", "worker", "besteffort", systemd_path, "crio-{}.scope", "cri-o"),
        ("infra", "dns", "coredns", "guaranteed", systemd_path, "docker-{}.scope", "docker"),
        ("batch", "etl", "job", "burstable", cgroupfs_path, "{}", "containerd"),
        ("batch", "crawl", "fetch", "besteffort", cgroupfs_path, "crio-{}", "cri-o"),
    ]
    exporter = k8s_exporter()
    expected = []
    for i, (ns, pod, container, qos, build, scope, runtime) in enumerate(layouts):
        uid, container_id = str(uuid.uuid4()), cid()
        apiserver.add_pod(
            make_pod(
                pod, namespace=ns, uid=uid, containers=((container, container_id),), runtime=runtime
            )
        )
        cgroup = cgroups.make(build(uid, qos, scope.format(container_id)))
        calls = 10_007 + i
        run_workload(workload, cgroup, f"{GETPPID}:{calls}", f"{GETPGID}:{i + 1}:0")
        expected.append((ns, pod, container, calls, i + 1))

    samples = wait_for(
        lambda: (
            (s := exporter.scrape())
            and series(s, "orb8_syscalls_total", namespace="batch", pod="crawl", syscall="getppid")
            and s
        ),
        what="pods resolved",
    )
    for ns, pod, container, calls, pgid in expected:
        labels = {"namespace": ns, "pod": pod, "container": container, "cgroup": ""}
        assert series(samples, "orb8_syscalls_total", syscall="getppid", **labels) == calls, pod
        assert series(samples, "orb8_syscalls_total", syscall="getpgid", **labels) == pgid, pod
    assert series(samples, "orb8_k8s_watch_connected") == 1
    assert series(samples, "orb8_k8s_pods_tracked") == len(layouts)
    wait_for(
        lambda: series(exporter.scrape(), "orb8_cgroups_unresolved") == 0,
        what="no pod cgroup left unresolved",
    )


def test_sandbox_cgroup_is_counted_as_container_POD(apiserver, k8s_exporter, cgroups, workload):
    uid, app, sandbox = str(uuid.uuid4()), cid(), cid()
    apiserver.add_pod(make_pod("web", namespace="shop", uid=uid, containers=(("app", app),)))
    exporter = k8s_exporter()
    run_workload(
        workload,
        cgroups.make(systemd_path(uid, "burstable", f"cri-containerd-{sandbox}.scope")),
        f"{GETPPID}:77",
    )
    run_workload(
        workload,
        cgroups.make(systemd_path(uid, "burstable", f"cri-containerd-{app}.scope")),
        f"{GETPPID}:88",
    )
    samples = exporter.scrape()
    assert (
        series(samples, "orb8_syscalls_total", pod="web", container="POD", syscall="getppid") == 77
    )
    assert (
        series(samples, "orb8_syscalls_total", pod="web", container="app", syscall="getppid") == 88
    )


def test_pod_arriving_after_its_counts_gets_the_complete_count(
    apiserver, k8s_exporter, cgroups, cgroup2_root, workload
):
    exporter = k8s_exporter()
    uid, container_id = str(uuid.uuid4()), cid()
    cgroup = cgroups.make(systemd_path(uid, "besteffort", f"cri-containerd-{container_id}.scope"))
    run_workload(workload, cgroup, f"{GETPPID}:5001")
    path = "/" + str(cgroup.relative_to(cgroup2_root))
    samples = exporter.scrape()
    # Not known yet: labelled by its path, counted, and reported unresolved.
    assert series(samples, "orb8_syscalls_total", cgroup=path, syscall="getppid") == 5001
    assert series(samples, "orb8_cgroups_unresolved") >= 1
    run_workload(workload, cgroup, f"{GETPPID}:1000")

    apiserver.add_pod(
        make_pod("late", namespace="ml", uid=uid, containers=(("trainer", container_id),))
    )
    samples = wait_for(
        lambda: (s := exporter.scrape()) and series(s, "orb8_syscalls_total", pod="late") and s,
        what="late pod resolved",
    )
    assert (
        series(
            samples,
            "orb8_syscalls_total",
            namespace="ml",
            pod="late",
            container="trainer",
            syscall="getppid",
        )
        == 6001
    )
    assert series(samples, "orb8_syscalls_total", cgroup=path) == 0
    assert series(samples, "orb8_cgroups_unresolved") == 0


def test_api_server_restart_resyncs_and_resolves_pods_added_meanwhile(
    apiserver, k8s_exporter, cgroups, workload
):
    started = time.time()
    exporter = k8s_exporter()
    assert series(exporter.scrape(), "orb8_k8s_watch_connected") == 1
    reconnections = series(exporter.scrape(), "orb8_k8s_watch_reconnections_total")
    apiserver.stop()
    wait_for(lambda: series(exporter.scrape(), "orb8_k8s_watch_connected") == 0, what="disconnect")
    uid, container_id = str(uuid.uuid4()), cid()
    apiserver.add_pod(
        make_pod("while-down", namespace="ops", uid=uid, containers=(("app", container_id),))
    )
    time.sleep(1.5)
    apiserver.start()
    # Retries back off with jitter, 1 then 2 then 4 s ([d/2, d] each), so the
    # attempt after the restart can come ~5.5 s later; a resync that needs a
    # full list waits for the 10 s relist slot since the first list (made
    # before the stop). 15 s bounds both on a machine of any speed.
    wait_for(
        lambda: series(exporter.scrape(), "orb8_k8s_watch_connected") == 1,
        timeout=15,
        what="reconnect",
    )
    samples = exporter.scrape()
    assert series(samples, "orb8_k8s_watch_reconnections_total") > reconnections
    # The watch resumes from its resourceVersion (the server kept its history),
    # so the last full list is the first one: made in this test, however slowly.
    assert started <= series(samples, "orb8_k8s_last_sync_timestamp") <= time.time()
    run_workload(
        workload,
        cgroups.make(systemd_path(uid, "burstable", f"cri-containerd-{container_id}.scope")),
        f"{GETPPID}:321",
    )
    samples = exporter.scrape()
    assert (
        series(
            samples,
            "orb8_syscalls_total",
            namespace="ops",
            pod="while-down",
            container="app",
            syscall="getppid",
        )
        == 321
    )


def test_410_and_malformed_events_do_not_break_resolution(
    apiserver, k8s_exporter, cgroups, workload
):
    exporter = k8s_exporter()
    assert apiserver.wait_watches(1, timeout=15)
    apiserver.inject_malformed()
    apiserver.compact()
    apiserver.expire_watches()
    uid, container_id = str(uuid.uuid4()), cid()
    apiserver.add_pod(
        make_pod("survivor", namespace="qa", uid=uid, containers=(("app", container_id),))
    )
    run_workload(
        workload,
        cgroups.make(systemd_path(uid, "burstable", f"cri-containerd-{container_id}.scope")),
        f"{GETPPID}:99",
    )
    samples = wait_for(
        lambda: (s := exporter.scrape()) and series(s, "orb8_syscalls_total", pod="survivor") and s,
        what="pod after 410",
    )
    assert (
        series(samples, "orb8_syscalls_total", pod="survivor", container="app", syscall="getppid")
        == 99
    )
    assert series(samples, "orb8_k8s_watch_malformed_events_total") == 3
    assert series(samples, "orb8_k8s_watch_connected") == 1
    assert apiserver.count("list") >= 2


def test_deleted_pod_series_disappear_after_grace_and_kernel_entries_are_freed(
    apiserver, k8s_exporter, cgroups, workload
):
    # The grace must outlast delete -> event -> sleep(0.5) -> scrape below, on a
    # loaded machine too (a collect can take seconds there): 2 s did not always.
    exporter = k8s_exporter("--deleted-pod-grace", "6")
    uid, container_id = str(uuid.uuid4()), cid()
    apiserver.add_pod(
        make_pod("doomed", namespace="tmp", uid=uid, containers=(("app", container_id),))
    )
    cgroup = cgroups.make(systemd_path(uid, "burstable", f"cri-containerd-{container_id}.scope"))
    run_workload(workload, cgroup, f"{GETPPID}:50", f"{GETPGID}:5:0")
    samples = exporter.scrape()
    assert series(samples, "orb8_syscalls_total", pod="doomed", syscall="getpgid") == 5
    assert kernel_pairs_of(cgroup.stat().st_ino, exporter.proc.pid) >= 2
    apiserver.delete_pod(uid)
    time.sleep(0.5)
    # Within the grace period: still exported.
    assert series(exporter.scrape(), "orb8_syscalls_total", pod="doomed", syscall="getppid") == 50
    wait_for(
        lambda: series(exporter.scrape(), "orb8_syscalls_total", pod="doomed") == 0,
        timeout=30,
        what="series gone",
    )
    # The cgroup directory still exists; the deleted pod's entries are freed.
    assert kernel_pairs_of(cgroup.stat().st_ino, exporter.proc.pid) == 0
