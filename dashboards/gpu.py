"""GPU: which pods use which GPU, how much, and is the hardware healthy?

Per-pod utilisation and memory come from the gpu probe (NVML per-process
accounting mapped to pods through /proc/<pid>/cgroup); device health (power,
temperature, clocks and their event reasons, XID, ECC, row remapping) from
the same NVML poll; the DCGM row from the dcgm probe (dcgm-exporter fields
re-exported, and the kubelet's GPU allocations).

As in dcgm-exporter's dashboard, a `gpu` variable selects devices (by uuid,
which stays unique across nodes and is what the kubelet allocates). It lists
the GPUs the selected pods use, so picking a pod narrows it to that pod's
GPUs; "All" is every GPU of the selected nodes, idle ones included. Device
panels select with `uuid=~"$gpu"` and not with namespace/pod: a GPU's health
is not a pod's, and a shared GPU (several pods on one uuid) has no single pod.
"""

from __future__ import annotations

from dashboards.builder import (
    SELECTOR,
    TARGET_SELECTOR,
    DashboardSpec,
    Panel,
    Query,
    Row,
    Variable,
    rate,
)

GPU = 'uuid=~"$gpu"'
# Per-pod series: the selected pods, on the selected GPUs.
POD = SELECTOR + ", " + GPU
# Device series: the selected GPUs of the selected nodes.
DEVICE = TARGET_SELECTOR + ", " + GPU
DEVICE_BY = "instance, gpu, uuid"
DEVICE_LEGEND = "{{instance}} GPU {{gpu}}"
WHO = "namespace, pod, cgroup, gpu"
# Pods read namespace/pod; a process outside pods reads as its cgroup path.
WHO_LEGEND = "{{namespace}}/{{pod}}{{cgroup}} GPU {{gpu}}"


def device(metric: str, extra: str = "") -> str:
    return f"max by ({DEVICE_BY}) ({metric}{{{DEVICE}{', ' + extra if extra else ''}}})"


def _dcgm(metric: str, what: str = "") -> Query:
    # dcgm-exporter series carry pod labels only when one container holds
    # the GPU; per device, they are one series per uuid either way.
    return Query(device(metric), DEVICE_LEGEND + (" " + what if what else ""))


DASHBOARD = DashboardSpec(
    uid="orb8-gpu",
    title="orb8 / GPU",
    description="Per-pod GPU utilisation and memory, GPU sharing, and device health "
    "(power, temperature, clocks, XID, ECC), from NVML and dcgm-exporter via orb8.",
    file="orb8-gpu.json",
    extra_variables=(Variable("gpu", "GPU", "orb8_gpu_memory_used_bytes", "uuid"),),
    rows=(
        Row(
            "Pods",
            (
                Panel(
                    "timeseries",
                    "GPU utilisation by pod",
                    "Percent of each GPU's SM time used by the selected pods' processes (NVML "
                    "per-process samples since the previous poll). Pods sharing a GPU "
                    "(time-slicing, MPS) each get their share; shares of one GPU add up to at "
                    "most about 100. Absent under MIG, where NVML has no per-process samples.",
                    "percent",
                    (Query(f"sum by ({WHO}) (orb8_gpu_utilization{{{POD}}})", WHO_LEGEND),),
                    width=12,
                    max_value=100,
                ),
                Panel(
                    "timeseries",
                    "GPU memory by pod",
                    "GPU memory held by the selected pods' processes on each GPU (NVML "
                    "per-process usedGpuMemory), the memory a pod would free if it stopped.",
                    "bytes",
                    (Query(f"sum by ({WHO}) (orb8_gpu_memory_used_bytes{{{POD}}})", WHO_LEGEND),),
                    width=12,
                ),
                Panel(
                    "table",
                    "Pods on the selected GPUs",
                    "Every pod (or non-pod cgroup) with processes on the selected GPUs and the "
                    "memory it holds: a shared GPU shows as several rows with one uuid. Not "
                    "filtered by the pod variable, so it answers who else is on my pod's GPU.",
                    "bytes",
                    (
                        Query(
                            "sum by (instance, gpu, uuid, gpu_instance, namespace, pod, container, "
                            f"cgroup) (orb8_gpu_memory_used_bytes{{{DEVICE}}})",
                            "memory",
                        ),
                    ),
                    width=16,
                ),
                Panel(
                    "bargauge",
                    "Pods per GPU",
                    "How many distinct pods (or non-pod cgroups) have processes on each "
                    "selected GPU now. Above 1 means the GPU is shared.",
                    "short",
                    (
                        Query(
                            f"count by ({DEVICE_BY}) (count by ({DEVICE_BY}, namespace, pod, "
                            f"cgroup) (orb8_gpu_memory_used_bytes{{{DEVICE}}}))",
                            DEVICE_LEGEND,
                        ),
                    ),
                    width=8,
                ),
            ),
        ),
        Row(
            "Devices",
            (
                Panel(
                    "table",
                    "GPUs",
                    "One row per selected GPU: model, driver and sharing mode (mig, exclusive, "
                    "or shared when processes of several cgroups were on it at the last poll).",
                    "none",
                    (
                        Query(
                            "max by (instance, gpu, uuid, model, driver, sharing) "
                            f"(orb8_gpu_info{{{DEVICE}}})",
                            "info",
                        ),
                    ),
                    width=24,
                ),
                Panel(
                    "timeseries",
                    "Device utilisation",
                    "Percent of the sample period in which a kernel ran on the GPU (kernel), "
                    "and in which device memory was read or written (memory). 100% kernel does "
                    "not mean every SM was busy (see the DCGM engine activity).",
                    "percent",
                    (
                        Query(device("orb8_gpu_device_utilization"), DEVICE_LEGEND + " kernel"),
                        Query(
                            device("orb8_gpu_memory_bandwidth_utilization"),
                            DEVICE_LEGEND + " memory",
                        ),
                    ),
                    width=12,
                    max_value=100,
                ),
                Panel(
                    "timeseries",
                    "Device memory",
                    "Device memory in use by all processes and the driver, and the device's "
                    "memory size.",
                    "bytes",
                    (
                        Query(device("orb8_gpu_device_memory_used_bytes"), DEVICE_LEGEND + " used"),
                        Query(
                            device("orb8_gpu_device_memory_total_bytes"), DEVICE_LEGEND + " total"
                        ),
                    ),
                    width=12,
                ),
                Panel(
                    "timeseries",
                    "Power",
                    "Power draw of each GPU and its enforced power limit. Draw at the limit "
                    "shows as the sw_power_cap clocks event reason.",
                    "watt",
                    (
                        Query(device("orb8_gpu_power_watts"), DEVICE_LEGEND + " draw"),
                        Query(device("orb8_gpu_power_limit_watts"), DEVICE_LEGEND + " limit"),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Temperature",
                    "GPU core temperature. Sustained heat shows as the thermal clocks event "
                    "reasons (sw_thermal_slowdown, hw_thermal_slowdown).",
                    "celsius",
                    (Query(device("orb8_gpu_temperature_celsius"), DEVICE_LEGEND),),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Average power",
                    "Average power over the rate interval, from the energy counter: unlike the "
                    "sampled draw, it misses no spike between polls.",
                    "watt",
                    (
                        Query(
                            f"max by ({DEVICE_BY}) "
                            f"({rate('orb8_gpu_energy_joules_total', DEVICE)})",
                            DEVICE_LEGEND,
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Clocks",
                    "Current SM and memory clocks. A falling SM clock under load is a GPU being "
                    "held down: the clocks event reasons say why.",
                    "hertz",
                    (
                        Query(device("orb8_gpu_sm_clock_hertz"), DEVICE_LEGEND + " SM"),
                        Query(device("orb8_gpu_memory_clock_hertz"), DEVICE_LEGEND + " memory"),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "Clocks event reasons",
                    "Number of selected GPUs each reason is holding the clocks down on "
                    "(formerly throttle reasons). gpu_idle is benign; sw_power_cap means the "
                    "power limit; the thermal, hw_slowdown and power brake reasons mean cooling "
                    "or power delivery trouble.",
                    "short",
                    (
                        Query(
                            f"sum by (instance, reason) (orb8_gpu_clocks_event_active{{{DEVICE}}})",
                            "{{instance}} {{reason}}",
                        ),
                    ),
                    width=8,
                    stacked=True,
                ),
                Panel(
                    "timeseries",
                    "PCIe throughput",
                    "Host-to-GPU traffic over PCIe (rx: into the GPU, tx: out of it), from "
                    "NVML's 20 ms samples.",
                    "Bps",
                    (
                        Query(
                            f"max by ({DEVICE_BY}, direction) "
                            f"(orb8_gpu_pcie_throughput_bytes_per_second{{{DEVICE}}})",
                            DEVICE_LEGEND + " {{direction}}",
                        ),
                    ),
                    width=8,
                ),
            ),
        ),
        Row(
            "Errors",
            (
                Panel(
                    "table",
                    "XID errors",
                    "XID errors the driver reported for each GPU since orb8 started, by XID "
                    "code (NVIDIA's XID catalogue says what each means: 13 and 31 are usually "
                    "the application, 48, 63, 64, 74, 79 and 94/95 the hardware). A GPU "
                    "without any XID shows one row with no code and 0.",
                    "short",
                    (
                        Query(
                            f"sum by ({DEVICE_BY}, xid) (orb8_gpu_xid_errors_total{{{DEVICE}}})"
                            # XID series exist only once an XID happened: a 0 row
                            # per healthy GPU says "none" rather than "no data".
                            f" or on ({DEVICE_BY}) (0 * {device('orb8_gpu_info')})",
                            "errors",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "ECC errors",
                    "ECC errors per second, corrected and uncorrected (volatile counters). "
                    "Uncorrected errors kill the job that hit them; a steady corrected rate is "
                    "a GPU wearing out. Absent when ECC is off.",
                    "cps",
                    (
                        Query(
                            f"sum by ({DEVICE_BY}, type) "
                            f"({rate('orb8_gpu_ecc_errors_total', DEVICE)})",
                            DEVICE_LEGEND + " {{type}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "table",
                    "ECC totals and row remapping",
                    "Per GPU: ECC errors since the driver loaded, memory rows remapped (spare "
                    "rows replacing failing ones), whether a remap waits for a GPU reset "
                    "(pending 1) and whether one failed (failed 1: the GPU needs service, "
                    "Orb8GpuRowRemapFailed fires).",
                    "short",
                    (
                        Query(
                            device("orb8_gpu_ecc_errors_total", 'type="corrected"'),
                            "ECC corrected",
                        ),
                        Query(
                            device("orb8_gpu_ecc_errors_total", 'type="uncorrected"'),
                            "ECC uncorrected",
                        ),
                        Query(
                            f"sum by ({DEVICE_BY}) (orb8_gpu_remapped_rows{{{DEVICE}}})",
                            "rows remapped",
                        ),
                        Query(device("orb8_gpu_row_remap_pending"), "remap pending"),
                        Query(device("orb8_gpu_row_remap_failed"), "remap failed"),
                    ),
                    width=8,
                ),
                Panel(
                    "timeseries",
                    "GPU data age",
                    "Seconds since orb8's last completed NVML poll and last good dcgm-exporter "
                    "scrape on each node: every GPU panel shows data this old.",
                    "s",
                    (
                        Query(
                            f"time() - orb8_gpu_last_poll_timestamp_seconds{{{TARGET_SELECTOR}}}",
                            "{{instance}} NVML",
                        ),
                        Query(
                            "time() - orb8_dcgm_last_success_timestamp_seconds"
                            f"{{{TARGET_SELECTOR}}}",
                            "{{instance}} DCGM",
                        ),
                    ),
                    width=24,
                ),
            ),
        ),
        Row(
            "DCGM (dcgm probe)",
            (
                Panel(
                    "table",
                    "GPU allocations",
                    "Which containers the kubelet gave which GPU (dcgm-exporter's pod mapping or "
                    "the kubelet pod-resources API). Compare with Pods on the selected GPUs: a "
                    "pod allocated a GPU it does not use, or using one it was not allocated.",
                    "none",
                    (
                        Query(
                            "max by (instance, namespace, pod, container, gpu, uuid) "
                            f"(orb8_gpu_allocation_info{{{POD}}})",
                            "allocated",
                        ),
                    ),
                    width=12,
                ),
                Panel(
                    "timeseries",
                    "Engine, tensor and DRAM activity",
                    "DCGM profiling: share of time the graphics/compute engine ran, of cycles "
                    "the tensor pipes ran, and of cycles device memory was busy. Unlike device "
                    "utilisation, a GPU at 100% kernel time with low tensor activity is "
                    "underused.",
                    "percentunit",
                    (
                        _dcgm("orb8_dcgm_graphics_engine_active_ratio", "engine"),
                        _dcgm("orb8_dcgm_tensor_pipe_active_ratio", "tensor"),
                        _dcgm("orb8_dcgm_dram_active_ratio", "DRAM"),
                    ),
                    width=12,
                    max_value=1,
                ),
                Panel(
                    "timeseries",
                    "Memory temperature",
                    "HBM temperature from DCGM (NVML's temperature is the core's). Memory "
                    "overheats before the core on HBM parts.",
                    "celsius",
                    (_dcgm("orb8_dcgm_memory_temperature_celsius"),),
                    width=12,
                ),
                Panel(
                    "timeseries",
                    "PCIe replays",
                    "PCIe packets retried per second (DCGM). A steady rate means a bad link, "
                    "riser or slot.",
                    "cps",
                    (
                        Query(
                            f"max by ({DEVICE_BY}) "
                            f"({rate('orb8_dcgm_pcie_replays_total', DEVICE)})",
                            DEVICE_LEGEND,
                        ),
                    ),
                    width=12,
                ),
            ),
        ),
    ),
)
