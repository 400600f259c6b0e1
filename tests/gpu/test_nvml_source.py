"""The GPU source end to end: a real `orb8 run --probes gpu` whose pynvml
loads the fake libnvidia-ml.so.1 replaying the real H200 capture, with the
capture's two load pids rewritten to live processes in two test pods' cgroups,
scraped over HTTP."""

from __future__ import annotations

import os
import subprocess
import urllib.request

from tests.gpu.conftest import start_in_cgroup
from tests.gpu.nvml_fixtures import UUID, nvml_env, promtool_check, rewrite_capture
from tests.helpers import ORB8, ROOT, free_port, series, wait_for

A, B = 437, 438  # the capture's pids


def start_gpu(start_exporter, gpu_pods, lib, capture, state, *extra):
    return start_exporter(
        "--probes",
        "gpu",
        "--kubeconfig",
        str(gpu_pods.kubeconfig),
        "--node-name",
        "node-a",
        "--gpu-poll-interval",
        "0.5",
        *extra,
        env=nvml_env(lib, capture, state),
    )


def resolved(exporter, gpu_pods, metric="orb8_gpu_memory_used_bytes"):
    """A scrape in which both pods' series carry their pod labels."""

    def ready():
        samples = exporter.scrape()
        if all(series(samples, metric, **gpu_pods.pods[pid]) for pid in (A, B)):
            return samples
        return None

    return wait_for(ready, timeout=30, what="GPU series with pod labels")


def test_shared_gpu_is_split_per_pod_busy0(start_exporter, gpu_pods, fake_nvml, tmp_path):
    capture = rewrite_capture(tmp_path / "capture.json", gpu_pods.pids)
    exporter = start_gpu(start_exporter, gpu_pods, fake_nvml, capture, "busy.0")
    samples = resolved(exporter, gpu_pods)
    gpu = {"gpu": "0", "uuid": UUID, "gpu_instance": "", "cgroup": ""}
    a, b = gpu_pods.pods[A], gpu_pods.pods[B]
    assert series(samples, "orb8_gpu_memory_used_bytes", **a, **gpu) == 4271898624
    assert series(samples, "orb8_gpu_memory_used_bytes", **b, **gpu) == 7493124096
    assert series(samples, "orb8_gpu_utilization", **a, **gpu) == 49
    assert series(samples, "orb8_gpu_utilization", **b, **gpu) == 49
    # Only these two containers use the GPU: nothing unattributed.
    assert series(samples, "orb8_gpu_memory_used_bytes") == 4271898624 + 7493124096
    # Device totals exactly as captured.
    dev = {"gpu": "0", "uuid": UUID, "model": "NVIDIA H200"}
    assert series(samples, "orb8_gpu_device_memory_used_bytes", **dev) == 12425101312
    assert series(samples, "orb8_gpu_device_memory_total_bytes", **dev) == 150754820096
    assert series(samples, "orb8_gpu_device_utilization", **dev) == 100
    assert series(samples, "orb8_gpu_memory_bandwidth_utilization", **dev) == 23
    assert series(samples, "orb8_gpu_power_watts", **dev) == 686.875
    assert series(samples, "orb8_gpu_power_limit_watts", **dev) == 700
    assert series(samples, "orb8_gpu_energy_joules_total", **dev) == 8982.754
    assert series(samples, "orb8_gpu_temperature_celsius", **dev) == 55
    assert series(samples, "orb8_gpu_sm_clock_hertz", **dev) == 1635e6
    assert series(samples, "orb8_gpu_memory_clock_hertz", **dev) == 3201e6
    assert series(samples, "orb8_gpu_clocks_event_active", reason="sw_power_cap", **dev) == 1
    assert series(samples, "orb8_gpu_clocks_event_active", **dev) == 1
    assert series(samples, "orb8_gpu_pcie_throughput_bytes_per_second", direction="tx") == (
        68676 * 1024
    )
    assert series(samples, "orb8_gpu_ecc_errors_total", type="uncorrected", **dev) == 0
    assert series(samples, "orb8_gpu_remapped_rows", cause="uncorrectable", **dev) == 0
    assert (
        series(
            samples,
            "orb8_gpu_info",
            driver="580.159.04",
            sharing="shared",
            uuid=UUID,
            model="NVIDIA H200",
        )
        == 1
    )
    assert series(samples, "orb8_gpu_last_poll_timestamp_seconds") > 1.7e9
    assert series(samples, "orb8_probe_up", probe="gpu") == 1
    # The capture's own errors are for calls orb8 does not make.
    assert series(samples, "orb8_gpu_nvml_errors_total") == 0
    promtool_check(exporter.url)


def test_busy1_sm_shares_and_idle_has_no_pod_series(start_exporter, gpu_pods, fake_nvml, tmp_path):
    capture = rewrite_capture(tmp_path / "capture.json", gpu_pods.pids)
    busy = start_gpu(start_exporter, gpu_pods, fake_nvml, capture, "busy.1")
    samples = resolved(busy, gpu_pods, "orb8_gpu_utilization")
    assert series(samples, "orb8_gpu_utilization", **gpu_pods.pods[A]) == 48
    assert series(samples, "orb8_gpu_utilization", **gpu_pods.pods[B]) == 51
    busy.stop()

    idle = start_gpu(start_exporter, gpu_pods, fake_nvml, capture, "idle")
    samples = idle.scrape()
    assert not [
        k for k in samples if k[0] in ("orb8_gpu_memory_used_bytes", "orb8_gpu_utilization")
    ]
    assert series(samples, "orb8_gpu_device_memory_used_bytes", uuid=UUID) == 644939776
    assert series(samples, "orb8_gpu_info", sharing="exclusive") == 1
    assert series(samples, "orb8_gpu_nvml_errors_total") == 0  # Not Found = no samples


def test_failing_calls_are_skipped_counted_and_logged_once(
    start_exporter, gpu_pods, fake_nvml, tmp_path
):
    def edit(device):
        device["temperature_gpu"] = {"nvml_error": "Not Supported", "code": 3}
        device["power_usage_mw"] = {"nvml_error": "GPU is lost", "code": 15}
        device["xid_events"] = [79, 79, 48]

    capture = rewrite_capture(tmp_path / "capture.json", gpu_pods.pids, edit)
    exporter = start_gpu(start_exporter, gpu_pods, fake_nvml, capture, "busy.0")
    samples = wait_for(
        lambda: (
            (s := exporter.scrape())
            and series(s, "orb8_gpu_nvml_errors_total", call="nvmlDeviceGetTemperature") >= 3
            and s
        ),
        what="three polls",
    )
    assert (
        series(
            samples,
            "orb8_gpu_nvml_errors_total",
            call="nvmlDeviceGetTemperature",
            error="Not Supported",
        )
        >= 3
    )
    assert (
        series(
            samples,
            "orb8_gpu_nvml_errors_total",
            call="nvmlDeviceGetPowerUsage",
            error="GPU is lost",
        )
        >= 3
    )
    assert not [
        k for k in samples if k[0] in ("orb8_gpu_temperature_celsius", "orb8_gpu_power_watts")
    ]
    # Everything else is still there, pods included.
    assert series(samples, "orb8_gpu_energy_joules_total") == 8982.754
    assert series(samples, "orb8_gpu_memory_used_bytes") == 4271898624 + 7493124096
    assert series(samples, "orb8_gpu_xid_errors_total", xid="79", uuid=UUID) == 2
    assert series(samples, "orb8_gpu_xid_errors_total", xid="48", uuid=UUID) == 1
    log = exporter.output()
    assert log.count("NVML nvmlDeviceGetTemperature failed") == 1, log


def test_process_outside_pods_keeps_its_cgroup_path(
    start_exporter, cgroups, cgroup2_root, fake_nvml, tmp_path
):
    plain = cgroups.make()
    proc = start_in_cgroup(plain)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer exists, as when a process exits mid-poll
    try:
        capture = rewrite_capture(tmp_path / "capture.json", {437: proc.pid, 438: gone.pid})
        exporter = start_exporter("--probes", "gpu", env=nvml_env(fake_nvml, capture, "busy.0"))
        samples = exporter.scrape()
        path = "/" + str(plain.relative_to(cgroup2_root))
        labels = {"cgroup": path, "namespace": "", "pod": ""}
        assert series(samples, "orb8_gpu_memory_used_bytes", **labels) == 4271898624
        # A pid without a cgroup is folded into <unresolved>, not lost.
        assert series(samples, "orb8_gpu_memory_used_bytes", cgroup="<unresolved>") == 7493124096
    finally:
        proc.kill()
        proc.wait()


def test_node_without_nvml_is_quiet(start_exporter, tmp_path):
    empty = tmp_path / "no-nvml"
    empty.mkdir()
    exporter = start_exporter("--probes", "gpu", env={"LD_LIBRARY_PATH": str(empty)})
    samples = exporter.scrape()
    assert not [k for k in samples if k[0].startswith("orb8_gpu_")]
    assert not [k for k in samples if k[0] == "orb8_probe_up"]
    page = urllib.request.urlopen(exporter.url.replace("/metrics", "/"), timeout=10).read()
    assert b"<td>gpu</td><td>absent</td>" in page
    log = exporter.output()
    assert "ERROR" not in log and "Traceback" not in log, log


def test_default_probes_on_a_node_without_nvml_keep_gpu_absent_and_the_rest_up(
    start_exporter, tmp_path
):
    """gpu is a default probe so one DaemonSet serves every node: on a node
    without NVML it is listed absent, exports nothing, and the BPF probes
    started beside it are up."""
    empty = tmp_path / "no-nvml"
    empty.mkdir()
    exporter = start_exporter(env={"LD_LIBRARY_PATH": str(empty)})
    samples = exporter.scrape()
    assert not [k for k in samples if k[0].startswith("orb8_gpu_")]
    probes = {dict(k[1])["probe"]: v for k, v in samples.items() if k[0] == "orb8_probe_up"}
    assert probes == {"syscalls": 1.0, "network": 1.0}
    page = urllib.request.urlopen(exporter.url.replace("/metrics", "/"), timeout=10).read()
    assert b"<td>gpu</td><td>absent</td>" in page
    log = exporter.output()
    assert "ERROR" not in log and "Traceback" not in log, log


def test_mig_gpu_labels_instances_and_never_double_counts(
    start_exporter, gpu_pods, fake_nvml, tmp_path
):
    def edit(device):
        device["mig_mode"] = [1, 1]
        for proc, instance in zip(device["compute_processes"] or [], (1, 2), strict=False):
            proc["gpuInstanceId"], proc["computeInstanceId"] = instance, 0
        # The same process seen through a graphics context too: counted once.
        device["graphics_processes"] = list(device["compute_processes"] or [])
        # NVML has no per-process SM samples under MIG.
        device["process_utilization"] = {"nvml_error": "Not Supported", "code": 3}

    capture = rewrite_capture(tmp_path / "capture.json", gpu_pods.pids, edit)
    exporter = start_gpu(start_exporter, gpu_pods, fake_nvml, capture, "busy.0")
    samples = resolved(exporter, gpu_pods)
    a, b = gpu_pods.pods[A], gpu_pods.pods[B]
    # busy.0 lists pid 438 first: instance 1 is B's, instance 2 is A's.
    assert series(samples, "orb8_gpu_memory_used_bytes", gpu_instance="2", **a) == 4271898624
    assert series(samples, "orb8_gpu_memory_used_bytes", gpu_instance="1", **b) == 7493124096
    assert series(samples, "orb8_gpu_memory_used_bytes") == 4271898624 + 7493124096
    assert not [k for k in samples if k[0] == "orb8_gpu_utilization"]
    assert series(samples, "orb8_gpu_info", sharing="mig", uuid=UUID) == 1
    assert (
        series(
            samples,
            "orb8_gpu_nvml_errors_total",
            call="nvmlDeviceGetProcessUtilization",
            error="Not Supported",
        )
        >= 1
    )


def test_orb8_check_reports_gpu_present_or_absent(fake_nvml, tmp_path):
    def check(env):
        return subprocess.run(
            [*ORB8, "check", "--probes", "gpu"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, **env},
            timeout=120,
        )

    present = check(nvml_env(fake_nvml, rewrite_capture(tmp_path / "c.json", {}), "idle"))
    assert present.returncode == 0, present.stdout + present.stderr
    assert "OK    gpu: NVML, driver 580.159.04" in present.stdout
    assert "0: NVIDIA H200" in present.stdout
    absent = check({"LD_LIBRARY_PATH": str(tmp_path)})
    assert absent.returncode == 0, absent.stdout + absent.stderr
    assert absent.stdout.startswith("ABSENT gpu: no NVIDIA driver"), absent.stdout


def test_broken_nvml_is_a_clear_start_failure_not_absence(fake_nvml, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"idle": [1, 2')  # truncated capture: the fake's nvmlInit fails
    result = subprocess.run(
        [*ORB8, "run", "--listen", f"127.0.0.1:{free_port()}", "--probes", "gpu"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **nvml_env(fake_nvml, bad, "idle")},
        timeout=120,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "probe gpu down: start failed: NVML initialisation failed: Unknown Error" in output
    assert "no probe could start" in output
