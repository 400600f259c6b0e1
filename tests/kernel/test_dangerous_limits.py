"""Hostile tenants and the dangerous-syscall path (issue 18, items 1 and 2), on
the real kernel through a running orb8: a flooding cgroup sheds only its own
evidence, and nobody can fill the dangerous map so that another workload's
calls go uncounted."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import pytest

from exporter.sources.syscalls import DEFAULT_DANGEROUS_SYSCALLS, native_syscall_numbers
from exporter.sources.syscalls.tables import SYSCALLS
from tests.helpers import entries_of_cgroup, run_workload, series, wait_for

pytestmark = pytest.mark.kernel

NR = native_syscall_numbers()
I386 = {name: nr for nr, name in SYSCALLS["i386"].items()}
X32 = {name: nr for nr, name in SYSCALLS["x32"].items()}
X32_SYSCALL_BIT = 0x40000000
NOBODY = "uid:65534"
# Other processes on the host make dangerous calls too (a cgroup churn calling
# personality() from thousands of new cgroups a second would flood any
# orb8's ring buffer with records of *different* cgroups, which no per-cgroup
# limit can tell from victims). The tests use dangerous sets without
# personality, so only their own workloads count.
FLOOD = "setns"  # setns(-1): EBADF, harmless, as cheap as personality()
DANGEROUS = tuple(name for name in DEFAULT_DANGEROUS_SYSCALLS if name != "personality")
# Evidence lines can lag behind while the host churns cgroups (each unknown
# cgroup id is resolved by user space): counts are read at once, lines waited for.
LOG_WAIT = 90.0


def rel(cgroup: Path, root: Path) -> str:
    return "/" + str(cgroup.relative_to(root))


def evidence(exporter, cgroup: str) -> list[dict]:
    lines = (json.loads(line) for line in exporter.output().splitlines() if line.startswith("{"))
    return [line for line in lines if line["cgroup"] == cgroup]


def dangerous_entries_of(pid: int, cgroup_id: int) -> int:
    """Entries of cgroup `cgroup_id` in the dangerous_counts map of process `pid`."""
    return entries_of_cgroup("dangerous_counts", cgroup_id, pid)


def test_a_flooding_cgroup_sheds_only_its_own_evidence(
    cgroups, start_exporter, cgroup2_root, workload
):
    # The default 1 MiB ring buffer: without a limit per cgroup the flood
    # fills it within a second and the victims' records are dropped or
    # sampled away (8 of 30 logged in issue 18).
    exporter = start_exporter(
        "--probes", "syscalls", "--evidence-log-per-minute", "100000",
        "--dangerous-syscalls", f"{FLOOD},ptrace",
    )  # fmt: skip
    flooder = cgroups.make()
    flood_label = rel(flooder, cgroup2_root)
    flood = subprocess.Popen(
        [str(workload), str(flooder), f"loop:{NR[FLOOD]}:-1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert flood.stdout is not None and flood.stdout.readline() == "looping\n"
        wait_for(
            lambda: (
                series(exporter.scrape(), "orb8_dangerous_syscalls_total", cgroup=flood_label)
                > 100_000
            ),
            what="the flood to be under way",
        )
        victims = [cgroups.make() for _ in range(30)]
        for victim in victims:
            run_workload(workload, victim, f"{NR['ptrace']}:1:-1")  # EIO, harmless
    finally:
        flood.terminate()
        out, _ = flood.communicate(timeout=30)
    assert flood.returncode == 0
    calls = int(out.split()[-1])

    samples = exporter.scrape()
    # Counts stay exact, for the flooder and for each victim.
    assert series(samples, "orb8_dangerous_syscalls_total", cgroup=flood_label) == calls
    for victim in victims:
        label = rel(victim, cgroup2_root)
        assert series(samples, "orb8_dangerous_syscalls_total", cgroup=label) == 1, label
    # Every victim's one call is logged, whatever the flood.
    for victim in victims:
        label = rel(victim, cgroup2_root)
        line = wait_for(
            lambda label=label: evidence(exporter, label),
            what=f"evidence of {label}",
            timeout=LOG_WAIT,
        )
        assert [(e["syscall"], e["comm"]) for e in line] == [("ptrace", "workload")]
        assert "rate_limited" not in line[0]
    # The flooder's calls are each either recorded (one line each: nothing is
    # dropped at this rate) or suppressed in the kernel and counted so.
    suppressed = series(
        samples, "orb8_dangerous_evidence_suppressed_total", cgroup=flood_label,
        syscall=FLOOD,
    )  # fmt: skip
    assert suppressed > 0.99 * calls, "most of a flood gets no record"
    flood_lines = wait_for(
        lambda: (lines := evidence(exporter, flood_label)) and len(lines) == calls - suppressed,
        what="one line per record the kernel let through",
        timeout=LOG_WAIT,
    )
    # The first record after a suppressed stretch says how many calls it hid.
    told = sum(e.get("rate_limited", 0) for e in evidence(exporter, flood_label))
    assert 0 < told <= suppressed
    assert any("rate_limited_since" in e for e in evidence(exporter, flood_label))
    assert flood_lines


def test_a_full_dangerous_map_still_counts_every_call_and_alerts(
    cgroups, start_exporter, cgroup2_root, workload
):
    slots = 256
    exporter = start_exporter(
        "--probes", "syscalls", "--dangerous-slots", str(slots),
        "--evidence-log-per-minute", "100000", "--deleted-cgroup-grace", "1",
        "--dangerous-syscalls", ",".join(DANGEROUS),
    )  # fmt: skip
    # Each attacker cgroup keeps a process while the test needs the map full
    # (past the grace an empty one's entries are freed, see below).
    sleepers = []

    def attacker() -> Path:
        cgroup = cgroups.make()
        sleepers.append(subprocess.Popen(["sleep", "600"], preexec_fn=join(cgroup)))
        return cgroup

    # One attacker cgroup calls every dangerous syscall through every ABI it
    # can enter: it takes one entry per name, not one per (ABI, name).
    first = attacker()
    specs = [f"{NR[name]}:1:-1" for name in DANGEROUS]
    if platform.machine() == "x86_64":
        specs += [f"int80:{I386[n]}:1:-1" for n in DANGEROUS if n in I386]
        specs += [f"{X32[n] | X32_SYSCALL_BIT}:1:-1" for n in DANGEROUS]
    run_workload(workload, first, NOBODY, *specs)
    first_id = first.stat().st_ino
    assert dangerous_entries_of(exporter.proc.pid, first_id) == len(DANGEROUS)
    # More such cgroups than the map holds.
    for _ in range(slots // len(DANGEROUS) + 1):
        run_workload(workload, attacker(), NOBODY, *specs[: len(DANGEROUS)])
    wait_for(
        lambda: series(exporter.scrape(), "orb8_bpf_map_entries", map="dangerous_counts") == slots,
        what="a full dangerous_counts map",
    )

    victim = cgroups.make()
    victim_label = rel(victim, cgroup2_root)
    run_workload(workload, victim, f"{NR['ptrace']}:5:-1")
    # No entry for the victim: its 5 calls are in the <overflow> series,
    # which the dangerous-syscall alerts see like any other, and its
    # evidence says who made them.
    lines = wait_for(
        lambda: len(found := evidence(exporter, victim_label)) == 5 and found,
        what="5 evidence lines of the victim",
        timeout=LOG_WAIT,
    )
    assert {(e["syscall"], e["counted_as"]) for e in lines} == {("ptrace", "<overflow>")}

    def overflow(samples, name: str) -> float:
        return series(samples, name, cgroup="<overflow>", syscall="ptrace")

    def accounted() -> bool:
        # Other processes on the host may make ptrace calls meanwhile: the
        # overflow series counts exactly the records logged plus those the
        # kernel suppressed, the victim's 5 among them.
        samples = exporter.scrape()
        logged = [e for e in evidence_all(exporter) if e.get("counted_as") == "<overflow>"]
        ptrace = [e for e in logged if e["syscall"] == "ptrace"]
        suppressed = overflow(samples, "orb8_dangerous_evidence_suppressed_total")
        counted = overflow(samples, "orb8_dangerous_syscalls_total")
        return counted >= 5 and counted == len(ptrace) + suppressed

    wait_for(accounted, what="every overflow call counted", timeout=LOG_WAIT)
    samples = exporter.scrape()
    assert series(samples, "orb8_bpf_map_update_failures_total", map="dangerous_counts") >= 5
    assert series(samples, "orb8_dangerous_syscalls_total", cgroup=victim_label) == 0

    # The attackers' cgroups stay, empty. Past the grace their entries are
    # freed (their series continue from carried counts) and a new workload's
    # calls are counted under its own name again.
    for sleeper in sleepers:
        sleeper.kill()
        sleeper.wait()
    wait_for(
        lambda: (
            series(exporter.scrape(), "orb8_bpf_map_entries", map="dangerous_counts") < slots / 2
        ),
        what="the empty attackers' entries to be freed",
    )
    later = cgroups.make()
    run_workload(workload, later, f"{NR['ptrace']}:5:-1")
    samples = exporter.scrape()
    assert series(samples, "orb8_dangerous_syscalls_total", cgroup=rel(later, cgroup2_root)) == 5
    first_label = rel(first, cgroup2_root)
    assert series(samples, "orb8_dangerous_syscalls_total", cgroup=first_label) == len(specs)


def join(cgroup: Path):
    def preexec() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return preexec


def evidence_all(exporter) -> list[dict]:
    return [json.loads(line) for line in exporter.output().splitlines() if line.startswith("{")]
