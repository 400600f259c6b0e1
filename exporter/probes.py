"""The BPF access layer: kernel header discovery, feature probes, compile,
attach (BPF links), and every map read, delete and decode.

Everything that touches BCC, libbcc or ctypes for BPF lives here, so sources
stay readable, map layouts come from one place (numpy dtypes built from
BCC's own table types, which BCC derives from the C structs in
bpf/include/), and diagnose/check exercise exactly the code `orb8 run` uses.
"""

from __future__ import annotations

import ctypes as ct
import errno
import importlib.resources
import logging
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter import percpu

log = logging.getLogger(__name__)

# A source checkout keeps the probes at the top of the repository; a wheel
# carries them as package data in exporter/bpf (pyproject.toml maps one onto
# the other).
CHECKOUT_BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


class ProbeError(RuntimeError):
    """A probe could not be compiled, loaded or attached; the message says why."""


def default_bpf_dir() -> Path:
    """Where the probe sources shipped with orb8 are: installed package data, else the checkout.

    BCC compiles from a file and needs -I on a real directory, so a zipped
    install (which pip never makes) is not supported.
    """
    packaged = importlib.resources.files("exporter").joinpath("bpf")
    if packaged.is_dir() and isinstance(packaged, Path):
        return packaged
    return CHECKOUT_BPF_DIR


@dataclass(frozen=True)
class KernelHeaders:
    path: Path | None  # None: BCC extracts the kernel's own kheaders
    origin: str  # human-readable: where they came from and whether they match
    configured: bool = False  # given with --kernel-headers

    def __str__(self) -> str:
        return f"{self.path or '/sys/kernel/kheaders.tar.xz'} ({self.origin})"


def _headers_version(build_dir: Path) -> str:
    """Best-effort kernel version of a headers tree, from its resolved path."""
    name = build_dir.resolve().name
    return name.removeprefix("linux-headers-") if name.startswith("linux-headers-") else name


# The headers the image carries (Containerfile): the distribution's, pruned to
# the files compiling orb8's probes opens. The probes use only UAPI layouts
# and BTF offsets, so they compile correctly for any running kernel.
BUNDLED_HEADERS = Path("/usr/lib/orb8/kernel-headers")
# Where the kernel's own kheaders archive is unpacked (tens of MB): the
# DaemonSet's cache volume first; its /tmp (16 MiB) rarely has room.
KHEADERS_DIRS = (Path("/var/cache/orb8"), Path("/tmp"))


def in_container(root: Path = Path("/")) -> bool:
    """Whether orb8 runs in a pod or a podman/CRI-O container (host scripts are then
    no advice). Not /.dockerenv: VM images built from Docker images keep it."""
    return (root / "run/.containerenv").exists() or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _extract_kheaders(archive: Path, release: str, candidates: tuple[Path, ...]) -> Path:
    """Unpack /sys/kernel/kheaders.tar.xz into the first candidate with room; reused."""
    import tarfile

    done = [c / f"kheaders-{release}" for c in candidates]
    for target in done:
        if (target / ".complete").exists():
            return target
    try:
        with tarfile.open(archive, "r:xz") as tar:
            needed = sum(m.size for m in tar.getmembers()) + (1 << 20)
            tried = []
            for base, target in zip(candidates, done, strict=True):
                try:
                    base.mkdir(parents=True, exist_ok=True)
                    free = os.statvfs(base).f_bavail * os.statvfs(base).f_frsize
                except OSError as e:
                    tried.append(f"{base}: {e.strerror}")
                    continue
                if free < needed or not os.access(base, os.W_OK):
                    tried.append(f"{base}: {free >> 20} MiB free")
                    continue
                partial = base / f".kheaders-{release}.{os.getpid()}"
                try:
                    # The kernel's own archive; the filter still refuses links out.
                    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    tar.extractall(partial, **kwargs)  # type: ignore[arg-type]
                    (partial / ".complete").touch()
                    shutil.rmtree(target, ignore_errors=True)  # an earlier, interrupted one
                    os.replace(partial, target)
                except OSError as e:  # e.g. filled up after all: try the next place
                    shutil.rmtree(partial, ignore_errors=True)
                    tried.append(f"{base}: {e.strerror or e}")
                    continue
                return target
    except (OSError, tarfile.TarError, EOFError) as e:
        raise ProbeError(f"cannot unpack {archive}: {e}") from None
    raise ProbeError(f"no room to unpack {archive} ({needed >> 20} MiB): " + "; ".join(tried))


def find_kernel_headers(
    override: Path | None = None,
    release: str | None = None,
    modules_root: Path = Path("/lib/modules"),
    kheaders: Path = Path("/sys/kernel/kheaders.tar.xz"),
    kheaders_dirs: tuple[Path, ...] = KHEADERS_DIRS,
    bundled: Path = BUNDLED_HEADERS,
) -> KernelHeaders:
    """Find the headers BCC will compile against, or raise ProbeError with a fix.

    Order: an explicit directory; the running kernel's build tree (which may be
    a distribution fallback linked by scripts/setup-host.sh, reported as
    such); the kernel's built-in kheaders, unpacked where there is room; the
    headers shipped in the image.
    """
    release = release or platform.release()
    if override is not None:
        if not (override / "include").is_dir():
            raise ProbeError(
                f"kernel headers directory {override} does not exist or has no include/; "
                "point --kernel-headers at a kernel build tree"
            )
        return KernelHeaders(
            override, f"configured, version {_headers_version(override)}", configured=True
        )
    build = modules_root / release / "build"
    if (build / "include").is_dir():
        version = _headers_version(build)
        if version.split("-")[0] == release.split("-")[0]:
            origin = f"running kernel {release}"
        else:
            origin = (
                f"distribution fallback {version} for running kernel {release}; "
                "probes use only stable UAPI layouts"
            )
        return KernelHeaders(build, origin)
    if kheaders.exists():
        unpacked = _extract_kheaders(kheaders, release, kheaders_dirs)
        return KernelHeaders(
            unpacked,
            f"kernel built-in kheaders (CONFIG_IKHEADERS) unpacked in {unpacked}",
            configured=True,
        )
    if (bundled / "include").is_dir():
        version = (bundled / "VERSION").read_text().strip()
        return KernelHeaders(
            bundled,
            f"shipped in the image, {version}, for running kernel {release}; "
            "probes use only stable UAPI layouts",
            configured=True,
        )
    if in_container():
        raise ProbeError(
            f"no kernel headers for {release}: {build} is missing in this container, the "
            "kernel has no /sys/kernel/kheaders.tar.xz and the image carries none. Use the "
            "orb8 image, or mount the node's /lib/modules and /usr/src (docs/deploying.md)"
        )
    raise ProbeError(
        f"no kernel headers for {release}: {build} is missing. Install "
        f"linux-headers-{release}, or run scripts/setup-host.sh (make setup), which "
        "links the distribution's linux-headers package as a fallback"
    )


def import_bcc() -> Any:
    try:
        import bcc
    except ImportError as e:
        raise ProbeError(
            f"cannot import bcc ({e}): install python3-bpfcc and run scripts/setup-host.sh "
            "so the virtualenv can see it"
        ) from None
    return bcc


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


def compile_probe(
    name: str,
    defines: dict[str, Any] | None = None,
    headers: KernelHeaders | None = None,
    bpf_dir: Path | None = None,
) -> Any:
    """Compile <bpf_dir>/<name>.c with -D options; programs are loaded, not attached."""
    bcc = import_bcc()
    bpf_dir = bpf_dir or default_bpf_dir()
    source = bpf_dir / f"{name}.c"
    if not source.is_file():
        raise ProbeError(f"probe source {source} not found (see --bpf-dir)")
    cflags = [f"-I{bpf_dir / 'include'}"]
    cflags += [f"-D{key}={value}" for key, value in (defines or {}).items()]
    if headers is not None and headers.configured:
        # BCC reads this to locate a non-default headers tree. Not set for
        # /lib/modules/<release>/build: BCC finds that itself, including the
        # split build/ + source/ layout of Debian's headers packages.
        os.environ["BCC_KERNEL_SOURCE"] = str(headers.path)
    try:
        return bcc.BPF(src_file=str(source).encode(), cflags=cflags)
    except Exception as e:
        raise ProbeError(f"compiling {source.name} failed: {e}") from e


def kernel_has_symbol(names: tuple[str, ...], kallsyms: Path = Path("/proc/kallsyms")) -> bool:
    """Whether any of `names` is a kernel symbol, by name.

    BCC's support_raw_tracepoint() looks the symbol's address up, and without
    CAP_SYSLOG (the DaemonSet does not grant it) every address reads as 0, so
    it answers False and orb8 fell back to the slower classic tracepoint in a
    least-privilege container. Names stay visible, so match those.
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
    if bcc.BPF.support_raw_tracepoint() or kernel_has_symbol(
        ("bpf_find_raw_tracepoint", "bpf_get_raw_tracepoint")
    ):
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


def possible_cpus() -> int:
    from bcc.utils import get_possible_cpus

    return len(get_possible_cpus())


def lookup_batch(table: Any, count: int) -> tuple[bytes, memoryview, int]:
    """Read up to `count` entries of a map in as few syscalls as the kernel allows.

    Returns (keys, values, n), n entries: keys as bytes, values as a view of
    the read buffer (not copied: at 256 CPUs a per-CPU map's values are
    ~100 MiB). Per-CPU values are
    round_up(value_size, 8) * possible CPUs bytes each, as the kernel lays
    them out. Written against libbcc directly: bcc 0.26's helper reuses one
    ctypes object for the batch token and the count.
    """
    from bcc.libbcc import lib

    key_size = ct.sizeof(table.Key)
    value_size = ct.sizeof(table.Leaf)
    keys = ct.create_string_buffer(max(key_size * count, 1))
    values = ct.create_string_buffer(max(value_size * count, 1))
    token_in, token_out = ct.c_uint64(0), ct.c_uint64(0)
    total = 0
    while total < count:
        n = ct.c_uint32(count - total)
        res = lib.bpf_lookup_batch(
            table.map_fd,
            ct.cast(ct.byref(token_in), ct.POINTER(ct.c_uint32)) if total else None,
            ct.cast(ct.byref(token_out), ct.POINTER(ct.c_uint32)),
            ct.byref(keys, key_size * total),
            ct.byref(values, value_size * total),
            ct.byref(n),
        )
        err = ct.get_errno()
        total += n.value
        if res != 0:
            if err == errno.ENOENT:
                break
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH on {table.name}: {os.strerror(err)}")
        if n.value == 0:
            break
        token_in.value = token_out.value
    return keys.raw[: key_size * total], memoryview(values)[: value_size * total], total


def _libbcc() -> Any:
    from bcc.libbcc import lib

    return lib


def key_dtype(table: Any) -> np.dtype:
    """The numpy layout of a map's keys, from BCC's ctypes type of the C key
    (so the C struct in bpf/include/ is the only declaration)."""
    return np.dtype(table.Key)


def read_keys(table: Any, capacity: int) -> tuple[np.ndarray, memoryview, int]:
    """(decoded keys, raw values, n) of every entry of a map, in one batch read."""
    keys, values, n = lookup_batch(table, capacity)
    return np.frombuffer(keys, dtype=key_dtype(table), count=n), values, n


def read_percpu_hash(table: Any, capacity: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(decoded keys, per-key sums over CPUs of `width` u64 values) of a per-CPU hash."""
    decoded, values, n = read_keys(table, capacity)
    if n == 0:
        return decoded, np.zeros((0, width), dtype=np.uint64)
    cpus = values.nbytes // (n * width * 8)
    return decoded, percpu.sums(values, n, cpus, width).reshape(n, width)


def percpu_sum(table: Any, index: int = 0) -> int:
    """Sum over CPUs of one slot of a per-CPU array of u64."""
    return int(percpu.entry_sum(table[ct.c_int(index)]))


def percpu_values(table: Any, index: int) -> list[int]:
    """The per-CPU values of one slot of a per-CPU array of u64."""
    return list(table[ct.c_int(index)])


def lookup_and_delete(table: Any, raw_key: bytes, value_size: int) -> bytes | None:
    """Read and delete one entry in one atomic step: its raw value, or None if
    it was gone (or the kernel cannot do it for this map type)."""
    fn = _libbcc().bpf_map_lookup_and_delete_elem
    fn.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
    fn.restype = ct.c_int
    key = ct.create_string_buffer(raw_key, len(raw_key))
    value = ct.create_string_buffer(value_size)
    if fn(table.map_fd, key, value) != 0:
        return None
    return value.raw


def delete(table: Any, raw_key: bytes) -> None:
    """Delete one entry by its raw key; gone already is fine."""
    _libbcc().bpf_delete_elem(table.map_fd, ct.create_string_buffer(raw_key, len(raw_key)))


def take_percpu(table: Any, raw_key: bytes, width: int) -> list[int] | None:
    """Read and delete a per-CPU hash entry in one step: its per-CPU sums of
    `width` u64 counters; None if it was gone, or if the kernel cannot do it
    in one step (before 5.14: then it is just deleted)."""
    value = lookup_and_delete(table, raw_key, 8 * width * possible_cpus())
    if value is None:
        delete(table, raw_key)
        return None
    sums = np.frombuffer(value, dtype=np.uint64).reshape(-1, width).sum(axis=0)
    return [int(v) for v in sums]


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """BPF_LINK_CREATE (libbpf's bpf_link_create, which libbcc links); -errno on failure."""
    fn = _libbcc().bpf_link_create
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


def open_ring_buffer(bpf: Any, name: str, callback: Any) -> None:
    """Have poll_ring_buffer() call callback(ctx, data, size) per record."""
    bpf[name.encode()].open_ring_buffer(callback)


def record_reader(bpf: Any, name: str, what: str = "record") -> Any:
    """A decoder of a ring buffer's records: (data, size) -> the record.

    BCC deduces the record's ctypes type from the C struct the program
    reserves (bpf/include/), so nothing mirrors it by hand. The record points
    into the ring buffer: use it inside the callback only. A record shorter
    than the type raises ValueError."""
    table = bpf[name.encode()]

    def read(data: Any, size: int) -> Any:
        record = table.event(data)
        if size < ct.sizeof(record):
            raise ValueError(f"{what} of {size} bytes, expected {ct.sizeof(record)}")
        return record

    return read


def poll_ring_buffer(bpf: Any, timeout_ms: int) -> None:
    bpf.ring_buffer_poll(timeout_ms)


def percpu_u64_sums(table: Any, count: int) -> np.ndarray:
    """Sum over CPUs of the first `count` u64 slots of a per-CPU array."""
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    _, values, n = lookup_batch(table, count)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    return percpu.sums(values, n, values.nbytes // (n * 8))


# struct bpf_prog_info (UAPI, append-only): offsets of the kernel's own
# per-program counters. run_cnt and run_time_ns only advance while
# kernel.bpf_stats_enabled is 1; recursion_misses always does.
PROG_INFO_SIZE = 232
PROG_RUN_TIME_NS, PROG_RUN_CNT, PROG_RECURSION_MISSES = 192, 200, 208
BPF_STATS_ENABLED = Path("/proc/sys/kernel/bpf_stats_enabled")


@dataclass(frozen=True)
class ProgramStats:
    program: str
    runs: int
    run_time_ns: int
    recursion_misses: int


def program_stats(bpf: Any) -> list[ProgramStats]:
    """The kernel's counters of every loaded program of a BCC object."""
    from bcc.libbcc import lib

    fn = lib.bpf_obj_get_info
    fn.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
    fn.restype = ct.c_int
    stats = []
    for name, function in sorted(bpf.funcs.items()):
        info = ct.create_string_buffer(PROG_INFO_SIZE)
        length = ct.c_uint32(PROG_INFO_SIZE)
        if fn(function.fd, info, ct.byref(length)) != 0 or length.value <= PROG_RECURSION_MISSES:
            continue  # kernel too old to report these: nothing to export
        run_time, runs, misses = np.frombuffer(
            info.raw, dtype="<u8", count=3, offset=PROG_RUN_TIME_NS
        )
        stats.append(
            ProgramStats(
                name.decode() if isinstance(name, bytes) else str(name),
                int(runs),
                int(run_time),
                int(misses),
            )
        )
    return stats


def bpf_stats_enabled(path: Path = BPF_STATS_ENABLED) -> bool:
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return False


def map_memory(bpf: Any, fdinfo: Path = Path("/proc/self/fdinfo")) -> dict[str, int]:
    """Kernel memory of every map of a loaded probe, by map name: the kernel's
    own accounting (`memlock` in the map fd's fdinfo, what bpftool shows), so
    it is right whatever the kernel version's allocation details are."""
    lib = _libbcc()
    count, name_of, fd_of = lib.bpf_num_tables, lib.bpf_table_name, lib.bpf_table_fd_id
    count.restype, count.argtypes = ct.c_size_t, [ct.c_void_p]
    name_of.restype, name_of.argtypes = ct.c_char_p, [ct.c_void_p, ct.c_size_t]
    fd_of.restype, fd_of.argtypes = ct.c_int, [ct.c_void_p, ct.c_size_t]
    memory: dict[str, int] = {}
    for index in range(count(bpf.module)):
        fd = fd_of(bpf.module, index)
        try:
            text = (fdinfo / str(fd)).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key == "memlock":
                memory[name_of(bpf.module, index).decode()] = int(value)
    return memory


class BpfMaps:
    """A loaded probe's maps by name: the only way sources read, write and
    delete kernel entries. Keys come back decoded with numpy dtypes built from
    BCC's table types (the C structs in bpf/include/); counter values as
    uint64 arrays, summed over CPUs for per-CPU maps.

    Sources take any object with these methods: tests/bpf_maps.py is an
    in-memory one, so collect() and retirement run in unit tests.
    """

    def __init__(self, bpf: Any) -> None:
        self.bpf = bpf
        self._tables: dict[str, Any] = {}

    def _table(self, name: str) -> Any:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = self.bpf[name.encode()]
        return table

    def read_hash(self, name: str, capacity: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(decoded keys, values [n, width] uint64) of every entry of a hash.

        Per-CPU values (u64 counters) are summed over CPUs; other values are
        `width` u64 counters, or one u32 (width 1, e.g. a slot index)."""
        table = self._table(name)
        if hasattr(table, "sLeaf"):  # BCC's per-CPU tables keep the one-CPU type there
            return read_percpu_hash(table, capacity, width)
        decoded, values, n = read_keys(table, capacity)
        dtype = "<u4" if ct.sizeof(table.Leaf) == 4 else "<u8"
        array = np.frombuffer(values, dtype=dtype, count=n * width).reshape(n, width)
        return decoded, array.astype(np.uint64) if dtype == "<u4" else array

    def percpu_array_sums(self, name: str, count: int) -> np.ndarray:
        """Sum over CPUs of the first `count` u64 slots of a per-CPU array."""
        return percpu_u64_sums(self._table(name), count)

    def percpu_sum(self, name: str, index: int = 0) -> int:
        return percpu_sum(self._table(name), index)

    def percpu_values(self, name: str, index: int) -> list[int]:
        return percpu_values(self._table(name), index)

    def zero(self, name: str, index: int) -> None:
        """Reset one slot of an array (every CPU's copy of a per-CPU one)."""
        table = self._table(name)
        table[table.Key(index)] = table.Leaf()

    def put(self, name: str, key: int, value: int) -> None:
        """Store a scalar value under a scalar key (array index or integer key)."""
        table = self._table(name)
        table[table.Key(key)] = table.Leaf(value)

    def push(self, name: str, value: int) -> None:
        """Push onto a BPF stack or queue."""
        table = self._table(name)
        table.push(table.Leaf(value))

    def pop(self, name: str, raw_key: bytes) -> int | None:
        """Delete a hash entry whose value is one integer; the value, or None if
        it was gone. Not atomic: for maps nothing writes to while it runs."""
        table = self._table(name)
        key = table.Key.from_buffer_copy(raw_key)
        value = table.get(key)
        if value is None:
            return None
        del table[key]
        return int(value.value)

    def delete(self, name: str, raw_key: bytes) -> None:
        delete(self._table(name), raw_key)

    def take(self, name: str, raw_key: bytes, width: int) -> list[int] | None:
        """Read and delete an entry of `width` u64 counters in one atomic step:
        its final counts (summed over CPUs), or None if it was gone (for a
        per-CPU map also when the kernel cannot do it in one step, before
        5.14: the entry is then just deleted)."""
        table = self._table(name)
        if hasattr(table, "sLeaf"):
            return take_percpu(table, raw_key, width)
        value = lookup_and_delete(table, raw_key, ct.sizeof(table.Leaf))
        if value is None:
            return None
        return [int(v) for v in np.frombuffer(value, dtype="<u8", count=width)]

    def programs(self) -> list[ProgramStats]:
        return program_stats(self.bpf)

    def memory(self) -> dict[str, int]:
        return map_memory(self.bpf)
