"""What orb8 is made of: every probe (one line each) and the full settings
table.

Adding a probe = one package under exporter/sources/ declaring a Probe (its
name, default on/off, its own settings, a factory) + one line in PROBES
below; docs/architecture.md walks through it. The settings table is the
agent-wide settings (exporter/config.py), --probes, each probe's own, the
outputs' and logging: one Spec each, from which the flag, the ORB8_*
variable and the YAML key are derived.

Dependencies point one way: cli/agent -> registry -> sources, outputs ->
config. config imports no source and no output; outputs import no config
type; the outputs' settings are validated here, with their own checks.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exporter import config
from exporter.config import (
    LOGGING,
    Settings,
    Spec,
    existing_file,
    list_items,
    optional_positive_float,
)
from exporter.config import SETTINGS as AGENT_SETTINGS
from exporter.kernel.mapmemory import MapDef
from exporter.sources import Probe, dcgm, dns, gpu, network, syscalls

PROBES: tuple[Probe, ...] = (
    syscalls.PROBE,
    network.PROBE,
    gpu.PROBE,
    dcgm.PROBE,
    dns.PROBE,
)
KNOWN_PROBES = tuple(probe.name for probe in PROBES)
DEFAULT_PROBES = tuple(probe.name for probe in PROBES if probe.default)


def probe_list(value: Any) -> tuple[str, ...]:
    probes = tuple(dict.fromkeys(p.strip() for p in list_items(value) if p.strip()))
    if not probes:
        raise ValueError(f"no probe named; known: {', '.join(KNOWN_PROBES)}")
    unknown = [p for p in probes if p not in KNOWN_PROBES]
    if unknown:
        raise ValueError(f"unknown probe(s) {', '.join(unknown)}; known: {', '.join(KNOWN_PROBES)}")
    return probes


def web_config_file(value: Any) -> Path | None:
    """Checked in full at start (YAML, keys, certificates, bcrypt hashes)."""
    from exporter.outputs.webconfig import WebConfigError, load_web_config

    path = existing_file(value)
    if path is not None:
        try:
            load_web_config(path)
        except WebConfigError as e:
            raise ValueError(str(e)) from None
    return path


def otlp_endpoint(value: Any) -> str:
    from exporter.outputs.otlp import OtlpSettingError, check_endpoint

    text = str(value or "").strip()
    if not text:
        return ""
    try:
        return check_endpoint(text, "endpoint")
    except OtlpSettingError as e:
        raise ValueError(str(e).removeprefix("invalid endpoint: ")) from None


def otlp_protocol(value: Any) -> str:
    from exporter.outputs.otlp import PROTOCOLS

    text = str(value or "").strip().lower()
    if text and text not in PROTOCOLS:
        raise ValueError(f"{value!r} is not one of {', '.join(PROTOCOLS)}")
    return text


OUTPUT_SETTINGS: tuple[Spec, ...] = (
    Spec(
        "otlp_endpoint",
        otlp_endpoint,
        "",
        "OpenTelemetry collector to push every /metrics family to over OTLP, e.g. "
        "http://otel-collector:4318 (wins over OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT; "
        "no endpoint anywhere: no push)",
        "URL",
    ),
    Spec(
        "otlp_protocol",
        otlp_protocol,
        "",
        "grpc or http/protobuf (wins over OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL; "
        "empty: those, else http/protobuf)",
        "PROTOCOL",
    ),
    Spec(
        "otlp_interval",
        optional_positive_float,
        "",
        "seconds between OTLP pushes (wins over OTEL_METRIC_EXPORT_INTERVAL; empty: that, else 30)",
        "SECONDS",
    ),
    Spec(
        "web_config_file",
        web_config_file,
        None,
        "TLS and basic auth for /metrics, in the Prometheus exporter-toolkit web config "
        "format (tls_server_config, basic_auth_users); default: plain HTTP",
        "FILE",
    ),
)

SETTINGS: tuple[Spec, ...] = (
    AGENT_SETTINGS[0],  # listen
    Spec(
        "probes",
        probe_list,
        ",".join(DEFAULT_PROBES),
        f"comma-separated probes to load (known: {', '.join(KNOWN_PROBES)})",
        "LIST",
    ),
    *AGENT_SETTINGS[1:],
    *(spec for probe in PROBES for spec in probe.settings),
    *OUTPUT_SETTINGS,
    *LOGGING,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of the full table."""
    config.add_arguments(parser, SETTINGS)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    check_paths: bool = True,
) -> Settings:
    """The full table's settings from flags, environment and YAML (exporter/config.py)."""
    return config.load_settings(SETTINGS, flags, environ, check_paths)


def enabled(settings: Settings, probes: Sequence[Probe] = PROBES) -> list[Probe]:
    """The probes --probes turned on, in registry order."""
    return [probe for probe in probes if probe.name in settings.probes]


def kernel_maps(settings: Settings, probes: Sequence[Probe] = PROBES) -> list[MapDef]:
    """Every kernel map the enabled probes create, at the configured capacities."""
    return [m for p in enabled(settings, probes) if p.maps for m in p.maps(settings)]
