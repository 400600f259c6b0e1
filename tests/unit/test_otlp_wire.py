"""OTLP requests written from rows (exporter/outputs/otlp_wire.py) decode to what the
SDK's encoder makes of the same snapshot, request by request, and reach real
receivers through the exporters' own transports."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.resources import Resource

from exporter import __version__
from exporter.model import MetricFamily, counter, gauge
from exporter.outputs.otlp import SCOPE, Converter, OtlpConfig, OtlpOutput, split
from exporter.outputs.otlp_wire import RequestWriter
from exporter.rows import Interner, RowFamily, RowTable
from tests.otlp_receiver import GrpcReceiver, HttpReceiver
from tests.unit.test_exposition import ODD_LABELS, VALUES

LABELS = ("namespace", "pod", "container", "cgroup", "syscall")
RESOURCE = {"service.name": "orb8", "k8s.node.name": "node-a", "host.name": "h"}
INTERN: Interner[tuple[str, ...]] = Interner()


def row_family(table: RowTable, series: dict[tuple[str, ...], float]) -> RowFamily:
    order = sorted(series, key=INTERN)
    layout = table.update(
        np.array([INTERN(labels) for labels in order], dtype=np.int64),
        lambda new: [INTERN.values[code] for code in new.tolist()],
    )
    values = np.array([series[labels] for labels in order], dtype=np.float64)
    return RowFamily("orb8_syscalls_total", "counter", "calls", LABELS, layout, values)


def snapshot(rng: random.Random, table: RowTable, series: dict) -> list[MetricFamily]:
    for i in rng.sample(range(60), 20):
        series.setdefault(
            (f"ns{i % 3}", f"pod-{i}", ODD_LABELS[i % len(ODD_LABELS)], "", "read"), 1.0
        )
    for labels in rng.sample(sorted(series), len(series) // 4):
        del series[labels]
    for labels in sorted(series):
        series[labels] = rng.choice([*VALUES, series[labels] + rng.randrange(2**40)])
    rows = row_family(table, series)
    traffic = counter("orb8_network_bytes_total", "bytes", ("cgroup", "direction"))
    for i, odd in enumerate(ODD_LABELS):
        traffic.add((odd, "egress"), rng.choice([*VALUES, float(i)]))
    up = gauge("orb8_probe_up", "up", ("probe",))
    up.add(("syscalls",), 1)
    fill = gauge("orb8_ring_buffer_utilization", "fill", ("probe",))
    fill.add(("syscalls",), 0.25)
    empty = counter("orb8_tcp_resets_total", "none", ("cgroup",))
    return [rows, traffic, empty, up, fill]


def sdk_requests(families: list[MetricFamily], now: int, max_points: int) -> list[bytes]:
    converter = Converter(Resource(RESOURCE), "cumulative", start_ns=1_000)
    data, _ = converter.convert(families, now)
    return [
        encode_metrics(b).SerializeToString(deterministic=True) for b in split(data, max_points)
    ]


@pytest.mark.parametrize("max_points", [7, 8000])
def test_requests_decode_to_the_sdk_encoders_output_through_changes(max_points):
    rng = random.Random(max_points)
    table, series = RowTable(), {}
    writer = RequestWriter(RESOURCE, SCOPE, __version__, 1_000, max_points)
    for step in range(8):
        families = snapshot(rng, table, series)
        now = 10**18 + step
        requests, points = writer.write(families, now)
        mine = [
            ExportMetricsServiceRequest.FromString(r.data).SerializeToString(deterministic=True)
            for r in requests
        ]
        assert mine == sdk_requests(families, now, max_points), step
        assert points == sum(len(f.samples) for f in families)
        assert [r.points for r in requests] == [
            min(max_points, points - i) for i in range(0, points, max_points)
        ]


def test_values_are_sent_as_the_sdk_sends_them():
    table = RowTable()
    values = {("n", "p", "c", "", f"v{i}"): v for i, v in enumerate([*VALUES, 2.0**53, -5.0])}
    family = row_family(table, values)
    writer = RequestWriter(RESOURCE, SCOPE, __version__, 1_000, 8000)
    (request,), _ = writer.write([family], 2_000)
    decoded = ExportMetricsServiceRequest.FromString(request.data)
    points = decoded.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points
    sent = {p.attributes[-1].value.string_value: p for p in points}
    for i, value in enumerate([*VALUES, 2.0**53, -5.0]):
        point = sent[f"v{i}"]
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            assert point.WhichOneof("value") == "as_int" and point.as_int == int(value)
        else:
            assert point.WhichOneof("value") == "as_double"
            assert point.as_double == value or (math.isnan(value) and math.isnan(point.as_double))
        assert (point.start_time_unix_nano, point.time_unix_nano) == (1_000, 2_000)


def test_nothing_to_send_is_one_empty_request_as_before():
    writer = RequestWriter(RESOURCE, SCOPE, __version__, 1_000, 8000)
    requests, points = writer.write([], 5)
    assert points == 0 and len(requests) == 1
    assert [
        ExportMetricsServiceRequest.FromString(r.data).SerializeToString(deterministic=True)
        for r in requests
    ] == sdk_requests([], 5, 8000)


@pytest.mark.parametrize("kind", [GrpcReceiver, HttpReceiver])
def test_row_families_reach_a_real_receiver_point_for_point(kind):
    receiver = kind().start()
    table = RowTable()
    series = {("ns", f"pod-{i}", "app", "", "read"): float(i * 1000) for i in range(9000)}
    family = row_family(table, series)
    endpoint = receiver.endpoint if kind is GrpcReceiver else receiver.endpoint + "/v1/metrics"
    protocol = "grpc" if kind is GrpcReceiver else "http/protobuf"
    output = OtlpOutput(OtlpConfig(endpoint, protocol, 3600.0, 20.0), lambda: [family], "node-a")
    try:
        assert output._writer is not None  # the rows' path, not the SDK's
        assert output.export_once()
        exports = receiver.exports()
        assert len(exports) == 2  # 9,000 points: two requests of at most 8,000
        got = {
            dict(p.attributes)["k8s.pod.name"]: p.value
            for export in exports
            for p in export.points()
        }
        assert got == {f"pod-{i}": i * 1000 for i in range(9000)}
        assert exports[0].resource()["k8s.node.name"] == "node-a"
    finally:
        output.close()
        receiver.stop()


def test_without_otlp_no_protobuf_module_is_loaded():
    """The wire encoder's protobuf classes cost memory: only an OTLP output loads them."""
    import subprocess
    import sys

    code = (
        "import sys, exporter.agent, exporter.outputs.otlp\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
