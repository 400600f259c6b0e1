"""FlowLedger: flow counters stay monotonic through LRU evictions, idle
expiry, relabelling and cgroup retirement; peer series stay bounded."""

from __future__ import annotations

import ipaddress
import random

import pytest

from exporter.model import UNRESOLVED, Identity
from exporter.sources.network.flows import EXTERNAL, OTHER, FlowLedger, Peer
from tests.bpf_maps import encode_flow_key

EGRESS, INGRESS, UDP, TCP = 1, 0, 1, 0
WEB = Identity("shop", "web", "app", "")
DB = Identity("shop", "db", "app", "")


class Kernel:
    """A stand-in for the kernel flow map: {raw key: [bytes, packets]}."""

    def __init__(self) -> None:
        self.entries: dict[bytes, list[int]] = {}
        self.deletes: list[bytes] = []

    def add(self, cgroup_id: int, address: str, nbytes: int, protocol=UDP, direction=EGRESS):
        key = encode_flow_key(cgroup_id, ipaddress.ip_address(address), protocol, direction)
        entry = self.entries.setdefault(key, [0, 0])
        entry[0] += nbytes
        entry[1] += 1
        return key

    def rows(self):
        for raw, (nbytes, npackets) in self.entries.items():
            cgroup_id = int.from_bytes(raw[:8], "little")
            family, protocol, direction = raw[24], raw[25], raw[26]
            yield (raw, cgroup_id, raw[8:24], family, protocol, direction, nbytes, npackets)

    def delete(self, raw: bytes):
        self.deletes.append(raw)
        entry = self.entries.pop(raw, None)
        return None if entry is None else (entry[0], entry[1])


class World:
    """Pods by address, identities by cgroup, a clock: what the source provides."""

    def __init__(self, peer_limit: int = 2, idle: float = 300.0) -> None:
        self.kernel = Kernel()
        self.ledger = FlowLedger(peer_limit, idle)
        self.pods: dict[str, tuple[str, str]] = {}
        self.identities: dict[int, Identity] = {1: WEB, 2: DB}
        self.now = 0.0

    def classify(self, address) -> Peer:
        owner = self.pods.get(str(address))
        return Peer("pod", *owner) if owner else EXTERNAL

    def collect(self) -> dict:
        self.now += 1
        self.ledger.update(
            list(self.kernel.rows()),
            self.now,
            self.identities,
            self.classify,
            set(self.pods.values()),
            self.kernel.delete,
        )
        series, self.active = self.ledger.series(self.identities)
        return {
            (identity, direction, protocol, peer): value
            for (identity, (direction, protocol, peer)), value in series.items()
        }


def total(series: dict, identity: Identity) -> int:
    return sum(v[0] for (i, *_), v in series.items() if i == identity)


def test_counts_per_peer_and_active_entries():
    world = World()
    world.pods = {"10.0.0.2": ("shop", "db")}
    world.kernel.add(1, "10.0.0.2", 100)
    world.kernel.add(1, "10.0.0.2", 50, direction=INGRESS)
    world.kernel.add(1, "203.0.113.9", 7)
    series = world.collect()
    assert series == {
        (WEB, EGRESS, UDP, Peer("pod", "shop", "db")): [100, 1],
        (WEB, INGRESS, UDP, Peer("pod", "shop", "db")): [50, 1],
        (WEB, EGRESS, UDP, EXTERNAL): [7, 1],
    }
    assert world.active == {WEB: 3}


def test_evicted_entry_keeps_its_counts_and_restarts_from_zero():
    world = World()
    key = world.kernel.add(1, "203.0.113.9", 100)
    assert world.collect()[(WEB, EGRESS, UDP, EXTERNAL)] == [100, 1]
    world.kernel.entries.pop(key)  # LRU eviction
    assert world.collect()[(WEB, EGRESS, UDP, EXTERNAL)] == [100, 1]
    assert world.ledger.vanished == 1 and world.ledger.deleted == 0
    assert world.active == {WEB: 0}
    world.kernel.add(1, "203.0.113.9", 30)  # the flow resumes: a fresh entry
    assert world.collect()[(WEB, EGRESS, UDP, EXTERNAL)] == [130, 2]


def test_idle_entries_are_deleted_with_their_final_counts():
    world = World(idle=10)
    key = world.kernel.add(1, "203.0.113.9", 100)
    world.collect()
    world.kernel.entries[key][0] += 5
    world.now += 20
    world.collect()
    assert world.kernel.deletes == []  # it changed since the last read: not idle
    world.now += 20
    series = world.collect()  # unchanged for 21 s: deleted
    assert world.kernel.deletes == [key]
    assert series[(WEB, EGRESS, UDP, EXTERNAL)] == [105, 1]
    assert world.ledger.deleted == 1 and world.active == {WEB: 0}


def test_peer_limit_names_the_biggest_and_folds_the_rest_into_other():
    world = World(peer_limit=2)
    world.pods = {f"10.0.0.{i}": ("shop", f"p{i}") for i in range(1, 6)}
    for i in range(1, 6):
        world.kernel.add(1, f"10.0.0.{i}", 10 * i)
    series = world.collect()
    named = {peer.pod for (_, _, _, peer) in series if peer.peer_class == "pod"}
    assert named == {"p5", "p4"}
    assert series[(WEB, EGRESS, UDP, OTHER)] == [10 + 20 + 30, 3]
    assert len(series) == 3

    # More traffic to p1 stays in "other": admission is sticky.
    world.kernel.add(1, "10.0.0.1", 1000)
    series = world.collect()
    assert series[(WEB, EGRESS, UDP, OTHER)] == [1060, 4]
    assert len(series) == 3


def test_gone_peer_frees_its_slot_and_other_never_shrinks():
    world = World(peer_limit=1)
    world.pods = {"10.0.0.1": ("shop", "a"), "10.0.0.2": ("shop", "b")}
    world.kernel.add(1, "10.0.0.1", 500)
    world.kernel.add(1, "10.0.0.2", 100)
    series = world.collect()
    assert series[(WEB, EGRESS, UDP, Peer("pod", "shop", "a"))] == [500, 1]
    assert series[(WEB, EGRESS, UDP, OTHER)] == [100, 1]

    del world.pods["10.0.0.1"]  # pod a deleted and expired
    series = world.collect()
    assert (WEB, EGRESS, UDP, Peer("pod", "shop", "a")) not in series
    # b takes the free slot from now on; what it sent while "other" stays there.
    assert series[(WEB, EGRESS, UDP, OTHER)] == [100, 1]
    assert series[(WEB, EGRESS, UDP, Peer("pod", "shop", "b"))] == [0, 0]
    # a's address is no pod any more: its entry counts on as "external".
    assert series[(WEB, EGRESS, UDP, EXTERNAL)] == [0, 0]
    world.kernel.add(1, "10.0.0.2", 40)
    world.kernel.add(1, "10.0.0.1", 3)
    series = world.collect()
    assert series[(WEB, EGRESS, UDP, Peer("pod", "shop", "b"))] == [40, 1]
    assert series[(WEB, EGRESS, UDP, EXTERNAL)] == [3, 1]


def test_address_that_becomes_a_pod_keeps_the_old_series():
    world = World()
    world.kernel.add(1, "10.0.0.9", 100)
    assert world.collect()[(WEB, EGRESS, UDP, EXTERNAL)] == [100, 1]
    world.pods = {"10.0.0.9": ("shop", "late")}  # the watcher learns the pod
    world.kernel.add(1, "10.0.0.9", 10)
    series = world.collect()
    assert series[(WEB, EGRESS, UDP, EXTERNAL)] == [110, 2]  # up to this read
    assert series[(WEB, EGRESS, UDP, Peer("pod", "shop", "late"))] == [0, 0]
    world.kernel.add(1, "10.0.0.9", 1)
    series = world.collect()
    assert series[(WEB, EGRESS, UDP, EXTERNAL)] == [110, 2]
    assert series[(WEB, EGRESS, UDP, Peer("pod", "shop", "late"))] == [1, 1]


def test_identity_change_moves_the_complete_count():
    world = World()
    pending = Identity(cgroup="/kubepods.slice/x.slice/y.scope")
    world.identities[3] = pending
    world.pods = {"10.0.0.2": ("shop", "db")}
    world.kernel.add(3, "10.0.0.2", 100)
    world.collect()
    world.identities[3] = WEB  # the pod became known
    series = world.collect()
    assert series == {(WEB, EGRESS, UDP, Peer("pod", "shop", "db")): [100, 1]}


@pytest.mark.parametrize(("identity", "kept"), [(UNRESOLVED, True), (DB, True), (WEB, False)])
def test_retired_cgroup_is_carried_where_its_series_continues(identity, kept):
    world = World()
    world.pods = {"10.0.0.2": ("shop", "db")}
    world.identities = {7: identity, 2: DB}
    key = world.kernel.add(7, "10.0.0.2", 100)
    world.kernel.add(7, "203.0.113.1", 5)
    world.kernel.add(2, "203.0.113.1", 1)
    world.collect()
    world.ledger.retire({7}, world.identities, world.kernel.delete)
    assert key in world.kernel.deletes and key not in world.kernel.entries
    del world.identities[7]
    series = world.collect()
    mine = {k[1:]: v for k, v in series.items() if k[0] == identity}
    if identity == UNRESOLVED:
        # <unresolved> gathers many cgroups: no named peers there.
        assert mine == {(EGRESS, UDP, OTHER): [100, 1], (EGRESS, UDP, EXTERNAL): [5, 1]}
    elif identity == DB:
        assert mine[(EGRESS, UDP, Peer("pod", "shop", "db"))] == [100, 1]
        assert mine[(EGRESS, UDP, EXTERNAL)] == [6, 2]
    assert bool(mine) == kept
    # An identity no cgroup has is not exported, but kept: if it comes back
    # (a reused path, late traffic), its series continues from there.
    world.identities[8] = identity
    world.kernel.add(8, "203.0.113.1", 3)
    series = world.collect()
    assert series[(identity, EGRESS, UDP, EXTERNAL)][0] >= 5 + 3


@pytest.mark.parametrize("seed", range(20))
def test_random_histories_never_make_a_series_go_backwards(seed):
    rng = random.Random(seed)
    world = World(peer_limit=2, idle=5)
    addresses = [f"10.0.0.{i}" for i in range(1, 8)] + ["203.0.113.1", "198.51.100.2"]
    previous: dict = {}
    for _ in range(60):
        for _ in range(rng.randrange(4)):
            world.kernel.add(rng.choice([1, 2]), rng.choice(addresses), rng.randrange(1, 500))
        if world.kernel.entries and rng.random() < 0.3:  # LRU eviction
            world.kernel.entries.pop(rng.choice(list(world.kernel.entries)))
        if rng.random() < 0.2:  # pods come and go
            address = rng.choice(addresses[:7])
            if address in world.pods:
                del world.pods[address]
            else:
                world.pods[address] = ("shop", f"pod-{rng.randrange(5)}")
        if rng.random() < 0.2:
            world.now += rng.choice([1, 10])
        series = world.collect()
        live_pods = set(world.pods.values())
        for key, (nbytes, npackets) in previous.items():
            peer = key[3]
            if key in series:
                assert series[key][0] >= nbytes and series[key][1] >= npackets, key
            else:  # only the series of a peer pod that is gone may disappear
                assert peer.peer_class == "pod" and (peer.namespace, peer.pod) not in live_pods
        for identity in (WEB, DB):
            peers = {k[3] for k in series if k[0] == identity and k[3].peer_class == "pod"}
            assert len(peers) <= 2  # never more named peers than the limit
        previous = {key: list(value) for key, value in series.items()}


def test_each_flow_is_classified_once_per_generation():
    world = World()
    world.kernel.add(1, "203.0.113.9", 100)
    world.kernel.add(1, "203.0.113.9", 100, direction=INGRESS)
    calls: list = []

    def classify(address):
        calls.append(address)
        return EXTERNAL

    def collect(generation):
        rows = list(world.kernel.rows())
        ledger = world.ledger
        ledger.update(rows, 1.0, world.identities, classify, set(), world.kernel.delete, generation)

    collect(1)
    collect(1)
    assert len(calls) == 2  # two entries, classified once each
    collect(2)  # pods or node addresses changed: classify again
    assert len(calls) == 4
