"""/healthz and /readyz: what the kubelet's liveness and readiness probes ask.

Both are answered from flags the agent already keeps, never by collecting:
a probe every few seconds must not cost a scrape (readiness used to GET
/metrics every 15 s). They carry no workload data, so they are served
without basic auth (see outputs/webconfig.py).
"""

from __future__ import annotations

from collections.abc import Mapping

Response = tuple[int, str]

HEALTH_PATHS = ("/healthz", "/readyz")


def liveness() -> Response:
    """The process is alive and its HTTP thread answers; nothing else is checked
    so that a slow kernel or API server never gets a healthy agent restarted."""
    return 200, "ok\n"


def readiness(started: bool, probes_up: Mapping[str, bool], watch_synced: bool | None) -> Response:
    """Ready once start-up finished (every probe compiled and attached, or marked
    down), at least one probe is attached and, when watching pods, the first
    list of this node's pods arrived so series carry namespace/pod labels.

    A probe that failed to start keeps the pod ready: it is reported through
    orb8_probe_up (alert Orb8ProbeDown), which needs the pod to stay scraped.
    """
    lines = [
        f"probe {name}: {'attached' if up else 'down'}" for name, up in sorted(probes_up.items())
    ]
    if watch_synced is not None:
        lines.append(f"pod watch: {'synced' if watch_synced else 'waiting for first list'}")
    problems = []
    if not started:
        problems.append("starting: probes are being compiled and attached")
    elif not any(probes_up.values()):
        problems.append("no probe is attached")
    if watch_synced is False:
        problems.append("pod watch has not synced yet")
    body = "\n".join([*problems, *lines]) + "\n"
    return (503, "not ready: " + body) if problems else (200, "ready\n" + body)
