"""The exporter's own health: build info, probes, identity resolution, pod watch.

No kernel hook. Metrics: orb8_build_info{version,kernel},
orb8_probe_up{probe}, orb8_collect_duration_seconds{probe},
orb8_cgroups_unresolved, orb8_bpf_stats_enabled, and per loaded BPF program
(program_families, called by each probe source): orb8_bpf_program_runs_total,
orb8_bpf_program_run_seconds_total, orb8_bpf_program_recursion_misses_total
{program}. And with Kubernetes: orb8_k8s_watch_connected,
orb8_k8s_watch_reconnections_total, orb8_k8s_last_sync_timestamp,
orb8_k8s_pods_tracked, orb8_k8s_watch_malformed_events_total. The process_*
metrics come from prometheus_client's ProcessCollector in the output.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

from exporter import __version__
from exporter.kernel.stats import ProgramStats, bpf_stats_enabled
from exporter.model import MetricFamily, counter, gauge

if TYPE_CHECKING:
    from exporter.identity import Resolver
    from exporter.identity.kubernetes import PodWatcher


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
    stats_enabled = gauge(
        "orb8_bpf_stats_enabled",
        "The sysctl kernel.bpf_stats_enabled: 1 while BPF program runs and run time are counted.",
    )
    stats_enabled.add((), 1 if bpf_stats_enabled() else 0)
    return [build, up, duration, stats_enabled]


def program_families(programs: list[ProgramStats]) -> list[MetricFamily]:
    """The kernel's own counters of a source's BPF programs (bpftool prog show).

    A recursion miss is a run the kernel skipped because a program of the
    same kind was already running on that CPU (e.g. a tracepoint hit from
    inside another BPF program): an event that was not counted.
    """
    labels = ("program",)
    runs = counter(
        "orb8_bpf_program_runs_total",
        "Runs of an orb8 BPF program (counted only while kernel.bpf_stats_enabled is 1).",
        labels,
    )
    run_time = counter(
        "orb8_bpf_program_run_seconds_total",
        "Time spent in an orb8 BPF program (counted only while kernel.bpf_stats_enabled is 1).",
        labels,
    )
    misses = counter(
        "orb8_bpf_program_recursion_misses_total",
        "Runs of an orb8 BPF program the kernel skipped (recursion): events not counted.",
        labels,
    )
    for stats in programs:
        runs.add((stats.program,), stats.runs)
        run_time.add((stats.program,), stats.run_time_ns / 1e9)
        misses.add((stats.program,), stats.recursion_misses)
    return [runs, run_time, misses]


_process = None


def process_families() -> list[MetricFamily]:
    """process_* as the Prometheus output's ProcessCollector renders them, for OTLP."""
    global _process
    from prometheus_client import ProcessCollector

    if _process is None:
        _process = ProcessCollector(registry=None)
    families = []
    for metric in _process.collect():
        if metric.type == "counter":
            family = counter(metric.name + "_total", metric.documentation)
        else:
            family = gauge(metric.name, metric.documentation)
        for sample in metric.samples:
            if sample.name == family.name:
                family.add((), sample.value)
        families.append(family)
    return families


def table_families(tables: dict[str, tuple[int, int]]) -> list[MetricFamily]:
    """Fill of user-space tables keyed by what tenants create (cgroups,
    workloads): {table: (entries, capacity)}. What a full table does is in
    docs/metrics.md."""
    entries = gauge(
        "orb8_table_entries",
        "Entries in an orb8 user-space table keyed by cgroups or workloads.",
        ("table",),
    )
    capacity = gauge(
        "orb8_table_capacity", "Most entries an orb8 user-space table holds.", ("table",)
    )
    for name, (used, limit) in sorted(tables.items()):
        entries.add((name,), used)
        capacity.add((name,), limit)
    return [entries, capacity]


def identity_families(resolver: Resolver | None, watcher: PodWatcher | None) -> list[MetricFamily]:
    families = []
    if resolver is not None:
        unresolved = gauge(
            "orb8_cgroups_unresolved",
            "Pod cgroups being counted whose pod or container is not known yet "
            "(labelled by cgroup path meanwhile).",
        )
        unresolved.add((), len(resolver.pending))
        walks = counter(
            "orb8_cgroup_walks_total",
            "Walks of the cgroup v2 tree to map new cgroup ids to paths: at most one per "
            "collect and one a second for evidence, however many cgroups come and go.",
        )
        walks.add((), resolver.tree.scans)
        families += [
            unresolved,
            walks,
            *table_families({"identity": (resolver.entries, resolver.capacity)}),
        ]
    if watcher is None:
        return families
    health = watcher.health
    connected = gauge(
        "orb8_k8s_watch_connected", "1 while the pod list/watch is connected and synced, else 0."
    )
    connected.add((), 1 if health.connected else 0)
    reconnections = counter(
        "orb8_k8s_watch_reconnections_total",
        "Times the pod list/watch went back to the API server after a failure, by reason "
        "(expired relists, closed, dropped, stalled, unreachable, http_error, error_event, "
        "bad_response); each waited for the backoff.",
        ("reason",),
    )
    for reason, count in sorted(health.reconnections.items()):
        reconnections.add((reason,), count)
    last_sync = gauge(
        "orb8_k8s_last_sync_timestamp",
        "Unix time of the last complete list of this node's pods (0 before the first).",
    )
    last_sync.add((), health.last_sync)
    tracked = gauge("orb8_k8s_pods_tracked", "Pods of this node currently known (not deleted).")
    tracked.add((), sum(1 for pod in watcher.pods.values() if pod.deleted_at is None))
    malformed = counter(
        "orb8_k8s_watch_malformed_events_total",
        "Pod list items and watch events that could not be parsed and were skipped.",
    )
    malformed.add((), health.malformed_events)
    return [*families, connected, reconnections, last_sync, tracked, malformed]
