"""Decode the kubelet's cgroup paths: which pod and which container a cgroup is.

Pure functions, no I/O. Handles:
  - the systemd cgroup driver:
      /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/<ctr>.scope
    (Guaranteed pods have no QoS slice; the uid uses _ instead of -);
  - the cgroupfs driver: /kubepods/burstable/pod<uid>/<ctr>;
  - container runtimes by their scope names: containerd (cri-containerd-<id>),
    CRI-O (crio-<id>, and crio-conmon-<id>, its monitor, which is not the
    container), Docker (docker-<id>), and bare 64-hex ids (cgroupfs driver);
  - trees under another prefix (kind nodes: /kubelet.slice/kubelet-kubepods.slice/...,
    Docker-in-Docker: /docker/<id>/kubepods/...) and sub-cgroups a container
    creates inside its own (counted as that container).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SYSTEMD_POD = re.compile(
    r"^(?:[a-z0-9_]+-)?kubepods(?:-(burstable|besteffort))?-pod([0-9a-f_]{36})\.slice$"
)
_CGROUPFS_POD = re.compile(r"^pod([0-9a-f-]{36})$")
_CONTAINER = (
    (re.compile(r"^cri-containerd-([0-9a-f]{64})\.scope$"), "containerd", False),
    (re.compile(r"^crio-conmon-([0-9a-f]{64})(?:\.scope)?$"), "crio", True),
    (re.compile(r"^crio-([0-9a-f]{64})(?:\.scope)?$"), "crio", False),
    (re.compile(r"^docker-([0-9a-f]{64})\.scope$"), "docker", False),
    (re.compile(r"^([0-9a-f]{64})$"), "", False),
)


@dataclass(frozen=True)
class KubeletCgroup:
    pod_uid: str  # canonical form, with dashes
    container_id: str  # "" for the pod-level cgroup itself
    runtime: str  # containerd | crio | docker | "" (not visible in the path)
    qos: str  # guaranteed | burstable | besteffort
    conmon: bool = False  # CRI-O's monitor process for the container, not the container


def _find_pod(segments: list[str]) -> tuple[int, str, str] | None:
    """(index of the pod segment, uid, qos) or None."""
    for i, segment in enumerate(segments):
        match = _SYSTEMD_POD.match(segment)
        if match:
            return i, match.group(2).replace("_", "-"), match.group(1) or "guaranteed"
        match = _CGROUPFS_POD.match(segment)
        if match and any("kubepods" in s for s in segments[:i]):
            parent = segments[i - 1] if i else ""
            qos = parent if parent in ("burstable", "besteffort") else "guaranteed"
            return i, match.group(1), qos
    return None


def parse_kubelet_cgroup(path: str) -> KubeletCgroup | None:
    """The pod/container a cgroup v2 (or v1) path belongs to, or None if not a pod's."""
    segments = [s for s in path.split("/") if s]
    found = _find_pod(segments)
    if found is None:
        return None
    index, uid, qos = found
    if index + 1 < len(segments):
        segment = segments[index + 1]
        for pattern, runtime, conmon in _CONTAINER:
            match = pattern.match(segment)
            if match:
                return KubeletCgroup(uid, match.group(1), runtime, qos, conmon)
    return KubeletCgroup(uid, "", "", qos)
