"""Exact per-cgroup syscall counts from the real kernel, read through /metrics."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from exporter.sources.syscalls import native_syscall_numbers
from tests.helpers import kernel_pairs_of, run_workload, series

pytestmark = pytest.mark.kernel

# The workload makes raw syscall(2) calls: this architecture's numbers, not x86_64's.
GETPPID, GETPGID = (str(native_syscall_numbers()[name]) for name in ("getppid", "getpgid"))
N_GETPPID = 100_003
N_GETPGID = 23


def rel(cgroup, root) -> str:
    return "/" + str(cgroup.relative_to(root))


def test_exact_counts_for_a_cgroup(start_exporter, cgroups, cgroup2_root, workload):
    exporter = start_exporter()
    cgroup = cgroups.make()
    label = rel(cgroup, cgroup2_root)
    before = exporter.scrape()
    assert series(before, "orb8_syscalls_total", cgroup=label) == 0

    run_workload(workload, cgroup, f"{GETPPID}:{N_GETPPID}", f"{GETPGID}:{N_GETPGID}:0")

    after = exporter.scrape()
    assert series(after, "orb8_syscalls_total", cgroup=label, syscall="getppid") == N_GETPPID
    assert series(after, "orb8_syscalls_total", cgroup=label, syscall="getpgid") == N_GETPGID
    plain = series(after, "orb8_syscalls_total", cgroup=label, namespace="", pod="", container="")
    assert plain >= N_GETPPID + N_GETPGID
    assert series(after, "orb8_probe_up", probe="syscalls") == 1
    assert series(after, "orb8_bpf_map_update_failures_total", map="syscall_slots") == 0


def test_nested_cgroups_are_counted_separately(start_exporter, cgroups, cgroup2_root, workload):
    exporter = start_exporter()
    parent = cgroups.make()
    child = cgroups.make(f"{parent.name}/child.scope")
    run_workload(workload, child, f"{GETPPID}:1001")
    run_workload(workload, parent, f"{GETPPID}:7")
    samples = exporter.scrape()
    child_label, parent_label = rel(child, cgroup2_root), rel(parent, cgroup2_root)
    assert series(samples, "orb8_syscalls_total", cgroup=child_label, syscall="getppid") == 1001
    assert series(samples, "orb8_syscalls_total", cgroup=parent_label, syscall="getppid") == 7


def test_cgroup_removed_before_any_scrape_folds_into_unresolved(start_exporter, cgroups, workload):
    exporter = start_exporter()
    before = series(
        exporter.scrape(), "orb8_syscalls_total", cgroup="<unresolved>", syscall="getppid"
    )
    cgroup = cgroups.make()
    run_workload(workload, cgroup, f"{GETPPID}:5003")
    cgroups.remove(cgroup)
    # The first scrape may still see the id as "not yet walked" and hold it
    # back; within a rescan interval it is known to be gone and folded.
    deadline = time.monotonic() + 10
    while True:
        after = series(
            exporter.scrape(), "orb8_syscalls_total", cgroup="<unresolved>", syscall="getppid"
        )
        if after - before == 5003 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert after - before == 5003


def test_removed_cgroup_is_exported_then_freed(start_exporter, cgroups, cgroup2_root, workload):
    exporter = start_exporter("--deleted-cgroup-grace", "1")
    cgroup = cgroups.make()
    label = rel(cgroup, cgroup2_root)
    run_workload(workload, cgroup, f"{GETPPID}:333")
    samples = exporter.scrape()
    assert series(samples, "orb8_syscalls_total", cgroup=label, syscall="getppid") == 333
    cgroup_id = cgroup.stat().st_ino
    assert kernel_pairs_of(cgroup_id, exporter.proc.pid) > 0
    cgroups.remove(cgroup)

    # Gone but within grace: still exported under its path.
    samples = exporter.scrape()
    assert series(samples, "orb8_syscalls_total", cgroup=label, syscall="getppid") == 333
    deadline = time.monotonic() + 15
    while (
        series(exporter.scrape(), "orb8_syscalls_total", cgroup=label)
        and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    samples = exporter.scrape()
    assert series(samples, "orb8_syscalls_total", cgroup=label) == 0
    assert kernel_pairs_of(cgroup_id, exporter.proc.pid) == 0, "its kernel entries were freed"


def test_slots_are_reused_after_retirement(start_exporter, cgroups, cgroup2_root, workload):
    exporter = start_exporter("--deleted-cgroup-grace", "0", "--syscall-slots", "512")
    for round_ in range(6):
        cgroup = cgroups.make()
        run_workload(workload, cgroup, f"{GETPPID}:{100 + round_}")
        samples = exporter.scrape()
        label = rel(cgroup, cgroup2_root)
        assert (
            series(samples, "orb8_syscalls_total", cgroup=label, syscall="getppid") == 100 + round_
        )
        cgroups.remove(cgroup)
        deadline = time.monotonic() + 10
        while (
            series(exporter.scrape(), "orb8_syscalls_total", cgroup=label)
            and time.monotonic() < deadline
        ):
            time.sleep(0.3)
    # Six short-lived cgroups each using ~30 pairs would exceed nothing here,
    # but without reuse the map would keep growing: it must not.
    samples = exporter.scrape()
    assert series(samples, "orb8_bpf_map_update_failures_total", map="syscall_slots") == 0


def test_full_map_counts_failures_instead_of_growing(start_exporter, cgroups, workload):
    exporter = start_exporter("--syscall-slots", "16")
    cgroup = cgroups.make()
    run_workload(workload, cgroup, f"{GETPPID}:10", f"{GETPGID}:10:0")
    samples = exporter.scrape()
    assert series(samples, "orb8_bpf_map_entries", map="syscall_slots") == 16
    assert series(samples, "orb8_bpf_map_capacity", map="syscall_slots") == 16
    assert series(samples, "orb8_bpf_map_update_failures_total", map="syscall_slots") > 0


def _orb8_bpf_objects() -> tuple[set[int], set[int]]:
    progs = json.loads(subprocess.check_output(["bpftool", "-j", "prog", "list"]))
    maps = json.loads(subprocess.check_output(["bpftool", "-j", "map", "list"]))
    prog_ids = {p["id"] for p in progs if p.get("name", "").startswith("syscalls_enter")}
    map_ids = {m["id"] for m in maps if m.get("name", "").startswith("syscall_")}
    return prog_ids, map_ids


def _held_by(pid: int) -> tuple[set[int], set[int]]:
    """Program and map ids process `pid` holds open (its fdinfo), so that other
    BPF users on the machine (another orb8, a tracer) do not count as ours."""
    progs: set[int] = set()
    maps: set[int] = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:  # the fd closed meanwhile
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key == "prog_id":
                progs.add(int(value))
            elif key == "map_id":
                maps.add(int(value))
    return progs, maps


def _wait_released(prog_ids: set[int], map_ids: set[int]) -> tuple[set[int], set[int]]:
    """The kernel frees programs and maps shortly after the last fd closes."""
    deadline = time.monotonic() + 10
    while True:
        progs, maps = _orb8_bpf_objects()
        left = (progs & prog_ids, maps & map_ids)
        if not any(left) or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_stopping_leaves_no_program_or_map_loaded(start_exporter):
    exporter = start_exporter()
    progs_running, maps_running = _orb8_bpf_objects()
    held_progs, held_maps = _held_by(exporter.proc.pid)
    ours = (progs_running & held_progs, maps_running & held_maps)
    assert ours[0], "the running exporter's program is not visible"
    assert len(ours[1]) >= 5, "the running exporter's maps are not visible"
    assert exporter.stop() == 0
    assert _wait_released(*ours) == (set(), set())


def test_sigint_also_detaches(start_exporter):
    import signal

    exporter = start_exporter()
    progs_running, maps_running = _orb8_bpf_objects()
    held_progs, held_maps = _held_by(exporter.proc.pid)
    exporter.proc.send_signal(signal.SIGINT)
    assert exporter.proc.wait(timeout=30) == 0
    ours = (progs_running & held_progs, maps_running & held_maps)
    assert ours[0]
    assert _wait_released(*ours) == (set(), set())


def test_classic_tracepoint_variant_counts_exactly(cgroups, cgroup2_root, workload):
    """The fallback hook, loaded directly through the source, is exact too."""
    from exporter.identity import CgroupTree, Resolver
    from exporter.sources.syscalls.source import SyscallSource

    source = SyscallSource(Resolver(CgroupTree(cgroup2_root)), 1024, 60, hook="tracepoint")
    source.start()
    try:
        assert source.hook == "tracepoint"
        cgroup = cgroups.make()
        run_workload(workload, cgroup, f"{GETPPID}:4321")
        families = {f.name: f for f in source.collect()}
        label = rel(cgroup, cgroup2_root)
        values = [
            value
            for labels, value in families["orb8_syscalls_total"].samples
            if labels[3] == label and labels[4] == "getppid"
        ]
        assert values == [4321]
    finally:
        source.close()


def test_tp_btf_hook_is_chosen_and_counts_exactly(start_exporter, cgroups, cgroup2_root, workload):
    """Where the i386 check is on, the counter runs as tp_btf/sys_enter
    (issue 20): getpid takes the shortcut without the compat-flag helper,
    getppid (i386 110 is iopl, a dangerous name) never does. Both exact."""
    from exporter.sources.syscalls import ia32_emulation

    exporter = start_exporter()
    cgroup = cgroups.make()
    getpid = str(native_syscall_numbers()["getpid"])
    run_workload(workload, cgroup, f"{getpid}:{N_GETPPID}", f"{GETPPID}:{N_GETPGID}")
    samples = exporter.scrape()
    label = rel(cgroup, cgroup2_root)
    assert series(samples, "orb8_syscalls_total", cgroup=label, syscall="getpid") == N_GETPPID
    assert series(samples, "orb8_syscalls_total", cgroup=label, syscall="getppid") == N_GETPGID
    possible, why = ia32_emulation()
    if not possible:
        # No i386 check to spare: the plain raw tracepoint, as before.
        assert "hook=raw_tracepoint slots" in exporter.output(), why
        return
    assert "hook=tp_btf slots" in exporter.output()
    runs = "orb8_bpf_program_runs_total"
    assert (runs, (("program", "syscalls_enter_btf"),)) in samples
    assert (runs, (("program", "syscalls_enter_raw"),)) not in samples


def test_raw_tracepoint_with_the_i386_check_counts_exactly(cgroups, cgroup2_root, workload):
    """The fallback where tp_btf cannot load: the raw tracepoint reads the
    compat flag on every call, and counts as exactly."""
    from exporter.identity import CgroupTree, Resolver
    from exporter.sources.syscalls.source import SyscallSource

    source = SyscallSource(Resolver(CgroupTree(cgroup2_root)), 1024, 60, hook="raw_tracepoint")
    source.start()
    try:
        assert source.hook == "raw_tracepoint"
        cgroup = cgroups.make()
        run_workload(workload, cgroup, f"{GETPPID}:4321", f"{GETPGID}:17:0")
        families = {f.name: f for f in source.collect()}
        label = rel(cgroup, cgroup2_root)
        values = {
            labels[4]: value
            for labels, value in families["orb8_syscalls_total"].samples
            if labels[3] == label
        }
        assert (values["getppid"], values["getpgid"]) == (4321, 17)
    finally:
        source.close()


def test_a_refused_tp_btf_program_falls_back_to_the_raw_tracepoint(cgroups, cgroup2_root, workload):
    """Aimed at sched_switch's BTF type, whose first argument is a bool, the
    verifier refuses the program's pt_regs loads: the source says why and
    counts with the raw tracepoint, exactly; forced, the same is an error."""
    from exporter import kernel
    from exporter.identity import CgroupTree, Resolver
    from exporter.sources.syscalls import ia32_emulation
    from exporter.sources.syscalls.source import SyscallSource

    if not ia32_emulation()[0]:
        # No i386 check to spare: tp_btf is never tried (see the test above).
        return
    wrong = "btf_trace_sched_switch"
    forced = SyscallSource(
        Resolver(CgroupTree(cgroup2_root)), 1024, 60, hook="tp_btf", tp_btf_target=wrong
    )
    with pytest.raises(kernel.ProbeError, match="tp_btf/sys_enter"):
        forced.start()
    source = SyscallSource(Resolver(CgroupTree(cgroup2_root)), 1024, 60, tp_btf_target=wrong)
    source.start()
    try:
        assert source.hook == "raw_tracepoint"
        assert source.summary().startswith("hook=raw_tracepoint (tp_btf refused: ")
        cgroup = cgroups.make()
        run_workload(workload, cgroup, f"{GETPPID}:1234")
        families = {f.name: f for f in source.collect()}
        label = rel(cgroup, cgroup2_root)
        values = {
            labels[4]: value
            for labels, value in families["orb8_syscalls_total"].samples
            if labels[3] == label
        }
        assert values["getppid"] == 1234
        programs = {p for (p,), _ in families["orb8_bpf_program_runs_total"].samples}
        assert "syscalls_enter_raw" in programs and "syscalls_enter_btf" not in programs
    finally:
        source.close()
