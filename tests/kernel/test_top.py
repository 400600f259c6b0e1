"""`orb8 top` end to end: a real `orb8 run` counting three pods of known
behaviour (one busy with getppid, one sending UDP over loopback, one calling
ptrace), the live view driven in tmux with send-keys and read back with
capture-pane, and `--once`/`--json` against it, plain and over mutual TLS
with basic auth."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter.sources.syscalls import native_syscall_numbers
from tests.helpers import ORB8, ROOT, free_port, series, wait_for
from tests.k8s_apiserver import ApiServer, make_pod, write_kubeconfig
from tests.tls import make_pki

pytestmark = pytest.mark.kernel

PTRACE = native_syscall_numbers()["ptrace"]
# Long-running workloads, paced so that they stay light on a shared 2-CPU
# machine yet keep their order: busy makes ~100x the syscalls of the others,
# udp sends ~1 MB/s and the others send nothing, ptrace calls ptrace.
BUSY = "import os,time\nwhile True:\n for _ in range(5000): os.getppid()\n time.sleep(0.05)"
UDP = (
    "import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
    "while True:\n for _ in range(40): s.sendto(b'x'*1200,('127.0.0.1',int(sys.argv[1])))\n"
    " time.sleep(0.05)"
)
PTRACER = (
    "import ctypes,time\nlibc=ctypes.CDLL(None,use_errno=True)\n"
    f"while True:\n libc.syscall({PTRACE},-1,0,0,0)\n time.sleep(0.3)"
)


@dataclass
class Pods:
    namespace: str
    url: str  # orb8's /metrics
    kubeconfig: Path


def _start_in(cgroup: Path, code: str, *args: str) -> subprocess.Popen:
    procs = str(cgroup / "cgroup.procs")

    def join() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        preexec_fn=join,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def pods(start_exporter, cgroups, tmp_path) -> Iterator[Pods]:
    namespace = f"top-{uuid.uuid4().hex[:6]}"
    # Under a parent of our own: kubepods.slice may be shared with other tests.
    parent = f"orb8-top-{uuid.uuid4().hex[:8]}"
    api = ApiServer()
    api.start()
    workers: list[subprocess.Popen] = []
    try:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        exporter = start_exporter("--kubeconfig", str(kubeconfig), "--node-name", "node-a")
        for i, (name, code, args) in enumerate(
            [("busy", BUSY, ()), ("udp", UDP, (str(free_port()),)), ("ptracer", PTRACER, ())]
        ):
            uid, cid = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex
            api.add_pod(
                make_pod(
                    name,
                    namespace=namespace,
                    uid=uid,
                    containers=(("main", cid),),
                    pod_ips=(f"198.18.7.{10 + i}",),
                )
            )
            sd = uid.replace("-", "_")
            cgroup = cgroups.make(
                f"{parent}/kubepods.slice/kubepods-besteffort.slice/"
                f"kubepods-besteffort-pod{sd}.slice/cri-containerd-{cid}.scope"
            )
            workers.append(_start_in(cgroup, code, *args))

        def all_counted() -> bool:
            samples = exporter.scrape()
            return all(
                series(samples, name, namespace=namespace, pod=pod) > 0
                for name, pod in (
                    ("orb8_syscalls_total", "busy"),
                    ("orb8_network_bytes_total", "udp"),
                    ("orb8_dangerous_syscalls_total", "ptracer"),
                )
            )

        wait_for(all_counted, timeout=60, what="the three pods on /metrics")
        yield Pods(namespace, exporter.url, kubeconfig)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
        api.stop()


# orb8's own scrape can take seconds on a loaded 2-vCPU machine: top's
# default 10 s per scrape is too tight for CI.
SCRAPE_TIMEOUT = ["--timeout", "60"]


def top(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ORB8, "top", *SCRAPE_TIMEOUT, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def table_rows(text: str) -> list[str]:
    """The rows under the column headings, marker column included."""
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if "SYSCALLS/s" in line and "NAME" in line), None
    )
    if start is None:
        return []  # a screen caught mid-redraw, or not drawn yet: wait_screen tries again
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(line)
    return rows


def name_of(row: str) -> str:
    return row.split()[-1]


def test_once_ranks_and_marks_the_pods(pods):
    once = ["--once", "--interval", "1", "--filter", f"ns={pods.namespace}"]
    result = top(pods.url, *once)
    assert result.returncode == 0, result.stderr
    assert "probes network:up syscalls:up" in result.stdout
    rows = table_rows(result.stdout)
    assert name_of(rows[0]) == f"{pods.namespace}/busy"
    assert len(rows) == 3
    marked = {name_of(r) for r in rows if r.lstrip().startswith("!")}
    assert marked == {f"{pods.namespace}/ptracer"}

    result = top(pods.url, *once, "--sort", "tx")
    assert result.returncode == 0, result.stderr
    by_tx = table_rows(result.stdout)
    assert name_of(by_tx[0]) == f"{pods.namespace}/udp"

    result = top(pods.url, "--json", "--interval", "1", "--filter", f"ns={pods.namespace}")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    rows_json = {r["pod"]: r for r in document["rows"]}
    assert set(rows_json) == {"busy", "udp", "ptracer"}
    assert rows_json["busy"]["top_syscalls"] and "getppid" in rows_json["busy"]["top_syscalls"]
    assert rows_json["ptracer"]["dangerous_syscalls"]["ptrace"] >= 1
    assert rows_json["ptracer"]["dangerous_window"] >= 1
    assert rows_json["udp"]["tx"] > rows_json["busy"]["tx"]
    assert rows_json["udp"]["top_peers"][0]["peer"] == "loopback (udp)"
    assert rows_json["udp"]["top_peers"][0]["tx"] > 0
    assert document["probes"] == {"syscalls": True, "network": True}


class Tmux:
    """One tmux server of its own (unique socket), killed on close."""

    def __init__(self, command: list[str]) -> None:
        self.socket = f"orb8-top-test-{uuid.uuid4().hex[:10]}"
        # pytest's environment carries COLUMNS/LINES of its own (80x24),
        # which would override the pane's size.
        shell = f"unset COLUMNS LINES; {shlex.join(command)}; echo TOP-EXITED-$?; sleep 600"
        self._tmux("new-session", "-d", "-s", "top", "-x", "200", "-y", "45", shell)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        ).stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "top", *keys)

    def screen(self, escapes: bool = False) -> str:
        return self._tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "top")

    def wait_screen(self, predicate, what: str, timeout: float = 60) -> str:
        found: list[str] = []

        def check() -> bool:
            found[:] = [self.screen()]
            return bool(predicate(found[0]))

        try:
            wait_for(check, timeout=timeout, what=what, interval=0.3)
        except AssertionError:
            raise AssertionError(f"{what}; screen:\n{found[0] if found else ''}") from None
        return found[0]

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._tmux("kill-server")


@pytest.fixture
def tmux_top(pods) -> Iterator[Tmux]:
    session = Tmux([*ORB8, "top", pods.url, "--interval", "1", *SCRAPE_TIMEOUT])
    try:
        yield session
    finally:
        session.close()


SGR = re.compile(r"\x1b\[([0-9;]*)m")


def _styles(line: str) -> set[str]:
    return {m.group(1) for m in SGR.finditer(line)}


def test_live_view_sorts_filters_marks_and_drills(pods, tmux_top):
    ns = pods.namespace
    screen = tmux_top.wait_screen(lambda s: "SYSCALLS/s" in s and "probes" in s, "the view")
    tmux_top.keys("/")
    tmux_top.keys("-l", f"ns={ns}")
    tmux_top.keys("Enter")

    def three_rows_with_rates(text: str) -> bool:
        rows = [r for r in table_rows(text) if ns in r]
        return len(rows) == 3 and all(" - " not in r for r in rows)

    screen = tmux_top.wait_screen(three_rows_with_rates, "three rows of the namespace")
    assert f"filter 'ns={ns}'" in screen
    # Sorted by syscalls (the default): the busy pod first.
    rows = table_rows(screen)
    assert name_of(rows[0]) == f"{ns}/busy", screen
    # The ptrace pod is marked and styled apart from the others.
    marked = [r for r in rows if r.lstrip().startswith("!")]
    assert [name_of(r) for r in marked] == [f"{ns}/ptracer"], screen
    colored = tmux_top.screen(escapes=True)
    ptracer_line = next(line for line in colored.splitlines() if f"{ns}/ptracer" in line)
    udp_line = next(line for line in colored.splitlines() if f"{ns}/udp" in line)
    assert _styles(ptracer_line) - _styles(udp_line), (ptracer_line, udp_line)

    # Sorted by bytes sent: the UDP pod first.
    tmux_top.keys("o")
    screen = tmux_top.wait_screen(
        lambda s: table_rows(s) and name_of(table_rows(s)[0]) == f"{ns}/udp", "sorted by TX B/s"
    )
    assert "TX B/s▼" in screen
    # Back to syscalls, drill into the first row: its top syscall is getppid.
    tmux_top.keys("s")
    tmux_top.wait_screen(
        lambda s: table_rows(s) and name_of(table_rows(s)[0]) == f"{ns}/busy", "sorted by calls"
    )
    tmux_top.keys("Home", "Enter")
    screen = tmux_top.wait_screen(lambda s: "top syscalls" in s, "the drill-down")
    first = screen.split("top syscalls", 1)[1].splitlines()[1]
    assert first.split()[0] == "getppid", screen
    assert "top peers" in screen
    tmux_top.keys("Escape")
    # Wait for it before the next key: ESC then c within a moment reads as Alt+c.
    tmux_top.wait_screen(lambda s: "top syscalls" not in s and "SYSCALLS/s▼" in s, "the table")
    # One row per container.
    tmux_top.keys("c")
    screen = tmux_top.wait_screen(lambda s: f"{ns}/busy/main" in s, "container rows")
    # Pause stops the view; quit exits cleanly.
    tmux_top.keys("Space")
    tmux_top.wait_screen(lambda s: "PAUSED" in s, "paused")
    tmux_top.keys("q")
    tmux_top.wait_screen(lambda s: "TOP-EXITED-0" in s, "a clean exit", timeout=20)


# --- TLS + basic auth -------------------------------------------------------------


@pytest.fixture
def secured_orb8(tmp_path, cgroups) -> Iterator[dict]:
    pki = make_pki(tmp_path)
    password = f"pw-{uuid.uuid4().hex}"
    web = tmp_path / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {
                    "cert_file": str(pki.server_cert),
                    "key_file": str(pki.server_key),
                    "client_auth_type": "RequireAndVerifyClientCert",
                    "client_ca_file": str(pki.ca),
                },
                "basic_auth_users": {
                    "viewer": bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()
                },
            }
        )
    )
    (tmp_path / "password").write_text(password + "\n")
    port = free_port()
    log = tmp_path / "orb8.log"
    proc = subprocess.Popen(
        [*ORB8, "run", "--listen", f"127.0.0.1:{port}", "--web-config-file", str(web)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    cgroup = cgroups.make()
    worker: subprocess.Popen | None = None
    try:
        import ssl

        client = ssl.create_default_context(cafile=pki.ca)
        client.load_cert_chain(pki.client_cert, pki.client_key)

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                url = f"https://127.0.0.1:{port}/readyz"
                return urllib.request.urlopen(url, timeout=5, context=client).status == 200
            return False

        wait_for(ready, timeout=120, what="orb8 /readyz over TLS")
        worker = _start_in(cgroup, PTRACER)
        yield {
            "url": f"https://127.0.0.1:{port}",
            "pki": pki,
            "password_file": tmp_path / "password",
            "cgroup": "/" + str(cgroup.relative_to(cgroups.root)),
        }
    finally:
        if worker is not None:
            worker.kill()
            worker.wait()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_once_over_mutual_tls_with_basic_auth(secured_orb8):
    pki = secured_orb8["pki"]
    tls = ["--ca-file", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    auth = ["--username", "viewer", "--password-file", str(secured_orb8["password_file"])]
    cgroup = secured_orb8["cgroup"]
    once = [secured_orb8["url"], "--once", "--interval", "1", "--filter", cgroup, *tls]

    def shown() -> str | None:
        result = top(*once, *auth)
        assert result.returncode == 0, result.stderr
        rows = [r for r in table_rows(result.stdout) if name_of(r) == cgroup]
        return rows[0] if rows and rows[0].lstrip().startswith("!") else None

    row = wait_for(shown, timeout=60, what="the ptrace cgroup, marked")
    assert name_of(row) == cgroup

    denied = top(*once, "--username", "viewer", *tls)  # no password
    assert denied.returncode == 1
    assert "HTTP 401" in denied.stderr
    untrusted = top(*once, *auth, "--ca-file", str(pki.other_ca))
    assert untrusted.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
