"""The exporter's own health: build info, per-probe state and collect time.

No kernel hook. Metrics: orb8_build_info{version,kernel},
orb8_probe_up{probe}, orb8_collect_duration_seconds{probe}. The process_*
metrics come from prometheus_client's ProcessCollector in the output.
"""

from __future__ import annotations

import platform

from exporter import __version__
from exporter.model import MetricFamily, gauge


def self_families(probe_state: dict[str, bool], durations: dict[str, float]) -> list[MetricFamily]:
    build = gauge(
        "orb8_build_info", "orb8 version and running kernel; always 1.", ("version", "kernel")
    )
    build.add((__version__, platform.release()), 1)
    up = gauge(
        "orb8_probe_up",
        "1 if the probe is loaded and its last collect succeeded, else 0.",
        ("probe",),
    )
    for name, ok in sorted(probe_state.items()):
        up.add((name,), 1 if ok else 0)
    duration = gauge(
        "orb8_collect_duration_seconds",
        "Time the probe's last collect took inside a scrape.",
        ("probe",),
    )
    for name, seconds in sorted(durations.items()):
        duration.add((name,), seconds)
    return [build, up, duration]
