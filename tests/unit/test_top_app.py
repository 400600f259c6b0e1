"""The live view's keys, headless (textual's pilot), against a real HTTP
server serving recorded scrapes whose counters advance: sort, filter, pod /
container, drill-down and back, pause, quit. (tests/kernel/test_top.py
drives the same view in tmux against a real orb8.)"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from textual.widgets import DataTable, Static

from exporter.top.app import TopApp
from exporter.top.fetch import Endpoint, Source


def scrape_text(n: int) -> str:
    """Scrape number n: busy reads, web sends, nosy calls ptrace, all advancing."""

    def who(pod: str, container: str = "main") -> str:
        return f'namespace="shop",pod="{pod}",container="{container}",cgroup=""'

    net = 'direction="egress",protocol="tcp",family="ipv4"'
    flow = 'direction="egress",protocol="tcp",peer_namespace="shop",peer_pod="db",peer_class="pod"'
    return "\n".join(
        [
            'orb8_build_info{version="7.7.7",kernel="6.18"} 1',
            'orb8_probe_up{probe="syscalls"} 1',
            f'orb8_syscalls_total{{{who("busy")},syscall="getppid"}} {1000 * n}',
            f'orb8_syscalls_total{{{who("busy", "sidecar")},syscall="read"}} {10 * n}',
            f'orb8_syscalls_total{{{who("web")},syscall="sendto"}} {100 * n}',
            f"orb8_network_bytes_total{{{who('web')},{net}}} {50_000 * n}",
            f"orb8_flow_bytes_total{{{who('web')},{flow}}} {50_000 * n}",
            f'orb8_syscalls_total{{{who("nosy")},syscall="ptrace"}} {n}',
            f'orb8_dangerous_syscalls_total{{{who("nosy")},syscall="ptrace"}} {n}',
        ]
    )


@contextlib.contextmanager
def serving(body: Callable[[int], str]) -> Iterator[str]:
    """A real HTTP server answering scrape number n with body(n)."""
    count = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            count["n"] += 1
            data = body(count["n"]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server() -> Iterator[str]:
    with serving(scrape_text) as url:
        yield url


def names(app: TopApp) -> list[str]:
    table = app.query_one("#table", DataTable)
    return [str(table.get_row_at(i)[-1]) for i in range(table.row_count)]


def text_of(app: TopApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


async def until(pilot, predicate, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def test_keys_drive_the_view(server):
    async def scenario() -> None:
        app = TopApp(Source(Endpoint(server)), "node-a", 0.2, 60)
        async with app.run_test(size=(160, 40)) as pilot:
            await until(pilot, lambda: app.frame is not None and app.frame.interval, "rates")
            await until(pilot, lambda: names(app)[:1] == ["shop/busy"], "busy first")
            assert set(names(app)) == {"shop/busy", "shop/web", "shop/nosy"}
            assert "orb8 7.7.7" in text_of(app, "#header")
            table = app.query_one("#table", DataTable)
            nosy = names(app).index("shop/nosy")
            assert str(table.get_row_at(nosy)[0]) == "!"
            assert str(table.get_row_at(names(app).index("shop/web"))[0]) == " "

            await pilot.press("o")  # bytes sent
            await until(pilot, lambda: names(app)[:1] == ["shop/web"], "web first")
            await pilot.press("o")  # again: reversed
            await until(pilot, lambda: names(app)[-1:] == ["shop/web"], "web last")
            await pilot.press("s")

            await pilot.press("slash", *"nosy", "enter")
            await until(pilot, lambda: names(app) == ["shop/nosy"], "the filter")
            await pilot.press("escape")  # clears the filter
            await until(pilot, lambda: len(names(app)) == 3, "the filter cleared")

            await pilot.press("c")
            await until(pilot, lambda: "shop/busy/sidecar" in names(app), "container rows")
            await pilot.press("c")
            await until(pilot, lambda: "shop/busy" in names(app), "pod rows")

            table.move_cursor(row=names(app).index("shop/web"))
            await pilot.press("enter")
            await until(pilot, lambda: "top peers" in text_of(app, "#detail"), "the drill-down")
            assert "shop/db (tcp)" in text_of(app, "#detail")
            assert not table.display
            await pilot.press("escape")
            await until(pilot, lambda: table.display, "back to the table")

            await pilot.press("space")
            frame = app.frame
            await pilot.pause(0.6)  # three scrapes go by
            assert app.frame is frame and "PAUSED" in text_of(app, "#status")
            await pilot.press("space")
            await until(pilot, lambda: app.frame is not frame, "resumed")

            await pilot.press("q")
        assert app.return_code in (None, 0)

    asyncio.run(scenario())


def test_a_long_table_is_cut_and_says_so():
    from exporter.top.app import MAX_ROWS

    pods = MAX_ROWS + 50
    body = "\n".join(
        f'orb8_syscalls_total{{namespace="ns",pod="p{i:04d}",container="c",cgroup="",'
        f'syscall="read"}} {i}'
        for i in range(pods)
    )

    async def scenario(url: str) -> None:
        app = TopApp(Source(Endpoint(url)), "node-a", 0.2, 60, sort="name", descending=False)
        async with app.run_test(size=(160, 40)) as pilot:
            await until(pilot, lambda: app.frame is not None, "a frame")
            await until(pilot, lambda: len(names(app)) == MAX_ROWS, "a full table")
            assert names(app)[0] == "ns/p0000"
            assert f"rows {pods} (first {MAX_ROWS} shown)" in text_of(app, "#status")
            await pilot.press("q")

    with serving(lambda _: body) as url:
        asyncio.run(scenario(url))
