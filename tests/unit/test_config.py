"""Settings: precedence, validation, and the CLI's exit code 2 on bad input."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from exporter.config import MAX_MAP_ENTRIES, ConfigError
from exporter.listen import Listen, parse_listen
from exporter.registry import load_settings
from tests.helpers import ORB8, ROOT


def test_defaults():
    settings = load_settings({}, environ={})
    assert settings.listen == Listen("0.0.0.0", 9826)
    assert settings.probes == ("syscalls", "network", "gpu")
    assert settings.syscall_slots == 65536
    assert settings.deleted_cgroup_grace == 60.0
    assert settings.kernel_headers is None
    assert settings.log_level == "info"


def test_flag_beats_env_beats_file(tmp_path):
    config = tmp_path / "orb8.yaml"
    config.write_text("syscall_slots: 100\nlog_level: debug\nlisten: ':9300'\n")
    env = {"ORB8_CONFIG": str(config), "ORB8_SYSCALL_SLOTS": "200"}
    settings = load_settings({"listen": "127.0.0.1:9400"}, environ=env)
    assert settings.listen == Listen("127.0.0.1", 9400)  # flag
    assert settings.syscall_slots == 200  # env over file
    assert settings.log_level == "debug"  # file over default
    assert settings.config_file == config


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (":9826", Listen("0.0.0.0", 9826)),
        ("127.0.0.1:1", Listen("127.0.0.1", 1)),
        ("[::1]:65535", Listen("::1", 65535)),
        ("localhost:8080", Listen("localhost", 8080)),
    ],
)
def test_parse_listen(value, expected):
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    ("flags", "env", "file_text", "message"),
    [
        ({"listen": ":0"}, {}, None, "invalid listen (flag --listen): port 0 is outside 1-65535"),
        ({"listen": "9826"}, {}, None, "invalid listen (flag --listen): expected HOST:PORT"),
        ({"listen": ":http"}, {}, None, "port 'http' is not a number"),
        ({"syscall_slots": "0"}, {}, None, "invalid syscall_slots (flag --syscall-slots)"),
        ({}, {"ORB8_SYSCALL_SLOTS": "-5"}, None, "invalid syscall_slots (environment"),
        ({}, {"ORB8_SYSCALL_SLOTS": "lots"}, None, "'lots' is not an integer"),
        ({}, {}, "syscall_slots: 1.5\n", "1.5 is not an integer"),
        ({}, {}, "syscall_slots: true\n", "expected a positive integer"),
        ({}, {}, "sycall_slots: 10\n", "unknown setting 'sycall_slots'"),
        ({}, {}, "- just\n- a list\n", "expected a mapping"),
        ({}, {}, "listen: [unclosed\n", "not valid YAML"),
        ({"probes": "syscalls,nope"}, {}, None, "unknown probe(s) nope"),
        ({"log_level": "loud"}, {}, None, "invalid log_level"),
        ({"deleted_cgroup_grace": "-1"}, {}, None, "invalid deleted_cgroup_grace"),
        ({"network_flow_idle_timeout": "0"}, {}, None, "must be more than zero"),
        ({"network_cluster_cidrs": "10.0.0.0/33"}, {}, None, "is not a CIDR"),
        ({}, {"ORB8_LISTN": ":1"}, None, "unknown environment setting ORB8_LISTN"),
    ],
)
def test_invalid_settings_name_the_setting(tmp_path, flags, env, file_text, message):
    env = dict(env)
    if file_text is not None:
        config = tmp_path / "orb8.yaml"
        config.write_text(file_text)
        env["ORB8_CONFIG"] = str(config)
    with pytest.raises(ConfigError) as error:
        load_settings(flags, environ=env)
    assert message in str(error.value)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"no-such\.yaml: No such file"):
        load_settings({"config": str(tmp_path / "no-such.yaml")}, environ={})


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(
        [*ORB8, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**base, **(env or {})},
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["run", "--listen", ":99999"], {}, "invalid listen (flag --listen): port 99999"),
        (["run", "--syscall-slots", "0"], {}, "invalid syscall_slots"),
        (["check"], {"ORB8_SYSCALL_SLOTS": "x"}, "environment ORB8_SYSCALL_SLOTS"),
        (["run", "--config", "/nonexistent/orb8.yaml"], {}, "/nonexistent/orb8.yaml"),
    ],
)
def test_cli_exits_2_with_a_clear_message(args, env, message):
    result = run_cli(*args, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("orb8: configuration error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_help_and_version():
    help_text = run_cli("run", "--help").stdout
    for flag in ("--listen", "--syscall-slots", "--config", "--kernel-headers", "ORB8_LISTEN"):
        assert flag in help_text
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("orb8 ")


def test_example_config_file_is_valid():
    settings = load_settings({"config": str(ROOT / "deploy" / "orb8.example.yaml")}, environ={})
    assert isinstance(settings.config_file, Path)


# --- every bad setting: exit 2, one line naming it, before any probe is loaded ------------


def _fifo(tmp_path: Path) -> str:
    path = tmp_path / "orb8.fifo"
    os.mkfifo(path)
    return str(path)


def _file(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "orb8.yaml"
    path.write_bytes(data)
    return str(path)


BAD_SETTINGS = [
    # (id, args builder, env, words the one line must contain)
    ("listen-not-an-address", lambda t, p: ["--listen", f"256.1.1.1:{p}"], {}, "invalid listen"),
    ("listen-unresolvable", lambda t, p: ["--listen", f"no-such-host.invalid:{p}"], {}, "listen"),
    ("listen-in-use", lambda t, p: ["--listen", f"127.0.0.1:{p}"], {}, "Address already in use"),
    ("probes-empty", lambda t, p: ["--probes", ""], {}, "invalid probes"),
    ("probes-an-int", lambda t, p: ["--config", _file(t, b"probes: 5\n")], {}, "invalid probes"),
    (
        "capacity-beyond-u32",
        lambda t, p: ["--network-flow-entries", str(2**32 + 1)],
        {},
        "invalid network_flow_entries",
    ),
    ("capacity-huge", lambda t, p: ["--syscall-slots", "99999999"], {}, "invalid syscall_slots"),
    ("grace-inf", lambda t, p: ["--deleted-cgroup-grace", "inf"], {}, "deleted_cgroup_grace"),
    ("grace-nan", lambda t, p: [], {"ORB8_DELETED_POD_GRACE": "nan"}, "deleted_pod_grace"),
    ("window-inf", lambda t, p: ["--config", _file(t, b"baseline_window: .inf\n")], {}, "window"),
    ("node-name-long", lambda t, p: ["--node-name", "n" * 254], {}, "invalid node_name"),
    ("config-not-utf8", lambda t, p: ["--config", _file(t, b"log_level: \xff\xfe\n")], {}, "UTF-8"),
    ("config-binary", lambda t, p: ["--config", _file(t, bytes(range(256)))], {}, "config file"),
    ("config-dev-zero", lambda t, p: ["--config", "/dev/zero"], {}, "not a regular file"),
    ("config-fifo", lambda t, p: ["--config", _fifo(t)], {}, "not a regular file"),
    ("list-as-mapping", lambda t, p: ["--config", _file(t, b"probes: {a: 1}\n")], {}, "probes"),
    ("int-as-list", lambda t, p: ["--config", _file(t, b"syscall_slots: [1]\n")], {}, "slots"),
    ("path-as-int", lambda t, p: ["--config", _file(t, b"state_dir: 5\n")], {}, "state_dir"),
    ("cgroup-root-wrong", lambda t, p: ["--cgroup-root", str(t)], {}, "not a cgroup v2 mount"),
    ("cgroup-root-missing", lambda t, p: ["--cgroup-root", "/nonexistent"], {}, "cgroup_root"),
    ("headers-missing", lambda t, p: ["--kernel-headers", "/nonexistent"], {}, "kernel_headers"),
    ("env-typo", lambda t, p: [], {"ORB8_SYSCAL_SLOTS": "5"}, "did you mean ORB8_SYSCALL_SLOTS"),
]


@pytest.mark.parametrize(
    ("build", "env", "words"), [case[1:] for case in BAD_SETTINGS], ids=[c[0] for c in BAD_SETTINGS]
)
def test_every_bad_setting_exits_2_with_one_line_before_probes(tmp_path, build, env, words):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", *build(tmp_path, port), env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # nothing else ran: no start-up log, no probe, no traceback
    assert lines[0].startswith("orb8: configuration error: ")
    assert words in lines[0]


def test_kubernetes_service_links_are_not_settings_but_typos_are_errors():
    links = {
        "ORB8_SERVICE_HOST": "10.96.0.12",
        "ORB8_SERVICE_PORT": "9091",
        "ORB8_SERVICE_PORT_METRICS": "9091",
        "ORB8_PORT": "tcp://10.96.0.12:9091",
        "ORB8_PORT_9091_TCP": "tcp://10.96.0.12:9091",
        "ORB8_PORT_9091_TCP_PROTO": "tcp",
        "ORB8_PORT_9091_TCP_PORT": "9091",
        "ORB8_PORT_9091_TCP_ADDR": "10.96.0.12",
        "ORB8_METRICS_SERVICE_HOST": "10.96.0.13",
    }
    assert load_settings({}, environ=links).syscall_slots == 65536
    with pytest.raises(ConfigError, match="ORB8_LISTN"):
        load_settings({}, environ={**links, "ORB8_LISTN": ":1"})


def test_capacity_bound_matches_the_catalogue_promise():
    # The largest accepted capacity is exact in the kernel map (no silent truncation).
    settings = load_settings({"network_flow_entries": str(MAX_MAP_ENTRIES)}, environ={})
    assert settings.network_flow_entries == MAX_MAP_ENTRIES < 2**32
