"""deploy/ manifests: valid Kubernetes objects (strict schema, current
version), Prometheus Operator objects valid against the Operator's own CRD
schemas (vendored, see tests/schemas/prometheus-operator/README.md), the
PrometheusRule identical to alerts/, kustomizations complete, and the
DaemonSet's privileges exactly the documented least set."""

from __future__ import annotations

import re
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from exporter.config import DEFAULT_PORT
from exporter.diagnose import REQUIRED_CAPABILITIES
from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")
KUSTOMIZATIONS = sorted(DEPLOY.rglob("kustomization.yaml"))
KUBERNETES_VERSION = "1.37.0"  # the newest kubernetes-validate knows
CRDS = ROOT / "tests" / "schemas" / "prometheus-operator"
CRD_FILES = {
    "ServiceMonitor": CRDS / "monitoring.coreos.com_servicemonitors.yaml",
    "PrometheusRule": CRDS / "monitoring.coreos.com_prometheusrules.yaml",
}
# Ports of node-level components a hostNetwork DaemonSet shares the node with.
NODE_PORTS = {
    9091: "Pushgateway/Calico Felix",
    9100: "node_exporter",
    9400: "dcgm-exporter",
    9435: "ebpf_exporter",
    10250: "kubelet",
    10255: "kubelet read-only",
    10249: "kube-proxy",
    10256: "kube-proxy health",
    9962: "cilium-agent",
    9963: "cilium-operator",
    9965: "hubble",
    9153: "CoreDNS",
    9464: "OTel SDKs",
}


def documents():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "apiVersion" in doc:
                yield path.relative_to(DEPLOY).as_posix(), doc


def only(kind: str) -> dict:
    (doc,) = [doc for _, doc in documents() if doc["kind"] == kind]
    return doc


def _python_patterns(schema):
    """Go's regexp takes inline flags anywhere (^(?i)...); Python's only first."""
    if isinstance(schema, dict):
        return {
            key: re.sub(r"^\^\(\?i\)", "(?i)^", value)
            if key == "pattern"
            else _python_patterns(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_python_patterns(item) for item in schema]
    return schema


def crd_schema(kind: str) -> dict:
    crd = yaml.safe_load(CRD_FILES[kind].read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _python_patterns(version["schema"]["openAPIV3Schema"])


def unknown_fields(value, schema: dict, where: str = "") -> list[str]:
    """Fields the schema does not declare (what the API server would prune)."""
    if isinstance(value, list) and "items" in schema:
        return [
            f
            for i, item in enumerate(value)
            for f in unknown_fields(item, schema["items"], f"{where}[{i}]")
        ]
    if not isinstance(value, dict) or "properties" not in schema:
        return []
    found = []
    for key, item in value.items():
        if key not in schema["properties"]:
            found.append(f"{where}.{key}")
        else:
            found += unknown_fields(item, schema["properties"][key], f"{where}.{key}")
    return found


@pytest.mark.parametrize(
    ("name", "doc"), list(documents()), ids=lambda x: x if isinstance(x, str) else x["kind"]
)
def test_manifest_is_valid(name, doc):
    if doc["kind"] in CRD_FILES:
        schema = crd_schema(doc["kind"])
        jsonschema.validate(doc, schema)
        assert unknown_fields(doc, schema) == []
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_crd_check_catches_a_misspelt_field():
    monitor = only("ServiceMonitor")
    broken = {
        **monitor,
        "spec": {**monitor["spec"], "endpoints": [{"port": "metrics", "honourLabels": True}]},
    }
    assert unknown_fields(broken, crd_schema("ServiceMonitor")) == [
        ".spec.endpoints[0].honourLabels"
    ]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**monitor, "spec": {"endpoints": "metrics"}}, crd_schema("ServiceMonitor")
        )


def test_prometheusrule_is_generated_from_alerts_and_identical():
    rule = only("PrometheusRule")
    source = yaml.safe_load((ROOT / "alerts" / "orb8-rules.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"]
    check = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_prometheusrule_drift_is_detected(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_prometheusrule
    finally:
        sys.path.pop(0)
    edited = (
        (ROOT / "alerts" / "orb8-rules.yml")
        .read_text()
        .replace("severity: critical", "severity: page", 1)
    )
    committed = (DEPLOY / "prometheus-operator" / "prometheusrule.yaml").read_text()
    assert gen_prometheusrule.render(edited) != committed


def test_kustomizations_list_every_manifest_and_set_the_image():
    listed = set()
    for path in KUSTOMIZATIONS:
        kustomization = yaml.safe_load(path.read_text())
        assert kustomization["kind"] == "Kustomization"
        for resource in kustomization["resources"]:
            target = (path.parent / resource).resolve()
            assert target.exists(), f"{path}: {resource} does not exist"
            listed.add(target)
    manifests = {p.resolve() for p in MANIFESTS if p.parent.name != "examples"}
    manifests -= {(DEPLOY / "orb8.example.yaml").resolve()}
    assert manifests <= listed
    base = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    image = only("DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"]
    name, tag = image.rsplit(":", 1)
    assert base["images"] == [{"name": name, "newTag": tag}]


def test_rbac_is_read_only_on_pods():
    assert only("ClusterRole")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]


def test_daemonset_least_privilege():
    pod = only("DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    # The same set `orb8 diagnose` checks, and the container test grants.
    assert sorted(security["capabilities"]["add"]) == sorted(
        name.removeprefix("CAP_") for name in REQUIRED_CAPABILITIES
    )
    assert security["seccompProfile"]["type"] in ("Unconfined", "RuntimeDefault", "Localhost")
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in (
        "/sys/fs/cgroup",
        "/sys/kernel/tracing",
        "/lib/modules",
        "/usr/src",
        "/var/lib/kubelet/pod-resources",
    ):
        assert mounts[path]["readOnly"] is True, path
    assert [p for p, m in mounts.items() if not m.get("readOnly")] == ["/tmp"]
    probes = {k: container[k]["httpGet"]["path"] for k in ("livenessProbe", "readinessProbe")}
    assert probes == {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["requests"]["cpu"]


def test_one_port_everywhere_and_clear_of_node_components():
    assert DEFAULT_PORT not in NODE_PORTS
    daemonset = only("DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert daemonset["ports"][0]["containerPort"] == DEFAULT_PORT
    assert daemonset["args"] == ["run", "--listen", f":{DEFAULT_PORT}"]
    assert only("Service")["spec"]["ports"][0]["port"] == DEFAULT_PORT
    assert f"LISTEN ?= 0.0.0.0:{DEFAULT_PORT}" in (ROOT / "Makefile").read_text()
    texts = [
        ROOT / "README.md",
        DEPLOY / "orb8.example.yaml",
        ROOT / "docs" / "deploying.md",
        DEPLOY / "examples" / "prometheus.yml",
    ]
    for path in texts:
        ports = {int(p) for p in re.findall(r"(?<![\d.])(9\d{3}|10\d{3})(?!\d)", path.read_text())}
        assert DEFAULT_PORT in ports, path
        assert ports - {DEFAULT_PORT} <= set(NODE_PORTS) | {9090, 9093}, (path, ports)


def test_plain_prometheus_example_passes_promtool(tmp_path):
    """Debian's Prometheus is built without Kubernetes service discovery, so
    the discovery block is swapped for a static target; everything else
    (relabelling, honor_labels, the rule file) is checked as written."""
    config = yaml.safe_load((DEPLOY / "examples" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["honor_labels"] is True
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["orb8"]}}]
    job["static_configs"] = [{"targets": [f"node-a:{DEFAULT_PORT}"]}]
    del job["kubernetes_sd_configs"]
    (tmp_path / "orb8-rules.yml").write_text((ROOT / "alerts" / "orb8-rules.yml").read_text())
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((ROOT / "alerts" / "orb8-rules.yml").read_text())
    count = sum(len(group["rules"]) for group in rules["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout
