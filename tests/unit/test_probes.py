"""Kernel header discovery and the small pure helpers of probes.py."""

from __future__ import annotations

import pytest

from exporter import probes
from exporter.probes import ProbeError, find_kernel_headers


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


def test_kheaders_when_no_build_tree(tmp_path):
    kheaders = tmp_path / "kheaders.tar.xz"
    kheaders.write_bytes(b"")
    found = find_kernel_headers(
        release="6.9.0", modules_root=tmp_path / "lib/modules", kheaders=kheaders
    )
    assert found.path is None and "CONFIG_IKHEADERS" in found.origin


def test_missing_headers_say_what_to_do(tmp_path):
    with pytest.raises(ProbeError) as error:
        find_kernel_headers(
            release="6.9.0", modules_root=tmp_path, kheaders=tmp_path / "kheaders.tar.xz"
        )
    assert "linux-headers-6.9.0" in str(error.value)
    assert "make setup" in str(error.value)


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
    assert probes.kernel_has_symbol(("bpf_find_raw_tracepoint", "bpf_get_raw_tracepoint"), kallsyms)
    assert probes.kernel_has_symbol(("nf_nat_foo",), kallsyms)
    assert not probes.kernel_has_symbol(("bpf_find_raw_tracepoint",), kallsyms)
    assert not probes.kernel_has_symbol(("anything",), tmp_path / "missing")
