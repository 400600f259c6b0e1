"""Cgroup churn on a busy host: scrape latency, evidence, CPU and memory (issue 18).

The host the issue describes: --extra (3,000) empty cgroups that exist the
whole time (pods and systemd units), and a program (cgroup_churn.c) that
creates and removes --rate (2,000) cgroups a second, each with one process
making one personality() (a dangerous syscall: one evidence record each).
Meanwhile a quiet cgroup, created before the churn, makes one ptrace in the
middle of it: its evidence line must be logged with its cgroup path.

A real `orb8 run --probes syscalls` of --checkout (default: this checkout; pass
another worktree to measure the code before a change in the same conditions)
is scraped every --scrape-every seconds before, during and after the churn;
its RSS and CPU are sampled every 5 s. Reported: scrape latency p50/max
(idle and during churn), evidence lines, whether the quiet cgroup's line is
there, CPU during and after, RSS after 2 minutes and at the end, the walks of
the cgroup tree and the user-space tables' fill (where the code has those
metrics), and the `cgroup:` workloads left in baselines.json.

Everything it creates (cgroups, processes, temp files) is removed at the end.

Usage (root): .venv/bin/python benchmarks/cgroup_churn.py [--churn 60] [--checkout DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import machine  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.identity.cgroupfs import find_cgroup2_mount  # noqa: E402
from tests.helpers import free_port, remove_cgroup, terminate  # noqa: E402

SYS_PTRACE = 101  # x86_64
QUIET = (
    "import ctypes; ctypes.CDLL(None, use_errno=True).syscall("
    f"{SYS_PTRACE}, 0xffff, 0, 0, 0)"  # an invalid request: EIO, still one attempt
)


def scrape(url: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read().decode()
    return time.perf_counter() - t0, body


def metric(body: str, name: str, **labels: str) -> float | None:
    total = None
    for line in body.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total = (total or 0.0) + float(value)
    return total


def rss_mib(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("RssAnon", 0.0)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def join(cgroup: Path):
    def preexec() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return preexec


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def run(args: argparse.Namespace, work: Path) -> dict:
    checkout = Path(args.checkout).resolve()
    churn_bin = work / "cgroup_churn"
    subprocess.run(
        ["gcc", "-O2", "-o", str(churn_bin), str(Path(__file__).with_name("cgroup_churn.c"))],
        check=True,
    )
    mount = find_cgroup2_mount()
    top = mount / f"orb8-bench-churn-{uuid.uuid4().hex[:8]}"
    extra, churn, quiet = top / "extra", top / "churn", top / "quiet"
    for directory in (top, extra, churn, quiet):
        directory.mkdir()
    made = [top, extra, churn, quiet]
    for i in range(args.extra):
        (extra / f"e{i}").mkdir()
    state = work / "state"
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    log_path = work / "orb8.log"
    python = checkout / ".venv" / "bin" / "python"
    orb8 = subprocess.Popen(
        [
            *(str(python), "-m", "exporter.cli", "run", "--probes", "syscalls"),
            *("--listen", f"127.0.0.1:{port}", "--state-dir", str(state), *args.orb8_args),
        ],
        cwd=checkout,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )
    churner = None
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                scrape(url)
                break
            except OSError:
                if orb8.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log_path.read_text()) from None
                time.sleep(0.3)
        idle = [scrape(url)[0] for _ in range(5)]

        samples: list[tuple[float, float, float, float]] = []  # (t, cpu s, VmRSS, RssAnon)
        latencies: list[tuple[float, float]] = []  # (t since churn start, seconds)
        collects: list[float] = []  # the syscalls collect inside each of those scrapes
        stop = threading.Event()
        t_start = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append(
                    (time.monotonic() - t_start, cpu_seconds(orb8.pid), *rss_mib(orb8.pid))
                )
                stop.wait(5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        churner = subprocess.Popen(
            [str(churn_bin), str(churn), str(args.rate), str(args.churn)],
            stdout=subprocess.PIPE,
            text=True,
        )
        quiet_done = False
        last_body = ""
        while churner.poll() is None:
            now = time.monotonic() - t_start
            if not quiet_done and now >= args.churn / 2:
                subprocess.run([sys.executable, "-c", QUIET], preexec_fn=join(quiet), check=True)
                quiet_done = True
            seconds, last_body = scrape(url)
            latencies.append((now, seconds))
            collects.append(metric(last_body, "orb8_collect_duration_seconds") or 0.0)
            time.sleep(max(0.0, args.scrape_every - seconds))
        churned = int(churner.communicate()[0].strip() or 0)
        churn_end = time.monotonic() - t_start
        after: list[float] = []
        while time.monotonic() - t_start < churn_end + args.after:
            seconds, last_body = scrape(url)
            after.append(seconds)
            time.sleep(max(0.0, args.scrape_every - seconds))
        stop.set()
        sampler.join()
        samples.append((time.monotonic() - t_start, cpu_seconds(orb8.pid), *rss_mib(orb8.pid)))
    finally:
        if churner is not None and churner.poll() is None:
            churner.send_signal(signal.SIGTERM)
            churner.wait()
        terminate(orb8)
        for directory in sorted(
            [*made, *(p for p in extra.iterdir() if p.is_dir())] if extra.exists() else made,
            key=lambda p: len(p.parts),
            reverse=True,
        ):
            remove_cgroup(directory)

    log_text = log_path.read_text()
    evidence = [line for line in log_text.splitlines() if '"dangerous syscall"' in line]
    quiet_rel = "/" + str(quiet.relative_to(mount))
    quiet_lines = [
        line for line in evidence if '"syscall":"ptrace"' in line and f'"{quiet_rel}"' in line
    ]
    baselines_file = state / "baselines.json"
    workloads = (
        json.loads(baselines_file.read_text())["workloads"] if baselines_file.exists() else {}
    )

    def cpu_share(t0: float, t1: float) -> float:
        window = [s for s in samples if t0 <= s[0] <= t1]
        if len(window) < 2:
            return 0.0
        return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])

    def rss_at(t: float) -> tuple[float, float]:
        best = min(samples, key=lambda s: abs(s[0] - t))
        return best[2], best[3]

    during = [seconds for _, seconds in latencies]
    return {
        "checkout": str(checkout),
        "extra_cgroups": args.extra,
        "churn_seconds": args.churn,
        "churned": churned,
        "churn_rate": round(churned / max(churn_end, 1e-9)),
        "idle_scrape_p50_s": round(statistics.median(idle), 3),
        "scrapes_during": len(during),
        "scrape_p50_s": round(pct(during, 0.5), 3),
        "scrape_p90_s": round(pct(during, 0.9), 3),
        "scrape_max_s": round(max(during), 3) if during else None,
        "worst_scrapes": [
            (round(t), round(s, 2)) for t, s in sorted(latencies, key=lambda x: -x[1])[:5]
        ],
        "collect_p50_s": round(pct(collects, 0.5), 3),
        "collect_max_s": round(max(collects), 3) if collects else None,
        "load_average": os.getloadavg(),
        "scrape_after_p50_s": round(pct(after, 0.5), 3),
        "cpu_during": round(cpu_share(0, churn_end), 3),
        "cpu_after": round(cpu_share(churn_end, churn_end + args.after), 3),
        "rss_at_120s_mib": [round(v, 1) for v in rss_at(120)],
        "rss_end_mib": [round(v, 1) for v in rss_at(churn_end)],
        "rss_series": [(round(s[0]), round(s[2], 1), round(s[3], 1)) for s in samples],
        "evidence_lines": len(evidence),
        "quiet_evidence_logged": bool(quiet_lines),
        "quiet_line": quiet_lines[0] if quiet_lines else None,
        "ring_events": metric(last_body, "orb8_ring_buffer_events_total"),
        "ring_drops": metric(last_body, "orb8_ring_buffer_drops_total"),
        "cgroup_walks": metric(last_body, "orb8_cgroup_walks_total"),
        "tables": {
            line.split('table="')[1].split('"')[0]: line.rpartition(" ")[2]
            for line in last_body.splitlines()
            if line.startswith("orb8_table_entries{")
        },
        "baseline_workloads": len(workloads),
        "baseline_cgroup_workloads": sum(1 for key in workloads if key.startswith("cgroup:")),
        "machine": machine.describe(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", default=str(ROOT), help="orb8 checkout to run (its .venv)")
    parser.add_argument("--extra", type=int, default=3000, help="empty cgroups that stay")
    parser.add_argument("--rate", type=int, default=2000, help="cgroups churned per second")
    parser.add_argument("--churn", type=float, default=60, help="seconds of churn")
    parser.add_argument("--after", type=float, default=30, help="seconds scraped after")
    parser.add_argument("--scrape-every", type=float, default=1.0)
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("orb8_args", nargs="*", help="extra `orb8 run` arguments (after --)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it loads BPF and makes cgroups")
    with tempfile.TemporaryDirectory(prefix="orb8-churn-") as work:
        result = run(args, Path(work))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
