"""DNS: what each pod asks, what it gets back, how long it waits, and how the
DNS servers on the node (CoreDNS) answer.

Every series here comes from the dns probe (bpf/dns.c, `--probes ...,dns`):
queries by type, answers by response code, timeouts, a latency histogram
and malformed messages, per pod and role (client or server).
"""

from __future__ import annotations

from dashboards.builder import DashboardSpec, Panel, Query, Row, rate

WHO = "namespace, pod, cgroup"
WHO_LEGEND = "{{namespace}}/{{pod}}{{cgroup}}"
CLIENT = 'role="client"'
SERVER = 'role="server"'


def _ratio(numerator: str) -> str:
    answers = rate("orb8_dns_responses_total", extra=f"{CLIENT}, {numerator}")
    queries = rate("orb8_dns_queries_total", extra=CLIENT)
    return f"sum by ({WHO}) ({answers}) / sum by ({WHO}) ({queries})"


def _p99(role: str) -> str:
    buckets = rate("orb8_dns_latency_seconds_bucket", extra=role)
    return f"histogram_quantile(0.99, sum by ({WHO}, le) ({buckets}))"


DASHBOARD = DashboardSpec(
    uid="orb8-dns",
    title="orb8 / DNS",
    description="Per-pod DNS queries, answers, timeouts and latency, parsed in the kernel by "
    "orb8's dns probe.",
    file="orb8-dns.json",
    rows=(
        Row(
            "What the pods ask",
            (
                Panel(
                    "timeseries",
                    "Queries by pod",
                    "DNS queries per second the selected pods send (UDP and TCP port 53).",
                    "reqps",
                    (
                        Query(
                            f"sum by ({WHO}) ({rate('orb8_dns_queries_total', extra=CLIENT)})",
                            WHO_LEGEND,
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Queries by type",
                    "Queries per second of the selected pods by question type: AAAA next to "
                    "every A is normal (dual-stack lookups), SRV and PTR come from service "
                    "discovery and reverse lookups.",
                    "reqps",
                    (
                        Query(
                            f"sum by (qtype) ({rate('orb8_dns_queries_total', extra=CLIENT)})",
                            "{{qtype}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Answers by response code",
                    "Answers per second the selected pods receive, by rcode. Many NXDOMAIN "
                    "usually means the ndots search path (docs/alerts.md#orb8dnsnxdomainstorm).",
                    "reqps",
                    (
                        Query(
                            f"sum by (rcode) ({rate('orb8_dns_responses_total', extra=CLIENT)})",
                            "{{rcode}}",
                        ),
                    ),
                    width=8,
                ),
            ),
        ),
        Row(
            "What goes wrong",
            (
                Panel(
                    "timeseries",
                    "Error ratio by pod",
                    "Share of each pod's queries answered SERVFAIL, REFUSED or another error "
                    "code (not NOERROR or NXDOMAIN).",
                    "percentunit",
                    (Query(_ratio('rcode!~"NOERROR|NXDOMAIN"'), WHO_LEGEND),),
                    width=6,
                ),
                Panel(
                    "timeseries",
                    "NXDOMAIN ratio by pod",
                    "Share of each pod's queries answered NXDOMAIN (the name does not exist).",
                    "percentunit",
                    (Query(_ratio('rcode="NXDOMAIN"'), WHO_LEGEND),),
                    width=6,
                ),
                Panel(
                    "timeseries",
                    "Timeouts by pod",
                    "Queries per second without an answer within --dns-timeout (same socket, "
                    "server and id).",
                    "reqps",
                    (
                        Query(
                            f"sum by ({WHO}) ({rate('orb8_dns_timeouts_total', extra=CLIENT)})",
                            WHO_LEGEND,
                        ),
                    ),
                    width=6,
                ),
                Panel(
                    "timeseries",
                    "p99 latency by pod",
                    "99th percentile of the time from a query to its answer, as the pod "
                    "waited for it (log2 buckets counted in the kernel: read it to a factor "
                    "of two).",
                    "s",
                    (Query(_p99(CLIENT), WHO_LEGEND),),
                    width=6,
                ),
            ),
        ),
        Row(
            "Serving DNS (select the server pods, e.g. CoreDNS)",
            (
                Panel(
                    "timeseries",
                    "Answers sent by server pods",
                    "Answers per second the selected pods send as DNS servers (CoreDNS, "
                    "node-local DNS), by rcode.",
                    "reqps",
                    (
                        Query(
                            f"sum by ({WHO}, rcode) "
                            f"({rate('orb8_dns_responses_total', extra=SERVER)})",
                            WHO_LEGEND + " {{rcode}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Server p99 latency",
                    "99th percentile of the time the selected server pods take from a query to "
                    "its answer.",
                    "s",
                    (Query(_p99(SERVER), WHO_LEGEND),),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Malformed messages",
                    "Messages to or from port 53 that do not parse as DNS, per second, for "
                    "the selected pods (cut short, compression pointers in the question, "
                    "over-long names): a broken client, or probing.",
                    "pps",
                    (
                        Query(
                            f"sum by ({WHO}, role) ({rate('orb8_dns_malformed_total')})",
                            WHO_LEGEND + " {{role}}",
                        ),
                    ),
                    width=8,
                ),
            ),
        ),
    ),
)
