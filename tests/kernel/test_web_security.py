"""The real Prometheus scrapes a real `orb8 run` over mutual TLS with basic
auth, through the scrape configuration the Prometheus Operator generates
from deploy/prometheus-operator/servicemonitor.yaml, with the generated
PrometheusRule loaded; a ptrace in a pod must fire Orb8DangerousSyscall
with the pod's own namespace/pod labels (not orb8's, not exported_*).

A control job scrapes the same orb8 the way a ServiceMonitor without
honorLabels/labeldrop would, showing the renaming this guards against.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter.sources.syscalls import native_syscall_numbers
from tests.helpers import ORB8, ROOT, TEST_SYSCALL_SLOTS, free_port, run_workload
from tests.k8s_apiserver import ApiServer, make_pod, write_kubeconfig
from tests.tls import make_pki

pytestmark = pytest.mark.kernel

USER, PASSWORD = "prometheus", f"pw-{uuid.uuid4().hex}"
# Target labels the Operator sets for an endpoint of Service orb8 in
# namespace orb8 (before the ServiceMonitor's own relabelings run).
OPERATOR_TARGET_LABELS = {
    "namespace": "orb8",
    "service": "orb8",
    "pod": "orb8-x7k2p",
    "container": "orb8",
    "endpoint": "metrics",
    "__meta_kubernetes_pod_node_name": "node-a",
}


def operator_scrape_config(monitor: dict, address: str, tls: dict, job: str) -> dict:
    """What the Operator renders for the ServiceMonitor's first endpoint
    (the parts that shape labels: honor_labels, target labels, relabelings)."""
    (endpoint,) = monitor["spec"]["endpoints"]
    relabel = []
    for rule in endpoint.get("relabelings", []):
        converted = {"action": rule.get("action", "replace")}
        if "sourceLabels" in rule:
            converted["source_labels"] = rule["sourceLabels"]
        for key, name in (("targetLabel", "target_label"), ("regex", "regex")):
            if key in rule:
                converted[name] = rule[key]
        relabel.append(converted)
    return {
        "job_name": job,
        "honor_labels": endpoint.get("honorLabels", False),
        "metrics_path": endpoint["path"],
        "scheme": "https",
        "tls_config": tls,
        "basic_auth": {"username": USER, "password": PASSWORD},
        "static_configs": [{"targets": [address], "labels": OPERATOR_TARGET_LABELS}],
        "relabel_configs": relabel,
    }


def query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]


def wait_for(what: str, predicate, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return result


@pytest.fixture
def secured_stack(tmp_path):
    pki = make_pki(tmp_path)
    web = tmp_path / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {
                    "cert_file": pki.server_cert.name,  # relative to web.yml
                    "key_file": pki.server_key.name,
                    "client_auth_type": "RequireAndVerifyClientCert",
                    "client_ca_file": pki.ca.name,
                },
                "basic_auth_users": {
                    USER: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
                },
            }
        )
    )
    api = ApiServer()
    api.start()
    procs: list[subprocess.Popen] = []
    try:
        port = free_port()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        orb8_log = tmp_path / "orb8.log"
        procs.append(
            subprocess.Popen(
                [
                    *ORB8,
                    "run",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--web-config-file",
                    str(web),
                    "--kubeconfig",
                    str(kubeconfig),
                    "--node-name",
                    "node-a",
                    *TEST_SYSCALL_SLOTS,
                ],
                stdout=orb8_log.open("w"),
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        )
        client = ssl.create_default_context(cafile=pki.ca)
        client.load_cert_chain(pki.client_cert, pki.client_key)

        def ready() -> bool:
            assert procs[0].poll() is None, orb8_log.read_text()
            with contextlib.suppress(OSError):
                url = f"https://127.0.0.1:{port}/readyz"
                return urllib.request.urlopen(url, timeout=5, context=client).status == 200
            return False

        wait_for("orb8 /readyz over TLS", ready, timeout=120)

        monitor = yaml.safe_load(
            (ROOT / "deploy" / "prometheus-operator" / "servicemonitor.yaml").read_text()
        )
        tls = {
            "ca_file": str(pki.ca),
            "cert_file": str(pki.client_cert),
            "key_file": str(pki.client_key),
        }
        address = f"127.0.0.1:{port}"
        control = {
            **operator_scrape_config(monitor, address, tls, "control"),
            "honor_labels": False,
            "relabel_configs": [],
        }
        rule = yaml.safe_load(
            (ROOT / "deploy" / "prometheus-operator" / "prometheusrule.yaml").read_text()
        )
        (tmp_path / "rules.yml").write_text(yaml.safe_dump(rule["spec"]))
        prom_port = free_port()
        (tmp_path / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(tmp_path / "rules.yml")],
                    "scrape_configs": [
                        operator_scrape_config(monitor, address, tls, "orb8"),
                        control,
                    ],
                }
            )
        )
        prom_log = tmp_path / "prometheus.log"
        procs.append(
            subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=prom_log.open("w"),
                stderr=subprocess.STDOUT,
            )
        )
        prometheus = f"http://127.0.0.1:{prom_port}"

        def prom_ready() -> bool:
            assert procs[1].poll() is None, prom_log.read_text()
            with contextlib.suppress(OSError):
                return urllib.request.urlopen(f"{prometheus}/-/ready", timeout=5).status == 200
            return False

        wait_for("Prometheus ready", prom_ready, timeout=60)
        yield {"api": api, "prometheus": prometheus, "port": port, "pki": pki, "log": orb8_log}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        api.stop()
        if (tmp_path / "orb8.log").exists():
            sys.stderr.write((tmp_path / "orb8.log").read_text()[-3000:])


def test_prometheus_scrapes_over_mtls_with_basic_auth_and_alerts_keep_pod_labels(
    secured_stack, cgroups, workload
):
    stack, prometheus = secured_stack, secured_stack["prometheus"]
    uid, container_id = str(uuid.uuid4()), uuid.uuid4().hex * 2
    pod = f"payments-{uuid.uuid4().hex[:5]}"
    stack["api"].add_pod(
        make_pod(pod, namespace="prod", uid=uid, containers=(("api", container_id),))
    )
    wait_for("both jobs up", lambda: len(query(prometheus, "up == 1")) == 2)
    cgroup = cgroups.make(
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid.replace('-', '_')}"
        f".slice/cri-containerd-{container_id}.scope"
    )
    host_cgroup = cgroups.make()
    run_workload(workload, cgroup, f"{native_syscall_numbers()['ptrace']}:3:0")
    run_workload(workload, host_cgroup, f"{native_syscall_numbers()['getppid']}:5")

    stored = wait_for(
        "the pod's ptrace in Prometheus",
        lambda: query(prometheus, f'orb8_dangerous_syscalls_total{{job="orb8",pod="{pod}"}}'),
    )
    ((labels, value),) = [(r["metric"], r["value"][1]) for r in stored]
    assert value == "3"
    assert (labels["namespace"], labels["container"], labels["node"]) == ("prod", "api", "node-a")
    assert not [k for k in labels if k.startswith("exported_")]

    def fired():
        alerts = json.loads(urllib.request.urlopen(f"{prometheus}/api/v1/alerts").read())
        return [
            a
            for a in alerts["data"]["alerts"]
            if a["labels"]["alertname"] == "Orb8DangerousSyscall"
            and a["labels"].get("job", "orb8") != "control"
            and a["labels"].get("pod") == pod
        ]

    (alert,) = wait_for("Orb8DangerousSyscall for the pod", fired)
    assert alert["labels"]["namespace"] == "prod"
    assert f"container api of pod prod/{pod} called ptrace" in alert["annotations"]["description"]

    # A non-pod cgroup keeps no namespace/pod: the Operator's target labels
    # (orb8's own pod) were dropped, not stamped on it.
    host_label = "/" + host_cgroup.relative_to(cgroups.root).as_posix()
    (host,) = wait_for(
        "the host cgroup's getppid",
        lambda: query(
            prometheus, f'orb8_syscalls_total{{job="orb8",cgroup="{host_label}",syscall="getppid"}}'
        ),
    )
    assert host["value"][1] == "5"
    assert "namespace" not in host["metric"] and "pod" not in host["metric"]
    assert query(prometheus, 'count({job="orb8", exported_namespace!=""})') == []

    # Control: without honorLabels and the labeldrop, the workload's labels
    # are renamed and orb8's own pod takes their place.
    (renamed,) = wait_for(
        "the control job's copy",
        lambda: query(
            prometheus, f'orb8_dangerous_syscalls_total{{job="control",exported_pod="{pod}"}}'
        ),
    )
    assert (renamed["metric"]["namespace"], renamed["metric"]["pod"]) == ("orb8", "orb8-x7k2p")


def test_unauthenticated_and_plain_http_scrapes_are_refused(secured_stack):
    port, pki = secured_stack["port"], secured_stack["pki"]
    with_cert = ssl.create_default_context(cafile=pki.ca)
    with_cert.load_cert_chain(pki.client_cert, pki.client_key)
    url = f"https://127.0.0.1:{port}/metrics"
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(url, timeout=10, context=with_cert)
    assert raised.value.code == 401
    request = urllib.request.Request(url)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(
            request, timeout=10, context=ssl.create_default_context(cafile=pki.ca)
        )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert raised.value.code == 400
    assert b"HTTP request to an HTTPS server" in raised.value.read()
    body = urllib.request.urlopen(request, timeout=10, context=with_cert).read().decode()
    assert "orb8_probe_up" in body
    assert "web config" in Path(secured_stack["log"]).read_text()
