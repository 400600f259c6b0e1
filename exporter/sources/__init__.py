"""Metric sources. Each has a tiny protocol: start(), collect(), close().

start() loads what the source needs (and may raise; the agent then reports
the source down and carries on), collect() reads kernel maps or background
snapshots and returns MetricFamily objects (it must be fast: it runs inside
a scrape), close() releases everything and is safe to call twice.
"""

from __future__ import annotations

from typing import Protocol

from exporter.model import MetricFamily


class Source(Protocol):
    name: str

    def start(self) -> None: ...

    def collect(self) -> list[MetricFamily]: ...

    def close(self) -> None: ...

    def describe(self) -> str:
        """One line for logs and the landing page: hook, variant, sizes."""
        ...


class SourceAbsent(Exception):
    """Raised by start() when the thing a source reads is not on this node
    (e.g. no GPU): the agent lists the source as absent, quietly, not down."""
