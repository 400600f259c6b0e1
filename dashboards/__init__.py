"""orb8's Grafana dashboards, generated from code.

Each module here describes one dashboard as data (see builder.py); this
registry lists them. Regenerate the JSON next to them with
`python -m dashboards` (or `make dashboards`); `python -m dashboards --check`
fails when a committed file differs from what the code generates.

Adding a dashboard is one new module defining
`DASHBOARD = DashboardSpec(...)` and one line below.
"""

from __future__ import annotations

from pathlib import Path

from dashboards import dns, gpu, health, network, security
from dashboards.builder import DashboardSpec

DIRECTORY = Path(__file__).resolve().parent
# Copies for the Grafana sidecar ConfigMaps: kustomize reads generator files
# only in or below the kustomization's own directory (symlinks out of it are
# refused too), so `python -m dashboards` writes each file there as well.
DEPLOY_DIRECTORY = DIRECTORY.parent / "deploy" / "components" / "grafana-dashboards"
DASHBOARDS: tuple[DashboardSpec, ...] = (
    network.DASHBOARD,
    security.DASHBOARD,
    gpu.DASHBOARD,
    health.DASHBOARD,
    dns.DASHBOARD,
)
