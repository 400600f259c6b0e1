"""orb8 top without a kernel: the line parser (table-driven, and against
prometheus_client's parser), rates and ranking on recorded scrapes (counter
resets, vanished pods, NaN), the plain and JSON output, and fetching over
real sockets (TLS, client certificates, basic auth, gzip)."""

from __future__ import annotations

import base64
import gzip
import json
import math
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.top import fetch
from exporter.top.model import WANTED, Scrape, Tracker, parser, rank, rows_of, select
from exporter.top.parse import LineParser, parse_labels
from exporter.top.render import ALERT_MARK, as_json, human, table
from tests.tls import make_pki

# --- parser ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ('a="1"', (("a", "1"),)),
        ('a="1",', (("a", "1"),)),
        ('a="1",b=""', (("a", "1"), ("b", ""))),
        ('a = "1" , b="2"', (("a", "1"), ("b", "2"))),
        ('a="x\\"y"', (("a", 'x"y'),)),
        ('a="back\\\\slash"', (("a", "back\\slash"),)),
        ('a="line\\nbreak"', (("a", "line\nbreak"),)),
        ('a="with, comma and } brace"', (("a", "with, comma and } brace"),)),
        ('cgroup="/x\\\\xff\\\\xfe"', (("cgroup", "/x\\xff\\xfe"),)),
        ('a="1" b="2"', None),  # no comma
        ('a="1', None),  # unterminated
        ("a=1", None),  # unquoted
        ('1a="x"', None),  # bad name
    ],
)
def test_parse_labels(text, expected):
    assert parse_labels(text) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('orb8_syscalls_total{pod="a",syscall="read"} 12', ({"pod": "a", "syscall": "read"}, 12)),
        ('orb8_syscalls_total{pod="a b"} 1.5e3 1700000000000', ({"pod": "a b"}, 1500.0)),
        ("orb8_bpf_map_update_failures_total 7", ({}, 7.0)),
        ('orb8_syscalls_total{pod="a"} +Inf', ({"pod": "a"}, math.inf)),
        ('orb8_syscalls_total{pod="a"} NaN', ({"pod": "a"}, "nan")),
        ('orb8_syscalls_total{pod="}"} 3', ({"pod": "}"}, 3.0)),
    ],
)
def test_parse_line(line, expected):
    families = LineParser(WANTED).parse(f"# HELP x y\n{line}\n")
    name = line.split("{")[0].split(" ")[0]
    ((labels, value),) = families[name].values()
    assert dict(labels) == expected[0]
    assert math.isnan(value) if expected[1] == "nan" else value == expected[1]


@pytest.mark.parametrize(
    ("line", "counted"),
    [
        ('orb8_syscalls_total{pod="a"} one', 1),  # a sample whose value is no number
        ("orb8_syscalls_total{pod=a} 1", 1),  # whose labels do not parse
        ('orb8_syscalls_total{pod="a" 1', 0),  # no sample shape at all
        ('orb8_syscalls_total{pod="a"}', 0),
    ],
)
def test_malformed_lines_are_skipped(line, counted):
    parser = LineParser(WANTED)
    families = parser.parse(f'{line}\norb8_syscalls_total{{pod="ok"}} 2\n')
    assert [dict(lb) for lb, _ in families["orb8_syscalls_total"].values()] == [{"pod": "ok"}]
    assert parser.malformed == counted


def test_other_families_and_comments_are_not_kept():
    text = '# TYPE orb8_syscalls_total counter\nprocess_open_fds 3\norb8_x_total{a="1"} 2\n'
    families = LineParser(WANTED).parse(text)
    assert not any(families.values())


def big_scrape(pods: int, syscalls: int = 40, bump: int = 0) -> str:
    """A node's /metrics shaped like orb8's, with `pods` single-container pods."""
    lines = ["# HELP orb8_syscalls_total x", "# TYPE orb8_syscalls_total counter"]
    for p in range(pods):
        who = f'namespace="ns{p % 7}",pod="pod-{p}",container="app",cgroup=""'
        for s in range(syscalls):
            lines.append(f'orb8_syscalls_total{{{who},syscall="sc{s}"}} {p * 1000 + s + bump}')
        for d in ("egress", "ingress"):
            for fam in ("ipv4", "ipv6"):
                labels = f'{who},direction="{d}",protocol="tcp",family="{fam}"'
                lines.append(f"orb8_network_bytes_total{{{labels}}} {p * 10 + bump}")
                lines.append(f"orb8_network_packets_total{{{labels}}} {p + bump}")
        lines.append(f"process_whatever{{{who}}} 1")
    lines.append('orb8_build_info{version="9.9",kernel="6.18"} 1')
    return "\n".join(lines) + "\n"


def test_the_parser_agrees_with_prometheus_client_on_every_wanted_sample():
    text = big_scrape(30) + 'orb8_syscalls_total{namespace="q\\"x",pod="a\\\\b",syscall="r"} 5\n'
    ours = LineParser(WANTED).parse(text)
    theirs: dict[str, set] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in WANTED:
                theirs.setdefault(sample.name, set()).add(
                    (tuple(sorted(sample.labels.items())), sample.value)
                )
    for name, samples in theirs.items():
        assert {(tuple(sorted(lb)), v) for lb, v in ours[name].values()} == samples


def test_label_cache_holds_only_the_last_scrapes_series():
    line_parser = LineParser(WANTED)
    line_parser.parse(big_scrape(5))
    first = sum(map(len, line_parser._cache.values()))
    line_parser.parse(big_scrape(2))
    assert 0 < sum(map(len, line_parser._cache.values())) < first


# --- rates on recorded scrapes -------------------------------------------------

POD = 'namespace="shop",pod="cart",container="{c}",cgroup=""'
HOST = 'namespace="",pod="",container="",cgroup="/system.slice/sshd.service"'


def exposition(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def scrape_at(t: float, text: str) -> Scrape:
    return Scrape(t, parser().parse(text))


def frames(*texts: str, interval: float = 2.0, window: float = 60.0):
    tracker = Tracker(window=window)
    return [tracker.update(scrape_at(i * interval, text)) for i, text in enumerate(texts)]


def by_name(frame, containers=False):
    return {row.name: row for row in rows_of(frame, containers)}


def test_rates_are_increases_over_the_interval_summed_per_pod():
    app, side = POD.format(c="app"), POD.format(c="sidecar")
    net = f"orb8_network_bytes_total{{{app}"
    first, second = frames(
        exposition(
            f'orb8_syscalls_total{{{app},syscall="read"}} 100',
            f'orb8_syscalls_total{{{side},syscall="read"}} 10',
            f'{net},direction="egress",protocol="udp",family="ipv4"}} 0',
            f'{net},direction="ingress",protocol="udp",family="ipv4"}} 0',
        ),
        exposition(
            f'orb8_syscalls_total{{{app},syscall="read"}} 300',
            f'orb8_syscalls_total{{{side},syscall="read"}} 50',
            f'{net},direction="egress",protocol="udp",family="ipv4"}} 4096',
            f'{net},direction="ingress",protocol="udp",family="ipv4"}} 8',
        ),
    )
    assert by_name(first)["shop/cart"].syscalls is None  # one scrape: no rate yet
    cart = by_name(second)["shop/cart"]
    assert cart.syscalls == (200 + 40) / 2
    assert (cart.tx, cart.rx) == (2048, 4)
    containers = by_name(second, containers=True)
    assert containers["shop/cart/app"].syscalls == 100
    assert containers["shop/cart/sidecar"].syscalls == 20


def test_counter_reset_counts_the_new_value():
    app = POD.format(c="app")
    _, after_reset = frames(
        exposition(f'orb8_syscalls_total{{{app},syscall="read"}} 1000'),
        exposition(f'orb8_syscalls_total{{{app},syscall="read"}} 30'),
    )
    assert by_name(after_reset)["shop/cart"].syscalls == 15


def test_a_series_new_after_the_first_scrape_counts_whole():
    """One ptrace between two scrapes must show, not be taken for a baseline."""
    app = POD.format(c="app")
    base = f'orb8_syscalls_total{{{app},syscall="read"}} 5'
    _, second = frames(
        exposition(base),
        exposition(base, f'orb8_dangerous_syscalls_total{{{app},syscall="ptrace"}} 1'),
    )
    cart = by_name(second)["shop/cart"]
    assert (cart.dangerous, cart.dangerous_window, cart.alert) == (1, 1, True)
    assert cart.dangerous_syscalls == {"ptrace": 1}


def test_vanished_pod_goes_and_a_series_that_returns_continues():
    app = POD.format(c="app")
    host = f'orb8_syscalls_total{{{HOST},syscall="read"}}'
    cart = f'orb8_syscalls_total{{{app},syscall="read"}}'
    _, f2, f3 = frames(
        exposition(f"{cart} 10", f"{host} 500"),
        exposition(f"{cart} 30"),  # sshd's cgroup retired
        exposition(f"{cart} 50", f"{host} 520"),  # restarted: orb8 continued its count
    )
    assert set(by_name(f2)) == {"shop/cart"}
    assert by_name(f3)["/system.slice/sshd.service"].syscalls == 20 / 2


def test_nan_counters_are_no_count_and_nan_gauges_show_unknown():
    app = POD.format(c="app")
    gpu = f'{app},gpu="0",uuid="GPU-1",gpu_instance=""'
    _, second = frames(
        exposition(
            f'orb8_syscalls_total{{{app},syscall="read"}} 10',
            f'orb8_syscalls_total{{{app},syscall="write"}} NaN',
            f"orb8_gpu_memory_used_bytes{{{gpu}}} NaN",
        ),
        exposition(
            f'orb8_syscalls_total{{{app},syscall="read"}} 20',
            f'orb8_syscalls_total{{{app},syscall="write"}} NaN',
            f"orb8_gpu_memory_used_bytes{{{gpu}}} NaN",
            f"orb8_gpu_utilization{{{gpu}}} 49.5",
        ),
    )
    cart = by_name(second)["shop/cart"]
    assert cart.syscalls == 5
    assert cart.gpu_memory is None
    assert cart.gpu_sm == 49.5
    assert human(cart.gpu_memory, "bytes") == "-"


def test_dangerous_calls_stay_highlighted_for_the_window_then_not():
    app = POD.format(c="app")
    series = f'orb8_dangerous_syscalls_total{{{app},syscall="ptrace"}}'
    seen = frames(
        exposition(f"{series} 3"),
        exposition(f"{series} 5"),  # +2 at t=2
        exposition(f"{series} 5"),
        exposition(f"{series} 6"),  # +1 at t=6
        exposition(f"{series} 6"),
        exposition(f"{series} 6"),
        interval=2.0,
        window=5.0,
    )
    windows = [by_name(f)["shop/cart"].dangerous_window for f in seen]
    assert windows == [0, 2, 2, 3, 1, 1]
    assert [by_name(f)["shop/cart"].alert for f in seen] == [False, True, True, True, True, True]
    assert by_name(seen[-1])["shop/cart"].dangerous == 6
    quiet = frames(exposition(f"{series} 6"), exposition(f"{series} 6"))[-1]
    assert not by_name(quiet)["shop/cart"].alert  # an old total alone is no alert


def test_ranking_puts_unknown_last_and_breaks_ties_by_name():
    def scrape(a: int, b: int, c: int) -> str:
        lines = [
            f'orb8_syscalls_total{{namespace="n",pod="{name}",container="x",cgroup="",'
            f'syscall="read"}} {value}'
            for name, value in (("b", b), ("a", a), ("c", c))
        ]
        gpu = 'orb8_gpu_utilization{namespace="n",pod="g",container="x",cgroup="",gpu="0"} 7'
        return exposition(*lines, gpu)

    _, frame = frames(scrape(0, 0, 0), scrape(100, 100, 1800))
    assert [r.name for r in select(frame)] == ["n/c", "n/a", "n/b", "n/g"]
    # g made no syscalls over a whole interval: 0/s, not unknown
    assert [r.name for r in select(frame, descending=False)] == ["n/g", "n/a", "n/b", "n/c"]
    # only g has a GPU: the others are unknown and last in either order
    assert [r.name for r in select(frame, sort="gpu_sm")] == ["n/g", "n/a", "n/b", "n/c"]
    assert [r.name for r in select(frame, sort="gpu_sm", descending=False)] == [
        "n/g", "n/a", "n/b", "n/c"
    ]  # fmt: skip
    assert [r.name for r in select(frame, sort="name", descending=False)] == [
        "n/a", "n/b", "n/c", "n/g"
    ]  # fmt: skip
    assert rank(rows_of(frame), "name", descending=True)[0].name == "n/g"


def test_filter_by_words_and_namespace():
    lines = [
        f'orb8_syscalls_total{{namespace="{ns}",pod="{pod}",container="x",cgroup="",syscall="r"}} 1'
        for ns, pod in (("shop", "cart"), ("shop", "search"), ("infra", "cart-proxy"))
    ]
    lines.append(f'orb8_syscalls_total{{{HOST},syscall="read"}} 1')
    (frame,) = frames(exposition(*lines))
    assert {r.name for r in select(frame, query="cart")} == {"shop/cart", "infra/cart-proxy"}
    assert {r.name for r in select(frame, query="ns=shop")} == {"shop/cart", "shop/search"}
    assert {r.name for r in select(frame, query="ns=shop CART")} == {"shop/cart"}
    assert {r.name for r in select(frame, query="sshd")} == {"/system.slice/sshd.service"}


def test_drill_down_has_top_syscalls_and_peers():
    app = POD.format(c="app")
    flow = f'orb8_flow_bytes_total{{{app},direction="egress",protocol="tcp",'

    def scrape(r: int, w: int, db: int, ext: int) -> str:
        return exposition(
            f'orb8_syscalls_total{{{app},syscall="read"}} {r}',
            f'orb8_syscalls_total{{{app},syscall="write"}} {w}',
            f'{flow}peer_namespace="shop",peer_pod="db",peer_class="pod"}} {db}',
            f'{flow}peer_namespace="",peer_pod="",peer_class="external"}} {ext}',
        )

    _, frame = frames(scrape(0, 0, 0, 0), scrape(10, 400, 8000, 20))
    document = json.loads(as_json(select(frame), frame.header, "node-a", frame))
    (row,) = document["rows"]
    assert list(row["top_syscalls"]) == ["write", "read"]
    assert row["top_peers"][0] == {"peer": "shop/db (tcp)", "rx": 0.0, "tx": 4000.0}
    assert row["top_peers"][1]["peer"] == "external (tcp)"


def test_header_and_plain_table():
    def scrape(d: int, calls: int) -> str:
        return exposition(
            'orb8_build_info{version="1.2.3",kernel="6.18.44"} 1',
            'orb8_probe_up{probe="syscalls"} 1',
            'orb8_probe_up{probe="network"} 0',
            'orb8_bpf_map_entries{map="syscall_slots"} 300',
            'orb8_bpf_map_capacity{map="syscall_slots"} 1000',
            'orb8_bpf_map_entries{map="network_flows"} 900',
            'orb8_bpf_map_capacity{map="network_flows"} 1000',
            'orb8_ring_buffer_drops_total{probe="syscalls"} 4',
            'orb8_bpf_map_update_failures_total{map="syscall_slots"} 2',
            f'orb8_dangerous_syscalls_total{{{POD.format(c="app")},syscall="ptrace"}} {d}',
            f'orb8_syscalls_total{{{HOST},syscall="read"}} {calls}',
        )

    _, frame = frames(scrape(1, 0), scrape(2, 20_000))
    header = frame.header
    assert (header.version, header.kernel) == ("1.2.3", "6.18.44")
    assert header.probes == {"syscalls": True, "network": False}
    assert header.fullest_map == ("network_flows", 0.9)
    assert (header.ring_drops, header.map_failures) == (4, 2)
    lines = table(select(frame)).splitlines()
    assert lines[0].split()[0] == "SYSCALLS/s"
    assert lines[0].split()[-1] == "NAME"
    assert lines[1].split()[0] == "10.0k"
    assert lines[1].split()[-1] == "/system.slice/sshd.service"
    assert lines[2].startswith(ALERT_MARK)
    assert lines[2].split()[-1] == "shop/cart"
    assert "GPU" not in lines[0]  # no GPU data, no GPU columns


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (None, "rate", "-"),
        (math.nan, "rate", "-"),
        (0.0, "rate", "0"),
        (0.5, "rate", "0.5"),
        (999.0, "rate", "999"),
        (1500.0, "rate", "1.5k"),
        (2_500_000.0, "rate", "2.5M"),
        (2048.0, "bytes_rate", "2.0K"),
        (3 * 1024**3, "bytes", "3.0G"),
        (42.0, "count", "42"),
        (250_000.0, "count", "250.0k"),
        (49.6, "percent", "50"),
    ],
)
def test_human(value, unit, text):
    assert human(value, unit) == text


# --- fetching over real sockets ---------------------------------------------------

BODY = exposition(
    'orb8_build_info{version="1.2.3",kernel="k"} 1',
    f'orb8_syscalls_total{{{POD.format(c="app")},syscall="read"}} 1',
)


class _Handler(BaseHTTPRequestHandler):
    expected_auth: str | None = None

    def do_GET(self) -> None:
        if self.expected_auth and self.headers.get("Authorization") != self.expected_auth:
            self.send_response(401)
            self.end_headers()
            return
        body = BODY.encode()
        self.send_response(200)
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


@pytest.fixture
def https_server(pki) -> Iterator[tuple[str, str]]:
    auth = "Basic " + base64.b64encode(b"prometheus:s3cret").decode()
    handler = type("Handler", (_Handler,), {"expected_auth": auth})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", auth
    server.shutdown()
    server.server_close()


def test_fetch_over_mutual_tls_with_basic_auth_and_gzip(https_server, pki):
    url, _ = https_server
    endpoint = fetch.Endpoint(
        url, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key,
        username="prometheus", password="s3cret",
    )  # fmt: skip
    assert endpoint.url == f"{url}/metrics"
    frame = fetch.Source(endpoint).scrape()
    assert frame.header.version == "1.2.3"
    assert [r.name for r in rows_of(frame)] == ["shop/cart"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"password": "wrong"}, "HTTP 401"),
        ({"ca_file": "other"}, "CERTIFICATE_VERIFY_FAILED"),
        # TLS 1.3: the alert, or the connection closed before it is read
        ({"cert_file": None, "key_file": None}, "CERTIFICATE_REQUIRED|EOF|reset"),
    ],
)
def test_fetch_errors_are_messages(https_server, pki, change, error):
    url, _ = https_server
    options = {
        "ca_file": pki.ca,
        "cert_file": pki.client_cert,
        "key_file": pki.client_key,
        "username": "prometheus",
        "password": "s3cret",
        **change,
    }
    if options["ca_file"] == "other":
        options["ca_file"] = pki.other_ca
    with pytest.raises(fetch.FetchError, match=error):
        fetch.Endpoint(url, **options).fetch()


def test_urls_and_nodes():
    assert fetch.normalise_url("node-a:9826") == "http://node-a:9826/metrics"
    assert fetch.normalise_url("https://n:1/") == "https://n:1/metrics"
    assert fetch.normalise_url("http://n:1/custom") == "http://n:1/custom"
    assert fetch.node_of("http://node-a:9826/metrics") == "node-a"


def test_unreachable_endpoint_is_a_message_and_the_scraper_keeps_going():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens
    results: list = []
    got_two = threading.Event()

    def publish(result) -> None:
        results.append(result)
        if len(results) >= 2:
            got_two.set()

    scraper = fetch.Scraper(
        fetch.Source(fetch.Endpoint(f"127.0.0.1:{port}", timeout=2)), 0.05, publish
    )
    scraper.start()
    assert got_two.wait(20)
    scraper.stop()
    scraper.join(10)
    assert all(isinstance(r, str) and "refused" in r.lower() for r in results[:2])


def test_password_file_and_once_json_via_the_cli(tmp_path, pki, https_server, capsys):
    from exporter.cli import main

    url, _ = https_server
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    code = main(
        ["top", url, "--json", "--interval", "0.1", "--ca-file", str(pki.ca),
         "--cert", str(pki.client_cert), "--key", str(pki.client_key),
         "--username", "prometheus", "--password-file", str(secret)]
    )  # fmt: skip
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["version"] == "1.2.3"
    assert [r["name"] for r in document["rows"]] == ["shop/cart"]
    assert document["rows"][0]["syscalls"] == 0.0


def test_cli_rejects_an_unknown_sort(capsys):
    from exporter.cli import main

    assert main(["top", "--once", "--sort", "bogus"]) == 2
    assert "unknown --sort" in capsys.readouterr().err


@pytest.mark.parametrize("compress", [True, False])
def test_an_answer_over_the_limit_is_refused_also_once_inflated(compress):
    """A 1 MB answer that gzips to ~1 KB: refused after inflating at most the
    limit, so a small gzip bomb cannot take the terminal's memory."""
    big = (BODY + "# " + "x" * 1_000_000 + "\n").encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = gzip.compress(big) if compress else big
            self.send_response(200)
            if compress:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"127.0.0.1:{server.server_address[1]}"
        with pytest.raises(fetch.FetchError, match="larger than 100000 bytes"):
            fetch.Endpoint(url, max_bytes=100_000).fetch()
        assert "orb8_build_info" in fetch.Endpoint(url, max_bytes=2_000_000).fetch()
    finally:
        server.shutdown()
        server.server_close()


def test_control_characters_in_names_are_escaped():
    """A cgroup may be named with any byte; its name must not drive the terminal."""
    cgroup = 'namespace="",pod="",container="",cgroup="/evil\x1b[2J\x07.scope"'
    (frame,) = frames(exposition(f'orb8_syscalls_total{{{cgroup},syscall="read"}} 1'))
    (row,) = rows_of(frame)
    assert row.name == "/evil\\x1b[2J\\x07.scope"
    assert "\x1b" not in table([row])


def test_without_the_top_extra_the_live_view_says_how_to_get_it():
    """textual is an optional extra: without it, a clear message (and --once works)."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    code = (
        "import sys; sys.modules['textual'] = None\n"
        "from exporter.cli import main; sys.exit(main(['top', '127.0.0.1:9']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 2
    assert "pip install 'orb8[top]'" in result.stderr


def test_insecure_skips_verifying_the_server_but_still_authenticates(https_server, pki):
    url, _ = https_server
    options = {"cert_file": pki.client_cert, "key_file": pki.client_key, "username": "prometheus"}
    with pytest.raises(fetch.FetchError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch.Endpoint(url, password="s3cret", **options).fetch()  # no CA: not trusted
    assert (
        "orb8_build_info"
        in fetch.Endpoint(url, password="s3cret", insecure=True, **options).fetch()
    )
    with pytest.raises(fetch.FetchError, match="HTTP 401"):
        fetch.Endpoint(url, password="nope", insecure=True, **options).fetch()
