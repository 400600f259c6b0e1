"""The syscall tables are complete and the namer handles unknown numbers."""

from __future__ import annotations

import pytest

from exporter.kernel import ProbeError
from exporter.sources.syscalls import syscall_namer
from exporter.sources.syscalls.tables import SYSCALLS

# Numbers that differ between the two architectures, and recent additions.
CASES = [
    ("x86_64", 0, "read"),
    ("x86_64", 101, "ptrace"),
    ("x86_64", 110, "getppid"),
    ("x86_64", 165, "mount"),
    ("x86_64", 175, "init_module"),
    ("x86_64", 272, "unshare"),
    ("x86_64", 308, "setns"),
    ("x86_64", 321, "bpf"),
    ("x86_64", 435, "clone3"),
    ("x86_64", 462, "mseal"),
    ("aarch64", 0, "io_setup"),
    ("aarch64", 40, "mount"),
    ("aarch64", 97, "unshare"),
    ("aarch64", 117, "ptrace"),
    ("aarch64", 173, "getppid"),
    ("aarch64", 268, "setns"),
    ("aarch64", 280, "bpf"),
    ("aarch64", 435, "clone3"),
]


@pytest.mark.parametrize(("arch", "nr", "name"), CASES)
def test_known_numbers(arch, nr, name):
    assert syscall_namer(arch)(nr) == name


I386, X32 = 1 << 16, 2 << 16  # kernel keys: (ABI << 16) | number (bpf/syscalls.c)


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (I386 | 26, "ptrace"),  # x86_64 26 is msync
        (I386 | 310, "unshare"),  # x86_64 310 is process_vm_readv
        (I386 | 346, "setns"),
        (I386 | 21, "mount"),  # x86_64 21 is access
        (I386 | 102, "socketcall"),
        (X32 | 521, "ptrace"),
        (X32 | 165, "mount"),
        (X32 | 101, "unknown"),  # 64-bit-only entry: not an x32 syscall
        (26, "msync"),
    ],
)
def test_keys_are_named_by_the_abi_they_entered_through(key, name):
    assert syscall_namer("x86_64")(key) == name


def test_unknown_numbers_and_aliases():
    namer = syscall_namer("amd64")
    assert namer(999) == "unknown"
    assert namer(400) == "unknown"  # a hole in the x86_64 table
    assert namer(4294967295) == "unknown"
    assert syscall_namer("arm64")(I386 | 26) == "unknown"  # no i386 table on arm64
    assert syscall_namer("arm64")(173) == "getppid"
    with pytest.raises(ProbeError, match="no syscall table for architecture sparc"):
        syscall_namer("sparc")


def test_tables_are_complete():
    x86 = SYSCALLS["x86_64"]
    # x86_64 has no holes from 0 to 334, then the unified range from 424.
    assert all(nr in x86 for nr in range(335))
    assert all(nr in x86 for nr in range(424, 470))
    arm = SYSCALLS["aarch64"]
    # arm64: generic table 0-243, 260-294; 244-259 are arch-reserved and
    # 403-423 are 32-bit-only time64 calls.
    assert all(nr in arm for nr in [*range(244), *range(260, 295)])
    assert all(nr in arm for nr in range(424, 470) if nr != 453)
    assert len(set(x86.values())) == len(x86)


def test_i386_and_x32_tables():
    i386, x32 = SYSCALLS["i386"], SYSCALLS["x32"]
    assert (i386[1], i386[11], i386[26], i386[120], i386[386]) == (
        "exit", "execve", "ptrace", "clone", "rseq",
    )  # fmt: skip
    assert all(nr in i386 for nr in range(424, 470) if nr != 453)
    assert max(i386) < 1024 and max(x32) < 1024  # NR_TABLE in bpf/syscalls.c
    assert x32[0] == "read" and x32[547] == "pwritev2"


@pytest.mark.parametrize(
    ("config", "cmdline", "possible"),
    [
        ("CONFIG_IA32_EMULATION=y\n", "root=/dev/vda", True),
        ("CONFIG_IA32_EMULATION=y\n", "ia32_emulation=0 quiet", False),
        ("CONFIG_IA32_EMULATION=y\nCONFIG_IA32_EMULATION_DEFAULT_DISABLED=y\n", "", False),
        (
            "CONFIG_IA32_EMULATION=y\nCONFIG_IA32_EMULATION_DEFAULT_DISABLED=y\n",
            "ia32_emulation=true",
            True,
        ),
        ("# CONFIG_IA32_EMULATION is not set\nCONFIG_COMPAT=n\n", "", False),
        ("", "", True),  # config unknown: detect rather than risk misnaming
    ],
)
def test_whether_the_kernel_can_run_i386_syscalls(config, cmdline, possible):
    from exporter.sources.syscalls import ia32_emulation

    assert ia32_emulation(config, cmdline)[0] is possible


def test_abi_sensitive_numbers_are_those_whose_i386_name_is_another_dangerous_call():
    """syscall_flags' FLAG_ABI_SENSITIVE (bpf/syscalls.c): the tp_btf hook
    never names these without the compat flag."""
    from exporter.sources.syscalls.names import abi_tables
    from exporter.sources.syscalls.settings import DEFAULT_DANGEROUS_SYSCALLS
    from exporter.sources.syscalls.source import (
        FLAG_ABI_SENSITIVE,
        FLAG_DANGEROUS,
        FLAG_KNOWN,
        NATIVE_SHIFT,
        syscall_flags,
    )

    tables = abi_tables("x86_64")
    native = {name: nr for nr, name in tables[0].items()}
    flags = syscall_flags(tables, set(DEFAULT_DANGEROUS_SYSCALLS), native)
    sensitive = {nr for nr in range(1024) if flags.get(nr, 0) & FLAG_ABI_SENSITIVE}
    # i386 110 iopl, 26 ptrace, 21 mount, 346 setns (no x86_64 346), 101 ioperm
    # (x86_64 101 is ptrace: dangerous in both, under other names).
    assert {110, 26, 21, 346, 101} <= sensitive
    # i386 20 getpid, 39 mkdir: harmless; 425 io_uring_setup: the same name in both.
    assert not {20, 39, 425, 0, 1, 202} & sensitive
    assert flags[346] == FLAG_ABI_SENSITIVE  # not a native syscall: still unknown
    assert flags[110] == FLAG_KNOWN | FLAG_ABI_SENSITIVE  # getppid: not dangerous itself
    i386_ptrace = 1 * 1024 + 26
    assert flags[i386_ptrace] == FLAG_KNOWN | FLAG_DANGEROUS | native["ptrace"] << NATIVE_SHIFT
    # Without the i386 table (other architectures) nothing is sensitive.
    arm = syscall_flags({0: tables[0]}, set(DEFAULT_DANGEROUS_SYSCALLS), native)
    assert not any(value & FLAG_ABI_SENSITIVE for value in arm.values())
