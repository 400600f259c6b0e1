"""--web-config-file: the real HTTP server with a real TLS stack and bcrypt,
driven by real HTTP clients (urllib, raw sockets); the collector behind it
is a fixed model family because BPF is not what is under test here."""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter.config import ConfigError
from exporter.listen import Listen
from exporter.model import counter
from exporter.outputs import health
from exporter.outputs.prometheus import PrometheusServer
from exporter.outputs.webconfig import WebConfigError, load_web_config, parse_basic
from exporter.registry import load_settings
from tests.tls import Pki, make_pki

PASSWORD = "s3cret-scrape"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def password_hash() -> str:
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()


def families():
    family = counter("orb8_syscalls_total", "syscalls", ("namespace", "pod", "syscall"))
    family.add(("shop", "web-1", "read"), 42)
    return [family]


def serve(tmp_path: Path, config: dict | None):
    web_config = None
    if config is not None:
        path = tmp_path / "web.yml"
        path.write_text(yaml.safe_dump(config))
        web_config = load_web_config(path)
    server = PrometheusServer(
        Listen("127.0.0.1", 0),
        families,
        lambda: "landing",
        routes={"/healthz": health.liveness, "/readyz": lambda: health.readiness(True, {}, None)},
        web_config=web_config,
    )
    server.start()
    return server


def client_context(pki: Pki, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    if with_cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def get(url: str, context: ssl.SSLContext | None = None, user: str = "", password: str = ""):
    request = urllib.request.Request(url)
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def tls_config(pki: Pki, **extra) -> dict:
    return {
        "tls_server_config": {
            "cert_file": str(pki.server_cert),
            "key_file": str(pki.server_key),
            **extra,
        }
    }


def test_default_is_plain_http_and_health_endpoints_are_cheap_text(tmp_path):
    server = serve(tmp_path, None)
    try:
        port = server.address[1]
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        code, body = get(f"http://127.0.0.1:{port}/readyz")
        assert code == 503 and "no probe is attached" in body
        code, body = get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200 and 'pod="web-1"' in body
    finally:
        server.close()


def test_tls_scrape_verified_against_the_generated_ca(tmp_path, pki):
    server = serve(tmp_path, tls_config(pki))
    try:
        code, body = get(f"https://127.0.0.1:{server.address[1]}/metrics", client_context(pki))
        assert code == 200
        assert 'orb8_syscalls_total{namespace="shop",pod="web-1",syscall="read"} 42.0' in body
    finally:
        server.close()


def test_mtls_required_rejects_a_client_without_certificate(tmp_path, pki):
    config = tls_config(
        pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.ca)
    )
    server = serve(tmp_path, config)
    url = f"https://127.0.0.1:{server.address[1]}/metrics"
    try:
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            get(url, client_context(pki))
        code, body = get(url, client_context(pki, with_cert=True))
        assert code == 200 and "orb8_syscalls_total" in body
    finally:
        server.close()


def test_mtls_rejects_a_certificate_from_another_ca(tmp_path, pki):
    # The server trusts only other_ca for clients, so the client's real
    # certificate (signed by ca) is refused.
    config = tls_config(
        pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.other_ca)
    )
    server = serve(tmp_path, config)
    try:
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            get(f"https://127.0.0.1:{server.address[1]}/metrics", client_context(pki, True))
    finally:
        server.close()


def test_basic_auth_wrong_password_and_no_credentials_get_401(tmp_path, pki, password_hash):
    server = serve(tmp_path, {**tls_config(pki), "basic_auth_users": {"prom": password_hash}})
    base = f"https://127.0.0.1:{server.address[1]}"
    context = client_context(pki)
    try:
        assert get(f"{base}/metrics", context)[0] == 401
        assert get(f"{base}/metrics", context, "prom", "wrong")[0] == 401
        assert get(f"{base}/metrics", context, "nobody", PASSWORD)[0] == 401
        assert get(f"{base}/", context)[0] == 401, "the landing page names probes too"
        code, body = get(f"{base}/metrics", context, "prom", PASSWORD)
        assert code == 200 and "orb8_syscalls_total" in body
        # Remembered after the first bcrypt check; a wrong password still fails.
        assert get(f"{base}/metrics", context, "prom", PASSWORD)[0] == 200
        assert get(f"{base}/metrics", context, "prom", PASSWORD + "x")[0] == 401
        # The kubelet's probes carry no credentials and see no workload data.
        assert get(f"{base}/healthz", context) == (200, "ok\n")
        assert get(f"{base}/readyz", context)[0] == 503
    finally:
        server.close()


def test_401_asks_for_basic_auth(tmp_path, password_hash):
    server = serve(tmp_path, {"basic_auth_users": {"prom": password_hash}})
    try:
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{server.address[1]}/metrics", timeout=10)
        assert raised.value.headers["WWW-Authenticate"] == 'Basic realm="orb8"'
    finally:
        server.close()


def test_plain_http_on_the_tls_port_gets_a_clear_400_and_the_server_keeps_serving(tmp_path, pki):
    server = serve(tmp_path, tls_config(pki))
    port = server.address[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 400 Bad Request")
        assert answer.endswith(b"Client sent an HTTP request to an HTTPS server.\n")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01garbage that is no ClientHello")
            try:
                reply = sock.recv(4096)
            except ConnectionResetError:
                reply = b""
            # A TLS alert record (type 21) or a plain close; no traceback, no hang.
            assert reply[:1] in (b"\x15", b"")
        assert get(f"https://127.0.0.1:{port}/metrics", client_context(pki))[0] == 200
    finally:
        server.close()


def test_stalled_tls_handshakes_are_closed_at_the_head_deadline_and_cost_no_thread(tmp_path, pki):
    """Silent before the ClientHello, stalled inside it, silent after the
    handshake: each is closed once header_timeout passes, none holds a worker,
    and a real scraper is served meanwhile."""
    server = serve(tmp_path, tls_config(pki))
    server.httpd.header_timeout = 0.5
    port = server.address[1]
    threads = set(threading.enumerate())
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        stalled[1].sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's first bytes only
        stalled[2] = client_context(pki).wrap_socket(stalled[2], server_hostname="127.0.0.1")
        assert get(f"https://127.0.0.1:{port}/metrics", client_context(pki))[0] == 200
        for sock in stalled:
            with contextlib.suppress(ConnectionResetError, ssl.SSLEOFError):
                assert sock.recv(4096) == b""  # closed by the server (a timeout raises)
        assert not set(threading.enumerate()) - threads
        assert server.httpd.open_connections == 0
    finally:
        for sock in stalled:
            sock.close()
        server.close()


def test_two_authorization_fields_are_refused_whichever_comes_last(tmp_path, password_hash):
    """Repeated fields are joined (RFC 9110 5.3): two credentials are one
    malformed credential. Before, the last one won and a right password
    after a wrong one was served."""
    server = serve(tmp_path, {"basic_auth_users": {"prom": password_hash}})
    right = "Basic " + base64.b64encode(f"prom:{PASSWORD}".encode()).decode()
    wrong = "Basic " + base64.b64encode(b"prom:wrong").decode()
    try:
        for fields in ((wrong, right), (right, wrong), (right,)):
            conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=10)
            conn.putrequest("GET", "/metrics")
            for value in fields:
                conn.putheader("Authorization", value)
            conn.endheaders()
            status = conn.getresponse().status
            conn.close()
            assert status == (200 if len(fields) == 1 else 401), fields
    finally:
        server.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("tls_server_config: [1]\n", "tls_server_config must be a mapping"),
        ("tls_server_config:\n  key_file: k\n", "tls_server_config.cert_file is required"),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n", "cannot load"),
        ("basic_auth_users:\n  prom: plaintext\n", "basic_auth_users.prom is not a bcrypt hash"),
        ("basic_auth_users: {}\n", "basic_auth_users must map user names"),
        ("basic_auth_user:\n  prom: x\n", "unknown key basic_auth_user"),
        ("http_server_config:\n  http2: false\n", "http_server_config is an exporter-toolkit"),
        ("- a\n", "expected a mapping"),
        (
            "tls_server_config: {cert_file: c, key_file: k, cipher_suites: [x]}\n",
            "tls_server_config.cipher_suites is an exporter-toolkit setting orb8 does not support",
        ),
        ("{unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_web_config_is_refused_with_the_key_named(tmp_path, config, message):
    path = tmp_path / "web.yml"
    path.write_text(config)
    with pytest.raises(WebConfigError, match=message.replace(".", r"\.")):
        load_web_config(path)


def test_tls_modes_are_checked_against_each_other(tmp_path, pki):
    cases = [
        ({"client_ca_file": str(pki.ca)}, "client_ca_file is set but client_auth_type is"),
        ({"client_auth_type": "RequireAndVerifyClientCert"}, "needs client_ca_file"),
        ({"client_auth_type": "RequireAnyClientCert"}, "is not supported"),
        ({"client_auth_type": "Sometimes"}, "is not one of"),
        ({"min_version": "TLS14"}, "min_version 'TLS14' is not one of"),
    ]
    for extra, message in cases:
        path = tmp_path / "web.yml"
        path.write_text(yaml.safe_dump(tls_config(pki, **extra)))
        with pytest.raises(WebConfigError, match=message):
            load_web_config(path)


def test_relative_paths_are_relative_to_the_file(tmp_path, pki):
    (tmp_path / "certs").mkdir()
    for source in (pki.server_cert, pki.server_key):
        (tmp_path / "certs" / source.name).write_bytes(source.read_bytes())
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: certs/{pki.server_cert.name}\n"
        f"  key_file: certs/{pki.server_key.name}\n"
    )
    assert load_web_config(path).summary() == "TLS"


def test_setting_fails_fast_and_names_itself(tmp_path):
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  prom: nope\n")
    with pytest.raises(ConfigError, match=r"invalid web_config_file \(flag --web-config-file\)"):
        load_settings({"web_config_file": str(path)}, environ={})
    with pytest.raises(ConfigError, match="is not a readable file"):
        load_settings({"web_config_file": str(tmp_path / "missing.yml")}, environ={})


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()],
)
def test_malformed_authorization_headers_are_rejected(header):
    assert parse_basic(header) is None


def test_readiness_needs_startup_a_probe_and_the_pod_watch():
    assert health.readiness(False, {}, None)[0] == 503
    code, body = health.readiness(True, {"syscalls": True, "network": False}, False)
    assert code == 503 and "pod watch has not synced yet" in body
    code, body = health.readiness(True, {"syscalls": True, "network": False}, True)
    assert code == 200
    assert "probe network: down" in body and "pod watch: synced" in body
    assert health.readiness(True, {"syscalls": False}, None)[0] == 503


def test_unknown_users_cost_as_much_as_the_costliest_configured_hash():
    """An unknown user is checked against a dummy as costly as the real hashes,
    so the answer's timing does not tell which user names exist."""
    from exporter.outputs.webconfig import BasicAuth

    users = {
        "cheap": bcrypt.hashpw(b"a", bcrypt.gensalt(4)),
        "dear": bcrypt.hashpw(b"b", bcrypt.gensalt(10)),
    }
    auth = BasicAuth(users)
    assert auth._dummy[4:6] == b"10"
    assert not auth.check("Basic " + base64.b64encode(b"nobody:x").decode())
