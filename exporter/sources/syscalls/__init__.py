"""The syscalls probe: syscalls per cgroup counted in the kernel, dangerous
ones also as evidence, novel ones against a learned baseline.

Package layout: source.py (loader, collect, retirement), names.py + tables.py
(syscall tables and their lookups, ABI detection), settings.py (its settings),
evidence.py (ring-buffer records, allowlist, log rate limit), baseline.py
(learned per-workload syscall sets). Program: bpf/syscalls.c.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.sources import Context, Probe
from exporter.sources.syscalls.maps import kernel_maps
from exporter.sources.syscalls.names import (
    abi_status_offset,
    ia32_emulation,
    native_syscall_numbers,
    syscall_namer,
    syscall_table,
)
from exporter.sources.syscalls.settings import DEFAULT_DANGEROUS_SYSCALLS, SETTINGS

if TYPE_CHECKING:
    from exporter.sources.syscalls.source import SyscallSource


def create(context: Context) -> SyscallSource:
    from exporter.sources.syscalls.source import SecurityOptions, SyscallSource

    settings = context.settings
    return SyscallSource(
        context.resolver,
        settings.syscall_slots,
        settings.deleted_cgroup_grace,
        deleted_pod_grace=settings.deleted_pod_grace,
        security=SecurityOptions(
            dangerous=tuple(
                dict.fromkeys(settings.dangerous_syscalls + settings.extra_dangerous_syscalls)
            ),
            allowlist=settings.dangerous_allowlist,
            exclude_self=settings.dangerous_exclude_self,
            ring_buffer_size=settings.ring_buffer_size,
            sample_every=settings.ring_buffer_sample_every,
            dangerous_slots=settings.dangerous_slots,
            evidence_rate=settings.dangerous_evidence_rate,
            evidence_burst=settings.dangerous_evidence_burst,
            log_per_minute=settings.evidence_log_per_minute,
            baseline_window=settings.baseline_window,
            baseline_forget_after=settings.baseline_forget_after,
            baseline_capacity=settings.baseline_capacity,
            state_dir=settings.state_dir,
        ),
        headers=context.headers,
        bpf_dir=settings.bpf_dir,
    )


PROBE = Probe(
    "syscalls", default=True, settings=SETTINGS, factory=create, bpf=True, maps=kernel_maps
)

__all__ = [
    "DEFAULT_DANGEROUS_SYSCALLS",
    "PROBE",
    "abi_status_offset",
    "ia32_emulation",
    "native_syscall_numbers",
    "syscall_namer",
    "syscall_table",
]
