"""DCGM fields orb8 re-exports, with orb8 names in base units.

The table covers every field enabled in dcgm-exporter's shipped counter lists
(default-counters.csv and dcp-metrics-included.csv). Fields not listed here
are counted in orb8_dcgm_unmapped_fields and not re-exported: a name is
public API, so it is chosen, not derived.
"""

from __future__ import annotations

from typing import NamedTuple

from exporter.model import MetricType

MIB = 1 << 20


class Field(NamedTuple):
    name: str
    type: MetricType
    scale: float
    help: str


FIELDS: dict[str, Field] = {
    "DCGM_FI_DEV_SM_CLOCK": Field("orb8_dcgm_sm_clock_hertz", "gauge", 1e6, "SM clock."),
    "DCGM_FI_DEV_MEM_CLOCK": Field("orb8_dcgm_memory_clock_hertz", "gauge", 1e6, "Memory clock."),
    "DCGM_FI_DEV_GPU_TEMP": Field(
        "orb8_dcgm_gpu_temperature_celsius", "gauge", 1, "GPU temperature."
    ),
    "DCGM_FI_DEV_MEMORY_TEMP": Field(
        "orb8_dcgm_memory_temperature_celsius", "gauge", 1, "Memory temperature."
    ),
    "DCGM_FI_DEV_POWER_USAGE": Field("orb8_dcgm_power_watts", "gauge", 1, "Power draw."),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": Field(
        "orb8_dcgm_energy_joules_total", "counter", 1e-3, "Energy used since boot."
    ),
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": Field(
        "orb8_dcgm_pcie_replays_total", "counter", 1, "PCIe retries."
    ),
    "DCGM_FI_DEV_GPU_UTIL": Field(
        "orb8_dcgm_gpu_utilization", "gauge", 1, "Percent of time the GPU was busy."
    ),
    "DCGM_FI_DEV_MEM_COPY_UTIL": Field(
        "orb8_dcgm_memory_copy_utilization", "gauge", 1, "Percent of time memory was copied."
    ),
    "DCGM_FI_DEV_ENC_UTIL": Field("orb8_dcgm_encoder_utilization", "gauge", 1, "Encoder, %."),
    "DCGM_FI_DEV_DEC_UTIL": Field("orb8_dcgm_decoder_utilization", "gauge", 1, "Decoder, %."),
    "DCGM_FI_DEV_XID_ERRORS": Field(
        "orb8_dcgm_last_xid", "gauge", 1, "Code of the last XID error (0: none)."
    ),
    "DCGM_FI_DEV_FB_FREE": Field(
        "orb8_dcgm_framebuffer_free_bytes", "gauge", MIB, "Framebuffer memory free."
    ),
    "DCGM_FI_DEV_FB_USED": Field(
        "orb8_dcgm_framebuffer_used_bytes", "gauge", MIB, "Framebuffer memory used."
    ),
    "DCGM_FI_DEV_FB_RESERVED": Field(
        "orb8_dcgm_framebuffer_reserved_bytes", "gauge", MIB, "Framebuffer memory reserved."
    ),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": Field(
        "orb8_dcgm_correctable_remapped_rows_total", "counter", 1, "Rows remapped, correctable."
    ),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": Field(
        "orb8_dcgm_uncorrectable_remapped_rows_total",
        "counter",
        1,
        "Rows remapped, uncorrectable.",
    ),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": Field(
        "orb8_dcgm_row_remap_failed", "gauge", 1, "1 if a row remap failed."
    ),
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": Field(
        "orb8_dcgm_nvlink_bandwidth_total", "counter", 1, "NVLink bandwidth counter, all lanes."
    ),
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS": Field(
        "orb8_dcgm_vgpu_license_status", "gauge", 1, "vGPU license status."
    ),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": Field(
        "orb8_dcgm_graphics_engine_active_ratio", "gauge", 1, "Share of time the engine ran."
    ),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": Field(
        "orb8_dcgm_tensor_pipe_active_ratio", "gauge", 1, "Share of cycles the tensor pipe ran."
    ),
    "DCGM_FI_PROF_DRAM_ACTIVE": Field(
        "orb8_dcgm_dram_active_ratio", "gauge", 1, "Share of cycles device memory was busy."
    ),
    "DCGM_FI_PROF_PCIE_TX_BYTES": Field(
        "orb8_dcgm_pcie_transmit_bytes_per_second", "gauge", 1, "PCIe transmit rate."
    ),
    "DCGM_FI_PROF_PCIE_RX_BYTES": Field(
        "orb8_dcgm_pcie_receive_bytes_per_second", "gauge", 1, "PCIe receive rate."
    ),
}
