"""Syscall probe overhead: ns per syscall of a tight getppid loop.

Modes:
  none   no program attached;
  floor  an empty raw tracepoint on sys_enter: the unavoidable cost of
         hooking every syscall at all;
  naive  the straightforward design (per-CPU hash keyed by (cgroup, nr),
         one hash lookup per event), for reference;
  orb8   orb8's syscall probe, loaded by the same code as `orb8 run`
         (with its sched_switch and cgroup_attach_task hooks).
  orb8_native  the same probe without i386 ABI detection (no read of
         thread_info.status): the price of naming compat calls correctly.

Every program is compiled and loaded once; the benchmark then attaches one
mode at a time and runs short bursts of getppid calls in a pinned,
long-lived loop process, cycling through the modes many times. Fine
interleaving cancels the slow drift of a shared VM, and the median of many
bursts per mode discards the spikes. Reported: overhead ratio =
(orb8 - none) / (floor - none) on those medians, with a bootstrap interval.
Goal: <= 1.25. Results are appended to RESULTS.md, or with --json FILE
written there instead (medians and every mode's ratio; benchmarks/bench_scale.py).

Usage (root): .venv/bin/python benchmarks/syscall_overhead.py [--cycles N]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bcc import BPF  # noqa: E402

from exporter.identity import CgroupTree, Resolver, find_cgroup2_mount  # noqa: E402
from exporter.kernel import headers  # noqa: E402
from exporter.sources.syscalls import native_syscall_numbers  # noqa: E402
from exporter.sources.syscalls.source import SyscallSource  # noqa: E402

MODES = ("none", "floor", "naive", "orb8", "orb8_native")
GETPPID = native_syscall_numbers()["getppid"]
ORB8_HOOKS = [
    (b"sched_switch", b"syscalls_switch_raw"),
    (b"cgroup_attach_task", b"syscalls_attach_raw"),
    (b"sys_enter", b"syscalls_enter_raw"),
]
FLOOR = b"int floor_enter(void *ctx) { return 0; }"
NAIVE = b"""
struct key { u64 cgroup_id; u32 nr; u32 pad; };
BPF_PERCPU_HASH(counts, struct key, u64, 32768);
int naive_enter(struct bpf_raw_tracepoint_args *ctx) {
    struct key k = {.cgroup_id = bpf_get_current_cgroup_id(), .nr = (u32)ctx->args[1]};
    u64 zero = 0, *v = counts.lookup_or_try_init(&k, &zero);
    if (v) (*v)++;
    return 0;
}
"""


class Programs:
    """Each mode's BPF object, loaded once; attach/detach switch modes."""

    def __init__(self) -> None:
        self.floor = BPF(text=FLOOR)
        self.floor.load_func(b"floor_enter", BPF.RAW_TRACEPOINT)
        self.naive = BPF(text=NAIVE)
        self.naive.load_func(b"naive_enter", BPF.RAW_TRACEPOINT)
        self.source = SyscallSource(
            Resolver(CgroupTree(find_cgroup2_mount())),
            32768,
            60,
            headers=headers.find_kernel_headers(),
        )
        self.source.start()  # attaches: detach until its turn
        self.orb8: Any = self.source._bpf  # the exact object `orb8 run` uses
        for tp, _ in ORB8_HOOKS:
            self.orb8.detach_raw_tracepoint(tp=tp)
        self.native_source = SyscallSource(
            Resolver(CgroupTree(find_cgroup2_mount())),
            32768,
            60,
            headers=headers.find_kernel_headers(),
            abi_detection=False,
        )
        self.native_source.start()
        self.orb8_native: Any = self.native_source._bpf
        for tp, _ in ORB8_HOOKS:
            self.orb8_native.detach_raw_tracepoint(tp=tp)
        self.attached: str = "none"

    def hooks(self, mode: str) -> list[tuple[bytes, bytes]]:
        return {
            "none": [],
            "floor": [(b"sys_enter", b"floor_enter")],
            "naive": [(b"sys_enter", b"naive_enter")],
            "orb8": ORB8_HOOKS,
            "orb8_native": ORB8_HOOKS,
        }[mode]

    def switch(self, mode: str) -> None:
        for tp, _ in self.hooks(self.attached):
            getattr(self, self.attached).detach_raw_tracepoint(tp=tp)
        if mode in ("orb8", "orb8_native"):
            # Context switches went unseen while detached: invalidate caches.
            epoch = getattr(self, mode)[b"syscall_epoch"]
            epoch[ct.c_int(0)] = ct.c_uint64(epoch[ct.c_int(0)].value + 1)
        for tp, fn in self.hooks(mode):
            getattr(self, mode).attach_raw_tracepoint(tp=tp, fn_name=fn)
        self.attached = mode

    def close(self) -> None:
        self.switch("none")
        self.floor.cleanup()
        self.naive.cleanup()
        self.source.close()
        self.native_source.close()


class Loop:
    """A pinned, long-lived syscall_loop.c process."""

    def __init__(self, cpu: int) -> None:
        binary = Path(tempfile.mkdtemp(prefix="orb8-bench-")) / "syscall_loop"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "syscall_loop.c")], check=True)
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), str(binary)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, calls: int, nr: int = GETPPID, arg0: int = 0, rate: float = 0) -> float:
        """ns per call of `calls` syscall(nr, arg0), at most `rate` per second."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{calls} {nr} {arg0} {rate}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.write("0\n")
        self.proc.stdin.close()
        self.proc.wait()


def ratio(medians: dict[str, float], mode: str) -> float:
    return (medians[mode] - medians["none"]) / (medians["floor"] - medians["none"])


def bootstrap(samples: dict[str, list[float]], mode: str, n: int = 2000) -> tuple[float, float]:
    rng = random.Random(8)
    values = []
    for _ in range(n):
        medians = {m: statistics.median(rng.choices(v, k=len(v))) for m, v in samples.items()}
        if medians["floor"] > medians["none"]:
            values.append(ratio(medians, mode))
    values.sort()
    return values[int(len(values) * 0.05)], values[int(len(values) * 0.95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=150, help="passes over all modes")
    parser.add_argument("--calls", type=int, default=200_000, help="getppid calls per burst")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--json", type=Path, help="write the figures here instead of --results")
    args = parser.parse_args()

    cpu = (os.cpu_count() or 1) - 1
    loop = Loop(cpu)
    programs = Programs()
    samples: dict[str, list[float]] = {m: [] for m in MODES}
    rng = random.Random(1)
    try:
        for cycle in range(args.cycles):
            order = list(MODES)
            rng.shuffle(order)
            for mode in order:
                programs.switch(mode)
                loop.run(args.calls // 10)  # settle caches after the switch
                samples[mode].append(loop.run(args.calls))
            if (cycle + 1) % 25 == 0:
                medians = {m: statistics.median(v) for m, v in samples.items()}
                print(
                    f"cycle {cycle + 1}: "
                    + " ".join(f"{m}={medians[m]:.1f}" for m in MODES)
                    + f" ratio={ratio(medians, 'orb8'):.2f}",
                    flush=True,
                )
    finally:
        programs.close()
        loop.close()

    medians = {m: statistics.median(v) for m, v in samples.items()}
    orb8, naive = ratio(medians, "orb8"), ratio(medians, "naive")
    low, high = bootstrap(samples, "orb8")
    if args.json:
        ratios = {m: ratio(medians, m) for m in MODES if m not in ("none", "floor")}
        args.json.write_text(
            json.dumps(
                {
                    "cycles": args.cycles,
                    "calls": args.calls,
                    "ns_per_syscall": medians,
                    "ratios": ratios,
                    "orb8_interval": [low, high],
                    "load_average": os.getloadavg(),
                },
                indent=1,
            )
        )
        return
    verdict = "meets" if orb8 <= 1.25 else "misses"
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    table = "".join(
        f"| {m} | {medians[m]:.1f} | {medians[m] - medians['none']:+.1f} |\n" for m in MODES
    )
    report = f"""
### syscall_overhead ({datetime.date.today()})

Machine: {cpu_model}, {os.cpu_count()} vCPUs, kernel {platform.release()}. Loop pinned
to CPU {cpu}; {args.cycles} shuffled cycles over the modes, {args.calls:,} getppid calls
per burst; medians of {args.cycles} bursts per mode.

| mode | ns/syscall | vs none |
|---|---|---|
{table}
**Overhead ratio (orb8 - none) / (floor - none) = {orb8:.2f}** (90% bootstrap
interval {low:.2f}-{high:.2f}); {verdict} the goal of <= 1.25. The naive per-CPU
hash design measured {naive:.2f} in the same run.
i386 ABI detection (orb8 vs orb8_native, same run): {medians["orb8"] - medians["orb8_native"]:+.1f}
ns/syscall, {(medians["orb8"] / medians["orb8_native"] - 1) * 100:+.1f}% of the ns per syscall,
ratio {ratio(medians, "orb8_native"):.2f} without it.
"""
    print(report)
    with args.results.open("a") as f:
        f.write(report)


if __name__ == "__main__":
    main()
