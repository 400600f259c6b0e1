"""GPU fixtures: the fake libnvidia-ml.so.1 (built here, so `make test` needs
no extra step), processes in kubelet-shaped cgroups of test pods, and
captures whose pids are rewritten to those live processes."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gpu.nvml_fixtures import build_fake_nvml
from tests.helpers import CgroupFactory
from tests.k8s_apiserver import ApiServer, make_pod, write_kubeconfig

# The capture's two load processes: pid -> (namespace, pod, container) in tests.
CAPTURED_PIDS = {437: ("ml", "trainer-a", "train"), 438: ("ml", "trainer-b", "train")}


@pytest.fixture(scope="session")
def fake_nvml() -> Path:
    return build_fake_nvml()


def cid() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def pod_cgroup(pod_uid: str, container_id: str) -> str:
    sd = pod_uid.replace("-", "_")
    return (
        "kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{sd}.slice/cri-containerd-{container_id}.scope"
    )


def start_in_cgroup(cgroup: Path) -> subprocess.Popen:
    """A sleeping process that is in `cgroup` from its first instruction."""
    procs = str(cgroup / "cgroup.procs")

    def enter() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return subprocess.Popen(["sleep", "600"], preexec_fn=enter)


@dataclass
class GpuPods:
    apiserver: ApiServer
    kubeconfig: Path
    pids: dict[int, int]  # captured pid -> live pid
    cgroups: dict[int, Path]  # captured pid -> its cgroup
    pods: dict[int, dict[str, str]]  # captured pid -> namespace/pod/container labels


@pytest.fixture
def gpu_pods(cgroups: CgroupFactory, tmp_path: Path) -> Iterator[GpuPods]:
    """Two test pods, each with one live process standing in for a captured one."""
    server = ApiServer()
    server.start()
    procs: list[subprocess.Popen] = []
    pids, paths, pods = {}, {}, {}
    try:
        for captured, (namespace, name, container) in CAPTURED_PIDS.items():
            pod_uid, container_id = str(uuid.uuid4()), cid()
            pod_name = f"{name}-{pod_uid[:6]}"
            pods[captured] = {"namespace": namespace, "pod": pod_name, "container": container}
            server.add_pod(
                make_pod(
                    pod_name,
                    namespace=namespace,
                    uid=pod_uid,
                    containers=((container, container_id),),
                )
            )
            cgroup = cgroups.make(pod_cgroup(pod_uid, container_id))
            proc = start_in_cgroup(cgroup)
            procs.append(proc)
            pids[captured], paths[captured] = proc.pid, cgroup
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        yield GpuPods(server, kubeconfig, pids, paths, pods)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        server.stop()
