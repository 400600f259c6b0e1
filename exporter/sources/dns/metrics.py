"""The dns probe's metric families, each declared once (name, type, HELP,
labels, OTLP instrument, catalogue text). Light: no BCC, no numpy.

OpenTelemetry's DNS semantic conventions define one metric,
`dns.lookup.duration`: a resolver's whole lookup (search path and retries
included) with the queried name a required attribute. These are single
messages on the wire without names, so the OTLP names are orb8.dns.*.
"""

from __future__ import annotations

from exporter.model import IDENTITY_LABELS, MetricSpec

ROLES = ("client", "server")
QTYPES = ("A", "AAAA", "SRV", "PTR", "TXT", "other")
RCODES = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "other")
# bpf/include/dns.h: bucket i's upper bound is 2^(i + 4) microseconds; the
# last of the kernel's DNS_BUCKETS (20) is +Inf.
BUCKET_MIN_SHIFT = 4
KERNEL_BUCKETS = 20
LATENCY_BUCKETS = tuple((1 << (i + BUCKET_MIN_SHIFT)) / 1e6 for i in range(KERNEL_BUCKETS - 1))

_ROLE = (
    "`role` is `client` for the socket that sent the query and received the answer, "
    "`server` for the one that received the query and sent the answer (CoreDNS)."
)

# A DNS role (who asked, who answered) is not the TCP role otlp_names maps
# `role` to (orb8.tcp.role, who connected).
ROLE_ATTRIBUTE = (("role", "orb8.dns.role"),)

QUERIES = MetricSpec(
    "orb8_dns_queries_total",
    "counter",
    "DNS queries (UDP or TCP port 53) sent (client) or received (server) by the cgroup's "
    "sockets, by question type.",
    (*IDENTITY_LABELS, "role", "qtype"),
    otlp="orb8.dns.queries",
    unit="{query}",
    otlp_attributes=ROLE_ATTRIBUTE,
    doc="Probe `dns`. DNS queries on UDP or TCP port 53 seen at the cgroup's sockets, parsed "
    "in the kernel, by `qtype` (A, AAAA, SRV, PTR, TXT, other). " + _ROLE,
)
RESPONSES = MetricSpec(
    "orb8_dns_responses_total",
    "counter",
    "DNS answers received (client) or sent (server) by the cgroup's sockets, by response code.",
    (*IDENTITY_LABELS, "role", "rcode"),
    otlp="orb8.dns.responses",
    unit="{response}",
    otlp_attributes=ROLE_ATTRIBUTE,
    doc="Probe `dns`. DNS answers by `rcode` (NOERROR, NXDOMAIN, SERVFAIL, REFUSED, other). "
    + _ROLE,
)
NODATA = MetricSpec(
    "orb8_dns_nodata_responses_total",
    "counter",
    "DNS answers with rcode NOERROR and no answer record (NODATA), a subset of "
    'orb8_dns_responses_total{rcode="NOERROR"}.',
    (*IDENTITY_LABELS, "role"),
    otlp="orb8.dns.responses.nodata",
    unit="{response}",
    otlp_attributes=ROLE_ATTRIBUTE,
    doc="Probe `dns`. NOERROR answers without answer records (the name exists, not with "
    'that type): a subset of `orb8_dns_responses_total{rcode="NOERROR"}`.',
)
TIMEOUTS = MetricSpec(
    "orb8_dns_timeouts_total",
    "counter",
    "DNS queries without an answer within the dns_timeout window.",
    (*IDENTITY_LABELS, "role"),
    otlp="orb8.dns.timeouts",
    unit="{query}",
    otlp_attributes=ROLE_ATTRIBUTE,
    doc="Probe `dns`. Queries whose answer (same socket, peer, id) did not come within "
    "`--dns-timeout` seconds: answered later (counted in the kernel) or never (swept by "
    "user space at collect). A query evicted from the full `dns_pending` map is neither "
    '(see `orb8_bpf_map_evictions_total{map="dns_pending"}`). ' + _ROLE,
)
LATENCY = MetricSpec(
    "orb8_dns_latency_seconds",
    "histogram",
    "Time from a DNS query to its answer on the same socket (log2 buckets, counted in the kernel).",
    (*IDENTITY_LABELS, "role"),
    otlp="orb8.dns.latency",
    unit="s",
    otlp_attributes=ROLE_ATTRIBUTE,
    doc="Probe `dns`. Query to answer on the wire, from the query's first transmission, "
    "for answers within `--dns-timeout`; buckets are powers of two from 16 us to 4.19 s. "
    "Client: what the pod waited; server: how long the server took. " + _ROLE,
    buckets=LATENCY_BUCKETS,
)
MALFORMED = MetricSpec(
    "orb8_dns_malformed_total",
    "counter",
    "Messages on port 53 of the cgroup's sockets that did not parse as DNS (short, "
    "truncated, compressed or over-long question name, a query without a question).",
    (*IDENTITY_LABELS, "role"),
    otlp="orb8.dns.malformed",
    unit="{message}",
    otlp_attributes=ROLE_ATTRIBUTE,
    doc="Probe `dns`. Port-53 messages the kernel could not parse: shorter than the header, "
    "a question name cut short, over 255 bytes, with a compression pointer or reserved "
    "label type, or a query without a question. `role` here is from the local port (53: "
    "server).",
)

METRICS = (QUERIES, RESPONSES, NODATA, TIMEOUTS, LATENCY, MALFORMED)
