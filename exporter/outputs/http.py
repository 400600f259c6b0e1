"""A small HTTP/1.1 server whose cost stays bounded whatever the clients do.

One selector thread accepts connections and reads request heads without
blocking; a fixed pool of worker threads builds and writes responses. So:
  - threads are fixed (1 + `workers`, +1 with `fast_paths`), however many
    clients connect;
  - at most `max_connections` sockets are held; at the limit the oldest
    connection still sending its request is closed to make room, so an idle
    or slow crowd cannot lock a real scraper (which sends at once) out;
  - a request head must arrive complete within `header_timeout` seconds and
    fit in `MAX_HEAD` bytes (measured before the head is taken as complete,
    so a big head arriving in one burst is refused too); a response must be
    taken by the client within `write_timeout` seconds; one request per
    connection (Connection: close);
  - the listen backlog is real (`backlog`, up to net.core.somaxconn);
  - requests for `fast_paths` (/healthz, /readyz) have their own queue and
    worker, so a liveness probe never waits behind scrapes or password
    checks that hold the other workers.

Requests are parsed by the standard library's BaseHTTPRequestHandler (request
line, headers, HTTP/0.9 and error replies) over the buffered head; handlers
are a route table, path -> function(Request) -> Response, so endpoints
(/healthz, ...) are one entry each. Only GET and HEAD are served: no endpoint
takes a body.

With an SSLContext (`tls`), the selector thread also drives each TLS
handshake without blocking (SSLContext.wrap_socket with
do_handshake_on_connect=False), inside the same header deadline, so slow or
silent TLS clients cost no worker. A client that speaks plain HTTP to the TLS
port gets a 400 saying so instead of a connection reset.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # bytes of request line + headers; Prometheus sends < 1 KiB
TLS_HANDSHAKE_RECORD = 0x16  # first byte of every TLS ClientHello
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)


@dataclass
class Request:
    method: str  # GET or HEAD
    path: str  # without the query string
    query: str
    headers: Mapping[str, str]
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
    head: bytearray = field(default_factory=bytearray)
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
        self.fast_paths = frozenset(path.encode("latin-1") for path in fast_paths)
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

    # -- selector thread: accept and read heads ----------------------------

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
                elif key.data.tls_state == "hello":
                    self._tls_hello(key.data)
                elif key.data.tls_state == "handshake":
                    self._tls_handshake(key.data)
                else:
                    self._read(key.data)
            self._expire(time.monotonic())

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
        conn.head += data
        # The size first: a head that ends inside this read is still refused when
        # it is too long (a 20 KB head in one burst used to be served).
        length = _head_length(conn.head)
        if (len(conn.head) if length is None else length) > MAX_HEAD:
            self._unregister(conn)
            conn.sock.setblocking(True)
            conn.sock.settimeout(1.0)
            with contextlib.suppress(OSError):
                conn.sock.sendall(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
            _close(conn.sock)
        elif length is not None:
            self._unregister(conn)
            self._enqueue(conn)

    def _enqueue(self, conn: _Conn) -> None:
        lane = self._fast if self._is_fast(conn) else self._ready
        try:
            lane.put_nowait(conn)
        except queue.Full:
            _close(conn.sock)

    def _is_fast(self, conn: _Conn) -> bool:
        """The request line names a fast path; the full parse stays with the handler."""
        if not self.fast_paths or conn.plain_on_tls:
            return False
        words = bytes(conn.head).split(b"\n", 1)[0].split()
        return len(words) >= 2 and words[1].split(b"?", 1)[0] in self.fast_paths

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

    # -- workers: parse, route, write --------------------------------------

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
        writer = _DeadlineWriter(conn.sock, self.write_timeout)
        _Handler(bytes(conn.head), writer, conn.address, self.routes)
        writer.flush_all()


def _head_length(head: bytearray) -> int | None:
    """Bytes of the first request head in `head` (what follows may be a body or a
    pipelined request), or None while it has not ended."""
    ends = [at + len(end) for end in (b"\r\n\r\n", b"\n\n") if (at := head.find(end)) >= 0]
    if ends:
        return min(ends)
    # HTTP/0.9 ("GET /path" and a newline) has no headers; answer it rather than wait.
    newline = head.find(b"\n")
    if newline >= 0 and len(head[:newline].split()) < 3:
        return newline + 1
    return None


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


def _host(address: Any) -> str:
    """The peer's host from a socket address ((host, port) or (host, port, flow, scope))."""
    if isinstance(address, tuple) and address:
        return str(address[0])
    return ""


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class _DeadlineWriter(io.RawIOBase):
    """Collects the response, then sends it all within one deadline (not one per send)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        return len(chunk)

    def flush_all(self) -> None:
        data = memoryview(b"".join(self._parts))
        self._parts = []
        deadline = time.monotonic() + self._timeout
        while data:
            left = deadline - time.monotonic()
            if left <= 0:
                log.debug("http client too slow to take its response: closed")
                return
            self._sock.settimeout(left)
            try:
                sent = self._sock.send(data)
            except (TimeoutError, ConnectionError, OSError):
                return  # the client went away or is too slow: nothing more to do
            data = data[sent:]


class _Handler(BaseHTTPRequestHandler):
    """The standard library's request parsing over an already buffered request head."""

    server_version = "orb8"
    protocol_version = "HTTP/1.1"

    def __init__(
        self, head: bytes, writer: _DeadlineWriter, address: Any, routes: Mapping[str, Route]
    ) -> None:
        self._head, self._writer, self._routes = head, writer, routes
        self.client_address = address
        self.rfile = io.BytesIO(head)
        self.wfile = writer  # type: ignore[assignment]
        self.close_connection = True
        self.handle_one_request()

    def handle_one_request(self) -> None:
        self.raw_requestline = self.rfile.readline(MAX_HEAD + 1)
        if not self.raw_requestline or not self.parse_request():
            return
        self.close_connection = True
        if self.command not in ("GET", "HEAD"):
            self._respond(
                Response(405, "text/plain; charset=utf-8", b"only GET and HEAD\n"),
                {"Allow": "GET, HEAD"},
            )
            return
        path, _, query = self.path.partition("?")
        route = self._routes.get(path)
        if route is None:
            response = Response(404, "text/plain; charset=utf-8", b"not found; try /metrics\n")
        else:
            headers = {k: v for k, v in self.headers.items()}
            request = Request(self.command, path, query, headers, _host(self.client_address))
            response = route(request)
        self._respond(response)

    def _respond(self, response: Response, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Connection", "close")
        for key, value in {**response.headers, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.client_address, *args)
