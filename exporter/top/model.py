"""Rates, rows and ranking for `orb8 top`: pure functions of recorded scrapes.

A rate is a series' increase between two scrapes over the time between them,
summed per row (a pod, a container, or a cgroup off Kubernetes). Per series,
as Prometheus does it:

- a value below the one before is a counter reset: the increase is the new
  value (it counted from 0);
- a series that vanished and comes back (a cgroup retired after its grace,
  then the identity in use again: orb8 continues its count) continues from
  the value last seen within `memory` seconds;
- a series never seen before counts its whole value, except on the first
  scrape: orb8 creates a series at its first event, so a pod that makes one
  ptrace between two scrapes shows it, never hides it (cost: a pod whose
  series move from its cgroup path to its pod labels when the pod becomes
  known shows its count once as a burst);
- NaN and infinite values are no count (a gauge shows "-").
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from exporter.top.parse import Families, Labels, LineParser

SYSCALLS = "orb8_syscalls_total"
DANGEROUS = "orb8_dangerous_syscalls_total"
NOVEL = "orb8_syscall_novel_total"
NET_BYTES = "orb8_network_bytes_total"
NET_PACKETS = "orb8_network_packets_total"
TCP_RESETS = "orb8_tcp_resets_total"
TCP_RETRANSMITS = "orb8_tcp_retransmits_total"
FLOW_BYTES = "orb8_flow_bytes_total"
GPU_MEMORY = "orb8_gpu_memory_used_bytes"
GPU_SM = "orb8_gpu_utilization"
BUILD_INFO = "orb8_build_info"
PROBE_UP = "orb8_probe_up"
MAP_ENTRIES = "orb8_bpf_map_entries"
MAP_CAPACITY = "orb8_bpf_map_capacity"
RING_DROPS = "orb8_ring_buffer_drops_total"
MAP_FAILURES = "orb8_bpf_map_update_failures_total"

ROW_COUNTERS = (
    SYSCALLS,
    DANGEROUS,
    NOVEL,
    NET_BYTES,
    NET_PACKETS,
    TCP_RESETS,
    TCP_RETRANSMITS,
    FLOW_BYTES,
)
ROW_GAUGES = (GPU_MEMORY, GPU_SM)
HEADER_FAMILIES = (BUILD_INFO, PROBE_UP, MAP_ENTRIES, MAP_CAPACITY, RING_DROPS, MAP_FAILURES)
# Families whose increase over the window (not only the last interval) is shown.
WINDOWED = (DANGEROUS, NOVEL)
WANTED = frozenset(ROW_COUNTERS + ROW_GAUGES + HEADER_FAMILIES)


@dataclass(frozen=True)
class Scrape:
    time: float  # monotonic seconds when the scrape was taken
    families: Families
    size: int = 0  # bytes of exposition text
    took: float = 0.0  # seconds the fetch and parse took


@dataclass(frozen=True)
class Ident:
    namespace: str
    pod: str
    container: str
    cgroup: str


def printable(text: str) -> str:
    """Control characters written as \\xHH: a cgroup directory may be named with
    any byte (ESC included), and its name reaches a terminal here."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def ident_of(labels: Labels) -> Ident:
    found = {"namespace": "", "pod": "", "container": "", "cgroup": ""}
    for key, value in labels:
        if key in found:
            found[key] = printable(value)
    return Ident(found["namespace"], found["pod"], found["container"], found["cgroup"])


def row_key(ident: Ident, containers: bool) -> str:
    """A pod (or its container), or a cgroup path for anything not a pod; a
    string, so that summing 60,000 series into rows hashes cached strings."""
    if ident.pod:
        if containers:
            return "\x1f".join(("pod", ident.namespace, ident.pod, ident.container))
        return "\x1f".join(("pod", ident.namespace, ident.pod))
    return "\x1f".join(("cgroup", ident.cgroup))


def row_name(key: str) -> str:
    kind, *parts = key.split("\x1f")
    return "/".join(parts) if kind == "pod" else parts[0]


class Info:
    """What a series' labels mean to the view, made once per label set (the
    parser caches it with them)."""

    __slots__ = ("ctr_key", "detail", "ident", "ingress", "labels", "pod_key")

    def __init__(self, family: str, labels: Labels) -> None:
        found = dict(labels)
        self.labels = labels
        self.ident = ident_of(labels)
        self.pod_key = row_key(self.ident, False)
        self.ctr_key = row_key(self.ident, True)
        self.ingress = found.get("direction") == "ingress"
        self.detail = found.get("syscall", "?")
        if family == FLOW_BYTES:
            klass, ns, pod = (
                found.get(k, "") for k in ("peer_class", "peer_namespace", "peer_pod")
            )
            name = f"{ns}/{pod}" if pod else klass or "?"
            protocol = found.get("protocol", "")
            self.detail = f"{name} ({protocol})" if protocol else name
        self.detail = printable(self.detail)


def parser() -> LineParser:
    """The parser top's model reads: wanted families, labels with their Info."""
    return LineParser(WANTED, derive=Info)


# (family, info, value, increase since the previous scrape: None on the first
# scrape and for gauges). A plain tuple: a NamedTuple's Python-level __new__
# was the largest single cost of a frame at 57,000 series.
Point = tuple[str, Info, float, float | None]


@dataclass
class Header:
    version: str = ""
    kernel: str = ""
    probes: dict[str, bool] = field(default_factory=dict)
    maps: dict[str, tuple[float, float]] = field(default_factory=dict)  # entries, capacity
    ring_drops: float = 0.0
    map_failures: float = 0.0

    @property
    def fullest_map(self) -> tuple[str, float] | None:
        """(map, fill 0..1) of the fullest bounded map."""
        fills = [(name, e / c) for name, (e, c) in self.maps.items() if c > 0]
        return max(fills, key=lambda f: f[1]) if fills else None


def _labelled(families: Families, name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(info.labels), value) for (_, info), value in families.get(name, {}).values()]


def header_of(families: Families) -> Header:
    header = Header()
    for found, _ in _labelled(families, BUILD_INFO):
        header.version, header.kernel = found.get("version", ""), found.get("kernel", "")
    for found, value in _labelled(families, PROBE_UP):
        header.probes[found.get("probe", "")] = value == 1
    entries = {lb.get("map", ""): v for lb, v in _labelled(families, MAP_ENTRIES)}
    capacity = {lb.get("map", ""): v for lb, v in _labelled(families, MAP_CAPACITY)}
    for name in sorted(entries.keys() & capacity.keys()):
        if math.isfinite(entries[name]) and math.isfinite(capacity[name]):
            header.maps[name] = (entries[name], capacity[name])
    header.ring_drops = _finite_sum(v for _, v in _labelled(families, RING_DROPS))
    header.map_failures = _finite_sum(v for _, v in _labelled(families, MAP_FAILURES))
    return header


def _finite_sum(values: Iterable[float]) -> float:
    return sum(v for v in values if math.isfinite(v))


@dataclass
class Frame:
    """What one scrape shows, before it is cut into rows."""

    time: float
    interval: float | None  # seconds since the previous scrape; None on the first
    points: list[Point]
    window_points: list[Point]  # increases of WINDOWED families within the window
    header: Header
    size: int = 0
    took: float = 0.0
    _rows: dict[bool, list[Row]] = field(default_factory=dict)

    def rows(self, containers: bool = False) -> list[Row]:
        """rows_of, made once per frame and mode (the scraper thread makes the
        mode in view, so the UI thread only sorts and filters)."""
        if containers not in self._rows:
            self._rows[containers] = rows_of(self, containers)
        return self._rows[containers]


@dataclass
class Tracker:
    """Turns consecutive scrapes (parsed by `parser()`) into frames; keeps
    what the rates need: each counter's last value, and for a while those of
    vanished series."""

    window: float = 60.0
    memory: float = 600.0  # how long a vanished series' last value is remembered
    _last: dict[str, dict[str, float]] = field(default_factory=dict)
    _gone: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    _last_time: float | None = None
    _history: deque[tuple[float, list[Point]]] = field(default_factory=deque)

    def update(self, scrape: Scrape) -> Frame:
        now = scrape.time
        first = self._last_time is None
        interval = None if self._last_time is None else now - self._last_time
        points: list[Point] = []
        windowed: list[Point] = []
        isfinite = math.isfinite
        for family in ROW_GAUGES:
            for (_, info), value in scrape.families.get(family, {}).values():
                points.append((family, info, value, None))
        for family in ROW_COUNTERS:
            last = self._last.get(family, {})
            gone = self._gone.get(family, {})
            kept: dict[str, float] = {}
            window = family in WINDOWED
            for raw, ((_, info), value) in scrape.families.get(family, {}).items():
                if not isfinite(value):
                    continue  # a NaN counter is no count
                kept[raw] = value
                increase: float | None = None
                if not first:
                    before = last.get(raw)
                    if before is None and raw in gone:
                        before = gone[raw][0]
                    # a new series, or a counter reset, counted from 0
                    increase = value if before is None or value < before else value - before
                point: Point = (family, info, value, increase)
                points.append(point)
                if window and increase:
                    windowed.append(point)
            still_gone = {
                raw: old
                for raw, old in gone.items()
                if raw not in kept and now - old[1] < self.memory
            }
            for raw, value in last.items():
                if raw not in kept:
                    still_gone[raw] = (value, now)
            self._last[family], self._gone[family] = kept, still_gone
        self._last_time = now
        self._history.append((now, windowed))
        while self._history and self._history[0][0] <= now - self.window:
            self._history.popleft()
        window_points = [p for _, batch in self._history for p in batch]
        header = header_of(scrape.families)
        return Frame(now, interval, points, window_points, header, scrape.size, scrape.took)


@dataclass
class Row:
    key: str
    name: str
    namespace: str = ""
    pod: str = ""
    container: str = ""
    cgroup: str = ""
    syscalls: float | None = None  # per second
    dangerous: float = 0.0  # total since orb8 started counting
    dangerous_window: float = 0.0  # within the window
    novel: float = 0.0
    novel_window: float = 0.0
    rx: float | None = None  # bytes per second
    tx: float | None = None
    packets: float | None = None  # per second, both directions
    resets: float | None = None
    retransmits: float | None = None
    gpu_memory: float | None = None  # bytes
    gpu_sm: float | None = None  # percent of SM time
    top_syscalls: dict[str, float] = field(default_factory=dict)  # per second
    syscall_totals: dict[str, float] = field(default_factory=dict)
    dangerous_syscalls: dict[str, float] = field(default_factory=dict)  # totals
    peers: dict[str, list[float]] = field(default_factory=dict)  # peer -> [rx/s, tx/s]

    @property
    def alert(self) -> bool:
        """Dangerous calls within the window: the row is highlighted."""
        return self.dangerous_window > 0

    def as_json(self) -> dict[str, Any]:
        keys = ("name", "namespace", "pod", "container", "cgroup", "syscalls", "dangerous",
                "dangerous_window", "novel", "novel_window", "rx", "tx", "packets", "resets",
                "retransmits", "gpu_memory", "gpu_sm")  # fmt: skip
        out: dict[str, Any] = {k: _json_number(getattr(self, k)) for k in keys}
        out["top_syscalls"] = dict(_top(self.top_syscalls, 10))
        out["dangerous_syscalls"] = dict(_top(self.dangerous_syscalls, 10))
        out["top_peers"] = [
            {"peer": peer, "rx": rx, "tx": tx} for peer, (rx, tx) in top_peers(self, 10)
        ]
        return out


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _top(values: dict[str, float], n: int) -> list[tuple[str, float]]:
    return sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def top_syscalls(row: Row, n: int = 10) -> list[tuple[str, float]]:
    return _top(row.top_syscalls, n)


def top_peers(row: Row, n: int = 10) -> list[tuple[str, tuple[float, float]]]:
    ranked = sorted(row.peers.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0]))
    return [(peer, (rx, tx)) for peer, (rx, tx) in ranked[:n]]


RATES = ("syscalls", "rx", "tx", "packets", "resets", "retransmits")


def rows_of(frame: Frame, containers: bool = False) -> list[Row]:
    """One row per pod (or container) and per non-pod cgroup, unsorted."""
    rows: dict[str, Row] = {}
    per_second = 1.0 / frame.interval if frame.interval else None

    def row_for(info: Info) -> Row:
        key = info.ctr_key if containers else info.pod_key
        row = rows.get(key)
        if row is None:
            ident = info.ident
            row = rows[key] = Row(
                key,
                row_name(key),
                ident.namespace,
                ident.pod,
                ident.container if containers or not ident.pod else "",
                "" if ident.pod else ident.cgroup,
            )
            if per_second is not None:
                # A row present for a whole interval with no traffic is 0/s, not unknown.
                for attr in RATES:
                    setattr(row, attr, 0.0)
        return row

    for family, info, value, increase in frame.points:
        row = row_for(info)
        if family in (GPU_MEMORY, GPU_SM):
            if math.isfinite(value):
                attr = "gpu_memory" if family == GPU_MEMORY else "gpu_sm"
                current = getattr(row, attr)
                setattr(row, attr, value if current is None else current + value)
            continue
        if family == SYSCALLS:
            totals = row.syscall_totals
            totals[info.detail] = totals.get(info.detail, 0.0) + value
        elif family == DANGEROUS:
            row.dangerous += value
            found = row.dangerous_syscalls
            found[info.detail] = found.get(info.detail, 0.0) + value
        elif family == NOVEL:
            row.novel += value
        if per_second is None or increase is None:
            continue
        rate = increase * per_second
        if family == SYSCALLS:
            row.syscalls += rate  # type: ignore[operator]
            top = row.top_syscalls
            top[info.detail] = top.get(info.detail, 0.0) + rate
        elif family == NET_BYTES:
            if info.ingress:
                row.rx += rate  # type: ignore[operator]
            else:
                row.tx += rate  # type: ignore[operator]
        elif family == NET_PACKETS:
            row.packets += rate  # type: ignore[operator]
        elif family == TCP_RESETS:
            row.resets += rate  # type: ignore[operator]
        elif family == TCP_RETRANSMITS:
            row.retransmits += rate  # type: ignore[operator]
        elif family == FLOW_BYTES:
            pair = row.peers.setdefault(info.detail, [0.0, 0.0])
            pair[0 if info.ingress else 1] += rate
    for family, info, _, increase in frame.window_points:
        row = row_for(info)
        if family == DANGEROUS:
            row.dangerous_window += increase or 0
        else:
            row.novel_window += increase or 0
    return list(rows.values())


@dataclass(frozen=True)
class Column:
    attr: str
    title: str
    key: str  # the key that sorts by it
    unit: str  # "name", "rate", "count", "bytes", "bytes_rate", "percent"
    gpu: bool = False  # shown only when some row has GPU data


# The name comes last, as COMMAND in top(1): cgroup paths can be long, and a
# cut name still leaves every figure on screen.
COLUMNS = (
    Column("syscalls", "SYSCALLS/s", "s", "rate"),
    Column("dangerous", "DANGER", "d", "count"),
    Column("dangerous_window", "DANGER/win", "w", "count"),
    Column("novel", "NOVEL", "v", "count"),
    Column("rx", "RX B/s", "i", "bytes_rate"),
    Column("tx", "TX B/s", "o", "bytes_rate"),
    Column("packets", "PKTS/s", "p", "rate"),
    Column("resets", "RST/s", "r", "rate"),
    Column("retransmits", "RETX/s", "t", "rate"),
    Column("gpu_memory", "GPU MEM", "g", "bytes", gpu=True),
    Column("gpu_sm", "SM %", "u", "percent", gpu=True),
    Column("name", "NAME", "n", "name"),
)
COLUMN_BY_KEY = {c.key: c for c in COLUMNS}
COLUMN_BY_ATTR = {c.attr: c for c in COLUMNS}


def columns_for(rows: list[Row]) -> list[Column]:
    gpu = any(r.gpu_memory is not None or r.gpu_sm is not None for r in rows)
    return [c for c in COLUMNS if gpu or not c.gpu]


def rank(rows: Iterable[Row], attr: str = "syscalls", descending: bool = True) -> list[Row]:
    """Sorted by `attr`; unknown values (None, NaN) last either way, ties by name."""
    if attr == "name":
        return sorted(rows, key=lambda r: r.name, reverse=descending)
    known: list[Row] = []
    unknown: list[Row] = []
    for row in rows:
        value = getattr(row, attr)
        (known if value is not None and math.isfinite(value) else unknown).append(row)
    known.sort(key=lambda r: r.name)
    known.sort(key=lambda r: getattr(r, attr), reverse=descending)
    unknown.sort(key=lambda r: r.name)
    return known + unknown


def matches(row: Row, query: str) -> bool:
    """Every word of `query` is in the row's name (namespace/pod/container or
    cgroup path), case-insensitively; `ns=NAME` matches the namespace exactly."""
    name = row.name.lower()
    for word in query.lower().split():
        if word.startswith("ns="):
            if row.namespace.lower() != word[3:]:
                return False
        elif word not in name:
            return False
    return True


def select(
    frame: Frame,
    sort: str = "syscalls",
    descending: bool = True,
    query: str = "",
    containers: bool = False,
) -> list[Row]:
    rows = frame.rows(containers)
    if query:
        rows = [r for r in rows if matches(r, query)]
    return rank(rows, sort, descending)
