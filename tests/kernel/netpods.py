"""Two "pods" on the real kernel: network namespaces joined by a veth pair,
each with a kubelet-shaped cgroup, and workloads that run inside both.

    pods = PodPair(cgroup2_root); pods.setup()
    proc = pods.spawn(pods.a, "udp-send", ...)     # in A's cgroup and netns
    ...
    pods.cleanup()                                  # always, even on failure

Everything gets a random suffix, addresses come from 198.18.0.0/15 and
fd00::/8, and the cgroup tree lives under its own top-level prefix
(`/orb8-net-<hex>/kubepods.slice/...`, like a kind node's
`/kubelet.slice/...`), so nothing collides with other tests or the host.

Run as a script, this file is the workload itself:

    netpods.py CGROUP_DIR NETNS MODE ARGS...
    netpods.py CGROUP_DIR NETNS exec PROGRAM ARGS...

It joins the cgroup (writes its pid to cgroup.procs) and then the network
namespace (setns) before its first packet, so the kernel attributes every
packet of its sockets to that cgroup. The cgroup is joined first because
the v2 mount is not visible from inside `ip netns exec`'s remounted /sys.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


# --- the workload (script mode) --------------------------------------------


def _enter(cgroup: str, netns: str) -> None:
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns {netns}: {os.strerror(err)}")
    os.close(fd)


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _ready(**info) -> None:
    print(json.dumps({"ready": True, **info}), flush=True)


def _udp_recv(bind: str, port: str, count: str) -> dict:
    expected = int(count)
    s = socket.socket(_family(bind), socket.SOCK_DGRAM)
    # Big enough for every datagram even if this process is slow to read:
    # a datagram dropped for lack of buffer would hang the test, not skew it.
    s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
    s.bind((bind, int(port)))
    _ready(port=s.getsockname()[1])
    s.settimeout(30)
    received = total = 0
    while received < expected:
        data = s.recv(65535)
        received += 1
        total += len(data)
    return {"received": received, "bytes": total}


# An IPv6 hop-by-hop and a destination options header, 8 bytes each
# (next header and length are filled in by the kernel; a 4-byte PadN option).
IPV6_EXTENSION = b"\x00\x00\x01\x04\x00\x00\x00\x00"
IPV6_EXTENSION_BYTES = 16


def _socket(address: str, kind: socket.SocketKind, extension_headers: bool) -> socket.socket:
    s = socket.socket(_family(address), kind)
    if extension_headers:  # every packet of this socket carries both headers
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, IPV6_EXTENSION)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, IPV6_EXTENSION)
    return s


def _udp_send(port: str, count: str, size: str, *destinations: str, ext: bool = False) -> dict:
    payload = b"x" * int(size)
    sent = 0
    for destination in destinations:
        s = _socket(destination, socket.SOCK_DGRAM, ext)
        for _ in range(int(count)):
            sent += s.sendto(payload, (destination, int(port))) and 1
        s.close()
    return {"sent": sent}


def _tcp_serve(bind: str, port: str) -> dict:
    listener = socket.socket(_family(bind), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((bind, int(port)))
    listener.listen(8)
    _ready(port=listener.getsockname()[1])
    listener.settimeout(60)
    conn, _ = listener.accept()
    listener.close()
    conn.settimeout(60)
    total, reset = 0, False
    try:
        while chunk := conn.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        reset = True
    conn.close()
    return {"received": total, "reset": reset}


def _tcp_send(destination: str, port: str, nbytes: str, ext: bool = False) -> dict:
    """Connect, send exactly nbytes, half-close, wait for the peer's close."""
    s = _socket(destination, socket.SOCK_STREAM, ext)
    s.settimeout(60)
    s.connect((destination, int(port)))
    chunk = b"y" * (1 << 20)
    left = int(nbytes)
    while left:
        left -= s.send(chunk[: min(left, len(chunk))])
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()
    return {"sent": int(nbytes)}


def _tcp_refused(destination: str, port: str) -> dict:
    s = socket.socket(_family(destination), socket.SOCK_STREAM)
    try:
        s.connect((destination, int(port)))
    except ConnectionRefusedError:
        return {"refused": True}
    finally:
        s.close()
    return {"refused": False}


def _tcp_abort(destination: str, port: str) -> dict:
    """Connect, send a little, then close with SO_LINGER 0: exactly one RST."""
    s = socket.create_connection((destination, int(port)), timeout=30)
    s.sendall(b"z" * 100)
    time.sleep(0.2)  # let it be delivered and acknowledged first
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    return {"aborted": True}


def _sleep(seconds: str) -> dict:
    time.sleep(float(seconds))
    return {}


MODES: dict[str, Callable[..., dict]] = {
    "udp-recv": _udp_recv,
    "udp-send": _udp_send,
    "tcp-serve": _tcp_serve,
    "tcp-send": _tcp_send,
    "udp-send-ext": lambda port, count, size, *to: _udp_send(port, count, size, *to, ext=True),
    "tcp-send-ext": lambda to, port, nbytes: _tcp_send(to, port, nbytes, ext=True),
    "tcp-refused": _tcp_refused,
    "tcp-abort": _tcp_abort,
    "sleep": _sleep,
}


def main(argv: list[str]) -> int:
    cgroup, netns, mode, *args = argv
    _enter(cgroup, netns)
    if mode == "exec":  # any program, e.g. iperf3 for the benchmark
        os.execvp(args[0], args)
    print(json.dumps({"done": True, **MODES[mode](*args)}), flush=True)
    return 0


# --- the test side ---------------------------------------------------------


def run(*cmd: str) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    return result.stdout


# What PodPair needs from the kernel, in order (each step builds on the one
# before), tried in a scratch namespace. Kernel builds differ: one without
# network namespaces, veth or IPv6 fails every network test with this one
# reason instead of an `ip` error somewhere inside setup(). Not a skip: the
# suite allows none, and a machine of this kind has all three.
REQUIREMENTS: tuple[tuple[str, str], ...] = (
    ("network namespaces (CONFIG_NET_NS)", "ip netns add {ns}"),
    ("veth pairs (CONFIG_VETH)", "ip -n {ns} link add {a} type veth peer name {b}"),
    (
        "IPv6 (CONFIG_IPV6, not disabled by ipv6.disable=1 or disable_ipv6)",
        "ip -n {ns} addr add fd00::1/128 dev {a} nodad",
    ),
)


def missing_requirements(
    requirements: tuple[tuple[str, str], ...] = REQUIREMENTS, tag: str | None = None
) -> list[str]:
    """The first requirement this kernel refuses, with `ip`'s reason ([] if none)."""
    tag = tag or uuid.uuid4().hex[:8]
    names = {"ns": f"orb8chk-{tag}", "a": f"o8c{tag}", "b": f"o8d{tag}"}
    try:
        for what, command in requirements:
            try:
                result = subprocess.run(
                    command.format(**names).split(), capture_output=True, text=True, timeout=30
                )
            except FileNotFoundError:
                return [f"{what}: no `ip` command (iproute2)"]
            if result.returncode != 0:
                return [f"{what}: {result.stderr.strip()}"]
        return []
    finally:
        subprocess.run(["ip", "netns", "del", names["ns"]], capture_output=True, timeout=30)


_missing: list[str] | None = None  # checked once per run: the same answer for every test


def require_pod_network() -> None:
    global _missing
    if _missing is None:
        _missing = missing_requirements()
    if _missing:
        raise RuntimeError(f"two-pod network tests cannot run here: missing {_missing[0]}")


@dataclass
class Pod:
    name: str  # Kubernetes pod name
    namespace: str  # Kubernetes namespace
    netns: str
    ifname: str
    ipv4: str
    ipv6: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    container_id: str = field(default_factory=lambda: uuid.uuid4().hex + uuid.uuid4().hex)
    cgroup: Path = Path()
    extra_ips: list[str] = field(default_factory=list)

    def pod_info(self, ips: tuple[str, ...] | None = None):
        from exporter.identity.kubernetes import PodInfo

        return PodInfo(
            uid=self.uid,
            namespace=self.namespace,
            name=self.name,
            node="node-a",
            containers={self.container_id: "app"},
            all_started=True,
            ips=ips if ips is not None else (self.ipv4, self.ipv6),
        )


class Workload:
    """A running netpods.py process; result() waits for its JSON line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        # Unbuffered binary pipes: readline() then never reads past a line,
        # so select() on the pipe stays truthful about the next one.
        assert proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.stdout, self.stderr = proc.stdout, proc.stderr
        self.info: dict = {}

    def wait_ready(self, timeout: float = 15) -> dict:
        self.info = self._line(timeout)
        if not self.info.get("ready"):
            raise RuntimeError(f"workload not ready: {self.info}")
        return self.info

    def result(self, timeout: float = 60) -> dict:
        info = self._line(timeout)
        code = self.proc.wait(timeout=timeout)
        if code != 0 or not info.get("done"):
            raise RuntimeError(f"workload failed ({code}): {info} {self._errors()}")
        return info

    def _line(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("workload did not answer in time")
        line = self.stdout.readline()
        if not line:
            self.proc.wait(timeout=5)
            raise RuntimeError(f"workload exited {self.proc.returncode}: {self._errors()}")
        return json.loads(line)

    def _errors(self) -> str:
        return self.stderr.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        self.stdout.close()
        self.stderr.close()


class PodPair:
    """Pods A and B: two network namespaces joined by one veth pair."""

    def __init__(self, cgroup_root: Path, namespace: str = "shop") -> None:
        self.cgroup_root = cgroup_root
        self.tag = uuid.uuid4().hex[:8]
        self.prefix = cgroup_root / f"orb8-net-{self.tag}"
        second, third = random.choice((18, 19)), random.randrange(256)
        v6 = f"fd00:{random.randrange(1 << 16):x}:{random.randrange(1 << 16):x}:{third:x}"
        self.a = Pod(
            f"client-{self.tag}",
            namespace,
            f"orb8a-{self.tag}",
            f"o8a{self.tag}",
            f"198.{second}.{third}.1",
            f"{v6}::1",
        )
        self.b = Pod(
            f"server-{self.tag}",
            namespace,
            f"orb8b-{self.tag}",
            f"o8b{self.tag}",
            f"198.{second}.{third}.2",
            f"{v6}::2",
        )
        self.v4_prefix = f"198.{second}.{third}"
        self.v6_prefix = v6
        self.workloads: list[Workload] = []
        self.cgroups: list[Path] = []
        self.netns_created: list[str] = []

    # setup / teardown

    def make_cgroup(self, rel: str) -> Path:
        """Create prefix/rel and its missing parents; all removed by cleanup()."""
        path = self.prefix
        for part in [p for p in rel.split("/") if p]:
            path = path / part
            if not path.exists():
                path.mkdir()
                self.cgroups.append(path)
        return path

    def pod_cgroup(self, pod: Pod, container_id: str | None = None) -> Path:
        sd = pod.uid.replace("-", "_")
        scope = f"cri-containerd-{container_id or pod.container_id}.scope"
        return self.make_cgroup(
            f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{sd}.slice/{scope}"
        )

    def setup(self) -> PodPair:
        require_pod_network()
        self.prefix.mkdir()
        self.cgroups.append(self.prefix)
        for pod in (self.a, self.b):
            pod.cgroup = self.pod_cgroup(pod)
            run("ip", "netns", "add", pod.netns)
            self.netns_created.append(pod.netns)
            run("ip", "-n", pod.netns, "link", "set", "lo", "up")
        run(
            "ip", "link", "add", self.a.ifname, "netns", self.a.netns,
            "type", "veth", "peer", "name", self.b.ifname, "netns", self.b.netns,
        )  # fmt: skip
        for pod in (self.a, self.b):
            run("ip", "-n", pod.netns, "addr", "add", f"{pod.ipv4}/24", "dev", pod.ifname)
            run(
                "ip", "-n", pod.netns, "addr", "add", f"{pod.ipv6}/64", "dev", pod.ifname, "nodad"
            )  # fmt: skip
            run("ip", "-n", pod.netns, "link", "set", pod.ifname, "up")
        # Static neighbours: no ARP/ND exchange delays or drops the first packets.
        for pod, peer in ((self.a, self.b), (self.b, self.a)):
            mac = json.loads(run("ip", "-j", "-n", peer.netns, "link", "show", peer.ifname))[0][
                "address"
            ]
            for address in (peer.ipv4, peer.ipv6):
                run(
                    "ip", "-n", pod.netns, "neigh", "replace", address,
                    "lladdr", mac, "dev", pod.ifname, "nud", "permanent",
                )  # fmt: skip
        return self

    def add_addresses(self, pod: Pod, count: int) -> list[str]:
        """More IPv4 addresses on a pod's interface (peers for the cap test)."""
        peer = self.a if pod is self.b else self.b
        mac = json.loads(run("ip", "-j", "-n", pod.netns, "link", "show", pod.ifname))[0]["address"]
        added = []
        for i in range(count):
            address = f"{self.v4_prefix}.{10 + len(pod.extra_ips) + i}"
            run("ip", "-n", pod.netns, "addr", "add", f"{address}/24", "dev", pod.ifname)
            run(
                "ip", "-n", peer.netns, "neigh", "replace", address,
                "lladdr", mac, "dev", peer.ifname, "nud", "permanent",
            )  # fmt: skip
            added.append(address)
        pod.extra_ips.extend(added)
        return added

    def cleanup(self) -> None:
        # Imported here: this module also runs as a script inside network
        # namespaces, where the tests package is not on the path.
        from tests.helpers import remove_cgroup

        errors = []
        for workload in self.workloads:
            workload.kill()
        for netns in self.netns_created:
            try:
                run("ip", "netns", "del", netns)
            except Exception as e:
                errors.append(str(e))
        for path in sorted(self.cgroups, key=lambda p: len(p.parts), reverse=True):
            try:
                remove_cgroup(path)
            except Exception as e:
                errors.append(f"{path}: {e}")
        if errors:
            raise RuntimeError("cleanup failed: " + "; ".join(errors))

    # workloads

    def spawn(
        self,
        pod: Pod,
        mode: str,
        *args: object,
        cgroup: Path | None = None,
        script: str = __file__,
    ) -> Workload:
        """`script` (this module, or another with the same arguments such as
        tests/kernel/dnswork.py) in the pod's cgroup and network namespace."""
        proc = subprocess.Popen(
            [sys.executable, script, str(cgroup or pod.cgroup), pod.netns, mode, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        workload = Workload(proc)
        self.workloads.append(workload)
        return workload

    def pods(self) -> dict:
        return {pod.uid: pod.pod_info() for pod in (self.a, self.b)}

    def snmp(self, pod: Pod, name: str) -> int:
        """A counter of /proc/net/snmp inside the pod's network namespace, e.g. Tcp RetransSegs."""
        table, key = name.split(":")
        lines = [
            line.split()
            for line in run("ip", "netns", "exec", pod.netns, "cat", "/proc/net/snmp").splitlines()
            if line.startswith(table + ":")
        ]
        header, values = lines[0], lines[1]
        return int(values[header.index(key)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
