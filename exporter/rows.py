"""Series rows kept between collects: what lets a big family cost what changed.

A source with tens of thousands of series (1,000 containers x 50 syscalls)
spent ~8 us per series per collect building tuples, dicts and Sample rows
that were identical to the previous collect's but for the numbers
(benchmarks/RESULTS.md, issue 20). Here each series is a row identified by
an int64 code the source computes with numpy from the kernel keys (e.g.
identity index x syscall name index). A `Layout` is the sorted codes of one
collect and the label values of each row; it is immutable, and a new one is
made only when the set of series changes, from the previous one (rows kept,
rows new, rows gone: label tuples are built for the new rows only).

The outputs keep what they derive from a row (exposition prefix, formatted
value, OTLP attributes) in the layout's columns: a column is carried over to
the next layout by index when rows are added or removed, so a new pod's 50
series cost 50 prefixes, not 50,000. A `RowFamily` is one collect's
snapshot: a layout and a float64 array of values. Its `samples` property
builds the plain model's list when something needs it (prometheus_client's
encoder, the tests), so every reader of MetricFamily keeps working.

Codes mean the same row only while the source keeps the meaning of its
indices (`Interner`): a source that renumbers (prunes its interner) starts a
new `RowTable`, so a cached label can never be served for another series.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

import numpy as np

from exporter.model import MetricFamily, MetricType, safe_label

T = TypeVar("T", bound=Hashable)


def clean_labels(values: tuple[str, ...]) -> tuple[str, ...]:
    """What MetricFamily.add stores for these label values (checked once per row)."""
    if not "".join(values).isascii():
        return tuple(map(safe_label, values))
    return values


class Layout:
    """The rows of a family at one collect: sorted unique int64 codes, their labels.

    `columns` holds what outputs derive per row, keyed by the output's own
    name; `seed` is the previous layout's columns and, for each row here,
    its index there (-1: new row), for the outputs to carry columns over.
    `lock` serialises outputs filling columns (two scrapes render at once).
    """

    __slots__ = ("codes", "columns", "labels", "lock", "seed")

    def __init__(
        self,
        codes: np.ndarray,
        labels: np.ndarray,
        seed: tuple[dict[Any, Any], np.ndarray, threading.Lock] | None = None,
    ) -> None:
        self.codes = codes
        self.labels = labels  # object array of label-value tuples
        self.columns: dict[Any, Any] = {}
        self.seed = seed
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.codes)

    def fresh(self) -> np.ndarray:
        """Rows new in this layout (True): carried() columns hold `fill` there."""
        if self.seed is None:
            return np.ones(len(self.codes), dtype=bool)
        return self.seed[1] < 0

    def previous(self, names: tuple[Any, ...]) -> tuple[list[Any], np.ndarray] | None:
        """Columns `names` of the previous layout as they are (not reindexed),
        copied together under its lock, and for each row here its index
        there (-1: new row); None when the previous layout lacks any of them."""
        if self.seed is None:
            return None
        old_columns, take, old_lock = self.seed
        with old_lock:  # the previous layout's columns may be being filled right now
            old = [old_columns.get(name) for name in names]
            copies = [column.copy() for column in old if isinstance(column, np.ndarray)]
        return (copies, take) if len(copies) == len(names) else None

    def carried(self, name: Any, fill: Any) -> np.ndarray | None:
        """Column `name` of the previous layout, reindexed to these rows (new
        rows get `fill`); None when the previous layout had no such column."""
        if self.seed is None:
            return None
        old_columns, take, old_lock = self.seed
        with old_lock:  # the previous layout's columns may be being filled right now
            old = old_columns.get(name)
            if not isinstance(old, np.ndarray):
                return None
            kept = take >= 0
            column = np.full(len(take), fill, dtype=old.dtype)
            column[kept] = old[take[kept]]
        return column


EMPTY_CODES = np.zeros(0, dtype=np.int64)


def _empty_layout() -> Layout:
    return Layout(EMPTY_CODES, np.empty(0, dtype=object))


class RowTable:
    """A family's layout across collects (source side; touched under the collect lock)."""

    def __init__(self) -> None:
        self.layout = _empty_layout()

    def update(
        self, codes: np.ndarray, labels_of: Callable[[np.ndarray], list[tuple[str, ...]]]
    ) -> Layout:
        """The layout for these sorted unique codes; labels_of(new codes) gives
        the label values of rows not in the previous layout."""
        old = self.layout
        same = len(codes) == len(old.codes) and np.array_equal(codes, old.codes)
        if codes is old.codes or same:
            return old
        if len(old.codes):
            pos = np.searchsorted(old.codes, codes)
            np.minimum(pos, len(old.codes) - 1, out=pos)
            found = old.codes[pos] == codes
            take = np.where(found, pos, -1)
        else:
            found = np.zeros(len(codes), dtype=bool)
            take = np.full(len(codes), -1, dtype=np.intp)
        labels = np.empty(len(codes), dtype=object)
        labels[found] = old.labels[take[found]]
        new = codes[~found]
        if len(new):
            made = np.empty(len(new), dtype=object)
            made[:] = [clean_labels(values) for values in labels_of(new)]
            labels[~found] = made
        # Seed from the previous layout's columns, not from the layout: no
        # chain of old layouts stays reachable.
        with old.lock:  # only arrays carry over (per row, or the renderer's chunks)
            columns = {k: v for k, v in old.columns.items() if isinstance(v, np.ndarray)}
            seed = (columns, take, old.lock)
        if not columns and old.seed is not None:
            # The previous layout was never rendered nor pushed (a collect for
            # housekeeping, or for prometheus_client's encoder): seed from what
            # it was seeded with, its rows mapped through, or a scrape after
            # it would build every row's text again.
            older_columns, older_take, older_lock = old.seed
            through = np.full(len(codes), -1, dtype=np.intp)
            through[found] = older_take[take[found]]
            seed = (older_columns, through, older_lock)
        self.layout = Layout(codes, labels, seed)
        return self.layout

    def reset(self) -> None:
        self.layout = _empty_layout()


class Interner(Generic[T]):
    """Stable small ints for hashable values (identities, names), for row codes."""

    def __init__(self) -> None:
        self.index: dict[T, int] = {}
        self.values: list[T] = []

    def __call__(self, value: T) -> int:
        found = self.index.get(value)
        if found is None:
            found = self.index[value] = len(self.values)
            self.values.append(value)
        return found

    def __len__(self) -> int:
        return len(self.values)

    def clear(self) -> None:
        self.index.clear()
        self.values.clear()


class RowFamily(MetricFamily):
    """A family whose samples are a layout's rows and one collect's values."""

    def __init__(
        self,
        name: str,
        type: MetricType,
        help: str,
        labels: tuple[str, ...],
        layout: Layout,
        values: np.ndarray,
    ) -> None:
        if len(values) != len(layout):
            raise ValueError(f"{name}: {len(values)} values for {len(layout)} rows")
        self.name, self.type, self.help, self.labels = name, type, help, labels
        self.layout = layout
        self.values = values  # float64, one per row

    @property  # type: ignore[override]
    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        return list(zip(self.layout.labels.tolist(), self.values.tolist(), strict=True))

    @samples.setter
    def samples(self, value: Iterable[tuple[tuple[str, ...], float]]) -> None:
        raise AttributeError(f"{self.name}: a RowFamily's samples are its rows")

    def add(self, label_values: tuple[str, ...], value: float) -> None:
        raise TypeError(f"{self.name}: a RowFamily is built from a layout, not add()")

    def __len__(self) -> int:
        return len(self.layout)

    def plain(self) -> MetricFamily:
        """The same family as a plain MetricFamily (e.g. to merge with another)."""
        return MetricFamily(self.name, self.type, self.help, self.labels, self.samples)


def group_sum(codes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique codes, exact uint64 sum of counts per code)."""
    unique, inverse = np.unique(codes, return_inverse=True)
    sums = np.zeros(len(unique), dtype=np.uint64)
    np.add.at(sums, inverse, counts.astype(np.uint64, copy=False))
    return unique, sums
