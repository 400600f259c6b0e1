"""deploy/ manifests: every kustomization renders with `kubectl kustomize`
(as users run it), and what it renders is valid: Kubernetes objects against
the strict schema of a current version, Prometheus Operator objects against
the Operator's own CRD schemas (vendored, see
tests/schemas/prometheus-operator/README.md). Every `kubectl kustomize` /
`kubectl apply -k` path the docs show renders too. The PrometheusRule is
identical to alerts/, and the DaemonSet's privileges exactly the documented
least set."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

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
ENTRY_POINTS = sorted(
    p.parent for p in KUSTOMIZATIONS if yaml.safe_load(p.read_text())["kind"] == "Kustomization"
)
COMPONENTS = sorted(
    p.parent for p in KUSTOMIZATIONS if yaml.safe_load(p.read_text())["kind"] == "Component"
)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
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


def kustomize(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )


@functools.cache
def rendered(directory: Path) -> tuple[dict, ...]:
    """What `kubectl apply -k directory` would send to the API server."""
    result = kustomize(directory)
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def only(kind: str, directory: Path = DEPLOY / "prometheus-operator") -> dict:
    (doc,) = [doc for doc in rendered(directory) if doc["kind"] == kind]
    return doc


def validate(doc: dict) -> None:
    if doc["kind"] in CRD_FILES:
        schema = crd_schema(doc["kind"])
        jsonschema.validate(doc, schema)
        assert unknown_fields(doc, schema) == []
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


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


@pytest.mark.parametrize("directory", ENTRY_POINTS, ids=name)
def test_every_kustomization_renders_and_validates_strictly(directory):
    docs = rendered(directory)
    assert docs, directory
    for doc in docs:
        validate(doc)
    assert len(
        {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs}
    ) == len(docs)


def test_the_render_check_catches_a_cycle_and_a_strict_violation(tmp_path):
    """What the Operator overlay did before base/: include its own parent."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "kustomization.yaml").write_text("resources: [sub]\n")
    (tmp_path / "sub" / "kustomization.yaml").write_text("resources: [../]\n")
    result = kustomize(tmp_path / "sub")
    assert result.returncode != 0 and "cycle detected" in result.stderr
    daemonset = only("DaemonSet")
    broken = {**daemonset, "spec": {**daemonset["spec"], "minReadySecond": 5}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_component_is_used_by_an_entry_point():
    used = set()
    for directory in ENTRY_POINTS:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        used |= {(directory / c).resolve() for c in kustomization.get("components", [])}
    assert set(COMPONENTS) <= used


def documented_paths() -> list[tuple[str, str]]:
    """Every directory a doc tells users to `kubectl kustomize` or `kubectl apply -k`."""
    found = []
    for doc in DOCS:
        for match in re.finditer(
            r"kubectl (?:kustomize|apply -k|delete -k|diff -k) +(deploy[\w./-]*)", doc.read_text()
        ):
            found.append((doc.name, match.group(1)))
    return found


@pytest.mark.parametrize(("doc", "path"), documented_paths())
def test_documented_kustomize_paths_render(doc, path):
    directory = (ROOT / path).resolve()
    assert directory in {d.resolve() for d in ENTRY_POINTS}, f"{doc}: {path}"
    assert rendered(directory)


def test_the_docs_show_every_entry_point():
    shown = {(ROOT / path).resolve() for _, path in documented_paths()}
    # deploy/base is what deploy/ renders; users apply deploy/.
    assert {d.resolve() for d in ENTRY_POINTS} - {(DEPLOY / "base").resolve()} <= shown


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
        for resource in kustomization.get("resources", []) + kustomization.get("components", []):
            target = (path.parent / resource).resolve()
            assert target.exists(), f"{path}: {resource} does not exist"
            listed.add(target)
    manifests = {p.resolve() for p in MANIFESTS if p.parent.name not in ("examples", "seccomp")}
    manifests -= {(DEPLOY / "orb8.example.yaml").resolve()}
    assert manifests <= listed
    base = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    (daemonset,) = [
        d
        for d in yaml.safe_load_all((DEPLOY / "base" / "daemonset.yaml").read_text())
        if d["kind"] == "DaemonSet"
    ]
    image = daemonset["spec"]["template"]["spec"]["containers"][0]["image"]
    image_name, tag = image.rsplit(":", 1)
    assert base["images"] == [{"name": image_name, "newTag": tag}]
    for directory in ENTRY_POINTS:
        assert (
            only("DaemonSet", directory)["spec"]["template"]["spec"]["containers"][0]["image"]
            == image
        )


def test_every_entry_point_admits_system_node_critical_on_gke():
    """GKE admits system-node-critical pods outside kube-system only where a
    ResourceQuota's scope covers that priority class."""
    for directory in ENTRY_POINTS:
        pod = only("DaemonSet", directory)["spec"]["template"]["spec"]
        quota = only("ResourceQuota", directory)
        assert (
            quota["metadata"]["namespace"] == only("DaemonSet", directory)["metadata"]["namespace"]
        )
        (scope,) = quota["spec"]["scopeSelector"]["matchExpressions"]
        assert scope["scopeName"] == "PriorityClass" and scope["operator"] == "In"
        assert pod["priorityClassName"] in scope["values"]
        assert int(quota["spec"]["hard"]["pods"]) >= 5000  # a large cluster's node count


def test_kube_prometheus_overlay_lets_prometheus_k8s_read_orb8_targets():
    overlay = DEPLOY / "overlays" / "kube-prometheus"
    role, binding = only("Role", overlay), only("RoleBinding", overlay)
    namespace = only("Service", overlay)["metadata"]["namespace"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}
    ]
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    # What ServiceMonitor discovery reads: the Service, its endpoints(lices), the pods.
    assert {("", "services"), ("", "endpoints"), ("", "pods")} <= granted
    assert {v for rule in role["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}


def release_labels(directory: Path) -> dict[str, str | None]:
    return {d["kind"]: d["metadata"].get("labels", {}).get("release") for d in rendered(directory)}


def test_kube_prometheus_stack_overlay_labels_only_the_operator_objects():
    labels = release_labels(DEPLOY / "overlays" / "kube-prometheus-stack")
    assert labels.pop("ServiceMonitor") == labels.pop("PrometheusRule") == "kube-prometheus-stack"
    assert set(labels.values()) == {None}
    assert set(release_labels(DEPLOY / "prometheus-operator").values()) == {None}


def test_the_documented_release_name_override_renders(tmp_path):
    """The overlay docs/deploying.md shows for a Helm release with another name,
    pointed at this checkout instead of the repository URL."""
    text = (ROOT / "docs" / "deploying.md").read_text()
    (snippet,) = re.findall(r"```yaml\n(# kustomization.yaml: release label.*?)```", text, re.S)
    overlay = yaml.safe_load(snippet)
    (remote,) = overlay["resources"]
    assert remote.endswith("deploy/overlays/kube-prometheus-stack?ref=v0.1.0")
    target = DEPLOY / "overlays" / "kube-prometheus-stack"
    overlay["resources"] = [os.path.relpath(target, tmp_path)]  # kustomize refuses absolute
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    labels = release_labels(tmp_path)
    assert labels["ServiceMonitor"] == labels["PrometheusRule"] == "monitoring"


def test_kube_prometheus_stack_ships_every_dashboard_as_a_sidecar_configmap():
    """One ConfigMap per dashboards/*.json, labelled for Grafana's sidecar,
    holding exactly the generated JSON (the copies kustomize reads are
    byte-identical to dashboards/)."""
    from dashboards import DASHBOARDS, DEPLOY_DIRECTORY, DIRECTORY

    maps = [
        doc
        for doc in rendered(DEPLOY / "overlays" / "kube-prometheus-stack")
        if doc["kind"] == "ConfigMap" and doc["metadata"]["labels"].get("grafana_dashboard")
    ]
    shipped = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == "orb8"
        assert config_map["metadata"]["annotations"]["grafana_folder"] == "orb8"
        # No hash suffix: a changed dashboard replaces its ConfigMap.
        assert re.fullmatch(r"orb8-dashboard-[a-z]+", config_map["metadata"]["name"])
        [(key, text)] = config_map["data"].items()
        shipped[key] = text
    assert sorted(shipped) == sorted(spec.file for spec in DASHBOARDS)
    for key, text in shipped.items():
        assert text == (DIRECTORY / key).read_text() == (DEPLOY_DIRECTORY / key).read_text(), key
    assert sorted(p.name for p in DEPLOY_DIRECTORY.glob("*.json")) == sorted(shipped)
    # Only the Operator's Grafana has a sidecar by default: plain deploy/ ships none.
    assert not [doc for doc in rendered(DEPLOY) if doc["kind"] == "ConfigMap"]


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
    assert [p for p, m in mounts.items() if not m.get("readOnly")] == ["/tmp", "/var/cache/orb8"]
    probes = {k: container[k]["httpGet"]["path"] for k in ("livenessProbe", "readinessProbe")}
    assert probes == {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["requests"]["cpu"]


def test_one_daemonset_reads_gpus_where_the_nvidia_runtime_runs_it():
    """No second DaemonSet for GPU nodes: the gpu probe is a default one (the
    args do not narrow --probes), the NVIDIA runtime is asked for NVML only,
    and no GPU is requested from the scheduler."""
    from exporter.registry import DEFAULT_PROBES

    for directory in ENTRY_POINTS:
        pod = only("DaemonSet", directory)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert "gpu" in DEFAULT_PROBES
        assert not [a for a in container["args"] if a.startswith("--probes")]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
        assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
        resources = container["resources"]
        assert not [
            name
            for part in ("limits", "requests")
            for name in resources.get(part, {})
            if name.startswith("nvidia.com/")
        ]
        # A runtime class the CPU nodes lack would keep the pod off them.
        assert "runtimeClassName" not in pod and "nodeSelector" not in pod


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
