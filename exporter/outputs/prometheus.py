"""Prometheus output: /metrics (text or OpenMetrics, gzip) and a landing page at /.

prometheus_client chooses the format (with q-values, q=0 means no) and
writes process_*; the model's families, nearly all of the body, are written
by exporter.outputs.exposition's renderer, which produces the bytes
prometheus_client's encoder would (tested) about ten times faster, and
falls back to the encoder for anything it does not reproduce exactly. gzip
is negotiated the same way, HEAD is answered like GET without a body, and
concurrent scrapes share one collect. The families come from the agent's
model, read fresh on every scrape. HTTP itself is exporter.outputs.http's
bounded server.

Extra plain-text routes (/healthz, /readyz from outputs/health.py) and the
optional web config (TLS + basic auth, outputs/webconfig.py) plug in through
`routes` and `web_config`: basic auth guards every path but the health ones
(401 for wrong credentials, 429 when a password check is already running and
this client may not wait for it), TLS is the bounded server's own (handshakes
driven by its selector). The health paths have their own HTTP lane.
"""

from __future__ import annotations

import gzip
import html
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from exporter.listen import Listen
from exporter.model import MetricFamily
from exporter.outputs.exposition import Renderer, exposition_form, go_floats, supports
from exporter.outputs.gzipped import GzipCache, plain
from exporter.outputs.health import HEALTH_PATHS
from exporter.outputs.http import BoundedHTTPServer, Request, Response, Route
from exporter.outputs.webconfig import AuthResult, WebConfig

log = logging.getLogger(__name__)

# gzip level of /metrics: 1 (BestSpeed), as Go exporters choose for speed;
# on orb8's text it costs ~3 ms per MB and compresses ~9x (level 6: ~3x
# the time for ~15% less).
GZIP_LEVEL = 1


def to_prometheus(family: MetricFamily) -> Metric:
    metric: Metric
    if family.type == "histogram":
        histogram = HistogramMetricFamily(family.name, family.help, labels=family.labels)
        bounds = [*go_floats(family.buckets), "+Inf"]
        for label_values, cumulative, total in family.histograms:
            histogram.add_metric(
                list(label_values), list(zip(bounds, cumulative, strict=True)), total
            )
        return histogram
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


def build_registry(
    collect: Callable[[], Iterable[MetricFamily]], process: bool = True
) -> CollectorRegistry:
    """The model's families, then (process=True) process_* for the exporter itself."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ModelCollector(collect))  # type: ignore[arg-type]
    if process:
        ProcessCollector(registry=registry)
    return registry


def _q_values(header: str) -> list[tuple[str, float, str]]:
    """(value, q, the entry without q) for each entry of an Accept-style header."""
    entries = []
    for raw in header.split(","):
        parts = [p.strip() for p in raw.split(";")]
        if not parts[0]:
            continue
        q = 1.0
        params = []
        for param in parts[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
            elif param:
                params.append(param)
        if q == q:  # not NaN
            entries.append((parts[0].lower(), q, ";".join([parts[0], *params])))
    return entries


def choose_format(accept: str) -> tuple[Callable[[CollectorRegistry], bytes], str]:
    """prometheus_client's encoder for the Accept header, honouring q-values (q=0 is "no")."""
    ranked = sorted(
        (e for e in _q_values(accept) if e[1] > 0), key=lambda e: e[1], reverse=True
    )  # sorted() is stable: equal q keep the client's order
    preferred = []
    for media_type, _, entry in ranked:
        preferred.append(entry)
        if media_type in ("text/plain", "text/*", "*/*"):
            break  # the classic format ranks here: nothing after it may win
    try:
        return choose_encoder(",".join(preferred))
    except Exception:  # an unparsable version parameter: the classic format always works
        return choose_encoder("")


def gzip_wanted(accept_encoding: str) -> bool:
    """gzip with q > 0, or * with q > 0 when gzip is not named."""
    entries = {value: q for value, q, _ in _q_values(accept_encoding)}
    if "gzip" in entries:
        return entries["gzip"] > 0
    return entries.get("*", 0) > 0


class Coalescer:
    """Concurrent calls with the same key share one computation: a scrape that arrives
    while another one is collecting waits for that collect and gets its result, so N
    simultaneous scrapes cost one collect, not N in a row."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}

    def run(self, key: str, compute: Callable[[], bytes]) -> bytes:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
        else:
            try:
                flight.result = compute()
            except BaseException as e:
                flight.error = e
            finally:
                with self._lock:
                    del self._flights[key]
                flight.done.set()
        if flight.error is not None:
            raise flight.error
        return flight.result


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result = b""
        self.error: BaseException | None = None


class PrometheusServer:
    """/metrics and the landing page on a BoundedHTTPServer; scrapes never block the agent.

    The socket is bound in the constructor, so an unusable --listen fails before
    anything slow (probe compilation) starts; serving begins with start().
    """

    def __init__(
        self,
        listen: Listen,
        collect: Callable[[], Iterable[MetricFamily]],
        landing: Callable[[], str],
        routes: Mapping[str, Callable[[], tuple[int, str]]] | None = None,
        web_config: WebConfig | None = None,
    ) -> None:
        self.registry = build_registry(collect, process=False)
        self._collect = collect
        self._process = ProcessCollector(registry=None)
        self.registry.register(self._process)  # the whole registry, for the fallback
        self.process_registry = CollectorRegistry(auto_describe=False)
        self.process_registry.register(self._process)
        self.renderer = Renderer()
        self.gzip = GzipCache(GZIP_LEVEL)
        self.coalescer = Coalescer()
        self._landing = landing
        self.routes: dict[str, Route] = {"/metrics": self.metrics, "/": self.landing}
        for path, answer in (routes or {}).items():
            self.routes[path] = _plain_text(answer)
        auth = web_config.auth if web_config is not None else None
        if auth is not None:
            for path, route in self.routes.items():
                if path not in HEALTH_PATHS:
                    self.routes[path] = _authenticated(route, auth.verify)
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        self.httpd = BoundedHTTPServer(
            (listen.host, listen.port),
            self.routes,
            family=family,
            tls=web_config.tls if web_config is not None else None,
            fast_paths=[path for path in HEALTH_PATHS if path in self.routes],
        )
        self.address = self.httpd.address

    def metrics(self, request: Request) -> Response:
        encoder, content_type = choose_format(request.headers.get("Accept", ""))
        compress = gzip_wanted(request.headers.get("Accept-Encoding", ""))

        def render() -> bytes:
            return self.render(encoder, compress)

        try:
            body = self.coalescer.run(f"{content_type}|{compress}", render)
        except Exception as e:  # a bug, not a source failure: say so
            log.error("rendering /metrics failed: %s: %s", type(e).__name__, e)
            return Response(500, "text/plain; charset=utf-8", f"error: {e}\n".encode())
        headers = {"Vary": "Accept, Accept-Encoding"}
        if compress:
            headers["Content-Encoding"] = "gzip"
        return Response(200, content_type, body, headers)

    def render(
        self, encoder: Callable[[CollectorRegistry], bytes], compress: bool = False
    ) -> bytes:
        """The body `encoder` would write for the whole registry (gzipped: compress)."""
        form = exposition_form(encoder)
        body: bytes
        if form is None:
            body = encoder(self.registry)
        else:
            families = list(self._collect())
            if all(map(supports, families)):
                # process_* follow the model's families, as in the registry; the
                # encoder writes them and OpenMetrics' closing "# EOF".
                pieces = self.renderer.pieces(families, form)
                tail = encoder(self.process_registry)
                if compress:
                    return self.gzip.compress(pieces, tail)
                return plain(pieces) + tail
            whole = build_registry(lambda: families, process=False)
            whole.register(self._process)
            body = encoder(whole)
        return gzip.compress(body, compresslevel=GZIP_LEVEL) if compress else body

    def landing(self, request: Request) -> Response:
        return Response(200, "text/html; charset=utf-8", self._landing().encode())

    def start(self) -> None:
        self.httpd.start()

    def close(self) -> None:
        self.httpd.close()


def _plain_text(answer: Callable[[], tuple[int, str]]) -> Route:
    def route(request: Request) -> Response:
        status, text = answer()
        return Response(status, "text/plain; charset=utf-8", text.encode())

    return route


def _authenticated(route: Route, verify: Callable[[str | None, str], AuthResult]) -> Route:
    def guarded(request: Request) -> Response:
        result = verify(request.headers.get("Authorization"), request.client)
        if result is AuthResult.BUSY:
            # Another password is being checked (one bcrypt at a time): retry soon.
            return Response(
                429, "text/plain; charset=utf-8", b"Too Many Requests\n", {"Retry-After": "1"}
            )
        if result is not AuthResult.OK:
            return Response(
                401,
                "text/plain; charset=utf-8",
                b"Unauthorized\n",
                {"WWW-Authenticate": 'Basic realm="orb8"'},
            )
        return route(request)

    return guarded


def landing_page(version: str, probes: list[tuple[str, bool | str, str]]) -> str:
    """probes: (name, up, detail); a str state (e.g. "absent") is shown as is."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        f"<td>{html.escape(up) if isinstance(up, str) else 'up' if up else 'DOWN'}</td>"
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
