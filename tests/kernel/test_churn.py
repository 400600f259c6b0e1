"""Cgroup churn (issue 18, items 3 and 5): real BPF, real cgroups by the hundred.

A program creates and removes cgroups as fast as a busy node does, each with
one process making one dangerous syscall. The resolver must not walk the
cgroup tree per evidence record (each walk reads every cgroup there is): at
most one walk per walk interval, counted by the tree itself, not timed. And
a quiet pod, whose cgroup is new too, still gets its one evidence line with
its identity.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from exporter.identity import CgroupTree, Resolver
from exporter.identity.kubernetes import PodInfo
from exporter.kernel import headers
from exporter.sources.syscalls.source import SecurityOptions, SyscallSource
from tests.helpers import ROOT, remove_cgroup, run_workload, wait_for

PTRACE = 101  # x86_64
EXTRA_CGROUPS = 600
CHURN_SECONDS = 4.0
CHURN_RATE = 300


@pytest.fixture(scope="module")
def churn_binary(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("churn") / "cgroup_churn"
    source = ROOT / "benchmarks" / "cgroup_churn.c"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary


def _evidence(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "orb8.evidence"]


def test_churn_walks_the_tree_at_most_once_per_interval_and_keeps_a_quiet_pods_evidence(
    cgroups, cgroup2_root, workload, churn_binary, caplog
):
    top = cgroups.make()
    extra = [cgroups.make(f"{top.name}/extra/e{i}") for i in range(EXTRA_CGROUPS)]
    churn = cgroups.make(f"{top.name}/churn")
    uid = str(uuid.uuid4())
    container_id = uuid.uuid4().hex * 2
    pod = PodInfo(uid, "shop", "quiet-0", "node-a", {container_id: "app"}, all_started=True)
    pod_dir = (
        f"{top.name}/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice/cri-containerd-{container_id}.scope"
    )
    resolver = Resolver(CgroupTree(cgroup2_root), pods=lambda: {uid: pod}, walk_interval=1.0)
    source = SyscallSource(
        resolver,
        4096,
        60,
        headers=headers.find_kernel_headers(),
        security=SecurityOptions(dangerous=("personality", "ptrace"), log_per_minute=100_000),
    )
    source.start()
    churner = None
    try:
        source.collect()  # the first walk: every extra cgroup is known from here on
        walks_before = resolver.tree.scans
        consumed_before = source._consumed
        caplog.set_level(logging.WARNING, logger="orb8.evidence")
        started = time.monotonic()
        churner = subprocess.Popen(
            [str(churn_binary), str(churn), str(CHURN_RATE), str(CHURN_SECONDS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(CHURN_SECONDS / 2)
        # The quiet pod starts in the middle of the churn: its cgroup is as
        # new to the resolver as the churning ones.
        quiet = cgroups.make(pod_dir)
        quiet_id = quiet.stat().st_ino
        run_workload(workload, quiet, f"{PTRACE}:1:65535")
        churned = int(churner.communicate(timeout=60)[0])
        lines = wait_for(
            lambda: [e for e in _evidence(caplog) if e["pod"] == "quiet-0"],
            what="the quiet pod's evidence line",
        )
        elapsed = time.monotonic() - started
        walks = resolver.tree.scans - walks_before
        consumed = source._consumed - consumed_before
    finally:
        if churner is not None and churner.poll() is None:
            churner.kill()
            churner.wait()
        source.close()
        for directory in extra:
            remove_cgroup(directory)

    assert churned >= CHURN_RATE * CHURN_SECONDS / 4, "the churn ran"
    assert consumed >= churned / 4, "most churned cgroups' records were read"
    # One walk per interval (plus the one in flight when the window closed),
    # where a walk per record would have been hundreds.
    assert 1 <= walks <= elapsed / resolver.walk_interval + 2, (walks, elapsed, churned)
    (line,) = lines
    assert (line["namespace"], line["pod"], line["container"], line["syscall"]) == (
        "shop",
        "quiet-0",
        "app",
        "ptrace",
    )
    assert line["cgroup_id"] == quiet_id
