"""Cost of naming syscalls by their ABI (i386 detection) on the syscall hot path.

Both variants of orb8's syscall probe (with and without the read of the
kernel's compat flag) are loaded by the code `orb8 run` uses and attached to
sys_enter at the same time, so they run on exactly the same events under the
same machine load. The kernel's own per-program counters (BPF_ENABLE_STATS:
run count and run time) then give each variant's ns per run; the difference
is the cost of ABI detection, reported against the ns per syscall of the
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from exporter.identity import CgroupTree, Resolver, find_cgroup2_mount  # noqa: E402
from exporter.kernel.headers import find_kernel_headers  # noqa: E402
from exporter.kernel.stats import program_stats  # noqa: E402
from exporter.sources.syscalls.source import SyscallSource  # noqa: E402

sys.path.insert(0, str(HERE))
from syscall_overhead import Loop  # noqa: E402

BPF_ENABLE_STATS, BPF_STATS_RUN_TIME, SYS_BPF = 32, 0, 321


def enter_stats(source: SyscallSource) -> tuple[int, int]:
    """(runs, run time ns) of the source's sys_enter program."""
    for stats in program_stats(source._bpf):
        if stats.program == "syscalls_enter_raw":
            return stats.runs, stats.run_time_ns
    raise RuntimeError("syscalls_enter_raw not loaded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--native-first", action="store_true", help="attach the variant without ABI detection first"
    )
    args = parser.parse_args()

    headers = find_kernel_headers()
    root = find_cgroup2_mount()
    with_abi = SyscallSource(Resolver(CgroupTree(root)), 32768, 60, headers=headers)
    native = SyscallSource(
        Resolver(CgroupTree(root)), 32768, 60, headers=headers, abi_detection=False
    )
    libc = ct.CDLL(None, use_errno=True)
    attr = ct.create_string_buffer(8)
    ct.memmove(attr, ct.byref(ct.c_uint32(BPF_STATS_RUN_TIME)), 4)
    loop = Loop((os.cpu_count() or 1) - 1)
    per_run: dict[str, list[float]] = {"abi": [], "native": []}
    loop_ns: list[float] = []
    try:
        # Both run on every event, in attach order: check order effects with --native-first.
        for source in (native, with_abi) if args.native_first else (with_abi, native):
            source.start()
        fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, attr, ct.sizeof(attr))
        if fd < 0:
            raise OSError(ct.get_errno(), "BPF_ENABLE_STATS")
        try:
            for _ in range(args.rounds):
                before = {"abi": enter_stats(with_abi), "native": enter_stats(native)}
                loop_ns.append(loop.run(args.calls))
                for name, source in (("abi", with_abi), ("native", native)):
                    runs, run_time = enter_stats(source)
                    b_runs, b_time = before[name]
                    per_run[name].append((run_time - b_time) / max(1, runs - b_runs))
        finally:
            os.close(fd)
    finally:
        loop.close()
        with_abi.close()
        native.close()
    abi, base = statistics.median(per_run["abi"]), statistics.median(per_run["native"])
    syscall = statistics.median(loop_ns)
    print(
        f"ns per run of syscalls_enter_raw, median of {args.rounds} rounds "
        f"of {args.calls:,} getppid calls (both variants attached at once):"
    )
    print(f"  without ABI detection: {base:.1f}")
    print(f"  with ABI detection:    {abi:.1f}  (+{abi - base:.1f} ns)")
    print(f"  ns per syscall of the loop (both attached, stats on): {syscall:.1f}")
    print(
        f"ABI detection: +{(abi - base) / syscall * 100:.1f}% of a syscall, "
        f"+{(abi - base) / base * 100:.0f}% of the program's own run time"
    )


if __name__ == "__main__":
    main()
