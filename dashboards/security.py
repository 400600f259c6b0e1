"""Security: what the workloads ask the kernel, and what they should not.

Syscall rates, dangerous syscalls with their runbooks, syscalls outside a
workload's learned baseline, the orb8 alerts firing now, and whether the
evidence ring buffer keeps up.
"""

from __future__ import annotations

from dashboards.builder import (
    SELECTOR,
    TARGET_SELECTOR,
    DashboardSpec,
    Link,
    Panel,
    Query,
    Row,
    rate,
)

WHO = "namespace, pod, cgroup"
WHO_LEGEND = "{{namespace}}/{{pod}}{{cgroup}}"
T = TARGET_SELECTOR
IDENTITY = "namespace, pod, container, cgroup"

RUNBOOK_BASE = "https://github.com/orb8/orb8/blob/main/docs/alerts.md"
# Which alert (and so which runbook in docs/alerts.md) covers a dangerous
# syscall: the same regexes as alerts/orb8-rules.yml (a test holds them
# equal). The catch-all comes first so the specific ones overwrite it.
CATCH_ALL_ALERT = "Orb8DangerousSyscall"
RUNBOOKS = (
    ("Orb8KernelModuleLoad", "init_module|finit_module|delete_module"),
    ("Orb8KexecAttempt", "kexec_load|kexec_file_load"),
    ("Orb8BpfFromWorkload", "bpf"),
)


def _with_runbook(expr: str) -> str:
    """Adds a `runbook` label: the anchor of the alert's runbook in docs/alerts.md."""
    expr = f'label_replace({expr}, "runbook", "{CATCH_ALL_ALERT.lower()}", "syscall", ".*")'
    for alert, syscalls in RUNBOOKS:
        expr = f'label_replace({expr}, "runbook", "{alert.lower()}", "syscall", "{syscalls}")'
    return expr


RING_BUFFER = (
    Panel(
        "timeseries",
        "Evidence records written and dropped",
        "Dangerous-syscall evidence records per second written to the ring buffer (each "
        "becomes a log line) and dropped (buffer full, or sampled while over 90% full). "
        "Counters stay exact either way; drops only cost log lines.",
        "ops",
        (
            Query(
                f"sum by (instance, probe) ({rate('orb8_ring_buffer_events_total', T)})",
                "{{instance}} {{probe}} written",
            ),
            Query(
                f"sum by (instance, probe) ({rate('orb8_ring_buffer_drops_total', T)})",
                "{{instance}} {{probe}} dropped",
            ),
        ),
    ),
    Panel(
        "timeseries",
        "Ring buffer fill",
        "Highest fill of the evidence ring buffer between two scrapes. Above 90% orb8 "
        "samples evidence (1 in --ring-buffer-sample-every); at 100% it drops.",
        "percentunit",
        (
            Query(
                f"max by (instance, probe) (orb8_ring_buffer_utilization{{{T}}})",
                "{{instance}} {{probe}}",
            ),
        ),
        max_value=1,
        threshold=0.9,
    ),
)

DASHBOARD = DashboardSpec(
    uid="orb8-security",
    title="orb8 / Security",
    description="Syscall behaviour of workloads: rates, dangerous and novel syscalls, orb8 alerts.",
    file="orb8-security.json",
    rows=(
        Row(
            "Syscalls",
            (
                Panel(
                    "timeseries",
                    "Syscall rate by pod (top 10)",
                    "System calls per second of the 10 busiest selected pods, counted exactly "
                    "in the kernel at sys_enter (failed calls included).",
                    "ops",
                    (
                        Query(
                            f"topk(10, sum by ({WHO}) ({rate('orb8_syscalls_total')}))",
                            WHO_LEGEND,
                        ),
                    ),
                ),
                Panel(
                    "timeseries",
                    "Top syscalls",
                    "The 10 most frequent syscalls of the selected pods, per second.",
                    "ops",
                    (
                        Query(
                            f"topk(10, sum by (syscall) ({rate('orb8_syscalls_total')}))",
                            "{{syscall}}",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Dangerous and novel syscalls",
            (
                Panel(
                    "table",
                    "Dangerous syscalls by pod and syscall",
                    "Attempts of dangerous syscalls (ptrace, mount, bpf, init_module, ...) "
                    "since orb8 started or the workload appeared, per container and syscall. "
                    "The runbook column links to what to do (docs/alerts.md).",
                    "short",
                    (
                        Query(
                            _with_runbook(
                                f"sum by ({IDENTITY}, syscall) "
                                f"(orb8_dangerous_syscalls_total{{{SELECTOR}}})"
                            ),
                            "calls",
                        ),
                    ),
                    width=16,
                    links=(
                        Link(
                            "runbook",
                            "Runbook for this syscall",
                            RUNBOOK_BASE + "#${__data.fields.runbook}",
                        ),
                    ),
                ),
                Panel(
                    "timeseries",
                    "Dangerous syscall rate",
                    "Dangerous syscall attempts per second by pod and syscall.",
                    "ops",
                    (
                        Query(
                            f"sum by ({WHO}, syscall) ({rate('orb8_dangerous_syscalls_total')})",
                            WHO_LEGEND + " {{syscall}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "table",
                    "Novel syscalls",
                    "Calls of syscalls a workload never made during its learning window "
                    "(--baseline-window from its first appearance), per container and syscall. "
                    "A new release or a rare code path, or something that should not be there.",
                    "short",
                    (
                        Query(
                            f"sum by ({IDENTITY}, syscall) "
                            f"(orb8_syscall_novel_total{{{SELECTOR}}})",
                            "calls",
                        ),
                    ),
                    width=12,
                ),
                Panel(
                    "table",
                    "Firing orb8 alerts",
                    "orb8 alerts firing now (ALERTS) for the selected nodes, namespaces and "
                    "pods. Node-level alerts (probe down, map full) carry no namespace/pod and "
                    "show only while the namespace and pod selections are All.",
                    "short",
                    (
                        Query(
                            "sum by (alertname, severity, instance, namespace, pod, container, "
                            "cgroup, syscall, probe, map) "
                            '(ALERTS{alertname=~"Orb8.*", alertstate="firing", '
                            'instance=~"$instance", namespace=~"$namespace", pod=~"$pod"})',
                            "alerts",
                        ),
                    ),
                    width=12,
                ),
            ),
        ),
        Row("Evidence ring buffer", RING_BUFFER),
    ),
)
