"""Compile a probe: BCC itself, libbcc for the calls BCC's Python lacks,
and <bpf_dir>/<name>.c compiled with -D options (programs loaded, not
attached)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from exporter.kernel import ProbeError
from exporter.kernel.headers import KernelHeaders, default_bpf_dir


def import_bcc() -> Any:
    try:
        import bcc
    except ImportError as e:
        raise ProbeError(
            f"cannot import bcc ({e}): install python3-bpfcc and run scripts/setup-host.sh "
            "so the virtualenv can see it"
        ) from None
    return bcc


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


def libbcc() -> Any:
    from bcc.libbcc import lib

    return lib
