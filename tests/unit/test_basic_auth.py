"""Basic auth under a flood of wrong passwords: bcrypt runs are counted through
the injectable `BasicAuth.checkpw` hook (real bcrypt underneath), never timed.

Before: every request with a wrong password cost a bcrypt check (~50 ms at
cost 10) on every worker at once, so 100 requests/s pinned both CPUs and
/healthz and /metrics waited seconds behind them.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import random
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter.listen import Listen
from exporter.model import counter
from exporter.outputs import health
from exporter.outputs.prometheus import PrometheusServer
from exporter.outputs.webconfig import (
    FAILED_CAPACITY,
    SUSPECTS_CAPACITY,
    AuthResult,
    BasicAuth,
    BcryptGate,
    load_web_config,
)

PASSWORD = b"s3cret-scrape"


def basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


class CountingCheck:
    """Wraps bcrypt.checkpw: counts runs and the most running at once; with
    `hold`, each run waits until the test sets it (a check in progress)."""

    def __init__(self, check: Callable[[bytes, bytes], bool] = bcrypt.checkpw) -> None:
        self.check = check
        self.runs = 0
        self.running = 0
        self.most = 0
        self.hold: threading.Event | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.runs += 1
            self.running += 1
            self.most = max(self.most, self.running)
        self.entered.set()
        try:
            if self.hold is not None:
                assert self.hold.wait(30)
            return self.check(password, hashed)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture(scope="module")
def hashed() -> bytes:
    return bcrypt.hashpw(PASSWORD, bcrypt.gensalt(10))


def make_auth(hashed: bytes, check: CountingCheck, **extra) -> BasicAuth:
    # share=1.0: no rest between checks, so the unit tests below depend on order only.
    return BasicAuth({"prom": hashed}, checkpw=check, gate=BcryptGate(share=1.0), **extra)


def test_each_credential_costs_one_bcrypt_whether_it_fails_or_passes(hashed):
    check = CountingCheck()
    auth = make_auth(hashed, check)
    for _ in range(5):
        assert auth.verify(basic("prom", b"wrong"), "10.0.0.1") is AuthResult.DENIED
    assert check.runs == 1
    for _ in range(5):
        assert auth.verify(basic("prom", PASSWORD), "10.0.0.2") is AuthResult.OK
    assert check.runs == 2  # the real scraper pays bcrypt once, not per scrape
    assert auth.verify(basic("prom", PASSWORD + b"x"), "10.0.0.2") is AuthResult.DENIED
    assert auth.verify(basic("other", PASSWORD), "10.0.0.2") is AuthResult.DENIED
    assert check.runs == 4
    # No credentials at all cost nothing.
    assert auth.verify(None, "10.0.0.3") is AuthResult.DENIED
    assert auth.verify("Bearer x", "10.0.0.3") is AuthResult.DENIED
    assert check.runs == 4


def test_the_cache_does_not_tell_unknown_users_from_known_ones(hashed):
    """The same sequence of bcrypt runs, against hashes of the same cost, and the
    same answers, whether the user exists or not: first try one bcrypt, repeats
    none. (Before 6dccd2b the dummy hash was cheaper; a cache that remembered
    only known users' failures would reopen the same oracle.)"""
    runs: dict[str, list[int]] = {}
    checked: dict[str, list[bytes]] = {}
    for user in ("prom", "nobody"):
        check = CountingCheck()
        seen: list[bytes] = []
        check.check = lambda p, h, seen=seen: seen.append(h[:7]) or bcrypt.checkpw(p, h)
        auth = make_auth(hashed, check)
        runs[user] = []
        for password in (b"a", b"a", b"b", b"a", b"b"):
            assert auth.verify(basic(user, password), "10.0.0.1") is AuthResult.DENIED
            runs[user].append(check.runs)
        checked[user] = seen
    assert runs["prom"] == runs["nobody"] == [1, 1, 2, 2, 2]
    assert checked["prom"] == checked["nobody"] == [hashed[:7]] * 2  # $2b$10$ both times


def test_a_password_longer_than_bcrypt_reads_is_denied_alike_for_any_user(hashed):
    """bcrypt>=5 raises on passwords over 72 bytes: for an unknown user (the
    dummy check) that ended the request without an answer, for a known one it
    was a 401, which told the two apart. Both are checked on their first 72 bytes."""
    check = CountingCheck()
    auth = make_auth(hashed, check)
    long = b"x" * 100
    assert auth.verify(basic("nobody", long), "10.0.0.1") is AuthResult.DENIED
    assert auth.verify(basic("prom", long), "10.0.0.1") is AuthResult.DENIED
    assert check.runs == 2
    # htpasswd cuts at 72 bytes too: a long password whose hash was made that way works.
    long_hash = bcrypt.hashpw(long[:72], bcrypt.gensalt(4))
    auth = BasicAuth({"prom": long_hash}, checkpw=check)
    assert auth.verify(basic("prom", long), "10.0.0.1") is AuthResult.OK


def test_one_bcrypt_at_a_time_a_clean_client_waits_first_the_rest_are_refused(hashed):
    check = CountingCheck()
    auth = make_auth(hashed, check, wait=30.0, suspect_wait=0.0)
    assert auth.verify(basic("prom", b"wrong"), "10.0.0.66") is AuthResult.DENIED  # a suspect now
    check.hold = threading.Event()
    check.entered.clear()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(auth.verify, basic("prom", b"guess-1"), "10.0.0.66")
        assert check.entered.wait(10)  # a check is running (held)
        # A client that just failed, with a new guess: refused at once, no bcrypt.
        assert auth.verify(basic("prom", b"guess-2"), "10.0.0.66") is AuthResult.BUSY
        # A client that never failed waits for the gate...
        scraper = pool.submit(auth.verify, basic("prom", PASSWORD), "10.0.0.2")
        until(lambda: scraper.done() or auth.gate._waiting[True] == 1)
        assert not scraper.done()
        # ... one at a time: a second clean client is refused while it waits.
        assert auth.verify(basic("nobody", b"x"), "10.0.0.3") is AuthResult.BUSY
        # Remembered results need no gate, even while it is taken.
        assert auth.verify(basic("prom", b"wrong"), "10.0.0.66") is AuthResult.DENIED
        check.hold.set()
        assert first.result(10) is AuthResult.DENIED
        assert scraper.result(10) is AuthResult.OK
    assert check.most == 1
    assert check.runs == 3  # wrong, guess-1, the scraper's password
    assert auth.refused_busy == 2


def test_remembered_failures_and_suspect_hosts_are_bounded(hashed):
    """The LRU holds FAILED_CAPACITY failures: the oldest is forgotten (checked
    again when it returns), the newest stay; hosts likewise."""
    check = CountingCheck(check=lambda password, hashed: False)  # the count is under test
    auth = make_auth(hashed, check)
    for i in range(FAILED_CAPACITY + 10):
        host = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        assert auth.verify(basic("prom", b"%d" % i), host) is AuthResult.DENIED
    assert check.runs == FAILED_CAPACITY + 10
    assert len(auth._failed) == FAILED_CAPACITY
    assert len(auth._suspects) == SUSPECTS_CAPACITY
    auth.verify(basic("prom", b"%d" % (FAILED_CAPACITY + 9)), "10.0.0.1")
    assert check.runs == FAILED_CAPACITY + 10  # recent: remembered
    auth.verify(basic("prom", b"0"), "10.0.0.1")
    assert check.runs == FAILED_CAPACITY + 11  # the oldest: forgotten, checked again


def test_the_cache_key_is_secret_per_process(hashed):
    """Keys are HMACs with a random key: two servers never share them, and no
    plain hash of a password is kept."""
    check = CountingCheck()
    first, second = make_auth(hashed, check), make_auth(hashed, check)
    first.verify(basic("prom", b"wrong"), "10.0.0.1")
    second.verify(basic("prom", b"wrong"), "10.0.0.1")
    assert first._failed.keys() != second._failed.keys()
    assert hashlib.sha256(b"wrong").digest() not in first._failed


def until(condition: Callable[[], bool], polls: int = 2400) -> None:
    """Polls (every 50 ms, 2 minutes at most) so that a broken server fails the test
    instead of hanging it."""
    for _ in range(polls):
        if condition():
            return
        threading.Event().wait(0.05)
    raise AssertionError("condition not reached")


def _get(port: int, path: str, source: str, authorization: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Authorization": authorization} if authorization else {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _fire_and_forget(port: int, authorization: str) -> None:
    """The issue's attacker: sends and never reads the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n\r\n".encode()
        )


def test_a_flood_of_wrong_passwords_runs_one_bcrypt_at_a_time_and_health_and_the_scraper_are_served(
    tmp_path: Path, hashed: bytes
):
    """Real sockets, real bcrypt (cost 10): attackers on 127.0.0.1 send the same
    wrong password, fresh random ones, and requests they never read; meanwhile a
    scraper on 127.0.0.2 with the right password and the kubelet's /healthz and
    /readyz are all answered, bcrypt never runs twice at once, and each distinct
    wrong credential costs at most one bcrypt (exactly: one per 401 it got)."""
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {"prom": hashed.decode()}}))
    web_config = load_web_config(path)
    assert web_config.auth is not None
    auth = web_config.auth
    check = CountingCheck()
    auth.checkpw = check
    auth.wait = 60.0  # the scraper's first check waits for the gate however loaded this VM is

    def families():
        family = counter("orb8_syscalls_total", "syscalls", ("namespace", "pod", "syscall"))
        family.add(("shop", "web-1", "read"), 42)
        return [family]

    server = PrometheusServer(
        Listen("127.0.0.1", 0),
        families,
        lambda: "landing",
        routes={"/healthz": health.liveness, "/readyz": lambda: health.readiness(True, {}, None)},
        web_config=web_config,
    )
    server.start()
    port = server.address[1]
    stop = threading.Event()
    statuses: dict[str, list[int]] = {"same": [], "random": []}

    def attack(kind: str) -> None:
        rng = random.Random()
        while not stop.is_set():
            password = b"wrong" if kind == "same" else b"guess-%d" % rng.getrandbits(64)
            statuses[kind].append(_get(port, "/metrics", "127.0.0.1", basic("prom", password)))

    def forget() -> None:
        while not stop.wait(0.02):  # ~50 requests/s each, as the attacker
            _fire_and_forget(port, basic("prom", b"wrong"))

    attackers = [threading.Thread(target=attack, args=("same",)) for _ in range(3)]
    attackers += [threading.Thread(target=attack, args=("random",)) for _ in range(3)]
    attackers += [threading.Thread(target=forget) for _ in range(2)]
    try:
        for thread in attackers:
            thread.start()
        # Until the attackers' host has failed once and none of its first requests
        # (which found a host without failures) still waits first in line.
        until(lambda: "127.0.0.1" in auth._suspects and not auth.gate._waiting[True])
        answers = []
        for _ in range(10):
            answers.append(("/healthz", _get(port, "/healthz", "127.0.0.2")))
            answers.append(("/readyz", _get(port, "/readyz", "127.0.0.2")))
            metrics = _get(port, "/metrics", "127.0.0.2", basic("prom", PASSWORD))
            answers.append(("/metrics", metrics))
        assert answers == [("/healthz", 200), ("/readyz", 503), ("/metrics", 200)] * 10
        until(lambda: sum(map(len, statuses.values())) >= 60)  # enough of the flood seen
    finally:
        stop.set()
        for thread in attackers:
            thread.join(30)
        server.close()
    assert check.most == 1, "bcrypt ran concurrently"
    assert set(statuses["same"]) <= {401, 429} and 401 in statuses["same"]
    assert set(statuses["random"]) <= {401, 429}
    assert 429 in statuses["random"], "random guesses were never refused: the gate did not bind"
    # One bcrypt for the repeated wrong password, one per random guess answered 401
    # (a fresh guess is never remembered), one for the scraper's password.
    assert check.runs == 1 + statuses["random"].count(401) + 1, (check.runs, statuses)


def test_the_gate_rests_as_long_as_a_check_took_so_bcrypt_gets_at_most_half_a_core():
    now = [100.0]
    gate = BcryptGate(share=0.5, clock=lambda: now[0])
    assert gate.enter(0.0)
    assert not gate.enter(0.0)  # one at a time
    now[0] += 0.06
    gate.leave(0.06)
    assert not gate.enter(0.0)  # resting: 0.06 s more
    now[0] += 0.059
    assert not gate.enter(0.0)
    now[0] += 0.002
    assert gate.enter(0.0)
    gate.leave(0.0)
    assert gate.enter(0.0)  # a check that ran no bcrypt (found in the cache) needs no rest
    gate.leave(0.0)


def test_a_trusted_waiter_goes_before_one_with_failures():
    gate = BcryptGate(share=1.0)
    assert gate.enter(0.0)
    order: list[str] = []

    def wait(name: str, trusted: bool) -> None:
        assert gate.enter(30.0, trusted)
        order.append(name)
        gate.leave(0.0)

    with ThreadPoolExecutor(2) as pool:
        suspect = pool.submit(wait, "suspect", False)
        until(lambda: gate._waiting[False] == 1)
        trusted = pool.submit(wait, "trusted", True)
        until(lambda: gate._waiting[True] == 1)
        assert not gate.enter(30.0, True) and not gate.enter(30.0, False)  # one of each
        gate.leave(0.0)
        suspect.result(10), trusted.result(10)
    assert order == ["trusted", "suspect"]


def test_over_http_a_long_password_gets_401_for_unknown_and_known_users(tmp_path, hashed):
    """Before: bcrypt>=5 raised on the dummy check, so an unknown user with a
    100-byte password got no answer at all while a known one got 401."""
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {"prom": hashed.decode()}}))
    server = PrometheusServer(
        Listen("127.0.0.1", 0), lambda: [], lambda: "", web_config=load_web_config(path)
    )
    server.start()
    try:
        for user in ("nobody", "prom"):
            status = _get(server.address[1], "/metrics", "127.0.0.1", basic(user, b"y" * 100))
            assert status == 401, user
    finally:
        server.close()
