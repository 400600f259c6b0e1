"""Agent: wires settings, identity, sources and outputs; owns the lifecycle.

Start order: kernel headers -> cgroup tree -> sources -> HTTP. A source that
fails to start is reported down (orb8_probe_up 0, landing page, one log
line) and the rest keeps working; `orb8 run` only fails outright when no
probe at all could start, because then it would serve nothing useful.
SIGTERM/SIGINT detach and free every BPF program and map before exit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter import __version__, probes
from exporter.config import Settings
from exporter.identity import CgroupTree, Resolver, find_cgroup2_mount
from exporter.identity.kubernetes import PodWatcher
from exporter.model import MetricFamily
from exporter.outputs import health
from exporter.outputs.prometheus import PrometheusServer, landing_page
from exporter.outputs.webconfig import WebConfig, WebConfigError, load_web_config
from exporter.sources import Source
from exporter.sources.exporter_self import identity_families, self_families
from exporter.sources.network import NetworkSource
from exporter.sources.syscalls import SecurityOptions, SyscallSource

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    pass


IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def kubernetes_api_factory(settings: Settings) -> Callable[[], Any] | None:
    """A CoreV1Api factory from --kubeconfig or the in-cluster service account, or None."""
    from kubernetes import client, config

    if settings.kubeconfig is not None:
        path = str(settings.kubeconfig)

        def from_kubeconfig() -> Any:
            return client.CoreV1Api(config.new_client_from_config(config_file=path))

        return from_kubeconfig
    if os.environ.get("KUBERNETES_SERVICE_HOST") and IN_CLUSTER_TOKEN.exists():

        def in_cluster() -> Any:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.CoreV1Api(client.ApiClient(configuration))

        return in_cluster
    return None


def build_identity(settings: Settings) -> tuple[Resolver, PodWatcher | None]:
    root = settings.cgroup_root or find_cgroup2_mount()
    log.info("cgroup v2 mount: %s", root)
    factory = kubernetes_api_factory(settings)
    if factory is None:
        log.info("no kubeconfig and not in a cluster: plain-host mode, cgroups labelled by path")
        return Resolver(CgroupTree(root)), None
    node = settings.node_name or socket.gethostname().lower()
    try:
        factory()  # fail fast on an unusable kubeconfig
    except Exception as e:
        raise StartupError(f"kubernetes client configuration failed: {e}") from None
    watcher = PodWatcher(factory, node, deleted_grace=settings.deleted_pod_grace)
    log.info("watching pods of node %s", node)
    return Resolver(CgroupTree(root), pods=lambda: watcher.pods), watcher


def security_options(settings: Settings) -> SecurityOptions:
    return SecurityOptions(
        dangerous=tuple(
            dict.fromkeys(settings.dangerous_syscalls + settings.extra_dangerous_syscalls)
        ),
        allowlist=settings.dangerous_allowlist,
        exclude_self=settings.dangerous_exclude_self,
        ring_buffer_size=settings.ring_buffer_size,
        sample_every=settings.ring_buffer_sample_every,
        log_per_minute=settings.evidence_log_per_minute,
        baseline_window=settings.baseline_window,
        state_dir=settings.state_dir,
    )


def build_sources(
    settings: Settings, headers: probes.KernelHeaders | None, resolver: Resolver
) -> list[Source]:
    sources: list[Source] = []
    if "syscalls" in settings.probes:
        sources.append(
            SyscallSource(
                resolver,
                settings.syscall_slots,
                settings.deleted_cgroup_grace,
                deleted_pod_grace=settings.deleted_pod_grace,
                security=security_options(settings),
                headers=headers,
                bpf_dir=settings.bpf_dir,
            )
        )
    if "network" in settings.probes:
        sources.append(
            NetworkSource(
                resolver,
                traffic_entries=settings.network_traffic_entries,
                tcp_entries=settings.network_tcp_entries,
                flow_entries=settings.network_flow_entries,
                peer_limit=settings.network_peer_limit,
                flow_idle_timeout=settings.network_flow_idle_timeout,
                cluster_cidrs=settings.network_cluster_cidrs,
                deleted_grace=settings.deleted_cgroup_grace,
                deleted_pod_grace=settings.deleted_pod_grace,
                headers=headers,
                bpf_dir=settings.bpf_dir,
                cgroup_root=settings.cgroup_root,
            )
        )
    return sources


class Agent:
    def __init__(self, settings: Settings, sources: list[Source] | None = None) -> None:
        self.settings = settings
        self.sources = sources
        self.up: dict[str, bool] = {}
        self.errors: dict[str, str] = {}
        self.durations: dict[str, float] = {}
        self.server: PrometheusServer | None = None
        self.resolver: Resolver | None = None
        self.watcher: PodWatcher | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = False

    def start(self) -> None:
        web_config = self._web_config()  # before the slow probe compile: fail fast
        if self.sources is None:
            try:
                headers = probes.find_kernel_headers(self.settings.kernel_headers)
                log.info("kernel headers: %s", headers)
            except probes.ProbeError as e:
                raise StartupError(str(e)) from None
            self.resolver, self.watcher = build_identity(self.settings)
            self.sources = build_sources(self.settings, headers, self.resolver)
        if self.watcher is not None:
            self.watcher.start()
        for source in self.sources:
            try:
                source.start()
                self.up[source.name] = True
            except Exception as e:
                self._mark_down(source.name, f"start failed: {e}")
        if self.sources and not any(self.up.values()):
            self.close()
            raise StartupError("no probe could start: " + "; ".join(self.errors.values()))
        self.server = PrometheusServer(
            self.settings.listen,
            self.collect,
            self.landing,
            routes={"/healthz": health.liveness, "/readyz": self.readiness},
            web_config=web_config,
        )
        self._started = True
        self.server.start()
        host, port = self.server.address[:2]
        scheme = "https" if web_config is not None and web_config.tls is not None else "http"
        log.info("serving metrics on %s://%s:%s/metrics", scheme, host, port)

    def _web_config(self) -> WebConfig | None:
        if self.settings.web_config_file is None:
            return None
        try:
            web_config = load_web_config(self.settings.web_config_file)
        except WebConfigError as e:
            raise StartupError(str(e)) from None
        log.info("web config %s: %s", web_config.source, web_config.describe())
        return web_config

    def readiness(self) -> tuple[int, str]:
        synced = self.watcher.synced.is_set() if self.watcher is not None else None
        return health.readiness(self._started, dict(self.up), synced)

    def _mark_down(self, name: str, error: str) -> None:
        if self.errors.get(name) != error:
            log.error("probe %s down: %s", name, error)
        self.up[name] = False
        self.errors[name] = error

    def collect(self) -> list[MetricFamily]:
        families: list[MetricFamily] = []
        with self._lock:  # concurrent scrapes would race on source state
            for source in self.sources or []:
                if source.name in self.errors and self.errors[source.name].startswith("start"):
                    continue
                started = time.perf_counter()
                try:
                    families.extend(source.collect())
                    if not self.up.get(source.name):
                        log.info("probe %s recovered", source.name)
                    self.up[source.name] = True
                    self.errors.pop(source.name, None)
                except Exception as e:
                    log.debug("collect of %s failed", source.name, exc_info=True)
                    self._mark_down(source.name, f"collect failed: {e}")
                self.durations[source.name] = time.perf_counter() - started
            families.extend(self_families(self.up, self.durations))
            families.extend(identity_families(self.resolver, self.watcher))
        return _merge(families)

    def landing(self) -> str:
        rows = []
        for source in self.sources or []:
            detail = self.errors.get(source.name) or source.describe()
            rows.append((source.name, self.up.get(source.name, False), detail))
        return landing_page(__version__, rows)

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.start()
        try:
            self._stop.wait()
        finally:
            log.info("shutting down: detaching probes")
            self.close()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.server is not None:
            self.server.close()
            self.server = None
        for source in self.sources or []:
            try:
                source.close()
            except Exception:
                log.exception("closing %s failed", source.name)


def _merge(families: list[MetricFamily]) -> list[MetricFamily]:
    """Sources may each report e.g. orb8_bpf_map_entries; expose one family."""
    merged: dict[str, MetricFamily] = {}
    for family in families:
        if family.name in merged:
            merged[family.name].samples.extend(family.samples)
        else:
            merged[family.name] = family
    return list(merged.values())
