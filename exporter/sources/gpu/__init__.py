"""GPU source: NVML device telemetry and per-container GPU use.

Hook: NVML through pynvml (nvidia-ml-py) -> libnvidia-ml.so.1, polled in a
background thread every gpu_poll_interval seconds (a full read of an H200
took ~54 ms); a scrape serves the last poll and never calls NVML.

Metrics: device gauges/counters labelled gpu (index), uuid, model
(orb8_gpu_device_utilization, orb8_gpu_device_memory_*_bytes, power,
temperature, energy, clocks, clocks-event reasons, ECC, remapped rows, PCIe,
XID events), orb8_gpu_info{gpu,uuid,model,driver,sharing}, and per container
orb8_gpu_memory_used_bytes / orb8_gpu_utilization with namespace, pod,
container, cgroup, gpu, uuid, gpu_instance: NVML's per-process memory and SM
samples, pid -> /proc/<pid>/cgroup -> cgroup id -> identity, summed per
container. Health: orb8_gpu_nvml_errors_total{call,error},
orb8_gpu_last_poll_timestamp_seconds, orb8_gpu_poll_duration_seconds.

Overhead: one NVML read per interval, off the scrape path.
Caveats: needs the host PID namespace (NVML reports host pids). Per-process
SM samples are NVML's own and approximate (see docs/gpu.md). MIG instances
report memory per process with its GPU instance id; process SM sampling is
not supported under MIG, which is counted as an NVML error. No NVML library,
no driver or no GPU: the source is absent (quiet, not down).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.config import Spec, positive_float
from exporter.sources import Context, Probe

if TYPE_CHECKING:
    from exporter.sources.gpu.source import GpuSource

SETTINGS: tuple[Spec, ...] = (
    Spec(
        "gpu_poll_interval",
        positive_float,
        10.0,
        "seconds between background NVML polls and dcgm-exporter scrapes (probes gpu, dcgm)",
        "SECONDS",
    ),
)


def create(context: Context) -> GpuSource:
    from exporter.sources.gpu.source import GpuSource

    return GpuSource(context.resolver, interval=context.settings.gpu_poll_interval)


# On by default, so that one DaemonSet serves GPU and CPU nodes alike: where
# NVML does not load (no library, no driver) or finds no GPU the source is
# absent, which costs one failed dlopen at start, exports nothing and never
# pages; where it loads, polling runs off the scrape path.
PROBE = Probe("gpu", default=True, settings=SETTINGS, factory=create)
