"""End to end through the real services: a ptrace in a pod pages a person.

The real Prometheus (Debian package) scrapes a real `orb8 run` with
alerts/orb8-rules.yml loaded; the real Alertmanager routes to a webhook that
is a small HTTP server in this test.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from exporter.sources.syscalls import native_syscall_numbers
from tests.helpers import ROOT, free_port, run_workload
from tests.k8s_apiserver import ApiServer, make_pod, write_kubeconfig

pytestmark = pytest.mark.kernel


class Webhook:
    """Collects Alertmanager webhook notifications."""

    def __init__(self) -> None:
        self.alerts: list[dict] = []
        received = self.alerts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.extend(json.loads(body)["alerts"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_service(argv: list[str], log_path) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def wait_http(url: str, proc: subprocess.Popen, log_path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited:\n{log_path.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready:\n{log_path.read_text()}") from None
            time.sleep(0.3)


@pytest.fixture
def services(tmp_path, start_exporter):
    """apiserver + orb8 + Alertmanager + Prometheus, all on loopback."""
    stack = {}
    procs: list[subprocess.Popen] = []
    api = ApiServer()
    api.start()
    webhook = Webhook()
    try:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        exporter = start_exporter("--kubeconfig", str(kubeconfig), "--node-name", "node-a")

        am_port, prom_port = free_port(), free_port()
        am_config = {
            "route": {
                "receiver": "test",
                "group_by": ["alertname", "namespace", "pod", "syscall"],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [{"name": "test", "webhook_configs": [{"url": webhook.url}]}],
        }
        (tmp_path / "am.yml").write_text(yaml.safe_dump(am_config))
        am_log = tmp_path / "alertmanager.log"
        procs.append(
            start_service(
                [
                    "prometheus-alertmanager",
                    f"--config.file={tmp_path / 'am.yml'}",
                    f"--storage.path={tmp_path / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                am_log,
            )
        )
        wait_http(f"http://127.0.0.1:{am_port}/-/ready", procs[-1], am_log)

        prom_config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "alerts" / "orb8-rules.yml")],
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
            },
            "scrape_configs": [
                {
                    "job_name": "orb8",
                    "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
        prom_log = tmp_path / "prometheus.log"
        procs.append(
            start_service(
                [
                    "prometheus",
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                prom_log,
            )
        )
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", procs[-1], prom_log)
        stack.update(
            api=api, webhook=webhook, exporter=exporter, prometheus=f"http://127.0.0.1:{prom_port}"
        )
        yield stack
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        webhook.close()
        api.stop()


def query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]


def test_ptrace_in_a_pod_pages_through_alertmanager(services, cgroups, workload):
    api, webhook = services["api"], services["webhook"]
    uid, container_id = str(uuid.uuid4()), uuid.uuid4().hex * 2
    api.add_pod(
        make_pod("payments-5f7c9", namespace="prod", uid=uid, containers=(("api", container_id),))
    )
    # Prometheus has scraped orb8 at least once before the call happens.
    deadline = time.monotonic() + 30
    while not query(services["prometheus"], 'up{job="orb8"} == 1'):
        assert time.monotonic() < deadline, "Prometheus never scraped orb8"
        time.sleep(0.5)
    cgroup = cgroups.make(
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid.replace('-', '_')}"
        f".slice/cri-containerd-{container_id}.scope"
    )
    run_workload(workload, cgroup, f"{native_syscall_numbers()['ptrace']}:3:0")

    deadline = time.monotonic() + 90
    while True:
        paged = [
            a
            for a in webhook.alerts
            if a["labels"].get("alertname") == "Orb8DangerousSyscall"
            and a["labels"].get("pod") == "payments-5f7c9"
        ]
        if paged:
            break
        assert time.monotonic() < deadline, f"no page; webhook got {webhook.alerts}"
        time.sleep(0.5)
    alert = paged[0]
    assert alert["status"] == "firing"
    assert alert["labels"]["namespace"] == "prod"
    assert alert["labels"]["container"] == "api"
    assert alert["labels"]["syscall"] == "ptrace"
    assert alert["labels"]["severity"] == "warning"
    assert (
        "container api of pod prod/payments-5f7c9 called ptrace"
        in (alert["annotations"]["description"])
    )
    # The count Prometheus stored is exact.
    result = query(services["prometheus"], 'orb8_dangerous_syscalls_total{pod="payments-5f7c9"}')
    assert [r["value"][1] for r in result] == ["3"]
