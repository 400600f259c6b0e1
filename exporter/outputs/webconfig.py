"""--web-config-file: TLS, client certificates and basic auth for /metrics.

The file has the Prometheus exporter-toolkit format, so a team that secures
node_exporter with a web config can point orb8 at the same file:

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional mTLS
      client_ca_file: ca.crt
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...                         # bcrypt hash

Relative paths are relative to the file, as in exporter-toolkit. Keys that
exporter-toolkit knows but Python's ssl module cannot honour (cipher_suites,
curve_preferences, RequestClientCert, ...) and unknown keys are rejected at
start with the key named, never silently ignored: a security setting that
does nothing is worse than an error. The file is read once at start.

/healthz and /readyz are exempt from basic auth: the kubelet's httpGet probes
could only send a password written in clear into the pod spec, and they carry
no workload data. exporter-toolkit guards every path unless listed in an
`auth_excluded_paths` setting (found in some of its versions, for exactly
this) and node_exporter has no health path; orb8 exempts the two health
paths by design and serves them on their own HTTP lane, so they never wait
behind password checks. A client certificate, when required, is required at
the TLS handshake for every path, as in exporter-toolkit.

Password checks have a bounded cost (BasicAuth): results are remembered,
one bcrypt runs at a time and at most half a core; see docs/operating.md.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import ipaddress
import logging
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

log = logging.getLogger(__name__)

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit modes that accept an unverified certificate: Python's ssl
# cannot express "ask for a certificate but do not verify it".
UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version"}  # fmt: skip
UNSUPPORTED_TLS_KEYS = {"cert", "key", "client_ca", "cipher_suites", "curve_preferences",
                        "prefer_server_cipher_suites", "client_allowed_sans"}  # fmt: skip
TOP_KEYS = {"tls_server_config", "basic_auth_users"}
UNSUPPORTED_TOP_KEYS = {"http_server_config", "rate_limit"}


class WebConfigError(ValueError):
    """The web config file is invalid; the message names the file and key."""


class AuthResult(enum.Enum):
    OK = "ok"
    DENIED = "denied"  # 401
    BUSY = "busy"  # 429: a password check is running and this one may not wait


BCRYPT_MAX_PASSWORD = 72  # bcrypt reads no further; bcrypt>=5 raises instead of truncating
FAILED_CAPACITY = 4096  # failed credentials remembered (LRU)
PASSED_CAPACITY = 64  # correct credentials remembered (LRU; bcrypt's 72-byte cut makes many)
SUSPECTS_CAPACITY = 1024  # client hosts with a recent failure (LRU)
SUSPECT_SECONDS = 60.0  # a host that failed this recently waits less, and second
REPORT_SECONDS = 60.0  # at most one warning about failures per minute


class BcryptGate:
    """At most one bcrypt at a time, busy at most `share` of the time (after a
    check that took t seconds the next starts no sooner than t * (1/share - 1)
    later), and at most one waiter per class: one "trusted" caller (a client
    without recent failures), which goes first, and one other. Everyone else
    is refused at once. So however many passwords arrive, bcrypt costs at most
    `share` of one core and holds at most three HTTP workers, and a trusted
    caller is next whenever the current check ends."""

    def __init__(self, share: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self._clock = clock
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = {True: 0, False: 0}  # trusted -> callers waiting
        self._next = 0.0  # earliest start of the next check

    def enter(self, wait: float, trusted: bool = False) -> bool:
        """True: the caller runs its check, then calls leave(). False: refused."""
        with self._cond:
            now = self._clock()
            if not any(self._waiting.values()) and self._free(now):
                self._busy = True
                return True
            if wait <= 0 or self._waiting[trusted]:
                return False
            deadline = now + wait
            self._waiting[trusted] += 1
            try:
                while True:
                    if self._free(now) and (trusted or not self._waiting[True]):
                        self._busy = True
                        return True
                    if now >= deadline:
                        return False
                    left = deadline - now
                    resting = not self._busy and self._next > now
                    self._cond.wait(min(left, self._next - now) if resting else left)
                    now = self._clock()
            finally:
                self._waiting[trusted] -= 1
                self._cond.notify_all()  # a trusted waiter leaving may unblock the other

    def leave(self, took: float) -> None:
        with self._cond:
            self._busy = False
            self._next = self._clock() + max(0.0, took) * (1 / self.share - 1)
            self._cond.notify_all()

    def _free(self, now: float) -> bool:
        return not self._busy and now >= self._next


@dataclass
class BasicAuth:
    """bcrypt-hashed users, checked at a bounded cost whatever clients send.

    bcrypt is deliberately slow (~50-100 ms at cost 10): 100 wrong passwords a
    second used to pin both CPUs and starve /metrics and /healthz. Now:
      - every result, failed or passed, is remembered under an HMAC-SHA256 of
        (user, password) with a random per-process key, in bounded LRUs
        (FAILED_CAPACITY, PASSED_CAPACITY): a repeated credential costs one
        HMAC, and the real scraper pays bcrypt once, not per scrape;
      - a credential not remembered goes through one BcryptGate: one bcrypt
        at a time, at most half a core, one waiter per class, the rest get
        429 at once. A client host without failures in the last
        SUSPECT_SECONDS may wait up to `wait` seconds and goes first; one
        that failed waits at most `suspect_wait`, behind it. So a scraper
        with the right password gets in during a flood from other hosts.

    No user-name oracle (see 6dccd2b): an unknown user is checked against a
    dummy hash as costly as the costliest configured one, and everything
    before that check is blind to whether the user exists: the cache key
    covers user and password alike and failures of unknown and known users
    are remembered the same way, so a repeat is equally fast for both; the
    gate decides from the client's history and its own state, before the
    user table is read. A hit in the passed cache needs the right password.
    The key is an HMAC with a secret key, not a plain hash, so a client
    cannot choose passwords whose cache keys share a prefix with a stored
    one (dict lookups compare keys byte by byte), and no unsalted fast hash
    of a password sits in memory.
    """

    users: dict[str, bytes]
    wait: float = 2.0  # how long a client without recent failures may wait for bcrypt
    suspect_wait: float = 0.5  # the same for a client that failed recently (goes second)
    checkpw: Callable[[bytes, bytes], bool] = bcrypt.checkpw  # injectable: tests count runs
    gate: BcryptGate = field(default_factory=BcryptGate)
    clock: Callable[[], float] = time.monotonic
    # Compared against for unknown users so that timing does not reveal names:
    # as costly as the costliest configured hash ($2b$NN$...).
    _dummy: bytes = b""
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _failed: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    _passed: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    _suspects: OrderedDict[str, float] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Counters for tests and the periodic warning.
    bcrypt_runs: int = 0
    cache_hits: int = 0
    refused_busy: int = 0
    failures: int = 0
    _reported: tuple[float, int, int] = (float("-inf"), 0, 0)  # time, failures, refused

    def __post_init__(self) -> None:
        costs = [int(h[4:6]) for h in self.users.values() if h[4:6].isdigit()]
        rounds = min(max([4, *costs]), 31)
        self._dummy = bcrypt.hashpw(b"orb8", bcrypt.gensalt(rounds))

    def check(self, authorization: str | None, client: str = "") -> bool:
        """True when an `Authorization: Basic ...` header names a user and its password."""
        return self.verify(authorization, client) is AuthResult.OK

    def verify(self, authorization: str | None, client: str = "") -> AuthResult:
        credentials = parse_basic(authorization)
        if credentials is None:
            return AuthResult.DENIED  # nothing to check: costs nothing, says nothing
        user, password = credentials
        key = hmac.new(self._key, _length_prefixed(user) + password, hashlib.sha256).digest()
        host = _host_key(client)
        remembered = self._remembered(key)
        if remembered is not None:
            return self._finish(remembered, host, cached=True)
        trusted = not self._suspect(host)
        if not self.gate.enter(self.wait if trusted else self.suspect_wait, trusted):
            with self._lock:
                self.refused_busy += 1
            self._report(client)
            return AuthResult.BUSY
        started = self.clock()
        ran = False
        try:
            # Another worker may have checked the same credential while this one waited.
            remembered = self._remembered(key)
            if remembered is None:
                ran = True
                remembered = self._bcrypt(user, password)
        finally:
            self.gate.leave(self.clock() - started if ran else 0.0)
        with self._lock:
            cache = self._passed if remembered else self._failed
            cache[key] = None
            while len(cache) > (PASSED_CAPACITY if remembered else FAILED_CAPACITY):
                cache.popitem(last=False)
        result = self._finish(remembered, host, cached=not ran)
        if not remembered:
            self._report(client)
        return result

    def _bcrypt(self, user: str, password: bytes) -> bool:
        """One bcrypt, as costly for an unknown user as for a known one."""
        hashed = self.users.get(user)
        with self._lock:
            self.bcrypt_runs += 1
        # bcrypt uses the first 72 bytes (htpasswd cuts there too); bcrypt>=5 raises
        # on longer ones, which for the dummy used to end the request unanswered.
        password = password[:BCRYPT_MAX_PASSWORD]
        try:
            ok = self.checkpw(password, self._dummy if hashed is None else hashed)
        except ValueError:  # hashes are validated at load; kept so a check never raises
            ok = False
        return ok and hashed is not None

    def _remembered(self, key: bytes) -> bool | None:
        with self._lock:
            passed, failed = key in self._passed, key in self._failed
            if passed:
                self._passed.move_to_end(key)
            elif failed:
                self._failed.move_to_end(key)
        return True if passed else False if failed else None

    def _finish(self, ok: bool, host: str, cached: bool) -> AuthResult:
        with self._lock:
            if cached:
                self.cache_hits += 1
            if not ok:
                self.failures += 1
                self._suspects[host] = self.clock()
                self._suspects.move_to_end(host)
                while len(self._suspects) > SUSPECTS_CAPACITY:
                    self._suspects.popitem(last=False)
        return AuthResult.OK if ok else AuthResult.DENIED

    def _suspect(self, host: str) -> bool:
        with self._lock:
            failed = self._suspects.get(host)
        return failed is not None and self.clock() - failed < SUSPECT_SECONDS

    def _report(self, client: str) -> None:
        """One warning a minute at most: a flood of wrong passwords must not flood the log."""
        now = self.clock()
        with self._lock:
            at, failures, refused = self._reported
            if now - at < REPORT_SECONDS:
                return
            self._reported = (now, self.failures, self.refused_busy)
            new_failures, new_refused = self.failures - failures, self.refused_busy - refused
            runs, cached, cached_failed = self.bcrypt_runs, self.cache_hits, len(self._failed)
        log.warning(
            "basic auth: %d failed checks and %d refused (429, a password check was running) "
            "since the last report; last from %s; %d bcrypt runs and %d cache hits in all, "
            "%d failed credentials remembered (capacity %d)",
            new_failures,
            new_refused,
            client or "an unknown address",
            runs,
            cached,
            cached_failed,
            FAILED_CAPACITY,
        )


def _length_prefixed(user: str) -> bytes:
    encoded = user.encode("utf-8", "surrogatepass")
    return len(encoded).to_bytes(4, "big") + encoded


def _host_key(client: str) -> str:
    """IPv6 clients by /64 (one host usually holds a whole /64); IPv4 by address."""
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "replace"), password


@dataclass
class WebConfig:
    tls: ssl.SSLContext | None
    auth: BasicAuth | None
    source: Path

    def summary(self) -> str:
        parts = []
        if self.tls is not None:
            mode = {ssl.CERT_NONE: "", ssl.CERT_OPTIONAL: ", client certificate verified if given"}
            parts.append("TLS" + mode.get(self.tls.verify_mode, ", client certificate required"))
        if self.auth is not None:
            parts.append(f"basic auth ({len(self.auth.users)} user(s))")
        return " + ".join(parts) or "plain HTTP"


def load_web_config(path: Path) -> WebConfig:
    """Parse and check the file, load certificates and keys; WebConfigError if anything is off."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise WebConfigError(f"web config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise WebConfigError(f"web config {path}: not valid YAML: {e}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise WebConfigError(f"web config {path}: expected a mapping")
    _check_keys(path, "", data, TOP_KEYS, UNSUPPORTED_TOP_KEYS)
    tls = None
    if data.get("tls_server_config") is not None:
        tls = _tls_context(path, data["tls_server_config"])
    auth = None
    if data.get("basic_auth_users") is not None:
        auth = _basic_auth(path, data["basic_auth_users"])
    return WebConfig(tls=tls, auth=auth, source=path)


def _check_keys(
    path: Path, where: str, data: dict[str, Any], known: set[str], unsupported: set[str]
) -> None:
    for key in data:
        if key in unsupported:
            raise WebConfigError(
                f"web config {path}: {where}{key} is an exporter-toolkit setting orb8 "
                "does not support; remove it"
            )
        if key not in known:
            raise WebConfigError(
                f"web config {path}: unknown key {where}{key}; known: {', '.join(sorted(known))}"
            )


def _tls_context(path: Path, config: Any) -> ssl.SSLContext:
    where = "tls_server_config."
    if not isinstance(config, dict):
        raise WebConfigError(f"web config {path}: tls_server_config must be a mapping")
    _check_keys(path, where, config, TLS_KEYS, UNSUPPORTED_TLS_KEYS)
    for name in ("cert_file", "key_file"):
        if not config.get(name):
            raise WebConfigError(f"web config {path}: {where}{name} is required for TLS")
    base = path.parent
    cert, key = base / str(config["cert_file"]), base / str(config["key_file"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _tls_version(path, config, "min_version", ssl.TLSVersion.TLSv1_2)
    context.maximum_version = _tls_version(path, config, "max_version", ssl.TLSVersion.TLSv1_3)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise WebConfigError(
            f"web config {path}: cannot load {where}cert_file {cert} / key_file {key}: {e}"
        ) from None
    mode_name = str(config.get("client_auth_type") or "NoClientCert")
    if mode_name in UNSUPPORTED_CLIENT_AUTH:
        raise WebConfigError(
            f"web config {path}: {where}client_auth_type {mode_name} (a certificate that is "
            "not verified) is not supported; use RequireAndVerifyClientCert"
        )
    if mode_name not in CLIENT_AUTH:
        raise WebConfigError(
            f"web config {path}: {where}client_auth_type {mode_name!r} is not one of "
            f"{', '.join(CLIENT_AUTH)}"
        )
    ca = config.get("client_ca_file")
    if ca and mode_name == "NoClientCert":
        raise WebConfigError(
            f"web config {path}: {where}client_ca_file is set but client_auth_type is "
            "NoClientCert; set client_auth_type: RequireAndVerifyClientCert"
        )
    if mode_name != "NoClientCert":
        if not ca:
            raise WebConfigError(
                f"web config {path}: {where}client_auth_type {mode_name} needs client_ca_file"
            )
        try:
            context.load_verify_locations(cafile=base / str(ca))
        except (OSError, ssl.SSLError) as e:
            raise WebConfigError(
                f"web config {path}: cannot load {where}client_ca_file {base / str(ca)}: {e}"
            ) from None
        context.verify_mode = CLIENT_AUTH[mode_name]
    return context


def _tls_version(
    path: Path, config: dict[str, Any], key: str, default: ssl.TLSVersion
) -> ssl.TLSVersion:
    value = config.get(key)
    if value is None:
        return default
    if str(value) not in TLS_VERSIONS:
        raise WebConfigError(
            f"web config {path}: tls_server_config.{key} {value!r} is not one of "
            f"{', '.join(TLS_VERSIONS)}"
        )
    return TLS_VERSIONS[str(value)]


def _basic_auth(path: Path, users: Any) -> BasicAuth:
    if not isinstance(users, dict) or not users:
        raise WebConfigError(
            f"web config {path}: basic_auth_users must map user names to bcrypt hashes"
        )
    hashed: dict[str, bytes] = {}
    for user, value in users.items():
        encoded = str(value or "").encode()
        try:
            bcrypt.checkpw(b"", encoded)  # raises ValueError for anything but a bcrypt hash
        except ValueError:
            raise WebConfigError(
                f"web config {path}: basic_auth_users.{user} is not a bcrypt hash "
                "(generate one with htpasswd -nBC 10 \"\" | tr -d ':\\n')"
            ) from None
        hashed[str(user)] = encoded
    return BasicAuth(hashed)
