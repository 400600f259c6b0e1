"""CarriedCounts, the one carry rule (exporter/sources/lifecycle.py), stored dense."""

from __future__ import annotations

import random

import pytest

from exporter.model import UNRESOLVED, Identity
from exporter.sources.lifecycle import CarriedCounts

POD = Identity("ns", "web-0", "app", "")
SERVICE = Identity(cgroup="/system.slice/a.service")


def test_adds_to_one_series_sum_and_only_present_identities_are_exported():
    carried = CarriedCounts()
    carried.add((POD, "egress", 6), 10, 1)
    carried.add((POD, "egress", 6), 5, 2)
    carried.add((SERVICE, "ingress", 17), 2**63, 1)
    carried.add((UNRESOLVED, "ingress", 17), 7, 7)
    assert len(carried) == 3
    assert dict(carried.items([POD])) == {
        (POD, "egress", 6): [15, 3],
        (UNRESOLVED, "ingress", 17): [7, 7],
    }
    assert ((SERVICE, "ingress", 17), [2**63, 1]) in carried.items([SERVICE])


def test_a_negative_count_is_carried_as_zero_not_a_failed_collect():
    carried = CarriedCounts()
    carried.add((POD, 1), 10, -3)
    assert carried.items([POD]) == [((POD, 1), [10, 0])]


def test_an_absent_identity_is_kept_for_a_comeback_then_dropped():
    carried = CarriedCounts(keep=60.0)
    carried.add((POD, 1), 3)
    carried.add((UNRESOLVED, 1), 4)
    assert carried.expire(present=[], now=0.0) == set()
    assert carried.expire(present=[], now=59.0) == set()
    assert dict(carried.items([POD])) == {(POD, 1): [3], (UNRESOLVED, 1): [4]}
    assert carried.expire(present=[POD], now=100.0) == set()  # back: the clock restarts
    assert carried.expire(present=[], now=150.0) == set()
    assert carried.expire(present=[], now=210.0) == {POD}
    assert carried.items([POD]) == [((UNRESOLVED, 1), [4])], "<unresolved> is never dropped"


def test_discard_forgets_the_series_it_is_asked_to():
    carried = CarriedCounts()
    for peer in ("a", "b", "c"):
        carried.add((POD, ("egress", 6, peer)), 1, 1)
    carried.discard(lambda key: key[1][2] == "b")
    assert sorted(key[1][2] for key, _ in carried.items([POD])) == ["a", "c"]


def test_numbers_are_reused_and_every_series_keeps_its_absence_clock():
    """Under churn the numbers of gone identities are reused;
    a random run against a plain dict says nothing is lost or misattributed."""
    rng = random.Random(5)
    carried = CarriedCounts(keep=30.0, absent_capacity=10**6)
    model: dict[tuple, int] = {}
    absent_since: dict[Identity, float] = {}
    pods = [Identity("ns", f"p{i}", "c", "") for i in range(40)]
    for step in range(300):
        now = float(step)
        for _ in range(rng.randrange(4)):
            key = (rng.choice(pods), rng.randrange(5))
            value = rng.randrange(1, 1000)
            carried.add(key, value)
            model[key] = model.get(key, 0) + value
        if rng.random() < 0.1:  # e.g. a flow peer that is gone
            gone = rng.randrange(5)
            carried.discard(lambda key, gone=gone: key[1] == gone)
            model = {k: v for k, v in model.items() if k[1] != gone}
        present = set(rng.sample(pods, 5))
        carried.expire(present, now)
        absent = {key[0] for key in model} - present
        absent_since = {i: absent_since.get(i, now) for i in absent}  # no series: no clock
        for identity in [i for i, since in absent_since.items() if now - since >= 30.0]:
            del absent_since[identity]
            model = {k: v for k, v in model.items() if k[0] != identity}
        assert dict((k, v) for k, (v,) in carried.items(pods)) == model, step
    assert len(carried._identities) <= len(pods), "numbers are reused"
    assert len(carried._rests) <= 5


@pytest.mark.parametrize("series", [1, 3])
def test_a_series_costs_tens_of_bytes_not_hundreds(series):
    """Issue 20: 20,000 series of 2,000 gone pods, as a churning node leaves them."""
    import tracemalloc

    pods = [Identity("ns", f"job-{i:05d}-x7k2p", "worker", "") for i in range(2000)]
    carried = CarriedCounts()
    tracemalloc.start()
    for identity in pods:
        for nr in range(10):
            carried.add((identity, nr), *([12345] * series))
    carried.expire(present=(), now=0.0)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(carried) == 20000
    # The identities themselves are the pods' (not counted here); per series
    # the code and the counters, plus per identity an interner entry.
    assert held / 20000 < 40 + 8 * series
