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
