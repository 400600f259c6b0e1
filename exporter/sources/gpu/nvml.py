"""One NVML read of every GPU: device metrics and per-process use.

Runs in the GPU source's background thread (a full read took ~54 ms on an
H200), never inside a scrape. Every NVML call may fail on its own (`Not
Supported`, `Not Found`, `GPU is lost`): that value is skipped, the rest is
read, and the failure is counted per (call, error) and logged once.

The `nvml` argument is the pynvml module or anything with its API: tests use
the real pynvml over a fake libnvidia-ml.so.1, so the binding's structs and
return codes are exercised as on a GPU node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.model import MetricFamily, counter, gauge
from exporter.sources.gpu.procfs import cgroup_of_pid

log = logging.getLogger(__name__)

DEVICE_LABELS = ("gpu", "uuid", "model")
NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId outside MIG
NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2
NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 0, 1
NVML_VOLATILE_ECC = 0
NVML_PCIE_UTIL_TX_BYTES, NVML_PCIE_UTIL_RX_BYTES = 0, 1
NVML_COMPUTEMODE_EXCLUSIVE_PROCESS = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_TIMEOUT = 10
# Distinct XID codes kept per GPU; more are summed under xid="other".
XID_LABEL_LIMIT = 64

# nvmlClocksEventReasons bits (nvml.h), as the reason label.
CLOCKS_EVENT_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


@dataclass(frozen=True)
class ProcessUse:
    """One process's use of one GPU, with the cgroup it ran in when read."""

    gpu: str
    uuid: str
    gpu_instance: str  # MIG GPU instance id, "" outside MIG
    pid: int
    memory: int | None  # bytes; None when NVML cannot say (e.g. no permission)
    sm: float | None  # percent of the GPU's SMs; None when process sampling failed
    cgroup: tuple[int, str] | None  # (cgroup id, path); None if the pid is gone


@dataclass
class Snapshot:
    taken_at: float  # unix time the read finished
    monotonic: float  # when pids were mapped to cgroups (for the resolver)
    duration: float
    devices: list[MetricFamily] = field(default_factory=list)
    processes: list[ProcessUse] = field(default_factory=list)


@dataclass
class _Device:
    index: int
    handle: Any
    uuid: str
    model: str
    last_sample: int = 0  # newest process-utilisation timestamp seen (us)

    @property
    def labels(self) -> tuple[str, str, str]:
        return (str(self.index), self.uuid, self.model)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlPoller:
    def __init__(
        self,
        nvml: Any,
        proc_root: Path,
        cgroup_root: Path,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nvml = nvml
        self.proc_root = proc_root
        self.cgroup_root = cgroup_root
        self.clock = clock
        self.monotonic = monotonic
        self.driver = ""
        self.devices: list[_Device] = []
        self.errors: Counter[tuple[str, str]] = Counter()
        self.xids: Counter[tuple[int, str]] = Counter()
        self._event_set: Any = None
        self._lock = threading.Lock()  # errors/xids are read by scrapes

    # -- setup ---------------------------------------------------------------

    def open(self) -> None:
        """nvmlInit and enumerate GPUs; NVMLError escapes (the caller decides)."""
        self.nvml.nvmlInit()
        self.driver = _text(self._call("nvmlSystemGetDriverVersion") or "")
        count = self.nvml.nvmlDeviceGetCount()
        for index in range(count):
            handle = self._call("nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                continue
            uuid = _text(self._call("nvmlDeviceGetUUID", handle) or "")
            model = _text(self._call("nvmlDeviceGetName", handle) or "")
            self.devices.append(_Device(index, handle, uuid, model))
        self._open_events()

    def _open_events(self) -> None:
        # XID errors come only as events; without them the counter stays absent.
        event_set = self._call("nvmlEventSetCreate")
        if event_set is None:
            return
        registered = False
        for device in self.devices:
            supported = self._call("nvmlDeviceGetSupportedEventTypes", device.handle)
            xid = getattr(self.nvml, "nvmlEventTypeXidCriticalError", 0x8)
            if supported is not None and supported & xid:
                ok = self._call("nvmlDeviceRegisterEvents", device.handle, xid, event_set, ok=True)
                registered = registered or bool(ok)
        if registered:
            self._event_set = event_set
        else:
            self._call("nvmlEventSetFree", event_set)

    def close(self) -> None:
        if self._event_set is not None:
            self._call("nvmlEventSetFree", self._event_set)
            self._event_set = None
        try:
            self.nvml.nvmlShutdown()
        except Exception as e:
            log.debug("nvmlShutdown: %s", e)

    # -- error accounting ------------------------------------------------------

    def _call(self, name: str, *args: Any, ok: Any = None, quiet: tuple[int, ...] = ()) -> Any:
        """nvml.<name>(*args), or None after counting the error.

        `ok` is returned for calls that return nothing on success; errors
        whose code is in `quiet` are expected answers, not failures.
        """
        try:
            result = getattr(self.nvml, name)(*args)
        except self.nvml.NVMLError as e:
            if getattr(e, "value", None) in quiet:
                raise
            self._count_error(name, str(e))
            return None
        return ok if result is None and ok is not None else result

    def _count_error(self, call: str, error: str) -> None:
        with self._lock:
            first = (call, error) not in self.errors
            self.errors[(call, error)] += 1
        if first:
            log.warning("NVML %s failed: %s (skipped; counted, logged once)", call, error)

    # -- one read ----------------------------------------------------------------

    def poll(self) -> Snapshot:
        started = time.perf_counter()
        families = _device_families()
        processes: list[ProcessUse] = []
        for device in self.devices:
            sharing = self._read_device(device, families)
            uses = self._read_processes(device)
            processes.extend(uses)
            cgroups = {use.cgroup[0] for use in uses if use.cgroup is not None}
            if sharing is None:
                sharing = "shared" if len(cgroups) > 1 else "exclusive"
            families["orb8_gpu_info"].add(
                (*device.labels[:2], device.model, self.driver, sharing), 1
            )
        self._drain_events()
        return Snapshot(
            taken_at=self.clock(),
            monotonic=self.monotonic(),
            duration=time.perf_counter() - started,
            devices=list(families.values()),
            processes=processes,
        )

    def _read_device(self, device: _Device, f: dict[str, MetricFamily]) -> str | None:
        """Add this GPU's samples; returns "mig"/"exclusive" when the mode decides sharing."""
        labels, handle = device.labels, device.handle
        util = self._call("nvmlDeviceGetUtilizationRates", handle)
        if util is not None:
            f["orb8_gpu_device_utilization"].add(labels, util.gpu)
            f["orb8_gpu_memory_bandwidth_utilization"].add(labels, util.memory)
        memory = self._call("nvmlDeviceGetMemoryInfo", handle)
        if memory is not None:
            f["orb8_gpu_device_memory_used_bytes"].add(labels, memory.used)
            f["orb8_gpu_device_memory_total_bytes"].add(labels, memory.total)
        scalars = (
            ("orb8_gpu_power_watts", "nvmlDeviceGetPowerUsage", (), 1e-3),
            ("orb8_gpu_power_limit_watts", "nvmlDeviceGetEnforcedPowerLimit", (), 1e-3),
            ("orb8_gpu_energy_joules_total", "nvmlDeviceGetTotalEnergyConsumption", (), 1e-3),
            (
                "orb8_gpu_temperature_celsius",
                "nvmlDeviceGetTemperature",
                (NVML_TEMPERATURE_GPU,),
                1,
            ),
            ("orb8_gpu_sm_clock_hertz", "nvmlDeviceGetClockInfo", (NVML_CLOCK_SM,), 1e6),
            ("orb8_gpu_memory_clock_hertz", "nvmlDeviceGetClockInfo", (NVML_CLOCK_MEM,), 1e6),
        )
        for metric, call, args, scale in scalars:
            value = self._call(call, handle, *args)
            if value is not None:
                f[metric].add(labels, value * scale)
        reasons = self._call("nvmlDeviceGetCurrentClocksEventReasons", handle)
        if reasons is not None:
            for bit, reason in CLOCKS_EVENT_REASONS.items():
                f["orb8_gpu_clocks_event_active"].add((*labels, reason), 1 if reasons & bit else 0)
        for kind, error_type in (
            ("corrected", NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ("uncorrected", NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        ):
            count = self._call("nvmlDeviceGetTotalEccErrors", handle, error_type, NVML_VOLATILE_ECC)
            if count is not None:
                f["orb8_gpu_ecc_errors_total"].add((*labels, kind), count)
        rows = self._call("nvmlDeviceGetRemappedRows", handle)
        if rows is not None:
            correctable, uncorrectable, pending, failed = rows
            f["orb8_gpu_remapped_rows"].add((*labels, "correctable"), correctable)
            f["orb8_gpu_remapped_rows"].add((*labels, "uncorrectable"), uncorrectable)
            f["orb8_gpu_row_remap_pending"].add(labels, 1 if pending else 0)
            f["orb8_gpu_row_remap_failed"].add(labels, 1 if failed else 0)
        for direction, pcie_counter in (
            ("tx", NVML_PCIE_UTIL_TX_BYTES),
            ("rx", NVML_PCIE_UTIL_RX_BYTES),
        ):
            kbps = self._call("nvmlDeviceGetPcieThroughput", handle, pcie_counter)
            if kbps is not None:  # NVML counts KiB/s
                f["orb8_gpu_pcie_throughput_bytes_per_second"].add(
                    (*labels, direction), kbps * 1024
                )
        mig = self._call("nvmlDeviceGetMigMode", handle)
        if mig is not None and mig[0]:
            return "mig"
        mode = self._call("nvmlDeviceGetComputeMode", handle)
        return "exclusive" if mode == NVML_COMPUTEMODE_EXCLUSIVE_PROCESS else None

    def _read_processes(self, device: _Device) -> list[ProcessUse]:
        compute = self._call("nvmlDeviceGetComputeRunningProcesses", device.handle)
        graphics = self._call("nvmlDeviceGetGraphicsRunningProcesses", device.handle)
        # A process with both a compute and a graphics context is listed in
        # both with the same memory: count it once.
        procs: dict[int, Any] = {}
        for proc in [*(graphics or []), *(compute or [])]:
            procs[int(proc.pid)] = proc
        if not procs:
            return []
        sm = self._process_sm(device)
        uses = []
        for pid, proc in procs.items():
            memory = proc.usedGpuMemory
            instance = getattr(proc, "gpuInstanceId", NO_INSTANCE)
            uses.append(
                ProcessUse(
                    gpu=str(device.index),
                    uuid=device.uuid,
                    gpu_instance="" if instance in (None, NO_INSTANCE) else str(instance),
                    pid=pid,
                    memory=None if memory in (None, NOT_AVAILABLE) else int(memory),
                    sm=None if sm is None else sm.get(pid, 0.0),
                    cgroup=cgroup_of_pid(pid, self.proc_root, self.cgroup_root),
                )
            )
        return uses

    def _process_sm(self, device: _Device) -> dict[int, float] | None:
        """Mean SM % per pid over the samples since the last poll; None if unreadable."""
        try:
            samples = self._call(
                "nvmlDeviceGetProcessUtilization",
                device.handle,
                device.last_sample,
                quiet=(NVML_ERROR_NOT_FOUND,),
            )
        except self.nvml.NVMLError:
            return {}  # Not Found: no samples since the last read, i.e. idle
        if samples is None:
            return None
        per_pid: dict[int, list[int]] = {}
        for sample in samples:
            per_pid.setdefault(int(sample.pid), []).append(int(sample.smUtil))
            device.last_sample = max(device.last_sample, int(sample.timeStamp))
        return {pid: sum(values) / len(values) for pid, values in per_pid.items()}

    def _drain_events(self) -> None:
        if self._event_set is None:
            return
        for _ in range(1000):  # bounded: a storm must not stall the poll
            try:
                event = self._call(
                    "nvmlEventSetWait", self._event_set, 0, quiet=(NVML_ERROR_TIMEOUT,)
                )
            except self.nvml.NVMLError:
                return  # timeout: nothing pending
            if event is None:
                return
            index = self._call("nvmlDeviceGetIndex", event.device)
            device = next((d for d in self.devices if d.index == index), None)
            if device is None:
                continue  # a GPU orb8 does not track (index unreadable)
            xid = str(int(event.eventData))
            with self._lock:
                known = {x for (i, x) in self.xids if i == device.index}
                if xid not in known and len(known) >= XID_LABEL_LIMIT:
                    xid = "other"
                self.xids[(device.index, xid)] += 1
            log.warning("GPU %s (%s): XID %s", device.index, device.uuid, xid)

    def health_families(self) -> list[MetricFamily]:
        errors = counter(
            "orb8_gpu_nvml_errors_total",
            "NVML calls that failed, by call and NVML error; the value is skipped.",
            ("call", "error"),
        )
        xids = counter(
            "orb8_gpu_xid_errors_total",
            "XID errors the driver reported for the GPU (NVML events), by XID code.",
            (*DEVICE_LABELS, "xid"),
        )
        models = {d.index: d for d in self.devices}
        with self._lock:
            for (call, error), count in sorted(self.errors.items()):
                errors.add((call, error), count)
            for (index, xid), count in sorted(self.xids.items()):
                device = models[index]
                xids.add((*device.labels, xid), count)
        return [errors, xids]


def _device_families() -> dict[str, MetricFamily]:
    D = DEVICE_LABELS
    families = [
        gauge(
            "orb8_gpu_info",
            "One per GPU; sharing is mig, exclusive (compute mode or at most one cgroup "
            "using it at the last poll) or shared (processes of several cgroups).",
            ("gpu", "uuid", "model", "driver", "sharing"),
        ),
        gauge("orb8_gpu_device_utilization", "Percent of time a kernel ran on the GPU.", D),
        gauge(
            "orb8_gpu_memory_bandwidth_utilization",
            "Percent of time device memory was read or written.",
            D,
        ),
        gauge("orb8_gpu_device_memory_used_bytes", "Device memory in use, all processes.", D),
        gauge("orb8_gpu_device_memory_total_bytes", "Device memory size.", D),
        gauge("orb8_gpu_power_watts", "Power draw.", D),
        gauge("orb8_gpu_power_limit_watts", "Enforced power limit.", D),
        counter("orb8_gpu_energy_joules_total", "Energy used since the driver loaded.", D),
        gauge("orb8_gpu_temperature_celsius", "GPU core temperature.", D),
        gauge("orb8_gpu_sm_clock_hertz", "Current SM clock.", D),
        gauge("orb8_gpu_memory_clock_hertz", "Current memory clock.", D),
        gauge(
            "orb8_gpu_clocks_event_active",
            "1 while the reason holds clocks down (throttling, idle, caps), else 0.",
            (*D, "reason"),
        ),
        counter(
            "orb8_gpu_ecc_errors_total",
            "ECC errors since the driver loaded (volatile), corrected or uncorrected.",
            (*D, "type"),
        ),
        gauge(
            "orb8_gpu_remapped_rows",
            "Memory rows remapped, by the kind of error that caused it.",
            (*D, "cause"),
        ),
        gauge("orb8_gpu_row_remap_pending", "1 if a row remap waits for a GPU reset.", D),
        gauge("orb8_gpu_row_remap_failed", "1 if a row remap failed (replace the GPU).", D),
        gauge(
            "orb8_gpu_pcie_throughput_bytes_per_second",
            "PCIe traffic over NVML's last 20 ms sample, by direction.",
            (*D, "direction"),
        ),
    ]
    return {family.name: family for family in families}
