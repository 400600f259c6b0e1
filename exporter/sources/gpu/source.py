"""The GPU source: a background NVML poller and the per-container view of it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter.identity import Resolver
from exporter.model import IDENTITY_LABELS, UNRESOLVED, Identity, MetricFamily, gauge
from exporter.sources import SourceAbsent
from exporter.sources.gpu.nvml import NvmlPoller, Snapshot

log = logging.getLogger(__name__)

CONTAINER_LABELS = (*IDENTITY_LABELS, "gpu", "uuid", "gpu_instance")
# NVML return codes that mean "no NVIDIA GPU here", not "broken".
ABSENT_CODES = {
    9,  # NVML_ERROR_DRIVER_NOT_LOADED
    12,  # NVML_ERROR_LIBRARY_NOT_FOUND
}


def _copy(family: MetricFamily) -> MetricFamily:
    # The agent merges families by extending the first one's samples: never
    # hand it the snapshot's own objects.
    return MetricFamily(family.name, family.type, family.help, family.labels, list(family.samples))


class GpuSource:
    name = "gpu"

    def __init__(
        self,
        resolver: Resolver,
        interval: float = 10.0,
        proc_root: Path = Path("/proc"),
        nvml: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolver = resolver
        self.interval = interval
        self.proc_root = proc_root
        self._nvml = nvml
        self.clock = clock
        self.poller: NvmlPoller | None = None
        self.snapshot: Snapshot | None = None
        self.polls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml
            except ImportError:
                raise SourceAbsent("pynvml (nvidia-ml-py) is not installed") from None
            nvml = pynvml
        poller = NvmlPoller(nvml, self.proc_root, self.resolver.tree.root, clock=self.clock)
        try:
            poller.open()
        except nvml.NVMLError as e:
            if getattr(e, "value", None) in ABSENT_CODES:
                raise SourceAbsent(f"no NVIDIA driver: {e}") from None
            poller.close()
            raise RuntimeError(f"NVML initialisation failed: {e}") from None
        if not poller.devices:
            poller.close()
            raise SourceAbsent("NVML found no GPU")
        self.poller = poller
        self._poll_once()  # the first scrape already has data
        self._thread = threading.Thread(target=self._run, name="gpu-poll", daemon=True)
        self._thread.start()

    def _poll_once(self) -> None:
        assert self.poller is not None
        try:
            self.snapshot = self.poller.poll()
            self.polls += 1
        except Exception:
            # A bug or an unexpected binding error: keep the last snapshot;
            # orb8_gpu_last_poll_timestamp_seconds shows it aging.
            log.exception("NVML poll failed")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll_once()

    def summary(self) -> str:
        if self.poller is None:
            return "NVML not opened"
        models = ", ".join(f"{d.index}: {d.model}" for d in self.poller.devices)
        return f"NVML, driver {self.poller.driver}, every {self.interval:g}s; GPUs {models}"

    def collect(self) -> list[MetricFamily]:
        snapshot, poller = self.snapshot, self.poller
        if poller is None:
            return []
        families = [_copy(f) for f in snapshot.devices] if snapshot else []
        families.extend(self._per_container(snapshot))
        families.extend(poller.health_families())
        last = gauge(
            "orb8_gpu_last_poll_timestamp_seconds",
            "Unix time of the last completed NVML poll; scrapes serve that poll.",
        )
        duration = gauge("orb8_gpu_poll_duration_seconds", "Time the last NVML poll took.")
        if snapshot is not None:
            last.add((), snapshot.taken_at)
            duration.add((), snapshot.duration)
        return [*families, last, duration]

    def _per_container(self, snapshot: Snapshot | None) -> list[MetricFamily]:
        memory = gauge(
            "orb8_gpu_memory_used_bytes",
            "GPU memory used by the container's processes on this GPU (NVML per process).",
            CONTAINER_LABELS,
        )
        utilization = gauge(
            "orb8_gpu_utilization",
            "Percent of the GPU's SM time the container's processes used (NVML process "
            "samples since the previous poll); shares of a shared GPU add up to at most 100.",
            CONTAINER_LABELS,
        )
        if snapshot is None or not snapshot.processes:
            return [memory, utilization]
        self.resolver.refresh()
        mem_sum: dict[tuple[str, ...], int] = {}
        sm_sum: dict[tuple[str, ...], float] = {}
        key: tuple[str, ...]
        for use in snapshot.processes:
            identity: Identity = UNRESOLVED
            if use.cgroup is not None:
                identity = self.resolver.resolve(use.cgroup[0], snapshot.monotonic).identity
            key = (*identity, use.gpu, use.uuid, use.gpu_instance)
            if use.memory is not None:
                mem_sum[key] = mem_sum.get(key, 0) + use.memory
            if use.sm is not None:
                sm_sum[key] = sm_sum.get(key, 0.0) + use.sm
        for key, value in sorted(mem_sum.items()):
            memory.add(key, value)
        for key, sm in sorted(sm_sum.items()):
            utilization.add(key, sm)
        return [memory, utilization]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.poller is not None:
            self.poller.close()
            self.poller = None
