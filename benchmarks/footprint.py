"""orb8's footprint as a real `orb8 run`: startup, memory, idle CPU, scrape at 1,000 cgroups.

Runs `orb8 run --probes syscalls,network` (every BPF probe that loads on a
plain host; gpu/dcgm are absent without a GPU) and measures, in one run:

  1. startup: seconds from exec to the first /metrics that is complete
     (orb8_probe_up 1 for both probes),
  2. idle: RssAnon / RssFile / VmRSS, and CPU (utime + stime from
     /proc/<pid>/stat) over --idle seconds while scraped every --interval s,
  3. 1,000 cgroups: creates them under the cgroup v2 mount, runs the test
     workload (tests/workload.c) in each making --syscalls distinct syscalls
     (and with --traffic N, N UDP datagrams to itself: network series both
     ways and a loopback flow per cgroup),
     then scrapes as Prometheus does (its Accept header, which picks
     OpenMetrics, and Accept-Encoding: gzip) --scrapes times and reports
     their p50 and the memory after them (VmRSS, RssAnon, RssFile); then
     alternates that scrape with prometheus_client's generate_latest in the
     same process (Accept: application/openmetrics-text;version=1.0.0;
     escaping=values, which the renderer declines: same series, old path,
     also gzipped), p50 of --rounds each,
  4. malloc_trim: in a separate in-process Agent with the same probes,
     RssAnon after start-up before and after exporter.memory.malloc_trim().

Everything it creates (cgroups, processes) is removed at the end.

Usage (root): .venv/bin/python benchmarks/footprint.py [--containers 1000] [--idle 120]
[--json FILE]: the figures as JSON too (benchmarks/bench_scale.py reads them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import machine  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.identity.cgroupfs import find_cgroup2_mount  # noqa: E402
from exporter.memory import process_memory  # noqa: E402

try:
    from exporter.outputs.prometheus import GZIP_LEVEL
except ImportError:  # a checkout from before it was named (a before/after run)
    GZIP_LEVEL = 1
from tests.helpers import free_port, remove_cgroup  # noqa: E402

MiB = 1 << 20
# Distinct x86_64 syscalls that are harmless with all-zero arguments (most
# fail with EFAULT/EINVAL/EBADF, which is still one counted syscall).
SAFE_SYSCALLS = [
    0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22,
    24, 25, 26, 27, 28, 32, 37, 39, 63, 73, 74, 75, 79, 80, 83, 96, 97, 98,
    99, 100, 102, 104, 107, 108, 110, 111, 115, 118, 120, 121, 124, 125, 140,
    186, 201, 228, 229, 318,
]  # fmt: skip
FAST = "text/plain;version=0.0.4"
# What Prometheus 2.42 sends (scrape.go, acceptHeader), and gzip.
PROMETHEUS = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
BASELINE = "application/openmetrics-text;version=1.0.0;escaping=values"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(url: str, accept: str = FAST, compressed: bool = False) -> tuple[float, bytes]:
    """(seconds to the last byte, body decompressed)."""
    headers = {"Accept": accept}
    if compressed:
        headers["Accept-Encoding"] = "gzip"
    request = urllib.request.Request(url, headers=headers)
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        gzipped = response.headers.get("Content-Encoding") == "gzip"
    took = time.perf_counter() - t0
    if compressed and not gzipped:
        raise SystemExit("asked for gzip, got a plain body")
    return took, gzip.decompress(body) if gzipped else body


def complete(body: bytes) -> bool:
    return all(
        f'orb8_probe_up{{probe="{p}"}} 1.0'.encode() in body for p in ("syscalls", "network")
    )


def gauge(body: bytes, name: str) -> dict[str, float]:
    values = {}
    for line in body.decode().splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            values[labels[len(name) :]] = float(value)
    return values


LLVM_LIBRARIES = ("libLLVM", "libclang")  # what BCC compiles with, mapped from files


def llvm_file_pages(pid: int | str) -> int:
    """Bytes of RssFile in LLVM's and clang's libraries (resident file pages:
    Rss minus the mapping's anonymous, copied-on-write pages), from smaps."""
    total, llvm = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            llvm = len(fields) > 5 and any(name in fields[5] for name in LLVM_LIBRARIES)
        elif llvm and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
        elif llvm and fields[0] == "Anonymous:":
            total -= int(fields[1]) * 1024
    return total


def memory_line(pid: int | str) -> str:
    m = process_memory(pid)
    return (
        f"RssAnon {m['RssAnon'] / MiB:.1f} MiB, RssFile {m['RssFile'] / MiB:.1f} MiB "
        f"(of which LLVM/clang libraries {llvm_file_pages(pid) / MiB:.1f} MiB), "
        f"VmRSS {m['VmRSS'] / MiB:.1f} MiB"
    )


def build_workload(directory: Path) -> Path:
    binary = directory / "workload"
    source = ROOT / "tests" / "workload.c"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def fill_cgroups(
    parent: Path, workload: Path, containers: int, syscalls: int, traffic: int = 0
) -> list[Path]:
    specs = [f"{nr}:1" for nr in SAFE_SYSCALLS[:syscalls]]
    if traffic:  # datagrams to itself: network series both ways and a loopback flow
        specs.append(f"udp:{traffic}")
    created = []
    running: list[subprocess.Popen] = []
    for i in range(containers):
        cgroup = parent / f"c{i:04d}"
        cgroup.mkdir()
        created.append(cgroup)
        running.append(
            subprocess.Popen(
                [str(workload), str(cgroup), *specs],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        if len(running) >= 32:
            for proc in running:
                proc.wait()
            running.clear()
    for proc in running:
        proc.wait()
    return created


def live(args: argparse.Namespace, workdir: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    log = (workdir / "orb8.log").open("w")
    cmd = [sys.executable, "-m", "exporter.cli", "run", "--listen", f"127.0.0.1:{port}"]
    cmd += ["--probes", "syscalls,network", "--syscall-slots", str(args.slots), *args.orb8_args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    out: dict = {}
    parent = find_cgroup2_mount() / f"orb8-bench-{uuid.uuid4().hex[:8]}"
    created: list[Path] = []
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"orb8 exited: {(workdir / 'orb8.log').read_text()}")
            try:
                _, body = get(url)
                if complete(body):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        out["startup_s"] = time.perf_counter() - t0
        print(f"startup to first complete /metrics: {out['startup_s']:.2f} s")

        # Idle: scraped every interval, CPU over the whole window.
        time.sleep(args.interval)
        c0, w0 = cpu_seconds(proc.pid), time.monotonic()
        scrapes = 0
        while time.monotonic() - w0 < args.idle:
            get(url)
            scrapes += 1
            time.sleep(max(0.0, args.interval - (time.monotonic() - w0) % args.interval))
        cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - w0)
        out["idle_cpu_percent"] = cpu * 100
        out["idle_memory"] = process_memory(proc.pid)
        print(
            f"idle over {args.idle:.0f} s, {scrapes} scrapes every {args.interval:.0f} s: "
            f"CPU {cpu * 100:.2f}% of a core; {memory_line(proc.pid)}"
        )

        # 1,000 cgroups with their syscalls.
        parent.mkdir()
        workload = build_workload(workdir)
        t1 = time.perf_counter()
        created = fill_cgroups(parent, workload, args.containers, args.syscalls, args.traffic)
        print(
            f"{len(created)} cgroups x {args.syscalls} syscalls"
            f"{f' + {args.traffic} datagrams' if args.traffic else ''} "
            f"in {time.perf_counter() - t1:.1f} s"
        )
        # As Prometheus scrapes: --scrapes of them, then the memory.
        scrapes, collect = [], []
        for _ in range(args.scrapes):
            t, body = get(url, PROMETHEUS, compressed=True)
            scrapes.append(t)
            collect.append(sum(gauge(body, "orb8_collect_duration_seconds").values()))
        out["loaded_memory"] = process_memory(proc.pid)
        print(
            f"memory at {args.containers} cgroups after {args.scrapes} scrapes: "
            f"{memory_line(proc.pid)}"
        )
        fast, base = [], []
        for _ in range(args.rounds):
            t, body = get(url, PROMETHEUS, compressed=True)
            fast.append(t)
            t, _ = get(url, BASELINE, compressed=True)
            base.append(t)
        series = body.count(b"\norb8_syscalls_total{")
        total = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        entries = gauge(body, "orb8_bpf_map_entries")
        out.update(
            series=total,
            syscall_series=series,
            network_series=body.count(b"\norb8_network_bytes_total{"),
            flow_series=body.count(b"\norb8_flow_bytes_total{"),
            scrape_p50_ms=statistics.median(scrapes) * 1000,
            scrape_fast_p50_ms=statistics.median(fast) * 1000,
            scrape_baseline_p50_ms=statistics.median(base) * 1000,
            collect_p50_ms=statistics.median(collect) * 1000,
            slot_entries=entries.get('{map="syscall_slots"}'),
        )
        print(
            f"at {args.containers} cgroups: {total} series ({series} orb8_syscalls_total), "
            f"syscall_slots entries {out['slot_entries']}"
        )
        print(
            f"/metrics as Prometheus scrapes (OpenMetrics, gzip level {GZIP_LEVEL}): p50 "
            f"{out['scrape_p50_ms']:.0f} ms over {args.scrapes} scrapes, of which collect "
            f"p50 {out['collect_p50_ms']:.0f} ms"
        )
        print(
            f"alternating over {args.rounds} rounds: orb8 p50 {out['scrape_fast_p50_ms']:.0f} ms, "
            f"generate_latest (same process, same series, gzip) "
            f"{out['scrape_baseline_p50_ms']:.0f} ms; "
            f"ratio {out['scrape_fast_p50_ms'] / out['scrape_baseline_p50_ms']:.2f}"
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for cgroup in created:
            remove_cgroup(cgroup)
        if parent.exists():
            remove_cgroup(parent)
    return out


TRIM_CHILD = """
import json, sys, time
from exporter.agent import Agent
from exporter.registry import load_settings
from exporter.memory import malloc_trim, process_memory
settings = load_settings({"listen": sys.argv[1], "probes": "syscalls,network"})
agent = Agent(settings)
agent.start()
try:
    before = process_memory()
    t0 = time.perf_counter()
    freed = malloc_trim()
    took = time.perf_counter() - t0
    after = process_memory()
    print(json.dumps({"before": before, "after": after, "freed": freed, "took": took}))
finally:
    agent.close()
"""


def trim() -> dict:
    result = subprocess.run(
        [sys.executable, "-c", TRIM_CHILD, f"127.0.0.1:{free_port()}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"in-process agent failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    b, a = out["before"], out["after"]
    print(
        f"malloc_trim(0) after start-up: RssAnon {b['RssAnon'] / MiB:.1f} -> "
        f"{a['RssAnon'] / MiB:.1f} MiB ({out['freed'] / MiB:.1f} MiB returned, "
        f"{out['took'] * 1000:.0f} ms); VmRSS {b['VmRSS'] / MiB:.1f} -> {a['VmRSS'] / MiB:.1f} MiB"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--syscalls", type=int, default=50)
    parser.add_argument("--slots", type=int, default=65536)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--no-trim", action="store_true", help="skip step 4")
    parser.add_argument(
        "--traffic", type=int, default=0, help="UDP datagrams each cgroup sends itself (0: none)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here (bytes, ms)")
    parser.add_argument(
        "orb8_args", nargs="*", help="more `orb8 run` flags (after --), e.g. --dangerous-syscalls"
    )
    args = parser.parse_args()
    if args.syscalls > len(SAFE_SYSCALLS):
        raise SystemExit(f"at most {len(SAFE_SYSCALLS)} distinct syscalls")
    print(f"machine: {machine.describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        result = {"live": live(args, Path(tmp))}
    if not args.no_trim:
        result["trim"] = trim()
    if args.json:
        result.update(machine=machine.describe(), load_average=os.getloadavg())
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
