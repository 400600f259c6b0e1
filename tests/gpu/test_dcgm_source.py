"""The DCGM source end to end: a real `orb8 run --probes dcgm` scraping a
dcgm-exporter served over real HTTP from the shipped counter lists, pods from
a kubelet pod-resources server speaking real gRPC on a unix socket."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from exporter.sources.dcgm.fields import FIELDS, MIB
from tests.gpu.dcgm_fixtures import (
    DcgmServer,
    Gpu,
    PodResourcesServer,
    dcgm_text,
    shipped_fields,
    value_of,
)
from tests.gpu.nvml_fixtures import promtool_check
from tests.helpers import series, wait_for

GPU0 = Gpu(0, "GPU-11111111-2222-3333-4444-555555555555")
GPU1 = Gpu(1, "GPU-66666666-7777-8888-9999-000000000000")


@pytest.fixture
def dcgm():
    server = DcgmServer()
    yield server
    server.stop()


@pytest.fixture
def pod_resources():
    # Short path: a unix socket path must fit in 108 bytes.
    path = Path(f"/tmp/orb8-pr-{uuid.uuid4().hex[:8]}.sock")
    server = PodResourcesServer(path)
    yield server
    server.stop()
    path.unlink(missing_ok=True)


def start_dcgm(start_exporter, dcgm, pod_resources=None, interval="0.3"):
    args = ["--probes", "dcgm", "--dcgm-url", dcgm.url, "--gpu-poll-interval", interval]
    if pod_resources is not None:
        args += ["--pod-resources-socket", str(pod_resources.socket)]
    return start_exporter(*args)


def has(samples, name, **labels):
    return any(
        n == name and labels.items() <= dict(sample_labels).items()
        for (n, sample_labels) in samples
    )


def test_every_shipped_field_is_reexported_with_dcgm_pod_labels(start_exporter, dcgm):
    a = Gpu(GPU0.index, GPU0.uuid, (("ml", "trainer-a", "train"),))
    b = Gpu(GPU1.index, GPU1.uuid, (("ml", "trainer-b", "train"),))
    dcgm.body = dcgm_text([a, b])
    exporter = start_dcgm(start_exporter, dcgm)
    samples = wait_for(
        lambda: (s := exporter.scrape()) and series(s, "orb8_dcgm_up") == 1 and s,
        what="a good DCGM scrape",
    )
    for field in shipped_fields():
        spec = FIELDS[field]
        for gpu in (a, b):
            ns, pod, container = gpu.pods[0]
            labels = {"namespace": ns, "pod": pod, "container": container, "uuid": gpu.uuid}
            got = series(samples, spec.name, gpu=str(gpu.index), model="NVIDIA H200", **labels)
            assert got == pytest.approx(value_of(field, gpu) * spec.scale), (field, gpu)
    assert series(samples, "orb8_dcgm_framebuffer_used_bytes", pod="trainer-a") == (
        value_of("DCGM_FI_DEV_FB_USED", a) * MIB
    )
    assert series(samples, "orb8_gpu_allocation_info", pod="trainer-b", uuid=GPU1.uuid) == 1
    assert not [k for k in samples if any(label.startswith("exported_") for label, _ in k[1])]
    assert series(samples, "orb8_dcgm_stale") == 0
    assert series(samples, "orb8_dcgm_unmapped_fields") == 0
    assert not has(samples, "orb8_dcgm_pod_resources_up")  # DCGM named every pod
    promtool_check(exporter.url)


def test_without_dcgm_pod_labels_pods_come_from_pod_resources(start_exporter, dcgm, pod_resources):
    dcgm.body = dcgm_text([GPU0, GPU1])
    pod_resources.allocations = [
        ("ml", "trainer-a", "train", "nvidia.com/gpu", [GPU0.uuid]),
        # GPU1 time-sliced between two pods: replicas GPU-...::0 and ::1.
        ("ml", "infer-x", "serve", "nvidia.com/gpu", [f"{GPU1.uuid}::0"]),
        ("ml", "infer-y", "serve", "nvidia.com/gpu", [f"{GPU1.uuid}::1"]),
        ("ml", "infer-y", "serve", "example.com/foo", [GPU0.uuid]),  # not a GPU resource
    ]
    exporter = start_dcgm(start_exporter, dcgm, pod_resources)
    samples = wait_for(
        lambda: (s := exporter.scrape()) and series(s, "orb8_dcgm_pod_resources_up") == 1 and s,
        what="pod-resources listed",
    )
    power = value_of("DCGM_FI_DEV_POWER_USAGE", GPU0)
    assert series(samples, "orb8_dcgm_power_watts", pod="trainer-a", uuid=GPU0.uuid) == power
    assert series(samples, "orb8_dcgm_power_watts", uuid=GPU0.uuid) == power  # once
    # The shared GPU: one unattributed series, not one copy per pod.
    shared = [k for k in samples if k[0] == "orb8_dcgm_power_watts" and ("uuid", GPU1.uuid) in k[1]]
    assert len(shared) == 1 and ("pod", "") in shared[0][1]
    for pod in ("infer-x", "infer-y"):
        assert series(samples, "orb8_gpu_allocation_info", pod=pod, uuid=GPU1.uuid) == 1
    assert series(samples, "orb8_gpu_allocation_info", pod="infer-y", uuid=GPU0.uuid) == 0
    assert pod_resources.calls >= 1


def test_dcgm_faults_degrade_and_recover(start_exporter, dcgm, pod_resources):
    dcgm.body = dcgm_text([GPU0])
    pod_resources.allocations = [("ml", "a", "c", "nvidia.com/gpu", [GPU0.uuid])]
    exporter = start_dcgm(start_exporter, dcgm, pod_resources)
    wait_for(lambda: series(exporter.scrape(), "orb8_dcgm_power_watts", pod="a"), what="data")

    faults = [
        ("http", lambda: setattr(dcgm, "status", 500)),
        ("malformed", lambda: (setattr(dcgm, "status", 200), setattr(dcgm, "body", "}{ 1 2 3\n"))),
        ("empty", lambda: setattr(dcgm, "body", "")),
        (
            "timeout",
            lambda: (setattr(dcgm, "body", dcgm_text([GPU0])), setattr(dcgm, "delay", 1.0)),
        ),
    ]
    for reason, inject in faults:
        inject()
        samples = wait_for(
            lambda r=reason: (
                (s := exporter.scrape())
                and series(s, "orb8_dcgm_scrape_errors_total", reason=r) >= 1
                and s
            ),
            what=f"{reason} counted",
        )
        assert series(samples, "orb8_dcgm_up") == 0
        assert series(samples, "orb8_dcgm_stale") == 1
        assert series(samples, "orb8_probe_up", probe="dcgm") == 1  # the scrape is fine
    # Still failing: the breaker opens and old data stops being served.
    samples = wait_for(
        lambda: (
            (s := exporter.scrape())
            and series(s, "orb8_dcgm_breaker_open") == 1
            and not has(s, "orb8_dcgm_power_watts")
            and s
        ),
        what="breaker open, stale data dropped",
    )
    assert series(samples, "orb8_dcgm_last_success_timestamp_seconds") > 0

    dcgm.delay = 0.0
    samples = wait_for(
        lambda: (s := exporter.scrape()) and series(s, "orb8_dcgm_up") == 1 and s,
        timeout=30,
        what="recovery",
    )
    assert series(samples, "orb8_dcgm_stale") == 0
    assert series(samples, "orb8_dcgm_breaker_open") == 0
    assert series(samples, "orb8_dcgm_power_watts", pod="a") == value_of(
        "DCGM_FI_DEV_POWER_USAGE", GPU0
    )
    log = exporter.output()
    assert log.count("(http)") == 1 and "Traceback" not in log, log


def test_dcgm_down_and_pod_resources_missing_at_start(start_exporter, dcgm, tmp_path):
    dcgm.stop()  # nothing listens on its port any more
    exporter = start_exporter(
        "--probes",
        "dcgm",
        "--dcgm-url",
        dcgm.url,
        "--gpu-poll-interval",
        "0.3",
        "--pod-resources-socket",
        str(tmp_path / "missing.sock"),
    )
    samples = wait_for(
        lambda: (
            (s := exporter.scrape())
            and series(s, "orb8_dcgm_scrape_errors_total", reason="connect") >= 1
            and s
        ),
        what="connect error counted",
    )
    assert series(samples, "orb8_dcgm_up") == 0
    assert series(samples, "orb8_dcgm_last_success_timestamp_seconds") == 0
    assert series(samples, "orb8_probe_up", probe="dcgm") == 1


def test_missing_pod_resources_socket_leaves_rows_unattributed(start_exporter, dcgm, tmp_path):
    dcgm.body = dcgm_text([GPU0])
    exporter = start_exporter(
        "--probes",
        "dcgm",
        "--dcgm-url",
        dcgm.url,
        "--gpu-poll-interval",
        "0.3",
        "--pod-resources-socket",
        str(tmp_path / "missing.sock"),
    )
    samples = wait_for(
        lambda: (s := exporter.scrape()) and has(s, "orb8_dcgm_pod_resources_up") and s,
        what="pod-resources tried",
    )
    assert series(samples, "orb8_dcgm_pod_resources_up") == 0
    assert series(samples, "orb8_dcgm_up") == 1
    power = value_of("DCGM_FI_DEV_POWER_USAGE", GPU0)
    assert series(samples, "orb8_dcgm_power_watts", pod="", uuid=GPU0.uuid) == power
    assert exporter.output().count("kubelet pod-resources") == 1


def test_dcgm_rows_copied_to_every_pod_of_a_shared_gpu_are_exported_once(start_exporter, dcgm):
    # dcgm-exporter's own pod mapping on a time-sliced GPU: one row per pod,
    # each with the device's full value.
    shared = Gpu(GPU0.index, GPU0.uuid, (("ml", "x", "serve"), ("ml", "y", "serve")))
    dcgm.body = dcgm_text([shared])
    exporter = start_dcgm(start_exporter, dcgm)
    samples = wait_for(
        lambda: (s := exporter.scrape()) and series(s, "orb8_dcgm_up") == 1 and s,
        what="a good DCGM scrape",
    )
    used = [k for k in samples if k[0] == "orb8_dcgm_framebuffer_used_bytes"]
    assert len(used) == 1 and ("pod", "") in used[0][1]
    assert series(samples, "orb8_dcgm_framebuffer_used_bytes") == (
        value_of("DCGM_FI_DEV_FB_USED", shared) * MIB
    )
    for pod in ("x", "y"):
        assert series(samples, "orb8_gpu_allocation_info", pod=pod, uuid=GPU0.uuid) == 1


def test_pod_resources_outage_keeps_the_last_answer_and_recovers(
    start_exporter, dcgm, pod_resources
):
    dcgm.body = dcgm_text([GPU0])
    pod_resources.allocations = [("ml", "a", "c", "nvidia.com/gpu", [GPU0.uuid])]
    exporter = start_dcgm(start_exporter, dcgm, pod_resources)
    wait_for(lambda: series(exporter.scrape(), "orb8_dcgm_power_watts", pod="a"), what="pod a")
    pod_resources.stop()
    samples = wait_for(
        lambda: (
            (s := exporter.scrape())
            and has(s, "orb8_dcgm_pod_resources_up")
            and series(s, "orb8_dcgm_pod_resources_up") == 0
            and s
        ),
        what="pod-resources down",
    )
    assert series(samples, "orb8_dcgm_power_watts", pod="a") == value_of(
        "DCGM_FI_DEV_POWER_USAGE", GPU0
    )
    assert series(samples, "orb8_dcgm_up") == 1  # DCGM itself is fine
    restarted = PodResourcesServer(pod_resources.socket)
    try:
        restarted.allocations = [("ml", "b", "c", "nvidia.com/gpu", [GPU0.uuid])]
        samples = wait_for(
            lambda: (s := exporter.scrape()) and series(s, "orb8_dcgm_power_watts", pod="b") and s,
            timeout=30,
            what="new owner from the restarted kubelet",
        )
        assert series(samples, "orb8_dcgm_pod_resources_up") == 1
        assert series(samples, "orb8_dcgm_power_watts", pod="a") == 0
    finally:
        restarted.stop()
