"""How each /metrics family is named in OTLP: the one declaration of the mapping.

The OTLP output (exporter/outputs/otlp.py) maps every model family through
this table, the OTLP table in docs/metrics.md is rendered from it
(exporter/catalogue.py, `make docs`), and the tests compare both with the
live output. A probe may declare its own families' instruments instead
(Probe.metrics, exporter.model.MetricSpec): a family carries that
declaration (MetricFamily.otlp) and it wins over this table.

Rules, chosen once for all families:
- Names: OpenTelemetry style (dotted, no unit or `_total` suffix); the
  unit moves to the instrument's UCUM unit. Process metrics take the
  semantic-convention names where one exists (`process.cpu.time`, ...).
- Counters become cumulative monotonic sums (delta when the exporter's
  temporality preference asks for it), gauges stay gauges.
- Labels become attributes: the identity labels take the Kubernetes
  semantic-convention keys, network labels the `network.*` keys (with the
  values `network.io.direction` defines), and labels that have no
  convention are orb8's own, under `orb8.`.
- A label with an empty value is not sent: Prometheus treats an empty label
  as absent, so a plain-host cgroup carries only `orb8.cgroup.path`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple


class Instrument(NamedTuple):
    name: str
    unit: str  # UCUM, as OpenTelemetry expects


# Prometheus family -> OTLP instrument. Every family /metrics can expose is here.
METRICS: dict[str, Instrument] = {
    "orb8_syscalls_total": Instrument("orb8.syscalls", "{call}"),
    "orb8_dangerous_syscalls_total": Instrument("orb8.syscalls.dangerous", "{call}"),
    "orb8_syscall_novel_total": Instrument("orb8.syscalls.novel", "{call}"),
    "orb8_dangerous_evidence_suppressed_total": Instrument(
        "orb8.syscalls.dangerous.evidence_suppressed", "{call}"
    ),
    "orb8_ring_buffer_events_total": Instrument("orb8.ring_buffer.events", "{event}"),
    "orb8_ring_buffer_drops_total": Instrument("orb8.ring_buffer.drops", "{event}"),
    "orb8_ring_buffer_sampled_total": Instrument("orb8.ring_buffer.sampled", "{event}"),
    "orb8_ring_buffer_utilization": Instrument("orb8.ring_buffer.utilization", "1"),
    "orb8_ring_buffer_size_bytes": Instrument("orb8.ring_buffer.size", "By"),
    "orb8_bpf_map_entries": Instrument("orb8.bpf.map.entries", "{entry}"),
    "orb8_bpf_map_capacity": Instrument("orb8.bpf.map.capacity", "{entry}"),
    "orb8_bpf_map_memory_bytes": Instrument("orb8.bpf.map.memory", "By"),
    "orb8_bpf_map_update_failures_total": Instrument("orb8.bpf.map.update_failures", "{event}"),
    "orb8_bpf_map_evictions_total": Instrument("orb8.bpf.map.evictions", "{entry}"),
    "orb8_syscall_abi_detected": Instrument("orb8.syscalls.abi_detected", "1"),
    "orb8_bpf_program_runs_total": Instrument("orb8.bpf.program.runs", "{run}"),
    "orb8_bpf_program_run_seconds_total": Instrument("orb8.bpf.program.run_time", "s"),
    "orb8_bpf_program_recursion_misses_total":
        Instrument("orb8.bpf.program.recursion_misses", "{run}"),
    "orb8_bpf_stats_enabled": Instrument("orb8.bpf.stats_enabled", "1"),
    "orb8_network_bytes_total": Instrument("orb8.network.io", "By"),
    "orb8_network_packets_total": Instrument("orb8.network.packets", "{packet}"),
    "orb8_tcp_connections_opened_total": Instrument("orb8.tcp.connections.opened", "{connection}"),
    "orb8_tcp_resets_total": Instrument("orb8.tcp.resets", "{segment}"),
    "orb8_tcp_retransmits_total": Instrument("orb8.tcp.retransmits", "{segment}"),
    "orb8_flow_bytes_total": Instrument("orb8.flow.io", "By"),
    "orb8_flow_packets_total": Instrument("orb8.flow.packets", "{packet}"),
    "orb8_active_flows": Instrument("orb8.flow.active", "{flow}"),
    "orb8_cgroups_unresolved": Instrument("orb8.cgroups.unresolved", "{cgroup}"),
    "orb8_cgroup_walks_total": Instrument("orb8.cgroups.walks", "{walk}"),
    "orb8_table_entries": Instrument("orb8.table.entries", "{entry}"),
    "orb8_table_capacity": Instrument("orb8.table.capacity", "{entry}"),
    "orb8_k8s_watch_connected": Instrument("orb8.k8s.watch.connected", "1"),
    "orb8_k8s_watch_reconnections_total":
        Instrument("orb8.k8s.watch.reconnections", "{reconnection}"),
    "orb8_k8s_last_sync_timestamp": Instrument("orb8.k8s.watch.last_sync", "s"),
    "orb8_k8s_pods_tracked": Instrument("orb8.k8s.pods.tracked", "{pod}"),
    "orb8_k8s_watch_malformed_events_total":
        Instrument("orb8.k8s.watch.malformed_events", "{event}"),
    "orb8_probe_up": Instrument("orb8.probe.up", "1"),
    "orb8_collect_duration_seconds": Instrument("orb8.probe.collect.duration", "s"),
    "orb8_build_info": Instrument("orb8.build.info", "1"),
    # GPU (probe gpu): device series per NVML device, per-container shares.
    "orb8_gpu_info": Instrument("orb8.gpu.info", "1"),
    "orb8_gpu_memory_used_bytes": Instrument("orb8.gpu.container.memory.usage", "By"),
    "orb8_gpu_utilization": Instrument("orb8.gpu.container.utilization", "%"),
    "orb8_gpu_device_utilization": Instrument("hw.gpu.utilization", "%"),
    "orb8_gpu_memory_bandwidth_utilization":
        Instrument("orb8.gpu.memory.bandwidth.utilization", "%"),
    "orb8_gpu_device_memory_used_bytes": Instrument("hw.gpu.memory.usage", "By"),
    "orb8_gpu_device_memory_total_bytes": Instrument("hw.gpu.memory.limit", "By"),
    "orb8_gpu_power_watts": Instrument("hw.power", "W"),
    "orb8_gpu_power_limit_watts": Instrument("orb8.gpu.power.limit", "W"),
    "orb8_gpu_energy_joules_total": Instrument("hw.energy", "J"),
    "orb8_gpu_temperature_celsius": Instrument("hw.temperature", "Cel"),
    "orb8_gpu_sm_clock_hertz": Instrument("orb8.gpu.clock.sm", "Hz"),
    "orb8_gpu_memory_clock_hertz": Instrument("orb8.gpu.clock.memory", "Hz"),
    "orb8_gpu_clocks_event_active": Instrument("orb8.gpu.clocks_event.active", "1"),
    "orb8_gpu_ecc_errors_total": Instrument("orb8.gpu.ecc.errors", "{error}"),
    "orb8_gpu_remapped_rows": Instrument("orb8.gpu.memory.remapped_rows", "{row}"),
    "orb8_gpu_row_remap_pending": Instrument("orb8.gpu.memory.row_remap.pending", "1"),
    "orb8_gpu_row_remap_failed": Instrument("orb8.gpu.memory.row_remap.failed", "1"),
    "orb8_gpu_pcie_throughput_bytes_per_second": Instrument("orb8.gpu.pcie.throughput", "By/s"),
    "orb8_gpu_xid_errors_total": Instrument("orb8.gpu.xid.errors", "{error}"),
    "orb8_gpu_nvml_errors_total": Instrument("orb8.gpu.nvml.errors", "{error}"),
    "orb8_gpu_last_poll_timestamp_seconds": Instrument("orb8.gpu.last_poll", "s"),
    "orb8_gpu_poll_duration_seconds": Instrument("orb8.gpu.poll.duration", "s"),
    "orb8_gpu_allocation_info": Instrument("orb8.gpu.allocation.info", "1"),
    # DCGM (probe dcgm): dcgm-exporter's fields under orb8 names.
    "orb8_dcgm_sm_clock_hertz": Instrument("orb8.dcgm.clock.sm", "Hz"),
    "orb8_dcgm_memory_clock_hertz": Instrument("orb8.dcgm.clock.memory", "Hz"),
    "orb8_dcgm_gpu_temperature_celsius": Instrument("orb8.dcgm.temperature.gpu", "Cel"),
    "orb8_dcgm_memory_temperature_celsius": Instrument("orb8.dcgm.temperature.memory", "Cel"),
    "orb8_dcgm_power_watts": Instrument("orb8.dcgm.power", "W"),
    "orb8_dcgm_energy_joules_total": Instrument("orb8.dcgm.energy", "J"),
    "orb8_dcgm_pcie_replays_total": Instrument("orb8.dcgm.pcie.replays", "{replay}"),
    "orb8_dcgm_gpu_utilization": Instrument("orb8.dcgm.utilization", "%"),
    "orb8_dcgm_memory_copy_utilization": Instrument("orb8.dcgm.memory_copy.utilization", "%"),
    "orb8_dcgm_encoder_utilization": Instrument("orb8.dcgm.encoder.utilization", "%"),
    "orb8_dcgm_decoder_utilization": Instrument("orb8.dcgm.decoder.utilization", "%"),
    "orb8_dcgm_last_xid": Instrument("orb8.dcgm.last_xid", "1"),
    "orb8_dcgm_framebuffer_free_bytes": Instrument("orb8.dcgm.framebuffer.free", "By"),
    "orb8_dcgm_framebuffer_used_bytes": Instrument("orb8.dcgm.framebuffer.used", "By"),
    "orb8_dcgm_framebuffer_reserved_bytes": Instrument("orb8.dcgm.framebuffer.reserved", "By"),
    "orb8_dcgm_correctable_remapped_rows_total":
        Instrument("orb8.dcgm.remapped_rows.correctable", "{row}"),
    "orb8_dcgm_uncorrectable_remapped_rows_total":
        Instrument("orb8.dcgm.remapped_rows.uncorrectable", "{row}"),
    "orb8_dcgm_row_remap_failed": Instrument("orb8.dcgm.row_remap.failed", "1"),
    "orb8_dcgm_nvlink_bandwidth_total": Instrument("orb8.dcgm.nvlink.bandwidth", "By"),
    "orb8_dcgm_vgpu_license_status": Instrument("orb8.dcgm.vgpu.license_status", "1"),
    "orb8_dcgm_graphics_engine_active_ratio": Instrument("orb8.dcgm.graphics_engine.active", "1"),
    "orb8_dcgm_tensor_pipe_active_ratio": Instrument("orb8.dcgm.tensor_pipe.active", "1"),
    "orb8_dcgm_dram_active_ratio": Instrument("orb8.dcgm.dram.active", "1"),
    "orb8_dcgm_pcie_transmit_bytes_per_second": Instrument("orb8.dcgm.pcie.transmit", "By/s"),
    "orb8_dcgm_pcie_receive_bytes_per_second": Instrument("orb8.dcgm.pcie.receive", "By/s"),
    "orb8_dcgm_up": Instrument("orb8.dcgm.up", "1"),
    "orb8_dcgm_stale": Instrument("orb8.dcgm.stale", "1"),
    "orb8_dcgm_last_success_timestamp_seconds": Instrument("orb8.dcgm.last_success", "s"),
    "orb8_dcgm_breaker_open": Instrument("orb8.dcgm.breaker_open", "1"),
    "orb8_dcgm_scrape_errors_total": Instrument("orb8.dcgm.scrape.errors", "{error}"),
    "orb8_dcgm_unmapped_fields": Instrument("orb8.dcgm.unmapped_fields", "{field}"),
    "orb8_dcgm_pod_resources_up": Instrument("orb8.dcgm.pod_resources.up", "1"),
    "orb8_otlp_exports_total": Instrument("orb8.otlp.exports", "{export}"),
    "orb8_otlp_last_success_timestamp_seconds": Instrument("orb8.otlp.last_success", "s"),
    "orb8_otlp_export_duration_seconds": Instrument("orb8.otlp.export.duration", "s"),
    "process_cpu_seconds_total": Instrument("process.cpu.time", "s"),
    "process_open_fds": Instrument("process.open_file_descriptor.count", "{file_descriptor}"),
    "process_max_fds": Instrument("orb8.process.max_file_descriptors", "{file_descriptor}"),
    "process_virtual_memory_bytes": Instrument("process.memory.virtual", "By"),
    "process_resident_memory_bytes": Instrument("process.memory.usage", "By"),
    "process_start_time_seconds": Instrument("orb8.process.start_time", "s"),
}  # fmt: skip

# Prometheus label -> OTLP attribute key, for every family.
ATTRIBUTES: dict[str, str] = {
    "namespace": "k8s.namespace.name",
    "pod": "k8s.pod.name",
    "container": "k8s.container.name",
    "cgroup": "orb8.cgroup.path",
    "syscall": "orb8.syscall",
    "direction": "network.io.direction",
    "protocol": "network.transport",
    "family": "network.type",
    "role": "orb8.tcp.role",
    "peer_namespace": "orb8.peer.k8s.namespace.name",
    "peer_pod": "orb8.peer.k8s.pod.name",
    "peer_class": "orb8.peer.class",
    "probe": "orb8.probe",
    "map": "orb8.bpf.map",
    "table": "orb8.table",
    "program": "orb8.bpf.program",
    "version": "service.version",
    "kernel": "os.version",
    "result": "orb8.otlp.result",
    # GPU labels: the hardware semantic conventions where they exist.
    "uuid": "hw.id",
    "model": "hw.model",
    "driver": "hw.driver_version",
    "gpu": "orb8.gpu.index",
    "gpu_instance": "orb8.gpu.instance",
    "sharing": "orb8.gpu.sharing",
    "type": "orb8.gpu.ecc.type",
    "cause": "orb8.gpu.remap.cause",
    "xid": "orb8.gpu.xid",
    "call": "orb8.nvml.call",
    "error": "error.type",
}

# Label values that differ in OTLP (others are sent unchanged).
VALUES: dict[str, dict[str, str]] = {
    # network (egress/ingress) and GPU PCIe (tx/rx) directions alike
    "direction": {"egress": "transmit", "ingress": "receive", "tx": "transmit", "rx": "receive"},
}


def instrument(family: str, declared_by_probe: tuple[str, str] | None = None) -> Instrument:
    """The declared instrument, or a derived one for a family not declared yet.

    declared_by_probe: a family's own declaration (MetricFamily.otlp, from
    its probe's MetricSpec), which wins. The tests fail on an undeclared
    family; at run time it is still sent (dots for underscores, no `_total`,
    unit 1) rather than dropped.
    """
    if declared_by_probe is not None:
        return Instrument(*declared_by_probe)
    declared = METRICS.get(family)
    if declared is not None:
        return declared
    return Instrument(family.removesuffix("_total").replace("_", "."), "1")


def attribute_key(label: str) -> str:
    return ATTRIBUTES.get(label, label if label.startswith("orb8.") else f"orb8.{label}")


def attributes(
    labels: tuple[str, ...],
    values: tuple[str, ...],
    declared: tuple[tuple[str, str], ...] = (),
) -> dict[str, str]:
    """One sample's attributes; empty label values are left out. declared:
    the family's own (label, key) choices (MetricFamily.otlp_attributes)."""
    own = dict(declared)
    mapped: dict[str, str] = {}
    for label, value in zip(labels, values, strict=True):
        if value == "":
            continue
        renamed = VALUES.get(label)
        key = own.get(label) or attribute_key(label)
        mapped[key] = renamed.get(value, value) if renamed else value
    return mapped


def render_table(
    catalogue: Mapping[str, tuple[str, tuple[str, ...]]],
    declared_by_probes: Mapping[str, tuple[str, str]] | None = None,
    declared_attributes: Mapping[str, tuple[tuple[str, str], ...]] | None = None,
) -> str:
    """The docs/metrics.md OTLP table for {prometheus name: (type, labels)}, in
    that order; declared_by_probes: the instruments probes declare themselves,
    declared_attributes: the attribute keys they choose for their labels."""
    declared_by_probes = declared_by_probes or {}
    declared_attributes = declared_attributes or {}
    lines = [
        "| Prometheus | OTLP metric | OTLP type | unit | attributes |",
        "|---|---|---|---|---|",
    ]
    for name, (kind, labels) in catalogue.items():
        inst = instrument(name, declared_by_probes.get(name))
        otlp_type = {"counter": "monotonic sum", "histogram": "histogram"}.get(kind, "gauge")
        own = dict(declared_attributes.get(name, ()))
        keys = ", ".join(own.get(label) or attribute_key(label) for label in labels)
        lines.append(f"| `{name}` | `{inst.name}` | {otlp_type} | `{inst.unit}` | {keys} |")
    lines.append("")
    lines.append("| Prometheus label | OTLP attribute | values |")
    lines.append("|---|---|---|")
    for label, key in ATTRIBUTES.items():
        renamed = VALUES.get(label)
        values = ", ".join(f"`{a}` -> `{b}`" for a, b in renamed.items()) if renamed else "as is"
        lines.append(f"| `{label}` | `{key}` | {values} |")
    return "\n".join(lines) + "\n"


def catalogue_from_docs(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """{name: (type, labels)} from the catalogue table of docs/metrics.md, in order."""
    import re

    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in text.splitlines():
        match = re.match(
            r"\| `([a-z0-9_]+)` \| (counter|gauge|histogram) \|\s*([a-z_, ]*?)\s*\|", line
        )
        if match:
            labels = tuple(x.strip() for x in match.group(3).split(",") if x.strip())
            rows[match.group(1)] = (match.group(2), labels)
    return rows


TABLE_BEGIN = "<!-- otlp-table: generated by `make docs`; do not edit -->"
TABLE_END = "<!-- otlp-table end -->"
