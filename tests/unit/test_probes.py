"""Kernel header discovery and the small pure helpers of the kernel layer (exporter/kernel/)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.kernel import ProbeError, attach
from exporter.kernel.headers import find_kernel_headers


def headers_tree(path):
    (path / "include").mkdir(parents=True)
    return path


def test_running_kernel_headers(tmp_path):
    src = headers_tree(tmp_path / "usr/src/linux-headers-6.18.4-amd64")
    (tmp_path / "lib/modules/6.18.4-amd64").mkdir(parents=True)
    (tmp_path / "lib/modules/6.18.4-amd64/build").symlink_to(src)
    found = find_kernel_headers(release="6.18.4-amd64", modules_root=tmp_path / "lib/modules")
    assert found.origin == "running kernel 6.18.4-amd64"
    assert not found.configured


def test_distribution_fallback_is_reported_as_such(tmp_path):
    src = headers_tree(tmp_path / "usr/src/linux-headers-6.1.0-56-amd64")
    (tmp_path / "lib/modules/6.18.44-fc").mkdir(parents=True)
    (tmp_path / "lib/modules/6.18.44-fc/build").symlink_to(src)
    found = find_kernel_headers(release="6.18.44-fc", modules_root=tmp_path / "lib/modules")
    assert "distribution fallback 6.1.0-56-amd64 for running kernel 6.18.44-fc" in found.origin


def kheaders_archive(path: Path, filler: int = 0) -> Path:
    """A kheaders.tar.xz shaped like the kernel's: include/ and arch/ at the top."""
    with tarfile.open(path, "w:xz") as tar:
        for name, data in (
            ("include/linux/kconfig.h", b"#define IS_ENABLED(x) 0\n"),
            ("arch/x86/include/generated/uapi/asm/types.h", b"/* types */\n"),
            ("include/filler.bin", b"\0" * filler),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_kheaders_are_unpacked_where_there_is_room_and_reused(tmp_path):
    """A 2 MiB archive does not fit a 1 MiB /tmp-like tmpfs: the next place gets it."""
    archive = kheaders_archive(tmp_path / "kheaders.tar.xz", filler=2 << 20)
    with small_tmpfs(tmp_path / "small", "1m") as small:
        dirs = (small, tmp_path / "cache")
        found = find_kernel_headers(
            release="6.9.0", modules_root=tmp_path / "none", kheaders=archive, kheaders_dirs=dirs
        )
        assert found.path == tmp_path / "cache" / "kheaders-6.9.0"
        assert found.configured  # so BCC is pointed at it (BCC_KERNEL_SOURCE)
        assert "CONFIG_IKHEADERS" in found.origin
        assert (found.path / "include/linux/kconfig.h").read_bytes() == b"#define IS_ENABLED(x) 0\n"
        assert list(small.iterdir()) == []  # nothing half-written left behind
        archive.unlink()  # the second start reuses the unpacked tree
        kheaders_archive(archive)
        again = find_kernel_headers(
            release="6.9.0", modules_root=tmp_path / "none", kheaders=archive, kheaders_dirs=dirs
        )
        assert again.path == found.path


def test_kheaders_without_room_anywhere_say_so(tmp_path):
    archive = kheaders_archive(tmp_path / "kheaders.tar.xz", filler=2 << 20)
    with small_tmpfs(tmp_path / "small", "1m") as small, pytest.raises(ProbeError) as error:
        find_kernel_headers(
            release="6.9.0", modules_root=tmp_path, kheaders=archive, kheaders_dirs=(small,)
        )
    assert "no room to unpack" in str(error.value) and f"{small}: 1 MiB free" in str(error.value)


def test_headers_shipped_in_the_image_come_last(tmp_path):
    bundled = headers_tree(tmp_path / "bundled")
    (bundled / "VERSION").write_text("6.1.0-57-amd64\n")
    found = find_kernel_headers(
        release="6.18.44-fc",
        modules_root=tmp_path / "none",
        kheaders=tmp_path / "no-kheaders",
        bundled=bundled,
    )
    assert found.path == bundled and found.configured
    assert "shipped in the image, 6.1.0-57-amd64, for running kernel 6.18.44-fc" in found.origin
    # A node's own headers win over them.
    src = headers_tree(tmp_path / "usr/src/linux-headers-6.18.44-fc")
    (tmp_path / "lib/modules/6.18.44-fc").mkdir(parents=True)
    (tmp_path / "lib/modules/6.18.44-fc/build").symlink_to(src)
    found = find_kernel_headers(
        release="6.18.44-fc", modules_root=tmp_path / "lib/modules", bundled=bundled
    )
    assert found.origin == "running kernel 6.18.44-fc"


def test_missing_headers_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    none = {"kheaders": tmp_path / "kheaders.tar.xz", "bundled": tmp_path / "bundled"}
    with pytest.raises(ProbeError) as error:
        find_kernel_headers(release="6.9.0", modules_root=tmp_path, **none)
    assert "linux-headers-6.9.0" in str(error.value)
    assert "make setup" in str(error.value)
    # In a pod, host scripts are no advice.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    with pytest.raises(ProbeError) as error:
        find_kernel_headers(release="6.9.0", modules_root=tmp_path, **none)
    assert "setup" not in str(error.value) and "mount the node's /lib/modules" in str(error.value)


def test_configured_headers_must_exist(tmp_path):
    with pytest.raises(ProbeError, match="does not exist or has no include/"):
        find_kernel_headers(override=tmp_path / "nope")
    found = find_kernel_headers(override=headers_tree(tmp_path / "linux-6.18"))
    assert found.configured and found.path == tmp_path / "linux-6.18"


def test_kernel_symbols_are_found_by_name_even_with_zeroed_addresses(tmp_path):
    # What /proc/kallsyms shows a process without CAP_SYSLOG (a least-privilege pod).
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(
        "0000000000000000 T bpf_get_raw_tracepoint\n"
        "0000000000000000 t tcp_v4_rcv\n"
        "0000000000000000 t nf_nat_foo\t[nf_nat]\n"
    )
    assert attach.kernel_has_symbol(("bpf_find_raw_tracepoint", "bpf_get_raw_tracepoint"), kallsyms)
    assert attach.kernel_has_symbol(("nf_nat_foo",), kallsyms)
    assert not attach.kernel_has_symbol(("bpf_find_raw_tracepoint",), kallsyms)
    assert not attach.kernel_has_symbol(("anything",), tmp_path / "missing")
