"""The one internal metric model: what sources produce and every output reads.

A source's collect() returns MetricFamily objects; the Prometheus output
renders them as exposition text, and the OTLP output will map the same
families to instruments. Keeping this small and output-agnostic is what lets
both outputs agree on names, types and labels.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

MetricType = Literal["counter", "gauge", "histogram"]

# Identity labels carried by every per-workload series, in this order.
IDENTITY_LABELS = ("namespace", "pod", "container", "cgroup")


class Identity(NamedTuple):
    """Who a cgroup belongs to. Plain-host cgroups have empty pod fields."""

    namespace: str = ""
    pod: str = ""
    container: str = ""
    cgroup: str = ""


UNRESOLVED = Identity(cgroup="<unresolved>")


@dataclass
class MetricFamily:
    name: str  # full name, counters included their _total suffix
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    # (OTLP name, UCUM unit) of a family declared by a MetricSpec; None: the
    # table in exporter/outputs/otlp_names.py names it.
    otlp: tuple[str, str] | None = None
    # Labels whose OTLP attribute key this family's declaration chose itself
    # (MetricSpec.otlp_attributes), over otlp_names' table: (label, key).
    otlp_attributes: tuple[tuple[str, str], ...] = ()
    # Histograms: the finite bucket upper bounds (+Inf is implied), and per
    # series (label values, cumulative counts per bound and +Inf, sum).
    # `samples` stays empty for a histogram.
    buckets: tuple[float, ...] = ()
    histograms: list[tuple[tuple[str, ...], tuple[float, ...], float]] = field(default_factory=list)

    def add(self, label_values: tuple[str, ...], value: float) -> None:
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name}: expected {len(self.labels)} label values")
        if not "".join(label_values).isascii():  # cheap for the usual ASCII labels
            label_values = tuple(map(safe_label, label_values))
        # A value that is not a number fails here, in the source's collect
        # (the source is reported down), not in rendering (the whole scrape).
        self.samples.append((label_values, float(value)))

    def add_histogram(
        self, label_values: tuple[str, ...], cumulative: tuple[float, ...], total: float
    ) -> None:
        """One histogram series: cumulative counts for each bound and +Inf
        (so the last is the count), and the sum of the observed values."""
        if self.type != "histogram":
            raise ValueError(f"{self.name}: not a histogram")
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name}: expected {len(self.labels)} label values")
        if len(cumulative) != len(self.buckets) + 1:
            raise ValueError(f"{self.name}: expected {len(self.buckets) + 1} bucket counts")
        if not "".join(label_values).isascii():
            label_values = tuple(map(safe_label, label_values))
        counts = tuple(map(float, cumulative))
        if any(a > b for a, b in itertools.pairwise(counts)):
            raise ValueError(f"{self.name}: bucket counts must be cumulative")
        self.histograms.append((label_values, counts, float(total)))


def safe_label(value: str) -> str:
    """A label value every exposition can encode.

    Label values come from the outside world (cgroup names, pod and
    container names): one that is not valid Unicode (a lone surrogate, e.g.
    from a JSON "\\ud800" escape) would fail the whole scrape. Such code
    points are written as \\uXXXX; valid values are unchanged.
    """
    try:
        value.encode()
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode()


def counter(name: str, help: str, labels: tuple[str, ...] = ()) -> MetricFamily:
    if not name.endswith("_total"):
        raise ValueError(f"counter {name} must end in _total")
    return MetricFamily(name, "counter", help, labels)


def gauge(name: str, help: str, labels: tuple[str, ...] = ()) -> MetricFamily:
    return MetricFamily(name, "gauge", help, labels)


@dataclass(frozen=True)
class MetricSpec:
    """A family's whole declaration, made once by the probe that exports it
    (Probe.metrics): its /metrics name, type, HELP and labels, its OTLP
    instrument (name and UCUM unit, exporter/outputs/otlp_names.py's rules),
    and its row of docs/metrics.md (`doc`, the longer meaning; HELP if empty),
    which `make docs` writes and a test keeps in step.

    The source builds its families from the declaration (`family()`), so the
    name, type and labels it exports cannot drift from what is documented."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]
    otlp: str
    unit: str
    doc: str = ""
    buckets: tuple[float, ...] = ()  # histograms: finite upper bounds, ascending
    # OTLP attribute keys of labels whose meaning differs from otlp_names'
    # table (e.g. a DNS role is not a TCP role): (label, key) pairs.
    otlp_attributes: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if (self.type == "counter") != self.name.endswith("_total"):
            raise ValueError(f"{self.name}: counters, and only counters, end in _total")
        if (self.type == "histogram") != bool(self.buckets):
            raise ValueError(f"{self.name}: histograms, and only histograms, have buckets")
        if self.type == "histogram" and (
            "le" in self.labels or list(self.buckets) != sorted(set(self.buckets))
        ):
            raise ValueError(f"{self.name}: no le label; buckets ascending and distinct")

    def family(self) -> MetricFamily:
        """An empty family to add this collect's samples to."""
        return MetricFamily(
            self.name,
            self.type,
            self.help,
            self.labels,
            otlp=(self.otlp, self.unit),
            otlp_attributes=self.otlp_attributes,
            buckets=self.buckets,
        )
