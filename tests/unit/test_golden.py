"""The whole /metrics of a fixed node against tests/golden/*.txt (see tests/golden).

A failure here is a change users see: a renamed family or label, another
order, another HELP text. If it is intended, refresh with `make golden` and
commit the new files with the change that explains them.
"""

from __future__ import annotations

import difflib

import pytest

from tests.golden import FORMATS, HERE, scrape_fixed_node


@pytest.fixture(scope="module")
def bodies(tmp_path_factory):
    return scrape_fixed_node(tmp_path_factory.mktemp("cgroup"))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_metrics_match_the_golden_file(bodies, name):
    expected = (HERE / name).read_text()
    if bodies[name] != expected:
        diff = difflib.unified_diff(
            expected.splitlines(), bodies[name].splitlines(), f"golden/{name}", "now", lineterm=""
        )
        hint = "/metrics differs from the golden file (make golden to refresh):\n"
        pytest.fail(hint + "\n".join(diff))


def test_the_golden_node_covers_every_identity_kind(bodies):
    text = bodies["metrics.txt"]
    assert 'namespace="shop",pod="checkout-7d9f8b6c5-x2x4z"' in text  # a pod's container
    assert 'cgroup="/system.slice/sshd.service"' in text  # a host service
    assert "kubepods-burstable-pod5e4d3c2b" in text  # a pod not known yet: by path
    assert r"we\"ird\\name.service" in text  # escaping
    assert 'peer_pod="cart-0"' in text  # pod-to-pod flows
    assert text.count("<volatile>") >= 6  # machine values masked, not dropped
