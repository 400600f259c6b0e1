"""Pure parts of the GPU and DCGM sources, table-driven."""

from __future__ import annotations

import pytest

from exporter.config import ConfigError
from exporter.registry import load_settings
from exporter.sources.dcgm.parse import DcgmParseError, parse_dcgm
from exporter.sources.dcgm.podresources import ListPodResourcesResponse, Owner, gpu_owners
from exporter.sources.dcgm.source import DcgmSource, ScrapeError
from exporter.sources.gpu.procfs import parse_cgroup_v2_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0::/kubepods.slice/x.scope\n", "/kubepods.slice/x.scope"),
        ("12:memory:/a\n0::/b\n", "/b"),  # hybrid: v1 lines first
        ("0::/\n", "/"),
        ("3:cpu:/only-v1\n", None),
        ("", None),
        ("garbage", None),
        ("0:name=systemd:/not-v2\n", None),
    ],
)
def test_cgroup_v2_path_from_proc(text, expected):
    assert parse_cgroup_v2_path(text) == expected


GOOD = (
    "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
    'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",modelName="H200",pod="p",namespace="n",'
    'container="c"} 42\n'
    "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n"
    'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-a",GPU_I_ID="3"} 5000\n'
    'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} NaN\n'
    'DCGM_FI_DEV_GPU_TEMP{gpu="0"} 40\n'
    "go_goroutines 7\n"
)


def test_parse_dcgm_rows():
    rows = parse_dcgm(GOOD)
    assert [(r.field, r.uuid, r.pod, r.gpu_instance, r.value) for r in rows] == [
        ("DCGM_FI_DEV_GPU_UTIL", "GPU-a", "p", "", 42),
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "GPU-a", "", "3", 5000),
    ]


@pytest.mark.parametrize(
    "text",
    ["", "\n", "go_goroutines 7\n", "}{ 1 2 3\n", 'DCGM_FI_DEV_GPU_UTIL{gpu="0"} 1\n', "a b c d"],
)
def test_parse_dcgm_rejects_what_is_not_a_dcgm_page(text):
    with pytest.raises(DcgmParseError):
        parse_dcgm(text)


def test_gpu_owners_keep_gpus_only_and_fold_replicas():
    response = ListPodResourcesResponse()
    pod = response.pod_resources.add(name="p", namespace="n")
    c = pod.containers.add(name="c")
    c.devices.add(resource_name="nvidia.com/gpu", device_ids=["GPU-a::0", "GPU-a::1"])
    c.devices.add(resource_name="nvidia.com/mig-1g.10gb", device_ids=["MIG-x"])
    c.devices.add(resource_name="example.com/nic", device_ids=["GPU-b"])
    wire = ListPodResourcesResponse.FromString(response.SerializeToString())
    assert gpu_owners(wire) == {"GPU-a": [Owner("n", "p", "c")], "MIG-x": [Owner("n", "p", "c")]}


def test_dcgm_backs_off_after_the_breaker_opens_and_drops_stale_data():
    now = [1000.0]
    answers: list[object] = [ScrapeError("connect", "refused")] * 6

    def fetcher(url: str, timeout: float) -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    source = DcgmSource("http://x/metrics", interval=10, clock=lambda: now[0], fetcher=fetcher)
    delays = []
    for _ in range(6):
        source.scrape_once()
        delays.append(source.next_delay())
    assert delays == [10, 10, 20, 40, 80, 160]
    assert source.errors["connect"] == 6

    answers.append('DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a"} 7\n')
    source.scrape_once()
    assert source.next_delay() == 10
    names = {f.name for f in source.collect()}
    assert "orb8_dcgm_gpu_utilization" in names
    now[0] += 31  # more than 3 intervals without a good scrape
    assert "orb8_dcgm_gpu_utilization" not in {f.name for f in source.collect()}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORB8_DCGM_URL": "localhost:9400"}, "dcgm_url"),
        ({"ORB8_DCGM_URL": "ftp://x/metrics"}, "not an http(s) URL"),
        ({"ORB8_GPU_POLL_INTERVAL": "0"}, "gpu_poll_interval"),
        ({"ORB8_PROBES": "gpu,tpu"}, "unknown probe(s) tpu"),
    ],
)
def test_gpu_settings_reject_bad_values(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings({}, env)


def test_gpu_settings_defaults():
    settings = load_settings({}, {})
    # gpu is on everywhere (absent where NVML does not load); dcgm needs an exporter.
    assert settings.probes == ("syscalls", "network", "gpu")
    assert settings.gpu_poll_interval == 10.0
    assert settings.dcgm_url == "http://localhost:9400/metrics"
    assert str(settings.pod_resources_socket) == "/var/lib/kubelet/pod-resources/kubelet.sock"
