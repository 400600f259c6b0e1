"""The live /metrics output: catalogue, promtool, landing page, CLI checks."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.sources.syscalls import native_syscall_numbers
from tests.gpu.dcgm_fixtures import DcgmServer, Gpu, PodResourcesServer, dcgm_text
from tests.gpu.nvml_fixtures import CAPTURE, UUID, build_fake_nvml, nvml_env
from tests.helpers import ORB8, ROOT, promtool_version, run_workload, series, wait_for
from tests.k8s_apiserver import ApiServer, write_kubeconfig

pytestmark = pytest.mark.kernel


def catalogue() -> dict[str, tuple[str, tuple[str, ...]]]:
    """{name: (type, labels)} from the table in docs/metrics.md."""
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        match = re.match(
            r"\| `([a-z0-9_]+)` \| (counter|gauge|histogram) \|\s*([a-z_, ]*?)\s*\|", line
        )
        if match:
            labels = tuple(sorted(x.strip() for x in match.group(3).split(",") if x.strip()))
            rows[match.group(1)] = (match.group(2), labels)
    return rows


def live_families(url: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        # A histogram's le is its buckets', not a label of the family.
        labels = sorted({k for s in family.samples for k in s.labels} - {"le"})
        found[name] = (family.type, tuple(labels))
    return found


def test_live_output_matches_the_catalogue(start_exporter, cgroups, workload, tmp_path):
    server = ApiServer()
    server.start()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
    # Every probe, the GPU ones on the fake NVML and a dcgm-exporter without
    # pod labels (so pod-resources is asked too).
    dcgm = DcgmServer(dcgm_text([Gpu(0, UUID)]))
    pod_resources = PodResourcesServer(Path(f"/tmp/orb8-pr-{uuid.uuid4().hex[:8]}.sock"))
    pod_resources.allocations = [("ml", "a", "c", "nvidia.com/gpu", [UUID])]
    exporter = start_exporter(
        "--kubeconfig",
        str(kubeconfig),
        "--node-name",
        "node-a",
        "--probes",
        "syscalls,network,gpu,dcgm,dns",
        "--dcgm-url",
        dcgm.url,
        "--pod-resources-socket",
        str(pod_resources.socket),
        "--gpu-poll-interval",
        "0.3",
        env=nvml_env(build_fake_nvml(), CAPTURE),
    )
    nr = native_syscall_numbers()  # raw syscall(2) numbers of this architecture
    run_workload(workload, cgroups.make(), f"{nr['getppid']}:3", f"{nr['setns']}:2:-1")
    wait_for(lambda: series(exporter.scrape(), "orb8_dcgm_pod_resources_up"), what="DCGM")
    live = live_families(exporter.url)
    dcgm.stop()
    pod_resources.stop()
    pod_resources.socket.unlink(missing_ok=True)
    documented = catalogue()
    assert len(documented) >= 10
    undocumented = sorted(set(live) - set(documented))
    missing = sorted(set(documented) - set(live))
    assert not undocumented, f"exported but not in docs/metrics.md: {undocumented}"
    assert not missing, f"documented but not exported: {missing}"
    for name, (kind, labels) in live.items():
        assert documented[name][0] == kind, name
        if labels or name == "orb8_dangerous_syscalls_total":  # families with samples
            assert documented[name][1] == labels, name
    server.stop()


def test_promtool_check_metrics_is_clean(start_exporter):
    exporter = start_exporter()
    text = urllib.request.urlopen(exporter.url, timeout=10).read()
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    # Strict (no lint output at all) on purpose; lints differ between releases,
    # so a failure names the promtool that printed them.
    output = result.stderr.decode() + result.stdout.decode()
    assert result.returncode == 0 and not output.strip(), f"{promtool_version()}:\n{output}"


def test_landing_page_lists_probes_and_openmetrics_is_served(start_exporter):
    exporter = start_exporter()
    base = exporter.url.removesuffix("/metrics")
    page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
    assert "syscalls" in page and re.search(r"hook=(tp_btf|raw_tracepoint)", page) and "up" in page
    request = urllib.request.Request(
        exporter.url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().decode().rstrip().endswith("# EOF")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(base + "/nope", timeout=10)
    assert error.value.code == 404


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ORB8, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_diagnose_passes_on_this_machine():
    result = run_cli("diagnose")
    assert result.returncode == 0, result.stdout + result.stderr
    for check in (
        "kernel",
        "capabilities",
        "bcc",
        "kernel headers",
        "tracefs",
        "cgroup v2",
        "test load",
    ):
        assert re.search(rf"^OK\s+{check}\b", result.stdout, re.M), check
    assert "orb8 run can work on this host" in result.stdout


def test_diagnose_reports_a_missing_headers_directory(tmp_path):
    missing = tmp_path / "no-such-headers"
    result = run_cli("diagnose", "--kernel-headers", str(missing))
    assert result.returncode == 1
    assert re.search(rf"^FAIL\s+kernel headers\s+.*{re.escape(str(missing))}", result.stdout, re.M)
    assert "-> apt-get install linux-headers-" in result.stdout


def test_check_loads_every_probe_and_detaches():
    result = run_cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^OK\s+syscalls: hook=(tp_btf|raw_tracepoint)", result.stdout, re.M)


def test_check_fails_when_a_probe_cannot_compile(tmp_path):
    bpf = tmp_path / "bpf"
    (bpf / "include").mkdir(parents=True)
    (bpf / "syscalls.c").write_text("this is not C;\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "check", "--bpf-dir", str(bpf)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    assert "FAIL  syscalls: compiling syscalls.c failed" in result.stdout
