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
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from exporter import __version__, kernel, memory, registry
from exporter.config import ConfigError, Settings
from exporter.identity import CgroupTree, Resolver, find_cgroup2_mount
from exporter.identity.kubernetes import PodWatcher
from exporter.kernel.headers import KernelHeaders, find_kernel_headers
from exporter.model import MetricFamily
from exporter.outputs import health
from exporter.outputs.otlp import OtlpConfig, OtlpOutput, health_families
from exporter.outputs.prometheus import PrometheusServer, landing_page
from exporter.outputs.webconfig import WebConfig, WebConfigError, load_web_config
from exporter.rows import RowFamily
from exporter.selfmetrics import identity_families, process_families, self_families
from exporter.sources import Context, Source, SourceAbsent

if TYPE_CHECKING:
    from kubernetes.client import Configuration

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    pass


class Saves(Protocol):
    def save(self, lock: AbstractContextManager[Any] | None = None) -> None: ...


@runtime_checkable
class KeepsBaselines(Protocol):
    """A source whose learned state outlives a restart (the syscalls source's
    baselines): the agent saves it every BASELINE_SAVE_INTERVAL and at exit."""

    baselines: Saves


STARTUP_STOP_WAIT = 0.5  # on SIGTERM, how long a start-up step may still take to finish
BASELINE_SAVE_INTERVAL = 60.0


IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def kubernetes_configuration(settings: Settings) -> Callable[[], Configuration] | None:
    """A client Configuration factory from --kubeconfig or the in-cluster service account,
    or None. Called at start to fail fast on a bad kubeconfig, then by the pod watcher.

    The kubernetes client is imported only when one of those is there: it
    brings requests, oauthlib, pydantic and jsonschema along, ~15 MiB of
    RssAnon that a plain-host run never uses (benchmarks/RESULTS.md, issue 20).
    """
    if settings.kubeconfig is not None:
        from kubernetes import client, config

        path = str(settings.kubeconfig)

        def from_kubeconfig() -> Configuration:
            configuration = client.Configuration()
            config.load_kube_config(config_file=path, client_configuration=configuration)
            return configuration

        return from_kubeconfig
    if os.environ.get("KUBERNETES_SERVICE_HOST") and IN_CLUSTER_TOKEN.exists():
        from kubernetes import client, config

        def in_cluster() -> Configuration:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return configuration

        return in_cluster
    return None


def build_identity(settings: Settings) -> tuple[Resolver, PodWatcher | None]:
    root = settings.cgroup_root or find_cgroup2_mount()
    log.info("cgroup v2 mount: %s", root)
    factory = kubernetes_configuration(settings)
    if factory is None:
        log.info("no kubeconfig and not in a cluster: plain-host mode, cgroups labelled by path")
        return Resolver(CgroupTree(root), capacity=settings.identity_cache_size), None
    node = settings.node_name or socket.gethostname().lower()
    try:
        factory()  # fail fast on an unusable kubeconfig
    except Exception as e:
        raise StartupError(f"kubernetes client configuration failed: {e}") from None
    watcher = PodWatcher(factory, node, deleted_grace=settings.deleted_pod_grace)
    log.info("watching pods of node %s", node)
    resolver = Resolver(
        CgroupTree(root), pods=lambda: watcher.pods, capacity=settings.identity_cache_size
    )
    return resolver, watcher


def build_sources(
    settings: Settings, headers: KernelHeaders | None, resolver: Resolver
) -> list[Source]:
    """One source per enabled probe, in registry order (exporter/registry.py)."""
    context = Context(settings, resolver, headers)
    return [probe.factory(context) for probe in registry.enabled(settings)]


class Agent:
    def __init__(
        self,
        settings: Settings,
        sources: list[Source] | None = None,
        otlp: OtlpConfig | None = None,
        banner: str = "",
    ) -> None:
        self.settings = settings
        self.banner = banner
        self.scheme = "http"
        self.sources = sources
        self.otlp_config = otlp
        self.otlp: OtlpOutput | None = None
        self.up: dict[str, bool] = {}
        self.errors: dict[str, str] = {}
        self.absent: dict[str, str] = {}  # sources with nothing to read on this node
        self.start_failed: set[str] = set()  # down since start: never collected
        self.durations: dict[str, float] = {}
        self.server: PrometheusServer | None = None
        self.resolver: Resolver | None = None
        self.watcher: PodWatcher | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started: list[Source] = []  # sources whose start() returned
        self._serving = False  # start-up finished: /readyz may say ready
        self._abandon = False  # SIGTERM during start-up: start nothing more
        self._closed = False
        self._start_error: BaseException | None = None
        self._start_done = threading.Event()

    def bind(self) -> None:
        """Bind the HTTP socket. First of all: an unusable --listen (unresolvable, not
        local, in use) or web config is a configuration error, reported before
        seconds of probe compilation; scrapers meanwhile wait in the listen backlog."""
        web_config = self._web_config()
        try:
            self.server = PrometheusServer(
                self.settings.listen,
                self.collect,
                self.landing,
                routes={"/healthz": health.liveness, "/readyz": self.readiness},
                web_config=web_config,
            )
        except OSError as e:
            raise ConfigError(
                f"invalid listen ({self.settings.listen}): cannot listen there: {e.strerror or e}"
            ) from None
        self.scheme = "https" if web_config is not None and web_config.tls is not None else "http"

    def start(self) -> None:
        if self.server is None:
            self.bind()
        assert self.server is not None
        if self.sources is None:
            headers = None
            if any(probe.bpf for probe in registry.enabled(self.settings)):
                try:
                    headers = find_kernel_headers(self.settings.kernel_headers)
                    log.info("kernel headers: %s", headers)
                except kernel.ProbeError as e:
                    raise StartupError(str(e)) from None
            self.resolver, self.watcher = build_identity(self.settings)
            self.sources = build_sources(self.settings, headers, self.resolver)
        if self.watcher is not None:
            self.watcher.start()
        for source in self.sources:
            if self._abandon:
                return
            try:
                source.start()
                self._started.append(source)
                self.up[source.name] = True
            except SourceAbsent as e:
                self.absent[source.name] = str(e)
                log.info("probe %s absent: %s", source.name, e)
            except Exception as e:
                self.start_failed.add(source.name)
                self._mark_down(source.name, f"start failed: {e}")
        if self.errors and not any(self.up.values()):
            self.close()
            raise StartupError("no probe could start: " + "; ".join(self.errors.values()))
        # Compiling the probes leaves tens of MiB of freed LLVM heap that glibc
        # keeps; hand it back before serving (docs/scaling.md: ~37 MiB).
        memory.malloc_trim()
        self._serving = True
        self.server.start()
        host, port = self.server.address[:2]
        log.info("serving metrics on %s://%s:%s/metrics", self.scheme, host, port)
        if self.otlp_config is not None:
            # The same collect as a scrape, plus the process_* families the
            # Prometheus output adds itself.
            node = self.settings.node_name or (
                socket.gethostname().lower() if self.watcher is not None else None
            )
            try:
                self.otlp = OtlpOutput(
                    self.otlp_config, lambda: [*self.collect(), *process_families()], node
                )
            except Exception as e:  # e.g. a certificate the SDK cannot load
                self.close()
                raise StartupError(f"OTLP output: {e}") from None
            self.otlp.start()

    def _web_config(self) -> WebConfig | None:
        if self.settings.web_config_file is None:
            return None
        try:
            web_config = load_web_config(self.settings.web_config_file)
        except WebConfigError as e:
            raise StartupError(str(e)) from None
        log.info("web config %s: %s", web_config.source, web_config.summary())
        return web_config

    def readiness(self) -> tuple[int, str]:
        synced = self.watcher.synced.is_set() if self.watcher is not None else None
        return health.readiness(self._serving, dict(self.up), synced)

    def _mark_down(self, name: str, error: str) -> None:
        if self.errors.get(name) != error:
            log.error("probe %s down: %s", name, error)
        self.up[name] = False
        self.errors[name] = error

    def collect(self) -> list[MetricFamily]:
        families: list[MetricFamily] = []
        with self._lock:  # concurrent scrapes would race on source state
            if self._closed:
                return []
            for source in self.sources or []:
                if source.name in self.start_failed or source.name in self.absent:
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
            families.extend(health_families(self.otlp))
        return _merge(families)

    def landing(self) -> str:
        rows: list[tuple[str, bool | str, str]] = []
        for source in self.sources or []:
            if source.name in self.absent:
                rows.append((source.name, "absent", self.absent[source.name]))
                continue
            detail = self.errors.get(source.name) or source.summary()
            rows.append((source.name, self.up.get(source.name, False), detail))
        return landing_page(__version__, rows)

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> None:
        """Start (in a thread, so that SIGTERM is answered at once even while BCC
        compiles), serve, do housekeeping, and shut down cleanly from any phase."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        if self.banner:
            log.info("%s", self.banner)
        threading.Thread(target=self._start_thread, name="start-up", daemon=True).start()
        self._stop.wait()
        if not self._start_done.wait(STARTUP_STOP_WAIT):
            self._exit_during_startup()
        if self._start_error is not None:  # after start-up ended: never lost to a SIGTERM
            raise self._start_error
        log.info("shutting down: detaching probes")
        self.close()

    def _start_thread(self) -> None:
        try:
            self.start()
        except BaseException as e:
            self._start_error = e
            self._stop.set()
            return
        finally:
            self._start_done.set()
        if not self._abandon:
            self._housekeeping()

    def _exit_during_startup(self) -> None:
        """SIGTERM while a probe is still compiling (a C call that cannot be
        interrupted): detach what is attached, and leave without waiting for the
        compile. A program being compiled is not attached to anything yet."""
        self._abandon = True
        log.info("stopped during start-up: detaching the probes started so far")
        if self.watcher is not None:
            self.watcher.stop()
        if self.server is not None:
            self.server.close()
        for source in list(self._started):
            try:
                source.close()
            except Exception as e:
                log.error("closing %s failed: %s", source.name, e)
        logging.shutdown()
        os._exit(0)

    def housekeeping_interval(self) -> float:
        grace = min(self.settings.deleted_cgroup_grace, self.settings.deleted_pod_grace)
        return min(max(grace / 6, 1.0), 10.0)

    def _housekeeping(self) -> None:
        """Lifecycle work on its own schedule, whether or not anyone scrapes: a
        collect retires removed cgroups (series end on time, kernel entries are
        freed), learned baselines are saved every BASELINE_SAVE_INTERVAL, and
        freed heap is given back every memory.TRIM_INTERVAL."""
        interval = self.housekeeping_interval()
        last_save = last_trim = time.monotonic()
        while not self._stop.wait(interval):
            try:
                self.collect()
            except Exception as e:  # collect isolates sources; this is a bug
                log.error("housekeeping collect failed: %s: %s", type(e).__name__, e)
            if time.monotonic() - last_save >= BASELINE_SAVE_INTERVAL:
                last_save = time.monotonic()
                self.save_state()
            if time.monotonic() - last_trim >= memory.TRIM_INTERVAL:
                last_trim = time.monotonic()
                memory.malloc_trim(logging.DEBUG)

    def save_state(self) -> None:
        for source in self.sources or []:
            if isinstance(source, KeepsBaselines):
                source.baselines.save(self._lock)  # collects observe into the same baselines

    def close(self) -> None:
        if self.otlp is not None:  # before the sources it collects from
            self.otlp.close()
            self.otlp = None
        if self.watcher is not None:
            self.watcher.stop()
        if self.server is not None:
            self.server.close()
            self.server = None
        with self._lock:  # wait for a collect in flight: never free maps under it
            self._closed = True
            for source in self.sources or []:
                if source.name in self.absent:
                    continue
                try:
                    source.close()
                except Exception as e:
                    log.error("closing %s failed: %s: %s", source.name, type(e).__name__, e)


def _merge(families: list[MetricFamily]) -> list[MetricFamily]:
    """Sources may each report e.g. orb8_bpf_map_entries; expose one family."""
    merged: dict[str, MetricFamily] = {}
    for family in families:
        if family.name in merged:
            first = merged[family.name]
            if isinstance(first, RowFamily):  # its samples are its rows: copy them
                first = merged[family.name] = first.plain()
            first.samples.extend(family.samples)
        else:
            merged[family.name] = family
    return list(merged.values())
