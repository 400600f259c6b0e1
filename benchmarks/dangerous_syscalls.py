"""Dangerous-syscall path: evidence throughput, drop accounting, added cost.

1. Added ns per dangerous syscall: setns(-1) (fails with EBADF, harmless) in a
   pinned loop with orb8 loaded twice, alternating: once with setns in the
   dangerous set (exact count + evidence record), once without (plain
   counting path). The difference is what the dangerous path adds.
2. Sustained evidence rate: paced bursts at rising rates; the highest rate
   with zero drops is what the ring buffer + consumer sustain.
3. Overload: an unpaced flood of 1,000,000 calls into a 1 MiB buffer;
   events + drops must equal the calls exactly.
4. orb8's CPU during a flood (issue 18): one process floods setns(-1) as
   fast as it can, with the kernel's per-cgroup evidence limit at its
   default and switched off (a limit no flood reaches: every call gets a
   record, as before issue 18), alternating; CPU = this process's user +
   system time (the evidence reader) over the flood's wall time. Only setns
   is dangerous here, so other processes on a shared machine (a cgroup
   churn making personality() calls, say) add no records of their own.

Only setns is dangerous in every section (ONLY_SETNS), so other processes'
dangerous calls on a shared machine add nothing to read.

Appends a report to RESULTS.md. Usage (root):
  .venv/bin/python benchmarks/dangerous_syscalls.py [--only flood]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import datetime
import logging
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from syscall_overhead import Loop  # noqa: E402

from exporter.identity import CgroupTree, Resolver, find_cgroup2_mount  # noqa: E402
from exporter.kernel import headers  # noqa: E402
from exporter.sources.syscalls.source import (  # noqa: E402
    RB_DROPPED,
    RB_WRITTEN,
    SecurityOptions,
    SyscallSource,
    native_syscall_numbers,
)

SETNS = native_syscall_numbers()["setns"]
# Only the benchmark's own syscall is dangerous: on a shared machine other
# processes' dangerous calls (a cgroup churn, another orb8's bpf()) would add
# records to read, and a reader that never catches up cannot be closed.
ONLY_SETNS = ("setns",)
HOOKS = [
    (b"sched_switch", b"syscalls_switch_raw"),
    (b"cgroup_attach_task", b"syscalls_attach_raw"),
    (b"sys_enter", b"syscalls_enter_raw"),
]


def source(
    dangerous: tuple[str, ...],
    ring_buffer_size: int = 1 << 20,
    evidence_rate: float = 1e6,
    evidence_burst: int = 1_000_000,
) -> SyscallSource:
    """Sections 1-3 measure the record path itself: the per-cgroup evidence
    limit is set out of reach unless asked for."""
    security = SecurityOptions(
        dangerous=dangerous,
        ring_buffer_size=ring_buffer_size,
        log_per_minute=1,
        evidence_rate=evidence_rate,
        evidence_burst=evidence_burst,
    )
    src = SyscallSource(
        Resolver(CgroupTree(find_cgroup2_mount())),
        32768,
        60,
        headers=headers.find_kernel_headers(),
        security=security,
    )
    src.start()
    return src


def ring_stats(src: SyscallSource) -> tuple[int, int]:
    stats = src._bpf[b"ringbuf_stats"]
    return sum(stats[ct.c_int(RB_WRITTEN)]), sum(stats[ct.c_int(RB_DROPPED)])


def detach(src: SyscallSource) -> None:
    for tp, _ in HOOKS:
        src._bpf.detach_raw_tracepoint(tp=tp)


def attach(src: SyscallSource) -> None:
    epoch = src._bpf[b"syscall_epoch"]
    epoch[ct.c_int(0)] = ct.c_uint64(epoch[ct.c_int(0)].value + 1)
    for tp, fn in HOOKS:
        src._bpf.attach_raw_tracepoint(tp=tp, fn_name=fn)


def added_cost(loop: Loop, cycles: int = 60, calls: int = 100_000) -> tuple[float, float]:
    """Median ns/call of setns(-1): (plain counting path, dangerous path)."""
    plain = source(())
    dangerous = source(ONLY_SETNS)
    detach(plain)
    detach(dangerous)
    samples: dict[str, list[float]] = {"plain": [], "dangerous": []}
    try:
        for cycle in range(cycles):
            order = ["plain", "dangerous"] if cycle % 2 else ["dangerous", "plain"]
            for mode in order:
                src = plain if mode == "plain" else dangerous
                attach(src)
                # Paced below the consumer's rate so the dangerous path runs in
                # full (no sampling): this is the cost per recorded event.
                loop.run(calls // 10, SETNS, -1)
                samples[mode].append(loop.run(calls, SETNS, -1))
                detach(src)
                time.sleep(0.05)  # let the consumer drain
    finally:
        plain.close()
        dangerous.close()
    return statistics.median(samples["plain"]), statistics.median(samples["dangerous"])


def sustained_rate(loop: Loop) -> list[tuple[int, int, int]]:
    """(rate, events, drops) for 2 s paced bursts at rising rates."""
    src = source(ONLY_SETNS)
    rows = []
    try:
        for rate in (10_000, 25_000, 50_000, 100_000, 200_000, 400_000):
            before = ring_stats(src)
            loop.run(rate * 2, SETNS, -1, rate)
            time.sleep(0.5)
            after = ring_stats(src)
            rows.append((rate, after[0] - before[0], after[1] - before[1]))
    finally:
        src.close()
    return rows


def dangerous_total(src: SyscallSource) -> int:
    """Every dangerous call the kernel counted, all cgroups."""
    return int(src._read_dangerous()[1][:, 0].sum())


def overload(loop: Loop, calls: int = 1_000_000) -> tuple[int, int, int, float]:
    """(written, dropped, dangerous calls counted, ns per call) for a flood."""
    src = source(ONLY_SETNS)
    try:
        before, counted_before = ring_stats(src), dangerous_total(src)
        ns = loop.run(calls, SETNS, -1)
        time.sleep(0.5)
        after, counted_after = ring_stats(src), dangerous_total(src)
    finally:
        src.close()
    return after[0] - before[0], after[1] - before[1], counted_after - counted_before, ns


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def flood_cpu(loop: Loop, rounds: int = 3, calls: int = 3_000_000) -> dict[str, list[tuple]]:
    """{mode: [(cpu share of one core, records read, calls/s)]} per flood."""
    rows: dict[str, list[tuple]] = {"limited": [], "unlimited": []}
    for round_ in range(rounds):
        for mode in ("limited", "unlimited") if round_ % 2 == 0 else ("unlimited", "limited"):
            src = (
                source(ONLY_SETNS, evidence_rate=5.0, evidence_burst=20)
                if mode == "limited"
                else source(ONLY_SETNS)
            )
            try:
                time.sleep(1)  # start-up work done
                consumed, cpu, start = src._consumed, cpu_seconds(), time.monotonic()
                ns = loop.run(calls, SETNS, -1)
                time.sleep(0.5)  # what is left in the buffer is read too
                wall = time.monotonic() - start
                rows[mode].append(
                    ((cpu_seconds() - cpu) / wall, src._consumed - consumed, 1e9 / ns)
                )
            finally:
                src.close()
    return rows


def flood_report(rows: dict[str, list[tuple]]) -> str:
    lines = "".join(
        f"| {mode} | {share * 100:.1f}% | {records:,} | {rate:,.0f}/s |\n"
        for mode in ("unlimited", "limited")
        for share, records, rate in rows[mode]
    )
    median = {mode: statistics.median(r[0] for r in rows[mode]) for mode in rows}
    return f"""
orb8's CPU during a flood (issue 18): setns(-1) as fast as one pinned
process can, 3,000,000 calls per flood, alternating; CPU of the evidence
reader over the flood's wall time (+0.5 s drain), in share of one core:

| evidence limit | orb8 CPU | records read | flood rate |
|---|---|---|---|
{lines}
Median: **{median["unlimited"] * 100:.1f}%** of a core without the limit (every
call a record, as before issue 18), **{median["limited"] * 100:.1f}%** with the
default limit (5 records/s per cgroup, bursts of 20): goal <= 5%.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["flood"], help="run one section")
    args = parser.parse_args()
    logging.getLogger("orb8.evidence").disabled = True  # measure, don't print
    cpu = (os.cpu_count() or 1) - 1
    loop = Loop(cpu)
    if args.only == "flood":
        try:
            report = f"""
### dangerous_syscalls --only flood ({datetime.date.today()})

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} vCPUs, kernel
{platform.release()}. Flood pinned to CPU {cpu}.
{flood_report(flood_cpu(loop))}"""
        finally:
            loop.close()
        print(report)
        with (HERE / "RESULTS.md").open("a") as f:
            f.write(report)
        return
    try:
        plain, dangerous = added_cost(loop)
        rates = sustained_rate(loop)
        events, drops, counted, flood_ns = overload(loop)
        flood = flood_report(flood_cpu(loop))
    finally:
        loop.close()
    sustained = max((rate for rate, _, dropped in rates if dropped == 0), default=0)
    rate_rows = "".join(f"| {r:,}/s | {e:,} | {d:,} |\n" for r, e, d in rates)
    report = f"""
### dangerous_syscalls ({datetime.date.today()})

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} vCPUs, kernel
{platform.release()}. Loop pinned to CPU {cpu}; the evidence consumer (Python)
shares the other CPU with everything else.

Added cost of the dangerous path (exact count in its own map + one ring buffer
record), setns(-1) in a loop, median of 60 alternating bursts: plain counting
{plain:.1f} ns/call, dangerous {dangerous:.1f} ns/call: **+{dangerous - plain:.1f} ns per
dangerous syscall**.

Sustained evidence rate (2 s paced bursts, 1 MiB buffer):

| rate | events written | drops |
|---|---|---|
{rate_rows}
Highest rate with no drops: **{sustained:,} events/s**.

Overload: 1,000,000 unpaced calls ({flood_ns:.0f} ns each) into a 1 MiB buffer:
{events:,} written + {drops:,} dropped = {events + drops:,}; dangerous calls counted
in the kernel meanwhile (this loop plus any other process): {counted:,}
({"every call accounted for" if events + drops == counted else "MISMATCH"}).
{flood}"""
    print(report)
    with (HERE / "RESULTS.md").open("a") as f:
        f.write(report)


if __name__ == "__main__":
    main()
