"""Attach: feature probes for the hooks (tracefs, raw tracepoints by
symbol), tracepoints, and cgroup programs (cgroup_skb, sock_ops) on the
cgroup v2 root through BPF links, or BPF_PROG_ATTACH where links are
missing."""

from __future__ import annotations

import ctypes as ct
import errno
import logging
import os
import platform
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.kernel import ProbeError
from exporter.kernel.compiler import import_bcc, libbcc

log = logging.getLogger(__name__)


TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def tracefs_root() -> Path | None:
    for root in TRACEFS_CANDIDATES:
        if (root / "events").is_dir():
            return root
    return None


def tracepoint_field_offset(category: str, event: str, field_name: str) -> int | None:
    """Offset of a field in a tracepoint's tracefs format, or None if unknown."""
    root = tracefs_root()
    if root is None:
        return None
    try:
        text = (root / "events" / category / event / "format").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("field:"):
            continue
        parts = dict(
            part.strip().split(":", 1) for part in line.split(";") if ":" in part and part.strip()
        )
        declaration = parts.get("field", "").split()
        if declaration and declaration[-1] == field_name:
            return int(parts["offset"])
    return None


def kernel_has_symbol(names: tuple[str, ...], kallsyms: Path = Path("/proc/kallsyms")) -> bool:
    """Whether any of `names` is a kernel symbol, by name.

    BCC's support_raw_tracepoint() looks the symbol's address up, and without
    CAP_SYSLOG (the DaemonSet does not grant it) every address reads as 0, so
    it answers False and orb8 fell back to the slower classic tracepoint in a
    least-privilege container. Names stay visible, so match those. It also
    loads BCC's kernel symbol cache (every kallsyms line as a C++ string),
    which BCC keeps for the life of the process: 25 MiB of RssAnon that
    orb8 never used again (benchmarks/RESULTS.md, issue 20). Streaming the
    file here keeps nothing.
    """
    wanted = {name.encode() for name in names}
    try:
        with kallsyms.open("rb") as f:
            # "<address> <type> <name> [module]"; the address may be zeroed.
            return any(line.split(maxsplit=3)[2:3] in ([name] for name in wanted) for line in f)
    except OSError:
        return False


def choose_sys_enter_hook() -> str:
    """Pick how to hook syscall entry on this kernel: 'raw_tracepoint' or 'tracepoint'."""
    bcc = import_bcc()
    if kernel_has_symbol(("bpf_find_raw_tracepoint", "bpf_get_raw_tracepoint")):
        return "raw_tracepoint"
    if not bcc.BPF.tracepoint_exists("raw_syscalls", "sys_enter"):
        raise ProbeError(
            "neither raw tracepoints nor the raw_syscalls:sys_enter tracepoint are available "
            "(is tracefs mounted at /sys/kernel/tracing?)"
        )
    offset = tracepoint_field_offset("raw_syscalls", "sys_enter", "id")
    if offset != 8:
        raise ProbeError(f"raw_syscalls:sys_enter has an unexpected layout (id at offset {offset})")
    return "tracepoint"


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """BPF_LINK_CREATE (libbpf's bpf_link_create, which libbcc links); -errno on failure."""
    fn = libbcc().bpf_link_create
    fn.argtypes = [ct.c_int, ct.c_int, ct.c_int, ct.c_void_p]
    fn.restype = ct.c_int
    fd = fn(prog_fd, target_fd, attach_type, None)
    if fd < 0:
        # libbpf returns -errno itself (libbpf 1.x) or -1 with errno set.
        return fd if fd != -1 else -(ct.get_errno() or errno.EINVAL)
    return fd


BPF_F_ALLOW_MULTI = 1 << 1


def load_program(bpf: Any, name: str, kind: str) -> Any:
    """Load one program of a compiled probe; kind: "cgroup_skb" or "sock_ops"."""
    bcc = import_bcc()
    prog_type = {"cgroup_skb": bcc.BPF.CGROUP_SKB, "sock_ops": bcc.BPF.SOCK_OPS}[kind]
    return bpf.load_func(name.encode(), prog_type)


def prog_attach(fn: Any, target_fd: int, attach_type: int) -> None:
    """BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI (kernels without BPF links):
    the kernel keeps it until prog_detach."""
    import_bcc().BPF.attach_func(fn, target_fd, attach_type, BPF_F_ALLOW_MULTI)


def prog_detach(fn: Any, target_fd: int, attach_type: int) -> None:
    import_bcc().BPF.detach_func(fn, target_fd, attach_type)


ATTACH_CGROUP_INGRESS, ATTACH_CGROUP_EGRESS, ATTACH_CGROUP_SOCK_OPS = 0, 1, 3  # bpf_attach_type


@dataclass
class Attachment:
    fn: Any
    attach_type: int
    link_fd: int | None  # None: attached with BPF_PROG_ATTACH


class CgroupAttachments:
    """Programs attached to one cgroup directory (the v2 root for cgroup_skb
    and sock_ops probes): with BPF links where the kernel has them (5.7+; the
    kernel detaches them when orb8's file descriptors close, even if orb8 is
    killed), else with BPF_PROG_ATTACH + BPF_F_ALLOW_MULTI, detached in
    close(). Both coexist with other programs on the same cgroup.

    requested: "auto" (links, else prog_attach) | "link" | "prog_attach"."""

    def __init__(self, requested: str = "auto") -> None:
        if requested not in ("auto", "link", "prog_attach"):
            raise ValueError(f"attach must be auto, link or prog_attach, got {requested!r}")
        self.requested = requested
        self.mode = ""  # the variant used: "link" or "prog_attach"
        self.fd: int | None = None
        self.attachments: list[Attachment] = []

    def open(self, cgroup: Path) -> None:
        self.fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)

    def attach(self, fn: Any, attach_type: int) -> None:
        assert self.fd is not None
        if self.requested in ("auto", "link") and self.mode != "prog_attach":
            fd = link_create(fn.fd, self.fd, attach_type)
            if fd >= 0:
                self.mode = "link"
                self.attachments.append(Attachment(fn, attach_type, fd))
                return
            if self.requested == "link" or self.mode == "link":
                raise OSError(-fd, f"BPF_LINK_CREATE: {os.strerror(-fd)}")
        # Kernels before 5.7: a plain attachment the kernel keeps until
        # detached, so close() must run (the agent does on SIGTERM/SIGINT).
        prog_attach(fn, self.fd, attach_type)
        self.mode = "prog_attach"
        self.attachments.append(Attachment(fn, attach_type, None))

    def close(self) -> None:
        """Detach everything and close the cgroup; safe to call twice."""
        attachments, self.attachments = self.attachments, []
        for attachment in reversed(attachments):
            try:
                if attachment.link_fd is not None:
                    os.close(attachment.link_fd)
                elif self.fd is not None:
                    prog_detach(attachment.fn, self.fd, attachment.attach_type)
            except Exception as e:
                log.warning("detaching %s failed: %s", attachment.fn.name, e)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def attach_tracepoint(bpf: Any, tracepoint: str, fn_name: str, raw: bool) -> None:
    """Attach a program to a raw tracepoint ("sys_enter") or a classic one
    ("raw_syscalls:sys_enter")."""
    if raw:
        bpf.attach_raw_tracepoint(tp=tracepoint.encode(), fn_name=fn_name.encode())
    else:
        bpf.attach_tracepoint(tp=tracepoint.encode(), fn_name=fn_name.encode())


BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN = 5, 17
BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP = 26, 23
SYS_BPF = {"x86_64": 321, "aarch64": 280}
# union bpf_attr, BPF_PROG_LOAD: offsets of the fields set here (UAPI, stable).
_LOAD_ATTR_SIZE = 128
_LOG_BYTES = 1 << 20


_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine(), platform.machine())
_LIBC = ct.CDLL(None, use_errno=True)


def _sys_bpf(cmd: int, attr: Any) -> int:
    number = SYS_BPF.get(_MACHINE)
    if number is None:  # another architecture's table: never guess its number
        raise OSError(errno.ENOSYS, f"bpf() syscall number unknown on {_MACHINE}")
    fd = int(_LIBC.syscall(number, cmd, attr, ct.sizeof(attr)))
    if fd < 0:
        raise OSError(ct.get_errno(), os.strerror(ct.get_errno()))
    return fd


class BtfTracepoint:
    """One BPF_PROG_TYPE_TRACING program attached as tp_btf/<tracepoint>.

    BCC compiles it with the rest of the probe (its maps are already in the
    bytecode) but cannot load it: libbcc looks a TRACING program's target up
    as a kernel function named like the program, and a BTF-typed tracepoint
    is the typedef btf_trace_<name>. So orb8 loads the bytecode itself with
    that typedef's BTF id and attaches it with BPF_RAW_TRACEPOINT_OPEN; the
    kernel detaches it when the link's file descriptor closes. The program
    joins the BCC object's own (bpf.funcs), which closes it in cleanup() and
    lists it for the per-program counters (exporter/kernel/stats.py)."""

    def __init__(self, bpf: Any, fn_name: str, btf_id: int) -> None:
        lib = libbcc()
        name = fn_name.encode()
        start = lib.bpf_function_start(bpf.module, name)
        size = lib.bpf_function_size(bpf.module, name)
        if not start or not size:
            raise ProbeError(f"no program {fn_name} in the compiled probe")
        self.name = fn_name
        self.prog_fd = self._load(bpf, name, start, size, btf_id)
        bpf.funcs[name] = import_bcc().BPF.Function(bpf, name, self.prog_fd)
        self.link_fd: int | None = None

    @staticmethod
    def _load(bpf: Any, name: bytes, insns: int, size: int, btf_id: int) -> int:
        license_ = ct.create_string_buffer(libbcc().bpf_module_license(bpf.module) or b"GPL")
        attr = ct.create_string_buffer(_LOAD_ATTR_SIZE)
        # prog_type, insn_cnt, insns, license (bpf_attr's first fields)
        struct.pack_into(
            "<IIQQ", attr, 0, BPF_PROG_TYPE_TRACING, size // 8, insns, ct.addressof(license_)
        )
        struct.pack_into("<16s", attr, 48, name[:15])  # prog_name
        struct.pack_into("<I", attr, 68, BPF_TRACE_RAW_TP)  # expected_attach_type
        struct.pack_into("<I", attr, 108, btf_id)  # attach_btf_id
        try:
            return _sys_bpf(BPF_PROG_LOAD, attr)
        except OSError as first:
            # Again with the verifier's log, to say why.
            log_buf = ct.create_string_buffer(_LOG_BYTES)
            struct.pack_into("<IIQ", attr, 24, 1, _LOG_BYTES, ct.addressof(log_buf))
            try:
                return _sys_bpf(BPF_PROG_LOAD, attr)
            except OSError:
                pass
            lines = log_buf.value.decode(errors="replace").strip().splitlines()
            tail = [line for line in lines if not line.startswith("processed ")][-2:]
            raise OSError(first.errno, f"{first.strerror}: {' / '.join(tail)}") from None

    def attach(self) -> None:
        if self.link_fd is not None:
            return
        attr = ct.create_string_buffer(16)
        struct.pack_into("<QI", attr, 0, 0, self.prog_fd)  # name NULL: the program's target
        self.link_fd = _sys_bpf(BPF_RAW_TRACEPOINT_OPEN, attr)

    def detach(self) -> None:
        if self.link_fd is not None:
            os.close(self.link_fd)
            self.link_fd = None
