"""A small HTTP/1.1 server whose cost stays bounded whatever the clients do.

HTTP itself (request line and header syntax, framing, HEAD, the response
head) is h11's, the sans-IO HTTP/1.1 implementation under uvicorn and
httpcore. It is stricter than http.server, which parsed here before: a
header line without a colon or with a space before it, two Host or two
different Content-Length fields, and an HTTP/1.1 request without Host get a
400 (heads a proxy in front might read otherwise). What stays here are the
bounds no HTTP library keeps for us (docs/architecture.md, "HTTP server").

One selector thread accepts connections, drives TLS handshakes and feeds
request heads to h11 without blocking; a fixed pool of worker threads
builds and writes responses. So:
  - threads are fixed (1 + `workers`, +1 with `fast_paths`), however many
    clients connect;
  - at most `max_connections` sockets are held; at the limit the oldest
    connection still sending its request is closed to make room, so an idle
    or slow crowd cannot lock a real scraper (which sends at once) out;
  - a request head must arrive complete within `header_timeout` seconds
    (TLS handshake included) and fit in `MAX_HEAD` bytes: h11 is never
    given more than that, so a head it cannot complete within them is too
    long (431) even when its end came in the same burst; a response must
    be taken by the client within `write_timeout` seconds; one request per
    connection (Connection: close);
  - the listen backlog is real (`backlog`, up to net.core.somaxconn);
  - requests for `fast_paths` (/healthz, /readyz) have their own queue and
    worker, so a liveness probe never waits behind scrapes or password
    checks that hold the other workers.

Handlers are a route table, path -> function(Request) -> Response, so
endpoints (/healthz, ...) are one entry each. Only GET and HEAD are served:
no endpoint takes a body. An HTTP/0.9 "GET /path" line (no version, no
headers; h11 speaks 1.0 and 1.1 only) is answered with the bare body, as
http.server did, rather than left waiting for a blank line.

With an SSLContext (`tls`), the selector thread drives each TLS handshake
without blocking (SSLContext.wrap_socket with do_handshake_on_connect=False),
inside the same header deadline, so slow or silent TLS clients cost no
worker. A client that speaks plain HTTP to the TLS port (its first byte,
peeked before any TLS, is no handshake record) gets a 400 saying so instead
of a connection reset.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # bytes of request line + headers; Prometheus sends < 1 KiB
# Header fields kept per parsed request (http.client's limit, which http.server
# enforced): parsed heads wait in a queue of up to max_connections, and 16 KiB
# of one-byte fields would be ~3,000 objects each.
MAX_FIELDS = 100
TLS_HANDSHAKE_RECORD = 0x16  # first byte of every TLS ClientHello
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
TEXT = "text/plain; charset=utf-8"


class Headers(Mapping[str, str]):
    """A request's header fields by case-insensitive name; repeated fields are
    joined with ", " (RFC 9110 5.3), so two Authorization fields are one
    malformed credential, not a choice between them."""

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self._fields: dict[str, str] = {}
        for name, value in fields:  # h11 gives names lower-cased
            key, text = name.decode("ascii"), value.decode("latin-1")
            self._fields[key] = f"{self._fields[key]}, {text}" if key in self._fields else text

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


@dataclass
class Request:
    method: str  # GET or HEAD
    path: str  # without the query string
    query: str
    headers: Mapping[str, str]  # by case-insensitive name
    client: str = ""  # the peer's address without the port ("" when unknown)


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[[Request], Response]


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    address: Any
    opened: float
    parser: h11.Connection = field(
        default_factory=lambda: h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    )
    fed: int = 0  # bytes given to the parser, at most MAX_HEAD
    first_line: bool = False  # a newline arrived: the request line is complete
    request: Request | None = None  # the head, parsed
    http09: bool = False  # request has no version: answer with the bare body
    tls_state: str = ""  # "hello": first byte not seen yet; "handshake"; "": reading the head
    plain_on_tls: bool = False  # spoke plain HTTP to the TLS port: answered with a 400


class BoundedHTTPServer:
    """Serves `routes` on `address` with fixed threads and bounded connections."""

    def __init__(
        self,
        address: tuple[str, int],
        routes: Mapping[str, Route],
        *,
        workers: int = 4,
        max_connections: int = 256,
        header_timeout: float = 5.0,
        write_timeout: float = 10.0,
        backlog: int = 512,
        family: socket.AddressFamily = socket.AF_INET,
        tls: ssl.SSLContext | None = None,
        fast_paths: Collection[str] = (),
        fast_queue: int = 64,
    ) -> None:
        self.routes = dict(routes)
        self.fast_paths = frozenset(fast_paths)
        self.tls = tls
        self.workers = workers
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout
        # Bound (and listening) here, before the caller does anything slow:
        # a bad or busy address fails at once.
        self.socket = socket.create_server(address, family=family, backlog=backlog)
        self.socket.setblocking(False)
        self.address = self.socket.getsockname()
        self.closed_for_capacity = 0  # connections closed to make room (for tests and logs)
        self._reading: dict[int, _Conn] = {}  # fd -> connection still sending its head
        self._ready: queue.Queue[_Conn | None] = queue.Queue(maxsize=max_connections)
        # Health requests answer from flags in microseconds: their own small queue
        # and worker, so they never wait behind a slow collect or a bcrypt check.
        self._fast: queue.Queue[_Conn | None] = queue.Queue(maxsize=fast_queue)
        self._in_work = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._selector.register(self.socket, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        threads = [threading.Thread(target=self._loop, name="http", daemon=True)]
        threads += [
            threading.Thread(
                target=self._work, args=(self._ready,), name=f"http-worker-{i}", daemon=True
            )
            for i in range(self.workers)
        ]
        if self.fast_paths:
            threads.append(
                threading.Thread(
                    target=self._work, args=(self._fast,), name="http-health", daemon=True
                )
            )
        self._threads = threads
        for thread in threads:
            thread.start()

    def close(self, timeout: float = 1.0) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        for _ in range(self.workers):
            with contextlib.suppress(queue.Full):
                self._ready.put_nowait(None)
        with contextlib.suppress(queue.Full):
            self._fast.put_nowait(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for conn in list(self._reading.values()):
            _close(conn.sock)
        self._reading.clear()
        with contextlib.suppress(Exception):
            self._selector.close()
        for sock in (self.socket, self._wake_r, self._wake_w):
            _close(sock)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._reading) + self._ready.qsize() + self._fast.qsize() + self._in_work

    # -- selector thread: accept, TLS handshakes, request heads -------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                events = self._selector.select(timeout=0.5)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                raise
            for key, _ in events:
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                else:
                    self._step(key.data)
            self._expire(time.monotonic())

    def _step(self, conn: _Conn) -> None:
        """One connection's turn. Heads are parsed on this thread, which serves
        every client: a bug here closes that connection, not the server."""
        try:
            if conn.tls_state == "hello":
                self._tls_hello(conn)
            elif conn.tls_state == "handshake":
                self._tls_handshake(conn)
            else:
                self._read(conn)
        except Exception as e:
            log.error("http connection from %s failed: %s: %s", conn.address, type(e).__name__, e)
            log.debug("http connection failure", exc_info=True)
            self._drop(conn)

    def _accept(self) -> None:
        for _ in range(64):  # a burst, then let reads run
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: shed the oldest, try again later
                log.warning("http accept failed: %s", e)
                self._shed_oldest()
                return
            if self.open_connections >= self.max_connections:
                self._shed_oldest()
            sock.setblocking(False)
            conn = _Conn(sock, address, time.monotonic())
            if self.tls is not None:
                conn.tls_state = "hello"
            with self._lock:
                self._reading[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _tls_hello(self, conn: _Conn) -> None:
        try:
            first = conn.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        if not first:
            self._drop(conn)
            return
        self._unregister(conn)
        if first[0] != TLS_HANDSHAKE_RECORD:
            conn.plain_on_tls = True  # a worker answers and drains it
            self._enqueue(conn)
            return
        assert self.tls is not None
        try:  # detaches the plain socket: re-register the TLS one
            conn.sock = self.tls.wrap_socket(
                conn.sock, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as e:
            log.debug("TLS setup failed for %s: %s", conn.address, e)
            _close(conn.sock)
            return
        conn.tls_state = "handshake"
        with self._lock:
            self._reading[conn.sock.fileno()] = conn
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        self._tls_handshake(conn)

    def _tls_handshake(self, conn: _Conn) -> None:
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(sock, selectors.EVENT_WRITE, conn)
            return
        except (OSError, ValueError) as e:  # bad certificate, wrong protocol, reset
            log.debug("TLS handshake with %s failed: %s", conn.address, e)
            self._drop(conn)
            return
        conn.tls_state = ""
        self._selector.modify(sock, selectors.EVENT_READ, conn)
        self._read(conn)  # the request may already sit decrypted in the TLS buffer

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
            while isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
                data += conn.sock.recv(min(conn.sock.pending(), MAX_HEAD + 1))
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        room = MAX_HEAD - conn.fed
        if room > 0:  # (h11 takes b"" for the end of the stream)
            conn.parser.receive_data(data[:room])
            conn.fed += min(len(data), room)
        try:
            event = conn.parser.next_event()
        except h11.RemoteProtocolError as e:
            log.debug("bad request head from %s: %s", conn.address, e)
            self._refuse(conn, e.error_status_hint, "bad request\n")
            return
        if isinstance(event, h11.Request):
            if len(event.headers) > MAX_FIELDS:
                self._refuse(conn, 431, f"over {MAX_FIELDS} header fields\n")
                return
            conn.request = _request(event, conn.address)
        elif len(data) > room:  # h11 had all MAX_HEAD bytes and the head has not ended
            self._refuse(conn, 431, f"request head over {MAX_HEAD} bytes\n")
            return
        elif not conn.first_line and b"\n" in data:
            conn.first_line = True
            words = conn.parser.trailing_data[0].split(b"\n", 1)[0].split()
            if len(words) < 3:  # no version: HTTP/0.9, which h11 does not speak
                if len(words) != 2 or words[0] != b"GET":
                    self._refuse(conn, 400, "bad request\n")
                    return
                path, _, query = words[1].decode("latin-1").partition("?")
                conn.request = Request("GET", path, query, Headers([]), _host(conn.address))
                conn.http09 = True
        if conn.request is not None:
            self._unregister(conn)
            self._enqueue(conn)

    def _refuse(self, conn: _Conn, status: int, text: str) -> None:
        """An answer no route needs (431, 400), sent from this thread: it fits in
        the socket's empty send buffer, so the send does not wait."""
        self._unregister(conn)
        conn.sock.setblocking(True)
        conn.sock.settimeout(1.0)
        with contextlib.suppress(OSError, h11.LocalProtocolError):
            conn.sock.sendall(_frame(conn.parser, "GET", Response(status, TEXT, text.encode())))
        _close(conn.sock)

    def _enqueue(self, conn: _Conn) -> None:
        fast = conn.request is not None and conn.request.path in self.fast_paths
        lane = self._fast if fast else self._ready
        try:
            lane.put_nowait(conn)
        except queue.Full:
            _close(conn.sock)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._reading.values() if now - c.opened > self.header_timeout]:
            self._drop(conn)

    def _shed_oldest(self) -> None:
        """Make room: close the connection that has been sending its request the longest."""
        with self._lock:
            oldest = min(self._reading.values(), key=lambda c: c.opened, default=None)
        if oldest is not None:
            self.closed_for_capacity += 1
            self._drop(oldest)

    def _unregister(self, conn: _Conn) -> None:
        with self._lock:
            self._reading.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)

    def _drop(self, conn: _Conn) -> None:
        self._unregister(conn)
        _close(conn.sock)

    # -- workers: route, write ---------------------------------------------

    def _work(self, lane: queue.Queue[_Conn | None]) -> None:
        while True:
            conn = lane.get()
            if conn is None or self._stop.is_set():
                if conn is not None:
                    _close(conn.sock)
                return
            with self._lock:
                self._in_work += 1
            try:
                self._serve(conn)
            except Exception as e:  # a bug: one line, the traceback at debug level
                log.error("http request from %s failed: %s: %s", conn.address, type(e).__name__, e)
                log.debug("http request failure", exc_info=True)
            finally:
                _close(conn.sock)
                with self._lock:
                    self._in_work -= 1

    def _serve(self, conn: _Conn) -> None:
        conn.sock.setblocking(True)
        if conn.plain_on_tls:
            _answer_plain_http(conn.sock)
            return
        request = conn.request
        assert request is not None
        response = self._route(request, conn.parser.their_http_version)
        data = response.body if conn.http09 else _frame(conn.parser, request.method, response)
        _send_all(conn.sock, data, self.write_timeout)

    def _route(self, request: Request, version: bytes | None) -> Response:
        if version is not None and version >= b"2":
            # An HTTP/2 preface (PRI * HTTP/2.0) or a 2.0 request line: http.server's 505.
            return Response(505, TEXT, b"not served over HTTP/2: use HTTP/1.1\n")
        if request.method not in ("GET", "HEAD"):
            return Response(405, TEXT, b"only GET and HEAD\n", {"Allow": "GET, HEAD"})
        route = self.routes.get(request.path)
        if route is None:
            return Response(404, TEXT, b"not found; try /metrics\n")
        return route(request)


def _request(event: h11.Request, address: Any) -> Request:
    path, _, query = event.target.decode("ascii").partition("?")  # h11 allows only VCHARs
    method = event.method.decode("ascii")
    return Request(method, path, query, Headers(list(event.headers)), _host(address))


def _frame(parser: h11.Connection, method: str, response: Response) -> bytes:
    """The response on the wire, framed by h11: status line, headers, the body
    unless the request was HEAD, one request per connection."""
    headers = [
        ("Server", "orb8"),
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        ("Connection", "close"),
        *response.headers.items(),
    ]
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    head = parser.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
    body = b"" if method == "HEAD" else parser.send(h11.Data(data=response.body))
    parser.send(h11.EndOfMessage())  # checks the body against Content-Length
    return b"".join((head or b"", body or b""))


def _answer_plain_http(sock: socket.socket) -> None:
    """The 400, then finish our side and read what the client sent: closing a
    socket with unread input makes the kernel send a reset, which can destroy
    the 400 before the client reads it. One deadline for all of it: a client
    trickling bytes must not hold a worker."""
    deadline = time.monotonic() + 1.0
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(PLAIN_HTTP_ANSWER)
        sock.shutdown(socket.SHUT_WR)
        received = 0
        while received < 65536 and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += len(chunk)


def _send_all(sock: socket.socket, data: bytes, timeout: float) -> None:
    """All of `data` within one deadline (not one per send): a client reading
    a byte at a time must not hold a worker for long."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            log.debug("http client too slow to take its response: closed")
            return
        sock.settimeout(left)
        try:
            sent = sock.send(view)
        except (TimeoutError, ConnectionError, OSError):
            return  # the client went away or is too slow: nothing more to do
        view = view[sent:]


def _host(address: Any) -> str:
    """The peer's host from a socket address ((host, port) or (host, port, flow, scope))."""
    if isinstance(address, tuple) and address:
        return str(address[0])
    return ""


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
