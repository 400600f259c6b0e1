"""OTLP push from a real `orb8 run` into real OTLP receivers (gRPC and HTTP/protobuf).

Parity: every /metrics sample has an OTLP data point with the mapped name,
attributes and value. "The same collect": the test scrapes (A), waits for
an export collected after A (E), then scrapes again (B). A series whose
counter whose value is the same in A and B had that value in E too
(counters never go backwards), so those must match exactly, and one that
moved must lie between A and B. Gauges can move and come back (the ring
buffer's peak fill is per collect), so only the ones fixed while orb8 runs
are compared exactly; the others must be present. The workload's own
series (exact counts) are quiet, so they are always in the exact set.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from exporter import catalogue
from exporter.outputs import otlp_names
from exporter.sources.syscalls import native_syscall_numbers
from tests.helpers import ROOT, run_workload, series, wait_for
from tests.k8s_apiserver import ApiServer, make_pod, write_kubeconfig
from tests.otlp_receiver import GrpcReceiver, HttpReceiver

pytestmark = pytest.mark.kernel

# The workload makes raw syscall(2) calls: this architecture's numbers, not x86_64's.
NR = native_syscall_numbers()
GETPPID = str(NR["getppid"])
N_GETPPID = 4321
DATAGRAMS, PAYLOAD = 300, 100
IP_UDP = 20 + 8
# Gauges that cannot change while orb8 runs.
FIXED_GAUGES = {
    "orb8_bpf_map_capacity",
    "orb8_ring_buffer_size_bytes",
    "orb8_build_info",
    "orb8_probe_up",
    "process_max_fds",
    "process_start_time_seconds",
}

# Joins the cgroup, then sends DATAGRAMS UDP datagrams to itself over loopback:
# DATAGRAMS packets each way, (PAYLOAD + IP_UDP) bytes each, all its own.
UDP_LOOPBACK = """
import socket, sys
with open(sys.argv[1] + "/cgroup.procs", "w") as f:
    f.write("0")
count, size = int(sys.argv[2]), int(sys.argv[3])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    tx.sendto(b"x" * size, rx.getsockname())
    rx.recv(size)
"""


def udp_loopback(cgroup) -> None:
    subprocess.run(
        [sys.executable, "-c", UDP_LOOPBACK, str(cgroup), str(DATAGRAMS), str(PAYLOAD)],
        check=True,
        timeout=60,
    )


def otlp_key(name: str, labels: tuple[tuple[str, str], ...]) -> tuple[str, tuple]:
    keys = tuple(k for k, _ in labels)
    values = tuple(v for _, v in labels)
    return catalogue.instrument(name).name, tuple(
        sorted(otlp_names.attributes(keys, values).items())
    )


def kinds(url: str) -> dict[str, str]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        f.name + ("_total" if f.type == "counter" else ""): f.type
        for f in text_string_to_metric_families(text)
    }


@pytest.fixture
def apiserver():
    server = ApiServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def receivers():
    started = []

    def start(kind):
        receiver = kind().start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def test_push_matches_metrics_sample_for_sample(
    start_exporter, apiserver, receivers, cgroups, workload, tmp_path
):
    receiver = receivers(GrpcReceiver)
    uid, container_id = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex
    apiserver.add_pod(
        make_pod("cart", namespace="shop", uid=uid, containers=(("app", container_id),))
    )
    pod_cgroup = cgroups.make(
        f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid.replace('-', '_')}"
        f".slice/cri-containerd-{container_id}.scope"
    )
    host_cgroup = cgroups.make()
    host_label = "/" + host_cgroup.name
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)
    exporter = start_exporter(
        "--kubeconfig",
        str(kubeconfig),
        "--node-name",
        "node-a",
        "--otlp-interval",
        "1",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test,service.name=ignored",
            "OTEL_SERVICE_NAME": "orb8-under-test",
        },
    )
    run_workload(workload, pod_cgroup, f"{GETPPID}:{N_GETPPID}")
    run_workload(workload, host_cgroup, f"{GETPPID}:{N_GETPPID + 1}", f"{NR['setns']}:2:-1")
    udp_loopback(pod_cgroup)
    pod = {"namespace": "shop", "pod": "cart", "container": "app", "cgroup": ""}
    wait_for(
        lambda: series(exporter.scrape(), "orb8_syscalls_total", syscall="getppid", **pod),
        what="pod resolved",
    )

    before = exporter.scrape()
    after_before = time.time()
    export = receiver.wait_for_export(after_before)
    after = exporter.scrape()
    types = kinds(exporter.url)

    points = {(p.metric, p.attributes): p for p in export.points}
    assert len(points) == len(export.points), "two points for one series"
    exact = 0
    for (name, labels), value in before.items():
        if (name, labels) not in after:
            continue  # the series left between the scrapes
        key = otlp_key(name, labels)
        assert key in points, f"/metrics {name}{dict(labels)} has no OTLP point {key}"
        point = points[key]
        counter = types[name] == "counter"
        if after[(name, labels)] == value and (counter or name in FIXED_GAUGES):
            assert point.value == value, (name, labels)
            exact += 1
        elif counter:
            assert value <= point.value <= after[(name, labels)], (name, labels)
        inst = catalogue.instrument(name)
        assert point.unit == inst.unit, name
        if types[name] == "counter":
            assert (point.kind, point.monotonic, point.temporality) == ("sum", True, 2), name
        else:
            assert point.kind == "gauge", name
    mapped = {otlp_key(name, labels) for name, labels in (*before, *after)}
    extra = sorted(set(points) - mapped)
    assert not extra, f"OTLP points that /metrics does not have: {extra[:5]}"
    assert exact > 20

    # The workload's exact counts, under semantic-convention attributes.
    otlp_pod = {
        "k8s.namespace.name": "shop",
        "k8s.pod.name": "cart",
        "k8s.container.name": "app",
    }

    def value(metric: str, **attrs: str) -> float:
        wanted = {k.replace("_", "."): v for k, v in attrs.items()}
        return sum(
            p.value
            for p in export.points
            if p.metric == metric and wanted.items() <= dict(p.attributes).items()
        )

    assert value("orb8.syscalls", orb8_syscall="getppid", **otlp_pod) == N_GETPPID
    host = {"orb8.cgroup.path": host_label}
    assert value("orb8.syscalls", orb8_syscall="getppid", **host) == N_GETPPID + 1
    assert value("orb8.syscalls.dangerous", orb8_syscall="setns", **host) == 2
    for direction in ("transmit", "receive"):
        udp = {**otlp_pod, "network.io.direction": direction, "network.transport": "udp"}
        assert value("orb8.network.packets", network_type="ipv4", **udp) == DATAGRAMS
        assert value("orb8.network.io", **udp) == DATAGRAMS * (PAYLOAD + IP_UDP)
    pod_points = [p for p in export.points if dict(p.attributes).get("k8s.pod.name") == "cart"]
    assert all("orb8.cgroup.path" not in dict(p.attributes) for p in pod_points)

    resource = export.resource
    assert resource["service.name"] == "orb8-under-test"  # OTEL_SERVICE_NAME wins
    assert resource["deployment.environment.name"] == "test"
    assert resource["k8s.node.name"] == "node-a"
    assert resource["os.type"] == "linux"
    assert resource["service.version"] and resource["host.name"]


def test_table_in_docs_matches_live_output(start_exporter, apiserver, receivers, tmp_path):
    """docs/metrics.md's OTLP table is the declaration rendered, and the live push follows it."""
    docs = (ROOT / "docs" / "metrics.md").read_text()
    assert catalogue.render(docs) == docs, "docs/metrics.md out of date: make docs"
    rows = {}
    for line in docs.partition(otlp_names.TABLE_BEGIN)[2].splitlines():
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith(("orb8_", "process_")):
            attrs = tuple(sorted(a.strip() for a in cells[4].split(",") if a.strip()))
            rows[cells[1]] = (cells[2], cells[3], attrs)

    receiver = receivers(HttpReceiver)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)
    exporter = start_exporter(
        "--kubeconfig",
        str(kubeconfig),
        "--node-name",
        "node-a",
        "--otlp-endpoint",
        receiver.endpoint,
        "--otlp-interval",
        "1",
    )
    # Families with samples in a scrape taken before the export must have points
    # in it. A scrape taken after the export could show a family the export had
    # no reason to carry: the host's own traffic, or that scrape's own TCP
    # connection (the start-up scrape's handshake completed in the listen
    # backlog before the probes attached, so the first counted one is later).
    before = exporter.scrape()
    export = receiver.wait_for_export(time.time())
    live: dict[str, tuple[str, str, set[str]]] = {}
    for p in export.points:
        kind = "monotonic sum" if p.kind == "sum" and p.monotonic else p.kind
        entry = live.setdefault(p.metric, (kind, p.unit, set()))
        assert entry[:2] == (kind, p.unit), p.metric
        entry[2].update(k for k, _ in p.attributes)
    prometheus_families = set(kinds(exporter.url))
    undocumented = sorted(set(live) - set(rows))
    assert not undocumented, f"pushed but not in the OTLP table: {undocumented}"
    documented_names = {catalogue.instrument(n).name for n in prometheus_families}
    missing = sorted(documented_names - set(live))
    # Families without samples (e.g. ring buffer drops before any) send no points.
    for name in missing:
        prom = next(n for n in prometheus_families if catalogue.instrument(n).name == name)
        assert not [k for k in before if k[0] == prom], (
            f"{prom} has samples on /metrics but no OTLP points"
        )
    for name, (kind, unit, attrs) in live.items():
        assert rows[name][:2] == (kind, unit), name
        # Empty label values are not sent, so a point may carry fewer keys.
        assert attrs <= set(rows[name][2]), name


def exports(exporter, result: str) -> float:
    return series(exporter.scrape(), "orb8_otlp_exports_total", result=result)


def outage_lines(exporter) -> tuple[int, int]:
    log = exporter.output()
    return log.count(" failing: "), log.count(" recovered after ")


def test_grpc_collector_down_at_start_then_up_then_down_then_unavailable(
    start_exporter, receivers, cgroups, workload
):
    receiver = GrpcReceiver()  # port chosen, nothing listening yet
    exporter = start_exporter(
        "--probes",
        "syscalls",
        "--otlp-interval",
        "0.5",
        env={
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1500",  # ms: retries with backoff end within it
        },
    )
    cgroup = cgroups.make()
    run_workload(workload, cgroup, f"{GETPPID}:77")
    wait_for(lambda: exports(exporter, "failure") >= 2, timeout=30, what="failed exports")
    samples = exporter.scrape()  # /metrics keeps working meanwhile
    assert series(samples, "orb8_syscalls_total", cgroup="/" + cgroup.name, syscall="getppid") == 77
    assert series(samples, "orb8_otlp_last_success_timestamp_seconds") == 0
    assert outage_lines(exporter) == (1, 0), exporter.output()

    receivers_started = receiver.start()
    wait_for(lambda: exports(exporter, "success") >= 1, timeout=30, what="recovery")
    assert series(exporter.scrape(), "orb8_otlp_last_success_timestamp_seconds") > 0
    wait_for(lambda: outage_lines(exporter) == (1, 1), what="one recovery line")
    export = receiver.wait_for_export(time.time())
    syscalls = [p for p in export.points if p.metric == "orb8.syscalls"]
    assert ("orb8.cgroup.path", "/" + cgroup.name) in {a for p in syscalls for a in p.attributes}

    receivers_started.stop()  # goes down mid-run
    failed = exports(exporter, "failure")
    wait_for(lambda: exports(exporter, "failure") > failed, timeout=30, what="new failures")
    assert outage_lines(exporter) == (2, 1)

    receiver.mode = "fail"  # up, but answering UNAVAILABLE
    receiver.start()
    attempts = receiver.attempts
    failed = exports(exporter, "failure")
    wait_for(lambda: receiver.attempts > attempts + 1, timeout=30, what="retried exports")
    wait_for(lambda: exports(exporter, "failure") > failed, timeout=30, what="counted failure")
    assert outage_lines(exporter) == (2, 1)  # still the same outage: no new line
    receiver.mode = "ok"
    wait_for(lambda: outage_lines(exporter) == (2, 2), timeout=30, what="second recovery")
    assert exporter.proc.poll() is None
    receiver.stop()


def test_http_collector_slow_and_500(start_exporter, receivers):
    receiver = receivers(HttpReceiver)
    receiver.mode, receiver.delay = "slow", 3.0  # beyond the 1 s timeout below
    exporter = start_exporter(
        "--probes",
        "syscalls",
        "--otlp-interval",
        "0.5",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20s3cret,x-tenant=team-a",
        },
    )
    wait_for(lambda: exports(exporter, "failure") >= 1, timeout=30, what="timed-out export")
    # Scrapes go on while a push hangs on the slow collector.
    for _ in range(5):
        assert series(exporter.scrape(), "orb8_probe_up", probe="syscalls") == 1
    receiver.mode = "fail"  # HTTP 500, retried by the exporter, then failed
    failed = exports(exporter, "failure")
    wait_for(lambda: exports(exporter, "failure") > failed, timeout=30, what="500 counted")
    receiver.mode = "ok"
    wait_for(lambda: exports(exporter, "success") >= 1, timeout=30, what="recovery")
    export = receiver.wait_for_export(time.time())
    assert export.headers["authorization"] == "Bearer s3cret"
    assert export.headers["x-tenant"] == "team-a"
    assert outage_lines(exporter) == (1, 1), exporter.output()
    assert exporter.proc.poll() is None


def test_delta_temporality_sends_increments(start_exporter, receivers, cgroups, workload):
    receiver = receivers(HttpReceiver)
    exporter = start_exporter(
        "--probes",
        "syscalls",
        "--otlp-interval",
        "1",
        "--otlp-endpoint",
        receiver.endpoint,
        env={"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"},
    )
    cgroup = cgroups.make()
    label = {"orb8.cgroup.path": "/" + cgroup.name, "orb8.syscall": "getppid"}

    def getppid(export) -> list:
        return [
            p
            for p in export.points
            if p.metric == "orb8.syscalls" and label.items() <= dict(p.attributes).items()
        ]

    run_workload(workload, cgroup, f"{GETPPID}:500")
    wait_for(lambda: series(exporter.scrape(), "orb8_syscalls_total", cgroup="/" + cgroup.name))
    receiver.wait_for_export(time.time())  # an export after the first 500 calls
    run_workload(workload, cgroup, f"{GETPPID}:250")
    second = receiver.wait_for_export(time.time())
    # Each export carries only its own increment (the cgroup is new, so its
    # series starts at 0); together they add up to the exact count.
    deltas = [
        p.value
        for stamp, requests in receiver.collections().items()
        if stamp <= second.time_ns
        for r in requests
        for p in getppid_points(r, stamp, label)
    ]
    assert sum(deltas) == 750
    assert max(deltas) < 750, deltas  # cumulative points would reach 750
    assert getppid(second) and all(p.temporality == 1 for p in getppid(second))  # DELTA
    assert (
        series(
            exporter.scrape(), "orb8_syscalls_total", cgroup="/" + cgroup.name, syscall="getppid"
        )
        == 750
    )


def getppid_points(request, stamp: int, label: dict) -> list:
    return [
        p
        for p in request.points()
        if p.time_ns == stamp
        and p.metric == "orb8.syscalls"
        and label.items() <= dict(p.attributes).items()
    ]
