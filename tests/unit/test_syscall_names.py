"""The syscall tables are complete and the namer handles unknown numbers."""

from __future__ import annotations

import pytest

from exporter.probes import ProbeError
from exporter.sources.syscalls import syscall_namer
from exporter.syscall_names import SYSCALLS

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


def test_unknown_numbers_and_aliases():
    namer = syscall_namer("amd64")
    assert namer(999) == "unknown_999"
    assert namer(4294967295) == "unknown_4294967295"
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
