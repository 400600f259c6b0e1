"""Cost of naming syscalls by their ABI (i386 detection) on the syscall hot path.

Three variants of orb8's syscall probe, loaded by the code `orb8 run` uses
and attached to sys_enter at the same time, so they run on exactly the same
events under the same machine load: tp_btf (what `orb8 run` picks: the
compat flag read only when pt_regs or the number call for it), the raw
tracepoint that reads it on every call, and no detection at all. The
kernel's own per-program counters (BPF_ENABLE_STATS: run count and run time)
then give each variant's ns per run; the differences are the cost of ABI
detection, reported next to the ns per syscall of the
same loop. Measuring inside the kernel side by side is what makes this
usable on a shared, noisy VM, where wall-clock ns per syscall drift by
multiples between runs.

Usage (root): .venv/bin/python benchmarks/abi_detection_cost.py [--calls N] [--rounds N]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bcc import BPF

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from exporter.identity import CgroupTree, Resolver, find_cgroup2_mount  # noqa: E402
from exporter.kernel.headers import find_kernel_headers  # noqa: E402
from exporter.kernel.stats import program_stats  # noqa: E402
from exporter.sources.syscalls import native_syscall_numbers  # noqa: E402
from exporter.sources.syscalls.source import SyscallSource  # noqa: E402

sys.path.insert(0, str(HERE))
from syscall_overhead import FLOOR, Loop, probe_read_defines  # noqa: E402

BPF_ENABLE_STATS, BPF_STATS_RUN_TIME, SYS_BPF = 32, 0, 321


PROGRAM = {
    "tp_btf": "syscalls_enter_btf",
    "helper": "syscalls_enter_raw",
    "probe_read": "syscalls_enter_raw_regs",
    "native": "syscalls_enter_raw",
    "floor (empty)": "floor_enter",
}


def enter_stats(bpf: Any, program: str) -> tuple[int, int]:
    """(runs, run time ns) of one program of a BCC object."""
    for stats in program_stats(bpf):
        if stats.program == program:
            return stats.runs, stats.run_time_ns
    raise RuntimeError(f"{program} not loaded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--reverse", action="store_true", help="attach in the reverse order (order effects)"
    )
    args = parser.parse_args()

    headers = find_kernel_headers()
    root = find_cgroup2_mount()
    sources = {
        "tp_btf": SyscallSource(Resolver(CgroupTree(root)), 32768, 60, headers=headers),
        "helper": SyscallSource(
            Resolver(CgroupTree(root)), 32768, 60, headers=headers, hook="raw_tracepoint"
        ),
        "probe_read": SyscallSource(
            Resolver(CgroupTree(root)), 32768, 60, headers=headers, hook="raw_tracepoint"
        ),
        "native": SyscallSource(
            Resolver(CgroupTree(root)), 32768, 60, headers=headers, abi_detection=False
        ),
    }
    sources["probe_read"].extra_defines = probe_read_defines()
    floor = BPF(text=FLOOR)
    libc = ct.CDLL(None, use_errno=True)
    attr = ct.create_string_buffer(8)
    ct.memmove(attr, ct.byref(ct.c_uint32(BPF_STATS_RUN_TIME)), 4)
    loop = Loop((os.cpu_count() or 1) - 1)
    numbers = native_syscall_numbers()
    syscalls = ("getpid", "getppid")
    per_run: dict[tuple[str, str], list[float]] = {
        (v, n): [] for v in [*sources, "floor (empty)"] for n in syscalls
    }
    loop_ns: dict[str, list[float]] = {n: [] for n in syscalls}
    try:
        for source in reversed(sources.values()) if args.reverse else sources.values():
            source.start()
        assert sources["tp_btf"].hook == "tp_btf", sources["tp_btf"].summary()
        regs = sources["probe_read"]._bpf
        regs.detach_raw_tracepoint(tp=b"sys_enter")
        regs.attach_raw_tracepoint(tp=b"sys_enter", fn_name=b"syscalls_enter_raw_regs")
        floor.attach_raw_tracepoint(tp=b"sys_enter", fn_name=b"floor_enter")
        objects = {**{v: s._bpf for v, s in sources.items()}, "floor (empty)": floor}
        fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, attr, ct.sizeof(attr))
        if fd < 0:
            raise OSError(ct.get_errno(), "BPF_ENABLE_STATS")
        try:
            for _ in range(args.rounds):
                for name in syscalls:
                    before = {v: enter_stats(bpf, PROGRAM[v]) for v, bpf in objects.items()}
                    loop_ns[name].append(loop.run(args.calls, numbers[name]))
                    for variant, bpf in objects.items():
                        runs, run_time = enter_stats(bpf, PROGRAM[variant])
                        b_runs, b_time = before[variant]
                        per_run[variant, name].append((run_time - b_time) / max(1, runs - b_runs))
        finally:
            os.close(fd)
    finally:
        loop.close()
        floor.cleanup()
        for source in sources.values():
            source.close()
    print(
        f"ns per run of the sys_enter program, median of {args.rounds} rounds of "
        f"{args.calls:,} calls (all variants attached at once, BPF_ENABLE_STATS):"
    )
    print("| variant | " + " | ".join(syscalls) + " |")
    print("|---|" + "---|" * len(syscalls))
    for variant in [*sources, "floor (empty)"]:
        cells = [f"{statistics.median(per_run[variant, n]):.1f}" for n in syscalls]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    cells = [f"{statistics.median(loop_ns[n]):.1f}" for n in syscalls]
    print("| loop ns/syscall (all attached) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
