"""The model and its Prometheus rendering."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from exporter.model import counter, gauge
from exporter.outputs.prometheus import build_registry, landing_page


def test_counters_must_end_in_total_and_label_arity_is_checked():
    with pytest.raises(ValueError, match="must end in _total"):
        counter("orb8_syscalls", "x")
    family = gauge("orb8_x", "x", ("a", "b"))
    with pytest.raises(ValueError, match="expected 2 label values"):
        family.add(("only-one",), 1)


def test_rendering_escapes_label_values():
    family = counter("orb8_syscalls_total", "help", ("cgroup", "syscall"))
    family.add(('/odd"path\\with\nnewline', "read"), 7)
    text = generate_latest(build_registry(lambda: [family])).decode()
    assert "# TYPE orb8_syscalls_total counter" in text
    assert 'orb8_syscalls_total{cgroup="/odd\\"path\\\\with\\nnewline",syscall="read"} 7.0' in text


def test_landing_page_escapes_html():
    page = landing_page("1.0", [("syscalls", False, "<boom>")])
    assert "&lt;boom&gt;" in page and "DOWN" in page


def test_label_values_that_are_not_valid_unicode_are_escaped():
    from exporter.model import counter

    family = counter("orb8_x_total", "x", ("pod", "cgroup"))
    family.add(("web-\ud800", "/x\udcff"), 1)  # lone surrogates: JSON escapes, bad bytes
    family.add(("é", "/plain"), 2)  # valid non-ASCII is unchanged
    assert family.samples == [(("web-\\ud800", "/x\\udcff"), 1), (("é", "/plain"), 2)]
