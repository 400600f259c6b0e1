"""The BTF reader: member offsets from a hand-built BTF blob and from the running kernel."""

from __future__ import annotations

import platform
import struct
import subprocess

import pytest

from exporter.kernel.btf import Btf, BtfError
from exporter.sources.syscalls import abi_status_offset
from exporter.sources.syscalls.names import regs_layout
from tests.helpers import bpftool_structs


def blob() -> bytes:
    """BTF with: 1 int u32; 2 struct thread_info {long flags; long work; u32 status};
    3 struct task_struct {struct thread_info thread_info; u32 pid at 64}."""
    strings = b"\0u32\0thread_info\0flags\0work\0status\0task_struct\0pid\0"

    def off(name: bytes) -> int:
        return strings.index(name + b"\0")

    types = b""
    types += struct.pack("<III", off(b"u32"), 1 << 24, 4) + struct.pack("<I", 32)
    types += struct.pack("<III", off(b"thread_info"), (4 << 24) | 3, 24)
    for name, bit_offset in ((b"flags", 0), (b"work", 64), (b"status", 128)):
        types += struct.pack("<III", off(name), 1, bit_offset)
    types += struct.pack("<III", off(b"task_struct"), (4 << 24) | 2, 128)
    types += struct.pack("<III", off(b"thread_info"), 2, 0)
    types += struct.pack("<III", off(b"pid"), 1, 512)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_member_offsets_from_a_blob():
    btf = Btf(blob())
    assert btf.offset_of("task_struct.thread_info.status") == (16, 4)
    assert btf.offset_of("task_struct.pid") == (64, 4)
    with pytest.raises(BtfError, match="has no member cpu"):
        btf.offset_of("thread_info.cpu")
    with pytest.raises(BtfError, match="struct mm_struct not found"):
        btf.find_struct("mm_struct")
    with pytest.raises(BtfError, match="bad BTF magic"):
        Btf(b"\0" * 32)


def test_running_kernel_offset_matches_bpftool():
    """orb8's parser against bpftool's reading of the same BTF (an independent
    parser), not against itself."""
    offset, detail = abi_status_offset()
    if platform.machine() not in ("x86_64", "amd64"):
        # Only x86_64 has an i386 ABI to tell apart (and thread_info.status).
        assert offset is None and "not told apart on" in detail
        return
    assert offset is not None, detail
    assert "kernel BTF" in detail
    structs = bpftool_structs({"task_struct", "thread_info"})
    thread_info = structs["task_struct"][1]["thread_info"]
    status = structs["thread_info"][1]["status"]
    assert offset * 8 == thread_info + status


def test_struct_sizes_match_bpftool():
    names = {"bpf_htab", "bpf_local_storage_map", "thread_info"}
    btf = Btf.from_file()
    assert {name: btf.struct_size(name) for name in names} == {
        name: size for name, (size, _) in bpftool_structs(names).items()
    }


def test_pt_regs_layout_for_tp_btf_matches_bpftool():
    """The fields the tp_btf hook compares and the sys_enter typedef id, as
    bpftool reads them."""
    layout, detail = regs_layout()
    if platform.machine() not in ("x86_64", "amd64"):
        assert layout is None and "no pt_regs shortcut" in detail
        return
    assert layout is not None, detail
    members = bpftool_structs({"pt_regs"})["pt_regs"][1]
    for field in ("cx", "ip"):
        assert members[field] == layout.offsets[field] * 8, field
    text = subprocess.check_output(
        ["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"], text=True
    )
    typedef = [line for line in text.splitlines() if " TYPEDEF 'btf_trace_sys_enter' " in line]
    assert [layout.sys_enter_btf_id] == [int(line.split("]")[0].strip("[")) for line in typedef]


def test_members_inside_anonymous_unions_are_found():
    """struct s {u32 a; union {u32 b; u32 c;};}: c at byte 4."""
    strings = b"\0u32\0s\0a\0b\0c\0"

    def off(name: bytes) -> int:
        return strings.index(name + b"\0")

    types = struct.pack("<III", off(b"u32"), 1 << 24, 4) + struct.pack("<I", 32)  # 1: u32
    types += struct.pack("<III", 0, (5 << 24) | 2, 4)  # 2: anonymous union
    types += struct.pack("<III", off(b"b"), 1, 0) + struct.pack("<III", off(b"c"), 1, 0)
    types += struct.pack("<III", off(b"s"), (4 << 24) | 2, 8)  # 3: struct s
    types += struct.pack("<III", off(b"a"), 1, 0) + struct.pack("<III", 0, 2, 32)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    btf = Btf(header + types + strings)
    assert btf.offset_of("s.c") == (4, 4)
    assert btf.offset_of("s.a") == (0, 4)
    with pytest.raises(BtfError, match="has no member d"):
        btf.offset_of("s.d")
