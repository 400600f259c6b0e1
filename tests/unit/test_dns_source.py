"""The dns source's user-space half against in-memory maps (tests/bpf_maps.py):
decoding the kernel's counts into families, the histogram, the timeout
sweep, evictions and retirement, without loading BPF. The kernel half is
tests/kernel/test_dns.py."""

from __future__ import annotations

from pathlib import Path

from exporter.model import MetricFamily
from exporter.outputs.exposition import TEXT, Renderer
from exporter.sources.dns.metrics import LATENCY_BUCKETS
from exporter.sources.dns.source import (
    LATENCY_KIND,
    LATENCY_SUM,
    MALFORMED_KIND,
    QUERY,
    RESPONSE,
    STAT_PENDING_INSERTS,
    STAT_PENDING_MATCHED,
    TIMEOUT,
    DnsSource,
)
from tests.bpf_maps import InMemoryMaps
from tests.unit.test_source_seams import Clock, cgroup, replace_cgroup, resolver

CLIENT, SERVER = 0, 1
SECOND = 1_000_000_000


class KernelClock:
    def __init__(self) -> None:
        self.ns = 100 * SECOND

    def __call__(self) -> int:
        return self.ns


def family(families: list[MetricFamily], name: str) -> MetricFamily:
    return next(f for f in families if f.name == name)


def samples(families: list[MetricFamily], name: str) -> dict[tuple[str, ...], float]:
    found = family(families, name)
    return {values[3:]: value for values, value in found.samples}  # cgroup and the rest


def source(tmp_path: Path, maps: InMemoryMaps, timeout: float = 5.0) -> tuple:
    clock, kernel = Clock(), KernelClock()
    dns = DnsSource(
        resolver(tmp_path, clock),
        count_entries=64,
        pending_entries=8,
        timeout=timeout,
        deleted_grace=5.0,
        clock=clock,
        kernel_clock_ns=kernel,
    )
    dns.use_maps(maps)
    return dns, clock, kernel


def test_counts_decode_into_families(tmp_path):
    maps = InMemoryMaps()
    dns, _, _ = source(tmp_path, maps)
    app = cgroup(tmp_path, "app.service")
    for kind, code, n in (
        (QUERY, 0, 3),  # A
        (QUERY, 1, 2),  # AAAA
        (QUERY, 5, 1),  # other
        (QUERY, 77, 1),  # a code the kernel never writes: other too
        (RESPONSE, 0, 2),  # NOERROR with answers
        (RESPONSE, 5, 1),  # NODATA: NOERROR without answers
        (RESPONSE, 1, 4),  # NXDOMAIN
        (RESPONSE, 2, 1),  # SERVFAIL
        (MALFORMED_KIND, 0, 6),
        (TIMEOUT, 0, 2),  # answered late, counted in the kernel
    ):
        maps.set("dns_counts", [n], cgroup_id=app, role=CLIENT, kind=kind, code=code)
    families = dns.collect()
    who = "/app.service"
    assert samples(families, "orb8_dns_queries_total") == {
        (who, "client", "A"): 3,
        (who, "client", "AAAA"): 2,
        (who, "client", "other"): 2,
    }
    assert samples(families, "orb8_dns_responses_total") == {
        (who, "client", "NOERROR"): 3,
        (who, "client", "NXDOMAIN"): 4,
        (who, "client", "SERVFAIL"): 1,
    }
    assert samples(families, "orb8_dns_nodata_responses_total") == {(who, "client"): 1}
    assert samples(families, "orb8_dns_malformed_total") == {(who, "client"): 6}
    assert samples(families, "orb8_dns_timeouts_total") == {(who, "client"): 2}


def test_latency_buckets_become_a_cumulative_histogram(tmp_path):
    maps = InMemoryMaps()
    dns, _, _ = source(tmp_path, maps)
    coredns = cgroup(tmp_path, "coredns.service")
    # Kernel bucket i: latencies up to 2^(i+4) us; the last is +Inf.
    for code, n in ((0, 2), (3, 5), (19, 1)):
        maps.set("dns_counts", [n], cgroup_id=coredns, role=SERVER, kind=LATENCY_KIND, code=code)
    maps.set("dns_counts", [2_500_000_000], cgroup_id=coredns, role=SERVER, kind=LATENCY_SUM)
    families = dns.collect()
    latency = family(families, "orb8_dns_latency_seconds")
    assert latency.type == "histogram" and latency.buckets == LATENCY_BUCKETS
    ((values, cumulative, total),) = latency.histograms
    assert values[3:] == ("/coredns.service", "server")
    assert cumulative[:4] == (2, 2, 2, 7) and cumulative[-2] == 7 and cumulative[-1] == 8
    assert total == 2.5
    text = Renderer().render([latency], TEXT)
    assert 'le="1.6e-05",namespace="",pod="",role="server"} 2.0' in text
    assert 'le="0.000128",namespace="",pod="",role="server"} 7.0' in text
    assert 'le="+Inf",namespace="",pod="",role="server"} 8.0' in text
    assert 'orb8_dns_latency_seconds_sum{cgroup="/coredns.service",' in text


def test_expired_queries_are_swept_once_as_timeouts(tmp_path):
    maps = InMemoryMaps()
    dns, _, kernel = source(tmp_path, maps, timeout=5.0)
    app = cgroup(tmp_path, "app.service")
    start = kernel.ns
    old = [
        maps.set("dns_pending", [start - 6 * SECOND, app], cookie=1, id=i, role=CLIENT)
        for i in range(3)
    ]
    maps.set("dns_pending", [start - 1 * SECOND, app], cookie=1, id=9, role=CLIENT)
    maps.set("dns_pending", [start - 9 * SECOND, app], cookie=2, id=1, role=SERVER)
    maps.arrays["dns_stats"][STAT_PENDING_INSERTS] = 5
    families = dns.collect()
    assert samples(families, "orb8_dns_timeouts_total") == {
        ("/app.service", "client"): 3,
        ("/app.service", "server"): 1,
    }
    assert all(raw not in maps.hashes["dns_pending"] for raw in old)
    assert len(maps.hashes["dns_pending"]) == 1  # the young one waits
    entries = {v[0]: n for v, n in family(families, "orb8_bpf_map_entries").samples}
    assert entries["dns_pending"] == 1
    # Later: the young one is answered in the kernel (deleted, matched);
    # the swept ones are not counted again.
    maps.hashes["dns_pending"].clear()
    maps.arrays["dns_stats"][STAT_PENDING_MATCHED] = 1
    kernel.ns += 10 * SECOND
    families = dns.collect()
    assert samples(families, "orb8_dns_timeouts_total") == {
        ("/app.service", "client"): 3,
        ("/app.service", "server"): 1,
    }
    evictions = {v[0]: n for v, n in family(families, "orb8_bpf_map_evictions_total").samples}
    assert evictions == {"dns_pending": 0}


def test_evictions_are_inserts_not_answered_swept_or_present(tmp_path):
    maps = InMemoryMaps()
    dns, _, kernel = source(tmp_path, maps)
    app = cgroup(tmp_path, "app.service")
    maps.set("dns_pending", [kernel.ns, app], cookie=1, id=1, role=CLIENT)
    maps.arrays["dns_stats"][STAT_PENDING_INSERTS] = 10
    maps.arrays["dns_stats"][STAT_PENDING_MATCHED] = 6
    families = dns.collect()
    evictions = {v[0]: n for v, n in family(families, "orb8_bpf_map_evictions_total").samples}
    assert evictions == {"dns_pending": 3}  # 10 inserted, 6 answered, 1 waiting


def test_retired_cgroup_keeps_its_counts_and_swept_timeouts(tmp_path):
    maps = InMemoryMaps()
    dns, clock, kernel = source(tmp_path, maps)
    app = cgroup(tmp_path, "app.service")
    maps.set("dns_counts", [4], cgroup_id=app, role=CLIENT, kind=QUERY, code=0)
    maps.set("dns_pending", [kernel.ns - 6 * SECOND, app], cookie=1, id=1, role=CLIENT)
    dns.collect()
    # The service restarts: the old cgroup goes, a new one takes its path.
    new_id = replace_cgroup(tmp_path, "app.service")
    clock.now += 2  # the tree notices (max_age 1)
    dns.collect()  # grace starts
    clock.now += 5
    dns.collect()  # grace over: the kernel entry is freed, its counts carried
    assert maps.hashes["dns_counts"] == {}
    maps.set("dns_counts", [1], cgroup_id=new_id, role=CLIENT, kind=QUERY, code=0)
    families = dns.collect()
    # Counters never go backwards: 4 carried + 1 new; the swept timeout stays.
    assert samples(families, "orb8_dns_queries_total") == {("/app.service", "client", "A"): 5}
    assert samples(families, "orb8_dns_timeouts_total") == {("/app.service", "client"): 1}


def test_histograms_go_to_otlp_as_explicit_bucket_histograms():
    from opentelemetry.sdk.resources import Resource

    from exporter.outputs.otlp import Converter
    from exporter.sources.dns.metrics import LATENCY

    def latency(cumulative: tuple[int, ...], total: float) -> MetricFamily:
        fam = LATENCY.family()
        fam.add_histogram(("shop", "web", "app", "", "client"), cumulative, total)
        return fam

    counts = (1, 3, *([3] * 17), 4)
    for temporality in ("cumulative", "delta"):
        converter = Converter(Resource({}), temporality, 0)  # type: ignore[arg-type]
        data, points = converter.convert([latency(counts, 0.5)], 10)
        converter.sent()
        (metric,) = data.resource_metrics[0].scope_metrics[0].metrics
        (point,) = metric.data.data_points
        assert points == 1 and metric.name == "orb8.dns.latency" and metric.unit == "s"
        assert point.count == 4 and point.sum == 0.5
        assert point.bucket_counts == [1, 2, *([0] * 17), 1]
        assert point.explicit_bounds == list(LATENCY_BUCKETS)
        assert point.attributes["k8s.pod.name"] == "web"
        later = (2, 4, *([4] * 17), 6)
        data, _ = converter.convert([latency(later, 0.75)], 20)
        (point,) = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
        if temporality == "delta":  # only what happened since the last export
            assert point.count == 2 and point.bucket_counts == [1, 0, *([0] * 17), 1]
            assert point.sum == 0.25
        else:
            assert point.count == 6 and point.bucket_counts == [2, 2, *([0] * 17), 2]
