"""Network probe on the real kernel: real packets between two "pods" (network
namespaces joined by a veth pair, each workload in a kubelet-shaped cgroup),
exact expected counts read through NetworkSource.collect().

IPv4 packets here carry a 20-byte IP header, IPv6 a 40-byte one, UDP an
8-byte header, and TCP a 32-byte header (20 + the 12-byte timestamp option
Linux negotiates by default) except on the SYN and SYN-ACK (40 bytes: MSS,
SACK-permitted, timestamps, window scale). Static neighbour entries keep
ARP/ND out of the picture (they are not socket traffic anyway).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.kernel.attach import link_create
from exporter.model import MetricFamily
from exporter.sources.network.source import NetworkSource
from tests.helpers import remove_cgroup, run_workload, set_up, started_sources
from tests.kernel.netpods import IPV6_EXTENSION_BYTES, Pod, PodPair

pytestmark = pytest.mark.kernel

PAYLOAD = 512
DATAGRAMS = 1_000
TCP_PAYLOAD = 10_000_000
MSS = 1448  # 1500-byte veth MTU - 20 (IPv4) - 32 (TCP with timestamps)


@pytest.fixture
def pods(cgroup2_root: Path) -> Iterator[PodPair]:
    yield from set_up(PodPair(cgroup2_root))


@pytest.fixture
def make_source(cgroup2_root: Path) -> Iterator:
    """NetworkSource factory; every source is closed at teardown, even on failure."""
    yield from started_sources(NetworkSource, cgroup2_root, node_ips=[])


class Snapshot:
    """One collect(), queried by metric name and label subset."""

    def __init__(self, families: list[MetricFamily]) -> None:
        self.families: dict[str, MetricFamily] = {}
        for family in families:
            self.families.setdefault(family.name, family)

    def rows(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        family = self.families[name]
        found = []
        for values, value in family.samples:
            row = dict(zip(family.labels, values, strict=True))
            if labels.items() <= row.items():
                found.append((row, value))
        return found

    def value(self, name: str, **labels: str) -> float:
        return sum(value for _, value in self.rows(name, **labels))


def who(pod: Pod) -> dict[str, str]:
    return {"namespace": pod.namespace, "pod": pod.name, "container": "app", "cgroup": ""}


def delta(before: Snapshot, after: Snapshot, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def udp_both_ways(pods: PodPair, family: str, port: int) -> None:
    a_addr, b_addr = (pods.a.ipv4, pods.b.ipv4) if family == "ipv4" else (pods.a.ipv6, pods.b.ipv6)
    receivers = [
        pods.spawn(pods.a, "udp-recv", a_addr, port, DATAGRAMS),
        pods.spawn(pods.b, "udp-recv", b_addr, port, DATAGRAMS),
    ]
    for receiver in receivers:
        receiver.wait_ready()
    senders = [
        pods.spawn(pods.a, "udp-send", port, DATAGRAMS, PAYLOAD, b_addr),
        pods.spawn(pods.b, "udp-send", port, DATAGRAMS, PAYLOAD, a_addr),
    ]
    for sender in senders:
        assert sender.result()["sent"] == DATAGRAMS
    for receiver in receivers:
        assert receiver.result() == {
            "done": True,
            "received": DATAGRAMS,
            "bytes": DATAGRAMS * PAYLOAD,
        }


def test_udp_counts_are_exact_per_pod_direction_and_family(pods, make_source):
    source = make_source(pods.pods)
    assert source.tcp_hook == "sock_ops" and source.attach_mode == "link"
    before = Snapshot(source.collect())
    udp_both_ways(pods, "ipv4", 5000)
    udp_both_ways(pods, "ipv6", 5001)
    after = Snapshot(source.collect())

    for pod in (pods.a, pods.b):
        for family, header in (("ipv4", 28), ("ipv6", 48)):
            for direction in ("ingress", "egress"):
                labels = dict(who(pod), direction=direction, protocol="udp", family=family)
                assert delta(before, after, "orb8_network_packets_total", **labels) == DATAGRAMS
                assert delta(before, after, "orb8_network_bytes_total", **labels) == DATAGRAMS * (
                    PAYLOAD + header
                )
        # The workloads sent nothing else: no TCP, ICMP or "other" at all.
        assert after.value("orb8_network_packets_total", **who(pod)) == 4 * DATAGRAMS

    # Each pod's flows name the other pod as the peer, over both families.
    for pod, peer in ((pods.a, pods.b), (pods.b, pods.a)):
        for direction in ("ingress", "egress"):
            rows = after.rows("orb8_flow_bytes_total", **who(pod), direction=direction)
            assert [(r["peer_class"], r["peer_namespace"], r["peer_pod"]) for r, _ in rows] == [
                ("pod", peer.namespace, peer.name)
            ]
            assert rows[0][1] == DATAGRAMS * (2 * PAYLOAD + 28 + 48)
            assert (
                after.value("orb8_flow_packets_total", **who(pod), direction=direction)
                == 2 * DATAGRAMS
            )
        assert after.value("orb8_active_flows", **who(pod)) == 4  # 2 families x 2 directions
    for name in ("network_traffic", "network_tcp", "network_flows"):
        assert after.value("orb8_bpf_map_update_failures_total", map=name) == 0
        assert after.value("orb8_bpf_map_entries", map=name) <= after.value(
            "orb8_bpf_map_capacity", map=name
        )


def test_ipv6_extension_headers_are_walked_to_udp_and_tcp(pods, make_source):
    """Hop-by-hop + destination options headers (16 bytes) before UDP and TCP."""
    source = make_source(pods.pods)
    before = Snapshot(source.collect())
    receiver = pods.spawn(pods.b, "udp-recv", pods.b.ipv6, 5009, DATAGRAMS)
    receiver.wait_ready()
    pods.spawn(pods.a, "udp-send-ext", 5009, DATAGRAMS, PAYLOAD, pods.b.ipv6).result()
    receiver.result()
    server = pods.spawn(pods.b, "tcp-serve", pods.b.ipv6, 6009)
    server.wait_ready()
    pods.spawn(pods.a, "tcp-send-ext", pods.b.ipv6, 6009, 100_000).result()
    assert server.result()["received"] == 100_000
    after = Snapshot(source.collect())

    for pod, direction in ((pods.a, "egress"), (pods.b, "ingress")):
        udp = dict(**who(pod), direction=direction, protocol="udp", family="ipv6")
        assert delta(before, after, "orb8_network_packets_total", **udp) == DATAGRAMS
        size = PAYLOAD + 48 + IPV6_EXTENSION_BYTES
        assert delta(before, after, "orb8_network_bytes_total", **udp) == DATAGRAMS * size
        assert after.value("orb8_network_packets_total", **who(pod), protocol="other") == 0
    # The SYNs were found behind the extension headers: the connecting socket
    # and the listener got their cgroups recorded, so both opens are the pods'.
    opened = "orb8_tcp_connections_opened_total"
    assert delta(before, after, opened, **who(pods.a), role="client") == 1
    assert delta(before, after, opened, **who(pods.b), role="server") == 1
    assert after.value(opened, cgroup="<unresolved>") == before.value(opened, cgroup="<unresolved>")


ATTRIBUTION = """
struct seen_key {
    u64 skb_cgroup;
    u64 current_cgroup;
};
BPF_HASH(seen, struct seen_key, u64, 1024);

int record(struct __sk_buff *skb)
{
    struct seen_key key = {bpf_skb_cgroup_id(skb), bpf_get_current_cgroup_id()};
    seen.increment(key);
    return 1;
}
"""


def test_ingress_belongs_to_the_socket_cgroup_not_the_current_task(pods):
    """Why bpf/network.c uses bpf_skb_cgroup_id(): on ingress the current task
    is whoever the softirq interrupted (on a veth, mostly the sender)."""
    from bcc import BPF

    program = BPF(text=ATTRIBUTION.encode())
    cgroup_fd = os.open(pods.b.cgroup, os.O_RDONLY)
    link = -1
    try:
        link = link_create(program.load_func(b"record", BPF.CGROUP_SKB).fd, cgroup_fd, 0)
        assert link >= 0
        receiver = pods.spawn(pods.b, "udp-recv", pods.b.ipv4, 5008, DATAGRAMS)
        receiver.wait_ready()
        pods.spawn(pods.a, "udp-send", 5008, DATAGRAMS, PAYLOAD, pods.b.ipv4).result()
        receiver.result()
        seen = {(k.skb_cgroup, k.current_cgroup): v.value for k, v in program[b"seen"].items()}
    finally:
        if link >= 0:
            os.close(link)
        os.close(cgroup_fd)
        program.cleanup()
    b_id, a_id = os.stat(pods.b.cgroup).st_ino, os.stat(pods.a.cgroup).st_ino
    print(f"ingress of pod B: (skb cgroup, current cgroup) -> packets: {seen} (A={a_id}, B={b_id})")
    assert {skb for skb, _ in seen} == {b_id}
    assert sum(seen.values()) == DATAGRAMS
    assert sum(n for (_, current), n in seen.items() if current == b_id) < DATAGRAMS // 2


def test_tcp_transfer_bytes_are_bounded_and_peers_named(pods, make_source):
    source = make_source(pods.pods)
    before = Snapshot(source.collect())
    netns_retransmits = pods.snmp(pods.a, "Tcp:RetransSegs")
    netns_out, netns_in = pods.snmp(pods.a, "Tcp:OutSegs"), pods.snmp(pods.b, "Tcp:InSegs")
    server = pods.spawn(pods.b, "tcp-serve", pods.b.ipv4, 6000)
    server.wait_ready()
    pods.spawn(pods.a, "tcp-send", pods.b.ipv4, 6000, TCP_PAYLOAD).result()
    assert server.result()["received"] == TCP_PAYLOAD
    after = Snapshot(source.collect())

    tcp = dict(protocol="tcp", family="ipv4")
    a_out = dict(**who(pods.a), direction="egress", **tcp)
    b_in = dict(**who(pods.b), direction="ingress", **tcp)
    sent_bytes = delta(before, after, "orb8_network_bytes_total", **a_out)
    sent_packets = delta(before, after, "orb8_network_packets_total", **a_out)
    retransmits = delta(before, after, "orb8_tcp_retransmits_total", **who(pods.a))
    assert retransmits == pods.snmp(pods.a, "Tcp:RetransSegs") - netns_retransmits
    # Every segment the sender emits (SYN, ACK, data, FIN) carries 52 bytes
    # of headers, the SYN 60. So the IP-layer total is exact given the
    # packet count, up to the payload of retransmitted segments (at most
    # one MSS each; none on an idle machine, but a busy one can overflow
    # the veth backlog). Data segments carry at most an MSS each, so the
    # packet count is at least ceil(payload / MSS) + SYN, ACK and FIN.
    headers = 52 * sent_packets + 8
    assert TCP_PAYLOAD + headers <= sent_bytes <= TCP_PAYLOAD + headers + MSS * retransmits
    min_segments = math.ceil(TCP_PAYLOAD / MSS) + 3
    print(
        f"sender: {sent_bytes:.0f} bytes, {sent_packets:.0f} packets, {retransmits:.0f} retransmits"
    )
    assert min_segments <= sent_packets
    # How many more (short segments ending GSO bursts, retransmits) depends on
    # timing and the kernel: the kernel's own count in A's namespace, where this
    # is the only TCP socket, says. OutSegs leaves out retransmitted segments,
    # RetransSegs counts them, both in wire segments as orb8 counts a GSO skb.
    kernel_sent = pods.snmp(pods.a, "Tcp:OutSegs") - netns_out
    assert sent_packets == kernel_sent + retransmits
    # The receiving pod saw exactly what reached its socket: everything sent,
    # unless a segment was dropped on the way (then retransmitted).
    received_bytes = delta(before, after, "orb8_network_bytes_total", **b_in)
    received_packets = delta(before, after, "orb8_network_packets_total", **b_in)
    # InSegs counts what reached TCP in B's namespace per skb (measured: 167
    # for 6912 segments over veth, which passes GSO skbs whole), so it bounds
    # the wire segments orb8 counts from below only.
    assert 0 < pods.snmp(pods.b, "Tcp:InSegs") - netns_in <= received_packets
    if retransmits == 0:
        assert (received_bytes, received_packets) == (sent_bytes, sent_packets)
    else:
        assert sent_packets - retransmits <= received_packets <= sent_packets
        assert TCP_PAYLOAD + 52 * received_packets + 8 <= received_bytes <= sent_bytes

    opened = "orb8_tcp_connections_opened_total"
    assert delta(before, after, opened, **who(pods.a), role="client") == 1
    assert delta(before, after, opened, **who(pods.b), role="server") == 1
    assert after.value(opened, **who(pods.a), role="server") == 0
    assert after.value("orb8_tcp_resets_total", **who(pods.a)) == 0

    for pod, peer, direction, expected in (
        (pods.a, pods.b, "egress", sent_bytes),
        (pods.b, pods.a, "ingress", received_bytes),
    ):
        rows = after.rows("orb8_flow_bytes_total", **who(pod), direction=direction, protocol="tcp")
        assert [(r["peer_class"], r["peer_namespace"], r["peer_pod"], v) for r, v in rows] == [
            ("pod", peer.namespace, peer.name, expected)
        ]
    # The other way: acknowledgements, attributed to the right pods too.
    b_sent = after.value("orb8_network_bytes_total", **who(pods.b), direction="egress", **tcp)
    a_received = after.value("orb8_network_bytes_total", **who(pods.a), direction="ingress", **tcp)
    assert 0 < a_received <= b_sent  # equal unless an ACK was dropped on the way
    assert (
        after.value(
            "orb8_flow_bytes_total", **who(pods.b), direction="egress", peer_pod=pods.a.name
        )
        == b_sent
    )


def test_resets_of_refused_and_aborted_connections(pods, make_source):
    source = make_source(pods.pods)
    before = Snapshot(source.collect())
    assert pods.spawn(pods.a, "tcp-refused", pods.b.ipv4, 6001).result()["refused"]
    after_refused = Snapshot(source.collect())
    resets = "orb8_tcp_resets_total"
    # The client's socket received the RST...
    assert delta(before, after_refused, resets, **who(pods.a), direction="ingress") == 1
    assert after_refused.value("orb8_tcp_connections_opened_total", **who(pods.a)) == 0
    # ...which the kernel sent from its per-CPU control socket, not from a
    # socket of pod B: B has no sent reset; the control socket is the root
    # cgroup's. That holds on any kernel since 5.18 ("ipv4/tcp: do not use
    # per netns ctl sockets"): an IPv4 reset without a full socket goes out
    # through the per-CPU ipv4_tcp_sk, created at boot by tcp_v4_init in the
    # root cgroup, whatever netns it is sent in. It would not on 5.8-5.17,
    # where each netns made its own control sockets in the cgroup of the task
    # that created it (here `ip netns add`, run from the test's cgroup), nor
    # for IPv6, whose control socket is still per netns.
    assert after_refused.value("orb8_tcp_resets_total", **who(pods.b)) == 0
    assert delta(before, after_refused, resets, cgroup="/", direction="egress") >= 1

    server = pods.spawn(pods.b, "tcp-serve", pods.b.ipv4, 6002)
    server.wait_ready()
    pods.spawn(pods.a, "tcp-abort", pods.b.ipv4, 6002).result()
    assert server.result()["received"] == 100
    after = Snapshot(source.collect())
    # SO_LINGER 0 close: exactly one RST from A's socket, received by B's.
    assert delta(after_refused, after, resets, **who(pods.a), direction="egress") == 1
    assert delta(after_refused, after, resets, **who(pods.b), direction="ingress") == 1
    assert after.value("orb8_tcp_resets_total", **who(pods.b), direction="egress") == 0
    opened = "orb8_tcp_connections_opened_total"
    assert delta(after_refused, after, opened, **who(pods.a), role="client") == 1
    assert delta(after_refused, after, opened, **who(pods.b), role="server") == 1


DROPPER = """
BPF_ARRAY(dropped, u64, 1);

// Drops the first DROPS TCP segments with payload to port PORT that reach a
// socket of the cgroup it is attached to.
int drop_data(struct __sk_buff *skb)
{
    u8 ip[20];
    u8 tcp[14];
    if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)) || (ip[0] >> 4) != 4 || ip[9] != 6)
        return 1;
    u32 ihl = (ip[0] & 0x0f) * 4;
    if (bpf_skb_load_bytes(skb, ihl, tcp, sizeof(tcp)))
        return 1;
    u32 total = (ip[2] << 8) | ip[3];
    u32 headers = ihl + (tcp[12] >> 4) * 4;
    if (((tcp[2] << 8) | tcp[3]) != PORT || total <= headers)
        return 1;
    u32 zero = 0;
    u64 *n = dropped.lookup(&zero);
    if (!n || *n >= DROPS)
        return 1;
    __sync_fetch_and_add(n, 1);
    return 0;
}
"""


def test_dropped_segments_are_counted_as_retransmits_of_the_sender(pods, make_source):
    from bcc import BPF

    port, drops = 6003, 3
    dropper = BPF(text=DROPPER.encode(), cflags=[f"-DPORT={port}", f"-DDROPS={drops}"])
    cgroup_fd = os.open(pods.b.cgroup, os.O_RDONLY)
    link = -1
    try:
        link = link_create(dropper.load_func(b"drop_data", BPF.CGROUP_SKB).fd, cgroup_fd, 0)
        assert link >= 0
        source = make_source(pods.pods)
        before = Snapshot(source.collect())
        netns_before = pods.snmp(pods.a, "Tcp:RetransSegs")
        server = pods.spawn(pods.b, "tcp-serve", pods.b.ipv4, port)
        server.wait_ready()
        pods.spawn(pods.a, "tcp-send", pods.b.ipv4, port, 1000).result()
        assert server.result()["received"] == 1000
        after = Snapshot(source.collect())
        retransmitted = pods.snmp(pods.a, "Tcp:RetransSegs") - netns_before
        assert dropper[b"dropped"][0].value == drops
    finally:
        if link >= 0:
            os.close(link)
        os.close(cgroup_fd)
        dropper.cleanup()
    # Pod A's network namespace holds only A's sockets: its kernel counter is
    # the truth. Retransmits run from the RTO/TLP timers, in softirq.
    counted = delta(before, after, "orb8_tcp_retransmits_total", **who(pods.a))
    print(f"retransmits: orb8 {counted:.0f}, TcpRetransSegs of A's netns {retransmitted}")
    assert counted == retransmitted
    assert counted >= drops
    assert after.value("orb8_tcp_retransmits_total", **who(pods.b)) == 0


def test_short_lived_cgroup_is_counted_once(pods, make_source):
    skew = [0.0]  # moves the source's clock past the grace period
    source = make_source(
        pods.pods, deleted_grace=10, deleted_pod_grace=10, clock=lambda: time.monotonic() + skew[0]
    )
    unresolved = {"cgroup": "<unresolved>"}
    udp = dict(direction="egress", protocol="udp", family="ipv4")
    before = Snapshot(source.collect())

    # A second container of pod A that lives and dies between two collects.
    short = pods.pod_cgroup(pods.a, container_id=uuid.uuid4().hex + uuid.uuid4().hex)
    receiver = pods.spawn(pods.b, "udp-recv", pods.b.ipv4, 5002, DATAGRAMS)
    receiver.wait_ready()
    pods.spawn(pods.a, "udp-send", 5002, DATAGRAMS, PAYLOAD, pods.b.ipv4, cgroup=short).result()
    receiver.result()
    short_id = os.stat(short).st_ino
    pods.cgroups.remove(short)
    remove_cgroup(short)
    expected = DATAGRAMS * (PAYLOAD + 28)

    # Removed before orb8 ever saw its path: folded into <unresolved>, as
    # DESIGN.md says. Its flow to pod B (a name no other test uses) is exact.
    first = Snapshot(source.collect())
    to_b = dict(**unresolved, direction="egress", protocol="udp", peer_pod=pods.b.name)
    assert first.value("orb8_flow_bytes_total", **to_b) == expected
    assert first.value("orb8_flow_packets_total", **to_b) == DATAGRAMS
    # (>=: another test's removed cgroups may land in <unresolved> too.)
    assert delta(before, first, "orb8_network_bytes_total", **unresolved, **udp) >= expected
    assert delta(before, first, "orb8_network_packets_total", **unresolved, **udp) >= DATAGRAMS
    # Nothing of it under pod A: its own container sent nothing.
    assert first.value("orb8_network_packets_total", **who(pods.a)) == 0

    skew[0] += 11  # past the grace: this collect retires it, carrying its counts
    Snapshot(source.collect())
    third = Snapshot(source.collect())
    for name in (b"network_traffic", b"network_flows"):
        assert short_id not in {key.cgroup_id for key in source._bpf[name]}
    # Counted once: neither lost nor counted again when its entries were freed.
    for name, amount in (
        ("orb8_network_bytes_total", expected),
        ("orb8_network_packets_total", DATAGRAMS),
    ):
        grown = delta(first, third, name, **unresolved, **udp)
        assert 0 <= grown < amount
    # Its flow series lost the peer's name (<unresolved> names no peers once
    # retired: it gathers any number of cgroups) but not its counts.
    assert third.value("orb8_flow_bytes_total", **to_b) == 0
    flows = delta(before, third, "orb8_flow_bytes_total", **unresolved, protocol="udp")
    assert flows >= expected


def test_peers_beyond_the_limit_fold_into_other_and_totals_add_up(pods, make_source):
    extra = pods.add_addresses(pods.b, 6)
    peers = {}
    for i, address in enumerate(extra):
        info = pods.b.pod_info(ips=(address,))
        peers[f"peer-{i}"] = info.__class__(
            **{**info.__dict__, "uid": str(uuid.uuid4()), "name": f"peer-{i}-{pods.tag}"}
        )
    snapshot = {**pods.pods(), **{p.uid: p for p in peers.values()}}
    source = make_source(lambda: snapshot, peer_limit=3)
    receiver = pods.spawn(pods.b, "udp-recv", "0.0.0.0", 5003, 10 * (1 + 2 + 3 + 4 + 5 + 6))
    receiver.wait_ready()
    # peer-i gets (i + 1) x 10 datagrams: the three with most bytes are 3, 4, 5.
    for i, address in enumerate(extra):
        pods.spawn(pods.a, "udp-send", 5003, 10 * (i + 1), PAYLOAD, address).result()
    receiver.result()
    first = Snapshot(source.collect())

    rows = first.rows("orb8_flow_bytes_total", **who(pods.a), direction="egress")
    named = sorted(r["peer_pod"] for r, _ in rows if r["peer_class"] == "pod")
    assert named == sorted(f"peer-{i}-{pods.tag}" for i in (3, 4, 5))
    assert {r["peer_class"] for r, _ in rows} == {"pod", "other"}
    assert len(rows) == 3 + 1
    other = first.value(
        "orb8_flow_bytes_total", **who(pods.a), direction="egress", peer_class="other"
    )
    assert other == 10 * (1 + 2 + 3) * (PAYLOAD + 28)
    total = first.value("orb8_network_bytes_total", **who(pods.a), direction="egress")
    assert first.value("orb8_flow_bytes_total", **who(pods.a), direction="egress") == total
    assert total == 10 * 21 * (PAYLOAD + 28)

    # More traffic to an "other" peer stays there (sticky: "other" never shrinks).
    receiver = pods.spawn(pods.b, "udp-recv", "0.0.0.0", 5004, 50)
    receiver.wait_ready()
    pods.spawn(pods.a, "udp-send", 5004, 50, PAYLOAD, extra[0]).result()
    receiver.result()
    second = Snapshot(source.collect())
    rows = second.rows("orb8_flow_bytes_total", **who(pods.a), direction="egress")
    assert len(rows) == 4
    assert second.value(
        "orb8_flow_bytes_total", **who(pods.a), direction="egress", peer_class="other"
    ) == other + 50 * (PAYLOAD + 28)
    assert second.value("orb8_flow_bytes_total", **who(pods.a), direction="egress") == (
        second.value("orb8_network_bytes_total", **who(pods.a), direction="egress")
    )


def test_full_flow_map_evicts_counts_evictions_and_stays_monotonic(pods, make_source):
    extra = pods.add_addresses(pods.b, 12)
    source = make_source(pods.pods, flow_entries=4)
    receiver = pods.spawn(pods.b, "udp-recv", "0.0.0.0", 5005, 10 * len(extra))
    receiver.wait_ready()
    previous = Snapshot(source.collect())
    for address in extra:
        pods.spawn(pods.a, "udp-send", 5005, 10, PAYLOAD, address).result()
        now = Snapshot(source.collect())
        for name in ("orb8_flow_bytes_total", "orb8_flow_packets_total"):
            for row, value in now.rows(name, **who(pods.a)):
                assert value >= previous.value(name, **row), row
        previous = now
    receiver.result()
    final = Snapshot(source.collect())
    assert final.value("orb8_bpf_map_entries", map="network_flows") <= 4
    # 12 A-egress flows plus B's ingress flow went through a 4-entry map.
    assert final.value("orb8_bpf_map_evictions_total", map="network_flows") >= 13 - 4
    # Exact totals do not depend on the flow map.
    assert final.value("orb8_network_packets_total", **who(pods.a), direction="egress") == 120
    flows = final.value("orb8_flow_packets_total", **who(pods.a), direction="egress")
    evictions = final.value("orb8_bpf_map_evictions_total", map="network_flows")
    print(f"4-entry flow map: {evictions:.0f} evictions, flow packets {flows:.0f} of 120")
    assert 0 < flows <= 120


def test_idle_flows_expire_and_keep_their_counts(pods, make_source):
    skew = [0.0]
    source = make_source(pods.pods, flow_idle_timeout=30, clock=lambda: time.monotonic() + skew[0])
    receiver = pods.spawn(pods.b, "udp-recv", pods.b.ipv4, 5006, 100)
    receiver.wait_ready()
    pods.spawn(pods.a, "udp-send", 5006, 100, PAYLOAD, pods.b.ipv4).result()
    receiver.result()
    first = Snapshot(source.collect())
    assert first.value("orb8_active_flows", **who(pods.a)) == 1
    skew[0] += 31
    Snapshot(source.collect())  # idle for 31 s: deleted from the kernel map
    later = Snapshot(source.collect())
    assert later.value("orb8_active_flows", **who(pods.a)) == 0
    assert later.value("orb8_flow_bytes_total", **who(pods.a), direction="egress") == 100 * 540
    assert later.value("orb8_bpf_map_evictions_total", map="network_flows") == 0


def _attached_program_ids(cgroup: Path) -> set[int]:
    out = subprocess.check_output(["bpftool", "-j", "cgroup", "show", str(cgroup)], text=True)
    return {entry["id"] for entry in json.loads(out.strip() or "[]")}


def _program_id(fd: int) -> int:
    """Kernel id of a loaded program (struct bpf_prog_info: type, id, ...)."""
    from bcc.libbcc import lib

    info = (ctypes.c_uint8 * 256)()
    size = ctypes.c_uint32(256)
    lib.bpf_obj_get_info.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    assert lib.bpf_obj_get_info(fd, info, ctypes.byref(size)) == 0
    return int.from_bytes(bytes(info[4:8]), "little")


@pytest.mark.parametrize("attach", ["link", "prog_attach"])
def test_close_detaches_every_program(pods, make_source, cgroup2_root, attach):
    source = make_source(pods.pods, attach=attach, tcp_hook="none")
    assert source.attach_mode == attach and source.tcp_hook == "none"
    # By id, not by difference: other orb8 instances may attach meanwhile.
    ours = {_program_id(a.fn.fd) for a in source._attachments}
    assert len(ours) == 2  # ingress + egress; no sock_ops in this variant
    assert ours <= _attached_program_ids(cgroup2_root)
    receiver = pods.spawn(pods.b, "udp-recv", pods.b.ipv6, 5007, 10)
    receiver.wait_ready()
    pods.spawn(pods.a, "udp-send", 5007, 10, PAYLOAD, pods.b.ipv6).result()
    receiver.result()
    after = Snapshot(source.collect())
    assert after.value("orb8_network_bytes_total", **who(pods.b), direction="ingress") == 10 * 560
    assert after.value("orb8_tcp_connections_opened_total") == 0
    source.close()
    source.close()  # idempotent
    assert not (_attached_program_ids(cgroup2_root) & ours)


def test_workload_udp_to_itself_counts_both_directions_in_its_cgroup(
    make_source, cgroups, workload
):
    """tests/workload.c's udp:COUNT, which the benchmarks use to give every cgroup traffic and
    a flow: COUNT datagrams of 100 bytes (+ 28 of IPv4 and UDP headers) out and back in, all
    under its own cgroup, with loopback as the one peer."""
    source = make_source(lambda: {})
    cgroup = cgroups.make()
    run_workload(workload, cgroup, f"udp:{DATAGRAMS}")
    after = Snapshot(source.collect())
    mine = {"namespace": "", "pod": "", "container": "", "cgroup": f"/{cgroup.name}"}
    for direction in ("ingress", "egress"):
        labels = dict(mine, direction=direction, protocol="udp", family="ipv4")
        assert after.value("orb8_network_packets_total", **labels) == DATAGRAMS
        assert after.value("orb8_network_bytes_total", **labels) == DATAGRAMS * 128
        rows = after.rows("orb8_flow_bytes_total", **mine, direction=direction)
        assert [(r["peer_class"], value) for r, value in rows] == [("loopback", DATAGRAMS * 128)]
    assert after.value("orb8_network_packets_total", **mine) == 2 * DATAGRAMS
