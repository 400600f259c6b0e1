"""Churn cannot grow orb8 without limit (issue 18, items 3 and 5): every table
keyed by something a tenant creates (cgroup ids, workloads, evidence waiting
for a walk) has a capacity, a metric for its fill, and ages out.

Real files: cgroups are directories of a temporary tree (their inode is the
id, as on cgroup2) and baselines are saved to and loaded from a real state
directory. Clocks are injected.
"""

from __future__ import annotations

import ctypes as ct
import json
import logging
import os
from pathlib import Path

import pytest

from exporter.identity import CgroupTree, Resolver
from exporter.kernel import maps
from exporter.model import Identity
from exporter.selfmetrics import identity_families
from exporter.sources.lifecycle import CarriedCounts
from exporter.sources.syscalls import native_syscall_numbers
from exporter.sources.syscalls.baseline import Baselines
from exporter.sources.syscalls.source import DEFERRED_CAPACITY, SecurityOptions, SyscallSource
from tests.bpf_maps import DangerousEvent, InMemoryMaps, RingBuffer
from tests.unit.test_source_seams import Clock, value

NR = native_syscall_numbers()


def cgroup(root: Path, name: str) -> int:
    (root / name).mkdir()
    return os.stat(root / name).st_ino


def source_with(tmp_path: Path, clock: Clock, wall: Clock, **security) -> SyscallSource:
    root = tmp_path / "cgroups"
    root.mkdir()
    resolver = Resolver(CgroupTree(root, clock=clock), max_age=1, clock=clock)
    source = SyscallSource(
        resolver,
        slots=64,
        deleted_grace=5,
        clock=clock,
        security=SecurityOptions(dangerous=("ptrace",), exclude_self=False, **security),
    )
    source.baselines.clock = wall  # baselines keep Unix time, the rest monotonic
    maps = InMemoryMaps()
    for slot in range(63, -1, -1):
        maps.push("syscall_free_slots", slot)
    source.use_maps(maps)
    return source


def test_baselines_of_workloads_not_seen_are_dropped_and_their_number_is_capped(tmp_path):
    clock, wall = Clock(), Clock()
    wall.now = 1.7e9
    state = tmp_path / "state"
    source = source_with(
        tmp_path, clock, wall, state_dir=state, baseline_capacity=5, baseline_forget_after=100
    )
    maps, root = source._maps, source.resolver.tree.root
    steady = cgroup(root, "steady.service")
    maps.count_syscall(steady, NR["read"], 1)
    source.collect()
    for i in range(8):  # a burst of short-lived units, each seen once
        maps.count_syscall(cgroup(root, f"job{i}.service"), NR["read"], 1)
    maps.count_syscall(steady, NR["read"], 1)  # a running workload is seen every collect
    clock.now += 0.1
    wall.now += 0.1
    families = source.collect()
    assert value(families, "orb8_table_entries", table="baselines") == 5
    assert value(families, "orb8_table_capacity", table="baselines") == 5
    # Running workloads are never evicted by a burst of new ones: of the
    # eight, four are learned now, the rest once there is room.
    assert "cgroup:/steady.service" in source.baselines.workloads
    assert (source.baselines.evicted, source.baselines.refused) == (0, 4)
    wall.now += 1
    clock.now += 1
    maps.count_syscall(steady, NR["read"], 1)
    maps.count_syscall(cgroup(root, "late.service"), NR["read"], 1)
    source.collect()
    assert "cgroup:/late.service" in source.baselines.workloads
    assert source.baselines.evicted == 1, "the least recently seen job made room"

    # The jobs are not seen again; the steady service is, every collect.
    for _ in range(3):
        wall.now += 40
        clock.now += 40
        maps.count_syscall(steady, NR["read"], 1)
        families = source.collect()
    assert list(source.baselines.workloads) == ["cgroup:/steady.service"]
    assert value(families, "orb8_table_entries", table="baselines") == 1

    source.baselines.save()
    saved = json.loads((state / "baselines.json").read_text())["workloads"]
    assert list(saved) == ["cgroup:/steady.service"]
    assert saved["cgroup:/steady.service"]["last_seen"] == wall.now
    # A restart keeps what was seen recently and drops what was not.
    again = Baselines(600, state, clock=wall, forget_after=100)
    assert list(again.workloads) == ["cgroup:/steady.service"]
    wall.now += 101
    assert list(Baselines(600, state, clock=wall, forget_after=100).workloads) == []


def test_a_state_file_larger_than_the_capacity_keeps_the_most_recently_seen(tmp_path):
    workloads = {
        f"cgroup:/u{i}": {"first_seen": 1.0, "last_seen": float(i), "syscalls": ["read"]}
        for i in range(10)
    }
    (tmp_path / "baselines.json").write_text(json.dumps({"version": 1, "workloads": workloads}))
    baselines = Baselines(600, tmp_path, clock=lambda: 50.0, capacity=3, forget_after=1e6)
    assert list(baselines.workloads) == ["cgroup:/u7", "cgroup:/u8", "cgroup:/u9"]


def test_resolver_ids_are_capped_least_recently_asked_first_and_reported(tmp_path):
    clock = Clock()
    resolver = Resolver(CgroupTree(tmp_path, clock=clock), clock=clock, capacity=4)
    ids = [cgroup(tmp_path, f"c{i}.scope") for i in range(10)]
    clock.now += 1
    for cgroup_id in ids:
        assert resolver.resolve(cgroup_id, clock.now - 1).identity.cgroup.startswith("/c")
    assert resolver.entries == 4 and resolver.evicted == 6
    assert resolver.tree.scans == 1, "one walk for all ten new ids"
    families = identity_families(resolver, None)
    assert value(families, "orb8_table_entries", table="identity") == 4
    assert value(families, "orb8_table_capacity", table="identity") == 4
    assert value(families, "orb8_cgroup_walks_total") == 1
    # A forgotten id that still exists is simply looked up again.
    assert resolver.resolve(ids[0], clock.now).identity == Identity(cgroup="/c0.scope")
    # Ids nobody asks about are forgotten after forget_after.
    clock.now += resolver.forget_after + 1
    resolver.refresh()
    assert resolver.entries == 0


def test_evidence_of_new_cgroups_waits_for_one_batched_walk_and_a_full_queue_loses_nothing(
    tmp_path, caplog
):
    clock, wall = Clock(), Clock()
    source = source_with(tmp_path, clock, wall, log_per_minute=100_000)
    source._read_event = maps.record_reader(
        {b"dangerous_events": RingBuffer(DangerousEvent)}, "dangerous_events"
    )
    resolver, root = source.resolver, source.resolver.tree.root
    resolver.refresh()  # the first walk
    walks = resolver.tree.scans
    clock.now += 0.1
    new = cgroup(root, "new.scope")
    caplog.set_level(logging.WARNING, logger="orb8.evidence")

    def record(cgroup_id: int) -> None:
        event = DangerousEvent(cgroup_id=cgroup_id, nr=NR["ptrace"], tgid=7, pid=7, comm=b"sh")
        source._on_event(None, bytes(event), ct.sizeof(event))

    for _ in range(DEFERRED_CAPACITY + 1):
        record(new)
    assert resolver.tree.scans == walks, "no walk per record, nor before walk_interval"
    lines = [json.loads(r.getMessage()) for r in caplog.records]
    # Full: the oldest record is logged at once with its id, not lost.
    assert [(line["cgroup"], line["cgroup_id"]) for line in lines] == [("<unresolved>", new)]

    clock.now += resolver.walk_interval
    source._drain_deferred()  # what the reader does after each poll
    assert resolver.tree.scans == walks + 1, "one walk resolved everything that waited"
    lines = [json.loads(r.getMessage()) for r in caplog.records]
    assert len(lines) == DEFERRED_CAPACITY + 1
    assert {line["cgroup"] for line in lines[1:]} == {"/new.scope"}
    assert len(source._deferred) == 0

    # At shutdown, records still waiting are logged too (one walk names them).
    clock.now += 0.1
    other = cgroup(root, "other.scope")
    record(other)
    assert len(source._deferred) == 1
    source.close()
    last = json.loads(caplog.records[-1].getMessage())
    assert (last["cgroup"], last["cgroup_id"]) == ("/other.scope", other)


@pytest.mark.parametrize("absent", [10, 5000])
def test_carried_series_of_absent_identities_are_capped(absent):
    carried = CarriedCounts(absent_capacity=100)
    for i in range(absent):
        for nr in range(3):  # three series each
            carried.add((Identity(cgroup=f"/job{i}"), nr), 1)
    carried.expire(present=(), now=0.0)
    assert len(carried) <= 100 and len(carried) == min(3 * absent, 99)
    carried.add((Identity(cgroup="/later"), 0), 1)
    carried.expire(present=(), now=1.0)
    assert len(carried) == min(3 * absent + 1, 100), "the longest absent went first"
    assert ((Identity(cgroup="/later"), 0), [1]) in carried.items([Identity(cgroup="/later")])
