"""Syscall tables and their lookups: number <-> name per ABI, and whether this
kernel's i386 calls can be told apart (ABI detection).

The tables themselves are generated (tables.py, tools/gen_syscall_names.py).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exporter.kernel.btf import VMLINUX, Btf, BtfError
from exporter.sources.syscalls.tables import SYSCALLS

ABI_SHIFT = 16  # kernel key = (ABI << ABI_SHIFT) | number
ABIS = ("native", "i386", "x32")  # ABI index -> table name suffix (bpf/syscalls.c)


def _arch(machine: str | None) -> str:
    machine = machine or platform.machine()
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine)


def syscall_table(machine: str | None = None) -> dict[int, str]:
    table = SYSCALLS.get(_arch(machine))
    if table is None:
        from exporter.kernel import ProbeError  # numpy and BCC: not at settings time

        raise ProbeError(f"no syscall table for architecture {machine or _arch(None)}")
    return table


def abi_tables(machine: str | None = None) -> dict[int, dict[int, str]]:
    """ABI index (bpf/syscalls.c) -> its syscall table, for the ABIs this kernel may see."""
    tables = {0: syscall_table(machine)}
    if _arch(machine) == "x86_64":
        tables[1], tables[2] = SYSCALLS["i386"], SYSCALLS["x32"]
    return tables


def native_syscall_numbers(machine: str | None = None) -> dict[str, int]:
    """name -> number on this architecture."""
    return {name: nr for nr, name in syscall_table(machine).items()}


def syscall_namer(machine: str | None = None) -> Callable[[int], str]:
    """Name of a kernel key ((ABI << 16) | number); anything no table names is "unknown"."""
    tables = abi_tables(machine)

    def name(key: int) -> str:
        table = tables.get(key >> ABI_SHIFT)
        return (table.get(key & 0xFFFF) if table else None) or "unknown"

    return name


def ia32_emulation(
    config: str | None = None, cmdline: str | None = None, release: str | None = None
) -> tuple[bool, str]:
    """Can this x86_64 kernel run i386 syscalls at all? (answer, why).

    From the kernel config (/proc/config.gz or /boot/config-<release>) and
    the ia32_emulation= boot parameter. Unknown means yes: the probe then
    pays for detection rather than risk misnaming.
    """
    if config is None:
        config = _kernel_config(release or platform.release())
    if cmdline is None:
        try:
            cmdline = Path("/proc/cmdline").read_text()
        except OSError:
            cmdline = ""
    options = {
        line.split("=", 1)[0]: line.split("=", 1)[1] for line in config.splitlines() if "=" in line
    }
    if config and options.get("CONFIG_IA32_EMULATION") != "y":
        return False, "kernel built without IA32 emulation: no i386 syscalls possible"
    enabled = options.get("CONFIG_IA32_EMULATION_DEFAULT_DISABLED") != "y"
    for word in cmdline.split():
        if word.startswith("ia32_emulation="):
            enabled = word.split("=", 1)[1].lower() in ("1", "y", "yes", "on", "true")
    if not enabled:
        return False, "IA32 emulation disabled at boot: no i386 syscalls possible"
    return True, "IA32 emulation enabled" if config else "kernel config unknown"


def _kernel_config(release: str) -> str:
    import gzip

    try:
        return gzip.decompress(Path("/proc/config.gz").read_bytes()).decode(errors="replace")
    except OSError:
        pass
    try:
        return Path(f"/boot/config-{release}").read_text(errors="replace")
    except OSError:
        return ""


def abi_status_offset(
    btf_path: Path = VMLINUX, machine: str | None = None
) -> tuple[int | None, str]:
    """Offset of thread_info.status in task_struct from the running kernel's BTF.

    (offset, how it was found) or (None, why the i386 ABI cannot be detected).
    """
    if _arch(machine) != "x86_64":
        return None, f"32-bit compat syscalls are not told apart on {_arch(machine)}"
    try:
        offset, size = Btf.from_file(btf_path).offset_of("task_struct.thread_info.status")
    except BtfError as e:
        return None, f"i386 syscalls cannot be told apart (no usable kernel BTF: {e})"
    if size != 4:
        return None, f"i386 syscalls cannot be told apart (thread_info.status is {size} bytes)"
    return offset, f"i386 calls detected via thread_info.status at offset {offset} (kernel BTF)"


# The pt_regs fields tp_btf/sys_enter compares (bpf/syscalls.c, syscalls_enter_btf)
# and their possible sizes.
REGS_FIELDS = {"cx": (8,), "ip": (8,)}
SYS_ENTER_BTF = "btf_trace_sys_enter"


@dataclass(frozen=True)
class RegsLayout:
    """What the tp_btf hook needs from the running kernel's BTF."""

    offsets: dict[str, int]  # pt_regs field -> byte offset
    sys_enter_btf_id: int  # the btf_trace_sys_enter typedef

    def defines(self) -> dict[str, int]:
        return {f"REGS_{field.upper()}_OFFSET": offset for field, offset in self.offsets.items()}


def regs_layout(
    btf_path: Path = VMLINUX, machine: str | None = None, target: str = SYS_ENTER_BTF
) -> tuple[RegsLayout | None, str]:
    """The pt_regs offsets and the BTF id of `target` (the sys_enter typedef;
    tests name another to see the kernel refuse the program), or (None, why not)."""
    if _arch(machine) != "x86_64":
        return None, f"no pt_regs shortcut on {_arch(machine)}"
    try:
        btf = Btf.from_file(btf_path)
        offsets = {}
        for field, sizes in REGS_FIELDS.items():
            offset, found = btf.offset_of(f"pt_regs.{field}")
            if found not in sizes:
                return None, f"pt_regs.{field} is {found} bytes"
            offsets[field] = offset
        return RegsLayout(offsets, btf.find_typedef(target)), "pt_regs from kernel BTF"
    except BtfError as e:
        return None, f"no usable kernel BTF for tp_btf/sys_enter: {e}"
