"""OTLP output: pushes the same families /metrics serves to an OpenTelemetry collector.

Every interval one thread takes a snapshot through the same collect the
Prometheus output calls (the agent's lock is held only for that collect,
exactly as long as a scrape holds it), maps it through the one declaration
in otlp_names.py, builds the SDK's MetricsData and hands it to the SDK's
OTLP exporter (gRPC or HTTP/protobuf). Conversion, encoding and sending run
outside the lock, so a slow or dead collector never delays a scrape.

Why not Observable instruments on a MeterProvider: the SDK would aggregate
every point again (tens of microseconds each, 55k points per interval on a
busy node) and keeps every attribute set it ever saw, so series of deleted
pods would stay in memory and keep being exported. Building MetricsData from
the snapshot sends exactly what /metrics shows, from one collect.

Failures: the SDK exporter retries transient errors (gRPC UNAVAILABLE, HTTP
429/5xx, refused connections) with exponential backoff within the export
timeout; after that the export counts as failed and the next interval
tries again with fresh data. orb8 logs once when an outage starts and once
when it ends, and counts every export in orb8_otlp_exports_total{result}.

Settings and their precedence (first wins), resolved by resolve():
- endpoint: --otlp-endpoint / ORB8_OTLP_ENDPOINT / YAML otlp_endpoint,
  OTEL_EXPORTER_OTLP_METRICS_ENDPOINT (used as is), OTEL_EXPORTER_OTLP_ENDPOINT
  (for HTTP /v1/metrics is appended, as for orb8's own setting). No endpoint:
  no OTLP output.
- protocol: --otlp-protocol, OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
  OTEL_EXPORTER_OTLP_PROTOCOL, http/protobuf (the specification's default).
- interval: --otlp-interval (seconds), OTEL_METRIC_EXPORT_INTERVAL (ms), 30 s.
- timeout: OTEL_EXPORTER_OTLP_METRICS_TIMEOUT, OTEL_EXPORTER_OTLP_TIMEOUT
  (milliseconds, as the specification says), 10 s.
- headers: OTEL_EXPORTER_OTLP_METRICS_HEADERS, OTEL_EXPORTER_OTLP_HEADERS.
- TLS: OTEL_EXPORTER_OTLP_[METRICS_]CERTIFICATE, _CLIENT_KEY and
  _CLIENT_CERTIFICATE (PEM files, checked at start); https:// endpoints use
  TLS.
- resource: orb8's attributes, overridden by OTEL_RESOURCE_ATTRIBUTES, then
  OTEL_SERVICE_NAME.

What the SDK reads itself and what orb8 resolves (SDK 1.45; the SDK's
exporters read OTEL_EXPORTER_OTLP_* whenever an argument is not given):
- left to the SDK: _COMPRESSION and _INSECURE (orb8 only checks the
  compression's value, since the HTTP exporter falls back to none with a
  warning and the gRPC one raises its own exception when built);
- resolved by orb8 and passed explicitly, each for a reason the SDK does
  not meet: the timeout (the SDK reads it as seconds, the specification
  says milliseconds: 10000 would be 10,000 s); the TLS files (the gRPC
  exporter takes the key and client certificate from the same family,
  signal-specific or generic, as the certificate, so a generic CA with a
  signal-specific client pair loses the pair); the headers (the SDK skips a
  malformed entry with a warning that logs it whole, credential included;
  orb8 accepts the SDK's own grammar and refuses anything else at start,
  without showing the value); the endpoint (orb8 pushes only when one is
  set, where the SDK defaults to localhost, and names it in its logs);
- read by orb8 because the SDK reads them only in parts orb8 does not use
  (a MeterProvider, PeriodicExportingMetricReader, the auto-configuration):
  the protocol, OTEL_METRIC_EXPORT_INTERVAL, OTEL_SDK_DISABLED,
  OTEL_METRICS_EXPORTER, the temporality preference (orb8 computes deltas
  itself), OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME (the SDK's
  OTELResourceDetector skips a bad pair with a warning; orb8 fails at
  start, naming the variable).
Every variable that is set is checked at start, even with the output off.
"""

from __future__ import annotations

import itertools
import logging
import os
import platform
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from exporter import __version__
from exporter.model import MetricFamily, counter, gauge
from exporter.outputs import otlp_names

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_PROTOCOL = "http/protobuf"
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 10.0
# gRPC servers (the collector included) refuse messages over 4 MiB by
# default; 8,000 points stay well below that with orb8's attributes.
MAX_POINTS_PER_REQUEST = 8000
SCOPE = "orb8"

Temporality = Literal["cumulative", "delta"]


class OtlpSettingError(ValueError):
    """A bad OTLP setting; the message names it. The CLI exits 2."""


@dataclass(frozen=True)
class OtlpConfig:
    endpoint: str  # what the exporter gets: a URL; for HTTP the full /v1/metrics one
    protocol: str
    interval: float  # seconds
    timeout: float  # seconds
    headers: dict[str, str] = field(default_factory=dict)
    temporality: Temporality = "cumulative"
    resource: dict[str, str] = field(default_factory=dict)  # from OTEL_RESOURCE_ATTRIBUTES etc.
    certificate: str | None = None  # CA bundle to trust (PEM)
    client_key: str | None = None  # mTLS
    client_certificate: str | None = None

    def summary(self) -> str:
        return (
            f"{self.protocol} {self.endpoint} every {self.interval:g}s "
            f"(timeout {self.timeout:g}s, {self.temporality})"
        )


# --- settings ----------------------------------------------------------------

HEADER_KEY = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# A header value before URL-decoding, as the SDK's own parser accepts it
# (opentelemetry.util.re.parse_env_headers, liberal): printable ASCII and space but
# `"` `,` `;` `\`. The SDK exporters read these variables themselves as well, even when
# given headers, and log an entry outside this grammar whole, credential included: orb8
# refuses such an entry at start instead, without showing it.
HEADER_VALUE = re.compile(r"[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")


def check_endpoint(value: str, setting: str) -> str:
    url = urlparse(value.strip())
    try:
        url.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise OtlpSettingError(f"invalid {setting}: {value!r} has a bad port") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise OtlpSettingError(
            f"invalid {setting}: {value!r} is not an http:// or https:// URL "
            "(e.g. http://otel-collector:4317)"
        )
    return value.strip()


def check_protocol(value: str, setting: str) -> str:
    protocol = value.strip().lower()
    if protocol not in PROTOCOLS:
        raise OtlpSettingError(
            f"invalid {setting}: {value!r} is not a supported OTLP protocol "
            f"(one of {', '.join(PROTOCOLS)})"
        )
    return protocol


def parse_headers(value: str, setting: str) -> dict[str, str]:
    """W3C-baggage-like `key=value,key2=value2`, values URL-encoded (the spec's format)."""
    # Errors never echo a value: headers carry credentials.
    headers: dict[str, str] = {}
    for number, item in enumerate(value.split(","), 1):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not HEADER_KEY.fullmatch(key):
            raise OtlpSettingError(
                f"invalid {setting}: entry {number} is not key=value with a header name as key "
                "(values are not shown)"
            )
        if not HEADER_VALUE.fullmatch(raw.strip()):
            raise OtlpSettingError(
                f"invalid {setting}: the value of {key!r} has a character to URL-encode "
                "(%XX): a quote, comma, semicolon, backslash, control or non-ASCII character "
                "(values are not shown)"
            )
        decoded = unquote(raw.strip())
        if any(c in decoded for c in "\r\n\0"):
            raise OtlpSettingError(
                f"invalid {setting}: the value of {key!r} has a line break or NUL"
            )
        headers[key.lower()] = decoded  # gRPC metadata keys must be lower case
    return headers


def parse_resource(value: str, setting: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise OtlpSettingError(f"invalid {setting}: {item.strip()!r} is not key=value")
        attributes[key.strip()] = unquote(raw.strip())
    return attributes


def milliseconds(value: str, setting: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise OtlpSettingError(f"invalid {setting}: {value!r} is not milliseconds") from None
    if not number > 0 or number == float("inf"):
        raise OtlpSettingError(f"invalid {setting}: {value!r} must be more than 0 ms")
    return number / 1000


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def resolve(
    endpoint: str | None,
    protocol: str | None,
    interval: float | None,
    environ: Mapping[str, str] | None = None,
) -> OtlpConfig | None:
    """orb8's OTLP settings (None/"" = not given) merged with the OTEL_* environment.

    None when no endpoint is configured. Raises OtlpSettingError naming the
    setting or variable at fault.
    """
    env = os.environ if environ is None else environ
    sig, gen = "OTEL_EXPORTER_OTLP_METRICS_", "OTEL_EXPORTER_OTLP_"

    if protocol:
        proto = check_protocol(protocol, "otlp_protocol")
    elif found := _first(env, sig + "PROTOCOL", gen + "PROTOCOL"):
        proto = check_protocol(found[1], found[0])
    else:
        proto = DEFAULT_PROTOCOL

    # Validate every variable that is set, even when the output stays off:
    # a typo should not wait for the day someone sets the endpoint.
    headers: dict[str, str] = {}
    for name in (gen + "HEADERS", sig + "HEADERS"):  # the signal-specific one replaces
        if env.get(name, "").strip():
            headers = parse_headers(env[name], name)
    timeout = DEFAULT_TIMEOUT
    if found := _first(env, sig + "TIMEOUT", gen + "TIMEOUT"):
        timeout = milliseconds(found[1], found[0])
    tls: dict[str, str | None] = {}
    for name in ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE"):
        for var in (sig + name, gen + name):
            path = env.get(var, "").strip()
            if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise OtlpSettingError(f"invalid {var}: {path} is not a readable file")
        found = _first(env, sig + name, gen + name)
        tls[name.lower()] = found[1] if found else None
    for var in (sig + "COMPRESSION", gen + "COMPRESSION"):
        value = env.get(var, "").strip().lower()
        allowed = ("gzip", "none") if proto == "grpc" else ("gzip", "deflate", "none")
        if value and value not in allowed:
            raise OtlpSettingError(f"invalid {var}: {value!r} is not one of {', '.join(allowed)}")
    temporality: Temporality = "cumulative"
    preference = env.get(sig + "TEMPORALITY_PREFERENCE", "").strip().lower()
    if preference == "delta":
        temporality = "delta"
    elif preference not in ("", "cumulative", "lowmemory"):
        raise OtlpSettingError(
            f"invalid {sig}TEMPORALITY_PREFERENCE: {preference!r} is not cumulative, delta "
            "or lowmemory"
        )
    # lowmemory keeps asynchronous (observed) counters cumulative, and every
    # orb8 counter is observed from kernel totals: cumulative.
    if interval:
        period = float(interval)
    elif env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip():
        period = milliseconds(env["OTEL_METRIC_EXPORT_INTERVAL"], "OTEL_METRIC_EXPORT_INTERVAL")
    else:
        period = DEFAULT_INTERVAL
    resource = parse_resource(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), "OTEL_RESOURCE_ATTRIBUTES")
    if env.get("OTEL_SERVICE_NAME", "").strip():
        resource["service.name"] = env["OTEL_SERVICE_NAME"].strip()

    if endpoint:
        url, generic = check_endpoint(endpoint, "otlp_endpoint"), True
    elif found := _first(env, sig + "ENDPOINT"):
        url, generic = check_endpoint(found[1], found[0]), False
    elif found := _first(env, gen + "ENDPOINT"):
        url, generic = check_endpoint(found[1], found[0]), True
    else:
        return None
    if not endpoint and (
        env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        or env.get("OTEL_METRICS_EXPORTER", "").strip().lower() == "none"
    ):
        log.info("OTLP endpoint set but OTEL_SDK_DISABLED/OTEL_METRICS_EXPORTER turn it off")
        return None
    if proto == "http/protobuf" and generic:
        url = url.rstrip("/") + "/v1/metrics"
    return OtlpConfig(url, proto, period, timeout, headers, temporality, resource, **tls)


# --- the model mapped to OTLP ---------------------------------------------------


def build_resource(config: OtlpConfig, node_name: str | None) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.version import __version__ as sdk_version

    attributes: dict[str, str] = {
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": sdk_version,
        "service.name": "orb8",
        "service.version": __version__,
        "host.name": socket.gethostname(),
        "os.type": platform.system().lower(),
    }
    if node_name:
        attributes["k8s.node.name"] = node_name
    attributes.update(config.resource)  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME win
    return Resource(attributes)


class Converter:
    """Model families -> the SDK's MetricsData; keeps what delta temporality needs."""

    def __init__(self, resource: Any, temporality: Temporality, start_ns: int) -> None:
        from opentelemetry.sdk.metrics.export import AggregationTemporality
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.resource = resource
        self.delta = temporality == "delta"
        self.sum_temporality = (
            AggregationTemporality.DELTA if self.delta else AggregationTemporality.CUMULATIVE
        )
        self.scope = InstrumentationScope(SCOPE, __version__)
        self.start_ns = start_ns
        # Delta: cumulative values as of the last successful export, per
        # series; only series present in that export are kept (bounded).
        self._sent: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._sent_ns = start_ns
        self._pending: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._pending_ns = start_ns
        # Mapped attributes per series, kept for the series of the last export
        # only: most series repeat from one export to the next.
        self._attributes: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}

    def convert(self, families: Iterable[MetricFamily], now_ns: int) -> tuple[Any, int]:
        """(MetricsData, number of points)."""
        from opentelemetry.sdk.metrics.export import (
            Gauge,
            Metric,
            MetricsData,
            NumberDataPoint,
            ResourceMetrics,
            ScopeMetrics,
            Sum,
        )

        metrics = []
        points = 0
        pending: dict[tuple[str, tuple[str, ...]], Any] = {}
        known = self._attributes
        seen: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}
        for family in families:
            if family.type == "histogram":
                if family.histograms:
                    metrics.append(self._histogram(family, now_ns, pending, seen))
                    points += len(family.histograms)
                continue
            if not family.samples:
                continue
            inst = otlp_names.instrument(family.name, family.otlp)
            data_points = []
            is_counter = family.type == "counter"
            # Gauges carry no start time; counters count from orb8's start
            # (its kernel maps start at zero) or, as deltas, from the last
            # export the collector accepted.
            start = (self._sent_ns if self.delta else self.start_ns) if is_counter else 0
            for values, value in family.samples:
                key = (family.name, values)
                attrs = known.get(key)
                if attrs is None:
                    attrs = otlp_names.attributes(family.labels, values, family.otlp_attributes)
                seen[key] = attrs
                if is_counter and self.delta:
                    pending[key] = value
                    previous = self._sent.get(key, 0)
                    # A series that went down was reset: its whole value is new.
                    value = value - previous if value >= previous else value
                data_points.append(NumberDataPoint(attrs, start, now_ns, _number(value)))
            data: Any = (
                Sum(data_points, self.sum_temporality, True) if is_counter else Gauge(data_points)
            )
            points += len(data_points)
            metrics.append(Metric(inst.name, family.help, inst.unit, data))
        self._pending, self._pending_ns = pending, now_ns
        self._attributes = seen
        scope = ScopeMetrics(self.scope, metrics, "")
        return MetricsData([ResourceMetrics(self.resource, [scope], "")]), points

    def _histogram(
        self,
        family: MetricFamily,
        now_ns: int,
        pending: dict[tuple[str, tuple[str, ...]], Any],
        seen: dict[tuple[str, tuple[str, ...]], dict[str, str]],
    ) -> Any:
        """An OTLP explicit-bucket histogram from cumulative Prometheus buckets
        (OTLP counts each bucket on its own; deltas per bucket in delta mode)."""
        from opentelemetry.sdk.metrics.export import Histogram, HistogramDataPoint, Metric

        inst = otlp_names.instrument(family.name, family.otlp)
        start = self._sent_ns if self.delta else self.start_ns
        data_points = []
        for values, cumulative, total in family.histograms:
            key = (family.name, values)
            attrs = self._attributes.get(key) or otlp_names.attributes(
                family.labels, values, family.otlp_attributes
            )
            seen[key] = attrs
            counts = [int(c) for c in cumulative]
            if self.delta:
                pending[key] = (counts, total)
                sent_counts, sent_total = self._sent.get(key) or ([0] * len(counts), 0.0)
                if all(c >= p for c, p in zip(counts, sent_counts, strict=True)):
                    counts = [c - p for c, p in zip(counts, sent_counts, strict=True)]
                    total -= sent_total
            buckets = [counts[0], *(b - a for a, b in itertools.pairwise(counts))]
            data_points.append(
                HistogramDataPoint(
                    attributes=attrs,
                    start_time_unix_nano=start,
                    time_unix_nano=now_ns,
                    count=counts[-1],
                    sum=total,
                    bucket_counts=buckets,
                    explicit_bounds=list(family.buckets),
                    # Unknown (the kernel keeps buckets only): left unset.
                    min=None,  # type: ignore[arg-type]
                    max=None,  # type: ignore[arg-type]
                    exemplars=[],
                )
            )
        data = Histogram(data_points, self.sum_temporality)
        return Metric(inst.name, family.help, inst.unit, data)

    def sent(self) -> None:
        """The last converted data reached the collector: deltas start from it."""
        if self.delta:
            self._sent, self._sent_ns = self._pending, self._pending_ns


def split(data: Any, max_points: int) -> Iterator[Any]:
    """MetricsData in pieces of at most max_points points, metric order kept."""
    from dataclasses import replace

    (resource_metrics,) = data.resource_metrics
    (scope_metrics,) = resource_metrics.scope_metrics
    batch: list[Any] = []
    size = 0

    def emit() -> Any:
        scope = replace(scope_metrics, metrics=batch)
        return replace(data, resource_metrics=[replace(resource_metrics, scope_metrics=[scope])])

    for metric in scope_metrics.metrics:
        points = list(metric.data.data_points)
        while points:
            room = max_points - size
            part, points = points[:room], points[room:]
            batch.append(replace(metric, data=replace(metric.data, data_points=part)))
            size += len(part)
            if size >= max_points:
                yield emit()
                batch, size = [], 0
    if batch or not scope_metrics.metrics:  # nothing at all: one empty request
        yield emit()


def _number(value: float) -> int | float:
    # Counts are integers in the kernel; send them as OTLP ints when they are.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


# --- the push loop -----------------------------------------------------------------


class _LastMessage(logging.Handler):
    """Keeps the SDK exporter's last complaint for orb8's own (once per outage) line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.message = record.getMessage()


def make_exporter(config: OtlpConfig) -> Any:
    """The SDK exporter, given every setting explicitly (resolve() already applied
    the OTEL_* variables and orb8's precedence)."""
    kwargs: dict[str, Any] = {
        "endpoint": config.endpoint,
        "headers": dict(config.headers),
        "timeout": config.timeout,
    }
    if config.protocol == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        if config.endpoint.startswith("https://") and config.certificate:
            kwargs["credentials"] = grpc.ssl_channel_credentials(
                root_certificates=_read(config.certificate),
                private_key=_read(config.client_key) if config.client_key else None,
                certificate_chain=(
                    _read(config.client_certificate) if config.client_certificate else None
                ),
            )
        return _grpc_exporter_of_requests(OTLPMetricExporter)(**kwargs)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpExporter,
    )

    if config.certificate:
        kwargs["session"] = _session_trusting_the_configured_ca()
    return _http_exporter_of_requests(HttpExporter)(
        **kwargs,
        certificate_file=config.certificate,
        client_key_file=config.client_key,
        client_certificate_file=config.client_certificate,
    )


# The SDK's exporters take MetricsData and encode it themselves; orb8's
# requests are already serialized (otlp_wire.py). These subclasses send an
# Encoded request through the exporter's own transport, retries, timeouts
# and self-metrics, and anything else through the SDK's path unchanged.
# They use the exporters' internals (_client, _stub, _translate_data): the
# kernel and unit tests push through them into real receivers.


def _grpc_exporter_of_requests(base: Any) -> Any:
    import grpc
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceResponse,
    )

    from exporter.outputs.otlp_wire import Encoded

    class BytesStub:
        """MetricsService's stub, for requests that are bytes already."""

        def __init__(self, channel: grpc.Channel) -> None:
            self.Export = channel.unary_unary(
                "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                request_serializer=None,
                response_deserializer=ExportMetricsServiceResponse.FromString,
            )

    class Exporter(base):  # type: ignore[misc,valid-type]
        accepts_encoded = True

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._stub = BytesStub
            self._client = BytesStub(self._channel)

        def _translate_data(self, data: Any) -> bytes:
            if isinstance(data, Encoded):
                return data.data
            return encode_metrics(data).SerializeToString()

        def _count_data(self, data: Any) -> int:
            return data.points if isinstance(data, Encoded) else super()._count_data(data)

        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
            if isinstance(metrics_data, Encoded):
                return self._export(data=metrics_data)
            return super().export(metrics_data, timeout_millis, **kwargs)

    return Exporter


def _http_exporter_of_requests(base: Any) -> Any:
    from opentelemetry.sdk.metrics.export import MetricExportResult

    from exporter.outputs.otlp_wire import Encoded

    class Exporter(base):  # type: ignore[misc,valid-type]
        accepts_encoded = True

        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
            if not isinstance(metrics_data, Encoded):
                return super().export(metrics_data, timeout_millis, **kwargs)
            if self._shutdown:
                return MetricExportResult.FAILURE
            with self._metrics.export_operation(metrics_data.points) as result:
                sent = self._client.export(metrics_data.data)
                if not sent.success:
                    result.error = sent.error
                    return MetricExportResult.FAILURE
            return MetricExportResult.SUCCESS

    return Exporter


def _session_trusting_the_configured_ca() -> Any:
    """A requests Session whose CA file beats REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE.

    The SDK puts OTEL_EXPORTER_OTLP_CERTIFICATE in session.verify, but requests
    lets those variables override session.verify (psf/requests#3829): in an
    image that sets them (many do), the collector's CA would be ignored.
    """
    import requests

    class Session(requests.Session):
        def merge_environment_settings(self, *args: Any, **kwargs: Any) -> Any:
            settings = super().merge_environment_settings(*args, **kwargs)
            if isinstance(self.verify, str):
                settings["verify"] = self.verify
            return settings

    return Session()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class OtlpOutput:
    """One background thread: every interval, collect -> convert -> export."""

    def __init__(
        self,
        config: OtlpConfig,
        collect: Callable[[], Iterable[MetricFamily]],
        node_name: str | None = None,
        exporter: Any = None,
    ) -> None:
        self.config = config
        self._collect = collect
        self._exporter = exporter if exporter is not None else make_exporter(config)
        resource = build_resource(config, node_name)
        start_ns = time.time_ns()
        self._converter = Converter(resource, config.temporality, start_ns)
        # Cumulative pushes are written from the rows (otlp_wire.py) when the
        # exporter takes serialized requests; delta keeps the SDK path.
        self._writer: Any = None
        if config.temporality == "cumulative" and getattr(self._exporter, "accepts_encoded", False):
            from exporter.outputs.otlp_wire import RequestWriter  # protobuf: only with OTLP on

            self._writer = RequestWriter(
                dict(resource.attributes), SCOPE, __version__, start_ns, MAX_POINTS_PER_REQUEST
            )
        self._stop = threading.Event()
        self._closed = self._exporter_closed = False
        self._thread = threading.Thread(target=self._run, name="otlp", daemon=True)
        self._stats_lock = threading.Lock()
        self.exports = {"success": 0, "failure": 0}
        self.last_success = 0.0  # unix seconds
        self.last_duration = 0.0
        self.last_points = 0
        self._failing_since: float | None = None
        self._failures_in_outage = 0
        self._complaints = _LastMessage()
        sdk_log = logging.getLogger("opentelemetry.exporter.otlp")
        sdk_log.addHandler(self._complaints)
        # The SDK logs every retry; orb8 logs once per outage instead (the
        # SDK's own lines stay visible with --log-level debug).
        sdk_log.propagate = log.isEnabledFor(logging.DEBUG)

    def start(self) -> None:
        log.info("OTLP push: %s", self.config.summary())
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval):
            self.export_once()

    def export_once(self) -> bool:
        started = time.perf_counter()
        cpu = time.thread_time()
        self._complaints.message = ""
        try:
            families = list(self._collect())  # the only part under the agent's lock
            batches: Iterable[Any]
            if self._writer is not None:
                batches, points = self._writer.write(families, time.time_ns())
            else:
                data, points = self._converter.convert(families, time.time_ns())
                batches = split(data, MAX_POINTS_PER_REQUEST)
            # Batches in order; the first failure ends the push (the rest
            # would only wait out the same timeout against the same collector).
            ok = True
            for batch in batches:
                result = self._exporter.export(batch, timeout_millis=self.config.timeout * 1000)
                ok = getattr(result, "name", result) == "SUCCESS"
                if not ok:
                    break
            error = self._complaints.message or "export failed"
        except Exception as e:  # never let the push thread die
            log.debug("OTLP export raised", exc_info=True)
            ok, points, error = False, 0, f"{type(e).__name__}: {e}"
        if ok:
            self._converter.sent()
        self._record(ok, points, time.perf_counter() - started, time.thread_time() - cpu, error)
        return ok

    def _record(self, ok: bool, points: int, wall: float, cpu: float, error: str) -> None:
        now = time.time()
        with self._stats_lock:
            self.exports["success" if ok else "failure"] += 1
            self.last_duration = wall
            if ok:
                self.last_success = now
                self.last_points = points
        log.debug("OTLP export: ok=%s points=%d wall=%.3fs cpu=%.3fs", ok, points, wall, cpu)
        if self._exporter_closed:
            return  # interrupted by shutdown: not an outage worth a line
        if ok and self._failing_since is not None:
            log.info(
                "OTLP export to %s recovered after %d failed exports (%.0f s)",
                self.config.endpoint,
                self._failures_in_outage,
                now - self._failing_since,
            )
            self._failing_since = None
        elif not ok:
            if self._failing_since is None:
                self._failing_since, self._failures_in_outage = now, 0
                log.warning(
                    "OTLP export to %s failing: %s; retrying every %g s, /metrics unaffected",
                    self.config.endpoint,
                    error,
                    self.config.interval,
                )
            self._failures_in_outage += 1

    def families(self) -> list[MetricFamily]:
        return health_families(self)

    def close(self) -> None:
        """Stop pushing; one last push first when the collector is up (as the SDK's
        periodic reader does at shutdown), so it gets the final counts."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread.is_alive():
            if self._failing_since is not None:
                self._shutdown_exporter()  # cut the retries short: it is down anyway
            self._thread.join(timeout=self.config.timeout + 5)
            if self._failing_since is None and not self._thread.is_alive():
                self.export_once()
        self._shutdown_exporter()
        logging.getLogger("opentelemetry.exporter.otlp").removeHandler(self._complaints)

    def _shutdown_exporter(self) -> None:
        if self._exporter_closed:
            return
        self._exporter_closed = True
        try:
            self._exporter.shutdown(timeout_millis=5000)
        except Exception:
            log.debug("OTLP exporter shutdown failed", exc_info=True)


def health_families(output: OtlpOutput | None) -> list[MetricFamily]:
    """orb8_otlp_* (declared with no samples when OTLP push is off)."""
    exports = counter(
        "orb8_otlp_exports_total",
        "OTLP exports by result: success, or failure after the exporter's retries.",
        ("result",),
    )
    last = gauge(
        "orb8_otlp_last_success_timestamp_seconds",
        "Unix time of the last OTLP export the collector accepted (0 before the first).",
    )
    duration = gauge(
        "orb8_otlp_export_duration_seconds",
        "Wall time of the last OTLP export: collect, convert, send, retries.",
    )
    if output is not None:
        with output._stats_lock:
            for result, count in output.exports.items():
                exports.add((result,), count)
            last.add((), output.last_success)
            duration.add((), output.last_duration)
    return [exports, last, duration]
