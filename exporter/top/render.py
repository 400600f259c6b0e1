"""Text for `orb8 top`: number formats, the header, the plain table (--once)
and JSON (--json). Shared by the live view so both show the same figures."""

from __future__ import annotations

import json
import math
from typing import Any

from exporter.top.model import Column, Frame, Header, Row, columns_for, top_peers, top_syscalls

ALERT_MARK = "!"  # first on the line of a row with dangerous calls in the window


def human(value: float | None, unit: str) -> str:
    """Short, fixed-ish width figures: 1.2k, 3.4M; bytes in binary units."""
    if value is None or not math.isfinite(value):
        return "-"
    if unit == "percent":
        return f"{value:.0f}"
    if "bytes" in unit:
        base, suffixes = 1024.0, ("", "K", "M", "G", "T")
    else:
        base, suffixes = 1000.0, ("", "k", "M", "G", "T")
    if unit == "count" and value == int(value) and abs(value) < 100_000:
        return str(int(value))
    magnitude = abs(value)
    for suffix in suffixes:
        if magnitude < base or suffix == suffixes[-1]:
            break
        value /= base
        magnitude /= base
    if suffix == "":
        return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}"
    return f"{value:.1f}{suffix}"


def cell(row: Row, column: Column) -> str:
    if column.attr == "name":
        return row.name
    return human(getattr(row, column.attr), column.unit)


def mark(row: Row) -> str:
    return ALERT_MARK if row.alert else " "


def header_lines(header: Header, node: str, frame: Frame | None, window: float) -> list[str]:
    probes = " ".join(
        f"{name}:{'up' if up else 'DOWN'}" for name, up in sorted(header.probes.items())
    )
    fullest = header.fullest_map
    fill = f"{fullest[0]} {fullest[1]:.0%}" if fullest else "-"
    lines = [
        f"orb8 top  node {node}  orb8 {header.version or '?'}  kernel {header.kernel or '?'}",
        f"probes {probes or '-'}  fullest map {fill}  lost: ring buffer "
        f"{human(header.ring_drops, 'count')}, map full {human(header.map_failures, 'count')}",
    ]
    if frame is not None:
        every = f"{frame.interval:.1f}s" if frame.interval else "-"
        lines.append(
            f"rates over {every}  window {window:.0f}s  scrape "
            f"{human(frame.size, 'bytes')}B in {frame.took * 1000:.0f} ms"
        )
    return lines


def table(rows: list[Row], columns: list[Column] | None = None, limit: int | None = None) -> str:
    """A plain aligned table (no colours): for scripts and bug reports."""
    columns = columns or columns_for(rows)
    shown = rows if limit is None else rows[:limit]
    cells = [[c.title for c in columns]] + [[cell(r, c) for c in columns] for r in shown]
    marks = [" "] + [mark(r) for r in shown]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    out = []
    for flag, line in zip(marks, cells, strict=True):
        parts = [
            text.ljust(width) if col.attr == "name" else text.rjust(width)
            for text, width, col in zip(line, widths, columns, strict=True)
        ]
        out.append(f"{flag} " + "  ".join(parts).rstrip())
    return "\n".join(out)


def detail_lines(row: Row, n: int = 10) -> list[str]:
    """Drill-down of one row: its top syscalls and top peers."""
    lines = [f"{row.name}", "", "top syscalls          calls/s       total"]
    for name, rate in top_syscalls(row, n):
        total = row.syscall_totals.get(name, 0.0)
        danger = "  DANGEROUS" if name in row.dangerous_syscalls else ""
        lines.append(f"  {name:<18} {human(rate, 'rate'):>10} {human(total, 'count'):>11}{danger}")
    if row.dangerous_syscalls:
        lines += ["", "dangerous syscalls (total)"]
        for name, total in sorted(row.dangerous_syscalls.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:<18} {human(total, 'count'):>10}")
    lines += ["", "top peers                          RX B/s     TX B/s"]
    peers = top_peers(row, n)
    for peer, (rx, tx) in peers:
        lines.append(f"  {peer:<30} {human(rx, 'bytes_rate'):>10} {human(tx, 'bytes_rate'):>10}")
    if not peers:
        lines.append("  (no flows)")
    return lines


def as_json(rows: list[Row], header: Header, node: str, frame: Frame) -> str:
    document: dict[str, Any] = {
        "node": node,
        "version": header.version,
        "kernel": header.kernel,
        "probes": header.probes,
        "maps": {name: {"entries": e, "capacity": c} for name, (e, c) in header.maps.items()},
        "lost": {"ring_buffer_drops": header.ring_drops, "map_full": header.map_failures},
        "interval_seconds": frame.interval,
        "rows": [row.as_json() for row in rows],
    }
    return json.dumps(document, indent=1, allow_nan=False)
