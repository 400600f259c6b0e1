"""DNS probe on the real kernel: a responder in one "pod" (network namespace
+ kubelet-shaped cgroup), clients in others, exact counts per pod read
through DnsSource.collect().

The responder (tests/kernel/dnswork.py) answers by the query name:
noerror, nodata, nxdomain, servfail, refused, formerr, drop, delayN.
"""

from __future__ import annotations

import random
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.outputs.exposition import TEXT, Renderer
from exporter.sources.dns.metrics import LATENCY_BUCKETS
from exporter.sources.dns.source import DnsSource
from tests.helpers import set_up, started_sources
from tests.kernel import dnswork
from tests.kernel.netpods import Pod, PodPair, Workload
from tests.kernel.test_network import Snapshot, delta, who

pytestmark = pytest.mark.kernel

WORK = Path(dnswork.__file__)

# name label -> (rcode label, counts as NODATA)
QUESTIONS = [
    ("noerror.shop.test", "A"),
    ("noerror.shop.test", "A"),
    ("noerror.shop.test", "AAAA"),
    ("nodata.shop.test", "AAAA"),
    ("nxdomain.shop.svc.cluster.local", "A"),
    ("nxdomain.shop.svc.cluster.local", "AAAA"),
    ("nxdomain.svc.cluster.local", "SRV"),
    ("servfail.shop.test", "PTR"),
    ("refused.shop.test", "TXT"),
    ("formerr.shop.test", "MX"),
]
EXPECTED_QUERIES = {"A": 3, "AAAA": 3, "SRV": 1, "PTR": 1, "TXT": 1, "other": 1}
EXPECTED_RESPONSES = {"NOERROR": 4, "NXDOMAIN": 3, "SERVFAIL": 1, "REFUSED": 1, "other": 1}


class DnsPods(PodPair):
    """A is the client pod, B the DNS server; C a second client pod sharing A's
    network namespace (another pod's cgroup: same server, told apart)."""

    def setup(self) -> DnsPods:
        super().setup()
        self.c = Pod(f"other-{self.tag}", "shop", self.a.netns, self.a.ifname, self.a.ipv4, "")
        self.c.cgroup = self.pod_cgroup(self.c)
        return self

    def pods(self) -> dict:
        return {pod.uid: pod.pod_info() for pod in (self.a, self.b, self.c)}

    def run(self, pod: Pod, mode: str, *args: object) -> Workload:
        return self.spawn(pod, mode, *args, script=str(WORK))

    def serve(self) -> Workload:
        server = self.run(self.b, "serve", self.b.ipv4, self.b.ipv6)
        server.wait_ready()
        return server

    def ask(self, pod: Pod, server: str, transport: str, questions, wait: float = 2.0) -> dict:
        names = [f"{name}:{qtype}" for name, qtype in questions]
        return self.run(pod, "ask", server, transport, wait, *names).result(timeout=120)


@pytest.fixture
def pods(cgroup2_root: Path) -> Iterator[DnsPods]:
    yield from set_up(DnsPods(cgroup2_root))


@pytest.fixture
def make_source(cgroup2_root: Path) -> Iterator:
    yield from started_sources(DnsSource, cgroup2_root)


def histogram(snapshot: Snapshot, **labels: str) -> tuple[list[float], float]:
    """(cumulative bucket counts incl. +Inf, sum) of the one matching latency series."""
    family = snapshot.families["orb8_dns_latency_seconds"]
    found = [
        (counts, total)
        for values, counts, total in family.histograms
        if labels.items() <= dict(zip(family.labels, values, strict=True)).items()
    ]
    if not found:
        return [0.0] * (len(LATENCY_BUCKETS) + 1), 0.0
    (only,) = found
    return list(only[0]), only[1]


@pytest.mark.parametrize(
    "transport,family", [("udp", "ipv4"), ("udp", "ipv6"), ("tcp", "ipv4"), ("tcp", "ipv6")]
)
def test_queries_and_answers_are_exact_per_pod_and_role(pods, make_source, transport, family):
    source = make_source(pods.pods)
    assert source.attach_mode == "link"
    pods.serve()
    server = pods.b.ipv4 if family == "ipv4" else pods.b.ipv6
    before = Snapshot(source.collect())
    result = pods.ask(pods.a, server, transport, QUESTIONS)
    assert sum(result["answered"].values()) == len(QUESTIONS)
    after = Snapshot(source.collect())

    for pod, role in ((pods.a, "client"), (pods.b, "server")):
        for qtype, n in EXPECTED_QUERIES.items():
            labels = dict(who(pod), role=role, qtype=qtype)
            assert delta(before, after, "orb8_dns_queries_total", **labels) == n, labels
        for rcode, n in EXPECTED_RESPONSES.items():
            labels = dict(who(pod), role=role, rcode=rcode)
            assert delta(before, after, "orb8_dns_responses_total", **labels) == n, labels
        labels = dict(who(pod), role=role)
        assert delta(before, after, "orb8_dns_nodata_responses_total", **labels) == 1
        assert delta(before, after, "orb8_dns_malformed_total", **labels) == 0
        assert delta(before, after, "orb8_dns_timeouts_total", **labels) == 0
        counts, _ = histogram(after, **labels)
        assert counts[-1] == len(QUESTIONS), labels  # every answer matched its query
    # Nothing the other way round: the client pod served nothing.
    assert after.value("orb8_dns_queries_total", **who(pods.a), role="server") == 0
    assert after.value("orb8_dns_queries_total", **who(pods.b), role="client") == 0
    assert after.value("orb8_bpf_map_entries", map="dns_pending") == 0


def test_two_pods_asking_the_same_server_are_told_apart(pods, make_source):
    source = make_source(pods.pods)
    pods.serve()
    before = Snapshot(source.collect())
    pods.ask(pods.a, pods.b.ipv4, "udp", [("nxdomain.shop.test", "A")] * 3)
    pods.ask(pods.c, pods.b.ipv4, "udp", [("noerror.shop.test", "AAAA")] * 5)
    after = Snapshot(source.collect())
    a, c, b = who(pods.a), who(pods.c), who(pods.b)
    assert delta(before, after, "orb8_dns_queries_total", **a, qtype="A") == 3
    assert delta(before, after, "orb8_dns_queries_total", **a, qtype="AAAA") == 0
    assert delta(before, after, "orb8_dns_responses_total", **a, rcode="NXDOMAIN") == 3
    assert delta(before, after, "orb8_dns_queries_total", **c, qtype="AAAA") == 5
    assert delta(before, after, "orb8_dns_queries_total", **c, qtype="A") == 0
    assert delta(before, after, "orb8_dns_responses_total", **c, rcode="NOERROR") == 5
    assert delta(before, after, "orb8_dns_queries_total", **b, role="server") == 8


def bucket_index(seconds: float) -> int:
    """Index of the first bucket whose bound is >= seconds."""
    return next(i for i, bound in enumerate(LATENCY_BUCKETS) if bound >= seconds)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_latency_buckets_hold_the_injected_delay(pods, make_source, transport):
    source = make_source(pods.pods, timeout=3.0)
    pods.serve()
    delay = 0.15  # the responder sleeps this long before answering
    fast, slow = 4, 3
    questions = [("noerror.fast.test", "A")] * fast + [("delay150.slow.test", "A")] * slow
    before = Snapshot(source.collect())
    result = pods.ask(pods.a, pods.b.ipv4, transport, questions)
    assert result["answered"] == {"0": fast + slow}
    after = Snapshot(source.collect())
    for pod, role in ((pods.a, "client"), (pods.b, "server")):
        labels = dict(who(pod), role=role)
        counts0, sum0 = histogram(before, **labels)
        counts1, sum1 = histogram(after, **labels)
        counts = [b - a for a, b in zip(counts0, counts1, strict=True)]
        assert counts[-1] == fast + slow, labels
        # The delayed answers took at least the delay, in both roles (the
        # server sleeps between receiving the query and sending the answer),
        # so none is in a bucket below it.
        below = bucket_index(delay) - 1
        assert counts[below] <= fast, (labels, counts)
        assert counts[-1] - counts[below] >= slow, (labels, counts)
        assert sum1 - sum0 >= slow * delay
        assert delta(before, after, "orb8_dns_timeouts_total", **labels) == 0


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_unanswered_and_late_answers_are_timeouts(pods, make_source, transport):
    timeout = 0.5
    source = make_source(pods.pods, timeout=timeout)
    pods.serve()
    before = Snapshot(source.collect())
    questions = [
        ("drop.shop.test", "A"),
        ("noerror.shop.test", "A"),
        ("drop.shop.test", "AAAA"),
        ("delay900.shop.test", "A"),  # answered, but after the timeout
        ("nxdomain.shop.test", "A"),
    ]
    result = pods.ask(pods.a, pods.b.ipv4, transport, questions, wait=2.0)
    assert result["answered"] == {"0": 2, "3": 1}
    time.sleep(timeout + 0.2)  # the dropped queries expire; the sweep counts them
    after = Snapshot(source.collect())
    for pod, role in ((pods.a, "client"), (pods.b, "server")):
        labels = dict(who(pod), role=role)
        assert delta(before, after, "orb8_dns_timeouts_total", **labels) == 3, labels
        assert delta(before, after, "orb8_dns_queries_total", **labels) == 5
        assert delta(before, after, "orb8_dns_responses_total", **labels) == 3
        counts0, _ = histogram(before, **labels)
        counts1, _ = histogram(after, **labels)
        assert counts1[-1] - counts0[-1] == 2  # the timely answers only
    assert after.value("orb8_bpf_map_entries", map="dns_pending") == 0
    # Swept counts stay: the next collect neither loses nor repeats them.
    again = Snapshot(source.collect())
    assert delta(after, again, "orb8_dns_timeouts_total", **who(pods.a)) == 0
    assert again.value("orb8_dns_timeouts_total", **who(pods.a)) == after.value(
        "orb8_dns_timeouts_total", **who(pods.a)
    )


def test_full_pending_map_evicts_and_counts_evictions(pods, make_source):
    source = make_source(pods.pods, pending_entries=4, timeout=0.3)
    pods.serve()
    before = Snapshot(source.collect())
    pods.ask(pods.a, pods.b.ipv4, "udp", [("drop.shop.test", "A")] * 10, wait=0.05)
    time.sleep(0.5)
    after = Snapshot(source.collect())
    # Client and server each leave 10 queries unanswered in a 4-entry LRU:
    # whatever stayed times out, the rest were evicted, nothing is lost.
    timeouts = after.value("orb8_dns_timeouts_total") - before.value("orb8_dns_timeouts_total")
    evictions = after.value("orb8_bpf_map_evictions_total", map="dns_pending")
    assert after.value("orb8_bpf_map_capacity", map="dns_pending") == 4
    assert timeouts + evictions == 20
    assert 0 < timeouts <= 8


def malformed_corpus(seed: int) -> list[bytes]:
    """Messages a pod may send to port 53: cut short, looping compression
    pointers, reserved label types, over-long names, fuzzed headers."""
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    question_end = b"\x00\x00\x01\x00\x01"
    corpus = [
        b"",
        b"\x12",
        header[:11],
        header,  # the question is missing
        header + b"\x03www",  # the name is cut short
        header + b"\x03www\x07example",  # a label runs past the end
        header + b"\xc0\x0c\x00\x01\x00\x01",  # a pointer to itself
        header + b"\x03www\xc0\x0c\x00\x01\x00\x01",  # a pointer back: a loop
        header + b"\x03www\x00\x00",  # the type is cut short
        header + b"\x43abc" + question_end,  # reserved label type 0x40
        header + (b"\x3f" + b"a" * 63) * 4 + question_end,  # 257-byte name
        header + b"\x01a" * 128 + question_end,  # 128 labels, over 255 bytes
        header + b"\x01a" * 600 + question_end,  # oversized: 1217 bytes
        struct.pack("!HHHHHH", 7, 0x0100, 0, 0, 0, 0),  # a query without a question
    ]
    rng = random.Random(seed)
    for _ in range(60):
        fuzz = bytearray(rng.randbytes(rng.randrange(12, 90)))
        fuzz[2] &= 0x7F  # a query: the client sends it, the server receives it
        if rng.random() < 0.5:  # mostly-plausible names, to reach the deeper checks
            fuzz[12:] = dnswork.encode_name(f"x{rng.randrange(1000)}.test")[: rng.randrange(1, 14)]
            fuzz += rng.randbytes(rng.randrange(0, 6))
        corpus.append(bytes(fuzz))
    return corpus


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_malformed_messages_are_counted_and_never_break_anything(pods, make_source, transport):
    source = make_source(pods.pods)
    pods.serve()
    corpus = malformed_corpus(seed=22)
    if transport == "tcp":  # a segment with under 14 payload bytes is not parsed
        corpus = [m for m in corpus if len(m) >= 12]
    verdicts = Counter(dnswork.reference(m)[0] for m in corpus)
    assert verdicts["malformed"] >= 20 and set(verdicts) <= {"malformed", "query"}
    before = Snapshot(source.collect())
    sent = pods.run(pods.a, "raw", pods.b.ipv4, transport, *(m.hex() for m in corpus))
    assert sent.result(timeout=120)["sent"] == len(corpus)
    # Still parsing, and the responder still answers.
    assert pods.ask(pods.a, pods.b.ipv4, transport, [("noerror.ok.test", "A")]) == {
        "done": True,
        "answered": {"0": 1},
    }
    after = Snapshot(source.collect())
    for pod, role in ((pods.a, "client"), (pods.b, "server")):
        labels = dict(who(pod), role=role)
        got = delta(before, after, "orb8_dns_malformed_total", **labels)
        assert got == verdicts["malformed"], labels
        queries = delta(before, after, "orb8_dns_queries_total", **labels)
        assert queries == verdicts["query"] + 1, labels


def test_exposition_of_real_counts_passes_promtool(pods, make_source):
    source = make_source(pods.pods)
    pods.serve()
    pods.ask(pods.a, pods.b.ipv6, "udp", QUESTIONS)
    families = source.collect()
    latency = next(f for f in families if f.name == "orb8_dns_latency_seconds")
    assert len(latency.histograms) >= 2  # client A and server B
    text = Renderer().render(families, TEXT)  # promtool reads the classic text format
    assert "orb8_dns_latency_seconds_bucket{" in text
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    assert (result.stdout + result.stderr).decode().strip() == ""


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_tcp_answers_over_several_segments_count_once(pods, make_source, family):
    """A 6.4 kB answer written in 1000-byte pieces: only the first segment
    starts a message; the others are inside it and are neither messages nor
    malformed."""
    source = make_source(pods.pods)
    pods.serve()
    server = pods.b.ipv4 if family == "ipv4" else pods.b.ipv6
    questions = [("big.shop.test", "A"), ("nxdomain.shop.test", "A")] * 3
    before = Snapshot(source.collect())
    assert pods.ask(pods.a, server, "tcp", questions)["answered"] == {"0": 3, "3": 3}
    after = Snapshot(source.collect())
    for pod, role in ((pods.a, "client"), (pods.b, "server")):
        labels = dict(who(pod), role=role)
        assert delta(before, after, "orb8_dns_malformed_total", **labels) == 0, labels
        assert delta(before, after, "orb8_dns_queries_total", **labels) == 6, labels
        for rcode in ("NOERROR", "NXDOMAIN"):
            got = delta(before, after, "orb8_dns_responses_total", **labels, rcode=rcode)
            assert got == 3, (labels, rcode)
        counts0, _ = histogram(before, **labels)
        counts1, _ = histogram(after, **labels)
        assert counts1[-1] - counts0[-1] == 6


def test_ipv6_extension_headers_are_walked(pods, make_source):
    """Queries carrying hop-by-hop and destination options headers are parsed."""
    source = make_source(pods.pods)
    pods.serve()
    before = Snapshot(source.collect())
    questions = [("noerror.ext.test", "AAAA"), ("nxdomain.ext.test", "A")]
    assert pods.ask(pods.a, pods.b.ipv6, "udp-ext", questions)["answered"] == {"0": 1, "3": 1}
    after = Snapshot(source.collect())
    for pod, role in ((pods.a, "client"), (pods.b, "server")):
        labels = dict(who(pod), role=role)
        assert delta(before, after, "orb8_dns_queries_total", **labels, qtype="AAAA") == 1
        assert delta(before, after, "orb8_dns_queries_total", **labels, qtype="A") == 1
        assert delta(before, after, "orb8_dns_responses_total", **labels, rcode="NXDOMAIN") == 1
        assert delta(before, after, "orb8_dns_malformed_total", **labels) == 0
