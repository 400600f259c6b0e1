"""dcgm-exporter's /metrics text -> rows, a pure function tested table-driven."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


class DcgmParseError(ValueError):
    pass


@dataclass(frozen=True)
class Row:
    field: str  # e.g. DCGM_FI_DEV_GPU_UTIL
    gpu: str
    uuid: str
    model: str
    gpu_instance: str  # MIG GPU instance id, "" for a whole GPU
    namespace: str  # "" when dcgm-exporter does not map pods
    pod: str
    container: str
    value: float


def parse_dcgm(text: str) -> list[Row]:
    """Rows of every DCGM field in a dcgm-exporter scrape.

    Raises DcgmParseError on text that is not Prometheus exposition or that
    has no DCGM rows at all (an empty answer is a fault, not "no GPUs": a
    dcgm-exporter always reports its GPUs)."""
    rows = []
    try:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("DCGM_"):
                continue
            for sample in family.samples:
                if sample.name not in (family.name, family.name + "_total"):
                    continue
                labels = sample.labels
                uuid = labels.get("UUID", "")
                if not uuid or not math.isfinite(sample.value):
                    continue
                rows.append(
                    Row(
                        field=family.name,
                        gpu=labels.get("gpu", ""),
                        uuid=uuid,
                        model=labels.get("modelName", ""),
                        gpu_instance=labels.get("GPU_I_ID", ""),
                        namespace=labels.get("namespace", ""),
                        pod=labels.get("pod", ""),
                        container=labels.get("container", ""),
                        value=sample.value,
                    )
                )
    except (ValueError, IndexError, KeyError, TypeError) as e:
        raise DcgmParseError(f"not Prometheus text: {e}") from None
    if not rows:
        raise DcgmParseError("no DCGM rows with a UUID label")
    return rows
