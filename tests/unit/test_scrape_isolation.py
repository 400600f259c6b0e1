"""No single source or series can fail a scrape: a real Agent and its real
HTTP server, scraped over HTTP, with one healthy source, one whose collect
raises and one whose label values are not valid Unicode."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from exporter.agent import Agent
from exporter.model import MetricFamily, counter
from exporter.registry import load_settings
from tests.helpers import free_port


class Healthy:
    name = "healthy"

    def start(self) -> None: ...

    def close(self) -> None: ...

    def summary(self) -> str:
        return "healthy"

    def collect(self) -> list[MetricFamily]:
        family = counter(
            "orb8_syscalls_total", "x", ("namespace", "pod", "container", "cgroup", "syscall")
        )
        family.add(("", "", "", "/ok", "getppid"), 5)
        return [family]


class Broken(Healthy):
    name = "broken"

    def collect(self) -> list[MetricFamily]:
        family = counter("orb8_network_bytes_total", "x", ("cgroup",))
        family.add(("/x",), "not a number")  # type: ignore[arg-type]
        return [family]


class Hostile(Healthy):
    name = "hostile"

    def collect(self) -> list[MetricFamily]:
        family = counter("orb8_tcp_retransmits_total", "x", ("pod", "cgroup"))
        family.add(("web-\ud800", "/x\udcff"), 3)
        return [family]


def test_a_failing_source_is_reported_down_and_the_rest_is_served():
    settings = load_settings({"listen": f"127.0.0.1:{free_port()}"}, environ={})
    agent = Agent(settings, sources=[Healthy(), Broken(), Hostile()])
    agent.start()
    try:
        assert agent.server is not None
        host, port = agent.server.address[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
            assert response.status == 200
            text = response.read().decode("utf-8")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("orb8_probe_up", (("probe", "broken"),))] == 0
        assert samples[("orb8_probe_up", (("probe", "healthy"),))] == 1
        assert samples[("orb8_probe_up", (("probe", "hostile"),))] == 1
        ok = (
            ("cgroup", "/ok"),
            ("container", ""),
            ("namespace", ""),
            ("pod", ""),
            ("syscall", "getppid"),
        )
        assert samples[("orb8_syscalls_total", ok)] == 5
        assert (
            samples[
                ("orb8_tcp_retransmits_total", (("cgroup", "/x\\udcff"), ("pod", "web-\\ud800")))
            ]
            == 3
        )
        assert "collect failed" in agent.landing()
    finally:
        agent.close()


class FailsToStart(Healthy):
    name = "fails_to_start"
    collects = 0

    def start(self) -> None:
        raise RuntimeError("collect this and it breaks")

    def collect(self) -> list[MetricFamily]:
        FailsToStart.collects += 1
        return super().collect()


class FailsOnce(Healthy):
    name = "fails_once"
    collects = 0

    def collect(self) -> list[MetricFamily]:
        FailsOnce.collects += 1
        if FailsOnce.collects == 1:
            raise RuntimeError("start over")  # a message that reads like a start failure
        return super().collect()


class Remembers(Healthy):
    """A source with learned state (as the syscalls source's baselines)."""

    name = "remembers"

    def __init__(self) -> None:
        self.baselines = self
        self.saved_under: list[object] = []

    def save(self, lock=None) -> None:
        self.saved_under.append(lock)


def test_a_source_down_since_start_is_never_collected_and_a_failed_collect_is_retried():
    settings = load_settings({"listen": f"127.0.0.1:{free_port()}"}, environ={})
    remembers = Remembers()
    agent = Agent(settings, sources=[FailsToStart(), FailsOnce(), remembers])
    agent.start()
    try:
        assert agent.start_failed == {"fails_to_start"}
        agent.collect()
        assert agent.up == {"fails_to_start": False, "fails_once": False, "remembers": True}
        assert agent.errors["fails_once"] == "collect failed: start over"
        agent.collect()
        assert agent.up["fails_once"] and "fails_once" not in agent.errors
        assert (FailsToStart.collects, FailsOnce.collects) == (0, 2)
        assert "start failed: collect this and it breaks" in agent.landing()
        agent.save_state()  # only the source that keeps baselines, under the collect lock
        assert remembers.saved_under == [agent._lock]
    finally:
        agent.close()
