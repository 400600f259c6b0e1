"""The syscalls probe's own settings: declared once here, each becomes a flag,
an ORB8_* variable and a YAML key (exporter/config.py)."""

from __future__ import annotations

from typing import Any

from exporter.config import (
    MIB,
    Spec,
    boolean,
    map_capacity,
    name_list,
    non_negative_float,
    positive_float,
    positive_int,
)
from exporter.sources.syscalls.names import native_syscall_numbers

# Informed by Falco's and Tetragon's default rules: module loading, kexec,
# BPF, tracing other processes, namespace and mount manipulation, raw I/O,
# clock and boot control. The new mount API (open_tree .. mount_setattr) does
# what mount does; io_uring_setup is the only syscall an io_uring user makes
# before its I/O bypasses syscall hooks; name_to_handle_at pairs with
# open_by_handle_at; pidfd_getfd steals another process's file descriptors.
# Left out on purpose (too common in ordinary software, reasons in
# docs/alerts.md): memfd_create, execveat, clone/clone3, io_uring_enter.
DEFAULT_DANGEROUS_SYSCALLS = (
    "ptrace", "process_vm_writev", "process_vm_readv", "mount", "umount2", "pivot_root",
    "chroot", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "bpf", "perf_event_open", "setns", "unshare", "open_by_handle_at",
    "userfaultfd", "keyctl", "add_key", "request_key", "syslog", "personality", "iopl",
    "ioperm", "swapon", "swapoff", "reboot", "acct", "settimeofday", "clock_settime",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "io_uring_setup", "name_to_handle_at", "pidfd_getfd",
)  # fmt: skip


def syscall_names(value: Any) -> tuple[str, ...]:
    names = name_list(value)
    known = native_syscall_numbers()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown syscall(s) on this architecture: {', '.join(unknown)}")
    return names


def allowlist(value: Any) -> tuple[str, ...]:
    """Selectors: namespace/pod/container (fnmatch globs) or cgroup:<glob>."""
    selectors = name_list(value)
    for selector in selectors:
        if not selector.startswith("cgroup:") and selector.count("/") != 2:
            raise ValueError(
                f"{selector!r} is neither namespace/pod/container nor cgroup:<path glob>"
            )
    return selectors


def evidence_rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a number")
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not 0.01 <= rate <= 1e6:  # also refuses nan and inf
        raise ValueError(f"{rate} must be between 0.01 and 1000000 records per second")
    return rate


def evidence_burst(value: Any) -> int:
    burst = positive_int(value)
    if burst > 1_000_000:
        raise ValueError(f"{burst} is more than 1000000 records")
    return burst


def ring_buffer_size(value: Any) -> int:
    size = positive_int(value)
    if size & (size - 1) or not 4096 <= size <= 32 * MIB:
        raise ValueError(f"{size} must be a power of two between 4096 and {32 * MIB} bytes")
    return size


SETTINGS: tuple[Spec, ...] = (
    Spec(
        "syscall_slots",
        map_capacity,
        65536,  # 1,000 containers x 64 distinct syscalls (docs/scaling.md)
        "capacity of the kernel syscall map in (cgroup, syscall) pairs; when full, "
        "new pairs are not counted and orb8_bpf_map_update_failures_total rises",
        "N",
    ),
    Spec(
        "dangerous_syscalls",
        syscall_names,
        ",".join(DEFAULT_DANGEROUS_SYSCALLS),
        "syscalls counted in orb8_dangerous_syscalls_total and logged as evidence "
        "(replaces the built-in set)",
        "LIST",
    ),
    Spec(
        "extra_dangerous_syscalls",
        syscall_names,
        "",
        "syscalls added to dangerous_syscalls",
        "LIST",
    ),
    Spec(
        "dangerous_allowlist",
        allowlist,
        "",
        "workloads whose dangerous syscalls are expected: namespace/pod/container globs "
        "(e.g. kube-system/*/*) or cgroup:<path glob>; still counted in orb8_syscalls_total",
        "LIST",
    ),
    Spec(
        "dangerous_exclude_self",
        boolean,
        True,
        "do not count orb8's own dangerous syscalls (it calls bpf and perf_event_open)",
        "BOOL",
    ),
    Spec(
        "dangerous_slots",
        map_capacity,
        16384,  # 1,000 cgroups x 16 distinct dangerous syscalls (docs/scaling.md)
        "capacity of the kernel map of dangerous calls in (cgroup, dangerous syscall) pairs; "
        'when full, new pairs are counted under cgroup="<overflow>" (their evidence '
        "names the cgroup)",
        "N",
    ),
    Spec(
        "dangerous_evidence_rate",
        evidence_rate,
        5.0,
        "evidence records per second per cgroup the kernel writes (bursts of "
        "dangerous_evidence_burst); further calls are still counted, and counted in "
        "orb8_dangerous_evidence_suppressed_total",
        "N",
    ),
    Spec(
        "dangerous_evidence_burst",
        evidence_burst,
        20,
        "evidence records a quiet cgroup may write at once before dangerous_evidence_rate applies",
        "N",
    ),
    Spec(
        "ring_buffer_size",
        ring_buffer_size,
        MIB,
        "bytes of the evidence ring buffer: a power of two, 4096 to 32 MiB",
        "BYTES",
    ),
    Spec(
        "ring_buffer_sample_every",
        positive_int,
        10,
        "when the ring buffer is over 90% full, keep 1 evidence event in N",
        "N",
    ),
    Spec(
        "evidence_log_per_minute",
        positive_int,
        6,
        "evidence log lines per minute per workload and syscall; the rest are summarised",
        "N",
    ),
    Spec(
        "baseline_window",
        non_negative_float,
        600.0,
        "seconds from a workload's first appearance during which its syscalls are learned; "
        "later syscalls outside that set count in orb8_syscall_novel_total",
        "SECONDS",
    ),
    Spec(
        "baseline_forget_after",
        positive_float,
        7 * 86400.0,
        "seconds a workload may go unseen before its learned baseline is dropped "
        "(it relearns if it comes back)",
        "SECONDS",
    ),
    Spec(
        "baseline_capacity",
        positive_int,
        10_000,
        "most workloads with a learned baseline; when full, the one seen least recently "
        'is dropped (fill: orb8_table_entries{table="baselines"})',
        "N",
    ),
)
