"""Shared fixtures. Kernel tests use the real kernel: real cgroups under the
v2 mount, real BPF, a real `orb8 run` process scraped over HTTP.

No test in this suite may be skipped: on these root machines with BPF, a
skip means something broke, so any skip fails the session (see the hook at
the bottom).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.identity.cgroupfs import find_cgroup2_mount
from tests.helpers import ROOT, TEST_SYSCALL_SLOTS, CgroupFactory, Exporter


@pytest.fixture
def start_exporter() -> Iterator:
    started: list[Exporter] = []

    def start(
        *args: str, env: dict[str, str] | None = None, cgroup: Path | None = None
    ) -> Exporter:
        flags = list(args) if "--syscall-slots" in args else [*TEST_SYSCALL_SLOTS, *args]
        exporter = Exporter(flags, env, cgroup)
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.stop()


@pytest.fixture(scope="session")
def cgroup2_root() -> Path:
    return find_cgroup2_mount()


@pytest.fixture
def cgroups(cgroup2_root: Path) -> Iterator[CgroupFactory]:
    factory = CgroupFactory(cgroup2_root)
    yield factory
    factory.cleanup()


@pytest.fixture(scope="session")
def workload(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("bin") / "workload"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(ROOT / "tests" / "workload.c")], check=True
    )
    return binary


# --- no skipped tests -------------------------------------------------------

_skipped: list[str] = []


def pytest_runtest_logreport(report) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _skipped and exitstatus == 0:
        print(f"\nFAILED: {len(_skipped)} test(s) skipped; this suite allows no skips:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = 1
