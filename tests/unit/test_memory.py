"""exporter/memory.py: /proc memory fields and malloc_trim."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from exporter.memory import malloc_trim, parse_status, process_memory

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
