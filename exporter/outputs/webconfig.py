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

/healthz and /readyz are exempt from basic auth (the kubelet cannot send
credentials and they carry no workload data). A client certificate, when
required, is required at the TLS handshake for every path, as in
exporter-toolkit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import ssl
import threading
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


@dataclass
class BasicAuth:
    """bcrypt-hashed users. bcrypt is deliberately slow (~50-100 ms at cost 10),
    so the last password that matched is remembered per user as a SHA-256
    digest: one entry per configured user, bounded by the file."""

    users: dict[str, bytes]
    _verified: dict[str, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Compared against for unknown users so that timing does not reveal names:
    # as costly as the costliest configured hash ($2b$NN$...).
    _dummy: bytes = b""

    def __post_init__(self) -> None:
        costs = [int(h[4:6]) for h in self.users.values() if h[4:6].isdigit()]
        rounds = min(max([4, *costs]), 31)
        self._dummy = bcrypt.hashpw(b"orb8", bcrypt.gensalt(rounds))

    def check(self, authorization: str | None) -> bool:
        """True when an `Authorization: Basic ...` header names a user and its password."""
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        digest = hashlib.sha256(password).digest()
        with self._lock:
            remembered = self._verified.get(user)
        if remembered is not None and hmac.compare_digest(remembered, digest):
            return True
        hashed = self.users.get(user)
        if hashed is None:
            bcrypt.checkpw(password, self._dummy)
            return False
        try:
            ok = bcrypt.checkpw(password, hashed)
        except ValueError:  # validated at load; kept so a bad hash never raises here
            return False
        if ok:
            with self._lock:
                self._verified[user] = digest
        return ok


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

    def describe(self) -> str:
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
