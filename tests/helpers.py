"""Test helpers: a real `orb8 run` process, real cgroups, a C workload."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from exporter.identity import CgroupTree, Resolver
from exporter.kernel.percpu import possible_cpus

ROOT = Path(__file__).resolve().parent.parent
ORB8 = [sys.executable, "-m", "exporter.cli"]


# Syscall slots for the tests that do not test capacity (a test's own
# --syscall-slots wins). Each slot costs 8 bytes per possible CPU in
# syscall_counts: the default 65536 is 128 MiB per exporter at 256 CPUs, and
# some tests run two. But every cgroup on the host that makes syscalls takes
# slots, not only the test's: 4096 filled within seconds while a benchmark
# churned 2000 cgroups next to the tests (12,248 failed inserts, the test's
# own counts lost). So: the default where it costs little, scaled down to a
# 32 MiB budget on many CPUs (16384 slots at 256), never below 4096.
TEST_SYSCALL_SLOTS = (
    "--syscall-slots",
    str(max(4096, min(65536, (32 << 20) // (8 * possible_cpus())))),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bpftool_structs(names: set[str]) -> dict[str, tuple[int, dict[str, int]]]:
    """{struct name: (size, {member: bit offset})} as bpftool prints the running
    kernel's BTF: an oracle independent of exporter/btf.py's parser."""
    text = subprocess.check_output(
        ["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"], text=True
    )
    found: dict[str, tuple[int, dict[str, int]]] = {}
    members: dict[str, int] | None = None
    for line in text.splitlines():
        if not line.startswith("\t"):
            members = None
            # [114] STRUCT 'task_struct' size=3264 vlen=248
            _, kind, quoted, *rest = [*line.split(" ", 3), ""]
            name = quoted.strip("'")
            if kind == "STRUCT" and name in names and name not in found:
                members = {}
                found[name] = (int(rest[0].split()[0].removeprefix("size=")), members)
        elif members is not None:
            # \t'status' type_id=35 bits_offset=128
            member, _type, offset = line.strip().split(" ")[:3]
            members[member.strip("'")] = int(offset.removeprefix("bits_offset="))
    missing = names - set(found)
    assert not missing, f"bpftool shows no struct {sorted(missing)}"
    return found


def promtool_version() -> str:
    """First line of `promtool --version`, for failure messages: `check metrics`
    lints differ between Prometheus releases."""
    result = subprocess.run(["promtool", "--version"], capture_output=True, text=True, timeout=30)
    return (result.stdout + result.stderr).splitlines()[0]


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


def _join_cgroup(cgroup: Path | None):
    """preexec_fn: start the child in `cgroup` (its whole life, from exec on)."""
    if cgroup is None:
        return None
    procs = str(cgroup / "cgroup.procs")

    def join() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return join


class Exporter:
    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, cgroup: Path | None = None
    ) -> None:
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
            preexec_fn=_join_cgroup(cgroup),
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
                    self.proc.kill()  # e.g. hung in start-up: never leave it running
                    self.proc.wait()
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
        remove_cgroup(path)

    def cleanup(self) -> None:
        for path in sorted(self.created, key=lambda p: len(p.parts), reverse=True):
            self.remove(path)


def run_workload(binary: Path, cgroup: Path | str, *specs: str) -> None:
    subprocess.run([str(binary), str(cgroup), *specs], check=True, timeout=120)


def map_ids_held_by(pid: int) -> set[int]:
    """Ids of the BPF maps process `pid` holds open (its fdinfo)."""
    held = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue  # closed since the listing (a scrape's socket, say): not a map
        for line in text.splitlines():
            if line.startswith("map_id:"):
                held.add(int(line.split()[1]))
    return held


def entries_of_cgroup(map_name: str, cgroup_id: int, pid: int | None = None) -> int:
    """Entries for a cgroup id in the BPF maps named `map_name` (as the kernel
    shows it, cut at 15 characters) of process `pid`, by bpftool; without a
    pid, in every such map on the host (other orb8s included)."""
    shown = json.loads(subprocess.check_output(["bpftool", "-j", "map", "show"]))
    ids = [m["id"] for m in shown if m.get("name") == map_name[:15]]
    if pid is not None:
        held = map_ids_held_by(pid)
        ids = [map_id for map_id in ids if map_id in held]
    total = 0
    for map_id in ids:
        dump = json.loads(
            subprocess.check_output(["bpftool", "-j", "map", "dump", "id", str(map_id)])
        )
        total += sum(1 for e in dump if e["formatted"]["key"]["cgroup_id"] == cgroup_id)
    return total


def kernel_pairs_of(cgroup_id: int, pid: int | None = None) -> int:
    """Entries for a cgroup id in the syscall_slots map of process `pid`."""
    return entries_of_cgroup("syscall_slots", cgroup_id, pid)


def wait_for(predicate, timeout: float = 15.0, what: str = "condition", interval: float = 0.2):
    """Poll until predicate() is truthy and return its value; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
    return value


def terminate(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` s; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def remove_cgroup(path: Path) -> None:
    """rmdir a cgroup, killing stragglers that are still exiting; gone is fine."""
    for attempt in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            with contextlib.suppress(OSError):
                for pid in (path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.02 * (attempt + 1))
    path.rmdir()


class SetUp(Protocol):
    def setup(self) -> Any: ...

    def cleanup(self) -> None: ...


class Startable(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...


Thing = TypeVar("Thing", bound=SetUp)
Started = TypeVar("Started", bound=Startable)


def set_up(thing: Thing) -> Iterator[Thing]:
    """A fixture's body for something with setup() and cleanup() (the pod
    pairs of tests/kernel/netpods.py): cleaned up even when setup() fails
    half-way."""
    try:
        thing.setup()
        yield thing
    finally:
        thing.cleanup()


def started_sources(
    source_class: Callable[..., Started], cgroup2_root: Path, **defaults: Any
) -> Iterator[Callable[..., Started]]:
    """A fixture's body: a factory of started BPF sources (DnsSource,
    NetworkSource) resolving cgroups under cgroup2_root, make(pods_callable,
    **kwargs) with `defaults` under kwargs; every source is closed at
    teardown, even on failure."""
    sources: list[Started] = []

    def make(pods_callable: Callable[[], dict], **kwargs: Any) -> Started:
        kwargs = {**defaults, **kwargs}
        tree = CgroupTree(cgroup2_root, clock=kwargs.get("clock", time.monotonic))
        source = source_class(Resolver(tree, pods=pods_callable), **kwargs)
        sources.append(source)
        source.start()
        return source

    yield make
    for source in sources:
        source.close()
