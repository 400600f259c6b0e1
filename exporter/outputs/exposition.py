"""The hot path of /metrics: model families to exposition text, the same bytes
prometheus_client writes, at a fraction of the cost.

prometheus_client's encoders build a Sample namedtuple and a label dict per
series, sort and escape every label on every scrape, and format the value:
6-12 us per series on the dev VM, so 57,000 series (1,000 containers x 50
syscalls plus network and flows) took 680 ms (benchmarks/scrape_render.py).
Between two scrapes almost every series keeps its labels; only its number
changes. So the text up to the value (`name{label="escaped",...} `) is
built once per (family, label values) and kept, and a scrape formats the
numbers and joins strings.

The cache holds the series of the last render and the ones new in this
one; when series have gone it is rebuilt from those just written, so deleted
pods' prefixes go with their series. It costs memory: ~25 MiB of RssAnon at
52,000 series (benchmarks/RESULTS.md), the price of the 10x.

A RowFamily (exporter/rows.py: the syscall, dangerous, network traffic
and flow families) skips that cache: its layout keeps its text between
collects in chunks of CHUNK_ROWS rows, deflated only, so a scrape formats
only the values that changed and rewrites only the chunks that hold them
(row_chunks); unchanged chunks go into a gzip body as they are.

Byte identity with prometheus_client (classic text 0.0.4 and OpenMetrics
1.0) is tested in tests/unit/test_exposition.py on a fixture of the odd
cases (escapes, NaN/Inf, large numbers, empty labels, counters, gauges,
_info). What this renderer does not reproduce exactly it declines:
`supports()` says False for names outside the legacy character set (or
with a colon) and duplicate label names, `exposition_form()` says None for
escaping schemes that rewrite names (dots, values); the caller then uses
prometheus_client's encoder.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from prometheus_client import exposition, openmetrics

from exporter.model import MetricFamily
from exporter.outputs.gzipped import Deflated, Piece, plain
from exporter.rows import RowFamily

TEXT = "text"
OPENMETRICS = "openmetrics"

# prometheus_client.validation's legacy label-name character set. Metric
# names may have colons too, but the OpenMetrics encoder writes a colon as
# "_" in sample lines (not in HELP/TYPE) under the default escaping: names
# with colons (orb8 has none) go to prometheus_client.
_METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LABEL_NAME = _METRIC_NAME
# Escaping schemes under which a legacy-valid name is written unchanged by
# both encoders (dots and values rewrite underscores in some places).
SAME_NAME_ESCAPINGS = frozenset({"underscores", "allow-utf-8"})

# Python's repr of these, and what Prometheus writes.
_SPECIAL = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}
_EXPONENT = [f"e+{i:02d}" for i in range(400)]
_DIGITS = frozenset("0123456789")


def _go_repr(s: str) -> str:
    """The Go form of a Python float repr that is long or special."""
    dot = s.find(".")
    # Go switches to exponents sooner than Python (1e+06), for positive values.
    if dot > 6 and s[0] != "-":
        return (s[0] + "." + s[1:dot] + s[dot + 1 :]).rstrip("0.") + _EXPONENT[dot - 1]
    return _SPECIAL.get(s, s)


def go_floats(values: Iterable[float]) -> list[str]:
    """prometheus_client.utils.floatToGoString of each value, same output.

    Python's repr is shortest-round-trip like Go's; only reprs of 9+
    characters (a dot past position 6 needs at least that) or ending in a
    letter (nan, inf) can differ, and only those take the slow step.
    """
    texts = list(map(repr, map(float, values)))
    for i, s in enumerate(texts):
        if len(s) > 8 or s[-1] not in _DIGITS:
            texts[i] = _go_repr(s)
    return texts


_POW10 = 10 ** np.arange(17, dtype=np.int64)
_EXACT = float(2**53)  # integers below are floats exactly; repr shows all their digits


def go_lines(values: np.ndarray) -> list[str]:
    """go_floats(values) with a newline after each, for a float64 array, in bulk.

    Counters are integers: below 10**6 Go and Python both write `n.0`; from
    10**6 to 2**53 Go writes the integer's digits, trailing zeros cut, as
    d.ddde+XX, which is "%.*e" with that many digits. Only other values
    (fractions, negatives, NaN, beyond 2**53) take go_floats one by one.
    """
    out: list[str] = [""] * len(values)
    integral = (values >= 0) & (values < _EXACT) & (values == np.floor(values))
    integral &= ~np.signbit(values)
    small = integral & (values < 1e6)
    big = integral & ~small
    index = np.flatnonzero(small)
    for i, n in zip(index.tolist(), values[index].astype(np.int64).tolist(), strict=True):
        out[i] = f"{n}.0\n"
    index = np.flatnonzero(big)
    if len(index):
        n = values[index].astype(np.int64)
        digits = np.searchsorted(_POW10, n, side="right")
        zeros = np.zeros(len(n), dtype=np.int64)
        for power in _POW10[1:16]:
            zeros += n % power == 0
        precision = digits - 1 - zeros
        for i, p, x in zip(index.tolist(), precision.tolist(), values[index].tolist(), strict=True):
            out[i] = f"{x:.{p}e}\n"
    index = np.flatnonzero(~integral)
    for i, text in zip(index.tolist(), go_floats(values[index].tolist()), strict=True):
        out[i] = text + "\n"
    return out


def escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def supports(family: MetricFamily) -> bool:
    """Whether render() writes this family exactly as prometheus_client does."""
    return (
        family.type in ("counter", "gauge", "histogram")
        and _METRIC_NAME.match(family.name) is not None
        and all(_LABEL_NAME.match(label) for label in family.labels)
        and len(set(family.labels)) == len(family.labels)
        and (family.type != "counter" or family.name.endswith("_total"))
        and (family.type != "histogram" or "le" not in family.labels)
    )


def exposition_form(encoder: Callable[..., Any]) -> str | None:
    """TEXT or OPENMETRICS for an encoder choose_encoder() returned, when
    render() writes what it would; None: use the encoder."""
    escaping = openmetrics.exposition.UNDERSCORES
    func = encoder
    if isinstance(encoder, functools.partial):
        if encoder.args:
            return None
        func = encoder.func
        escaping = encoder.keywords.get("escaping", escaping)
    if escaping not in SAME_NAME_ESCAPINGS:
        return None
    if func is exposition.generate_latest:
        return TEXT
    if func is openmetrics.exposition.generate_latest:
        return OPENMETRICS
    return None


def _header(family: MetricFamily, form: str) -> str:
    if form == TEXT:
        # The classic format escapes \ and newline in HELP; counters are
        # typed under their _total name.
        text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
        return f"# HELP {family.name} {text}\n# TYPE {family.name} {family.type}\n"
    # OpenMetrics names the counter family without _total and escapes " too.
    name = family.name[: -len("_total")] if family.type == "counter" else family.name
    return f"# HELP {name} {escape_value(family.help)}\n# TYPE {name} {family.type}\n"


class Renderer:
    """Renders model families; keeps the label prefixes of the series it last wrote."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (family name, label names) -> label values -> "name{...} "
        self._prefixes: dict[tuple[str, tuple[str, ...]], dict[tuple[str, ...], str]] = {}

    def render(self, families: Iterable[MetricFamily], form: str = TEXT) -> str:
        """Exposition text of the families; the caller checked supports() on each.

        The OpenMetrics "# EOF" is not written: the caller appends the rest
        of the registry (process_*) and that encoder ends the body.
        """
        return plain(self.pieces(families, form)).decode()

    def pieces(self, families: Iterable[MetricFamily], form: str = TEXT) -> list[Piece]:
        """render()'s text, UTF-8, in pieces (gzipped.plain joins them); a
        RowFamily's are its deflated chunks (gzip splices them as they are)."""
        with self._lock:  # text and OpenMetrics scrapes at once: one cache, one writer
            out: list[Piece] = []
            seen: set[tuple[str, tuple[str, ...]]] = set()
            text: list[str] = []  # headers and plain families, encoded together
            for family in families:
                text.append(_header(family, form))
                if isinstance(family, RowFamily):
                    out.append("".join(text).encode())
                    text.clear()
                    out.extend(row_chunks(family))
                elif family.samples:
                    key = (family.name, family.labels)
                    text.append(self._samples(family, key, key in seen))
                    seen.add(key)
                elif family.histograms:
                    text.append(_histogram(family))
            out.append("".join(text).encode())
            for key in self._prefixes.keys() - seen:  # families gone: their series too
                del self._prefixes[key]
            return out

    def _samples(self, family: MetricFamily, key: tuple[str, tuple[str, ...]], again: bool) -> str:
        samples = family.samples
        values = go_floats([value for _, value in samples])
        if not family.labels:
            prefixes = [family.name + " "] * len(samples)
        else:
            cache = self._prefixes.get(key)
            if cache is None:
                cache = self._prefixes[key] = {}
            get = cache.get
            build = _prefix_builder(family)

            def miss(label_values: tuple[str, ...]) -> str:
                cache[label_values] = prefix = build(label_values)
                return prefix

            labels = [label_values for label_values, _ in samples]
            prefixes = [get(label_values) or miss(label_values) for label_values in labels]
            if len(cache) > len(labels) and not again:
                # Series have gone since the last scrape: keep only this one's.
                self._prefixes[key] = dict(zip(labels, prefixes, strict=True))
        return "\n".join(map(str.__add__, prefixes, values)) + "\n"

    def cached_series(self) -> int:
        return sum(len(cache) for cache in self._prefixes.values())


# Rows per chunk of a RowFamily's text, on average: a scrape rewrites only
# the chunks with a changed value (and gzip.py splices the others as they
# are). A row starts a chunk when its code hashes to 0 modulo CHUNK_ROWS
# (at least CHUNK_MIN rows after the last start, at most CHUNK_MAX rows in
# a chunk): the boundaries follow the rows, not their positions, so rows
# that come or go change the chunks around them, not every chunk after.
CHUNK_ROWS = 512
CHUNK_MIN, CHUNK_MAX = 64, 2048
_HASH = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: 2**64 / golden ratio


def chunk_starts(codes: np.ndarray) -> np.ndarray:
    """The first row of each chunk of a layout with these sorted codes."""
    n = len(codes)
    hashed = (codes.astype(np.uint64) * _HASH) >> np.uint64(40)
    starts = [0]
    for row in np.flatnonzero(hashed % np.uint64(CHUNK_ROWS) == 0).tolist():
        while row - starts[-1] > CHUNK_MAX:
            starts.append(starts[-1] + CHUNK_MAX)
        if row - starts[-1] >= CHUNK_MIN:
            starts.append(row)
    while n - starts[-1] > CHUNK_MAX:
        starts.append(starts[-1] + CHUNK_MAX)
    return np.array(starts, dtype=np.int64)


def render_rows(family: RowFamily) -> str:
    """The sample lines of a RowFamily, as _samples() writes them for its samples."""
    return plain(row_chunks(family)).decode()


def row_chunks(family: RowFamily) -> list[Deflated]:
    """A RowFamily's sample lines in chunks (chunk_starts), kept deflated.

    Kept in the layout's columns, per family name: the bits of each row's
    value as last written (compared bit for bit: -0.0 and NaN payloads keep
    their own text), the chunks' first rows, and the chunks, deflated only
    (exporter/outputs/gzipped.py: the text of 53,000 rows held as Python
    strings was ~17 MiB). A scrape formats the values that changed and
    rewrites their chunks: inflated, the changed rows' values replaced
    after their prefix (the line up to its last space: a label value's
    spaces come before, a value has none), deflated again. A chunk whose
    every value changed is rewritten from its prefixes, kept deflated too
    (made the first time that happens, for the life of the layout), joined
    with the new values: no row is cut. A new layout keeps the previous
    layout's chunks whose rows it kept, all and only them, and builds the
    others from the lines of the rows it keeps and prefixes for new rows.
    """
    layout = family.layout
    n = len(layout)
    if n == 0:
        return []
    values = np.ascontiguousarray(family.values, dtype=np.float64)
    bits = values.view(np.int64)
    key_bits, key_chunks, key_starts = (
        (kind, family.name) for kind in ("bits", "chunks", "starts")
    )
    key_prefixes = ("prefixes", family.name)
    columns = layout.columns
    with layout.lock:
        shown = columns.get(key_bits)
        if shown is None:
            shown, chunks, starts = _first_chunks(family, values, bits)
            columns[key_bits], columns[key_chunks], columns[key_starts] = shown, chunks, starts
        chunks, starts = columns[key_chunks], columns[key_starts]
        skeletons = columns.get(key_prefixes)
        if skeletons is None:  # a list: not carried to the next layout (rows move)
            skeletons = columns[key_prefixes] = [None] * len(chunks)
        changed = np.flatnonzero(shown != bits)
        if len(changed):
            # One encode for all the new values: the newlines split them apart again.
            texts = "".join(go_lines(values[changed])).encode().split(b"\n")
            shown[changed] = bits[changed]
            which = np.searchsorted(starts, changed, side="right") - 1
            bounds = (np.flatnonzero(np.diff(which)) + 1).tolist()
            ends = [*starts[1:].tolist(), n]
            for start, stop in zip([0, *bounds], [*bounds, len(changed)], strict=True):
                chunk = int(which[start])
                first = int(starts[chunk])
                if stop - start == ends[chunk] - first:  # every row
                    skeleton = skeletons[chunk]
                    if skeleton is None:
                        lines = chunks[chunk].text().split(b"\n")[:-1]
                        prefixes = [line[: line.rindex(b" ") + 1] for line in lines]
                        skeletons[chunk] = Deflated(b"\n".join(prefixes))
                    else:
                        prefixes = skeleton.text().split(b"\n")
                    new = map(bytes.__add__, prefixes, texts[start:stop])
                    chunks[chunk] = Deflated(b"\n".join(new) + b"\n")
                    continue
                lines = chunks[chunk].text().split(b"\n")  # and b"" after the last newline
                for row, text in zip(
                    (changed[start:stop] - first).tolist(), texts[start:stop], strict=True
                ):
                    line = lines[row]
                    lines[row] = line[: line.rindex(b" ") + 1] + text
                chunks[chunk] = Deflated(b"\n".join(lines))
        return chunks.tolist()


def _first_chunks(
    family: RowFamily, values: np.ndarray, bits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bits shown, deflated chunks, their first rows) of a layout's first
    render: the previous layout's chunks where this one kept exactly their
    rows (their bits as shown there: row_chunks then writes what changed),
    new chunks for the rest, their values as now."""
    layout = family.layout
    n = len(layout)
    starts = chunk_starts(layout.codes)
    ends = np.append(starts[1:], n)
    shown = bits.copy()
    chunks = np.empty(len(starts), dtype=object)
    reused = np.zeros(len(starts), dtype=bool)
    take = np.full(n, -1, dtype=np.intp)
    old_bits = old_starts = np.zeros(0, dtype=np.int64)
    old_chunks = np.empty(0, dtype=object)
    previous = layout.previous(tuple((kind, family.name) for kind in ("bits", "chunks", "starts")))
    if previous is not None:
        (old_bits, old_chunks, old_starts), take = previous
        old_ends = np.append(old_starts[1:], len(old_bits))
        # A new chunk is an old one if its first row was an old chunk's first
        # row and its last row that chunk's last (codes are sorted in both:
        # the rows between are the same).
        head, tail = take[starts], take[ends - 1]
        k = np.minimum(np.searchsorted(old_starts, head), len(old_starts) - 1)
        reused = (
            (head >= 0)
            & (old_starts[k] == head)
            & (old_ends[k] - 1 == tail)
            & (tail - head == ends - starts - 1)
        )
        for j in np.flatnonzero(reused).tolist():
            chunks[j] = old_chunks[k[j]]
            shown[starts[j] : ends[j]] = old_bits[head[j] : tail[j] + 1]
    build = _prefix_builder(family)
    old_lines: dict[int, list[bytes]] = {}  # old chunk -> its lines, inflated once
    offsets = old_starts.tolist()
    for j in np.flatnonzero(~reused).tolist():
        rows = np.arange(starts[j], ends[j])
        kept = take[rows]
        fresh = kept < 0
        # Rows whose line is written anew: new rows, and kept rows whose value changed.
        write = fresh.copy()
        write[~fresh] = old_bits[kept[~fresh]] != bits[rows[~fresh]]
        texts = iter("".join(go_lines(values[rows[write]])).encode().split(b"\n"))
        labels = iter(layout.labels[rows[fresh]].tolist())
        old_chunk = np.searchsorted(old_starts, kept, side="right") - 1
        lines: list[bytes] = []
        for old_row, chunk, is_new, rewrite in zip(
            kept.tolist(), old_chunk.tolist(), fresh.tolist(), write.tolist(), strict=True
        ):
            if is_new:
                lines.append(build(next(labels)).encode() + next(texts))
                continue
            cached = old_lines.get(chunk)
            if cached is None:
                cached = old_lines[chunk] = old_chunks[chunk].text().split(b"\n")
            line = cached[old_row - offsets[chunk]]
            lines.append(line[: line.rindex(b" ") + 1] + next(texts) if rewrite else line)
        chunks[j] = Deflated(b"\n".join(lines) + b"\n")
    return shown, chunks, starts


def _prefix_builder(family: MetricFamily):
    """A function label values -> `name{k="v",...} ` with labels sorted by name,
    as both prometheus_client encoders order them."""
    order = sorted(range(len(family.labels)), key=lambda i: family.labels[i])
    names = [family.labels[i] for i in order]
    head = family.name + "{"

    def build(values: tuple[str, ...]) -> str:
        pairs = ",".join(
            f'{name}="{escape_value(values[i])}"' for name, i in zip(names, order, strict=True)
        )
        return f"{head}{pairs}}} "

    return build


def _histogram(family: MetricFamily) -> str:
    """A histogram's _bucket, _count and _sum lines, as prometheus_client's
    HistogramMetricFamily writes them (le formatted as Go floats). Not
    cached: histograms are few series (a bucket line per bound each)."""
    bucket = _prefix_builder(
        MetricFamily(family.name + "_bucket", "gauge", "", (*family.labels, "le"))
    )
    count = _prefix_builder(MetricFamily(family.name + "_count", "gauge", "", family.labels))
    total = _prefix_builder(MetricFamily(family.name + "_sum", "gauge", "", family.labels))
    bounds = [*go_floats(family.buckets), "+Inf"]
    lines = []
    for values, cumulative, sum_value in family.histograms:
        counts = go_floats(cumulative)
        for le, value in zip(bounds, counts, strict=True):
            lines.append(bucket((*values, le)) + value)
        lines.append(count(values) + counts[-1])
        lines.append(total(values) + go_floats([sum_value])[0])
    return "\n".join(lines) + "\n"
