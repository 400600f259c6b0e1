"""One validated settings object from flags, ORB8_* environment variables and YAML.

Precedence: command-line flag > environment variable > YAML file > default.
Every setting is declared once in SETTINGS; the flag (`--syscall-slots`), the
environment variable (`ORB8_SYSCALL_SLOTS`) and the YAML key (`syscall_slots`)
are derived from its name. Anything invalid raises ConfigError naming the
setting and where the value came from; the CLI turns that into exit code 2.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "ORB8_"
# Environment variables that are not settings themselves.
ENV_RESERVED = {"ORB8_CONFIG"}
# Kubernetes injects service-link variables into every pod of a namespace that
# has a Service named orb8 (or orb8-<anything>): ORB8_SERVICE_HOST,
# ORB8_PORT_9091_TCP_ADDR, ... They are not settings and must not stop orb8;
# any other unknown ORB8_* variable is most likely a typo and is an error.
ENV_SERVICE_LINK = re.compile(
    r"ORB8(_[A-Z0-9_]+?)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
    r"|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)"
)

KNOWN_PROBES = ("syscalls", "network", "gpu", "dcgm")
# gpu and dcgm read devices most nodes lack: enabled where GPUs are.
DEFAULT_PROBES = ("syscalls", "network")

# Informed by Falco's and Tetragon's default rules: module loading, kexec,
# BPF, tracing other processes, namespace and mount manipulation, raw I/O,
# clock and boot control. The new mount API (open_tree .. mount_setattr) does
# what mount does; io_uring_setup is the only syscall an io_uring user makes
# before its I/O bypasses syscall hooks; name_to_handle_at pairs with
# open_by_handle_at; pidfd_getfd steals another process's file descriptors.
# Left out on purpose (too common in ordinary software, reasons in
# docs/alerts.md): memfd_create, execveat, clone/clone3, io_uring_enter.
DEFAULT_DANGEROUS_SYSCALLS = (
    "ptrace", "process_vm_writev", "process_vm_readv", "mount", "umount2", "pivot_root",
    "chroot", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "bpf", "perf_event_open", "setns", "unshare", "open_by_handle_at",
    "userfaultfd", "keyctl", "add_key", "request_key", "syslog", "personality", "iopl",
    "ioperm", "swapon", "swapoff", "reboot", "acct", "settimeofday", "clock_settime",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "io_uring_setup", "name_to_handle_at", "pidfd_getfd",
)  # fmt: skip
MIB = 1 << 20
# Kernel map capacities: max_entries is a u32, and far below that the map
# could not be allocated on a node anyway. 16 Mi entries is beyond any
# sensible node, still allocatable, and keeps the C constant exact.
MAX_MAP_ENTRIES = 1 << 24
# Durations: finite, and at most a week (a longer grace is a leak).
MAX_SECONDS = 7 * 24 * 3600.0
CONFIG_FILE_MAX_BYTES = 1 * MIB
# Not 9091 (Pushgateway, also Calico Felix) and clear of the node-level agents
# a DaemonSet shares hostNetwork with: node_exporter 9100, dcgm-exporter 9400,
# ebpf_exporter 9435, kubelet 10250/10255 (see docs/deploying.md#port).
DEFAULT_PORT = 9826
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """An invalid setting; the message names the setting and its source."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(value: str) -> Listen:
    host, sep, port_text = str(value).rpartition(":")
    if not sep:
        raise ValueError("expected HOST:PORT or :PORT")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return Listen(host, port)


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("expected a positive integer")
    try:
        number = int(str(value), 0) if isinstance(value, str) else int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{value!r} is not an integer") from None
    if isinstance(value, float) and value != number:
        raise ValueError(f"{value!r} is not an integer")
    if number <= 0:
        raise ValueError(f"{number} is not a positive integer")
    return number


def map_capacity(value: Any) -> int:
    """A kernel map's max_entries: positive and within what the kernel can allocate."""
    number = positive_int(value)
    if number > MAX_MAP_ENTRIES:
        raise ValueError(
            f"{number} is more than {MAX_MAP_ENTRIES} entries (kernel maps hold at most "
            f"2^32-1 and a node could not allocate this many)"
        )
    return number


def non_negative_int(value: Any) -> int:
    if str(value).strip() == "0":
        return 0
    return positive_int(value)


def positive_float(value: Any) -> float:
    number = non_negative_float(value)
    if number == 0:
        raise ValueError("must be more than zero")
    return number


def non_negative_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number of seconds")
    if number < 0:
        raise ValueError(f"{value!r} must be zero or more")
    if number > MAX_SECONDS:
        raise ValueError(f"{value!r} is more than a week ({MAX_SECONDS:.0f} s)")
    return number


def _items(value: Any) -> list[str]:
    """A list setting: a comma-separated string or a YAML list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split(",")
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError(
        f"expected a comma-separated string or a list of strings, not {type(value).__name__}"
    )


def probe_list(value: Any) -> tuple[str, ...]:
    probes = tuple(dict.fromkeys(p.strip() for p in _items(value) if p.strip()))
    if not probes:
        raise ValueError(f"no probe named; known: {', '.join(KNOWN_PROBES)}")
    unknown = [p for p in probes if p not in KNOWN_PROBES]
    if unknown:
        raise ValueError(f"unknown probe(s) {', '.join(unknown)}; known: {', '.join(KNOWN_PROBES)}")
    return probes


def name_list(value: Any) -> tuple[str, ...]:
    return tuple(item.strip() for item in _items(value) if item.strip())


def syscall_names(value: Any) -> tuple[str, ...]:
    from exporter.sources.syscalls import native_syscall_numbers

    names = name_list(value)
    known = native_syscall_numbers()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown syscall(s) on this architecture: {', '.join(unknown)}")
    return names


def allowlist(value: Any) -> tuple[str, ...]:
    """Selectors: namespace/pod/container (fnmatch globs) or cgroup:<glob>."""
    selectors = name_list(value)
    for selector in selectors:
        if not selector.startswith("cgroup:") and selector.count("/") != 2:
            raise ValueError(
                f"{selector!r} is neither namespace/pod/container nor cgroup:<path glob>"
            )
    return selectors


def cidr_list(value: Any) -> tuple[str, ...]:
    import ipaddress

    cidrs = name_list(value)
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"{cidr!r} is not a CIDR (e.g. 10.244.0.0/16)") from None
    return cidrs


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def ring_buffer_size(value: Any) -> int:
    size = positive_int(value)
    if size & (size - 1) or not 4096 <= size <= 32 * MIB:
        raise ValueError(f"{size} must be a power of two between 4096 and {32 * MIB} bytes")
    return size


def log_level(value: Any) -> str:
    level = str(value).lower() if isinstance(value, str) else ""
    if level not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def log_format(value: Any) -> str:
    text = value.lower() if isinstance(value, str) else ""
    if text not in LOG_FORMATS:
        raise ValueError(f"{value!r} is not one of {', '.join(LOG_FORMATS)}")
    return text


def optional_path(value: Any) -> Path | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a path, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError("a path cannot contain a NUL byte")
    return Path(value)


def existing_file(value: Any) -> Path | None:
    path = optional_path(value)
    if path is not None and not path.is_file():
        raise ValueError(f"{path} is not a readable file")
    return path


def http_url(value: Any) -> str:
    from urllib.parse import urlsplit

    url = str(value).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL (e.g. http://localhost:9400/metrics)")
    return url


def existing_dir(value: Any) -> Path | None:
    path = optional_path(value)
    if path is not None and not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    return path


def cgroup2_root(value: Any) -> Path | None:
    """The cgroup v2 mount: a directory with cgroup.controllers at its top."""
    path = existing_dir(value)
    if path is not None and not (path / "cgroup.controllers").is_file():
        raise ValueError(
            f"{path} is not a cgroup v2 mount (no cgroup.controllers; see "
            "'grep cgroup2 /proc/self/mountinfo')"
        )
    return path


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


def node_name(value: Any) -> str:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a name, not {type(value).__name__}")
    name = (value or "").strip()
    if len(name) > 253:
        raise ValueError(f"{len(name)} characters; a node name has at most 253")
    if name and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
        raise ValueError(f"{name[:80]!r} is not a valid Kubernetes node name")
    return name


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


def optional_positive_float(value: Any) -> float | None:
    return None if value in (None, "") else positive_float(value)


@dataclass(frozen=True)
class Spec:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str = ""
    # Conventional variables also honoured (after ORB8_<NAME>), e.g. KUBECONFIG.
    other_env: tuple[str, ...] = ()


SETTINGS: tuple[Spec, ...] = (
    Spec(
        "listen",
        parse_listen,
        f":{DEFAULT_PORT}",
        "address for /metrics, /healthz and /readyz (HOST:PORT, :PORT)",
        "HOST:PORT",
    ),
    Spec(
        "probes",
        probe_list,
        ",".join(DEFAULT_PROBES),
        f"comma-separated probes to load (known: {', '.join(KNOWN_PROBES)})",
        "LIST",
    ),
    Spec(
        "syscall_slots",
        map_capacity,
        32768,
        "capacity of the kernel syscall map in (cgroup, syscall) pairs; when full, "
        "new pairs are not counted and orb8_bpf_map_update_failures_total rises",
        "N",
    ),
    Spec(
        "network_traffic_entries",
        map_capacity,
        16384,
        "capacity of the kernel traffic map, in (cgroup, direction, protocol, family) "
        "tuples (at most 16 per cgroup)",
        "N",
    ),
    Spec(
        "network_tcp_entries",
        map_capacity,
        8192,
        "capacity of the kernel TCP event map, in (cgroup, event) pairs (5 per cgroup)",
        "N",
    ),
    Spec(
        "network_flow_entries",
        map_capacity,
        16384,
        "capacity of the kernel flow map (LRU, per cgroup and peer); when full the least "
        "recently used flow is evicted and counted in orb8_bpf_map_evictions_total",
        "N",
    ),
    Spec(
        "network_peer_limit",
        non_negative_int,
        16,
        "peer pods per workload exported by name; traffic with further peer pods is "
        'summed in peer_class="other"',
        "N",
    ),
    Spec(
        "network_flow_idle_timeout",
        positive_float,
        300.0,
        "seconds without traffic after which a flow leaves the kernel map",
        "SECONDS",
    ),
    Spec(
        "network_cluster_cidrs",
        cidr_list,
        "",
        "pod and service CIDRs: peers in them that are not known pods are "
        'peer_class="cluster" (else "external")',
        "LIST",
    ),
    Spec(
        "deleted_cgroup_grace",
        non_negative_float,
        60.0,
        "seconds a removed cgroup's series are still exported before its kernel "
        "map entries are freed",
        "SECONDS",
    ),
    Spec(
        "deleted_pod_grace",
        non_negative_float,
        60.0,
        "seconds a deleted pod's series are still exported before its kernel map entries are freed",
        "SECONDS",
    ),
    Spec(
        "kubeconfig",
        existing_file,
        None,
        "kubeconfig for the pod watch; without it (and outside a cluster) orb8 runs in "
        "plain-host mode",
        "FILE",
        ("KUBECONFIG",),
    ),
    Spec(
        "node_name",
        node_name,
        "",
        "this node's name, to watch only its pods (default: the host name)",
        "NAME",
        ("NODE_NAME",),
    ),
    Spec(
        "dangerous_syscalls",
        syscall_names,
        ",".join(DEFAULT_DANGEROUS_SYSCALLS),
        "syscalls counted in orb8_dangerous_syscalls_total and logged as evidence "
        "(replaces the built-in set)",
        "LIST",
    ),
    Spec(
        "extra_dangerous_syscalls",
        syscall_names,
        "",
        "syscalls added to dangerous_syscalls",
        "LIST",
    ),
    Spec(
        "dangerous_allowlist",
        allowlist,
        "",
        "workloads whose dangerous syscalls are expected: namespace/pod/container globs "
        "(e.g. kube-system/*/*) or cgroup:<path glob>; still counted in orb8_syscalls_total",
        "LIST",
    ),
    Spec(
        "dangerous_exclude_self",
        boolean,
        True,
        "do not count orb8's own dangerous syscalls (it calls bpf and perf_event_open)",
        "BOOL",
    ),
    Spec(
        "ring_buffer_size",
        ring_buffer_size,
        MIB,
        "bytes of the evidence ring buffer: a power of two, 4096 to 32 MiB",
        "BYTES",
    ),
    Spec(
        "ring_buffer_sample_every",
        positive_int,
        10,
        "when the ring buffer is over 90% full, keep 1 evidence event in N",
        "N",
    ),
    Spec(
        "evidence_log_per_minute",
        positive_int,
        6,
        "evidence log lines per minute per workload and syscall; the rest are summarised",
        "N",
    ),
    Spec(
        "baseline_window",
        non_negative_float,
        600.0,
        "seconds from a workload's first appearance during which its syscalls are learned; "
        "later syscalls outside that set count in orb8_syscall_novel_total",
        "SECONDS",
    ),
    Spec(
        "state_dir",
        optional_path,
        None,
        "directory where learned baselines survive restarts (default: not kept)",
        "DIR",
    ),
    Spec(
        "kernel_headers",
        existing_dir,
        None,
        "kernel headers directory for BCC (default: /lib/modules/$(uname -r)/build)",
        "DIR",
    ),
    Spec(
        "bpf_dir",
        existing_dir,
        None,
        "directory holding the probe sources (default: bpf/ shipped with orb8)",
        "DIR",
    ),
    Spec(
        "cgroup_root",
        cgroup2_root,
        None,
        "cgroup v2 mount point (default: found in /proc/self/mountinfo)",
        "DIR",
    ),
    Spec(
        "gpu_poll_interval",
        positive_float,
        10.0,
        "seconds between background NVML polls and dcgm-exporter scrapes (probes gpu, dcgm)",
        "SECONDS",
    ),
    Spec(
        "dcgm_url",
        http_url,
        "http://localhost:9400/metrics",
        "the node's dcgm-exporter /metrics, scraped by the dcgm probe",
        "URL",
    ),
    Spec(
        "pod_resources_socket",
        optional_path,
        "/var/lib/kubelet/pod-resources/kubelet.sock",
        "kubelet pod-resources gRPC socket: which pod holds which GPU when dcgm-exporter "
        "does not say",
        "FILE",
    ),
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
    Spec("log_level", log_level, "info", f"one of {', '.join(LOG_LEVELS)}", "LEVEL"),
    Spec(
        "log_format",
        log_format,
        "text",
        "text (one line per event) or json (one JSON object per line, for log pipelines)",
        "FORMAT",
    ),
)
SPEC_BY_NAME = {spec.name: spec for spec in SETTINGS}


@dataclass(frozen=True)
class Settings:
    listen: Listen
    probes: tuple[str, ...]
    syscall_slots: int
    network_traffic_entries: int
    network_tcp_entries: int
    network_flow_entries: int
    network_peer_limit: int
    network_flow_idle_timeout: float
    network_cluster_cidrs: tuple[str, ...]
    deleted_cgroup_grace: float
    deleted_pod_grace: float
    kubeconfig: Path | None
    node_name: str
    dangerous_syscalls: tuple[str, ...]
    extra_dangerous_syscalls: tuple[str, ...]
    dangerous_allowlist: tuple[str, ...]
    dangerous_exclude_self: bool
    ring_buffer_size: int
    ring_buffer_sample_every: int
    evidence_log_per_minute: int
    baseline_window: float
    state_dir: Path | None
    kernel_headers: Path | None
    bpf_dir: Path | None
    cgroup_root: Path | None
    gpu_poll_interval: float
    dcgm_url: str
    pod_resources_socket: Path | None
    web_config_file: Path | None
    log_level: str
    log_format: str
    otlp_endpoint: str = ""
    otlp_protocol: str = ""
    otlp_interval: float | None = None
    config_file: Path | None = None


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; flags default to None so absence is visible."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"YAML file with settings (keys as below, e.g. syscall_slots); env {ENV_PREFIX}CONFIG",
    )
    for spec in SETTINGS:
        parser.add_argument(
            flag_name(spec.name),
            dest=spec.name,
            metavar=spec.metavar or None,
            default=None,
            help=(
                f"{spec.help} [env {'/'.join((env_name(spec.name), *spec.other_env))}; "
                f"default {spec.default}]"
            ).replace("%", "%%"),
        )


def read_config_text(path: Path) -> str:
    """The config file's text; a FIFO, a device or a huge file is refused before reading,
    so neither /dev/zero nor a pipe nobody writes to can hang or exhaust orb8."""
    try:
        info = path.stat()
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"config file {path}: not a regular file")
    if info.st_size > CONFIG_FILE_MAX_BYTES:
        raise ConfigError(
            f"config file {path}: {info.st_size} bytes, more than {CONFIG_FILE_MAX_BYTES}"
        )
    try:
        with path.open("rb") as f:
            data = f.read(CONFIG_FILE_MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {e.start})") from None


def load_yaml(path: Path) -> dict[str, Any]:
    text = read_config_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of setting: value")
    return data


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    check_paths: bool = True,
) -> Settings:
    """Merge flags, environment and YAML into a validated Settings.

    check_paths=False leaves directories unchecked, for `orb8 diagnose`, whose
    job is to report a missing kernel headers or cgroup directory itself."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ

    unknown_env = sorted(
        key
        for key in environ
        if key.startswith(ENV_PREFIX)
        and key not in ENV_RESERVED
        and key[len(ENV_PREFIX) :].lower() not in SPEC_BY_NAME
        and not ENV_SERVICE_LINK.fullmatch(key)
    )
    if unknown_env:
        import difflib

        guess = difflib.get_close_matches(
            unknown_env[0], [env_name(name) for name in SPEC_BY_NAME], n=1
        )
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        raise ConfigError(f"unknown environment setting {unknown_env[0]}{hint}")

    config_path = flags.get("config") or environ.get(f"{ENV_PREFIX}CONFIG") or None
    file_values: dict[str, Any] = {}
    if config_path:
        file_values = load_yaml(Path(config_path))
        for key in file_values:
            if key not in SPEC_BY_NAME:
                raise ConfigError(
                    f"config file {config_path}: unknown setting {str(key)[:80]!r}; "
                    f"known: {', '.join(SPEC_BY_NAME)}"
                )

    values: dict[str, Any] = {}
    for spec in SETTINGS:
        if spec.name in flags:
            raw, source = flags[spec.name], f"flag {flag_name(spec.name)}"
        elif env_name(spec.name) in environ:
            raw, source = environ[env_name(spec.name)], f"environment {env_name(spec.name)}"
        elif any(environ.get(var) for var in spec.other_env):
            var = next(var for var in spec.other_env if environ.get(var))
            raw, source = environ[var], f"environment {var}"
        elif spec.name in file_values:
            raw, source = file_values[spec.name], f"config file {config_path} key {spec.name}"
        else:
            raw, source = spec.default, "default"
        parse = spec.parse
        if not check_paths and parse in (existing_dir, cgroup2_root):
            parse = optional_path
        try:
            values[spec.name] = parse(raw)
        except (ValueError, TypeError) as e:
            message = " ".join(str(e).split())[:300]  # one line, whatever the input was
            raise ConfigError(f"invalid {spec.name} ({source}): {message}") from None

    known = {f.name for f in fields(Settings)}
    return Settings(
        **{k: v for k, v in values.items() if k in known},
        config_file=Path(config_path) if config_path else None,
    )
