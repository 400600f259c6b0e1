"""SIGTERM from any phase: exit 0, probes detached, no traceback; lifecycle work runs
without scrapes. A real `orb8 run` with real probes."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from tests.helpers import (
    ORB8,
    ROOT,
    TEST_SYSCALL_SLOTS,
    free_port,
    kernel_pairs_of,
    run_workload,
    series,
    wait_for,
)
from tests.kernel.test_syscalls import GETPPID, rel


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *ORB8,
            "run",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--log-format",
            "json",
            *TEST_SYSCALL_SLOTS,
            *args,
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )


def finish(proc: subprocess.Popen) -> tuple[int, list[dict]]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, [json.loads(line) for line in err.splitlines()]


def test_sigterm_during_start_up_exits_0_at_once():
    proc = spawn()
    assert proc.stderr is not None
    first = json.loads(proc.stderr.readline())
    assert "starting" in first["message"]  # now the probes are being compiled
    code, entries = finish(proc)
    assert code == 0, entries
    # Usually still compiling ("stopped during start-up"); on a fast machine it may
    # have finished just before the signal ("detaching probes"): both are clean.
    said = " ".join(e.get("message", "") for e in entries)
    assert "during start-up" in said or "detaching probes" in said, entries


def test_sigterm_right_after_exec_exits_0():
    proc = spawn()
    time.sleep(0.5)  # wherever it is: imports, settings, bind or compiling
    code, entries = finish(proc)
    assert code == 0, entries


def test_sigterm_while_serving_exits_0_and_every_line_is_json():
    proc = spawn("--probes", "syscalls")
    assert proc.stderr is not None
    while "serving metrics" not in json.loads(proc.stderr.readline()).get("message", ""):
        pass
    code, entries = finish(proc)
    assert code == 0, entries
    assert any("detaching probes" in e.get("message", "") for e in entries)


def test_removed_cgroups_retire_without_any_scrape(start_exporter, cgroups, cgroup2_root, workload):
    exporter = start_exporter("--probes", "syscalls", "--deleted-cgroup-grace", "1")
    cgroup = cgroups.make()
    label = rel(cgroup, cgroup2_root)
    run_workload(workload, cgroup, f"{GETPPID}:77")
    samples = exporter.scrape()
    assert series(samples, "orb8_syscalls_total", cgroup=label, syscall="getppid") == 77
    cgroup_id = cgroup.stat().st_ino
    assert kernel_pairs_of(cgroup_id, exporter.proc.pid) > 0
    cgroups.remove(cgroup)
    # Nobody scrapes: housekeeping (every second with this grace) sees the cgroup go,
    # waits the grace and retires it. Retiring only inside scrapes, the next scrape
    # would be the first to notice, and the series would still be there. Retiring
    # frees the kernel entries, which bpftool shows without a scrape: typically
    # within 7 s (the cgroup tree is re-read every 5 s, + 1 s grace, + a 1 s
    # round), up to 30 s on a loaded machine. Then one scrape.
    wait_for(
        lambda: kernel_pairs_of(cgroup_id, exporter.proc.pid) == 0,
        timeout=30,
        what="the removed cgroup's kernel entries freed without a scrape",
        interval=0.5,
    )
    samples = exporter.scrape()
    assert series(samples, "orb8_syscalls_total", cgroup=label) == 0
