"""Prometheus output: /metrics (text or OpenMetrics, gzip) and a landing page at /.

Extra plain-text routes (/healthz, /readyz from outputs/health.py) and the
optional web config (TLS + basic auth, outputs/webconfig.py) plug in through
two small hooks: `routes` and `web_config`.

Rendering goes through prometheus_client so escaping and content
negotiation match what Prometheus expects; the families themselves come
from the agent's model, read fresh on every scrape.
"""

from __future__ import annotations

import gzip
import html
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from exporter.config import Listen
from exporter.model import MetricFamily
from exporter.outputs.health import HEALTH_PATHS
from exporter.outputs.webconfig import WebConfig

log = logging.getLogger(__name__)


def to_prometheus(family: MetricFamily) -> Metric:
    metric: Metric
    if family.type == "counter":
        metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
    else:
        metric = GaugeMetricFamily(family.name, family.help, labels=family.labels)
    for label_values, value in family.samples:
        metric.add_metric(list(label_values), value)
    return metric


class _ModelCollector:
    def __init__(self, collect: Callable[[], Iterable[MetricFamily]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        for family in self._collect():
            yield to_prometheus(family)


def build_registry(collect: Callable[[], Iterable[MetricFamily]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ModelCollector(collect))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)  # process_* for the exporter itself
    return registry


class PrometheusServer:
    """HTTP server on its own threads; scrapes never block the agent."""

    def __init__(
        self,
        listen: Listen,
        collect: Callable[[], Iterable[MetricFamily]],
        landing: Callable[[], str],
        routes: Mapping[str, Callable[[], tuple[int, str]]] | None = None,
        web_config: WebConfig | None = None,
    ) -> None:
        self.registry = build_registry(collect)
        registry, render_landing = self.registry, landing
        extra = dict(routes or {})
        auth = web_config.auth if web_config is not None else None
        tls = web_config if web_config is not None and web_config.tls is not None else None

        class Handler(BaseHTTPRequestHandler):
            server_version = "orb8"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if (
                    auth is not None
                    and path not in HEALTH_PATHS
                    and not auth.check(self.headers.get("Authorization"))
                ):
                    self._send(
                        401,
                        "text/plain; charset=utf-8",
                        b"Unauthorized\n",
                        {"WWW-Authenticate": 'Basic realm="orb8"'},
                    )
                    return
                if path in extra:
                    code, text = extra[path]()
                    self._send(code, "text/plain; charset=utf-8", text.encode())
                elif path == "/metrics":
                    self._metrics()
                elif path == "/":
                    self._send(200, "text/html; charset=utf-8", render_landing().encode())
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found; try /metrics\n")

            def _metrics(self) -> None:
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                try:
                    body = encoder(registry)
                except Exception as e:  # a bug, not a source failure: say so
                    log.exception("rendering /metrics failed")
                    self._send(500, "text/plain; charset=utf-8", f"error: {e}\n".encode())
                    return
                headers = {}
                if "gzip" in self.headers.get("Accept-Encoding", ""):
                    body = gzip.compress(body, compresslevel=1)
                    headers["Content-Encoding"] = "gzip"
                self._send(200, content_type, body, headers)

            def _send(
                self,
                code: int,
                content_type: str,
                body: bytes,
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http %s " + format, self.address_string(), *args)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = ThreadingHTTPServer.address_family

            def finish_request(self, request: Any, client_address: Any) -> None:
                if tls is None:
                    super().finish_request(request, client_address)
                    return
                secured = tls.accept(request)  # handshake in this worker thread
                if secured is not None:
                    try:
                        super().finish_request(secured, client_address)
                    finally:
                        secured.close()

        if ":" in listen.host:
            import socket

            Server.address_family = socket.AF_INET6
        self.httpd = Server((listen.host, listen.port), Handler)
        self.address = self.httpd.server_address
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def landing_page(version: str, probes: list[tuple[str, bool, str]]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{'up' if up else 'DOWN'}</td>"
        f"<td>{html.escape(detail)}</td></tr>"
        for name, up, detail in probes
    )
    return (
        "<!doctype html><html><head><title>orb8</title></head><body>"
        f"<h1>orb8 {html.escape(version)}</h1>"
        '<p><a href="/metrics">/metrics</a></p>'
        f"<table><tr><th>probe</th><th>state</th><th>detail</th></tr>{rows}</table>"
        "</body></html>\n"
    )
