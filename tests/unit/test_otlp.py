"""OTLP output without the kernel: settings, the mapping, conversion, the push loop
against a real in-process OTLP receiver, and `orb8 run` refusing bad settings."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import replace

import pytest

from exporter import catalogue as docs_catalogue
from exporter.model import counter, gauge
from exporter.outputs import otlp_names
from exporter.outputs.otlp import (
    Converter,
    OtlpConfig,
    OtlpOutput,
    OtlpSettingError,
    resolve,
    split,
)
from tests.helpers import ORB8, ROOT
from tests.otlp_receiver import GrpcReceiver, HttpReceiver, Tls


def catalogue() -> dict[str, tuple[str, tuple[str, ...]]]:
    return otlp_names.catalogue_from_docs((ROOT / "docs" / "metrics.md").read_text())


# --- the mapping --------------------------------------------------------------


def test_every_catalogued_family_is_declared_and_nothing_else():
    assert set(catalogue()) == set(otlp_names.METRICS) | set(docs_catalogue.declared_metrics())


def test_mapping_is_one_to_one():
    names = [docs_catalogue.instrument(name).name for name in catalogue()]
    assert len(names) == len(set(names))
    keys = list(otlp_names.ATTRIBUTES.values())
    assert len(keys) == len(set(keys))


def test_docs_table_is_the_declaration_rendered():
    docs = (ROOT / "docs" / "metrics.md").read_text()
    assert docs_catalogue.render(docs) == docs, "docs/metrics.md out of date: make docs"


@pytest.mark.parametrize(
    ("labels", "values", "expected"),
    [
        (
            ("namespace", "pod", "container", "cgroup", "syscall"),
            ("shop", "cart", "app", "", "read"),
            {
                "k8s.namespace.name": "shop",
                "k8s.pod.name": "cart",
                "k8s.container.name": "app",
                "orb8.syscall": "read",
            },
        ),
        (
            ("namespace", "pod", "container", "cgroup", "direction", "protocol", "family"),
            ("", "", "", "/system.slice/sshd.service", "egress", "tcp", "ipv6"),
            {
                "orb8.cgroup.path": "/system.slice/sshd.service",
                "network.io.direction": "transmit",
                "network.transport": "tcp",
                "network.type": "ipv6",
            },
        ),
        (("direction",), ("ingress",), {"network.io.direction": "receive"}),
        (("gpu_uuid",), ("GPU-1",), {"orb8.gpu_uuid": "GPU-1"}),  # undeclared label
    ],
)
def test_attributes(labels, values, expected):
    assert otlp_names.attributes(labels, values) == expected


def test_undeclared_family_still_gets_a_name():
    assert otlp_names.instrument("orb8_gpu_things_total") == ("orb8.gpu.things", "1")


# --- settings ------------------------------------------------------------------


def test_no_endpoint_no_output():
    assert resolve(None, "", None, {}) is None
    assert resolve(None, "", None, {"OTEL_EXPORTER_OTLP_HEADERS": "a=b"}) is None


def test_defaults_from_the_generic_endpoint():
    config = resolve(None, "", None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
    assert config == OtlpConfig("http://c:4318/v1/metrics", "http/protobuf", 30.0, 10.0)


def test_standard_variables_are_honoured():
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://metrics:4318/custom/path",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": "A=1,b=2",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "b=3,Api-Key=x%2Cy",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_METRIC_EXPORT_INTERVAL": "15000",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "Delta",
        "OTEL_RESOURCE_ATTRIBUTES": "team=core,service.name=x",
        "OTEL_SERVICE_NAME": "orb8-prod",
    }
    config = resolve(None, "", None, env)
    assert config is not None
    # The signal-specific endpoint is used as is; its protocol wins over the generic one.
    assert (config.endpoint, config.protocol) == (
        "https://metrics:4318/custom/path",
        "http/protobuf",
    )
    assert config.headers == {"b": "3", "api-key": "x,y"}  # replaces, as in the SDK
    assert (config.timeout, config.interval, config.temporality) == (2.5, 15.0, "delta")
    assert config.resource == {"team": "core", "service.name": "orb8-prod"}


def test_orb8_settings_win():
    env = {
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://env:4318/v1/metrics",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": "15000",
    }
    config = resolve("http://flag:4317", "grpc", 5.0, env)
    assert config is not None
    assert (config.endpoint, config.protocol, config.interval) == ("http://flag:4317", "grpc", 5.0)


def test_disabled_by_the_sdk_switches_unless_orb8_asks():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRICS_EXPORTER": "none"}
    assert resolve(None, "", None, env) is None
    assert resolve(None, "", None, {**env, "OTEL_METRICS_EXPORTER": "otlp"}) is not None
    assert resolve("http://c:4318", "", None, env) is not None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:99999"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "ftp://c"}, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "OTEL_EXPORTER_OTLP_HEADERS"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "bad key=1"}, "OTEL_EXPORTER_OTLP_HEADERS"),
        ({"OTEL_EXPORTER_OTLP_METRICS_HEADERS": "a=x%0Ay"}, "OTEL_EXPORTER_OTLP_METRICS_HEADERS"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "0"}, "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "-5"}, "OTEL_METRIC_EXPORT_INTERVAL"),
        ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent.pem"}, "OTEL_EXPORTER_OTLP_CERTIFICATE"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"}, "OTEL_EXPORTER_OTLP_COMPRESSION"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "team"}, "OTEL_RESOURCE_ATTRIBUTES"),
        (
            {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "sometimes"},
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        ),
    ],
)
def test_bad_variables_are_named(env, named):
    with pytest.raises(OtlpSettingError, match=named):
        resolve(None, "", None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", **env})


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--otlp-protocol", "http/json"], {}, "otlp_protocol (flag --otlp-protocol)"),
        (["--otlp-endpoint", "collector:4317"], {}, "otlp_endpoint (flag --otlp-endpoint)"),
        (["--otlp-interval", "0"], {}, "otlp_interval (flag --otlp-interval)"),
        ([], {"ORB8_OTLP_PROTOCOL": "udp"}, "otlp_protocol (environment ORB8_OTLP_PROTOCOL)"),
        ([], {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http//c"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            ["--otlp-endpoint", "http://c:4318"],
            {"OTEL_EXPORTER_OTLP_HEADERS": "x"},
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
    ],
)
def test_orb8_run_exits_2_naming_the_bad_setting(args, env, named):
    clean = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [*ORB8, "run", "--listen", "127.0.0.1:1", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **env},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert "configuration error" in result.stderr


# --- conversion ----------------------------------------------------------------


def families(calls: int, peak: float):
    syscalls = counter("orb8_syscalls_total", "calls", ("namespace", "pod", "cgroup", "syscall"))
    syscalls.add(("shop", "cart", "", "read"), calls)
    fill = gauge("orb8_ring_buffer_utilization", "fill", ("probe",))
    fill.add(("syscalls",), peak)
    return [syscalls, fill, counter("orb8_ring_buffer_drops_total", "none yet", ("probe",))]


def test_counters_become_cumulative_monotonic_sums_and_gauges_gauges():
    converter = Converter(None, "cumulative", start_ns=1_000)
    data, points = converter.convert(families(7, 0.25), now_ns=5_000)
    assert points == 2  # a family without samples sends no metric
    metrics = {m.name: m for m in data.resource_metrics[0].scope_metrics[0].metrics}
    assert set(metrics) == {"orb8.syscalls", "orb8.ring_buffer.utilization"}
    calls = metrics["orb8.syscalls"]
    assert calls.unit == "{call}" and calls.data.is_monotonic
    assert calls.data.aggregation_temporality.name == "CUMULATIVE"
    (point,) = calls.data.data_points
    assert point.value == 7 and isinstance(point.value, int)
    assert (point.start_time_unix_nano, point.time_unix_nano) == (1_000, 5_000)
    assert dict(point.attributes) == {
        "k8s.namespace.name": "shop",
        "k8s.pod.name": "cart",
        "orb8.syscall": "read",
    }
    (fill,) = metrics["orb8.ring_buffer.utilization"].data.data_points
    assert fill.value == 0.25 and type(metrics["orb8.ring_buffer.utilization"].data).__name__ == (
        "Gauge"
    )


def test_delta_counts_from_the_last_accepted_export():
    converter = Converter(None, "delta", start_ns=1_000)

    def sent(calls: int, now: int):
        data, _ = converter.convert(families(calls, 0.5), now_ns=now)
        metric = data.resource_metrics[0].scope_metrics[0].metrics[0]
        assert metric.data.aggregation_temporality.name == "DELTA"
        return metric.data.data_points[0]

    first = sent(10, 2_000)
    assert (first.value, first.start_time_unix_nano) == (10, 1_000)
    converter.sent()
    failed = sent(15, 3_000)  # the collector did not take this one
    assert failed.value == 5
    retried = sent(18, 4_000)  # so the next covers both intervals
    assert (retried.value, retried.start_time_unix_nano) == (8, 2_000)
    converter.sent()
    assert sent(18, 5_000).value == 0


# --- the push loop against real receivers ------------------------------------------


@pytest.mark.parametrize("kind", [GrpcReceiver, HttpReceiver])
def test_a_push_holds_the_collect_lock_only_for_the_collect(kind):
    """While the collector sits on a push, the agent's lock is free for scrapes."""
    receiver = kind()
    receiver.start()
    arrived, release = threading.Event(), threading.Event()
    original = receiver._accept

    def blocking_accept(request, headers):
        arrived.set()
        release.wait(30)
        return original(request, headers)

    receiver._accept = blocking_accept  # type: ignore[method-assign]
    lock = threading.Lock()

    def collect():
        with lock:
            return families(3, 0.1)

    endpoint = receiver.endpoint if kind is GrpcReceiver else receiver.endpoint + "/v1/metrics"
    protocol = "grpc" if kind is GrpcReceiver else "http/protobuf"
    output = OtlpOutput(OtlpConfig(endpoint, protocol, 3600.0, 20.0), collect, "node-a")
    result: list[bool] = []
    pusher = threading.Thread(target=lambda: result.append(output.export_once()))
    try:
        pusher.start()
        assert arrived.wait(30), "push never reached the receiver"
        assert lock.acquire(timeout=10), "a scrape would wait for the push"
        lock.release()
        release.set()
        pusher.join(30)
        assert result == [True]
        assert output.exports == {"success": 1, "failure": 0}
        (export,) = receiver.exports()
        assert export.resource()["k8s.node.name"] == "node-a"
    finally:
        release.set()
        output.close()
        receiver.stop()


def test_close_pushes_the_last_counts_once():
    receiver = HttpReceiver().start()
    try:
        config = OtlpConfig(receiver.endpoint + "/v1/metrics", "http/protobuf", 3600.0, 10.0)
        output = OtlpOutput(config, lambda: families(42, 0.0))
        output.start()
        output.close()
        output.close()
        (export,) = receiver.exports()
        (point,) = [p for p in export.points() if p.metric == "orb8.syscalls"]
        assert point.value == 42
    finally:
        receiver.stop()


def test_header_errors_do_not_echo_secrets():
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "x-a=1,Authorization Bearer s3cret"}
    with pytest.raises(OtlpSettingError) as error:
        resolve("http://c:4318", "", None, env)
    assert "entry 2" in str(error.value) and "s3cret" not in str(error.value)


@pytest.mark.parametrize(
    "value",
    [
        "authorization=Bearer s3cr;et",
        'authorization="s3cret"',
        "authorization=s3cr\\et",
        "authorization=s3cr\u00e9t",
        "authorization=s3cr\tet",
    ],
)
def test_header_values_the_sdk_would_log_are_refused_without_echo(value, caplog):
    """The SDK exporters parse OTEL_EXPORTER_OTLP_HEADERS themselves too and log an entry
    they cannot parse whole (credential included): orb8 refuses it first, naming it only."""
    from opentelemetry.util.re import parse_env_headers

    with caplog.at_level("WARNING", logger="opentelemetry.util.re"):
        parse_env_headers(value, liberal=True)
    assert "s3cr" in caplog.text  # what the SDK would have logged
    with pytest.raises(OtlpSettingError) as error:
        resolve("http://c:4318", "", None, {"OTEL_EXPORTER_OTLP_HEADERS": value})
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(error.value) and "s3cr" not in str(error.value)


@pytest.mark.parametrize(
    "value",
    ["a=1", "Authorization=Bearer abc", "a=x%2Cy%3Bz, B = 2 ,", "api-key=a%20b=c", "x=%C3%A9"],
)
def test_accepted_headers_are_what_the_sdk_parses_without_a_warning(value, caplog):
    from opentelemetry.util.re import parse_env_headers

    config = resolve("http://c:4318", "", None, {"OTEL_EXPORTER_OTLP_HEADERS": value})
    assert config is not None
    with caplog.at_level("WARNING", logger="opentelemetry.util.re"):
        assert config.headers == parse_env_headers(value, liberal=True)
    assert caplog.text == ""


def test_orb8_otlp_settings_follow_flag_env_yaml(tmp_path):
    from exporter.registry import load_settings

    config = tmp_path / "orb8.yaml"
    config.write_text(
        "otlp_endpoint: http://from-yaml:4318\notlp_protocol: grpc\notlp_interval: 12\n"
    )
    settings = load_settings(
        {"config": str(config), "otlp_interval": "7"},
        environ={"ORB8_OTLP_ENDPOINT": "https://from-env:4317"},
    )
    assert (settings.otlp_endpoint, settings.otlp_protocol, settings.otlp_interval) == (
        "https://from-env:4317",
        "grpc",
        7.0,
    )
    unset = load_settings({}, environ={})
    assert (unset.otlp_endpoint, unset.otlp_protocol, unset.otlp_interval) == ("", "", None)


def test_big_exports_are_split_in_order_without_losing_a_point():
    big = counter("orb8_syscalls_total", "calls", ("cgroup", "syscall"))
    for i in range(12_000):
        big.add((f"/c{i}", "read"), i)
    small = gauge("orb8_probe_up", "up", ("probe",))
    small.add(("syscalls",), 1)
    other = counter("orb8_tcp_retransmits_total", "r", ("cgroup",))
    for i in range(5_000):
        other.add((f"/c{i}",), i)
    data, points = Converter(None, "cumulative", 0).convert([big, small, other], 1)
    batches = list(split(data, 8000))
    sizes = [
        sum(len(m.data.data_points) for m in b.resource_metrics[0].scope_metrics[0].metrics)
        for b in batches
    ]
    assert sizes == [8000, 8000, 1001] and points == 17_001
    flat = [
        (m.name, dict(p.attributes).get("orb8.cgroup.path"), p.value)
        for b in batches
        for m in b.resource_metrics[0].scope_metrics[0].metrics
        for p in m.data.data_points
    ]
    whole = [
        (m.name, dict(p.attributes).get("orb8.cgroup.path"), p.value)
        for m in data.resource_metrics[0].scope_metrics[0].metrics
        for p in m.data.data_points
    ]
    assert flat == whole
    empty, _ = Converter(None, "cumulative", 0).convert([], 1)
    assert len(list(split(empty, 8000))) == 1


def self_signed(directory, name: str):
    certificate, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(certificate),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return str(certificate), str(key)


@pytest.mark.parametrize("kind", [GrpcReceiver, HttpReceiver])
def test_mutual_tls_from_the_standard_variables(kind, tmp_path):
    """OTEL_EXPORTER_OTLP_CERTIFICATE / _CLIENT_KEY / _CLIENT_CERTIFICATE reach the exporter."""
    server_cert, server_key = self_signed(tmp_path, "localhost")
    client_cert, client_key = self_signed(tmp_path, "orb8-client")
    receiver = kind(Tls(server_cert, server_key, client_ca=client_cert)).start()
    protocol = "grpc" if kind is GrpcReceiver else "http/protobuf"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_CERTIFICATE": server_cert,
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY": client_key,
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE": client_cert,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "5000",
    }
    config = resolve(None, "", None, env)
    assert config is not None and config.certificate == server_cert
    output = OtlpOutput(config, lambda: families(5, 0.0))
    try:
        assert output.export_once()
        (export,) = receiver.exports()
        assert [p.value for p in export.points() if p.metric == "orb8.syscalls"] == [5]
        # Without the client certificate the collector refuses the push.
        anonymous = replace(config, client_key=None, client_certificate=None)
        refused = OtlpOutput(anonymous, lambda: families(5, 0.0))
        assert not refused.export_once()
        assert refused.exports == {"success": 0, "failure": 1}
        refused.close()
    finally:
        output.close()
        receiver.stop()
