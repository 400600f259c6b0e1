"""Every panel of every dashboard returns data from a real Prometheus
scraping a real `orb8 run`.

Two "pods" (network namespaces + kubelet-shaped cgroups, known to a test
API server) exchange UDP and TCP traffic, including a dropped segment
(retransmits) and an aborted connection (resets); pod A then makes syscalls
outside its learned baseline and a dangerous one (ptrace), which fires
Orb8DangerousSyscall in that Prometheus (alerts/orb8-rules.yml loaded).
The same orb8 runs the gpu probe on the fake libnvidia-ml.so.1 replaying
the real H200 capture, its two GPU processes rewritten to live processes in
pods A and B (one GPU shared by both pods), with XID events added to the
capture (gpu_capture), and the dcgm probe scraping a dcgm-exporter served
over HTTP that maps the same GPU to both pods.
The template variables are resolved the way Grafana resolves them (their own
label_values queries against the same Prometheus), substituted with
Grafana's escaping, and each panel query must return a non-empty, finite
result. A failure names the dashboard and panel.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
import urllib.parse
import urllib.request
import uuid

import pytest
import yaml

from exporter.kernel.attach import link_create
from exporter.sources.syscalls import native_syscall_numbers
from tests.dashboard_queries import (
    dashboard_files,
    load,
    query_result_lines,
    substitute,
    targets,
    variable_options,
)
from tests.gpu.conftest import start_in_cgroup
from tests.gpu.dcgm_fixtures import DcgmServer, Gpu, dcgm_text
from tests.gpu.nvml_fixtures import UUID, build_fake_nvml, nvml_env, rewrite_capture
from tests.helpers import ROOT, free_port, run_workload
from tests.k8s_apiserver import ApiServer, make_pod, write_kubeconfig
from tests.kernel import dnswork
from tests.kernel.netpods import PodPair, Workload
from tests.kernel.test_alerting import start_service, wait_http
from tests.kernel.test_network import DROPPER

pytestmark = pytest.mark.kernel

# Grafana's $__rate_interval is max(4 x scrape interval, step + scrape
# interval); with the 1 s scrapes here any window of a few scrapes works.
BUILTINS = {"__rate_interval": "20s", "__range": "5m", "__interval": "5s"}
RANGE_SECONDS = 30
BASELINE_WINDOW = 3.0
NODE = "node-a"
# Legend labels a series may lack: a pod's series have no cgroup label.
OPTIONAL_LEGEND_LABELS = {"cgroup"}
# Added to every device of the capture: XID 13 (graphics engine exception)
# twice and 31 (MMU fault) once, as an application bug causes them. The real
# capture had none; the fake delivers each once through nvmlEventSetWait_v2.
XID_EVENTS = [13, 31, 13]
# The H200 reported no ECC errors; a few corrected ones make the ECC panels
# show a value a healthy-but-ageing GPU would.
ECC_CORRECTED = 3


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str | list[str]) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=20) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read())
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def label_values(self, selector: str, label: str) -> set[str]:
        """What Grafana's label_values(selector, label) lists (series API, last 5 minutes)."""
        now = time.time()
        series = self.get(
            "/api/v1/series", **{"match[]": [selector]}, start=str(now - 300), end=str(now)
        )
        return {s[label] for s in series if s.get(label)}


def gpu_capture(path, pids: dict[int, int]):
    """The real H200 capture, its load pids (437, 438) replaced by `pids`."""

    def edit(device: dict) -> None:
        device["xid_events"] = list(XID_EVENTS)
        device["ecc_volatile_corrected"] = ECC_CORRECTED

    return rewrite_capture(path, pids, edit)


def wait_until(predicate, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return value


@pytest.fixture
def stack(tmp_path, start_exporter, cgroup2_root):
    """Test API server with pods A and B, orb8, and Prometheus with the orb8 rules."""
    api = ApiServer()
    api.start()
    pods = PodPair(cgroup2_root, namespace=f"dash-{uuid.uuid4().hex[:6]}")
    dcgm = DcgmServer()
    prometheus = None
    gpu_procs = []
    try:
        pods.setup()
        # The capture's two GPU processes, as live processes in pods A and B.
        for pod in (pods.a, pods.b):
            gpu_procs.append(start_in_cgroup(pod.cgroup))
        capture = gpu_capture(
            tmp_path / "capture.json", {437: gpu_procs[0].pid, 438: gpu_procs[1].pid}
        )
        # dcgm-exporter repeats a shared GPU's rows once per pod.
        shared = tuple((pod.namespace, pod.name, "app") for pod in (pods.a, pods.b))
        dcgm.body = dcgm_text([Gpu(0, UUID, shared)])
        for pod in (pods.a, pods.b):
            api.add_pod(
                make_pod(
                    pod.name,
                    namespace=pod.namespace,
                    uid=pod.uid,
                    containers=(("app", pod.container_id),),
                    pod_ips=(pod.ipv4, pod.ipv6),
                )
            )
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        exporter = start_exporter(
            "--kubeconfig",
            str(kubeconfig),
            "--node-name",
            "node-a",
            "--baseline-window",
            str(BASELINE_WINDOW),
            "--probes",
            "syscalls,network,gpu,dcgm,dns",
            "--dns-timeout",
            "0.2",
            "--gpu-poll-interval",
            "0.5",
            "--dcgm-url",
            dcgm.url,
            env=nvml_env(build_fake_nvml(), capture, "busy.0"),
        )
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "alerts" / "orb8-rules.yml")],
            "scrape_configs": [
                {
                    "job_name": "orb8",
                    # The node label the ServiceMonitor's relabeling adds
                    # from __meta_kubernetes_pod_node_name (the Node variable shows it).
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{exporter.port}"],
                            "labels": {"node": NODE},
                        }
                    ],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = tmp_path / "prometheus.log"
        prometheus = start_service(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            log,
        )
        wait_http(f"http://127.0.0.1:{port}/-/ready", prometheus, log)
        yield {
            "pods": pods,
            "exporter": exporter,
            "prometheus": Prometheus(f"http://127.0.0.1:{port}"),
        }
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=20)
        for proc in gpu_procs:
            proc.kill()
            proc.wait()
        pods.cleanup()
        dcgm.stop()
        api.stop()


def run_dns(pods: PodPair) -> None:
    """Responders in both pods; pod A asks pod B (and sends malformed
    messages), pod B asks pod A, until cleanup: steady rates for every DNS
    panel, A being both a client and a server."""

    def spawn(pod, mode: str, *args: object) -> Workload:
        return pods.spawn(pod, mode, *args, script=dnswork.__file__)

    for pod in (pods.a, pods.b):
        spawn(pod, "serve", pod.ipv4).wait_ready()
    spawn(pods.a, "loop", pods.b.ipv4, 900, 1)
    spawn(pods.b, "loop", pods.a.ipv4, 900, 0)


def run_traffic(pods: PodPair) -> None:
    """UDP both families, TCP with dropped segments (retransmits), an abort (reset)."""
    from bcc import BPF

    for family, b_addr in (("ipv4", pods.b.ipv4), ("ipv6", pods.b.ipv6)):
        receiver = pods.spawn(pods.b, "udp-recv", b_addr, 5100, 200)
        receiver.wait_ready()
        assert pods.spawn(pods.a, "udp-send", 5100, 200, 256, b_addr).result()["sent"] == 200
        assert receiver.result()["received"] == 200, family

    port = 6100
    dropper = BPF(text=DROPPER.encode(), cflags=[f"-DPORT={port}", "-DDROPS=2"])
    cgroup_fd = os.open(pods.b.cgroup, os.O_RDONLY)
    link = -1
    try:
        link = link_create(dropper.load_func(b"drop_data", BPF.CGROUP_SKB).fd, cgroup_fd, 0)
        assert link >= 0
        server = pods.spawn(pods.b, "tcp-serve", pods.b.ipv4, port)
        server.wait_ready()
        pods.spawn(pods.a, "tcp-send", pods.b.ipv4, port, 100_000).result()
        assert server.result()["received"] == 100_000
    finally:
        if link >= 0:
            os.close(link)
        os.close(cgroup_fd)
        dropper.cleanup()

    server = pods.spawn(pods.b, "tcp-serve", pods.b.ipv4, port + 1)
    server.wait_ready()
    pods.spawn(pods.a, "tcp-abort", pods.b.ipv4, port + 1).result()
    server.result()


def resolve_variables(dashboard: dict, prometheus: Prometheus, wanted: dict[str, str]) -> dict:
    """Each variable's value, chosen from what its own query lists (as in Grafana)."""
    values: dict[str, str] = dict(BUILTINS)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    label_values = re.compile(r"label_values\((.*),\s*(\w+)\)$")
    query_result = re.compile(r"query_result\((.*)\)$")
    for variable in dashboard["templating"]["list"]:
        name = variable["name"]
        if variable["type"] == "datasource":
            values[name] = "prometheus"
            continue
        assert variable["type"] == "query", f"{dashboard['title']}: ${name} is {variable['type']}"
        result = query_result.match(variable["query"])
        if result:
            # The Node variable: instance values shown by their node label.
            selector = substitute(result.group(1), values, variables)
            lines = query_result_lines(prometheus.query(selector))
            options = variable_options(variable, lines)
            assert name in wanted, f"{dashboard['title']}: which value of ${name} has the data?"
            assert options.get(wanted[name]) == NODE, f"{dashboard['title']}: ${name} {options}"
            values[name] = wanted[name]
            continue
        match = label_values.match(variable["query"])
        assert match, f"{dashboard['title']}: ${name} query {variable['query']!r}"
        selector = substitute(match.group(1), values, variables)
        listed = prometheus.label_values(selector, match.group(2))
        if name == "cluster":  # no cluster label on a single-cluster Prometheus
            assert listed == set(), listed
            values[name] = ""
            continue
        assert name in wanted, f"{dashboard['title']}: which value of ${name} has the data?"
        assert wanted[name] in listed, (
            f"{dashboard['title']}: ${name} lists {sorted(listed)}, not {wanted[name]!r}"
        )
        values[name] = wanted[name]
    return values


def evaluate(prometheus: Prometheus, expr: str, instant: bool) -> list[dict]:
    if instant:
        return prometheus.query(expr)
    now = time.time()
    return prometheus.get(
        "/api/v1/query_range",
        query=expr,
        start=str(now - RANGE_SECONDS),
        end=str(now),
        step="5",
    )["result"]


def problems_of(result: list[dict], legend: str, links: list[str]) -> list[str]:
    if not result:
        return ["no series"]
    problems = []
    points = [s["value"] for s in result if "value" in s] + [
        p for s in result for p in s.get("values", [])
    ]
    bad = [value for _, value in points if not math.isfinite(float(value))]
    if bad:
        problems.append(f"non-finite values {bad[:3]}")
    labels = set().union(*(s["metric"].keys() for s in result))
    for name in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        if name not in labels and name not in OPTIONAL_LEGEND_LABELS:
            problems.append(f"legend label {name!r} not in {sorted(labels)}")
    for column in links:
        if column not in labels:
            problems.append(f"link column {column!r} not in {sorted(labels)}")
    return problems


def check(prometheus: Prometheus, expr: str, target, links: list[str]) -> list[str]:
    try:
        return problems_of(evaluate(prometheus, expr, target.instant), target.legend, links)
    except AssertionError as e:
        return [str(e)]


def wait_for_fresh_scrape(prometheus: Prometheus) -> None:
    """Until the last two scrapes of orb8 succeeded."""
    wait_until(
        lambda: prometheus.query('min_over_time(up{job="orb8"}[2s]) == 1'), "a good scrape", 30
    )


def test_every_panel_of_every_dashboard_returns_data(stack, workload):
    pods, prometheus, exporter = stack["pods"], stack["prometheus"], stack["exporter"]
    wait_until(lambda: prometheus.query('up{job="orb8"} == 1'), "the first scrape of orb8")

    started = time.monotonic()
    run_dns(pods)
    run_traffic(pods)  # pod A appears: its baseline learning starts
    time.sleep(max(0.0, BASELINE_WINDOW + 1.5 - (time.monotonic() - started)))
    numbers = native_syscall_numbers()
    a = f'pod="{pods.a.name}"'

    def novel_in_a():
        # Outside A's baseline (novel), and dangerous: ptrace fires Orb8DangerousSyscall.
        # The window opens at the first collect that sees pod A, which a late first
        # scrape can push past the sleep above; getsid made inside it is learnt, not
        # novel. So it is made again on each try: one after the window is novel.
        run_workload(workload, pods.a.cgroup, f"{numbers['getsid']}:4", f"{numbers['ptrace']}:3:0")
        return prometheus.query(f"orb8_syscall_novel_total{{{a}}}")

    wait_until(novel_in_a, "novel syscalls of pod A")
    for what, expr in (
        ("the ptrace alert", f'ALERTS{{alertstate="firing", {a}, syscall="ptrace"}}'),
        ("retransmits of pod A", f"orb8_tcp_retransmits_total{{{a}}}"),
        ("pod-to-pod flows of pod A", f'orb8_flow_bytes_total{{{a}, peer_pod="{pods.b.name}"}}'),
        ("GPU memory of pod A", f'orb8_gpu_memory_used_bytes{{{a}, uuid="{UUID}"}}'),
        ("GPU memory of pod B", f'orb8_gpu_memory_used_bytes{{pod="{pods.b.name}"}}'),
        ("the capture's XIDs", f'orb8_gpu_xid_errors_total{{xid="13", uuid="{UUID}"}} == 2'),
        ("the DCGM allocation of pod A", f"orb8_gpu_allocation_info{{{a}}}"),
        ("DNS timeouts of pod A", f'rate(orb8_dns_timeouts_total{{{a}, role="client"}}[5s]) > 0'),
        ("DNS latency of pod A", f'orb8_dns_latency_seconds_count{{{a}, role="server"}} > 0'),
    ):
        wait_until(lambda expr=expr: prometheus.query(expr), what)
    time.sleep(3)  # a few more scrapes: every rate() window holds several samples

    wanted = {
        "job": "orb8",
        "instance": f"127.0.0.1:{exporter.port}",
        "namespace": pods.a.namespace,
        "pod": pods.a.name,
        "gpu": UUID,
    }
    checked, failures = 0, []
    chosen = {}
    for path in dashboard_files():
        dashboard = load(path)
        values = resolve_variables(dashboard, prometheus, wanted)
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        chosen[dashboard["title"]] = values, variables
        # Once with one node, namespace and pod chosen, once with "All" for
        # every variable that offers it (the dashboards' default view).
        every = {name for name, v in variables.items() if v.get("includeAll")}
        for target, all_selected in itertools.product(targets(), (set(), every)):
            if target.dashboard != dashboard["title"]:
                continue
            expr = substitute(target.expr, values, variables, all_selected)
            links = [
                o["matcher"]["options"]
                for o in target.panel_json.get("fieldConfig", {}).get("overrides", [])
                if any(p["id"] == "links" for p in o["properties"])
            ]
            problems = check(prometheus, expr, target, links)
            if problems:
                # A failed scrape (over the 1 s timeout on a loaded machine)
                # marks every series stale until the next one: a query that is
                # really empty is still empty after a fresh good scrape.
                wait_for_fresh_scrape(prometheus)
                problems = check(prometheus, expr, target, links)
            checked += 1
            if problems:
                view = "All" if all_selected else "one pod"
                failures.append(f"{target.name} ({view}): {'; '.join(problems)}\n    {expr}")
    scrapes = [
        prometheus.query(f'{f}_over_time({m}{{job="orb8"}}[2m])')[0]["value"][1]
        for f, m in (("min", "up"), ("max", "scrape_duration_seconds"))
    ]
    assert not failures, (
        f"{len(failures)} of {checked} panel queries failed "
        f"(min up, max scrape duration: {scrapes}):\n" + "\n".join(failures)
    )
    assert checked == 2 * len(targets())
    print(
        f"{checked} panel queries ({len(targets())} x 2 selections) returned data; "
        f"min up, max scrape duration: {scrapes}"
    )
    shows_the_capture_per_pod(prometheus, pods, *chosen["orb8 / GPU"])


def shows_the_capture_per_pod(prometheus: Prometheus, pods: PodPair, values, variables) -> None:
    """With pod A chosen, the GPU panels show what the capture says (busy.0:
    pid 437, now in pod A, and 438, in pod B, share the one H200)."""

    def panel(title: str) -> dict[tuple[str, ...], float]:
        [target] = [t for t in targets() if t.dashboard == "orb8 / GPU" and t.panel == title]
        result = evaluate(prometheus, substitute(target.expr, values, variables), instant=True)
        return {
            tuple(s["metric"].get(k, "") for k in ("pod", "uuid", "xid")): float(s["value"][1])
            for s in result
        }

    a, b = pods.a.name, pods.b.name
    # The shared GPU: both pods on one uuid, though only pod A is selected.
    assert panel("Pods on the selected GPUs") == {
        (a, UUID, ""): 4271898624,
        (b, UUID, ""): 7493124096,
    }
    assert panel("Pods per GPU") == {("", UUID, ""): 2}
    assert panel("GPU utilisation by pod") == {(a, "", ""): 49}
    assert panel("XID errors") == {("", UUID, "13"): 2, ("", UUID, "31"): 1}
    assert panel("GPU allocations") == {(a, UUID, ""): 1}
