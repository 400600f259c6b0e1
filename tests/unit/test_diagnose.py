"""Pure checks of `orb8 diagnose`, with injected files."""

from __future__ import annotations

import pytest

from exporter.diagnose import (
    check_capabilities,
    check_kernel,
    check_map_memory,
    format_checks,
    run_checks,
)


@pytest.mark.parametrize(
    ("release", "status"),
    [("6.18.44-fc-v657", "ok"), ("5.8.0", "ok"), ("5.4.0-150-generic", "fail"), ("x", "fail")],
)
def test_kernel_version(release, status):
    assert check_kernel(release).status == status


@pytest.mark.parametrize(
    ("capeff", "status"),
    [
        ("000001ffffffffff", "ok"),  # root
        ("000000c000001000", "ok"),  # CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN: the DaemonSet
        ("000000c000000000", "warn"),  # no CAP_NET_ADMIN: the network probe cannot attach
        ("0000000000201000", "ok"),  # CAP_SYS_ADMIN implies BPF and PERFMON
        ("0000004000001000", "fail"),  # no CAP_BPF
        ("0000008000000000", "fail"),  # CAP_BPF alone
        ("0000000000000000", "fail"),
    ],
)
def test_capabilities(tmp_path, capeff, status):
    status_file = tmp_path / "status"
    status_file.write_text(f"Name:\tpython\nCapEff:\t{capeff}\n")
    assert check_capabilities(status_file).status == status


def test_broken_host_reports_every_problem_with_a_fix(tmp_path):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "status").write_text("CapEff:\t0000000000000000\n")
    (proc / "self" / "mountinfo").write_text("1 0 0:1 / / rw - ext4 /dev/vda rw\n")
    results = run_checks(
        modules_root=tmp_path / "modules",
        proc=proc,
        btf=tmp_path / "btf",
        release="6.18.0-custom",
    )
    by_name = {r.name: r for r in results}
    assert by_name["capabilities"].status == "fail"
    assert by_name["cgroup v2"].status == "fail"
    assert by_name["btf"].status == "warn"
    assert by_name["test load"].status == "fail"
    text = format_checks(results)
    assert "-> run as root" in text
    assert "check(s) failed" in text


def test_syscall_abi_detection_is_reported(tmp_path):
    from pathlib import Path

    from exporter.diagnose import check_syscall_abi

    missing = check_syscall_abi(tmp_path / "no-btf", machine="x86_64")
    assert missing.status == "warn" and "i386 syscalls cannot be told apart" in missing.detail
    assert "orb8_syscall_abi_detected 0" in (missing.fix or "")
    arm = check_syscall_abi(Path("/sys/kernel/btf/vmlinux"), machine="aarch64")
    assert arm.status == "warn" and "not told apart on aarch64" in arm.detail
    live = check_syscall_abi(Path("/sys/kernel/btf/vmlinux"), machine="x86_64")
    assert live.status == "ok" and "thread_info.status at offset" in live.detail


DEFAULT_CAPACITIES = {
    "syscall_slots": 65536,
    "dangerous_slots": 16384,
    "ring_buffer_size": 1 << 20,
    "network_traffic_entries": 16384,
    "network_tcp_entries": 8192,
    "network_flow_entries": 16384,
}


@pytest.mark.parametrize(
    ("cpus", "capacities", "status"),
    [
        (2, DEFAULT_CAPACITIES, "ok"),
        (16, DEFAULT_CAPACITIES, "ok"),
        (256, DEFAULT_CAPACITIES, "warn"),  # per-CPU maps grow with the CPUs
        (2, {**DEFAULT_CAPACITIES, "syscall_slots": 1 << 24}, "warn"),
    ],
)
def test_map_memory_budget(cpus, capacities, status):
    check = check_map_memory(capacities, cpus)
    assert check.status == status, check
    assert f"on {cpus} CPUs" in check.detail and "syscall" in check.detail
