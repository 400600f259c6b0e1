"""Read struct member offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The headers BCC compiles against may be a distribution fallback that does not
match the running kernel, so no probe may take an internal struct's layout
from them. Where a probe must read an internal field (the x86 compat-syscall
flag in thread_info.status), its offset comes from here: the kernel's own
type information, read at load time. A minimal, pure parser: only the type
kinds' sizes are decoded, to walk the table, and only structs are resolved.
"""

from __future__ import annotations

import struct
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
MAGIC = 0xEB9F

# Kind -> bytes of extra data after the 12-byte btf_type, per vlen entry or fixed.
_KIND_STRUCT, _KIND_UNION, _KIND_TYPEDEF = 4, 5, 8
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
_PER_VLEN = {
    4: 12,
    5: 12,
    6: 8,
    13: 8,
    15: 12,
    19: 12,
}  # STRUCT UNION ENUM FUNC_PROTO DATASEC ENUM64


class BtfError(RuntimeError):
    pass


class Btf:
    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF data too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._data = data
        self._types_at = hdr_len + type_off
        self._strings_at = hdr_len + str_off
        self._strings_end = self._strings_at + str_len
        # type id -> byte position of its btf_type; id 0 is void.
        self._positions: list[int] = [0]
        position, end = self._types_at, self._types_at + type_len
        while position < end:
            self._positions.append(position)
            info = struct.unpack_from("<I", data, position + 4)[0]
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            position += 12 + _FIXED.get(kind, 0) + _PER_VLEN.get(kind, 0) * vlen

    @classmethod
    def from_file(cls, path: Path = VMLINUX) -> Btf:
        try:
            return cls(path.read_bytes())
        except OSError as e:
            raise BtfError(f"cannot read {path}: {e.strerror}") from None

    def _name(self, offset: int) -> str:
        start = self._strings_at + offset
        end = self._data.index(b"\0", start, self._strings_end)
        return self._data[start:end].decode("ascii", "replace")

    def _header(self, type_id: int) -> tuple[str, int, int, int, int]:
        """(name, kind, vlen, kind_flag, size_or_type) of a type id."""
        position = self._positions[type_id]
        name_off, info, size_or_type = struct.unpack_from("<III", self._data, position)
        return self._name(name_off), (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type

    def find_struct(self, name: str) -> int:
        encoded = name.encode()
        for type_id in range(1, len(self._positions)):
            position = self._positions[type_id]
            name_off, info = struct.unpack_from("<II", self._data, position)
            if (info >> 24) & 0x1F != _KIND_STRUCT:
                continue
            start = self._strings_at + name_off
            if self._data[start : start + len(encoded) + 1] == encoded + b"\0":
                return type_id
        raise BtfError(f"struct {name} not found in BTF")

    def member(self, struct_id: int, member: str) -> tuple[int, int]:
        """(byte offset, type id) of a member of a struct or union, also one
        inside an anonymous struct or union member (pt_regs.cs since FRED)."""
        found = self._member(struct_id, member, 0)
        if found is None:
            raise BtfError(f"struct {self._header(struct_id)[0]} has no member {member}")
        return found

    def _member(self, struct_id: int, member: str, depth: int) -> tuple[int, int] | None:
        name, kind, vlen, kind_flag, _ = self._header(struct_id)
        if kind not in (_KIND_STRUCT, _KIND_UNION):
            raise BtfError(f"type {struct_id} ({name}) is not a struct")
        position = self._positions[struct_id] + 12
        for i in range(vlen):
            name_off, type_id, offset = struct.unpack_from("<III", self._data, position + 12 * i)
            bits = offset & 0xFFFFFF if kind_flag else offset
            if name_off == 0 and depth < 8:
                inner_id = self._resolve_typedefs(type_id)
                if self._header(inner_id)[1] in (_KIND_STRUCT, _KIND_UNION):
                    inner = self._member(inner_id, member, depth + 1)
                    if inner is not None:
                        return bits // 8 + inner[0], inner[1]
                continue
            if self._name(name_off) == member:
                if bits % 8:
                    raise BtfError(f"{name}.{member} is a bitfield")
                return bits // 8, type_id
        return None

    def find_typedef(self, name: str) -> int:
        """Type id of a typedef, e.g. btf_trace_sys_enter: the id a tp_btf
        program names as the tracepoint it attaches to."""
        encoded = name.encode()
        for type_id in range(1, len(self._positions)):
            position = self._positions[type_id]
            name_off, info = struct.unpack_from("<II", self._data, position)
            if (info >> 24) & 0x1F != _KIND_TYPEDEF:
                continue
            start = self._strings_at + name_off
            if self._data[start : start + len(encoded) + 1] == encoded + b"\0":
                return type_id
        raise BtfError(f"typedef {name} not found in BTF")

    def size(self, type_id: int) -> int:
        """Size in bytes of an int/struct type, through typedefs and qualifiers."""
        for _ in range(16):
            name, kind, _vlen, _kf, size_or_type = self._header(type_id)
            if kind in (1, _KIND_STRUCT, _KIND_UNION, 6, 19):
                return size_or_type
            if kind in (_KIND_TYPEDEF, 9, 10, 11, 18):  # typedef, volatile, const, restrict, tag
                type_id = size_or_type
                continue
            raise BtfError(f"type {name} (kind {kind}) has no plain size")
        raise BtfError("type chain too long")

    def struct_size(self, name: str) -> int:
        """sizeof(struct name)."""
        return self.size(self.find_struct(name))

    def offset_of(self, path: str) -> tuple[int, int]:
        """(byte offset, size) of e.g. "task_struct.thread_info.status"."""
        struct_name, *members = path.split(".")
        type_id, total = self.find_struct(struct_name), 0
        for member in members:
            offset, type_id = self.member(type_id, member)
            total += offset
            type_id = self._resolve_typedefs(type_id)
        return total, self.size(type_id)

    def _resolve_typedefs(self, type_id: int) -> int:
        for _ in range(16):
            _name, kind, _vlen, _kf, size_or_type = self._header(type_id)
            if kind not in (_KIND_TYPEDEF, 9, 10, 11, 18):
                return type_id
            type_id = size_or_type
        raise BtfError("type chain too long")
