"""DCGM source: a local dcgm-exporter's GPU fields, attributed to pods.

Hook: HTTP GET of dcgm-exporter's /metrics (--dcgm-url, default
http://localhost:9400/metrics) in a background thread every
gpu_poll_interval seconds, parsed with prometheus_client.parser; a scrape of
orb8 serves the last good result and never waits on DCGM.

Attribution: when dcgm-exporter's rows carry pod/namespace/container, those;
otherwise the kubelet pod-resources gRPC API (List on
/var/lib/kubelet/pod-resources/kubelet.sock): device id (GPU UUID) -> pod and
container. A value gets a container's labels only when that container alone
holds the GPU; a GPU held by several pods (time-slicing) is exported once
without pod labels, and orb8_gpu_allocation_info lists who holds it.

Metrics: the fields in fields.py under orb8_dcgm_* names in base units,
labelled namespace, pod, container, cgroup, gpu, uuid, model, gpu_instance;
health: orb8_dcgm_up, orb8_dcgm_stale, orb8_dcgm_last_success_timestamp_seconds,
orb8_dcgm_breaker_open, orb8_dcgm_scrape_errors_total{reason},
orb8_dcgm_unmapped_fields, orb8_dcgm_pod_resources_up.

Faults (down, slow, HTTP errors, malformed or empty text): counted by reason;
after 3 in a row the breaker opens and retries back off exponentially (up to
32 intervals, at most 5 min); data stays served for 3 intervals, flagged
stale, then is dropped; the first good scrape restores everything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.config import Spec, http_url, optional_path
from exporter.sources import Context, Probe

if TYPE_CHECKING:
    from exporter.sources.dcgm.source import DcgmSource

SETTINGS: tuple[Spec, ...] = (
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
)


def create(context: Context) -> DcgmSource:
    from exporter.sources.dcgm.source import DcgmSource

    settings = context.settings
    # gpu_poll_interval is the gpu probe's setting; dcgm polls on the same beat.
    return DcgmSource(
        settings.dcgm_url,
        interval=settings.gpu_poll_interval,
        pod_resources_socket=settings.pod_resources_socket,
    )


# Off by default: it reads devices most nodes lack; enabled where GPUs are.
PROBE = Probe("dcgm", default=False, settings=SETTINGS, factory=create)
