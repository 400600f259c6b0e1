"""One validated settings object from flags, ORB8_* environment variables and YAML.

Precedence: command-line flag > environment variable > YAML file > default.
Every setting is declared once, as a Spec: the agent-wide ones in SETTINGS
here, each probe's own in its package (exporter/sources/<probe>/__init__.py),
the outputs' in exporter/registry.py, which assembles the full table. The
flag (`--syscall-slots`), the environment variable (`ORB8_SYSCALL_SLOTS`) and
the YAML key (`syscall_slots`) are derived from its name. Anything invalid
raises ConfigError naming the setting and where the value came from; the CLI
turns that into exit code 2.

This module is the bottom layer of settings: it imports no source and no
output (they, and the registry, import it).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from exporter.listen import parse_listen

if TYPE_CHECKING:
    # Every setting's name and type, generated from the Spec table (`make docs`):
    # mypy checks `settings.<name>` against it; at run time Settings reads by name.
    from exporter.settings_fields import SettingsFields as _Fields
else:
    _Fields = object

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


def list_items(value: Any) -> list[str]:
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


def name_list(value: Any) -> tuple[str, ...]:
    return tuple(item.strip() for item in list_items(value) if item.strip())


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


def node_name(value: Any) -> str:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a name, not {type(value).__name__}")
    name = (value or "").strip()
    if len(name) > 253:
        raise ValueError(f"{len(name)} characters; a node name has at most 253")
    if name and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
        raise ValueError(f"{name[:80]!r} is not a valid Kubernetes node name")
    return name


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


# Agent-wide settings, shared by every probe and output. Each probe declares
# its own (exporter/sources/<probe>/__init__.py); exporter/registry.py puts
# them all in one table, in this order: these, probes, each probe's, the
# outputs', LOGGING.
SETTINGS: tuple[Spec, ...] = (
    Spec(
        "listen",
        parse_listen,
        f":{DEFAULT_PORT}",
        "address for /metrics, /healthz and /readyz (HOST:PORT, :PORT)",
        "HOST:PORT",
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
        "identity_cache_size",
        positive_int,
        16384,
        "most cgroup ids whose identity orb8 remembers; when full, the id asked about "
        'least recently is forgotten (fill: orb8_table_entries{table="identity"})',
        "N",
    ),
)
LOGGING: tuple[Spec, ...] = (
    Spec("log_level", log_level, "info", f"one of {', '.join(LOG_LEVELS)}", "LEVEL"),
    Spec(
        "log_format",
        log_format,
        "text",
        "text (one line per event) or json (one JSON object per line, for log pipelines)",
        "FORMAT",
    ),
)


class Settings(_Fields):
    """Every setting's value, by name: built from the Spec table, so no field is
    listed by hand (their types for mypy are generated from it). Read-only;
    unknown names raise AttributeError, and fail mypy."""

    __slots__ = ("_values", "config_file")
    _values: dict[str, Any]

    def __init__(self, values: Mapping[str, Any], config_file: Path | None = None) -> None:
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "config_file", config_file)

    if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any name

        def __getattr__(self, name: str) -> Any:
            try:
                return self._values[name]
            except KeyError:
                raise AttributeError(f"no setting {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("settings are read-only")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Settings)
            and self._values == other._values
            and self.config_file == other.config_file
        )

    def __hash__(self) -> int:
        return hash((tuple(sorted(self._values)), self.config_file))

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Settings({values}, config_file={self.config_file!r})"


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def add_arguments(parser: argparse.ArgumentParser, specs: Sequence[Spec]) -> None:
    """Add one flag per setting; flags default to None so absence is visible."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"YAML file with settings (keys as below, e.g. syscall_slots); env {ENV_PREFIX}CONFIG",
    )
    for spec in specs:
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
    specs: Sequence[Spec],
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    check_paths: bool = True,
) -> Settings:
    """Merge flags, environment and YAML into a validated Settings.

    check_paths=False leaves directories unchecked, for `orb8 diagnose`, whose
    job is to report a missing kernel headers or cgroup directory itself."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    spec_by_name = {spec.name: spec for spec in specs}
    if len(spec_by_name) != len(specs):
        raise ValueError("a setting is declared twice")  # a bug, not bad input
    environ = os.environ if environ is None else environ

    unknown_env = sorted(
        key
        for key in environ
        if key.startswith(ENV_PREFIX)
        and key not in ENV_RESERVED
        and key[len(ENV_PREFIX) :].lower() not in spec_by_name
        and not ENV_SERVICE_LINK.fullmatch(key)
    )
    if unknown_env:
        import difflib

        guess = difflib.get_close_matches(
            unknown_env[0], [env_name(name) for name in spec_by_name], n=1
        )
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        raise ConfigError(f"unknown environment setting {unknown_env[0]}{hint}")

    config_path = flags.get("config") or environ.get(f"{ENV_PREFIX}CONFIG") or None
    file_values: dict[str, Any] = {}
    if config_path:
        file_values = load_yaml(Path(config_path))
        for key in file_values:
            if key not in spec_by_name:
                raise ConfigError(
                    f"config file {config_path}: unknown setting {str(key)[:80]!r}; "
                    f"known: {', '.join(spec_by_name)}"
                )

    values: dict[str, Any] = {}
    for spec in specs:
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

    return Settings(values, config_file=Path(config_path) if config_path else None)
