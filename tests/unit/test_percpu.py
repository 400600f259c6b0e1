"""Per-CPU values summed over CPUs (exporter/percpu.py), table-driven."""

from __future__ import annotations

import ctypes as ct

import numpy as np
import pytest

from exporter.kernel import percpu


def batch(rows: list[list[list[int]]]):
    """A ctypes buffer laid out as BPF_MAP_LOOKUP_BATCH fills it: entry, CPU, field."""
    flat = [v for entry in rows for cpu in entry for v in cpu]
    return (ct.c_uint64 * len(flat))(*flat)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # entries x CPUs x fields -> per-entry sums
        ([[[1], [2], [3]]], [[6]]),
        ([[[1], [0]], [[5], [7]], [[0], [0]]], [[1], [12], [0]]),
        ([[[10, 1], [20, 2]], [[0, 0], [3, 4]]], [[30, 3], [3, 4]]),
        ([[[2**64 - 1], [2]]], [[1]]),  # wraps like the kernel's u64 counters
        ([[[2**63], [2**63 - 1]]], [[2**64 - 1]]),
    ],
)
def test_sums_over_cpus(rows, expected):
    cpus, width = len(rows[0]), len(rows[0][0])
    got = percpu.sums(batch(rows), len(rows), cpus, width)
    assert got.dtype == np.uint64
    want = np.array(expected, dtype=np.uint64)
    assert np.array_equal(got, want[:, 0] if width == 1 else want)


def test_a_larger_buffer_is_read_only_up_to_the_entries_asked_for():
    rows = [[[1], [1]], [[2], [2]], [[99], [99]]]
    assert percpu.sums(batch(rows), 2, 2).tolist() == [2, 4]
    assert percpu.sums(b"", 0, 64).tolist() == []


def test_the_buffer_is_viewed_not_copied():
    buffer = batch([[[1], [2]]])
    assert percpu.sums(buffer, 1, 2).tolist() == [3]
    buffer[0] = 40
    assert percpu.sums(buffer, 1, 2).tolist() == [42]


@pytest.mark.parametrize(
    ("entries", "cpus", "width", "match"),
    [
        (2, 4, 1, "short of 2 entries x 4 CPUs"),
        (1, 0, 1, "bad per-CPU shape"),
        (-1, 4, 1, "bad per-CPU shape"),
        (1, 4, 0, "bad per-CPU shape"),
    ],
)
def test_a_shape_that_does_not_fit_is_a_clear_error(entries, cpus, width, match):
    with pytest.raises(ValueError, match=match):
        percpu.sums(batch([[[1], [2], [3], [4]]]), entries, cpus, width)


def test_one_entry_as_bcc_returns_it():
    per_cpu = (ct.c_uint64 * 4)(1, 2, 3, 2**64 - 1)  # BCC: table[key] of a u64 per-CPU map
    assert percpu.entry_sum(per_cpu) == 5

    class Traffic(ct.Structure):
        _fields_ = [("bytes", ct.c_uint64), ("packets", ct.c_uint64)]

    value = (Traffic * 3)(Traffic(100, 1), Traffic(200, 2), Traffic(0, 0))
    assert percpu.entry_sum(value, width=2).tolist() == [300, 3]
    with pytest.raises(ValueError, match="not a multiple of 4"):
        percpu.entry_sum(value, width=4)
