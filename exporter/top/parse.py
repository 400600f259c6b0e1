"""A focused parser for the few families `orb8 top` shows.

Why not prometheus_client's parser: on a node with 1,000 containers the
scrape is 5-7 MB and ~60,000 lines; the generic parser builds a Sample object
for every line of every family and re-parses every label set on every scrape.
This one finds the sample lines with one regex (in C), skips unwanted
families by name before looking at labels, and remembers each label set's
parsed form by its raw text (a series keeps the same text from
one scrape to the next), so a steady node costs one dict lookup per wanted
line. benchmarks/top_parse.py measures both on the same text.

Only the Prometheus text format 0.0.4 is read (what /metrics serves unless
asked for OpenMetrics). A wanted line whose labels or value do not parse is
skipped and counted, never fatal: the view must survive whatever an
endpoint serves.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Labels = tuple[tuple[str, str], ...]
# name -> raw label text (the series' identity within its family) -> (labels, value),
# or ((labels, derived), value) with a `derive`
Families = dict[str, dict[str, tuple[Any, float]]]


_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESCAPE = re.compile(r"\\[\\\"n]")
_MISSING = object()
# One sample line: name, label text (greedy to the last "}" before the value,
# so a "}" inside a value is fine), value; a timestamp after it is ignored.
# findall does the line splitting and slicing in C: ~4x faster than a Python
# loop over the lines at 57,000 series (benchmarks/top_parse.py). Comments
# and lines that are no sample at all do not match and are not counted.
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)", re.M)


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], value)


def parse_labels(text: str) -> Labels | None:
    """`a="1",b="x\\"y"` -> (("a", "1"), ("b", 'x"y')); None if malformed."""
    labels: list[tuple[str, str]] = []
    pos, end = 0, len(text)
    while pos < end:
        m = _LABEL.match(text, pos)
        if m is None:
            return tuple(labels) if not text[pos:].strip() else None
        labels.append((m.group(1), _unescape(m.group(2))))
        pos = m.end()
    return tuple(labels)


def parse_value(text: str) -> float | None:
    """A sample value (Go float syntax: 1, 1e3, NaN, +Inf); None if not one."""
    try:
        return float(text)
    except ValueError:
        return None


@dataclass
class LineParser:
    """Parses exposition text, keeping samples of `wanted` names only.

    The label cache is rebuilt on every parse from the label sets seen in
    that text, so it holds at most one scrape's series (bounded by what the
    endpoint serves) and a vanished series is forgotten at the next scrape.
    """

    wanted: frozenset[str]
    # Made once per label set and cached with it (the model's identity and
    # row keys); the samples then carry (labels, derived) instead of labels.
    derive: Callable[[str, Labels], object] | None = None
    malformed: int = 0
    _cache: dict[str, dict[str, object]] = field(default_factory=dict)

    def parse(self, text: str) -> Families:
        out: Families = {name: {} for name in self.wanted}
        old = self._cache
        cache: dict[str, dict[str, object]] = {}
        wanted, derive = self.wanted, self.derive
        # Families come in runs of lines: switch their dicts once per run.
        current = ""
        samples: dict[str, tuple[Any, float]] = {}
        seen: dict[str, object] = {}
        before: dict[str, object] = {}
        for name, raw, number in _SAMPLE.findall(text):
            if name != current:
                if name not in wanted:
                    continue
                current = name
                samples = out[name]
                seen = cache.setdefault(name, {})
                before = old.get(name, {})
            labels = seen.get(raw, _MISSING)
            if labels is _MISSING:
                labels = before.get(raw, _MISSING)
                if labels is _MISSING:
                    labels = parse_labels(raw)
                    if labels is not None and derive is not None:
                        labels = (labels, derive(name, labels))
                seen[raw] = labels
            try:
                value = float(number)
            except ValueError:
                value = None
            if labels is None or value is None:
                self.malformed += 1
                continue
            samples[raw] = (labels, value)
        self._cache = cache
        return out
