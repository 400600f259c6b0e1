"""deploy/ manifests are valid Kubernetes objects (strict schema) and ask for
no more than orb8 needs."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from tests.helpers import ROOT

MANIFESTS = sorted((ROOT / "deploy").glob("*.yaml"))
KUBERNETES_VERSION = "1.30.0"


def documents():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "apiVersion" in doc:
                yield path.name, doc


@pytest.mark.parametrize(
    ("name", "doc"), list(documents()), ids=lambda x: x if isinstance(x, str) else x["kind"]
)
def test_manifest_is_valid(name, doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_rbac_is_read_only_on_pods():
    roles = [doc for _, doc in documents() if doc["kind"] == "ClusterRole"]
    assert len(roles) == 1
    assert roles[0]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]


def test_daemonset_passes_node_name_and_mounts_the_host_cgroup_tree():
    (daemonset,) = [doc for _, doc in documents() if doc["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert pod["hostPID"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/sys/fs/cgroup", "/lib/modules", "/usr/src"} <= mounts
