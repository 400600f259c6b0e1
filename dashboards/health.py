"""orb8 health: is the agent itself working, and what does it cost?

Probe state, kernel map fill, evidence ring buffer, the Kubernetes pod
watch, collect and scrape time, and orb8's own CPU and memory.
"""

from __future__ import annotations

from dashboards.builder import TARGET_SELECTOR, DashboardSpec, Panel, Query, Row, rate
from dashboards.security import RING_BUFFER

T = TARGET_SELECTOR
UP_DOWN = (("1", "up", "green"), ("0", "down", "red"))

DASHBOARD = DashboardSpec(
    uid="orb8-health",
    title="orb8 / Health",
    description="The orb8 agent itself: probes, kernel maps, pod watch, overhead.",
    file="orb8-health.json",
    workloads=False,
    rows=(
        Row(
            "Agent",
            (
                Panel(
                    "state-timeline",
                    "Scrape target up",
                    "Whether Prometheus could scrape orb8 on each node (up).",
                    "none",
                    (Query(f"up{{{T}}}", "{{instance}}"),),
                    width=8,
                    mappings=UP_DOWN,
                ),
                Panel(
                    "state-timeline",
                    "Probe state",
                    "1 while a probe is loaded and its last collect succeeded. When down, the "
                    "reason is on orb8's landing page and in its log.",
                    "none",
                    (Query(f"orb8_probe_up{{{T}}}", "{{instance}} {{probe}}"),),
                    width=8,
                    mappings=UP_DOWN,
                ),
                Panel(
                    "table",
                    "Versions",
                    "orb8 version and kernel release per node.",
                    "none",
                    (
                        Query(
                            f"sum by (instance, version, kernel) (orb8_build_info{{{T}}})",
                            "processes",
                        ),
                    ),
                    width=8,
                ),
            ),
        ),
        Row(
            "Kernel maps",
            (
                Panel(
                    "timeseries",
                    "Map fill",
                    "Entries of each orb8 kernel map over its capacity. When a map is full, "
                    "new keys are not counted (or, for network_flows, evicted): raise the "
                    "capacity before it reaches 100%.",
                    "percentunit",
                    (
                        Query(
                            "max by (instance, map) "
                            f"(orb8_bpf_map_entries{{{T}}} / orb8_bpf_map_capacity{{{T}}})",
                            "{{instance}} {{map}}",
                        ),
                    ),
                    width=8,
                    max_value=1,
                    threshold=0.9,
                ),
                Panel(
                    "table",
                    "Map entries and capacity",
                    "Entries now and capacity of each kernel map.",
                    "short",
                    (
                        Query(f"max by (instance, map) (orb8_bpf_map_entries{{{T}}})", "entries"),
                        Query(f"max by (instance, map) (orb8_bpf_map_capacity{{{T}}})", "capacity"),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Map update failures and evictions",
                    "Events not counted per second because a map was full (failures), and "
                    "flows evicted from the LRU flow map (evictions). Non-zero means counts "
                    "are low.",
                    "ops",
                    (
                        Query(
                            "sum by (instance, map) "
                            f"({rate('orb8_bpf_map_update_failures_total', T)})",
                            "{{instance}} {{map}} failures",
                        ),
                        Query(
                            f"sum by (instance, map) ({rate('orb8_bpf_map_evictions_total', T)})",
                            "{{instance}} {{map}} evictions",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Kernel map memory",
                    "Kernel memory orb8's BPF maps take per node, as the kernel accounts it "
                    "(memlock). Per-CPU maps grow with the node's CPUs; the budget is 64 MiB "
                    "(docs/scaling.md).",
                    "bytes",
                    (
                        Query(
                            f"sum by (instance) (orb8_bpf_map_memory_bytes{{{T}}})",
                            "{{instance}}",
                        ),
                    ),
                    width=24,
                ),
            ),
        ),
        Row("Evidence ring buffer", RING_BUFFER),
        Row(
            "Kubernetes pod watch",
            (
                Panel(
                    "state-timeline",
                    "Pod watch connected",
                    "1 while the pod list/watch is connected and synced.",
                    "none",
                    (Query(f"orb8_k8s_watch_connected{{{T}}}", "{{instance}}"),),
                    width=8,
                    mappings=(("1", "connected", "green"), ("0", "disconnected", "red")),
                ),
                Panel(
                    "timeseries",
                    "Time since last full pod list",
                    "Seconds since orb8 last listed this node's pods completely (each "
                    "reconnect relists).",
                    "s",
                    (Query(f"time() - orb8_k8s_last_sync_timestamp{{{T}}}", "{{instance}}"),),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Watch reconnections and malformed events",
                    "Pod watch failures that forced a reconnect, and list items or events that "
                    "could not be parsed (logged and skipped), per second.",
                    "ops",
                    (
                        Query(
                            f"sum by (instance) ({rate('orb8_k8s_watch_reconnections_total', T)})",
                            "{{instance}} reconnections",
                        ),
                        Query(
                            "sum by (instance) "
                            f"({rate('orb8_k8s_watch_malformed_events_total', T)})",
                            "{{instance}} malformed",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Pods tracked and unresolved cgroups",
                    "Pods of the node orb8 knows, and pod-shaped cgroups counted without a "
                    "known pod yet (labelled by cgroup path until resolved). Unresolved "
                    "staying above 0 means a broken watch or missing RBAC.",
                    "short",
                    (
                        Query(f"orb8_k8s_pods_tracked{{{T}}}", "{{instance}} pods"),
                        Query(f"orb8_cgroups_unresolved{{{T}}}", "{{instance}} unresolved"),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "User-space table fill",
                    "Entries of each orb8 table keyed by cgroups or workloads (identity "
                    "cache, baselines, evidence waiting for a cgroup walk, evidence rate "
                    "buckets) over its capacity. Near 100% under cgroup churn is expected "
                    "for identity; see docs/operating.md#cgroup-churn.",
                    "percentunit",
                    (
                        Query(
                            "max by (instance, table) "
                            f"(orb8_table_entries{{{T}}} / orb8_table_capacity{{{T}}})",
                            "{{instance}} {{table}}",
                        ),
                    ),
                    width=8,
                    max_value=1,
                ),
                Panel(
                    "timeseries",
                    "Cgroup tree walks",
                    "Walks of the cgroup tree per second: at most about one a second for "
                    "evidence plus one per collect, whatever the churn of cgroups.",
                    "ops",
                    (
                        Query(
                            f"rate(orb8_cgroup_walks_total{{{T}}}[$__rate_interval])",
                            "{{instance}}",
                        ),
                    ),
                    width=8,
                ),
            ),
        ),
        Row(
            "Overhead",
            (
                Panel(
                    "timeseries",
                    "Collect duration by probe",
                    "Time each probe's last collect took inside a scrape (batch map reads, "
                    "identity lookup).",
                    "s",
                    (
                        Query(
                            f"max by (instance, probe) (orb8_collect_duration_seconds{{{T}}})",
                            "{{instance}} {{probe}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Scrape duration",
                    "How long Prometheus' scrape of orb8 took (scrape_duration_seconds); "
                    "compare with the scrape timeout.",
                    "s",
                    (Query(f"scrape_duration_seconds{{{T}}}", "{{instance}}"),),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Samples per scrape",
                    "Series orb8 exposes per scrape (scrape_samples_scraped): its cardinality "
                    "cost in Prometheus.",
                    "short",
                    (Query(f"scrape_samples_scraped{{{T}}}", "{{instance}}"),),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "CPU",
                    "CPU time of the orb8 process per second (1 = one full core).",
                    "percentunit",
                    (
                        Query(
                            f"rate(process_cpu_seconds_total{{{T}}}[$__rate_interval])",
                            "{{instance}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Resident memory",
                    "Resident set size of the orb8 process (kernel map memory is not included).",
                    "bytes",
                    (Query(f"process_resident_memory_bytes{{{T}}}", "{{instance}}"),),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Open file descriptors",
                    "Open file descriptors of orb8 over its limit (BPF maps, programs and links "
                    "each hold one).",
                    "percentunit",
                    (
                        Query(
                            f"process_open_fds{{{T}}} / process_max_fds{{{T}}}",
                            "{{instance}}",
                        ),
                    ),
                    width=8,
                    max_value=1,
                ),
            ),
        ),
    ),
)
