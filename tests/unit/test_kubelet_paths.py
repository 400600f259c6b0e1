"""Table tests for the kubelet cgroup path decoder."""

from __future__ import annotations

import pytest

from exporter.identity.kubelet import KubeletCgroup, parse_kubelet_cgroup

UID = "1f3a9c2e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
SD = UID.replace("-", "_")
CID = "a" * 63 + "1"

CASES = [
    # systemd driver, containerd, three QoS classes
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD}.slice/"
        f"cri-containerd-{CID}.scope",
        KubeletCgroup(UID, CID, "containerd", "burstable"),
    ),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SD}.slice/"
        f"cri-containerd-{CID}.scope",
        KubeletCgroup(UID, CID, "containerd", "besteffort"),
    ),
    (
        f"/kubepods.slice/kubepods-pod{SD}.slice/cri-containerd-{CID}.scope",
        KubeletCgroup(UID, CID, "containerd", "guaranteed"),
    ),
    # CRI-O: the container, and its conmon monitor
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD}.slice/"
        f"crio-{CID}.scope",
        KubeletCgroup(UID, CID, "crio", "burstable"),
    ),
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD}.slice/"
        f"crio-conmon-{CID}.scope",
        KubeletCgroup(UID, CID, "crio", "burstable", conmon=True),
    ),
    # Docker via cri-dockerd
    (
        f"/kubepods.slice/kubepods-pod{SD}.slice/docker-{CID}.scope",
        KubeletCgroup(UID, CID, "docker", "guaranteed"),
    ),
    # cgroupfs driver: runtime not visible, QoS from the parent directory
    (f"/kubepods/burstable/pod{UID}/{CID}", KubeletCgroup(UID, CID, "", "burstable")),
    (f"/kubepods/besteffort/pod{UID}/{CID}", KubeletCgroup(UID, CID, "", "besteffort")),
    (f"/kubepods/pod{UID}/{CID}", KubeletCgroup(UID, CID, "", "guaranteed")),
    (f"/kubepods/burstable/pod{UID}/crio-{CID}", KubeletCgroup(UID, CID, "crio", "burstable")),
    # the pod-level cgroup itself
    (f"/kubepods/burstable/pod{UID}", KubeletCgroup(UID, "", "", "burstable")),
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD}.slice",
        KubeletCgroup(UID, "", "", "burstable"),
    ),
    # kind: the whole tree under the kubelet's own slice
    (
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{SD}.slice/cri-containerd-{CID}.scope",
        KubeletCgroup(UID, CID, "containerd", "besteffort"),
    ),
    # Docker-in-Docker style nesting, cgroupfs driver
    (
        f"/docker/{'b' * 64}/kubepods/burstable/pod{UID}/{CID}",
        KubeletCgroup(UID, CID, "", "burstable"),
    ),
    # a sub-cgroup the container made inside its own
    (
        f"/kubepods.slice/kubepods-pod{SD}.slice/cri-containerd-{CID}.scope/init.scope",
        KubeletCgroup(UID, CID, "containerd", "guaranteed"),
    ),
    # not pods
    ("/", None),
    ("/system.slice/containerd.service", None),
    ("/kubepods.slice", None),
    ("/kubepods.slice/kubepods-burstable.slice", None),
    ("/user.slice/user-1000.slice/session-2.scope", None),
    (f"/somewhere/pod{UID}/{CID}", None),  # pod-shaped but not under kubepods
    (f"/kubepods.slice/kubepods-pod{SD[:-1]}.slice", None),  # truncated uid
]


@pytest.mark.parametrize(("path", "expected"), CASES)
def test_parse_kubelet_cgroup(path, expected):
    assert parse_kubelet_cgroup(path) == expected


def test_unknown_container_segment_counts_as_the_pod():
    path = f"/kubepods/burstable/pod{UID}/something-else"
    assert parse_kubelet_cgroup(path) == KubeletCgroup(UID, "", "", "burstable")
