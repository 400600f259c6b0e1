"""Network: who talks, how much, to whom, and how healthy their TCP is.

Every series here comes from the network probe (bpf/network.c): per-pod
traffic by direction/protocol/family, pod-to-pod flows, TCP events.
"""

from __future__ import annotations

from dashboards.builder import SELECTOR, DashboardSpec, Panel, Query, Row, rate

WHO = "namespace, pod, cgroup"
# Pods read namespace/pod; a non-pod cgroup has neither and reads as its path.
WHO_LEGEND = "{{namespace}}/{{pod}}{{cgroup}}"


def _top(direction: str) -> Panel:
    verb = "sending" if direction == "egress" else "receiving"
    bytes_rate = rate("orb8_network_bytes_total", extra=f'direction="{direction}"')
    return Panel(
        "bargauge",
        f"Top pods by {direction}",
        f"The 10 pods (or non-pod cgroups) {verb} the most IP-layer bytes per second right "
        "now, headers included.",
        "Bps",
        (Query(f"topk(10, sum by ({WHO}) ({bytes_rate}))", WHO_LEGEND),),
    )


DASHBOARD = DashboardSpec(
    uid="orb8-network",
    title="orb8 / Network",
    description="Per-pod traffic, pod-to-pod flows and TCP health, counted in the kernel by orb8.",
    file="orb8-network.json",
    rows=(
        Row("Top talkers", (_top("egress"), _top("ingress"))),
        Row(
            "Traffic",
            (
                Panel(
                    "timeseries",
                    "Bytes by direction and protocol",
                    "IP-layer bytes per second sent (egress) and received (ingress) by the "
                    "selected pods, split by protocol.",
                    "Bps",
                    (
                        Query(
                            f"sum by (direction, protocol) ({rate('orb8_network_bytes_total')})",
                            "{{direction}} {{protocol}}",
                        ),
                    ),
                    width=9,
                ),
                Panel(
                    "timeseries",
                    "Packets by direction and protocol",
                    "IP packets per second sent and received by the selected pods (a GSO/GRO "
                    "super-packet counts as the wire packets it stands for).",
                    "pps",
                    (
                        Query(
                            f"sum by (direction, protocol) ({rate('orb8_network_packets_total')})",
                            "{{direction}} {{protocol}}",
                        ),
                    ),
                    width=9,
                ),
                Panel(
                    "piechart",
                    "Protocol breakdown",
                    "Share of the selected pods' bytes per protocol and IP family, both "
                    "directions together.",
                    "Bps",
                    (
                        Query(
                            f"sum by (protocol, family) ({rate('orb8_network_bytes_total')})",
                            "{{protocol}} {{family}}",
                        ),
                    ),
                    width=6,
                ),
            ),
        ),
        Row(
            "Pod-to-pod",
            (
                Panel(
                    "table",
                    "Pod-to-pod traffic",
                    "Bytes per second between each selected pod and its peers. peer_class says "
                    "what the peer is: pod (named by peer_namespace/peer_pod), node, cluster, "
                    "external, loopback, or other (peer pods beyond --network-peer-limit).",
                    "Bps",
                    (
                        Query(
                            "sum by (namespace, pod, cgroup, direction, protocol, peer_class, "
                            f"peer_namespace, peer_pod) ({rate('orb8_flow_bytes_total')})",
                            "bytes/s",
                        ),
                    ),
                    width=16,
                ),
                Panel(
                    "timeseries",
                    "Active flows",
                    "Flows (peer address, protocol, direction) with traffic within the last "
                    "--network-flow-idle-timeout seconds, per pod.",
                    "short",
                    (Query(f"sum by ({WHO}) (orb8_active_flows{{{SELECTOR}}})", WHO_LEGEND),),
                    width=8,
                ),
            ),
        ),
        Row(
            "TCP",
            (
                Panel(
                    "timeseries",
                    "TCP connections opened",
                    "Connections per second that reached ESTABLISHED: role=client for "
                    "connect(), role=server for accept().",
                    "cps",
                    (
                        Query(
                            f"sum by ({WHO}, role) ({rate('orb8_tcp_connections_opened_total')})",
                            WHO_LEGEND + " {{role}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "TCP resets",
                    "Segments with RST sent (egress) or received (ingress) per second. A "
                    "refused connection shows as a received reset of the client.",
                    "pps",
                    (
                        Query(
                            f"sum by ({WHO}, direction) ({rate('orb8_tcp_resets_total')})",
                            WHO_LEGEND + " {{direction}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "TCP retransmits",
                    "Segments retransmitted per second by the pods' sockets (RTO, fast, "
                    "tail-loss-probe and SYN retransmits): loss or congestion on their path.",
                    "pps",
                    (
                        Query(
                            f"sum by ({WHO}) ({rate('orb8_tcp_retransmits_total')})",
                            WHO_LEGEND,
                        ),
                    ),
                    width=8,
                ),
            ),
        ),
    ),
)
