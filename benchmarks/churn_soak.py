"""Churn soak: does a live `orb8 run` level off under pod churn (issue 20, item 2)?

A real `orb8 run --probes syscalls,network` with Kubernetes identity, its
pod watch pointed at the tests' API server (tests/k8s_apiserver.py, in its
own process, real list/watch over HTTP). For --minutes (30), pods are added
and deleted continuously, as a kubelet would see them:

  - every 1/--rate s a pod is added through the API server, its kubelet-shaped
    cgroup made (systemd driver:
    kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/
    cri-containerd-<id>.scope, under a unique top cgroup), and the test
    workload (tests/workload.c) run in it making 10-30 distinct syscalls and
    sending itself --traffic (5) UDP datagrams (so the syscall, traffic and
    flow maps gain that pod's entries);
  - each tick, one live pod's workload runs again (its counters move);
  - after --lifetime s a pod's cgroup is removed and the pod deleted through
    the API server (the maps empty once the grace ends).

/metrics is scraped every --scrape-every (15) s as Prometheus scrapes
(footprint.py's Prometheus Accept header and gzip); VmRSS, RssAnon and
RssFile are sampled every --sample-every (30) s. Reported: RssAnon growth
per hour after the first --warmup (5) minutes (least-squares slope; goal
< 1 MiB/h), the same for VmRSS and RssFile, scrape p50/max, and the
orb8_table_entries / orb8_bpf_map_entries gauges at the start of the churn,
after the warm-up and at the end.

With --tracemalloc, orb8 is traced by tracemalloc from the end of the
warm-up (slower, and more memory: for finding a leak, not for the figures);
the allocation sites of what was allocated after the warm-up and is still
alive at the end are reported, largest first.

With --heap-stats, orb8 writes where its anonymous memory is every
--sample-every s (glibc's heap in use and free, pymalloc's arenas, objects
by type) to FILE.heap.jsonl beside --json FILE: what told the carried
counts (live Python objects) from freed heap dirtied again (issue 20).

Everything it creates (cgroups, processes, temp files) is removed at the end.

Usage (root): .venv/bin/python benchmarks/churn_soak.py [--minutes 30] [--json FILE]
Smoke check: --minutes 2 (the warm-up then shrinks to half the run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import footprint  # benchmarks/footprint.py: scrape as Prometheus, gauges, workload
import machine

ROOT = footprint.ROOT

from exporter.identity.cgroupfs import find_cgroup2_mount  # noqa: E402
from exporter.memory import process_memory  # noqa: E402
from tests.helpers import free_port, remove_cgroup, terminate  # noqa: E402
from tests.k8s_apiserver import make_pod, write_kubeconfig  # noqa: E402

MiB = 1 << 20
# `python -c` wrapper: orb8, traced by tracemalloc from the first SIGUSR1 on (tracing the
# start-up too made BCC's compile slower than any start-up limit), a snapshot written to
# argv[1]/<n>.snap on each SIGUSR1 (renamed into place when complete): the second holds
# what was allocated after the first and is still alive. The rest of argv is `orb8`'s.
TRACED = """
import os, runpy, signal, sys, tracemalloc
out, taken = sys.argv[1], [0]
def snapshot(*_):
    taken[0] += 1
    tracemalloc.start(6)
    path = os.path.join(out, str(taken[0]) + ".snap")
    tracemalloc.take_snapshot().dump(path + ".tmp")
    os.rename(path + ".tmp", path)
signal.signal(signal.SIGUSR1, snapshot)
sys.argv = ["orb8", *sys.argv[2:]]
runpy.run_module("exporter.cli", run_name="__main__", alter_sys=True)
"""
# `python -c` wrapper for --heap-stats: every argv[2] seconds a JSON line to argv[1] with
# where orb8's anonymous memory is: RssAnon, glibc's heap (mallinfo2: in use, free but
# kept), pymalloc's arenas (in use, free inside them: sys._debugmallocstats) and the
# object counts by type. The rest of argv is `orb8`'s.
HEAP_STATS = """
import collections, ctypes, gc, json, os, re, runpy, sys, threading, time
out, every = sys.argv[1], float(sys.argv[2])
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
def pymalloc():
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(w)
        os.close(saved)
    text = b""
    while chunk := os.read(r, 1 << 16):
        text += chunk
    os.close(r)
    field = lambda name: int(re.search(
        rf"# {name} *= *([0-9,]+)", text.decode()).group(1).replace(",", ""))
    return {"arenas": field("arenas allocated current"),
            "allocated_blocks": field("bytes in allocated blocks"),
            "available_blocks": field("bytes in available blocks")}
def loop():
    t0 = time.monotonic()
    while True:
        time.sleep(every)
        m = libc.mallinfo2()
        status = open("/proc/self/status").read()
        anon = int(re.search(r"RssAnon:\\s+(\\d+)", status).group(1)) * 1024
        types = collections.Counter(type(o).__name__ for o in gc.get_objects())
        line = {"t": round(time.monotonic() - t0), "rss_anon": anon,
                "heap_in_use": m.uordblks, "heap_free": m.fordblks, "heap_mmapped": m.hblkhd,
                "heap_arena": m.arena, **pymalloc(), "objects": dict(types.most_common(25))}
        with open(out, "a") as f:
            f.write(json.dumps(line) + "\\n")
threading.Thread(target=loop, daemon=True).start()
sys.argv = ["orb8", *sys.argv[3:]]
runpy.run_module("exporter.cli", run_name="__main__", alter_sys=True)
"""
NAMESPACE = "soak"
NODE = "node-a"
QOS_SLICE = ("kubepods.slice", "kubepods-besteffort.slice")
GAUGES = ("orb8_table_entries", "orb8_bpf_map_entries")
SYSCALLS = footprint.SAFE_SYSCALLS


@dataclass
class Pod:
    uid: str
    slice_dir: Path
    scope: Path
    specs: list[str]
    remove_at: float


class ApiProcess:
    """tests/k8s_apiserver.py in its own process, driven over its stdin."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.k8s_apiserver"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url:
            raise SystemExit("the test API server did not start")

    def send(self, command: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def close(self) -> int:
        """Stop it; the number of pods it still held."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        held = self.proc.stdout.readline().strip()
        self.proc.wait(timeout=30)
        return int(held or -1)


class Churn:
    """Pods added through the API server with their cgroups, exercised, removed."""

    def __init__(
        self, api: ApiProcess, top: Path, workload: Path, lifetime: float, traffic: int
    ) -> None:
        self.api, self.top, self.workload, self.lifetime = api, top, workload, lifetime
        self.traffic = [f"udp:{traffic}"] if traffic else []
        self.live: deque[Pod] = deque()
        self.added = self.removed = 0
        self.rng = random.Random(20)
        qos = top.joinpath(*QOS_SLICE)
        qos.mkdir(parents=True)
        self.qos = qos

    def run(self, pod: Pod) -> None:
        subprocess.run([str(self.workload), str(pod.scope), *pod.specs], check=True, timeout=60)

    def add(self, now: float) -> None:
        uid, cid = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex
        self.api.send(
            {"add": make_pod(f"churn-{self.added}", NAMESPACE, uid, NODE, (("app", cid),))}
        )
        slice_dir = self.qos / f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
        scope = slice_dir / f"cri-containerd-{cid}.scope"
        scope.mkdir(parents=True)
        n = self.rng.randint(10, 30)
        specs = [f"{nr}:{self.rng.randint(1, 50)}" for nr in self.rng.sample(SYSCALLS, n)]
        pod = Pod(uid, slice_dir, scope, specs + self.traffic, now + self.lifetime)
        self.live.append(pod)
        self.added += 1
        self.run(pod)

    def remove(self, pod: Pod) -> None:
        remove_cgroup(pod.scope)
        remove_cgroup(pod.slice_dir)
        self.api.send({"delete": pod.uid})
        self.removed += 1

    def tick(self, now: float) -> None:
        while self.live and self.live[0].remove_at <= now:
            self.remove(self.live.popleft())
        if self.live:
            self.run(self.rng.choice(self.live))

    def close(self) -> None:
        while self.live:
            self.remove(self.live.popleft())
        for directory in (self.qos, self.qos.parent, self.top):
            remove_cgroup(directory)


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB), in MiB per hour."""
    if len(points) < 3:
        return None
    t, v = zip(*points, strict=True)
    return statistics.linear_regression(t, v).slope * 3600


def snapshot(orb8: subprocess.Popen, snaps: Path, n: int) -> Path:
    """Ask the traced orb8 for its n-th snapshot; its path once written."""
    orb8.send_signal(signal.SIGUSR1)
    path = snaps / f"{n}.snap"
    deadline = time.monotonic() + 300
    while not path.exists():
        if time.monotonic() > deadline or orb8.poll() is not None:
            raise SystemExit("no tracemalloc snapshot from orb8")
        time.sleep(0.5)
    return path


def growth(first: Path, last: Path, top: int = 15) -> list[str]:
    """The allocation sites that grew most from the first snapshot to the last."""
    import tracemalloc

    old, new = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(last))
    lines = [str(stat) for stat in new.compare_to(old, "lineno")[:top]]
    for stat in new.compare_to(old, "traceback")[:5]:
        lines.append(f"{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks:")
        lines.extend("    " + line for line in stat.traceback.format())
    return lines


def plain(body: str, name: str) -> float | None:
    """The value of an unlabelled sample."""
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def labelled(values: dict[str, float], label: str) -> dict[str, float]:
    """{'{table="identity"}': 3} -> {'identity': 3}"""
    return {k.split(f'{label}="')[1].split('"')[0]: v for k, v in values.items() if label in k}


def run(args: argparse.Namespace, work: Path) -> dict:
    duration = args.minutes * 60
    warmup = min(args.warmup * 60, duration / 2)
    mount = find_cgroup2_mount()
    top = mount / f"orb8-soak-{uuid.uuid4().hex[:8]}"
    top.mkdir()
    workload = footprint.build_workload(work)
    api = ApiProcess()
    kubeconfig = write_kubeconfig(work / "kubeconfig", api.url)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    log_path = work / "orb8.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    snaps = work / "snapshots"
    snaps.mkdir()
    python = (sys.executable, "-c", TRACED, str(snaps)) if args.tracemalloc else None
    heap_stats = work / "heap-stats.jsonl"
    if args.heap_stats:
        python = (sys.executable, "-c", HEAP_STATS, str(heap_stats), str(args.sample_every))
    orb8 = subprocess.Popen(
        [
            *(python or (sys.executable, "-m", "exporter.cli")),
            *("run", "--listen", f"127.0.0.1:{port}"),
            *("--probes", "syscalls,network", "--kubeconfig", str(kubeconfig)),
            *("--node-name", NODE, *args.orb8_args),
        ],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )
    churn = None
    taken: list[Path] = []
    grown: list[str] = []
    scrapes: list[dict] = []
    failures: list[tuple[float, str]] = []
    samples: list[tuple[float, dict[str, int], float]] = []  # (t, memory, cpu seconds)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            if orb8.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"orb8 did not start:\n{log_path.read_text()[-3000:]}")
            try:
                if footprint.complete(footprint.get(url)[1]):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        churn = Churn(api, top, workload, args.lifetime, args.traffic)
        t0 = time.monotonic()

        def scraper() -> None:
            while True:
                t = time.monotonic() - t0
                try:
                    seconds, body = footprint.get(url, footprint.PROMETHEUS, compressed=True)
                except OSError as e:  # a failed scrape is a finding, not the end of the soak
                    failures.append((t, repr(e)))
                    seconds, body = 0.0, b""
                text = body.decode()
                scrapes.append(
                    {
                        "t": t,
                        "seconds": seconds,
                        **{name: footprint.gauge(body, name) for name in GAUGES},
                        "pods_tracked": plain(text, "orb8_k8s_pods_tracked"),
                        # All of them, other tenants' too: orb8 counts every cgroup on the host.
                        "series": sum(1 for ln in text.splitlines() if ln and ln[0] != "#"),
                        "soak_pods_seen": len(
                            {
                                line.split('pod="')[1].split('"')[0]
                                for line in text.splitlines()
                                if line.startswith("orb8_syscalls_total{")
                                and f'namespace="{NAMESPACE}"' in line
                            }
                        ),
                    }
                )
                if stop.wait(max(0.0, args.scrape_every - (time.monotonic() - t0 - t))):
                    return

        def sampler() -> None:
            while True:
                samples.append(
                    (
                        time.monotonic() - t0,
                        process_memory(orb8.pid),
                        footprint.cpu_seconds(orb8.pid),
                    )
                )
                if stop.wait(args.sample_every - (time.monotonic() - t0) % args.sample_every):
                    return

        threads = [threading.Thread(target=f, daemon=True) for f in (scraper, sampler)]
        for thread in threads:
            thread.start()
        next_add = 0.0
        next_report = 60.0
        while (now := time.monotonic() - t0) < duration:
            if orb8.poll() is not None:
                raise SystemExit(f"orb8 exited:\n{log_path.read_text()[-3000:]}")
            while next_add <= now:
                churn.add(now)
                next_add += 1 / args.rate
            churn.tick(now)
            if args.tracemalloc and now >= warmup and not taken:
                taken.append(snapshot(orb8, snaps, 1))
            if now >= next_report:
                last = samples[-1][1] if samples else {}
                print(
                    f"{now / 60:5.1f} min: {churn.added} pods added, {len(churn.live)} live, "
                    f"RssAnon {last.get('RssAnon', 0) / MiB:.1f} MiB, scrapes {len(scrapes)}",
                    flush=True,
                )
                next_report += 60
            time.sleep(max(0.0, min(next_add - (time.monotonic() - t0), args.tick)))
        stop.set()
        for thread in threads:
            thread.join()
        samples.append((time.monotonic() - t0, process_memory(orb8.pid), 0.0))
        if args.tracemalloc and taken:
            grown = growth(taken[0], snapshot(orb8, snaps, 2))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        terminate(orb8)
        if churn is not None:
            churn.close()
        else:
            remove_cgroup(top)
        held = api.close()
        if args.json:  # the log beside the figures, for whoever reads them
            Path(args.json).with_suffix(".orb8.log").write_text(log_path.read_text())
            if heap_stats.exists():
                Path(args.json).with_suffix(".heap.jsonl").write_text(heap_stats.read_text())

    after = [(t, m) for t, m, _ in samples if t >= warmup]
    fields = ("RssAnon", "VmRSS", "RssFile")
    slopes = {f: slope_per_hour([(t, m[f] / MiB) for t, m in after]) for f in fields}
    # The last third alone: whether it levels off once the bounded tables are full.
    late = slope_per_hour([(t, m["RssAnon"] / MiB) for t, m, _ in samples if t >= duration * 2 / 3])
    cpu = [(t, c) for t, _, c in samples if c]
    latencies = [s["seconds"] for s in scrapes if s["seconds"]]

    def at(t: float) -> dict:
        s = min(scrapes, key=lambda s: abs(s["t"] - t))
        return {
            "t": round(s["t"]),
            "tables": labelled(s["orb8_table_entries"], "table"),
            "maps": labelled(s["orb8_bpf_map_entries"], "map"),
            "pods_tracked": s["pods_tracked"],
            "soak_pods_seen": s["soak_pods_seen"],
            "series": s["series"],
        }

    def memory(t: float) -> dict:
        _, m, _ = min(samples, key=lambda s: abs(s[0] - t))
        return {f: round(m[f] / MiB, 1) for f in fields}

    return {
        "minutes": args.minutes,
        "warmup_minutes": round(warmup / 60, 2),
        "rate": args.rate,
        "lifetime_s": args.lifetime,
        "traffic": args.traffic,
        "pods_added": churn.added if churn else 0,
        "pods_removed": churn.removed if churn else 0,
        "api_pods_left": held,
        "rss_anon_mib_per_hour": None if slopes["RssAnon"] is None else round(slopes["RssAnon"], 2),
        "vmrss_mib_per_hour": None if slopes["VmRSS"] is None else round(slopes["VmRSS"], 2),
        "rss_file_mib_per_hour": None if slopes["RssFile"] is None else round(slopes["RssFile"], 2),
        "goal_mib_per_hour": 1.0,
        "rss_anon_last_third_mib_per_hour": None if late is None else round(late, 2),
        "memory_start": memory(0),
        "memory_warm": memory(warmup),
        "memory_end": memory(duration),
        "memory_peak": {f: round(max(m[f] for _, m, _ in samples) / MiB, 1) for f in fields},
        "memory_series": [
            (round(t), *(round(m[f] / MiB, 2) for f in fields)) for t, m, _ in samples
        ],
        "scrapes": len(latencies),
        # (t, seconds, series, baselines, identity, syscall_slots): what the host added
        "scrape_series": [
            (
                round(s["t"]),
                round(s["seconds"], 3),
                s["series"],
                *(
                    s[name].get(f'{{{label}="{key}"}}')
                    for name, label, key in (
                        ("orb8_table_entries", "table", "baselines"),
                        ("orb8_table_entries", "table", "identity"),
                        ("orb8_bpf_map_entries", "map", "syscall_slots"),
                    )
                ),
            )
            for s in scrapes
        ],
        "scrape_failures": failures,
        "scrape_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "scrape_max_ms": round(max(latencies) * 1000, 1),
        "cpu_share": round((cpu[-1][1] - cpu[0][1]) / (cpu[-1][0] - cpu[0][0]), 4)
        if len(cpu) > 1
        else None,
        "gauges_start": at(0),
        "gauges_warm": at(warmup),
        "gauges_end": at(duration),
        "tracemalloc_growth": grown,
        "load_average": os.getloadavg(),
        "machine": machine.describe(),
    }


def summary(r: dict) -> str:
    goal = "met" if (r["rss_anon_mib_per_hour"] or 0) < r["goal_mib_per_hour"] else "NOT met"
    return (
        f"{r['minutes']} min, {r['pods_added']} pods churned ({r['rate']}/s, "
        f"{r['lifetime_s']:.0f} s each): RssAnon {r['memory_start']['RssAnon']} -> "
        f"{r['memory_warm']['RssAnon']} (warm) -> {r['memory_end']['RssAnon']} MiB, "
        f"growth after {r['warmup_minutes']} min {r['rss_anon_mib_per_hour']} MiB/h "
        f"(goal < 1: {goal}); VmRSS {r['vmrss_mib_per_hour']} MiB/h, RssFile "
        f"{r['rss_file_mib_per_hour']} MiB/h; scrape p50 {r['scrape_p50_ms']} ms, max "
        f"{r['scrape_max_ms']} ms over {r['scrapes']}; tables start {r['gauges_start']['tables']} "
        f"end {r['gauges_end']['tables']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes left out of the fit")
    parser.add_argument("--rate", type=float, default=2.0, help="pods added per second")
    parser.add_argument("--lifetime", type=float, default=60.0, help="seconds a pod lives")
    parser.add_argument("--traffic", type=int, default=5, help="UDP datagrams per run")
    parser.add_argument("--tick", type=float, default=0.25, help="seconds between exercises")
    parser.add_argument("--scrape-every", type=float, default=15.0)
    parser.add_argument("--sample-every", type=float, default=30.0)
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="find what grows (not for the figures)"
    )
    parser.add_argument(
        "--heap-stats",
        action="store_true",
        help="where RssAnon is (glibc heap, pymalloc arenas, objects by type), "
        "every --sample-every s, beside --json (not for the figures)",
    )
    parser.add_argument("orb8_args", nargs="*", help="more `orb8 run` flags (after --)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it loads BPF and makes cgroups")
    print(f"machine: {machine.describe()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="orb8-soak-") as work:
        result = run(args, Path(work))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    long = ("memory_series", "scrape_series", "tracemalloc_growth")
    print(json.dumps({k: v for k, v in result.items() if k not in long}, indent=1))
    print(summary(result))
    if result["tracemalloc_growth"]:
        print("grown most after the warm-up (tracemalloc):")
        print("\n".join(result["tracemalloc_growth"]))


if __name__ == "__main__":
    main()
