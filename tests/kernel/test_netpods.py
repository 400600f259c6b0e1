"""The two-pod harness says what a kernel lacks instead of failing inside setup()."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.kernel.netpods import REQUIREMENTS, missing_requirements

pytestmark = pytest.mark.kernel


def test_pod_network_requirements_are_met_here():
    # Machines of this kind have netns, veth and IPv6: the network tests need them.
    assert missing_requirements() == []


def test_a_refused_requirement_is_named_and_the_scratch_netns_removed():
    # A link kind no kernel has: the real kernel refuses it the way a kernel
    # built without veth refuses "type veth".
    tag = uuid.uuid4().hex[:8]
    missing = missing_requirements(
        (*REQUIREMENTS, ("an imaginary link kind", "ip -n {ns} link add o8zz type orb8nosuchkind")),
        tag=tag,
    )
    assert len(missing) == 1 and missing[0].startswith("an imaginary link kind: "), missing
    assert len(missing[0]) > len("an imaginary link kind: ")  # ip's own reason follows
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"orb8chk-{tag}" not in netns
