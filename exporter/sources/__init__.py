"""Metric sources: the code behind each probe. Each has a tiny protocol:
start(), collect(), close(); and each package declares itself as a Probe
(name, default on/off, its own settings, a factory), listed once in
exporter/registry.py.

start() loads what the source needs (and may raise; the agent then reports
the source down and carries on), collect() reads kernel maps or background
snapshots and returns MetricFamily objects (it must be fast: it runs inside
a scrape), close() releases everything and is safe to call twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from exporter.config import Settings, Spec
from exporter.model import MetricFamily, MetricSpec

if TYPE_CHECKING:
    from exporter.identity import Resolver
    from exporter.kernel.headers import KernelHeaders
    from exporter.kernel.mapmemory import MapDef


class Source(Protocol):
    name: str

    def start(self) -> None: ...

    def collect(self) -> list[MetricFamily]: ...

    def close(self) -> None: ...

    def summary(self) -> str:
        """One line for logs and the landing page: hook, variant, sizes."""
        ...


class SourceAbsent(Exception):
    """Raised by start() when the thing a source reads is not on this node
    (e.g. no GPU): the agent lists the source as absent, quietly, not down."""


@dataclass(frozen=True)
class Context:
    """What a probe's factory gets: every setting (its own and the agent-wide
    ones), the identity resolver, and kernel headers when the probe compiles
    BPF (Probe.bpf)."""

    settings: Settings
    resolver: Resolver
    headers: KernelHeaders | None = None


@dataclass(frozen=True)
class Probe:
    """One probe, as the user sees it (--probes, probe="..." labels): its name,
    whether it is on by default, the settings only it reads (flag, ORB8_*
    variable and YAML key each, see exporter/config.py), and the factory of
    its Source. The factory imports the source lazily, so that parsing
    settings loads neither BCC nor a GPU library."""

    name: str
    default: bool
    settings: tuple[Spec, ...]
    factory: Callable[[Context], Source]
    bpf: bool = False  # compiles BPF: needs kernel headers
    # The kernel maps it creates at these settings (BPF probes): what the
    # memory budget of `orb8 diagnose` adds up and the kernel test checks.
    maps: Callable[[Settings], list[MapDef]] | None = None
    # The metric families only this probe exports, each declared once
    # (name, type, HELP, labels, OTLP instrument, catalogue text): the OTLP
    # table and docs/metrics.md's rows for them are generated from these.
    metrics: tuple[MetricSpec, ...] = ()
