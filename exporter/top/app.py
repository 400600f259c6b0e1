"""The live view of `orb8 top` (textual). Imported only when the view starts,
so `--once`, `--json` and the rest of orb8 work without the `top` extra."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Input, Static

from exporter.top.fetch import Scraper, Source
from exporter.top.model import COLUMN_BY_ATTR, COLUMNS, Column, Frame, Row, columns_for, select
from exporter.top.render import cell, detail_lines, header_lines, mark

# Filling the table is linear in its rows and runs in the UI thread: 1,000
# rows took ~240 ms, 300 ~64 ms (benchmarks/top_parse.py). Beyond this the
# status line says how many more there are; sort or filter to reach them.
MAX_ROWS = 300
ALERT_STYLE = "bold red"
PAST_STYLE = "yellow"  # dangerous calls before the window


class TopApp(App[None]):
    CSS = """
    #header { height: auto; background: $boost; }
    #detail { height: 1fr; overflow-y: auto; }
    #filter { dock: bottom; }
    #status { dock: bottom; height: 1; background: $boost; }
    DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("space", "pause", "pause"),
        Binding("c", "containers", "pod/container"),
        Binding("slash", "filter", "filter"),
        Binding("escape", "leave", "back", show=False),
        *[Binding(c.key, f"sort('{c.attr}')", c.title, show=False) for c in COLUMNS],
    ]

    def __init__(
        self,
        source: Source,
        node: str,
        interval: float,
        window: float,
        sort: str = "syscalls",
        descending: bool = True,
        query: str = "",
        containers: bool = False,
    ) -> None:
        super().__init__()
        self.source = source
        self.node = node
        self.interval = interval
        self.window = window
        self.sort = sort
        self.descending = descending
        self.filter_text = query
        self.containers = containers
        self.paused = False
        self.detail: str | None = None
        self.frame: Frame | None = None
        self.error = ""
        self._shape: tuple[object, ...] = ()
        self._rows: list[Row] = []
        self._latest: Frame | str | None = None
        self._lock = threading.Lock()
        self.source.containers = containers
        self._scraper = Scraper(source, interval, self._publish)

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        yield DataTable(id="table", cursor_type="row", zebra_stripes=False)
        yield Static(id="detail")
        yield Input(placeholder="filter: words in namespace/pod/container, or ns=NAME", id="filter")
        yield Static(id="status")

    def on_mount(self) -> None:
        self.query_one("#detail").display = False
        self.query_one("#filter").display = False
        self.query_one("#table", DataTable).focus()
        self._scraper.start()
        self.set_interval(0.1, self._poll)
        self._render_status()

    def on_unmount(self) -> None:
        self._scraper.stop()

    # The scraper thread only stores; the UI thread picks up the latest.
    def _publish(self, result: Frame | str) -> None:
        with self._lock:
            self._latest = result

    def _poll(self) -> None:
        with self._lock:
            result, self._latest = self._latest, None
        if result is None:
            return
        if isinstance(result, str):
            self.error = result
        else:
            self.error = ""
            if self.paused:
                return
            self.frame = result
            self.refresh_view()
        self._render_status()

    def refresh_view(self) -> None:
        frame = self.frame
        if frame is None:
            return
        header = "\n".join(header_lines(frame.header, self.node, frame, self.window))
        self.query_one("#header", Static).update(header)
        self._rows = select(frame, self.sort, self.descending, self.filter_text, self.containers)
        if self.detail is not None:
            self._render_detail()
        else:
            self._render_table()

    def _render_table(self) -> None:
        table = self.query_one("#table", DataTable)
        columns = columns_for(self._rows)
        selected = None
        if table.row_count and 0 <= table.cursor_row < table.row_count:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        # Headings carry the sort arrow: rebuilt when the sort or the columns change.
        shape = (tuple(columns), self.sort, self.descending)
        if shape != self._shape:
            table.clear(columns=True)
            table.add_column("", key="mark")
            for column in columns:
                table.add_column(self._title(column), key=column.attr)
            self._shape = shape
        else:
            table.clear()
        restore = 0
        for i, row in enumerate(self._rows[:MAX_ROWS]):
            key = row.key
            style = ALERT_STYLE if row.alert else PAST_STYLE if row.dangerous else ""
            table.add_row(
                Text(mark(row), style=style),
                *[
                    Text(cell(row, c), style=style, justify="left" if c.attr == "name" else "right")
                    for c in columns
                ],
                key=key,
            )
            if key == selected:
                restore = i
        if self._rows:
            table.move_cursor(row=restore, animate=False)

    def _title(self, column: Column) -> str:
        if column.attr != self.sort:
            return column.title
        return f"{column.title}{'▼' if self.descending else '▲'}"

    def _render_detail(self) -> None:
        found = [r for r in self._rows if r.key == self.detail]
        if not found and self.frame is not None:
            every = select(self.frame, containers=self.containers)
            found = [r for r in every if r.key == self.detail]
        widget = self.query_one("#detail", Static)
        if not found:
            widget.update("(gone: no series left for this row)")
            return
        widget.update("\n".join(detail_lines(found[0])))

    def _render_status(self) -> None:
        column = COLUMN_BY_ATTR.get(self.sort)
        parts = [
            "PAUSED" if self.paused else "",
            f"sort {column.title if column else self.sort}",
            "containers" if self.containers else "pods",
            f"filter '{self.filter_text}'" if self.filter_text else "",
            f"rows {len(self._rows)}"
            + (f" (first {MAX_ROWS} shown)" if len(self._rows) > MAX_ROWS else ""),
            f"ERROR {self.error}" if self.error else "",
        ]
        keys = "q quit  space pause  / filter  c pod/ctr  enter drill  sort: " + " ".join(
            f"{c.key}={c.title}" for c in COLUMNS
        )
        text = "  ".join(p for p in parts if p)
        self.query_one("#status", Static).update(f"{text}  |  {keys}")

    # --- actions -------------------------------------------------------------
    def action_sort(self, attr: str) -> None:
        if self.detail is not None or self._filtering():
            return
        if attr == self.sort:
            self.descending = not self.descending
        else:
            self.sort, self.descending = attr, attr != "name"
        self.refresh_view()
        self._render_status()

    def action_pause(self) -> None:
        if self._filtering():
            return
        self.paused = not self.paused
        self._render_status()

    def action_containers(self) -> None:
        if self._filtering():
            return
        self.containers = not self.containers
        self.source.containers = self.containers
        self.detail = None
        self._show_table()
        self.refresh_view()
        self._render_status()

    def action_filter(self) -> None:
        widget = self.query_one("#filter", Input)
        widget.display = True
        widget.value = self.filter_text
        widget.focus()

    def action_leave(self) -> None:
        if self._filtering():
            self._close_filter()
        elif self.detail is not None:
            self.detail = None
            self._show_table()
            self.refresh_view()
        elif self.filter_text:
            self.filter_text = ""
            self.refresh_view()
        self._render_status()

    def _filtering(self) -> bool:
        return bool(self.query_one("#filter", Input).display)

    def _close_filter(self) -> None:
        widget = self.query_one("#filter", Input)
        widget.display = False
        self.query_one("#table", DataTable).focus()

    def _show_table(self) -> None:
        self.query_one("#detail").display = False
        table = self.query_one("#table", DataTable)
        table.display = True
        table.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        self._close_filter()
        self.refresh_view()
        self._render_status()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        value: Any = event.row_key.value
        if value is None:
            return
        self.detail = str(value)
        self.query_one("#table", DataTable).display = False
        self.query_one("#detail").display = True
        self.refresh_view()


def run(source: Source, node: str, interval: float, window: float, **options: Any) -> None:
    TopApp(source, node, interval, window, **options).run()
