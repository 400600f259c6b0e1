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

from exporter.top.parse import Families, Labels

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


def ident_of(labels: Labels) -> Ident:
    found = {"namespace": "", "pod": "", "container": "", "cgroup": ""}
    for key, value in labels:
        if key in found:
            found[key] = value
    return Ident(found["namespace"], found["pod"], found["container"], found["cgroup"])


def row_key(ident: Ident, containers: bool) -> tuple[str, ...]:
    """A pod (or its container), or a cgroup path for anything not a pod."""
    if ident.pod:
        if containers:
            return ("pod", ident.namespace, ident.pod, ident.container)
        return ("pod", ident.namespace, ident.pod)
    return ("cgroup", ident.cgroup)


def row_name(key: tuple[str, ...]) -> str:
    return "/".join(key[1:]) if key[0] == "pod" else key[1]


@dataclass(frozen=True)
class Point:
    family: str
    ident: Ident
    labels: Labels
    value: float
    increase: float | None  # since the previous scrape; None on the first and for gauges


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


def header_of(families: Families) -> Header:
    header = Header()
    for labels, _ in families.get(BUILD_INFO, {}).values():
        found = dict(labels)
        header.version, header.kernel = found.get("version", ""), found.get("kernel", "")
    for labels, value in families.get(PROBE_UP, {}).values():
        header.probes[dict(labels).get("probe", "")] = value == 1
    entries = {dict(lb).get("map", ""): v for lb, v in families.get(MAP_ENTRIES, {}).values()}
    capacity = {dict(lb).get("map", ""): v for lb, v in families.get(MAP_CAPACITY, {}).values()}
    for name in sorted(entries.keys() & capacity.keys()):
        if math.isfinite(entries[name]) and math.isfinite(capacity[name]):
            header.maps[name] = (entries[name], capacity[name])
    header.ring_drops = _finite_sum(v for _, v in families.get(RING_DROPS, {}).values())
    header.map_failures = _finite_sum(v for _, v in families.get(MAP_FAILURES, {}).values())
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


@dataclass
class Tracker:
    """Turns consecutive scrapes into frames; keeps what the rates need."""

    window: float = 60.0
    memory: float = 600.0  # how long a vanished series' last value is remembered
    _last: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    _last_time: float | None = None
    _history: deque[tuple[float, list[Point]]] = field(default_factory=deque)
    _idents: dict[Labels, Ident] = field(default_factory=dict)

    def update(self, scrape: Scrape) -> Frame:
        now = scrape.time
        first = self._last_time is None
        interval = None if self._last_time is None else now - self._last_time
        points: list[Point] = []
        idents: dict[Labels, Ident] = {}
        old_idents = self._idents
        windowed: list[Point] = []
        for family in ROW_COUNTERS + ROW_GAUGES:
            counter = family in ROW_COUNTERS
            current = scrape.families.get(family, {})
            last = self._last.get(family, {})
            kept: dict[str, tuple[float, float]] = {}
            for raw, (labels, value) in current.items():
                ident = idents.get(labels) or old_idents.get(labels) or ident_of(labels)
                idents[labels] = ident
                if not counter:
                    points.append(Point(family, ident, labels, value, None))
                    continue
                if not math.isfinite(value):
                    continue
                kept[raw] = (value, now)
                increase: float | None = None
                if not first:
                    before = last.get(raw)
                    # a new series, or a counter reset, counted from 0
                    reset = before is None or value < before[0]
                    increase = value if reset else value - before[0]  # type: ignore[index]
                point = Point(family, ident, labels, value, increase)
                points.append(point)
                if family in WINDOWED and increase:
                    windowed.append(point)
            if counter:
                for raw, (value, seen) in last.items():
                    if raw not in kept and now - seen < self.memory:
                        kept[raw] = (value, seen)
                self._last[family] = kept
        self._idents = idents
        self._last_time = now
        self._history.append((now, windowed))
        while self._history and self._history[0][0] <= now - self.window:
            self._history.popleft()
        window_points = [p for _, batch in self._history for p in batch]
        header = header_of(scrape.families)
        return Frame(now, interval, points, window_points, header, scrape.size, scrape.took)


@dataclass
class Row:
    key: tuple[str, ...]
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


def _peer(labels: Labels) -> str:
    found = dict(labels)
    klass, ns, pod = (
        found.get("peer_class", ""),
        found.get("peer_namespace", ""),
        found.get("peer_pod", ""),
    )
    name = f"{ns}/{pod}" if pod else klass or "?"
    protocol = found.get("protocol", "")
    return f"{name} ({protocol})" if protocol else name


def _add(row: Row, attr: str, amount: float) -> None:
    current = getattr(row, attr)
    setattr(row, attr, amount if current is None else current + amount)


def rows_of(frame: Frame, containers: bool = False) -> list[Row]:
    """One row per pod (or container) and per non-pod cgroup, unsorted."""
    rows: dict[tuple[str, ...], Row] = {}
    per_second = 1.0 / frame.interval if frame.interval else None

    def row_for(ident: Ident) -> Row:
        key = row_key(ident, containers)
        row = rows.get(key)
        if row is None:
            row = rows[key] = Row(
                key,
                row_name(key),
                ident.namespace,
                ident.pod,
                ident.container if containers or not ident.pod else "",
                "" if ident.pod else ident.cgroup,
            )
        return row

    for point in frame.points:
        row = row_for(point.ident)
        family = point.family
        if family in (GPU_MEMORY, GPU_SM):
            if math.isfinite(point.value):
                _add(row, "gpu_memory" if family == GPU_MEMORY else "gpu_sm", point.value)
            continue
        if family == DANGEROUS:
            row.dangerous += point.value
            syscall = dict(point.labels).get("syscall", "?")
            row.dangerous_syscalls[syscall] = row.dangerous_syscalls.get(syscall, 0) + point.value
        elif family == NOVEL:
            row.novel += point.value
        rate = None if per_second is None or point.increase is None else point.increase * per_second
        if family == SYSCALLS:
            syscall = dict(point.labels).get("syscall", "?")
            row.syscall_totals[syscall] = row.syscall_totals.get(syscall, 0) + point.value
        if rate is None:
            continue
        if family == SYSCALLS:
            _add(row, "syscalls", rate)
            syscall = dict(point.labels).get("syscall", "?")
            row.top_syscalls[syscall] = row.top_syscalls.get(syscall, 0) + rate
        elif family == NET_BYTES:
            ingress = dict(point.labels).get("direction") == "ingress"
            _add(row, "rx" if ingress else "tx", rate)
        elif family == NET_PACKETS:
            _add(row, "packets", rate)
        elif family == TCP_RESETS:
            _add(row, "resets", rate)
        elif family == TCP_RETRANSMITS:
            _add(row, "retransmits", rate)
        elif family == FLOW_BYTES:
            ingress = dict(point.labels).get("direction") == "ingress"
            pair = row.peers.setdefault(_peer(point.labels), [0.0, 0.0])
            pair[0 if ingress else 1] += rate
    for point in frame.window_points:
        row = row_for(point.ident)
        if point.family == DANGEROUS:
            row.dangerous_window += point.increase or 0
        else:
            row.novel_window += point.increase or 0
    if per_second is not None:
        # A row present for a whole interval with no traffic is 0/s, not unknown.
        for row in rows.values():
            for attr in ("syscalls", "rx", "tx", "packets", "resets", "retransmits"):
                if getattr(row, attr) is None:
                    setattr(row, attr, 0.0)
    return list(rows.values())


@dataclass(frozen=True)
class Column:
    attr: str
    title: str
    key: str  # the key that sorts by it
    unit: str  # "name", "rate", "count", "bytes", "bytes_rate", "percent"
    gpu: bool = False  # shown only when some row has GPU data


COLUMNS = (
    Column("name", "NAME", "n", "name"),
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
    rows = rows_of(frame, containers)
    if query:
        rows = [r for r in rows if matches(r, query)]
    return rank(rows, sort, descending)
