"""Golden /metrics: the whole exposition of a fixed node, byte for byte.

Like node_exporter's end-to-end test: a fixed cgroup tree (a systemd service,
two pod containers, a pending pod, names that need escaping), in-memory kernel
maps with fixed counts (tests/bpf_maps.py), the real sources, the agent's
collect and the real HTTP server, scraped as Prometheus does in the text and
OpenMetrics formats. Any rename, label change or order change in the output
shows as a diff against tests/golden/*.txt. No root, no BPF, a second or two.

Samples within a family are compared sorted (their order follows kernel
hash order and cgroup inode numbers); family order is compared as is.
Values that belong to the machine, not to orb8 (the version and kernel in
orb8_build_info, collect durations, the bpf_stats sysctl, process_*) are
replaced by `<volatile>`: their names, labels and order stay checked.

Refresh after an intended change, then review the diff:

    .venv/bin/python -m tests.golden        # or: make golden
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.request
from pathlib import Path

from exporter.agent import Agent
from exporter.identity import CgroupTree, Resolver
from exporter.identity.kubernetes import PodInfo
from exporter.registry import load_settings
from exporter.sources.network.source import TCP_MAP, TRAFFIC_MAP, NetworkSource
from exporter.sources.syscalls import native_syscall_numbers
from exporter.sources.syscalls.source import SecurityOptions, SyscallSource
from tests.bpf_maps import InMemoryMaps, encode_flow_key
from tests.helpers import free_port

HERE = Path(__file__).resolve().parent
FORMATS = {
    "metrics.txt": "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "metrics.openmetrics.txt": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
}
VOLATILE_FAMILIES = ("orb8_collect_duration_seconds", "orb8_bpf_stats_enabled", "process_")
VOLATILE_LINE = re.compile(
    r"^(?P<series>(?:" + "|".join(VOLATILE_FAMILIES) + r")\S*(?:\{[^}]*\})?) \S+$"
)

POD_UID = "0f6c4b1e-2a5d-4c1f-9b8e-7d3a1c2b4e5f"
PENDING_UID = "5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716"
APP_ID = "a" * 64
SIDECAR_ID = "b" * 64
PEER_UID = "11111111-2222-3333-4444-555555555555"
PEER_IP, POD_IP = "198.18.0.20", "198.18.0.10"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pod_dir(uid: str) -> str:
    burstable = "kubepods.slice/kubepods-burstable.slice"
    return f"{burstable}/kubepods-burstable-pod{uid.replace('-', '_')}.slice"


def make_tree(root: Path) -> dict[str, int]:
    """The node's cgroups; {name: cgroup id (the directory's inode)}."""
    paths = {
        "sshd": "system.slice/sshd.service",
        "odd": 'system.slice/we"ird\\name.service',
        "app": f"{pod_dir(POD_UID)}/cri-containerd-{APP_ID}.scope",
        "sidecar": f"{pod_dir(POD_UID)}/cri-containerd-{SIDECAR_ID}.scope",
        "pending": f"{pod_dir(PENDING_UID)}/cri-containerd-{'c' * 64}.scope",
        "peer": f"{pod_dir(PEER_UID)}/cri-containerd-{'d' * 64}.scope",
    }
    ids = {}
    for name, path in paths.items():
        (root / path).mkdir(parents=True)
        ids[name] = os.stat(root / path).st_ino
    return ids


PODS = {
    POD_UID: PodInfo(
        uid=POD_UID,
        namespace="shop",
        name="checkout-7d9f8b6c5-x2x4z",
        node="node-1",
        containers={APP_ID: "app", SIDECAR_ID: "istio-proxy"},
        all_started=True,
        ips=(POD_IP,),
        owner_kind="ReplicaSet",
        owner_name="checkout-7d9f8b6c5",
    ),
    PEER_UID: PodInfo(
        uid=PEER_UID,
        namespace="shop",
        name="cart-0",
        node="node-1",
        containers={"d" * 64: "cart"},
        all_started=True,
        ips=(PEER_IP,),
        owner_kind="StatefulSet",
        owner_name="cart",
    ),
}


def fill_maps(syscalls: InMemoryMaps, network: InMemoryMaps, ids: dict[str, int]) -> None:
    nr = native_syscall_numbers()
    for slot in range(255, -1, -1):
        syscalls.push("syscall_free_slots", slot)
    for name, counts in {
        "sshd": {"read": 120, "write": 80, "getpid": 3},
        "odd": {"openat": 7},
        "app": {"read": 5000, "write": 4000, "epoll_pwait": 900, "ptrace": 2},
        "sidecar": {"read": 700, "sendto": 300, "unshare": 1},
        "pending": {"execve": 1, "getpid": 1},
    }.items():
        for syscall, n in counts.items():
            syscalls.count_syscall(ids[name], nr[syscall], n)
    syscalls.set("dangerous_counts", [2, 1], cgroup_id=ids["app"], nr=nr["ptrace"])
    syscalls.set("dangerous_counts", [1, 0], cgroup_id=ids["sidecar"], nr=nr["unshare"])

    egress, ingress, tcp, udp, ipv4, ipv6 = 1, 0, 0, 1, 0, 1
    for name, direction, protocol, family, values in (
        ("app", egress, tcp, ipv4, [150000, 120]),
        ("app", ingress, tcp, ipv4, [90000, 100]),
        ("app", egress, udp, ipv6, [2800, 28]),
        ("sshd", ingress, tcp, ipv4, [4096, 12]),
    ):
        network.set(
            TRAFFIC_MAP,
            values,
            cgroup_id=ids[name],
            direction=direction,
            protocol=protocol,
            family=family,
        )
    for event, count in ((0, 4), (2, 1), (4, 3)):  # opened as client, RST sent, retransmits
        network.set(TCP_MAP, [count], cgroup_id=ids["app"], event=event)
    for address, direction, values in (
        (PEER_IP, egress, [150000, 120]),
        ("127.0.0.1", egress, [600, 6]),
        ("203.0.113.7", ingress, [90000, 100]),
    ):
        raw = encode_flow_key(ids["app"], ipaddress.ip_address(address), tcp, direction)
        network.hashes["network_flows"][raw] = values


def scrape_fixed_node(root: Path) -> dict[str, str]:
    """{golden file name: the normalised body of /metrics in its format}."""
    clock = Clock()
    ids = make_tree(root)
    resolver = Resolver(CgroupTree(root, clock=clock), pods=lambda: PODS, clock=clock)
    syscalls = SyscallSource(
        resolver,
        slots=256,
        deleted_grace=60.0,
        clock=clock,
        security=SecurityOptions(dangerous=("ptrace", "unshare"), exclude_self=False),
    )
    network = NetworkSource(resolver, clock=clock, node_ips=["198.18.1.1"])
    syscall_maps, network_maps = InMemoryMaps(), InMemoryMaps()
    fill_maps(syscall_maps, network_maps, ids)
    syscalls.use_maps(syscall_maps)
    network.use_maps(network_maps)

    settings = load_settings({"listen": f"127.0.0.1:{free_port()}"}, environ={})
    agent = Agent(settings, sources=[syscalls, network])
    agent.resolver = resolver
    agent.up = {"syscalls": True, "network": True}
    agent.bind()
    assert agent.server is not None
    agent.server.start()
    try:
        host, port = agent.server.address[:2]
        bodies = {}
        for name, accept in FORMATS.items():
            request = urllib.request.Request(
                f"http://{host}:{port}/metrics", headers={"Accept": accept}
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                bodies[name] = normalise(response.read().decode())
        return bodies
    finally:
        agent.close()


def normalise(body: str) -> str:
    lines: list[str] = []
    samples: list[str] = []  # of the current family
    for line in [*body.splitlines(), "# end"]:
        if line.startswith("#"):
            # Samples within a family follow the kernel's hash order and the
            # cgroups' inode numbers, which no two machines share: compared
            # sorted. Family order, names, labels and values stay exact.
            lines.extend(sorted(samples))
            samples.clear()
            if line != "# end":
                lines.append(line)
            continue
        if line.startswith("orb8_build_info{"):
            line = re.sub(r'(version|kernel)="[^"]*"', r'\1="<volatile>"', line)
        match = VOLATILE_LINE.match(line)
        if match:
            line = f"{match['series']} <volatile>"
        samples.append(line)
    return "\n".join(lines) + "\n"
