"""Sources' collect() and retirement against in-memory maps (tests/bpf_maps.py):
the carry rule and the freeing of kernel entries, without loading BPF.

Cgroups are directories of a temporary tree (their inode is the cgroup id,
as on cgroup2). A comeback is a new directory at the same path, created
while the old one still exists so that it gets another id.
"""

from __future__ import annotations

import os
from pathlib import Path

from exporter.identity import CgroupTree, Resolver
from exporter.model import MetricFamily
from exporter.sources.network.source import TCP_MAP, TRAFFIC_MAP, NetworkSource
from exporter.sources.syscalls import native_syscall_numbers
from exporter.sources.syscalls.source import SecurityOptions, SyscallSource
from tests.bpf_maps import InMemoryMaps

GRACE = 5.0
NR = native_syscall_numbers()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def value(families: list[MetricFamily], name: str, **labels: str) -> float | None:
    for family in families:
        if family.name != name:
            continue
        for values, sample in family.samples:
            row = dict(zip(family.labels, values, strict=True))
            if all(row[k] == v for k, v in labels.items()):
                return sample
    return None


def cgroup(root: Path, name: str) -> int:
    path = root / name
    path.mkdir()
    return os.stat(path).st_ino


def replace_cgroup(root: Path, name: str) -> int:
    """Remove /<name> and create a new cgroup at the same path (another id)."""
    (root / name).rename(root / f"{name}.old")
    new_id = cgroup(root, name)
    (root / f"{name}.old").rmdir()
    return new_id


def resolver(root: Path, clock: Clock) -> Resolver:
    return Resolver(CgroupTree(root, clock=clock), max_age=1, forget_after=600, clock=clock)


def syscalls_source(tmp_path: Path, clock: Clock, maps: InMemoryMaps) -> SyscallSource:
    source = SyscallSource(
        resolver(tmp_path, clock),
        slots=8,
        deleted_grace=GRACE,
        clock=clock,
        security=SecurityOptions(dangerous=("ptrace",), exclude_self=False),
    )
    for slot in range(7, -1, -1):
        maps.push("syscall_free_slots", slot)
    source.use_maps(maps)
    return source


def test_syscalls_retirement_frees_the_slot_and_the_series_continues_on_comeback(tmp_path):
    clock, maps = Clock(), InMemoryMaps()
    source = syscalls_source(tmp_path, clock, maps)
    old_id = cgroup(tmp_path, "svc.service")
    maps.count_syscall(old_id, NR["getpid"], 5)
    maps.set("dangerous_counts", [2, 0], cgroup_id=old_id, nr=NR["ptrace"])
    svc = {"cgroup": "/svc.service"}

    first = source.collect()
    assert value(first, "orb8_syscalls_total", syscall="getpid", **svc) == 5
    assert value(first, "orb8_dangerous_syscalls_total", syscall="ptrace", **svc) == 2
    assert value(first, "orb8_bpf_map_entries", map="syscall_slots") == 1

    # The service restarts: the old cgroup is removed, a new one takes its path.
    new_id = replace_cgroup(tmp_path, "svc.service")
    clock.now += 2  # the tree notices the removal (max_age 1)
    source.collect()  # grace starts
    assert len(maps.hashes["syscall_slots"]) == 1
    clock.now += GRACE
    source.collect()  # grace over: retired
    assert maps.hashes["syscall_slots"] == {} and maps.hashes["dangerous_counts"] == {}
    assert maps.stacks["syscall_free_slots"][-1] == 0  # its slot is free again...
    assert maps.arrays["syscall_counts"][0] == 0  # ...and counts from zero

    maps.count_syscall(new_id, NR["getpid"], 3)
    maps.set("dangerous_counts", [1, 0], cgroup_id=new_id, nr=NR["ptrace"])
    after = source.collect()
    # Counters never go backwards: 5 carried + 3 counted by the new cgroup.
    assert value(after, "orb8_syscalls_total", syscall="getpid", **svc) == 8
    assert value(after, "orb8_dangerous_syscalls_total", syscall="ptrace", **svc) == 3
    assert value(after, "orb8_bpf_map_entries", map="syscall_slots") == 1


def test_dangerous_entries_of_empty_idle_cgroups_are_freed_under_pressure(tmp_path):
    clock, maps = Clock(), InMemoryMaps()
    source = SyscallSource(
        resolver(tmp_path, clock),
        slots=8,
        deleted_grace=GRACE,
        clock=clock,
        security=SecurityOptions(
            dangerous=("ptrace", "unshare"), exclude_self=False, dangerous_slots=4
        ),
    )
    source.use_maps(maps)
    empty_id, busy_id = cgroup(tmp_path, "left.scope"), cgroup(tmp_path, "busy.scope")
    (tmp_path / "left.scope" / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    (tmp_path / "busy.scope" / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    for cgroup_id in (empty_id, busy_id):
        maps.set("dangerous_counts", [3, 40], cgroup_id=cgroup_id, nr=NR["ptrace"])
    maps.set("dangerous_counts", [2, 0], cgroup_id=empty_id, nr=NR["unshare"])
    left = {"cgroup": "/left.scope"}

    source.collect()  # 3 of 4 entries: under pressure, idleness starts counting
    clock.now += GRACE
    after = source.collect()  # idle for the grace: the empty cgroup's entries go
    remaining = {int(k["cgroup_id"]) for k in maps.read_hash("dangerous_counts", 4, 2)[0]}
    assert remaining == {busy_id}
    # The series continue from carried counts, and so does a later call.
    assert value(after, "orb8_dangerous_syscalls_total", syscall="ptrace", **left) == 3
    maps.set("dangerous_counts", [1, 0], cgroup_id=empty_id, nr=NR["ptrace"])
    later = source.collect()
    assert value(later, "orb8_dangerous_syscalls_total", syscall="ptrace", **left) == 4
    assert value(later, "orb8_dangerous_syscalls_total", syscall="unshare", **left) == 2
    assert value(later, "orb8_dangerous_evidence_suppressed_total", syscall="ptrace", **left) == 40


def test_dangerous_calls_of_a_full_map_are_exported_under_overflow(tmp_path):
    clock, maps = Clock(), InMemoryMaps()
    source = syscalls_source(tmp_path, clock, maps)
    maps.set("dangerous_overflow", [5, 2], index=NR["ptrace"])
    families = source.collect()
    overflow = {"cgroup": "<overflow>", "syscall": "ptrace", "pod": ""}
    assert value(families, "orb8_dangerous_syscalls_total", **overflow) == 5
    assert value(families, "orb8_dangerous_evidence_suppressed_total", **overflow) == 2


def test_syscalls_counts_of_an_unresolved_cgroup_are_carried_for_good(tmp_path):
    clock, maps = Clock(), InMemoryMaps()
    source = syscalls_source(tmp_path, clock, maps)
    short_id = cgroup(tmp_path, "short.scope")
    (tmp_path / "short.scope").rmdir()  # gone before anyone resolved it
    maps.count_syscall(short_id, NR["getpid"], 4)
    unresolved = {"cgroup": "<unresolved>", "syscall": "getpid"}

    clock.now += 2
    assert value(source.collect(), "orb8_syscalls_total", **unresolved) == 4
    clock.now += GRACE
    source.collect()
    assert maps.hashes["syscall_slots"] == {}
    clock.now += 7200  # longer than any identity's carry keep
    assert value(source.collect(), "orb8_syscalls_total", **unresolved) == 4


def network_source(tmp_path: Path, clock: Clock, maps: InMemoryMaps) -> NetworkSource:
    source = NetworkSource(
        resolver(tmp_path, clock), deleted_grace=GRACE, clock=clock, node_ips=["10.0.0.1"]
    )
    source.use_maps(maps)
    return source


def test_network_retirement_carries_the_final_counts_taken_atomically(tmp_path):
    clock, maps = Clock(), InMemoryMaps()
    source = network_source(tmp_path, clock, maps)
    old_id = cgroup(tmp_path, "web.service")
    egress_udp = {"direction": 1, "protocol": 1, "family": 0}
    raw = maps.set(TRAFFIC_MAP, [1000, 10], cgroup_id=old_id, **egress_udp)
    maps.set(TCP_MAP, [3], cgroup_id=old_id, event=2)  # RST sent
    labels = {"cgroup": "/web.service", "direction": "egress", "protocol": "udp"}

    first = source.collect()
    assert value(first, "orb8_network_bytes_total", family="ipv4", **labels) == 1000
    assert value(first, "orb8_tcp_resets_total", cgroup="/web.service", direction="egress") == 3

    new_id = replace_cgroup(tmp_path, "web.service")
    clock.now += 2
    source.collect()
    # A socket that outlived its cgroup sends one more datagram between the
    # collect's read and the delete: the atomic take returns it.
    maps.late[(TRAFFIC_MAP, raw)] = [100, 1]
    clock.now += GRACE
    source.collect()
    assert maps.hashes[TRAFFIC_MAP] == {} and maps.hashes[TCP_MAP] == {}

    maps.set(TRAFFIC_MAP, [50, 1], cgroup_id=new_id, **egress_udp)
    after = source.collect()
    assert value(after, "orb8_network_bytes_total", family="ipv4", **labels) == 1000 + 100 + 50
    assert value(after, "orb8_network_packets_total", family="ipv4", **labels) == 10 + 1 + 1
    assert value(after, "orb8_tcp_resets_total", cgroup="/web.service", direction="egress") == 3
    assert value(after, "orb8_bpf_map_entries", map=TRAFFIC_MAP) == 1


def test_peer_classes_remembered_are_bounded_whatever_addresses_arrive(tmp_path, monkeypatch):
    import ipaddress

    from exporter.sources.network import source as network

    monkeypatch.setattr(network, "PEER_CACHE_LIMIT", 100)
    source = network_source(tmp_path, Clock(), InMemoryMaps())
    # A scan from 1,000 IPv6 sources: each gets its class, memory stays bounded.
    for i in range(1000):
        peer = source._classify(ipaddress.ip_address(f"2001:db8::{i:x}"))
        assert peer.peer_class == "external"
        assert len(source._peer_cache) <= 100
    assert source._classify(ipaddress.ip_address("127.0.0.1")).peer_class == "loopback"
