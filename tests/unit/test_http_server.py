"""The /metrics HTTP server under real sockets: negotiation, coalescing, bounded cost."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import logging
import random
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from exporter.listen import Listen
from exporter.model import MetricFamily, counter
from exporter.outputs.http import MAX_FIELDS, MAX_HEAD, BoundedHTTPServer, Response
from exporter.outputs.prometheus import PrometheusServer
from tests.helpers import ROOT

OPENMETRICS = "application/openmetrics-text"


class Collect:
    """A collect that counts its calls and takes `delay` seconds, like a busy node."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> list[MetricFamily]:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        family = counter("orb8_test_total", "A test counter.", ("n",))
        family.add(("1",), 42)
        return [family]


@pytest.fixture
def serve():
    servers = []

    def start(collect: Collect | None = None) -> PrometheusServer:
        server = PrometheusServer(Listen("127.0.0.1", 0), collect or Collect(), lambda: "<p>hi")
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def request(server: PrometheusServer, method: str = "GET", path: str = "/metrics", **headers):
    conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=10)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0, identity", False),
        ("deflate, gzip;q=0.5", True),
        ("*", True),
        ("*;q=0", False),
        ("gzip;q=0, *", False),
        ("identity", False),
        ("", False),
    ],
)
def test_gzip_follows_q_values(serve, accept_encoding, gzipped):
    status, headers, body = request(serve(), **{"Accept-Encoding": accept_encoding})
    assert status == 200
    assert (headers.get("Content-Encoding") == "gzip") is gzipped
    text = gzip.decompress(body) if gzipped else body
    assert b"orb8_test_total" in text


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (f"{OPENMETRICS};version=1.0.0", True),
        (f"{OPENMETRICS};version=1.0.0;q=0", False),
        (f"text/plain;version=0.0.4;q=0.9,{OPENMETRICS};version=1.0.0;q=0.5", False),
        (f"text/plain;q=0.3,{OPENMETRICS};version=1.0.0;q=0.5,*/*;q=0.1", True),
        (f"{OPENMETRICS};version=nonsense", False),
        ("text/plain", False),
        ("", False),
    ],
)
def test_format_follows_q_values(serve, accept, openmetrics):
    status, headers, body = request(serve(), Accept=accept)
    assert status == 200
    assert headers["Content-Type"].startswith(OPENMETRICS) is openmetrics
    assert body.endswith(b"# EOF\n") is openmetrics


def test_head_is_get_without_a_body_and_other_methods_are_refused(serve):
    server = serve()
    # process_* values (CPU seconds, RSS) may change length between two collects:
    # HEAD must announce the GET's length when nothing changed in between.
    lengths = []
    for _ in range(5):
        status, headers, body = request(server, "HEAD")
        _, _, full = request(server)
        assert status == 200 and body == b""
        lengths.append((int(headers["Content-Length"]), len(full)))
        if lengths[-1][0] == lengths[-1][1]:
            break
    assert lengths[-1][0] == lengths[-1][1], lengths
    status, headers, _ = request(server, "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert request(server, path="/nope")[0] == 404
    assert request(server, path="/")[2] == b"<p>hi"


def test_concurrent_scrapes_share_one_collect(serve):
    collect = Collect(delay=0.5)
    server = serve(collect)
    scrapes = 16
    with ThreadPoolExecutor(scrapes) as pool:
        results = list(pool.map(lambda _: request(server), range(scrapes)))
    assert all(status == 200 for status, _, _ in results)
    assert len({body for _, _, body in results}) <= collect.calls  # waiters got its result
    # Each collect serves every scrape that arrived meanwhile (at most `workers` at once).
    assert collect.calls <= scrapes // server.httpd.workers + 1, collect.calls


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def raise_open_files(needed: int) -> Callable[[], None]:
    """Room for `needed` descriptors in this process (and children started after);
    returns what restores the limits. Hosts differ: where the hard limit is lower
    (1024 is common), it is raised too, which root may do with CAP_SYS_RESOURCE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, needed)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (OSError, ValueError) as e:
        raise AssertionError(
            f"this test needs {needed} open files; RLIMIT_NOFILE is {soft}/{hard} "
            f"and cannot be raised here ({e}): raise it (ulimit -n) or run with CAP_SYS_RESOURCE"
        ) from e
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_many_idle_and_slow_clients_cost_bounded_threads_and_metrics_still_answer(serve):
    clients = 900
    server = serve()
    port = server.address[1]
    # The threads alive now: pytest's process may hold others (earlier tests'
    # daemon threads still ending), so the check is "none started", not a count.
    threads_before = set(threading.enumerate())
    sockets: list[socket.socket] = []
    restore = raise_open_files(4096)
    try:
        for i in range(clients):
            sock = _connect(port)
            if i % 3 == 0:  # slow: a request that never finishes
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        # An HTTP/0.9 request is answered and closed, not left hanging.
        old = _connect(port)
        old.sendall(b"GET /metrics\r\n")
        answer = b""
        while chunk := old.recv(65536):
            answer += chunk
        old.close()
        assert b"orb8_test_total" in answer
        # A real scraper still gets its answer.
        status, _, body = request(server)
        assert status == 200 and b"orb8_test_total" in body
        # Fixed threads and bounded held connections, however many clients came.
        started = set(threading.enumerate()) - threads_before
        assert not started, [thread.name for thread in started]
        assert server.httpd.open_connections <= server.httpd.max_connections
        assert server.httpd.closed_for_capacity >= clients - server.httpd.max_connections
    finally:
        for sock in sockets:
            sock.close()
        restore()


def test_a_client_that_never_finishes_its_request_is_closed(serve):
    server = serve()
    server.httpd.header_timeout = 0.5
    sock = _connect(server.address[1])
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    sock.settimeout(10)
    assert sock.recv(100) == b""  # closed by the server, no answer
    sock.close()


def test_a_busy_port_fails_at_construction(serve):
    server = serve()
    with pytest.raises(OSError):
        PrometheusServer(Listen("127.0.0.1", server.address[1]), Collect(), lambda: "")


SERVE = """
import sys, threading
from exporter.listen import Listen
from exporter.model import counter
from exporter.outputs.prometheus import PrometheusServer

def collect():
    family = counter("orb8_test_total", "A test counter.")
    family.add((), 1)
    return [family]

server = PrometheusServer(Listen("127.0.0.1", 0), collect, lambda: "")
server.start()
print(server.address[1], flush=True)
sys.stdin.read()  # until the test closes it
"""


def _status(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                fields[key] = int(value.split()[0])
    return fields


def test_a_crowd_of_idle_clients_leaves_threads_and_memory_of_the_server_flat():
    """In its own process, so only the server's cost is measured: before, every idle
    connection was a thread (3,000 idle sockets = 3,004 threads and +80 MB)."""
    restore = raise_open_files(4096)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
    )
    sockets: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as warm:
            warm.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            while warm.recv(65536):
                pass
        before = _status(proc.pid)
        for _ in range(1500):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as scraper:
            scraper.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := scraper.recv(65536):
                answer += chunk
        assert b"orb8_test_total 1.0" in answer
        after = _status(proc.pid)
        assert after["Threads"] == before["Threads"], (before, after)
        assert after["VmRSS"] - before["VmRSS"] < 8 * 1024, (before, after)  # KiB
    finally:
        for sock in sockets:
            sock.close()
        proc.kill()
        proc.wait()
        restore()


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


@pytest.mark.parametrize("size", [17 * 1024, 20 * 1024, 64 * 1024])
def test_a_head_over_the_limit_is_refused_even_when_it_arrives_in_one_burst(serve, size):
    """The size is checked before completeness: a head that ends inside the read
    that crosses MAX_HEAD used to be served (200 for 20 KB sent at once)."""
    server = serve()
    start = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: "
    head = start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == size > MAX_HEAD
    answer = _exchange(server.address[1], head)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    # A head of exactly MAX_HEAD bytes, in one burst too, is served.
    fits = start + b"a" * (MAX_HEAD - len(start) - 4) + b"\r\n\r\n"
    assert len(fits) == MAX_HEAD
    answer = _exchange(server.address[1], fits)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"orb8_test_total" in answer


def test_a_small_head_followed_by_more_bytes_is_measured_by_its_head(serve):
    """What follows the head (a body, a pipelined request) is not part of the head:
    a POST with a 20 KB body gets its 405, not a 431."""
    server = serve()
    body = b"x" * 20 * 1024
    answer = _exchange(
        server.address[1],
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert answer.startswith(b"HTTP/1.1 405 "), answer[:100]


class BlockedCollect(Collect):
    """A collect that does not return until the test says so (a node whose
    kernel maps take forever to read), counting the scrapes that wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self) -> list[MetricFamily]:
        self.entered.set()
        self.release.wait(60)
        return super().__call__()


def test_health_is_answered_while_every_worker_waits_for_a_collect():
    """/healthz and /readyz have their own lane: a collect that holds every worker
    (here: never returns until released) must not make the liveness probe fail."""
    collect = BlockedCollect()
    server = PrometheusServer(
        Listen("127.0.0.1", 0),
        collect,
        lambda: "",
        routes={"/healthz": lambda: (200, "ok\n"), "/readyz": lambda: (200, "ready\n")},
    )
    server.start()
    scrapes = server.httpd.workers + 2  # every worker busy, and more queued
    try:
        with ThreadPoolExecutor(scrapes) as pool:
            futures = [pool.submit(request, server) for _ in range(scrapes)]
            assert collect.entered.wait(10)
            for path in ("/healthz", "/readyz", "/healthz?verbose=1"):
                status, _, body = request(server, path=path)
                assert status == 200 and body in (b"ok\n", b"ready\n"), (path, status)
            status, _, _ = request(server, "HEAD", path="/healthz")
            assert status == 200
            assert not any(f.done() for f in futures)  # the scrapes were still held
            collect.release.set()
            assert all(f.result()[0] == 200 for f in futures)
    finally:
        collect.release.set()
        server.close()


FIELDS = b"".join(b"X-%d: y\r\n" % i for i in range(MAX_FIELDS + 1))


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"\x00\x01\x02\x03\r\n\r\n", 400),
        (b"GET /metrics FOO/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /met\x00rics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"HEAD /metrics\r\n", 400),  # HTTP/0.9 knew only GET
        # Lenient before (served): ambiguous heads a proxy in front may read otherwise.
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # RFC 9112 3.2: 1.1 needs Host
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),  # an HTTP/2 prior-knowledge preface
        (b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + FIELDS + b"\r\n", 431),
        # Still served: HTTP/1.0 needs no Host, bare LF line ends, folded lines.
        (b"GET /metrics HTTP/1.0\r\n\r\n", 200),
        (b"GET /metrics HTTP/1.1\nHost: x\n\n", 200),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 200),
    ],
)
def test_malformed_heads_get_a_status_line_and_the_server_keeps_serving(serve, head, status):
    """Before: http.server answered most of these with an HTML page and no
    status line at all (it took them for HTTP/0.9), or served them."""
    server = serve()
    answer = _exchange(server.address[1], head)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1  # one answer, then the close
    assert request(server)[0] == 200


def test_header_names_are_case_insensitive(serve):
    """HTTP field names are case-insensitive (RFC 9110 5.1); before, a lower-cased
    accept-encoding was not seen and the body went uncompressed."""
    status, headers, body = request(serve(), **{"accept-encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    assert b"orb8_test_total" in gzip.decompress(body)


def test_pipelined_requests_get_one_answer_and_a_close(serve):
    """One request per connection: what follows the first head is not served,
    however many requests it holds."""
    server = serve()
    one = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = _exchange(server.address[1], one + b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" + one)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"orb8_test_total" in answer
    assert answer.count(b"HTTP/1.1 ") == 1 and b"Connection: close\r\n" in answer


def test_mutated_heads_get_a_status_line_or_a_close_and_the_server_keeps_serving(serve, caplog):
    """A few hundred random mutations of a Prometheus-like head (fixed seed): each
    is answered with a status line, or closed (the head never ended before the
    client's EOF), or is an HTTP/0.9 line answered with a bare body; none is
    an error in the server, and a real scrape is served after them all."""
    server = serve()
    base = (
        b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\nAccept: text/plain;q=0.5\r\n"
        b"Accept-Encoding: gzip\r\n\r\n"
    )
    rng = random.Random(19)
    statuses = set()
    for _ in range(300):
        head = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(head))
            kind = rng.randrange(3)
            if kind == 0:
                head[at] = rng.randrange(256)
            elif kind == 1:
                head[at:at] = bytes([rng.choice(b"\r\n :;,?/\x00\x80\xff\t")])
            else:
                del head[at]
        with socket.create_connection(("127.0.0.1", server.address[1]), timeout=10) as sock:
            sock.sendall(head)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
        first_line = bytes(head).split(b"\n", 1)[0].split()
        if answer.startswith(b"HTTP/1.1 "):
            statuses.add(int(answer[9:12]))
        else:
            assert answer == b"" or len(first_line) == 2, (bytes(head), answer[:100])
    assert statuses <= {200, 400, 404, 405, 431, 501, 505}, statuses
    assert {200, 400} <= statuses
    assert request(server)[0] == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


class FailingOnce(BoundedHTTPServer):
    """A bug on the selector thread, once: the first head it reads raises."""

    failed = False

    def _read(self, conn) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug")
        super()._read(conn)


def test_a_bug_on_the_selector_thread_closes_one_connection_not_the_server(caplog):
    server = FailingOnce(("127.0.0.1", 0), {"/": lambda r: Response(200, "text/plain", b"hi\n")})
    server.start()
    try:
        port = server.address[1]
        assert _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
        assert _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").endswith(b"\r\n\r\nhi\n")
        assert "RuntimeError: a bug" in caplog.text
    finally:
        server.close()
