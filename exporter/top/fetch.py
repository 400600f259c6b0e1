"""Fetching /metrics for `orb8 top`: TLS, client certificates, basic auth, gzip,
and a background thread so the view never waits for a 5-7 MB scrape."""

from __future__ import annotations

import base64
import gc
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exporter.top.model import Frame, Scrape, Tracker, parser

DEFAULT_URL = "http://127.0.0.1:9826/metrics"
MAX_BYTES = 256 << 20  # a runaway endpoint must not take the terminal's memory


class FetchError(Exception):
    """The endpoint could not be read; the message says why, for the status line."""


def normalise_url(url: str) -> str:
    """`host:port` -> http://host:port/metrics; a bare base URL gets /metrics."""
    if "://" not in url:
        url = f"http://{url}"
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/metrics")
    return urllib.parse.urlunsplit(parts)


def node_of(url: str) -> str:
    """The node shown in the header: the URL's host, or this host's name for a
    loopback address (where orb8 names its node the same way by default).
    /metrics carries no node label; port-forwarded URLs show localhost's name."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in ("localhost", "127.0.0.1", "::1"):
        return socket.gethostname().lower()
    return host


@dataclass
class Endpoint:
    url: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False
    username: str | None = None
    password: str | None = None
    timeout: float = 10.0
    max_bytes: int = MAX_BYTES

    def __post_init__(self) -> None:
        self.url = normalise_url(self.url)
        self._context: ssl.SSLContext | None = None
        if self.url.startswith("https://"):
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if self.cert_file:
                context.load_cert_chain(
                    str(self.cert_file), str(self.key_file) if self.key_file else None
                )
            if self.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._context = context

    def fetch(self) -> str:
        request = urllib.request.Request(
            self.url,
            headers={
                "Accept": "text/plain;version=0.0.4",
                "Accept-Encoding": "gzip",
                "User-Agent": "orb8-top",
            },
        )
        if self.username is not None:
            token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self._context
            ) as response:
                body = response.read(self.max_bytes + 1)
                encoding = response.headers.get("Content-Encoding", "")
        except urllib.error.HTTPError as e:
            raise FetchError(f"{self.url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise FetchError(f"{self.url}: {reason}") from None
        if len(body) > self.max_bytes:
            raise FetchError(f"{self.url}: answer larger than {self.max_bytes} bytes")
        if encoding == "gzip":
            try:  # bounded like the body: a small bomb must not take the memory
                inflater = zlib.decompressobj(wbits=31)
                body = inflater.decompress(body, self.max_bytes + 1)
            except zlib.error as e:
                raise FetchError(f"{self.url}: bad gzip: {e}") from None
            if len(body) > self.max_bytes:
                raise FetchError(f"{self.url}: answer larger than {self.max_bytes} bytes")
        return body.decode("utf-8", errors="replace")


class Source:
    """Fetch + parse + rates: one scrape's worth of work, in whatever thread."""

    def __init__(self, endpoint: Endpoint, window: float = 60.0) -> None:
        self.endpoint = endpoint
        self.parser = parser()
        self.tracker = Tracker(window=window)
        self.containers = False  # the mode in view, whose rows each scrape makes

    def scrape(self) -> Frame:
        # Parsing and rates allocate ~100,000 containers per scrape at 1,000
        # containers, none of them cyclic; the collections they trigger re-walk
        # the label cache (~500,000 objects) for nothing: 513 -> 179 ms per
        # update measured (benchmarks/top_parse.py). Collection resumes after.
        enabled = gc.isenabled()
        gc.disable()
        try:
            frame = self._scrape()
            frame.rows(self.containers)
        finally:
            if enabled:
                gc.enable()
        return frame

    def _scrape(self) -> Frame:
        started = time.monotonic()
        text = self.endpoint.fetch()
        families = self.parser.parse(text)
        took = time.monotonic() - started
        return self.tracker.update(Scrape(started, families, len(text), took))


class Scraper(threading.Thread):
    """Scrapes every `interval` seconds and hands each frame (or error text) to
    `publish`; the UI thread only ever renders the latest one."""

    def __init__(
        self, source: Source, interval: float, publish: Callable[[Frame | str], None]
    ) -> None:
        super().__init__(name="orb8-top-scraper", daemon=True)
        self.source = source
        self.interval = interval
        self.publish = publish
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                result: Frame | str = self.source.scrape()
            except FetchError as e:
                result = str(e)
            except Exception as e:  # the view reports it and keeps trying
                result = f"{type(e).__name__}: {e}"
            if self.stopped.is_set():
                return
            self.publish(result)
            self.stopped.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self.stopped.set()
