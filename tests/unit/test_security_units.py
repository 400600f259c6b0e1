"""Pure parts of the security signals: baselines, allowlist, rate limit, evidence
lines, and their settings."""

from __future__ import annotations

import json
import logging

import pytest

from exporter.config import ConfigError
from exporter.kernel import maps
from exporter.model import Identity
from exporter.registry import load_settings
from exporter.sources.syscalls.baseline import Baselines
from exporter.sources.syscalls.evidence import (
    Allowlist,
    RateLimiter,
    evidence_line,
)
from tests.bpf_maps import DangerousEvent, RingBuffer


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_baseline_learns_during_the_window_then_flags_novel_calls():
    clock = Clock()
    baselines = Baselines(window=60, clock=clock)
    assert not baselines.observe("shop/web/app", "read")
    clock.now += 30
    assert not baselines.observe("shop/web/app", "write")  # still learning
    clock.now += 31
    assert not baselines.observe("shop/web/app", "read")
    assert baselines.observe("shop/web/app", "ptrace")
    assert baselines.observe("shop/web/app", "ptrace"), "novel calls do not join the baseline"
    assert not baselines.observe("shop/other/app", "ptrace"), "a new workload starts learning"


def test_baselines_survive_a_restart_and_corruption_means_relearning(tmp_path, caplog):
    clock = Clock()
    first = Baselines(window=10, state_dir=tmp_path, clock=clock)
    first.observe("cgroup:/svc", "read")
    first.save()
    assert not list(tmp_path.glob(".baselines-*")), "no temp file left behind"
    clock.now += 20
    second = Baselines(window=10, state_dir=tmp_path, clock=clock)
    assert second.observe("cgroup:/svc", "write"), "window already over after restart"
    assert not second.observe("cgroup:/svc", "read")

    (tmp_path / "baselines.json").write_text('{"version": 1, "workloads": {"x": ')
    with caplog.at_level(logging.WARNING):
        third = Baselines(window=10, state_dir=tmp_path, clock=clock)
    assert "is corrupt" in caplog.text and "learning from scratch" in caplog.text
    assert third.workloads == {}
    assert not third.observe("cgroup:/svc", "write"), "relearning"

    (tmp_path / "baselines.json").write_text(json.dumps({"version": 99, "workloads": {}}))
    with caplog.at_level(logging.WARNING):
        Baselines(window=10, state_dir=tmp_path, clock=clock)
    assert "unknown format version 99" in caplog.text


@pytest.mark.parametrize(
    ("identity", "allowed"),
    [
        (Identity("kube-system", "kube-proxy-x", "kube-proxy"), True),
        (Identity("shop", "debug-7f9", "debugger"), True),
        (Identity("shop", "web-1", "app"), False),
        (Identity(cgroup="/system.slice/containerd.service"), True),
        (Identity(cgroup="/system.slice/sshd.service"), False),
    ],
)
def test_allowlist(identity, allowed):
    allowlist = Allowlist(
        ("kube-system/*/*", "shop/debug-*/debugger", "cgroup:/system.slice/containerd*")
    )
    assert allowlist.allows(identity) is allowed


def test_rate_limiter_admits_a_burst_then_summarises():
    clock = Clock()
    limiter = RateLimiter(per_minute=3, clock=clock)
    key = ("shop/web/app", 101)
    assert [limiter.admit(key)[0] for _ in range(5)] == [True, True, True, False, False]
    clock.now += 20  # one token back
    assert limiter.admit(key) == (True, 2)
    assert limiter.admit(("other", 101)) == (True, 0)


def test_evidence_line_is_one_json_object():
    event = DangerousEvent(
        time_ns=5_000_000_000, cgroup_id=7, pid=12, tgid=11, uid=0, nr=101, comm=b"sh"
    )
    line = evidence_line(
        event, Identity("shop", "web", "app"), "ptrace", 3, boot_offset=1e9, abi="i386"
    )
    record = json.loads(line)
    assert record == {
        "time": "2001-09-09T01:46:45.000+00:00",
        "msg": "dangerous syscall",
        "syscall": "ptrace",
        "abi": "i386",
        "namespace": "shop",
        "pod": "web",
        "container": "app",
        "cgroup": "",
        "cgroup_id": 7,
        "pid": 11,
        "tid": 12,
        "uid": 0,
        "comm": "sh",
        "suppressed": 3,
    }
    assert "\n" not in line


def test_evidence_line_says_what_the_kernel_left_unrecorded_and_overflow():
    event = DangerousEvent(
        time_ns=5_000_000_000, cgroup_id=7, pid=12, tgid=11, nr=135, comm=b"sh", flags=1
    )
    line = evidence_line(
        event, Identity(cgroup="/evil"), "personality", 0, 1e9, rate_limited=(40, 4_000_000_000)
    )
    record = json.loads(line)
    assert record["rate_limited"] == 40
    assert record["rate_limited_since"] == "2001-09-09T01:46:44.000+00:00"
    assert record["counted_as"] == "<overflow>" and record["cgroup"] == "/evil"
    quiet = json.loads(evidence_line(DangerousEvent(nr=101), Identity(cgroup="/q"), "ptrace", 0, 0))
    assert "rate_limited" not in quiet and "counted_as" not in quiet


def test_kernel_counts_of_held_back_lines_go_to_the_next_line_of_the_key():
    clock = Clock()
    limiter = RateLimiter(per_minute=1, clock=clock)
    key = ("shop/web/app", 135)
    admitted, _ = limiter.admit(key)
    assert limiter.rate_limited(key, 0, 0, admitted) == (0, 0)
    for count, since in ((10, 200), (5, 100)):  # two records held back here
        admitted, _ = limiter.admit(key)
        assert limiter.rate_limited(key, count, since, admitted) == (0, 0)
    clock.now += 60
    admitted, suppressed = limiter.admit(key)
    assert (admitted, suppressed) == (True, 2)
    assert limiter.rate_limited(key, 3, 300, admitted) == (18, 100)
    assert limiter.rate_limited(key, 0, 0, limiter.admit(key)[0]) == (0, 0)


def test_short_records_are_rejected():
    read = maps.record_reader(
        {b"dangerous_events": RingBuffer(DangerousEvent)}, "dangerous_events", "evidence record"
    )
    with pytest.raises(ValueError, match="evidence record of 8 bytes, expected 72"):
        read(b"\0" * 8, 8)
    assert read(bytes(DangerousEvent(nr=101, comm=b"sh")), 72).comm == b"sh"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"ring_buffer_size": "1000000"}, "must be a power of two"),
        ({"ring_buffer_size": "2048"}, "must be a power of two between 4096"),
        ({"ring_buffer_size": str(64 << 20)}, "must be a power of two"),
        ({"dangerous_syscalls": "ptrace,teleport"}, "unknown syscall(s) on this architecture"),
        ({"extra_dangerous_syscalls": "nope"}, "unknown syscall(s)"),
        ({"dangerous_allowlist": "shop/web"}, "neither namespace/pod/container"),
        ({"dangerous_exclude_self": "maybe"}, "is not a boolean"),
        ({"ring_buffer_sample_every": "0"}, "not a positive integer"),
        ({"dangerous_slots": "0"}, "not a positive integer"),
        ({"dangerous_evidence_rate": "0"}, "between 0.01 and 1000000 records per second"),
        ({"dangerous_evidence_rate": "nan"}, "between 0.01 and 1000000"),
        ({"dangerous_evidence_rate": "fast"}, "is not a number"),
        ({"dangerous_evidence_burst": "0"}, "not a positive integer"),
        ({"dangerous_evidence_burst": "2000000"}, "more than 1000000 records"),
    ],
)
def test_invalid_security_settings(flags, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(flags, environ={})


def test_ring_buffer_size_from_the_environment():
    settings = load_settings({}, environ={"ORB8_RING_BUFFER_SIZE": str(4 << 20)})
    assert settings.ring_buffer_size == 4 << 20
    assert (settings.dangerous_slots, settings.dangerous_evidence_rate) == (16384, 5.0)
    assert settings.dangerous_evidence_burst == 20
    assert "ptrace" in settings.dangerous_syscalls and "bpf" in settings.dangerous_syscalls
