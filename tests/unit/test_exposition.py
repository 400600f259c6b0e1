"""The /metrics fast path writes exactly the bytes prometheus_client writes."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from exporter.listen import Listen
from exporter.model import IDENTITY_LABELS, MetricFamily, counter, gauge
from exporter.outputs.exposition import (
    OPENMETRICS,
    TEXT,
    Renderer,
    exposition_form,
    go_floats,
    supports,
)
from exporter.outputs.prometheus import PrometheusServer, build_registry

# Every shape of number prometheus_client formats differently from repr.
VALUES = [
    0.0,
    -0.0,
    1.0,
    0.1,
    1e-7,
    123456.0,
    999999.0,
    1e6,
    1234567.0,
    1234567.5,
    -1234567.0,
    2.0**53 + 2,
    2.0**64,
    1e16,
    1.5e300,
    -2.5e-300,
    math.nan,
    math.inf,
    -math.inf,
]

ODD_LABELS = [
    "",
    'quote"in',
    "back\\slash",
    "new\nline",
    "\\xff from undecodable bytes",  # what b"\xff".decode(errors="backslashreplace") gives
    b"/x\xfe\xff".decode("utf-8", "backslashreplace"),
    "\ud800 lone surrogate",  # safe_label turns it into \\ud800
    "é 日本",
    "trailing\\",
    "{},=",
]


def fixture() -> list[MetricFamily]:
    syscalls = counter(
        "orb8_syscalls_total",
        'Help with a back\\slash, a "quote"\nand a newline.',
        (*IDENTITY_LABELS, "syscall"),
    )
    for i, odd in enumerate(ODD_LABELS):
        syscalls.add(("ns", f"pod-{i}", odd, "", "read"), VALUES[i % len(VALUES)])
        syscalls.add((odd, "", "", f"/system.slice/{odd}", "write"), i)
    for value in VALUES:
        syscalls.add(("big", "pod", "app", "", f"v{value!r}"), value)
    # Samples appended without add(): an int stays an int until formatted.
    syscalls.samples.append((("ns", "int", "app", "", "read"), 2**64 + 1))  # type: ignore[arg-type]
    syscalls.samples.append((("ns", "int", "app", "", "open"), 10**7))  # type: ignore[arg-type]

    unsorted = gauge("orb8_label_order", "Labels sorted by name.", ("b", "B", "a_1", "_z"))
    unsorted.add(("1", "2", "3", "4"), 1)
    no_labels = gauge("orb8_ratio", "No labels at all.")
    no_labels.add((), 0.25)
    info = gauge("orb8_build_info", "An _info gauge.", ("version", "python"))
    info.add(("1.2.3", "3.11"), 1)
    created = counter("orb8_things_created_total", "A counter with _created in its name.")
    created.add((), 3)
    created_gauge = gauge("orb8_object_created", "A gauge that ends in _created.", ("x",))
    created_gauge.add(("y",), 1.7e9)
    empty = counter("orb8_nothing_total", "A family without samples.", ("map",))
    # The same name twice (sources each report their maps; the agent merges,
    # but the renderer must not depend on it).
    first = gauge("orb8_bpf_map_entries", "Entries.", ("map",))
    first.add(("syscall_slots",), 70000)
    second = gauge("orb8_bpf_map_entries", "Entries.", ("map",))
    second.add(("network_flows",), 12)
    latency = MetricFamily(
        "orb8_dns_latency_seconds",
        "histogram",
        "A histogram: le among the labels, sorted; _count and _sum after the buckets.",
        ("pod", "role", "a"),
        buckets=(1.6e-05, 0.000032, 0.131072, 4.194304),
    )
    latency.add_histogram(("p", "client", 'odd"\\'), (1, 2, 2, 7, 9), 1.5)
    latency.add_histogram(("q", "server", ""), (0, 0, 0, 0, 2**64 + 1), 2**70)
    empty_histogram = MetricFamily("orb8_h_seconds", "histogram", "None.", buckets=(1.0,))
    return [
        syscalls, unsorted, no_labels, info, created, created_gauge, empty, first, second,
        latency, empty_histogram,
    ]  # fmt: skip


def expected(families: list[MetricFamily], form: str) -> bytes:
    registry = build_registry(lambda: families, process=False)
    if form == TEXT:
        return generate_latest(registry)
    return generate_openmetrics(registry)


def rendered(renderer: Renderer, families: list[MetricFamily], form: str) -> bytes:
    body = renderer.render(families, form).encode()
    return body + b"# EOF\n" if form == OPENMETRICS else body


@pytest.mark.parametrize("form", [TEXT, OPENMETRICS])
def test_byte_identical_to_prometheus_client_on_a_varied_fixture(form):
    families = fixture()
    assert all(map(supports, families))
    renderer = Renderer()
    want = expected(families, form)
    assert rendered(renderer, families, form) == want
    assert rendered(renderer, families, form) == want  # from the prefix cache
    assert b"NaN" in want and b"+Inf" in want and b"-Inf" in want and b"1e+06" in want


def test_series_come_and_go_between_renders_and_the_cache_follows():
    renderer = Renderer()
    families = fixture()
    for form in (TEXT, OPENMETRICS):
        assert rendered(renderer, families, form) == expected(families, form)
    syscalls = families[0]
    kept = syscalls.samples[::2]
    syscalls.samples = [(labels, value * 3 + 1) for labels, value in kept]
    syscalls.add(("new", "pod", "app", "", "read"), 42)
    families = [f for f in families if f.name != "orb8_label_order"]
    for form in (TEXT, OPENMETRICS):
        assert rendered(renderer, families, form) == expected(families, form)
    # Only the series just written are cached: gone ones were dropped.
    labelled = sum(len(f.samples) for f in families if f.labels)
    assert renderer.cached_series() == labelled


def test_numbers_are_formatted_as_prometheus_client_does():
    values = [*VALUES, 7, 2**70, 10**6, 0.5, 1e21, 12345678.9, 1e-5, 100000000.0]
    assert go_floats(values) == [floatToGoString(v) for v in values]


def test_what_the_renderer_cannot_reproduce_is_declined():
    assert supports(counter("orb8_ok_total", "x", ("a",)))
    assert not supports(gauge("orb8.dotted", "x"))
    assert not supports(gauge("orb8:colon", "x"))  # OpenMetrics writes it as _ in samples
    assert not supports(gauge("orb8_x", "x", ("a", "a")))
    assert not supports(gauge("orb8_x", "x", ("1a",)))
    assert not supports(gauge("orb8_x", "x", ("bad-label",)))
    odd_type = gauge("orb8_x", "x")
    odd_type.type = "summary"  # type: ignore[assignment]
    assert not supports(odd_type)
    assert not supports(MetricFamily("orb8_x", "histogram", "x", ("le",), buckets=(1.0,)))
    # Escapings that rewrite names go to prometheus_client.
    for accept, form in (
        ("", TEXT),
        ("text/plain; version=0.0.4", TEXT),
        ("text/plain;version=1.0.0;escaping=allow-utf-8", TEXT),
        ("application/openmetrics-text", OPENMETRICS),
        ("application/openmetrics-text; version=1.0.0", OPENMETRICS),
        ("application/openmetrics-text;version=1.0.0;escaping=underscores", OPENMETRICS),
        ("application/openmetrics-text;version=1.0.0;escaping=dots", None),
        ("application/openmetrics-text;version=1.0.0;escaping=values", None),
        ("text/plain;version=1.0.0;escaping=dots", None),
    ):
        assert exposition_form(choose_encoder(accept)[0]) == form, accept


def _without_process(body: bytes) -> bytes:
    return b"".join(
        line
        for line in body.splitlines(keepends=True)
        if not line.startswith((b"process_", b"# HELP process_", b"# TYPE process_"))
    )


@pytest.mark.parametrize(
    "accept",
    [
        "",
        "application/openmetrics-text; version=1.0.0",
        "application/openmetrics-text;version=2.0.0",
        "application/openmetrics-text;version=1.0.0;escaping=dots",
        "text/plain;version=1.0.0;escaping=values",
    ],
)
def test_the_server_body_is_what_the_encoder_writes(accept):
    families = fixture()
    server = PrometheusServer(Listen("127.0.0.1", 0), lambda: families, lambda: "")
    try:
        encoder, _ = choose_encoder(accept)
        body = server.render(encoder)
        assert _without_process(body) == _without_process(encoder(server.registry))
        assert b"\nprocess_" in body  # process_* come from prometheus_client
        assert body.endswith(b"# EOF\n") == ("openmetrics" in accept)
        # A family the renderer declines sends the whole body through the encoder.
        families.append(MetricFamily("orb8:colon", "gauge", "x", (), [((), 1.0)]))
        body = server.render(encoder)
        assert b"# TYPE orb8:colon gauge" in body
        assert _without_process(body) == _without_process(encoder(server.registry))
    finally:
        server.close()
