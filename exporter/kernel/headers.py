"""Kernel headers for BCC and where orb8's probe sources are.

BCC compiles every probe against kernel headers. They come from, in order:
--kernel-headers, the node's /lib/modules/<release>/build, the kernel's own
/sys/kernel/kheaders.tar.xz (unpacked where there is room), or the headers
shipped in the image. The probes rely only on stable layouts (UAPI structs,
tracepoint arguments, helpers, offsets read from BTF), so a distribution's
headers of another version are safe for them.
"""

from __future__ import annotations

import importlib.resources
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from exporter.kernel import ProbeError

# A source checkout keeps the probes at the top of the repository; a wheel
# carries them as package data in exporter/bpf (pyproject.toml maps one onto
# the other).
CHECKOUT_BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"


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
