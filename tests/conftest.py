"""Shared fixtures. Kernel tests use the real kernel: real cgroups under the
v2 mount, real BPF, a real `orb8 run` process scraped over HTTP.

No test in this suite may be skipped: on these root machines with BPF, a
skip means something broke, so any skip fails the session (see the hook at
the bottom).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.identity.cgroupfs import find_cgroup2_mount

ROOT = Path(__file__).resolve().parent.parent
ORB8 = [sys.executable, "-m", "exporter.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from a live /metrics."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def series(samples, name: str, **labels: str) -> float:
    """Sum of samples named `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for (sample_name, sample_labels), value in samples.items():
        if sample_name == name and labels.items() <= dict(sample_labels).items():
            total += value
    return total


class Exporter:
    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.log = Path(f"/tmp/orb8-test-{uuid.uuid4().hex[:8]}.log")
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            [*ORB8, "run", "--listen", f"127.0.0.1:{self.port}", *args],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"orb8 run exited {self.proc.returncode}:\n{self.output()}")
            try:
                scrape(self.url)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"orb8 run not serving:\n{self.output()}") from None
                time.sleep(0.2)

    def scrape(self):
        return scrape(self.url)

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        self.log.unlink(missing_ok=True)
        return self.proc.returncode


@pytest.fixture
def start_exporter() -> Iterator:
    started: list[Exporter] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Exporter:
        exporter = Exporter(list(args), env)
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.stop()


@pytest.fixture(scope="session")
def cgroup2_root() -> Path:
    return find_cgroup2_mount()


class CgroupFactory:
    """Creates uniquely named cgroups under the v2 mount and removes them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created: list[Path] = []

    def make(self, rel: str | None = None) -> Path:
        """Create root/rel (and missing parents); default: a unique name."""
        rel = rel or f"orb8-test-{uuid.uuid4().hex[:12]}"
        path = self.root
        for part in Path(rel.strip("/")).parts:
            path = path / part
            if not path.exists():
                path.mkdir()
                self.created.append(path)
        return path

    def remove(self, path: Path) -> None:
        for attempt in range(50):
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                # Processes may still be exiting; move stragglers out.
                for pid in (path / "cgroup.procs").read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05 * (attempt + 1))
        path.rmdir()

    def cleanup(self) -> None:
        for path in sorted(self.created, key=lambda p: len(p.parts), reverse=True):
            self.remove(path)


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


def run_workload(binary: Path, cgroup: Path | str, *specs: str) -> None:
    subprocess.run([str(binary), str(cgroup), *specs], check=True, timeout=120)


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
