"""`orb8 diagnose`: can `orb8 run` work on this host, and if not, what to do.

Each check returns ok / warn / fail with a detail and, when not ok, a fix.
Exit status is 0 only when no check failed. Filesystem roots are parameters
so tests can inject a broken host without monkeypatching.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exporter import kernel
from exporter.identity.cgroupfs import CgroupError, find_cgroup2_mount
from exporter.kernel import attach, compiler
from exporter.kernel.headers import find_kernel_headers, in_container
from exporter.kernel.mapmemory import MapDef

MIN_KERNEL = (5, 8)
# Capability bits (linux/capability.h).
CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39
# Exactly what deploy/base/daemonset.yaml adds (tests/unit/test_manifests.py keeps
# them equal; tests/kernel/test_container.py proves the set sufficient).
REQUIRED_CAPABILITIES = {
    "CAP_BPF": (CAP_BPF, "create maps and load programs"),
    "CAP_PERFMON": (CAP_PERFMON, "attach tracepoints"),
    "CAP_NET_ADMIN": (CAP_NET_ADMIN, "attach the network probe's cgroup_skb and sock_ops programs"),
}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def parse_kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    if not match:
        raise ValueError(f"unrecognised kernel release {release!r}")
    return int(match.group(1)), int(match.group(2))


def check_kernel(release: str) -> Check:
    try:
        version = parse_kernel_version(release)
    except ValueError as e:
        return Check("kernel", "fail", str(e), "run on Linux >= 5.8")
    if version < MIN_KERNEL:
        return Check(
            "kernel", "fail", f"{release} is older than 5.8", "upgrade the node kernel to >= 5.8"
        )
    return Check("kernel", "ok", release)


def check_btf(btf: Path) -> Check:
    if btf.exists():
        return Check("btf", "ok", str(btf))
    return Check(
        "btf",
        "warn",
        f"{btf} missing",
        "enable CONFIG_DEBUG_INFO_BTF: the syscalls probe needs it to tell i386 calls apart",
    )


def check_syscall_abi(btf: Path, machine: str | None = None) -> Check:
    from exporter.sources.syscalls.names import abi_status_offset, ia32_emulation

    if machine is None:
        possible, why = ia32_emulation()
        if not possible:
            return Check("syscall ABI", "ok", why)
    offset, detail = abi_status_offset(btf, machine)
    if offset is not None:
        return Check("syscall ABI", "ok", detail)
    return Check(
        "syscall ABI",
        "warn",
        detail,
        "enable CONFIG_DEBUG_INFO_BTF: without it 32-bit (int $0x80) syscalls are counted "
        "under native names, e.g. i386 ptrace as msync (orb8_syscall_abi_detected 0)",
    )


def check_capabilities(status_file: Path) -> Check:
    """The DaemonSet's capability set. Without CAP_BPF+CAP_PERFMON (or
    CAP_SYS_ADMIN, which implies them) nothing loads; without CAP_NET_ADMIN
    only the network probe fails, so that is a warning."""
    try:
        text = status_file.read_text()
    except OSError as e:
        return Check("capabilities", "fail", f"cannot read {status_file}: {e.strerror}")
    match = re.search(r"^CapEff:\s*([0-9a-f]+)", text, re.M)
    if not match:
        return Check("capabilities", "fail", f"no CapEff in {status_file}")
    caps = int(match.group(1), 16)
    sys_admin = bool(caps >> CAP_SYS_ADMIN & 1)
    missing = [
        name
        for name, (bit, _) in REQUIRED_CAPABILITIES.items()
        if not caps >> bit & 1 and not (sys_admin and name in ("CAP_BPF", "CAP_PERFMON"))
    ]
    fix = (
        "run as root, or grant "
        + ", ".join(f"{name} ({why})" for name, (_, why) in REQUIRED_CAPABILITIES.items())
        + " (DaemonSet: securityContext.capabilities.add)"
    )
    extra = bin(caps & ~sum(1 << bit for bit, _ in REQUIRED_CAPABILITIES.values())).count("1")
    detail = f"CapEff={match.group(1)}"
    if not missing:
        more = f"; {extra} more than orb8 needs" if extra else "; exactly the DaemonSet's set"
        return Check("capabilities", "ok", f"{detail}{more}")
    if set(missing) == {"CAP_NET_ADMIN"}:
        return Check(
            "capabilities",
            "warn",
            f"{detail} lacks CAP_NET_ADMIN: the network probe cannot attach",
            fix,
        )
    return Check("capabilities", "fail", f"{detail} lacks {', '.join(missing)}", fix)


def check_bcc() -> Check:
    try:
        bcc = compiler.import_bcc()
    except kernel.ProbeError as e:
        # bcc is not on PyPI: it comes with the distribution's python3, which
        # a virtualenv sees only when made from that python3 with
        # --system-site-packages (a pip install outside a checkout).
        return Check(
            "bcc",
            "fail",
            str(e),
            "install the distribution's bcc (Debian/Ubuntu: apt-get install python3-bpfcc; "
            "Fedora/RHEL: dnf install python3-bcc); outside a checkout make the virtualenv "
            "from that python3 so it sees it: /usr/bin/python3 -m venv --system-site-packages "
            "VENV && VENV/bin/pip install <orb8 wheel or source>; in a checkout: make setup",
        )
    version = getattr(getattr(bcc, "version", None), "__version__", "unknown")
    return Check("bcc", "ok", f"bcc {version} from {Path(bcc.__file__).parent}")


def check_headers(override: Path | None, modules_root: Path) -> Check:
    try:
        headers = find_kernel_headers(override, modules_root=modules_root)
    except kernel.ProbeError as e:
        fix = (
            "use the orb8 image (it carries headers), or mount the node's /lib/modules "
            "and /usr/src read-only, or --kernel-headers DIR"
            if in_container()
            else f"apt-get install linux-headers-{platform.release()}, or make setup "
            "(links the distribution headers as a fallback), or --kernel-headers DIR"
        )
        return Check("kernel headers", "fail", str(e).split(". ")[0], fix)
    return Check("kernel headers", "ok", str(headers))


def check_tracefs() -> Check:
    root = attach.tracefs_root()
    if root is None:
        return Check(
            "tracefs",
            "fail",
            "tracefs is not mounted",
            "mount -t tracefs tracefs /sys/kernel/tracing",
        )
    return Check("tracefs", "ok", str(root))


def check_cgroup2(mountinfo: Path) -> Check:
    try:
        mount = find_cgroup2_mount(mountinfo)
    except CgroupError as e:
        return Check("cgroup v2", "fail", str(e), "mount cgroup2 (see README, requirements)")
    return Check("cgroup v2", "ok", str(mount))


def check_test_load() -> Check:
    try:
        bcc = compiler.import_bcc()
        bpf = bcc.BPF(text=b"int diagnose_probe(void *ctx) { return 0; }")
        try:
            fn = bpf.load_func(b"diagnose_probe", bcc.BPF.RAW_TRACEPOINT)
            bpf.attach_raw_tracepoint(tp=b"sys_enter", fn_name=fn.name)
        finally:
            bpf.cleanup()
    except Exception as e:
        return Check(
            "test load",
            "fail",
            f"loading a trivial probe failed: {e}",
            "fix the failures above; check dmesg for BPF verifier or lockdown messages",
        )
    return Check("test load", "ok", "compiled, loaded and attached a trivial raw tracepoint")


MAP_MEMORY_BUDGET = 64 * 2**20  # per node, what docs/scaling.md sizes for


def check_map_memory(maps: list[MapDef], cpus: int) -> Check:
    """The kernel memory the enabled probes' maps will take at the configured
    capacities on this node's CPU count, every map full (the worst case)."""
    from exporter.kernel.mapmemory import kernel_sizes, map_memory

    structs = kernel_sizes()
    sizes = sorted(
        ((map_memory(m, cpus, m.max_entries, structs), m.name) for m in maps), reverse=True
    )
    total = sum(size for size, _ in sizes)
    largest = ", ".join(f"{name} {size / 2**20:.1f}" for size, name in sizes[:3])
    detail = (
        f"{total / 2**20:.1f} MiB on {cpus} CPUs with every map full (MiB: {largest}, ...; "
        f"struct sizes from {structs.origin})"
    )
    if total > MAP_MEMORY_BUDGET:
        return Check(
            "kernel map memory",
            "warn",
            detail,
            "over the 64 MiB budget if every map fills (typical fill is lower); "
            "size the capacities with docs/scaling.md",
        )
    return Check("kernel map memory", "ok", detail)


def run_checks(
    kernel_headers: Path | None = None,
    modules_root: Path = Path("/lib/modules"),
    proc: Path = Path("/proc"),
    btf: Path = Path("/sys/kernel/btf/vmlinux"),
    release: str | None = None,
    maps: list[MapDef] | None = None,
) -> list[Check]:
    checks: list[Callable[[], Check]] = [
        lambda: check_kernel(release or platform.release()),
        lambda: check_btf(btf),
        lambda: check_syscall_abi(btf),
        lambda: check_capabilities(proc / "self" / "status"),
        check_bcc,
        lambda: check_headers(kernel_headers, modules_root),
        check_tracefs,
        lambda: check_cgroup2(proc / "self" / "mountinfo"),
    ]
    if maps:
        from exporter.kernel.percpu import possible_cpus

        checks.append(lambda: check_map_memory(maps, possible_cpus()))
    results = [check() for check in checks]
    if all(r.status != "fail" for r in results):
        results.append(check_test_load())
    else:
        results.append(Check("test load", "fail", "skipped: fix the failures above first"))
    return results


def format_checks(results: list[Check]) -> str:
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        lines.append(f"{r.status.upper():4}  {r.name:<{width}}  {r.detail}")
        if r.fix and r.status != "ok":
            lines.append(f"{'':4}  {'':<{width}}  -> {r.fix}")
    failed = sum(r.status == "fail" for r in results)
    lines.append("orb8 run can work on this host" if not failed else f"{failed} check(s) failed")
    return "\n".join(lines)
