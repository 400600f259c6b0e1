"""The DCGM source: scrape the node's dcgm-exporter in the background,
attribute its GPUs to pods, re-export under orb8 names."""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from exporter.model import IDENTITY_LABELS, MetricFamily, counter, gauge
from exporter.sources.dcgm.fields import FIELDS
from exporter.sources.dcgm.parse import DcgmParseError, Row, parse_dcgm
from exporter.sources.dcgm.podresources import Owner, PodResourcesClient

log = logging.getLogger(__name__)

LABELS = (*IDENTITY_LABELS, "gpu", "uuid", "model", "gpu_instance")
MAX_BODY = 16 << 20  # a dcgm-exporter page is ~100 KiB per GPU
# Consecutive failures after which the breaker opens and retries back off.
BREAKER_THRESHOLD = 3
MAX_UNMAPPED = 1024
ERROR_REASONS = ("connect", "timeout", "http", "too_large", "malformed", "empty")


class ScrapeError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def fetch(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as e:
        raise ScrapeError("http", f"HTTP {e.code}") from None
    except TimeoutError as e:
        raise ScrapeError("timeout", f"no answer in {timeout:g}s: {e}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise ScrapeError("timeout", f"no answer in {timeout:g}s") from None
        raise ScrapeError("connect", str(e.reason)) from None
    except (OSError, ValueError) as e:  # reset mid-body, bad status line
        raise ScrapeError("connect", str(e)) from None
    if len(body) > MAX_BODY:
        raise ScrapeError("too_large", f"answer over {MAX_BODY} bytes")
    return body.decode("utf-8", errors="replace")


@dataclass
class _Published:
    families: list[MetricFamily] = field(default_factory=list)
    at: float = 0.0  # unix time of the scrape it came from; 0: never


class DcgmSource:
    name = "dcgm"

    def __init__(
        self,
        url: str,
        interval: float = 10.0,
        pod_resources_socket: Path | None = None,
        clock: Callable[[], float] = time.time,
        fetcher: Callable[[str, float], str] = fetch,
    ) -> None:
        self.url = url
        self.interval = interval
        self.timeout = min(5.0, interval)
        # Data older than this is no longer served (the stale flag says why).
        self.stale_after = 3 * interval
        self.max_backoff = min(300.0, 32 * interval)
        self.pod_resources = (
            PodResourcesClient(pod_resources_socket) if pod_resources_socket else None
        )
        self.clock = clock
        self.fetcher = fetcher
        self.published = _Published()
        self.failures = 0  # consecutive
        self.errors: Counter[str] = Counter()
        self.unmapped: set[str] = set()
        self.pod_resources_up: bool | None = None  # None: not needed so far
        self._owners: Mapping[str, list[Owner]] = {}
        self._logged: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # DCGM may start after orb8 (or restart): never a start failure.
        self._thread = threading.Thread(target=self._run, name="dcgm-scrape", daemon=True)
        self._thread.start()

    def summary(self) -> str:
        state = "breaker open" if self.failures >= BREAKER_THRESHOLD else "ok"
        return f"dcgm-exporter {self.url} every {self.interval:g}s ({state})"

    def next_delay(self) -> float:
        """Normal interval; after BREAKER_THRESHOLD failures, doubling up to max_backoff."""
        extra = max(0, self.failures - BREAKER_THRESHOLD + 1)
        return min(self.interval * (2**extra), self.max_backoff)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scrape_once()
            self._stop.wait(self.next_delay())

    def scrape_once(self) -> None:
        try:
            text = self.fetcher(self.url, self.timeout)
            try:
                rows = parse_dcgm(text)
            except DcgmParseError as e:
                raise ScrapeError("empty" if not text.strip() else "malformed", str(e)) from None
        except ScrapeError as e:
            with self._lock:
                self.failures += 1
                self.errors[e.reason] += 1
            self._log_once(f"scrape:{e.reason}", "dcgm-exporter %s: %s (%s)", self.url, e, e.reason)
            return
        owners = self._owners_for(rows)
        families = self._families(rows, owners)
        with self._lock:
            if self.failures:
                log.info("dcgm-exporter %s answers again", self.url)
            self.failures = 0
            self._logged = {k for k in self._logged if not k.startswith("scrape:")}
            self.published = _Published(families, self.clock())

    def _owners_for(self, rows: list[Row]) -> Mapping[str, list[Owner]]:
        if all(row.pod for row in rows) or self.pod_resources is None:
            return self._owners
        try:
            self._owners = self.pod_resources.list_gpu_owners()
            self.pod_resources_up = True
            self._logged.discard("pod-resources")
        except Exception as e:  # grpc.RpcError and socket errors alike
            self.pod_resources_up = False
            details = getattr(e, "details", None)
            self._log_once(
                "pod-resources",
                "kubelet pod-resources %s: %s; DCGM rows without pod labels stay unattributed",
                self.pod_resources.socket,
                (details() if callable(details) else None) or e,
            )
        return self._owners

    def _log_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(message, *args)

    def _families(
        self, rows: list[Row], pod_resources: Mapping[str, list[Owner]]
    ) -> list[MetricFamily]:
        families: dict[str, MetricFamily] = {}
        groups: dict[tuple[str, str, str], list[Row]] = {}
        for row in rows:
            if row.field not in FIELDS:
                if len(self.unmapped) < MAX_UNMAPPED:  # names come from outside: bounded
                    self.unmapped.add(row.field)
                continue
            groups.setdefault((row.field, row.uuid, row.gpu_instance), []).append(row)
        allocations: dict[tuple[str, str], list[Owner]] = {}
        for (name, uuid, instance), group in sorted(groups.items()):
            first = group[0]
            if all(row.pod for row in group):
                owners = list(dict.fromkeys(Owner(r.namespace, r.pod, r.container) for r in group))
            else:
                owners = pod_resources.get(uuid) or pod_resources.get(first.gpu) or []
            allocations.setdefault((first.gpu, uuid), [])
            for owner in owners:
                if owner not in allocations[(first.gpu, uuid)]:
                    allocations[(first.gpu, uuid)].append(owner)
            # A device value belongs to a container only when it alone holds
            # the GPU; a shared GPU's value is exported once, unattributed,
            # never copied to every pod (orb8_gpu_allocation_info lists them).
            who = owners[0] if len(owners) == 1 else Owner("", "", "")
            spec = FIELDS[name]
            if spec.name not in families:
                families[spec.name] = MetricFamily(spec.name, spec.type, spec.help, LABELS)
            labels = (who.namespace, who.pod, who.container, "", first.gpu, uuid, first.model)
            families[spec.name].add((*labels, instance), first.value * spec.scale)
        allocation = gauge(
            "orb8_gpu_allocation_info",
            "The container holds the GPU (dcgm-exporter's pod labels or kubelet pod-resources).",
            ("namespace", "pod", "container", "gpu", "uuid"),
        )
        for (gpu, uuid), owners in sorted(allocations.items()):
            for owner in owners:
                allocation.add((owner.namespace, owner.pod, owner.container, gpu, uuid), 1)
        return [*families.values(), allocation]

    def collect(self) -> list[MetricFamily]:
        now = self.clock()
        with self._lock:
            published, failures = self.published, self.failures
            errors = dict(self.errors)
        fresh = published.at and now - published.at <= self.stale_after
        families = (
            [
                MetricFamily(f.name, f.type, f.help, f.labels, list(f.samples))
                for f in published.families
            ]
            if fresh
            else []
        )
        up = gauge("orb8_dcgm_up", "1 if the last scrape of dcgm-exporter succeeded.")
        up.add((), 0 if failures or not published.at else 1)
        stale = gauge(
            "orb8_dcgm_stale",
            "1 when the DCGM data is not from the last scrape attempt (it failed or none "
            "succeeded yet); data older than 3 intervals is no longer served.",
        )
        stale.add((), 1 if failures or not published.at else 0)
        last = gauge(
            "orb8_dcgm_last_success_timestamp_seconds",
            "Unix time of the last good dcgm-exporter scrape (0: none yet).",
        )
        last.add((), published.at)
        breaker = gauge(
            "orb8_dcgm_breaker_open",
            f"1 after {BREAKER_THRESHOLD} failed scrapes in a row: retries back off.",
        )
        breaker.add((), 1 if failures >= BREAKER_THRESHOLD else 0)
        error_family = counter(
            "orb8_dcgm_scrape_errors_total",
            "Failed dcgm-exporter scrapes by reason.",
            ("reason",),
        )
        for reason in ERROR_REASONS:
            error_family.add((reason,), errors.get(reason, 0))
        unmapped = gauge(
            "orb8_dcgm_unmapped_fields",
            "DCGM fields dcgm-exporter serves that orb8 does not re-export.",
        )
        unmapped.add((), len(self.unmapped))
        health = [up, stale, last, breaker, error_family, unmapped]
        if self.pod_resources_up is not None:
            pr = gauge(
                "orb8_dcgm_pod_resources_up",
                "1 if the last kubelet pod-resources List succeeded.",
            )
            pr.add((), 1 if self.pod_resources_up else 0)
            health.append(pr)
        return [*families, *health]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.pod_resources is not None:
            self.pod_resources.close()
