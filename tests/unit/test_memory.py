"""exporter/memory.py: /proc memory fields and malloc_trim."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys

import pytest

from exporter.memory import malloc_trim, parse_status, process_memory
from tests.helpers import ROOT

STATUS = """Name:\tpython
VmPeak:\t  500000 kB
VmHWM:\t  260000 kB
VmRSS:\t  253000 kB
RssAnon:\t  146000 kB
RssFile:\t  107000 kB
RssShmem:\t       0 kB
Threads:\t8
"""


def test_status_fields_in_bytes():
    assert parse_status(STATUS) == {
        "VmHWM": 260000 * 1024,
        "VmRSS": 253000 * 1024,
        "RssAnon": 146000 * 1024,
        "RssFile": 107000 * 1024,
        "RssShmem": 0,
    }


@pytest.mark.parametrize("line", ["RssAnon:\t12 MB", "VmRSS:\tlots kB"])
def test_an_unexpected_status_line_is_a_clear_error(line):
    with pytest.raises(ValueError, match="unexpected /proc status line"):
        parse_status(line)


def test_this_process():
    memory = process_memory()
    assert memory["VmRSS"] >= memory["RssAnon"] > 0


def test_freed_heap_in_the_middle_of_the_heap_goes_back():
    """40 MiB of 4 KiB blocks freed below a block still in use: glibc keeps
    them resident (free() only trims the top), malloc_trim returns them."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(10240)]
    for block in blocks:
        ctypes.memset(block, 1, 4096)  # resident
    for block in blocks[:-1]:
        libc.free(block)
    try:
        freed = malloc_trim()
        assert freed > 30 * 2**20
    finally:
        libc.free(blocks[-1])


TEMPORARIES = """
import ctypes, ctypes.util, sys
from exporter.memory import process_memory, tune_malloc
operator = {"MALLOC_ARENA_MAX": "8", "MALLOC_MMAP_THRESHOLD_": "x"}
applied = tune_malloc({} if sys.argv[1] == "tuned" else operator)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
big = libc.malloc(8 << 20)  # a scrape's body: mmapped, and freed
ctypes.memset(big, 1, 8 << 20)
libc.free(big)
before = process_memory()["RssAnon"]
blocks = [libc.malloc(1 << 20) for _ in range(24)]  # the next scrape's temporaries
for block in blocks:
    ctypes.memset(block, 1, 1 << 20)
keep = libc.malloc(200 << 10)  # something still in use above them (from the top)
for block in blocks:
    libc.free(block)
print(sorted(applied), (process_memory()["RssAnon"] - before) >> 20)
"""


def test_tuned_malloc_gives_a_scrapes_temporaries_back():
    """glibc raises its mmap threshold to the biggest block freed, so after
    one 8 MiB body the next scrape's 1 MiB temporaries come from the heap and
    stay resident once freed; with the threshold fixed (tune_malloc) they are
    mmapped and unmapped. An operator's own MALLOC_* variables are left alone."""

    def run(mode: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", TEMPORARIES, mode],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("]")
        return out[0] + "]", int(out[1])

    tuned, kept_tuned = run("tuned")
    untuned, kept_untuned = run("operator")
    assert tuned == "['MALLOC_ARENA_MAX', 'MALLOC_MMAP_THRESHOLD_']" and untuned == "[]"
    assert kept_untuned >= 20  # the glibc default keeps them
    assert kept_tuned <= 2


PLAIN_HOST = """
import sys
from exporter.agent import build_identity
from exporter.registry import load_settings
resolver, watcher = build_identity(load_settings({"cgroup_root": sys.argv[1]}))
print(watcher is None, "kubernetes" in sys.modules)
"""


def test_plain_host_mode_does_not_import_the_kubernetes_client(tmp_path):
    """The client brings requests, oauthlib, pydantic and jsonschema: ~15 MiB
    of RssAnon a run without a kubeconfig or a service account never uses."""
    (tmp_path / "cgroup.controllers").write_text("")  # a cgroup v2 tree to label by
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_HOST, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["True", "False"]
