"""OTLP metric receivers for the tests: the real protocol, from opentelemetry-proto.

GrpcReceiver serves opentelemetry-proto's MetricsService over grpcio;
HttpReceiver accepts OTLP/HTTP protobuf POSTs on /v1/metrics. Both keep
every request they accepted, and can be told to fail (UNAVAILABLE / HTTP
500), to be slow, or to stop and start again on the same port.

    receiver = GrpcReceiver(); receiver.start()   # receiver.endpoint
    ...
    receiver.points()                              # flattened data points
"""

from __future__ import annotations

import gzip
import ssl
import threading
import time
import zlib
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from tests.helpers import free_port


@dataclass(frozen=True)
class Point:
    metric: str
    kind: str  # "sum" or "gauge"
    unit: str
    attributes: tuple[tuple[str, str], ...]
    value: float
    time_ns: int
    start_ns: int
    temporality: int  # AggregationTemporality enum value (0 for gauges)
    monotonic: bool


@dataclass
class Received:
    at: float  # time.time() when accepted
    request: Any  # ExportMetricsServiceRequest
    headers: dict[str, str]

    def resource(self) -> dict[str, str]:
        attrs = {}
        for rm in self.request.resource_metrics:
            for kv in rm.resource.attributes:
                attrs[kv.key] = _value(kv.value)
        return attrs

    def points(self) -> list[Point]:
        found = []
        for rm in self.request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    temporality = getattr(data, "aggregation_temporality", 0)
                    monotonic = getattr(data, "is_monotonic", False)
                    for dp in data.data_points:
                        attrs = tuple(sorted((kv.key, _value(kv.value)) for kv in dp.attributes))
                        value = dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double
                        found.append(
                            Point(
                                metric.name,
                                kind,
                                metric.unit,
                                attrs,
                                float(value),
                                dp.time_unix_nano,
                                dp.start_time_unix_nano,
                                temporality,
                                monotonic,
                            )
                        )
        return found


def _value(any_value) -> str:
    kind = any_value.WhichOneof("value")
    return str(getattr(any_value, kind)) if kind else ""


@dataclass(frozen=True)
class Tls:
    """Server certificate and key (PEM files); client_ca set: clients must present
    a certificate it signed (mutual TLS)."""

    certificate: str
    key: str
    client_ca: str | None = None


class _Base:
    def __init__(self, tls: Tls | None = None) -> None:
        self.tls = tls
        self.port = free_port()
        self.received: list[Received] = []
        self.mode = "ok"  # ok | fail | slow
        self.delay = 0.0
        self.attempts = 0
        self._lock = threading.Lock()

    def _accept(self, request: Any, headers: dict[str, str]) -> bool:
        """False when told to fail; the caller answers with its error."""
        with self._lock:
            self.attempts += 1
        if self.mode == "slow":
            time.sleep(self.delay)
        if self.mode == "fail":
            return False
        with self._lock:
            self.received.append(Received(time.time(), request, headers))
        return True

    def exports(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def collections(self) -> dict[int, list[Received]]:
        """Accepted requests grouped by collect time: one export may be split in batches."""
        groups: dict[int, list[Received]] = {}
        for export in self.exports():
            stamps = {p.time_ns for p in export.points()}
            for stamp in stamps:
                groups.setdefault(stamp, []).append(export)
        return dict(sorted(groups.items()))

    def wait_for_export(self, after: float, timeout: float = 30.0) -> Export:
        """The first complete export whose data was collected after `after` (unix time).

        Complete means a later export has started arriving, so every batch
        of this one is in (the output sends one export's batches in order).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            groups = [(stamp, g) for stamp, g in self.collections().items() if stamp / 1e9 > after]
            if len(groups) >= 2:
                stamp, requests = groups[0]
                points = [p for r in requests for p in r.points() if p.time_ns == stamp]
                return Export(stamp, points, requests[0].resource(), requests[0].headers)
            time.sleep(0.1)
        raise AssertionError(f"no complete OTLP export collected after {after} within {timeout}s")


@dataclass
class Export:
    time_ns: int
    points: list[Point]
    resource: dict[str, str]
    headers: dict[str, str]


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class GrpcReceiver(_Base):
    def __init__(self, tls: Tls | None = None) -> None:
        super().__init__(tls)
        scheme, host = ("https", "localhost") if tls else ("http", "127.0.0.1")
        self.endpoint = f"{scheme}://{host}:{self.port}"
        self._server: grpc.Server | None = None

    def start(self) -> GrpcReceiver:
        receiver = self

        class Service(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):
                headers = {k: v for k, v in context.invocation_metadata()}
                if not receiver._accept(request, headers):
                    context.abort(grpc.StatusCode.UNAVAILABLE, "test receiver told to fail")
                return metrics_service_pb2.ExportMetricsServiceResponse()

        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            options=[("grpc.so_reuseport", 0)],
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Service(), server)
        if self.tls is None:
            server.add_insecure_port(f"127.0.0.1:{self.port}")
        else:
            credentials = grpc.ssl_server_credentials(
                [(read(self.tls.key), read(self.tls.certificate))],
                root_certificates=read(self.tls.client_ca) if self.tls.client_ca else None,
                require_client_auth=self.tls.client_ca is not None,
            )
            server.add_secure_port(f"127.0.0.1:{self.port}", credentials)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None


class HttpReceiver(_Base):
    def __init__(self, tls: Tls | None = None) -> None:
        super().__init__(tls)
        scheme, host = ("https", "localhost") if tls else ("http", "127.0.0.1")
        self.endpoint = f"{scheme}://{host}:{self.port}"
        self._httpd: ThreadingHTTPServer | None = None

    def start(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/metrics":
                    self._answer(404, b"")
                    return
                request = metrics_service_pb2.ExportMetricsServiceRequest()
                request.ParseFromString(body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                if not receiver._accept(request, headers):
                    self._answer(500, b"test receiver told to fail")
                    return
                self._answer(
                    200, metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                )

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._httpd = Server(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.certificate, self.tls.key)
            if self.tls.client_ca:
                context.load_verify_locations(self.tls.client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


if __name__ == "__main__":
    # A receiver in its own process (the benchmark's collector): prints its
    # endpoint, serves until stdin closes, then prints how many requests it took.
    import sys

    receiver = (GrpcReceiver if sys.argv[1] == "grpc" else HttpReceiver)().start()
    print(receiver.endpoint, flush=True)
    sys.stdin.read()
    print(len(receiver.exports()), flush=True)
    receiver.stop()
